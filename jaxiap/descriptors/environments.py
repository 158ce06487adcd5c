"""Local atomic environments with periodic images: neighbour vectors and triplets (fixed shapes).

The 2+3-body Gaussian process (:mod:`jaxiap.potentials.gp`) compares atoms
through their local environments rho_i = {r_j - r_i : |r_j - r_i| < r_cut},
counting every periodic image, so a cutoff may exceed half the cell width
(the 32-atom Al cell is 8.09 Å wide; FLARE uses 2-body cutoffs up to 8 Å).

:func:`environments` returns, for every atom i of one structure, with fixed
capacities so that jitted code never recompiles:

- ``vectors`` (N, K, 3): r_j + n.cell - r_i for the K nearest neighbours
  (all images n, the atom's own images included, i itself excluded), sorted
  by distance; ``mask`` (N, K) real entries; ``species`` (N, K) and
  ``center_species`` (N,);
- ``triplets`` (N, T, 2): pairs (j, k), j < k, of neighbour slots with
  |r_ij|, |r_ik| and |r_jk| all below ``r_cut_3``; ``triplet_mask`` (N, T);
- ``overflow``: True when a capacity was too small (raise it:
  :func:`check_environments` does).

Everything is a pure function of positions (N, 3), so forces and stresses
follow by autodiff through the vectors.
"""

from __future__ import annotations

import itertools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxiap.errors import JaxiapInputError
from jaxiap.geometry import cell_widths


class Environments(NamedTuple):
    """Local environments of the N atoms of one structure (or a leading batch axis)."""

    vectors: jnp.ndarray         # (N, K, 3) neighbour vectors r_j - r_i (images included)
    mask: jnp.ndarray            # (N, K) bool
    species: jnp.ndarray         # (N, K) int neighbour species
    center_species: jnp.ndarray  # (N,) int
    triplets: jnp.ndarray        # (N, T, 2) int neighbour slots (j, k), j < k
    triplet_mask: jnp.ndarray    # (N, T) bool
    overflow: jnp.ndarray        # () bool: a capacity was exceeded


def image_shifts(cell, r_cut: float) -> np.ndarray:
    """Integer image offsets (M, 3) reaching every image within r_cut of the home cell (cell None: [[0,0,0]])."""
    if cell is None:
        return np.zeros((1, 3), int)
    reach = np.ceil(float(r_cut) / cell_widths(np.asarray(cell, float))).astype(int)
    ranges = [range(-int(m), int(m) + 1) for m in reach]
    return np.array(list(itertools.product(*ranges)), int)


def _triplet_candidates(k3: int) -> np.ndarray:
    """All slot pairs (j, k), j < k, among the first k3 neighbour slots: (k3 (k3 - 1) / 2, 2)."""
    return np.array([(j, k) for j in range(k3) for k in range(j + 1, k3)], int).reshape(-1, 2)


