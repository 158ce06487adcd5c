"""Quantities of interest for MD ensembles: basin criteria, survival statistics, histograms.

Two kinds of functions live here (see docs/science.md sections 5 and 6, "first
rearrangement time", FRT):

* **Pure JAX, jittable and vmappable** (fixed shapes, no Python control flow
  on traced values), meant to run inside a jitted, vmapped ``lax.scan`` over an
  MD ensemble: :func:`bond_graph`, :func:`coordination`, :func:`n12`,
  :func:`basin_reference`, :func:`basin_changed`, :func:`evaporated`,
  :func:`energy_histogram`. They work in the precision of their inputs
  (float32 on a GPU is fine: the criteria only compare distances and energies
  against thresholds far from round-off).
* **NumPy/SciPy post-processing** of the per-run first-event times (float64):
  :func:`kaplan_meier`, :func:`km_median`, :func:`censored_exponential_mle`,
  :func:`ks_two_sample`, :func:`summarize_frt`.

Units: LJ reduced units (lengths in sigma, energies in epsilon, times in tau)
for the defaults (``r_b = 1.35``, ``r_evap = 3.0``, ``e_tol = 1e-3``); the
functions themselves never assume units, so pass thresholds in the units of
your positions and energies.

Per-run outcome codes (module constants) used by :func:`summarize_frt`:
``CENSORED = 0`` (no event before t_max), ``EVENT = 1`` (basin changed),
``EVAPORATED = 2`` (an atom left the cluster first; competing risk, treated
as censored at that time), ``FAILED = 3`` (the replica blew up; excluded from
the statistics and counted).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from jaxiap.errors import JaxiapInputError
from jaxiap.geometry import pair_distances

#: Outcome codes of one FRT run.
CENSORED = 0
EVENT = 1
EVAPORATED = 2
FAILED = 3

#: Basin-change criteria understood by :func:`basin_changed`.
BASIN_CRITERIA = ("graph", "energy", "n12")

__all__ = [
    "CENSORED",
    "EVENT",
    "EVAPORATED",
    "FAILED",
    "BASIN_CRITERIA",
    "bond_graph",
    "coordination",
    "n12",
    "BasinReference",
    "basin_reference",
    "basin_changed",
    "evaporated",
    "energy_histogram",
    "histogram_edges",
    "kaplan_meier",
    "km_median",
    "censored_exponential_mle",
    "ks_two_sample",
    "summarize_frt",
]


# ---------------------------------------------------------------------------
# Basin criteria (pure JAX)
# ---------------------------------------------------------------------------


def bond_graph(positions, r_b: float = 1.35, mask=None):
    """Labelled bond graph of one structure.

    positions: (N, 3) coordinates (free cluster, no periodic box);
    r_b: bond cutoff (same length unit; 1.35 sigma for LJ13, any value in
    1.3-1.6 sigma separates first (1.08-1.14) and second (~1.8) neighbours of
    quenched LJ13); mask: (N,) bool for real atoms, or None (all real).
    Returns G: (N, N) bool with G[i, j] = (i != j) & both real & (r_ij < r_b).
    """
    r, pair_mask = pair_distances(positions, mask)
    return pair_mask & (r < r_b)


def coordination(positions, r_b: float = 1.35, mask=None):
    """Number of neighbours within ``r_b`` of every atom: (N,) int32 (0 for padded atoms)."""
    return jnp.sum(bond_graph(positions, r_b, mask), axis=1, dtype=jnp.int32)


def n12(positions, r_b: float = 1.35, mask=None):
    """Number of atoms with exactly 12 neighbours inside ``r_b``: int32 scalar.

    1 for the LJ13 icosahedron (the centre atom), 0 for its three lowest
    defect minima (docs/science.md section 5.3, criterion (c)).
    """
    return jnp.sum(coordination(positions, r_b, mask) == 12, dtype=jnp.int32)


class BasinReference(NamedTuple):
    """The start basin that later inherent structures are compared with.

    A NamedTuple, hence a PyTree: it passes through ``jit`` and can be
    stacked/vmapped over replicas (one reference per potential sample).

    energy: () quenched energy E0 of the start structure under the potential
        used for the MD (energy thresholds are potential-specific);
    graph: (N, N) bool bond graph G0 of the quenched start structure;
    n12: () int32 number of 12-coordinated atoms of the quenched start.
    """

    energy: jnp.ndarray
    graph: jnp.ndarray
    n12: jnp.ndarray


def basin_reference(positions_quenched, energy, r_b: float = 1.35, mask=None) -> BasinReference:
    """Build the :class:`BasinReference` of a quenched start structure.

    positions_quenched: (N, 3) inherent structure of the start configuration;
    energy: () its energy under the MD potential (E0); r_b: bond cutoff;
    mask: (N,) bool or None. Jittable.
    """
    return BasinReference(
        energy=jnp.asarray(energy),
        graph=bond_graph(positions_quenched, r_b, mask),
        n12=n12(positions_quenched, r_b, mask),
    )


def basin_changed(
    kind: str,
    reference: BasinReference,
    positions_q,
    energy_q,
    r_b: float = 1.35,
    e_tol: float = 1e-3,
    mask=None,
):
    """Has the inherent structure left the reference basin?  () bool.

    kind (static Python string):
      * ``"graph"`` (default criterion, permutational FRT (b)): G_IS != G0,
        i.e. any labelled bond made or broken; also catches rearrangements
        that return to an icosahedron with atoms permuted;
      * ``"energy"`` (structural FRT (a)): |E_IS - E0| > e_tol (e_tol in
        energy units; 1e-3 eps for LJ13, whose lowest defect basins lie
        >= 2.85 eps above the icosahedron);
      * ``"n12"`` (cheap order parameter (c)): n12(IS) != reference n12.
    reference: from :func:`basin_reference` (same r_b and mask);
    positions_q: (N, 3) quenched (inherent-structure) positions;
    energy_q: () their energy. A NaN energy never counts as a change under
    ``"energy"``; blown-up replicas must be flagged separately.
    Jittable and vmappable over (reference, positions_q, energy_q).
    """
    if kind == "graph":
        return jnp.any(bond_graph(positions_q, r_b, mask) != reference.graph)
    if kind == "energy":
        return jnp.abs(jnp.asarray(energy_q) - reference.energy) > e_tol
    if kind == "n12":
        return n12(positions_q, r_b, mask) != reference.n12
    raise JaxiapInputError(
        f"basin_changed: unknown criterion kind={kind!r}; use one of {BASIN_CRITERIA}"
    )


def evaporated(positions, mask=None, r_evap: float = 3.0):
    """Has an atom left the cluster?  () bool.

    True when any real atom's nearest-neighbour distance exceeds ``r_evap``
    (3 sigma for LJ13; docs/science.md section 5.4). positions: (N, 3);
    mask: (N,) bool or None. A structure with fewer than two real atoms is
    never reported as evaporated. Jittable and vmappable.
    """
    r, pair_mask = pair_distances(positions, mask)
    nearest = jnp.min(jnp.where(pair_mask, r, jnp.inf), axis=1)  # (N,), inf for padded atoms
    has_neighbour = jnp.any(pair_mask, axis=1)
    return jnp.any(has_neighbour & (nearest > r_evap))


# ---------------------------------------------------------------------------
# Histograms (pure JAX)
# ---------------------------------------------------------------------------


def histogram_edges(bins: int, range) -> np.ndarray:  # noqa: A002 (numpy's name)
    """Bin edges (bins + 1,) of :func:`energy_histogram`, as ``numpy.histogram`` makes them."""
    lo, hi = float(range[0]), float(range[1])
    return np.linspace(lo, hi, int(bins) + 1)


def energy_histogram(energies, bins: int, range, weights=None):  # noqa: A002
    """Fixed-bin histogram usable inside ``jit``/``vmap``/``lax.scan``.

    energies: any shape (flattened), e.g. (M,) replica energies of one MD
    step; bins: static Python int; range: static (lo, hi) floats, in the
    energies' unit; weights: optional array of the same shape as ``energies``
    (e.g. a 0/1 mask of live replicas).
    Returns counts (bins,): int32 without weights, the weights' dtype with
    them. Bins follow ``numpy.histogram``: [e_k, e_{k+1}) with the last bin
    closed, values outside [lo, hi] and NaNs are dropped. Accumulate over an
    MD run by summing the returned counts in the scan carry.
    """
    bins = int(bins)
    lo, hi = float(range[0]), float(range[1])
    if not (hi > lo) or bins < 1:
        raise JaxiapInputError(
            f"energy_histogram: need bins >= 1 and range (lo, hi) with hi > lo; got bins={bins}, range={range}"
        )
    x = jnp.ravel(jnp.asarray(energies))
    edges = jnp.asarray(histogram_edges(bins, range), dtype=x.dtype)
    idx = jnp.searchsorted(edges, x, side="right") - 1
    idx = jnp.where(x == edges[-1], bins - 1, idx)  # last bin is closed on the right
    valid = (x >= edges[0]) & (x <= edges[-1])  # False for NaN
    idx = jnp.clip(idx, 0, bins - 1)
    if weights is None:
        w = valid.astype(jnp.int32)
    else:
        w = jnp.where(valid, jnp.ravel(jnp.asarray(weights)), 0)
    return jnp.zeros(bins, w.dtype).at[idx].add(w)


# ---------------------------------------------------------------------------
# Survival statistics (NumPy / SciPy, float64)
# ---------------------------------------------------------------------------


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
    from scipy.stats import chi2

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
    from scipy.stats import ks_2samp

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
    if not np.all(np.isin(c, (CENSORED, EVENT, EVAPORATED, FAILED))):
        raise JaxiapInputError(
            f"summarize_frt: codes must be CENSORED=0, EVENT=1, EVAPORATED=2 or FAILED=3; got {sorted(set(c.tolist()))}"
        )
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
