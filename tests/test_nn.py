"""Neural-network potentials and their UQ methods (issue 15): protocol, losses by hand, Student-t, GMM, vmapping.

Tiny sizes: LJ13 clusters (13 atoms), a 6-function Gaussian radial
descriptor, one hidden layer of 6 units; a handful of epochs.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import jaxiap  # noqa: F401  (float64)
from jaxiap.errors import JaxiapInputError
from jaxiap.inference.nn_train import (TrainSettings, batch_outputs, loss_terms, nig_nll, stack_members,
                                       train_members, unstack_member)
from jaxiap.potentials.base import parameters
from jaxiap.potentials.nn import init_nn_potential

HIDDEN = (6,)


@pytest.fixture(scope="module")
def data():
    from jaxiap.descriptors.radial import RadialBasis, RadialDescriptor
    from jaxiap.structures import from_positions
    from jaxiap.systems.lj import icosahedron, lj_energy
    from jaxiap.systems.oracle import JaxOracle, label

    rng = np.random.default_rng(15)
    pos = icosahedron()[None] * rng.uniform(0.98, 1.05, (12, 1, 1)) + 0.06 * rng.normal(size=(12, 13, 3))
    ds = label(JaxOracle(lj_energy), from_positions(pos))
    take = lambda a, b: jax.tree_util.tree_map(lambda v: v[a:b], ds)  # noqa: E731
    desc = RadialDescriptor(RadialBasis("gaussian", 6, 0.8, 3.0))
    return desc, take(0, 8), take(8, 12)


def _np_softplus(x):
    return np.log1p(np.exp(-np.abs(x))) + np.maximum(x, 0)


def test_nn_potential_is_a_potential_with_autodiff_forces(data):
    """E = sum of atomic energies; forces = central differences of E; padded atoms change nothing; the
    parameters are the network's weights only."""
    desc, train, _ = data
    pot = init_nn_potential(jax.random.key(0), desc, train, hidden=HIDDEN)
    x = np.asarray(train.structures.positions[0])
    e, f = pot.energy_and_forces(jnp.asarray(x))
    assert abs(float(e) - float(jnp.sum(pot.atomic_energies(jnp.asarray(x))))) <= 1e-12
    h = 1e-5
    steps = np.eye(39).reshape(39, 13, 3) * h
    energies = jax.jit(jax.vmap(pot.energy))
    fd = -(np.asarray(energies(jnp.asarray(x + steps))) - np.asarray(energies(jnp.asarray(x - steps)))) / (2 * h)
    fd = fd.reshape(13, 3)
    np.testing.assert_allclose(np.asarray(f), fd, atol=1e-7 * np.abs(fd).max())
    padded = jnp.concatenate([jnp.asarray(x), jnp.full((2, 3), 50.0)])
    mask = jnp.arange(15) < 13
    assert abs(float(pot.energy(padded, mask=mask)) - float(e)) <= 1e-10
    n_params = sum(a.size for a in jax.tree_util.tree_leaves(parameters(pot)))
    assert n_params == (6 * 6 + 6) + (6 + 1)
    assert pot.latent(jnp.asarray(x)).shape == (13, 6)


def test_each_loss_equals_a_hand_computation(data):
    """mse, mve and evidential losses of a 3-structure batch against numpy formulas on the network's outputs."""
    desc, train, _ = data
    batch = jax.tree_util.tree_map(lambda v: v[:3], train)
    settings = TrainSettings(energy_weight=0.7, force_weight=1.3, evidential_lambda=0.2)
    pot = init_nn_potential(jax.random.key(1), desc, train, hidden=HIDDEN, n_outputs=4)
    e, f, o = (np.asarray(a) for a in batch_outputs(pot, batch.structures))
    s, n = float(pot.energy_scale), 13
    r_e = (e - np.asarray(batch.energy)) / (n * s)
    r_f = (f - np.asarray(batch.forces)) / s
    mse_f = np.mean(r_f.reshape(3, -1) ** 2, axis=1)
    want = {"mse": 0.7 * r_e**2 + 1.3 * mse_f}
    v_e = _np_softplus(o[..., 1]).mean(axis=1)
    v_f = np.repeat(_np_softplus(o[..., 2])[..., None], 3, axis=2)
    nll = lambda r, v: 0.5 * np.log(2 * np.pi * v) + 0.5 * r**2 / v  # noqa: E731
    want["mve"] = 0.7 * nll(r_e, v_e) + 1.3 * np.mean(nll(r_f, v_f).reshape(3, -1), axis=1)
    heads = o[..., 1:4].mean(axis=1)
    nu, alpha, beta = _np_softplus(heads[:, 0]) + 1e-4, _np_softplus(heads[:, 1]) + 1e-4 + 1, _np_softplus(
        heads[:, 2]) + 1e-4
    # the NIG marginal is a Student-t with 2 alpha dof, location gamma, scale^2 beta (1 + nu) / (nu alpha)
    t_nll = -stats.t.logpdf(-r_e, df=2 * alpha, loc=0.0, scale=np.sqrt(beta * (1 + nu) / (nu * alpha)))
    want["evidential"] = 0.7 * (t_nll + 0.2 * np.abs(r_e) * (2 * nu + alpha)) + 1.3 * mse_f
    for kind, ref in want.items():
        got = np.asarray(loss_terms(pot, batch, kind, settings))
        np.testing.assert_allclose(got, ref, rtol=1e-10, err_msg=kind)


