"""Linear solvers on a weighted design matrix (float64 throughout).

Every solver takes a ``DesignMatrix`` (A (R, K), y (R,), row weights w (R,))
and returns a Posterior (docs/science.md sections 9 and 10). Row weights are precisions
relative to a noise variance: y_r ~ N(A_r . c, noise_var / w_r); rows with
w_r = 0 are ignored (they do not count toward N).

- ``fit_lstsq``: weighted least squares (the Gaussian MLE) via an SVD, with
  covariance sighat^2 (A^T W A)^-1, sighat^2 = r^T W r / (N - K).
- ``fit_blr``: known noise, Gaussian prior c ~ N(m0, S0), S0^-1 = prior_precision.
- ``fit_nig``: unknown noise, normal-inverse-gamma prior -> Student-t posterior.
- ``log_evidence_blr`` / ``log_evidence_nig``: closed-form log p(y) from K x K
  Cholesky factors (determinant lemma / Woodbury; never an N x N matrix).
- ``optimize_hyperparameters``: type-II maximum likelihood of (sigma_E,
  sigma_F, prior scale) with optax L-BFGS in log space.
- ``select_by_evidence``: evidence-based choice among candidate designs.

The Bayesian solvers work on the sufficient statistics ``NormalEquations``
(A^T W A, A^T W y, y^T W y, N, sum log w), kept separately for energy and
force rows, so the same code serves in-memory designs and the streaming
accumulator in ``jaxiap.inference.streaming``. Every public function here
accepts either a ``DesignMatrix`` or a ``NormalEquations``; with a design the
quadratic forms are evaluated from residuals (more accurate than the
statistics' y^T W y - b^T Lambda^-1 b, which cancels when the fit is close).
"""

from __future__ import annotations

from typing import Mapping, NamedTuple

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import numpy as np
import optax
import scipy.linalg as sla
from scipy.special import gammaln

from jaxiap.errors import JaxiapInputError, SingularSystemError
from jaxiap.inference.posterior import GaussianPosterior, StudentTPosterior
from jaxiap.inference.stats import (  # noqa: F401  (re-exported: the public names and the streaming solvers' helpers)
    _FLAT_FIX,
    N_KINDS,
    NormalEquations,
    _as_stats,
    _check_design,
    _checked_cholesky,
    _inv_factor,
    _logdet_chol,
    _noise_vars,
    _prior_mean,
    combine,
    normal_equations,
    prior_precision_matrix,
    stats_arrays,
)
from jaxiap.potentials.linear import ENERGY_ROW, FORCE_ROW, DesignMatrix

_LOG_2PI = float(np.log(2 * np.pi))


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


# ---------------------------------------------------------------------------
# known noise: Bayesian linear regression


def _gaussian_system(ne: NormalEquations, P0, m0, noise_vars, xp=np):
    """Lambda = P0 + sum_g AtWA_g / nv_g and b = P0 m0 + sum_g AtWy_g / nv_g (P0 may be None)."""
    inv = 1 / noise_vars
    Lam = xp.einsum("g,gkl->kl", inv, ne.AtWA)
    b = inv @ ne.AtWy
    if P0 is not None:
        Lam = Lam + P0
        b = b + P0 @ m0
    return 0.5 * (Lam + Lam.T), b


def _blr_quadratic(ne, P0, m0, noise_vars, mn, design, xp=np):
    """(y - A mn)^T P (y - A mn) + (mn - m0)^T P0 (mn - m0), from residuals when a design is given."""
    if design is not None:
        A, y, w, kind = (np.asarray(v) for v in design[:4])
        w = np.where(w > 0, w, 0.0)
        r = y - A @ mn
        q = np.sum(w / noise_vars[kind] * r * r)
    else:
        inv = 1 / noise_vars
        G = xp.einsum("g,gkl->kl", inv, ne.AtWA)
        q = inv @ ne.ytWy - 2 * mn @ (inv @ ne.AtWy) + mn @ G @ mn
    if P0 is not None:
        q = q + (mn - m0) @ P0 @ (mn - m0)
    return q


