"""On-the-fly learning (jaxiap.active.otf) and the ``jaxiap otf`` study at tiny size.

The MD integrator and the resume logic are checked where the answer is known
exactly: with an absolute threshold below any std the oracle labels every
step, so the trajectory must be ASE's velocity Verlet with the oracle's
forces; and a run interrupted and resumed must continue that trajectory.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT

from jaxiap.active.otf import FS, OTFSettings, maxwell_boltzmann, run_otf, temperature
from jaxiap.errors import JaxiapInputError
from jaxiap.potentials.gp import GaussianProcess, GPHyperparameters, GPSettings

SETTINGS = GPSettings(r_cut=3.6, r_cut_3=None, max_neighbors=24)
HYP = GPHyperparameters(sig2=0.1, l2=0.6, noise=0.02)


def _cell(seed=0):
    atoms = bulk("Al", "fcc", a=4.046, cubic=True)
    atoms.positions += np.random.default_rng(seed).normal(0, 0.05, atoms.positions.shape)
    atoms.calc = EMT()
    return atoms


def _velocities(atoms):
    return maxwell_boltzmann(atoms.get_masses(), 500.0, np.random.default_rng(1))


def _always(n_steps):
    """Oracle at every step (absolute threshold 1e-12 eV/Å), hyperparameters fixed: the GP never moves atoms."""
    return OTFSettings(n_steps=n_steps, dt_fs=2.0, std_tolerance=-1e-12, init_atoms=1, max_atoms_added=1,
                       freeze_hyps=0, refresh_noise=False, reoptimize_every=0, checkpoint_every=3)


def _ase_verlet(atoms, v0, n_steps, dt_fs):
    from ase.md.verlet import VelocityVerlet

    a = atoms.copy()
    a.calc = EMT()
    a.set_velocities(v0)  # ASE velocities are in Å per ASE time unit, as ours
    xs = []
    dyn = VelocityVerlet(a, timestep=dt_fs * FS)
    for _ in range(n_steps):
        xs.append(a.positions.copy())
        dyn.run(1)
    return np.array(xs), a.positions.copy()


def test_oracle_every_step_is_ase_velocity_verlet():
    atoms = _cell()
    v0 = _velocities(atoms)
    gp = GaussianProcess(SETTINGS, HYP)
    res = run_otf(atoms, gp, _always(6), velocities=v0, progress=False)
    assert res["oracle"].all() and len(res["calls"]) == 6
    _, x_end = _ase_verlet(atoms, v0, 6, 2.0)
    np.testing.assert_allclose(res["final_positions"], x_end, rtol=0, atol=1e-12)
    # the logged temperature is that of the full-step velocities: step 0 is the initial one
    assert res["temperature"][0] == pytest.approx(temperature(v0, atoms.get_masses()), rel=1e-12)
    assert gp.n_force_atoms == 6  # one atom per call (the most uncertain one, or a random one at step 0)


def test_berendsen_thermostat_after_its_first_step():
    """With tau = dt the Berendsen factor sets the full-step temperature to the target exactly; before its first
    step the dynamics is plain NVE (the same temperatures as without it); bad settings are rejected."""
    import dataclasses

    atoms = _cell()
    v0 = _velocities(atoms)
    plain = run_otf(atoms, GaussianProcess(SETTINGS, HYP), _always(5), velocities=v0, progress=False)
    held = run_otf(atoms, GaussianProcess(SETTINGS, HYP), dataclasses.replace(_always(5), thermostat=(2, 800.0, 2.0)),
                   velocities=v0, progress=False)
    np.testing.assert_allclose(held["temperature"][:3], plain["temperature"][:3], rtol=1e-12)
    np.testing.assert_allclose(held["temperature"][3:], 800.0, rtol=1e-9)
    with pytest.raises(JaxiapInputError, match="thermostat"):
        OTFSettings(dt_fs=5.0, thermostat=(0, 800.0, 1.0))


def test_interrupted_run_resumes_the_same_trajectory(tmp_path):
    atoms = _cell()
    v0 = _velocities(atoms)
    full = run_otf(atoms, GaussianProcess(SETTINGS, HYP), _always(8), velocities=v0, progress=False)
    first = run_otf(atoms, GaussianProcess(SETTINGS, HYP), _always(5), velocities=v0, folder=tmp_path,
                    progress=False)
    assert len(first["calls"]) == 5
    gp = GaussianProcess(SETTINGS, HYP)
    rest = run_otf(atoms, gp, _always(8), velocities=v0, folder=tmp_path, progress=False)
    np.testing.assert_allclose(rest["final_positions"], full["final_positions"], rtol=0, atol=1e-12)
    assert len(rest["calls"]) == 8 and gp.n_rows == 3 * 8        # the GP was rebuilt from the 5 stored frames
    np.testing.assert_allclose(rest["temperature"], full["temperature"], rtol=1e-12)
    with pytest.raises(JaxiapInputError, match="empty GaussianProcess"):
        run_otf(atoms, gp, _always(9), velocities=v0, folder=tmp_path, progress=False)


def test_threshold_rule_and_bad_settings():
    atoms = _cell()
    gp = GaussianProcess(SETTINGS, HYP)
    s = OTFSettings(n_steps=4, dt_fs=2.0, std_tolerance=0.0, init_atoms=2, freeze_hyps=0, refresh_noise=False,
                    reoptimize_every=0)
    res = run_otf(atoms, gp, s, velocities=_velocities(atoms), progress=False)
    assert res["oracle"].tolist() == [True, False, False, False]       # tolerance 0: only the first frame
    assert np.all(np.isnan(res["threshold"]))
    # a positive tolerance is a multiple of the force noise
    gp2 = GaussianProcess(SETTINGS, HYP)
    s2 = OTFSettings(n_steps=2, dt_fs=2.0, std_tolerance=3.0, init_atoms=2, freeze_hyps=0, refresh_noise=False,
                     reoptimize_every=0)
    res2 = run_otf(atoms, gp2, s2, velocities=_velocities(atoms), progress=False)
    assert res2["threshold"][1] == pytest.approx(3.0 * HYP.noise)
    assert res2["oracle"][1] == (res2["max_std"][1] > 3.0 * HYP.noise)
    with pytest.raises(JaxiapInputError, match="dt_fs"):
        OTFSettings(dt_fs=0.0)
    with pytest.raises(JaxiapInputError, match="rescale"):
        OTFSettings(n_steps=10, rescale=((10, 1000.0),))
    bare = _cell()
    bare.calc = None
    with pytest.raises(JaxiapInputError, match="atoms.calc"):
        run_otf(bare, gp, s, progress=False)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from jaxiap.cli import main

    out = tmp_path_factory.mktemp("otf") / "run"
    assert main(["otf", "--preset", "tiny", "--out", str(out), "--no-progress"]) == 0
    return out


def test_tiny_study_writes_its_run_folder(tiny_run):
    from jaxiap.cli import main

    out = tiny_run
    s = json.loads((out / "summary.json").read_text())
    assert s["oracle_calls"] == len(s["oracle_call_times_ps"]) >= 1
    assert s["oracle_calls_before_melt"] + s["oracle_calls_after_melt"] == s["oracle_calls"]
    assert s["temperature_liquid_K"] > 5 * s["temperature_solid_K"]   # the rescaling melted it
    assert 0 < s["force_mae_solid_meV_per_A"] < s["force_mae_liquid_meV_per_A"]
    assert s["paper_table_meV_per_A"]["FLARE"] == {"solid": 32.9, "liquid": 90.2}
    for name in ("report.md", "otf_timeline.png", "std_vs_error.png", "otf_log.npz", "test_frames.npz"):
        assert (out / name).exists(), name
    # re-running resumes (the MD is finished) and reproduces the summary's numbers
    assert main(["otf", "--preset", "tiny", "--out", str(out), "--no-progress"]) == 0
    s2 = json.loads((out / "summary.json").read_text())
    assert s2["oracle_calls"] == s["oracle_calls"]
    assert s2["force_mae_solid_meV_per_A"] == pytest.approx(s["force_mae_solid_meV_per_A"], rel=1e-9)


@pytest.mark.slow  # CI budget: the tiny study above checks the same run folder; pytest -m slow runs it
def test_notebook_runs_tiny(tiny_run, monkeypatch):
    from notebooks import execute_notebook, outputs_text  # tests/notebooks.py

    monkeypatch.setenv("JAXIAP_NOTEBOOK_OUT", str(tiny_run))
    nb = execute_notebook("otf_aluminium.ipynb", size="tiny", timeout=300)
    line = [x for x in outputs_text(nb).splitlines() if x.startswith('{"notebook": "otf_aluminium"')][-1]
    got = json.loads(line)
    s = json.loads((tiny_run / "summary.json").read_text())
    assert got["oracle_calls"] == s["oracle_calls"]
    assert got["force_mae_solid_meV_per_A"] == pytest.approx(s["force_mae_solid_meV_per_A"], abs=1e-3)
