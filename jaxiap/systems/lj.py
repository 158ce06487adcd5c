"""The LJ13 reference system in reduced units (sigma = epsilon = mass = 1).

The Lennard-Jones energy itself is :mod:`jaxiap.potentials.lj` (re-exported
here); this module adds the LJ13 global minimum and labelled reference data
from Langevin MD of the true potential.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxiap.errors import JaxiapInputError
from jaxiap.md.quench import quench
from jaxiap.potentials.lj import lj_energy, lj_forces, lj_pair
from jaxiap.structures import from_positions
from jaxiap.systems.oracle import JaxOracle, label
from jaxiap.systems.sampling import langevin_samples

__all__ = ["LJ13_MINIMUM_ENERGY", "icosahedron", "lj13_dataset", "lj13_minimum", "lj_energy", "lj_forces", "lj_pair"]

#: Global minimum of LJ13 (Mackay icosahedron), reduced units [Cambridge Cluster Database].
LJ13_MINIMUM_ENERGY = -44.326801


def icosahedron(radius: float = 1.0818) -> np.ndarray:
    """13-atom Mackay icosahedron: centre atom plus 12 vertices at ``radius``. (13, 3)."""
    phi = (1.0 + np.sqrt(5.0)) / 2.0
    verts = []
    for a in (-1.0, 1.0):
        for b in (-phi, phi):
            verts += [(0.0, a, b), (a, b, 0.0), (b, 0.0, a)]
    verts = np.asarray(verts)
    verts *= radius / np.linalg.norm(verts[0])
    return np.vstack([np.zeros(3), verts])


@functools.cache
def _lj13_minimum_cached() -> np.ndarray:
    r, _ = quench(lj_energy, jnp.asarray(icosahedron(), jnp.float64), fmax=1e-9, max_steps=20000)
    return np.asarray(r)


def lj13_minimum() -> np.ndarray:
    """Quenched LJ13 icosahedron (13, 3) float64, centred at the origin; E = -44.326801."""
    r = _lj13_minimum_cached().copy()
    return r - r.mean(axis=0)


def lj13_dataset(
    seed: int = 0,
    n_trajectories: int = 8,
    n_samples: int = 50,
    sample_every: int = 100,
    kT: float = 0.30,
    gamma: float = 1.0,
    dt: float = 0.005,
    n_equilibrate: int = 200,
):
    """Labelled LJ13 reference data from Langevin MD of the true potential.

    ``n_trajectories`` seeds start at the quenched icosahedron, equilibrate,
    and are sampled every ``sample_every`` steps; every snapshot is labelled
    with the exact LJ energy and forces. Returns a Dataset of
    n_trajectories * n_samples structures (trajectory-major order).
    Reproducible from ``seed``.
    """
    def is_int(v):
        return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

    if not is_int(seed):
        raise JaxiapInputError(f"lj13_dataset: seed={seed!r} must be an integer")
    for name, v in (("n_trajectories", n_trajectories), ("n_samples", n_samples), ("sample_every", sample_every)):
        if not (is_int(v) and v >= 1):
            raise JaxiapInputError(f"lj13_dataset: {name}={v!r} must be a positive integer (a dataset needs at "
                                   "least one snapshot, taken after at least one MD step)")
    if not (is_int(n_equilibrate) and n_equilibrate >= 0):
        raise JaxiapInputError(f"lj13_dataset: n_equilibrate={n_equilibrate!r} must be an integer >= 0")
    if not (isinstance(kT, (int, float, np.number)) and np.isfinite(kT) and kT > 0):
        raise JaxiapInputError(f"lj13_dataset: kT={kT!r} must be a positive finite temperature (epsilon); kT = 0 "
                               "gives no thermal motion, so every snapshot is the same quenched icosahedron")
    for name, v in (("gamma", gamma), ("dt", dt)):
        if not (isinstance(v, (int, float, np.number)) and np.isfinite(v) and v > 0):
            raise JaxiapInputError(f"lj13_dataset: {name}={v!r} must be a positive finite number")

    frames = langevin_samples(
        jax.random.key(seed), lj_energy, lj13_minimum(), n_trajectories, n_samples,
        sample_every, kT, gamma, dt, n_equilibrate,
    )
    structures = from_positions(frames.reshape(-1, 13, 3))
    return label(JaxOracle(lj_energy), structures)
