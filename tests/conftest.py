"""Shared fixtures: small LJ13 datasets and bases, built once per session."""

import jax
import numpy as np
import pytest

import jaxiap  # noqa: F401  (enables float64)


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
