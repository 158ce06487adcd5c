"""Determinantal point processes (DPPs) for diverse selection of configurations.

An L-ensemble over N candidates assigns P(Y = S) = det(L_S) / det(L + I) to each
subset S, for a symmetric positive semi-definite kernel L of shape (N, N)
(Kulesza & Taskar 2012; SCIENCE.md section 5).

What lives here:

- kernels: :func:`rbf_kernel`, :func:`quality_diversity_kernel` (L_ij = q_i k_ij q_j);
- marginals: :func:`marginal_kernel` (K = L (L + I)^-1), :func:`inclusion_probabilities`
  (diag K), :func:`expected_size` (sum lam / (1 + lam));
- exact samplers: :func:`sample_dpp` (spectral: eigenvector selection, then a projection
  DPP by sequential conditioning) and :func:`sample_kdpp` (exactly k items, elementary
  symmetric polynomials in log space);
- approximate mode: :func:`greedy_map` (fast greedy MAP by incremental Cholesky,
  Chen, Zhang & Zhou 2018);
- dual forms for L = B B^T with B (N, D), D << N: :func:`inclusion_probabilities_dual`,
  :func:`sample_dpp_dual`, :func:`sample_kdpp_dual`, working with the D x D kernel B^T B.

Conventions. All functions are pure and work in float64 (inputs are cast). Samplers take
an explicit ``jax.random`` key (same key, same subset) and return a fixed-shape (N,) bool
mask, so they ``jit`` and ``vmap`` over keys. Input checks (shape, symmetry, positive
semi-definiteness, k against the rank) run when the inputs are concrete arrays; inside an
outer ``jit`` with traced kernels only the static shape checks run. Integer ``k`` is
always static (a Python int).
"""

from __future__ import annotations

from functools import partial

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


def _as_float(x, name):
    try:
        return jnp.asarray(x, dtype=jnp.float64)
    except (TypeError, ValueError) as err:
        raise JaxiapInputError(f"{name} must be a numeric array; got {type(x).__name__} ({err}).") from err


def _check_kernel(L, name="L"):
    """Cast to float64, check (N, N), finite, symmetric and PSD (values checked when concrete).

    Returns the symmetrised kernel (L + L^T) / 2 and, when concrete, its eigenvalues (np).
    """
    L = _as_float(L, name)
    if L.ndim != 2 or L.shape[0] != L.shape[1]:
        raise JaxiapInputError(f"{name} must be a square (N, N) kernel matrix; got shape {tuple(L.shape)}.")
    if L.shape[0] == 0:
        raise JaxiapInputError(f"{name} is empty (shape {tuple(L.shape)}); pass at least one candidate.")
    Ln = _concrete(L)
    lam = None
    if Ln is not None:
        if not np.all(np.isfinite(Ln)):
            raise JaxiapInputError(f"{name} contains NaN or inf; check the descriptors and quality scores.")
        scale = max(float(np.max(np.abs(Ln))), np.finfo(np.float64).tiny)
        asym = float(np.max(np.abs(Ln - Ln.T)))
        if asym > _SYM_RTOL * scale:
            raise JaxiapInputError(
                f"{name} is not symmetric (max |L - L^T| = {asym:.3g}, max |L| = {scale:.3g}); "
                "a DPP kernel must be symmetric: pass (L + L.T) / 2 if the asymmetry is round-off.")
        lam = np.linalg.eigvalsh(0.5 * (Ln + Ln.T))
        lam_scale = max(float(np.max(np.abs(lam))), np.finfo(np.float64).tiny)
        if lam[0] < -_PSD_RTOL * lam_scale:
            raise JaxiapInputError(
                f"{name} is not positive semi-definite: smallest eigenvalue {lam[0]:.3g} "
                f"(largest |eigenvalue| {lam_scale:.3g}); build L as a Gram matrix "
                "(e.g. with rbf_kernel / quality_diversity_kernel, or B @ B.T).")
    return 0.5 * (L + L.T), lam


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


# ----------------------------------------------------------------------------- marginals

@jax.jit
def _eig(L):
    lam, V = jnp.linalg.eigh(L)
    return jnp.maximum(lam, 0.0), V


def marginal_kernel(L):
    """Marginal kernel K = L (L + I)^-1, computed as V diag(lam / (1 + lam)) V^T.

    Args:
        L: (N, N) symmetric PSD L-ensemble kernel.

    Returns:
        (N, N) symmetric K with eigenvalues in [0, 1); P(S subset of Y) = det(K_S).
    """
    L, _ = _check_kernel(L)
    lam, V = _eig(L)
    K = (V * (lam / (1.0 + lam))) @ V.T
    return 0.5 * (K + K.T)


def inclusion_probabilities(L):
    """Inclusion probabilities P(i in Y) = K_ii (the ridge leverage scores of L).

    Args:
        L: (N, N) symmetric PSD kernel.

    Returns:
        (N,) probabilities in [0, 1).
    """
    L, _ = _check_kernel(L)
    lam, V = _eig(L)
    return jnp.sum(V**2 * (lam / (1.0 + lam)), axis=1)


def expected_size(L):
    """Expected sample size E|Y| = sum_n lam_n / (1 + lam_n); scalar.

    Args:
        L: (N, N) symmetric PSD kernel.
    """
    L, _ = _check_kernel(L)
    lam, _ = _eig(L)
    return jnp.sum(lam / (1.0 + lam))


# ----------------------------------------------------------------------------- samplers

