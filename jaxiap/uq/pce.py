"""Polynomial chaos surrogates of QoIs and their Sobol indices (docs/science.md section 15).

Two germs (families of inputs) are supported, chosen with ``germ=``:

- ``"hermite"`` (the default): a standard Gaussian xi ~ N(0, I_d), e.g. the
  posterior coefficients c~ = c + L xi (see :func:`jaxiap.uq.germ.gaussian_germ`
  and :func:`jaxiap.uq.germ.from_germ`). The basis is probabilists' Hermite polynomials He_n with
  E[He_n He_m] = n! delta_nm, so ||Psi_alpha||^2 = prod_j alpha_j!.
- ``"legendre"``: independent uniform inputs xi ~ U(-1, 1)^d (a bounded input
  x in [lo, hi] maps to xi = (2 x - lo - hi) / (hi - lo)). The basis is the
  Legendre polynomials P_n with E[P_n P_m] = delta_nm / (2 n + 1) under the
  uniform density 1/2 on [-1, 1], so ||Psi_alpha||^2 = prod_j 1 / (2 alpha_j + 1).

A QoI is expanded in total-degree-p products of the 1-d polynomials,

    Q(xi) ~ sum_{|alpha| <= p} q_alpha Psi_alpha(xi),   Psi_alpha = prod_j phi_{alpha_j}(xi_j).

The coefficients are fitted by regression on samples (xi^(s), Q^(s)): least
squares, ridge, or any sparse solver passed as a callable (e.g. Bayesian
compressive sensing, ``jaxiap.inference.bcs.fit_bcs``). Moments and Sobol
indices follow from the coefficients and the germ's norms (Sudret 2008):

    mean = q_0,   Var = sum_{alpha != 0} q_alpha^2 ||Psi_alpha||^2,
    S_j   = sum_{alpha_j > 0, alpha_i = 0 (i != j)} q_alpha^2 ||Psi_alpha||^2 / Var,
    S_j^T = sum_{alpha_j > 0} q_alpha^2 ||Psi_alpha||^2 / Var.

Choose the germ that matches the input distribution. Hermite chaos converges
fast for QoIs that are smooth, slowly growing functions of a Gaussian germ. It
converges slowly for bounded inputs made from a Gaussian germ through the
normal CDF: with x = pi (2 Phi(xi) - 1) ~ U(-pi, pi), sin^2(x) keeps 63 % of
its variance outside Hermite degree 10. The Legendre germ handles such uniform
inputs directly: the uniform-input Ishigami indices are reached at p ~ 12
(tests/test_pce.py). Least-squares fits need S well above T at high p (Hermite
tail samples, and the Legendre end points, make the design ill-conditioned);
check ``validation_error`` and the moments against a larger S.

Everything is float64 (``import jaxiap`` enables it). Basis evaluation,
prediction, moments and Sobol indices are pure jnp and jit/vmap-able; the
fitting driver validates inputs eagerly and is not meant to be jitted.
"""

from __future__ import annotations

import itertools
import math
from functools import partial
from typing import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from jaxiap.errors import JaxiapInputError

__all__ = [
    "PCE",
    "GERMS",
    "total_degree_multi_indices",
    "hermite_basis",
    "legendre_basis",
    "polynomial_basis",
    "basis_norms",
    "fit_pce",
    "validation_error",
    "pce_from_samples",
]

_MAX_TERMS = 2_000_000
GERMS = ("hermite", "legendre")
_LEGENDRE_TOL = 1e-12  # round-off allowed outside [-1, 1] for a Legendre germ


def _check_germ(germ, name: str = "germ") -> str:
    if not isinstance(germ, str) or germ not in GERMS:
        raise JaxiapInputError(
            f"{name} must be one of {GERMS} ('hermite' for xi ~ N(0, 1), 'legendre' for xi ~ U(-1, 1)); "
            f"got {germ!r}")
    return germ


