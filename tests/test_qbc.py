"""Query-by-committee scores and batch selection against NumPy recomputations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxiap  # noqa: F401  (enables float64)
from jaxiap.active import qbc
from jaxiap.active.design import candidate_rows
from jaxiap.descriptors.radial import RadialBasis
from jaxiap.errors import JaxiapInputError
from jaxiap.inference.posterior import GaussianPosterior, SamplePosterior
from jaxiap.potentials.linear import LinearBasis, LinearPotential
from jaxiap.structures import from_positions


@pytest.fixture(scope="module")
def pool():
    rng = np.random.default_rng(11)
    grid = 1.1 * np.stack(np.meshgrid(*[np.arange(2)] * 3, indexing="ij"), -1).reshape(-1, 3)[:7]
    pos = grid[None] + 0.07 * rng.normal(size=(5, 7, 3))
    mask = np.ones((5, 7), bool)
    mask[4, 5:] = False  # a padded candidate
    st = from_positions(pos)
    st = type(st)(st.positions, st.species, jnp.asarray(mask), None, st.species_names)
    basis = LinearBasis(RadialBasis("chebyshev", 4, 0.8, 3.0))
    return basis, st, rng


def test_committee_predictions_and_disagreement(pool):
    basis, st, rng = pool
    samples = rng.normal(size=(6, basis.n_features))
    E, F = qbc.committee_predictions(samples, basis, st)
    assert E.shape == (6, 5) and F.shape == (6, 5, 7, 3)
    ef = jax.jit(lambda c: LinearPotential(basis, c).batch_energy_and_forces(st))
    for m in (0, 5):  # members agree with the potential itself
        e, f = ef(jnp.asarray(samples[m]))
        np.testing.assert_allclose(E[m], e, rtol=1e-12)
        np.testing.assert_allclose(F[m], f, rtol=1e-10, atol=1e-12)
    d = qbc.committee_disagreement(samples, basis, st)
    E, F, mask = np.asarray(E), np.asarray(F), np.asarray(st.mask)
    n_atoms = mask.sum(1)
    np.testing.assert_allclose(d.energy_per_atom, E.std(0, ddof=1) / n_atoms, rtol=1e-12)
    fstd = F.std(0, ddof=1)
    ref = [fstd[c][mask[c]].max() for c in range(5)]
    np.testing.assert_allclose(d.max_force, ref, rtol=1e-12)
    # identical members: zero disagreement
    same = qbc.committee_disagreement(np.repeat(samples[:1], 4, axis=0), basis, st)
    np.testing.assert_allclose(same.energy_per_atom, 0.0, atol=1e-13)
    np.testing.assert_allclose(same.max_force, 0.0, atol=1e-13)
    # a SamplePosterior of the committee gives the same push-forward std
    p = qbc.predictive_std(SamplePosterior(samples), basis, st)
    np.testing.assert_allclose(p.energy_per_atom, d.energy_per_atom, rtol=1e-10)
    np.testing.assert_allclose(p.max_force, d.max_force, rtol=1e-10)


def test_predictive_std_gaussian_matches_direct(pool):
    basis, st, rng = pool
    k = basis.n_features
    F = np.tril(rng.normal(size=(k, k))) + 2 * np.eye(k)
    Sigma = F @ F.T
    post = GaussianPosterior(jnp.asarray(rng.normal(size=k)), jnp.asarray(F), jnp.asarray(0.3))
    p = qbc.predictive_std(post, basis, st)
    R = np.asarray(candidate_rows(basis, st))  # (C, P, K), unweighted
    std = np.sqrt(np.einsum("cpk,kl,cpl->cp", R, Sigma, R))
    mask = np.asarray(st.mask)
    np.testing.assert_allclose(p.energy_per_atom, std[:, 0] / mask.sum(1), rtol=1e-10)
    fmax = [std[c, 1:][np.repeat(mask[c], 3)].max() for c in range(5)]
    np.testing.assert_allclose(p.max_force, fmax, rtol=1e-10)
    with pytest.raises(JaxiapInputError, match="features"):
        qbc.committee_disagreement(np.ones((3, k + 1)), basis, st)


def test_select_top():
    s = np.array([0.1, 3.0, 2.0, 5.0, 2.0, 0.5])
    assert qbc.select_top(s, 3).tolist() == [3, 1, 2]
    ex = np.array([False, False, False, True, False, False])
    assert qbc.select_top(s, 3, exclude=ex).tolist() == [1, 2, 4]
    with pytest.raises(JaxiapInputError, match="only 5 of 6"):
        qbc.select_top(s, 6, exclude=ex)
    with pytest.raises(JaxiapInputError, match="exclude must be"):
        qbc.select_top(s, 1, exclude=np.zeros(3, bool))
    with pytest.raises(JaxiapInputError, match="NaN"):
        qbc.select_top(np.array([1.0, np.nan]), 1)


def test_diversified_batch_avoids_duplicates():
    rng = np.random.default_rng(3)
    base = rng.normal(size=(6, 3)) * 3.0
    phi = np.concatenate([base[:1].repeat(4, axis=0), base[1:]])  # candidates 0..3 identical
    scores = np.array([10.0, 9.9, 9.8, 9.7, 5.0, 4.0, 3.0, 2.0, 1.0])
    idx = np.asarray(qbc.diversified_batch(scores, phi, 3)).tolist()
    assert len(idx) == 3 and len(set(idx)) == 3
    assert sum(i <= 3 for i in idx) == 1  # one of the duplicates, not two
    assert idx[0] == 0  # the best-scoring item is picked first
    # plain top-k would have taken three duplicates
    assert qbc.select_top(scores, 3).tolist() == [0, 1, 2]
    ex = np.zeros(9, bool)
    ex[[0, 4]] = True
    idx = np.asarray(qbc.diversified_batch(scores, phi, 4, exclude=ex, pre_factor=2)).tolist()
    assert len(set(idx)) == 4 and not ex[idx].any() and sum(i <= 3 for i in idx) == 1
    # only duplicates left: the batch is still filled with distinct indices
    idx = np.asarray(qbc.diversified_batch(scores[:4], phi[:4], 3)).tolist()
    assert sorted(idx) == [0, 1, 2]
    with pytest.raises(JaxiapInputError, match="phi must have shape"):
        qbc.diversified_batch(scores, phi[:5], 2)
    with pytest.raises(JaxiapInputError, match="out of range"):
        qbc.diversified_batch(scores, phi, 10)
