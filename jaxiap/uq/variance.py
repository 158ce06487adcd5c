"""Thermal / parametric split of a QoI's variance over a (sample) x (seed) grid, by the law of total variance.

A sweep runs M parameter samples of a potential (posterior draws) times R
thermostat seeds and records a quantity of interest q[m, r] per trajectory
(a scalar, or a vector such as an RDF histogram: q[m, r, ...]). Its variance
over a fresh draw of the parameters and the seed splits as

    Var[q] = E_c[ Var[q | c] ] + Var_c[ E[q | c] ]
           =   thermal (seeds)  +  parametric (parameters).

:func:`variance_split_grid` estimates the two parts for either design:

- ``"crossed"`` (the default; jaxiap's MD runner uses common random numbers:
  seed r drives the thermostat of every sample m alike). The two-way random
  effects model q[m, r] = mu + a_m + b_r + e_mr (a: parameters, b: the
  shared thermostat noise, e: the rest) with the mean squares MS_A (samples),
  MS_E (residual) of the balanced table gives parametric = max(0, (MS_A -
  MS_E) / R) = sigma_a^2 and thermal = mean_m s_m^2 (the variance over seeds,
  ddof 1) = sigma_b^2 + sigma_e^2. The shared seed effect cancels from the
  differences between samples, so a parametric effect far below the thermal
  noise is still resolved (the common-random-numbers gain). Samples with a
  failed trajectory are left out of this estimate (it needs a full table);
  with fewer than 2 full samples it falls back to:
- ``"nested"`` (independent seeds per sample): the one-way estimator of
  :func:`jaxiap.uq.frt.variance_split`, thermal = mean_m s_m^2 and
  parametric = max(0, var_m(mean_m) - mean_m(s_m^2 / n_m)) (ddof 1). Applied
  to common-random-number data it over-subtracts the shared seed noise and
  underestimates the parametric part.

``total`` = thermal + parametric is the variance of one trajectory with a
fresh sample and seed. ``plugin`` is the plain decomposition of the
empirical variance of all valid values (ddof 0, samples weighted by their
valid seeds), whose parts add up to ``numpy.var`` of the pooled values
exactly. Invalid (failed) trajectories are left out. Host-side numpy.
"""

from __future__ import annotations

import numpy as np

from jaxiap.errors import JaxiapInputError

__all__ = ["variance_split_grid"]


