"""The ASE calculators: a jaxiap Potential (energies, forces, stress; ASE dynamics and optimisers) and any
Posterior (its mean potential plus energy_std / forces_std, against predict_structures)."""

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


# ------------------------------------------------------------------------------------------------------------------
# PosteriorCalculator: any Posterior's mean potential plus energy_std / forces_std (issue 16, part 3)

@pytest.fixture(scope="module")
def al_posteriors():
    """A 5-feature radial basis for Al (4 functions inside 4 Å + a per-atom energy) fitted by BLR and NIG to two
    EMT-labelled rattled 32-atom cells, and one posterior of each other kind on it (committee and model-error
    draws and three untrained 4-unit networks made by hand: fast, and enough to check the calculator)."""
    import jax

    from jaxiap.inference.model_error import ModelErrorPosterior
    from jaxiap.inference.nn_train import stack_members
    from jaxiap.inference.posterior import SamplePosterior
    from jaxiap.inference.solvers import get_solver
    from jaxiap.potentials.linear import design_matrix
    from jaxiap.potentials.nn import AtomicMLP, NNPotential
    from jaxiap.systems.aluminium import al_basis, emt_dataset
    from jaxiap.uq.nn_uq import NNPosterior

    ds = emt_dataset(repeat=2, stdevs=(0.05, 0.1), n_per_stdev=1, seed=3)
    basis = al_basis(r_cut=4.0, n_basis=4, r_min=2.0)
    design = design_matrix(basis, ds, chunk_size=2)
    blr = get_solver("blr", prior_precision=1e-6, noise_var=1e-4)(design)
    k = basis.n_features
    draws = np.asarray(blr.mean) + np.random.default_rng(1).normal(size=(6, k)) @ np.asarray(blr.cov_factor).T
    merr = ModelErrorPosterior(jnp.asarray(draws[:4]), jnp.tile(0.01 * jnp.eye(2), (4, 1, 1)), jnp.asarray([0, 2]),
                               jnp.asarray(1e-4))
    f = basis.descriptor.n_features
    members = stack_members([NNPotential(basis.descriptor, AtomicMLP(jax.random.key(i), f, (4,)), jnp.full(f, 5.0),
                                         jnp.full(f, 3.0), jnp.asarray(-3.7), jnp.asarray(0.1)) for i in range(3)])
    posts = {"gaussian": blr, "student_t": get_solver("nig")(design),
             "samples": SamplePosterior(jnp.asarray(draws), blr.noise_var, "committee"),
             "model_error": merr, "nn_ensemble": NNPosterior(members, {}, "ensemble")}
    return basis, posts


def _predict(posterior, structures, basis):
    """posterior.predict_structures of one structure. Op by op for the linear kinds; for the NN ensemble (~10 s
    op by op) through the calculator's jitted ``_predict_one`` (already compiled), which calls the same method on
    the same arrays: its energy and forces still check the mean potential (the members' mean) independently."""
    if posterior.kind == "ensemble":
        from jaxiap.calculator import _predict_one
        from jaxiap.inference.posterior import StructurePrediction

        box = np.diag(np.asarray(structures.box[0])) if structures.box.ndim == 2 else structures.box[0]
        out = _predict_one(posterior, None, structures.positions[0], structures.species[0], jnp.asarray(box),
                           ("Al",))
        return StructurePrediction(*(a[None] for a in out))
    return posterior.predict_structures(structures, basis=basis)


def _differences(atoms, p):
    return {"energy": abs(atoms.get_potential_energy() - float(p.energy[0])),
            "forces": np.abs(atoms.get_forces() - np.asarray(p.forces[0])).max(),
            "energy_std": abs(atoms.calc.get_property("energy_std") - float(p.energy_std[0])),
            "forces_std": np.abs(atoms.calc.get_property("forces_std") - np.asarray(p.forces_std[0])).max()}


@pytest.mark.parametrize("kind", ["gaussian", "student_t", "samples", "model_error", "nn_ensemble"])
def test_posterior_calculator_matches_predict_structures(al_posteriors, kind):
    from jaxiap.calculator import PosteriorCalculator
    from jaxiap.structures import from_atoms

    basis, posts = al_posteriors
    post = posts[kind]
    atoms = _rattled_al(seed=5, stdev=0.05)
    atoms.calc = PosteriorCalculator(post, basis, species_names=("Al",))
    diffs = _differences(atoms, _predict(post, from_atoms(atoms), basis))
    print(f"\n{kind}: max |calculator - predict_structures| " + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items()))
    assert all(v <= 1e-10 for v in diffs.values()), diffs
    assert atoms.calc.results["energy_std"] > 0 and atoms.calc.results["forces_std"].shape == (32, 3)
    assert atoms.get_potential_energy() == atoms.calc.results["free_energy"]
    # the stress is the mean potential's, by autodiff (JaxiapCalculator of posterior.mean_potential)
    ref = atoms.copy()
    ref.calc = JaxiapCalculator(post.mean_potential(basis=basis), species_names=("Al",))
    np.testing.assert_allclose(atoms.get_stress(), ref.get_stress(), rtol=0, atol=1e-12)
    if kind == "gaussian":
        np.testing.assert_allclose(atoms.get_stress(), calculate_numerical_stress(atoms, eps=1e-6), rtol=0,
                                   atol=1e-7)


