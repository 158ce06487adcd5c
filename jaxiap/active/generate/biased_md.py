"""Langevin MD on a biased energy, block by block, with an uncertainty-based stop and an adapt hook.

:func:`run_biased_langevin` runs :func:`jaxiap.md.integrators.block_langevin`
(BAOAB, noise drawn once per block) on any energy ``energy_fn(positions,
**energy_kwargs)`` (UDD's Ebar + E_bias, HAL's Ebar - tau sigma_E, ...). The
block is jitted and vmapped over independent trajectories; the host loops
over blocks, so that after each block it can

- record the positions and ``uncertainty_fn(positions)``;
- stop a trajectory whose uncertainty exceeds ``stop_threshold`` (its state
  is frozen from then on; the loop ends when all have stopped);
- update the energy's keyword arguments with ``adapt(positions, kwargs) ->
  kwargs`` (HAL's tau, :func:`jaxiap.active.generate.hal.hal_adapt`), per
  trajectory (the hook is vmapped; it must be pure JAX).

Force evaluations counted: those of the MD (one at the start, one per step);
the uncertainty and adapt calls are not counted.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxiap.errors import JaxiapInputError
from jaxiap.md.integrators import BlockState, block_langevin

__all__ = ["BiasedRun", "run_biased_langevin"]


class BiasedRun(NamedTuple):
    """Result of :func:`run_biased_langevin` for T recorded blocks (T <= n_blocks; T stops at the
    block where the last trajectory stopped).

    frames (T, N, 3) (or (T, B, N, 3) for a batch of B starts): positions after each block (a
    stopped trajectory repeats its stopping frame); uncertainty (T,) / (T, B) (NaN without
    uncertainty_fn); n_force_evals int / (B,); stopped_at: the block index (0-based) at which
    the uncertainty first exceeded the threshold, -1 if never; energy_kwargs: dict of the
    energy's keyword arguments after each block, leading axis T (e.g. HAL's tau).
    """

    frames: np.ndarray
    uncertainty: np.ndarray
    n_force_evals: np.ndarray
    stopped_at: np.ndarray
    energy_kwargs: dict


def run_biased_langevin(key, energy_fn: Callable, x0, *, kT: float, dt: float, gamma: float, n_blocks: int,
                        block_steps: int, uncertainty_fn: Callable | None = None, stop_threshold=None,
                        adapt: Callable | None = None, energy_kwargs: dict | None = None,
                        mass: float = 1.0) -> BiasedRun:
    """Run ``n_blocks`` blocks of ``block_steps`` BAOAB steps on ``energy_fn`` (module docstring).

    x0 (N, 3) one start, or (B, N, 3) B independent starts (vmapped; keys split from ``key``).
    energy_kwargs: initial keyword arguments of energy_fn (e.g. ``{"tau": 0.0}``), per trajectory.
    uncertainty_fn(positions (N, 3)) -> scalar; stop_threshold: stop when uncertainty > it.
    Units: those of energy_fn (kT energy, dt time, gamma 1/time).
    """
    x0 = jnp.asarray(x0)
    single = x0.ndim == 2
    if single:
        x0 = x0[None]
    if x0.ndim != 3:
        raise JaxiapInputError(f"run_biased_langevin: x0 must be (N, d) or (B, N, d), got {tuple(x0.shape)}")
    for name, v in (("n_blocks", n_blocks), ("block_steps", block_steps)):
        if not (isinstance(v, (int, np.integer)) and v >= 1):
            raise JaxiapInputError(f"run_biased_langevin: {name}={v!r} must be a positive integer")
    if stop_threshold is not None and uncertainty_fn is None:
        raise JaxiapInputError("run_biased_langevin: stop_threshold needs uncertainty_fn")
    n_batch = x0.shape[0]
    kw = {k: jnp.broadcast_to(jnp.asarray(v, x0.dtype), (n_batch,) + jnp.shape(v))
          for k, v in (energy_kwargs or {}).items()}

    init, run = block_langevin(energy_fn, dt=dt, gamma=gamma, kT=kT, mass=mass)
    init_b = jax.jit(jax.vmap(lambda k, x, kw: init(k, x, **kw)))
    block_b = jax.jit(jax.vmap(lambda st, kw: run(st, 1, int(block_steps), lambda s: None, **kw)[0]))
    unc_b = jax.jit(jax.vmap(uncertainty_fn)) if uncertainty_fn is not None else None
    adapt_b = jax.jit(jax.vmap(adapt)) if adapt is not None else None

    state = init_b(jax.random.split(key, n_batch), x0, kw)
    stopped = np.zeros(n_batch, bool)
    stopped_at = np.full(n_batch, -1)
    n_evals = np.ones(n_batch, np.int64)
    frames, uncs, hist = [], [], []
    for t in range(int(n_blocks)):
        new = block_b(state, kw)
        act = jnp.asarray(~stopped)
        keep = lambda a, b: jnp.where(act.reshape((-1,) + (1,) * (a.ndim - 1)), a, b)  # noqa: E731
        state = BlockState(keep(new.position, state.position), keep(new.momentum, state.momentum),
                           keep(new.force, state.force), new.key)
        n_evals += np.where(stopped, 0, int(block_steps))
        x = state.position
        u = np.asarray(unc_b(x)) if unc_b is not None else np.full(n_batch, np.nan)
        frames.append(np.asarray(x))
        uncs.append(u)
        if stop_threshold is not None:
            newly = ~stopped & (u > stop_threshold)
            stopped_at[newly] = t
            stopped |= newly
        if adapt_b is not None:
            kw_new = adapt_b(x, kw)
            kw = {k: keep(kw_new[k], kw[k]) for k in kw}
        hist.append({k: np.asarray(v) for k, v in kw.items()})
        if stopped.all():
            break
    frames = np.stack(frames)
    uncs = np.stack(uncs)
    kw_hist = {k: np.stack([h[k] for h in hist]) for k in kw}
    if single:
        return BiasedRun(frames[:, 0], uncs[:, 0], int(n_evals[0]), int(stopped_at[0]),
                         {k: v[:, 0] for k, v in kw_hist.items()})
    return BiasedRun(frames, uncs, n_evals, stopped_at, kw_hist)
