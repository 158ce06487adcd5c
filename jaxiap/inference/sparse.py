"""Sparsity priors for linear models with numpyro (docs/science.md section 12; float64).

Models (plain functions with ``numpyro.sample`` sites, all non-centred):

- :func:`horseshoe_model`: beta_j = tau lambda_j z_j, lambda_j ~ HalfCauchy(1),
  tau ~ HalfCauchy(tau_scale), z_j ~ N(0, 1) (Carvalho, Polson & Scott;
  numpyro ``horseshoe_regression.py``).
- :func:`reg_horseshoe_model`: the regularised ("Finnish") horseshoe of
  Piironen & Vehtari (2017, App. C.1): tau ~ half-t(nu_global, 0, tau0 sigma),
  lambda_j ~ half-t(nu_local, 0, 1), c^2 = slab_scale^2 caux with
  caux ~ InvGamma(slab_df/2, slab_df/2), lambda~_j^2 = c^2 lambda_j^2 /
  (c^2 + tau^2 lambda_j^2), beta_j = z_j lambda~_j tau, and the recommended
  tau0 = p0 / (D - p0) / sqrt(n).
- :func:`laplace_model`: the Bayesian lasso beta_j = b u_j, u_j ~ Laplace(0, 1),
  b ~ HalfCauchy(laplace_scale).

All share the likelihood y_r ~ N(A_r beta, sigma^2 / w_r) with
sigma ~ HalfNormal(sigma_scale). :func:`fit_sparse` standardises the columns
of A and the targets (so the unit-scale priors mean something), runs NUTS or
SVI, and returns a ``SamplePosterior`` of beta in the original units with
``noise_var`` = posterior mean of sigma^2 (per unit row weight).
"""

from __future__ import annotations

import numpy as np

import jax.numpy as jnp

from jaxiap.errors import JaxiapInputError
from jaxiap.inference.mcmc import design_arrays, run_nuts, run_svi
from jaxiap.inference.posterior import SamplePosterior

__all__ = ["horseshoe_model", "reg_horseshoe_model", "laplace_model", "fit_sparse", "PRIORS", "tau0_default"]


def _likelihood(A, y, w, beta, sigma_scale):
    # lazy: numpyro (~0.2 s to import) only for NUTS/SVI/MAP
    import numpyro
    import numpyro.distributions as dist

    sigma = numpyro.sample("sigma", dist.HalfNormal(sigma_scale))
    numpyro.sample("y", dist.Normal(A @ beta, sigma / jnp.sqrt(w)).to_event(1), obs=y)


def horseshoe_model(A, y, w, sigma_scale=1.0, tau_scale=1.0):
    """Horseshoe regression. A (N, K), y (N,), w (N,) row weights.

    Sites tau, lambda (K,), z (K,), sigma; beta (K,) deterministic.
    """
    # lazy: numpyro (~0.2 s to import) only for NUTS/SVI/MAP
    import numpyro
    import numpyro.distributions as dist

    k = A.shape[1]
    tau = numpyro.sample("tau", dist.HalfCauchy(tau_scale))
    lam = numpyro.sample("lambda", dist.HalfCauchy(jnp.ones(k)).to_event(1))
    z = numpyro.sample("z", dist.Normal(jnp.zeros(k), 1.0).to_event(1))
    beta = numpyro.deterministic("beta", tau * lam * z)
    _likelihood(A, y, w, beta, sigma_scale)


def _half_t(name, nu, k=None):
    """Unit-scale half-t (half-Cauchy for nu = 1) sample site, (k,) or scalar."""
    # lazy: numpyro (~0.2 s to import) only for NUTS/SVI/MAP
    import numpyro
    import numpyro.distributions as dist

    shape = () if k is None else (k,)
    base = dist.HalfCauchy(jnp.ones(shape)) if nu == 1 else dist.FoldedDistribution(
        dist.StudentT(nu, jnp.zeros(shape), jnp.ones(shape)))
    return numpyro.sample(name, base.to_event(1) if k is not None else base)


def reg_horseshoe_model(A, y, w, sigma_scale=1.0, tau0=0.1, slab_scale=2.0, slab_df=4.0,
                        nu_global=1, nu_local=1):
    """Regularised (Finnish) horseshoe. Sites sigma, tau_raw, lambda (K,), caux, z (K,); tau, beta deterministic.

    tau = tau0 * sigma * tau_raw with tau_raw ~ half-t(nu_global) (the Stan
    ``scale_global * sigma`` form, non-centred); ``nu_global`` and ``nu_local``
    are static integers.
    """
    # lazy: numpyro (~0.2 s to import) only for NUTS/SVI/MAP
    import numpyro
    import numpyro.distributions as dist

    k = A.shape[1]
    sigma = numpyro.sample("sigma", dist.HalfNormal(sigma_scale))
    tau = numpyro.deterministic("tau", tau0 * sigma * _half_t("tau_raw", nu_global))
    lam = _half_t("lambda", nu_local, k)
    caux = numpyro.sample("caux", dist.InverseGamma(0.5 * slab_df, 0.5 * slab_df))
    c2 = slab_scale**2 * caux
    lam_tilde = jnp.sqrt(c2 * lam**2 / (c2 + tau**2 * lam**2))
    z = numpyro.sample("z", dist.Normal(jnp.zeros(k), 1.0).to_event(1))
    beta = numpyro.deterministic("beta", z * lam_tilde * tau)
    numpyro.sample("y", dist.Normal(A @ beta, sigma / jnp.sqrt(w)).to_event(1), obs=y)


