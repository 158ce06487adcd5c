"""Reference configurations from Langevin MD, vmapped over trajectories (the data generator).

The integrator is :func:`jaxiap.md.integrators.free_langevin` (jax-md BAOAB), the one
the FRT ensembles use.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp

from jaxiap.md import integrators


@functools.lru_cache(maxsize=32)
def _trajectories_fn(energy_fn: Callable, n_samples: int, sample_every: int, n_equilibrate: int,
                     gamma: float, dt: float, fixed_kT: float | None):
    """Jitted (keys (T,), kTs (T,), r0 (N, 3)) -> frames (T, n_samples, N, 3), cached per settings.

    ``fixed_kT`` None: kT is traced per trajectory, so several temperatures (and
    repeated calls) share one compilation. A float: that kT is compiled in and
    ``kTs`` is ignored (the one-temperature path of :func:`langevin_samples`,
    whose numbers the LJ13 reference data were generated with).
    """
    init_fn, step_fn = integrators.free_langevin(energy_fn, dt=dt, gamma=gamma, kT=fixed_kT)

    def trajectory(key, kT, r0):
        kw = {} if fixed_kT is not None else {"kT": kT}
        state = integrators.run_steps(step_fn, init_fn(key, r0, **kw), n_equilibrate, **kw)
        return integrators.sample_every(step_fn, state, n_samples, sample_every, lambda s: s.position, **kw)[1]

    return jax.jit(jax.vmap(trajectory, in_axes=(0, 0, None)))


def _run(keys, kTs, r0, energy_fn, n_samples, sample_every, gamma, dt, n_equilibrate, fixed_kT=None):
    traj = _trajectories_fn(energy_fn, int(n_samples), int(sample_every), int(n_equilibrate), float(gamma),
                            float(dt), fixed_kT)
    return traj(keys, jnp.asarray(kTs, jnp.result_type(float)), jnp.asarray(r0))


def langevin_trajectories(keys, kTs, energy_fn: Callable, start_positions, n_samples: int, sample_every: int,
                          gamma: float = 1.0, dt: float = 0.005, n_equilibrate: int = 0):
    """Snapshots (T, n_samples, N, 3) of free-cluster Langevin MD, one trajectory per (keys[t], kTs[t]).

    keys (T,) PRNG keys; kTs (T,) temperatures (energy units). Each trajectory
    starts at ``start_positions`` (N, 3) with Maxwell-Boltzmann velocities at
    its kT, runs ``n_equilibrate`` steps, then records every ``sample_every``
    steps. Reduced units; unit masses. One compilation per (energy_fn, sizes,
    gamma, dt), whatever the temperatures.
    """
    return _run(keys, kTs, start_positions, energy_fn, n_samples, sample_every, gamma, dt, n_equilibrate)


def langevin_samples(
    key,
    energy_fn: Callable,
    start_positions,
    n_trajectories: int,
    n_samples: int,
    sample_every: int,
    kT: float,
    gamma: float = 1.0,
    dt: float = 0.005,
    n_equilibrate: int = 0,
):
    """Snapshots (n_trajectories, n_samples, N, 3) at one temperature kT, trajectory keys split from ``key``.

    See :func:`langevin_trajectories`. Reproducible from ``key``.
    """
    keys = jax.random.split(key, n_trajectories)
    return _run(keys, jnp.full((n_trajectories,), kT), start_positions, energy_fn, n_samples, sample_every, gamma,
                dt, n_equilibrate, fixed_kT=float(kT))
