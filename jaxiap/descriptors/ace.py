"""ACE-style many-body descriptors (atomic cluster expansion up to body order 4), in pure JAX.

For atom i, the atomic base projects its neighbour density onto radial
functions times real spherical harmonics, one channel per neighbour species:

    A_i[z, n, l, m] = sum_{j != i, species_j = z, r_ij < r_cut} R_n(r_ij) Y_lm(r_hat_ij)

with r_hat_ij = (r_j - r_i) / r_ij (minimum image in a periodic cell). The
features are rotation- and inversion-invariant polynomials of A of
correlation order nu = 1, 2, 3 (body order nu + 1: the centre and nu
neighbours). With c = (z, n) a radial-species channel:

- nu = 1: A_i[c, 0, 0];
- nu = 2: sum_m A_i[c1, l, m] A_i[c2, l, m]              (c1 <= c2; the power spectrum);
- nu = 3: sum_{m1 m2 m3} G(l1 m1, l2 m2, l3 m3) A_i[c1, l1, m1] A_i[c2, l2, m2] A_i[c3, l3, m3]
  with G the real Gaunt coefficient (the integral of Y_l1m1 Y_l2m2 Y_l3m3
  over the unit sphere), over sorted triples (l1, c1) <= (l2, c2) <= (l3, c3),
  l1 + l2 + l3 even and l3 <= l1 + l2 (the bispectrum).

The coupling coefficients are computed once in numpy (exact quadrature on a
Gauss-Legendre x uniform sphere grid) and stored as a sparse list of
(feature, factor indices, coefficient) terms, so evaluation is gathers and
multiplies. R_n is a :class:`~jaxiap.descriptors.radial.RadialBasis` (by
default Chebyshev polynomials in r_min / r times the C2 cutoff
(1 - r / r_cut)^3); it does not depend on the species. Units: positions and
lengths in the caller's units (Å for the aluminium study), features
dimensionless products of basis values. docs/ace.md has the formulas, the
count formula (:func:`ace_basis_count`) and the choices made.
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from jaxiap.descriptors.ace_rows import design_rows_fn
from jaxiap.descriptors.base import Descriptor
from jaxiap.descriptors.radial import RadialBasis
from jaxiap.errors import JaxiapInputError
from jaxiap.geometry import check_cell, displacements, minimum_image, neighbor_pairs

BODY_ORDERS = (2, 3, 4)
_DUMMY = 1.0e3  # distance given to masked pairs: beyond any cutoff, and finite derivatives


# ----------------------------------------------------------------------------- real spherical harmonics


def sh_index(l: int, m: int) -> int:
    """Column of Y_lm in :func:`real_spherical_harmonics`: l^2 + l + m (m = -l..l)."""
    return l * l + l + m


def _legendre_table(z, l_max: int, xp):
    """Normalised associated Legendre functions with sin^m(theta) factored out: {(l, m): (...)}, m >= 0.

    Pbar_lm(z) sin^m(theta) e^{i m phi} has unit norm on the sphere; the
    recursions are the standard stable ones for fully normalised functions.
    """
    p = {(0, 0): xp.full_like(z, 1.0 / math.sqrt(4.0 * math.pi))}
    for m in range(l_max + 1):
        if m > 0:
            p[m, m] = math.sqrt((2 * m + 1) / (2 * m)) * p[m - 1, m - 1]
        if m < l_max:
            p[m + 1, m] = math.sqrt(2 * m + 3) * z * p[m, m]
        for l in range(m + 2, l_max + 1):
            a = math.sqrt((4 * l * l - 1) / (l * l - m * m))
            b = math.sqrt(((l - 1) ** 2 - m * m) / (4 * (l - 1) ** 2 - 1))
            p[l, m] = a * (z * p[l - 1, m] - b * p[l - 2, m])
    return p


def real_spherical_harmonics(vectors, l_max: int, xp=jnp):
    """Real orthonormal spherical harmonics of unit vectors (..., 3) -> (..., (l_max + 1)^2).

    Column l^2 + l + m holds Y_lm, m = -l..l:
    Y_l0 = Pbar_l0(z), Y_lm = sqrt(2) Pbar_lm(z) Re (x + i y)^m and
    Y_l,-m = sqrt(2) Pbar_lm(z) Im (x + i y)^m for m > 0, i.e.
    sqrt(2) (-1)^m Re/Im of the complex Condon-Shortley Y_l^m (Y_1,1 ~ x,
    Y_1,-1 ~ y, Y_1,0 ~ z). Polynomials in x, y, z: smooth everywhere, also at
    the poles. ``xp`` is jax.numpy (default) or numpy.
    """
    x, y, z = vectors[..., 0], vectors[..., 1], vectors[..., 2]
    cos_m, sin_m = [xp.ones_like(x)], [xp.zeros_like(x)]  # Re, Im of (x + i y)^m
    for _ in range(l_max):
        c, s = cos_m[-1], sin_m[-1]
        cos_m.append(x * c - y * s)
        sin_m.append(x * s + y * c)
    p = _legendre_table(z, l_max, xp)
    cols = []
    for l in range(l_max + 1):
        for m in range(-l, l + 1):
            if m < 0:
                cols.append(math.sqrt(2.0) * p[l, -m] * sin_m[-m])
            elif m == 0:
                cols.append(p[l, 0])
            else:
                cols.append(math.sqrt(2.0) * p[l, m] * cos_m[m])
    return xp.stack(cols, axis=-1)


def sphere_quadrature(degree: int):
    """Nodes (Q, 3) and weights (Q,) that integrate polynomials of degree <= ``degree`` on the unit sphere exactly.

    Gauss-Legendre in z = cos(theta) times a uniform grid in phi; the
    weights sum to 4 pi.
    """
    z, wz = np.polynomial.legendre.leggauss(degree // 2 + 1)
    n_phi = degree + 1
    phi = 2.0 * np.pi * np.arange(n_phi) / n_phi
    s = np.sqrt(1.0 - z**2)
    nodes = np.stack(np.broadcast_arrays(s[:, None] * np.cos(phi), s[:, None] * np.sin(phi), z[:, None]), -1)
    weights = np.broadcast_to(wz[:, None] * (2.0 * np.pi / n_phi), (z.size, n_phi))
    return nodes.reshape(-1, 3), weights.reshape(-1)


@functools.lru_cache(maxsize=16)
def real_gaunt(l_max: int) -> np.ndarray:
    """Real Gaunt coefficients G[a, b, c] = integral of Y_a Y_b Y_c over the sphere: (L, L, L), L = (l_max + 1)^2.

    Exact (to rounding) by quadrature of degree 3 l_max; entries below 1e-13 are set to 0.
    Read-only numpy array, cached per l_max.
    """
    nodes, w = sphere_quadrature(3 * l_max)
    y = real_spherical_harmonics(nodes, l_max, xp=np)
    g = np.einsum("qa,qb,qc,q->abc", y, y, y, w)
    g[np.abs(g) < 1e-13] = 0.0
    g.setflags(write=False)
    return g


# ----------------------------------------------------------------------------- basis enumeration and counts


def _l_triples(l_max: int):
    """Sorted l1 <= l2 <= l3 <= l_max, l1 + l2 + l3 even, l3 <= l1 + l2 (the rest of the triangle is implied)."""
    return [t for t in itertools.combinations_with_replacement(range(l_max + 1), 3)
            if sum(t) % 2 == 0 and t[2] <= t[0] + t[1]]


def _multisets(k: int, size: int) -> int:
    """Multisets of ``size`` elements from k: C(k + size - 1, size)."""
    return math.comb(k + size - 1, size)


def _orders(n_max, l_max, body_order):
    """Check the truncation arguments; returns (n_max per nu = 1.., l_max per nu = 2..) as int tuples."""
    if isinstance(body_order, bool) or body_order not in BODY_ORDERS:
        raise JaxiapInputError(
            f"body_order={body_order!r} is not supported; use 2 (pair, nu = 1), 3 (nu <= 2, power spectrum) "
            "or 4 (nu <= 3, bispectrum); body_order = correlation order nu + 1"
        )
    n_nu = body_order - 1
    n_max = _per_order("n_max", n_max, n_nu, 1, "the number of radial functions per species channel")
    l_max = _per_order("l_max", l_max, n_nu - 1, 0, "the largest angular momentum")
    return n_max, l_max


def _per_order(name, value, n_orders, lowest, what):
    """An int (same for every order) or a sequence with one int per correlation order; each >= lowest."""
    first = 2 if name == "l_max" else 1
    if np.ndim(value) == 0:
        values = (value,) * n_orders
    else:
        values = tuple(value)
        if len(values) != n_orders:
            raise JaxiapInputError(
                f"{name}={value!r} must be an int or one int per correlation order nu = {first}.."
                f"{first + n_orders - 1} ({n_orders} values for this body order)"
            )
    for v in values if np.ndim(value) else (value,):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lowest:
            raise JaxiapInputError(f"{name}={value!r} must be an int >= {lowest} ({what}); pass {name}={lowest} "
                                   "or larger")
    return tuple(int(v) for v in values)


def ace_basis_count(n_max=6, l_max=3, n_species: int = 1, body_order: int = 4,
                    center_resolved: bool = False) -> dict[int, int]:
    """Number of ACE features per body order: {body order: count}; their sum is ``n_features``.

    With K_nu = n_species * n_max[nu] channels and L_nu = l_max[nu]:

    - body order 2 (nu = 1): K_1;
    - body order 3 (nu = 2): (L_2 + 1) K_2 (K_2 + 1) / 2;
    - body order 4 (nu = 3): t3 K^3 + t2 K^2 (K + 1) / 2 + t1 K (K + 1) (K + 2) / 6, K = K_3,
      where t3, t2, t1 count the admissible sorted l-triples (l1 + l2 + l3 even,
      l3 <= l1 + l2, all <= L_3) with three distinct values, exactly two equal,
      and all equal (t1 = floor(L_3 / 2) + 1).

    Every count is multiplied by n_species when ``center_resolved``.
    """
    n_max, l_max = _orders(n_max, l_max, body_order)
    scale = int(n_species) if center_resolved else 1
    k = [int(n_species) * n for n in n_max]
    counts = {2: k[0]}
    if body_order >= 3:
        counts[3] = (l_max[0] + 1) * _multisets(k[1], 2)
    if body_order >= 4:
        kk, t = k[2], [0, 0, 0]  # t[d - 1]: triples with d distinct values
        for lt in _l_triples(l_max[1]):
            t[len(set(lt)) - 1] += 1
        counts[4] = t[2] * kk**3 + t[1] * kk * _multisets(kk, 2) + t[0] * _multisets(kk, 3)
    return {b: scale * c for b, c in counts.items()}


class _Tables(NamedTuple):
    """Index tables of the invariants (numpy, built once per setting by :func:`_tables`)."""

    c1: np.ndarray        # (F1,) channels of the nu = 1 features
    c2: np.ndarray        # (K2,) channels used at nu = 2
    pairs2: tuple         # (rows, cols) of the upper triangle of a K2 x K2 matrix
    n_l2: int             # l = 0..n_l2 - 1 at nu = 2 (0: no nu = 2 block)
    terms3: tuple         # (feature, a1, a2, a3) int arrays and coefficient array: flat indices c * n_lm + lm
    n3: int               # number of nu = 3 features
    labels: tuple         # one label per feature: ((z, n, l), ...) per factor


@functools.lru_cache(maxsize=32)
def _tables(n_species: int, n_max: tuple, l_max: tuple) -> _Tables:
    n_all, l_all = max(n_max), max(l_max, default=0)
    n_lm = (l_all + 1) ** 2
    chans = lambda n_nu: [z * n_all + n for z in range(n_species) for n in range(n_nu)]  # noqa: E731
    label = lambda c, l: (int(c) // n_all, int(c) % n_all, int(l))  # noqa: E731
    c1 = np.asarray(chans(n_max[0]), int)
    labels = [(label(c, 0),) for c in c1]
    c2, pairs2, n_l2 = np.zeros(0, int), (np.zeros(0, int), np.zeros(0, int)), 0
    if len(n_max) >= 2:
        n_l2 = l_max[0] + 1
        c2 = np.asarray(chans(n_max[1]), int)
        pairs2 = np.triu_indices(c2.size)
        labels += [(label(c2[a], l), label(c2[b], l)) for l in range(l_max[0] + 1) for a, b in zip(*pairs2)]
    terms3, n3 = (np.zeros(0, int),) * 4 + (np.zeros(0),), 0
    if len(n_max) >= 3:
        terms3, lab3 = _bispectrum_terms(chans(n_max[2]), l_max[1], l_all, n_lm)
        labels += [tuple(label(c, l) for c, l in f) for f in lab3]
        n3 = len(lab3)
    return _Tables(c1, c2, pairs2, n_l2, terms3, n3, tuple(labels))


def _channel_triples(chans, lt):
    """Channel triples (c1, c2, c3) for a sorted l-triple: non-decreasing where the l's are equal."""
    for c in itertools.product(chans, repeat=3):
        if (lt[0] < lt[1] or c[0] <= c[1]) and (lt[1] < lt[2] or c[1] <= c[2]):
            yield c


