"""Linear designs too tall for their width: compress to K rows, then sample the horseshoe at K x K cost.

A weighted design (R rows, K columns, R >> K) enters a Gaussian likelihood
only through the thin QR sqrt(w) A = Q R: with z = Q^T sqrt(w) y and
rss_perp the part of ||sqrt(w) y||^2 outside the column span,
||sqrt(w) (y - A c)||^2 = rss_perp + ||z - R c||^2 exactly
(:func:`compressed_statistics`). On it:

- :func:`horseshoe_compressed_model`: the horseshoe of
  :func:`jaxiap.inference.sparse.horseshoe_model` for numpyro (NUTS, SVI);
- :func:`horseshoe_gibbs`: Makalic & Schmidt's (2016) auxiliary-variable
  Gibbs sampler, one K x K Cholesky per iteration. At ~500 ACE columns NUTS
  did not mix (every draw at the maximum tree depth) and mean-field SVI did
  not converge; Gibbs did (docs/ace.md, "Bayesian basis size");
- :func:`fit_horseshoe`: either, from a DesignMatrix, with the shrinkage
  factors kappa_k and the count of active coefficients.

Units follow the design (eV, Å); sigma is per unit row weight.
"""

from __future__ import annotations

import time

import jax.numpy as jnp
import numpy as np

from jaxiap.errors import JaxiapInputError


def compress(A: np.ndarray, y: np.ndarray):
    """(R, Q^T y) of the thin QR A = Q R: the same Gram A^T A and A^T y in K rows instead of N."""
    q, r = np.linalg.qr(A, mode="reduced")
    return r, q.T @ y


