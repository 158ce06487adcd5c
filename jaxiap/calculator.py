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
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from ase.calculators.calculator import Calculator, all_changes
from ase.stress import full_3x3_to_voigt_6_stress

from jaxiap.errors import JaxiapInputError
from jaxiap.geometry import periodic_space
from jaxiap.potentials.base import Potential


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
        if self.species_names is None:
            return None
        index = {s: i for i, s in enumerate(self.species_names)}
        out = []
        for sym in atoms.get_chemical_symbols():
            if sym not in index:
                raise JaxiapInputError(
                    f"JaxiapCalculator: species {sym!r} is not in species_names={self.species_names}; add it"
                )
            out.append(index[sym])
        return jnp.asarray(out, jnp.int32)

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