def _evidence_known_terms(ne, P0, nv, L, q, xp=np):
    n = xp.sum(ne.n_rows)
    logdet_p = xp.sum(ne.sum_log_w - ne.n_rows * xp.log(nv))
    logdet_p0 = _logdet_chol(xp.linalg.cholesky(P0), xp)
    return -0.5 * n * _LOG_2PI + 0.5 * logdet_p + 0.5 * logdet_p0 - 0.5 * _logdet_chol(L, xp) - 0.5 * q


def fit_blr(design, prior_precision=None, prior_mean=None, noise_var=1.0) -> GaussianPosterior:
    """Known-noise Bayesian linear regression with prior c ~ N(m0, S0) (float64).

    design: DesignMatrix or NormalEquations; y_r ~ N(A_r c, noise_var / w_r).
    prior_precision S0^-1: None (flat), scalar, (K,) diagonal or (K, K) SPD.
    Returns GaussianPosterior(kind="blr") with Sn = (S0^-1 + A^T W A / noise_var)^-1,
    mn = Sn (S0^-1 m0 + A^T W y / noise_var), computed by Cholesky of Sn^-1;
    ``noise_var`` is kept for the predictive std.
    """
    ne, _ = _as_stats(design)
    k = ne.n_features
    P0 = prior_precision_matrix(prior_precision, k)
    m0 = _prior_mean(prior_mean, k)
    if np.ndim(noise_var) != 0:
        raise JaxiapInputError("fit_blr takes a scalar noise_var; give energy and force rows their "
                               "relative precision through the row weights (see reweight)")
    nv = _noise_vars(noise_var)
    Lam, b = _gaussian_system(ne, P0, m0, nv)
    L = _checked_cholesky(Lam, "the posterior precision S0^-1 + A^T W A / noise_var",
                          _FLAT_FIX if P0 is None else "increase the prior precision")
    mn = sla.cho_solve((L, True), b)
    return GaussianPosterior(jnp.asarray(mn), jnp.asarray(_inv_factor(L)), jnp.asarray(nv[0]), kind="blr")


def log_evidence_blr(design, prior_precision, noise_var, prior_mean=None) -> float:
    """log p(y) = log N(y; A m0, P^-1 + A S0 A^T) for known noise (float64).

    P = diag(w_r / noise_var_r) over rows with w > 0 (N of them); noise_var is a
    scalar or an (energy, force) pair. Evaluated in K x K form:
    -N/2 log 2pi + 1/2 log|P| + 1/2 log|S0^-1| - 1/2 log|Lambda|
    - 1/2 [(y - A mn)^T P (y - A mn) + (mn - m0)^T S0^-1 (mn - m0)].
    Needs a proper prior (prior_precision not None).
    """
    ne, dm = _as_stats(design)
    k = ne.n_features
    if prior_precision is None:
        raise JaxiapInputError("the evidence needs a proper prior: pass prior_precision (scalar, (K,) or (K, K))")
    P0 = prior_precision_matrix(prior_precision, k)
    m0 = _prior_mean(prior_mean, k)
    nv = _noise_vars(noise_var)
    Lam, b = _gaussian_system(ne, P0, m0, nv)
    L = _checked_cholesky(Lam, "the posterior precision", "increase the prior precision")
    mn = sla.cho_solve((L, True), b)
    q = _blr_quadratic(ne, P0, m0, nv, mn, dm)
    return float(_evidence_known_terms(ne, P0, nv, L, q))


def _log_evidence_known_pure(ne: NormalEquations, noise_vars, P0, m0):
    """Jittable, differentiable known-noise log evidence from statistics (no checks)."""
    Lam, b = _gaussian_system(ne, P0, m0, noise_vars, jnp)
    L = jnp.linalg.cholesky(Lam)
    mn = jsl.cho_solve((L, True), b)
    q = _blr_quadratic(ne, P0, m0, noise_vars, mn, None, jnp)
    return _evidence_known_terms(ne, P0, noise_vars, L, q, jnp)


# ---------------------------------------------------------------------------
# unknown noise: normal-inverse-gamma


