"""FRT statistics over a (coefficient sample) x (thermostat seed) grid, and comparisons of two FRT ensembles.

An FRT sweep gives times and outcome codes shaped (M, R): M coefficient
samples of the potential (posterior draws, subset fits, ...) times R
thermostat seeds (common random numbers across samples). The FRT variance
splits by the law of total variance,

    Var[T] = E_c[ Var[T | c] ] + Var_c[ E[T | c] ]
           =   thermal (seeds)  +  parametric (coefficients),

estimated here with the one-way random-effects (ANOVA) estimator on the
restricted time T = min(FRT, t_censor), which every run observes:

    thermal    = mean_m s_m^2                                   (within samples, ddof 1)
    parametric = max(0, var_m(mean_m T) - mean_m(s_m^2 / R_m))  (between samples, bias-corrected)

so finite R does not inflate the parametric part by the thermal noise of
each sample's mean. The same split is given for log of the per-sample mean FRT
under the censored-exponential model (its sampling variance is about 1/d_m
for d_m events), which is the scale on which a posterior moves the rate.

FAILED replicas are dropped; EVAPORATED ones enter at their evaporation time
(censored), as in :func:`jaxiap.uq.survival.summarize_frt`.

Two ensembles (e.g. the true and a fitted potential, same seeds) are compared
by :func:`compare_frt` (KS test of the pooled times) and :func:`frt_errors`
(KS distance and relative error of the mean FRT).
"""

from __future__ import annotations

import math

import numpy as np

from jaxiap.errors import JaxiapInputError
from jaxiap.uq.survival import (
    EVENT,
    FAILED,
    censored_exponential_mle,
    check_codes,
    kaplan_meier,
    ks_two_sample,
    summarize_frt,
)

__all__ = ["variance_split", "per_sample_frt", "log_mean_frt", "survival_band", "frt_samples", "compare_frt",
           "frt_errors"]


def _grid(times, codes):
    t = np.asarray(times, np.float64)
    c = np.asarray(codes)
    if t.ndim != 2 or t.shape != c.shape:
        raise JaxiapInputError(f"times {t.shape} and codes {c.shape} must both be (M samples, R seeds)")
    check_codes(c)
    return t, c, c != FAILED, c == EVENT


def variance_split(times, codes, t_censor: float) -> dict:
    """Thermal / parametric split of Var[min(FRT, t_censor)] over an (M, R) grid (tau^2).

    Returns dict(total, thermal, parametric, parametric_raw, thermal_fraction,
    parametric_fraction, mean, n_samples, n_seeds). ``total`` is thermal +
    parametric (the model's variance of one run with freshly drawn
    coefficients and seed); ``parametric_raw`` is the plain variance of the
    per-sample means. With M = 1 the parametric part is 0 by definition.
    """
    try:
        t_c = float(t_censor)
    except (TypeError, ValueError):
        t_c = math.nan
    if not (math.isfinite(t_c) and t_c > 0):
        raise JaxiapInputError(f"variance_split: t_censor={t_censor!r} must be a positive finite time (the "
                               "censoring time of the runs, e.g. FRTSettings.t_censor)")
    t, c, ok, _ = _grid(times, codes)
    T = np.minimum(t, float(t_censor))
    n = ok.sum(axis=1)
    use = n >= 2
    if not use.any():
        raise JaxiapInputError("variance_split: need at least 2 non-failed seeds for some sample")
    Tm = np.where(ok, T, 0.0)
    means = Tm.sum(1)[use] / n[use]
    s2 = np.array([np.var(T[m][ok[m]], ddof=1) for m in np.flatnonzero(use)])
    thermal = float(np.mean(s2))
    if means.size >= 2:
        raw = float(np.var(means, ddof=1))
        parametric = max(0.0, raw - float(np.mean(s2 / n[use])))
    else:
        raw = parametric = 0.0
    total = thermal + parametric
    frac = (lambda x: x / total) if total > 0 else (lambda x: math.nan)
    return dict(total=total, thermal=thermal, parametric=parametric, parametric_raw=raw,
                thermal_fraction=frac(thermal), parametric_fraction=frac(parametric),
                mean=float(np.mean(means)), n_samples=int(use.sum()), n_seeds=int(t.shape[1]))


