"""The ensemble runner (jaxiap.md.runner) on a toy program defined here: lanes, sharding, resume, masking.

The toy is a random walk in 3-D that stops when it leaves a sphere: no
library code knows about it, so it checks that a new trajectory kind is one
program and no runner edit. Expected values come from a NumPy re-implementation
of the walk (same noise, drawn here from the documented replica key).
"""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxiap  # noqa: F401  (float64)
from jaxiap.errors import JaxiapInputError
from jaxiap.md import runner
from jaxiap.md.program import Program, run_replica
from jaxiap.md.runner import run_program

MAX_BLOCKS = 30
RADIUS = 2.5
LANES = 2
SEEDS = np.array([3, 1, 4, 15, 9])
#: step size (noise scale) and drift per sample; sample 0 is deterministic (no noise)
PARAMS = dict(step=np.array([0.0, 0.6, 0.3]),
              drift=np.array([[0.3, 0.4, 0.0], [0.0, 0.0, 0.05], [0.1, -0.1, 0.1]]))
SHARED = dict(radius=np.asarray(RADIUS))


def walk_program(start_at_half_drift: bool = True) -> Program:
    """x_0 = drift / 2 (prepare) or 0; x_{k+1} = x_k + drift + step * normal(fold_in(key, k), (3,)).

    Done when |x| > radius or after MAX_BLOCKS blocks; failed when x is not
    finite. Result: the stopping block and the final radius (and x).
    """

    def prepare(params, shared):
        return 0.5 * params["drift"]

    def init(params, key, prep, shared):
        x0 = prep if start_at_half_drift else jnp.zeros(3)
        return dict(x=x0, key=key, block=jnp.zeros((), jnp.int32), radius=shared["radius"])

    def step(c, params, shared):
        xi = jax.random.normal(jax.random.fold_in(c["key"], c["block"]), (3,))
        return dict(c, x=c["x"] + params["drift"] + params["step"] * xi, block=c["block"] + 1)

    def radius(c):
        return jnp.sqrt(jnp.sum(c["x"] ** 2))

    return Program(
        name="walk",
        init=init,
        step=step,
        done=lambda c: (radius(c) > c["radius"]) | (c["block"] >= MAX_BLOCKS),
        result=lambda c: dict(block=c["block"], radius=radius(c), x=c["x"]),
        failed=lambda c: ~jnp.all(jnp.isfinite(c["x"])),
        prepare=prepare if start_at_half_drift else None,
        cache_key=("test-walk", start_at_half_drift),
        postfix=lambda res: dict(escaped=int(np.sum(res["block"] < MAX_BLOCKS))),
    )


def numpy_walk(step, drift, seed, base_seed=0, half_drift=True):
    """(stopping block, final radius, x) of one replica, in NumPy (noise from the replica key)."""
    key = jax.random.fold_in(jax.random.key(base_seed), seed)
    x = 0.5 * drift if half_drift else np.zeros(3)
    for k in range(MAX_BLOCKS):
        xi = np.asarray(jax.random.normal(jax.random.fold_in(key, k), (3,)))
        x = x + drift + step * xi
        r = np.sqrt(np.sum(x**2))
        if r > RADIUS or not np.all(np.isfinite(x)):
            return k + 1, r, x
    return MAX_BLOCKS, r, x


def run(params=PARAMS, seeds=SEEDS, program=None, **kw):
    kw.setdefault("lanes_per_device", LANES)
    kw.setdefault("chunk_size", 4)
    kw.setdefault("devices", jax.devices()[:1])
    return run_program(program or walk_program(), params, seeds, SHARED, progress=False, **kw)


def assert_same(a, b, rows_a=slice(None), rows_b=slice(None)):
    for k in a.results:
        assert np.array_equal(a.results[k][rows_a], b.results[k][rows_b]), k
    assert np.array_equal(a.failed[rows_a], b.failed[rows_b])


