"""Every posterior exports to ArviZ through one entry point, ``to_inference_data`` (issue 16, part 5b).

Tiny sizes: a hand-made K = 3 Gaussian, Student-t, committee and model-error posterior, a 3-member NN
ensemble of 4-unit networks on a 3-function radial descriptor, a hand-made NUTS result.
"""

import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxiap  # noqa: F401  (float64)
from jaxiap.errors import JaxiapInputError
from jaxiap.inference.arviz_export import to_inference_data
from jaxiap.inference.mcmc import NUTSResult
from jaxiap.inference.model_error import ModelErrorPosterior
from jaxiap.inference.posterior import GaussianPosterior, SamplePosterior, StudentTPosterior

az = pytest.importorskip("arviz")  # a test extra: always installed where the tests run

K = 3


@pytest.fixture(scope="module")
def posteriors():
    """One posterior of each kind; the Gaussian has strongly correlated coefficients of different scales."""
    import equinox as eqx

    from jaxiap.descriptors.radial import RadialBasis, RadialDescriptor
    from jaxiap.inference.nn_train import stack_members
    from jaxiap.potentials.nn import AtomicMLP, NNPotential
    from jaxiap.uq.nn_uq import NNPosterior

    F = jnp.asarray([[1.0, 0.0, 0.0], [0.8, 0.3, 0.0], [-2.0, 0.5, 4.0]])
    gauss = GaussianPosterior(jnp.asarray([1.0, -2.0, 30.0]), F, jnp.asarray(1e-3), "blr")
    student = StudentTPosterior(jnp.asarray([1.0, -2.0, 30.0]), F, jnp.asarray(12.0), jnp.asarray(2e-3), "nig")
    members = np.asarray(gauss.sample(jax.random.key(3), 8))
    committee = SamplePosterior(members, 1e-3, "committee")
    merr = ModelErrorPosterior(jnp.asarray(members[:4]), jnp.tile(0.1 * jnp.eye(2), (4, 1, 1)), jnp.asarray([0, 2]),
                               jnp.asarray(1e-3))
    desc = RadialDescriptor(RadialBasis("chebyshev", 3, 0.8, 3.0))
    pot = NNPotential(desc, AtomicMLP(jax.random.key(0), 3, (4,)), jnp.zeros(3), jnp.ones(3), jnp.asarray(-2.0),
                      jnp.asarray(1.0))
    stacked = stack_members([eqx.tree_at(lambda p: p.network, pot, AtomicMLP(jax.random.key(i), 3, (4,)))
                             for i in range(3)])
    return {"gaussian": gauss, "student_t": student, "committee": committee, "model_error": merr,
            "nn_ensemble": NNPosterior(stacked, {}, "ensemble"), "nn_mve": NNPosterior(stacked, {}, "mve")}


