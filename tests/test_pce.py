"""Hermite polynomial chaos: basis, exact recovery, moments, Sobol indices (SCIENCE.md section 10)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpy.polynomial.hermite_e import hermegauss, hermeval

import jaxiap  # noqa: F401  (float64)
from jaxiap.errors import JaxiapInputError
from jaxiap.uq import (
    PCE,
    basis_norms,
    fit_pce,
    hermite_basis,
    pce_from_samples,
    total_degree_multi_indices,
    validation_error,
)


# ---------------------------------------------------------------- basis

def test_hermite_orthogonality_by_gauss_hermite_quadrature():
    """E[He_n He_m] = n! delta_nm, with 30-point Gauss-Hermite (exact to degree 59)."""
    x, w = hermegauss(30)
    w = w / w.sum()
    P = 10
    mi = np.arange(P + 1)[:, None]
    B = np.asarray(hermite_basis(x[:, None], mi))                # (Q, P + 1)
    G = B.T @ (w[:, None] * B)
    expected = np.diag([float(math.factorial(n)) for n in range(P + 1)])
    np.testing.assert_allclose(G, expected, rtol=1e-10, atol=1e-8)
    np.testing.assert_allclose(np.asarray(basis_norms(mi)), np.diag(expected), rtol=1e-12)


def test_hermite_basis_matches_numpy_products():
    rng = np.random.default_rng(3)
    xi = rng.normal(size=(7, 3))
    mi = total_degree_multi_indices(3, 4)
    B = np.asarray(hermite_basis(xi, mi))
    ref = np.ones((7, len(mi)))
    for t, alpha in enumerate(mi):
        for j, n in enumerate(alpha):
            ref[:, t] *= hermeval(xi[:, j], np.eye(n + 1)[n])
    np.testing.assert_allclose(B, ref, rtol=1e-12, atol=1e-12)
    # 2-dim norms are products of factorials
    np.testing.assert_allclose(np.asarray(basis_norms(mi)),
                               [np.prod([math.factorial(a) for a in row]) for row in mi])


def test_total_degree_multi_indices_layout():
    for d, p in [(1, 0), (1, 5), (3, 3), (4, 2)]:
        mi = total_degree_multi_indices(d, p)
        assert mi.shape == (math.comb(d + p, p), d)
        assert (mi[0] == 0).all()
        deg = mi.sum(axis=1)
        assert (np.diff(deg) >= 0).all() and deg.max() == p        # graded
        assert len({tuple(r) for r in mi}) == len(mi)              # unique
        if p >= 1:
            np.testing.assert_array_equal(mi[1:d + 1], np.eye(d, dtype=int))


# ---------------------------------------------------------------- exact recovery

# q = 1.5 + 2 He1(x0) - 0.7 He1(x1) He1(x2) + 0.5 He3(x2) + 0.3 He2(x0) He1(x1), written in monomials
_TERMS = {(0, 0, 0): 1.5, (1, 0, 0): 2.0, (0, 1, 1): -0.7, (0, 0, 3): 0.5, (2, 1, 0): 0.3}


def _poly(xi):
    x0, x1, x2 = xi[:, 0], xi[:, 1], xi[:, 2]
    return (1.5 + 2.0 * x0 - 0.7 * x1 * x2 + 0.5 * (x2**3 - 3 * x2) + 0.3 * (x0**2 - 1) * x1)


def test_exact_recovery_of_a_cubic_and_its_moments():
    xi = np.asarray(jax.random.normal(jax.random.key(0), (60, 3)))
    pce = fit_pce(xi, _poly(xi), 3)
    mi = np.asarray(pce.multi_indices)
    expected = np.array([_TERMS.get(tuple(r), 0.0) for r in mi])
    np.testing.assert_allclose(np.asarray(pce.coefficients), expected, atol=1e-10)
    xt = np.asarray(jax.random.normal(jax.random.key(1), (50, 3)))
    np.testing.assert_allclose(np.asarray(pce(xt)), _poly(xt), atol=1e-10)
    assert validation_error(pce, xt, _poly(xt)) < 1e-12
    # closed forms: mean = 1.5; Var = 2^2*1 + 0.7^2*1 + 0.5^2*3! + 0.3^2*2!
    var = 4.0 + 0.49 + 0.25 * 6 + 0.09 * 2
    assert abs(float(pce.mean) - 1.5) < 1e-10
    assert abs(float(pce.variance) - var) < 1e-9
    np.testing.assert_allclose(np.asarray(pce.sobol_first()), np.array([4.0, 0.0, 1.5]) / var, atol=1e-10)
    np.testing.assert_allclose(np.asarray(pce.sobol_total()),
                               np.array([4.0 + 0.18, 0.49 + 0.18, 0.49 + 1.5]) / var, atol=1e-10)
    # ridge with a tiny penalty agrees; a single point evaluates to a scalar; prediction jits
    ridge = fit_pce(xi, _poly(xi), 3, solver="ridge", alpha=1e-12)
    np.testing.assert_allclose(np.asarray(ridge.coefficients), expected, atol=1e-8)
    assert np.ndim(pce(xt[0])) == 0 and abs(float(pce(xt[0])) - _poly(xt[:1])[0]) < 1e-10
    jitted = jax.jit(lambda m, x: m(x))(pce, jnp.asarray(xt))
    np.testing.assert_allclose(np.asarray(jitted), _poly(xt), atol=1e-10)


def test_linear_qoi_sobol_is_squared_coefficients():
    qj = np.array([0.5, -2.0, 1.0, 0.1])
    xi = np.asarray(jax.random.normal(jax.random.key(2), (40, 4)))
    q = 3.0 + xi @ qj
    for p in (1, 2):
        pce = fit_pce(xi, q, p)
        S = qj**2 / np.sum(qj**2)
        np.testing.assert_allclose(np.asarray(pce.sobol_first()), S, atol=1e-10)
        np.testing.assert_allclose(np.asarray(pce.sobol_total()), S, atol=1e-10)
        assert abs(float(pce.mean) - 3.0) < 1e-10
        assert abs(float(pce.variance) - np.sum(qj**2)) < 1e-10


def test_constant_qoi_has_zero_sobol_indices():
    xi = np.asarray(jax.random.normal(jax.random.key(5), (20, 2)))
    pce = fit_pce(xi, np.full(20, 4.0), 2)
    assert abs(float(pce.mean) - 4.0) < 1e-12 and float(pce.variance) < 1e-20
    np.testing.assert_array_equal(np.asarray(pce.sobol_first()), 0.0)
    np.testing.assert_array_equal(np.asarray(pce.sobol_total()), 0.0)


# ---------------------------------------------------------------- Ishigami with Gaussian inputs

_A, _B, _SIG = 3.0, 0.3, 0.8


def _ishigami_gauss(xi):
    """Ishigami f = sin x1 + a sin^2 x2 + b x3^4 sin x1 with x = sig * xi ~ N(0, sig^2 I)."""
    x = _SIG * xi
    return jnp.sin(x[:, 0]) + _A * jnp.sin(x[:, 1]) ** 2 + _B * x[:, 2] ** 4 * jnp.sin(x[:, 0])


def _ishigami_gauss_closed_form():
    """Closed-form Sobol indices for Gaussian inputs x ~ N(0, s^2).

    With g = sin x1, h = 1 + b x3^4, k = sin^2 x2: f = g h + a k, E[g] = 0,
    E[sin^2] = (1 - e^{-2s^2})/2, E[sin^4] = (3 - 4 e^{-2s^2} + e^{-8s^2})/8, E[x^4] = 3 s^4,
    E[x^8] = 105 s^8. V1 = E[g^2] E[h]^2, V2 = a^2 Var(k), V13 = E[g^2] Var(h), V3 = 0.
    """
    s2 = _SIG**2
    m2 = (1 - np.exp(-2 * s2)) / 2
    m4 = (3 - 4 * np.exp(-2 * s2) + np.exp(-8 * s2)) / 8
    Eh = 1 + 3 * _B * s2**2
    Eh2 = 1 + 6 * _B * s2**2 + 105 * _B**2 * s2**4
    V1, V2, V13 = m2 * Eh**2, _A**2 * (m4 - m2**2), m2 * (Eh2 - Eh**2)
    V = V1 + V2 + V13
    return np.array([V1, V2, 0.0]) / V, np.array([V1 + V13, V2, V13]) / V, _A * m2, V


def test_ishigami_sobol_indices_gaussian_inputs():
    S1, ST, mean, var = _ishigami_gauss_closed_form()
    # the closed form lands close to the classical uniform-input Ishigami numbers
    np.testing.assert_allclose(S1, [0.3134, 0.4440, 0.0], atol=1e-3)
    np.testing.assert_allclose(ST, [0.5560, 0.4440, 0.2426], atol=1e-3)
    pce = pce_from_samples(jax.random.key(0), _ishigami_gauss, 3, 10, 3000)
    np.testing.assert_allclose(np.asarray(pce.sobol_first()), S1, atol=1e-2)
    np.testing.assert_allclose(np.asarray(pce.sobol_total()), ST, atol=1e-2)
    assert abs(float(pce.mean) - mean) < 1e-2
    assert abs(float(pce.variance) - var) / var < 1e-2
    xt = jax.random.normal(jax.random.key(1), (2000, 3))
    assert validation_error(pce, xt, _ishigami_gauss(xt)) < 1e-2
    # a degree that is too low is visibly worse on held-out data
    low = pce_from_samples(jax.random.key(0), _ishigami_gauss, 3, 2, 200)
    assert validation_error(low, xt, _ishigami_gauss(xt)) > 5e-2


def test_pce_from_samples_is_reproducible():
    f = lambda xi: xi[:, 0] ** 2 + xi[:, 1]  # noqa: E731
    a = pce_from_samples(jax.random.key(7), f, 2, 2)
    b = pce_from_samples(jax.random.key(7), f, 2, 2)
    np.testing.assert_array_equal(np.asarray(a.coefficients), np.asarray(b.coefficients))
    np.testing.assert_allclose(np.asarray(a.sobol_total()), [2.0 / 3.0, 1.0 / 3.0], atol=1e-10)


# ---------------------------------------------------------------- sparse (callable) solvers

def test_callable_solver_allows_underdetermined_fits():
    """S < T is accepted with a callable; it gets the orthonormal design A = Psi / sqrt(norms)."""
    from jaxiap.inference.bcs import fit_bcs

    d, p = 4, 4                                                  # T = 70
    mi = total_degree_multi_indices(d, p)
    xi = np.asarray(jax.random.normal(jax.random.key(3), (40, d)))
    true = np.zeros(len(mi))
    true[[0, 1, 7, 20]] = [1.0, 2.0, -0.5, 0.25]
    q = np.asarray(hermite_basis(xi, mi)) @ true

    seen = {}

    def min_norm(A, y):
        seen["A"] = A
        return np.linalg.pinv(A) @ y

    pce = fit_pce(xi, q, p, solver=min_norm)
    assert seen["A"].shape == (40, 70)
    norms = np.asarray(basis_norms(mi))
    np.testing.assert_allclose(seen["A"], np.asarray(hermite_basis(xi, mi)) / np.sqrt(norms), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(pce(xi)), q, atol=1e-8)   # interpolates the data

    sparse = fit_pce(xi, q, p, solver=lambda A, y: fit_bcs(A, y, noise_var=1e-10))  # a Posterior: .mean used
    np.testing.assert_allclose(np.asarray(sparse.coefficients), true, atol=1e-4)


# ---------------------------------------------------------------- bad input

def test_bad_inputs_raise():
    xi = np.asarray(jax.random.normal(jax.random.key(4), (30, 3)))
    q = xi[:, 0]
    with pytest.raises(JaxiapInputError, match="p"):
        total_degree_multi_indices(3, -1)
    with pytest.raises(JaxiapInputError, match="p"):
        fit_pce(xi, q, -1)
    with pytest.raises(JaxiapInputError, match="integer"):
        fit_pce(xi, q, 2.5)
    with pytest.raises(JaxiapInputError, match="underdetermined"):
        fit_pce(xi[:10], q[:10], 3)                               # T = 20 > S = 10
    with pytest.raises(JaxiapInputError, match="underdetermined"):
        fit_pce(xi[:10], q[:10], 3, solver="ridge", alpha=1e-3)
    with pytest.raises(JaxiapInputError, match="samples"):
        fit_pce(xi, q[:-1], 2)
    with pytest.raises(JaxiapInputError, match=r"\(S, d\)"):
        fit_pce(xi[:, 0], q, 2)
    with pytest.raises(JaxiapInputError, match="NaN"):
        fit_pce(xi, np.where(np.arange(30) == 4, np.nan, q), 2)
    with pytest.raises(JaxiapInputError, match="unknown solver"):
        fit_pce(xi, q, 2, solver="lasso")
    with pytest.raises(JaxiapInputError, match="alpha"):
        fit_pce(xi, q, 2, solver="ridge", alpha=-1.0)
    with pytest.raises(JaxiapInputError, match="match"):
        hermite_basis(xi, total_degree_multi_indices(2, 2))
    with pytest.raises(JaxiapInputError, match="shape"):
        fit_pce(xi, q, 2, solver=lambda A, y: np.zeros(3))
    pce = fit_pce(xi, q, 1)
    assert isinstance(pce, PCE)
    with pytest.raises(JaxiapInputError, match="d="):
        validation_error(pce, xi[:, :2], q)
