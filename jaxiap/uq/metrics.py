"""Calibration and ranking metrics of predicted uncertainties (Tan et al. 2023; docs/uq_metrics.md).

Every function takes flat arrays of the same length n: ``std`` the
predicted standard deviations s_i (> 0), ``error`` the absolute errors
e_i = |y_i - yhat_i| (or ``mean``/``y`` where the sign matters). Host-side
numpy (these run once per evaluation, not inside jitted programs).

- :func:`spearman`: rank correlation of s and e (average ranks for ties).
- :func:`roc_auc`: area under the ROC curve of s as a score for "e > threshold".
- :func:`miscalibration_area`: area between the observed and expected
  proportions of centred Gaussian intervals (uncertainty-toolbox's default).
- :func:`gaussian_nll`, :func:`recalibrated_nll`: mean Gaussian negative
  log-likelihood, and the same after the one-parameter rescaling s -> k s
  that minimises it (k^2 = mean(e^2 / s^2)).
- :func:`sharpness` sqrt(mean s^2); :func:`coefficient_of_variation` (the
  dispersion of s); :func:`ence` (expected normalised calibration error).

:func:`uq_metrics` returns them all; :func:`force_uq_arrays` turns per-
component force predictions into the per-component (calibration) and per-
atom (ranking) arrays that Tan et al. score.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from jaxiap.errors import JaxiapInputError


def _flat(name: str, a, positive: bool = False) -> np.ndarray:
    a = np.asarray(a, float).reshape(-1)
    if a.size == 0:
        raise JaxiapInputError(f"{name} is empty")
    if not np.all(np.isfinite(a)):
        raise JaxiapInputError(f"{name} holds non-finite values")
    if positive and np.any(a <= 0):
        raise JaxiapInputError(f"{name} must be > 0 everywhere (a zero predicted std has no likelihood); "
                               f"clip it, e.g. np.maximum(std, 1e-12)")
    return a


def _pair(std, error) -> tuple[np.ndarray, np.ndarray]:
    s, e = _flat("std", std), _flat("error", error)
    if s.shape != e.shape:
        raise JaxiapInputError(f"std and error must have the same length; got {s.size} and {e.size}")
    return s, e


def spearman(std, error) -> float:
    """Spearman rank correlation between predicted stds and errors (average ranks for ties)."""
    s, e = _pair(std, error)
    rs, re = stats.rankdata(s), stats.rankdata(e)
    rs, re = rs - rs.mean(), re - re.mean()
    denom = np.sqrt(np.sum(rs**2) * np.sum(re**2))
    return float(np.sum(rs * re) / denom) if denom > 0 else float("nan")


def roc_auc(std, error, threshold: float | None = None, percentile: float = 90.0) -> float:
    """ROC-AUC of the std as a score for flagging errors above ``threshold``.

    threshold None: the ``percentile``-th percentile of the errors. Equal to
    the Mann-Whitney statistic P(s_pos > s_neg) + P(s_pos = s_neg) / 2.
    """
    s, e = _pair(std, error)
    cut = float(np.percentile(e, percentile)) if threshold is None else float(threshold)
    pos = e > cut
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        raise JaxiapInputError(f"roc_auc: the error threshold {cut:g} leaves {n_pos} large and {n_neg} small errors; "
                               "choose a threshold inside the range of the errors")
    ranks = stats.rankdata(s)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def calibration_curve(mean, std, y, num_bins: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """(expected, observed) proportions of centred Gaussian intervals: observed(p) = mean[|y - mean| <= s z_p]
    with z_p = Phi^-1(1/2 + p/2), p on ``num_bins`` points of [0, 1] (uncertainty-toolbox's grid)."""
    mu, s, t = _flat("mean", mean), _flat("std", std, positive=True), _flat("y", y)
    if not (mu.size == s.size == t.size):
        raise JaxiapInputError(f"mean, std and y must have the same length; got {mu.size}, {s.size}, {t.size}")
    expected = np.linspace(0.0, 1.0, num_bins)
    z = stats.norm.ppf(0.5 + expected / 2.0)
    multiples = np.abs(mu - t) / s
    observed = np.mean(multiples[:, None] <= z[None, :], axis=0)
    return expected, observed


def miscalibration_area(mean, std, y, num_bins: int = 100) -> float:
    """Area between the calibration curve and the diagonal (exact for the piecewise-linear curve)."""
    p, obs = calibration_curve(mean, std, y, num_bins)
    d = obs - p
    dl, dr, w = d[:-1], d[1:], np.diff(p)
    same = dl * dr >= 0
    trapezoid = 0.5 * w * np.abs(dl + dr)
    with np.errstate(divide="ignore", invalid="ignore"):
        crossing = 0.5 * w * (dl**2 + dr**2) / (np.abs(dl) + np.abs(dr))
    return float(np.sum(np.where(same, trapezoid, crossing)))


def gaussian_nll(mean, std, y) -> float:
    """Mean of log(2 pi s^2) / 2 + (y - mean)^2 / (2 s^2)."""
    mu, s, t = _flat("mean", mean), _flat("std", std, positive=True), _flat("y", y)
    return float(np.mean(0.5 * np.log(2 * np.pi * s**2) + 0.5 * ((t - mu) / s) ** 2))


def recalibration_scale(mean, std, y) -> float:
    """The k minimising the Gaussian NLL of (mean, k std): k^2 = mean((y - mean)^2 / s^2)."""
    mu, s, t = _flat("mean", mean), _flat("std", std, positive=True), _flat("y", y)
    return float(np.sqrt(np.mean(((t - mu) / s) ** 2)))


def recalibrated_nll(mean, std, y, scale: float | None = None) -> float:
    """Gaussian NLL after rescaling the stds by ``scale`` (None: :func:`recalibration_scale` on these data)."""
    k = recalibration_scale(mean, std, y) if scale is None else float(scale)
    return gaussian_nll(mean, k * np.asarray(std, float), y)


def sharpness(std) -> float:
    """sqrt(mean s^2): the overall confidence (smaller is sharper)."""
    return float(np.sqrt(np.mean(_flat("std", std, positive=True) ** 2)))


def coefficient_of_variation(std) -> float:
    """Dispersion of the stds: sample std (n - 1) over their mean (Scalia et al. 2020)."""
    s = _flat("std", std, positive=True)
    if s.size < 2:
        raise JaxiapInputError("coefficient_of_variation needs at least 2 stds")
    return float(np.std(s, ddof=1) / np.mean(s))


def ence(std, error, n_bins: int = 100) -> float:
    """Expected normalised calibration error (Levi et al. 2022): sort by s, ``n_bins`` equal-count bins,
    mean over bins of |RMV - RMSE| / RMV with RMV = sqrt(mean s^2) and RMSE = sqrt(mean e^2) in the bin."""
    s, e = _pair(std, error)
    if np.any(s <= 0):
        raise JaxiapInputError("ence: std must be > 0 everywhere")
    n_bins = min(int(n_bins), s.size)
    order = np.argsort(s, kind="stable")
    terms = []
    for idx in np.array_split(order, n_bins):
        rmv = np.sqrt(np.mean(s[idx] ** 2))
        rmse = np.sqrt(np.mean(e[idx] ** 2))
        terms.append(abs(rmv - rmse) / rmv)
    return float(np.mean(terms))


def uq_metrics(mean, std, y, *, error_threshold: float | None = None, percentile: float = 90.0,
               num_bins: int = 100, ence_bins: int = 100) -> dict:
    """Every metric of one set of predictions (flat arrays): ranking, calibration, NLLs, sharpness, dispersion."""
    mu, s, t = _flat("mean", mean), _flat("std", std, positive=True), _flat("y", y)
    e = np.abs(t - mu)
    return {
        "n": int(s.size),
        "rmse": float(np.sqrt(np.mean(e**2))),
        "mae": float(np.mean(e)),
        "spearman": spearman(s, e),
        "roc_auc": roc_auc(s, e, error_threshold, percentile),
        "miscalibration_area": miscalibration_area(mu, s, t, num_bins),
        "nll": gaussian_nll(mu, s, t),
        "recalibration_scale": recalibration_scale(mu, s, t),
        "recalibrated_nll": recalibrated_nll(mu, s, t),
        "sharpness": sharpness(s),
        "coefficient_of_variation": coefficient_of_variation(s),
        "ence": ence(s, e, ence_bins),
    }


def force_uq_arrays(forces_pred, forces_std, forces_true, mask=None) -> dict:
    """Per-component and per-atom arrays of force predictions (S, N, 3) (mask (S, N): real atoms).

    Returns ``component`` = (mean, std, y) flat over real atoms x 3 (for the
    calibration metrics) and ``atom`` = (std, error): per-atom
    sqrt(sum_a s_a^2) and ||F_pred - F_true|| (for the ranking metrics).
    """
    fp, fs, ft = (np.asarray(a, float) for a in (forces_pred, forces_std, forces_true))
    if not (fp.shape == fs.shape == ft.shape) or fp.shape[-1] != 3:
        raise JaxiapInputError(f"forces_pred, forces_std and forces_true must share a shape (..., 3); got "
                               f"{fp.shape}, {fs.shape}, {ft.shape}")
    m = np.ones(fp.shape[:-1], bool) if mask is None else np.asarray(mask, bool)
    fp, fs, ft = fp[m], fs[m], ft[m]
    return {"component": (fp.reshape(-1), fs.reshape(-1), ft.reshape(-1)),
            "atom": (np.sqrt(np.sum(fs**2, axis=-1)), np.linalg.norm(fp - ft, axis=-1))}
