"""Pathwise derivatives of MD quantities of interest through trajectories, w.r.t. potential coefficients.

Three estimators for three kinds of QoI (docs/science.md section 16): pathwise derivatives
through the MD scan (here), fluctuation (reweighting) estimators of canonical averages
(:mod:`jaxiap.md.fluctuation`) and likelihood-ratio derivatives of first-passage times
(:mod:`jaxiap.md.first_passage`).

**Pathwise (reverse mode through the MD scan)** for smooth trajectory
averages, :func:`trajectory_qoi` + :func:`ensemble_qoi_and_grad`.
A pure-JAX BAOAB Langevin integrator (:func:`jaxiap.md.integrators.baoab_step`) whose noise is
generated from the key inside the scan (``fold_in(key, step)``), so that
with the key fixed the trajectory is a smooth deterministic function of
the coefficients c and ``jax.grad`` differentiates it. Memory: a nested
scan (outer scan over blocks of ``checkpoint_every`` steps, inner scan
wrapped in ``jax.checkpoint``) stores one state per block on the forward
pass and recomputes one block at a time on the backward pass: memory
O(n_steps / checkpoint_every + checkpoint_every) instead of O(n_steps),
at the price of one extra forward pass. The pathwise derivative of a
*finite* trajectory with fixed noise is exact; for long chaotic
trajectories it grows like exp(lambda t) (chaos; the shadowing problem):
for LJ13 at kT 0.3 we measured |grad| ~ 7 over 1-5 tau, ~ 80 over 10 tau
and ~ 1e24 over 50 tau (bench/RESULTS.md, "sensitivity memory"). Keep
horizons short (a few tau) and average over replicas; for long-time QoIs
use the fluctuation estimators (:mod:`jaxiap.md.fluctuation`) or the
likelihood-ratio estimator (:mod:`jaxiap.md.first_passage`).

Precision: everything here is written for float64 (tests compare to central
finite differences at 1e-5 relative); float32 works for the forward passes
but the pathwise gradients of long trajectories lose digits.

Units: those of the energy function (LJ reduced units for LJ13). Shapes:
positions (N, 3) for clusters, or any array shape (e.g. (1,) for a 1D toy).
"""

from __future__ import annotations

import functools
import inspect
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxiap.errors import JaxiapInputError
# the one BAOAB scheme of jaxiap; jaxiap.md.integrators says why this explicit-noise
# front end is not jax-md's step (re-exported here)
from jaxiap.md.integrators import baoab_step, initial_momenta

__all__ = [
    "baoab_step",
    "initial_momenta",
    "potential_energy_observable",
    "radius_of_gyration",
    "trajectory_qoi",
    "sample_trajectory",
    "EnsembleGrad",
    "ensemble_qoi",
    "ensemble_qoi_and_grad",
]


# ---------------------------------------------------------------------------
# Differentiable BAOAB
# ---------------------------------------------------------------------------


def _force_fn(energy_fn: Callable) -> Callable:
    """force(c, x) = -dE/dx for energy_fn(c, x)."""
    grad_x = jax.grad(energy_fn, argnums=1)
    return lambda c, x: -grad_x(c, x)


def _step_noise(key, step, shape, dtype):
    """Standard normal noise of MD step ``step`` (deterministic in (key, step))."""
    return jax.random.normal(jax.random.fold_in(key, step), shape, dtype)


# ---------------------------------------------------------------------------
# Observables
# ---------------------------------------------------------------------------


def potential_energy_observable(energy_fn: Callable) -> Callable:
    """Observable (c, positions) -> E(c, positions): the potential energy under
    the same potential as the dynamics (so it depends on c directly too)."""

    def obs(c, positions):
        return energy_fn(c, positions)

    return obs


def radius_of_gyration(positions):
    """sqrt(mean_i |x_i - x_com|^2) of a cluster (N, 3) (equal masses)."""
    d = positions - jnp.mean(positions, axis=0, keepdims=True)
    return jnp.sqrt(jnp.mean(jnp.sum(d * d, axis=-1)))


def _n_required_positional(fn) -> int:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return 1
    return sum(
        1
        for p in sig.parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
    )


