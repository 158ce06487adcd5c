"""Embedded model error for linear models (Sargsyan et al. 2015, 2019; docs/science.md section 11).

The coefficients of a linear model f(x) = sum_k c_k B_k(x) are made random,

    c~ = c + P L xi,      xi ~ N(0, I_E),

where P places the E embedded coefficients ``embed`` among the K, and L (E, E)
is diag(d) (``covariance="diagonal"``) or lower triangular (``"full"``). In
the ``"multiplicative"`` embedding L is replaced by diag(|c_embed|) L. The
model output is then Gaussian with mean mu(x) = c . B(x) and model-error
variance v(x) = ||L^T B_embed(x)||^2. Because the data covariance of such a
model is rank-deficient for N > K, the likelihood is one of

- IID: log L = -1/2 sum_i [r_i^2 / s_i + log(2 pi s_i)], s_i = v(x_i) + sig_i^2;
- ABC: log L = -1/(2 eps^2) sum_i [r_i^2 + (alpha |r_i| - sqrt(s_i))^2] - N log(eps sqrt(2 pi)),

with r_i = y_i - mu(x_i) and data-noise variance sig_i^2 = max(noise_var / w_i,
noise_floor). Rows with w_i = 0 are dropped.

Priors (our defaults, docs/science.md section 11.5): c_k ~ N(0, s_k) with a wide
s_k = c_prior_factor * (|c_lstsq,k| + 3 sd_lstsq,k); the diagonal d_k (or L_kk)
~ HalfNormal(d_scale_k) with d_scale_k = d_prior_scale * (|c_lstsq,k| +
3 sd_lstsq,k) (additive) or d_prior_scale (multiplicative, where d is
relative); off-diagonal L_jk ~ N(0, d_scale_j). Positive parameters live in
log space for the optimiser and NUTS (numpyro's transform of a positive
support is exp), so the MAP is the mode in (c, log d) coordinates.

The ABC likelihood (tolerance eps small next to the residuals) is multimodal:
the mean may fit one residual or another, and the model-error scale follows.
A single MAP search from least squares can stop at a local mode (an
independent PyTUQ check of a cubic fit found it 0.15 nat below the mode most
random restarts reach, with the model-error std off by up to 3%; the quadratic
fit of |x| in tests/test_model_error.py is 0.34 nat and 5% off). So
``fit_model_error`` runs the MAP from ``n_starts`` points, the least-squares
start and random perturbations of it, keeps the best and records every start's
final log posterior and how many reached the best mode. The default is 5 starts
for ABC and 1 for IID (whose least-squares start is the established default,
kept bit for bit).

``fit_model_error`` returns a :class:`ModelErrorPosterior`: samples of
(c, L); ``.sample`` draws coefficient vectors *including* model error, which
is what MD propagation needs (one c~ per trajectory), and
``.predict_split`` gives the push-forward split into posterior and
model-error variance (pytuq ``model_infer_postp``).
"""

from __future__ import annotations

import functools
import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from jaxiap import runfolder
from jaxiap.errors import JaxiapInputError
from jaxiap.inference.mcmc import design_arrays, run_nuts
from jaxiap.inference.posterior import Prediction, _noise_std

__all__ = [
    "ModelErrorPosterior",
    "fit_model_error",
    "model_error_model",
    "model_error_variance",
    "loglik_iid",
    "loglik_abc",
    "check_embed",
]

LIKELIHOODS = ("iid", "abc")
EMBEDDINGS = ("additive", "multiplicative")
COVARIANCES = ("diagonal", "full")
METHODS = ("map", "laplace", "nuts")
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
# posterior


