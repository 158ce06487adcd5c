"""The embedded-model-error likelihoods, numpyro model and MAP / Laplace machinery.

The pieces behind :func:`jaxiap.inference.model_error.fit_model_error` (see
that module's docstring for the model): the model-error variance and the
IID / ABC log-likelihoods, the numpyro model ``model_error_model``, the
least-squares start, the MAP search (scipy BFGS or optax L-BFGS in the
unconstrained (c_white, log d) space), its multi-start wrapper and the
Laplace draws. ``jaxiap.inference.model_error`` re-exports the public names.
"""

from __future__ import annotations

import functools
import warnings

import jax
from jax.flatten_util import ravel_pytree
import jax.numpy as jnp
import numpy as np
from scipy.optimize import minimize

from jaxiap.errors import JaxiapInputError

_LOG_2PI = float(np.log(2 * np.pi))

# --------------------------------------------------------------------------------------------
# pure pieces


def model_error_variance(B_embed, L):
    """v(x) = ||L^T b(x)||^2 for rows B_embed (R, E) and a factor L (E, E) -> (R,)."""
    return jnp.sum((B_embed @ L) ** 2, axis=-1)


def loglik_iid(y, mu, s, mask=None):
    """IID Gaussian log-likelihood with per-row variance s = v + sig^2. Shapes (N,) -> scalar.

    ``mask`` (N,) bool: rows that count (default all).
    """
    terms = (y - mu) ** 2 / s + jnp.log(s) + _LOG_2PI
    return -0.5 * jnp.sum(terms if mask is None else jnp.where(mask, terms, 0.0))


def loglik_abc(y, mu, s, eps=0.01, alpha=1.0, mask=None):
    """ABC log-likelihood: the mean fits the data and sqrt(s) matches alpha |residual|, tolerance eps.

    ``mask`` (N,) bool: rows that count (default all).
    """
    r = y - mu
    terms = (r**2 + (alpha * jnp.abs(r) - jnp.sqrt(s)) ** 2) / (2 * eps**2) + jnp.log(eps) + 0.5 * _LOG_2PI
    return -jnp.sum(terms if mask is None else jnp.where(mask, terms, 0.0))


def _lower_from_parts(diag, offdiag, e: int):
    """Lower-triangular (E, E) from its diagonal (E,) and strict lower part (E(E-1)/2,) (row-major)."""
    L = jnp.diag(diag)
    if e > 1:
        rows, cols = np.tril_indices(e, -1)
        L = L.at[rows, cols].set(offdiag)
    return L


def _effective_factor(L, c_embed, embedding: str):
    """The factor in coefficient units: L (additive) or diag(|c_embed|) L (multiplicative).

    Batched over leading axes.
    """
    if embedding == "multiplicative":
        return jnp.abs(c_embed)[..., :, None] * L
    return L


def check_embed(embed, k: int) -> tuple:
    """Validate embedding indices: distinct integers in [0, K-1]. None -> all K. Returns a tuple of ints."""
    if embed is None:
        return tuple(range(k))
    arr = np.atleast_1d(np.asarray(embed))
    valid = f"distinct integer coefficient indices in [0, {k - 1}] (K = {k})"
    if arr.ndim != 1 or arr.size == 0 or not (np.issubdtype(arr.dtype, np.integer)
                                              or (np.issubdtype(arr.dtype, np.floating)
                                                  and np.all(arr == np.round(arr)))):
        raise JaxiapInputError(f"embed must be a non-empty list of {valid}; got {embed!r}")
    arr = arr.astype(int)
    bad = arr[(arr < 0) | (arr >= k)]
    if bad.size:
        raise JaxiapInputError(f"embed index {bad.tolist()} out of range: embed must hold {valid}; got "
                               f"{arr.tolist()}")
    if len(set(arr.tolist())) != arr.size:
        raise JaxiapInputError(f"embed has duplicated indices {arr.tolist()}: embed must hold {valid}")
    return tuple(int(i) for i in arr)


# --------------------------------------------------------------------------------------------
# the numpyro model


