"""Pair geometry shared by reference potentials and descriptors.

Distances are made safe for autodiff: masked pairs (diagonal, padding) get a
dummy distance so that gradients stay finite, and callers zero their
contribution with the returned pair mask.

Cells (the ``box`` argument everywhere in jaxiap):

- ``None``: a free cluster (no periodicity);
- ``(3,)``: orthorhombic box lengths;
- ``(3, 3)``: a general (triclinic) cell whose ROWS are the lattice vectors,
  ASE's ``atoms.cell`` convention (positions r = f @ box for fractional f).
  jax-md's ``space.periodic_general`` takes the transpose (columns are the
  lattice vectors); :func:`periodic_space` converts.

Positions are always Cartesian. The minimum-image convention is used, so a
periodic cell must be wider than twice the cutoff in every direction
(:func:`check_cell`); this holds for the dense path and for jax-md neighbour
lists alike (both see one image per pair).

Two ways to enumerate pairs, with the same result:

- dense (:func:`pair_distances`): all N^2 pairs, O(N^2) work and memory;
  the default, and the faster one for small free clusters such as LJ13;
- neighbour list (:func:`neighbor_pairs`): a jax-md
  ``partition.NeighborList`` (Dense ``(N, K)`` or Sparse/OrderedSparse
  ``(2, P)`` format) gives candidate partners; distances are recomputed here
  from the positions and the cell, so the list only needs to contain every
  pair inside the cutoff (jax-md's skin ``dr_threshold`` guarantees that
  between updates).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxiap.errors import JaxiapInputError


def minimum_image(dr, box):
    """Minimum-image displacement vectors dr (..., 3) in a cell ``box`` ((3,) or (3, 3) rows), or dr for None."""
    if box is None:
        return dr
    if box.ndim == 1:
        return dr - box * jnp.round(dr / box)
    frac = dr @ jnp.linalg.inv(box)
    return (frac - jnp.round(frac)) @ box


def displacements(positions, box=None):
    """(N, N, 3) displacement vectors r_j - r_i (minimum image when ``box`` is given)."""
    dr = positions[None, :, :] - positions[:, None, :]
    if box is not None:
        dr = minimum_image(dr, jnp.asarray(box))
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


class NeighborPairs(NamedTuple):
    """Pairs (i, j) from a neighbour list, in the list's own layout.

    Dense lists give arrays of shape (N, K) (row i holds the partners of atom
    i); sparse lists give (P,). ``r`` holds ``dummy`` where ``mask`` is False
    (padding slots, padded atoms). ``ordered`` is True for jax-md's
    OrderedSparse format, where each unordered pair appears once (i < j)
    instead of twice.
    """

    i: jnp.ndarray
    j: jnp.ndarray
    r: jnp.ndarray
    mask: jnp.ndarray
    ordered: bool


def is_sparse(neighbor) -> bool:
    """True for jax-md's Sparse and OrderedSparse neighbour-list formats (idx (2, P))."""
    return getattr(neighbor.format, "name", str(neighbor.format)) in ("Sparse", "OrderedSparse")


def neighbor_pairs(positions, neighbor, mask=None, box=None, dummy: float = 1.0e3) -> NeighborPairs:
    """Distances of the candidate pairs of a jax-md neighbour list.

    positions (N, 3); neighbor: a ``jax_md.partition.NeighborList`` built for
    these N atoms; mask (N,) bool or None; box None, (3,) or (3, 3) rows.
    jax-md pads with index N; those slots (and pairs touching a padded atom,
    and i == j) are masked.
    """
    n = positions.shape[0]
    atom_mask = jnp.ones(n, bool) if mask is None else mask
    idx = neighbor.idx
    if is_sparse(neighbor):
        i, j = idx[0], idx[1]
        ordered = getattr(neighbor.format, "name", "") == "OrderedSparse"
    else:
        i = jnp.broadcast_to(jnp.arange(n, dtype=idx.dtype)[:, None], idx.shape)
        j, ordered = idx, False
    valid = (i < n) & (j < n) & (i != j)
    i_safe, j_safe = jnp.where(valid, i, 0), jnp.where(valid, j, 0)
    valid = valid & atom_mask[i_safe] & atom_mask[j_safe]
    dr = positions[j_safe] - positions[i_safe]
    if box is not None:
        dr = minimum_image(dr, jnp.asarray(box))
    r2 = jnp.where(valid, jnp.sum(dr**2, axis=-1), dummy**2)
    return NeighborPairs(i_safe, j_safe, jnp.sqrt(r2), valid, ordered)


def scatter_pairs(values, pairs: NeighborPairs, n_atoms: int):
    """Per-atom sums 1/2 sum_j values_ij (N, ...) of per-pair values (pair layout + trailing dims).

    Each unordered pair contributes half to each of its atoms (so that the
    sum over atoms is the sum over pairs), whatever the list format.
    Masked pairs must already hold 0.
    """
    if values.ndim == pairs.i.ndim:
        tail = ()
    else:
        tail = values.shape[pairs.i.ndim:]
    flat_v = values.reshape((-1,) + tail)
    if pairs.ordered:
        out = jax.ops.segment_sum(flat_v, pairs.i.reshape(-1), n_atoms)
        out = out + jax.ops.segment_sum(flat_v, pairs.j.reshape(-1), n_atoms)
        return 0.5 * out
    if pairs.i.ndim == 2:  # dense (N, K): row i is atom i
        return 0.5 * jnp.sum(values, axis=1)
    return 0.5 * jax.ops.segment_sum(flat_v, pairs.i.reshape(-1), n_atoms)