def per_sample_frt(times, codes, level: float = 0.95) -> dict:
    """Censored-exponential mean FRT of each sample over its seeds.

    Returns dict of (M,) arrays: mean, ci_low, ci_high (inf when a sample has
    no event), n_events, total_time.
    """
    t, c, ok, ev = _grid(times, codes)
    rows = [censored_exponential_mle(t[m][ok[m]], ev[m][ok[m]], level) if ok[m].any()
            else dict(mean=math.nan, ci_low=math.nan, ci_high=math.nan, n_events=0, total_time=0.0)
            for m in range(t.shape[0])]
    return {k: np.array([r[k] for r in rows]) for k in ("mean", "ci_low", "ci_high", "n_events", "total_time")}


def log_mean_frt(times, codes, min_events: float = 0.5) -> dict:
    """log of each sample's mean FRT (censored-exponential MLE) and its variance split.

    log mean_m = log(total_time_m / max(d_m, min_events)); ``min_events``
    keeps samples without events finite (a floor, biased low for them; their
    count is reported). Sampling variance of log mean_m is about 1/d_m
    (Poisson count of events), so

        parametric = max(0, var_m(log mean_m) - mean_m(1 / max(d_m, min_events))).

    Returns dict(log_mean (M,), noise_var (M,), between, noise, parametric,
    parametric_fraction, n_without_events).
    """
    p = per_sample_frt(times, codes)
    d = np.maximum(p["n_events"].astype(np.float64), min_events)
    logm = np.log(p["total_time"] / d)
    noise_var = 1.0 / d
    between = float(np.var(logm, ddof=1)) if logm.size >= 2 else 0.0
    noise = float(np.mean(noise_var))
    parametric = max(0.0, between - noise)
    return dict(log_mean=logm, noise_var=noise_var, between=between, noise=noise, parametric=parametric,
                parametric_fraction=parametric / between if between > 0 else math.nan,
                n_without_events=int(np.sum(p["n_events"] == 0)))


def survival_band(times, codes, t_grid, quantiles=(0.05, 0.5, 0.95)) -> np.ndarray:
    """Pointwise quantiles over samples of the per-sample Kaplan-Meier survival S_m(t).

    t_grid: (G,) times (tau). Returns (len(quantiles), G): the band of the
    survival curve due to coefficient uncertainty (thermal noise of each
    curve, from R seeds, is included).
    """
    t, c, ok, ev = _grid(times, codes)
    grid = np.asarray(t_grid, np.float64)
    curves = []
    for m in range(t.shape[0]):
        if not ok[m].any():
            continue
        tg, s = kaplan_meier(t[m][ok[m]], ev[m][ok[m]])
        curves.append(s[np.searchsorted(tg, grid, side="right") - 1])
    if not curves:
        raise JaxiapInputError("survival_band: every replica FAILED")
    return np.quantile(np.stack(curves), np.asarray(quantiles), axis=0)


def frt_samples(result):
    """(times, events) of non-failed replicas; events False means censored (or evaporated).

    result: any FRT ensemble result with (M, R) ``time`` and ``code`` arrays
    (e.g. the MD layer's ``FRTEnsembleResult``); all replicas pooled.
    """
    ok = result.code.ravel() != FAILED
    return result.time.ravel()[ok], (result.code.ravel() == EVENT)[ok]


def compare_frt(true_result, fitted_result) -> dict:
    """Two-sample KS test of min(FRT, t_censor) between true and fitted runs.

    Censored runs enter at their censoring time; both ensembles share t_censor,
    so this compares the distributions of the censored times.
    """
    (ta, _), (tb, _) = frt_samples(true_result), frt_samples(fitted_result)
    stat, p = ks_two_sample(ta, tb)
    return {"ks_statistic": float(stat), "ks_pvalue": float(p)}


def frt_errors(true_times, true_codes, times, codes) -> dict:
    """KS distance and relative error of the MLE mean FRT, fitted vs true (same seeds)."""
    ok_t, ok = true_codes != FAILED, codes != FAILED
    out = {"n_failed": int(np.sum(~ok))}
    if not ok.any():
        return {**out, "ks": 1.0, "frt_mean": None, "frt_mean_rel_error": None}
    stat, _ = ks_two_sample(true_times[ok_t], times[ok])
    m_true = summarize_frt(true_times, true_codes)["frt_mean"]
    m = summarize_frt(times, codes)["frt_mean"]
    rel = abs(m - m_true) / m_true if np.isfinite(m) and np.isfinite(m_true) and m_true > 0 else None
    return {**out, "ks": float(stat), "frt_mean": m if np.isfinite(m) else None, "frt_mean_rel_error": rel}
