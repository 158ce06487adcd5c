"""The solver registry and the Posterior protocol: one signature, consistent moments, keyword-only keys."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxiap  # noqa: F401  (float64)
from jaxiap.errors import JaxiapInputError
from jaxiap.inference.posterior import Posterior, StructurePrediction, load_posterior
from jaxiap.inference.solvers import SOLVERS, Solver, get_solver

#: fast settings for the NUTS solvers (the defaults are 2 chains x (500 + 500)); the tests check the
#: protocol on whatever draws come out, not convergence
FAST = {name: dict(num_warmup=100, n_samples=200, num_chains=1, max_tree_depth=6, progress=False)
        for name in ("horseshoe", "laplace", "reg-horseshoe")}
pytestmark = pytest.mark.filterwarnings("ignore:NUTS did not converge")


@pytest.fixture(scope="module")
def problem():
    """12 perturbed LJ13 icosahedra labelled by the true LJ, a 3-function Chebyshev basis, its design."""
    from jaxiap.descriptors.radial import RadialBasis
    from jaxiap.potentials.linear import LinearBasis, design_matrix
    from jaxiap.structures import from_positions
    from jaxiap.systems.lj import icosahedron, lj_energy
    from jaxiap.systems.oracle import JaxOracle, label

    rng = np.random.default_rng(1)
    pos = icosahedron()[None] * rng.uniform(0.97, 1.08, (12, 1, 1)) + 0.08 * rng.normal(size=(12, 13, 3))
    ds = label(JaxOracle(lj_energy), from_positions(pos))
    basis = LinearBasis(RadialBasis("chebyshev", 3, 0.8, 3.0))
    return basis, ds, design_matrix(basis, ds)


@pytest.fixture(scope="module")
def posteriors(problem):
    _, _, design = problem
    return {name: get_solver(name, **FAST.get(name, {}))(design, key=jax.random.key(0)) for name in SOLVERS}


def test_registry_names_and_cli_choices():
    from jaxiap.workflows.lj13_config import POSTERIOR_CHOICES

    for name in ("lstsq", "blr", "nig", "bootstrap", "merr-iid", "merr-abc", "horseshoe"):
        assert name in SOLVERS
    assert POSTERIOR_CHOICES == tuple(SOLVERS)
    assert all(isinstance(get_solver(name), Solver) for name in SOLVERS)


@pytest.mark.parametrize("name", list(SOLVERS))
def test_protocol_shapes_and_moments_agree(posteriors, problem, name):
    basis, ds, design = problem
    post = posteriors[name]
    k = basis.n_features
    assert isinstance(post, Posterior)
    mean, cov = np.asarray(post.mean), np.asarray(post.covariance())
    assert mean.shape == (k,) and cov.shape == (k, k)
    np.testing.assert_allclose(cov, cov.T, rtol=1e-12, atol=1e-14 * np.abs(cov).max())
    np.testing.assert_allclose(np.asarray(post.std) ** 2, np.diag(cov), rtol=1e-8, atol=1e-300)
    # sample: shape and Monte Carlo moments (20k draws) against mean / covariance()
    n = 20000
    draws = np.asarray(post.sample(jax.random.key(1), n))
    assert draws.shape == (n, k) and np.isfinite(draws).all()
    sd = np.sqrt(np.diag(cov))
    assert np.all(np.abs(draws.mean(0) - mean) <= 6 * sd / np.sqrt(n) + 1e-12 * np.abs(mean))
    emp = np.cov(draws, rowvar=False)
    tol = 6 * np.sqrt((np.outer(sd, sd) ** 2 + cov**2) / n) + 0.02 * np.outer(sd, sd) + 1e-12 * sd.max() ** 2
    assert np.all(np.abs(emp - cov) <= tol), (emp, cov)
    # predict: mean rows . mean, push-forward variance rows Sigma rows^T, predictive >= push-forward
    rows = np.asarray(design.A[:50])
    p = post.predict(rows, design.w[:50])
    np.testing.assert_allclose(p.mean, rows @ mean, rtol=1e-10, atol=1e-12 * np.abs(rows @ mean).max())
    var = np.einsum("rk,kl,rl->r", rows, cov, rows)
    np.testing.assert_allclose(np.asarray(p.std) ** 2, var, rtol=1e-7, atol=1e-12 * var.max() + 1e-300)
    assert np.all(np.asarray(p.std_predictive) >= np.asarray(p.std))
    # predict_structures: the same push-forward on each structure's design rows
    sp = post.predict_structures(ds.structures, basis=basis)
    assert isinstance(sp, StructurePrediction)
    c, n_atoms = ds.structures.positions.shape[:2]
    assert sp.energy.shape == sp.energy_std.shape == (c,)
    assert sp.forces.shape == sp.forces_std.shape == (c, n_atoms, 3)
    A = np.asarray(design.A).reshape(c, 1 + 3 * n_atoms, k)
    np.testing.assert_allclose(sp.energy, A[:, 0] @ mean, rtol=1e-10)
    np.testing.assert_allclose(sp.forces.reshape(c, -1), A[:, 1:] @ mean, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(np.asarray(sp.energy_std) ** 2, np.einsum("ck,kl,cl->c", A[:, 0], cov, A[:, 0]),
                               rtol=1e-7)
    # ensemble: n vectors of the right shape (stored members in order for a committee)
    ens = np.asarray(post.ensemble(jax.random.key(2), 4))
    assert ens.shape == (4, k)
    if hasattr(post, "samples"):
        np.testing.assert_array_equal(ens, np.asarray(post.samples)[:4])


def test_gaussian_structure_std_by_hand(posteriors, problem):
    """energy std = sqrt(b^T Sigma b); forces and their stds from finite differences of B(x)."""
    basis, ds, _ = problem
    post = posteriors["lstsq"]
    cov, mean = np.asarray(post.covariance()), np.asarray(post.mean)
    sp = post.predict_structures(ds.structures[np.arange(2)], basis=basis)
    x = np.asarray(ds.structures.positions[1])
    b = np.asarray(basis(jnp.asarray(x)))
    np.testing.assert_allclose(sp.energy_std[1], np.sqrt(b @ cov @ b), rtol=1e-12)
    h = 1e-5
    steps = np.eye(x.size).reshape(-1, *x.shape) * h
    feats = jax.vmap(lambda d: basis(jnp.asarray(x) + d))
    dB = (np.asarray(feats(jnp.asarray(steps))) - np.asarray(feats(jnp.asarray(-steps)))) / (2 * h)  # (3N, K)
    rows = -dB
    np.testing.assert_allclose(sp.forces[1].ravel(), rows @ mean, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(sp.forces_std[1].ravel(), np.sqrt(np.einsum("rk,kl,rl->r", rows, cov, rows)),
                               rtol=1e-6)


def test_keys_are_keyword_only_and_required_where_random(problem):
    from jaxiap.inference.ensembles import fit_committee
    from jaxiap.workflows.lj13_attempts import posterior_coefficients, subset_coefficients

    _, _, design = problem
    key = jax.random.key(0)
    with pytest.raises(TypeError):
        get_solver("lstsq")(design, key)
    with pytest.raises(TypeError):
        fit_committee(design, 3, key)
    with pytest.raises(TypeError):
        subset_coefficients(design, 3, key)
    with pytest.raises(TypeError):
        posterior_coefficients(get_solver("lstsq")(design), 3, key)
    for name in ("bootstrap", "committee", "merr-iid", "horseshoe"):
        with pytest.raises(JaxiapInputError, match="key="):
            get_solver(name)(design)
    # a deterministic solver ignores the key: the same posterior with or without
    a, b = get_solver("nig")(design), get_solver("nig")(design, key=key)
    np.testing.assert_array_equal(a.mean, b.mean)


def test_get_solver_errors_name_the_fix(problem):
    _, _, design = problem
    with pytest.raises(JaxiapInputError, match="'ridge' is unknown; choose one of"):
        get_solver("ridge")
    with pytest.raises(JaxiapInputError, match=r"no option\(s\) \['alpha'\]"):
        get_solver("lstsq", alpha=1.0)
    with pytest.raises(JaxiapInputError, match=r"no option\(s\) \['n_sample'\]"):
        get_solver("merr-iid", n_sample=10)
    with pytest.raises(JaxiapInputError, match="both prior_precision and noise_var"):
        get_solver("blr", noise_var=1e-3)
    with pytest.raises(JaxiapInputError, match="data must be a DesignMatrix"):
        get_solver("lstsq")(np.ones((4, 3)))


def test_fixed_blr_solver_matches_fit_blr_with_energy_noise(problem):
    """blr with fixed values = fit_blr on energy rows reweighted by noise_var / energy_noise_var."""
    from jaxiap.inference.linear import fit_blr
    from jaxiap.potentials.linear import ENERGY_ROW

    _, _, design = problem
    post = get_solver("blr", prior_precision=2.0, noise_var=1e-4, energy_noise_var=4e-4)(design)
    w = np.where(np.asarray(design.kind) == ENERGY_ROW, 0.25, 1.0) * np.asarray(design.w)
    ref = fit_blr(design._replace(w=w), prior_precision=2.0, noise_var=1e-4)
    np.testing.assert_array_equal(post.mean, ref.mean)
    np.testing.assert_array_equal(post.cov_factor, ref.cov_factor)


@pytest.mark.parametrize("name", ["lstsq", "nig", "bootstrap", "merr-abc", "bcs"])
def test_registry_posteriors_round_trip_through_files(posteriors, name, tmp_path):
    post = posteriors[name]
    post.save(tmp_path / "p.npz")
    back = load_posterior(tmp_path / "p.npz")
    assert type(back) is type(post) and back.kind == post.kind
    np.testing.assert_array_equal(back.mean, post.mean)
    np.testing.assert_array_equal(back.covariance(), post.covariance())


def test_posterior_module_does_not_import_model_error():
    """The posterior <-> model_error cycle is gone: loaders are registered by each family's module."""
    import ast
    import inspect

    import jaxiap.inference.posterior as mod

    tree = ast.parse(inspect.getsource(mod))
    names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert not any("model_error" in n for n in names), names


