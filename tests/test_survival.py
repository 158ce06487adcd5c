"""Tests for jaxiap.uq.survival: Kaplan-Meier, censored-exponential MLE, KS test, FRT summaries."""

import math

import numpy as np
import pytest
from scipy import stats

from jaxiap.errors import JaxiapInputError
from jaxiap.uq import survival


def test_kaplan_meier_ties_and_censoring():
    # sorted: 1e 2e 2c 3e 4e 4e 5c 6c   (e = event, c = censored); given shuffled
    times = [4, 2, 6, 1, 4, 3, 2, 5]
    events = [1, 0, 0, 1, 1, 1, 1, 0]
    t, s = survival.kaplan_meier(times, events)
    # t=1: n=8, d=1 -> 7/8
    # t=2: n=7 (the run censored at 2 is still at risk), d=1 -> 7/8 * 6/7 = 3/4
    # t=3: n=5, d=1 -> 3/4 * 4/5 = 3/5
    # t=4: n=4, d=2 -> 3/5 * 2/4 = 3/10
    np.testing.assert_allclose(t, [0, 1, 2, 3, 4])
    np.testing.assert_allclose(s, [1, 7 / 8, 3 / 4, 3 / 5, 3 / 10], rtol=1e-14)
    assert survival.km_median(times, events) == 4.0
    # S = 1/2 exactly at an event time counts as the median: 1e 2e 3c 4c -> S(2) = 1/2
    assert survival.km_median([1, 2, 3, 4], [1, 1, 0, 0]) == 2.0
    # never reaches 1/2: 1e then 5 censored -> S = 5/6
    assert survival.km_median([1, 9, 9, 9, 9, 9], [1, 0, 0, 0, 0, 0]) == math.inf
    t, s = survival.kaplan_meier([3.0, 4.0], [0, 0])
    np.testing.assert_allclose(t, [0.0])
    np.testing.assert_allclose(s, [1.0])
    with pytest.raises(JaxiapInputError):
        survival.kaplan_meier([1.0, np.nan], [1, 1])


def test_censored_exponential_mle_hand_values():
    r = survival.censored_exponential_mle([1, 2, 3, 10, 10], [1, 1, 1, 0, 0])
    assert r["n_events"] == 3 and r["total_time"] == 26.0
    assert r["mean"] == pytest.approx(26 / 3, rel=1e-14)
    # Garwood interval: 2T/chi2_{0.975}(2d+2) .. 2T/chi2_{0.025}(2d), d = 3, T = 26
    assert r["ci_low"] == pytest.approx(52 / stats.chi2.ppf(0.975, 8), rel=1e-12)
    assert r["ci_high"] == pytest.approx(52 / stats.chi2.ppf(0.025, 6), rel=1e-12)
    # independent numbers: chi2_{0.975}(8) = 17.5345, chi2_{0.025}(6) = 1.23734
    assert r["ci_low"] == pytest.approx(52 / 17.5345, rel=1e-5)
    assert r["ci_high"] == pytest.approx(52 / 1.237344, rel=1e-5)
    # level changes the interval
    r90 = survival.censored_exponential_mle([1, 2, 3, 10, 10], [1, 1, 1, 0, 0], level=0.9)
    assert r["ci_low"] < r90["ci_low"] < r90["mean"] < r90["ci_high"] < r["ci_high"]

    # d = 0: chi2 with 2 dof has ppf(p) = -2 ln(1 - p), so ci_low = T / ln(40) at 95%
    r0 = survival.censored_exponential_mle([5.0, 5.0], [0, 0])
    assert r0["mean"] == math.inf and r0["ci_high"] == math.inf and r0["n_events"] == 0
    assert r0["ci_low"] == pytest.approx(10 / math.log(40), rel=1e-12)


def test_censored_exponential_mle_large_sample_and_coverage():
    rng = np.random.default_rng(7)
    mean_true, t_max = 5.0, 8.0
    x = rng.exponential(mean_true, size=2000)
    r = survival.censored_exponential_mle(np.minimum(x, t_max), x <= t_max)
    assert r["ci_low"] < mean_true < r["ci_high"]
    assert r["mean"] == pytest.approx(mean_true, rel=0.08)
    assert r["ci_high"] / r["ci_low"] < 1.3  # ~ +-2/sqrt(1600 events)
    # coverage of the 95% interval over 400 small censored experiments
    hits = 0
    for _ in range(400):
        x = rng.exponential(mean_true, size=16)
        r = survival.censored_exponential_mle(np.minimum(x, t_max), x <= t_max)
        hits += r["ci_low"] <= mean_true <= r["ci_high"]
    assert 0.92 <= hits / 400 <= 0.995


def test_ks_two_sample():
    # fully separated samples of size 3: D = 1, exact p = 2 / C(6, 3) = 0.1
    d, p = survival.ks_two_sample([1.0, 2.0, 3.0], [4.0, 5.0, 6.0])
    assert d == 1.0
    assert p == pytest.approx(0.1, rel=1e-12)
    d, _ = survival.ks_two_sample([1.0, 2.0, 3.0, 4.0], [3.5, 4.5])
    assert d == pytest.approx(0.75)  # at t in [3, 3.5): F_a = 3/4, F_b = 0


def test_summarize_frt():
    assert (survival.CENSORED, survival.EVENT, survival.EVAPORATED, survival.FAILED) == (0, 1, 2, 3)
    times = [1.0, 2.0, 3.0, 10.0, 10.0, np.nan]
    codes = [1, 1, 1, 0, 2, 3]
    s = survival.summarize_frt(times, codes)
    assert (s["n_runs"], s["n_events"], s["n_censored"], s["n_evaporated"], s["n_failed"]) == (6, 3, 1, 1, 1)
    assert s["frt_mean"] == pytest.approx(26 / 3)
    lo, hi = s["frt_mean_ci95"]
    assert lo == pytest.approx(52 / stats.chi2.ppf(0.975, 8)) and hi == pytest.approx(52 / stats.chi2.ppf(0.025, 6))
    # KM over the 5 kept runs: S(1) = 4/5, S(2) = 3/5, S(3) = 2/5 -> median 3
    assert s["frt_median"] == 3.0
    assert s["frt_sample_mean_events"] == pytest.approx(2.0)
    with pytest.raises(JaxiapInputError, match="codes"):
        survival.summarize_frt([1.0], [7])