@pytest.fixture(scope="module")
def base():
    """3 samples x 5 seeds, chunks of 4 on 2 lanes (4 chunks, the last padded)."""
    return run()


def test_walk_matches_numpy(base):
    m, r = len(PARAMS["step"]), len(SEEDS)
    assert base.results["block"].shape == (m, r) and base.results["x"].shape == (m, r, 3)
    assert not base.failed.any()
    for i in range(m):
        for j, seed in enumerate(SEEDS):
            block, rad, x = numpy_walk(PARAMS["step"][i], PARAMS["drift"][i], seed)
            assert base.results["block"][i, j] == block, (i, j)
            np.testing.assert_allclose(base.results["x"][i, j], x, rtol=1e-13, atol=1e-13)
            np.testing.assert_allclose(base.results["radius"][i, j], rad, rtol=1e-13)
    # sample 0 has no noise: |x_k| = (k + 1/2) |drift| = 0.5 (k + 1/2) first exceeds 2.5 at k = 5
    assert np.all(base.results["block"][0] == 5)
    assert len(set(base.results["block"][1])) > 1  # the seeds' noises differ


def test_layout_does_not_change_results(base):
    """Chunk size, seed order and queue position do not change a replica's numbers (same lanes)."""
    assert_same(run(chunk_size=2), base)
    assert_same(run(chunk_size=15), base)
    rev = run(seeds=SEEDS[::-1])
    assert_same(rev, base, rows_b=(slice(None), slice(None, None, -1)))
    one = jax.jit(jax.vmap(lambda p, k: run_replica(walk_program(), p, k, SHARED)))
    keys = jax.vmap(lambda s: runner.replica_key(0, s))(SEEDS[:LANES])
    res, failed = jax.device_get(one(jax.tree_util.tree_map(lambda a: a[1:2].repeat(LANES, 0), PARAMS), keys))
    for k in res:
        assert np.array_equal(res[k], base.results[k][1, :LANES]), k
    assert not failed.any()


def test_blown_up_sample_is_masked_and_others_unchanged(base):
    boom = dict(step=np.insert(PARAMS["step"], 1, np.nan), drift=np.insert(PARAMS["drift"], 1, 0.1, axis=0))
    res = run(params=boom)
    assert np.array_equal(res.failed, np.arange(4)[:, None].repeat(len(SEEDS), 1) == 1)
    assert np.all(res.results["block"][1] == 1)  # stopped at its first block
    assert np.all(np.isnan(res.results["x"][1]))
    assert_same(res, base, [0, 2, 3], [0, 1, 2])


def test_resume_recomputes_only_missing_chunks(tmp_path):
    prog = walk_program(start_at_half_drift=False)
    d = tmp_path / "walk"
    first = run(program=prog, chunk_size=4, run_dir=d)
    chunks = sorted(p.name for p in d.glob("chunk_*.npz"))
    assert chunks == [f"chunk_{i:05d}.npz" for i in range(4)]
    ident = lambda n: ((d / n).stat().st_ino, (d / n).stat().st_mtime_ns)  # noqa: E731  (inodes get reused)
    before = {n: ident(n) for n in chunks}
    for n in chunks[1::2]:
        os.remove(d / n)
    again = run(program=prog, chunk_size=4, run_dir=d)
    assert_same(again, first)
    assert [n for n in chunks if ident(n) == before[n]] == chunks[0::2]  # kept chunks were loaded, not rewritten
    block, _, _ = numpy_walk(PARAMS["step"][2], PARAMS["drift"][2], SEEDS[4], half_drift=False)
    assert first.results["block"][2, 4] == block
    # a damaged chunk is recomputed with a warning; other inputs are refused
    (d / chunks[0]).write_bytes(b"not a zip")
    with pytest.warns(RuntimeWarning, match="chunk_00000.npz.*recomputing"):
        assert_same(run(program=prog, chunk_size=4, run_dir=d), first)
    with pytest.raises(JaxiapInputError, match="differs in: .*base_seed"):
        run(program=prog, chunk_size=4, run_dir=d, base_seed=1)


