"""Linear solvers on a weighted design matrix (float64).

``fit_lstsq`` is weighted least squares, i.e. the Gaussian-likelihood MLE
c* = (A^T W A)^-1 A^T W y. It returns a ``GaussianPosterior`` whose
covariance is the MLE's sampling covariance sig^2 (A^T W A)^-1, with
sig^2 = r^T W r / (R - K) the residual variance per unit weight.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from jaxiap.errors import JaxiapInputError, SingularSystemError
from jaxiap.inference.posterior import GaussianPosterior
from jaxiap.potentials.linear import ENERGY_ROW, FORCE_ROW, DesignMatrix


def reweight(design: DesignMatrix, energy_weight: float = 1.0, force_weight: float = 1.0,
             per_atom_energy: bool = False) -> DesignMatrix:
    """Scale energy and force row weights (on top of the dataset's per-row weights).

    With ``per_atom_energy`` the energy rows are also divided by N^2, i.e. the
    energy residual is measured per atom.
    """
    for name, v in (("energy_weight", energy_weight), ("force_weight", force_weight)):
        if not np.isfinite(v) or v < 0:
            raise JaxiapInputError(f"{name} must be finite and >= 0, got {v}")
    scale = jnp.where(design.kind == ENERGY_ROW, energy_weight, force_weight)
    if per_atom_energy:
        scale = jnp.where(design.kind == ENERGY_ROW, scale / design.n_atoms**2, scale)
    return design._replace(w=design.w * scale)


def _check_design(design: DesignMatrix) -> None:
    A, y, w = (np.asarray(v) for v in (design.A, design.y, design.w))
    for name, v in (("design matrix A", A), ("targets y", y), ("row weights w", w)):
        if not np.isfinite(v).all():
            raise JaxiapInputError(f"{name} contains NaN/inf; check the dataset labels and positions")
    if (w < 0).any():
        raise JaxiapInputError("row weights w must be >= 0")


def fit_lstsq(design: DesignMatrix, rcond: float = 1e-12) -> GaussianPosterior:
    """Weighted least squares via the SVD of W^1/2 A.

    Raises SingularSystemError when W^1/2 A has a singular value below
    rcond * s_max (a rank-deficient design): reduce the basis, add data, or use
    a prior (Bayesian regression).
    """
    _check_design(design)
    sw = jnp.sqrt(design.w)
    Aw, yw = design.A * sw[:, None], design.y * sw
    n_rows = int(np.sum(np.asarray(design.w) > 0))
    k = Aw.shape[1]
    if n_rows <= k:
        raise SingularSystemError(
            f"only {n_rows} weighted rows for {k} coefficients; add data or reduce the basis"
        )
    u, s, vt = jnp.linalg.svd(Aw, full_matrices=False)
    small = np.asarray(s <= rcond * s[0])
    if small.any():
        raise SingularSystemError(
            f"design matrix is rank-deficient: {int(small.sum())} of {k} singular values below "
            f"{rcond:g} * s_max (condition number {float(s[0] / s[-1]):.3g}); reduce n_basis, "
            "check for duplicate or all-zero basis functions (e.g. r_cut shorter than every distance), "
            "or use a prior"
        )
    coef = vt.T @ ((u.T @ yw) / s)
    resid = yw - Aw @ coef
    noise_var = jnp.sum(resid**2) / (n_rows - k)
    cov_factor = vt.T / s * jnp.sqrt(noise_var)
    return GaussianPosterior(coef, cov_factor, noise_var, kind="lstsq")