def test_a_nonlinear_posterior_plugs_into_active_learning(problem):
    """A posterior with its own model (no design rows) serves predict_structures without a basis."""
    from jaxiap.active.qbc import predictive_std

    basis, ds, _ = problem

    class ToyModelPosterior(Posterior):
        mean: jnp.ndarray
        noise_var: float = 0.0
        kind: str = "toy"

        def sample(self, key, n_samples):
            return self.mean + jax.random.normal(key, (n_samples, self.mean.shape[0]))

        def covariance(self):
            return jnp.eye(self.mean.shape[0])

        def save(self, path):
            raise NotImplementedError

        def predict_structures(self, structures, *, basis=None):
            r2 = jnp.sum(structures.positions**2, axis=(1, 2))
            f = -2 * structures.positions
            return StructurePrediction(r2, jnp.sqrt(r2), f, jnp.abs(f))

    toy = ToyModelPosterior(jnp.zeros(2))
    d = predictive_std(toy, None, ds.structures)
    r2 = np.sum(np.asarray(ds.structures.positions) ** 2, axis=(1, 2))
    np.testing.assert_allclose(d.energy_per_atom, np.sqrt(r2) / 13)
    np.testing.assert_allclose(d.max_force, 2 * np.abs(np.asarray(ds.structures.positions)).max(axis=(1, 2)))
    with pytest.raises(JaxiapInputError, match="basis="):
        get_solver("lstsq")(problem[2]).predict_structures(ds.structures)
