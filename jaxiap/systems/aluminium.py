"""FCC aluminium cells labelled by ASE's EMT: the periodic check of the framework.

Units: ASE's (energies eV, lengths Å, masses amu, so the time unit is
Å sqrt(amu / eV) ~ 10.18 fs; ``ase.units.fs`` converts). jax-md integrators
run in the same units when given ``mass=AL_MASS`` and ``dt`` in ASE time.

- :func:`al_fcc`: the cubic FCC cell (a = 4.046 Å, 4 atoms) repeated
  (``repeat=2``: 32 atoms, 8.09 Å; ``repeat=3``: 108 atoms, 12.14 Å);
- :func:`emt_dataset`: rattled copies labelled by EMT, reproducible from a seed;
- :func:`fit_al_potential`: a radial linear potential (per-atom reference
  energy included) fitted by least squares to such data;
- :func:`al_md_setup`: what an MD run of a fitted potential needs (positions,
  cell, masses, jax-md shift function, neighbour-list function, energy
  function bound to the cell).

The minimum-image convention needs a cell wider than 2 * r_cut (plus the
neighbour-list skin): the 32-atom cell (8.09 Å) allows r_cut < 4.05 Å
(first neighbour shell only), so a fit with r_cut = 5 Å (three shells) uses
the 108-atom cell.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.data import atomic_masses, atomic_numbers

from jaxiap.data import Dataset
from jaxiap.descriptors.radial import RadialBasis, RadialDescriptor
from jaxiap.errors import JaxiapInputError
from jaxiap.geometry import periodic_space
from jaxiap.inference.linear import fit_lstsq, reweight
from jaxiap.potentials.base import energy_fn
from jaxiap.potentials.linear import LinearBasis, LinearPotential, design_matrix
from jaxiap.structures import from_atoms

#: FCC aluminium lattice constant (Å) of the check.
AL_LATTICE = 4.046


def al_mass() -> float:
    """Atomic mass of Al (amu), from ase.data."""
    return float(atomic_masses[atomic_numbers["Al"]])


def al_fcc(repeat: int = 2, a: float = AL_LATTICE):
    """Cubic FCC Al cell ``bulk('Al', 'fcc', a, cubic=True).repeat(repeat)`` (4 repeat^3 atoms), pbc on."""
    if not (isinstance(repeat, (int, np.integer)) and repeat >= 1):
        raise JaxiapInputError(f"al_fcc: repeat={repeat!r} must be a positive integer (2: 32 atoms, 3: 108 atoms)")
    return bulk("Al", "fcc", a=a, cubic=True).repeat(int(repeat))


def emt_dataset(repeat: int = 3, stdevs=(0.05, 0.1, 0.15, 0.2), n_per_stdev: int = 8, seed: int = 0,
                a: float = AL_LATTICE):
    """EMT-labelled rattled FCC Al cells: a :class:`~jaxiap.data.Dataset` of len(stdevs) * n_per_stdev structures.

    Each structure is :func:`al_fcc` with every atom displaced by an
    independent Gaussian of standard deviation ``stdevs[k]`` (Å) per
    component. sigma = 0.1 Å is about the thermal RMS displacement of Al at
    300 K (Debye-Waller B ~ 0.85 Å^2), so (0.05 ... 0.2) spans roughly
    75 K to 1200 K in harmonic terms. Structures are stdev-major.
    """
    if not (isinstance(n_per_stdev, (int, np.integer)) and n_per_stdev >= 1):
        raise JaxiapInputError(f"emt_dataset: n_per_stdev={n_per_stdev!r} must be a positive integer")
    stdevs = [float(s) for s in np.atleast_1d(stdevs)]
    if not stdevs or any(not (np.isfinite(s) and s >= 0) for s in stdevs):
        raise JaxiapInputError(f"emt_dataset: stdevs={stdevs} must be finite, >= 0 displacements in Å")
    rng = np.random.default_rng(seed)
    frames = []
    for s in stdevs:
        for _ in range(n_per_stdev):
            atoms = al_fcc(repeat, a)
            atoms.positions += rng.normal(scale=s, size=atoms.positions.shape)
            atoms.calc = EMT()
            e, f = atoms.get_potential_energy(), atoms.get_forces()
            atoms.calc = None
            atoms.info["energy"], atoms.arrays["forces"] = e, f
            frames.append(atoms)
    return _dataset_from_frames(frames)


def _dataset_from_frames(frames):
    st = from_atoms(frames, species_names=("Al",))
    energy = jnp.asarray([fr.info["energy"] for fr in frames])
    forces = jnp.asarray(np.stack([fr.arrays["forces"] for fr in frames]))
    return Dataset(st, energy, forces)


def al_basis(r_cut: float = 5.0, n_basis: int = 8, r_min: float = 2.0, family: str = "chebyshev"):
    """Radial linear basis for Al: ``n_basis`` radial functions inside r_cut plus a per-atom energy column."""
    return LinearBasis(RadialDescriptor(RadialBasis(family, n_basis, r_min, r_cut)), species_reference=True)


def fit_al_potential(dataset, r_cut: float = 5.0, n_basis: int = 8, r_min: float = 2.0, family: str = "chebyshev",
                     energy_weight: float = 1.0, force_weight: float = 1.0):
    """Least-squares radial linear potential for a (periodic) Al dataset: (LinearPotential, GaussianPosterior).

    The design matrix is :func:`jaxiap.potentials.linear.design_matrix` on
    the dense minimum-image path (the dataset's cells must be wider than
    2 * r_cut), solved by :func:`jaxiap.inference.linear.fit_lstsq`.
    """
    basis = al_basis(r_cut, n_basis, r_min, family)
    design = reweight(design_matrix(basis, dataset, chunk_size=16), energy_weight, force_weight)
    post = fit_lstsq(design)
    return LinearPotential(basis, post.mean), post


def al_md_setup(potential, atoms=None, repeat: int = 3, skin: float = 0.5, neighbor_format: str = "dense"):
    """Everything an MD run of ``potential`` on an Al cell needs, as a dict.

    Keys: ``positions`` (N, 3) Å (wrapped into the cell), ``box`` (3,) Å,
    ``mass`` (amu, scalar), ``displacement_fn``, ``shift_fn`` (jax-md
    ``space.periodic``), ``neighbor_fn`` (jax-md neighbour list of
    ``potential.cutoff + skin``), ``energy_fn`` (``energy(R, neighbor=...)``
    with the cell bound), ``n_atoms``. Units: eV, Å, amu, ASE time.
    """
    atoms = al_fcc(repeat) if atoms is None else atoms
    cell = np.asarray(atoms.cell[:])
    if not (all(atoms.pbc) and np.allclose(cell, np.diag(np.diag(cell)))):
        raise JaxiapInputError("al_md_setup: atoms must be a fully periodic orthorhombic cell (e.g. al_fcc(3))")
    if potential.cutoff is None:
        raise JaxiapInputError("al_md_setup: the potential needs a cutoff for the neighbour list")
    box = jnp.asarray(np.diag(cell))
    displacement_fn, shift_fn, neighbor_fn = periodic_space(box, float(potential.cutoff), dr_threshold=skin,
                                                            format=neighbor_format)
    return dict(
        positions=jnp.asarray(atoms.get_positions(wrap=True)),
        box=box,
        mass=al_mass(),
        displacement_fn=displacement_fn,
        shift_fn=shift_fn,
        neighbor_fn=neighbor_fn,
        energy_fn=energy_fn(potential, box=box),
        n_atoms=len(atoms),
    )
