"""Batches of atomic structures padded to a fixed atom count.

A ``Structures`` batch holds S structures of at most N atoms each:

- ``positions`` (S, N, 3) float, length units of the data (reduced or Å);
- ``species``   (S, N) int, index into ``species_names`` (0 for padding);
- ``mask``      (S, N) bool, True for real atoms;
- ``box``       (S, 3) float orthorhombic box lengths, (S, 3, 3) general
  (triclinic) cells whose rows are the lattice vectors (ASE's
  ``atoms.cell``), or None for free clusters. Positions are Cartesian; the
  minimum-image convention applies, so a cell must be wider than twice the
  cutoff of the potential (see :mod:`jaxiap.geometry`).

Padding keeps one compiled program for the whole batch: a batch never
recompiles per structure.
"""

from __future__ import annotations

from typing import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from jaxiap.errors import JaxiapInputError


class Structures(eqx.Module):
    positions: jnp.ndarray
    species: jnp.ndarray
    mask: jnp.ndarray
    box: jnp.ndarray | None = None
    species_names: tuple[str, ...] = eqx.field(static=True, default=("X",))

    def __check_init__(self):
        pos = self.positions
        if pos.ndim != 3 or pos.shape[-1] != 3:
            raise JaxiapInputError(
                f"positions must have shape (S, N, 3), got {tuple(pos.shape)}; "
                "add a leading batch axis for a single structure"
            )
        s, n = pos.shape[:2]
        if tuple(self.species.shape) != (s, n):
            raise JaxiapInputError(
                f"species must have shape (S, N) = {(s, n)}, got {tuple(self.species.shape)}"
            )
        if tuple(self.mask.shape) != (s, n):
            raise JaxiapInputError(
                f"mask must have shape (S, N) = {(s, n)}, got {tuple(self.mask.shape)}"
            )
        if self.box is not None and tuple(self.box.shape) not in ((s, 3), (s, 3, 3)):
            raise JaxiapInputError(
                f"box must have shape (S, 3) (orthorhombic lengths) or (S, 3, 3) (cell rows), "
                f"got {tuple(self.box.shape)}"
            )

    @property
    def n_structures(self) -> int:
        return self.positions.shape[0]

    @property
    def n_max(self) -> int:
        return self.positions.shape[1]

    @property
    def n_atoms(self) -> jnp.ndarray:
        """(S,) number of real atoms per structure."""
        return jnp.sum(self.mask, axis=1)

    def __len__(self) -> int:
        return self.n_structures

    def __getitem__(self, idx) -> "Structures":
        """Select structures by index array or slice (keeps the batch axis)."""
        idx = np.atleast_1d(np.arange(self.n_structures)[idx])
        return Structures(
            positions=take_rows(self.positions, idx),
            species=take_rows(self.species, idx),
            mask=take_rows(self.mask, idx),
            box=None if self.box is None else take_rows(self.box, idx),
            species_names=self.species_names,
        )


def take_rows(a, idx):
    """a[idx] for a host index array: numpy indexing of concrete arrays (no per-shape gather compile),
    JAX indexing of traced ones; the values are the same."""
    if isinstance(a, jax.core.Tracer):
        return a[idx]
    return jnp.asarray(np.asarray(a)[idx])


def from_positions(positions, species_names: Sequence[str] = ("X",), box=None) -> Structures:
    """Batch of equal-size structures of one species from (S, N, 3) positions."""
    positions = jnp.asarray(positions)
    if positions.ndim == 2:
        positions = positions[None]
    if positions.ndim != 3:
        raise JaxiapInputError(f"positions must be (S, N, 3) or (N, 3), got {positions.shape}")
    s, n = positions.shape[:2]
    if box is not None:
        box = jnp.asarray(box, positions.dtype)
        cell_shape = (3, 3) if box.shape[-2:] == (3, 3) else (3,)
        box = jnp.broadcast_to(box, (s,) + cell_shape)
    return Structures(
        positions=positions,
        species=jnp.zeros((s, n), jnp.int32),
        mask=jnp.ones((s, n), bool),
        box=box,
        species_names=tuple(species_names),
    )


