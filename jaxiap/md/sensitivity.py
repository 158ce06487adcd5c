"""Derivatives of MD quantities of interest with respect to potential coefficients.

Three estimators, for three kinds of QoI (docs/science.md section 16):

1. **Pathwise (reverse mode through the MD scan)** for smooth trajectory
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
   use estimators 2 or 3.

2. **Fluctuation (reweighting) estimators** for equilibrium canonical
   averages under a linear potential E = c . B(x):
   d<A>/dc = -(<A B> - <A><B>) / kT (:func:`fluctuation_gradient`) and
   d<E>/dc = <B> - (<E B> - <E><B>) / kT (:func:`mean_energy_gradient`).
   No backpropagation; the inputs are a time series of samples. Standard
   errors by batch means over contiguous blocks (delta method), which
   accounts for the time correlation of MD samples when blocks are much
   longer than the correlation time (:func:`fluctuation_gradient_estimate`,
   :func:`mean_energy_gradient_estimate`).

3. **Likelihood-ratio (Girsanov) estimator** for first-passage times
   (:func:`first_passage_lr_fn`, :func:`first_passage_lr_gradient`). The
   first-passage time tau of a discrete trajectory is piecewise constant in c
   for fixed noise, so its pathwise derivative is zero almost surely and
   useless. Instead d E[Q]/dc = E[Q S] with S = d log p(path | c) / dc the
   score of the path density; S has mean zero, so a baseline can be
   subtracted: we use the sample covariance cov(Q, S).
   Which QoIs are differentiated (with t_max = n_steps * dt the horizon):

   * the mean censored first-passage time m = E[min(tau, t_max)], and
     d log m / dc;
   * the log of the censored-exponential rate lambda = E[D] / E[min(tau, t_max)]
     (D = 1 if tau <= t_max; the large-sample limit of the MLE
     n_events / total_time of :func:`jaxiap.md.qoi.censored_exponential_mle`):
     d log lambda / dc = cov(D, S) / E[D] - cov(T, S) / E[T].

   Assumptions: the event is a function of the *positions* path only (not of
   c directly, not of the momenta), checked at fixed steps; the start
   positions (and momenta, when drawn) do not depend on c; only the
   integrator's own transition density is differentiated, so the result is
   the exact derivative of the *discrete-time* process (not of the
   continuous-time limit; the two differ by O(dt)). The score is accumulated
   only up to the stopping step (optional stopping: the rest of the score
   has conditional mean zero), which lowers its variance. Two integrators:

   * ``"overdamped"`` Euler-Maruyama (Brownian dynamics),
     x' = x + F(x; c) dt / gamma + sqrt(2 kT dt / gamma) xi. The transition
     density is Gaussian with mean x + F dt / gamma, so the per-step score is
     xi . dF(x; c)/dc * sqrt(dt / (2 kT gamma)) (one VJP of the force per step).
   * ``"baoab"`` underdamped Langevin (the MD engine's integrator). Its
     noise enters only through the O step, so the joint (x, p) transition is
     singular; but the *positions* path has a regular density: with h = dt/2,
     p' = p_n + h F(x_n), x_{n+1} = x_n + h (1 + c1) p'/m + (h sigma_p / m) xi_n,
     and the momenta are deterministic functions of the positions path and
     c: p_{n+1} = (x_{n+1} - x_n) m / h - p' + h F(x_{n+1}). Differentiating
     at a fixed positions path gives the per-step score
     xi_n . h (1 + c1) (dp_n/dc + h dF_n/dc) / (m s), s = h sigma_p / m,
     with the tangent recursion dp_{n+1}/dc = -(dp_n/dc + h dF_n/dc) + h dF_{n+1}/dc,
     dp_0/dc = 0 (the initial momenta do not depend on c). This needs the
     force Jacobian dF/dc (K forward-mode directions), so c must be a flat
     (K,) array.

   Variance grows with the horizon (the score's variance is ~ t_max |dF/dc|^2 / kT),
   so the estimator needs many replicas (thousands for a 1D double well).

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
    "FluctuationEstimate",
    "fluctuation_gradient",
    "mean_energy_gradient",
    "fluctuation_gradient_estimate",
    "mean_energy_gradient_estimate",
    "first_passage_lr_fn",
    "FirstPassageGradient",
    "first_passage_lr_gradient",
    "lr_gradient",
    "quenched_graph_event",
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


# ---------------------------------------------------------------------------
# Fluctuation (reweighting) estimators
# ---------------------------------------------------------------------------


class FluctuationEstimate(NamedTuple):
    """grad (K,) and its standard error (K,) by batch means over n_blocks blocks."""

    grad: jnp.ndarray
    stderr: jnp.ndarray
    n_blocks: int


def _check_series(observable, features, weights, need_obs=True):
    B = jnp.asarray(features)
    if B.ndim != 2:
        raise JaxiapInputError(f"features must be (T, K); got shape {B.shape}")
    T = B.shape[0]
    A = None
    if need_obs:
        A = jnp.asarray(observable, B.dtype)
        if A.shape != (T,):
            raise JaxiapInputError(f"observable must be (T,) = ({T},) like features; got shape {A.shape}")
        if not bool(jnp.all(jnp.isfinite(A))):
            raise JaxiapInputError("observable contains NaN or inf; drop the failed samples first")
    if not bool(jnp.all(jnp.isfinite(B))):
        raise JaxiapInputError("features contain NaN or inf; drop the failed samples first")
    if weights is None:
        w = jnp.ones(T, B.dtype)
    else:
        w = jnp.asarray(weights, B.dtype)
        if w.shape != (T,) or not bool(jnp.all(w >= 0)) or not float(jnp.sum(w)) > 0:
            raise JaxiapInputError(f"weights must be (T,) = ({T},), non-negative, not all zero")
    return A, B, w / jnp.sum(w)


def _wmean(z, w):
    return jnp.tensordot(w, z, axes=1)


def _fluct_terms(A, B, w, kT):
    """Estimate and per-sample influence terms (T, K) of -cov_w(A, B) / kT."""
    da = A - _wmean(A, w)
    dB = B - _wmean(B, w)
    z = -(da[:, None] * dB) / kT
    return _wmean(z, w), z


def _check_kT(fn: str, kT) -> None:
    """kT of the fluctuation estimators: a positive finite temperature (kT <= 0 gave NaN or wrong numbers)."""
    if isinstance(kT, jax.core.Tracer):
        return
    try:
        v = float(kT)
    except (TypeError, ValueError):
        v = None
    if v is None or not (math.isfinite(v) and v > 0):
        raise JaxiapInputError(f"{fn}: kT={kT!r} must be a positive finite temperature (energy units of the "
                               "potential), the temperature the samples were drawn at")


def _check_coefficients(fn: str, coefficients, B):
    c = jnp.asarray(coefficients, B.dtype)
    if c.shape != (B.shape[1],) or not bool(jnp.all(jnp.isfinite(c))):
        raise JaxiapInputError(f"{fn}: coefficients must be finite with shape (K,) = ({B.shape[1]},) like the "
                               f"features' columns; got shape {c.shape}")
    return c


def fluctuation_gradient(observable, features, kT, weights=None):
    """d<A>/dc = -(<A B> - <A><B>) / kT for canonical samples under E = c . B.

    observable A (T,) (must not depend on c itself), features B (T, K) the
    linear potential's features at the same samples, kT the sampling
    temperature, weights (T,) optional non-negative sample weights (e.g.
    Boltzmann weights on a quadrature grid). Returns (K,). float64.
    """
    _check_kT("fluctuation_gradient", kT)
    A, B, w = _check_series(observable, features, weights)
    return _fluct_terms(A, B, w, kT)[0]


def mean_energy_gradient(features, coefficients, kT, weights=None):
    """d<E>/dc = <B> - (<E B> - <E><B>) / kT for E = c . B (E depends on c directly too).

    features (T, K), coefficients (K,) of the sampled potential. Returns (K,).
    """
    _check_kT("mean_energy_gradient", kT)
    _, B, w = _check_series(None, features, weights, need_obs=False)
    E = B @ _check_coefficients("mean_energy_gradient", coefficients, B)
    g, _ = _fluct_terms(E, B, w, kT)
    return _wmean(B, w) + g


def _batch_stderr(z, w, theta, n_blocks):
    """Batch-means standard error of a weighted mean estimator with per-sample terms z (T, K)."""
    T = z.shape[0]
    if not (isinstance(n_blocks, (int, np.integer)) and 2 <= n_blocks <= T):
        raise JaxiapInputError(f"n_blocks={n_blocks!r} must be an integer in [2, T={T}]")
    L = T // n_blocks
    # Influence of a ratio (self-normalised) estimator: T w_t (z_t - theta).
    infl = (T * w)[:, None] * (z - theta)
    bm = jnp.mean(infl[: L * n_blocks].reshape(n_blocks, L, -1), axis=1)
    return jnp.std(bm, axis=0, ddof=1) / jnp.sqrt(n_blocks)


def fluctuation_gradient_estimate(observable, features, kT, weights=None, n_blocks: int = 20) -> FluctuationEstimate:
    """:func:`fluctuation_gradient` with a batch-means standard error.

    The standard error is the delta-method (influence-function) error of the
    covariance, estimated from the means of ``n_blocks`` contiguous blocks of
    the time series: valid when a block is much longer than the correlation
    time of the samples. For several independent trajectories, concatenate
    them with lengths divisible by n_blocks / n_trajectories.
    """
    _check_kT("fluctuation_gradient_estimate", kT)
    A, B, w = _check_series(observable, features, weights)
    g, z = _fluct_terms(A, B, w, kT)
    return FluctuationEstimate(g, _batch_stderr(z, w, g, n_blocks), int(n_blocks))


def mean_energy_gradient_estimate(features, coefficients, kT, weights=None, n_blocks: int = 20) -> FluctuationEstimate:
    """:func:`mean_energy_gradient` with a batch-means standard error."""
    _check_kT("mean_energy_gradient_estimate", kT)
    _, B, w = _check_series(None, features, weights, need_obs=False)
    E = B @ _check_coefficients("mean_energy_gradient_estimate", coefficients, B)
    g, z = _fluct_terms(E, B, w, kT)
    z = z + B
    g = g + _wmean(B, w)
    return FluctuationEstimate(g, _batch_stderr(z, w, g, n_blocks), int(n_blocks))


# ---------------------------------------------------------------------------
# Likelihood-ratio (Girsanov) estimator for first-passage times
# ---------------------------------------------------------------------------


def first_passage_lr_fn(
    energy_fn: Callable,
    event_fn: Callable | None,
    *,
    kT: float,
    gamma: float,
    dt: float,
    n_steps: int,
    check_every: int = 1,
    integrator: str = "overdamped",
    mass: float = 1.0,
    initial_momenta_fn: Callable | None = None,
):
    """Build ``replica(c, key, start_positions) -> dict``: one trajectory with its path score.

    energy_fn(c, positions) -> scalar; event_fn(positions) -> bool (depends
    on positions only), checked after steps check_every, 2 check_every, ...;
    None: no event (run n_steps; the score then covers the whole path, for
    fixed-time QoIs such as E[f(x_N)]).
    integrator: ``"overdamped"`` Euler-Maruyama, x' = x + F dt/gamma +
    sqrt(2 kT dt/gamma) xi (c any PyTree); or ``"baoab"`` underdamped
    Langevin (c a flat (K,) array; momenta start Maxwell-Boltzmann from the
    key, independent of c). See the module docstring for the scores.

    Returns a dict: ``time`` min(tau, t_max) with t_max = n_steps dt;
    ``event`` bool (tau <= t_max); ``score`` d log p(path up to the stop)/dc
    (PyTree like c); ``positions`` the positions at the stop (or at n_steps).
    Pure, jittable, vmappable over keys (common random numbers: the same
    keys for every c give the same noise).
    """
    if integrator not in ("overdamped", "baoab"):
        raise JaxiapInputError(f"integrator={integrator!r} must be 'overdamped' or 'baoab'")
    for name, v in (("kT", kT), ("gamma", gamma), ("dt", dt), ("mass", mass)):
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
            raise JaxiapInputError(f"first_passage_lr_fn: {name}={v!r} must be a positive finite number")
    _check_pos_int("n_steps", n_steps)
    _check_pos_int("check_every", check_every)
    force_fn = _force_fn(energy_fn)
    no_event = event_fn is None

    def check(x, n):
        if no_event:
            return jnp.zeros((), bool)
        if check_every == 1:
            return jnp.asarray(event_fn(x), bool)
        # n is the (unbatched) scan index, so under vmap this stays a real
        # cond and the (possibly expensive, e.g. a quench) event runs only
        # at check steps.
        return jax.lax.cond((n % check_every) == 0, lambda: jnp.asarray(event_fn(x), bool),
                            lambda: jnp.zeros((), bool))

    if integrator == "overdamped":
        mob = dt / gamma
        sig = math.sqrt(2.0 * kT * dt / gamma)
        sfac = math.sqrt(dt / (2.0 * kT * gamma))  # = mob / sig

        def replica(c, key, start_positions):
            x0 = jnp.asarray(start_positions)
            zero_s = jax.tree_util.tree_map(jnp.zeros_like, c)

            def body(carry, n):
                x, alive, n_stop, score = carry
                xi = _step_noise(key, n, x0.shape, x0.dtype)
                f, vjp = jax.vjp(lambda cc: force_fn(cc, x), c)
                ds = vjp(xi)[0]
                score = jax.tree_util.tree_map(lambda s, d: s + jnp.where(alive, sfac * d, 0.0), score, ds)
                x_new = x + mob * f + sig * xi
                x = jnp.where(alive, x_new, x)
                hit = alive & check(x, n + 1)
                n_stop = jnp.where(hit, n + 1, n_stop)
                return (x, alive & ~hit, n_stop, score), None

            init = (x0, jnp.ones((), bool), jnp.asarray(n_steps, jnp.int32), zero_s)
            (x, alive, n_stop, score), _ = jax.lax.scan(body, init, jnp.arange(n_steps, dtype=jnp.int32))
            return dict(time=n_stop.astype(x0.dtype) * dt, event=~alive, score=score, positions=x)

        return replica

    h = 0.5 * dt
    c1 = math.exp(-gamma * dt)

    def replica(c, key, start_positions):
        c = jnp.asarray(c)
        if c.ndim != 1:
            raise JaxiapInputError("integrator='baoab' needs flat (K,) coefficients")
        x0 = jnp.asarray(start_positions)
        k_mom, k_noise = jax.random.split(key)
        p0 = (initial_momenta_fn or initial_momenta)(k_mom, x0, kT, mass)
        sp = jnp.sqrt((1.0 - c1 * c1) * mass * kT)
        s_pos = h * sp / mass  # std of x_{n+1} given (x_n, p_n)

        def f_and_jac(x):
            f = force_fn(c, x)
            jac = jax.jacfwd(force_fn, argnums=0)(c, x)  # x.shape + (K,)
            return f, jnp.moveaxis(jac, -1, 0)  # (K, *x.shape)

        f0, df0 = f_and_jac(x0)
        axes = tuple(range(1, df0.ndim))

        def body(carry, n):
            x, p, f, df, dp, alive, n_stop, score = carry
            xi = _step_noise(k_noise, n, x0.shape, x0.dtype)
            dpp = dp + h * df  # d p'/dc
            dmean = h * (1.0 + c1) * dpp / mass  # d E[x_{n+1} | x_n, p_n] / dc
            ds = jnp.sum(xi[None] * dmean, axis=axes) / s_pos
            score = score + jnp.where(alive, ds, 0.0)
            x1, p1, _ = baoab_step(lambda cc, xx: jnp.zeros_like(xx), c, x, p, f, xi,
                                   dt=dt, gamma=gamma, kT=kT, mass=mass)
            # baoab_step with a zero force for the last B half-kick; redo it with the real force.
            f1, df1 = f_and_jac(x1)
            p1 = p1 + h * f1
            dp1 = -dpp + h * df1
            x = jnp.where(alive, x1, x)
            p = jnp.where(alive, p1, p)
            f = jnp.where(alive, f1, f)
            df = jnp.where(alive, df1, df)
            dp = jnp.where(alive, dp1, dp)
            hit = alive & check(x, n + 1)
            n_stop = jnp.where(hit, n + 1, n_stop)
            return (x, p, f, df, dp, alive & ~hit, n_stop, score), None

        init = (x0, p0, f0, df0, jnp.zeros_like(df0), jnp.ones((), bool),
                jnp.asarray(n_steps, jnp.int32), jnp.zeros(c.shape, x0.dtype))
        out, _ = jax.lax.scan(body, init, jnp.arange(n_steps, dtype=jnp.int32))
        x, _, _, _, _, alive, n_stop, score = out
        return dict(time=n_stop.astype(x0.dtype) * dt, event=~alive, score=score, positions=x)

    return replica


class FirstPassageGradient(NamedTuple):
    """Likelihood-ratio derivatives of first-passage QoIs (all (K,) except the scalars).

    mean_time: m = mean of min(tau, t_max); grad_mean_time, stderr_mean_time:
    d m/dc and its standard error; grad_log_mean_time = grad_mean_time / m;
    rate: censored-exponential rate n_events / sum(min(tau, t_max));
    grad_log_rate, stderr_log_rate: d log(rate)/dc and its standard error;
    n_events, n_replicas: counts.
    """

    mean_time: jnp.ndarray
    grad_mean_time: jnp.ndarray
    stderr_mean_time: jnp.ndarray
    grad_log_mean_time: jnp.ndarray
    rate: jnp.ndarray
    grad_log_rate: jnp.ndarray
    stderr_log_rate: jnp.ndarray
    n_events: int
    n_replicas: int


def lr_gradient(q, scores):
    """LR estimate of dE[Q]/dc = cov(Q, S) (baseline-subtracted) and its standard error.

    q (R,) per-replica QoI values, scores (R, K). Returns (grad (K,), stderr (K,)).
    """
    q = jnp.asarray(q)
    S = jnp.asarray(scores).reshape(q.shape[0], -1)
    dq = q - jnp.mean(q)
    dS = S - jnp.mean(S, axis=0)
    terms = dq[:, None] * dS
    R = q.shape[0]
    return jnp.sum(terms, axis=0) / (R - 1), jnp.std(terms, axis=0, ddof=1) / jnp.sqrt(R)


def first_passage_lr_gradient(times, events, scores) -> FirstPassageGradient:
    """Aggregate replicas of :func:`first_passage_lr_fn` into LR derivatives.

    times (R,) = min(tau, t_max); events (R,) bool; scores (R, K).
    d m/dc = cov(T, S); d log rate/dc = cov(D, S)/mean(D) - cov(T, S)/mean(T);
    standard errors by the delta method over independent replicas.
    """
    T = jnp.asarray(times)
    D = jnp.asarray(events).astype(T.dtype)
    S = jnp.asarray(scores).reshape(T.shape[0], -1)
    R = T.shape[0]
    if R < 2 or S.shape[0] != R or D.shape != T.shape:
        raise JaxiapInputError("times (R,), events (R,) and scores (R, K) must agree, with R >= 2")
    n_ev = int(jnp.sum(D))
    gT, seT = lr_gradient(T, S)
    mT, mD = jnp.mean(T), jnp.mean(D)
    dS = S - jnp.mean(S, axis=0)
    cDS = jnp.sum((D - mD)[:, None] * dS, axis=0) / (R - 1)
    glr = cDS / mD - gT / mT
    # Influence function of cov(D,S)/mean(D) - cov(T,S)/mean(T).
    phi = (
        ((D - mD)[:, None] * dS - cDS) / mD - cDS * (D - mD)[:, None] / mD**2
        - ((T - mT)[:, None] * dS - gT) / mT + gT * (T - mT)[:, None] / mT**2
    )
    se_lr = jnp.std(phi, axis=0, ddof=1) / jnp.sqrt(R)
    if n_ev == 0:
        glr = jnp.full_like(glr, jnp.nan)
        se_lr = jnp.full_like(se_lr, jnp.nan)
    return FirstPassageGradient(
        mean_time=mT, grad_mean_time=gT, stderr_mean_time=seT, grad_log_mean_time=gT / mT,
        rate=jnp.sum(D) / jnp.sum(T), grad_log_rate=glr, stderr_log_rate=se_lr,
        n_events=n_ev, n_replicas=int(R),
    )


def quenched_graph_event(
    reference_energy_fn: Callable,
    reference_positions,
    r_b: float = 1.35,
    fmax: float = 1e-3,
    max_steps: int = 2000,
    dt_start: float = 0.01,
    dt_max: float = 0.05,
):
    """LJ13-style FRT event for :func:`first_passage_lr_fn`: ``event(positions) -> bool``.

    The positions are quenched with FIRE under a FIXED reference potential
    ``reference_energy_fn(positions) -> scalar`` (e.g. the true LJ, or the
    posterior-mean potential with its coefficients bound), and the event is
    a change of the labelled bond graph (:func:`jaxiap.md.qoi.basin_changed`,
    ``"graph"``) with respect to the quenched reference structure. Because
    the quench potential does not depend on the differentiated coefficients,
    the event is a function of the positions path only, as the LR estimator
    requires. (The FRT engine quenches under each sample's own potential;
    the two definitions agree where both potentials share the basins.) A
    quench that does not converge counts as no event.
    """
    from jaxiap.md import qoi
    from jaxiap.md.quench import fire_quench_fn

    quench = fire_quench_fn(reference_energy_fn, fmax=fmax, max_steps=max_steps, dt_start=dt_start, dt_max=dt_max)
    rq, fq, _ = jax.jit(quench)(jnp.asarray(reference_positions))
    if not bool(fq < fmax):
        raise JaxiapInputError(
            f"quenched_graph_event: the reference structure did not quench to max|F| < fmax={fmax} "
            f"in max_steps={max_steps} (max|F| = {float(fq):.3g}); pass a structure nearer a minimum"
        )
    ref = qoi.basin_reference(rq, reference_energy_fn(rq), r_b)

    def event(positions):
        xq, fq, _ = quench(positions)
        return (fq < fmax) & qoi.basin_changed("graph", ref, xq, reference_energy_fn(xq), r_b)

    return event
