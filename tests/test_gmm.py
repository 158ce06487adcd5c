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
from jaxiap.active.generate import adversarial_attack, metad_bias, partition_log_z, run_metad
from jaxiap.systems.lj import lj_energy
from jaxiap.uq.gmm import GaussianMixture, fit_gmm, gmm_uncertainty_fn, structure_uncertainty, training_features

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


@pytest.fixture(scope="module")
def lj_gmm():
    """A 2-component GMM on the per-atom radial features of 10 near-icosahedron LJ13 structures."""
    rng = np.random.default_rng(2)
    x0 = icosahedron()
    desc = RadialDescriptor(RadialBasis("chebyshev", 4, 0.8, 3.0))
    train_x = x0[None] + 0.05 * rng.normal(size=(10, 13, 3))
    h = training_features(desc, from_positions(train_x))
    assert h.shape == (130, 4)
    return desc, fit_gmm(jax.random.key(0), h, 2, standardize=True), x0, train_x, rng


def test_structure_uncertainty_gradient_and_reductions(lj_gmm):
    desc, gmm, x0, _, rng = lj_gmm
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


def test_gmm_uncertainty_as_metad_cv_and_attack_sigma(lj_gmm):
    """The GMM uncertainty as the sigma of biased sampling: the CV of well-tempered metadynamics and
    (as exp(u), a positive 'variance') the objective of an adversarial attack on LJ13."""
    desc, gmm, x0, train_x, _ = lj_gmm
    u = gmm_uncertainty_fn(gmm, desc, "mean")
    x = jnp.asarray(train_x[0])
    np.testing.assert_allclose(u(x), structure_uncertainty(gmm, desc, x, "mean"), rtol=1e-12)
    np.testing.assert_allclose(gmm_uncertainty_fn(gmm, desc, "mean", as_variance=True)(x), np.exp(u(x)), rtol=1e-12)
    # (a) metadynamics along u: hills sit at the CV of each block's last frame, tempered by the bias there
    kT, height, width, bf = 0.3, 0.05, 0.5, 5.0
    res = run_metad(jax.random.key(0), lj_energy, u, jnp.asarray(x0), kT=kT, dt=0.005, gamma=1.0, n_blocks=8,
                    block_steps=20, height=height, width=width, bias_factor=bf)
    frames, cv = np.asarray(res.frames), np.asarray(res.cv)
    assert frames.shape == (8, 13, 3) and np.all(np.isfinite(frames)) and np.all(np.isfinite(cv))
    np.testing.assert_allclose(np.asarray(jax.jit(jax.vmap(u))(frames)), cv, rtol=1e-10)
    np.testing.assert_allclose(res.hill_centers, cv, rtol=0, atol=0)
    prev = np.asarray([metad_bias(cv[t], res.hill_centers[:t], res.hill_heights[:t], width) for t in range(8)])
    np.testing.assert_allclose(res.hill_heights, height * np.exp(-prev / ((bf - 1) * kT)), rtol=1e-10)
    assert res.hill_heights[0] == height and np.all(res.hill_heights <= height)
    print("metad on GMM u: cv", np.round(cv, 3), "heights", np.round(np.asarray(res.hill_heights), 4))
    # (b) attack with variance_fn = exp(u): log objective u - E / kT (kT = 1), from the icosahedron (+ 0.01
    # jitter, energy near its minimum); u rises for >= 90% of the structures, E within 3 kT of the start
    starts = jnp.asarray(x0[None] + 0.01 * np.random.default_rng(4).normal(size=(8, 13, 3)))
    kT = 1.0
    att = adversarial_attack(lj_energy, gmm_uncertainty_fn(gmm, desc, "mean", as_variance=True), starts, kT=kT,
                             log_Z=partition_log_z(jax.vmap(lj_energy)(starts), kT), n_steps=40, learning_rate=0.01)
    du = np.log(np.asarray(att.variance_end)) - np.log(np.asarray(att.variance_start))
    de = np.asarray(att.energy_end - att.energy_start) / kT
    print("attack on GMM u: du", np.round(du, 3), "dE/kT", np.round(de, 3))
    assert np.mean(du > 0) >= 0.9
    assert np.all(np.abs(de) < 3.0)
