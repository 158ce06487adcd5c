"""Dual forms of DPPs for L = B B^T with B (N, D), D << N, via the (D, D) dual kernel B^T B.

The same distributions as the primal functions of :mod:`jaxiap.active.dpp` on ``B @ B.T``,
without forming the (N, N) kernel: :func:`dual_spectrum` (a :class:`~jaxiap.active.dpp.DPPSpectrum`
of L from B^T B), :func:`inclusion_probabilities_dual`, :func:`sample_dpp_dual` and
:func:`sample_kdpp_dual`. Cost O(N D^2) and memory O(N D); samples have at most
rank(B) <= D items. Same conventions as :mod:`jaxiap.active.dpp` (float64, explicit keys,
fixed-shape (N,) bool masks, static integer ``k``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxiap.active.dpp import DPPSpectrum, _sample_dpp_spectral_impl, _sample_kdpp_spectral_impl
from jaxiap.active.dpp_checks import _check_factor, _check_k, _numerical_rank
from jaxiap.errors import JaxiapInputError

__all__ = [
    "dual_spectrum",
    "inclusion_probabilities_dual",
    "sample_dpp_dual",
    "sample_kdpp_dual",
]


def _dual_eig(B):
    """Eigen-pairs of L = B B^T from the (D, D) dual kernel C = B^T B.

    Returns (lam (D,), V (N, D), valid (D,)) where the valid columns of V are orthonormal
    eigenvectors of L (v = B w / sqrt(lam)); eigenvalues at round-off level are dropped.
    """
    n, d = B.shape
    lam, W = jnp.linalg.eigh(B.T @ B)
    lam = jnp.maximum(lam, 0.0)
    valid = lam > jnp.max(lam) * max(n, d) * jnp.finfo(B.dtype).eps
    V = (B @ W) / jnp.sqrt(jnp.where(valid, lam, 1.0))
    lam = jnp.where(valid, lam, 0.0)
    return lam, V * valid[None, :], valid


def dual_spectrum(B):
    """:class:`DPPSpectrum` of L = B B^T from the (D, D) dual kernel, O(N D^2), never forming L.

    lam (D,) and V (N, D); eigenvalues at round-off level (and their columns) are set to 0,
    so they are never sampled. Use with :func:`sample_dpp_spectral` / :func:`sample_kdpp_spectral`
    to reuse the decomposition across samples.

    Args:
        B: (N, D) feature matrix.
    """
    B, _ = _check_factor(B)
    lam, V, _ = _jit_dual_eig(B)
    return DPPSpectrum(lam, V)


_jit_dual_eig = jax.jit(_dual_eig)


def inclusion_probabilities_dual(B):
    """Inclusion probabilities of the DPP with L = B B^T, via the (D, D) dual kernel.

    K = B (I_D + B^T B)^-1 B^T, so K_ii = b_i^T (I + B^T B)^-1 b_i. Cost O(N D^2).

    Args:
        B: (N, D) feature matrix.

    Returns:
        (N,) probabilities, equal to inclusion_probabilities(B @ B.T).
    """
    B, _ = _check_factor(B)
    return _incl_dual(B)


@jax.jit
def _incl_dual(B):
    d = B.shape[1]
    A = jnp.eye(d, dtype=B.dtype) + B.T @ B
    cho = jax.scipy.linalg.cho_factor(A, lower=True)
    X = jax.scipy.linalg.cho_solve(cho, B.T)  # (D, N)
    return jnp.sum(B * X.T, axis=1)


@jax.jit
def _sample_dpp_dual(key, B):
    lam, V, _ = _dual_eig(B)  # invalid columns have lam = 0: never kept
    return _sample_dpp_spectral_impl(key, lam, V, V.shape[1])


def sample_dpp_dual(key, B):
    """Exact DPP sample for L = B B^T using the (D, D) dual kernel B^T B.

    Same distribution as sample_dpp(key, B @ B.T) but cost O(N D^2) and memory O(N D);
    never forms the (N, N) kernel. Samples have at most rank(B) <= D items.

    Args:
        key: jax.random key.
        B: (N, D) feature matrix.

    Returns:
        (N,) bool mask.
    """
    B, _ = _check_factor(B)
    return _sample_dpp_dual(key, B)


def _sample_kdpp_dual_impl(key, B, k):
    lam, V, _ = _dual_eig(B)
    return _sample_kdpp_spectral_impl(key, lam, V, k)


_sample_kdpp_dual = jax.jit(_sample_kdpp_dual_impl, static_argnums=2)


def sample_kdpp_dual(key, B, k):
    """Exact k-DPP sample for L = B B^T using the (D, D) dual kernel.

    Args:
        key: jax.random key.
        B: (N, D) feature matrix.
        k: Python int, 0 <= k <= rank(B).

    Returns:
        (N,) bool mask with exactly k True entries.
    """
    B, Bn = _check_factor(B)
    n, d = B.shape
    k = _check_k(k, n)
    if Bn is not None:
        lam = np.linalg.eigvalsh(Bn.T @ Bn)
        rank = _numerical_rank(lam, max(n, d))
        if k > rank:
            raise JaxiapInputError(
                f"k = {k} exceeds rank(B B^T) = {rank}: a k-DPP needs k linearly independent items; "
                "lower k or add features.")
    return _sample_kdpp_dual(key, B, k)
