"""NUTS / SVI wrappers: analytic Gaussian posteriors, simulation-based calibration, diagnostics."""

import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import jaxiap  # noqa: F401  (float64)
from jaxiap.errors import JaxiapInputError
from jaxiap.inference.mcmc import (
    NUTSResult,
    design_arrays,
    nuts_cache_info,
    run_nuts,
    run_svi,
    summarize_chains,
    to_arviz,
)
from jaxiap.inference.posterior import GaussianPosterior

SIGMA = 0.5
PRIOR_SCALE = 10.0


def linreg(A, y, sigma, prior_scale):
    """c ~ N(0, prior_scale^2 I), y ~ N(A c, sigma^2 I)."""
    import numpyro
    import numpyro.distributions as dist

    c = numpyro.sample("c", dist.Normal(jnp.zeros(A.shape[1]), prior_scale).to_event(1))
    numpyro.sample("y", dist.Normal(A @ c, sigma).to_event(1), obs=y)


def analytic(A, y, sigma, prior_scale):
    P = A.T @ A / sigma**2 + np.eye(A.shape[1]) / prior_scale**2
    cov = np.linalg.inv(P)
    return cov @ A.T @ y / sigma**2, cov, P


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(3)
    x = rng.uniform(-1, 1, 40)
    A = np.stack([np.ones_like(x), x, x + 0.3 * x**2], axis=1)  # correlated columns
    y = A @ np.array([0.5, -1.0, 2.0]) + SIGMA * rng.normal(size=40)
    return A, y


@pytest.fixture(scope="module")
def nuts_gauss(problem):
    A, y = problem
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return run_nuts(linreg, jax.random.key(0), jnp.asarray(A), jnp.asarray(y), SIGMA, PRIOR_SCALE,
                        num_warmup=500, num_samples=1000, num_chains=2, progress=False)


def test_nuts_recovers_analytic_gaussian_posterior(problem, nuts_gauss):
    from numpyro.diagnostics import effective_sample_size

    A, y = problem
    mn, cov, _ = analytic(A, y, SIGMA, PRIOR_SCALE)
    res = nuts_gauss
    draws = res.samples["c"]
    assert draws.shape == (2000, 3) and res.chains["c"].shape == (2, 1000, 3)
    ess = effective_sample_size(res.chains["c"])  # per coefficient
    assert (ess > 200).all(), ess
    sd = np.sqrt(np.diag(cov))
    # Monte Carlo standard error of the mean is sd / sqrt(ESS)
    z = (draws.mean(0) - mn) / (sd / np.sqrt(ess))
    assert np.all(np.abs(z) < 4.0), z
    # the posterior is strongly correlated: a mean-field answer would fail this
    corr = cov / np.outer(sd, sd)
    assert abs(corr[1, 2]) > 0.8
    emp = np.cov(draws, rowvar=False)
    np.testing.assert_allclose(np.sqrt(np.diag(emp)), sd, rtol=4 * np.sqrt(0.5 / ess.min()))
    emp_corr = emp / np.outer(np.sqrt(np.diag(emp)), np.sqrt(np.diag(emp)))
    # the standard error of a sample correlation is ~ (1 - rho^2) / sqrt(ESS), element by element
    np.testing.assert_array_less(np.abs(emp_corr - corr), 4 * (1 - corr**2) / np.sqrt(ess.min()) + 0.01)


def test_nuts_diagnostics_reported(nuts_gauss):
    d = nuts_gauss.diagnostics
    assert set(d) >= {"r_hat", "ess", "n_divergent", "wall_time", "num_steps"}
    assert d["n_divergent"] == 0
    assert 1.0 - 0.01 < d["r_hat"]["c"] < 1.02
    assert d["ess"]["c"] == pytest.approx(nuts_gauss.min_ess)
    assert 200 < d["ess"]["c"] < 5000
    assert d["num_steps"] == int(nuts_gauss.extra["num_steps"].sum()) > 2000
    assert d["wall_time"] > 0