def _bispectrum_terms(chans, l3_max: int, l_all: int, n_lm: int):
    """Sparse terms of the nu = 3 features and their labels ((c, l),) * 3."""
    gaunt = real_gaunt(l_all)
    feat, idx, coef, labels = [], [[], [], []], [], []
    for lt in _l_triples(l3_max):
        blocks = [np.arange(l * l, (l + 1) ** 2) for l in lt]
        g = gaunt[np.ix_(*blocks)]
        nz = np.nonzero(g)
        cs = np.asarray(list(_channel_triples(chans, lt)), int)  # (F_t, 3)
        f0 = len(labels)
        labels += [tuple(zip(c, lt)) for c in cs]
        feat.append(np.repeat(np.arange(f0, f0 + len(cs)), nz[0].size))
        for k in range(3):
            idx[k].append((cs[:, k, None] * n_lm + blocks[k][nz[k]][None, :]).reshape(-1))
        coef.append(np.tile(g[nz], len(cs)))
    cat = lambda a: np.concatenate(a) if a else np.zeros(0)  # noqa: E731
    return (cat(feat).astype(int), *(cat(i).astype(int) for i in idx), cat(coef)), labels


# ----------------------------------------------------------------------------- the atomic base


class _PairGeometry(NamedTuple):
    """Per-pair quantities, flattened or (N, N) dense: centre index, safe unit vector, distance, mask, partner."""

    i: jnp.ndarray
    j: jnp.ndarray
    rhat: jnp.ndarray
    r: jnp.ndarray
    mask: jnp.ndarray


