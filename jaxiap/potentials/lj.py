"""Lennard-Jones energy as a pure function, reduced units (sigma = epsilon = 1).

V(r) = 4 eps [(sig/r)^12 - (sig/r)^6], summed over all pairs of a free cluster
(no cutoff), or over minimum-image pairs inside r_cut in an orthorhombic box.
:class:`jaxiap.potentials.pair.LJ` wraps it as a Potential; the LJ13 reference
system (:mod:`jaxiap.systems.lj`) re-exports it.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxiap.errors import JaxiapInputError
from jaxiap.geometry import pair_distances
from jaxiap.potentials.pair_sum import cluster_pair_sum


def lj_pair(r, sigma=1.0, epsilon=1.0):
    """Pair energy V(r) (any shape), reduced units by default."""
    sr6 = (sigma / r) ** 6
    return 4.0 * epsilon * (sr6 * sr6 - sr6)


def _lj_cluster_pair(r_cut, shift, params, r):
    sigma, epsilon = params
    v = lj_pair(r, sigma, epsilon)
    if r_cut is None:
        return v
    if shift:
        v = v - lj_pair(jnp.asarray(r_cut, r.dtype), sigma, epsilon)
    return jnp.where(r < r_cut, v, 0.0)


def lj_energy(positions, mask=None, box=None, r_cut=None, shift=True, sigma=1.0, epsilon=1.0):
    """Total LJ energy of one structure.

    positions: (N, 3); mask: (N,) bool or None; box: (3,) orthorhombic lengths
    or None (free cluster). r_cut is required with a box (and must be at most
    half the shortest box length); it is optional for a free cluster. With
    ``shift`` the pair energy is shifted to zero at r_cut.
    Returns a scalar energy in units of epsilon. A free cluster without a
    mask sums the unique pairs once (:func:`jaxiap.potentials.pair_sum.cluster_pair_sum`,
    forces at the cost of about one energy); otherwise all N^2 pairs are
    evaluated densely.
    """
    if box is not None:
        if r_cut is None:
            raise JaxiapInputError("lj_energy: a periodic box needs r_cut (e.g. r_cut=2.5)")
        if not isinstance(box, jax.core.Tracer) and float(np.min(np.asarray(box))) < 2 * r_cut:
            raise JaxiapInputError(
                f"lj_energy: box {np.asarray(box).tolist()} is smaller than 2*r_cut = {2 * r_cut}; "
                "use a larger box or a shorter cutoff"
            )
    if mask is None and box is None:
        return cluster_pair_sum(functools.partial(_lj_cluster_pair, r_cut, bool(shift)), (sigma, epsilon), positions)
    r, pair_mask = pair_distances(positions, mask, box)
    v = lj_pair(r, sigma, epsilon)
    if r_cut is not None:
        if shift:
            v = v - lj_pair(jnp.asarray(r_cut, r.dtype), sigma, epsilon)
        pair_mask = pair_mask & (r < r_cut)
    return 0.5 * jnp.sum(jnp.where(pair_mask, v, 0.0))


def lj_forces(positions, mask=None, **kwargs):
    """Forces (N, 3) = -dE/dx of :func:`lj_energy`."""
    return -jax.grad(lj_energy)(positions, mask, **kwargs)
