"""The ASE calculator of a jaxiap Potential: energies, forces, stress; ASE dynamics and optimisers."""

import jax.numpy as jnp
import numpy as np
import pytest
from ase import Atoms
from ase.calculators.fd import calculate_numerical_forces, calculate_numerical_stress

import jaxiap  # noqa: F401  (float64)
from jaxiap.calculator import JaxiapCalculator, _efs_jit
from jaxiap.descriptors.radial import RadialBasis
from jaxiap.errors import JaxiapInputError
from jaxiap.potentials.linear import LinearBasis, LinearPotential
from jaxiap.potentials.pair import LJ
from jaxiap.systems.aluminium import al_fcc
from jaxiap.systems.lj import icosahedron

pytestmark = pytest.mark.filterwarnings("ignore:scatter inputs have incompatible types:FutureWarning")


def _al_potential(r_cut=4.0):
    """A smooth radial potential for Al (a short-range repulsion plus an attraction; not fitted)."""
    basis = LinearBasis(RadialBasis("chebyshev", 4, 2.0, r_cut), species_reference=True)
    return LinearPotential(basis, jnp.asarray([0.05, 0.4, -0.1, 0.02, -3.0]))


def _rattled_al(seed=0, repeat=2, stdev=0.08):
    atoms = al_fcc(repeat)
    atoms.rattle(stdev, seed=seed)
    return atoms


def test_cluster_energy_forces_match_potential_and_finite_differences():
    lj = LJ()
    x = icosahedron() * 1.02 + 0.02 * np.random.default_rng(0).normal(size=(13, 3))
    atoms = Atoms("Ar13", positions=x)
    atoms.calc = JaxiapCalculator(lj)
    e, f = lj.energy_and_forces(jnp.asarray(x))
    assert abs(atoms.get_potential_energy() - float(e)) < 1e-10
    np.testing.assert_allclose(atoms.get_forces(), f, rtol=0, atol=1e-10)
    np.testing.assert_allclose(atoms.get_forces(), calculate_numerical_forces(atoms, eps=1e-5), rtol=0, atol=1e-6)
    with pytest.raises(Exception, match="stress"):
        atoms.get_stress()  # a free cluster has no stress


@pytest.mark.parametrize("neighbor_list", [False, True])
def test_periodic_energy_forces_stress(neighbor_list):
    pot = _al_potential()
    atoms = _rattled_al()
    atoms.calc = JaxiapCalculator(pot, neighbor_list=neighbor_list, skin=0.04)
    box = jnp.asarray(np.diag(atoms.cell[:]))
    e, f = pot.energy_and_forces(jnp.asarray(atoms.get_positions()), box=box)
    assert abs(atoms.get_potential_energy() - float(e)) < 1e-10
    np.testing.assert_allclose(atoms.get_forces(), f, rtol=0, atol=1e-10)
    stress = atoms.get_stress()
    if neighbor_list:  # the same numbers as the dense path (finite differences are checked there)
        dense = atoms.copy()
        dense.calc = JaxiapCalculator(pot)
        np.testing.assert_allclose(stress, dense.get_stress(), rtol=0, atol=1e-12)
        return
    num = calculate_numerical_stress(atoms, eps=1e-6)
    print(f"\nstress (eV/Å^3) autodiff {np.round(stress, 6).tolist()}, max |autodiff - FD| "
          f"{np.abs(stress - num).max():.1e}")
    np.testing.assert_allclose(stress, num, rtol=0, atol=1e-7)
    np.testing.assert_allclose(atoms.get_forces(), calculate_numerical_forces(atoms, eps=1e-5), rtol=0, atol=1e-6)


def test_triclinic_stress_and_pressure_sign():
    pot = _al_potential(r_cut=3.5)
    atoms = _rattled_al(seed=1)
    atoms.set_cell(atoms.cell[:] + np.array([[0, 0, 0], [0.6, 0, 0], [0.2, 0.4, 0]]), scale_atoms=True)
    atoms.calc = JaxiapCalculator(pot)
    np.testing.assert_allclose(atoms.get_stress(), calculate_numerical_stress(atoms, eps=1e-6), rtol=0, atol=1e-7)
    # compressing a repulsive crystal gives positive pressure (negative stress trace), ASE's sign convention
    rep = LinearPotential(LinearBasis(RadialBasis("chebyshev", 2, 2.0, 3.5)), jnp.asarray([1.0, 0.0]))
    small = al_fcc(2, a=3.9)
    small.calc = JaxiapCalculator(rep)
    assert np.trace(small.get_stress(voigt=False)) < 0


def test_compiled_once_per_atom_count():
    pot = _al_potential()
    calc = JaxiapCalculator(pot)
    sizes = [_efs_jit._cache_size()]
    for n_del in (1, 1, 1, 2, 2):  # 31, 31, 31, 30, 30 atoms: new positions, same compiled function per count
        atoms = _rattled_al(seed=n_del + len(sizes))
        del atoms[:n_del]
        atoms.calc = calc
        atoms.get_forces()
        sizes.append(_efs_jit._cache_size())
    assert np.diff(sizes).tolist() == [1, 0, 0, 1, 0]


def test_ase_langevin_and_bfgs():
    import ase.units as u
    from ase.md.langevin import Langevin
    from ase.optimize import BFGS

    from jaxiap.md.quench import quench

    # BFGS on an LJ13 cluster finds the quench's minimum
    lj = LJ()
    x0 = icosahedron() + 0.03 * np.random.default_rng(4).normal(size=(13, 3))
    atoms = Atoms("Ar13", positions=x0)
    atoms.calc = JaxiapCalculator(lj)
    assert BFGS(atoms, logfile=None).run(fmax=1e-5, steps=500)
    rq, _ = quench(lj, jnp.asarray(x0), fmax=1e-8, max_steps=20000)
    np.testing.assert_allclose(atoms.get_potential_energy(), float(lj.energy(rq)), atol=1e-8)

    # ASE Langevin of a periodic Al cell (neighbour-list path)
    al = _rattled_al(seed=2)
    al.calc = JaxiapCalculator(_al_potential(), neighbor_list=True, skin=0.04)
    dyn = Langevin(al, 2 * u.fs, temperature_K=300, friction=0.01 / u.fs, fixcm=False, rng=np.random.default_rng(0))
    energies = []
    dyn.attach(lambda: energies.append(al.get_total_energy()), interval=5)
    dyn.run(40)
    assert len(energies) >= 8 and np.all(np.isfinite(energies))


def test_calculator_input_errors():
    with pytest.raises(JaxiapInputError, match="Potential"):
        JaxiapCalculator(lambda x: 0.0)
    from jaxiap.potentials.base import Potential

    class Harmonic(Potential):  # no cutoff
        def energy(self, positions, **kwargs):
            return jnp.sum(positions**2)

    with pytest.raises(JaxiapInputError, match="cutoff"):
        JaxiapCalculator(Harmonic(), neighbor_list=True)
    atoms = al_fcc(2)
    atoms.pbc = (True, True, False)
    atoms.calc = JaxiapCalculator(_al_potential())
    with pytest.raises(JaxiapInputError, match="mixed periodicity"):
        atoms.get_potential_energy()
    atoms = al_fcc(2)
    atoms.calc = JaxiapCalculator(_al_potential(), species_names=("Cu",))
    with pytest.raises(JaxiapInputError, match="species_names"):
        atoms.get_potential_energy()
