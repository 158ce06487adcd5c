"""The GP force field through every interface: Potential (an MD program), Posterior, ASE calculator, files."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT

from jaxiap.errors import JaxiapInputError
from jaxiap.potentials.gp import GaussianProcess, GPHyperparameters, GPSettings


@pytest.fixture(scope="module")
def gp_and_frames():
    rng = np.random.default_rng(3)
    frames = []
    for _ in range(3):
        a = bulk("Al", "fcc", a=4.046, cubic=True)
        a.positions += rng.normal(0, 0.08, a.positions.shape)
        a.calc = EMT()
        frames.append(a)
    gp = GaussianProcess(GPSettings(r_cut=3.6, r_cut_3=None, max_neighbors=24),
                         GPHyperparameters(sig2=0.1, l2=0.6, noise=0.02))
    for a in frames[:2]:
        gp.add(a.positions, a.cell[:], a.numbers, forces=a.get_forces())
    gp.update()
    return gp, frames


def test_posterior_and_calculator_agree_with_predict(gp_and_frames):
    from jaxiap.active.qbc import predictive_std
    from jaxiap.calculator import GPCalculator
    from jaxiap.inference.gp_posterior import GPPosterior
    from jaxiap.structures import from_atoms

    gp, frames = gp_and_frames
    test = frames[2]
    p = gp.predict(test.positions, test.cell[:], test.numbers)
    # ASE calculator: the same numbers, and the stds in results
    a = test.copy()
    a.calc = GPCalculator(gp)
    np.testing.assert_allclose(a.get_forces(), p["forces"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(a.calc.results["forces_std"], p["forces_std"], rtol=0, atol=1e-12)
    assert a.get_potential_energy() == pytest.approx(float(p["energy"]), abs=1e-12)
    with pytest.raises(JaxiapInputError, match="stress"):
        a.get_stress()
    # Posterior: predict_structures feeds the uncertainty strategies
    post = GPPosterior.from_gp(gp)
    d = predictive_std(post, None, from_atoms([test]))
    assert float(d.max_force[0]) == pytest.approx(float(p["forces_std"].max()), rel=1e-10)
    assert float(d.energy_per_atom[0]) == pytest.approx(float(p["energy_std"]) / 4, rel=1e-10)
    with pytest.raises(JaxiapInputError, match="no finite coefficient"):
        post.sample(None, 2)


@pytest.mark.slow  # CI budget: two more compilations (the variance program, the refit of the loaded GP)
def test_energy_variance_and_files(gp_and_frames, tmp_path):
    import jax.numpy as jnp

    gp, frames = gp_and_frames
    test = frames[2]
    p = gp.predict(test.positions, test.cell[:], test.numbers)
    # differentiable energy variance (for biased MD / attacks) equals the predicted energy std squared
    var_fn = gp.energy_variance_fn(test.cell[:])
    assert float(var_fn(jnp.asarray(test.positions))) == pytest.approx(float(p["energy_std"]) ** 2, rel=1e-9)
    # files: save, load (a refit), same predictions
    gp.save(tmp_path / "gp.npz")
    again = GaussianProcess.load(tmp_path / "gp.npz")
    q = again.predict(test.positions, test.cell[:], test.numbers)
    np.testing.assert_allclose(q["forces"], p["forces"], rtol=0, atol=1e-10)
    np.testing.assert_allclose(q["forces_std"], p["forces_std"], rtol=0, atol=1e-10)


@pytest.mark.slow
def test_gp_mean_drives_an_md_program(gp_and_frames):
    """The posterior mean is a Potential: jaxiap's NVT runner program runs it like any other."""
    import jax.numpy as jnp
    from ase import units
    from jax_md import space

    from jaxiap.md.nvt import NVTSettings, run_nvt

    gp, frames = gp_and_frames
    start = frames[2]
    pot = gp.potential(start.cell[:])
    _, shift = space.periodic(jnp.asarray(np.diag(start.cell[:])))
    settings = NVTSettings(kT=300 * units.kB, dt=2 * units.fs, gamma=0.01 / units.fs, mass=26.98,
                           n_equilibrate_blocks=0, n_blocks=1, block_steps=4, record_every=2)
    run = run_nvt(pot, np.arange(1), jnp.asarray(start.positions), settings, shift_fn=shift,
                  energy_kwargs={"species": jnp.asarray(start.numbers)}, progress=False)
    e = np.asarray(run.results["potential_energy"])
    assert e.shape[:2] == (1, 1) and np.all(np.isfinite(e))
    # the first recorded energy is near the GP mean energy of the start (2 steps of 2 fs at 300 K)
    e0 = float(gp.predict(start.positions, start.cell[:], start.numbers, energy_std=False)["energy"])
    assert abs(float(e.ravel()[0]) - e0) < 0.05
