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
model-error variance (pytuq ``model_infer_postp``). ``.covariance()`` is the
total covariance of c~ (posterior spread of c plus the mean embedded model
error), so ``predict`` and the design strategies of ``jaxiap.active`` see the
model error too.

The likelihoods, the numpyro model and the MAP / Laplace machinery live in
``jaxiap.inference.model_error_map`` (re-exported here).
"""


from __future__ import annotations

import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from jaxiap import runfolder
from jaxiap.errors import JaxiapInputError
from jaxiap.inference.mcmc import design_arrays, run_nuts, run_svi
from jaxiap.inference.model_error_map import (  # noqa: F401  (re-exported)
    MODE_ATOL,
    MODE_RTOL,
    MULTISTART_FOLD,
    MULTISTART_SEED,
    START_SPREAD_C,
    START_SPREAD_LOG_D,
    _best,
    _choice,
    _effective_factor,
    _laplace_draws,
    _latent,
    _lstsq_start,
    _multistart_map,
    _positive,
    _reached_best,
    _site_values_to_L,
    check_embed,
    loglik_abc,
    loglik_iid,
    mode_tolerance,
    model_error_model,
    model_error_variance,
)
from jaxiap.inference.posterior import Posterior, Prediction, _noise_std, register_family

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
METHODS = ("map", "laplace", "nuts", "svi")
GUIDES = ("meanfield", "lowrank")


# --------------------------------------------------------------------------------------------
# posterior


class ModelErrorPosterior(Posterior):
    """Samples (S of them; S = 1 for a MAP point) of embedded-model-error parameters.

    coef_samples (S, K): coefficient means c_s; factor_samples (S, E, E):
    raw lower-triangular embedding factors L_s (diag(d_s) for the diagonal
    ``embed_covariance``, lower triangular for "full"); embed (E,) embedded indices; noise_var: data-noise variance
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
    embed_covariance: str = eqx.field(static=True, default="diagonal")
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

    def sample(self, key, n_samples: int) -> jnp.ndarray:
        """(n_samples, K) coefficient vectors c~ = c_s + P L_s xi INCLUDING model error (s drawn uniformly).

        This is what MD propagation wants: one c~ per trajectory, fixed for the run.
        """
        k_s, k_xi = jax.random.split(key)
        s = jax.random.randint(k_s, (n_samples,), 0, self.n_samples)
        xi = jax.random.normal(k_xi, (n_samples, self.embed.shape[0]), self.coef_samples.dtype)
        delta = jnp.einsum("nij,nj->ni", self.scale_factor[s], xi)
        return self.coef_samples[s].at[:, self.embed].add(delta)

    def sample_mean(self, key, n_samples: int) -> jnp.ndarray:
        """(n_samples, K) posterior draws of c alone (no model error), resampled from the stored samples."""
        s = jax.random.randint(key, (n_samples,), 0, self.n_samples)
        return self.coef_samples[s]

    def covariance(self) -> jnp.ndarray:
        """(K, K) total covariance of c~: Cov_s(c_s) (ddof=0; 0 for a MAP point) + P mean_s(L_s L_s^T) P^T.

        The covariance of :meth:`sample`'s draws, and a^T (this) a = ``predict_split(a)["total_var"]``.
        """
        c = self.coef_samples
        d = c - jnp.mean(c, axis=0)
        post = d.T @ d / c.shape[0]
        f = self.scale_factor
        merr = jnp.mean(jnp.einsum("sij,skj->sik", f, f), axis=0)
        return post.at[jnp.ix_(self.embed, self.embed)].add(merr)

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
                        embedding=self.embedding, covariance=self.embed_covariance, **extra)

    @classmethod
    def load(cls, z) -> "ModelErrorPosterior":
        """From an opened npz mapping written by :meth:`save`."""
        starts = z.get("map_log_posteriors")  # absent in files written before multi-start
        return cls(jnp.asarray(z["coef_samples"]), jnp.asarray(z["factor_samples"]),
                   jnp.asarray(z["embed"]), jnp.asarray(z["noise_var"]), str(z["likelihood"]),
                   str(z["embedding"]), str(z["covariance"]),
                   map_log_posteriors=None if starts is None else jnp.asarray(starts))


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
    n_samples: int = 500,
    num_warmup: int = 500,
    num_chains: int = 2,
    target_accept_prob: float = 0.9,
    guide: str = "meanfield",
    svi_steps: int = 10000,
    svi_learning_rate: float = 1e-2,
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
    MAP, ``num_chains`` x ``n_samples`` draws (numpyro's ``num_warmup`` /
    ``num_samples`` / ``num_chains``, with ``n_samples`` the draws per chain);
    ``key`` is required.
    method "laplace": ``n_samples`` draws from the Gaussian N(z*, H^-1) at
    the MAP z* in the unconstrained (c, log d) space (H the Hessian of the
    negative log posterior); cheap, and adds the posterior (parameter)
    uncertainty that a MAP point lacks at small N; ``key`` is required.
    method "svi": stochastic variational inference (``run_svi``): maximise
    the ELBO over a Gaussian guide in the unconstrained (c_white, log d)
    space, started at the MAP, ``svi_steps`` Adam steps of learning rate
    ``svi_learning_rate``; ``guide`` "meanfield" (``AutoNormal``, independent
    coordinates: it ignores posterior correlations and tends to understate
    the spread) or "lowrank" (``AutoLowRankMultivariateNormal``, rank
    ceil(sqrt(dim))); returns ``n_samples`` draws from the fitted guide;
    ``key`` is required. ``guide``, ``svi_steps`` and ``svi_learning_rate``
    are checked always and used only by "svi".

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
    l_offdiag]}) and, for NUTS, ``nuts`` (NUTSResult), for SVI, ``svi``
    (SVIResult: ``losses`` (svi_steps,) the -ELBO trace; ``diagnostics`` with
    ``final_loss`` (mean of the last 10% of the trace), ``final_elbo`` (its
    negative), ``wall_time`` (s, fit and draws, compilation included) and
    ``guide_kind``).
    """
    _choice("likelihood", likelihood, LIKELIHOODS)
    _choice("embedding", embedding, EMBEDDINGS)
    _choice("covariance", covariance, COVARIANCES)
    _choice("method", method, METHODS)
    _choice("optimizer", optimizer, ("scipy", "optax"))
    _check_svi_options(guide, svi_steps, svi_learning_rate)
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
        vals = _laplace_draws(key, values, model_args, model_kwargs, int(n_samples))
        c_s = vals["c"]
    elif method == "svi":
        res = run_svi(model_error_model, key, *model_args, guide_kind=guide, num_steps=int(svi_steps),
                      learning_rate=float(svi_learning_rate), num_samples=int(n_samples), progress=progress,
                      init_params=_latent(values, model_args[3], model_args[4]), **model_kwargs)
        res.diagnostics["final_elbo"] = -res.diagnostics["final_loss"]
        info["svi"] = res
        c_s = jnp.asarray(res.samples["c"])
        vals = {k_: jnp.asarray(v) for k_, v in res.samples.items()}
    else:
        res = run_nuts(model_error_model, key, *model_args, num_warmup=num_warmup, num_samples=n_samples,
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


def _check_svi_options(guide, svi_steps, svi_learning_rate) -> None:
    """Raise JaxiapInputError naming ``guide``, ``svi_steps`` or ``svi_learning_rate`` when it is invalid."""
    if guide not in GUIDES:
        raise JaxiapInputError(f"guide must be one of {GUIDES} (the SVI guide: 'meanfield' = independent "
                               f"Gaussians, 'lowrank' = low rank plus diagonal), got {guide!r}")
    if isinstance(svi_steps, bool) or not isinstance(svi_steps, (int, np.integer)) or svi_steps < 1:
        raise JaxiapInputError(f"svi_steps must be an integer >= 1 (Adam steps of the SVI fit, e.g. 10000), "
                               f"got {svi_steps!r}")
    if isinstance(svi_learning_rate, bool) or not isinstance(svi_learning_rate, (int, float, np.floating, np.integer)):
        raise JaxiapInputError(f"svi_learning_rate must be a number > 0 (the Adam step size, e.g. 1e-2), "
                               f"got {svi_learning_rate!r}")
    _positive("svi_learning_rate", svi_learning_rate, " (the Adam step size, e.g. 1e-2)")


register_family("model_error", ModelErrorPosterior.load, ("model_error",))
