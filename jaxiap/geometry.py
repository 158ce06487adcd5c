"""Pair geometry shared by reference potentials and descriptors.

Distances are made safe for autodiff: masked pairs (diagonal, padding) get a
dummy distance so that gradients stay finite, and callers zero their
contribution with the returned pair mask.
"""

from __future__ import annotations

import jax.numpy as jnp


def displacements(positions, box=None):
    """(N, N, 3) displacement vectors r_j - r_i (minimum image when ``box`` (3,) is given)."""
    dr = positions[None, :, :] - positions[:, None, :]
    if box is not None:
        dr = dr - box * jnp.round(dr / box)
    return dr


def pair_distances(positions, mask=None, box=None, dummy: float = 1.0e3):
    """Distances (N, N) and pair mask (N, N) for positions (N, 3).

    The pair mask is True for i != j with both atoms real; every other entry
    of the distance matrix holds ``dummy`` so that r and all its derivatives
    are finite there.
    """
    n = positions.shape[0]
    mask = jnp.ones(n, bool) if mask is None else mask
    pair_mask = mask[:, None] & mask[None, :] & ~jnp.eye(n, dtype=bool)
    dr = displacements(positions, box)
    r2 = jnp.sum(dr**2, axis=-1)
    r2 = jnp.where(pair_mask, r2, dummy**2)
    return jnp.sqrt(r2), pair_mask
