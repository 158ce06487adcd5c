"""Determinantal point processes (DPPs) for diverse selection of configurations.

An L-ensemble over N candidates assigns P(Y = S) = det(L_S) / det(L + I) to each
subset S, for a symmetric positive semi-definite kernel L of shape (N, N)
(Kulesza & Taskar 2012; docs/science.md section 19).

What lives here:

- kernels: :func:`rbf_kernel`, :func:`quality_diversity_kernel` (L_ij = q_i k_ij q_j);
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
  Chen, Zhang & Zhou 2018);
- dual forms for L = B B^T with B (N, D), D << N: :func:`inclusion_probabilities_dual`,
  :func:`sample_dpp_dual`, :func:`sample_kdpp_dual`, working with the D x D kernel B^T B.

Conventions. All functions are pure and work in float64 (inputs are cast). Samplers take
an explicit ``jax.random`` key (same key, same subset) and return a fixed-shape (N,) bool
mask, so they ``jit`` and ``vmap`` over keys. Input checks (shape, symmetry, positive
semi-definiteness, k against the rank) run when the inputs are concrete arrays; inside an
outer ``jit`` with traced kernels only the static shape checks run. The PSD check of the
samplers and marginals reads the eigenvalues of the decomposition they compute anyway (no
second O(N^3) pass); :func:`greedy_map`, which needs no decomposition, checks symmetry and a
non-negative diagonal by default and runs the full ``eigvalsh`` PSD check only with
``check="full"``. Integer ``k`` is always static (a Python int).

Cost. The eigendecomposition is O(N^3). The projection phase gathers the |B| kept
eigenvectors into an (N, width) block with a static width (|B| rounded up to a power of two
when the key is concrete, k for the k-DPP) and runs exactly |B| Gram-Schmidt steps, so a
sample costs O(N |Y|^2). Under ``jit`` / ``vmap`` over keys of :func:`sample_dpp` the width
cannot depend on |B| and is the number of positive eigenvalues: O(N |Y| R) per sample.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxiap.errors import JaxiapInputError

__all__ = [
    "rbf_kernel",
    "quality_diversity_kernel",
    "marginal_kernel",
    "inclusion_probabilities",
    "expected_size",
    "sample_dpp",
    "sample_kdpp",
    "DPPSpectrum",
    "dpp_spectrum",
    "dual_spectrum",
    "sample_dpp_spectral",
    "sample_kdpp_spectral",
    "greedy_map",
    "inclusion_probabilities_dual",
    "sample_dpp_dual",
    "sample_kdpp_dual",
    "configuration_features",
    "quality_scores",
]

_SYM_RTOL = 1e-6  # relative asymmetry allowed in L (max |L - L^T| / max |L|)
_PSD_RTOL = 1e-6  # relative negative eigenvalue allowed (min lam / max |lam|)


# ----------------------------------------------------------------------------- checks

def _concrete(x):
    """NumPy copy of ``x``, or None when ``x`` is a tracer (inside jit / grad)."""
    try:
        return np.asarray(x)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def _traced(*xs):
    """True if any leaf of ``xs`` is a tracer (inside jit / vmap / grad)."""
    return any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(xs))


def _as_float(x, name):
    try:
        return jnp.asarray(x, dtype=jnp.float64)
    except (TypeError, ValueError) as err:
        raise JaxiapInputError(f"{name} must be a numeric array; got {type(x).__name__} ({err}).") from err


def _check_kernel(L, name="L", check="cheap"):
    """Cast to float64 and check L, returning the symmetrised kernel (L + L^T) / 2.

    Always: (N, N) with N >= 1. When L is concrete: finite and symmetric (O(N^2)), then

    - ``check="cheap"``: non-negative diagonal (a necessary condition for PSD, O(N));
    - ``check="full"``: also PSD by an ``eigvalsh`` (O(N^3));
    - ``check="none"``: nothing more.

    The samplers and marginals pass ``check="cheap"`` and then test PSD on the eigenvalues of
    the eigendecomposition they compute anyway (:func:`_check_psd_eigs`), so no second O(N^3)
    decomposition is run.
    """
    if check not in ("cheap", "full", "none"):
        raise JaxiapInputError(f"check must be 'cheap', 'full' or 'none'; got {check!r}.")
    L = _as_float(L, name)
    if L.ndim != 2 or L.shape[0] != L.shape[1]:
        raise JaxiapInputError(f"{name} must be a square (N, N) kernel matrix; got shape {tuple(L.shape)}.")
    if L.shape[0] == 0:
        raise JaxiapInputError(f"{name} is empty (shape {tuple(L.shape)}); pass at least one candidate.")
    Ln = _concrete(L)
    if Ln is not None and check != "none":
        if not np.all(np.isfinite(Ln)):
            raise JaxiapInputError(f"{name} contains NaN or inf; check the descriptors and quality scores.")
        scale = max(float(np.max(np.abs(Ln))), np.finfo(np.float64).tiny)
        asym = float(np.max(np.abs(Ln - Ln.T)))
        if asym > _SYM_RTOL * scale:
            raise JaxiapInputError(
                f"{name} is not symmetric (max |L - L^T| = {asym:.3g}, max |L| = {scale:.3g}); "
                "a DPP kernel must be symmetric: pass (L + L.T) / 2 if the asymmetry is round-off.")
        dmin = float(np.min(np.diagonal(Ln)))
        if dmin < -_PSD_RTOL * scale:
            raise JaxiapInputError(
                f"{name} is not positive semi-definite: negative diagonal entry {dmin:.3g} "
                f"(max |L| = {scale:.3g}); build L as a Gram matrix "
                "(e.g. with rbf_kernel / quality_diversity_kernel, or B @ B.T).")
        if check == "full":
            _check_psd_eigs(np.linalg.eigvalsh(0.5 * (Ln + Ln.T)), name)
    return 0.5 * (L + L.T)


def _check_psd_eigs(lam, name="L"):
    """Raise JaxiapInputError if the (concrete, raw) eigenvalues ``lam`` show L is not PSD."""
    lam = np.asarray(lam)
    lam_scale = max(float(np.max(np.abs(lam))), np.finfo(np.float64).tiny)
    lmin = float(np.min(lam))
    if lmin < -_PSD_RTOL * lam_scale:
        raise JaxiapInputError(
            f"{name} is not positive semi-definite: smallest eigenvalue {lmin:.3g} "
            f"(largest |eigenvalue| {lam_scale:.3g}); build L as a Gram matrix "
            "(e.g. with rbf_kernel / quality_diversity_kernel, or B @ B.T).")


def _numerical_rank(lam, n):
    """Rank from eigenvalues (NumPy's matrix_rank tolerance: max lam * n * eps)."""
    lam = np.asarray(lam)
    if lam.size == 0:
        return 0
    top = float(np.max(lam))
    if top <= 0:
        return 0
    return int(np.sum(lam > top * n * np.finfo(np.float64).eps))


def _check_k(k, n, name="k"):
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)):
        raise JaxiapInputError(f"{name} must be a Python int (static); got {k!r} of type {type(k).__name__}.")
    k = int(k)
    if k < 0 or k > n:
        raise JaxiapInputError(f"{name} = {k} is out of range: need 0 <= {name} <= N = {n}.")
    return k


