"""Fluctuation (reweighting) estimators of the derivatives of canonical averages w.r.t. coefficients.

**Fluctuation (reweighting) estimators** for equilibrium canonical
averages under a linear potential E = c . B(x):
d<A>/dc = -(<A B> - <A><B>) / kT (:func:`fluctuation_gradient`) and
d<E>/dc = <B> - (<E B> - <E><B>) / kT (:func:`mean_energy_gradient`).
No backpropagation; the inputs are a time series of samples. Standard
errors by batch means over contiguous blocks (delta method), which
accounts for the time correlation of MD samples when blocks are much
longer than the correlation time (:func:`fluctuation_gradient_estimate`,
:func:`mean_energy_gradient_estimate`).

The pathwise and likelihood-ratio estimators are in :mod:`jaxiap.md.sensitivity` and
:mod:`jaxiap.md.first_passage` (docs/science.md section 16).

Precision: everything here is written for float64. Units: those of the samples' features
and of kT (the energy units of the potential).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxiap.errors import JaxiapInputError

__all__ = [
    "FluctuationEstimate",
    "fluctuation_gradient",
    "mean_energy_gradient",
    "fluctuation_gradient_estimate",
    "mean_energy_gradient_estimate",
]


# ---------------------------------------------------------------------------
# Fluctuation (reweighting) estimators
# ---------------------------------------------------------------------------


class FluctuationEstimate(NamedTuple):
    """grad (K,) and its standard error (K,) by batch means over n_blocks blocks."""

    grad: jnp.ndarray
    stderr: jnp.ndarray
    n_blocks: int


def _check_series(observable, features, weights, need_obs=True):
    B = jnp.asarray(features)
    if B.ndim != 2:
        raise JaxiapInputError(f"features must be (T, K); got shape {B.shape}")
    T = B.shape[0]
    A = None
    if need_obs:
        A = jnp.asarray(observable, B.dtype)
        if A.shape != (T,):
            raise JaxiapInputError(f"observable must be (T,) = ({T},) like features; got shape {A.shape}")
        if not bool(jnp.all(jnp.isfinite(A))):
            raise JaxiapInputError("observable contains NaN or inf; drop the failed samples first")
    if not bool(jnp.all(jnp.isfinite(B))):
        raise JaxiapInputError("features contain NaN or inf; drop the failed samples first")
    if weights is None:
        w = jnp.ones(T, B.dtype)
    else:
        w = jnp.asarray(weights, B.dtype)
        if w.shape != (T,) or not bool(jnp.all(w >= 0)) or not float(jnp.sum(w)) > 0:
            raise JaxiapInputError(f"weights must be (T,) = ({T},), non-negative, not all zero")
    return A, B, w / jnp.sum(w)


def _wmean(z, w):
    return jnp.tensordot(w, z, axes=1)


def _fluct_terms(A, B, w, kT):
    """Estimate and per-sample influence terms (T, K) of -cov_w(A, B) / kT."""
    da = A - _wmean(A, w)
    dB = B - _wmean(B, w)
    z = -(da[:, None] * dB) / kT
    return _wmean(z, w), z


def _check_kT(fn: str, kT) -> None:
    """kT of the fluctuation estimators: a positive finite temperature (kT <= 0 gave NaN or wrong numbers)."""
    if isinstance(kT, jax.core.Tracer):
        return
    try:
        v = float(kT)
    except (TypeError, ValueError):
        v = None
    if v is None or not (math.isfinite(v) and v > 0):
        raise JaxiapInputError(f"{fn}: kT={kT!r} must be a positive finite temperature (energy units of the "
                               "potential), the temperature the samples were drawn at")


def _check_coefficients(fn: str, coefficients, B):
    c = jnp.asarray(coefficients, B.dtype)
    if c.shape != (B.shape[1],) or not bool(jnp.all(jnp.isfinite(c))):
        raise JaxiapInputError(f"{fn}: coefficients must be finite with shape (K,) = ({B.shape[1]},) like the "
                               f"features' columns; got shape {c.shape}")
    return c


def fluctuation_gradient(observable, features, kT, weights=None):
    """d<A>/dc = -(<A B> - <A><B>) / kT for canonical samples under E = c . B.

    observable A (T,) (must not depend on c itself), features B (T, K) the
    linear potential's features at the same samples, kT the sampling
    temperature, weights (T,) optional non-negative sample weights (e.g.
    Boltzmann weights on a quadrature grid). Returns (K,). float64.
    """
    _check_kT("fluctuation_gradient", kT)
    A, B, w = _check_series(observable, features, weights)
    return _fluct_terms(A, B, w, kT)[0]


def mean_energy_gradient(features, coefficients, kT, weights=None):
    """d<E>/dc = <B> - (<E B> - <E><B>) / kT for E = c . B (E depends on c directly too).

    features (T, K), coefficients (K,) of the sampled potential. Returns (K,).
    """
    _check_kT("mean_energy_gradient", kT)
    _, B, w = _check_series(None, features, weights, need_obs=False)
    E = B @ _check_coefficients("mean_energy_gradient", coefficients, B)
    g, _ = _fluct_terms(E, B, w, kT)
    return _wmean(B, w) + g


def _batch_stderr(z, w, theta, n_blocks):
    """Batch-means standard error of a weighted mean estimator with per-sample terms z (T, K)."""
    T = z.shape[0]
    if not (isinstance(n_blocks, (int, np.integer)) and 2 <= n_blocks <= T):
        raise JaxiapInputError(f"n_blocks={n_blocks!r} must be an integer in [2, T={T}]")
    L = T // n_blocks
    # Influence of a ratio (self-normalised) estimator: T w_t (z_t - theta).
    infl = (T * w)[:, None] * (z - theta)
    bm = jnp.mean(infl[: L * n_blocks].reshape(n_blocks, L, -1), axis=1)
    return jnp.std(bm, axis=0, ddof=1) / jnp.sqrt(n_blocks)


def fluctuation_gradient_estimate(observable, features, kT, weights=None, n_blocks: int = 20) -> FluctuationEstimate:
    """:func:`fluctuation_gradient` with a batch-means standard error.

    The standard error is the delta-method (influence-function) error of the
    covariance, estimated from the means of ``n_blocks`` contiguous blocks of
    the time series: valid when a block is much longer than the correlation
    time of the samples. For several independent trajectories, concatenate
    them with lengths divisible by n_blocks / n_trajectories.
    """
    _check_kT("fluctuation_gradient_estimate", kT)
    A, B, w = _check_series(observable, features, weights)
    g, z = _fluct_terms(A, B, w, kT)
    return FluctuationEstimate(g, _batch_stderr(z, w, g, n_blocks), int(n_blocks))


def mean_energy_gradient_estimate(features, coefficients, kT, weights=None, n_blocks: int = 20) -> FluctuationEstimate:
    """:func:`mean_energy_gradient` with a batch-means standard error."""
    _check_kT("mean_energy_gradient_estimate", kT)
    _, B, w = _check_series(None, features, weights, need_obs=False)
    E = B @ _check_coefficients("mean_energy_gradient_estimate", coefficients, B)
    g, z = _fluct_terms(E, B, w, kT)
    z = z + B
    g = g + _wmean(B, w)
    return FluctuationEstimate(g, _batch_stderr(z, w, g, n_blocks), int(n_blocks))
