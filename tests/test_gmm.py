"""GMM uncertainty (jaxiap.uq.gmm) against scikit-learn, and its gradient through a descriptor."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxiap  # noqa: F401  (enables float64)
from jaxiap.descriptors.radial import RadialBasis, RadialDescriptor
from jaxiap.errors import JaxiapInputError
from jaxiap.systems.lj import icosahedron
from jaxiap.structures import from_positions
from jaxiap.uq.gmm import GaussianMixture, fit_gmm, structure_uncertainty, training_features

sklearn_mixture = pytest.importorskip("sklearn.mixture")


def _toy(seed=0):
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.normal([0, 0, 0], [1.0, 0.5, 0.3], (200, 3)),
                           rng.normal([5, 3, 1], [0.7, 1.2, 0.5], (150, 3)),
                           rng.normal([-4, 5, -2], 0.6, (100, 3))])


def test_from_sklearn_matches_score_samples():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(300, 4)) @ rng.normal(size=(4, 4))
    est = sklearn_mixture.GaussianMixture(4, covariance_type="full", random_state=0).fit(X)
    gmm = GaussianMixture.from_sklearn(est)
    Y = np.concatenate([X[:50], 10 * rng.normal(size=(20, 4))])  # far points too (log-sum-exp)
    np.testing.assert_allclose(np.asarray(gmm.uncertainty(Y)), -est.score_samples(Y), rtol=0, atol=1e-10)
    assert gmm.uncertainty(Y[:3].reshape(3, 1, 4)).shape == (3, 1)
    with pytest.raises(JaxiapInputError, match="full"):
        GaussianMixture.from_sklearn(sklearn_mixture.GaussianMixture(2, covariance_type="diag").fit(X))


def test_fit_gmm_reaches_sklearn_log_likelihood():
    X = _toy()
    est = sklearn_mixture.GaussianMixture(3, covariance_type="full", random_state=0, tol=1e-8, max_iter=500).fit(X)
    ref = est.score(X)
    gmm = fit_gmm(jax.random.key(0), X, 3, n_iter=200, tol=1e-9)
    ll = float(jnp.mean(gmm.log_density(X)))
    assert ll >= ref - 1e-3 * abs(ref), (ll, ref)
    np.testing.assert_allclose(np.sort(np.asarray(gmm.weights)), np.sort(est.weights_), atol=1e-4)
    # standardised fit: the same mixture in standardised coordinates (log-likelihood shifts by sum log std)
    gs = fit_gmm(jax.random.key(1), X, 3, n_iter=200, tol=1e-9, standardize=True)
    lls = float(jnp.mean(gs.log_density(X))) - float(jnp.sum(jnp.log(gs.feature_std)))
    assert lls >= ref - 1e-3 * abs(ref), (lls, ref)
    with pytest.raises(JaxiapInputError, match="n_components"):
        fit_gmm(jax.random.key(0), X[:2], 3)


def test_structure_uncertainty_gradient_and_reductions():
    rng = np.random.default_rng(2)
    x0 = icosahedron()
    desc = RadialDescriptor(RadialBasis("chebyshev", 4, 0.8, 3.0))
    train = from_positions(x0[None] + 0.05 * rng.normal(size=(10, 13, 3)))
    h = training_features(desc, train)
    assert h.shape == (130, 4)
    gmm = fit_gmm(jax.random.key(0), h, 2, standardize=True)
    x = jnp.asarray(x0 + 0.1 * rng.normal(size=(13, 3)))
    xp = jnp.concatenate([x, jnp.full((1, 3), 50.0)])  # with a padded atom
    mask = jnp.arange(14) < 13

    @jax.jit
    def values(x, xp):
        per_atom = gmm.uncertainty(desc.atomic(x))
        red = jnp.stack([structure_uncertainty(gmm, desc, x, r) for r in ("sum", "mean", "max")])
        padded = structure_uncertainty(gmm, desc, xp, "mean", mask=mask)
        return per_atom, red, padded, structure_uncertainty(gmm, desc, 1.3 * x)

    per_atom, red, padded, far = (np.asarray(v) for v in values(x, xp))
    np.testing.assert_allclose(red, [per_atom.sum(), per_atom.mean(), per_atom.max()], rtol=1e-12)
    np.testing.assert_allclose(padded, per_atom.mean(), rtol=1e-12)  # the padded atom is ignored
    assert far > red[0] + 10  # farther from the training data -> more uncertain
    # gradient against central finite differences
    f = jax.jit(lambda y: structure_uncertainty(gmm, desc, y, "sum"))
    g = np.asarray(jax.grad(f)(x))
    eps = 1e-5
    dirs = np.eye(39).reshape(39, 13, 3) * eps
    fd = (jax.vmap(f)(x + dirs) - jax.vmap(f)(x - dirs)) / (2 * eps)
    rel = np.abs(np.asarray(fd).reshape(13, 3) - g).max() / np.abs(g).max()
    assert rel < 1e-6, rel
    with pytest.raises(JaxiapInputError, match="reduce"):
        structure_uncertainty(gmm, desc, x, "median")