class ModelErrorPosterior(eqx.Module):
    """Samples (S of them; S = 1 for a MAP point) of embedded-model-error parameters.

    coef_samples (S, K): coefficient means c_s; factor_samples (S, E, E):
    raw lower-triangular embedding factors L_s (diag(d_s) for the diagonal
    covariance); embed (E,) embedded indices; noise_var: data-noise variance
    per unit row weight (added only to ``std_predictive``). The model error
    factor in coefficient units is ``scale_factor`` (L_s, or diag(|c_embed|) L_s
    for the multiplicative embedding). map_log_posteriors (n_starts,): the final
    log posterior of each MAP start (start 0 = least squares; see
    :func:`fit_model_error` ``n_starts``), or None; ``n_starts``,
    ``best_log_posterior`` and ``n_reached_best`` summarise it.
    """

    coef_samples: jnp.ndarray
    factor_samples: jnp.ndarray
    embed: jnp.ndarray
    noise_var: jnp.ndarray
    likelihood: str = eqx.field(static=True, default="iid")
    embedding: str = eqx.field(static=True, default="additive")
    covariance: str = eqx.field(static=True, default="diagonal")
    kind: str = eqx.field(static=True, default="model_error")
    map_log_posteriors: jnp.ndarray | None = None

    @property
    def n_starts(self) -> int:
        """Number of MAP starts (0 if the posterior carries no record of them, e.g. an old file)."""
        return 0 if self.map_log_posteriors is None else int(self.map_log_posteriors.shape[0])

    @property
    def best_log_posterior(self) -> float:
        """Highest final log posterior over the MAP starts (nan without a record)."""
        return float("nan") if self.map_log_posteriors is None else _best(np.asarray(self.map_log_posteriors))

    @property
    def n_reached_best(self) -> int:
        """How many MAP starts ended within :func:`mode_tolerance` of the best (0 without a record)."""
        if self.map_log_posteriors is None:
            return 0
        return int(np.sum(_reached_best(np.asarray(self.map_log_posteriors))))

    @property
    def mean(self) -> jnp.ndarray:
        """(K,) posterior mean of c."""
        return jnp.mean(self.coef_samples, axis=0)

    @property
    def n_samples(self) -> int:
        return self.coef_samples.shape[0]

    @property
    def scale_factor(self) -> jnp.ndarray:
        """(S, E, E) model-error factor in coefficient units."""
        return _effective_factor(self.factor_samples, self.coef_samples[:, self.embed], self.embedding)

    @property
    def d(self) -> jnp.ndarray:
        """(S, E) diagonal of the raw embedding factor (d_k for the diagonal covariance)."""
        return jnp.diagonal(self.factor_samples, axis1=1, axis2=2)

    def sample(self, key, n: int) -> jnp.ndarray:
        """(n, K) coefficient vectors c~ = c_s + P L_s xi INCLUDING model error (s drawn uniformly).

        This is what MD propagation wants: one c~ per trajectory, fixed for the run.
        """
        k_s, k_xi = jax.random.split(key)
        s = jax.random.randint(k_s, (n,), 0, self.n_samples)
        xi = jax.random.normal(k_xi, (n, self.embed.shape[0]), self.coef_samples.dtype)
        delta = jnp.einsum("nij,nj->ni", self.scale_factor[s], xi)
        return self.coef_samples[s].at[:, self.embed].add(delta)

    def sample_mean(self, key, n: int) -> jnp.ndarray:
        """(n, K) posterior draws of c alone (no model error), resampled from the stored samples."""
        s = jax.random.randint(key, (n,), 0, self.n_samples)
        return self.coef_samples[s]

    def predict_split(self, rows) -> dict:
        """Push-forward moments for design rows (R, K) (energy or force rows alike).

        Returns dict of (R,) arrays: ``mean`` = avg_s mu_s, ``posterior_var`` =
        var_s mu_s (0 for a MAP point), ``model_error_var`` = avg_s v_s and
        ``total_var`` = posterior_var + model_error_var.
        """
        rows = jnp.atleast_2d(jnp.asarray(rows, self.coef_samples.dtype))
        mu = rows @ self.coef_samples.T  # (R, S)
        b = rows[:, self.embed]  # (R, E)
        v = jnp.sum(jnp.einsum("re,sef->rsf", b, self.scale_factor) ** 2, axis=-1)  # (R, S)
        mean = jnp.mean(mu, axis=1)
        post = jnp.var(mu, axis=1)
        merr = jnp.mean(v, axis=1)
        return dict(mean=mean, posterior_var=post, model_error_var=merr, total_var=post + merr)

    def predict(self, rows, row_weight=None) -> Prediction:
        """Prediction(mean, std = sqrt(total_var), std_predictive adding noise_var / row_weight)."""
        p = self.predict_split(rows)
        noise = _noise_std(self.noise_var, row_weight, p["mean"].shape[0], p["mean"].dtype) ** 2
        return Prediction(p["mean"], jnp.sqrt(p["total_var"]), jnp.sqrt(p["total_var"] + noise))

    def save(self, path) -> None:
        extra = {} if self.map_log_posteriors is None else {"map_log_posteriors": np.asarray(self.map_log_posteriors)}
        runfolder.savez(path, kind=self.kind, family="model_error", coef_samples=np.asarray(self.coef_samples),
                        factor_samples=np.asarray(self.factor_samples), embed=np.asarray(self.embed),
                        noise_var=np.asarray(self.noise_var), likelihood=self.likelihood,
                        embedding=self.embedding, covariance=self.covariance, **extra)

    @classmethod
    def load(cls, z) -> "ModelErrorPosterior":
        """From an opened npz mapping written by :meth:`save`."""
        starts = z.get("map_log_posteriors")  # absent in files written before multi-start
        return cls(jnp.asarray(z["coef_samples"]), jnp.asarray(z["factor_samples"]),
                   jnp.asarray(z["embed"]), jnp.asarray(z["noise_var"]), str(z["likelihood"]),
                   str(z["embedding"]), str(z["covariance"]),
                   map_log_posteriors=None if starts is None else jnp.asarray(starts))


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
    import optax
    from numpyro.infer.util import potential_energy

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
    from numpyro.infer.util import potential_energy

    kwargs = dict(static, **traced_kwargs)
    return jax.value_and_grad(lambda z_: potential_energy(model_error_model, model_args, kwargs, z_))(z)


