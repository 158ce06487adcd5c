"""Lennard-Jones reference potential in reduced units (sigma = epsilon = mass = 1).

V(r) = 4 eps [(sig/r)^12 - (sig/r)^6], summed over all pairs of a free cluster
(no cutoff), or over minimum-image pairs inside r_cut in an orthorhombic box.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxiap.errors import JaxiapInputError
from jaxiap.geometry import pair_distances

#: Global minimum of LJ13 (Mackay icosahedron), reduced units [Cambridge Cluster Database].
LJ13_MINIMUM_ENERGY = -44.326801


def lj_pair(r, sigma=1.0, epsilon=1.0):
    """Pair energy V(r) (any shape), reduced units by default."""
    sr6 = (sigma / r) ** 6
    return 4.0 * epsilon * (sr6 * sr6 - sr6)


def lj_energy(positions, mask=None, box=None, r_cut=None, shift=True, sigma=1.0, epsilon=1.0):
    """Total LJ energy of one structure.

    positions: (N, 3); mask: (N,) bool or None; box: (3,) orthorhombic lengths
    or None (free cluster). r_cut is required with a box (and must be at most
    half the shortest box length); it is optional for a free cluster. With
    ``shift`` the pair energy is shifted to zero at r_cut.
    Returns a scalar energy in units of epsilon.
    """
    if box is not None:
        if r_cut is None:
            raise JaxiapInputError("lj_energy: a periodic box needs r_cut (e.g. r_cut=2.5)")
        if not isinstance(box, jax.core.Tracer) and float(np.min(np.asarray(box))) < 2 * r_cut:
            raise JaxiapInputError(
                f"lj_energy: box {np.asarray(box).tolist()} is smaller than 2*r_cut = {2 * r_cut}; "
                "use a larger box or a shorter cutoff"
            )
    r, pair_mask = pair_distances(positions, mask, box)
    v = lj_pair(r, sigma, epsilon)
    if r_cut is not None:
        if shift:
            v = v - lj_pair(jnp.asarray(r_cut, r.dtype), sigma, epsilon)
        pair_mask = pair_mask & (r < r_cut)
    return 0.5 * jnp.sum(jnp.where(pair_mask, v, 0.0))


def lj_forces(positions, mask=None, **kwargs):
    """Forces (N, 3) = -dE/dx of :func:`lj_energy`."""
    return -jax.grad(lj_energy)(positions, mask, **kwargs)


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
    from jaxiap.md.quench import quench

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
    from jaxiap.structures import from_positions
    from jaxiap.systems.oracle import JaxOracle, label
    from jaxiap.systems.sampling import langevin_samples

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
