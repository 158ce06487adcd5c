"""Survival statistics of first-event times: Kaplan-Meier, censored-exponential MLE, KS, FRT summaries.

NumPy/SciPy post-processing (float64) of per-run first-event times, e.g. the
first rearrangement times (FRT) of an MD ensemble (docs/science.md section 6):
:func:`kaplan_meier`, :func:`km_median`, :func:`censored_exponential_mle`,
:func:`ks_two_sample` and :func:`summarize_frt`. The MD loop that produces the
times is the MD layer's (``md/frt.py``); uq never imports it.

Per-run outcome codes (module constants, produced by the FRT replica program
and re-exported by the MD layer's ``md/qoi.py``) used by :func:`summarize_frt`:
``CENSORED = 0`` (no event before t_max), ``EVENT = 1`` (basin changed),
``EVAPORATED = 2`` (an atom left the cluster first; competing risk, treated
as censored at that time), ``FAILED = 3`` (the replica blew up; excluded from
the statistics and counted).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import chi2, ks_2samp

from jaxiap.errors import JaxiapInputError

#: Outcome codes of one FRT run.
CENSORED = 0
EVENT = 1
EVAPORATED = 2
FAILED = 3

#: Every valid outcome code.
OUTCOME_CODES = (CENSORED, EVENT, EVAPORATED, FAILED)

__all__ = [
    "CENSORED",
    "EVENT",
    "EVAPORATED",
    "FAILED",
    "OUTCOME_CODES",
    "check_codes",
    "kaplan_meier",
    "km_median",
    "censored_exponential_mle",
    "ks_two_sample",
    "summarize_frt",
]


def check_codes(codes, name: str | None = None) -> np.ndarray:
    """``codes`` as an array, after checking every entry is an outcome code; errors start with ``name: ``."""
    c = np.asarray(codes)
    if not np.all(np.isin(c, OUTCOME_CODES)):
        raise JaxiapInputError((f"{name}: " if name else "") + "codes must be CENSORED=0, EVENT=1, EVAPORATED=2 or "
                               f"FAILED=3; got {sorted(set(c.ravel().tolist()))}")
    return c


def _times_events(times, events, name: str):
    t = np.asarray(times, dtype=np.float64).reshape(-1)
    e = np.asarray(events).reshape(-1)
    if t.shape != e.shape:
        raise JaxiapInputError(f"{name}: times {t.shape} and events {e.shape} must have the same length")
    if not np.all(np.isfinite(t)):
        raise JaxiapInputError(f"{name}: times contain NaN/inf; drop failed runs before calling")
    if np.any(t < 0):
        raise JaxiapInputError(f"{name}: times must be >= 0")
    return t, e.astype(bool)


def kaplan_meier(times, events):
    """Kaplan-Meier estimate of the survival function S(t) = P(T > t).

    times: (n,) observed times (event or censoring), >= 0; events: (n,) bool,
    True = event observed, False = right-censored at that time.
    Returns (t_grid, survival), both (k + 1,) float64: t_grid = [0, u_1, ...,
    u_k] with u_j the distinct event times in increasing order, survival =
    [1, S(u_1), ..., S(u_k)], where S(u_j) = prod_{i <= j} (1 - d_i / n_i),
    d_i = number of events at u_i and n_i = number of runs with time >= u_i
    (so runs censored at u_i still count as at risk at u_i: ties between
    events and censorings put the censoring just after the event).
    S is a right-continuous step function: S(t) = survival[j] for
    t_grid[j] <= t < t_grid[j+1]; beyond the last event it stays at
    survival[-1] (undefined past the largest censoring time).
    """
    t, e = _times_events(times, events, "kaplan_meier")
    u = np.unique(t[e])
    if u.size == 0:
        return np.zeros(1), np.ones(1)
    ts = np.sort(t)
    n_at_risk = ts.size - np.searchsorted(ts, u, side="left")
    d = np.array([np.count_nonzero(t[e] == ui) for ui in u])
    s = np.cumprod(1.0 - d / n_at_risk)
    return np.concatenate([[0.0], u]), np.concatenate([[1.0], s])


def km_median(times, events) -> float:
    """Kaplan-Meier median: the first event time with S(t) <= 0.5.

    Returns ``math.inf`` (not NaN) when the survival curve never drops to 0.5,
    i.e. the median lies beyond the follow-up (too much censoring).
    """
    t_grid, s = kaplan_meier(times, events)
    hit = np.nonzero(s <= 0.5)[0]
    return float(t_grid[hit[0]]) if hit.size else math.inf


def censored_exponential_mle(times, events, level: float = 0.95) -> dict:
    """MLE and confidence interval of the mean of an exponential waiting time with right-censoring.

    times: (n,) observed/censoring times; events: (n,) bool (False = censored);
    level: two-sided confidence level.
    MLE: mean = T / d with T = sum of all times (total time on test) and d
    the number of events.
    Interval: the exact (Garwood) Poisson interval, i.e. the standard
    "time-terminated test" interval, with a = 1 - level:
        ci_low  = 2 T / chi2.ppf(1 - a/2, 2 d + 2),
        ci_high = 2 T / chi2.ppf(a/2, 2 d)          (inf when d = 0).
    It treats d as a Poisson count in total exposure T (exact when runs are
    stopped at fixed times, conservative otherwise; the 2d+2 dof on the lower
    bound accounts for the time after the last event). For d = 0, mean =
    ci_high = inf and ci_low = 2 T / chi2.ppf(1 - a/2, 2) = T / ln(2/a).
    Returns dict(mean, ci_low, ci_high, n_events, total_time) of Python
    floats/ints (total_time in the time unit of ``times``).
    """
    if not 0.0 < level < 1.0:
        raise JaxiapInputError(f"censored_exponential_mle: level must be in (0, 1), got {level}")
    t, e = _times_events(times, events, "censored_exponential_mle")
    total = float(np.sum(t))
    d = int(np.count_nonzero(e))
    a = 1.0 - level
    ci_low = 2.0 * total / float(chi2.ppf(1.0 - a / 2.0, 2 * d + 2))
    if d == 0:
        mean = ci_high = math.inf
    else:
        mean = total / d
        ci_high = 2.0 * total / float(chi2.ppf(a / 2.0, 2 * d))
    return dict(mean=mean, ci_low=ci_low, ci_high=ci_high, n_events=d, total_time=total)


def ks_two_sample(a, b):
    """Two-sample Kolmogorov-Smirnov test (scipy.stats.ks_2samp, two-sided, default method).

    a: (n,), b: (m,) samples (e.g. observed FRTs under the reference and a
    fitted potential; censored runs should not be mixed in naively).
    Returns (statistic, pvalue) as Python floats.
    """
    a = np.asarray(a, np.float64).reshape(-1)
    b = np.asarray(b, np.float64).reshape(-1)
    if a.size == 0 or b.size == 0:
        raise JaxiapInputError("ks_two_sample: both samples must be non-empty")
    res = ks_2samp(a, b)
    return float(res.statistic), float(res.pvalue)


def summarize_frt(times, codes, level: float = 0.95) -> dict:
    """Summary statistics of an FRT ensemble.

    times: (n,) per-run time in tau: the first-event time (code EVENT), the
    stop time t_max (CENSORED) or the evaporation time (EVAPORATED); ignored
    for FAILED runs (may be NaN). codes: (n,) int in {CENSORED=0, EVENT=1,
    EVAPORATED=2, FAILED=3}.
    Evaporation is a competing risk: those runs are censored at their
    evaporation time. Failed (blown-up) runs are excluded and only counted.
    Returns a JSON-ready dict:
      n_runs (all runs), n_events, n_censored (code 0 only), n_evaporated,
      n_failed; frt_mean and frt_mean_ci95 = [lo, hi] from
      :func:`censored_exponential_mle` (inf when there is no event;
      ``level`` sets the interval, 0.95 by default); frt_median (Kaplan-Meier,
      inf if not reached); frt_sample_mean_events (plain mean of the observed
      event times, biased low under censoring; NaN with no events).
    """
    t = np.asarray(times, np.float64).reshape(-1)
    c = np.asarray(codes).reshape(-1)
    if t.shape != c.shape:
        raise JaxiapInputError(f"summarize_frt: times {t.shape} and codes {c.shape} must have the same length")
    check_codes(c, "summarize_frt")
    keep = c != FAILED
    tk, ek = t[keep], c[keep] == EVENT
    out = dict(
        n_runs=int(c.size),
        n_events=int(np.count_nonzero(c == EVENT)),
        n_censored=int(np.count_nonzero(c == CENSORED)),
        n_evaporated=int(np.count_nonzero(c == EVAPORATED)),
        n_failed=int(np.count_nonzero(c == FAILED)),
    )
    if tk.size == 0:
        out.update(frt_mean=math.nan, frt_mean_ci95=[math.nan, math.nan], frt_median=math.nan,
                   frt_sample_mean_events=math.nan)
        return out
    mle = censored_exponential_mle(tk, ek, level)
    out.update(
        frt_mean=mle["mean"],
        frt_mean_ci95=[mle["ci_low"], mle["ci_high"]],
        frt_median=km_median(tk, ek),
        frt_sample_mean_events=float(np.mean(tk[ek])) if ek.any() else math.nan,
    )
    return out
