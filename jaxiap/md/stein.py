"""Stein variational (kernel-modified) MD: SVGD drift, deterministic quadrature mode, stochastic modes.

N configurations ("particles") x_i move together under the Stein drift
(Liu & Wang 2016), target p(x) = exp(-E(x)/kT), score s = grad log p = F/kT:

    phi_i = 1/(N+M) sum_{j in moving + fixed} [ k(x_j, x_i) s_j + grad_{x_j} k(x_j, x_i) ]

(M fixed configurations exert kernel forces but do not move). The kernel
acts on features (:mod:`jaxiap.md.stein_kernels`); grad_{x_j} goes through
the feature map by autodiff. ``own_force=True`` (the jaxiap choice for
clusters) uses each particle's own score and a repulsion in its own frame:

    phi_i = s_i - 1/(N+M) sum_{j != i} grad_{x_i} k(x_j, x_i),

equal to the SVGD repulsion for a stationary kernel on identity features,
and equivariant under rotations/permutations of any one particle when the
features are invariant (the default drift adds s_j, a vector in x_j's frame,
to particle i, which is not). See docs/stein.md for the formulas, the two
noise variants, units and sources.

Time unit (stochastic modes): overdamped, dX = phi dt + noise with the score
in 1/length, i.e. the diffusion coefficient is 1 (length^2 per time unit).
A physical overdamped run with D = kT/(m gamma) maps by t_phys = t m gamma / kT.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

from jaxiap.errors import JaxiapInputError
from jaxiap.md.program import Program
from jaxiap.md.stein_kernels import (SteinKernel, as_stein_kernel, flat_features, linear_kernel, median_bandwidth,
                                     rbf_kernel, resolve)

__all__ = ["SteinKernel", "SteinResult", "SteinTrajectory", "energy_score_fn", "linear_kernel", "liu_adagrad",
           "median_bandwidth", "rbf_kernel", "run_stein_langevin", "run_svgd", "stein_drift",
           "stein_langevin_step", "stein_program", "svgd_update"]

NOISES = ("kernel", "independent")


def energy_score_fn(energy_fn: Callable, kT: float) -> Callable:
    """``x -> -grad E(x) / kT`` (same shape as x; 1/length): the score of exp(-E/kT). Vmappable."""
    grad = jax.grad(energy_fn)
    return lambda x: -grad(x) / kT


# ---------------------------------------------------------------------------
# the drift
# ---------------------------------------------------------------------------


def _jacobians(ff, xs):
    """(P, F, D) Jacobians of the flat feature map at xs (P, D): reverse mode when F <= D."""
    f_dim = jax.eval_shape(ff, xs[0]).shape[0]
    jac = jax.jacrev(ff) if f_dim <= xs.shape[1] else jax.jacfwd(ff)
    return jax.vmap(jac)(xs)


def _drift(positions, scores, kernel, fixed_positions, fixed_scores, own_force):
    """(phi (N, D), info, K (N, N) kernel matrix of the moving particles)."""
    kernel = as_stein_kernel(kernel)
    n = positions.shape[0]
    shape = positions.shape[1:]
    x = positions.reshape(n, -1)
    s = scores.reshape(n, -1)
    if (fixed_positions is None) != (fixed_scores is None):
        raise JaxiapInputError("stein_drift: give both fixed_positions and fixed_scores, or neither")
    if fixed_positions is not None:
        m = fixed_positions.shape[0]
        xa = jnp.concatenate([x, fixed_positions.reshape(m, -1)])
        sa = jnp.concatenate([s, fixed_scores.reshape(m, -1)])
    else:
        xa, sa = x, s
    total = xa.shape[0]
    ff = flat_features(kernel, shape)
    fa = xa if ff is None else jax.vmap(ff)(xa)
    k = resolve(kernel, jax.lax.stop_gradient(fa))
    # kmat[j, i] = k(f_j, f_i) over all j (moving + fixed) and moving i
    pair = lambda fj, fi: k(fj, fi)  # noqa: E731
    kmat = jax.vmap(jax.vmap(pair, (None, 0)), (0, None))(fa, fa[:n])
    if own_force:
        # h[i] = sum_{j != i} grad_{f_i} k(f_j, f_i); repulsion_i = -J_i^T h[i]
        g2 = jax.vmap(jax.vmap(jax.grad(pair, argnums=1), (None, 0)), (0, None))(fa, fa[:n])  # (T, N, F)
        not_self = (jnp.arange(total)[:, None] != jnp.arange(n)[None, :])[..., None]
        h = jnp.sum(jnp.where(not_self, g2, 0.0), axis=0)
        if ff is None:
            rep = -h
        else:
            rep = -jax.vmap(lambda xi, hi: jax.vjp(ff, xi)[1](hi)[0])(x, h)
        phi = s + rep / total
    else:
        # sum_j J_j^T grad_{f_j} k(f_j, f_i)
        g1 = jax.vmap(jax.vmap(jax.grad(pair, argnums=0), (None, 0)), (0, None))(fa, fa[:n])  # (T, N, F)
        if ff is None:
            rep = jnp.sum(g1, axis=0)
        else:
            rep = jnp.einsum("jif,jfd->id", g1, _jacobians(ff, xa))
        phi = (kmat.T @ sa + rep) / total
    k_moving = kmat[:n]
    off = jnp.where(jnp.eye(n, dtype=bool), -jnp.inf, k_moving)
    kmax = jnp.max(off) if n > 1 else jnp.zeros((), k_moving.dtype)
    dnorm = jnp.mean(jnp.sqrt(jnp.sum(phi * phi, axis=1)))
    info = {"kernel_max": kmax, "drift_norm": dnorm, "ksd": dnorm}
    return phi, info, k_moving


def stein_drift(positions, scores, kernel, *, fixed_positions=None, fixed_scores=None, own_force: bool = False):
    """Stein drift ``(phi (N, ...), info)`` of N moving particles.

    positions, scores (N, ...): configurations and their scores grad log p
    (= F/kT, 1/length); fixed_positions, fixed_scores (M, ...) or None.
    kernel: a :class:`SteinKernel`, ``"rbf"``/``"linear"`` or a feature
    kernel ``k(f_a, f_b)`` on flattened configurations.
    own_force False (SVGD): phi_i = 1/(N+M) sum_j [k(x_j, x_i) s_j + grad_{x_j} k(x_j, x_i)].
    own_force True: phi_i = s_i - 1/(N+M) sum_{j != i} grad_{x_i} k(x_j, x_i).
    info: ``kernel_max`` (largest off-diagonal k among moving particles, 0
    for N = 1), ``drift_norm`` = ``ksd`` (mean over particles of ||phi_i||,
    Cairn's MeanKSD).
    """
    return _stein_drift(jnp.asarray(positions), jnp.asarray(scores), as_stein_kernel(kernel), fixed_positions,
                        fixed_scores, bool(own_force))


@eqx.filter_jit
def _stein_drift(positions, scores, kernel, fixed_positions, fixed_scores, own_force):
    phi, info, _ = _drift(positions, scores, kernel, fixed_positions, fixed_scores, own_force)
    return phi.reshape(positions.shape), info


def _fixed_pair(fixed, score_fn):
    """(positions, scores) of the fixed set from None, positions (M, ...) or a (positions, scores) pair."""
    if fixed is None:
        return None, None
    if isinstance(fixed, (tuple, list)):
        fp, fs = fixed
        return jnp.asarray(fp), jnp.asarray(fs)
    fp = jnp.asarray(fixed)
    return fp, jax.vmap(score_fn)(fp)


# ---------------------------------------------------------------------------
# deterministic mode (quadrature)
# ---------------------------------------------------------------------------


class LiuAdagradState(NamedTuple):
    count: jnp.ndarray
    historical_grad: jnp.ndarray


def liu_adagrad(step_size: float, alpha: float = 0.9, fudge: float = 1e-6) -> optax.GradientTransformation:
    """AdaGrad with momentum of Liu's ``svgd.py`` as an optax transformation (descent convention).

    hist_0 = g^2, hist_t = alpha hist_{t-1} + (1 - alpha) g^2 (elementwise);
    update = -step_size g / (fudge + sqrt(hist)). Given g = -phi (as
    :func:`svgd_update` passes) this is svgd.py's theta += stepsize * adj_grad.
    """

    def init(params):
        return LiuAdagradState(jnp.zeros((), jnp.int32),
                               jax.tree_util.tree_map(jnp.zeros_like, params))

    def update(updates, state, params=None):
        del params
        first = state.count == 0
        hist = jax.tree_util.tree_map(lambda h, g: jnp.where(first, g * g, alpha * h + (1.0 - alpha) * g * g),
                                      state.historical_grad, updates)
        out = jax.tree_util.tree_map(lambda g, h: -step_size * g / (fudge + jnp.sqrt(h)), updates, hist)
        return out, LiuAdagradState(state.count + 1, hist)

    return optax.GradientTransformation(init, update)


def svgd_update(positions, score_fn: Callable, kernel, optimizer: optax.GradientTransformation, opt_state,
                **drift_kw):
    """One deterministic SVGD step: ``(positions, opt_state, info)``.

    score_fn(x) -> grad log p(x) (same shape as x), vmapped over the N
    particles. The optax update is applied to -phi (optax minimises), so
    ``optax.sgd(eps)`` gives x + eps phi. drift_kw: those of :func:`stein_drift`.
    """
    scores = jax.vmap(score_fn)(positions)
    phi, info = stein_drift(positions, scores, kernel, **drift_kw)
    updates, opt_state = optimizer.update(-phi, opt_state, positions)
    return optax.apply_updates(positions, updates), opt_state, info


class SteinResult(NamedTuple):
    """Result of :func:`run_svgd`.

    positions (N, ...): final particles; n_steps_done: updates applied;
    n_force_evals: score evaluations (N per drift computed, plus M for the
    fixed set); drift_norm, kernel_max (n_steps,): per iteration, of the
    positions before that iteration's update (NaN after a stop); stopped:
    a stopping rule fired (then drift_norm[n_steps_done] is the final
    positions' drift, and they were not moved).
    """

    positions: jnp.ndarray
    n_steps_done: jnp.ndarray
    n_force_evals: jnp.ndarray
    drift_norm: jnp.ndarray
    kernel_max: jnp.ndarray
    stopped: jnp.ndarray


@eqx.filter_jit
def _run_svgd(score_fn, x0, kernel, optimizer, n_steps, stop_drift, stop_kernel_max, fixed_p, fixed_s, own_force):
    nan = jnp.full((n_steps,), jnp.nan, x0.dtype)
    drift_kw = dict(fixed_positions=fixed_p, fixed_scores=fixed_s, own_force=own_force)

    def cond(c):
        return (c["i"] < n_steps) & ~c["stopped"]

    def body(c):
        x_new, opt_new, info = svgd_update(c["x"], score_fn, kernel, optimizer, c["opt"], **drift_kw)
        stop = jnp.zeros((), bool)
        if stop_drift is not None:
            stop = stop | (info["drift_norm"] < stop_drift)
        if stop_kernel_max is not None:
            stop = stop | (info["kernel_max"] < stop_kernel_max)
        keep = lambda new, old: jax.tree_util.tree_map(lambda a, b: jnp.where(stop, b, a), new, old)  # noqa: E731
        return dict(x=keep(x_new, c["x"]), opt=keep(opt_new, c["opt"]), i=c["i"] + jnp.where(stop, 0, 1),
                    stopped=stop, evals=c["evals"] + 1,
                    drift=c["drift"].at[c["i"]].set(info["drift_norm"]),
                    kmax=c["kmax"].at[c["i"]].set(info["kernel_max"]))

    c0 = dict(x=x0, opt=optimizer.init(x0), i=jnp.zeros((), jnp.int32), stopped=jnp.zeros((), bool),
              evals=jnp.zeros((), jnp.int32), drift=nan, kmax=nan)
    c = jax.lax.while_loop(cond, body, c0)
    m = 0 if fixed_p is None else fixed_p.shape[0]
    return SteinResult(c["x"], c["i"], c["evals"] * x0.shape[0] + m, c["drift"], c["kmax"], c["stopped"])


def run_svgd(score_fn: Callable, x0, kernel, *, n_steps: int, optimizer: optax.GradientTransformation | None = None,
             step_size: float = 1e-2, stop_drift: float | None = None, stop_kernel_max: float | None = None,
             fixed=None, own_force: bool = False) -> SteinResult:
    """Deterministic SVGD (quadrature mode) from x0 (N, ...) for at most n_steps iterations (jitted).

    optimizer: an optax transformation (default ``optax.sgd(step_size)``:
    x <- x + step_size phi; :func:`liu_adagrad` is svgd.py's). Stopping
    rules, checked on the drift of the current positions before moving them:
    stop when mean ||phi_i|| < stop_drift, or when the largest off-diagonal
    kernel value < stop_kernel_max. fixed: None, fixed positions (M, ...)
    (scores from score_fn, once) or a (positions, scores) pair.
    Reuse the same score_fn, kernel and optimizer objects to reuse the compilation.
    """
    if int(n_steps) < 1:
        raise JaxiapInputError(f"run_svgd: n_steps must be >= 1, got {n_steps}")
    optimizer = optax.sgd(step_size) if optimizer is None else optimizer
    x0 = jnp.asarray(x0)
    fp, fs = _fixed_pair(fixed, score_fn)
    return _run_svgd(score_fn, x0, as_stein_kernel(kernel), optimizer, int(n_steps), stop_drift, stop_kernel_max,
                     fp, fs, bool(own_force))


# ---------------------------------------------------------------------------
# stochastic modes
# ---------------------------------------------------------------------------


def _sqrtm_psd(k):
    """Symmetric square root of a symmetric PSD matrix (N, N), negative eigenvalues (round-off) clipped to 0."""
    w, v = jnp.linalg.eigh(0.5 * (k + k.T))
    return (v * jnp.sqrt(jnp.clip(w, 0.0))) @ v.T


def stein_langevin_step(key, positions, score_fn: Callable, kernel, *, dt: float, noise: str = "kernel",
                        fixed=None, own_force: bool = False):
    """One Euler-Maruyama step of the overdamped Stein SDE: ``(positions, info)``.

    dX_i = phi_i dt + noise, phi from :func:`stein_drift` (score_fn = grad
    log p, e.g. :func:`energy_score_fn`). noise ``"kernel"``: sqrt(2 dt /
    (N+M)) K^{1/2} W, K (N, N) the moving particles' kernel matrix (acting
    as k(x_i, x_j) I_d), W standard normal (N, D): with M = 0, own_force
    False and a fixed bandwidth, p^{(x)N} is invariant up to the time-step
    error (Gallego & Insua 2018). ``"independent"``: sqrt(2 dt) W per particle
    (Cairn/SKMD-style), exact only for the kernel delta_ij. fixed as in
    :func:`run_svgd` (positions, or a (positions, scores) pair).
    """
    if noise not in NOISES:
        raise JaxiapInputError(f"stein_langevin_step: noise must be one of {NOISES}, got {noise!r}")
    fp, fs = _fixed_pair(fixed, score_fn)
    return _langevin_step(key, positions, score_fn, as_stein_kernel(kernel), dt, noise, fp, fs, own_force)


def _langevin_step(key, positions, score_fn, kernel, dt, noise, fp, fs, own_force):
    n = positions.shape[0]
    scores = jax.vmap(score_fn)(positions)
    phi, info, kmat = _drift(positions, scores, kernel, fp, fs, own_force)
    w = jax.random.normal(key, phi.shape, phi.dtype)
    if noise == "kernel":
        total = n + (0 if fp is None else fp.shape[0])
        xi = jnp.sqrt(2.0 * dt / total) * (_sqrtm_psd(kmat) @ w)
    else:
        xi = jnp.sqrt(2.0 * dt) * w
    return (positions.reshape(n, -1) + dt * phi + xi).reshape(positions.shape), info


class SteinTrajectory(NamedTuple):
    """Result of :func:`run_stein_langevin`.

    positions (N, ...): final particles; samples: ``observe(positions)``
    after every ``every`` steps (leading axis n_steps // every); drift_norm,
    kernel_max (n_steps // every,): of the last step of each block.
    """

    positions: jnp.ndarray
    samples: object
    drift_norm: jnp.ndarray
    kernel_max: jnp.ndarray


def _block(key, x, start, n, score_fn, kernel, dt, noise, fp, fs, own_force):
    """n steps from global step index ``start``; step t uses ``fold_in(key, t)``. (x, info of the last step)."""

    def one(c, t):
        x, _ = c
        x, info = _langevin_step(jax.random.fold_in(key, t), x, score_fn, kernel, dt, noise, fp, fs, own_force)
        return (x, (info["drift_norm"], info["kernel_max"])), None

    zero = jnp.zeros((), x.dtype)
    (x, last), _ = jax.lax.scan(one, (x, (zero, zero)), start + jnp.arange(n))
    return x, last


@eqx.filter_jit
def _run_stein_langevin(key, score_fn, x0, kernel, dt, n_steps, every, noise, observe, fp, fs, own_force):
    def sample(x, b):
        x, (dn, km) = _block(key, x, b * every, every, score_fn, kernel, dt, noise, fp, fs, own_force)
        return x, (observe(x), dn, km)

    x, (samples, dn, km) = jax.lax.scan(sample, x0, jnp.arange(n_steps // every))
    return SteinTrajectory(x, samples, dn, km)


def run_stein_langevin(key, score_fn: Callable, x0, kernel, *, dt: float, n_steps: int, every: int,
                       noise: str = "kernel", observe: Callable | None = None, fixed=None,
                       own_force: bool = False) -> SteinTrajectory:
    """n_steps of :func:`stein_langevin_step` from x0 (N, ...), recording every ``every`` steps (jitted scan).

    Step t (0-based) draws its noise from ``jax.random.fold_in(key, t)``.
    observe(positions) -> PyTree (default: the positions). n_steps must be a
    multiple of every.
    """
    if noise not in NOISES:
        raise JaxiapInputError(f"run_stein_langevin: noise must be one of {NOISES}, got {noise!r}")
    n_steps, every = int(n_steps), int(every)
    if every < 1 or n_steps < every or n_steps % every:
        raise JaxiapInputError(f"run_stein_langevin: n_steps ({n_steps}) must be a positive multiple of every "
                               f"({every})")
    fp, fs = _fixed_pair(fixed, score_fn)
    observe = _identity if observe is None else observe
    return _run_stein_langevin(key, score_fn, jnp.asarray(x0), as_stein_kernel(kernel), float(dt), n_steps, every,
                               noise, observe, fp, fs, bool(own_force))


def _identity(x):
    return x


# ---------------------------------------------------------------------------
# the runner program: one replica = one particle set
# ---------------------------------------------------------------------------


def stein_program(energy_fn: Callable, *, kT: float, dt: float, n_blocks: int, block_steps: int, kernel,
                  mode: str = "kernel", own_force: bool = False, cache_key=None) -> Program:
    """A :class:`~jaxiap.md.program.Program` whose replica is one set of N particles under stochastic Stein MD.

    energy_fn(params, x) -> scalar (the ``as_coefficient_energy`` form);
    score = -grad_x E / kT. shared: ``{"x0": (N, ...)}`` start set, optional
    ``"fixed"`` (M, ...) fixed configurations. mode: ``"kernel"`` or
    ``"independent"`` noise (:func:`stein_langevin_step`). Each block is
    block_steps steps; step t of a replica uses ``fold_in(key, t)``, so a
    replica equals :func:`run_stein_langevin` with the replica key, n_steps =
    n_blocks * block_steps and every = block_steps. Result: ``positions``
    (N, ...), ``mean_energy`` (n_blocks,) (mean over particles after each
    block), ``drift_norm`` (n_blocks,). Fails on non-finite positions.
    cache_key: the Program's (hashable; None compiles afresh per run).
    """
    if mode not in NOISES:
        raise JaxiapInputError(f"stein_program: mode must be one of {NOISES}, got {mode!r}")
    kernel = as_stein_kernel(kernel)
    n_blocks, block_steps = int(n_blocks), int(block_steps)

    def score(params):
        grad = jax.grad(lambda x: energy_fn(params, x))
        return lambda x: -grad(x) / kT

    def init(params, key, prep, shared):
        x0 = jnp.asarray(shared["x0"])
        nan = jnp.full((n_blocks,), jnp.nan, x0.dtype)
        return dict(x=x0, key=key, block=jnp.zeros((), jnp.int32), energy=nan, drift=nan)

    def step(c, params, shared):
        sf = score(params)
        fp, fs = _fixed_pair(shared.get("fixed") if isinstance(shared, dict) else None, sf)
        x, (dn, _) = _block(c["key"], c["x"], c["block"] * block_steps, block_steps, sf, kernel, dt, mode, fp, fs,
                            own_force)
        e = jnp.mean(jax.vmap(lambda y: energy_fn(params, y))(x))
        return dict(c, x=x, block=c["block"] + 1, energy=c["energy"].at[c["block"]].set(e),
                    drift=c["drift"].at[c["block"]].set(dn))

    return Program(
        name="stein-md",
        init=init,
        step=step,
        done=lambda c: c["block"] >= n_blocks,
        result=lambda c: dict(positions=c["x"], mean_energy=c["energy"], drift_norm=c["drift"]),
        failed=lambda c: ~jnp.all(jnp.isfinite(c["x"])),
        cache_key=cache_key,
    )