def _check_factor(B, name="B"):
    B = _as_float(B, name)
    if B.ndim != 2:
        raise JaxiapInputError(f"{name} must be an (N, D) feature matrix with L = B B^T; got shape {tuple(B.shape)}.")
    if B.shape[0] == 0 or B.shape[1] == 0:
        raise JaxiapInputError(f"{name} has an empty axis (shape {tuple(B.shape)}); need N >= 1 and D >= 1.")
    Bn = _concrete(B)
    if Bn is not None and not np.all(np.isfinite(Bn)):
        raise JaxiapInputError(f"{name} contains NaN or inf; check the features.")
    return B, Bn


# ----------------------------------------------------------------------------- kernels

def rbf_kernel(phi, lengthscale):
    """Gaussian RBF similarity k_ij = exp(-|phi_i - phi_j|^2 / (2 lengthscale^2)).

    Args:
        phi: (N, F) descriptors, one row per candidate configuration.
        lengthscale: positive scalar.

    Returns:
        (N, N) symmetric PSD kernel with unit diagonal (float64).
    """
    phi = _as_float(phi, "phi")
    if phi.ndim != 2:
        raise JaxiapInputError(f"phi must be an (N, F) descriptor matrix; got shape {tuple(phi.shape)}.")
    ls = _as_float(lengthscale, "lengthscale")
    if ls.ndim != 0:
        raise JaxiapInputError(f"lengthscale must be a scalar; got shape {tuple(ls.shape)}.")
    ls_c = _concrete(ls)
    if ls_c is not None and not (np.isfinite(ls_c) and ls_c > 0):
        raise JaxiapInputError(f"lengthscale must be a positive finite number; got {float(ls_c)}.")
    phi_c = _concrete(phi)
    if phi_c is not None and not np.all(np.isfinite(phi_c)):
        raise JaxiapInputError("phi contains NaN or inf; check the descriptors.")
    return _rbf(phi, ls)


