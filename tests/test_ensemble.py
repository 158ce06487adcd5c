"""FRT ensemble engine (jaxiap.md.ensemble): physics checks, masking, chunking, devices, resume.

Kept fast: one potential function, two settings objects (HOT, COLD) and two
lanes-per-device / chunk-size shapes, so only a handful of programs compile.
Outcome codes are checked through properties fixed by physics or by the
definition of the algorithm, not through codes read off earlier runs. The
quantitative thermal checks (equipartition, mean potential energy against an
ASE reference) are in tests/test_md_thermo.py.
"""

import itertools
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import jaxiap  # noqa: F401  (float64)
from jaxiap.errors import JaxiapInputError
from jaxiap.md.ensemble import (
    REPLICA_FIELDS,
    FRTEnsembleResult,
    FRTSettings,
    auto_chunk_size,
    frt_replica_fn,
    replica_key,
    run_frt_ensemble,
)
from jaxiap.md.qoi import CENSORED, EVENT, EVAPORATED, FAILED
from jaxiap.systems.lj import LJ13_MINIMUM_ENERGY, lj13_minimum, lj_energy

#: kT 0.3, 4 tau (8 checks): some seeds rearrange (sample 0.8 is effectively hotter).
HOT = FRTSettings(kT=0.30, t_max=4.0)
#: kT 0.05, 2 tau: LJ13 stays in its basin.
COLD = FRTSettings(kT=0.05, t_max=2.0)
LANES = 2
SEEDS = np.array([2, 4, 9])
SEEDS_DEV = np.array([0, 2, 4, 9, 15, 16, 22, 23])
#: energy scale of each coefficient sample; 1e4 makes the MD (dt_eff = 0.5) blow up.
C_OK = np.array([[1.0], [0.8]])
C_BOOM = np.array([[1.0], [1.0e4], [0.8]])
#: a posterior-like sweep: 3 coefficient samples x SEEDS_DEV
C_SWEEP = np.array([[1.0], [0.9], [1.1]])
#: Energy scale c at the HOT settings. Langevin dynamics of c U at kT, friction
#: gamma is that of U at kT / c, friction gamma / sqrt(c), in the time
#: sqrt(c) t (same Boltzmann weight exp(-c U / kT); rescale m x'' = -c grad U).
#: c = 0.25: kT_eff = 1.2, four times LJ13's melting temperature (~0.3), for
#: 2 tau_eff; c = 4: kT_eff = 0.075 for 8 tau_eff.
C_TEMP = np.array([[0.25], [4.0]])
#: second-lowest LJ13 minimum (capped defect icosahedron); every basin other
#: than the icosahedron's lies at or above it [Doye & Wales; Cambridge Cluster Database]
LJ13_SECOND_MINIMUM = -41.471979


def scaled_lj(c, positions):
    """LJ energy times the coefficient c[0] (reduced units)."""
    return c[0] * lj_energy(positions)


def run(coef, seeds, settings=HOT, chunk_size=4, **kw):
    kw.setdefault("lanes_per_device", LANES)
    return run_frt_ensemble(scaled_lj, coef, seeds, lj13_minimum(), settings,
                            chunk_size=chunk_size, progress=False, **kw)


def assert_same(a: FRTEnsembleResult, b: FRTEnsembleResult, rows_a=slice(None), rows_b=slice(None)):
    for k in REPLICA_FIELDS:
        x, y = getattr(a, k)[rows_a], getattr(b, k)[rows_b]
        assert np.array_equal(x, y, equal_nan=True), k


def defect_minimum():
    """An LJ13 start structure in the lowest defect basin (E = -41.47198 after quenching).

    A surface atom of the icosahedron moved to cap the face farthest from
    its original site.
    """
    x = lj13_minimum()
    v = x[1:]
    d = np.linalg.norm(v[:, None] - v[None], axis=-1)
    faces = [f for f in itertools.combinations(range(12), 3)
             if all(d[i, j] < 1.2 for i, j in itertools.combinations(f, 2))]
    centres = np.array([v[list(f)].mean(0) for f in faces])
    c = centres[np.argmax(np.linalg.norm(centres - v[0], axis=1))]
    x = x.copy()
    x[1] = c / np.linalg.norm(c) * (np.linalg.norm(c) + 0.9)
    return x


@pytest.fixture(scope="module")
def hot_base():
    """M=2 samples x 3 seeds at kT 0.3, chunks of 4 (two chunks, the last padded)."""
    return run(C_OK, SEEDS)


# ---------------------------------------------------------------------------
# cheap checks (no ensemble compile)
# ---------------------------------------------------------------------------


