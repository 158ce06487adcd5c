"""Pair radial bases times a smooth cutoff.

A radial basis maps distances r (any shape) to features (..., K). Every
family is multiplied by the polynomial cutoff

    fc(r) = (1 - r / r_cut)^p  for r < r_cut,  0 otherwise,

which is C^(p-1) at r_cut (p = 3, the default, is C2: value, slope and
curvature vanish there).

Families (K = ``n_basis`` functions):

- ``"chebyshev"``: T_k(x), k = 0..K-1, with x the inverse distance r_min/r
  mapped affinely from [r_min/r_cut, 1] onto [-1, 1]. Polynomials in 1/r suit
  the steep repulsive wall of pair potentials (LJ is a degree-12 polynomial
  in 1/r).
- ``"bessel"``: sqrt(2/r_cut) sin(k pi r / r_cut) / r, k = 1..K.
- ``"gaussian"``: exp(-(r - mu_k)^2 / (2 w^2)), centres mu_k evenly spaced on
  [r_min, r_cut], width w = the spacing.

``r_min`` and ``r_cut`` are array fields, so a basis can be ``vmap``-ed over
its hyperparameters; ``family``, ``n_basis`` and ``cutoff_order`` are static.
Per-atom features are phi_i = 1/2 sum_j g(r_ij), so that their sum over
atoms is the sum over pairs.

:class:`RadialDescriptor` wraps a basis (and a species count) into the
:class:`jaxiap.descriptors.base.Descriptor` protocol; it accepts periodic
cells and jax-md neighbour lists (``neighbor=``), which give the same
features as the dense all-pairs path.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from jaxiap.descriptors.base import Descriptor
from jaxiap.errors import JaxiapInputError
from jaxiap.geometry import check_cell, neighbor_pairs, pair_distances, scatter_pairs

FAMILIES = ("chebyshev", "bessel", "gaussian")


def poly_cutoff(r, r_cut, order: int = 3):
    """Smooth cutoff (1 - r/r_cut)^order inside r_cut, 0 outside (C^(order-1))."""
    x = jnp.clip(1.0 - r / r_cut, 0.0, None)
    return x**order


def chebyshev_polynomials(x, n: int):
    """T_0..T_{n-1}(x) by the three-term recurrence (valid for any real x). (..., n)."""
    terms = [jnp.ones_like(x), x]
    for _ in range(2, n):
        terms.append(2.0 * x * terms[-1] - terms[-2])
    return jnp.stack(terms[:n], axis=-1)


def chebyshev(r, n_basis: int, r_min, r_cut):
    u_lo = r_min / r_cut
    x = 2.0 * (r_min / r - u_lo) / (1.0 - u_lo) - 1.0
    return chebyshev_polynomials(x, n_basis)


def bessel(r, n_basis: int, r_min, r_cut):
    k = jnp.arange(1, n_basis + 1, dtype=r.dtype)
    return jnp.sqrt(2.0 / r_cut) * jnp.sin(k * jnp.pi * r[..., None] / r_cut) / r[..., None]


def gaussian(r, n_basis: int, r_min, r_cut):
    centres = r_min + (r_cut - r_min) * jnp.linspace(0.0, 1.0, n_basis, dtype=r.dtype)
    width = (r_cut - r_min) / max(n_basis - 1, 1)
    return jnp.exp(-0.5 * ((r[..., None] - centres) / width) ** 2)


_FAMILY_FNS = {"chebyshev": chebyshev, "bessel": bessel, "gaussian": gaussian}


class RadialBasis(eqx.Module):
    """K radial functions g_k(r) times a smooth cutoff. ``basis(r) -> (..., K)``."""

    r_min: jnp.ndarray
    r_cut: jnp.ndarray
    family: str = eqx.field(static=True, default="chebyshev")
    n_basis: int = eqx.field(static=True, default=8)
    cutoff_order: int = eqx.field(static=True, default=3)

    def __init__(self, family="chebyshev", n_basis=8, r_min=0.8, r_cut=3.0, cutoff_order=3):
        if family not in _FAMILY_FNS:
            raise JaxiapInputError(f"family={family!r} is unknown; choose one of {FAMILIES}")
        if int(n_basis) < 1:
            raise JaxiapInputError(f"n_basis must be >= 1, got {n_basis}")
        if int(cutoff_order) < 3:
            raise JaxiapInputError(
                f"cutoff_order={cutoff_order} gives a cutoff that is not C2; use cutoff_order >= 3"
            )
        r_min, r_cut = jnp.asarray(r_min, float), jnp.asarray(r_cut, float)
        if not isinstance(r_cut, jax.core.Tracer) and r_min.ndim == 0 and r_cut.ndim == 0:
            if not 0.0 < float(r_min) < float(r_cut):
                raise JaxiapInputError(f"need 0 < r_min < r_cut, got r_min={float(r_min)}, r_cut={float(r_cut)}")
        self.family, self.n_basis, self.cutoff_order = family, int(n_basis), int(cutoff_order)
        self.r_min, self.r_cut = r_min, r_cut

    def __call__(self, r):
        g = _FAMILY_FNS[self.family](r, self.n_basis, self.r_min, self.r_cut)
        return g * poly_cutoff(r, self.r_cut, self.cutoff_order)[..., None]


def atomic_features(basis: RadialBasis, positions, mask=None, box=None, species=None, n_species: int = 1,
                    neighbor=None):
    """Per-atom radial features (N, n_species * K) for one structure.

    phi_i[s, k] = 1/2 sum_{j != i, species_j = s} g_k(r_ij); padded atoms get zeros.
    positions (N, 3); mask (N,) bool; box None, (3,) or (3, 3) cell rows;
    species (N,) int or None; neighbor a jax-md NeighborList or None (all pairs).
    """
    if neighbor is not None:
        return _atomic_features_neighbor(basis, positions, mask, box, species, n_species, neighbor)
    r, pair_mask = pair_distances(positions, mask, box)
    g = jnp.where(pair_mask[..., None], basis(r), 0.0)  # (N, N, K)
    if n_species == 1:
        return 0.5 * jnp.sum(g, axis=1)
    onehot = jax.nn.one_hot(species, n_species, dtype=g.dtype)  # (N, S)
    phi = 0.5 * jnp.einsum("ijk,js->isk", g, onehot)
    return phi.reshape(positions.shape[0], -1)


def _atomic_features_neighbor(basis, positions, mask, box, species, n_species, neighbor):
    n = positions.shape[0]
    pairs = neighbor_pairs(positions, neighbor, mask, box)
    g = jnp.where(pairs.mask[..., None], basis(pairs.r), 0.0)  # (pairs..., K)
    if n_species == 1:
        return scatter_pairs(g, pairs, n)
    if pairs.ordered:  # each pair once: i's feature counts species_j, j's counts species_i
        oh = lambda a: jax.nn.one_hot(species[a], n_species, dtype=g.dtype)
        gi = g[..., None, :] * oh(pairs.j)[..., :, None]
        gj = g[..., None, :] * oh(pairs.i)[..., :, None]
        phi = 0.5 * (jax.ops.segment_sum(gi.reshape(-1, n_species, g.shape[-1]), pairs.i.reshape(-1), n)
                     + jax.ops.segment_sum(gj.reshape(-1, n_species, g.shape[-1]), pairs.j.reshape(-1), n))
        return phi.reshape(n, -1)
    onehot = jax.nn.one_hot(species[pairs.j], n_species, dtype=g.dtype)  # (pairs..., S)
    phi = scatter_pairs(onehot[..., :, None] * g[..., None, :], pairs, n)  # (N, S, K)
    return phi.reshape(n, -1)


def structure_features(basis: RadialBasis, positions, mask=None, box=None, species=None, n_species: int = 1,
                       neighbor=None):
    """Per-structure features (n_species * K,): the sum of :func:`atomic_features` over atoms."""
    return jnp.sum(atomic_features(basis, positions, mask, box, species, n_species, neighbor), axis=0)


class RadialDescriptor(Descriptor):
    """Pair radial features as a :class:`~jaxiap.descriptors.base.Descriptor`.

    ``atomic`` is (N, F) with F = n_species * K: phi_i[s, k] = 1/2 sum over
    neighbours j of species s of g_k(r_ij) (species-major columns); with
    n_species = 1 the species argument is ignored. ``structure`` (F,) is the
    sum over pairs, exactly :func:`structure_features`.
    """

    radial: RadialBasis
    n_species: int = eqx.field(static=True, default=1)

    def __check_init__(self):
        if int(self.n_species) < 1:
            raise JaxiapInputError(f"RadialDescriptor: n_species must be >= 1, got {self.n_species}")

    @property
    def n_features(self) -> int:
        return self.radial.n_basis * self.n_species

    @property
    def cutoff(self):
        return self.radial.r_cut

    def _species(self, species, positions):
        if self.n_species > 1 and species is None:
            raise JaxiapInputError(
                f"RadialDescriptor with n_species={self.n_species} needs species= (N,) int indices"
            )
        return species

    def atomic(self, positions, *, mask=None, species=None, box=None, neighbor=None):
        species = self._species(species, positions)
        check_cell(box, self.radial.r_cut, "RadialDescriptor: box")
        return atomic_features(self.radial, positions, mask, box, species, self.n_species, neighbor)

    def structure(self, positions, *, mask=None, species=None, box=None, neighbor=None):
        species = self._species(species, positions)
        check_cell(box, self.radial.r_cut, "RadialDescriptor: box")
        return structure_features(self.radial, positions, mask, box, species, self.n_species, neighbor)