def model_error_model(A, y, sig2, c_center, c_unit, c_scale, d_scale, mask=None, *, embed: tuple,
                      likelihood: str = "iid", embedding: str = "additive", covariance: str = "diagonal",
                      eps: float = 0.01, alpha: float = 1.0):
    """Embedded-model-error model (numpyro; float64).

    A (N, K) design rows, y (N,) targets, sig2 (N,) data-noise variances
    (already floored), c_scale (K,) prior std of c (prior c ~ N(0, c_scale^2)),
    d_scale (E,) prior scale of the embedding diagonal, mask (N,) bool rows
    that count (None: all). c is sampled whitened, c = c_center + c_unit * u
    (e.g. the least-squares solution and its standard errors), so the sampled
    coordinates are O(1) whatever the units of the basis. Static: ``embed`` (tuple of E indices),
    ``likelihood`` "iid"|"abc", ``embedding`` "additive"|"multiplicative",
    ``covariance`` "diagonal"|"full", ABC ``eps`` and ``alpha``.

    Sites: ``c_white`` (K,) (deterministic ``c``), ``d`` (E,) > 0 and, for
    "full", ``l_offdiag`` (E(E-1)/2,).
    """
    # lazy: numpyro (~0.2 s to import) only for NUTS/SVI/MAP
    import numpyro
    import numpyro.distributions as dist

    e = len(embed)
    idx = jnp.asarray(embed)
    u = numpyro.sample("c_white", dist.Normal(-c_center / c_unit, c_scale / c_unit).to_event(1))
    c = numpyro.deterministic("c", c_center + c_unit * u)
    d = numpyro.sample("d", dist.HalfNormal(d_scale).to_event(1))
    if covariance == "full" and e > 1:
        rows, _ = np.tril_indices(e, -1)
        off = numpyro.sample("l_offdiag", dist.Normal(jnp.zeros(len(rows)), d_scale[rows]).to_event(1))
        L = _lower_from_parts(d, off, e)
    else:
        L = jnp.diag(d)
    L = _effective_factor(L, c[idx], embedding)
    mu = A @ c
    s = model_error_variance(A[:, idx], L) + sig2
    if likelihood == "iid":
        numpyro.factor("loglik", loglik_iid(y, mu, s, mask))
    else:
        numpyro.factor("loglik", loglik_abc(y, mu, s, eps, alpha, mask))


def _site_values_to_L(values: dict, e: int, covariance: str):
    """Raw (unscaled) factor L (S, E, E) from constrained site values with a leading sample axis."""
    d = jnp.atleast_2d(values["d"])
    if covariance == "full" and e > 1:
        off = jnp.atleast_2d(values["l_offdiag"])
        return jax.vmap(lambda a, b: _lower_from_parts(a, b, e))(d, off)
    return jax.vmap(jnp.diag)(d)


# --------------------------------------------------------------------------------------------
# fitting


def _choice(name, value, options):
    if value not in options:
        raise JaxiapInputError(f"{name} must be one of {options}, got {value!r}")


def _positive(name, value, fix=""):
    if not np.isfinite(value) or value <= 0:
        raise JaxiapInputError(f"{name} must be finite and > 0, got {value!r}{fix}")


def _lstsq_start(A, y, sw):
    """Weighted least squares (c0 (K,), sd0 (K,), residual r (N,)) with a tiny relative ridge."""
    Aw, yw = A * sw[:, None], y * sw
    u, s, vt = np.linalg.svd(Aw, full_matrices=False)
    s_inv = np.where(s > 1e-12 * s[0], 1.0 / s, 0.0)
    c0 = vt.T @ (s_inv * (u.T @ yw))
    r = y - A @ c0
    n, k = A.shape
    dof = max(n - k, 1)
    sig2_hat = np.sum((sw * r) ** 2) / dof
    sd0 = np.sqrt(np.sum((vt.T * s_inv) ** 2, axis=1) * max(sig2_hat, 1e-300))
    return c0, sd0, r


