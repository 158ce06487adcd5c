"""Bayesian optimal experimental design for linear potentials (docs/science.md section 17).

A candidate configuration i contributes the block of weighted rows U_i = W_i^1/2 A_i
(P, K): its energy row first, then its 3N force rows (P = 1 + 3N). Labelling a set S of
candidates gives the information (posterior precision) matrix

    M(S) = M0 + sum_{i in S} U_i^T U_i,

with M0 (K, K) a prior precision (or the precision of the current posterior).

Criteria (:func:`criterion_value`) are all oriented so that **larger is better**:

====  ===========================================  ==========================================
name  value returned                               meaning
====  ===========================================  ==========================================
A     -tr(M^-1)                                    minimise the total coefficient variance
D     log det M                                    maximise the information (log-det)
E     lambda_min(M)                                maximise the smallest eigenvalue
T     tr(M)                                        maximise the total information
C     -c^T M^-1 c  (c (K,); (K, q): -tr(c^T M^-1 c))  minimise the variance of a QoI c . theta
G     -max_a a^T M^-1 a over the pool rows         minimise the worst predictive variance
I     -mean_a a^T M^-1 a over the pool rows        minimise the average predictive variance
V     -mean_a a^T M^-1 a over reference rows       same, over m specified points
====  ===========================================  ==========================================

For G and I the "pool" is every non-zero row of ``candidate_rows`` (C, P, K) (padded
atoms give zero rows, which are left out of the maximum and the mean); for V it is every
non-zero row of ``reference_rows`` ((m, K) or (m, P, K)). Predictive variances
a^T M^-1 a of *weighted* rows are in units of the noise variance of that row (a
signal-to-noise ratio); pass unweighted rows (weights 1) to get variances in the units
of the prediction squared, given that M is then in the units of the weights.

:func:`greedy_design` adds candidates one at a time. It keeps M and M^-1, and per step
scores every candidate at once (vmapped) with rank-P updates: with
B_i = U_i M^-1 (P, K), S_i = I + B_i U_i^T = L_i L_i^T and X_i = L_i^-1 B_i,

- D gain: log det S_i (matrix determinant lemma);
- A gain: ||X_i||_F^2 = tr(M^-1 U^T S^-1 U M^-1) (Woodbury);
- C gain: ||X_i c||^2;
- I / V gain: tr(X_i R X_i^T) with R the mean of a a^T over the pool / reference rows;
- G: the variance of pool row a after the update is a^T M^-1 a - ||X_i a||^2;
- E: lambda_min(M + U_i^T U_i) by a trial eigh per candidate (exact; fine for K <~ 100);
- T gain: ||U_i||_F^2.

After a pick, M^-1 <- M^-1 - X_i^T X_i (Woodbury). Everything is float64.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxiap.errors import JaxiapInputError
from jaxiap.inference.posterior import Posterior, precision_from_covariance
from jaxiap.potentials.linear import structure_rows

__all__ = [
    "CRITERIA",
    "DesignResult",
    "candidate_rows",
    "information_matrix",
    "criterion_value",
    "greedy_design",
    "posterior_precision",
]

CRITERIA = ("A", "D", "E", "T", "C", "G", "I", "V")
_G_TOP_ROWS = 256  # pool rows scored exactly per step for the G criterion (see greedy_design)


class DesignResult(NamedTuple):
    """Result of :func:`greedy_design`.

    indices: (k,) int32 picked candidates, in order.
    gains: (k,) float64, gains[t] = values[t + 1] - values[t] (criterion improvement of pick t).
    values: (k + 1,) float64 criterion value (larger is better) before the first pick and
        after each pick.
    M: (K, K) the final information matrix M0 + sum of U_i^T U_i over the picks.
    """

    indices: jnp.ndarray
    gains: jnp.ndarray
    values: jnp.ndarray
    M: jnp.ndarray


# ----------------------------------------------------------------------------- helpers

def _concrete(x):
    try:
        return np.asarray(x)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def _as_float(x, name):
    try:
        return jnp.asarray(x, dtype=jnp.float64)
    except (TypeError, ValueError) as err:
        raise JaxiapInputError(f"{name} must be a numeric array; got {type(x).__name__} ({err}).") from err


def _check_finite(x, name):
    xc = _concrete(x)
    if xc is not None and not np.all(np.isfinite(xc)):
        raise JaxiapInputError(f"{name} contains NaN or inf; check the features / weights that built it.")


def _check_name(name):
    if not isinstance(name, str) or name.upper() not in CRITERIA:
        raise JaxiapInputError(f"criterion {name!r} is unknown; choose one of {CRITERIA} "
                               "(A, D, E, T, C, G, I, V optimality).")
    return name.upper()


def _check_M(M, name="M", k=None):
    M = _as_float(M, name)
    if M.ndim != 2 or M.shape[0] != M.shape[1]:
        raise JaxiapInputError(f"{name} must be a square (K, K) information matrix; got shape {tuple(M.shape)}.")
    if k is not None and M.shape[0] != k:
        raise JaxiapInputError(f"{name} has shape {tuple(M.shape)} but the rows have K = {k} features; "
                               "build it with the same basis (information_matrix(rows, prior_precision)).")
    Mc = _concrete(M)
    if Mc is not None:
        if not np.all(np.isfinite(Mc)):
            raise JaxiapInputError(f"{name} contains NaN or inf.")
        scale = max(float(np.max(np.abs(Mc))), np.finfo(float).tiny)
        if float(np.max(np.abs(Mc - Mc.T))) > 1e-8 * scale:
            raise JaxiapInputError(f"{name} is not symmetric; pass (M + M.T) / 2 if the asymmetry is round-off.")
        try:
            np.linalg.cholesky(0.5 * (Mc + Mc.T))
        except np.linalg.LinAlgError:
            raise JaxiapInputError(
                f"{name} is not positive definite; add a prior precision (e.g. information_matrix(rows, "
                "alpha * eye(K)) with alpha > 0) so that M is invertible.") from None
    return 0.5 * (M + M.T)


def _flat_rows(rows, name, k=None):
    rows = _as_float(rows, name)
    if rows.ndim not in (2, 3):
        raise JaxiapInputError(f"{name} must have shape (n, K) or (C, P, K); got {tuple(rows.shape)}.")
    if k is not None and rows.shape[-1] != k:
        raise JaxiapInputError(f"{name} has K = {rows.shape[-1]} features but M is ({k}, {k}); "
                               "use rows from the same basis.")
    _check_finite(rows, name)
    return rows.reshape(-1, rows.shape[-1])


def _row_moment(rows2d):
    """R = mean over the non-zero rows of a a^T (K, K)."""
    nz = jnp.any(rows2d != 0, axis=1).astype(rows2d.dtype)
    n = jnp.maximum(jnp.sum(nz), 1.0)
    return (rows2d * nz[:, None]).T @ rows2d / n


def _nonzero(rows2d):
    return jnp.any(rows2d != 0, axis=1)


def _inv_spd(M):
    cho = jax.scipy.linalg.cho_factor(M, lower=True)
    Minv = jax.scipy.linalg.cho_solve(cho, jnp.eye(M.shape[0], dtype=M.dtype))
    return 0.5 * (Minv + Minv.T)


def _c_matrix(c, k):
    if c is None:
        raise JaxiapInputError("criterion 'C' needs c, the (K,) gradient of the quantity of interest "
                               "with respect to the coefficients; pass c=... (or pick another criterion).")
    c = _as_float(c, "c")
    if c.ndim == 1:
        c = c[:, None]
    if c.ndim != 2 or c.shape[0] != k:
        raise JaxiapInputError(f"c must have shape (K,) or (K, q) with K = {k}; got {tuple(c.shape)}.")
    _check_finite(c, "c")
    return c


def _value(name, M, Minv, c, R, pool, pool_nz):
    """Criterion value (larger is better) from M and M^-1; all arguments arrays (jittable)."""
    if name == "A":
        return -jnp.trace(Minv)
    if name == "D":
        return jnp.linalg.slogdet(M)[1]
    if name == "E":
        return jnp.linalg.eigvalsh(M)[0]
    if name == "T":
        return jnp.trace(M)
    if name == "C":
        return -jnp.sum(c * (Minv @ c))
    if name in ("I", "V"):
        return -jnp.sum(Minv * R)
    if name == "G":
        var = jnp.sum((pool @ Minv) * pool, axis=1)
        return -jnp.max(jnp.where(pool_nz, var, -jnp.inf))
    raise AssertionError(name)


# ----------------------------------------------------------------------------- public API

def candidate_rows(basis, structures, energy_weight=1.0, force_weight=1.0):
    """Weighted design rows of each candidate configuration, (C, P, K) float64.

    Row block of candidate i: [sqrt(w_E) B(x_i); sqrt(w_F) (-dB/dx_i)], i.e. the energy row
    first, then 3N force rows in atom-major order (atom j, then x, y, z), exactly the rows
    (and the weights, as sqrt) of :func:`jaxiap.potentials.linear.design_matrix`. P = 1 + 3N
    with N the padded atom count; rows of padded atoms are zero.

    Units: the weights are precisions, 1 / noise variance: ``energy_weight`` in
    1 / energy^2 and ``force_weight`` in 1 / (energy / length)^2 (reduced LJ units, or
    eV^-2 and (eV/Å)^-2 for ASE data). Then U^T U is an information matrix in units of
    1 / coefficient^2, and a^T M^-1 a for a weighted row is a variance in units of that
    row's noise variance.

    Args:
        basis: a :class:`~jaxiap.potentials.linear.LinearBasis`.
        structures: :class:`~jaxiap.structures.Structures` with C configurations.
        energy_weight: scalar or (C,) energy-row weights w_E >= 0.
        force_weight: scalar or (C,) force-row weights w_F >= 0.
    """
    pos = structures.positions
    c, n = pos.shape[:2]
    ws = []
    for name, w in (("energy_weight", energy_weight), ("force_weight", force_weight)):
        w = _as_float(w, name)
        if w.ndim > 1 or (w.ndim == 1 and w.shape[0] != c):
            raise JaxiapInputError(f"{name} must be a scalar or shape (C,) = ({c},); got {tuple(w.shape)}.")
        wc = _concrete(w)
        if wc is not None and (not np.all(np.isfinite(wc)) or np.any(wc < 0)):
            raise JaxiapInputError(f"{name} must be finite and >= 0 (it is 1 / noise variance).")
        ws.append(jnp.broadcast_to(w, (c,)))
    rows = structure_rows(basis, structures)
    mask = structures.mask.astype(rows.dtype)
    scale = jnp.concatenate([jnp.sqrt(ws[0])[:, None],
                             jnp.sqrt(ws[1])[:, None] * jnp.repeat(mask, 3, axis=1)], axis=1)  # (C, P)
    return rows * scale[:, :, None]


def information_matrix(rows, prior_precision):
    """M = prior_precision + sum of a a^T over the rows; (K, K) float64.

    Args:
        rows: (n, K) weighted rows, or (C, P, K) candidate blocks (all are used).
        prior_precision: (K, K) symmetric positive (semi-)definite prior precision.
    """
    P0 = _as_float(prior_precision, "prior_precision")
    if P0.ndim != 2 or P0.shape[0] != P0.shape[1]:
        raise JaxiapInputError(f"prior_precision must be (K, K); got shape {tuple(P0.shape)}.")
    r = _flat_rows(rows, "rows", P0.shape[0])
    M = P0 + r.T @ r
    return 0.5 * (M + M.T)


def criterion_value(name, M, *, c=None, reference_rows=None, candidate_rows=None):
    """Optimal-design criterion of the information matrix M, oriented so larger is better.

    A: -tr(M^-1); D: log det M; E: lambda_min(M); T: tr(M); C: -c^T M^-1 c;
    G: -max over the non-zero rows a of ``candidate_rows`` of a^T M^-1 a;
    I: -mean of a^T M^-1 a over the non-zero rows of ``candidate_rows`` (the pool);
    V: -mean of a^T M^-1 a over the non-zero rows of ``reference_rows``.

    Args:
        name: one of "A", "D", "E", "T", "C", "G", "I", "V".
        M: (K, K) symmetric positive-definite information matrix.
        c: (K,) or (K, q) QoI gradient(s), for C.
        reference_rows: (m, K) or (m, P, K) rows, for V.
        candidate_rows: (C, P, K) or (n, K) pool rows, for G and I.

    Returns:
        float64 scalar.
    """
    name = _check_name(name)
    M = _check_M(M)
    k = M.shape[0]
    c_, R, pool, nz = _criterion_inputs(name, k, c, reference_rows, candidate_rows)
    return _value_jit(M, c_, R, pool, nz, name)


@partial(jax.jit, static_argnums=5)
def _value_jit(M, c, R, pool, pool_nz, name):
    return _value(name, M, _inv_spd(M), c, R, pool, pool_nz)


def _criterion_inputs(name, k, c, reference_rows, pool_rows):
    c_ = _c_matrix(c, k) if name == "C" else jnp.zeros((k, 1))
    R = jnp.zeros((k, k))
    pool = jnp.zeros((1, k))
    nz = jnp.ones((1,), bool)
    if name == "V":
        if reference_rows is None:
            raise JaxiapInputError("criterion 'V' needs reference_rows, the (m, K) rows at which the average "
                                   "predictive variance is minimised; pass reference_rows=...")
        R = _row_moment(_flat_rows(reference_rows, "reference_rows", k))
    if name in ("G", "I"):
        if pool_rows is None:
            raise JaxiapInputError(f"criterion {name!r} needs candidate_rows, the (C, P, K) rows of the pool; "
                                   "pass candidate_rows=...")
        pool = _flat_rows(pool_rows, "candidate_rows", k)
        nz = _nonzero(pool)
        if name == "I":
            R = _row_moment(pool)
    return c_, R, pool, nz


def greedy_design(rows, M0, k, criterion, *, c=None, reference_rows=None, exclude=None):
    """Greedy sequential optimal design: pick k candidates, each maximising the criterion gain.

    Each step scores every remaining candidate at once with rank-P (Woodbury / determinant
    lemma) updates of M^-1 (see the module docstring), picks the best, and updates M and
    M^-1. Excluded (e.g. already labelled) candidates are never picked, nor is any
    candidate picked twice. Jitted with k static (``lax.scan`` over picks); cost per step
    O(C P K (P + K)) plus a batched (P, P) Cholesky per candidate.

    G: the pool is ``rows`` itself. Each step scores the new worst-case variance over the
    ``256`` pool rows of largest current variance; the pick is the exact greedy G pick
    whenever its new maximum is at least the 257th largest current variance (always the
    case for pools of <= 256 non-zero rows), otherwise a close approximation. ``values``
    and ``gains`` are exact in every case.

    Args:
        rows: (C, P, K) weighted candidate rows (:func:`candidate_rows`); (C, K) is read as P = 1.
        M0: (K, K) current information matrix (prior precision plus labelled data), SPD.
        k: Python int, number of picks, <= number of non-excluded candidates.
        criterion: "A", "D", "E", "T", "C", "G", "I" or "V".
        c: (K,) or (K, q) QoI gradient(s), for C.
        reference_rows: (m, K) or (m, P, K), for V.
        exclude: (C,) bool, True for candidates that may not be picked.

    Returns:
        :class:`DesignResult` (indices (k,), gains (k,), values (k+1,), M (K, K)).
    """
    name = _check_name(criterion)
    rows = _as_float(rows, "rows")
    if rows.ndim == 2:
        rows = rows[:, None, :]
    if rows.ndim != 3:
        raise JaxiapInputError(f"rows must have shape (C, P, K) (or (C, K)); got {tuple(rows.shape)}.")
    _check_finite(rows, "rows")
    C, _, K = rows.shape
    M0 = _check_M(M0, "M0", K)
    if exclude is None:
        exclude = jnp.zeros((C,), bool)
    else:
        exclude = jnp.asarray(exclude)
        if exclude.shape != (C,) or exclude.dtype != jnp.bool_:
            raise JaxiapInputError(f"exclude must be a (C,) = ({C},) bool mask; got shape {tuple(exclude.shape)} "
                                   f"dtype {exclude.dtype}.")
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)):
        raise JaxiapInputError(f"k must be a Python int (static); got {k!r}.")
    k = int(k)
    exc = _concrete(exclude)
    n_avail = C - int(np.sum(exc)) if exc is not None else C
    if k < 0 or k > n_avail:
        raise JaxiapInputError(f"k = {k} is out of range: only {n_avail} of {C} candidates are available "
                               "(not excluded); lower k or add candidates to the pool.")
    c_, R, pool, nz = _criterion_inputs(name, K, c, reference_rows, rows if name in ("G", "I") else None)
    n_top = min(_G_TOP_ROWS, pool.shape[0])
    return _greedy(rows, M0, exclude, c_, R, pool, nz, k, name, n_top)


@partial(jax.jit, static_argnums=(7, 8, 9))
def _greedy(U, M0, exclude, c, R, pool, pool_nz, k, name, n_top):
    C, P, K = U.shape
    eye_p = jnp.eye(P, dtype=U.dtype)
    Minv0 = _inv_spd(M0)
    val0 = _value(name, M0, Minv0, c, R, pool, pool_nz)

    def scores(M, Minv, cur):
        if name == "T":
            return jnp.sum(U * U, axis=(1, 2)), None
        if name == "E":
            Mt = M[None] + jnp.einsum("cpk,cpl->ckl", U, U)
            return jax.vmap(lambda m: jnp.linalg.eigvalsh(m)[0])(Mt) - cur, None
        B = jnp.einsum("cpk,kl->cpl", U, Minv)
        S = eye_p + jnp.einsum("cpk,cqk->cpq", B, U)
        S = 0.5 * (S + jnp.swapaxes(S, 1, 2))
        L = jnp.linalg.cholesky(S)
        if name == "D":
            return 2.0 * jnp.sum(jnp.log(jnp.diagonal(L, axis1=1, axis2=2)), axis=1), None
        X = jax.scipy.linalg.solve_triangular(L, B, lower=True)  # (C, P, K)
        if name == "A":
            return jnp.sum(X * X, axis=(1, 2)), X
        if name == "C":
            Xc = jnp.einsum("cpk,kq->cpq", X, c)
            return jnp.sum(Xc * Xc, axis=(1, 2)), X
        if name in ("I", "V"):
            return jnp.sum(jnp.einsum("cpk,kl->cpl", X, R) * X, axis=(1, 2)), X
        # G: new variances of the n_top pool rows of largest current variance
        var = jnp.where(pool_nz, jnp.sum((pool @ Minv) * pool, axis=1), -jnp.inf)
        top_var, top_idx = jax.lax.top_k(var, n_top)
        red = jnp.einsum("cpk,tk->cpt", X, pool[top_idx])
        new = top_var[None, :] - jnp.sum(red * red, axis=1)
        return -jnp.max(jnp.where(jnp.isfinite(top_var)[None, :], new, -jnp.inf), axis=1) - cur, X

    def step(state, _):
        M, Minv, taken, cur = state
        gain, X = scores(M, Minv, cur)
        gain = jnp.where(taken, -jnp.inf, gain)
        i = jnp.argmax(gain)
        Ui = U[i]
        M = M + Ui.T @ Ui
        M = 0.5 * (M + M.T)
        if X is None:
            Bi = Ui @ Minv
            Si = eye_p + Bi @ Ui.T
            Li = jnp.linalg.cholesky(0.5 * (Si + Si.T))
            Xi = jax.scipy.linalg.solve_triangular(Li, Bi, lower=True)
        else:
            Xi = X[i]
        Minv = Minv - Xi.T @ Xi
        Minv = 0.5 * (Minv + Minv.T)
        new = _value(name, M, Minv, c, R, pool, pool_nz)
        g = new - cur if name in ("G", "E") else gain[i]
        return (M, Minv, taken.at[i].set(True), new), (i.astype(jnp.int32), g, new)

    state = (M0, Minv0, exclude, val0)
    (M, _, _, _), (idx, gains, vals) = jax.lax.scan(step, state, None, length=k)
    return DesignResult(idx, gains, jnp.concatenate([val0[None], vals]), M)


def posterior_precision(posterior, ridge=0.0):
    """(K, K) precision matrix (inverse covariance) of a posterior over coefficients.

    Any :class:`~jaxiap.inference.posterior.Posterior`: ``posterior.precision(ridge)``
    (GaussianPosterior: (F F^T)^-1 from its covariance factor F; the others,
    model-error posteriors included: the inverse of ``posterior.covariance()``, for a
    Student-t the covariance df / (df - 2) Sigma). A bare (K, K) covariance array is
    accepted too.

    Args:
        posterior: a Posterior, or a (K, K) covariance matrix.
        ridge: relative regulariser; the inverse is taken of cov + ridge * mean(diag cov) * I.
            Use ridge > 0 for a sample posterior with fewer samples than K + 1, whose
            sample covariance is singular.

    Returns:
        (K, K) symmetric positive-definite float64 precision.
    """
    if isinstance(posterior, Posterior):
        return posterior.precision(ridge)
    if isinstance(posterior, (np.ndarray, jax.Array)):
        return precision_from_covariance(posterior, ridge)
    raise JaxiapInputError(f"posterior of type {type(posterior).__name__} has no covariance; pass a Posterior "
                           "(jaxiap.inference.posterior) or a (K, K) covariance array.")
