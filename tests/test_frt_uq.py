"""FRT statistics over (coefficient sample) x (seed) grids (jaxiap.uq.frt) and the LJ13 attempts helpers."""

import math

import numpy as np
import pytest

import jaxiap  # noqa: F401
from jaxiap.errors import JaxiapInputError
from jaxiap.uq.frt import log_mean_frt, per_sample_frt, survival_band, variance_split
from jaxiap.uq.survival import CENSORED, EVENT, FAILED, censored_exponential_mle, kaplan_meier
from jaxiap.workflows.lj13_attempts import frt_pce, parse_attempts, posterior_germ


def exponential_grid(rng, means, R, t_censor):
    """(M, R) times ~ Exp(mean_m), censored at t_censor, with codes."""
    t = rng.exponential(np.asarray(means)[:, None], size=(len(means), R))
    code = np.where(t < t_censor, EVENT, CENSORED)
    return np.minimum(t, t_censor), code


def test_variance_split_recovers_thermal_and_parametric_parts():
    """Exp(mu_m) times, mu_m spread: thermal = mean mu^2, parametric = var mu (no censoring in effect).

    Averaged over 20 replications, each estimate is within 3 standard errors of the truth.
    """
    rng = np.random.default_rng(0)
    mu = np.exp(rng.normal(np.log(10.0), 0.5, size=40))
    thermal_true, param_true = np.mean(mu**2), np.var(mu, ddof=1)
    est = np.array([[variance_split(*exponential_grid(rng, mu, 50, 1e9), t_censor=1e9)[k]
                     for k in ("thermal", "parametric")] for _ in range(20)])
    m, se = est.mean(0), est.std(0, ddof=1) / math.sqrt(len(est))
    assert abs(m[0] - thermal_true) < 3 * se[0]
    assert abs(m[1] - param_true) < 3 * se[1] + 0.02 * param_true
    # the plain variance of per-sample means is biased up by thermal / R; the estimator removes it
    raw = variance_split(*exponential_grid(rng, np.full(40, 10.0), 50, 1e9), t_censor=1e9)
    assert raw["parametric_raw"] > 0.5 * 100.0 / 50
    assert raw["parametric"] < 0.5 * raw["parametric_raw"]


def test_variance_split_single_sample_is_all_thermal_and_failed_runs_are_dropped():
    t = np.array([[1.0, 2.0, 3.0, 50.0]])
    code = np.array([[EVENT, EVENT, EVENT, FAILED]])
    s = variance_split(t, code, t_censor=10.0)
    assert s["parametric"] == 0.0 and s["thermal_fraction"] == 1.0
    assert s["thermal"] == pytest.approx(np.var([1.0, 2.0, 3.0], ddof=1))
    with pytest.raises(JaxiapInputError, match="codes"):
        variance_split(t, np.array([[7, 1, 1, 1]]), 10.0)
    with pytest.raises(JaxiapInputError, match="M samples, R seeds"):
        variance_split(t[0], code[0], 10.0)


def test_per_sample_and_log_mean_match_the_censored_mle():
    rng = np.random.default_rng(1)
    t, c = exponential_grid(rng, [5.0, 20.0, 80.0], 30, 40.0)
    p = per_sample_frt(t, c)
    for m in range(3):
        ref = censored_exponential_mle(t[m], c[m] == EVENT)
        assert p["mean"][m] == pytest.approx(ref["mean"]) and p["ci_high"][m] == pytest.approx(ref["ci_high"])
    lm = log_mean_frt(t, c)
    np.testing.assert_allclose(lm["log_mean"], np.log(p["mean"]))
    np.testing.assert_allclose(lm["noise_var"], 1.0 / p["n_events"])
    assert lm["between"] == pytest.approx(np.var(np.log(p["mean"]), ddof=1))


def test_survival_band_of_identical_samples_is_their_km_curve():
    rng = np.random.default_rng(2)
    t, c = exponential_grid(rng, [10.0], 25, 30.0)
    grid = np.linspace(0, 30, 61)
    band = survival_band(np.repeat(t, 3, 0), np.repeat(c, 3, 0), grid)
    tg, s = kaplan_meier(t[0], c[0] == EVENT)
    ref = s[np.searchsorted(tg, grid, side="right") - 1]
    for row in band:
        np.testing.assert_allclose(row, ref)


def test_posterior_germ_whitens_and_pce_recovers_a_linear_log_rate():
    rng = np.random.default_rng(3)
    cov = np.array([[2.0, 0.6], [0.6, 0.5]])
    ref = rng.multivariate_normal([1.0, -1.0], cov, size=20000)
    xi = posterior_germ(ref[:200], ref)
    assert xi.shape == (200, 2)
    np.testing.assert_allclose(np.cov(posterior_germ(ref, ref), rowvar=False), np.eye(2), atol=1e-10)
    q = 0.3 + 0.5 * xi[:, 0] - 0.2 * xi[:, 1]
    out = frt_pce(xi, q, np.zeros(200), degree=1)
    assert out["validation_error"] < 1e-10
    assert out["std_log_frt"] == pytest.approx(math.hypot(0.5, 0.2))
    np.testing.assert_allclose(out["sobol_first"], [0.25 / 0.29, 0.04 / 0.29])


def test_parse_attempts():
    assert parse_attempts("mle, posterior") == ("mle", "posterior")
    assert parse_attempts("none") == ()
    with pytest.raises(JaxiapInputError, match="unknown"):
        parse_attempts("mle,bogus")