def test_nuts_with_given_inverse_mass_matrix_matches_closed_form(problem):
    """The analytic posterior covariance as inverse mass matrix, no mass adaptation, a short warmup that
    tunes only a pooled step size: mean and covariance within Monte Carlo error of the closed form."""
    A, y = problem
    mn, cov, _ = analytic(A, y, SIGMA, PRIOR_SCALE)
    sd = np.sqrt(np.diag(cov))
    args = (jnp.asarray(A), jnp.asarray(y), SIGMA, PRIOR_SCALE)
    opts = dict(num_warmup=100, num_samples=1000, num_chains=2, progress=False, adapt_mass_matrix=False,
                pool_step_size=True)
    res = run_nuts(linreg, jax.random.key(7), *args, inverse_mass_matrix=cov, **opts)
    d = res.diagnostics
    assert d["n_divergent"] == 0 and res.max_rhat < 1.01
    np.testing.assert_allclose(d["inverse_mass_matrix"], np.broadcast_to(cov, (2, 3, 3)), rtol=1e-12)  # not adapted
    assert d["step_size"].shape == (2,) and d["step_size"][0] == d["step_size"][1]  # pooled over the chains
    assert d["num_steps_warmup"] > 0 and d["num_steps"] == int(res.extra["num_steps"].sum())
    draws = res.samples["c"]
    ess = min(res.min_ess, len(draws))  # antithetic draws can have ESS > N; do not let that shrink the bounds
    z = (draws.mean(0) - mn) / (sd / np.sqrt(ess))
    assert np.all(np.abs(z) < 4.0), z
    emp = np.cov(draws, rowvar=False)
    np.testing.assert_allclose(np.sqrt(np.diag(emp)), sd, rtol=4 * np.sqrt(0.5 / ess))
    corr = cov / np.outer(sd, sd)
    emp_corr = emp / np.outer(np.sqrt(np.diag(emp)), np.sqrt(np.diag(emp)))
    np.testing.assert_array_less(np.abs(emp_corr - corr), 4 * (1 - corr**2) / np.sqrt(ess) + 0.01)
    # a Posterior's covariance() is taken as the matrix, through the same compiled program
    post = GaussianPosterior(jnp.asarray(mn), jnp.asarray(np.linalg.cholesky(cov)), jnp.asarray(SIGMA**2))
    n_compiled = nuts_cache_info()["compilations"]
    again = run_nuts(linreg, jax.random.key(8), *args, inverse_mass_matrix=post, **opts)
    assert nuts_cache_info()["compilations"] == n_compiled and not again.diagnostics["compiled"]
    np.testing.assert_allclose(again.diagnostics["inverse_mass_matrix"][0], cov, rtol=1e-10)
    z = (again.samples["c"].mean(0) - mn) / (sd / np.sqrt(min(again.min_ess, len(draws))))
    assert np.all(np.abs(z) < 4.0), z


def test_nuts_second_call_with_the_same_shapes_does_not_recompile(problem):
    A, y = problem
    opts = dict(num_warmup=50, num_samples=100, num_chains=2, progress=False, warn=False)
    first = run_nuts(linreg, jax.random.key(0), jnp.asarray(A), jnp.asarray(y), SIGMA, PRIOR_SCALE,
                     init_params={"c": np.zeros(3)}, **opts)
    n_compiled = nuts_cache_info()["compilations"]
    # new data values, key and start values: the same program runs (no trace, no compile)
    second = run_nuts(linreg, jax.random.key(1), jnp.asarray(A) * 1.1, jnp.asarray(y) + 0.5, SIGMA, PRIOR_SCALE,
                      init_params={"c": np.ones(3)}, **opts)
    assert nuts_cache_info()["compilations"] == n_compiled
    assert not second.diagnostics["compiled"] and second.diagnostics["compile_time"] == 0.0
    assert not np.allclose(first.samples["c"].mean(0), second.samples["c"].mean(0))
    # a different shape compiles a new program
    third = run_nuts(linreg, jax.random.key(0), jnp.asarray(A[:30]), jnp.asarray(y[:30]), SIGMA, PRIOR_SCALE,
                     init_params={"c": np.zeros(3)}, **opts)
    assert nuts_cache_info()["compilations"] == n_compiled + 1
    assert third.diagnostics["compiled"] and third.diagnostics["compile_time"] > 0