def _safe_geometry(i, j, dr, valid) -> _PairGeometry:
    """Unit vectors and distances with masked pairs replaced by a far dummy vector (finite gradients at r = 0)."""
    dummy = jnp.asarray([0.0, 0.0, _DUMMY], dr.dtype)
    dr = jnp.where(valid[..., None], dr, dummy)
    r = jnp.sqrt(jnp.sum(dr**2, axis=-1))
    return _PairGeometry(i, j, dr / r[..., None], r, valid)


def _dense_geometry(positions, mask, box) -> _PairGeometry:
    """All pairs (N, N), minimum image in a cell (as :func:`jaxiap.geometry.pair_distances`)."""
    n = positions.shape[0]
    atom = jnp.ones(n, bool) if mask is None else mask
    valid = atom[:, None] & atom[None, :] & ~jnp.eye(n, dtype=bool)
    idx = jnp.arange(n)
    return _safe_geometry(idx[:, None], idx[None, :], displacements(positions, box), valid)


def _neighbor_geometry(positions, mask, box, neighbor) -> _PairGeometry:
    """Flat directed pairs (P,) of a jax-md list; OrderedSparse pairs (i < j once) are added both ways."""
    pairs = neighbor_pairs(positions, neighbor, mask, box)
    i, j, valid = pairs.i.reshape(-1), pairs.j.reshape(-1), pairs.mask.reshape(-1)
    if pairs.ordered:
        i, j, valid = jnp.concatenate([i, j]), jnp.concatenate([j, i]), jnp.concatenate([valid, valid])
    dr = positions[j] - positions[i]
    if box is not None:
        dr = minimum_image(dr, jnp.asarray(box))
    return _safe_geometry(i, j, dr, valid)


