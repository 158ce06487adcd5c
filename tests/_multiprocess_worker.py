"""Helper for tests/test_multiprocess.py: the toy walk sweep of test_runner.py in a separate process.

Usage:
  python _multiprocess_worker.py multi PORT PROCESS_ID N_PROCESSES OUT.npz RUN_DIR
      one of N_PROCESSES processes (1 CPU device each, gloo collectives)
      joined by jaxiap.md.distributed.initialize at 127.0.0.1:PORT; runs the
      sweep over all processes' devices into RUN_DIR, then removes chunk 1
      (process 0) and runs again (resume: chunk 1 recomputed, the rest loaded);
      then with automatic chunk sizing, and with other seeds in process 1
      (refused in both processes).
  python _multiprocess_worker.py single N_DEVICES OUT.npz
      one process with N_DEVICES faked CPU devices.
Both use chunk_size 4 and 2 lanes per device. XLA_FLAGS must be set before
jax is imported, hence separate processes.
"""

import os
import sys

mode = sys.argv[1]
n_local = 1 if mode == "multi" else int(sys.argv[2])
os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={n_local}"

import jax  # noqa: E402
import numpy as np  # noqa: E402

import jaxiap  # noqa: E402,F401  (float64)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

CHUNK, LANES = 4, 2


def sweep(run_dir=None, progress=False, chunk_size=CHUNK, seed_shift=0):
    from test_runner import PARAMS, SEEDS, SHARED, walk_program

    from jaxiap.md.runner import run_program

    return run_program(walk_program(), PARAMS, SEEDS + seed_shift, SHARED, chunk_size=chunk_size,
                       lanes_per_device=LANES, run_dir=run_dir, progress=progress)


def arrays(run):
    return dict(**run.results, failed=run.failed, chunk_size=run.chunk_size)


if mode == "multi":
    from jaxiap.md import distributed

    port, pid, n_proc, out, run_dir = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6]
    distributed.initialize(f"127.0.0.1:{port}", n_proc, pid)
    assert jax.process_count() == n_proc and len(jax.devices()) == n_proc and len(jax.local_devices()) == 1
    first = sweep(run_dir, progress=True)  # the bar shows on process 0 only
    names = [f"chunk_{c:05d}.npz" for c in range(4)]
    stamps = {n: os.stat(os.path.join(run_dir, n)).st_mtime_ns for n in names}
    distributed.barrier("chunk times read")
    if pid == 0:
        os.remove(os.path.join(run_dir, names[1]))
    distributed.barrier("chunk 1 removed")
    again = sweep(run_dir)
    kept = [n for n in names if os.stat(os.path.join(run_dir, n)).st_mtime_ns == stamps[n]]
    assert kept == [names[0], names[2], names[3]], kept  # loaded (and shared by process 0), not recomputed
    for k in first.results:
        assert np.array_equal(first.results[k], again.results[k]), k
    auto = sweep(chunk_size=None)  # sized from process 0's memory figure in both processes
    assert auto.chunk_size % n_proc == 0 and auto.chunk_size != CHUNK
    for k in first.results:
        assert np.array_equal(first.results[k], auto.results[k]), k
    from jaxiap.errors import JaxiapInputError

    try:
        sweep(seed_shift=pid)  # process 1 is given other seeds: both processes refuse
    except JaxiapInputError as exc:
        assert "process(es) [1] were given other inputs" in str(exc), exc
    else:
        raise AssertionError("different inputs per process were not refused")
    np.savez(out, **arrays(first), process_index=jax.process_index(), n_devices=len(jax.devices()))
elif mode == "single":
    assert len(jax.devices()) == n_local, jax.devices()
    np.savez(sys.argv[3], **arrays(sweep()), n_devices=n_local)
else:
    raise SystemExit(f"unknown mode {mode!r}; use multi or single")
