"""Bayesian linear regression, NIG, evidence, type-II ML and model selection (float64).

References are independent: dense numpy / scipy formulas, numerical
integration over the coefficients (and the noise variance), and sampling.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, stats

from jaxiap.errors import JaxiapInputError, SingularSystemError
from jaxiap.inference.linear import (
    fit_blr,
    fit_lstsq,
    fit_nig,
    log_evidence_blr,
    log_evidence_nig,
    normal_equations,
    optimize_hyperparameters,
    select_by_evidence,
)
from jaxiap.inference.posterior import StudentTPosterior, load_posterior
from jaxiap.potentials.linear import ENERGY_ROW, FORCE_ROW, DesignMatrix


def make_design(A, y, w=None, kind=None) -> DesignMatrix:
    A = np.asarray(A, float)
    r = A.shape[0]
    w = np.ones(r) if w is None else np.asarray(w, float)
    kind = np.full(r, ENERGY_ROW) if kind is None else np.asarray(kind)
    return DesignMatrix(jnp.asarray(A), jnp.asarray(y, float), jnp.asarray(w), jnp.asarray(kind),
                        jnp.arange(r), jnp.ones(r))


@pytest.fixture(scope="module")
def synth():
    """R = 30 rows, K = 3, mixed kinds, non-uniform weights with two zero-weight rows."""
    rng = np.random.default_rng(1)
    A = rng.normal(size=(30, 3))
    c = np.array([0.7, -1.2, 0.4])
    kind = np.where(np.arange(30) < 10, ENERGY_ROW, FORCE_ROW)
    w = rng.uniform(0.5, 2.0, 30)
    w[[3, 17]] = 0.0
    y = A @ c + 0.3 * rng.normal(size=30) / np.sqrt(np.where(w > 0, w, 1))
    P0 = np.array([[2.0, 0.3, 0.0], [0.3, 1.0, 0.2], [0.0, 0.2, 0.5]])
    m0 = np.array([0.1, -0.2, 0.3])
    return make_design(A, y, w, kind), P0, m0


def test_blr_posterior_equals_numpy(synth):
    dm, P0, m0 = synth
    A, y, w = (np.asarray(v) for v in dm[:3])
    nv = 0.3
    post = fit_blr(dm, prior_precision=P0, prior_mean=m0, noise_var=nv)
    Sn = np.linalg.inv(P0 + A.T @ (w[:, None] * A) / nv)
    mn = Sn @ (P0 @ m0 + A.T @ (w * y) / nv)
    np.testing.assert_allclose(post.mean, mn, rtol=1e-12)
    np.testing.assert_allclose(post.cov, Sn, rtol=1e-12)
    rows = [0, 1, 2, 4]  # (row 3 has weight 0)
    pred = post.predict(A[rows], row_weight=w[rows])
    np.testing.assert_allclose(pred.std**2, np.einsum("rk,kl,rl->r", A[rows], Sn, A[rows]), rtol=1e-12)
    np.testing.assert_allclose(pred.std_predictive**2, pred.std**2 + nv / w[rows], rtol=1e-12)
    # diagonal prior given as (K,) and from the statistics: same numbers
    d = np.array([1.0, 2.0, 3.0])
    a, b = fit_blr(dm, d, noise_var=nv), fit_blr(normal_equations(dm), np.diag(d), noise_var=nv)
    np.testing.assert_allclose(a.mean, b.mean, rtol=1e-12)
    np.testing.assert_allclose(a.cov, b.cov, rtol=1e-12)


@pytest.mark.parametrize("noise_var", [0.3, (0.5, 0.2)])
def test_known_noise_evidence_equals_dense_gaussian(synth, noise_var):
    dm, P0, m0 = synth
    A, y, w, kind = (np.asarray(v) for v in dm[:4])
    keep = w > 0
    nv = np.broadcast_to(np.asarray(noise_var), (2,))[kind[keep]]
    Ak = A[keep]
    cov = np.diag(nv / w[keep]) + Ak @ np.linalg.inv(P0) @ Ak.T
    ref = stats.multivariate_normal(Ak @ m0, cov).logpdf(y[keep])
    np.testing.assert_allclose(log_evidence_blr(dm, P0, noise_var, m0), ref, rtol=1e-11)
    np.testing.assert_allclose(log_evidence_blr(normal_equations(dm), P0, noise_var, m0), ref, rtol=1e-10)


def _log_lik(A, y, w, nv, c):
    r = y - A @ c
    return -0.5 * np.sum(w * r**2 / nv) + 0.5 * np.sum(np.log(w / (2 * np.pi * nv)))


def test_known_noise_evidence_equals_quadrature_1d():
    rng = np.random.default_rng(2)
    A = rng.normal(size=(6, 1))
    y = 1.3 * A[:, 0] + 0.5 * rng.normal(size=6)
    w, nv, p0, m0 = rng.uniform(0.5, 2, 6), 0.25, 0.5, 0.2
    lp = lambda c: _log_lik(A, y, w, nv, np.array([c])) + 0.5 * np.log(p0 / (2 * np.pi)) - 0.5 * p0 * (c - m0) ** 2
    post = fit_blr(make_design(A, y, w), p0, m0, nv)
    mu, sd = float(post.mean[0]), float(post.std[0])
    off = lp(mu)
    val, _ = integrate.quad(lambda c: np.exp(lp(c) - off), mu - 15 * sd, mu + 15 * sd, epsabs=0, epsrel=1e-12)
    np.testing.assert_allclose(log_evidence_blr(make_design(A, y, w), p0, nv, m0), np.log(val) + off, rtol=1e-9)


def test_known_noise_evidence_equals_quadrature_2d():
    rng = np.random.default_rng(3)
    A = rng.normal(size=(5, 2))
    y = A @ np.array([0.5, -1.0]) + 0.4 * rng.normal(size=5)
    w, nv = np.ones(5), 0.3
    P0, m0 = np.array([[1.0, 0.4], [0.4, 2.0]]), np.array([0.0, 0.5])
    log_norm0 = 0.5 * np.log(np.linalg.det(P0) / (2 * np.pi) ** 2)
    lp = lambda c: _log_lik(A, y, w, nv, c) + log_norm0 - 0.5 * (c - m0) @ P0 @ (c - m0)
    dm = make_design(A, y, w)
    post = fit_blr(dm, P0, m0, nv)
    mu, sd = np.asarray(post.mean), np.asarray(post.std)
    off = lp(mu)
    val, _ = integrate.dblquad(lambda c1, c0: np.exp(lp(np.array([c0, c1])) - off),
                               mu[0] - 12 * sd[0], mu[0] + 12 * sd[0],
                               mu[1] - 12 * sd[1], mu[1] + 12 * sd[1], epsabs=0, epsrel=1e-10)
    np.testing.assert_allclose(log_evidence_blr(dm, P0, nv, m0), np.log(val) + off, rtol=1e-8)


def test_nig_evidence_equals_dense_student_t(synth):
    dm, L0, mu0 = synth
    A, y, w = (np.asarray(v) for v in dm[:3])
    keep = w > 0
    a0, b0 = 3.0, 0.4
    Ak = A[keep]
    shape = (b0 / a0) * (np.diag(1 / w[keep]) + Ak @ np.linalg.inv(L0) @ Ak.T)
    ref = stats.multivariate_t(Ak @ mu0, shape, df=2 * a0).logpdf(y[keep])
    np.testing.assert_allclose(log_evidence_nig(dm, a0, b0, L0, mu0), ref, rtol=1e-11)
    np.testing.assert_allclose(log_evidence_nig(normal_equations(dm), a0, b0, L0, mu0), ref, rtol=1e-10)


def test_nig_evidence_equals_quadrature_over_c_and_noise():
    rng = np.random.default_rng(4)
    A = rng.normal(size=(5, 1))
    y = 0.8 * A[:, 0] + 0.3 * rng.normal(size=5)
    w, a0, b0, l0, mu0 = rng.uniform(0.5, 2, 5), 2.0, 0.3, 0.7, 0.1

    a, lgam = A[:, 0], math.lgamma(a0)

    def lp(c, t):  # t = log s2; log N(y | c, s2) N(c | mu0, s2/l0) IG(s2 | a0, b0) + log Jacobian (t)
        s2 = math.exp(t)
        r = y - a * c
        loglik = -0.5 * float(np.dot(w, r * r)) / s2 + 0.5 * float(np.sum(np.log(w / (2 * math.pi * s2))))
        logprior = -0.5 * l0 * (c - mu0) ** 2 / s2 - 0.5 * math.log(2 * math.pi * s2 / l0)
        logig = a0 * math.log(b0) - lgam - (a0 + 1) * t - b0 / s2
        return loglik + logprior + logig + t

    post = fit_nig(make_design(A, y, w), a0, b0, l0, mu0)
    mun, tmode = float(post.mean[0]), float(np.log(post.bn / (post.an + 1)))
    half_width = lambda t: 14 * np.sqrt(np.exp(t) / (float(post.scale_matrix[0, 0]) * post.an / post.bn))
    off = lp(mun, tmode)
    val, _ = integrate.dblquad(lambda c, t: np.exp(lp(c, t) - off), tmode - 9, tmode + 6,
                               lambda t: mun - half_width(t), lambda t: mun + half_width(t),
                               epsabs=0, epsrel=1e-9)
    np.testing.assert_allclose(log_evidence_nig(make_design(A, y, w), a0, b0, l0, mu0),
                               np.log(val) + off, rtol=1e-7)


def test_nig_student_t_marginal_matches_hierarchical_sampling():
    rng = np.random.default_rng(5)
    A = rng.normal(size=(8, 2))
    y = A @ np.array([1.0, -0.5]) + 0.5 * rng.normal(size=8)
    a0, b0, L0, mu0 = 1.5, 0.5, np.array([[1.0, 0.2], [0.2, 0.8]]), np.zeros(2)
    post = fit_nig(make_design(A, y), a0, b0, L0, mu0)
    # closed form from the formulas in docs/science.md section 9.4
    Ln = A.T @ A + L0
    mun = np.linalg.solve(Ln, A.T @ y + L0 @ mu0)
    an, bn = a0 + 4, b0 + 0.5 * (y @ y + mu0 @ L0 @ mu0 - mun @ Ln @ mun)
    np.testing.assert_allclose(post.mean, mun, rtol=1e-12)
    np.testing.assert_allclose([post.an, post.bn], [an, bn], rtol=1e-12)
    np.testing.assert_allclose(post.scale_matrix, bn / an * np.linalg.inv(Ln), rtol=1e-12)
    # hierarchical draws: s2 ~ IG(an, bn), c | s2 ~ N(mun, s2 Ln^-1)
    n = 200_000
    s2 = bn / rng.gamma(an, size=n)
    hier = mun + np.sqrt(s2)[:, None] * rng.normal(size=(n, 2)) @ np.linalg.cholesky(np.linalg.inv(Ln)).T
    draws = np.asarray(post.sample(jax.random.key(0), n))
    cov = bn / (an - 1) * np.linalg.inv(Ln)  # t covariance: scale * df / (df - 2)
    np.testing.assert_allclose(np.asarray(post.cov), cov, rtol=1e-12)
    for x in (hier, draws):
        assert (np.abs(x.mean(0) - mun) < 4 * np.sqrt(np.diag(cov) / n)).all()
        np.testing.assert_allclose(np.cov(x.T), cov, rtol=0.03, atol=0.03 * np.sqrt(np.outer(np.diag(cov), np.diag(cov))).max())
    q = np.array([0.001, 0.02, 0.1, 0.5, 0.9, 0.98, 0.999])
    t_marg = stats.t(2 * an, loc=mun[0], scale=np.sqrt(post.scale_matrix[0, 0]))
    t_q = t_marg.ppf(q)
    se = np.sqrt(q * (1 - q) / n) / t_marg.pdf(t_q)  # standard error of a sample quantile
    for x in (draws, hier):
        assert (np.abs(np.quantile(x[:, 0], q) - t_q) < 4 * se).all(), (np.quantile(x[:, 0], q), t_q)
    # a Gaussian with the same variance misses the tails by many standard errors (df = 11)
    g_q = stats.norm.ppf(q[[0, -1]], mun[0], np.sqrt(cov[0, 0]))
    assert (np.abs(g_q - t_q[[0, -1]]) > 8 * se[[0, -1]]).all()
    # predict: t std with and without the noise term
    a = np.array([[0.3, -1.1]])
    pred = post.predict(a, row_weight=np.array([2.0]))
    np.testing.assert_allclose(pred.std**2, a[0] @ cov @ a[0], rtol=1e-12)
    np.testing.assert_allclose(pred.std_predictive**2, (bn / an) * (a[0] @ np.linalg.solve(Ln, a[0]) + 0.5)
                               * 2 * an / (2 * an - 2), rtol=1e-12)
    assert abs(np.std(hier @ a[0]) / float(pred.std[0]) - 1) < 0.03


def test_flat_prior_nig_reproduces_lstsq():
    rng = np.random.default_rng(6)
    A = rng.normal(size=(25, 4))
    w = rng.uniform(0.5, 2, 25)
    y = A @ rng.normal(size=4) + 0.2 * rng.normal(size=25) / np.sqrt(w)
    dm = make_design(A, y, w)
    nig, ls = fit_nig(dm), fit_lstsq(dm)
    np.testing.assert_allclose(nig.mean, ls.mean, rtol=1e-10)
    np.testing.assert_allclose(nig.noise_scale2, ls.noise_var, rtol=1e-10)  # bn/an = sighat^2
    assert float(nig.df) == 25 - 4
    np.testing.assert_allclose(nig.scale_matrix, ls.cov, rtol=1e-9)
    np.testing.assert_allclose(nig.noise_var, ls.noise_var * 21 / 19, rtol=1e-10)  # E[s2] = bn/(an-1)


def test_student_t_save_load(synth, tmp_path):
    dm, L0, mu0 = synth
    post = fit_nig(dm, 2.0, 0.5, L0, mu0)
    post.save(tmp_path / "t.npz")
    back = load_posterior(tmp_path / "t.npz")
    assert isinstance(back, StudentTPosterior) and back.kind == "nig"
    np.testing.assert_array_equal(back.scale_factor, post.scale_factor)
    np.testing.assert_array_equal(back.mean, post.mean)
    assert float(back.df) == float(post.df) and float(back.noise_scale2) == float(post.noise_scale2)


@pytest.fixture(scope="module")
def two_noise_design():
    """3000 energy rows with sigma_E = 0.5, 3000 force rows with sigma_F = 0.1; relative weights w."""
    rng = np.random.default_rng(7)
    n, k = 3000, 5
    A = rng.normal(size=(2 * n, k))
    kind = np.repeat([ENERGY_ROW, FORCE_ROW], n)
    w = rng.uniform(0.5, 2.0, 2 * n)
    sig = np.where(kind == ENERGY_ROW, 0.5, 0.1)
    y = A @ rng.normal(size=k) + sig / np.sqrt(w) * rng.normal(size=2 * n)
    return make_design(A, y, w, kind)


def test_type2_recovers_noise_and_is_a_maximum(two_noise_design):
    dm = two_noise_design
    res = optimize_hyperparameters(dm)
    assert abs(res.sigma_energy / 0.5 - 1) < 0.03 and abs(res.sigma_force / 0.1 - 1) < 0.03, res[:3]
    assert res.grad_norm < 1e-6
    theta = np.log([res.sigma_energy, res.sigma_force, res.prior_scale])

    def ev(t):
        return log_evidence_blr(dm, np.exp(-2 * t[2]), np.exp(2 * t[:2]))

    best = ev(theta)
    np.testing.assert_allclose(best, res.log_evidence, rtol=1e-10)
    h = 1e-4  # central differences of the independent in-memory evidence
    fd = [(ev(theta + h * e) - ev(theta - h * e)) / (2 * h) for e in np.eye(3)]
    assert np.max(np.abs(fd)) < 1e-3, fd
    for d in np.array(np.meshgrid(*[[-0.05, 0, 0.05]] * 3)).reshape(3, -1).T:
        if d.any():
            assert ev(theta + d) < best
    # the returned posterior is BLR at the optimum with per-kind noise
    post = res.posterior
    np.testing.assert_allclose(post.noise_var, res.sigma_force**2)
    pred = post.predict(dm.A[:1], row_weight=res.design.w[:1])  # an energy row
    np.testing.assert_allclose(pred.std_predictive**2 - pred.std**2, res.sigma_energy**2 / dm.w[0], rtol=1e-10)


def _legendre_design(x, y, k):
    return make_design(np.polynomial.legendre.legvander(x, k - 1), y)


def test_evidence_selects_true_polynomial_order():
    rng = np.random.default_rng(8)
    x = rng.uniform(-1, 1, 60)
    y = np.polynomial.legendre.legval(x, [0.5, -1.0, 0.8, 1.2]) + 0.1 * rng.normal(size=60)
    cands = {k: _legendre_design(x, y, k) for k in range(2, 9)}
    best, table = select_by_evidence(cands)
    assert best == 4, {k: round(v["log_evidence"], 2) for k, v in table.items()}
    assert abs(table[4]["sigma_energy"] / 0.1 - 1) < 0.25
    best_nig, _ = select_by_evidence(cands, method="nig", a0=1.0, b0=0.01, L0=1.0)
    assert best_nig == 4
    best_cb, _ = select_by_evidence({k: (lambda k=k: cands[k]) for k in (2, 4)}, method="blr",
                                    prior_precision=1.0, noise_var=0.01)
    assert best_cb == 4


# --------------------------------------------------------------------------- bad input


def test_bad_inputs_raise_clear_errors(synth):
    dm, P0, _ = synth
    bad = dm._replace(A=dm.A.at[2, 1].set(jnp.nan))
    with pytest.raises(JaxiapInputError, match="design matrix A contains NaN"):
        fit_blr(bad, 1.0)
    with pytest.raises(JaxiapInputError, match="targets y contains NaN"):
        fit_nig(dm._replace(y=dm.y.at[0].set(jnp.inf)))
    for nv in (0.0, -1.0, np.nan):
        with pytest.raises(JaxiapInputError, match="noise_var must be finite and > 0"):
            fit_blr(dm, 1.0, noise_var=nv)
    for p in (0.0, -2.0, [1.0, -1.0, 1.0]):
        with pytest.raises(JaxiapInputError, match="prior_precision must be > 0"):
            fit_blr(dm, p)
    with pytest.raises(JaxiapInputError, match="not positive definite"):
        fit_blr(dm, np.diag([1.0, 1.0, -0.5]) + 0.1)
    with pytest.raises(JaxiapInputError, match="not symmetric"):
        fit_blr(dm, P0 + np.triu(np.ones((3, 3)), 1))
    with pytest.raises(JaxiapInputError, match="shape"):
        fit_blr(dm, np.eye(4))
    with pytest.raises(JaxiapInputError, match="proper prior"):
        log_evidence_blr(dm, None, 1.0)
    with pytest.raises(JaxiapInputError, match="b0 must be finite and > 0"):
        log_evidence_nig(dm, 1.0, 0.0, 1.0)
    # a duplicated column: singular with a flat prior, fine with a proper one
    dup = dm._replace(A=jnp.concatenate([dm.A, dm.A[:, :1]], axis=1))
    with pytest.raises(SingularSystemError, match="rank-deficient.*prior"):
        fit_blr(dup)
    with pytest.raises(SingularSystemError, match="rank-deficient"):
        fit_nig(dup)
    assert np.isfinite(fit_blr(dup, 1.0).mean).all()
    with pytest.raises(SingularSystemError, match="coefficients"):  # all-zero column
        fit_blr(dm._replace(A=dm.A.at[:, 2].set(0.0)))
