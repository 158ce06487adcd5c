"""Bayesian compressive sensing: the fast relevance vector machine (float64, numpy).

Tipping & Faul (2003) fast marginal-likelihood maximisation, as in Ji et al.
(2008) and pytuq ``lreg/bcs.py`` (docs/science.md section 12.4). Each coefficient has
a prior c_k ~ N(0, 1/alpha_k); alpha_k = inf prunes column k. With the
marginal covariance C = sig^2 I + sum_k alpha_k^-1 a_k a_k^T, every column has

    S_k = a_k^T C^-1 a_k,   Q_k = a_k^T C^-1 y,
    s_k = alpha_k S_k / (alpha_k - S_k),   q_k = alpha_k Q_k / (alpha_k - S_k)   (s = S, q = Q if pruned),
    theta_k = q_k^2 - s_k.

Each iteration takes the single action with the largest gain in (twice) the
log marginal likelihood: add k (theta_k > 0, pruned), re-estimate alpha_k =
s_k^2 / theta_k (theta_k > 0, active) or delete k (theta_k <= 0, active). It
stops when the best gain falls below ``eta`` times the total gain so far, or
after ``max_iter`` iterations. The noise variance is held at its initial
value max(var(y) / 100, 1e-6) during the search (or a given ``noise_var``)
and re-estimated at the end as ||y - A mu||^2 / (N - K_used + sum_k alpha_k
Sigma_kk); the returned posterior uses that value.

The active set is small, so S, Q, mu and Sigma are recomputed from a Cholesky
factor of Sigma^-1 = diag(alpha) + A_act^T A_act / sig^2 each iteration
(O(N K K_act)), which is simpler and more stable than rank-one updates.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
import scipy.linalg as sla

from jaxiap.errors import JaxiapInputError
from jaxiap.inference.mcmc import design_arrays
from jaxiap.inference.posterior import GaussianPosterior

__all__ = ["fit_bcs", "BCSInfo"]


class BCSInfo(NamedTuple):
    """support (K_used,) retained column indices (in order of addition); alpha (K_used,) their
    prior precisions; noise_var re-estimated (per unit row weight); n_iter; gains (n_iter,) the
    accepted log-marginal-likelihood gains; converged."""

    support: np.ndarray
    alpha: np.ndarray
    noise_var: float
    n_iter: int
    gains: np.ndarray
    converged: bool


def _posterior(A, y, active, alpha, sig2):
    """mu, Sigma, Cholesky of Sigma^-1 over the active columns."""
    Phi = A[:, active]
    H = np.diag(alpha) + Phi.T @ Phi / sig2
    L = np.linalg.cholesky(0.5 * (H + H.T))
    Sigma = sla.cho_solve((L, True), np.eye(len(active)))
    mu = Sigma @ (Phi.T @ y) / sig2
    return Phi, mu, Sigma


def _s_q(A, y, Phi, Sigma, sig2):
    """S_k, Q_k (K,) for every column given the current active set."""
    AtPhi = A.T @ Phi / sig2  # (K, K_act)
    S = np.sum(A**2, axis=0) / sig2 - np.sum((AtPhi @ Sigma) * AtPhi, axis=1)  # BLAS, not a 3-operand einsum loop
    Q = A.T @ y / sig2 - AtPhi @ (Sigma @ (Phi.T @ y) / sig2)
    return S, Q


def fit_bcs(design, y=None, w=None, *, noise_var: float | None = None, eta: float = 1e-8,
            max_iter: int = 100, return_info: bool = False):
    """Sparse Bayesian regression by the fast RVM; returns a GaussianPosterior over all K coefficients.

    design: a DesignMatrix, or A (R, K) with ``y`` (R,) and optional ``w`` (R,)
    (rows are scaled by sqrt(w); rows with w = 0 are dropped). ``noise_var``:
    the data-noise variance held during the search (default
    max(var(y) / 100, 1e-6)). Pruned coefficients get mean 0 and zero
    variance (zero rows of ``cov_factor``); ``kind="bcs"``. With
    ``return_info`` also a :class:`BCSInfo` (retained index set, alphas,
    re-estimated noise, iterations).
    """
    if not eta > 0:
        raise JaxiapInputError(f"eta must be > 0, got {eta}")
    if max_iter < 1:
        raise JaxiapInputError(f"max_iter must be >= 1, got {max_iter}")
    A0, y0, w0 = design_arrays(design, y, w, name="fit_bcs")
    sw = np.sqrt(w0)
    A, yv = A0 * sw[:, None], y0 * sw
    n, k = A.shape
    col2 = np.sum(A**2, axis=0)
    if (col2 == 0).any():
        raise JaxiapInputError(f"fit_bcs: design columns {np.flatnonzero(col2 == 0).tolist()} are all zero; "
                               "drop them")
    if noise_var is None:
        sig2 = max(float(np.var(yv)) / 100.0, 1e-6)
    else:
        if not np.isfinite(noise_var) or noise_var <= 0:
            raise JaxiapInputError(f"noise_var must be finite and > 0, got {noise_var}")
        sig2 = float(noise_var)

    # initial basis: the column best aligned with y
    aty = A.T @ yv
    ratio = aty**2 / col2
    first = int(np.argmax(ratio))
    if ratio[first] <= sig2:
        raise JaxiapInputError("fit_bcs: no column explains more than the noise level; lower noise_var")
    active = [first]
    alpha = np.array([col2[first] / (ratio[first] - sig2)])
    gains, converged = [], False
    for it in range(max_iter):
        Phi, mu, Sigma = _posterior(A, yv, active, alpha, sig2)
        S, Q = _s_q(A, yv, Phi, Sigma, sig2)
        s, q = S.copy(), Q.copy()
        act = np.asarray(active)
        denom = alpha - S[act]
        s[act] = alpha * S[act] / denom
        q[act] = alpha * Q[act] / denom
        theta = q**2 - s
        gain = np.full(k, -np.inf)
        in_act = np.zeros(k, bool)
        in_act[act] = True
        # add (theta > 0, pruned)
        add = (~in_act) & (theta > 0)
        gain[add] = (Q[add] ** 2 - S[add]) / S[add] + np.log(S[add] / Q[add] ** 2)
        # re-estimate (theta > 0, active)
        pos = np.flatnonzero(theta[act] > 0)
        if pos.size:
            j = act[pos]
            new = s[j] ** 2 / theta[j]
            delta = 1.0 / new - 1.0 / alpha[pos]
            arg = 1.0 + S[j] * delta
            safe = np.where(arg > 0, arg, 1.0)
            gain[j] = np.where(arg > 0, Q[j] ** 2 * delta / safe - np.log(safe), -np.inf)
        # delete (theta <= 0, active), never the last one
        neg = np.flatnonzero(theta[act] <= 0)
        if neg.size and len(active) > 1:
            j = act[neg]
            gain[j] = Q[j] ** 2 / (S[j] - alpha[neg]) - np.log(1.0 - S[j] / alpha[neg])
        best = int(np.argmax(gain))
        g = float(gain[best])
        if not np.isfinite(g) or g <= eta * max(sum(gains), 1e-300):
            converged = True
            break
        gains.append(g)
        if in_act[best]:
            pos_b = active.index(best)
            if theta[best] > 0:
                alpha[pos_b] = s[best] ** 2 / theta[best]
            else:
                del active[pos_b]
                alpha = np.delete(alpha, pos_b)
        else:
            active.append(best)
            alpha = np.append(alpha, s[best] ** 2 / theta[best])
    Phi, mu, Sigma = _posterior(A, yv, active, alpha, sig2)
    resid = yv - Phi @ mu
    noise = float(resid @ resid / max(n - len(active) + float(alpha @ np.diag(Sigma)), 1e-12))
    Phi, mu, Sigma = _posterior(A, yv, active, alpha, noise)
    mean = np.zeros(k)
    mean[active] = mu
    F = np.zeros((k, k))
    F[np.ix_(active, np.arange(len(active)))] = np.linalg.cholesky(0.5 * (Sigma + Sigma.T))
    post = GaussianPosterior(jnp.asarray(mean), jnp.asarray(F), jnp.asarray(noise), kind="bcs")
    if return_info:
        info = BCSInfo(np.asarray(active, int), alpha.copy(), noise, len(gains), np.asarray(gains), converged)
        return post, info
    return post