def test_settings_validation_and_roundtrip():
    assert HOT.n_checks == 8 and HOT.t_censor == pytest.approx(4.0)
    assert FRTSettings(t_max=100.0).n_checks == 200
    assert FRTSettings.from_dict(json.loads(json.dumps(HOT.to_dict()))) == HOT
    with pytest.raises(JaxiapInputError, match="criterion"):
        FRTSettings(criterion="rmsd")
    with pytest.raises(JaxiapInputError, match="sample_every"):
        FRTSettings(n_q=100, sample_every=7)
    with pytest.raises(JaxiapInputError, match="kT"):
        FRTSettings(kT=-1.0)


def test_auto_chunk_size():
    import jax

    cs, lanes = auto_chunk_size(100, 13, devices=jax.devices(), lanes_per_device=4)
    assert lanes == 4 and cs >= 4 and cs % len(jax.devices()) == 0
    n_chunks = -(-100 // cs)
    assert n_chunks * cs - 100 < n_chunks * len(jax.devices())  # little padding
    assert auto_chunk_size(5, 13, lanes_per_device=64)[0] == 5


def test_langevin_init_removes_com_momentum():
    """The FRT engine's init (block_langevin) draws Maxwell-Boltzmann momenta with zero total momentum.

    Removing the mean momentum leaves 3N - 3 Gaussian degrees of freedom, so
    the initial kinetic energy is kT/2 chi^2_{3N-3}: mean (3N - 3) kT / 2 = 5.4
    at kT 0.3. Over 20000 keys the standard error is 0.009 (0.17%); a kT 5% off
    (5.13 or 5.67) or no COM removal (3N kT / 2 = 5.85) is > 25 SE away.
    Measured: 5.3895 +- 0.0090 (with 1.05 kT: 5.659, 29 SE off).
    """
    import jax

    from jaxiap.md.integrators import block_langevin

    kT, n = 0.3, 13
    init, _ = block_langevin(lj_energy, dt=0.005, kT=kT, gamma=1.0)
    p = np.asarray(init(replica_key(0, 7), lj13_minimum()).momentum)
    assert p.dtype == np.float64
    assert np.abs(p.sum(axis=0)).max() < 1e-12
    keys = jax.vmap(lambda s: replica_key(0, s))(np.arange(20000))
    x0 = lj13_minimum()
    ps = np.asarray(jax.vmap(lambda k: init(k, x0).momentum)(keys))
    assert np.abs(ps.sum(axis=1)).max() < 1e-12
    ke = 0.5 * np.sum(ps**2, axis=(1, 2))
    mean, se = ke.mean(), ke.std(ddof=1) / np.sqrt(ke.size)
    assert abs(mean - 1.5 * (n - 1) * kT) < 3 * se, (mean, se)
    for wrong in (1.5 * (n - 1) * 0.95 * kT, 1.5 * (n - 1) * 1.05 * kT, 1.5 * n * kT):
        assert abs(mean - wrong) > 3 * se, wrong


def test_bad_inputs():
    with pytest.raises(JaxiapInputError, match="leading axis"):
        run({"a": np.ones((2, 1)), "b": np.ones((3, 1))}, SEEDS)
    with pytest.raises(JaxiapInputError, match="seeds"):
        run(C_OK, np.array([0.5, 1.5]))
    with pytest.raises(JaxiapInputError, match="start_positions"):
        run_frt_ensemble(scaled_lj, C_OK, SEEDS, np.zeros((13, 2)), HOT, progress=False)
    with pytest.raises(JaxiapInputError, match="NaN"):
        run(np.array([[np.nan]]), SEEDS)


# ---------------------------------------------------------------------------
# physics
# ---------------------------------------------------------------------------


def test_cold_icosahedron_has_no_event():
    res = run(np.ones((1, 1)), SEEDS, COLD)
    assert res.shape == (1, 3)
    assert np.all(res.code == CENSORED)
    assert np.allclose(res.time, COLD.t_censor)
    assert np.all(res.n_checks == COLD.n_checks)
    np.testing.assert_allclose(res.e0, LJ13_MINIMUM_ENERGY, atol=1e-6)
    np.testing.assert_allclose(res.e_last, LJ13_MINIMUM_ENERGY, atol=1e-6)  # still the icosahedron
    # Sanity range only: the excess over E0 is positive and below twice the harmonic
    # equilibrium value (3N - 6) kT / 2 = 0.825 (from the minimum it starts at 0;
    # measured over 24 seeds: 0.67 +- 0.07 per replica). Three 2-tau replicas
    # cannot resolve kT to 5%; the ensemble's thermal test is
    # test_md_thermo.test_ensemble_mean_energy_matches_ase_reference.
    excess = res.mean_energy - LJ13_MINIMUM_ENERGY
    assert np.all((excess > 0) & (excess < (3 * 13 - 6) * COLD.kT))
    n_samp = COLD.n_checks * COLD.n_q // COLD.sample_every
    assert np.all(res.n_samples == n_samp) and np.all(res.energy_hist.sum(-1) == n_samp)
    assert np.all(res.quench_unconverged == 0)


def test_defect_start_against_icosahedron_basin_is_an_immediate_event():
    x = defect_minimum()
    # compared with its own quenched basin: nothing happens at kT 0.05
    own = run_frt_ensemble(scaled_lj, np.ones((1, 1)), SEEDS, x, COLD, chunk_size=4,
                           lanes_per_device=LANES, progress=False)
    assert np.all(own.code == CENSORED)
    np.testing.assert_allclose(own.e0, -41.47198, atol=1e-4)
    # compared with the icosahedron basin: EVENT at the first check (t = n_q dt)
    ico = run_frt_ensemble(scaled_lj, np.ones((1, 1)), SEEDS, x, COLD, chunk_size=4,
                           lanes_per_device=LANES, progress=False,
                           reference_positions=lj13_minimum())
    assert np.all(ico.code == EVENT)
    assert np.all(ico.n_checks == 1)
    np.testing.assert_allclose(ico.time, COLD.n_q * COLD.dt)
    np.testing.assert_allclose(ico.e0, LJ13_MINIMUM_ENERGY, atol=1e-6)
    np.testing.assert_allclose(ico.e_last, -41.47198, atol=1e-4)
    # histogram covers only the first block
    assert np.all(ico.n_samples == COLD.n_q // COLD.sample_every)


def test_hot_run_results_are_consistent(hot_base):
    """Properties of every replica's outcome, whatever its seed.

    Which seeds rearrange is chaotic; what holds for each replica:
    * kT 0.3 (0.375 effective for the 0.8 sample) for 4 tau neither evaporates
      nor explodes LJ13: codes are CENSORED or EVENT;
    * times are check times, n_checks x n_q x dt <= t_censor, and CENSORED
      means every check was made;
    * a CENSORED replica's last quench is the icosahedron again (E = c E_min);
    * an EVENT's quench lies in another basin: at or above the second-lowest
      LJ13 minimum (c x -41.472); all other minima are higher.
    """
    r = hot_base
    c = C_OK[:, :1]
    assert r.shape == (2, 3)
    assert np.all(np.isin(r.code, (CENSORED, EVENT)))
    np.testing.assert_allclose(r.time, r.n_checks * HOT.n_q * HOT.dt)
    assert np.all(r.time <= HOT.t_censor + 1e-12)
    assert np.all((r.n_checks >= 1) & (r.n_checks <= HOT.n_checks))
    cens, ev = r.code == CENSORED, r.code == EVENT
    assert np.all(r.n_checks[cens] == HOT.n_checks)
    np.testing.assert_allclose(r.time[cens], HOT.t_censor)
    np.testing.assert_allclose(r.e0, c * LJ13_MINIMUM_ENERGY * np.ones((1, 3)), atol=1e-6)
    np.testing.assert_allclose((r.e_last / c)[cens], LJ13_MINIMUM_ENERGY, atol=1e-6)
    assert np.all((r.e_last / c)[ev] > LJ13_SECOND_MINIMUM - 1e-4)
    assert np.all(r.quench_unconverged == 0)
    assert np.all(r.n_samples == r.n_checks * (HOT.n_q // HOT.sample_every))
    assert np.all(r.energy_hist.sum(-1) + r.n_outside == r.n_samples)
    s = r.summary()
    assert s["all"]["n_runs"] == 6 and len(s["per_sample"]) == 2
    assert s["all"]["n_events"] == int(np.sum(ev))
    assert s["all"]["n_censored"] == int(np.sum(cens))


def test_effective_temperature_decides_events(hot_base):
    """Scaling the energy by c is the same physics at kT / c (see C_TEMP); HOT's program, reused.

    c = 4 (kT_eff 0.075, 8 tau_eff): leaving the icosahedron's basin means
    crossing a saddle above the next minimum, >= 2.85 epsilon up
    (LJ13_SECOND_MINIMUM), Boltzmann odds exp(-38) per attempt: every replica
    is CENSORED, back in the icosahedron at every check. c = 0.25 (kT_eff 1.2, far
    above melting): every replica leaves the basin (EVENT or EVAPORATED), none
    survives to t_censor, none FAILS.
    """
    r = run(C_TEMP, SEEDS)
    np.testing.assert_allclose(r.e0[:, 0], C_TEMP[:, 0] * LJ13_MINIMUM_ENERGY, rtol=1e-7)
    assert np.all(r.code[1] == CENSORED)
    np.testing.assert_allclose(r.e_last[1], 4.0 * LJ13_MINIMUM_ENERGY, rtol=1e-7)
    assert np.all(np.isin(r.code[0], (EVENT, EVAPORATED)))
    assert np.all(r.time[0] < HOT.t_censor)


def test_seed_order_does_not_matter(hot_base):
    """A replica's outcome depends on its seed, not on its position in the queue (reversed seeds)."""
    rev = run(C_OK, SEEDS[::-1])
    assert_same(rev, hot_base, rows_b=(slice(None), slice(None, None, -1)))


def test_single_replica_fn_matches_engine(hot_base):
    """vmap(frt_replica_fn) over a batch as wide as the lanes gives the engine's numbers bitwise."""
    import jax

    rep = jax.jit(jax.vmap(frt_replica_fn(scaled_lj, HOT), in_axes=(0, 0, None, None)))
    keys = jax.vmap(lambda s: replica_key(0, s))(SEEDS[1:])
    x0 = lj13_minimum()
    out = jax.device_get(rep(np.ones((2, 1)), keys, x0, x0))
    for k in REPLICA_FIELDS:
        assert np.array_equal(out[k], getattr(hot_base, k)[0, 1:], equal_nan=True), k


# ---------------------------------------------------------------------------
# engineering: masking, chunking, resume, devices
# ---------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:run_frt_ensemble:RuntimeWarning")
def test_exploding_replica_is_masked_and_others_unchanged(hot_base):
    boom = run(C_BOOM, SEEDS)
    assert np.all(boom.code[1] == FAILED)
    np.testing.assert_allclose(boom.time[1], HOT.n_q * HOT.dt)  # flagged at the first check
    assert np.all(boom.n_samples[1] == 0) and np.all(boom.energy_hist[1] == 0)
    assert np.all(np.isfinite(boom.time)) and np.all(np.isfinite(boom.mean_energy[[0, 2]]))
    # every other replica is bit-identical to the run without the exploding sample
    assert_same(boom, hot_base, [0, 2], [0, 1])
    s = boom.summary()
    assert s["all"]["n_failed"] == 3 and s["per_sample"][1]["n_failed"] == 3
    assert s["all"]["n_runs"] == 9
    assert np.array_equal(boom.pooled_energy_hist(), hot_base.pooled_energy_hist())


def test_chunk_size_independence(hot_base):
    assert_same(run(C_OK, SEEDS, chunk_size=2), hot_base)


def test_resume_and_fingerprint(tmp_path, hot_base):
    d = tmp_path / "frt"
    first = run(C_OK, SEEDS, run_dir=d)
    assert_same(first, hot_base)
    files = sorted(os.listdir(d))
    assert files == [".jaxiap-files", "chunk_00000.npz", "chunk_00001.npz", "ensemble_meta.json"]
    meta = json.loads((d / "ensemble_meta.json").read_text())
    assert meta["M"] == 2 and meta["R"] == 3 and meta["settings"]["kT"] == 0.3

    # "interrupted" run: chunk 1 missing; chunk 0 is loaded, not recomputed
    os.remove(d / "chunk_00001.npz")
    with np.load(d / "chunk_00000.npz") as z:
        saved = dict(z)
    saved["n_outside"] = saved["n_outside"] + 1000  # marker: only visible if the file is reused
    np.savez(d / "chunk_00000.npz", **saved)
    resumed = run(C_OK, SEEDS, run_dir=d)
    assert np.all(resumed.n_outside.ravel()[:4] == hot_base.n_outside.ravel()[:4] + 1000)
    saved["n_outside"] -= 1000
    np.savez(d / "chunk_00000.npz", **saved)
    assert_same(run(C_OK, SEEDS, run_dir=d), hot_base)
    assert os.path.exists(d / "chunk_00001.npz")

    # different inputs: a clear error, finished work untouched
    changed = FRTSettings(kT=0.30, t_max=3.0)
    with pytest.raises(JaxiapInputError, match=r"other settings \(differs in: .*settings.*overwrite=True.*new run_dir"):
        run_frt_ensemble(scaled_lj, C_OK, SEEDS, lj13_minimum(), changed, chunk_size=4,
                         lanes_per_device=LANES, progress=False, run_dir=d)
    with pytest.raises(JaxiapInputError, match=str(d)):
        run(C_OK, SEEDS, run_dir=d, base_seed=1)
    assert sorted(os.listdir(d)) == files
    other = run(C_OK, SEEDS, run_dir=d, base_seed=1, overwrite=True)
    assert not np.array_equal(other.mean_energy, hot_base.mean_energy)
    assert json.loads((d / "ensemble_meta.json").read_text())["base_seed"] == 1


def test_save_load_roundtrip(tmp_path, hot_base):
    p = tmp_path / "res.npz"
    hot_base.save(p)
    back = FRTEnsembleResult.load(p)
    assert_same(back, hot_base)
    assert back.settings == HOT and back.base_seed == 0
    assert np.array_equal(back.seeds, SEEDS) and np.array_equal(back.energy_bin_edges, HOT.bin_edges)
    with np.load(p, allow_pickle=False) as z:  # plain arrays only
        assert "settings_json" in z


@pytest.mark.slow  # CI budget (2026-11-30): runs with -m slow; a cheaper default-run test covers the same code path
def test_four_faked_devices_match_one_device(tmp_path):
    """A (3 samples x 8 seeds) sweep sharded over 4 faked CPU devices (subprocess) reproduces the 1-device run.

    Same lanes per device; XLA compiles the partitioned program with its own
    round-off (about 1 ulp per block), so floats are compared to 1e-12 and
    outcomes exactly over this short run.
    """
    out = tmp_path / "dev4.npz"
    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(here), os.environ.get("PYTHONPATH", "")]))
    env.pop("XLA_FLAGS", None)
    proc = subprocess.run([sys.executable, os.path.join(here, "_ensemble_subprocess.py"), "4", str(out)],
                          check=False, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = run(C_SWEEP, SEEDS_DEV)
    assert one.shape == (3, 8)
    # precondition, not a result: the comparison covers both outcomes
    assert 0 < np.sum(one.code == EVENT) < one.code.size
    assert not np.array_equal(one.mean_energy[0], one.mean_energy[2])  # the samples differ
    with np.load(out) as z:
        for k in REPLICA_FIELDS:
            a, b = getattr(one, k), z[k]
            if np.issubdtype(a.dtype, np.floating):
                np.testing.assert_allclose(b, a, rtol=1e-12, atol=0, err_msg=k)
            else:
                assert np.array_equal(a, b), k


def float64_constant_lj(c, positions):
    """LJ computed in float64 whatever the positions' dtype (like a fitted basis with float64 constants)."""
    import jax.numpy as jnp

    return jnp.asarray(c[0], jnp.float64) * lj_energy(positions.astype(jnp.float64))


def test_float32_md_with_a_float64_potential():
    """settings.dtype float32 keeps the MD state in float32 even when the potential returns float64."""
    cold32 = FRTSettings(kT=0.05, t_max=1.0, dtype="float32")
    res = run_frt_ensemble(float64_constant_lj, np.ones((1, 1)), np.array([0, 1]), lj13_minimum(), cold32,
                           chunk_size=2, lanes_per_device=LANES, progress=False)
    assert np.all(res.code == CENSORED)
    np.testing.assert_allclose(res.e0, LJ13_MINIMUM_ENERGY, rtol=1e-5)


def test_screened_checks_equal_the_full_quench_protocol(hot_base):
    """The screened basin checks (default) decide every check as the full-quench protocol does.

    Same seeds, same samples (c = 1 and the hotter 0.8), 8 seeds: times,
    codes, check counts and energy histograms agree bitwise (the MD is the
    same and every decision is the same); an EVENT's quenched energy agrees to
    round-off (the unsettled lanes finish their quench in narrower groups);
    a settled check reports E0. The screen must have settled most checks.
    """
    import dataclasses

    full = run(C_OK, SEEDS_DEV, settings=dataclasses.replace(HOT, screen_steps=0))
    fast = run(C_OK, SEEDS_DEV)
    ev = full.code == EVENT
    assert 0 < int(np.sum(ev)) < ev.size  # both outcomes occur, so the comparison can fail
    for k in ("time", "code", "n_checks", "energy_hist", "n_samples", "n_outside", "e0", "ref_max_force"):
        assert np.array_equal(getattr(full, k), getattr(fast, k)), k
    np.testing.assert_allclose(fast.e_last[ev], full.e_last[ev], rtol=1e-12)
    np.testing.assert_allclose(fast.e_last[~ev], full.e_last[~ev], atol=1e-6)
    assert np.sum(fast.quench_steps) < 0.7 * np.sum(full.quench_steps)
