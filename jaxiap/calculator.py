"""ASE calculator for any jaxiap :class:`~jaxiap.potentials.base.Potential`.

``JaxiapCalculator(potential)`` gives ``energy`` (and ``free_energy``, the
same), ``forces`` and, for periodic cells, ``stress``, all from one jitted
function of (potential, positions, cell): the energy, its gradient (forces)
and its gradient with respect to a homogeneous strain eps of cell and
positions (r -> r (1 + eps), cell -> cell (1 + eps), ASE row convention):

    stress = (1 / V) dE/d(eps)   (symmetrised; ASE's sign and Voigt order xx yy zz yz xz xy),

so a compressed crystal has a negative stress (positive pressure). The
function is compiled once per atom count (and neighbour-list capacity);
changing positions, cells or the potential's parameters reuses it.

Units: those of the potential (eV and Å for ASE's dynamics and optimisers;
a reduced-unit potential such as LJ(sigma=1) is read as eV and Å).
Mixed periodicity (some pbc False) is not supported; free clusters
(pbc all False) use no cell and have no stress.

``PosteriorCalculator(posterior, basis=None)`` runs any
:class:`~jaxiap.inference.posterior.Posterior` the same way: energy, forces
and stress of its mean potential (``posterior.mean_potential(basis=...)``,
through a ``JaxiapCalculator``), plus ``energy_std`` and ``forces_std`` in
``results`` from ``posterior.predict_structures``. ``GPCalculator`` is the
Gaussian-process counterpart.
"""

from __future__ import annotations

import collections

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from ase.calculators.calculator import Calculator, all_changes
from ase.stress import full_3x3_to_voigt_6_stress

from jaxiap.errors import JaxiapInputError
from jaxiap.geometry import periodic_space
from jaxiap.inference.gp_posterior import GPPosterior
from jaxiap.inference.posterior import Posterior
from jaxiap.potentials.base import Potential
from jaxiap.structures import Structures


def _efs(potential, positions, cell, species, neighbor, with_stress: bool):
    kw = {}
    if species is not None:
        kw["species"] = species
    if neighbor is not None:
        kw["neighbor"] = neighbor

    if cell is None:
        e, g = jax.value_and_grad(lambda x: potential.energy(x, **kw))(positions)
        return e, -g, jnp.zeros((3, 3), positions.dtype)

    def strained(x, eps):
        deform = jnp.eye(3, dtype=x.dtype) + eps
        return potential.energy(x @ deform, box=cell @ deform, **kw)

    eps0 = jnp.zeros((3, 3), positions.dtype)
    if not with_stress:
        e, g = jax.value_and_grad(strained)(positions, eps0)
        return e, -g, eps0
    e, (g, de) = jax.value_and_grad(strained, argnums=(0, 1))(positions, eps0)
    volume = jnp.abs(jnp.linalg.det(cell))
    return e, -g, 0.5 * (de + de.T) / volume


_efs_jit = jax.jit(_efs, static_argnames=("with_stress",))


class _Candidates(eqx.Module):
    """The part of a jax-md NeighborList the energy reads (idx, format): rebuilding the list for a new
    cell then does not retrace the compiled function (a NeighborList carries its update functions)."""

    idx: jnp.ndarray
    format: object = eqx.field(static=True)
_update_jit = jax.jit(lambda nbrs, positions: nbrs.update(positions))  # jax-md's update is not jitted itself


def _species_indices(species_names, atoms, who: str):
    """(N,) int32 indices of the atoms' symbols in ``species_names``; None when species_names is None."""
    if species_names is None:
        return None
    index = {s: i for i, s in enumerate(species_names)}
    out = []
    for sym in atoms.get_chemical_symbols():
        if sym not in index:
            raise JaxiapInputError(f"{who}: species {sym!r} is not in species_names={species_names}; add it")
        out.append(index[sym])
    return jnp.asarray(out, jnp.int32)