def test_posterior_calculator_compiled_once_per_atom_count(al_posteriors):
    from jaxiap import calculator as calc_mod
    from jaxiap.calculator import PosteriorCalculator

    basis, posts = al_posteriors
    calc = PosteriorCalculator(posts["gaussian"], basis, species_names=("Al",))
    traces, efs = calc_mod.STD_TRACES[32], _efs_jit._cache_size()
    for seed in (6, 7, 8):  # new positions (and a strained cell), same atom count
        atoms = _rattled_al(seed=seed, stdev=0.05)
        atoms.set_cell(atoms.cell[:] * (1 + 0.01 * (seed - 7)), scale_atoms=True)
        atoms.calc = calc
        atoms.get_forces()
    # at most one trace of the std function and one compilation of the mean's (none if an earlier test made them)
    assert calc_mod.STD_TRACES[32] - traces <= 1 and _efs_jit._cache_size() - efs <= 1
    assert calc_mod.STD_TRACES[32] >= 1


def test_posterior_calculator_std_on_request_and_no_mean_potential(al_posteriors):
    from ase.calculators.calculator import PropertyNotImplementedError

    from jaxiap.calculator import PosteriorCalculator

    basis, posts = al_posteriors
    g = posts["gaussian"]
    atoms = Atoms("Al13", positions=icosahedron() * 2.55)  # a free cluster (nearest neighbours ~2.9 Å)
    atoms.calc = PosteriorCalculator(g, basis, always_std=False)
    e = atoms.get_potential_energy()
    assert "energy_std" not in atoms.calc.results
    std = atoms.calc.get_property("energy_std")  # computed now, for the same configuration; the mean is kept
    assert std > 0 and atoms.calc.results["energy"] == e
    with pytest.raises(Exception, match="stress"):
        atoms.get_stress()  # a free cluster has no stress

    class NoMean(type(g)):  # a posterior with no single mean potential: energy and forces from predict_structures
        def mean_potential(self, *, basis=None):
            return None

    atoms.calc = PosteriorCalculator(NoMean(g.mean, g.cov_factor, g.noise_var), basis)
    np.testing.assert_allclose(atoms.get_potential_energy(), e, rtol=0, atol=1e-10)
    assert atoms.calc.results["energy_std"] == pytest.approx(std, rel=1e-12)
    assert atoms.calc.mean_calculator is None
    with pytest.raises(PropertyNotImplementedError):
        atoms.get_stress()


def test_posterior_calculator_ase_langevin_and_bfgs(al_posteriors):
    import ase.units as u
    from ase.md.langevin import Langevin
    from ase.optimize import BFGS

    from jaxiap.calculator import PosteriorCalculator

    basis, posts = al_posteriors
    al = _rattled_al(seed=2, stdev=0.05)
    al.calc = PosteriorCalculator(posts["gaussian"], basis, species_names=("Al",))
    dyn = Langevin(al, 2 * u.fs, temperature_K=300, friction=0.01 / u.fs, fixcm=False, rng=np.random.default_rng(0))
    record = []
    dyn.attach(lambda: record.append((al.get_total_energy(), al.calc.results["energy_std"])), interval=1)
    dyn.run(20)
    record = np.asarray(record)
    assert record.shape == (21, 2) and np.all(np.isfinite(record)) and np.all(record[:, 1] > 0)

    al = _rattled_al(seed=3, stdev=0.08)
    al.calc = PosteriorCalculator(posts["gaussian"], basis, species_names=("Al",), always_std=False)
    e0, f0 = al.get_potential_energy(), np.abs(al.get_forces()).max()
    BFGS(al, logfile=None).run(fmax=1e-3, steps=6)
    assert al.get_potential_energy() < e0 and np.abs(al.get_forces()).max() < f0 / 2
    assert al.calc.get_property("energy_std") > 0


def test_posterior_calculator_input_errors(al_posteriors):
    from jaxiap.calculator import PosteriorCalculator
    from jaxiap.inference.gp_posterior import GPPosterior

    basis, posts = al_posteriors
    with pytest.raises(JaxiapInputError, match="basis="):
        PosteriorCalculator(posts["gaussian"])
    with pytest.raises(JaxiapInputError, match="features"):
        PosteriorCalculator(posts["gaussian"], LinearBasis(RadialBasis("chebyshev", 4, 0.8, 3.0)))
    with pytest.raises(JaxiapInputError, match="Posterior"):
        PosteriorCalculator(LinearPotential(basis, posts["gaussian"].mean), basis)
    with pytest.raises(JaxiapInputError, match="GPCalculator"):
        PosteriorCalculator(GPPosterior(jnp.zeros(3), jnp.asarray(1.0)))
    atoms = al_fcc(2)
    atoms.calc = PosteriorCalculator(posts["gaussian"], basis, species_names=("Cu",))
    with pytest.raises(JaxiapInputError, match="species_names"):
        atoms.get_potential_energy()
