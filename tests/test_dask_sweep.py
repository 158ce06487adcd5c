"""Sweep chunks as Dask tasks (jaxiap.md.dask_sweep) on a LocalCluster of 2 worker processes (1 CPU device each).

Equality is bitwise: every task runs the runner's own chunk function on one
device with the serial run's lanes_per_device, so the merged result equals a
serial run_program on 1 device (the FRT program of the true LJ energy, sent
as a picklable factory; and the toy walk of tests/test_runner.py). The run
folder is run_program's: run_program afterwards loads every chunk and
computes nothing, and a Dask rerun skips them. Killing a worker process in
the middle of a sweep loses nothing: Dask reschedules its task.
"""

import functools
import os
import signal
import threading
import time

import jax
import numpy as np
import pytest

from distributed import Client, LocalCluster

import jaxiap  # noqa: F401  (float64)
from jaxiap.errors import JaxiapInputError
from jaxiap.md.dask_sweep import run_program_dask
from jaxiap.md.frt import frt_program
from jaxiap.md.frt_settings import FRTSettings
from jaxiap.md.runner import run_program
from jaxiap.systems.lj import icosahedron
from jaxiap.workflows.lj13 import true_lj_energy
from test_runner import PARAMS, SEEDS, SHARED, walk_program

pytestmark = pytest.mark.slow  # CI budget (2026-11-30): a dask cluster per run; dask is an optional extra

HERE = os.path.dirname(os.path.abspath(__file__))
TINY = FRTSettings(kT=0.30, t_max=1.0)
#: seconds each task of the killed-worker test waits before it computes (so a worker dies mid-task)
DELAY = 0.5


def slow_walk():
    """The walk program, built after DELAY seconds (a picklable factory: the workers import this module)."""
    time.sleep(DELAY)
    return walk_program()


@pytest.fixture(scope="module")
def client():
    # the workers inherit this process's environment (JAX flags, compilation cache); each task uses 1 device
    env = {"PYTHONPATH": os.pathsep.join([HERE, os.path.dirname(HERE), os.environ.get("PYTHONPATH", "")])}
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, env=env) as cluster:
        with Client(cluster) as c:
            yield c


def mtimes(d):
    return {p.name: p.stat().st_mtime_ns for p in sorted(d.glob("chunk_*.npz"))}


def assert_same(a, b):
    assert a.results.keys() == b.results.keys()
    for k in a.results:
        assert np.array_equal(a.results[k], b.results[k], equal_nan=True), k
    assert np.array_equal(a.failed, b.failed)


def has_compiled():
    """Whether this worker has run an FRT chunk task (and holds its compiled program)."""
    from jaxiap.md import dask_sweep

    return any(cache_key[0] == "frt" for _, cache_key, _ in dask_sweep._COMPUTERS)


def serial_frt(args, kw):
    """Serial run_program of the FRT program on 1 device (called in a worker, whose compiled program it reuses)."""
    return run_program(frt_program(true_lj_energy, TINY), *args, devices=jax.devices()[:1], **kw)


def test_frt_sweep_equals_serial_and_is_a_run_folder(client, tmp_path):
    start = icosahedron()  # the program quenches it (lj13_minimum() would compile a quench here)
    args = (np.zeros((2, 1)), np.array([0, 3, 5, 7]), dict(start=start, reference=start))
    kw = dict(chunk_size=8, lanes_per_device=2, identity=dict(test="dask-frt"), progress=False)
    d = tmp_path / "frt"
    factory = functools.partial(frt_program, true_lj_energy, TINY)
    dask = run_program_dask(factory, *args, client=client, run_dir=d, **kw)
    # One chunk, so one worker compiled the program; the serial reference runs there and reuses it (a
    # program with a host callback, the progress bar, is not kept in the persistent compilation cache).
    warm = [w for w, has in client.run(has_compiled).items() if has]
    assert len(warm) == 1
    serial = client.submit(serial_frt, args, kw, workers=warm, pure=False).result()
    assert_same(dask, serial)
    assert dask.chunk_size == 8 and dask.lanes_per_device == 2 and not serial.failed.any()
    before = mtimes(d)
    assert list(before) == ["chunk_00000.npz"]
    # run_program here on the folder loads the chunk (nothing compiles); a Dask rerun skips it too
    assert_same(run_program(frt_program(true_lj_energy, TINY), *args, run_dir=d, devices=jax.devices()[:1], **kw),
                serial)
    assert_same(run_program_dask(factory, *args, client=client, run_dir=d, **kw), serial)
    assert mtimes(d) == before


def test_killed_worker_loses_nothing(client, tmp_path):
    kw = dict(chunk_size=3, lanes_per_device=2, progress=False)  # 5 chunks
    d = tmp_path / "walk"
    got = []

    def run():
        try:
            got.append(run_program_dask(slow_walk, PARAMS, SEEDS, SHARED, client=client, run_dir=d, **kw))
        except BaseException as exc:  # shown by the assert below
            got.append(exc)

    sweep = threading.Thread(target=run)
    sweep.start()
    try:
        deadline = time.monotonic() + 90
        while not list(d.glob("chunk_*.npz")) and time.monotonic() < deadline:
            time.sleep(0.05)
        busy = [w for w, keys in client.processing().items() if keys]
        assert busy, "no worker was running a task after the first chunk"
        pid = client.run(os.getpid, workers=busy[:1])[busy[0]]
        os.kill(pid, signal.SIGKILL)  # a worker process of this test's own LocalCluster
    finally:
        sweep.join(timeout=120)
    assert got and not isinstance(got[0], BaseException), got or "the sweep did not finish"
    serial = run_program(walk_program(), PARAMS, SEEDS, SHARED, devices=jax.devices()[:1], **kw)
    assert_same(got[0], serial)
    assert list(mtimes(d)) == [f"chunk_{c:05d}.npz" for c in range(5)]
    assert pid not in client.run(os.getpid).values()


def test_bad_inputs(client, tmp_path):
    kw = dict(run_dir=tmp_path / "x", chunk_size=2, lanes_per_device=2)
    with pytest.raises(JaxiapInputError, match="client must be a distributed.Client"):
        run_program_dask(walk_program(), PARAMS, SEEDS, SHARED, client=None, **kw)
    with pytest.raises(JaxiapInputError, match="run_dir is required"):
        run_program_dask(walk_program(), PARAMS, SEEDS, SHARED, client=client, **dict(kw, run_dir=None))
    with pytest.raises(JaxiapInputError, match="lanes_per_device must be an int"):
        run_program_dask(walk_program(), PARAMS, SEEDS, SHARED, client=client, **dict(kw, lanes_per_device=None))
    lock = threading.Lock()
    unpicklable = walk_program()._replace(postfix=lambda res: {"locked": lock.locked()})
    with pytest.raises(JaxiapInputError, match="cannot be pickled.*functools.partial"):
        run_program_dask(unpicklable, PARAMS, SEEDS, SHARED, client=client, **kw)
    with pytest.raises(JaxiapInputError, match="program must be"):
        run_program_dask(3, PARAMS, SEEDS, SHARED, client=client, **kw)