def _fraction(part, total):
    part, total = np.asarray(part, float), np.asarray(total, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(total > 0, part / np.where(total > 0, total, 1.0), np.nan)


def variance_split_grid(values, valid=None, design: str = "crossed") -> dict:
    """Law-of-total-variance split of ``values`` (M samples, R seeds, ...) over samples and seeds.

    valid: (M, R) bool, False for trajectories to leave out (failed), or None (all valid).
    design: "crossed" (seed r shared by every sample: common random numbers) or "nested"
    (independent seeds per sample); see the module docstring.
    Returns a dict of numpy arrays shaped like one QoI value (``values.shape[2:]``; floats for a
    scalar QoI): ``mean``, ``total``, ``thermal``, ``parametric``, ``parametric_raw`` (the plain
    variance of the per-sample means), ``thermal_fraction``, ``parametric_fraction`` (NaN where
    the total is 0), ``plugin`` (dict ``total``, ``thermal``, ``parametric`` with ddof 0: total =
    thermal + parametric = the variance of the pooled values), ``design`` (the estimator used),
    for "crossed" ``seed_shared`` (sigma_b^2) and ``interaction`` (MS_E), and the counts
    ``n_samples`` (samples that enter the estimate) and ``n_valid``.
    With one usable sample the parametric part is 0.
    """
    if design not in ("crossed", "nested"):
        raise JaxiapInputError(f"variance_split_grid: design={design!r} must be 'crossed' or 'nested'")
    q = np.asarray(values, np.float64)
    if q.ndim < 2 or q.shape[0] < 1 or q.shape[1] < 1:
        raise JaxiapInputError(f"variance_split_grid: values must be (M samples, R seeds, ...), got {q.shape}")
    ok = np.ones(q.shape[:2], bool) if valid is None else np.asarray(valid, bool)
    if ok.shape != q.shape[:2]:
        raise JaxiapInputError(f"variance_split_grid: valid must be (M, R) = {q.shape[:2]}, got {ok.shape}")
    if not np.all(np.isfinite(q[ok])):
        raise JaxiapInputError("variance_split_grid: the valid values must be finite")
    n = ok.sum(axis=1)
    use = n >= 2
    if not use.any():
        raise JaxiapInputError("variance_split_grid: need at least 2 valid seeds for some sample (the thermal "
                               "variance is the variance over seeds)")
    w = ok.reshape(ok.shape + (1,) * (q.ndim - 2)).astype(float)
    sums = np.sum(np.where(w > 0, q, 0.0), axis=1)
    means = sums / np.maximum(n, 1).reshape((-1,) + (1,) * (q.ndim - 2))  # (M, ...)
    dev2 = np.where(w > 0, (q - means[:, None]) ** 2, 0.0).sum(axis=1)  # (M, ...)
    shape = (-1,) + (1,) * (q.ndim - 2)
    s2 = dev2[use] / (n[use] - 1).reshape(shape)  # within-sample variances, ddof 1
    thermal = s2.mean(axis=0)
    m_use = means[use]
    if m_use.shape[0] >= 2:
        raw = np.var(m_use, axis=0, ddof=1)
        parametric = np.maximum(0.0, raw - np.mean(s2 / n[use].reshape(shape), axis=0))
    else:
        raw = parametric = np.zeros_like(thermal)
    extra = {}
    full = ok.all(axis=1)
    r_seeds = q.shape[1]
    if design == "crossed" and full.sum() >= 2 and r_seeds >= 2:
        t = q[full]  # (M', R, ...) balanced table
        mf, rf = t.shape[0], r_seeds
        row, col, grand = t.mean(axis=1), t.mean(axis=0), t.mean(axis=(0, 1))
        ms_a = rf * np.sum((row - grand) ** 2, axis=0) / (mf - 1)
        ms_b = mf * np.sum((col - grand) ** 2, axis=0) / (rf - 1)
        ms_e = np.sum((t - row[:, None] - col[None] + grand) ** 2, axis=(0, 1)) / ((mf - 1) * (rf - 1))
        thermal = np.var(t, axis=1, ddof=1).mean(axis=0)
        raw = np.var(row, axis=0, ddof=1)
        parametric = np.maximum(0.0, (ms_a - ms_e) / rf)
        m_use = row
        use = full
        extra = dict(seed_shared=np.maximum(0.0, (ms_b - ms_e) / mf), interaction=ms_e)
    else:
        design = "nested"
    total = thermal + parametric
    # plug-in: pooled variance = weighted within + weighted between (exact identity)
    has = n >= 1
    nw = n[has].reshape(shape).astype(float)
    grand = np.sum(means[has] * nw, axis=0) / nw.sum()
    p_within = np.sum(dev2[has], axis=0) / nw.sum()
    p_between = np.sum(nw * (means[has] - grand) ** 2, axis=0) / nw.sum()
    scalar = q.ndim == 2
    out = lambda a: float(a) if scalar else np.asarray(a)
    return dict(
        mean=out(np.mean(m_use, axis=0)), total=out(total), thermal=out(thermal), parametric=out(parametric),
        parametric_raw=out(raw), thermal_fraction=out(_fraction(thermal, total)),
        parametric_fraction=out(_fraction(parametric, total)),
        plugin=dict(total=out(p_within + p_between), thermal=out(p_within), parametric=out(p_between)),
        design=design, **{k: out(v) for k, v in extra.items()},
        n_samples=int(use.sum()), n_valid=int(ok.sum()),
    )