def test_gaussian_draws_match_mean_and_covariance(posteriors):
    post = posteriors["gaussian"]
    n = 4000
    idata = to_inference_data(post, n_samples=n // 2, n_chains=2, key=jax.random.key(0))
    c = idata.posterior["coefficients"]
    assert c.dims == ("chain", "draw", "coefficient") and c.shape == (2, n // 2, K)
    draws = c.values.reshape(n, K)
    np.testing.assert_array_equal(draws, np.asarray(post.sample(jax.random.key(0), n)))  # = posterior.sample
    mean, cov = np.asarray(post.mean), np.asarray(post.covariance())
    sd = np.sqrt(np.diag(cov))
    z_mean = np.abs(draws.mean(0) - mean) / (sd / np.sqrt(n))
    corr_err = np.abs(np.cov(draws, rowvar=False) - cov) / np.outer(sd, sd)
    print(f"\nGaussian export, {n} draws: max |mean error| {z_mean.max():.2f} standard errors, max covariance "
          f"error {corr_err.max():.3f} (in units of sd_i sd_j; MC standard error ~ {np.sqrt(2 / n):.3f})")
    assert z_mean.max() < 4 and corr_err.max() < 5 * np.sqrt(2 / n)
    assert idata.posterior.attrs["jaxiap_kind"] == "blr" and idata.posterior.attrs["jaxiap_draws"] == "sampled"
    assert idata.constant_data["noise_var"].values.item() == pytest.approx(1e-3)  # ArviZ stores scalars as (1,)
    summary = az.summary(idata, var_names=["coefficients"])
    assert summary.shape[0] == K
    np.testing.assert_allclose(summary["mean"].values, mean, atol=4 * sd.max() / np.sqrt(n) + 0.01)


def test_student_t_joint_draws(posteriors):
    post = posteriors["student_t"]
    idata = to_inference_data(post, n_samples=3000, key=jax.random.key(1))
    c, s2 = idata.posterior["coefficients"].values, idata.posterior["noise_var"].values
    assert c.shape == (1, 3000, K) and s2.shape == (1, 3000)
    np.testing.assert_array_equal(c[0], np.asarray(post.sample(jax.random.key(1), 3000)))
    # sigma^2 ~ IG(a_n, b_n): mean b_n / (a_n - 1) = post.noise_var; sd of the mean of 3000 draws ~ 1% of it here
    assert np.mean(s2) == pytest.approx(float(post.noise_var), rel=0.06)
    assert idata.constant_data["df"].values.item() == 12.0
    with pytest.raises(JaxiapInputError, match="key="):
        to_inference_data(post, n_samples=10)


def test_stored_draws_committee_model_error_nn(posteriors):
    com = posteriors["committee"]
    idata = to_inference_data(com, n_chains=2)
    assert idata.posterior["coefficients"].shape == (2, 4, K)
    np.testing.assert_array_equal(idata.posterior["coefficients"].values.reshape(8, K), np.asarray(com.samples))
    assert idata.posterior.attrs["jaxiap_kind"] == "committee" and idata.posterior.attrs["jaxiap_draws"] == "stored"
    with pytest.raises(JaxiapInputError, match="n_chains=3"):
        to_inference_data(com, n_chains=3)

    merr = to_inference_data(posteriors["model_error"])
    assert merr.posterior["coefficients"].shape == (1, 4, K)
    assert merr.posterior["embedding_factor"].dims == ("chain", "draw", "embedded", "embedded_col")
    np.testing.assert_array_equal(merr.constant_data["embed"].values, [0, 2])

    nn = posteriors["nn_ensemble"]
    w = to_inference_data(nn).posterior["weights"]
    n_weights = np.asarray(nn.mean).size  # 3 x 4 + 4 + 4 x 1 + 1 = 21
    assert w.dims == ("chain", "draw", "weight") and w.shape == (1, 3, n_weights) and n_weights == 21
    np.testing.assert_array_equal(w.values[0, 0], np.asarray(nn.mean))  # member 0 raveled as NNPosterior.mean
    assert len(np.unique(w.values[0, :, 0])) == 3
    with pytest.raises(JaxiapInputError, match="per-prediction"):
        to_inference_data(posteriors["nn_mve"])


def test_nuts_result_keeps_chains_and_bad_inputs(posteriors, monkeypatch):
    chains = {"c": np.random.default_rng(0).normal(size=(2, 50, K))}
    res = NUTSResult(samples={"c": chains["c"].reshape(100, K)}, chains=chains,
                     extra={"diverging": np.zeros((2, 50), bool), "num_steps": np.full((2, 50), 7)}, diagnostics={})
    idata = to_inference_data(res)
    assert idata.posterior["c"].shape == (2, 50, K) and "diverging" in idata.sample_stats
    with pytest.raises(JaxiapInputError, match="Posterior"):
        to_inference_data(np.zeros(3))
    monkeypatch.setitem(sys.modules, "arviz", None)
    with pytest.raises(ImportError, match=r"pip install jaxiap\[arviz\]"):
        to_inference_data(posteriors["committee"])