@functools.partial(jax.jit, static_argnames=("static", "maxiter"))
def _lbfgs_map(z0, model_args, traced_kwargs, tol, *, static, maxiter):
    """Minimise the potential energy (-log joint in unconstrained space) with optax L-BFGS.

    Module-level and jitted on (shapes, static model settings), so repeated
    fits of same-shaped problems reuse one compilation.
    """
    import optax  # lazy: optax takes ~0.1 s to import (only needed to fit)
    from numpyro.infer.util import potential_energy  # lazy: numpyro (~0.2 s to import) only for NUTS/SVI/MAP

    kwargs = dict(static, **traced_kwargs)
    f = lambda z: potential_energy(model_error_model, model_args, kwargs, z)
    opt = optax.lbfgs()
    vg = optax.value_and_grad_from_state(f)

    def step(carry):
        z, state = carry
        value, grad = vg(z, state=state)
        updates, state = opt.update(grad, state, z, value=value, grad=grad, value_fn=f)
        return optax.apply_updates(z, updates), state

    def go_on(carry):
        _, state = carry
        it = optax.tree.get(state, "count")
        g = optax.tree.norm(optax.tree.get(state, "grad"))
        return (it == 0) | ((it < maxiter) & (g >= tol))

    z, state = jax.lax.while_loop(go_on, step, (z0, opt.init(z0)))
    return z, f(z), optax.tree.get(state, "count"), optax.tree.norm(optax.tree.get(state, "grad"))


def _latent(values: dict, c_center, c_unit) -> dict:
    """Parameter values {c, d, l_offdiag} -> the model's latent sites {c_white, d, l_offdiag}."""
    z = {k: jnp.asarray(v) for k, v in values.items() if k != "c"}
    z["c_white"] = (jnp.asarray(values["c"]) - c_center) / c_unit
    return z


def _unconstrain(values: dict, c_center, c_unit) -> dict:
    """Parameter values -> numpyro's unconstrained space (whitened c; d > 0 lives in log d)."""
    z = _latent(values, c_center, c_unit)
    z["d"] = jnp.log(z["d"])
    return z


def _constrain(z: dict, c_center, c_unit) -> dict:
    """Inverse of :func:`_unconstrain` (numpyro maps a positive support with exp)."""
    values = {k: v for k, v in z.items() if k != "c_white"}
    values["c"] = c_center + c_unit * z["c_white"]
    values["d"] = jnp.exp(z["d"])
    return values


@functools.partial(jax.jit, static_argnames=("static",))
def _value_and_grad(z, model_args, traced_kwargs, *, static):
    """Potential energy (-log joint, unconstrained space) and its gradient; jitted per shape/settings."""
    from numpyro.infer.util import potential_energy  # lazy: numpyro (~0.2 s to import) only for NUTS/SVI/MAP

    kwargs = dict(static, **traced_kwargs)
    return jax.value_and_grad(lambda z_: potential_energy(model_error_model, model_args, kwargs, z_))(z)


def _scipy_map(z0, model_args, traced, tol, *, static, maxiter):
    """scipy BFGS (<= 200 parameters) or L-BFGS-B on the jitted value-and-gradient: a small compile, a Python loop."""
    flat0, unravel = ravel_pytree(z0)

    def fun(x):
        v, g = _value_and_grad(unravel(jnp.asarray(x)), model_args, traced, static=static)
        return float(v), np.asarray(ravel_pytree(g)[0], np.float64)

    x0 = np.asarray(flat0, np.float64)
    if x0.size <= 200:
        # dense BFGS: for small problems it avoids L-BFGS-B's BLAS calls, which contend with
        # XLA's CPU threads (measured 20x slower on a busy 2-core machine)
        res = minimize(fun, x0, jac=True, method="BFGS", options=dict(maxiter=int(maxiter), gtol=float(tol)))
    else:
        res = minimize(fun, x0, jac=True, method="L-BFGS-B",
                       options=dict(maxiter=int(maxiter), gtol=float(tol), ftol=1e-15, maxcor=20))
    v, g = fun(res.x)
    return unravel(jnp.asarray(res.x)), v, int(res.nit), float(np.linalg.norm(g))


@functools.partial(jax.jit, static_argnames=("static",))
def _hessian(z, model_args, traced_kwargs, *, static):
    """Hessian of the potential energy in the flattened unconstrained coordinates."""
    from numpyro.infer.util import potential_energy  # lazy: numpyro (~0.2 s to import) only for NUTS/SVI/MAP

    kwargs = dict(static, **traced_kwargs)
    flat, unravel = ravel_pytree(z)
    return jax.hessian(lambda x: potential_energy(model_error_model, model_args, kwargs, unravel(x)))(flat)