def atomic_base(radial: RadialBasis, l_max: int, positions, mask=None, box=None, species=None,
                n_species: int = 1, neighbor=None):
    """The ACE atomic base A (N, n_species, n_basis, (l_max + 1)^2) of one structure.

    A[i, z, n, l^2 + l + m] = sum over neighbours j of species z of R_n(r_ij) Y_lm(r_hat_ij);
    rows of padded atoms are 0. Arguments as :meth:`ACEDescriptor.atomic`.
    """
    n = positions.shape[0]
    if neighbor is None:
        geo = _dense_geometry(positions, mask, box)
    else:
        geo = _neighbor_geometry(positions, mask, box, neighbor)
    rad = jnp.where(geo.mask[..., None], radial(geo.r), 0.0)           # (pairs, K)
    ylm = real_spherical_harmonics(geo.rhat, l_max)                     # (pairs, n_lm)
    sp = jnp.zeros(n, jnp.int32) if species is None or n_species == 1 else species
    onehot = jax.nn.one_hot(sp, n_species, dtype=rad.dtype)[geo.j]    # (pairs, S)
    if neighbor is None:
        return jnp.einsum("ijs,ijk,ijl->iskl", onehot, rad, ylm)
    terms = onehot[:, :, None, None] * rad[:, None, :, None] * ylm[:, None, None, :]
    return jax.ops.segment_sum(terms, geo.i, n)


