"""Shared fixtures: small LJ13 datasets and bases, built once per session.

Compilation is most of the suite's time, and many tests compile the same
programs in different processes (the two xdist workers, ``jaxiap`` CLI
subprocesses, notebook kernels). Unless the caller set one, the session gets
a fresh JAX persistent compilation cache in a temporary folder, shared with
every worker and subprocess through the environment; the numbers are the
same with or without it (the cache stores the compiled executables).
"""

import os
import shutil
import tempfile

if "JAX_COMPILATION_CACHE_DIR" not in os.environ:  # before jax is imported: it reads these at import
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="jaxiap-tests-xla-cache-")
    os.environ["JAXIAP_TESTS_OWN_XLA_CACHE"] = os.environ["JAX_COMPILATION_CACHE_DIR"]
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import jaxiap  # noqa: F401, E402  (enables float64)


def pytest_unconfigure(config):
    """The controller (not an xdist worker) removes the cache folder it made."""
    own = os.environ.get("JAXIAP_TESTS_OWN_XLA_CACHE")
    if own and not hasattr(config, "workerinput") and own == os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        shutil.rmtree(own, ignore_errors=True)


@pytest.fixture(scope="session")
def lj13_data():
    """Train / test LJ13 data at kT = 0.30 (8 trajectories x 40 snapshots, fixed seed)."""
    from jaxiap.data import split
    from jaxiap.systems.lj import lj13_dataset

    ds = lj13_dataset(seed=0, n_trajectories=8, n_samples=40, sample_every=100, kT=0.30)
    train, test = split(jax.random.key(1), ds, (0.75, 0.25))
    return train, test


@pytest.fixture(scope="session")
def rng():
    return np.random.default_rng(0)
