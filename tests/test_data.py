import ase
import ase.symbols
import jax.numpy as jnp
import numpy as np
import pytest

from jaxiap.data import Dataset, concatenate, read_extxyz, split, write_extxyz
from jaxiap.errors import JaxiapInputError
from jaxiap.structures import Structures, from_atoms, from_positions, to_atoms


def _atoms(rng, symbols, pbc=False):
    n = len(ase.symbols.string2symbols(symbols))
    a = ase.Atoms(symbols, positions=rng.normal(size=(n, 3)) * 2)
    if pbc:
        a.cell = np.diag([7.0, 8.0, 9.0])
        a.pbc = True
    return a


def test_atoms_round_trip_with_padding(rng):
    atoms = [_atoms(rng, "CuCuAu"), _atoms(rng, "Au")]
    st = from_atoms(atoms)
    assert st.positions.shape == (2, 3, 3)
    assert st.species_names == ("Au", "Cu")
    np.testing.assert_array_equal(st.mask, [[1, 1, 1], [1, 0, 0]])
    back = to_atoms(st)
    for a, b in zip(atoms, back):
        assert a.get_chemical_symbols() == b.get_chemical_symbols()
        np.testing.assert_allclose(a.get_positions(), b.get_positions())


def test_periodic_box_round_trip(rng):
    st = from_atoms([_atoms(rng, "Ar2", pbc=True)])
    np.testing.assert_allclose(st.box, [[7.0, 8.0, 9.0]])
    assert np.allclose(to_atoms(st)[0].cell[:], np.diag([7.0, 8.0, 9.0]))


def _dataset(rng, s=3, n=4):
    pos = rng.normal(size=(s, n, 3)) * 2
    return Dataset(from_positions(pos, ("Ar",)), rng.normal(size=s), rng.normal(size=(s, n, 3)),
                   energy_weight=rng.uniform(0.5, 2, s), force_weight=rng.uniform(0.5, 2, s))


def test_extxyz_round_trip(tmp_path, rng):
    ds = _dataset(rng)
    write_extxyz(tmp_path / "d.xyz", ds)
    back = read_extxyz(tmp_path / "d.xyz")
    # ase writes positions with 8 decimals
    np.testing.assert_allclose(back.structures.positions, ds.structures.positions, atol=1e-7)
    np.testing.assert_allclose(back.energy, ds.energy, rtol=1e-12)  # energies keep full precision
    np.testing.assert_allclose(back.forces, ds.forces, atol=1e-7)  # 8 decimals
    np.testing.assert_allclose(back.energy_weight, ds.energy_weight)
    np.testing.assert_allclose(back.force_weight, ds.force_weight)


def test_split_and_concatenate(rng):
    ds = _dataset(rng, s=10)
    import jax

    a, b = split(jax.random.key(0), ds, (0.7, 0.3))
    assert (len(a), len(b)) == (7, 3)
    joined = concatenate([a, b])
    assert sorted(np.asarray(joined.energy).tolist()) == sorted(np.asarray(ds.energy).tolist())


@pytest.mark.parametrize("field", ["energy", "forces"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nonfinite_labels_rejected(rng, field, bad):
    ds = _dataset(rng)
    e, f = np.asarray(ds.energy).copy(), np.asarray(ds.forces).copy()
    (e if field == "energy" else f).flat[1] = bad
    with pytest.raises(JaxiapInputError, match=field):
        Dataset(ds.structures, e, f)


def test_mismatched_shapes_rejected(rng):
    ds = _dataset(rng)
    with pytest.raises(JaxiapInputError, match="energy must have shape"):
        Dataset(ds.structures, np.zeros(2), ds.forces)
    with pytest.raises(JaxiapInputError, match="forces must have shape"):
        Dataset(ds.structures, ds.energy, np.zeros((3, 5, 3)))
    with pytest.raises(JaxiapInputError, match="positions must have shape"):
        Structures(jnp.zeros((2, 4)), jnp.zeros((2, 4), int), jnp.ones((2, 4), bool))
    with pytest.raises(JaxiapInputError, match="mask must have shape"):
        Structures(jnp.zeros((2, 4, 3)), jnp.zeros((2, 4), int), jnp.ones((2, 3), bool))


def test_negative_weights_rejected(rng):
    ds = _dataset(rng)
    with pytest.raises(JaxiapInputError, match="force_weight has negative"):
        ds.with_weights(force_weight=np.array([1.0, -1.0, 1.0]))
    with pytest.raises(JaxiapInputError, match="energy_weight has negative"):
        ds.with_weights(energy_weight=-1.0)


def test_unknown_species_rejected(rng):
    with pytest.raises(JaxiapInputError, match="unknown species 'Au'"):
        from_atoms([_atoms(rng, "CuAu")], species_names=("Cu",))


def test_nan_positions_rejected(rng):
    ds = _dataset(rng)
    pos = np.asarray(ds.structures.positions).copy()
    pos[0, 0, 0] = np.nan
    with pytest.raises(JaxiapInputError, match="positions"):
        Dataset(from_positions(pos), ds.energy, ds.forces)