def test_nuts_rejects_bad_inverse_mass_matrix(problem):
    A, y = problem
    args = (jnp.asarray(A), jnp.asarray(y), SIGMA, PRIOR_SCALE)
    for bad, match in ((np.ones((3, 2)), "shape"), (-np.eye(3), "positive definite"),
                       (np.array([[1.0, 2.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]), "symmetric"),
                       (np.array([1.0, np.nan, 1.0]), "NaN"), (np.array([1.0, 0.0, 1.0]), "> 0")):
        with pytest.raises(JaxiapInputError, match=match):
            run_nuts(linreg, jax.random.key(0), *args, inverse_mass_matrix=bad, progress=False)
    with pytest.raises(JaxiapInputError, match="dense_mass"):
        run_nuts(linreg, jax.random.key(0), *args, inverse_mass_matrix=np.eye(3), dense_mass=False, progress=False)
    with pytest.raises(JaxiapInputError, match="chain_method"):
        run_nuts(linreg, jax.random.key(0), *args, chain_method="pmap", progress=False)
    small = dict(num_warmup=1, num_samples=4, progress=False, warn=False)
    with pytest.raises(JaxiapInputError, match="must match the model's unconstrained latent values"):
        run_nuts(linreg, jax.random.key(0), *args, inverse_mass_matrix=np.eye(2), **small)
    with pytest.raises(JaxiapInputError, match="non-finite log density"):
        run_nuts(linreg, jax.random.key(0), *args, init_params={"c": np.array([np.nan, 0.0, 0.0])}, **small)


_PARALLEL_SCRIPT = """
import json, sys
import jax, jax.numpy as jnp, numpy as np
sys.path.insert(0, {tests!r})
import jaxiap
from jaxiap.inference.mcmc import run_nuts
from test_mcmc import SIGMA, PRIOR_SCALE, analytic, linreg
rng = np.random.default_rng(3)
A = rng.normal(size=(30, 3)); y = A @ np.array([0.5, -1.0, 2.0]) + SIGMA * rng.normal(size=30)
_, cov, _ = analytic(A, y, SIGMA, PRIOR_SCALE)
out = {{}}
for method in ("parallel", "vectorized"):
    r = run_nuts(linreg, jax.random.key(4), jnp.asarray(A), jnp.asarray(y), SIGMA, PRIOR_SCALE, num_warmup=60,
                 num_samples=60, num_chains=2, chain_method=method, progress=False, warn=False,
                 inverse_mass_matrix=cov, adapt_mass_matrix=False, pool_step_size=True)
    out[method] = dict(c=r.chains["c"].tolist(), eps=r.diagnostics["step_size"].tolist())
print(json.dumps(dict(devices=len(jax.devices()), **out)))
"""


@pytest.mark.slow  # CI budget (2026-11-30): runs with -m slow; a cheaper default-run test covers the same code path
def test_parallel_chains_on_two_devices_equal_vectorized():
    """chain_method="parallel" (a shard_map over one device per chain, the step size pooled across
    devices) gives the draws of the vectorised chains."""
    import json
    import os
    import subprocess

    tests = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", _PARALLEL_SCRIPT.format(tests=tests)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["devices"] == 2
    par, vec = res["parallel"], res["vectorized"]
    assert par["eps"][0] == par["eps"][1] and np.allclose(par["eps"], vec["eps"], rtol=1e-12)
    np.testing.assert_allclose(par["c"], vec["c"], rtol=1e-9, atol=1e-12)


def funnel(dim=8):
    import numpyro
    import numpyro.distributions as dist

    v = numpyro.sample("v", dist.Normal(0.0, 3.0))
    numpyro.sample("x", dist.Normal(jnp.zeros(dim), jnp.exp(v / 2)).to_event(1))


def test_bad_run_warns_naming_sites():
    """20 warmup steps on Neal's funnel: divergences and/or R-hat > 1.01 must raise one warning line."""
    with pytest.warns(UserWarning, match="NUTS did not converge cleanly") as rec:
        res = run_nuts(funnel, jax.random.key(1), num_warmup=20, num_samples=100, num_chains=2, progress=False,
                       max_tree_depth=6)
    d = res.diagnostics
    msg = str(rec[0].message)
    assert "\n" not in msg
    bad = sorted(k for k, v in d["r_hat"].items() if v > 1.01)
    assert d["n_divergent"] > 0 or bad
    if d["n_divergent"]:
        assert f"{d['n_divergent']} divergent" in msg
    for site in bad:
        assert f"{site} (" in msg
    assert set(d["r_hat"]) == {"v", "x"}


def test_summarize_chains_detects_disagreeing_chains(rng):
    good = rng.normal(size=(2, 500))
    bad = np.stack([rng.normal(size=500), 1.0 + rng.normal(size=500)])
    r, ess = summarize_chains({"good": good, "bad": bad, "const": np.ones((2, 500))})
    assert r["good"] < 1.01 and r["bad"] > 1.1
    assert "const" not in r
    assert 700 < ess["good"] < 1300


# ------------------------------------------------------------------------------------------
# simulation-based calibration


def linreg_batch(A, Y, sigma):
    """L independent replications of a proper-prior Gaussian model: c_l ~ N(0, I), Y_l ~ N(A c_l, sigma^2)."""
    import numpyro
    import numpyro.distributions as dist

    n_rep, k = Y.shape[0], A.shape[1]
    c = numpyro.sample("c", dist.Normal(jnp.zeros((n_rep, k)), 1.0).to_event(2))
    numpyro.sample("Y", dist.Normal(c @ A.T, sigma).to_event(2), obs=Y)


def _rank_pvalue(draws, theta, n_bins=10):
    """Chi-square p-value for uniform SBC ranks. draws (M, L, K) with M + 1 a multiple of n_bins."""
    ranks = np.sum(draws < theta[None], axis=0).ravel()  # in 0..M
    m = draws.shape[0]
    counts = np.bincount(ranks * n_bins // (m + 1), minlength=n_bins)
    return stats.chisquare(counts).pvalue, counts


def test_simulation_based_calibration():
    """Talts et al. SBC: draw theta from the prior, data from the model, rank theta among
    posterior draws; ranks must be uniform. 100 replications are sampled by one NUTS run
    on the product model (its posterior factorises over replications)."""
    rng = np.random.default_rng(11)
    n_rep, n, k, sigma = 100, 8, 2, 0.5
    x = np.linspace(-1, 1, n)
    A = np.stack([np.ones(n), x + 0.5 * x**2], axis=1)
    theta = rng.normal(size=(n_rep, k))
    Y = theta @ A.T + sigma * rng.normal(size=(n_rep, n))
    res = run_nuts(linreg_batch, jax.random.key(5), jnp.asarray(A), jnp.asarray(Y), sigma,
                   num_warmup=300, num_samples=990, num_chains=1, progress=False, warn=False)
    draws = res.samples["c"][::10]  # 99 draws, thinned against autocorrelation
    assert draws.shape == (99, n_rep, k)
    p, counts = _rank_pvalue(draws, theta)
    print("SBC rank counts", counts, "p =", p)
    assert p > 0.01, counts
    # power check: an overconfident posterior (draws shrunk toward their mean) must fail
    centre = draws.mean(0, keepdims=True)
    p_bad, counts_bad = _rank_pvalue(centre + 0.5 * (draws - centre), theta)
    assert p_bad < 1e-3, counts_bad
    # and a biased one (the prior mean ignored: draws shifted by half a posterior sd)
    p_shift, _ = _rank_pvalue(draws + 0.5 * draws.std(0, keepdims=True), theta)
    assert p_shift < 1e-3


# ------------------------------------------------------------------------------------------
# SVI


@pytest.mark.parametrize("kind", ["meanfield", "lowrank"])
def test_svi_gaussian_guides(kind):
    import optax

    rng = np.random.default_rng(3)
    x = rng.uniform(-1, 1, 40)
    A = np.stack([np.ones_like(x), x, x + 1.5 * x**2], axis=1)  # posterior correlations ~0.6-0.75
    y = A @ np.array([0.5, -1.0, 2.0]) + SIGMA * rng.normal(size=40)
    mn, cov, P = analytic(A, y, SIGMA, PRIOR_SCALE)
    steps = 2000
    res = run_svi(linreg, jax.random.key(3), jnp.asarray(A), jnp.asarray(y), SIGMA, PRIOR_SCALE,
                  guide_kind=kind, num_steps=steps, num_samples=4000, progress=False,
                  optimizer=optax.adam(optax.cosine_decay_schedule(0.05, steps, 0.01)))
    draws = res.samples["c"]
    sd = np.sqrt(np.diag(cov))
    assert res.losses.shape == (steps,) and np.isfinite(res.diagnostics["final_loss"])
    np.testing.assert_allclose(draws.mean(0), mn, atol=0.1 * sd.min())
    got = draws.std(0)
    if kind == "meanfield":
        # the KL(q||p)-optimal factorised Gaussian has variances 1 / diag(precision) ...
        np.testing.assert_allclose(got, 1 / np.sqrt(np.diag(P)), rtol=0.12)
        assert (got < 0.8 * sd).all()  # ... so it is overconfident for correlated coefficients
    else:
        np.testing.assert_allclose(got, sd, rtol=0.1)


# ------------------------------------------------------------------------------------------
# adapters


def test_design_arrays_drops_zero_weight_rows_and_checks_input():
    A = np.arange(12.0).reshape(4, 3)
    y = np.arange(4.0)
    a, b, w = design_arrays(A, y, np.array([1.0, 0.0, 2.0, 1.0]))
    assert a.shape == (3, 3) and list(b) == [0.0, 2.0, 3.0] and list(w) == [1.0, 2.0, 1.0]
    from jaxiap.errors import JaxiapInputError

    with pytest.raises(JaxiapInputError, match="NaN"):
        design_arrays(A, np.array([0.0, np.nan, 1.0, 2.0]))
    with pytest.raises(JaxiapInputError, match="zero weight"):
        design_arrays(A, y, np.zeros(4))
    with pytest.raises(JaxiapInputError, match="shapes"):
        design_arrays(A, y[:3])


def test_to_arviz(nuts_gauss, monkeypatch):
    import arviz  # a test extra: the conversion is always tested

    idata = to_arviz(nuts_gauss)
    assert isinstance(idata, arviz.InferenceData)
    assert idata.posterior["c"].shape == (2, 1000, 3)
    # the draws are the chains, in order, and arviz's diagnostics agree with ours
    np.testing.assert_array_equal(np.asarray(idata.posterior["c"]), np.asarray(nuts_gauss.chains["c"]))
    assert int(idata.sample_stats["diverging"].sum()) == nuts_gauss.diagnostics["n_divergent"]
    np.testing.assert_allclose(arviz.rhat(idata)["c"].values.max(), nuts_gauss.diagnostics["r_hat"]["c"], rtol=1e-2)
    monkeypatch.setitem(sys.modules, "arviz", None)
    with pytest.raises(ImportError, match="pip install arviz"):
        to_arviz(nuts_gauss)
    assert isinstance(nuts_gauss, NUTSResult)