def laplace_model(A, y, w, sigma_scale=1.0, laplace_scale=1.0):
    """Bayesian lasso: beta = b u, u_j ~ Laplace(0, 1), b ~ HalfCauchy(laplace_scale). Sites b, u (K,), sigma."""
    # lazy: numpyro (~0.2 s to import) only for NUTS/SVI/MAP
    import numpyro
    import numpyro.distributions as dist

    k = A.shape[1]
    b = numpyro.sample("b", dist.HalfCauchy(laplace_scale))
    u = numpyro.sample("u", dist.Laplace(jnp.zeros(k), 1.0).to_event(1))
    beta = numpyro.deterministic("beta", b * u)
    _likelihood(A, y, w, beta, sigma_scale)


PRIORS = {"horseshoe": horseshoe_model, "reg_horseshoe": reg_horseshoe_model, "laplace": laplace_model}


def tau0_default(p0: float, d: int, n: int) -> float:
    """Piironen & Vehtari's global scale tau0 = p0 / (D - p0) / sqrt(n)."""
    if not 0 < p0 < d:
        raise JaxiapInputError(f"p0 (prior guess of the number of nonzero coefficients) must lie in (0, {d}), "
                               f"got {p0}")
    return float(p0 / (d - p0) / np.sqrt(n))


def _standardize(A, y, w, on: bool):
    if not on:
        return np.ones(A.shape[1]), 1.0
    wn = w / w.sum()
    col = np.sqrt(wn @ A**2)
    if (col == 0).any():
        raise JaxiapInputError(f"design columns {np.flatnonzero(col == 0).tolist()} are all zero; drop them "
                               "(e.g. a radial basis function beyond every pair distance)")
    ys = float(np.sqrt(wn @ y**2))
    return col, (ys if ys > 0 else 1.0)


def fit_sparse(
    design,
    y=None,
    w=None,
    *,
    prior: str = "horseshoe",
    method: str = "nuts",
    guide: str = "meanfield",
    key=None,
    num_warmup: int = 1000,
    n_samples: int = 1000,
    num_chains: int = 2,
    target_accept_prob: float | None = None,
    dense_mass: bool = False,
    max_tree_depth: int = 10,
    svi_steps: int = 5000,
    learning_rate: float = 1e-2,
    p0: float | None = None,
    slab_scale: float = 2.0,
    slab_df: float = 4.0,
    tau_scale: float = 1.0,
    laplace_scale: float = 1.0,
    sigma_scale: float = 1.0,
    standardize: bool = True,
    progress: bool = True,
    return_info: bool = False,
):
    """Sparse Bayesian linear regression; returns a ``SamplePosterior`` (float64).

    design: a DesignMatrix, or A (R, K) with ``y`` (R,) and optional ``w`` (R,);
    rows with w = 0 are dropped. prior "horseshoe" | "reg_horseshoe" | "laplace";
    method "nuts" (``target_accept_prob`` default 0.95 for the horseshoes,
    0.8 for Laplace) or "svi" with ``guide`` "meanfield" | "lowrank".
    With ``standardize`` the columns of A are scaled to unit weighted RMS and
    y to unit RMS before fitting (priors are in those units: ``sigma_scale``,
    ``tau_scale``, ``slab_scale``, ``laplace_scale``); draws are mapped back.
    ``p0`` (reg_horseshoe): prior guess of the number of nonzeros, default
    max(1, K // 4); tau0 = p0 / (K - p0) / sqrt(N).
    ``n_samples``: draws per chain for NUTS (numpyro's ``num_samples``; the
    posterior holds ``num_chains`` x ``n_samples``; ``num_warmup`` and
    ``num_chains`` keep numpyro's names), draws from the fitted guide for SVI.
    ``key`` (keyword-only) is required.

    Returns SamplePosterior(beta draws (S, K), noise_var = E[sigma^2]); with
    ``return_info`` also the NUTSResult / SVIResult (diagnostics, divergences).
    """
    if prior not in PRIORS:
        raise JaxiapInputError(f"prior must be one of {tuple(PRIORS)}, got {prior!r}")
    if method not in ("nuts", "svi"):
        raise JaxiapInputError(f"method must be 'nuts' or 'svi', got {method!r}")
    if key is None:
        raise JaxiapInputError("fit_sparse needs a jax.random key, e.g. key=jax.random.key(0)")
    A, yv, wv = design_arrays(design, y, w, name="fit_sparse")
    n, k = A.shape
    col, ys = _standardize(A, yv, wv, standardize)
    As, ysd = A / col, yv / ys
    args = tuple(jnp.asarray(v) for v in (As, ysd, wv))
    kwargs = dict(sigma_scale=float(sigma_scale))
    if prior == "horseshoe":
        kwargs["tau_scale"] = float(tau_scale)
    elif prior == "reg_horseshoe":
        p0 = max(1, k // 4) if p0 is None else p0
        kwargs.update(tau0=tau0_default(p0, k, n), slab_scale=float(slab_scale), slab_df=float(slab_df))
    else:
        kwargs["laplace_scale"] = float(laplace_scale)
    model = PRIORS[prior]
    if method == "nuts":
        tap = target_accept_prob if target_accept_prob is not None else (0.8 if prior == "laplace" else 0.95)
        res = run_nuts(model, key, *args, num_warmup=num_warmup, num_samples=n_samples,
                       num_chains=num_chains, target_accept_prob=tap, progress=progress, dense_mass=dense_mass,
                       max_tree_depth=max_tree_depth, **kwargs)
    else:
        res = run_svi(model, key, *args, guide_kind=guide, num_steps=svi_steps, learning_rate=learning_rate,
                      num_samples=n_samples, progress=progress, **kwargs)
    beta = np.asarray(res.samples["beta"]) * ys / col
    noise_var = float(np.mean(np.asarray(res.samples["sigma"]) ** 2)) * ys**2
    post = SamplePosterior(jnp.asarray(beta), noise_var, kind=f"{prior}_{method}")
    return (post, res) if return_info else post