def _cell(atoms, where: str) -> np.ndarray | None:
    """(3,) lengths of an orthorhombic cell, (3, 3) rows of a triclinic one, or None (free)."""
    if not any(atoms.pbc):
        return None
    if not all(atoms.pbc):
        raise JaxiapInputError(
            f"{where}: mixed periodicity pbc={tuple(atoms.pbc)} is not supported; "
            "use a fully periodic cell or a free cluster (pbc=False)"
        )
    cell = np.asarray(atoms.cell[:], float)
    if abs(np.linalg.det(cell)) < 1e-12:
        raise JaxiapInputError(f"{where}: the periodic cell is singular (zero volume), cell=\n{cell}")
    if np.allclose(cell, np.diag(np.diag(cell))):
        return np.diag(cell).copy()
    return cell


def from_atoms(
    atoms_list,
    species_names: Sequence[str] | None = None,
    n_max: int | None = None,
) -> Structures:
    """Convert ASE ``Atoms`` (one or a list) to a padded ``Structures`` batch.

    species_names: element symbols in index order; inferred (sorted) if None.
    A symbol not in ``species_names`` raises an error naming it.
    n_max: pad to this many atoms (default: the largest structure).
    """
    if hasattr(atoms_list, "get_positions"):
        atoms_list = [atoms_list]
    atoms_list = list(atoms_list)
    if not atoms_list:
        raise JaxiapInputError("atoms_list is empty: pass at least one ase.Atoms")
    if species_names is None:
        species_names = sorted({s for a in atoms_list for s in a.get_chemical_symbols()})
    species_names = tuple(species_names)
    index = {name: i for i, name in enumerate(species_names)}
    longest = max(len(a) for a in atoms_list)
    n_max = longest if n_max is None else n_max
    if n_max < longest:
        raise JaxiapInputError(f"n_max={n_max} is smaller than the largest structure ({longest} atoms)")
    s = len(atoms_list)
    pos = np.zeros((s, n_max, 3))
    spc = np.zeros((s, n_max), np.int32)
    msk = np.zeros((s, n_max), bool)
    boxes = []
    for k, a in enumerate(atoms_list):
        n = len(a)
        pos[k, :n] = a.get_positions()
        for i, sym in enumerate(a.get_chemical_symbols()):
            if sym not in index:
                raise JaxiapInputError(
                    f"structure {k}: unknown species {sym!r}; species_names={species_names}. "
                    "Add it to species_names or drop the structure"
                )
            spc[k, i] = index[sym]
        msk[k, :n] = True
        boxes.append(_cell(a, f"structure {k}"))
    if all(b is None for b in boxes):
        box = None
    elif any(b is None for b in boxes):
        raise JaxiapInputError("a batch mixes periodic and free structures; split it into two batches")
    elif all(b.ndim == 1 for b in boxes):
        box = jnp.asarray(np.stack(boxes))
    else:  # some triclinic: every cell as (3, 3) rows
        box = jnp.asarray(np.stack([np.diag(b) if b.ndim == 1 else b for b in boxes]))
    return Structures(jnp.asarray(pos), jnp.asarray(spc), jnp.asarray(msk), box, species_names)


def to_atoms(structures: Structures) -> list:
    """Convert a ``Structures`` batch to a list of ASE ``Atoms`` (padding dropped)."""
    from ase import Atoms  # lazy: ase only for ASE conversion (keeps import jaxiap fast)

    pos = np.asarray(structures.positions)
    spc = np.asarray(structures.species)
    msk = np.asarray(structures.mask)
    out = []
    for k in range(pos.shape[0]):
        m = msk[k]
        symbols = [structures.species_names[i] for i in spc[k][m]]
        kwargs = {}
        if structures.box is not None:
            b = np.asarray(structures.box[k])
            kwargs = dict(cell=np.diag(b) if b.ndim == 1 else b, pbc=True)
        out.append(Atoms(symbols=symbols, positions=pos[k][m], **kwargs))
    return out