def _nig_system(ne, a0, b0, L0, mu0, design):
    """Cholesky of Ln, mun, an, bn for the NIG prior (L0 None = flat)."""
    t = ne.total()
    Ln, b = t.AtWA, t.AtWy
    if L0 is not None:
        Ln, b = Ln + L0, b + L0 @ mu0
    L = _checked_cholesky(Ln, "the NIG posterior precision Ln = A^T W A + L0",
                          _FLAT_FIX if L0 is None else "increase L0")
    mun = sla.cho_solve((L, True), b)
    q = _blr_quadratic(ne, L0, mu0, np.ones(N_KINDS), mun, design)
    return L, mun, a0 + 0.5 * float(t.n_rows), b0 + 0.5 * float(q)


def _nig_inputs(ne, a0, b0, L0, mu0, proper: bool):
    k = ne.n_features
    P = prior_precision_matrix(L0, k, name="L0")
    if proper and P is None:
        raise JaxiapInputError("the NIG evidence needs a proper prior: pass L0 (scalar, (K,) or (K, K))")
    if a0 is None:
        a0 = -0.5 * k if P is None else 0.0
    for name, v, lo in (("a0", a0, -np.inf), ("b0", b0, 0.0)):
        if not np.isfinite(v) or v < lo or (proper and v <= 0):
            raise JaxiapInputError(f"{name} must be finite and {'> 0' if proper else '>= 0'} "
                                   f"(inverse-gamma prior IG(a0, b0) on the noise variance), got {v}")
    return float(a0), float(b0), P, _prior_mean(mu0, k, "mu0")


def fit_nig(design, a0=None, b0=0.0, L0=None, mu0=None) -> StudentTPosterior:
    """Unknown-noise Bayesian regression, prior c | s2 ~ N(mu0, s2 L0^-1), s2 ~ IG(a0, b0).

    design: DesignMatrix or NormalEquations; y_r ~ N(A_r c, s2 / w_r).
    Posterior (docs/science.md section 9.4): Ln = A^T W A + L0, mun = Ln^-1 (A^T W y + L0 mu0),
    an = a0 + N/2, bn = b0 + (y^T W y + mu0^T L0 mu0 - mun^T Ln mun)/2, and
    c | y ~ Student-t(2 an, mun, (bn/an) Ln^-1): a StudentTPosterior(kind="nig")
    whose ``an``/``bn`` properties give the IG(an, bn) noise posterior.

    Flat-prior limit (the defaults L0=None, a0=-K/2, b0=0, i.e. p(c, s2) ~ 1/s2):
    an = (N-K)/2, bn = r^T W r / 2, so mun is the lstsq solution, bn/an = sighat^2
    = r^T W r / (N-K) and the t has N-K degrees of freedom. With L0 given,
    a0 defaults to 0 (p(s2) ~ 1/s2).
    """
    ne, dm = _as_stats(design)
    a0, b0, L0, mu0 = _nig_inputs(ne, a0, b0, L0, mu0, proper=False)
    L, mun, an, bn = _nig_system(ne, a0, b0, L0, mu0, dm)
    if an <= 0:
        raise SingularSystemError(f"NIG posterior shape an = a0 + N/2 = {an:g} <= 0: need more weighted "
                                  "rows than coefficients (flat prior) or a larger a0")
    if bn <= 0:
        raise SingularSystemError("NIG posterior scale bn <= 0: the data are fitted exactly; pass b0 > 0 "
                                  "(a prior guess of the noise variance times a0)")
    s2 = bn / an
    return StudentTPosterior(jnp.asarray(mun), jnp.asarray(np.sqrt(s2) * _inv_factor(L)),
                             jnp.asarray(2 * an), jnp.asarray(s2), kind="nig")


def log_evidence_nig(design, a0, b0, L0, mu0=None) -> float:
    """NIG log p(y) (StatProofBook form), proper prior: a0 > 0, b0 > 0, L0 SPD.

    1/2 log|W| - N/2 log 2pi + 1/2 log|L0| - 1/2 log|Ln| + log Gamma(an)
    - log Gamma(a0) + a0 log b0 - an log bn, with |W| over rows with w > 0.
    """
    ne, dm = _as_stats(design)
    a0, b0, L0, mu0 = _nig_inputs(ne, a0, b0, L0, mu0, proper=True)
    L, mun, an, bn = _nig_system(ne, a0, b0, L0, mu0, dm)
    t = ne.total()
    return float(0.5 * t.sum_log_w - 0.5 * t.n_rows * _LOG_2PI
                 + 0.5 * _logdet_chol(np.linalg.cholesky(L0)) - 0.5 * _logdet_chol(L)
                 + gammaln(an) - gammaln(a0) + a0 * np.log(b0) - an * np.log(bn))