def _laplace_draws(key, values: dict, model_args, model_kwargs, n: int) -> dict:
    """n draws of N(z*, H^-1) around the MAP in unconstrained space, mapped back (constrained)."""
    static, traced = _split_kwargs(model_kwargs)
    c_center, c_unit = model_args[3], model_args[4]
    z = _unconstrain(values, c_center, c_unit)
    H = np.asarray(_hessian(z, model_args, traced, static=static))
    H = 0.5 * (H + H.T)
    ev, V = np.linalg.eigh(H)
    if ev[0] <= 0:
        warnings.warn(f"fit_model_error(method='laplace'): the Hessian at the MAP is not positive definite "
                      f"(smallest eigenvalue {ev[0]:.3g}); clipping it. Use method='nuts' for this problem.",
                      UserWarning, stacklevel=3)
        ev = np.maximum(ev, 1e-8 * ev[-1])
    flat, unravel = ravel_pytree(z)
    eps = jax.random.normal(key, (n, flat.shape[0]), jnp.float64)
    draws = flat + eps @ jnp.asarray((V / np.sqrt(ev)).T)
    return jax.vmap(lambda x: _constrain(unravel(x), c_center, c_unit))(draws)


def _split_kwargs(model_kwargs):
    static = tuple(sorted((k, v) for k, v in model_kwargs.items() if k not in ("eps", "alpha")))
    traced = {k: jnp.asarray(model_kwargs[k], jnp.float64) for k in ("eps", "alpha")}
    return static, traced


def _map(init_values: dict, model_args, model_kwargs, maxiter: int, tol: float, optimizer: str):
    """MAP of ``model_error_model`` from constrained ``init_values``; returns (constrained values, summary)."""
    static, traced = _split_kwargs(model_kwargs)
    c_center, c_unit = model_args[3], model_args[4]
    z0 = _unconstrain(init_values, c_center, c_unit)
    if optimizer == "optax":
        z, value, n_iter, gnorm = _lbfgs_map(z0, model_args, traced, tol, static=static, maxiter=int(maxiter))
        value, n_iter, gnorm = float(value), int(n_iter), float(gnorm)
    else:
        z, value, n_iter, gnorm = _scipy_map(z0, model_args, traced, tol, static=static, maxiter=maxiter)
    values = _constrain(z, c_center, c_unit)
    return values, dict(neg_log_posterior=value, n_iter=n_iter, grad_norm=gnorm, optimizer=optimizer)


#: n_starts > 1 without a ``key``: the start perturbations come from jax.random.key(MULTISTART_SEED)
MULTISTART_SEED = 0
#: with a ``key``, the perturbations use jax.random.fold_in(key, MULTISTART_FOLD), leaving ``key`` itself to
#: the Laplace / NUTS draws (so they are the same draws as with one start)
MULTISTART_FOLD = 0x5EED
#: random starts: c_white += START_SPREAD_C * N(0, 1) (units of the least-squares standard error), log d +=
#: START_SPREAD_LOG_D * N(0, 1), l_offdiag += START_SPREAD_LOG_D * d_init[row] * N(0, 1)
START_SPREAD_C = 3.0
START_SPREAD_LOG_D = 1.0
#: two starts reached the same mode when their final log posteriors differ by at most
#: max(MODE_ATOL, MODE_RTOL * |best|) nats
MODE_ATOL = 1e-4
MODE_RTOL = 1e-9


def mode_tolerance(best: float) -> float:
    """Nats within which a start's final log posterior counts as having reached the best mode."""
    return max(MODE_ATOL, MODE_RTOL * abs(float(best)))


def _best(log_posts) -> float:
    """Largest finite entry of (n_starts,) log posteriors (-inf if none is finite)."""
    lp = np.where(np.isfinite(log_posts), log_posts, -np.inf)
    return float(np.max(lp))


def _reached_best(log_posts) -> np.ndarray:
    """(n_starts,) bool: the start ended within :func:`mode_tolerance` of the best."""
    best = _best(log_posts)
    return np.isfinite(log_posts) & (log_posts >= best - mode_tolerance(best))


