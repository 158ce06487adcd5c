"""Gaussian germ of coefficient samples: the map c = mean + L xi, xi ~ N(0, I_K), and its inverse.

A Gaussian posterior N(mean, L L^T) over K coefficients is the first-order Hermite chaos
c = mean + L xi of a standard Gaussian germ xi (docs/science.md section 15.6).
:func:`gaussian_germ` maps coefficient samples to the germ, xi = L^-1 (c - mean), so that
a polynomial chaos (:mod:`jaxiap.uq.pce`) can be fitted in xi; :func:`from_germ` maps back.
L is given as a covariance or as its lower Cholesky factor. Everything is float64; the
functions validate eagerly and are not meant to be jitted.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxiap.errors import JaxiapInputError

__all__ = [
    "gaussian_germ",
    "from_germ",
]


def _cholesky_factor(cov_or_cholesky, K: int, kind: str, name: str) -> np.ndarray:
    """Lower Cholesky factor (K, K) from a covariance or a factor, per ``kind``."""
    if kind not in ("auto", "cov", "cholesky"):
        raise JaxiapInputError(f"{name}: kind must be 'auto', 'cov' or 'cholesky', got {kind!r}")
    M = np.asarray(cov_or_cholesky, dtype=np.float64)
    if M.shape != (K, K):
        raise JaxiapInputError(f"{name}: the covariance / Cholesky factor must have shape ({K}, {K}) to match "
                               f"the K={K} coefficients, got shape {M.shape}")
    if not np.all(np.isfinite(M)):
        raise JaxiapInputError(f"{name}: the covariance / Cholesky factor contains NaN or inf")
    if kind == "auto":
        scale = max(float(np.max(np.abs(M))), np.finfo(np.float64).tiny)
        off = M - np.diag(np.diag(M))
        if not off.any():
            raise JaxiapInputError(
                f"{name}: a diagonal matrix is both a covariance and a Cholesky factor; pass "
                "kind='cov' (variances on the diagonal) or kind='cholesky' (standard deviations)")
        if np.max(np.abs(M - M.T)) <= 1e-12 * scale:
            kind = "cov"
        elif not np.triu(M, 1).any():
            kind = "cholesky"
        else:
            raise JaxiapInputError(
                f"{name}: the matrix is neither symmetric (a covariance) nor lower triangular (a Cholesky "
                "factor L with cov = L L^T); pass one of those")
    if kind == "cov":
        try:
            L = np.linalg.cholesky(0.5 * (M + M.T))
        except np.linalg.LinAlgError:
            raise JaxiapInputError(
                f"{name}: the covariance is not positive definite; add a small jitter to its diagonal, "
                "or pass a Cholesky factor of the non-degenerate directions") from None
    else:
        if np.triu(M, 1).any():
            raise JaxiapInputError(f"{name}: kind='cholesky' needs a lower-triangular factor L (cov = L L^T)")
        L = M
    diag = np.diag(L)
    if not np.all(diag > 0):
        raise JaxiapInputError(
            f"{name}: the Cholesky factor has a non-positive diagonal entry ({float(diag.min()):.3g}); "
            "the map to the germ xi = L^-1 (c - mean) needs an invertible factor")
    return L


def _check_coeff_array(x, K: int | None, what: str, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim not in (1, 2):
        raise JaxiapInputError(f"{name}: {what} must have shape (M, K) or (K,), got shape {x.shape}")
    if K is not None and x.shape[-1] != K:
        raise JaxiapInputError(f"{name}: {what} has K={x.shape[-1]} columns but the mean has K={K}")
    if not np.all(np.isfinite(x)):
        raise JaxiapInputError(f"{name}: {what} contains NaN or inf")
    return x


def gaussian_germ(samples, mean, cov_or_cholesky, *, kind: str = "auto") -> jnp.ndarray:
    """Map coefficient samples c (M, K) to the standard Gaussian germ xi = L^-1 (c - mean) (M, K).

    The inverse of c = mean + L xi with xi ~ N(0, I_K) (the first-order Hermite
    chaos of a Gaussian posterior, docs/science.md section 15.6); :func:`from_germ` maps back.
    mean: (K,). cov_or_cholesky: (K, K), either the covariance Sigma (then L is
    its lower Cholesky factor) or the lower-triangular factor L itself
    (Sigma = L L^T). ``kind="auto"`` reads a symmetric matrix as a covariance and
    a lower-triangular one as a factor; a diagonal matrix is ambiguous and needs
    ``kind="cov"`` or ``kind="cholesky"``. A single sample (K,) gives (K,).
    float64; validates eagerly (not meant for jit).
    """
    m = _check_coeff_array(mean, None, "mean", "gaussian_germ")
    if m.ndim != 1:
        raise JaxiapInputError(f"gaussian_germ: mean must have shape (K,), got shape {m.shape}")
    K = m.shape[0]
    c = _check_coeff_array(samples, K, "samples", "gaussian_germ")
    L = _cholesky_factor(cov_or_cholesky, K, kind, "gaussian_germ")
    xi = jax.scipy.linalg.solve_triangular(jnp.asarray(L), jnp.asarray(np.atleast_2d(c) - m).T, lower=True).T
    return xi[0] if c.ndim == 1 else xi


def from_germ(xi, mean, L, *, kind: str = "cholesky") -> jnp.ndarray:
    """Map germ samples xi (M, K) to coefficients c = mean + L xi (M, K); the inverse of :func:`gaussian_germ`.

    mean: (K,). L: (K, K) lower Cholesky factor of the covariance (default
    ``kind="cholesky"``); pass ``kind="cov"`` to give the covariance instead, or
    ``"auto"`` as in :func:`gaussian_germ`. A single germ (K,) gives (K,). float64.
    """
    m = _check_coeff_array(mean, None, "mean", "from_germ")
    if m.ndim != 1:
        raise JaxiapInputError(f"from_germ: mean must have shape (K,), got shape {m.shape}")
    K = m.shape[0]
    x = _check_coeff_array(xi, K, "xi", "from_germ")
    Lf = _cholesky_factor(L, K, kind, "from_germ")
    c = jnp.asarray(m) + jnp.asarray(np.atleast_2d(x)) @ jnp.asarray(Lf).T
    return c[0] if x.ndim == 1 else c