def environments(positions, cell, species, r_cut: float, r_cut_3: float, max_neighbors: int,
                 max_triplet_neighbors: int, max_triplets: int, shifts=None) -> Environments:
    """Environments of one structure (see the module docstring).

    positions (N, 3) Å, wrapped or not (they are wrapped into the cell here); cell None (free cluster) or
    (3, 3) rows; species (N,)
    int or None; ``shifts`` the integer image offsets of :func:`image_shifts`
    (static: computed from the cell when None, which needs a concrete cell).
    ``max_triplet_neighbors``: the nearest neighbours considered for triplets.
    """
    positions = jnp.asarray(positions)
    n = positions.shape[0]
    if species is None:
        species = jnp.zeros(n, jnp.int32)
    species = jnp.asarray(species, jnp.int32)
    if shifts is None:
        shifts = image_shifts(None if cell is None else np.asarray(cell), max(r_cut, r_cut_3))
    shifts = jnp.asarray(shifts, positions.dtype)
    if cell is None:
        offsets = jnp.zeros((1, 3), positions.dtype)
    else:
        cell = jnp.asarray(cell, positions.dtype)
        # wrap into the home cell first: the shifts reach every image within r_cut only for fractional
        # differences in (-1, 1), and MD leaves atoms unwrapped (floor has zero gradient: forces unchanged)
        positions = positions - jnp.floor(positions @ jnp.linalg.inv(cell)) @ cell
        offsets = shifts @ cell  # (M, 3)
    # candidates j + image for each i: (N, N * M, 3)
    images = positions[:, None, :] + offsets[None, :, :]          # (N, M, 3) atom j at image m
    cand = images.reshape(1, -1, 3) - positions[:, None, :]        # (N, N*M, 3)
    d2 = jnp.sum(cand**2, axis=-1)
    cand_species = jnp.repeat(species, offsets.shape[0])[None, :].repeat(n, axis=0)
    self_mask = d2 < 1e-12
    within = (d2 < r_cut**2) & ~self_mask
    key = jnp.where(within, d2, jnp.inf)
    if key.shape[1] < max_neighbors:  # fewer candidates than slots (small free clusters)
        extra = max_neighbors - key.shape[1]
        key = jnp.concatenate([key, jnp.full((n, extra), jnp.inf, key.dtype)], axis=1)
        cand = jnp.concatenate([cand, jnp.zeros((n, extra, 3), cand.dtype)], axis=1)
        cand_species = jnp.concatenate([cand_species, jnp.zeros((n, extra), cand_species.dtype)], axis=1)
    neg, idx = jax.lax.top_k(-key, max_neighbors)                   # nearest first
    mask = jnp.isfinite(neg)
    vectors = jnp.take_along_axis(cand, idx[..., None], axis=1)
    vectors = jnp.where(mask[..., None], vectors, 0.0)
    nb_species = jnp.take_along_axis(cand_species, idx, axis=1)
    overflow = jnp.any(jnp.sum(within, axis=1) > max_neighbors)

    # triplets among the nearest max_triplet_neighbors slots
    k3 = min(max_triplet_neighbors, max_neighbors)
    pairs = jnp.asarray(_triplet_candidates(k3))                    # (P, 2)
    if pairs.shape[0] == 0:
        pairs = jnp.zeros((1, 2), jnp.int32)
    vj = vectors[:, pairs[:, 0]]
    vk = vectors[:, pairs[:, 1]]
    ok = mask[:, pairs[:, 0]] & mask[:, pairs[:, 1]]
    rc3 = r_cut_3**2
    ok = ok & (jnp.sum(vj**2, -1) < rc3) & (jnp.sum(vk**2, -1) < rc3) & (jnp.sum((vj - vk) ** 2, -1) < rc3)
    if k3 < 2:
        ok = jnp.zeros_like(ok)
    n_slots_in_3 = jnp.sum(mask & (jnp.sum(vectors**2, -1) < rc3), axis=1)
    if max_triplet_neighbors > 0:
        overflow = overflow | jnp.any(n_slots_in_3 > k3)
    # keep the first max_triplets valid pairs (stable order)
    order_key = jnp.where(ok, jnp.arange(pairs.shape[0])[None, :], pairs.shape[0] + 1)
    t = min(max_triplets, pairs.shape[0])
    neg_t, tidx = jax.lax.top_k(-order_key, t)
    triplet_mask = -neg_t <= pairs.shape[0]
    triplets = pairs[tidx]
    overflow = overflow | jnp.any(jnp.sum(ok, axis=1) > t)
    if t < max_triplets:  # pad to the requested capacity
        pad = max_triplets - t
        triplets = jnp.concatenate([triplets, jnp.zeros((n, pad, 2), triplets.dtype)], axis=1)
        triplet_mask = jnp.concatenate([triplet_mask, jnp.zeros((n, pad), bool)], axis=1)
    return Environments(vectors, mask, nb_species, species, triplets, triplet_mask, overflow)


def check_environments(env: Environments, where: str = "environments") -> None:
    """Raise JaxiapInputError if a capacity was exceeded (concrete environments only)."""
    if bool(np.any(np.asarray(env.overflow))):
        n_in = int(np.asarray(env.mask).sum(axis=-1).max())
        n_t = int(np.asarray(env.triplet_mask).sum(axis=-1).max())
        raise JaxiapInputError(
            f"{where}: an atom has more neighbours or triplets than the capacities allow (neighbour slots "
            f"{env.mask.shape[-1]}, largest count kept {n_in}; triplet slots {env.triplet_mask.shape[-1]}, "
            f"largest count kept {n_t}); raise max_neighbors / max_triplet_neighbors / max_triplets of the GPSettings"
        )


def used_capacities(env: Environments, multiple: int = 8) -> tuple[int, int]:
    """(neighbour slots, triplet slots) actually used by concrete environments, rounded up to ``multiple``."""
    k = int(np.asarray(env.mask).sum(axis=-1).max(initial=1))
    t = int(np.asarray(env.triplet_mask).sum(axis=-1).max(initial=1))
    k_cap, t_cap = env.mask.shape[-1], env.triplet_mask.shape[-1]
    round_up = lambda v, cap: int(min(cap, max(multiple, -(-v // multiple) * multiple)))  # noqa: E731
    return round_up(k, k_cap), round_up(t, t_cap)


def compact(env: Environments, k: int, t: int) -> Environments:
    """Environments cut to the first ``k`` neighbour and ``t`` triplet slots (valid slots come first).

    Triplets index the nearest ``max_triplet_neighbors`` slots, so ``k`` must
    cover those (the caller keeps k >= the slots any triplet uses).
    """
    return Environments(env.vectors[..., :k, :], env.mask[..., :k], env.species[..., :k], env.center_species,
                        env.triplets[..., :t, :], env.triplet_mask[..., :t], env.overflow)
