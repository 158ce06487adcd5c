"""Helper for tests/test_ensemble.py and tests/test_runner.py: run a small grid on N faked CPU devices.

Usage: python _ensemble_subprocess.py N_DEVICES OUT.npz [frt|walk]
frt (default): the (samples x seeds) FRT sweep of test_ensemble.py.
walk: the toy random-walk program of test_runner.py (chunk_size 6, 2 lanes per device).
XLA_FLAGS must be set before jax is imported, hence a separate process.
"""

import os
import sys

n_dev = int(sys.argv[1])
mode = sys.argv[3] if len(sys.argv) > 3 else "frt"
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={n_dev}"

import jax  # noqa: E402
import numpy as np  # noqa: E402

import jaxiap  # noqa: E402,F401  (float64)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
assert len(jax.devices()) == n_dev, jax.devices()

if mode == "frt":
    from test_ensemble import C_SWEEP, HOT, LANES, SEEDS_DEV, scaled_lj  # noqa: E402

    from jaxiap.md.ensemble import REPLICA_FIELDS, run_frt_ensemble  # noqa: E402
    from jaxiap.systems.lj import lj13_minimum  # noqa: E402

    res = run_frt_ensemble(
        scaled_lj, C_SWEEP, SEEDS_DEV, lj13_minimum(), HOT,
        chunk_size=2 * n_dev, lanes_per_device=LANES, progress=False,
    )
    np.savez(sys.argv[2], **{k: getattr(res, k) for k in REPLICA_FIELDS})
elif mode == "walk":
    from test_runner import LANES, PARAMS, SEEDS, SHARED, walk_program  # noqa: E402

    from jaxiap.md.runner import run_program  # noqa: E402

    run = run_program(walk_program(), PARAMS, SEEDS, SHARED, chunk_size=6, lanes_per_device=LANES,
                      progress=False)
    np.savez(sys.argv[2], **run.results, failed=run.failed, n_devices=n_dev, chunk_size=run.chunk_size)
else:
    raise SystemExit(f"unknown mode {mode!r}; use frt or walk")