def _scipy_map(z0, model_args, traced, tol, *, static, maxiter):
    """scipy BFGS (<= 200 parameters) or L-BFGS-B on the jitted value-and-gradient: a small compile, a Python loop."""
    from jax.flatten_util import ravel_pytree
    from scipy.optimize import minimize

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
    from jax.flatten_util import ravel_pytree
    from numpyro.infer.util import potential_energy

    kwargs = dict(static, **traced_kwargs)
    flat, unravel = ravel_pytree(z)
    return jax.hessian(lambda x: potential_energy(model_error_model, model_args, kwargs, unravel(x)))(flat)


def _laplace_draws(key, values: dict, model_args, model_kwargs, n: int) -> dict:
    """n draws of N(z*, H^-1) around the MAP in unconstrained space, mapped back (constrained)."""
    from jax.flatten_util import ravel_pytree

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


def fit_model_error(
    design,
    y=None,
    w=None,
    *,
    likelihood: str = "iid",
    embed=None,
    embedding: str = "additive",
    covariance: str = "diagonal",
    method: str = "map",
    key=None,
    eps: float = 0.01,
    alpha: float = 1.0,
    noise_var: float = 0.0,
    noise_floor: float | None = None,
    c_prior_factor: float = 10.0,
    d_prior_scale: float = 1.0,
    optimizer: str = "scipy",
    maxiter: int = 1000,
    tol: float = 1e-8,
    n_starts: int | None = None,
    num_warmup: int = 500,
    num_samples: int = 500,
    num_chains: int = 2,
    target_accept_prob: float = 0.9,
    progress: bool = True,
    return_info: bool = False,
):
    """Fit an embedded-model-error linear model (float64).

    design: a DesignMatrix, or A (R, K) with ``y`` (R,) and optional ``w`` (R,).
    likelihood "iid" | "abc" (``eps`` > 0 tolerance in units of y, ``alpha`` > 0);
    ``embed`` None (all K) or distinct indices in [0, K-1]; ``embedding``
    "additive" | "multiplicative"; ``covariance`` "diagonal" | "full".
    ``noise_var`` >= 0 is the data-noise variance per unit row weight
    (sig_i^2 = max(noise_var / w_i, noise_floor)); ``noise_floor`` > 0 defaults
    to 1e-10 * mean(y^2).

    method "map": L-BFGS on the log posterior in (c, log d) space, started
    from least squares with d matched to the residual scale; returns a
    one-sample posterior. ``optimizer`` "scipy" (BFGS / L-BFGS-B on a jitted
    value-and-gradient: compiles in well under a second) or "optax"
    (``optax.lbfgs`` inside one jitted while-loop: no Python loop, but a
    several-second compile per problem shape; better for large designs). method "nuts": NUTS (dense mass) started at the
    MAP, ``num_chains`` x ``num_samples`` draws; ``key`` is required.
    method "laplace": ``num_samples`` draws from the Gaussian N(z*, H^-1) at
    the MAP z* in the unconstrained (c, log d) space (H the Hessian of the
    negative log posterior); cheap, and adds the posterior (parameter)
    uncertainty that a MAP point lacks at small N; ``key`` is required.

    ``n_starts`` >= 1 (default: 5 for "abc", 1 for "iid"): the MAP search is
    run from the least-squares start (start 0, exactly the one-start fit) and
    from n_starts - 1 random perturbations of it in the unconstrained space
    (c_white + START_SPREAD_C N(0, 1) least-squares standard errors, log d +
    START_SPREAD_LOG_D N(0, 1)), drawn with jax.random.fold_in(key,
    MULTISTART_FOLD), or with jax.random.key(MULTISTART_SEED) when ``key`` is
    None; ``key`` itself still drives the Laplace / NUTS draws. The kept MAP is
    the first start within :func:`mode_tolerance` (max(1e-4 nat, 1e-9
    relative)) of the best final log posterior, so the least-squares start is
    kept whenever it reached the best mode. The ABC likelihood has local modes
    (a single least-squares start was measured 0.15 nat below the better mode
    on a cubic fit, with the model-error std off by up to 3%); each extra
    start costs one more MAP search (a Python loop for "scipy", one vmapped
    while-loop for "optax"), cheap next to NUTS or MD. "iid" keeps one start by
    default so its numbers are unchanged. The log posterior compared is
    -potential energy in the (c_white, log d) space the optimiser uses.

    Returns a ModelErrorPosterior (its ``map_log_posteriors`` (n_starts,) holds
    each start's final log posterior; ``n_starts``, ``best_log_posterior`` and
    ``n_reached_best`` summarise it), or (posterior, info) with
    ``return_info``: info has ``map`` (the kept start's optimiser summary, plus
    n_starts, start_log_posteriors, best_log_posterior, n_reached_best,
    best_start, mode_tol and start_values, each start's final {c, d[,
    l_offdiag]}) and, for NUTS, ``nuts`` (NUTSResult).
    """
    _choice("likelihood", likelihood, LIKELIHOODS)
    _choice("embedding", embedding, EMBEDDINGS)
    _choice("covariance", covariance, COVARIANCES)
    _choice("method", method, METHODS)
    _choice("optimizer", optimizer, ("scipy", "optax"))
    _positive("eps", eps, " (the ABC tolerance, in units of y)")
    _positive("alpha", alpha)
    _positive("c_prior_factor", c_prior_factor)
    _positive("d_prior_scale", d_prior_scale)
    if not np.isfinite(noise_var) or noise_var < 0:
        raise JaxiapInputError(f"noise_var must be finite and >= 0 (data-noise variance per unit weight), "
                               f"got {noise_var!r}")
    # zero-weight rows stay in (masked), so designs that differ only in weights share compiled code
    A, yv, wv = design_arrays(design, y, w, name="fit_model_error", drop_zero_weight=False)
    mask = wv > 0
    n, k = A.shape
    embed_t = check_embed(embed, k)
    if noise_floor is None:
        noise_floor = 1e-10 * float(np.mean(yv[mask] ** 2)) + 1e-300
    _positive("noise_floor", noise_floor, " (a variance floor that keeps the likelihood finite)")
    if method != "map" and key is None:
        raise JaxiapInputError(f"fit_model_error(method={method!r}) needs a jax.random key, e.g. key=jax.random.key(0)")
    if n_starts is None:
        n_starts = 5 if likelihood == "abc" else 1
    if isinstance(n_starts, bool) or not isinstance(n_starts, (int, np.integer)) or n_starts < 1:
        raise JaxiapInputError(f"n_starts must be an integer >= 1 (number of MAP starts; 1 = least squares "
                               f"only), got {n_starts!r}")
    n_starts = int(n_starts)

    sig2 = np.where(mask, np.maximum(noise_var / np.where(mask, wv, 1.0), noise_floor), 1.0)
    c0, sd0, r0 = _lstsq_start(A[mask], yv[mask], np.sqrt(wv[mask]))
    c_ref = np.abs(c0) + 3 * sd0
    c_ref = np.where(c_ref > 0, c_ref, 1.0)
    c_scale = c_prior_factor * c_ref
    idx = np.asarray(embed_t)
    e = len(idx)
    if embedding == "additive":
        d_scale = d_prior_scale * c_ref[idx]
    else:
        d_scale = np.full(e, float(d_prior_scale))
    # d matched to the residual scale: sum_k d_k^2 B_k^2 ~ mean r^2 (floored, never 0)
    rms_r = np.sqrt(np.mean(r0**2) + np.mean(sig2[mask]))
    rms_b = np.sqrt(np.mean(A[mask][:, idx] ** 2, axis=0))
    d_init = rms_r / (np.sqrt(e) * np.where(rms_b > 0, rms_b, 1.0))
    if embedding == "multiplicative":
        d_init = d_init / np.where(np.abs(c0[idx]) > 0, np.abs(c0[idx]), 1.0)
    d_init = np.clip(d_init, 1e-3 * d_scale, 3.0 * d_scale)
    init = {"c": jnp.asarray(c0), "d": jnp.asarray(d_init)}
    if covariance == "full" and e > 1:
        init["l_offdiag"] = jnp.zeros(e * (e - 1) // 2)

    c_unit = np.where(sd0 > 0, sd0, c_ref)
    model_args = tuple(jnp.asarray(v) for v in (A, yv, sig2, c0, c_unit, c_scale, d_scale, mask))
    model_kwargs = dict(embed=embed_t, likelihood=likelihood, embedding=embedding, covariance=covariance,
                        eps=float(eps), alpha=float(alpha))
    start_key = None
    if n_starts > 1:
        start_key = jax.random.key(MULTISTART_SEED) if key is None else jax.random.fold_in(key, MULTISTART_FOLD)
    values, map_info = _multistart_map(init, model_args, model_kwargs, maxiter, tol, optimizer, n_starts,
                                       start_key, d_init)
    info = {"map": map_info}
    if not np.isfinite(map_info["neg_log_posterior"]):
        raise JaxiapInputError("fit_model_error: the MAP search reached a non-finite log posterior; "
                               "check the data scale, eps and noise_floor")
    if method == "map":
        if map_info["n_iter"] >= maxiter:
            warnings.warn(f"fit_model_error: L-BFGS stopped at maxiter={maxiter} with |grad| = "
                          f"{map_info['grad_norm']:.3g}; raise maxiter", UserWarning, stacklevel=2)
        c_s = jnp.asarray(values["c"])[None]
        vals = {k_: jnp.asarray(v)[None] for k_, v in values.items()}
    elif method == "laplace":
        vals = _laplace_draws(key, values, model_args, model_kwargs, int(num_samples))
        c_s = vals["c"]
    else:
        res = run_nuts(model_error_model, key, *model_args, num_warmup=num_warmup, num_samples=num_samples,
                       num_chains=num_chains, target_accept_prob=target_accept_prob, progress=progress,
                       dense_mass=True, init_params=_latent(values, model_args[3], model_args[4]),
                       **model_kwargs)
        info["nuts"] = res
        c_s = jnp.asarray(res.samples["c"])
        vals = {k_: jnp.asarray(v) for k_, v in res.samples.items()}
    L_s = _site_values_to_L(vals, e, covariance)
    post = ModelErrorPosterior(c_s, L_s, jnp.asarray(idx), jnp.asarray(float(noise_var)), likelihood,
                               embedding, covariance,
                               map_log_posteriors=jnp.asarray(map_info["start_log_posteriors"]))
    return (post, info) if return_info else post
