"""Sufficient statistics of weighted linear systems and the checks the linear solvers share (float64).

``NormalEquations`` (A^T W A, A^T W y, y^T W y, N, sum log w, split by energy
/ force rows) of a ``DesignMatrix`` or of a stream of chunks, the validation
of priors and noise variances, and checked Cholesky factors. Used by
``jaxiap.inference.linear`` (which re-exports the public names) and
``jaxiap.inference.streaming``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg as sla

from jaxiap.errors import JaxiapInputError, SingularSystemError
from jaxiap.potentials.linear import ENERGY_ROW, FORCE_ROW, DesignMatrix

N_KINDS = 2  # ENERGY_ROW = 0, FORCE_ROW = 1: the leading axis of NormalEquations


def _check_design(design: DesignMatrix) -> None:
    A, y, w = (np.asarray(v) for v in (design.A, design.y, design.w))
    for name, v in (("design matrix A", A), ("targets y", y), ("row weights w", w)):
        if not np.isfinite(v).all():
            raise JaxiapInputError(f"{name} contains NaN/inf; check the dataset labels and positions")
    if (w < 0).any():
        raise JaxiapInputError("row weights w must be >= 0")


# ---------------------------------------------------------------------------
# sufficient statistics


class NormalEquations(NamedTuple):
    """Sufficient statistics of a weighted linear system, split by row kind.

    The leading axis (2,) is the row kind (ENERGY_ROW = 0, FORCE_ROW = 1):
    AtWA (2, K, K), AtWy (2, K), ytWy (2,), n_rows (2,) rows with w > 0 and
    sum_log_w (2,) = sum of log w over those rows. ``total()`` sums the kinds.
    Statistics of disjoint row sets add: ``combine(a, b)``.
    """

    AtWA: jnp.ndarray
    AtWy: jnp.ndarray
    ytWy: jnp.ndarray
    n_rows: jnp.ndarray
    sum_log_w: jnp.ndarray

    @property
    def n_features(self) -> int:
        return self.AtWA.shape[-1]

    def total(self) -> "NormalEquations":
        """Statistics of all rows (kind axis summed): AtWA (K, K), AtWy (K,), scalars."""
        return NormalEquations(*(v.sum(axis=0) for v in self))

    def scale_kinds(self, factor) -> "NormalEquations":
        """Multiply the row weights of each kind by factor (2,) (e.g. 1 / sigma_kind^2)."""
        f = np.asarray(factor, np.float64)
        return NormalEquations(self.AtWA * f[:, None, None], self.AtWy * f[:, None], self.ytWy * f,
                               self.n_rows, self.sum_log_w + self.n_rows * np.log(f))


def combine(a: NormalEquations, b: NormalEquations) -> NormalEquations:
    """Statistics of the union of two disjoint row sets."""
    return NormalEquations(*(x + y for x, y in zip(a, b)))


def stats_arrays(A, y, w, kind):
    """Pure-JAX NormalEquations of rows A (R, K), y (R,), w (R,), kind (R,).

    Rows with w <= 0 contribute nothing. Returns (NormalEquations, n_bad) with
    n_bad the number of rows holding NaN/inf, a negative weight or a kind other
    than ENERGY_ROW / FORCE_ROW (those rows are left out; jit-, vmap- and
    shard_map-safe).
    """
    finite = jnp.all(jnp.isfinite(A), axis=1) & jnp.isfinite(y) & jnp.isfinite(w)
    bad = ~finite | (w < 0) | ((kind != ENERGY_ROW) & (kind != FORCE_ROW))
    pos = (w > 0) & ~bad
    onehot = (kind[None, :] == jnp.arange(N_KINDS)[:, None]) & pos[None, :]  # (2, R)
    wk = jnp.where(onehot, w[None, :], 0.0).astype(A.dtype)
    A0 = jnp.where(bad[:, None], 0.0, A)
    y0 = jnp.where(bad, 0.0, y)
    wA = wk[:, :, None] * A0[None]  # (2, R, K)
    AtWA = jnp.einsum("grk,rl->gkl", wA, A0)
    AtWy = jnp.einsum("grk,r->gk", wA, y0)
    ytWy = wk @ (y0 * y0)
    n_rows = jnp.sum(onehot, axis=1).astype(A.dtype)
    sum_log_w = jnp.sum(jnp.where(onehot, jnp.log(jnp.where(pos, w, 1.0))[None, :], 0.0), axis=1)
    return NormalEquations(AtWA, AtWy, ytWy, n_rows, sum_log_w), jnp.sum(bad)


_stats_jit = jax.jit(stats_arrays)


def normal_equations(design: DesignMatrix) -> NormalEquations:
    """In-memory NormalEquations of a whole design (checked for NaN / negative weights / kinds)."""
    _check_design(design)
    kinds = np.unique(np.asarray(design.kind))
    if not np.isin(kinds, (ENERGY_ROW, FORCE_ROW)).all():
        raise JaxiapInputError(f"design.kind holds {kinds.tolist()}; rows must be ENERGY_ROW (0) or FORCE_ROW (1)")
    A = jnp.asarray(design.A, jnp.float64)
    return _stats_jit(A, jnp.asarray(design.y, A.dtype), jnp.asarray(design.w, A.dtype),
                      jnp.asarray(design.kind))[0]


def _as_stats(data) -> tuple[NormalEquations, DesignMatrix | None]:
    """(host numpy NormalEquations, design or None) from a DesignMatrix or NormalEquations."""
    if isinstance(data, NormalEquations):
        ne = data
        dm = None
    elif isinstance(data, DesignMatrix):
        ne, dm = normal_equations(data), data
    else:
        raise JaxiapInputError(f"expected a DesignMatrix or NormalEquations, got {type(data).__name__}")
    ne = NormalEquations(*(np.asarray(v, np.float64) for v in ne))
    if ne.AtWA.ndim != 3 or ne.AtWA.shape[0] != N_KINDS:
        raise JaxiapInputError(f"NormalEquations.AtWA must have shape (2, K, K) (energy, force), got "
                               f"{ne.AtWA.shape}; build it with normal_equations or accumulate")
    return ne, dm


# ---------------------------------------------------------------------------
# input checks (host numpy: K x K algebra needs no compilation)


def prior_precision_matrix(prior_precision, k: int, name: str = "prior_precision"):
    """Validate a prior precision (scalar, (K,) diagonal or (K, K)) -> (K, K) array, or None (flat)."""
    if prior_precision is None:
        return None
    p = np.asarray(prior_precision, np.float64)
    fix = (f"pass a positive scalar, a positive ({k},) diagonal, a symmetric positive-definite "
           f"({k}, {k}) matrix, or None for a flat prior")
    if not np.isfinite(p).all():
        raise JaxiapInputError(f"{name} contains NaN/inf; {fix}")
    if p.ndim == 0 or p.shape == (k,):
        if (p <= 0).any():
            raise JaxiapInputError(f"{name} must be > 0 (got min {p.min():g}); {fix}")
        return np.diag(np.broadcast_to(p, (k,)).copy())
    if p.shape != (k, k):
        raise JaxiapInputError(f"{name} has shape {p.shape} but the design has K={k} features; {fix}")
    if not np.allclose(p, p.T, rtol=1e-10, atol=1e-14 * np.abs(p).max()):
        raise JaxiapInputError(f"{name} is not symmetric; {fix}")
    ev = np.linalg.eigvalsh(p)
    if ev[0] <= 1e-14 * max(ev[-1], 0.0) or ev[0] <= 0:
        raise JaxiapInputError(
            f"{name} is not positive definite (eigenvalues in [{ev[0]:.3g}, {ev[-1]:.3g}]); {fix}")
    return 0.5 * (p + p.T)


def _noise_vars(noise_var, name: str = "noise_var") -> np.ndarray:
    """Scalar or (2,) (energy, force) noise variances -> validated (2,) array."""
    v = np.asarray(noise_var, np.float64)
    if v.shape not in ((), (N_KINDS,)):
        raise JaxiapInputError(f"{name} must be a scalar or (energy, force) pair, got shape {v.shape}")
    if not np.isfinite(v).all() or (v <= 0).any():
        raise JaxiapInputError(f"{name} must be finite and > 0 (a variance per unit row weight), "
                               f"got {v}; use a small positive value for near-noise-free data")
    return np.broadcast_to(v, (N_KINDS,)).copy()


def _prior_mean(prior_mean, k: int, name: str = "prior_mean") -> np.ndarray:
    if prior_mean is None:
        return np.zeros(k)
    m = np.asarray(prior_mean, np.float64)
    m = np.broadcast_to(m, (k,)).copy() if m.ndim == 0 else m
    if m.shape != (k,) or not np.isfinite(m).all():
        raise JaxiapInputError(f"{name} must be finite with shape ({k},), got shape {m.shape}")
    return m


def _checked_cholesky(M, what: str, fix: str, rcond: float = 1e-13) -> np.ndarray:
    """Lower Cholesky factor (numpy) of a symmetric K x K matrix, or SingularSystemError.

    Singular means: a zero diagonal, or a smallest eigenvalue of the
    Jacobi-scaled matrix D^-1/2 M D^-1/2 below ``rcond`` (i.e. a condition number
    of the underlying design above ~ 1 / sqrt(rcond) after column scaling).
    """
    m = np.asarray(M, np.float64)
    m = 0.5 * (m + m.T)
    d = np.diag(m)
    if not np.isfinite(m).all():
        raise SingularSystemError(f"{what} contains NaN/inf; {fix}")
    zero = d <= 0
    if zero.any():
        raise SingularSystemError(f"{what} is singular: {int(zero.sum())} of {len(d)} coefficients "
                                  f"(indices {np.flatnonzero(zero)[:8].tolist()}) are not constrained; {fix}")
    s = 1 / np.sqrt(d)
    ev = np.linalg.eigvalsh(m * s[:, None] * s[None, :])
    if ev[0] <= rcond * ev[-1]:
        raise SingularSystemError(
            f"{what} is singular or numerically rank-deficient (scaled eigenvalue ratio "
            f"{max(ev[0], 0) / ev[-1]:.3g} <= {rcond:g}); {fix}")
    return np.linalg.cholesky(m)


def _logdet_chol(L, xp=np):
    return 2 * xp.sum(xp.log(xp.diag(L)))


def _inv_factor(L) -> np.ndarray:
    """F = L^-T, so F F^T = (L L^T)^-1."""
    return sla.solve_triangular(L, np.eye(L.shape[0]), lower=True).T


_FLAT_FIX = ("with a flat prior the design must have full column rank: reduce n_basis, add data, "
             "or pass a prior precision")
