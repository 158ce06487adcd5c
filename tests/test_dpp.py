"""DPP kernels, marginals, exact samplers, greedy MAP and dual forms against brute force."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import jaxiap  # noqa: F401  (enables float64)
from jaxiap.active import dpp, dpp_dual, dpp_kernels
from jaxiap.errors import JaxiapInputError


def _random_L(seed, n, rank=None, scale=1.0):
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(n, rank or n)) * scale
    return A @ A.T


def _qd_L(seed, n, f=3):
    rng = np.random.default_rng(seed)
    phi = rng.normal(size=(n, f))
    q = rng.uniform(0.8, 1.6, size=n)
    return np.asarray(dpp_kernels.quality_diversity_kernel(phi, q, 1.0))


def _subsets(n):
    for r in range(n + 1):
        yield from itertools.combinations(range(n), r)


def _det(L, S):
    S = list(S)
    return 1.0 if not S else float(np.linalg.det(L[np.ix_(S, S)]))


def _exact_probs(L, k=None):
    """{subset tuple: probability} by enumeration, for the DPP or (k given) the k-DPP."""
    n = L.shape[0]
    subs = [S for S in _subsets(n) if k is None or len(S) == k]
    w = np.array([_det(L, S) for S in subs])
    return dict(zip(subs, w / w.sum())), float(np.linalg.det(L + np.eye(n)))


def _chi2_pvalue(masks, probs, min_expected=5.0):
    """Chi-square goodness of fit of sampled masks to exact subset probabilities (small bins pooled)."""
    masks = np.asarray(masks)
    n_draws = masks.shape[0]
    counts = {}
    for m in masks:
        S = tuple(np.flatnonzero(m))
        assert S in probs, f"sampled subset {S} has zero probability"
        counts[S] = counts.get(S, 0) + 1
    obs, exp, pool_o, pool_e = [], [], 0.0, 0.0
    for S, p in probs.items():
        e = n_draws * p
        if e < min_expected:
            pool_o += counts.get(S, 0)
            pool_e += e
        else:
            obs.append(counts.get(S, 0))
            exp.append(e)
    if pool_e > 0:
        obs.append(pool_o)
        exp.append(pool_e)
    return stats.chisquare(np.array(obs, float), np.array(exp)).pvalue


# ----------------------------------------------------------------------------- kernels / marginals

def test_rbf_and_quality_diversity_kernel():
    rng = np.random.default_rng(0)
    phi = rng.normal(size=(5, 3))
    k = np.asarray(dpp_kernels.rbf_kernel(phi, 0.7))
    d2 = ((phi[:, None] - phi[None]) ** 2).sum(-1)
    np.testing.assert_allclose(k, np.exp(-d2 / (2 * 0.7**2)), rtol=1e-12, atol=1e-14)
    np.testing.assert_array_equal(np.diag(k), 1.0)
    q = rng.uniform(0.5, 2.0, size=5)
    L = np.asarray(dpp_kernels.quality_diversity_kernel(phi, q, 0.7))
    np.testing.assert_allclose(L, q[:, None] * k * q[None], rtol=1e-12)
    np.testing.assert_array_equal(L, L.T)


def test_inclusion_probabilities_match_enumeration():
    n = 6
    L = _random_L(1, n, scale=0.6)
    probs, Z = _exact_probs(L)
    # normalisation: sum_S det(L_S) = det(L + I)
    np.testing.assert_allclose(sum(_det(L, S) for S in _subsets(n)), Z, rtol=1e-10)
    brute = np.array([sum(p for S, p in probs.items() if i in S) for i in range(n)])
    np.testing.assert_allclose(np.asarray(dpp.inclusion_probabilities(L)), brute, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(float(dpp.expected_size(L)), sum(len(S) * p for S, p in probs.items()),
                               rtol=1e-10)
    K = np.asarray(dpp.marginal_kernel(L))
    np.testing.assert_array_equal(K, K.T)
    np.testing.assert_allclose(K, L @ np.linalg.inv(L + np.eye(n)), atol=1e-12)
    pair = sum(p for S, p in probs.items() if 0 in S and 3 in S)  # P({0,3} subset Y) = det(K_{03})
    np.testing.assert_allclose(_det(K, (0, 3)), pair, rtol=1e-9)


# ----------------------------------------------------------------------------- exact samplers

N_DRAWS = 3000


def test_sample_dpp_chi_square():
    L = _qd_L(2, 5)
    probs, _ = _exact_probs(L)
    keys = jax.random.split(jax.random.key(0), N_DRAWS)
    masks = jax.vmap(lambda key: dpp.sample_dpp(key, L))(keys)
    assert masks.shape == (N_DRAWS, 5) and masks.dtype == jnp.bool_
    assert _chi2_pvalue(masks, probs) > 1e-3
    # inclusion frequencies = diag(K), K = L (L + I)^-1, within 4 binomial standard errors
    K_diag = np.diag(L @ np.linalg.inv(L + np.eye(5)))
    _assert_frequencies(np.asarray(masks).mean(0), K_diag, N_DRAWS)
    # power: the same draws against a wrong kernel (one item's quality doubled) are rejected
    wrong = L.copy()
    wrong[2, :] *= 2.0
    wrong[:, 2] *= 2.0
    assert _chi2_pvalue(masks, _exact_probs(wrong)[0]) < 1e-3


def test_sample_kdpp_chi_square():
    L = _qd_L(3, 5)
    probs, _ = _exact_probs(L, k=2)
    keys = jax.random.split(jax.random.key(1), N_DRAWS)
    masks = jax.vmap(lambda key: dpp.sample_kdpp(key, L, 2))(keys)
    assert np.all(np.asarray(masks).sum(1) == 2)
    assert _chi2_pvalue(masks, probs) > 1e-3
    # k-DPP marginals (not diag K): P(i in Y) = sum of P(S) over the size-2 sets S holding i
    marg = np.array([sum(p for S, p in probs.items() if i in S) for i in range(5)])
    _assert_frequencies(np.asarray(masks).mean(0), marg, N_DRAWS)
    # power: the same draws against a wrong kernel (one item's quality doubled) are rejected
    wrong = L.copy()
    wrong[2, :] *= 2.0
    wrong[:, 2] *= 2.0
    assert _chi2_pvalue(masks, _exact_probs(wrong, k=2)[0]) < 1e-3


def _assert_frequencies(freq, p, n, z=4.0):
    """Empirical inclusion frequencies of n independent draws within z binomial standard errors of p."""
    np.testing.assert_array_less(np.abs(freq - p), z * np.sqrt(p * (1 - p) / n) + 1e-12)


def test_kdpp_log_space_handles_extreme_spectra():
    # eigenvalues spanning 1e-150 .. 1e150: e_k would overflow / underflow without log space
    rng = np.random.default_rng(4)
    Q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    lam = np.array([1e150, 1e100, 1.0, 1e-3, 1e-50, 1e-150])
    L = (Q * lam) @ Q.T
    L = 0.5 * (L + L.T)
    # the scale is too extreme for the PSD check's relative tolerance to be meaningful; call the core
    masks = jax.vmap(lambda key: dpp._sample_kdpp(key, jnp.asarray(L), 3))(jax.random.split(jax.random.key(5), 50))
    assert np.all(np.asarray(masks).sum(1) == 3)
    # eigh(L) resolves nothing below 1e150 * eps, so the distribution is checked on the exact
    # spectrum (lam, Q): the same log-space e_k path, without the eigendecomposition
    n_draws = 2000
    keys = jax.random.split(jax.random.key(5), n_draws)
    masks = jax.vmap(lambda key: dpp._sample_kdpp_fixed(key, jnp.asarray(lam), jnp.asarray(Q), 3))(keys)
    assert np.all(np.asarray(masks).sum(1) == 3)
    # the distribution, not only the size: P(Y) = sum_{|J| = 3} (prod_J lam / e_3(lam)) det(V[Y, J])^2
    # (the k-DPP as a mixture of projection DPPs), with the weights in log space
    triples = list(itertools.combinations(range(6), 3))
    logw = np.array([np.log(lam[list(J)]).sum() for J in triples])
    w = np.exp(logw - logw.max())
    w /= w.sum()
    probs = {Y: float(sum(wj * np.linalg.det(Q[np.ix_(Y, J)]) ** 2 for wj, J in zip(w, triples)))
             for Y in itertools.combinations(range(6), 3)}
    np.testing.assert_allclose(sum(probs.values()), 1.0, rtol=1e-10)
    probs = {Y: p for Y, p in probs.items() if p > 1e-12}
    assert _chi2_pvalue(masks, probs) > 1e-3
    # power: a sampler that mis-weighted the eigenvalues (picking eigenvectors {0, 1, 3} rather than
    # {0, 1, 2}, which carry 99.9 % of the weight) is rejected
    wrong = {Y: float(np.linalg.det(Q[np.ix_(Y, (0, 1, 3))]) ** 2) for Y in itertools.combinations(range(6), 3)}
    assert _chi2_pvalue(masks, wrong) < 1e-3


def test_samplers_deterministic_and_jittable():
    L = _qd_L(5, 6)
    key = jax.random.key(7)
    a = dpp.sample_dpp(key, L)
    np.testing.assert_array_equal(a, dpp.sample_dpp(key, L))
    np.testing.assert_array_equal(a, jax.jit(dpp.sample_dpp)(key, jnp.asarray(L)))
    b = dpp.sample_kdpp(key, L, 3)
    np.testing.assert_array_equal(b, jax.jit(dpp.sample_kdpp, static_argnums=2)(key, jnp.asarray(L), 3))
    assert int(b.sum()) == 3
    # old-style uint32 keys work too
    assert dpp.sample_dpp(jax.random.PRNGKey(0), L).shape == (6,)
    # a projection-like kernel: huge eigenvalues -> every eigenvector kept, sample = all N items
    assert bool(jnp.all(dpp.sample_dpp(key, 1e12 * np.eye(4))))


# ----------------------------------------------------------------------------- reusable spectrum, fast projection

@pytest.mark.slow  # CI budget (2026-11-30): runs with -m slow; a cheaper default-run test covers the same code path
def test_fast_projection_sampler_chi_square_and_matches_full_width():
    # the bucketed O(N |Y|^2) projection phase (eager keys) against exact subset probabilities,
    # and draw for draw against the full-width (R = N) projection of the pre-fix sampler
    L = _qd_L(2, 5)
    probs, _ = _exact_probs(L)
    spec = dpp.dpp_spectrum(L)
    keys = jax.random.split(jax.random.key(11), 1500)
    masks = np.array([np.asarray(dpp.sample_dpp_spectral(kk, spec)) for kk in keys])
    assert _chi2_pvalue(masks, probs) > 1e-3
    full = np.asarray(jax.vmap(lambda kk: dpp._sample_dpp_fixed(kk, spec.lam, spec.V, 5))(keys))
    np.testing.assert_array_equal(masks, full)
    probs2, _ = _exact_probs(L, k=2)
    masks2 = np.array([np.asarray(spec.sample_k(kk, 2)) for kk in keys])
    assert np.all(masks2.sum(1) == 2)
    assert _chi2_pvalue(masks2, probs2) > 1e-3
    # N = 40 > the smallest bucket: widths 8 / 16 vs the full width 40, same draws
    L40 = _qd_L(3, 40, f=4)
    spec40 = dpp.dpp_spectrum(L40)
    keys40 = jax.random.split(jax.random.key(12), 40)
    fast = np.array([np.asarray(dpp.sample_dpp_spectral(kk, spec40)) for kk in keys40])
    ref = np.asarray(jax.vmap(lambda kk: dpp._sample_dpp_fixed(kk, spec40.lam, spec40.V, 40))(keys40))
    np.testing.assert_array_equal(fast, ref)
    assert dpp._bucket(0, 40) == 8 and dpp._bucket(9, 40) == 16 and dpp._bucket(33, 40) == 40


@pytest.mark.slow  # CI budget (2026-11-30): runs with -m slow; a cheaper default-run test covers the same code path
def test_spectral_path_equals_one_shot():
    L = _qd_L(5, 7)
    spec = dpp.dpp_spectrum(L)
    assert isinstance(spec, dpp.DPPSpectrum)
    np.testing.assert_allclose(spec.inclusion_probabilities(), dpp.inclusion_probabilities(L), rtol=1e-12)
    np.testing.assert_allclose(float(spec.expected_size()), float(dpp.expected_size(L)), rtol=1e-12)
    np.testing.assert_allclose(spec.marginal_kernel(), dpp.marginal_kernel(L), atol=1e-14)
    keys = jax.random.split(jax.random.key(3), 20)
    for kk in keys:
        a = dpp.sample_dpp(kk, L)
        np.testing.assert_array_equal(a, dpp.sample_dpp_spectral(kk, spec))
        np.testing.assert_array_equal(a, spec.sample(kk))
        np.testing.assert_array_equal(a, dpp.sample_dpp_spectral(kk, (spec.lam, spec.V)))
        b = dpp.sample_kdpp(kk, L, 3)
        np.testing.assert_array_equal(b, dpp.sample_kdpp_spectral(kk, spec, 3))
        np.testing.assert_array_equal(b, spec.sample_k(kk, 3))
    # jit / vmap over keys with the spectrum as a pytree argument give the same draws
    eager = np.array([np.asarray(spec.sample(kk)) for kk in keys])
    np.testing.assert_array_equal(jax.vmap(lambda kk: dpp.sample_dpp_spectral(kk, spec))(keys), eager)
    np.testing.assert_array_equal(jax.vmap(jax.jit(dpp.sample_dpp_spectral), in_axes=(0, None))(keys, spec), eager)
    eager_k = np.array([np.asarray(spec.sample_k(kk, 3)) for kk in keys])
    jk = jax.jit(dpp.sample_kdpp_spectral, static_argnums=2)
    np.testing.assert_array_equal(jax.vmap(lambda kk: jk(kk, spec, 3))(keys), eager_k)
    # the dual spectrum plugs into the same samplers
    rng = np.random.default_rng(14)
    B = rng.normal(size=(9, 3))
    ds = dpp_dual.dual_spectrum(B)
    assert ds.V.shape == (9, 3)
    np.testing.assert_allclose(ds.inclusion_probabilities(), dpp_dual.inclusion_probabilities_dual(B), rtol=1e-10)
    assert int(dpp.sample_kdpp_spectral(jax.random.key(0), ds, 3).sum()) == 3
    with pytest.raises(JaxiapInputError, match="rank"):
        dpp.sample_kdpp_spectral(jax.random.key(0), ds, 4)
    with pytest.raises(JaxiapInputError, match="spectrum"):
        dpp.sample_dpp_spectral(jax.random.key(0), np.ones((3, 3)))


def test_psd_check_reuses_the_sampler_eigendecomposition(monkeypatch):
    L = _qd_L(6, 6)
    notpsd = np.array([[1.0, 2.0, 0.0], [2.0, 1.0, 0.0], [0.0, 0.0, 1.0]])  # eigenvalues -1, 1, 3
    calls = []
    real = np.linalg.eigvalsh
    monkeypatch.setattr(np.linalg, "eigvalsh", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    key = jax.random.key(0)
    dpp.sample_dpp(key, L)
    dpp.sample_kdpp(key, L, 2)
    dpp.inclusion_probabilities(L)
    dpp.greedy_map(L, 3)
    assert calls == []  # no second O(N^3) pass: the PSD check reads the sampler's own eigenvalues
    # a kernel with a positive diagonal but a negative eigenvalue
    assert np.all(np.diag(notpsd) > 0) and real(notpsd).min() < 0
    with pytest.raises(JaxiapInputError, match="positive semi-definite.*eigenvalue"):
        dpp.sample_dpp(key, notpsd)
    with pytest.raises(JaxiapInputError, match="positive semi-definite"):
        dpp.dpp_spectrum(notpsd)
    dpp.greedy_map(notpsd, 2)  # cheap default: symmetric, non-negative diagonal
    with pytest.raises(JaxiapInputError, match="positive semi-definite.*eigenvalue"):
        dpp.greedy_map(notpsd, 2, check="full")
    assert calls == [1]
    neg = L.copy()
    neg[2, 2] = -1.0
    with pytest.raises(JaxiapInputError, match="negative diagonal"):
        dpp.greedy_map(neg, 2)
    with pytest.raises(JaxiapInputError, match="symmetric"):
        dpp.greedy_map(L + np.triu(np.ones((6, 6)), 1), 2)
    with pytest.raises(JaxiapInputError, match="check must be"):
        dpp.greedy_map(L, 2, check="fast")


# ----------------------------------------------------------------------------- greedy MAP

def _best_subset(L, k):
    return max(itertools.combinations(range(L.shape[0]), k), key=lambda S: _det(L, S))


def test_greedy_map_exact_cases():
    L = _random_L(6, 7)
    idx, ld = dpp.greedy_map(L, 1)
    assert int(idx[0]) == int(np.argmax(np.diag(L)))
    np.testing.assert_allclose(float(ld[0]), np.log(np.max(np.diag(L))), rtol=1e-12)

    D = np.diag([0.5, 3.0, 1.2, 7.0, 0.1, 2.0])
    idx, ld = dpp.greedy_map(D, 3)
    assert set(np.asarray(idx).tolist()) == set(_best_subset(D, 3)) == {1, 3, 5}

    # block diagonal with strongly correlated pairs: the mode takes one item per block
    def block(a, b, rho=0.98):
        return np.array([[a, rho * np.sqrt(a * b)], [rho * np.sqrt(a * b), b]])

    B = np.zeros((6, 6))
    for s, (a, b) in zip((0, 2, 4), ((4.0, 3.5), (2.0, 2.5), (1.0, 1.5))):
        B[s:s + 2, s:s + 2] = block(a, b)
    for k in (1, 2, 3):
        idx, ld = dpp.greedy_map(B, k)
        best = _best_subset(B, k)
        assert set(np.asarray(idx).tolist()) == set(best)
        np.testing.assert_allclose(float(ld[-1]), np.log(_det(B, best)), rtol=1e-10)


def test_greedy_map_log_dets_are_prefix_log_dets():
    L = _random_L(7, 8, scale=0.8)
    idx, ld = dpp.greedy_map(L, 5)
    idx = np.asarray(idx)
    assert np.all(idx >= 0) and len(set(idx.tolist())) == 5
    for t in range(5):
        sign, direct = np.linalg.slogdet(L[np.ix_(idx[:t + 1], idx[:t + 1])])
        assert sign > 0
        np.testing.assert_allclose(float(ld[t]), direct, rtol=1e-9, atol=1e-10)
    # with every residual d_i^2 >= 1 (here lam_min(L) >= 1), log det never decreases
    L2 = _random_L(8, 8, scale=0.5) + 1.5 * np.eye(8)
    _, ld2 = dpp.greedy_map(L2, 8)
    assert np.all(np.diff(np.concatenate([[0.0], np.asarray(ld2)])) >= 0)
    jidx, jld = jax.jit(dpp.greedy_map, static_argnums=1)(jnp.asarray(L), 5)
    np.testing.assert_array_equal(jidx, idx)
    np.testing.assert_allclose(jld, ld, rtol=1e-12)


def test_greedy_map_stops_at_rank():
    L = _random_L(9, 6, rank=2)
    idx, ld = dpp.greedy_map(L, 4)
    idx = np.asarray(idx)
    assert np.all(idx[:2] >= 0) and np.all(idx[2:] == -1)
    np.testing.assert_allclose(np.asarray(ld)[2:], float(ld[1]))
    idx0, ld0 = dpp.greedy_map(np.zeros((3, 3)), 2)
    np.testing.assert_array_equal(idx0, [-1, -1])
    np.testing.assert_array_equal(ld0, [0.0, 0.0])


# ----------------------------------------------------------------------------- dual forms

def test_dual_matches_primal():
    rng = np.random.default_rng(10)
    B = rng.normal(size=(8, 3)) * 0.8
    L = B @ B.T
    np.testing.assert_allclose(np.asarray(dpp_dual.inclusion_probabilities_dual(B)),
                               np.asarray(dpp.inclusion_probabilities(L)), rtol=1e-10, atol=1e-12)
    # the dual samplers' inclusion frequencies: diag K for the DPP, enumerated k-DPP marginals for k = 3
    keys = jax.random.split(jax.random.key(0), N_DRAWS)
    m = np.asarray(jax.vmap(lambda key: dpp_dual.sample_dpp_dual(key, B))(keys))
    assert m.shape == (N_DRAWS, 8) and np.all(m.sum(1) <= 3)  # rank 3
    _assert_frequencies(m.mean(0), np.diag(L @ np.linalg.inv(L + np.eye(8))), N_DRAWS)
    mk = np.asarray(jax.vmap(lambda key: dpp_dual.sample_kdpp_dual(key, B, 3))(keys))
    assert np.all(mk.sum(1) == 3)
    probs3, _ = _exact_probs(L, k=3)
    marg3 = np.array([sum(p for S, p in probs3.items() if i in S) for i in range(8)])
    _assert_frequencies(mk.mean(0), marg3, N_DRAWS)


def test_sample_dpp_dual_chi_square():
    rng = np.random.default_rng(11)
    B = rng.normal(size=(5, 2))
    L = B @ B.T
    keys = jax.random.split(jax.random.key(2), N_DRAWS)
    probs, _ = _exact_probs(L)
    probs = {S: p for S, p in probs.items() if p > 1e-12}  # subsets beyond rank 2 have P = 0
    masks = jax.vmap(lambda key: dpp_dual.sample_dpp_dual(key, B))(keys)
    assert _chi2_pvalue(masks, probs) > 1e-3
    probs2, _ = _exact_probs(L, k=2)
    masks2 = jax.vmap(lambda key: dpp_dual.sample_kdpp_dual(key, B, 2))(keys)
    assert _chi2_pvalue(masks2, probs2) > 1e-3


# ----------------------------------------------------------------------------- bad input

def test_bad_input_raises():
    L = _random_L(12, 4)
    key = jax.random.key(0)
    with pytest.raises(JaxiapInputError, match="square"):
        dpp.inclusion_probabilities(np.ones((3, 4)))
    with pytest.raises(JaxiapInputError, match="square"):
        dpp.sample_dpp(key, np.ones(3))
    asym = L.copy()
    asym[0, 1] += 1.0
    with pytest.raises(JaxiapInputError, match="symmetric"):
        dpp.sample_dpp(key, asym)
    with pytest.raises(JaxiapInputError, match="positive semi-definite"):
        dpp.marginal_kernel(L - 2.0 * np.linalg.eigvalsh(L).max() * np.eye(4))
    bad = L.copy()
    bad[0, 0] = np.nan
    with pytest.raises(JaxiapInputError, match="NaN"):
        dpp.expected_size(bad)
    with pytest.raises(JaxiapInputError, match="rank"):
        dpp.sample_kdpp(key, _random_L(13, 5, rank=2), 3)
    with pytest.raises(JaxiapInputError, match="out of range"):
        dpp.sample_kdpp(key, L, 5)
    with pytest.raises(JaxiapInputError, match="out of range"):
        dpp.greedy_map(L, -1)
    with pytest.raises(JaxiapInputError, match="int"):
        dpp.greedy_map(L, 2.0)
    with pytest.raises(JaxiapInputError, match="rank"):
        dpp_dual.sample_kdpp_dual(key, np.ones((5, 2)), 2)
    with pytest.raises(JaxiapInputError, match="feature matrix"):
        dpp_dual.inclusion_probabilities_dual(np.ones(5))
    with pytest.raises(JaxiapInputError, match="lengthscale"):
        dpp_kernels.rbf_kernel(np.ones((3, 2)), 0.0)
    with pytest.raises(JaxiapInputError, match="quality"):
        dpp_kernels.quality_diversity_kernel(np.ones((3, 2)), -np.ones(3), 1.0)
    with pytest.raises(JaxiapInputError, match="quality"):
        dpp_kernels.quality_diversity_kernel(np.ones((3, 2)), np.ones(4), 1.0)


# ----------------------------------------------------------------------------- greedy MAP: more exact cases

def test_greedy_map_separated_qualities_and_submodular_gains():
    rng = np.random.default_rng(21)
    n = 8
    phi = rng.normal(size=(n, 3))
    q = 10.0 ** rng.permutation(np.arange(n))  # qualities a factor 10 apart dominate det(k_S) < 1
    L = np.asarray(dpp_kernels.quality_diversity_kernel(phi, q, 1.5))
    idx, ld = dpp.greedy_map(L, 4)  # greedy is a prefix path: its first k items are greedy_map(L, k)
    for k in (1, 2, 3, 4):
        best = _best_subset(L, k)
        assert set(np.asarray(idx)[:k].tolist()) == set(best) == set(np.argsort(-q)[:k].tolist())
        np.testing.assert_allclose(float(ld[k - 1]), np.log(_det(L, best)), rtol=1e-9)
    # marginal gains log d_t^2 along the greedy path never increase (log det is submodular),
    # and with every gain d^2 >= 1 (L scaled up) the determinant never decreases
    for seed in range(3):
        L = _qd_L(30 + seed, n)
        idx, ld = dpp.greedy_map(L, n)
        gains = np.diff(np.concatenate([[0.0], np.asarray(ld)]))
        assert np.all(np.diff(gains) <= 1e-10)
        scale = 1.01 / np.exp(gains.min())  # now every d_t^2 = scale * old d_t^2 >= 1
        idx2, ld2 = dpp.greedy_map(scale * L, n)
        np.testing.assert_array_equal(idx2, idx)
        dets = [_det(scale * L, np.asarray(idx2)[:t]) for t in range(n + 1)]
        assert np.all(np.diff(dets) >= 0)
        assert set(np.asarray(idx2)[:1].tolist()) == set(_best_subset(scale * L, 1))


# ----------------------------------------------------------------------------- features and qualities

def test_configuration_features_invariant_and_standardised():
    from jaxiap.descriptors.radial import RadialBasis, structure_features
    from jaxiap.potentials.linear import LinearBasis
    from jaxiap.structures import from_positions

    rng = np.random.default_rng(4)
    grid = 1.1 * np.stack(np.meshgrid(*[np.arange(2)] * 3, indexing="ij"), -1).reshape(-1, 3)
    pos = grid[None] + 0.1 * rng.normal(size=(4, 8, 3))
    R = np.linalg.qr(rng.normal(size=(3, 3)))[0]
    moved = pos[0][rng.permutation(8)] @ R.T + 0.3
    st = from_positions(np.concatenate([pos, moved[None]]))
    radial = RadialBasis("chebyshev", 4, 0.8, 3.0)
    raw = np.asarray(dpp_kernels.configuration_features(LinearBasis(radial), st, standardize=False))
    assert raw.shape == (5, 4)
    ref = jax.jit(lambda x: structure_features(radial, x))(jnp.asarray(pos[1]))
    np.testing.assert_allclose(raw[1], ref, rtol=1e-12)
    np.testing.assert_allclose(raw[4], raw[0], rtol=1e-9)  # rotation + permutation + translation
    phi = np.asarray(dpp_kernels.configuration_features(radial, st))
    np.testing.assert_allclose(phi.mean(0), 0.0, atol=1e-12)
    np.testing.assert_allclose(phi.std(0), 1.0, rtol=1e-10)
    with pytest.raises(JaxiapInputError, match="LinearBasis or a RadialBasis"):
        dpp_kernels.configuration_features("chebyshev", st)


def test_quality_scores():
    e = np.array([1.0, 1.5, 3.0])
    np.testing.assert_allclose(dpp_kernels.quality_scores("boltzmann", energies=e, kT=0.5) ** 2,
                               np.exp(-(e - 1.0) / 0.5), rtol=1e-14)
    np.testing.assert_allclose(dpp_kernels.quality_scores("boltzmann", energies=e / 13, kT=0.5, n_atoms=np.full(3, 13)),
                               np.exp(-(e - 1.0) / 1.0), rtol=1e-12)
    np.testing.assert_allclose(dpp_kernels.quality_scores("uncertainty", uncertainty=[0.5, 2.0, 1.0]), [0.25, 1.0, 0.5])
    np.testing.assert_array_equal(dpp_kernels.quality_scores("uniform", energies=e), np.ones(3))
    np.testing.assert_array_equal(dpp_kernels.quality_scores("uniform", n=2), np.ones(2))
    with pytest.raises(JaxiapInputError, match="unknown"):
        dpp_kernels.quality_scores("entropy", n=3)
    with pytest.raises(JaxiapInputError, match="needs energies"):
        dpp_kernels.quality_scores("boltzmann", energies=e)
    with pytest.raises(JaxiapInputError, match="needs uncertainty"):
        dpp_kernels.quality_scores("uncertainty")
    with pytest.raises(JaxiapInputError, match="number of candidates"):
        dpp_kernels.quality_scores("uniform")
    with pytest.raises(JaxiapInputError, match="kT must be"):
        dpp_kernels.quality_scores("boltzmann", energies=e, kT=-1.0)
    with pytest.raises(JaxiapInputError, match=">= 0"):
        dpp_kernels.quality_scores("uncertainty", uncertainty=[-1.0, 1.0])