def _invariants(base, tables: _Tables):
    """Rotation-invariant features (N, F) of the atomic base (N, S, n_basis, n_lm): nu = 1, 2, 3 blocks."""
    n = base.shape[0]
    a = base.reshape(n, -1, base.shape[-1])                              # (N, channels, n_lm)
    blocks = [a[:, tables.c1, 0]]
    if tables.n_l2:
        a2 = a[:, tables.c2]
        rows, cols = tables.pairs2
        for l in range(tables.n_l2):
            al = a2[:, :, l * l:(l + 1) ** 2]
            blocks.append(jnp.einsum("ikm,ijm->ikj", al, al)[:, rows, cols])
    if tables.n3:
        f, i1, i2, i3, coef = tables.terms3
        flat = a.reshape(n, -1)
        prod = flat[:, i1] * flat[:, i2] * flat[:, i3] * jnp.asarray(coef, a.dtype)
        blocks.append(jax.ops.segment_sum(prod.T, jnp.asarray(f), tables.n3, indices_are_sorted=True).T)
    return jnp.concatenate(blocks, axis=1)


# ----------------------------------------------------------------------------- the descriptor


class ACEDescriptor(Descriptor):
    """ACE features of body order 2..4 as a :class:`~jaxiap.descriptors.base.Descriptor`.

    n_max: radial functions per species channel, an int or one per correlation
        order nu = 1..body_order - 1 (e.g. (8, 6, 4)).
    l_max: largest angular momentum, an int or one per nu = 2..body_order - 1
        (nu = 1 has l = 0 only; ignored for body_order 2).
    r_cut, r_min: cutoff and inner radius of the radial basis (length units
        of the positions; R_n and its first two derivatives vanish at r_cut).
    n_species: neighbour-species channels (species= is then required).
    body_order: 2, 3 or 4 (correlation order nu <= body_order - 1).
    radial: the :class:`RadialBasis` family ("chebyshev", "bessel", "gaussian").
    cutoff_order: exponent p of the cutoff (1 - r/r_cut)^p, >= 3.
    center_resolved: repeat the features once per centre species (one-hot of
        the centre's species times the features), F -> n_species * F.

    ``atomic`` is (N, F) with F = sum of :func:`ace_basis_count`, ordered
    nu = 1, 2, 3 (``labels`` names every column); ``structure`` is their sum.
    """

    radial: RadialBasis
    n_species: int = eqx.field(static=True)
    body_order: int = eqx.field(static=True)
    n_max: tuple = eqx.field(static=True)
    l_max: tuple = eqx.field(static=True)
    center_resolved: bool = eqx.field(static=True)

    def __init__(self, n_max=6, l_max=3, r_cut=3.0, r_min=0.8, *, n_species: int = 1,
                 body_order: int = 4, radial: str = "chebyshev", cutoff_order: int = 3,
                 center_resolved: bool = False):
        self.n_max, self.l_max = _orders(n_max, l_max, body_order)
        if isinstance(n_species, bool) or int(n_species) != n_species or int(n_species) < 1:
            raise JaxiapInputError(f"ACEDescriptor: n_species={n_species!r} must be an int >= 1")
        if not any(isinstance(v, jax.core.Tracer) or np.ndim(v) for v in (r_cut, r_min)):  # concrete scalars
            if not float(r_min) > 0.0:
                raise JaxiapInputError(f"ACEDescriptor: r_min={float(r_min)} must be > 0; pass e.g. r_min=0.5")
            if not float(r_cut) > float(r_min):
                raise JaxiapInputError(
                    f"ACEDescriptor: r_cut={float(r_cut)} must be larger than r_min={float(r_min)} (the radial "
                    "basis lives on [r_min, r_cut]); raise r_cut or lower r_min"
                )
        self.radial = RadialBasis(radial, max(self.n_max), r_min, r_cut, cutoff_order)
        self.n_species, self.body_order = int(n_species), int(body_order)
        self.center_resolved = bool(center_resolved)

    @property
    def _tables(self) -> _Tables:
        return _tables(self.n_species, self.n_max, self.l_max)

    @property
    def n_features(self) -> int:
        return sum(self.counts.values())

    @property
    def counts(self) -> dict[int, int]:
        """{body order: number of features}, see :func:`ace_basis_count`."""
        return ace_basis_count(self.n_max, self.l_max, self.n_species, self.body_order, self.center_resolved)

    @property
    def labels(self) -> tuple:
        """One label per feature column: ((z, n, l), ...) per factor (nu factors), prefixed by the centre
        species (an int) when ``center_resolved``."""
        labels = self._tables.labels
        if self.center_resolved:
            return tuple((s,) + lab for s in range(self.n_species) for lab in labels)
        return labels

    @property
    def cutoff(self):
        return self.radial.r_cut

    def _species(self, species):
        if self.n_species > 1 and species is None:
            raise JaxiapInputError(
                f"ACEDescriptor with n_species={self.n_species} needs species= (N,) int indices"
            )
        return species

    def base(self, positions, *, mask=None, species=None, box=None, neighbor=None):
        """The atomic base A (N, n_species, max n_max, (max l_max + 1)^2), see :func:`atomic_base`."""
        species = self._species(species)
        check_cell(box, self.radial.r_cut, "ACEDescriptor: box")
        return atomic_base(self.radial, max(self.l_max, default=0), positions, mask, box, species,
                           self.n_species, neighbor)

    def atomic(self, positions, *, mask=None, species=None, box=None, neighbor=None):
        """Per-atom features (N, F); zero rows for padded atoms. positions (N, 3), box None/(3,)/(3, 3) rows."""
        feats = _invariants(self.base(positions, mask=mask, species=species, box=box, neighbor=neighbor),
                           self._tables)
        if not self.center_resolved:
            return feats
        sp = jnp.zeros(positions.shape[0], jnp.int32) if self.n_species == 1 else species
        onehot = jax.nn.one_hot(sp, self.n_species, dtype=feats.dtype)
        return (onehot[:, :, None] * feats[:, None, :]).reshape(positions.shape[0], -1)

    def harmonics(self, unit_vectors):
        """Real spherical harmonics (..., (l_max + 1)^2) of unit vectors (..., 3) up to this basis's l_max."""
        return real_spherical_harmonics(unit_vectors, max(self.l_max, default=0))

    def invariants(self, base):
        """Invariants (N, F) of atomic bases A (N, n_species, n_radial, (l_max + 1)^2) (:meth:`base`)."""
        return _invariants(base, self._tables)

    def design_rows_fn(self, structures):
        """Chain-rule design rows (:mod:`jaxiap.descriptors.ace_rows`) of ``structures``, or None when not
        supported (several species, ``center_resolved``, triclinic cells, traced arrays): see
        :meth:`jaxiap.descriptors.base.Descriptor.design_rows_fn`."""
        return design_rows_fn(self, structures)