def test_four_faked_devices_match_one_device(base, tmp_path):
    """The same grid sharded over 4 faked CPU devices (subprocess; 2 lanes each) gives the 1-device numbers."""
    here = os.path.dirname(os.path.abspath(__file__))
    out = str(tmp_path / "walk_dev4.npz")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(here), os.environ.get("PYTHONPATH", "")]))
    env.pop("XLA_FLAGS", None)
    proc = subprocess.run([sys.executable, os.path.join(here, "_ensemble_subprocess.py"), "4", out, "walk"],
                          check=False, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with np.load(out) as z:
        assert int(z["n_devices"]) == 4 and int(z["chunk_size"]) == 8  # 6 rounded up to 4 devices
        for k in base.results:
            assert np.array_equal(z[k], base.results[k]), k
        assert np.array_equal(z["failed"], base.failed)


def test_progress_bar_and_compile_cache(capsys):
    prog = walk_program()
    run_program(prog, PARAMS, SEEDS, SHARED, chunk_size=4, lanes_per_device=LANES, devices=jax.devices()[:1])
    err = capsys.readouterr().err
    assert "walk" in err and "15/15" in err and "escaped=" in err and "failed=0" in err
    # programs with equal cache keys share one compiled program; None compiles afresh
    a = runner._compiled(walk_program(), tuple(jax.devices()[:1]), LANES)
    assert runner._compiled(walk_program(), tuple(jax.devices()[:1]), LANES) is a
    fresh = walk_program()._replace(cache_key=None)
    assert runner._compiled(fresh, tuple(jax.devices()[:1]), LANES) is not runner._compiled(
        fresh, tuple(jax.devices()[:1]), LANES)


def test_no_prepare_no_shared_and_automatic_sizing():
    """prepare and shared are optional; chunk_size / lanes_per_device None are sized from the program's shapes."""
    from jaxiap.md.sizing import LANES_PER_DEVICE, program_bytes

    def init(params, key, prep, shared):
        assert prep is None and shared is None
        return dict(x=jnp.zeros(3), key=key, block=jnp.zeros((), jnp.int32), radius=jnp.asarray(RADIUS))

    prog = walk_program(start_at_half_drift=False)._replace(init=init, cache_key=("test-walk", "bare"))
    lane_b, rep_b = program_bytes(prog, jax.tree_util.tree_map(lambda a: a[0], PARAMS), None)
    assert lane_b > 16 * 8 * 4 and rep_b > 8 * 4  # at least the carry's x (3 floats) and the params row
    res = run_program(prog, PARAMS, SEEDS, None, progress=False, devices=jax.devices()[:1])
    assert res.lanes_per_device == LANES_PER_DEVICE["cpu"] and res.chunk_size == 15  # one chunk
    for i in range(len(PARAMS["step"])):
        for j, seed in enumerate(SEEDS):
            block, rad, _ = numpy_walk(PARAMS["step"][i], PARAMS["drift"][i], seed, half_drift=False)
            assert res.results["block"][i, j] == block
            np.testing.assert_allclose(res.results["radius"][i, j], rad, rtol=1e-13)


def test_bad_inputs():
    with pytest.raises(JaxiapInputError, match="program must be"):
        run_program(lambda c: c, PARAMS, SEEDS)
    with pytest.raises(JaxiapInputError, match="same leading axis"):
        run(params=dict(step=np.zeros(2), drift=np.zeros((3, 3))))
    with pytest.raises(JaxiapInputError, match="seeds"):
        run(seeds=np.array([0.5]))
    with pytest.raises(JaxiapInputError, match="base_seed"):
        run(base_seed=-1)
    with pytest.raises(JaxiapInputError, match="chunk_size"):
        run(chunk_size=0)
    reserved = walk_program()._replace(result=lambda c: dict(failed=c["block"]), cache_key=None)
    with pytest.raises(JaxiapInputError, match="reserved"):
        run(program=reserved)