def _as_cx_observable(observable, energy_fn, uses_coefficients):
    if isinstance(observable, str):
        if observable == "potential_energy":
            return potential_energy_observable(energy_fn)
        if observable == "radius_of_gyration":
            return lambda c, x: radius_of_gyration(x)
        raise JaxiapInputError(
            f"observable={observable!r} is unknown; use 'potential_energy', "
            "'radius_of_gyration' or a callable"
        )
    if not callable(observable):
        raise JaxiapInputError("observable must be a callable or a built-in name")
    if uses_coefficients is None:
        uses_coefficients = _n_required_positional(observable) >= 2
    if uses_coefficients:
        return observable
    return lambda c, x: observable(x)


# ---------------------------------------------------------------------------
# Pathwise trajectory QoIs
# ---------------------------------------------------------------------------


def _check_pos_int(name, v):
    if not (isinstance(v, (int, np.integer)) and v >= 1):
        raise JaxiapInputError(f"{name}={v!r} must be a positive integer")


def trajectory_qoi(
    energy_fn: Callable,
    observable,
    *,
    kT: float,
    gamma: float,
    dt: float,
    n_steps: int,
    checkpoint_every: int | None = None,
    sample_every: int = 1,
    mass: float = 1.0,
    uses_coefficients: bool | None = None,
):
    """Build ``qoi(c, key, start_positions) -> scalar``: a BAOAB trajectory average.

    energy_fn(c, positions) -> scalar potential energy (c any PyTree, float64).
    observable: a callable ``observable(positions)`` or ``observable(c,
    positions)`` (detected from the number of required positional
    parameters, or forced with ``uses_coefficients``), or a built-in name:
    ``"potential_energy"`` (E(c, x) under the same potential) or
    ``"radius_of_gyration"``.

    The trajectory starts at start_positions with Maxwell-Boltzmann momenta
    drawn from ``key`` (first half of ``jax.random.split(key)``); the noise of
    step n is ``normal(fold_in(k_noise, n))``. The QoI is the mean of the
    observable over the ``n_steps // sample_every`` samples taken after steps
    sample_every, 2 sample_every, ..., n_steps (the start is not sampled).
    With the key fixed, qoi is a smooth function of c; ``jax.grad`` works.

    checkpoint_every: MD steps per checkpointed block (rounded to a multiple
    of sample_every). None: about sqrt(n_steps). 0: no checkpointing (a
    plain scan; reverse mode then stores every step).
    Pure and jittable; vmap over keys / start positions for ensembles.
    """
    for name, v in (("kT", kT), ("gamma", gamma), ("dt", dt), ("mass", mass)):
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
            raise JaxiapInputError(f"trajectory_qoi: {name}={v!r} must be a positive finite number")
    _check_pos_int("n_steps", n_steps)
    _check_pos_int("sample_every", sample_every)
    if n_steps % sample_every:
        raise JaxiapInputError(
            f"trajectory_qoi: sample_every={sample_every} must divide n_steps={n_steps}"
        )
    n_samples = n_steps // sample_every
    if checkpoint_every is None:
        checkpoint_every = max(1, int(round(math.sqrt(n_steps))))
    if not (isinstance(checkpoint_every, (int, np.integer)) and checkpoint_every >= 0):
        raise JaxiapInputError(
            f"trajectory_qoi: checkpoint_every={checkpoint_every!r} must be None or an integer >= 0"
        )
    block = 0 if checkpoint_every == 0 else max(1, int(round(checkpoint_every / sample_every)))
    block = min(block, n_samples)
    obs = _as_cx_observable(observable, energy_fn, uses_coefficients)
    force_fn = _force_fn(energy_fn)
    step_kw = dict(dt=dt, gamma=gamma, kT=kT, mass=mass)

    def qoi(c, key, start_positions):
        x0 = jnp.asarray(start_positions)
        k_mom, k_noise = jax.random.split(key)
        p0 = initial_momenta(k_mom, x0, kT, mass)
        f0 = force_fn(c, x0)

        def one_sample(carry, i):
            x, p, f, acc = carry

            def md(j, s):
                xi = _step_noise(k_noise, i * sample_every + j, x0.shape, x0.dtype)
                return baoab_step(force_fn, c, *s, xi, **step_kw)

            x, p, f = jax.lax.fori_loop(0, sample_every, md, (x, p, f))
            return (x, p, f, acc + obs(c, x)), None

        def run_samples(carry, idx):
            return jax.lax.scan(one_sample, carry, idx)[0]

        carry = (x0, p0, f0, jnp.zeros((), x0.dtype))
        if block == 0:
            carry = run_samples(carry, jnp.arange(n_samples))
        else:
            n_blocks, tail = divmod(n_samples, block)
            ck = jax.checkpoint(run_samples)
            if n_blocks:
                idx = jnp.arange(n_blocks * block).reshape(n_blocks, block)
                carry = jax.lax.scan(lambda cr, ix: (ck(cr, ix), None), carry, idx)[0]
            if tail:
                carry = ck(carry, jnp.arange(n_blocks * block, n_samples))
        return carry[3] / n_samples

    return qoi


