"""Pair potentials as :class:`~jaxiap.potentials.base.Potential` PyTrees.

:class:`PairPotential` sums a pair energy ``pair(r)`` over the unique pairs
of a free cluster (:func:`jaxiap.potentials.pair_sum.cluster_pair_sum`,
forces at about the cost of one energy), over all pairs densely (with a
mask or in a periodic cell, minimum image), or over the pairs of a jax-md
neighbour list; subclasses define ``pair`` and ``r_cut``.
:class:`LJ` is the Lennard-Jones reference: on the dense path with no cell
or an orthorhombic box it calls :func:`jaxiap.potentials.lj.lj_energy`, so its
energies are those of the LJ13 study to the last bit.
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp

from jaxiap.errors import JaxiapInputError
from jaxiap.geometry import check_cell, neighbor_pairs, pair_distances, scatter_pairs
from jaxiap.potentials.base import Potential
from jaxiap.potentials.lj import lj_energy, lj_pair
from jaxiap.potentials.pair_sum import cluster_pair_sum


class PairPotential(Potential):
    """E = 1/2 sum_{i != j} pair(r_ij) over pairs with r_ij < r_cut (all pairs if r_cut is None).

    Subclasses define ``pair(self, r)`` (any shape) and may set the static
    field ``r_cut`` (required with a periodic box or a neighbour list).
    """

    r_cut: float | None = eqx.field(static=True, default=None, kw_only=True)

    def pair(self, r):
        raise NotImplementedError(f"{type(self).__name__} must define pair(r)")

    @property
    def cutoff(self):
        return self.r_cut

    def _pair_sum(self, r, pair_mask):
        v = self.pair(r)
        if self.r_cut is not None:
            pair_mask = pair_mask & (r < self.r_cut)
        return jnp.where(pair_mask, v, 0.0)

    def atomic_energies(self, positions, *, mask=None, box=None, neighbor=None, species=None):
        """Per-atom energies (N,) = 1/2 sum_j pair(r_ij)."""
        self._check(box, neighbor)
        n = positions.shape[0]
        if neighbor is None:
            r, pm = pair_distances(positions, mask, box)
            return 0.5 * jnp.sum(self._pair_sum(r, pm), axis=1)
        pairs = neighbor_pairs(positions, neighbor, mask, box)
        return scatter_pairs(self._pair_sum(pairs.r, pairs.mask), pairs, n)

    def _cluster_pair(self, r):
        v = self.pair(r)
        return v if self.r_cut is None else jnp.where(r < self.r_cut, v, 0.0)

    def energy(self, positions, *, mask=None, box=None, neighbor=None, species=None):
        self._check(box, neighbor)
        if neighbor is None and box is None and mask is None:
            return cluster_pair_sum(type(self)._cluster_pair, self, positions)
        if neighbor is None:
            r, pm = pair_distances(positions, mask, box)
            return 0.5 * jnp.sum(self._pair_sum(r, pm))
        return jnp.sum(self.atomic_energies(positions, mask=mask, box=box, neighbor=neighbor))

    def _check(self, box, neighbor):
        name = type(self).__name__
        if (box is not None or neighbor is not None) and self.r_cut is None:
            raise JaxiapInputError(f"{name}: a periodic box or a neighbour list needs r_cut (set {name}(..., r_cut=...))")
        check_cell(box, self.r_cut, f"{name}: box")


class LJ(PairPotential):
    """Lennard-Jones V(r) = 4 eps [(sig/r)^12 - (sig/r)^6]; parameters ``epsilon`` and ``sigma``.

    ``r_cut`` None: all pairs (free clusters). With ``r_cut`` and ``shift``
    (default) the pair energy is shifted to zero at r_cut, as in
    :func:`jaxiap.potentials.lj.lj_energy`, which this class calls on the dense
    path (free cluster or orthorhombic box).
    """

    epsilon: jnp.ndarray
    sigma: jnp.ndarray
    shift: bool = eqx.field(static=True, default=True, kw_only=True)

    def __init__(self, epsilon=1.0, sigma=1.0, *, r_cut=None, shift=True):
        self.epsilon = jnp.asarray(epsilon, float)
        self.sigma = jnp.asarray(sigma, float)
        self.r_cut = None if r_cut is None else float(r_cut)
        self.shift = bool(shift)

    def pair(self, r):
        v = lj_pair(r, self.sigma, self.epsilon)
        if self.r_cut is not None and self.shift:
            v = v - lj_pair(jnp.asarray(self.r_cut, r.dtype), self.sigma, self.epsilon)
        return v

    def energy(self, positions, *, mask=None, box=None, neighbor=None, species=None):
        if neighbor is None and (box is None or jnp.ndim(box) == 1):
            self._check(box, neighbor)
            return lj_energy(positions, mask, box, self.r_cut, self.shift, self.sigma, self.epsilon)
        return super().energy(positions, mask=mask, box=box, neighbor=neighbor)
