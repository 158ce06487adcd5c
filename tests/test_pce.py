"""Hermite polynomial chaos: basis, exact recovery, moments, Sobol indices (docs/science.md section 15)."""

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


# ---------------------------------------------------------------- Legendre chaos (uniform germ)

from numpy.polynomial.legendre import leggauss, legval  # noqa: E402

from jaxiap.uq.germ import from_germ, gaussian_germ  # noqa: E402
from jaxiap.uq.pce import (  # noqa: E402
    legendre_basis,
    polynomial_basis,
)


def test_legendre_orthogonality_by_gauss_legendre_quadrature():
    """E[P_n P_m] = delta_nm / (2n + 1) under U(-1, 1), with 30-point Gauss-Legendre (exact to degree 59)."""
    x, w = leggauss(30)
    w = w / w.sum()                                              # the uniform density 1/2 on [-1, 1]
    P = 12
    mi = np.arange(P + 1)[:, None]
    B = np.asarray(legendre_basis(x[:, None], mi))               # (Q, P + 1)
    G = B.T @ (w[:, None] * B)
    expected = np.diag(1.0 / (2.0 * np.arange(P + 1) + 1.0))
    np.testing.assert_allclose(G, expected, atol=1e-13)
    np.testing.assert_allclose(np.asarray(basis_norms(mi, "legendre")), np.diag(expected), rtol=1e-13)
    # 3-d products match numpy's legval; norms are products of 1 / (2 alpha_j + 1)
    rng = np.random.default_rng(3)
    xi = rng.uniform(-1, 1, size=(7, 3))
    mi3 = total_degree_multi_indices(3, 5)
    ref = np.ones((7, len(mi3)))
    for t, alpha in enumerate(mi3):
        for j, n in enumerate(alpha):
            ref[:, t] *= legval(xi[:, j], np.eye(n + 1)[n])
    np.testing.assert_allclose(np.asarray(polynomial_basis(xi, mi3, "legendre")), ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.asarray(basis_norms(mi3, "legendre")),
                               [np.prod([1.0 / (2 * a + 1) for a in row]) for row in mi3], rtol=1e-13)
    # the generic basis with the default germ is the Hermite basis
    np.testing.assert_array_equal(np.asarray(polynomial_basis(xi, mi3)), np.asarray(hermite_basis(xi, mi3)))


# q = 1 + 2 P1(x0) + 0.5 P2(x1) - 0.7 P1(x0) P1(x2) + 0.4 P3(x2) + 0.3 P2(x0) P1(x1), in monomials
_LTERMS = {(0, 0, 0): 1.0, (1, 0, 0): 2.0, (0, 2, 0): 0.5, (1, 0, 1): -0.7, (0, 0, 3): 0.4, (2, 1, 0): 0.3}


def _lpoly(xi):
    x0, x1, x2 = xi[:, 0], xi[:, 1], xi[:, 2]
    return (1.0 + 2.0 * x0 + 0.5 * (3 * x1**2 - 1) / 2 - 0.7 * x0 * x2 + 0.4 * (5 * x2**3 - 3 * x2) / 2
            + 0.3 * (3 * x0**2 - 1) / 2 * x1)


def test_legendre_exact_recovery_of_a_cubic_and_its_moments():
    xi = np.asarray(jax.random.uniform(jax.random.key(0), (60, 3), minval=-1.0, maxval=1.0))
    pce = fit_pce(xi, _lpoly(xi), 3, germ="legendre")
    assert pce.germ == "legendre"
    mi = np.asarray(pce.multi_indices)
    expected = np.array([_LTERMS.get(tuple(r), 0.0) for r in mi])
    np.testing.assert_allclose(np.asarray(pce.coefficients), expected, atol=1e-10)
    xt = np.asarray(jax.random.uniform(jax.random.key(1), (50, 3), minval=-1.0, maxval=1.0))
    np.testing.assert_allclose(np.asarray(pce(xt)), _lpoly(xt), atol=1e-10)
    assert validation_error(pce, xt, _lpoly(xt)) < 1e-12
    # closed forms with E[P_n^2] = 1/(2n+1): partial variances per term
    v = {"x0": 4.0 / 3, "x1": 0.25 / 5, "x0x2": 0.49 / 9, "x2": 0.16 / 7, "x0x1": 0.09 / 15}
    var = sum(v.values())
    assert abs(float(pce.mean) - 1.0) < 1e-10
    assert abs(float(pce.variance) - var) < 1e-10
    np.testing.assert_allclose(np.asarray(pce.sobol_first()), np.array([v["x0"], v["x1"], v["x2"]]) / var,
                               atol=1e-10)
    np.testing.assert_allclose(
        np.asarray(pce.sobol_total()),
        np.array([v["x0"] + v["x0x2"] + v["x0x1"], v["x1"] + v["x0x1"], v["x2"] + v["x0x2"]]) / var, atol=1e-10)
    # the Monte-Carlo moments of the polynomial agree (an independent check of the norms)
    xm = np.random.default_rng(0).uniform(-1, 1, size=(400_000, 3))
    assert abs(np.var(_lpoly(xm)) - var) / var < 1e-2
    # prediction jits with the germ as static data; a single point is a scalar
    jitted = jax.jit(lambda m, x: m(x))(pce, jnp.asarray(xt))
    np.testing.assert_allclose(np.asarray(jitted), _lpoly(xt), atol=1e-10)
    assert np.ndim(pce(xt[0])) == 0
    # the Hermite fit of the same data is the same function but different coefficients and moments
    herm = fit_pce(xi, _lpoly(xi), 3)
    assert herm.germ == "hermite"
    np.testing.assert_allclose(np.asarray(herm(xt)), _lpoly(xt), atol=1e-9)
    assert abs(float(herm.variance) - var) > 0.1


