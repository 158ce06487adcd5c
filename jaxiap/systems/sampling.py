"""Reference configurations from Langevin MD (jax-md BAOAB), vmapped over seeds."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp


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
    """Snapshots (n_trajectories, n_samples, N, 3) of free-cluster Langevin MD.

    Each trajectory starts at ``start_positions`` (N, 3) with Maxwell-Boltzmann
    velocities at kT (centre-of-mass momentum removed), runs ``n_equilibrate``
    steps, then records every ``sample_every`` steps. Reduced units; unit masses.
    Reproducible from ``key``.
    """
    from jax_md import simulate, space

    _, shift_fn = space.free()
    init_fn, step_fn = simulate.nvt_langevin(energy_fn, shift_fn, dt=dt, kT=kT, gamma=gamma)
    r0 = jnp.asarray(start_positions)

    def block(state, _):
        state = jax.lax.fori_loop(0, sample_every, lambda i, s: step_fn(s), state)
        return state, state.position

    def trajectory(k):
        state = init_fn(k, r0)
        state = jax.lax.fori_loop(0, n_equilibrate, lambda i, s: step_fn(s), state)
        _, frames = jax.lax.scan(block, state, None, length=n_samples)
        return frames

    keys = jax.random.split(key, n_trajectories)
    return jax.jit(jax.vmap(trajectory))(keys)