def sample_trajectory(
    energy_fn: Callable, c, key, start_positions, *, kT, gamma, dt, n_samples, sample_every=1, mass=1.0,
    n_burn=0,
):
    """Positions (n_samples, *shape) of a BAOAB trajectory, sampled every
    ``sample_every`` steps after ``n_burn`` burn-in steps (canonical samples
    for the fluctuation estimators). Same key conventions as
    :func:`trajectory_qoi`; jittable with the integer arguments static."""
    force_fn = _force_fn(energy_fn)
    x0 = jnp.asarray(start_positions)
    k_mom, k_noise = jax.random.split(key)
    p0 = initial_momenta(k_mom, x0, kT, mass)
    kw = dict(dt=dt, gamma=gamma, kT=kT, mass=mass)

    def steps(s, start, n):
        def md(j, st):
            return baoab_step(force_fn, c, *st, _step_noise(k_noise, start + j, x0.shape, x0.dtype), **kw)

        return jax.lax.fori_loop(0, n, md, s)

    s = steps((x0, p0, force_fn(c, x0)), 0, n_burn)

    def body(s, i):
        s = steps(s, n_burn + i * sample_every, sample_every)
        return s, s[0]

    return jax.lax.scan(body, s, jnp.arange(n_samples))[1]


class EnsembleGrad(NamedTuple):
    """value: replica-mean QoI; grad: its gradient (PyTree of c); values: (R,) per replica."""

    value: jnp.ndarray
    grad: object
    values: jnp.ndarray


def _start_axis(start_positions, per_replica_start):
    start = jnp.asarray(start_positions)
    if per_replica_start is None:
        per_replica_start = start.ndim == 3  # (R, N, 3) clusters
    return start, (0 if per_replica_start else None)


@functools.partial(jax.jit, static_argnums=(0, 4))
def _ensemble_values(qoi, c, keys, start, start_axis):
    return jax.vmap(qoi, in_axes=(None, 0, start_axis))(c, keys, start)


@functools.partial(jax.jit, static_argnums=(0, 4))
def _ensemble_value_and_grad(qoi, c, keys, start, start_axis):
    def mean_fn(c):
        vals = jax.vmap(qoi, in_axes=(None, 0, start_axis))(c, keys, start)
        return jnp.mean(vals), vals

    (v, vals), g = jax.value_and_grad(mean_fn, has_aux=True)(c)
    return v, g, vals


def ensemble_qoi(qoi: Callable, coefficients, keys, start_positions, per_replica_start=None):
    """Per-replica values (R,) of ``qoi`` (from :func:`trajectory_qoi`) for R keys.

    start_positions: (N, 3) shared, or (R, N, 3) one per replica
    (per_replica_start None: decided by ndim == 3; pass True/False for
    other shapes). Jitted
    (compiled once per qoi function and shapes)."""
    start, ax = _start_axis(start_positions, per_replica_start)
    return _ensemble_values(qoi, coefficients, keys, start, ax)


def ensemble_qoi_and_grad(
    qoi: Callable, coefficients, keys, start_positions, per_replica_start=None
) -> EnsembleGrad:
    """Replica-averaged QoI, its gradient w.r.t. the coefficients, and per-replica values.

    Common random numbers: replica r uses keys[r] whatever the coefficients,
    so finite differences with the same keys converge to ``grad``. keys (R,)
    ``jax.random`` keys; start_positions (N, 3) shared or (R, N, 3). A replica
    that blows up makes value and grad NaN; check ``values`` for it.
    Returns :class:`EnsembleGrad` (value, grad, values), a tuple.
    """
    start, ax = _start_axis(start_positions, per_replica_start)
    return EnsembleGrad(*_ensemble_value_and_grad(qoi, coefficients, keys, start, ax))
