"""Helper for tests/test_ensemble.py: run a small (samples x seeds) FRT sweep on N faked CPU devices.

Usage: python _ensemble_subprocess.py N_DEVICES OUT.npz
XLA_FLAGS must be set before jax is imported, hence a separate process.
"""

import os
import sys

n_dev = int(sys.argv[1])
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={n_dev}"

import jax  # noqa: E402
import numpy as np  # noqa: E402

import jaxiap  # noqa: E402,F401  (float64)
from jaxiap.md.ensemble import REPLICA_FIELDS, run_frt_ensemble  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_ensemble import C_SWEEP, HOT, SEEDS_DEV, LANES, scaled_lj  # noqa: E402

from jaxiap.systems.lj import lj13_minimum  # noqa: E402

assert len(jax.devices()) == n_dev, jax.devices()
res = run_frt_ensemble(
    scaled_lj, C_SWEEP, SEEDS_DEV, lj13_minimum(), HOT,
    chunk_size=2 * n_dev, lanes_per_device=LANES, progress=False,
)
np.savez(sys.argv[2], **{k: getattr(res, k) for k in REPLICA_FIELDS})