def _one_blas_thread():
    """threadpoolctl's limit of numpy's BLAS to one thread (a no-op context without threadpoolctl)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover
        import contextlib

        return contextlib.nullcontext()
    return threadpool_limits(1, user_api="blas")


def compressed_statistics(design):
    """(R (K, K), z (K,), n_rows, rss_perp) of the weighted rows (w > 0) of a DesignMatrix: the thin QR
    sqrt(w) A = Q R, z = Q^T sqrt(w) y, and the part of ||sqrt(w) y||^2 outside the span of A. They give
    the exact Gaussian log likelihood at K x K cost:
    ||sqrt(w) (y - A c)||^2 = rss_perp + ||z - R c||^2 over n_rows rows."""
    A, y, w = (np.asarray(v) for v in design[:3])
    keep = w > 0
    sw = np.sqrt(w[keep])
    yw = y[keep] * sw
    with _one_blas_thread():
        r, z = compress(A[keep] * sw[:, None], yw)
    rss = max(float(yw @ yw - z @ z), 0.0)
    return r, z, int(keep.sum()), rss


def horseshoe_compressed_model(r, z, n_rows, rss_perp, sigma_scale=1.0, tau_scale=1.0):
    """The horseshoe of :func:`jaxiap.inference.sparse.horseshoe_model` on compressed rows
    (:func:`compressed_statistics`), exact: beta_k = tau lambda_k u_k, lambda_k ~ HalfCauchy(1),
    tau ~ HalfCauchy(tau_scale), u_k ~ N(0, 1), sigma ~ HalfNormal(sigma_scale), and the log likelihood
    -n_rows log sigma - (rss_perp + ||z - R beta||^2) / (2 sigma^2). Sites tau, lambda, u, sigma; beta."""
    # lazy: numpyro (~0.2 s to import) only for the horseshoe fit
    import numpyro
    import numpyro.distributions as dist

    k = r.shape[1]
    tau = numpyro.sample("tau", dist.HalfCauchy(tau_scale))
    lam = numpyro.sample("lambda", dist.HalfCauchy(jnp.ones(k)).to_event(1))
    u = numpyro.sample("u", dist.Normal(jnp.zeros(k), 1.0).to_event(1))
    beta = numpyro.deterministic("beta", tau * lam * u)
    sigma = numpyro.sample("sigma", dist.HalfNormal(sigma_scale))
    res = z - r @ beta
    numpyro.factor("likelihood", -n_rows * jnp.log(sigma) - (rss_perp + res @ res) / (2.0 * sigma**2))


def horseshoe_gibbs(r, z, n_rows: int, rss_perp: float, n_iter: int, n_burn: int, seed: int = 0, init=None,
                    tau_scale: float = 1.0, thin: int = 1) -> dict:
    """Gibbs sampler of the horseshoe of :func:`horseshoe_compressed_model` (Makalic & Schmidt 2016's
    auxiliary-variable scheme, prior beta_k ~ N(0, tau^2 lambda_k^2) without a sigma factor), with the
    Jeffreys prior p(sigma^2) ~ 1 / sigma^2 instead of the half-normal (conjugate; at ~2e4 rows the
    difference is negligible). One iteration: beta | rest ~ N(Q^-1 R^T z / sigma^2, Q^-1),
    Q = R^T R / sigma^2 + diag(1 / (tau^2 lambda^2)) (one K x K Cholesky); sigma^2 | rest ~
    InvGamma(n/2, (rss_perp + ||z - R beta||^2) / 2); lambda_k^2, nu_k, tau^2, xi inverse gammas.
    ``init``: dict beta (K,), sigma, tau (default: zeros, 1, 1). Returns every ``thin``-th draw after
    ``n_burn``: beta (S, K), lambda (S, K), tau (S,), sigma (S,)."""
    import scipy.linalg as sla

    rng = np.random.default_rng(seed)
    k = r.shape[1]
    g, b = r.T @ r, r.T @ z
    init = init or {}
    beta = np.asarray(init.get("beta", np.zeros(k)), float).copy()
    sigma2 = float(init.get("sigma", 1.0)) ** 2
    tau2 = float(init.get("tau", 1.0)) ** 2
    lam2 = np.maximum(beta**2 / tau2, 1e-12)
    nu, xi = np.ones(k), 1.0
    inv_gamma = lambda shape, scale: scale / rng.gamma(shape, 1.0, size=np.shape(scale))  # noqa: E731
    out = {"beta": [], "lambda": [], "tau": [], "sigma": []}
    for it in range(n_iter):
        q = g / sigma2
        q[np.diag_indices(k)] += 1.0 / (tau2 * lam2)
        c = sla.cholesky(q, lower=True, check_finite=False)
        mean = sla.cho_solve((c, True), b / sigma2, check_finite=False)
        beta = mean + sla.solve_triangular(c, rng.standard_normal(k), lower=True, trans="T", check_finite=False)
        res = z - r @ beta
        sigma2 = float(inv_gamma(0.5 * n_rows, 0.5 * (rss_perp + res @ res)))
        lam2 = np.maximum(inv_gamma(1.0, 1.0 / nu + beta**2 / (2.0 * tau2)), 1e-300)
        nu = inv_gamma(1.0, 1.0 + 1.0 / lam2)
        tau2 = float(inv_gamma(0.5 * (k + 1), 1.0 / xi + np.sum(beta**2 / lam2) / 2.0))
        xi = float(inv_gamma(1.0, 1.0 / tau_scale**2 + 1.0 / tau2))
        if it >= n_burn and (it - n_burn) % thin == 0:
            out["beta"].append(beta)
            out["lambda"].append(np.sqrt(lam2))
            out["tau"].append(np.sqrt(tau2))
            out["sigma"].append(np.sqrt(sigma2))
    return {key: np.asarray(v) for key, v in out.items()}


def fit_horseshoe(design, method: str = "svi", seed: int = 0, num_warmup: int = 500, n_samples: int = 500,
                  num_chains: int = 1, svi_steps: int = 20000, learning_rate: float = 5e-3,
                  max_tree_depth: int = 8, thin: int = 1, init_mean=None, init_sigma: float | None = None,
                  init_tau: float = 0.1) -> dict:
    """Horseshoe on the QR-compressed weighted rows of ``design`` (columns already scaled to unit RMS);
    the targets are scaled to unit weighted RMS for the fit (so the unit-scale priors mean something)
    and mapped back.

    method "gibbs" (:func:`horseshoe_gibbs`, ``num_chains`` x (``num_warmup`` burn-in + ``n_samples``)
    iterations, every ``thin``-th kept; R-hat and ESS from numpyro's diagnostics), "svi" (numpyro AutoNormal, ``svi_steps`` Adam
    steps, ``n_samples`` draws) or "nuts" (``num_chains`` x (``num_warmup`` + ``n_samples``),
    ``max_tree_depth``), the last two through :func:`jaxiap.inference.mcmc.run_svi` / ``run_nuts``. Returns mean (K,) (posterior mean of beta),
    kappa (K,) (posterior mean of the shrinkage factor kappa_k = 1 / (1 + G_kk tau^2 lambda_k^2 /
    sigma^2), G = R^T R: the fraction by which the data's estimate of beta_k is pulled to 0 for an
    orthogonal design), n_active (kappa_k < 0.5), m_eff (sum of 1 - kappa_k), sigma (posterior mean, per
    unit row weight), tau (posterior median), n_interval_excludes_0 (coefficients whose central 95%
    posterior interval excludes 0), diagnostics and the wall time. ``init_mean`` (K,) and
    ``init_sigma``: start there (e.g. the BLR mean and noise; tau = ``init_tau``, lambda_k =
    |beta_k| / tau, u_k = sign(beta_k)), instead of numpyro's random start.
    """
    import jax

    from jaxiap.inference.mcmc import run_nuts, run_svi

    if method not in ("svi", "nuts", "gibbs"):
        raise JaxiapInputError(f"fit_horseshoe: method must be 'gibbs', 'svi' or 'nuts', got {method!r}")
    t = time.perf_counter()
    r, z, n_rows, rss = compressed_statistics(design)
    ys = float(np.sqrt((z @ z + rss) / n_rows))
    args = (jnp.asarray(r), jnp.asarray(z / ys), float(n_rows), rss / ys**2)
    key = jax.random.key(seed)
    init = None
    if init_mean is not None:
        b0 = np.asarray(init_mean, float) / ys
        init = {"tau": jnp.asarray(init_tau), "lambda": jnp.asarray(np.maximum(np.abs(b0), 1e-8) / init_tau),
                "u": jnp.asarray(np.where(b0 < 0, -1.0, 1.0)),
                "sigma": jnp.asarray(float(init_sigma) / ys if init_sigma is not None else 1.0)}
    if method == "gibbs":
        start = None if init is None else dict(beta=np.asarray(init_mean, float) / ys, tau=init_tau,
                                               sigma=float(init["sigma"]))
        chains = [horseshoe_gibbs(np.asarray(r), np.asarray(z) / ys, n_rows, rss / ys**2, num_warmup + n_samples,
                                  num_warmup, seed + c, start, thin=thin) for c in range(num_chains)]
        smp = {site: np.concatenate([ch[site] for ch in chains]) for site in chains[0]}
        diag = {}
        if num_chains > 1:
            from numpyro.diagnostics import effective_sample_size, split_gelman_rubin

            stack = np.stack([np.concatenate([ch["beta"], ch["sigma"][:, None], ch["tau"][:, None]], axis=1)
                              for ch in chains])
            diag = dict(r_hat_max=float(np.max(split_gelman_rubin(stack))),
                        ess_min=float(np.min(effective_sample_size(stack))))
    elif method == "nuts":
        res = run_nuts(horseshoe_compressed_model, key, *args, num_warmup=num_warmup, num_samples=n_samples,
                       num_chains=num_chains, target_accept_prob=0.9, max_tree_depth=max_tree_depth,
                       progress=False, warn=False, init_params=init)
        d = res.diagnostics
        diag = dict(n_divergent=int(d["n_divergent"]), num_steps=int(d["num_steps"]),
                    num_steps_warmup=int(d["num_steps_warmup"]),
                    r_hat_max=float(max(np.max(v) for v in d["r_hat"].values())),
                    ess_min=float(min(np.min(v) for v in d["ess"].values())))
    else:
        res = run_svi(horseshoe_compressed_model, key, *args, num_steps=svi_steps, learning_rate=learning_rate,
                      num_samples=n_samples, progress=False, init_params=init)
        diag = {"final_loss": float(res.diagnostics["final_loss"])}
    if method != "gibbs":
        smp = res.samples
    beta = np.asarray(smp["beta"]) * ys
    gkk = np.sum(r**2, axis=0)
    tau, lam, sigma = np.asarray(smp["tau"]), np.asarray(smp["lambda"]), np.asarray(smp["sigma"])
    kappa = np.mean(1.0 / (1.0 + gkk[None, :] * (tau[:, None] * lam) ** 2 / sigma[:, None] ** 2), axis=0)
    lo, hi = np.quantile(beta, [0.025, 0.975], axis=0)
    return dict(mean=beta.mean(0), kappa=kappa, n_active=int(np.sum(kappa < 0.5)), m_eff=float(np.sum(1 - kappa)),
                n_interval_excludes_0=int(np.sum((lo > 0) | (hi < 0))),
                sigma=float(np.mean(sigma)) * ys, tau=float(np.median(tau)), method=method,
                diagnostics=diag, seconds=time.perf_counter() - t)
