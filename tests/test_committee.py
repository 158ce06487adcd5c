"""Committees on resampled structures and the SamplePosterior."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxiap.descriptors.radial import RadialBasis
from jaxiap.errors import JaxiapInputError
from jaxiap.inference.ensembles import fit_committee, member_design, structure_counts
from jaxiap.inference.linear import fit_blr, fit_lstsq
from jaxiap.inference.posterior import SamplePosterior, load_posterior
from jaxiap.potentials.linear import DesignMatrix, LinearBasis, design_matrix


@pytest.fixture(scope="module")
def synth():
    """40 'structures' of 5 rows each, K = 3."""
    rng = np.random.default_rng(0)
    s, per, k = 40, 5, 3
    A = rng.normal(size=(s * per, k))
    y = A @ np.array([1.0, -2.0, 0.5]) + 0.3 * rng.normal(size=s * per)
    w = rng.uniform(0.5, 2.0, s * per)
    st = np.repeat(np.arange(s) + 100, per)  # ids need not start at 0
    return DesignMatrix(*(jnp.asarray(v) for v in (A, y, w, np.arange(s * per) % 2, st, np.full(s * per, per))))


def test_full_fraction_without_replacement_is_lstsq(synth):
    com = fit_committee(synth, 4, key=jax.random.key(0), fraction=1.0)
    ref = fit_lstsq(synth)
    assert com.kind == "committee" and com.samples.shape == (4, 3)
    np.testing.assert_allclose(com.samples, np.tile(ref.mean, (4, 1)), rtol=1e-10)
    np.testing.assert_allclose(com.noise_var, ref.noise_var, rtol=1e-10)
    np.testing.assert_array_equal(com.sample(jax.random.key(1), 4, resample=False), com.samples)
    np.testing.assert_allclose(com.predict(synth.A[:3]).std, 0.0, atol=1e-12)


def test_members_resample_whole_structures(synth):
    counts = structure_counts(jax.random.key(2), 40, 6, fraction=0.5)
    assert counts.shape == (6, 40) and (counts.sum(1) == 20).all() and counts.max() == 1
    boot = structure_counts(jax.random.key(2), 40, 6, fraction=1.0, replace=True)
    assert (boot.sum(1) == 40).all() and boot.max() > 1  # duplicates
    dm = member_design(synth, boot[0])
    ratio = np.round(np.asarray(dm.w) / np.asarray(synth.w), 12).reshape(40, 5)
    assert (ratio == ratio[:, :1]).all()  # one multiplicity per structure
    np.testing.assert_array_equal(ratio[:, 0], boot[0])
    # a member equals lstsq on the explicitly duplicated rows
    rows = np.concatenate([np.flatnonzero(np.asarray(synth.structure) == 100 + i)
                           for i in range(40) for _ in range(boot[0, i])])
    dup = DesignMatrix(*(v[rows] for v in synth))
    np.testing.assert_allclose(fit_lstsq(dm).mean, fit_lstsq(dup).mean, rtol=1e-10)


def test_bootstrap_members_differ_and_solver_is_pluggable(synth):
    com = fit_committee(synth, 8, key=jax.random.key(3), fraction=1.0, replace=True)
    assert com.kind == "bootstrap"
    spread = np.std(np.asarray(com.samples), axis=0)
    ref_sd = np.asarray(fit_lstsq(synth).std)
    assert (spread > 0.2 * ref_sd).all() and (spread < 5 * ref_sd).all()
    blr = functools.partial(fit_blr, prior_precision=1e6, noise_var=0.09)  # a strong prior shrinks members to 0
    shrunk = fit_committee(synth, 3, key=jax.random.key(3), solver=blr)
    assert np.abs(np.asarray(shrunk.samples)).max() < 0.01


def test_sample_posterior_moments_sampling_and_io(tmp_path):
    rng = np.random.default_rng(4)
    draws = rng.normal(size=(50, 3)) * np.array([1.0, 2.0, 0.5]) + 1.0
    post = SamplePosterior(draws, noise_var=0.2)
    rows = rng.normal(size=(4, 3))
    out = rows @ draws.T
    pred = post.predict(rows, row_weight=np.array([1.0, 2.0, 4.0, 1.0]))
    np.testing.assert_allclose(post.mean, draws.mean(0), rtol=1e-13)
    np.testing.assert_allclose(pred.mean, out.mean(1), rtol=1e-12)
    np.testing.assert_allclose(pred.std, out.std(1, ddof=1), rtol=1e-12)
    np.testing.assert_allclose(pred.std_predictive**2, out.var(1, ddof=1) + 0.2 / np.array([1, 2, 4, 1]), rtol=1e-12)
    np.testing.assert_allclose(post.cov, np.cov(draws.T), rtol=1e-12)
    s = np.asarray(post.sample(jax.random.key(0), 500))
    assert s.shape == (500, 3) and all(any((r == d).all() for d in draws) for r in s[:20])
    assert len({tuple(r) for r in s}) > 30  # with replacement, most rows appear
    with pytest.raises(ValueError, match="resample=True"):
        post.sample(jax.random.key(0), 51, resample=False)
    post.save(tmp_path / "s.npz")
    back = load_posterior(tmp_path / "s.npz")
    assert isinstance(back, SamplePosterior)
    np.testing.assert_array_equal(back.samples, draws)
    assert float(back.noise_var) == 0.2


def test_committee_errors(synth):
    with pytest.raises(JaxiapInputError, match="n_samples"):
        fit_committee(synth, 0, key=jax.random.key(0))
    with pytest.raises(JaxiapInputError, match="fraction"):
        fit_committee(synth, 2, key=jax.random.key(0), fraction=1.5)
    with pytest.raises(JaxiapInputError, match="NaN"):
        fit_committee(synth._replace(y=synth.y.at[0].set(jnp.nan)), 2, key=jax.random.key(0))


def test_lj_committee_std_is_of_the_order_of_lstsq_std(lj13_data):
    train, test = lj13_data
    basis = LinearBasis(RadialBasis("chebyshev", 8, 0.8, 3.0))
    dm = design_matrix(basis, train)
    com = fit_committee(dm, 16, key=jax.random.key(5), fraction=1.0, replace=True)
    ref = fit_lstsq(dm)
    rows = design_matrix(basis, test).A[::7]
    ratio = np.asarray(com.predict(rows).std) / np.asarray(ref.predict(rows).std)
    med = float(np.median(ratio))
    assert 0.2 < med < 10, med
    # committee means stay close to the full fit relative to the coefficient scale
    np.testing.assert_allclose(com.mean, ref.mean, atol=0.05 * float(np.abs(ref.mean).max()))