def cell_widths(box) -> np.ndarray:
    """Perpendicular widths (3,) of a cell ((3,) lengths or (3, 3) rows): the distances between opposite faces."""
    box = np.asarray(box, float)
    if box.ndim == 1:
        return box
    vol = abs(np.linalg.det(box))
    return np.array([vol / np.linalg.norm(np.cross(box[(k + 1) % 3], box[(k + 2) % 3])) for k in range(3)])


def check_cell(box, r_cut, where: str = "box") -> None:
    """Raise JaxiapInputError if a concrete cell is not wider than 2 * r_cut (minimum image).

    Traced cells (inside jit) are not checked.
    """
    if box is None or r_cut is None or isinstance(box, jax.core.Tracer) or isinstance(r_cut, jax.core.Tracer):
        return
    box = np.asarray(box)
    if box.shape not in ((3,), (3, 3)):
        raise JaxiapInputError(
            f"{where} must be (3,) orthorhombic lengths or a (3, 3) cell (rows = lattice vectors), got {box.shape}"
        )
    w = cell_widths(box)
    if float(w.min()) < 2.0 * float(r_cut):
        raise JaxiapInputError(
            f"{where}: the cell (perpendicular widths {np.round(w, 4).tolist()}) is narrower than "
            f"2 * r_cut = {2.0 * float(r_cut):g}, so the minimum-image convention would miss pairs; "
            "use a larger supercell (e.g. atoms.repeat) or a shorter cutoff"
        )


def periodic_space(box, r_cut: float, *, dr_threshold: float = 0.5, capacity_multiplier: float = 1.25,
                   format: str = "dense", disable_cell_list: bool | None = None):
    """jax-md ``(displacement_fn, shift_fn, neighbor_fn)`` for a cell and a cutoff.

    box: None (free cluster: ``space.free()``), (3,) orthorhombic lengths
        (``space.periodic``), (3, 3) cell rows (``space.periodic_general``
        with Cartesian coordinates), or a ``Structures`` whose structures all
        share one cell.
    r_cut: interaction cutoff; the neighbour list holds every pair within
        ``r_cut + dr_threshold`` and stays valid until an atom has moved
        ``dr_threshold / 2`` (jax-md's skin; ``neighbor.update`` rebuilds then).
    format: "dense" (idx (N, K)), "sparse" or "ordered_sparse" (idx (2, P)).
    disable_cell_list: None lets jax-md decide (cell lists need a cell at
        least 3 * (r_cut + dr_threshold) wide, else it falls back to O(N^2)).

    Positions are Cartesian throughout (also for triclinic cells). Bind the
    cell into the energy (``energy_fn(pot, box=box)``) rather than passing
    ``box=`` to jax-md step functions: jax-md forwards step keywords to
    ``shift_fn``, and ``periodic_general`` reads ``box=`` as its transposed
    (column) cell.
    Raises JaxiapInputError when the cell is narrower than 2 * (r_cut + dr_threshold).
    """
    from jax_md import partition, space  # lazy: jax_md takes seconds to import (keeps jaxiap --help fast)

    if hasattr(box, "positions") and hasattr(box, "box"):  # a Structures batch
        st = box
        if st.box is None:
            box = None
        else:
            b = np.asarray(st.box)
            if not np.all(b == b[:1]):
                raise JaxiapInputError(
                    "periodic_space: the Structures have different cells; pass one structure's box "
                    "(structures.box[k]) instead"
                )
            box = b[0]
    formats = {"dense": partition.NeighborListFormat.Dense, "sparse": partition.NeighborListFormat.Sparse,
               "ordered_sparse": partition.NeighborListFormat.OrderedSparse}
    if format not in formats:
        raise JaxiapInputError(f"periodic_space: format={format!r} is unknown; choose one of {tuple(formats)}")
    if not (np.isfinite(r_cut) and r_cut > 0 and np.isfinite(dr_threshold) and dr_threshold >= 0):
        raise JaxiapInputError(
            f"periodic_space: need r_cut > 0 and dr_threshold >= 0, got r_cut={r_cut}, dr_threshold={dr_threshold}"
        )
    r_list = float(r_cut) + float(dr_threshold)
    kw = dict(dr_threshold=float(dr_threshold), capacity_multiplier=capacity_multiplier, format=formats[format])
    if box is None:
        displacement_fn, shift_fn = space.free()
        # no cell to bin into: jax-md's O(N^2) allocation; the box argument is then unused
        neighbor_fn = partition.neighbor_list(displacement_fn, jnp.ones(3), r_list, disable_cell_list=True, **kw)
        return displacement_fn, shift_fn, neighbor_fn
    box = np.asarray(box, float)
    check_cell(box, r_list, "periodic_space: box (with the skin dr_threshold)")
    if box.ndim == 1:
        displacement_fn, shift_fn = space.periodic(jnp.asarray(box))
        nl_box = jnp.asarray(box)
    else:
        t = jnp.asarray(box.T)  # jax-md: columns are the lattice vectors
        displacement_fn, shift_fn = space.periodic_general(t, fractional_coordinates=False)
        nl_box = t
    if disable_cell_list is None:
        disable_cell_list = bool(cell_widths(box).min() < 3.0 * r_list)
    neighbor_fn = partition.neighbor_list(displacement_fn, nl_box, r_list, disable_cell_list=disable_cell_list,
                                          fractional_coordinates=False, **kw)
    return displacement_fn, shift_fn, neighbor_fn