# ---------------------------------------------------------------------------
# type-II maximum likelihood


class TypeIIResult(NamedTuple):
    """Maximised known-noise evidence over (sigma_energy, sigma_force, prior_scale).

    posterior: fit_blr at the optimum with noise_var = sigma_force^2 (or
    sigma_energy^2 when there are no force rows), on the design whose energy
    rows are re-weighted by noise_var / sigma_energy^2 (``design``; None when
    the input was NormalEquations), so ``posterior.predict(rows, design.w)``
    adds the right noise per row. grad_norm: |d (log p / N) / d log(params)|.
    """

    sigma_energy: float
    sigma_force: float
    prior_scale: float
    log_evidence: float
    grad_norm: float
    n_steps: int
    posterior: GaussianPosterior
    design: DesignMatrix | None


def _initial_hyperparameters(ne: NormalEquations) -> np.ndarray:
    """(sigma_E, sigma_F, prior_scale) from a lightly ridged fit: per-kind residual RMS."""
    G, h, yy, n = ne.AtWA, ne.AtWy, ne.ytWy, ne.n_rows
    Gt, k = G.sum(0), G.shape[-1]
    c = np.linalg.solve(Gt + (1e-8 * np.trace(Gt) / k + 1e-300) * np.eye(k), h.sum(0))
    rss = yy - 2 * h @ c + np.einsum("k,gkl,l->g", c, G, c)
    nn = np.maximum(n, 1)
    sig = np.sqrt(np.maximum(rss / nn, 1e-12 * yy / nn + 1e-300))
    sig = np.where(n > 0, sig, 1.0)
    return np.array([sig[0], sig[1], max(float(np.sqrt(np.mean(c**2))), 1e-12)])