@jax.jit
def _rbf(phi, ls):
    sq = jnp.sum(phi * phi, axis=1)
    d2 = sq[:, None] + sq[None, :] - 2.0 * phi @ phi.T
    d2 = jnp.maximum(0.5 * (d2 + d2.T), 0.0)
    d2 = d2 * (1.0 - jnp.eye(phi.shape[0], dtype=d2.dtype))  # exact zeros on the diagonal
    return jnp.exp(-0.5 * d2 / ls**2)


def quality_diversity_kernel(phi, quality, lengthscale):
    """Quality-diversity kernel L_ij = q_i k(phi_i, phi_j) q_j with an RBF similarity k.

    P(Y = S) is then proportional to prod_{i in S} q_i^2 * det(k_S).

    Args:
        phi: (N, F) descriptors.
        quality: (N,) non-negative quality scores q_i.
        lengthscale: positive scalar RBF lengthscale.

    Returns:
        (N, N) symmetric PSD kernel L (float64).
    """
    k = rbf_kernel(phi, lengthscale)
    q = _as_float(quality, "quality")
    if q.shape != (k.shape[0],):
        raise JaxiapInputError(f"quality must have shape (N,) = ({k.shape[0]},); got {tuple(q.shape)}.")
    qc = _concrete(q)
    if qc is not None and not (np.all(np.isfinite(qc)) and np.all(qc >= 0)):
        raise JaxiapInputError("quality must be finite and non-negative (q_i >= 0).")
    L = q[:, None] * k * q[None, :]
    return 0.5 * (L + L.T)  # exactly symmetric despite rounding in the products


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


# ----------------------------------------------------------------------------- dual forms

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



# ----------------------------------------------------------------------------- features and qualities

def configuration_features(basis_or_radial, structures, standardize=True):
    """Invariant per-configuration descriptors phi (C, d) for DPP similarity kernels.

    phi_i is :func:`jaxiap.descriptors.radial.structure_features` of configuration i (pair
    radial features summed over atoms, per species), which is invariant to permutations,
    rotations and translations.

    Args:
        basis_or_radial: a LinearBasis (its ``radial`` and ``n_species`` are used) or a
            RadialBasis (one species).
        structures: Structures with C configurations.
        standardize: if True (default), centre each feature over the C configurations and
            divide by its std (constant features become 0), so that an RBF lengthscale is
            in units of feature std.

    Returns:
        (C, d) float64 with d = n_basis * n_species.
    """
    from jaxiap.descriptors.radial import RadialBasis

    if hasattr(basis_or_radial, "radial"):
        radial, n_species = basis_or_radial.radial, int(getattr(basis_or_radial, "n_species", 1))
    elif isinstance(basis_or_radial, RadialBasis):
        radial, n_species = basis_or_radial, 1
    else:
        raise JaxiapInputError(f"basis_or_radial must be a LinearBasis or a RadialBasis; got "
                               f"{type(basis_or_radial).__name__}.")
    phi = _config_features(radial, structures.positions, structures.mask, structures.species,
                           structures.box, n_species)
    phi = jnp.asarray(phi, jnp.float64)
    if standardize:
        mu = jnp.mean(phi, axis=0)
        sd = jnp.std(phi, axis=0)
        phi = jnp.where(sd > 0, (phi - mu) / jnp.where(sd > 0, sd, 1.0), 0.0)
    return phi