def _check_legendre_range(xi, name: str = "xi") -> None:
    """Raise if a concrete Legendre germ leaves [-1, 1]; traced arrays (under jit) are not checked."""
    if isinstance(xi, jax.core.Tracer):
        return
    x = np.asarray(xi)
    if x.size == 0:
        return
    finite = np.isfinite(x)
    worst = float(np.max(np.abs(np.where(finite, x, 0.0))))
    if not finite.all() or worst > 1.0 + _LEGENDRE_TOL:
        bad = "NaN or inf" if not finite.all() else f"max |xi| = {worst:.6g}"
        raise JaxiapInputError(
            f"{name} must lie in [-1, 1] for the Legendre germ (xi ~ U(-1, 1)); found {bad}. Map a "
            "uniform input x in [lo, hi] to xi = (2 x - lo - hi) / (hi - lo), or use germ='hermite' "
            "for Gaussian inputs")


def _as_int(value, name: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise JaxiapInputError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    return int(value)


def _n_terms(d: int, p: int) -> int:
    return math.comb(d + p, p)


def total_degree_multi_indices(d: int, p: int) -> np.ndarray:
    """All multi-indices alpha in N^d with |alpha| = sum_j alpha_j <= p, shape (T, d), int.

    T = C(d + p, p). Rows are in graded order: by total degree, then
    descending lexicographic within a degree. The first row is all zeros (the
    mean term) and rows 1..d are the unit vectors e_1, ..., e_d (the linear
    terms, in germ order). Returns a numpy array (static data, not traced).
    """
    d = _as_int(d, "d (germ dimension)")
    p = _as_int(p, "p (total polynomial degree)")
    if d < 1:
        raise JaxiapInputError(f"d (germ dimension) must be >= 1, got {d}")
    if p < 0:
        raise JaxiapInputError(f"p (total polynomial degree) must be >= 0, got {p}")
    T = _n_terms(d, p)
    if T > _MAX_TERMS:
        raise JaxiapInputError(
            f"total-degree basis with d={d}, p={p} has {T} terms (> {_MAX_TERMS}); "
            "lower p or reduce the germ dimension (e.g. an active subspace)")
    rows = np.zeros((T, d), dtype=np.int64)
    t = 1
    for n in range(1, p + 1):
        for combo in itertools.combinations_with_replacement(range(d), n):
            for j in combo:
                rows[t, j] += 1
            t += 1
    return rows


def _check_multi_indices(multi_indices, name: str = "multi_indices") -> np.ndarray:
    try:
        mi = np.asarray(multi_indices)
    except jax.errors.TracerArrayConversionError:
        raise JaxiapInputError(
            f"{name} is a traced array; pass it as a concrete (numpy) array, or give max_degree") from None
    if mi.ndim != 2 or mi.shape[0] < 1 or mi.shape[1] < 1:
        raise JaxiapInputError(f"{name} must have shape (T, d) with T, d >= 1, got shape {mi.shape}")
    if not np.issubdtype(mi.dtype, np.integer):
        if not np.all(np.isfinite(mi)) or not np.all(mi == np.round(mi)):
            raise JaxiapInputError(f"{name} must hold non-negative integers")
        mi = mi.astype(np.int64)
    if (mi < 0).any():
        raise JaxiapInputError(f"{name} must hold non-negative integers; found {int(mi.min())}")
    return mi


def _hermite_1d(x: jnp.ndarray, max_degree: int) -> jnp.ndarray:
    """He_0..He_P of x (...,) by the three-term recurrence; shape (..., P + 1)."""
    polys = [jnp.ones_like(x)]
    if max_degree >= 1:
        polys.append(x)
    for n in range(1, max_degree):
        polys.append(x * polys[n] - n * polys[n - 1])
    return jnp.stack(polys, axis=-1)


def _legendre_1d(x: jnp.ndarray, max_degree: int) -> jnp.ndarray:
    """P_0..P_P of x (...,) by Bonnet's recurrence; shape (..., P + 1)."""
    polys = [jnp.ones_like(x)]
    if max_degree >= 1:
        polys.append(x)
    for n in range(1, max_degree):
        polys.append(((2 * n + 1) * x * polys[n] - n * polys[n - 1]) / (n + 1))
    return jnp.stack(polys, axis=-1)


_ONE_D = {"hermite": _hermite_1d, "legendre": _legendre_1d}


def hermite_basis(xi, multi_indices, max_degree: int | None = None) -> jnp.ndarray:
    """Evaluate Psi_alpha(xi) = prod_j He_{alpha_j}(xi_j) for every row alpha; shape (S, T).

    xi: (S, d) germ samples (float64). multi_indices: (T, d) non-negative ints.
    He_n are probabilists' Hermite polynomials, built with the recurrence
    He_{n+1}(x) = x He_n(x) - n He_{n-1}(x). ``max_degree`` (the largest
    single-dimension degree, static) is read from ``multi_indices`` when it is
    concrete; give it explicitly to trace ``multi_indices`` under ``jit``.
    Memory is O(S T + S d P): the product over dimensions is a scan.
    """
    return polynomial_basis(xi, multi_indices, "hermite", max_degree=max_degree)


def legendre_basis(xi, multi_indices, max_degree: int | None = None) -> jnp.ndarray:
    """Evaluate Psi_alpha(xi) = prod_j P_{alpha_j}(xi_j) for every row alpha; shape (S, T).

    xi: (S, d) germ samples in [-1, 1] (float64; xi ~ U(-1, 1)). multi_indices:
    (T, d) non-negative ints. P_n are Legendre polynomials (P_n(1) = 1), built
    with Bonnet's recurrence (n + 1) P_{n+1}(x) = (2 n + 1) x P_n(x) - n P_{n-1}(x);
    E[P_n P_m] = delta_nm / (2 n + 1) under the uniform density on [-1, 1].
    Concrete xi outside [-1, 1] raises :class:`JaxiapInputError`; traced xi
    (under ``jit``) is not checked. ``max_degree`` as in :func:`hermite_basis`.
    """
    return polynomial_basis(xi, multi_indices, "legendre", max_degree=max_degree)


def polynomial_basis(xi, multi_indices, germ: str = "hermite", max_degree: int | None = None) -> jnp.ndarray:
    """Evaluate the chaos basis Psi_alpha(xi) (S, T) of the germ family ``germ``.

    germ: ``"hermite"`` (He_n, xi ~ N(0, 1)) or ``"legendre"`` (P_n, xi ~ U(-1, 1)).
    xi: (S, d) float64; multi_indices: (T, d) non-negative ints; ``max_degree``
    (static) is read from ``multi_indices`` when it is concrete.
    """
    germ = _check_germ(germ)
    xi = jnp.asarray(xi)
    if max_degree is None:
        mi_np = _check_multi_indices(multi_indices)
        max_degree = int(mi_np.max())
        mi = jnp.asarray(mi_np)
    else:
        max_degree = _as_int(max_degree, "max_degree")
        if max_degree < 0:
            raise JaxiapInputError(f"max_degree must be >= 0, got {max_degree}")
        mi = jnp.asarray(multi_indices)
        if mi.ndim != 2:
            raise JaxiapInputError(f"multi_indices must have shape (T, d), got shape {mi.shape}")
    if xi.ndim != 2:
        raise JaxiapInputError(f"xi must have shape (S, d), got shape {xi.shape}")
    if xi.shape[1] != mi.shape[1]:
        raise JaxiapInputError(
            f"xi has d={xi.shape[1]} columns but multi_indices has d={mi.shape[1]}; they must match")
    if not jnp.issubdtype(xi.dtype, jnp.floating):
        xi = xi.astype(jnp.result_type(float))
    if germ == "legendre":
        _check_legendre_range(xi)
    return _basis_core(xi, mi, max_degree, germ)


@partial(jax.jit, static_argnums=(2, 3))
def _basis_core(xi, mi, max_degree, germ):
    H = _ONE_D[germ](xi, max_degree)                     # (S, d, P + 1)
    H_by_dim = jnp.moveaxis(H, 1, 0)                     # (d, S, P + 1)

    def step(acc, inputs):
        Hj, aj = inputs                                  # (S, P + 1), (T,)
        return acc * jnp.take(Hj, aj, axis=1), None

    init = jnp.ones((xi.shape[0], mi.shape[0]), dtype=xi.dtype)
    out, _ = jax.lax.scan(step, init, (H_by_dim, mi.T))
    return out


def basis_norms(multi_indices, germ: str = "hermite") -> jnp.ndarray:
    """Squared norms ||Psi_alpha||^2 = E[Psi_alpha^2]; shape (T,), float64.

    Hermite: prod_j alpha_j!.  Legendre (uniform density on [-1, 1]): prod_j 1 / (2 alpha_j + 1).
    """
    germ = _check_germ(germ)
    mi = jnp.asarray(multi_indices)
    if mi.ndim != 2:
        raise JaxiapInputError(f"multi_indices must have shape (T, d), got shape {mi.shape}")
    return _norms_core(mi, germ)


@partial(jax.jit, static_argnums=1)
def _norms_core(mi, germ):
    a = mi.astype(jnp.result_type(float))
    if germ == "legendre":
        return jnp.exp(-jnp.sum(jnp.log(2.0 * a + 1.0), axis=1))
    # alpha! = Gamma(alpha + 1); exp(gammaln) is accurate to ~1e-15 relative in float64
    return jnp.exp(jnp.sum(jax.scipy.special.gammaln(a + 1.0), axis=1))


class PCE(eqx.Module):
    """A polynomial chaos expansion Q(xi) = sum_t coefficients[t] Psi_t(xi).

    coefficients (T,) float64; multi_indices (T, d) int; norms (T,) = ||Psi_t||^2
    (of the germ's family, see :func:`basis_norms`); degree: the largest
    single-dimension degree in ``multi_indices`` (static, so prediction jits);
    germ: ``"hermite"`` (default, xi ~ N(0, I)) or ``"legendre"`` (xi ~ U(-1, 1)^d),
    static. All methods are pure jnp.
    """

    coefficients: jnp.ndarray
    multi_indices: jnp.ndarray
    norms: jnp.ndarray
    degree: int = eqx.field(static=True)
    germ: str = eqx.field(static=True, default="hermite")

    def __check_init__(self):
        _check_germ(self.germ, "PCE.germ")

    @property
    def dim(self) -> int:
        """Germ dimension d."""
        return self.multi_indices.shape[1]

    def __call__(self, xi) -> jnp.ndarray:
        """Evaluate the surrogate at xi (S, d) -> (S,); a single point (d,) gives a scalar.

        For a Legendre germ, concrete xi must lie in [-1, 1].
        """
        xi = jnp.asarray(xi)
        if xi.ndim == 1:
            return self(xi[None, :])[0]
        B = polynomial_basis(xi, self.multi_indices, self.germ, max_degree=self.degree)
        return B @ self.coefficients

    @property
    def mean(self) -> jnp.ndarray:
        """E[Q] = q_0 (the coefficient of the all-zero multi-index); scalar."""
        return _moments(self.coefficients, self.multi_indices, self.norms)[0]

    @property
    def variance(self) -> jnp.ndarray:
        """Var[Q] = sum_{alpha != 0} q_alpha^2 ||Psi_alpha||^2; scalar."""
        return _moments(self.coefficients, self.multi_indices, self.norms)[1]

    @property
    def std(self) -> jnp.ndarray:
        """Standard deviation sqrt(Var[Q]); scalar."""
        return jnp.sqrt(self.variance)

    def sobol_first(self) -> jnp.ndarray:
        """First-order Sobol indices S_j (d,): terms in xi_j alone over Var (0 if Var ~ 0)."""
        return _moments(self.coefficients, self.multi_indices, self.norms)[2]

    def sobol_total(self) -> jnp.ndarray:
        """Total Sobol indices S_j^T (d,): every term involving xi_j over Var (0 if Var ~ 0).

        Var ~ 0 means Var <= 1e-24 E[Q^2], i.e. a constant QoI up to round-off.
        """
        return _moments(self.coefficients, self.multi_indices, self.norms)[3]


@jax.jit
def _moments(coefficients, multi_indices, norms):
    """mean, variance, first-order (d,) and total (d,) Sobol indices, in one compiled pass."""
    const = jnp.all(multi_indices == 0, axis=1)                      # (T,)
    mean = jnp.sum(jnp.where(const, coefficients, 0.0))
    v = jnp.where(const, 0.0, coefficients**2 * norms)               # partial variances (T,)
    var = jnp.sum(v)
    active = multi_indices > 0                                       # (T, d)
    alone = active & (jnp.sum(active, axis=1, keepdims=True) == 1)
    # a variance below float64 resolution of E[Q^2] (a constant QoI fitted with round-off) gives 0
    ok = var > 1e-24 * jnp.sum(coefficients**2 * norms)
    safe = jnp.where(ok, var, 1.0)
    first = jnp.where(ok, jnp.sum(jnp.where(alone, v[:, None], 0.0), axis=0) / safe, 0.0)
    total = jnp.where(ok, jnp.sum(jnp.where(active, v[:, None], 0.0), axis=0) / safe, 0.0)
    return mean, var, first, total


def _check_samples(xi, q, name: str = "fit_pce", germ: str = "hermite"):
    xi = np.asarray(xi, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    if xi.ndim != 2:
        raise JaxiapInputError(f"{name}: xi must have shape (S, d), got shape {xi.shape}")
    if q.ndim == 2 and q.shape[1] == 1:
        q = q[:, 0]
    if q.ndim != 1:
        raise JaxiapInputError(f"{name}: q must have shape (S,), got shape {q.shape}")
    if q.shape[0] != xi.shape[0]:
        raise JaxiapInputError(
            f"{name}: xi has S={xi.shape[0]} samples but q has {q.shape[0]}; pass one QoI value per germ sample")
    if not np.all(np.isfinite(xi)):
        raise JaxiapInputError(f"{name}: xi contains NaN or inf; drop those samples")
    if germ == "legendre":
        _check_legendre_range(xi, name=f"{name}: xi")
    if not np.all(np.isfinite(q)):
        bad = np.flatnonzero(~np.isfinite(q))
        raise JaxiapInputError(f"{name}: q contains NaN or inf at samples {bad[:10].tolist()}; "
                               "drop them (e.g. MD replicas that blew up) before fitting")
    return xi, q


def fit_pce(xi, q, p: int, *, solver: str | Callable = "lstsq", alpha: float = 1e-8,
            multi_indices=None, germ: str = "hermite") -> PCE:
    """Fit a PCE of total degree p to samples by regression; returns a :class:`PCE`.

    xi: (S, d) germ samples, ideally xi ~ N(0, I_d) for ``germ="hermite"`` (the
    default) or xi ~ U(-1, 1)^d for ``germ="legendre"`` (then xi must lie in
    [-1, 1]); q: (S,) QoI values (float64).
    p: total degree (ignored when ``multi_indices`` (T, d) is given).

    The regression runs on the orthonormal basis A = Psi / sqrt(||Psi||^2)
    (S, T), which is much better conditioned than the raw polynomial products;
    coefficients are mapped back as q_alpha = c_alpha / sqrt(||Psi_alpha||^2).

    solver:
      - ``"lstsq"``: least squares (SVD). Needs S >= T; S >= 2 T is advised.
      - ``"ridge"``: minimise ||A c - q||^2 + alpha ||c_{alpha != 0}||^2 (the mean
        term is not shrunk); ``alpha`` > 0. Also needs S >= T here.
      - a callable ``solver(A, y) -> coef`` for sparse / Bayesian fits (e.g.
        ``jaxiap.inference.bcs.fit_bcs``): it gets the orthonormal design A
        (S, T) and y = q (S,) as numpy float64 arrays and returns the (T,)
        coefficients in that orthonormal basis, or any object with a ``.mean``
        (T,) (a Posterior). S < T is allowed only with a callable.
    """
    if isinstance(p, (bool, np.bool_)) or not isinstance(p, (int, np.integer)):
        raise JaxiapInputError(f"fit_pce: p (total degree) must be an integer, got {p!r}")
    if p < 0:
        raise JaxiapInputError(f"fit_pce: p (total degree) must be >= 0, got {p}")
    germ = _check_germ(germ, "fit_pce: germ")
    xi, q = _check_samples(xi, q, germ=germ)
    S, d = xi.shape
    if multi_indices is None:
        mi = total_degree_multi_indices(d, int(p))
    else:
        mi = _check_multi_indices(multi_indices)
        if mi.shape[1] != d:
            raise JaxiapInputError(
                f"fit_pce: multi_indices has d={mi.shape[1]} columns but xi has d={d}; they must match")
    T = mi.shape[0]
    custom = callable(solver)
    if not custom and solver not in ("lstsq", "ridge"):
        raise JaxiapInputError(f"fit_pce: unknown solver {solver!r}; use 'lstsq', 'ridge' or a callable(A, y)")
    if not custom and S < T:
        raise JaxiapInputError(
            f"fit_pce: {S} samples for {T} PCE terms (d={d}, p={p}) is underdetermined; draw at least {T} "
            f"(2 x {T} = {2 * T} advised), lower p, or pass a sparse solver callable (e.g. BCS)")

    norms = np.asarray(basis_norms(mi, germ))
    scale = np.sqrt(norms)
    A = np.asarray(polynomial_basis(jnp.asarray(xi), mi, germ)) / scale[None, :]

    if custom:
        out = solver(A, q)
        mean = getattr(out, "mean", None)                # a Posterior's .mean; arrays have a .mean() method
        c = np.asarray(out if mean is None or callable(mean) else mean, dtype=np.float64).reshape(-1)
        if c.shape != (T,):
            raise JaxiapInputError(f"fit_pce: solver returned coefficients of shape {c.shape}, expected ({T},)")
    elif solver == "lstsq":
        c, *_ = np.linalg.lstsq(A, q, rcond=None)
    else:
        if not (np.isfinite(alpha) and alpha > 0):
            raise JaxiapInputError(f"fit_pce: ridge alpha must be finite and > 0, got {alpha}")
        pen = np.full(T, float(alpha))
        pen[np.all(mi == 0, axis=1)] = 0.0
        H = A.T @ A + np.diag(pen)
        c = np.linalg.solve(H, A.T @ q)
    if not np.all(np.isfinite(c)):
        raise JaxiapInputError("fit_pce: the fit produced non-finite coefficients; check the samples "
                               "or use solver='ridge'")
    coef = c / scale
    return PCE(coefficients=jnp.asarray(coef), multi_indices=jnp.asarray(mi), norms=jnp.asarray(norms),
               degree=int(mi.max()), germ=germ)


def validation_error(pce: PCE, xi_test, q_test) -> float:
    """Relative L2 error ||pce(xi_test) - q_test|| / ||q_test|| on held-out samples (S,) -> float.

    Compare it with the noise-induced floor (e.g. the seed-to-seed scatter of
    MD QoIs relative to ||q||); a surrogate cannot beat the noise in its data.
    """
    xi, q = _check_samples(xi_test, q_test, name="validation_error", germ=pce.germ)
    if xi.shape[1] != pce.dim:
        raise JaxiapInputError(f"validation_error: xi_test has d={xi.shape[1]} but the PCE has d={pce.dim}")
    denom = np.linalg.norm(q)
    if denom == 0:
        raise JaxiapInputError("validation_error: q_test is all zeros; the relative error is undefined")
    pred = np.asarray(pce(jnp.asarray(xi)))
    return float(np.linalg.norm(pred - q) / denom)


def pce_from_samples(key, qoi_fn: Callable, d: int, p: int, n_samples: int | None = None,
                     *, germ: str = "hermite", **fit_kwargs) -> PCE:
    """Draw germ samples (n_samples, d) with ``key``, evaluate q = qoi_fn(xi) (n_samples,), fit a PCE.

    germ ``"hermite"`` (default) draws xi ~ N(0, I_d); ``"legendre"`` draws
    xi ~ U(-1, 1)^d. ``qoi_fn`` is vectorised: it maps (S, d) germ samples to
    (S,) QoI values. ``n_samples`` defaults to 2 T (T = C(d + p, p) terms).
    Extra keyword arguments go to :func:`fit_pce` (``solver``, ``alpha``,
    ``multi_indices``). Same key, same samples, same surrogate.
    """
    germ = _check_germ(germ, "pce_from_samples: germ")
    d = _as_int(d, "d (germ dimension)")
    p = _as_int(p, "p (total polynomial degree)")
    T = total_degree_multi_indices(d, p).shape[0] if "multi_indices" not in fit_kwargs \
        else np.asarray(fit_kwargs["multi_indices"]).shape[0]
    if n_samples is None:
        n_samples = 2 * T
    n_samples = _as_int(n_samples, "n_samples")
    if n_samples < 1:
        raise JaxiapInputError(f"n_samples must be >= 1, got {n_samples}")
    dtype = jnp.result_type(float)
    if germ == "legendre":
        xi = jax.random.uniform(key, (n_samples, d), dtype=dtype, minval=-1.0, maxval=1.0)
    else:
        xi = jax.random.normal(key, (n_samples, d), dtype=dtype)
    q = qoi_fn(xi)
    return fit_pce(xi, q, p, germ=germ, **fit_kwargs)
