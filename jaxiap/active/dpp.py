"""Determinantal point processes (DPPs): spectra, exact sampling and greedy MAP, in primal form.

An L-ensemble over N candidates assigns P(Y = S) = det(L_S) / det(L + I) to each
subset S, for a symmetric positive semi-definite kernel L of shape (N, N)
(Kulesza & Taskar 2012; docs/science.md section 19). Kernels L are built in
:mod:`jaxiap.active.dpp_kernels`; the dual forms for L = B B^T (D x D kernel B^T B) are in
:mod:`jaxiap.active.dpp_dual`; input checks in :mod:`jaxiap.active.dpp_checks`.

What lives here:

- marginals: :func:`marginal_kernel` (K = L (L + I)^-1), :func:`inclusion_probabilities`
  (diag K), :func:`expected_size` (sum lam / (1 + lam));
- exact samplers: :func:`sample_dpp` (spectral: eigenvector selection, then a projection
  DPP by sequential conditioning) and :func:`sample_kdpp` (exactly k items, elementary
  symmetric polynomials in log space);
- a reusable eigendecomposition: :func:`dpp_spectrum` (L) -> :class:`DPPSpectrum` (lam, V),
  checked once, then :func:`sample_dpp_spectral` / :func:`sample_kdpp_spectral` (or the
  ``.sample(key)`` / ``.sample_k(key, k)`` methods) draw exact samples from it at
  O(N |Y|^2) each, as DPPy's ``FiniteDPP`` does. ``sample_dpp(key, L)`` is exactly
  ``sample_dpp_spectral(key, dpp_spectrum(L))`` (likewise for the k-DPP);
- approximate mode: :func:`greedy_map` (fast greedy MAP by incremental Cholesky,
  Chen, Zhang & Zhou 2018).

Conventions. All functions are pure and work in float64 (inputs are cast). Samplers take
an explicit ``jax.random`` key (same key, same subset) and return a fixed-shape (N,) bool
mask, so they ``jit`` and ``vmap`` over keys. Input checks run on concrete inputs
(:mod:`jaxiap.active.dpp_checks`): the PSD check of the samplers and marginals reads the
eigenvalues of the decomposition they compute anyway; :func:`greedy_map`, which needs no
decomposition, runs the full ``eigvalsh`` PSD check only with ``check="full"``. Integer ``k``
is always static (a Python int).

Cost. The eigendecomposition is O(N^3). The projection phase gathers the |B| kept
eigenvectors into an (N, width) block with a static width (|B| rounded up to a power of two
when the key is concrete, k for the k-DPP) and runs exactly |B| Gram-Schmidt steps, so a
sample costs O(N |Y|^2). Under ``jit`` / ``vmap`` over keys of :func:`sample_dpp` the width
cannot depend on |B| and is the number of positive eigenvalues: O(N |Y| R) per sample.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxiap.active.dpp_checks import _as_float, _check_k, _check_kernel, _check_psd_eigs, _numerical_rank, _traced
from jaxiap.errors import JaxiapInputError

__all__ = [
    "marginal_kernel",
    "inclusion_probabilities",
    "expected_size",
    "sample_dpp",
    "sample_kdpp",
    "DPPSpectrum",
    "dpp_spectrum",
    "sample_dpp_spectral",
    "sample_kdpp_spectral",
    "greedy_map",
]


# ----------------------------------------------------------------------------- spectrum (eigendecomposition, reusable)

@jax.jit
def _eigh(L):
    """Raw eigenpairs of L (eigenvalues not clamped: the PSD check reads the smallest)."""
    return jnp.linalg.eigh(L)


@jax.jit
def _eig(L):
    """Eigenpairs of L with the eigenvalues clamped at 0 (round-off negatives of a PSD L)."""
    lam, V = jnp.linalg.eigh(L)
    return jnp.maximum(lam, 0.0), V


@jax.jit
def _incl(lam, V):
    return jnp.sum(V**2 * (lam / (1.0 + lam)), axis=1)


@jax.jit
def _marginal(lam, V):
    K = (V * (lam / (1.0 + lam))) @ V.T
    return 0.5 * (K + K.T)


class DPPSpectrum(NamedTuple):
    """Eigendecomposition L = V diag(lam) V^T of an L-ensemble kernel, computed once, reused.

    Build it with :func:`dpp_spectrum` (which checks L) and draw any number of exact samples
    from it with :func:`sample_dpp_spectral` / :func:`sample_kdpp_spectral` (or the methods
    below): each sample then costs O(N |Y|^2) instead of the O(N^3) eigendecomposition. This
    mirrors DPPy's ``FiniteDPP``, which caches its eigenpairs. A NamedTuple, hence a pytree:
    it can be passed through ``jit`` / ``vmap`` like an array.

    Fields:
        lam: (R,) eigenvalues, clamped at >= 0.
        V: (N, R) orthonormal eigenvectors (columns).
    """

    lam: jax.Array
    V: jax.Array

    def sample(self, key):
        """Exact DPP sample, (N,) bool mask (see :func:`sample_dpp_spectral`)."""
        return sample_dpp_spectral(key, self)

    def sample_k(self, key, k):
        """Exact k-DPP sample, (N,) bool mask with k items (see :func:`sample_kdpp_spectral`)."""
        return sample_kdpp_spectral(key, self, k)

    def inclusion_probabilities(self):
        """(N,) P(i in Y) = K_ii."""
        return _incl(self.lam, self.V)

    def expected_size(self):
        """E|Y| = sum lam / (1 + lam)."""
        return jnp.sum(self.lam / (1.0 + self.lam))

    def marginal_kernel(self):
        """(N, N) K = L (L + I)^-1."""
        return _marginal(self.lam, self.V)


def dpp_spectrum(L):
    """Check L and eigendecompose it once: the reusable :class:`DPPSpectrum` (lam, V).

    The PSD check reads the eigenvalues of this same decomposition (no second ``eigvalsh``);
    with a traced L (inside an outer ``jit``) only the static shape checks run. Cost O(N^3),
    once; every sample drawn from the result is then O(N |Y|^2).

    Args:
        L: (N, N) symmetric PSD kernel.

    Returns:
        DPPSpectrum with lam (N,) clamped at >= 0 and V (N, N).

    Raises:
        JaxiapInputError: L is not square, has NaN/inf, is not symmetric or not PSD.
    """
    L = _check_kernel(L)
    lam, V = _eigh(L)
    if not _traced(lam):
        _check_psd_eigs(np.asarray(lam))
    return DPPSpectrum(jnp.maximum(lam, 0.0), V)


def _as_spectrum(spectrum):
    if not isinstance(spectrum, DPPSpectrum):
        try:
            lam, V = spectrum
        except (TypeError, ValueError) as err:
            raise JaxiapInputError(f"spectrum must be a DPPSpectrum (from dpp_spectrum(L)) or a (lam, V) "
                                   f"pair; got {type(spectrum).__name__}.") from err
        spectrum = DPPSpectrum(lam, V)
    lam, V = _as_float(spectrum.lam, "spectrum.lam"), _as_float(spectrum.V, "spectrum.V")
    if lam.ndim != 1 or V.ndim != 2 or V.shape[1] != lam.shape[0] or V.shape[0] == 0:
        raise JaxiapInputError(f"spectrum must hold lam (R,) and V (N, R) with N >= 1; got lam "
                               f"{tuple(lam.shape)} and V {tuple(V.shape)}. Build it with dpp_spectrum(L).")
    return DPPSpectrum(lam, V)


# ----------------------------------------------------------------------------- marginals

def marginal_kernel(L):
    """Marginal kernel K = L (L + I)^-1, computed as V diag(lam / (1 + lam)) V^T.

    Args:
        L: (N, N) symmetric PSD L-ensemble kernel.

    Returns:
        (N, N) symmetric K with eigenvalues in [0, 1); P(S subset of Y) = det(K_S).
    """
    return dpp_spectrum(L).marginal_kernel()


def inclusion_probabilities(L):
    """Inclusion probabilities P(i in Y) = K_ii (the ridge leverage scores of L).

    Args:
        L: (N, N) symmetric PSD kernel.

    Returns:
        (N,) probabilities in [0, 1).
    """
    return dpp_spectrum(L).inclusion_probabilities()


def expected_size(L):
    """Expected sample size E|Y| = sum_n lam_n / (1 + lam_n); scalar.

    Args:
        L: (N, N) symmetric PSD kernel.
    """
    return dpp_spectrum(L).expected_size()


# ----------------------------------------------------------------------------- samplers

_MIN_WIDTH = 8  # smallest column bucket of the projection sampler (limits recompiles)


def _bucket(m, r):
    """Static width for m kept columns out of r: the next power of two >= m (>= _MIN_WIDTH), <= r."""
    w = _MIN_WIDTH
    while w < m:
        w *= 2
    return max(min(w, r), 1)


def _project_impl(key, V, colmask, width):
    """Sample the projection DPP with kernel K = V_B V_B^T, B = columns of V where colmask.

    The kept columns (at most ``width``, a static int) are gathered into an (N, width) block
    V_B, zero-padded past |B|. Then sequential conditioning (chain rule) with an incremental
    Cholesky of K, i.e. Gram-Schmidt in the row space of V_B (DPPy's 'GS' projection
    sampler): pick i with probability proportional to the residual d_i^2 (initially
    |V_B[i]|^2, which sums to |B|), then remove the component along the picked item from
    every residual. A ``while_loop`` runs exactly |B| steps of O(N width) each, so a sample
    costs O(N |B| width) = O(N |B|^2) with width ~ |B|.

    Args:
        key: jax.random key.
        V: (N, R) matrix whose selected columns are orthonormal.
        colmask: (R,) bool, which columns span the projection DPP; at most ``width`` True.
        width: static int, 1 <= width <= R.

    Returns:
        (N,) bool mask with exactly |B| items (almost surely).
    """
    n = V.shape[0]
    m = jnp.minimum(jnp.sum(colmask), width).astype(jnp.int32)
    cols = jnp.argsort(jnp.where(colmask, 0, 1).astype(jnp.int32), stable=True)[:width]  # kept first
    Vb = V[:, cols] * (jnp.arange(width) < m)[None, :].astype(V.dtype)
    d2 = jnp.sum(Vb * Vb, axis=1)
    C = jnp.zeros((n, width), V.dtype)
    selected = jnp.zeros((n,), bool)
    tiny = jnp.finfo(V.dtype).tiny

    def cond(state):
        t, _, _, _, _, alive = state
        return (t < m) & alive

    def body(state):
        t, key, C, d2, selected, _ = state
        key, sub = jax.random.split(key)
        p = jnp.where(selected, 0.0, jnp.maximum(d2, 0.0))
        ok = jnp.sum(p) > 0
        logits = jnp.where(p > 0, jnp.log(jnp.where(p > 0, p, 1.0)), -jnp.inf)
        i = jax.random.categorical(sub, logits)
        e = (Vb @ Vb[i] - C @ C[i]) / jnp.sqrt(jnp.maximum(d2[i], tiny))
        C = C.at[:, t].set(jnp.where(ok, e, 0.0))
        d2 = jnp.where(ok, d2 - e * e, d2)
        selected = selected.at[i].set(selected[i] | ok)
        return t + 1, key, C, d2, selected, ok

    state = (jnp.zeros((), jnp.int32), key, C, d2, selected, jnp.ones((), bool))
    return jax.lax.while_loop(cond, body, state)[4]


_project = jax.jit(_project_impl, static_argnums=3)


def _projection_sample(key, V, colmask):
    """Projection DPP on the columns of V where colmask (static width R = all columns)."""
    return _project_impl(key, V, colmask, V.shape[1])


def _bernoulli_eigs(key, lam):
    """Keep eigenvector n independently with probability lam_n / (1 + lam_n)."""
    return jax.random.uniform(key, lam.shape, dtype=lam.dtype) < lam / (1.0 + lam)


def _log_esp(lam, k):
    """log e_l(lam_1..lam_n) for l = 0..k, n = 0..N: array (k+1, N+1), in log space."""
    loglam = jnp.where(lam > 0, jnp.log(jnp.where(lam > 0, lam, 1.0)), -jnp.inf)
    col0 = jnp.concatenate([jnp.zeros((1,), lam.dtype), jnp.full((k,), -jnp.inf, lam.dtype)])

    def step(col, ll):
        shifted = jnp.concatenate([jnp.full((1,), -jnp.inf, lam.dtype), col[:-1]])
        new = jnp.logaddexp(col, ll + shifted)
        return new, new

    _, cols = jax.lax.scan(step, col0, loglam)
    return jnp.concatenate([col0[:, None], cols.T], axis=1), loglam


def _kdpp_eigs(key, lam, k):
    """Select exactly k eigenvectors (Kulesza & Taskar Alg. 8), scanning n = N..1."""
    n = lam.shape[0]
    logE, loglam = _log_esp(lam, k)
    us = jax.random.uniform(key, (n,), dtype=lam.dtype)

    def step(l, inp):
        idx, u = inp  # idx = n - 1 (0-based eigenvalue index), table column n = idx + 1
        lm1 = jnp.maximum(l - 1, 0)
        logp = loglam[idx] + logE[lm1, idx] - logE[l, idx + 1]
        p = jnp.where((l > 0) & jnp.isfinite(logp), jnp.exp(jnp.minimum(logp, 0.0)), 0.0)
        keep = u < p
        return l - keep.astype(l.dtype), keep

    idxs = jnp.arange(n - 1, -1, -1)
    _, keep_rev = jax.lax.scan(step, jnp.asarray(k, jnp.int32), (idxs, us[::-1]))
    return keep_rev[::-1]


@jax.jit
def _dpp_phase1(key, lam):
    """Phase 1 of the spectral DPP sampler: (projection key, kept-eigenvector mask, count)."""
    k_eig, k_proj = jax.random.split(key)
    keep = _bernoulli_eigs(k_eig, lam)
    return k_proj, keep, jnp.sum(keep)


def _sample_dpp_spectral_impl(key, lam, V, width):
    k_proj, keep, _ = _dpp_phase1(key, lam)
    return _project_impl(k_proj, V, keep, width)


_sample_dpp_fixed = jax.jit(_sample_dpp_spectral_impl, static_argnums=3)


def sample_dpp_spectral(key, spectrum):
    """Exact DPP sample from a precomputed :class:`DPPSpectrum` (see :func:`dpp_spectrum`).

    Phase 1 keeps eigenvector n with probability lam_n / (1 + lam_n); phase 2 samples the
    projection DPP spanned by the |B| kept eigenvectors by Gram-Schmidt sequential
    conditioning, on an (N, width) block of the kept columns: O(N |B| width) per sample.

    The width is static. With a concrete key it is |B| rounded up to a power of two (>= 8,
    at most R): two jitted calls and one host sync of |B|, O(N |B|^2), recompiling only per
    new bucket. With a traced key (the call is inside ``jit`` or ``vmap`` over keys) |B| is
    not known on the host, so the width is the number of positive eigenvalues (R when the
    spectrum is traced too): still exact and |B| steps long, but O(N |B| R) per sample.
    For many samples from one kernel, a Python loop over keys is the fastest path.

    The result depends only on the key and the spectrum (not on the width, up to round-off),
    and ``sample_dpp(key, L)`` is ``sample_dpp_spectral(key, dpp_spectrum(L))``.

    Args:
        key: jax.random key.
        spectrum: DPPSpectrum (or a (lam, V) pair with lam >= 0 and orthonormal V).

    Returns:
        (N,) bool mask of the sampled subset.
    """
    lam, V = _as_spectrum(spectrum)
    r = V.shape[1]
    if _traced(lam, V):
        return _sample_dpp_fixed(key, lam, V, r)
    if _traced(key):
        return _sample_dpp_fixed(key, lam, V, _bucket(int(np.sum(np.asarray(lam) > 0)), r))
    k_proj, keep, m = _dpp_phase1(key, lam)
    return _project(k_proj, V, keep, _bucket(int(m), r))


@jax.jit
def _sample_dpp(key, L):
    """Jitted one-shot sampler on a raw kernel (no checks; projection width N)."""
    lam, V = _eig(L)
    return _sample_dpp_spectral_impl(key, lam, V, V.shape[1])


def sample_dpp(key, L):
    """Exact sample from the L-ensemble DPP by the spectral method.

    Eigendecompose L (:func:`dpp_spectrum`, O(N^3), which also checks L, PSD included, on
    its own eigenvalues), keep eigenvector n with probability lam_n / (1 + lam_n), then
    sample the projection DPP spanned by the kept eigenvectors by sequential conditioning
    (O(N |Y|^2)). Jittable and vmappable over keys. To draw many samples from one kernel,
    compute ``spec = dpp_spectrum(L)`` once and call ``sample_dpp_spectral(key, spec)``.

    Args:
        key: jax.random key.
        L: (N, N) symmetric PSD kernel.

    Returns:
        (N,) bool mask of the sampled subset.
    """
    return sample_dpp_spectral(key, dpp_spectrum(L))


def _sample_kdpp_spectral_impl(key, lam, V, k):
    k_eig, k_proj = jax.random.split(key)
    return _project_impl(k_proj, V, _kdpp_eigs(k_eig, lam, k), max(k, 1))


_sample_kdpp_fixed = jax.jit(_sample_kdpp_spectral_impl, static_argnums=3)


def sample_kdpp_spectral(key, spectrum, k):
    """Exact k-DPP sample from a precomputed :class:`DPPSpectrum` (see :func:`dpp_spectrum`).

    Exactly k eigenvectors are chosen with the elementary symmetric polynomials of the
    eigenvalues (log space, O(N k)), then the projection DPP they span is sampled on an
    (N, k) block: O(N k^2). Fully jittable (k is static), the same path with or without an
    outer ``jit`` / ``vmap``.

    Args:
        key: jax.random key.
        spectrum: DPPSpectrum (or a (lam, V) pair).
        k: Python int, 0 <= k <= rank(L).

    Returns:
        (N,) bool mask with exactly k True entries.
    """
    lam, V = _as_spectrum(spectrum)
    n = V.shape[0]
    k = _check_k(k, n)
    if k > V.shape[1]:
        raise JaxiapInputError(
            f"k = {k} exceeds the {V.shape[1]} eigenvectors of the spectrum (rank(L) <= {V.shape[1]}): "
            "a k-DPP needs k linearly independent items; lower k.")
    if not _traced(lam):
        rank = _numerical_rank(np.asarray(lam), n)
        if k > rank:
            raise JaxiapInputError(
                f"k = {k} exceeds rank(L) = {rank}: a k-DPP needs k linearly independent "
                "items; lower k or use a kernel of higher rank (e.g. a smaller RBF lengthscale).")
    return _sample_kdpp_fixed(key, lam, V, k)


def _sample_kdpp_impl(key, L, k):
    lam, V = _eig(L)
    return _sample_kdpp_spectral_impl(key, lam, V, k)


_sample_kdpp = jax.jit(_sample_kdpp_impl, static_argnums=2)


def sample_kdpp(key, L, k):
    """Exact sample from the k-DPP: P(S) = det(L_S) / e_k(lam) for |S| = k.

    Exactly k eigenvectors are chosen with the elementary symmetric polynomials of the
    eigenvalues (computed in log space, so large or small spectra do not overflow), then
    the projection DPP they span is sampled (O(N k^2) after the O(N^3) eigendecomposition).
    Equal to ``sample_kdpp_spectral(key, dpp_spectrum(L), k)``; use that to reuse the
    eigendecomposition across samples.

    Args:
        key: jax.random key.
        L: (N, N) symmetric PSD kernel.
        k: Python int, 0 <= k <= rank(L).

    Returns:
        (N,) bool mask with exactly k True entries.
    """
    L = _as_float(L, "L")
    if L.ndim == 2 and L.shape[0] == L.shape[1]:
        _check_k(k, L.shape[0])  # a bad k is reported before the O(N^3) decomposition
    return sample_kdpp_spectral(key, dpp_spectrum(L), k)


# ----------------------------------------------------------------------------- greedy MAP

def _greedy_map_impl(L, k, eps):
    n = L.shape[0]
    C = jnp.zeros((n, k), L.dtype)
    d2 = jnp.diagonal(L)
    selected = jnp.zeros((n,), bool)
    idx = jnp.full((k,), -1, jnp.int32)
    logdets = jnp.zeros((k,), L.dtype)

    def body(t, state):
        C, d2, selected, idx, logdets, cur, done = state
        score = jnp.where(selected, -jnp.inf, d2)
        j = jnp.argmax(score)
        dj = score[j]
        ok = (~done) & (dj >= eps)
        e = (L[j] - C @ C[j]) / jnp.sqrt(jnp.where(ok, dj, 1.0))
        C = C.at[:, t].set(jnp.where(ok, e, 0.0))
        d2 = jnp.where(ok, d2 - e * e, d2)
        selected = selected.at[j].set(selected[j] | ok)
        idx = idx.at[t].set(jnp.where(ok, j, -1).astype(jnp.int32))
        cur = jnp.where(ok, cur + jnp.log(jnp.where(ok, dj, 1.0)), cur)
        logdets = logdets.at[t].set(cur)
        return C, d2, selected, idx, logdets, cur, done | ~ok

    state = (C, d2, selected, idx, logdets, jnp.zeros((), L.dtype), jnp.zeros((), bool))
    state = jax.lax.fori_loop(0, k, body, state)
    return state[3], state[4]


_greedy_map = jax.jit(_greedy_map_impl, static_argnums=1)


def greedy_map(L, k, eps=1e-10, check="cheap"):
    """Approximate DPP mode argmax_{|S| <= k} det(L_S) by fast greedy MAP (Chen et al. 2018).

    Each step adds the item j with the largest residual d_j^2 = det(L_{S+j}) / det(L_S),
    updating every residual with an incremental Cholesky in O(N k) (O(N k^2) in total).
    Selection stops, for good, when max d_j^2 < eps; the remaining slots hold index -1.

    Args:
        L: (N, N) symmetric PSD kernel.
        k: Python int, 0 <= k <= N, the number of steps (static).
        eps: residual threshold below which no item is added.
        check: input check on a concrete L. "cheap" (default): finite, symmetric and a
            non-negative diagonal, O(N^2). "full": also PSD by an O(N^3) ``eigvalsh``, which
            costs far more than the O(N k^2) selection. "none": shape only.

    Returns:
        indices: (k,) int32 selected items in selection order, -1 after stopping.
        log_dets: (k,) float64, log det(L_{S_t}) of the set selected after step t (a step
            that adds nothing repeats the previous value; the empty set has log det 0).
    """
    L = _check_kernel(L, check=check)
    k = _check_k(k, L.shape[0])
    return _greedy_map(L, k, jnp.asarray(eps, L.dtype))
