"""Input checks shared by the DPP modules (:mod:`jaxiap.active.dpp`, :mod:`jaxiap.active.dpp_kernels`,
:mod:`jaxiap.active.dpp_dual`).

Checks (shape, symmetry, positive semi-definiteness, k against the rank) run when the inputs
are concrete arrays; inside an outer ``jit`` with traced kernels only the static shape checks
run. The PSD check of the samplers and marginals reads the eigenvalues of the decomposition
they compute anyway (:func:`_check_psd_eigs`, no second O(N^3) pass); :func:`_check_kernel`
with ``check="cheap"`` checks symmetry and a non-negative diagonal, and runs the full
``eigvalsh`` PSD check only with ``check="full"``. Integer ``k`` is always static (a Python int).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxiap.errors import JaxiapInputError

_SYM_RTOL = 1e-6  # relative asymmetry allowed in L (max |L - L^T| / max |L|)
_PSD_RTOL = 1e-6  # relative negative eigenvalue allowed (min lam / max |lam|)


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
