import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxiap.descriptors.radial import FAMILIES, RadialBasis, atomic_features, poly_cutoff, structure_features
from jaxiap.errors import JaxiapInputError


@pytest.mark.parametrize("family", FAMILIES)
def test_basis_is_c2_at_cutoff(family):
    basis = RadialBasis(family, 6, r_min=0.8, r_cut=3.0)
    f = lambda r: basis(r)
    d1 = jax.jacfwd(f)
    d2 = jax.jacfwd(d1)
    inside = jnp.asarray(3.0 - 1e-7)
    for fn in (f, d1, d2):
        assert float(jnp.abs(fn(inside)).max()) < 1e-4
        assert float(jnp.abs(fn(jnp.asarray(3.2))).max()) == 0.0
    if family != "bessel":  # sin(k pi r / r_cut) adds one more order of smoothness
        # the third derivative does not vanish: the cutoff is exactly C2, not smoother
        d3 = jax.jacfwd(d2)(jnp.asarray(3.0 - 1e-9))
        assert float(jnp.abs(d3).max()) > 1e-3


def test_poly_cutoff_values():
    np.testing.assert_allclose(poly_cutoff(jnp.asarray([0.0, 1.5, 3.0, 4.0]), 3.0), [1.0, 0.125, 0.0, 0.0])


def test_chebyshev_matches_numpy():
    basis = RadialBasis("chebyshev", 5, r_min=1.0, r_cut=2.0, cutoff_order=3)
    r = jnp.linspace(1.0, 1.9, 7)
    x = 2 * (1.0 / r - 0.5) / 0.5 - 1
    expect = np.polynomial.chebyshev.chebvander(np.asarray(x), 4) * np.asarray(poly_cutoff(r, 2.0))[:, None]
    np.testing.assert_allclose(basis(r), expect, rtol=1e-12)


@pytest.mark.parametrize("family", FAMILIES)
def test_structure_features_equal_pair_sum(family, rng):
    basis = RadialBasis(family, 4, 0.8, 2.5)
    pos = rng.uniform(0, 2.5, size=(6, 3))
    expect = sum(np.asarray(basis(jnp.linalg.norm(jnp.asarray(pos[i] - pos[j]))))
                 for i, j in itertools.combinations(range(6), 2))
    np.testing.assert_allclose(structure_features(basis, jnp.asarray(pos)), expect, rtol=1e-12)


def test_mask_aware_and_batched(rng):
    basis = RadialBasis("bessel", 5, 0.8, 3.0)
    pos = jnp.asarray(rng.uniform(0, 2, size=(3, 5, 3)))
    mask = jnp.asarray([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 0, 0, 0]], bool)
    batched = jax.vmap(lambda p, m: atomic_features(basis, p, m))(pos, mask)
    assert batched.shape == (3, 5, 5)
    for s in range(3):
        n = int(mask[s].sum())
        np.testing.assert_allclose(batched[s, :n], atomic_features(basis, pos[s, :n]), rtol=1e-12)
        assert float(jnp.abs(batched[s, n:]).max(initial=0.0)) == 0.0


def test_vmap_over_hyperparameters(rng):
    pos = jnp.asarray(rng.uniform(0, 2, size=(5, 3)))
    cuts = jnp.asarray([2.5, 3.0, 3.5])

    def feats(rc):
        return structure_features(RadialBasis("gaussian", 4, 0.8, rc), pos)

    batched = jax.vmap(feats)(cuts)
    for i, rc in enumerate([2.5, 3.0, 3.5]):
        np.testing.assert_allclose(batched[i], feats(rc), rtol=1e-12)


def test_species_resolved_features_sum_to_untyped(rng):
    basis = RadialBasis("chebyshev", 3, 0.8, 3.0)
    pos = jnp.asarray(rng.uniform(0, 2, size=(6, 3)))
    species = jnp.asarray([0, 1, 0, 1, 1, 0])
    typed = atomic_features(basis, pos, species=species, n_species=2).reshape(6, 2, 3)
    np.testing.assert_allclose(typed.sum(axis=1), atomic_features(basis, pos), rtol=1e-12)


def test_bad_hyperparameters():
    with pytest.raises(JaxiapInputError, match="family"):
        RadialBasis("legendre")
    with pytest.raises(JaxiapInputError, match="r_min < r_cut"):
        RadialBasis("bessel", 4, r_min=3.0, r_cut=2.0)
    with pytest.raises(JaxiapInputError, match="not C2"):
        RadialBasis("bessel", 4, cutoff_order=2)
