import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase import Atoms
from ase.calculators.lj import LennardJones

from jaxiap.errors import JaxiapInputError
from jaxiap.systems.lj import LJ13_MINIMUM_ENERGY, icosahedron, lj13_minimum, lj_energy, lj_forces


def test_lj13_minimum_energy():
    r = lj13_minimum()
    e = float(lj_energy(jnp.asarray(r)))
    assert abs(e - LJ13_MINIMUM_ENERGY) < 1e-6
    # geometry quoted in docs/science.md section 2.2: centre-to-vertex 1.0818, shortest vertex-vertex 1.1375
    d = np.linalg.norm(r - r[0], axis=1)[1:]
    np.testing.assert_allclose(d, 1.0818, atol=1e-4)
    rv = np.linalg.norm(r[1:, None] - r[None, 1:], axis=-1)
    assert abs(rv[rv > 0].min() - 1.1375) < 1e-4
    # it is a minimum: forces vanish
    assert float(jnp.abs(lj_forces(jnp.asarray(r))).max()) < 1e-7


def test_free_cluster_matches_ase(rng):
    pos = icosahedron(1.1) + 0.05 * rng.normal(size=(13, 3))
    atoms = Atoms("Ar13", positions=pos)
    atoms.calc = LennardJones(sigma=1.0, epsilon=1.0, rc=100.0, smooth=False)
    # ASE shifts by V(rc); at rc = 100 the shift is 1e-12 per pair.
    np.testing.assert_allclose(float(lj_energy(jnp.asarray(pos))), atoms.get_potential_energy(), rtol=1e-9)
    np.testing.assert_allclose(lj_forces(jnp.asarray(pos)), atoms.get_forces(), rtol=1e-8, atol=1e-9)


def test_periodic_box_matches_ase(rng):
    box = np.array([6.0, 6.5, 7.0])
    pos = rng.uniform(0, 1, size=(20, 3)) * box
    # keep atoms apart to avoid huge numbers
    pos = np.asarray([p for i, p in enumerate(pos)])
    atoms = Atoms("Ar20", positions=pos, cell=np.diag(box), pbc=True)
    atoms.calc = LennardJones(sigma=1.0, epsilon=1.0, rc=2.5, smooth=False)
    e = float(lj_energy(jnp.asarray(pos), box=jnp.asarray(box), r_cut=2.5, shift=True))
    np.testing.assert_allclose(e, atoms.get_potential_energy(), rtol=1e-9)
    f = lj_forces(jnp.asarray(pos), box=jnp.asarray(box), r_cut=2.5)
    np.testing.assert_allclose(f, atoms.get_forces(), rtol=1e-7, atol=1e-6)


def test_box_smaller_than_twice_cutoff_rejected():
    with pytest.raises(JaxiapInputError, match="smaller than 2\\*r_cut"):
        lj_energy(jnp.zeros((2, 3)) + jnp.array([[0, 0, 0], [1, 0, 0]]), box=jnp.array([4.0, 4.0, 4.0]), r_cut=2.5)


def test_masked_atoms_do_not_contribute():
    r = jnp.asarray(lj13_minimum())
    padded = jnp.concatenate([r, jnp.zeros((2, 3))])  # padding on top of the centre atom
    mask = jnp.arange(15) < 13
    np.testing.assert_allclose(lj_energy(padded, mask), lj_energy(r), rtol=1e-14)
    g = jax.grad(lj_energy)(padded, mask)
    assert np.isfinite(np.asarray(g)).all()