@partial(jax.jit, static_argnums=5)
def _config_features(radial, positions, mask, species, box, n_species):
    from jaxiap.descriptors.radial import structure_features

    fn = lambda x, m, s, b: structure_features(radial, x, m, b, s, n_species)
    return jax.vmap(fn, in_axes=(0, 0, 0, None if box is None else 0))(positions, mask, species, box)


QUALITY_KINDS = ("uniform", "uncertainty", "boltzmann")


def _vector(x, name):
    x = np.asarray(jnp.asarray(x, jnp.float64))
    if x.ndim != 1:
        raise JaxiapInputError(f"{name} must be a (C,) vector; got shape {x.shape}.")
    if not np.all(np.isfinite(x)):
        raise JaxiapInputError(f"{name} contains NaN or inf.")
    return x


def quality_scores(kind, *, uncertainty=None, energies=None, kT=None, n_atoms=None, n=None):
    """DPP quality scores q (C,) for L_ij = q_i k_ij q_j (docs/science.md section 19.3).

    kinds:

    - "uniform": q = 1 (diversity only). The length C comes from ``n`` or from whichever of
      ``uncertainty``, ``energies``, ``n_atoms`` is given.
    - "uncertainty": q = u / max(u) for non-negative uncertainties u (e.g. committee
      disagreement); all ones if u is identically 0.
    - "boltzmann": q = exp(-(E - min E) / (2 kT)), so that q^2 is the Boltzmann weight
      relative to the lowest-energy candidate. ``energies`` are total energies in the units
      of ``kT``; if ``n_atoms`` (C,) is given, ``energies`` are read as per-atom energies and
      multiplied by n_atoms first.

    Returns:
        (C,) float64 in (0, 1] (uncertainty: [0, 1]).
    """
    if kind not in QUALITY_KINDS:
        raise JaxiapInputError(f"quality kind {kind!r} is unknown; choose one of {QUALITY_KINDS}.")
    if kind == "uniform":
        for name, x in (("uncertainty", uncertainty), ("energies", energies), ("n_atoms", n_atoms)):
            if n is None and x is not None:
                n = _vector(x, name).shape[0]
        if n is None:
            raise JaxiapInputError("quality 'uniform' needs the number of candidates: pass n=C "
                                   "(or any (C,) input such as energies=...).")
        return jnp.ones((int(n),), jnp.float64)
    if kind == "uncertainty":
        if uncertainty is None:
            raise JaxiapInputError("quality 'uncertainty' needs uncertainty=(C,) scores, e.g. "
                                   "committee_disagreement(...).max_force.")
        u = _vector(uncertainty, "uncertainty")
        if np.any(u < 0):
            raise JaxiapInputError("uncertainty must be >= 0 (a standard deviation or disagreement).")
        top = float(np.max(u)) if u.size else 0.0
        return jnp.asarray(u / top if top > 0 else np.ones_like(u))
    if energies is None or kT is None:
        raise JaxiapInputError("quality 'boltzmann' needs energies=(C,) and kT=... (a positive temperature "
                               "in the energy units).")
    e = _vector(energies, "energies")
    kT = float(kT)
    if not (np.isfinite(kT) and kT > 0):
        raise JaxiapInputError(f"kT must be a positive finite temperature; got {kT}.")
    if n_atoms is not None:
        na = _vector(n_atoms, "n_atoms")
        if na.shape != e.shape:
            raise JaxiapInputError(f"n_atoms must have the shape of energies {e.shape}; got {na.shape}.")
        e = e * na
    return jnp.asarray(np.exp(-(e - np.min(e)) / (2.0 * kT)))