def _random_starts(key, z0: dict, n: int, d_init) -> dict:
    """Starts 1..n of the unconstrained start z0 perturbed: a dict of (n, ...) arrays.

    Start j uses jax.random.fold_in(key, j) alone, so the first m random starts
    are the same whatever n_starts >= m + 1 is.
    """
    names = sorted(z0)
    rows, _ = np.tril_indices(len(d_init), -1)
    scale = {"c_white": START_SPREAD_C, "d": START_SPREAD_LOG_D,
             "l_offdiag": START_SPREAD_LOG_D * jnp.asarray(d_init)[rows]}
    out = {name: [] for name in names}
    for j in range(1, n + 1):
        for name, k_ in zip(names, jax.random.split(jax.random.fold_in(key, j), len(names))):
            x = jnp.asarray(z0[name])
            out[name].append(x + scale[name] * jax.random.normal(k_, x.shape, jnp.float64))
    return {name: jnp.stack(v) for name, v in out.items()}


@functools.partial(jax.jit, static_argnames=("static", "maxiter"))
def _lbfgs_map_many(z0s, model_args, traced_kwargs, tol, *, static, maxiter):
    """:func:`_lbfgs_map` vmapped over the leading (start) axis of every leaf of z0s."""
    return jax.vmap(lambda z0: _lbfgs_map(z0, model_args, traced_kwargs, tol, static=static,
                                          maxiter=maxiter))(z0s)


def _multistart_map(init_values: dict, model_args, model_kwargs, maxiter: int, tol: float, optimizer: str,
                    n_starts: int, key, d_init):
    """MAP from the least-squares start plus n_starts - 1 random ones; returns (values, summary) of the best.

    Start 0 is exactly :func:`_map` (same operations) for "scipy" and for one
    start; with "optax" and n_starts > 1 all starts, start 0 included, run in
    one vmapped while-loop (one compilation). The pick is the FIRST start
    whose final log posterior is within :func:`mode_tolerance` of the best, so
    the least-squares start is kept whenever it reached the best mode. The
    summary adds n_starts, start_log_posteriors (n_starts,), best_log_posterior,
    n_reached_best, best_start, mode_tol and start_values (each start's final
    constrained values {c, d[, l_offdiag]}).
    """
    if n_starts == 1 or optimizer == "scipy":
        values, first = _map(init_values, model_args, model_kwargs, maxiter, tol, optimizer)
        runs = [(values, first)]
    else:
        runs = []
    if n_starts > 1:
        static, traced = _split_kwargs(model_kwargs)
        c_center, c_unit = model_args[3], model_args[4]
        z0 = _unconstrain(init_values, c_center, c_unit)
        z0s = _random_starts(key, z0, n_starts - 1, d_init)
        if optimizer == "optax":
            # all starts, the least-squares one included, in one vmapped while-loop (one compilation)
            z0s = {k_: jnp.concatenate([jnp.asarray(z0[k_])[None], v]) for k_, v in z0s.items()}
            zs, vals, its, gns = _lbfgs_map_many(z0s, model_args, traced, tol, static=static, maxiter=int(maxiter))
            for j in range(n_starts):
                z = {k_: v[j] for k_, v in zs.items()}
                runs.append((_constrain(z, c_center, c_unit),
                             dict(neg_log_posterior=float(vals[j]), n_iter=int(its[j]), grad_norm=float(gns[j]),
                                  optimizer=optimizer)))
        else:
            for j in range(n_starts - 1):
                z0j = {k_: v[j] for k_, v in z0s.items()}
                z, value, n_iter, gnorm = _scipy_map(z0j, model_args, traced, tol, static=static, maxiter=maxiter)
                runs.append((_constrain(z, c_center, c_unit),
                             dict(neg_log_posterior=value, n_iter=n_iter, grad_norm=gnorm, optimizer=optimizer)))
    log_posts = np.array([-r[1]["neg_log_posterior"] for r in runs], np.float64)
    reached = _reached_best(log_posts)
    pick = int(np.argmax(reached)) if reached.any() else 0
    best = _best(log_posts)
    values, summary = runs[pick]
    summary = dict(summary, n_starts=int(n_starts), start_log_posteriors=log_posts, best_log_posterior=best,
                   n_reached_best=int(reached.sum()), best_start=pick, mode_tol=mode_tolerance(best),
                   start_values=[r[0] for r in runs])
    return values, summary
