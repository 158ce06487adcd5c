"""run_program over 2 processes (jax.distributed, gloo CPU collectives, 1 CPU device each).

The toy random walk of tests/test_runner.py (3 samples x 5 seeds, chunks of
4, 2 lanes per device) runs as two processes joined by
:func:`jaxiap.md.distributed.initialize` on a free local port. Equality is
bitwise: the 2-process result (in both processes) equals one process with 2
faked devices (the same partitioned program; the gathers move bytes only)
and one process with 1 device (the toy's arithmetic does not round
differently with the device count; chaotic MD such as the FRT program
agrees across device counts only to round-off, see jaxiap.md.runner).
Only process 0 writes the run folder and shows the bar; the folder is an
ordinary run folder that a 1-device run_program then loads without computing.
"""

import os
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import jaxiap  # noqa: F401  (float64)
from jaxiap.md.runner import run_program
from test_runner import PARAMS, SEEDS, SHARED, walk_program

HERE = os.path.dirname(os.path.abspath(__file__))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(log, *args):
    """Start the helper with ``args``; its stdout and stderr go to the file ``log`` (no pipe to fill up)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(HERE), os.environ.get("PYTHONPATH", "")]))
    env.pop("XLA_FLAGS", None)
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, os.path.join(HERE, "_multiprocess_worker.py"), *map(str, args)],
                                env=env, stdout=f, stderr=subprocess.STDOUT, text=True)
    proc.log = log
    return proc


def finish(procs, timeout=240):
    """Wait for every process; when one fails (or at the timeout) end the others. Returns their output."""
    deadline = time.monotonic() + timeout
    try:
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            if any(p.poll() not in (None, 0) for p in procs):  # the others would wait for it at a barrier
                break
            time.sleep(0.1)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
    logs = [open(p.log).read() for p in procs]
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-3000:]
    return logs


@pytest.mark.slow  # CI budget (2026-11-30): runs with -m slow; a cheaper default-run test covers the same code path
def test_two_processes_equal_one_process(tmp_path):
    run_dir, port = tmp_path / "walk", free_port()
    outs = [tmp_path / f"proc{i}.npz" for i in range(2)]
    procs = [launch(tmp_path / f"proc{i}.log", "multi", port, i, 2, outs[i], run_dir) for i in range(2)]
    procs.append(launch(tmp_path / "single2.log", "single", 2, tmp_path / "single2.npz"))
    one = run_program(walk_program(), PARAMS, SEEDS, SHARED, chunk_size=4, lanes_per_device=2,
                      devices=jax.devices()[:1], progress=False)
    errs = finish(procs)

    assert "15/15" in errs[0] and "15/15" not in errs[1]  # the bar on process 0 only
    with np.load(tmp_path / "single2.npz") as z:
        two = {k: z[k] for k in z.files}
    assert int(two["n_devices"]) == 2
    for out, pid in zip(outs, (0, 1)):
        with np.load(out) as z:
            assert int(z["process_index"]) == pid and int(z["n_devices"]) == 2 and int(z["chunk_size"]) == 4
            for k in one.results:
                assert np.array_equal(z[k], two[k]), (pid, k)
                assert np.array_equal(z[k], one.results[k]), (pid, k)
            assert np.array_equal(z["failed"], one.failed)

    chunks = sorted(p.name for p in run_dir.glob("chunk_*.npz"))
    assert chunks == [f"chunk_{i:05d}.npz" for i in range(4)]
    stamp = {n: (run_dir / n).stat().st_mtime_ns for n in chunks}
    again = run_program(walk_program(), PARAMS, SEEDS, SHARED, chunk_size=4, lanes_per_device=2,
                        devices=jax.devices()[:1], progress=False, run_dir=run_dir)
    assert {n: (run_dir / n).stat().st_mtime_ns for n in chunks} == stamp  # loaded, none recomputed
    for k in one.results:
        assert np.array_equal(again.results[k], one.results[k]), k