def test_evidential_nll_is_the_student_t_density():
    rng = np.random.default_rng(2)
    y, g = rng.normal(size=50), rng.normal(size=50)
    nu, alpha, beta = rng.uniform(0.1, 3, 50), rng.uniform(1.1, 5, 50), rng.uniform(0.1, 2, 50)
    ref = -stats.t.logpdf(y, df=2 * alpha, loc=g, scale=np.sqrt(beta * (1 + nu) / (nu * alpha)))
    np.testing.assert_allclose(np.asarray(nig_nll(y, g, nu, alpha, beta)), ref, rtol=1e-12)


def test_vmapped_members_equal_members_trained_one_at_a_time(data):
    """Two members in one vmapped program = each trained alone with its member id (no early stop)."""
    desc, train, valid = data
    settings = TrainSettings(epochs=3, batch_size=4, patience=10)
    members = [init_nn_potential(k, desc, train, hidden=HIDDEN) for k in jax.random.split(jax.random.key(3), 2)]
    both, hist = train_members(stack_members(members), train, valid, key=jax.random.key(4), settings=settings,
                               progress=False)
    assert hist["train_loss"].shape == (3, 2) and np.all(np.diff(hist["train_loss"][:, 0]) < 0)
    for i in range(2):
        alone, _ = train_members(stack_members([members[i]]), train, valid, key=jax.random.key(4),
                                 settings=settings, progress=False, member_ids=[i])
        a = jax.tree_util.tree_leaves(eqx.filter(unstack_member(both, i).network, eqx.is_array))
        b = jax.tree_util.tree_leaves(eqx.filter(unstack_member(alone, 0).network, eqx.is_array))
        for u, v in zip(a, b):
            np.testing.assert_allclose(np.asarray(u), np.asarray(v), atol=1e-10)
    with pytest.raises(JaxiapInputError, match="n_outputs"):
        train_members(stack_members(members), train, valid, key=jax.random.key(4), kind="mve", settings=settings,
                      progress=False)


def test_gmm_uncertainty_equals_scikit_learn_score_samples(data):
    """The GMM method's per-atom score of the latent features = -score_samples of scikit-learn's mixture."""
    from sklearn.mixture import GaussianMixture as SkGMM

    from jaxiap.uq.nn_uq import gmm_scores
    from jaxiap.uq.gmm import GaussianMixture

    desc, train, valid = data
    pot = init_nn_potential(jax.random.key(5), desc, train, hidden=HIDDEN)
    lat = np.asarray(jax.vmap(pot.latent)(train.structures.positions)).reshape(-1, 6)
    sk = SkGMM(3, covariance_type="full", random_state=0).fit(lat)
    gmm = GaussianMixture.from_sklearn(sk)
    got = np.asarray(gmm_scores(pot, gmm, valid.structures))
    ref = -sk.score_samples(np.asarray(jax.vmap(pot.latent)(valid.structures.positions)).reshape(-1, 6))
    np.testing.assert_allclose(got.reshape(-1), ref, rtol=1e-10, atol=1e-10)


