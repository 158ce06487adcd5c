"""Labelled datasets: structures plus energies, forces and per-row weights.

Shapes (S structures, N padded atoms):

- ``energy`` (S,) total energies;
- ``forces`` (S, N, 3) (zero on padding);
- ``energy_weight`` (S,) and ``force_weight`` (S,) non-negative row weights
  (precisions, i.e. 1/sigma^2 up to a common factor) applied to the energy row
  and to every force row of that structure.

Extended XYZ is read and written through ``ase.io``.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from jaxiap import runfolder
from jaxiap.errors import JaxiapInputError
from jaxiap.structures import Structures, from_atoms, take_rows, to_atoms


def _check_finite(name: str, value) -> None:
    arr = np.asarray(value)
    bad = ~np.isfinite(arr)
    if bad.any():
        first = np.argwhere(bad)[0].tolist()
        raise JaxiapInputError(
            f"{name} contains {int(bad.sum())} NaN/inf value(s) (first at index {first}); "
            "remove or relabel those structures"
        )


class Dataset(eqx.Module):
    structures: Structures
    energy: jnp.ndarray
    forces: jnp.ndarray
    energy_weight: jnp.ndarray
    force_weight: jnp.ndarray

    def __init__(self, structures, energy, forces, energy_weight=None, force_weight=None):
        s, n = structures.positions.shape[:2]
        energy = jnp.asarray(energy)
        forces = jnp.asarray(forces)
        if tuple(energy.shape) != (s,):
            raise JaxiapInputError(f"energy must have shape (S,) = ({s},), got {tuple(energy.shape)}")
        if tuple(forces.shape) != (s, n, 3):
            raise JaxiapInputError(
                f"forces must have shape (S, N, 3) = {(s, n, 3)}, got {tuple(forces.shape)}"
            )
        energy_weight = jnp.ones(s) if energy_weight is None else jnp.broadcast_to(jnp.asarray(energy_weight, float), (s,))
        force_weight = jnp.ones(s) if force_weight is None else jnp.broadcast_to(jnp.asarray(force_weight, float), (s,))
        if not isinstance(energy, jax.core.Tracer):
            _check_finite("positions", structures.positions)
            _check_finite("energy", energy)
            _check_finite("forces", forces)
            for name, w in (("energy_weight", energy_weight), ("force_weight", force_weight)):
                _check_finite(name, w)
                if (np.asarray(w) < 0).any():
                    raise JaxiapInputError(
                        f"{name} has negative entries (min {float(np.min(w)):.3g}); weights are precisions and must be >= 0"
                    )
        self.structures = structures
        self.energy = energy
        self.forces = jnp.where(structures.mask[..., None], forces, 0.0)
        self.energy_weight = energy_weight
        self.force_weight = force_weight

    def __len__(self) -> int:
        return self.energy.shape[0]

    def __getitem__(self, idx) -> "Dataset":
        idx = np.atleast_1d(np.arange(len(self))[idx])
        return Dataset(
            self.structures[idx], take_rows(self.energy, idx), take_rows(self.forces, idx),
            take_rows(self.energy_weight, idx), take_rows(self.force_weight, idx),
        )

    @property
    def n_force_rows(self) -> int:
        return int(3 * np.sum(np.asarray(self.structures.mask)))

    def with_weights(self, energy_weight=None, force_weight=None) -> "Dataset":
        return Dataset(
            self.structures, self.energy, self.forces,
            self.energy_weight if energy_weight is None else energy_weight,
            self.force_weight if force_weight is None else force_weight,
        )


def concatenate(datasets) -> Dataset:
    """Join datasets with the same padded atom count and species names."""
    datasets = list(datasets)
    n = {d.structures.n_max for d in datasets}
    if len(n) != 1:
        raise JaxiapInputError(f"datasets have different padded atom counts {sorted(n)}; re-pad with from_atoms(n_max=...)")
    cat = lambda f: jnp.concatenate([f(d) for d in datasets])
    boxes = [d.structures.box for d in datasets]
    box = None if boxes[0] is None else jnp.concatenate(boxes)
    st = Structures(
        cat(lambda d: d.structures.positions), cat(lambda d: d.structures.species),
        cat(lambda d: d.structures.mask), box, datasets[0].structures.species_names,
    )
    return Dataset(st, cat(lambda d: d.energy), cat(lambda d: d.forces),
                   cat(lambda d: d.energy_weight), cat(lambda d: d.force_weight))


_permutation = jax.jit(jax.random.permutation, static_argnums=1)  # one compile, not one per eager op


def split(key, dataset: Dataset, fractions=(0.8, 0.2)) -> list[Dataset]:
    """Random split into parts with the given fractions (which must sum to 1)."""
    fractions = np.asarray(fractions, float)
    if (fractions < 0).any() or not np.isclose(fractions.sum(), 1.0):
        raise JaxiapInputError(f"fractions must be non-negative and sum to 1, got {fractions.tolist()}")
    perm = np.asarray(_permutation(key, len(dataset)))
    bounds = np.round(np.cumsum(fractions) * len(dataset)).astype(int)
    parts, start = [], 0
    for stop in bounds:
        parts.append(dataset[perm[start:stop]])
        start = stop
    return parts


def to_atoms_list(dataset: Dataset) -> list:
    """ASE Atoms with a SinglePointCalculator holding energy and forces."""
    from ase.calculators.singlepoint import SinglePointCalculator  # lazy: ase only for ASE conversion (keeps import jaxiap fast)

    atoms = to_atoms(dataset.structures)
    mask = np.asarray(dataset.structures.mask)
    for k, a in enumerate(atoms):
        a.calc = SinglePointCalculator(
            a, energy=float(dataset.energy[k]), forces=np.asarray(dataset.forces[k])[mask[k]]
        )
        a.info["energy_weight"] = float(dataset.energy_weight[k])
        a.info["force_weight"] = float(dataset.force_weight[k])
    return atoms


def from_atoms_list(atoms_list, species_names=None, n_max=None) -> Dataset:
    """Dataset from ASE Atoms that carry energies and forces (calculator or info/arrays)."""
    atoms_list = list(atoms_list)
    st = from_atoms(atoms_list, species_names=species_names, n_max=n_max)
    s, n = st.positions.shape[:2]
    energy = np.zeros(s)
    forces = np.zeros((s, n, 3))
    ew = np.ones(s)
    fw = np.ones(s)
    for k, a in enumerate(atoms_list):
        try:
            energy[k] = a.get_potential_energy()
            forces[k, : len(a)] = a.get_forces()
        except Exception as exc:  # noqa: BLE001 - ASE raises many kinds here
            raise JaxiapInputError(
                f"structure {k} has no energy/forces ({exc}); label it with a calculator first"
            ) from exc
        ew[k] = a.info.get("energy_weight", 1.0)
        fw[k] = a.info.get("force_weight", 1.0)
    return Dataset(st, energy, forces, ew, fw)


def write_extxyz(path, dataset: Dataset) -> None:
    """Write energies, forces and weights to an extended-XYZ file."""
    import ase.io  # lazy: ase.io only for file I/O

    with runfolder.atomic_path(path) as tmp:
        ase.io.write(str(tmp), to_atoms_list(dataset), format="extxyz")


def read_extxyz(path, species_names=None, n_max=None, index=":") -> Dataset:
    """Read an extended-XYZ file with energies and forces into a Dataset."""
    import ase.io  # lazy: ase.io only for file I/O

    return from_atoms_list(ase.io.read(str(path), index=index, format="extxyz"), species_names, n_max)


def save_npz(path, dataset: Dataset) -> None:
    """Lossless float64 copy of a dataset (extxyz keeps only 8 decimals of positions)."""
    st = dataset.structures
    arrays = dict(positions=st.positions, species=st.species, mask=st.mask, energy=dataset.energy,
                  forces=dataset.forces, energy_weight=dataset.energy_weight, force_weight=dataset.force_weight,
                  species_names=np.asarray(st.species_names))
    if st.box is not None:
        arrays["box"] = st.box
    runfolder.savez(path, **{k: np.asarray(v) for k, v in arrays.items()})


def load_npz(path) -> Dataset:
    """Read a dataset written by :func:`save_npz`; an unreadable file raises JaxiapInputError naming it."""
    with runfolder.read_npz(path, "dataset") as z:
        st = Structures(jnp.asarray(z["positions"]), jnp.asarray(z["species"]), jnp.asarray(z["mask"]),
                        jnp.asarray(z["box"]) if "box" in z else None, tuple(str(s) for s in z["species_names"]))
        return Dataset(st, z["energy"], z["forces"], z["energy_weight"], z["force_weight"])