# Ishigami f = sin x1 + a sin^2 x2 + b x3^4 sin x1, x_i = pi xi_i, xi_i ~ U(-1, 1) (x ~ U(-pi, pi)^3).
_IA, _IB = 7.0, 0.1


def _ishigami(xi):
    x = jnp.pi * xi
    return jnp.sin(x[:, 0]) + _IA * jnp.sin(x[:, 1]) ** 2 + _IB * x[:, 2] ** 4 * jnp.sin(x[:, 0])


def _ishigami_exact():
    """Exact moments and Sobol indices (Ishigami & Homma 1990; Sobol' & Levitan 1999).

    mean = a/2;  V = a^2/8 + b pi^4/5 + b^2 pi^8/18 + 1/2;
    V1 = (1 + b pi^4/5)^2 / 2;  V2 = a^2/8;  V3 = 0;  V13 = b^2 pi^8 (1/18 - 1/50);  V12 = V23 = V123 = 0.
    S = (V1, V2, V3)/V;  S^T = (V1 + V13, V2, V13)/V.
    """
    a, b, pi = _IA, _IB, np.pi
    V = a**2 / 8 + b * pi**4 / 5 + b**2 * pi**8 / 18 + 0.5
    V1, V2, V13 = 0.5 * (1 + b * pi**4 / 5) ** 2, a**2 / 8, b**2 * pi**8 * (1 / 18 - 1 / 50)
    assert abs(V1 + V2 + V13 - V) < 1e-12 * V                     # the decomposition is complete
    return np.array([V1, V2, 0.0]) / V, np.array([V1 + V13, V2, V13]) / V, a / 2, V


def test_ishigami_sobol_indices_uniform_inputs_legendre():
    S1, ST, mean, var = _ishigami_exact()
    # the classical numbers for a = 7, b = 0.1
    np.testing.assert_allclose(S1, [0.3139, 0.4424, 0.0], atol=1e-4)
    np.testing.assert_allclose(ST, [0.5576, 0.4424, 0.2437], atol=1e-4)
    pce = pce_from_samples(jax.random.key(0), _ishigami, 3, 10, 1500, germ="legendre")   # T = 286
    assert pce.germ == "legendre"
    np.testing.assert_allclose(np.asarray(pce.sobol_first()), S1, atol=1e-2)
    np.testing.assert_allclose(np.asarray(pce.sobol_total()), ST, atol=1e-2)
    assert abs(float(pce.mean) - mean) / mean < 1e-2
    assert abs(float(pce.variance) - var) / var < 1e-2
    # what the fit reaches in fact (p = 10: ~1e-4 on the indices, ~1e-3 held out): tighter than 1e-2
    np.testing.assert_allclose(np.asarray(pce.sobol_first()), S1, atol=1e-3)
    np.testing.assert_allclose(np.asarray(pce.sobol_total()), ST, atol=1e-3)
    xt = jax.random.uniform(jax.random.key(1), (2000, 3), minval=-1.0, maxval=1.0)
    assert validation_error(pce, xt, _ishigami(xt)) < 5e-3
    # the same samples fitted with Hermite norms would give wrong moments: the germ matters
    herm = PCE(coefficients=pce.coefficients, multi_indices=pce.multi_indices,
               norms=basis_norms(pce.multi_indices), degree=pce.degree)
    assert abs(float(herm.variance) - var) / var > 0.5


