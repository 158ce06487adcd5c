"""Likelihood-ratio derivatives of first-passage QoIs w.r.t. potential coefficients.

**Likelihood-ratio (Girsanov) estimator** for first-passage times
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
  n_events / total_time of :func:`jaxiap.uq.survival.censored_exponential_mle`):
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

The pathwise and fluctuation estimators are in :mod:`jaxiap.md.sensitivity` and
:mod:`jaxiap.md.fluctuation` (docs/science.md section 16).

Precision: everything here is written for float64 (tests compare to central
finite differences).

Units: those of the energy function (LJ reduced units for LJ13). Shapes:
positions (N, 3) for clusters, or any array shape (e.g. (1,) for a 1D toy).
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from jaxiap.errors import JaxiapInputError
from jaxiap.md import qoi
from jaxiap.md.integrators import baoab_step, initial_momenta
from jaxiap.md.quench import fire_quench_fn
from jaxiap.md.sensitivity import _check_pos_int, _force_fn, _step_noise

__all__ = [
    "first_passage_lr_fn",
    "FirstPassageGradient",
    "first_passage_lr_gradient",
    "lr_gradient",
    "quenched_graph_event",
]


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