def _projection_sample(key, V, colmask):
    """Sample the projection DPP with kernel K = V_B V_B^T, B = columns where colmask.

    Sequential conditioning (chain rule) with an incremental Cholesky of K, i.e. Gram-Schmidt
    in the row space of V_B: pick i with probability proportional to the residual d_i^2
    (initially |V_B[i]|^2, which sums to |B|), then remove the component along the picked
    item from every residual. Fixed shapes: R steps, those at t >= |B| are masked off.

    Args:
        key: jax.random key.
        V: (N, R) matrix whose selected columns are orthonormal.
        colmask: (R,) bool, which columns span the projection DPP.

    Returns:
        (N,) bool mask with exactly |B| items (almost surely).
    """
    n, r = V.shape
    V = V * colmask[None, :]
    m = jnp.sum(colmask)
    d2 = jnp.sum(V * V, axis=1)
    C = jnp.zeros((n, r), V.dtype)
    selected = jnp.zeros((n,), bool)

    def body(t, state):
        key, C, d2, selected = state
        key, sub = jax.random.split(key)
        p = jnp.where(selected, 0.0, jnp.maximum(d2, 0.0))
        active = (t < m) & (jnp.sum(p) > 0)
        logits = jnp.where(p > 0, jnp.log(jnp.where(p > 0, p, 1.0)), -jnp.inf)
        i = jax.random.categorical(sub, logits)
        k_col = V @ V[i]  # column i of K
        e = (k_col - C @ C[i]) / jnp.sqrt(jnp.maximum(d2[i], jnp.finfo(V.dtype).tiny))
        C = C.at[:, t].set(jnp.where(active, e, 0.0))
        d2 = jnp.where(active, d2 - e * e, d2)
        selected = selected.at[i].set(selected[i] | active)
        return key, C, d2, selected

    _, _, _, selected = jax.lax.fori_loop(0, r, body, (key, C, d2, selected))
    return selected


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
def _sample_dpp(key, L):
    k_eig, k_proj = jax.random.split(key)
    lam, V = _eig(L)
    return _projection_sample(k_proj, V, _bernoulli_eigs(k_eig, lam))


def sample_dpp(key, L):
    """Exact sample from the L-ensemble DPP by the spectral method.

    Eigendecompose L, keep eigenvector n with probability lam_n / (1 + lam_n), then sample
    the projection DPP spanned by the kept eigenvectors by sequential conditioning.
    Cost O(N^3) per call. Jittable and vmappable over keys.

    Args:
        key: jax.random key.
        L: (N, N) symmetric PSD kernel.

    Returns:
        (N,) bool mask of the sampled subset.
    """
    L, _ = _check_kernel(L)
    return _sample_dpp(key, L)


def _sample_kdpp_impl(key, L, k):
    k_eig, k_proj = jax.random.split(key)
    lam, V = _eig(L)
    return _projection_sample(k_proj, V, _kdpp_eigs(k_eig, lam, k))


_sample_kdpp = jax.jit(_sample_kdpp_impl, static_argnums=2)


def sample_kdpp(key, L, k):
    """Exact sample from the k-DPP: P(S) = det(L_S) / e_k(lam) for |S| = k.

    Exactly k eigenvectors are chosen with the elementary symmetric polynomials of the
    eigenvalues (computed in log space, so large or small spectra do not overflow), then
    the projection DPP they span is sampled.

    Args:
        key: jax.random key.
        L: (N, N) symmetric PSD kernel.
        k: Python int, 0 <= k <= rank(L).

    Returns:
        (N,) bool mask with exactly k True entries.
    """
    L, lam = _check_kernel(L)
    n = L.shape[0]
    k = _check_k(k, n)
    if lam is not None and k > _numerical_rank(lam, n):
        raise JaxiapInputError(
            f"k = {k} exceeds rank(L) = {_numerical_rank(lam, n)}: a k-DPP needs k linearly independent "
            "items; lower k or use a kernel of higher rank (e.g. a smaller RBF lengthscale).")
    return _sample_kdpp(key, L, k)


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


def greedy_map(L, k, eps=1e-10):
    """Approximate DPP mode argmax_{|S| <= k} det(L_S) by fast greedy MAP (Chen et al. 2018).

    Each step adds the item j with the largest residual d_j^2 = det(L_{S+j}) / det(L_S),
    updating every residual with an incremental Cholesky in O(N k) (O(N k^2) in total).
    Selection stops, for good, when max d_j^2 < eps; the remaining slots hold index -1.

    Args:
        L: (N, N) symmetric PSD kernel.
        k: Python int, 0 <= k <= N, the number of steps (static).
        eps: residual threshold below which no item is added.

    Returns:
        indices: (k,) int32 selected items in selection order, -1 after stopping.
        log_dets: (k,) float64, log det(L_{S_t}) of the set selected after step t (a step
            that adds nothing repeats the previous value; the empty set has log det 0).
    """
    L, _ = _check_kernel(L)
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
    k_eig, k_proj = jax.random.split(key)
    lam, V, valid = _dual_eig(B)
    return _projection_sample(k_proj, V, _bernoulli_eigs(k_eig, lam) & valid)


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
    k_eig, k_proj = jax.random.split(key)
    lam, V, valid = _dual_eig(B)
    return _projection_sample(k_proj, V, _kdpp_eigs(k_eig, lam, k) & valid)


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
    """DPP quality scores q (C,) for L_ij = q_i k_ij q_j (SCIENCE.md section 5).

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