def _pad_features(ne: NormalEquations, m0, bucket: int = 8):
    """Zero-pad K to a multiple of ``bucket`` so type-II compiles once per bucket.

    A padded coefficient has no data and the same N(0, prior_scale^2) prior, so
    its terms in log|S0^-1| and log|Lambda| cancel: the evidence is unchanged.
    """
    k = ne.n_features
    kp = bucket * -(-k // bucket)
    p = kp - k
    return NormalEquations(np.pad(ne.AtWA, ((0, 0), (0, p), (0, p))), np.pad(ne.AtWy, ((0, 0), (0, p))),
                           ne.ytWy, ne.n_rows, ne.sum_log_w), np.pad(m0, (0, p))


def _type2_loss(theta, ne: NormalEquations, m0, n_total):
    """-log p(y) / N at theta = log(sigma_E, sigma_F, prior_scale)."""
    P0 = jnp.exp(-2 * theta[2]) * jnp.eye(ne.AtWA.shape[-1], dtype=ne.AtWA.dtype)
    return -_log_evidence_known_pure(ne, jnp.exp(2 * theta[:2]), P0, m0) / n_total


_LBFGS = optax.lbfgs(linesearch=optax.scale_by_backtracking_linesearch(max_backtracking_steps=40))


@jax.jit
def _type2_step(theta, state, ne, m0, n_total):
    """One L-BFGS step; returns (new theta, state, loss and |grad| at the old theta)."""
    f = lambda t: _type2_loss(t, ne, m0, n_total)
    value, grad = jax.value_and_grad(f)(theta)
    updates, state = _LBFGS.update(grad, state, theta, value=value, grad=grad, value_fn=f)
    return optax.apply_updates(theta, updates), state, value, jnp.linalg.norm(grad)


def optimize_hyperparameters(design, init=None, steps: int = 500, tol: float = 1e-8,
                             prior_mean=None) -> TypeIIResult:
    """Type-II ML: maximise the known-noise log evidence over
    theta = log(sigma_energy, sigma_force, prior_scale) with optax L-BFGS
    (backtracking line search), jitted once per 8-wide bucket of K.

    design: DesignMatrix or NormalEquations. Energy rows get noise variance
    sigma_energy^2 / w_r, force rows sigma_force^2 / w_r (the dataset's w stays a
    relative weight); the prior is c ~ N(prior_mean, prior_scale^2 I).
    init: (sigma_energy, sigma_force, prior_scale), default from the per-kind
    residual RMS of a lightly ridged fit. Stops when |d (log p / N) / d theta| < tol
    or a step no longer moves theta (float64 round-off).
    A kind without rows keeps its initial sigma (its gradient is 0).
    """
    ne, dm = _as_stats(design)
    k = ne.n_features
    m0 = _prior_mean(prior_mean, k)
    n_total = max(float(np.sum(ne.n_rows)), 1.0)
    x0 = _initial_hyperparameters(ne) if init is None else np.asarray(init, np.float64)
    if x0.shape != (3,) or not np.isfinite(x0).all() or (x0 <= 0).any():
        raise JaxiapInputError(f"init must be three positive numbers (sigma_energy, sigma_force, "
                               f"prior_scale), got {init}")
    if steps < 1:
        raise JaxiapInputError(f"steps must be >= 1, got {steps}")
    ne_p, m0_p = _pad_features(ne, m0)
    args = (NormalEquations(*(jnp.asarray(v) for v in ne_p)), jnp.asarray(m0_p), jnp.asarray(n_total))
    theta = jnp.log(jnp.asarray(x0))
    state = _LBFGS.init(theta)
    n_steps = steps
    for i in range(steps):
        new, state, value, g = _type2_step(theta, state, *args)  # value, |grad| at theta
        if not np.isfinite(float(g)):
            raise SingularSystemError("the evidence became non-finite during type-II optimisation; "
                                      "pass an explicit init or check the design for duplicate columns")
        if float(g) < tol or np.array_equal(np.asarray(new), np.asarray(theta)):
            n_steps = i
            break
        theta = new
    _, _, value, g = _type2_step(theta, state, *args)
    sig_e, sig_f, scale = (float(v) for v in np.exp(np.asarray(theta)))
    ref = sig_f**2 if ne.n_rows[FORCE_ROW] > 0 else sig_e**2
    factor = np.array([ref / sig_e**2, ref / sig_f**2])
    rdm = None if dm is None else dm._replace(w=jnp.asarray(np.asarray(dm.w) * factor[np.asarray(dm.kind)]))
    post = fit_blr(ne.scale_kinds(factor) if rdm is None else rdm,
                   prior_precision=1 / scale**2, prior_mean=m0, noise_var=ref)
    return TypeIIResult(sig_e, sig_f, scale, -float(value) * n_total, float(g), n_steps, post, rdm)


# ---------------------------------------------------------------------------
# model selection


def select_by_evidence(candidates: Mapping, method="type2", **kwargs):
    """Pick the candidate model with the largest log evidence.

    candidates: {key: DesignMatrix | NormalEquations | zero-argument callable
    returning one}, all built from the same data rows. method: "type2"
    (``optimize_hyperparameters`` per candidate: maximised known-noise
    evidence), "blr" (``log_evidence_blr(..., **kwargs)``), "nig"
    (``log_evidence_nig(..., **kwargs)``), or a callable(stats) -> float.
    Returns (best_key, table) with table {key: {"log_evidence", "n_features", ...}}.
    """
    if not candidates:
        raise JaxiapInputError("select_by_evidence needs at least one candidate")
    table = {}
    for key, cand in candidates.items():
        data = cand() if callable(cand) else cand
        ne, dm = _as_stats(data)
        data = dm if dm is not None else ne
        row = {"n_features": ne.n_features}
        if method == "type2":
            r = optimize_hyperparameters(data, **kwargs)
            row.update(log_evidence=r.log_evidence, sigma_energy=r.sigma_energy,
                       sigma_force=r.sigma_force, prior_scale=r.prior_scale)
        elif method == "blr":
            row["log_evidence"] = log_evidence_blr(data, **kwargs)
        elif method == "nig":
            row["log_evidence"] = log_evidence_nig(data, **kwargs)
        elif callable(method):
            row["log_evidence"] = float(method(data, **kwargs))
        else:
            raise JaxiapInputError(f"method must be 'type2', 'blr', 'nig' or a callable, got {method!r}")
        table[key] = row
    best = max(table, key=lambda k: table[k]["log_evidence"])
    return best, table