def test_legendre_bad_inputs_raise():
    xi = np.asarray(jax.random.uniform(jax.random.key(4), (30, 2), minval=-1.0, maxval=1.0))
    q = xi[:, 0]
    with pytest.raises(JaxiapInputError, match=r"\[-1, 1\]"):
        fit_pce(2.0 * xi, q, 2, germ="legendre")
    with pytest.raises(JaxiapInputError, match="germ"):
        fit_pce(xi, q, 2, germ="laguerre")
    with pytest.raises(JaxiapInputError, match="germ"):
        pce_from_samples(jax.random.key(0), lambda x: x[:, 0], 2, 2, germ="uniform")
    with pytest.raises(JaxiapInputError, match="germ"):
        basis_norms(total_degree_multi_indices(2, 2), "jacobi")
    with pytest.raises(JaxiapInputError, match=r"\[-1, 1\]"):
        legendre_basis(xi + 1.5, total_degree_multi_indices(2, 2))
    pce = fit_pce(xi, q, 1, germ="legendre")
    with pytest.raises(JaxiapInputError, match=r"\[-1, 1\]"):
        pce(xi * 3.0)
    with pytest.raises(JaxiapInputError, match=r"\[-1, 1\]"):
        validation_error(pce, xi * 3.0, q)
    with pytest.raises(JaxiapInputError, match="germ"):
        PCE(coefficients=pce.coefficients, multi_indices=pce.multi_indices, norms=pce.norms,
            degree=1, germ="chebyshev")
    # the end points themselves are fine
    assert np.isfinite(float(pce(np.array([1.0, -1.0]))))


# ---------------------------------------------------------------- Gaussian germ of coefficient samples

def test_gaussian_germ_round_trip_and_whitening():
    K, M = 4, 20_000
    rng = np.random.default_rng(0)
    A = rng.normal(size=(K, K))
    cov = A @ A.T + 0.5 * np.eye(K)
    L = np.linalg.cholesky(cov)
    mean = rng.normal(size=K)
    c = mean + rng.normal(size=(M, K)) @ L.T
    xi_cov = np.asarray(gaussian_germ(c, mean, cov))                 # read as a covariance (symmetric)
    xi_chol = np.asarray(gaussian_germ(c, mean, L))                  # read as a factor (lower triangular)
    assert xi_cov.shape == (M, K)
    np.testing.assert_allclose(xi_cov, xi_chol, atol=1e-10)
    np.testing.assert_allclose(np.asarray(from_germ(xi_chol, mean, L)), c, atol=1e-10)    # round trip
    np.testing.assert_allclose(np.asarray(from_germ(xi_cov, mean, cov, kind="cov")), c, atol=1e-10)
    # the germ is standard normal: sample covariance ~ I (MC error ~ 1/sqrt(M) ~ 0.007)
    np.testing.assert_allclose(np.cov(xi_chol.T), np.eye(K), atol=0.04)
    np.testing.assert_allclose(xi_chol.mean(axis=0), 0.0, atol=0.04)
    # germ -> coefficients -> germ, and one sample (K,) -> (K,)
    z = rng.normal(size=(5, K))
    np.testing.assert_allclose(np.asarray(gaussian_germ(from_germ(z, mean, L), mean, L)), z, atol=1e-10)
    one = np.asarray(gaussian_germ(c[0], mean, L))
    assert one.shape == (K,)
    np.testing.assert_allclose(one, xi_chol[0], atol=1e-12)
    # a diagonal matrix is ambiguous unless kind says which it is
    D = np.diag([4.0, 1.0, 9.0, 0.25])
    with pytest.raises(JaxiapInputError, match="kind"):
        gaussian_germ(c, mean, D)
    np.testing.assert_allclose(np.asarray(gaussian_germ(c, mean, D, kind="cov")),
                               (c - mean) / np.sqrt(np.diag(D)), atol=1e-12)
    np.testing.assert_allclose(np.asarray(gaussian_germ(c, mean, D, kind="cholesky")),
                               (c - mean) / np.diag(D), atol=1e-12)
    # bad input
    with pytest.raises(JaxiapInputError, match="positive definite"):
        gaussian_germ(c, mean, -cov)
    with pytest.raises(JaxiapInputError, match="K="):
        gaussian_germ(c[:, :3], mean, cov)
    with pytest.raises(JaxiapInputError, match="shape"):
        gaussian_germ(c, mean, cov[:3, :3])
    with pytest.raises(JaxiapInputError, match="lower triangular"):
        gaussian_germ(c, mean, A)
    with pytest.raises(JaxiapInputError, match="NaN"):
        gaussian_germ(np.where(np.arange(K) == 1, np.nan, c), mean, cov)