def _check_methods(data, methods):
    from jaxiap.uq.nn_uq import fit_nn

    desc, train, valid = data
    settings = TrainSettings(epochs=2, batch_size=4)
    for method in methods:
        post, hist = fit_nn(method, desc, train, valid, key=jax.random.key(6), hidden=HIDDEN, n_members=3,
                            settings=settings, n_components=2, progress=False)
        p = post.predict_structures(valid.structures)
        assert p.energy.shape == p.energy_std.shape == (4,), method
        assert p.forces.shape == p.forces_std.shape == (4, 13, 3), method
        assert np.all(np.asarray(p.energy_std) > 0) and np.all(np.asarray(p.forces_std) > 0), method
        if method == "ensemble":
            es = np.stack([np.asarray(jax.vmap(post.potential(i).energy)(valid.structures.positions))
                           for i in range(3)])
            np.testing.assert_allclose(np.asarray(p.energy_std), es.std(0, ddof=1), rtol=1e-8)
        if method == "last-layer":
            assert np.isfinite(hist["log_evidence"])
        if method == "gmm":   # the std map is increasing in the score (b >= 0)
            assert post.extra["force_map"][1] >= 0 and post.extra["energy_map"][1] >= 0


def test_ensemble_and_last_layer_posteriors(data):
    """fit_nn (2 epochs): shapes, finite positive stds; the ensemble std is the member std (ddof 1); the
    last-layer evidence is finite; an unknown method is refused."""
    from jaxiap.uq.nn_uq import fit_nn

    _check_methods(data, ("ensemble", "last-layer"))
    desc, train, valid = data
    with pytest.raises(JaxiapInputError, match="method"):
        fit_nn("dropout", desc, train, valid, key=jax.random.key(0))


@pytest.mark.slow  # CI budget: three more training programs; the losses and the GMM score are checked above
def test_mve_evidential_and_gmm_posteriors(data):
    _check_methods(data, ("mve", "evidential", "gmm"))


@pytest.mark.slow  # CI budget: a numpyro SVI and a NUTS program over a network (about a minute on 2 cores)
def test_bayesian_networks_by_svi_and_nuts(data):
    """svi-meanfield and nuts sample the 49 weights of a (6,) network started at its MSE fit: distinct draws,
    predictions with positive stds, and a NUTS posterior mean no worse than 3x the MSE network's force RMSE."""
    from jaxiap.uq.nn_uq import fit_nn

    desc, train, valid = data
    settings = TrainSettings(epochs=30, batch_size=4)
    mse, _ = fit_nn("ensemble", desc, train, valid, key=jax.random.key(0), hidden=HIDDEN, n_members=2,
                    settings=settings, progress=False)
    p0 = mse.predict_structures(valid.structures)
    rmse0 = float(np.sqrt(np.mean((np.asarray(p0.forces) - np.asarray(valid.forces)) ** 2)))
    for method in ("svi-meanfield", "nuts"):
        post, hist = fit_nn(method, desc, train, valid, key=jax.random.key(0), hidden=HIDDEN, n_members=20,
                            settings=settings, bayes={"svi_steps": 300, "num_warmup": 50}, progress=False)
        assert hist["n_weights"] == 49 and post.n_members == 20
        w = np.stack([np.asarray(post.potential(i).network.layers[0].weight) for i in range(20)])
        assert np.all(w.std(axis=0) > 0)
        p = post.predict_structures(valid.structures)
        assert np.all(np.asarray(p.forces_std) > 0)
        if method == "nuts":
            rmse = float(np.sqrt(np.mean((np.asarray(p.forces) - np.asarray(valid.forces)) ** 2)))
            assert rmse < 3 * rmse0 and np.isfinite(hist["r_hat_max"])
    with pytest.raises(JaxiapInputError, match="bayes options"):
        fit_nn("nuts", desc, train, valid, key=jax.random.key(0), bayes={"steps": 3})


def test_log_linear_std_map_recovers_its_law():
    """Errors drawn with std exp(0.3 + 0.8 z): the maximum-likelihood map finds (0.3, 0.8); b is never < 0."""
    from jaxiap.uq.nn_uq import log_linear_std_map

    rng = np.random.default_rng(7)
    z = rng.normal(size=40000)
    e = np.exp(0.3 + 0.8 * z) * rng.normal(size=z.size)
    a, b = log_linear_std_map(z, e)
    assert abs(a - 0.3) < 0.02 and abs(b - 0.8) < 0.02
    a2, b2 = log_linear_std_map(z, np.exp(0.3 - 0.8 * z) * rng.normal(size=z.size))   # decreasing law
    assert b2 == pytest.approx(0.0, abs=1e-4)