class JaxiapCalculator(Calculator):
    """ASE calculator of a jaxiap Potential.

    potential: a :class:`~jaxiap.potentials.base.Potential`.
    species_names: element symbols in species-index order (passed to the
        potential as ``species=``); None: no species argument (one-species
        potentials such as LJ or a radial basis with n_species=1).
    neighbor_list: use a jax-md neighbour list (needs ``potential.cutoff``);
        False (default): the dense all-pairs path, faster for small systems.
    skin: neighbour-list skin (``dr_threshold``, length); the list is updated
        every call and reallocated when it overflows.
    stress: compute the stress of periodic cells (one extra backward pass).
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(self, potential: Potential, species_names=None, neighbor_list: bool = False,
                 skin: float = 0.5, stress: bool = True, **kwargs):
        if not isinstance(potential, Potential):
            raise JaxiapInputError(
                f"JaxiapCalculator: potential must be a jaxiap Potential, got {type(potential).__name__}"
            )
        if neighbor_list and potential.cutoff is None:
            raise JaxiapInputError(
                f"JaxiapCalculator: neighbor_list=True needs a potential with a cutoff; "
                f"{type(potential).__name__}.cutoff is None (use neighbor_list=False)"
            )
        super().__init__(**kwargs)
        self.potential = potential
        self.species_names = None if species_names is None else tuple(species_names)
        self.neighbor_list = bool(neighbor_list)
        self.skin = float(skin)
        self.with_stress = bool(stress)
        self._nl = None  # (cell key, neighbor_fn, neighbor)

    def _species(self, atoms):
        return _species_indices(self.species_names, atoms, "JaxiapCalculator")

    def _neighbor(self, positions, cell):
        key = (positions.shape[0], None if cell is None else np.asarray(cell).tobytes())
        if self._nl is None or self._nl[0] != key:
            _, _, neighbor_fn = periodic_space(cell, float(self.potential.cutoff), dr_threshold=self.skin)
            self._nl = (key, neighbor_fn, neighbor_fn.allocate(positions))
            return self._nl[2]
        _, neighbor_fn, nbrs = self._nl
        nbrs = _update_jit(nbrs, positions)
        if bool(nbrs.did_buffer_overflow):
            nbrs = neighbor_fn.allocate(positions)
        self._nl = (key, neighbor_fn, nbrs)
        return nbrs

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        pbc = np.asarray(atoms.pbc)
        if pbc.any() and not pbc.all():
            raise JaxiapInputError(
                f"JaxiapCalculator: mixed periodicity pbc={tuple(pbc)} is not supported; "
                "use a fully periodic cell or a free cluster"
            )
        periodic = bool(pbc.all())
        cell = jnp.asarray(np.asarray(atoms.cell[:], float)) if periodic else None
        positions = jnp.asarray(atoms.get_positions(wrap=periodic and self.neighbor_list), float)
        neighbor = None
        if self.neighbor_list:
            nbrs = self._neighbor(positions, cell)
            neighbor = _Candidates(nbrs.idx, nbrs.format)
        # stress is always computed for periodic cells (one compiled function; ASE caches results)
        e, f, s = _efs_jit(self.potential, positions, cell, self._species(atoms), neighbor,
                           with_stress=periodic and self.with_stress)
        self.results["energy"] = float(e)
        self.results["free_energy"] = float(e)
        self.results["forces"] = np.asarray(f)
        if periodic and self.with_stress:
            self.results["stress"] = full_3x3_to_voigt_6_stress(np.asarray(s))


#: traces of the jitted std function, by atom count (a test checks one compilation per count)
STD_TRACES: collections.Counter = collections.Counter()


@eqx.filter_jit
def _predict_one(posterior, basis, positions, species, cell, species_names):
    """posterior.predict_structures of one structure (a batch of 1, no padding); compiled once per atom count."""
    STD_TRACES[positions.shape[0]] += 1  # runs at trace time only
    n = positions.shape[0]
    st = Structures(positions[None], species[None], jnp.ones((1, n), bool), None if cell is None else cell[None],
                    species_names)
    p = posterior.predict_structures(st, basis=basis)
    return p.energy[0], p.energy_std[0], p.forces[0], p.forces_std[0]


class PosteriorCalculator(Calculator):
    """ASE calculator of a jaxiap Posterior: the mean prediction and its standard deviations.

    posterior: any :class:`~jaxiap.inference.posterior.Posterior` whose
        ``predict_structures`` is traceable: Gaussian, Student-t, sample
        (committee / bootstrap / MCMC) and model-error posteriors of a linear
        model, and :class:`~jaxiap.uq.nn_uq.NNPosterior` (every method). A GP
        posterior is refused: use :class:`GPCalculator`.
    basis: the :class:`~jaxiap.potentials.linear.LinearBasis` of a linear
        posterior (required for those; ignored by NN posteriors).
    species_names, neighbor_list, skin, stress: as :class:`JaxiapCalculator`
        (the neighbour list serves the mean potential; the stds use the dense
        path, as ``predict_structures``).
    always_std: compute the stds on every call (default; an MD observer then
        reads ``calc.results["energy_std"]`` after each step). False: only when
        ``get_property("energy_std")`` / ``("forces_std")`` asks, so MD and
        optimisers pay for the mean alone (for a linear posterior the stds need
        the K force rows of the design matrix, K backward passes).

    Properties: ``energy`` (= ``free_energy``), ``forces`` and, for periodic
    cells, ``stress``, all of the posterior's mean potential
    (``posterior.mean_potential(basis=basis)``: ``LinearPotential(basis,
    mean)`` for a linear posterior, the members' mean for an NN ensemble) run
    by a :class:`JaxiapCalculator`; ``energy_std`` (eV) and ``forces_std``
    (N, 3) eV/Å, the push-forward (epistemic, no data noise) stds of
    ``posterior.predict_structures``. The mean energy and forces equal
    ``predict_structures``' to round-off. A posterior whose ``mean_potential``
    returns None (no single mean potential) gets energy and forces from
    ``predict_structures`` and no stress. Both jitted functions are compiled
    once per atom count.
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress", "energy_std", "forces_std"]

    def __init__(self, posterior: Posterior, basis=None, species_names=None, neighbor_list: bool = False,
                 skin: float = 0.5, stress: bool = True, always_std: bool = True, **kwargs):
        if not isinstance(posterior, Posterior):
            raise JaxiapInputError(f"PosteriorCalculator: posterior must be a jaxiap Posterior, got "
                                   f"{type(posterior).__name__}")
        if isinstance(posterior, GPPosterior):
            raise JaxiapInputError("PosteriorCalculator: a GP posterior predicts on the host, not in a jitted "
                                   "function; use GPCalculator(posterior.gp)")
        mean = posterior.mean_potential(basis=basis)
        super().__init__(**kwargs)
        self.posterior = posterior
        self.basis = basis
        self.always_std = bool(always_std)
        self.mean_calculator = None if mean is None else JaxiapCalculator(
            mean, species_names=species_names, neighbor_list=neighbor_list, skin=skin, stress=stress)
        self.species_names = None if species_names is None else tuple(species_names)
        self.with_stress = bool(stress)

    def _std(self, atoms):
        pbc = np.asarray(atoms.pbc)
        if pbc.any() and not pbc.all():
            raise JaxiapInputError(f"PosteriorCalculator: mixed periodicity pbc={tuple(pbc)} is not supported; use "
                                   "a fully periodic cell or a free cluster")
        periodic = bool(pbc.all())
        cell = jnp.asarray(np.asarray(atoms.cell[:], float)) if periodic else None
        positions = jnp.asarray(atoms.get_positions(), float)
        if self.species_names is None:
            species, names = jnp.zeros(len(atoms), jnp.int32), ("X",)
        else:
            species, names = _species_indices(self.species_names, atoms, "PosteriorCalculator"), self.species_names
        return _predict_one(self.posterior, self.basis, positions, species, cell, names)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        if system_changes:  # a new configuration; [] when ASE asks for one more property of the same one
            self.results = {}
        want_std = self.always_std or any(p in properties for p in ("energy_std", "forces_std"))
        if "energy" not in self.results:
            if self.mean_calculator is not None:
                self.mean_calculator.results = {}
                self.mean_calculator.calculate(atoms, properties, all_changes)
                self.results.update(self.mean_calculator.results)
            else:
                want_std = True
        if want_std and "energy_std" not in self.results:
            e, e_std, f, f_std = self._std(atoms)
            self.results["energy_std"] = float(e_std)
            self.results["forces_std"] = np.asarray(f_std)
            if self.mean_calculator is None:
                self.results.update(energy=float(e), free_energy=float(e), forces=np.asarray(f))


class GPCalculator(Calculator):
    """ASE calculator of a :class:`~jaxiap.potentials.gp.GaussianProcess`: the posterior mean and its stds.

    Properties: ``energy``, ``forces`` and (with ``GPSettings(stress=True)``
    and a periodic cell) ``stress``; ``results`` also holds ``energy_std``
    (eV), ``forces_std`` (N, 3) eV/Å and ``stress_std`` (6,), epistemic
    (no noise). Species are the atomic numbers, as in training.
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(self, gp, **kwargs):
        super().__init__(**kwargs)
        self.gp = gp

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        periodic = bool(self.atoms.pbc.any())
        if periodic and not self.atoms.pbc.all():
            raise JaxiapInputError("GPCalculator: mixed periodicity is not supported; use pbc all True or all False")
        cell = np.asarray(self.atoms.cell) if periodic else None
        want_stress = "stress" in properties
        if want_stress and (cell is None or not self.gp.settings.stress):
            raise JaxiapInputError("GPCalculator: stress needs a periodic cell and GPSettings(stress=True)")
        p = self.gp.predict(self.atoms.positions, cell, self.atoms.numbers, stress=want_stress)
        self.results = {"energy": float(p["energy"]), "free_energy": float(p["energy"]),
                        "forces": np.asarray(p["forces"]), "energy_std": float(p["energy_std"]),
                        "forces_std": np.asarray(p["forces_std"])}
        if want_stress:
            self.results["stress"] = np.asarray(p["stress"])
            self.results["stress_std"] = np.asarray(p["stress_std"])
