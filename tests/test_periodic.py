"""Periodic cells and jax-md neighbour lists: FCC aluminium labelled by ASE's EMT.

Measured numbers are printed (run with -s): neighbour-list vs dense
differences, the fitted potential's test force RMSE against EMT, and the
NVT mean kinetic temperature with its block-averaged standard error.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxiap  # noqa: F401  (float64)
from jaxiap.descriptors.radial import RadialBasis, RadialDescriptor
from jaxiap.errors import JaxiapInputError
from jaxiap.geometry import periodic_space
from jaxiap.potentials.linear import LinearBasis, LinearPotential, design_matrix
from jaxiap.potentials.pair import LJ
from jaxiap.structures import from_atoms, to_atoms
from jaxiap.systems import aluminium as al

# jax-md's dense neighbour-list pruning scatters int64 into int32 under float64 (a jax FutureWarning)
pytestmark = pytest.mark.filterwarnings("ignore:scatter inputs have incompatible types:FutureWarning")

R_CUT_32 = 4.0  # the 32-atom cell (8.09 Å) allows r_cut < 4.046 Å with the minimum image
R_CUT_FIT = 5.0  # three neighbour shells: the 108-atom cell (12.14 Å)


@pytest.fixture(scope="module")
def al32():
    return al.emt_dataset(repeat=2, stdevs=(0.05, 0.15), n_per_stdev=2, seed=5)


@pytest.fixture(scope="module")
def fitted():
    train = al.emt_dataset(repeat=3, stdevs=(0.05, 0.1, 0.15, 0.2), n_per_stdev=6, seed=0)
    test = al.emt_dataset(repeat=3, stdevs=(0.05, 0.1, 0.15, 0.2), n_per_stdev=3, seed=1)
    pot, post = al.fit_al_potential(train, r_cut=R_CUT_FIT, n_basis=6)
    return pot, post, test


@pytest.mark.parametrize("fmt", ["dense", "sparse", "ordered_sparse"])
def test_neighbor_list_equals_dense_al32(al32, fmt):
    basis = LinearBasis(RadialBasis("chebyshev", 6, 2.0, R_CUT_32), species_reference=True)
    pot = LinearPotential(basis, jnp.asarray(np.random.default_rng(0).normal(size=7)))
    st = al32.structures
    box = st.box[0]
    _, _, neighbor_fn = periodic_space(box, R_CUT_32, dr_threshold=0.04, format=fmt)
    worst = np.zeros(3)
    ef = jax.jit(lambda x, nb: (pot.energy_and_forces(x, box=box, neighbor=nb),
                                basis.descriptor.atomic(x, box=box, neighbor=nb)))
    for x in st.positions:
        (e_d, f_d), a_d = ef(x, None)
        (e_n, f_n), a_n = ef(x, neighbor_fn.allocate(x))
        worst = np.maximum(worst, [abs(float(e_d - e_n)), float(jnp.abs(f_d - f_n).max()),
                                   float(jnp.abs(a_d - a_n).max())])
    print(f"\nAl32 {fmt}: max |dE| {worst[0]:.2e} eV, max |dF| {worst[1]:.2e} eV/Å, max |d phi_i| {worst[2]:.2e}")
    assert np.all(worst < 1e-10)
    # the neighbour list is only a candidate list: positions moved within the skin still give dense numbers
    x = st.positions[0] + 0.015
    np.testing.assert_allclose(pot.energy(x, box=box, neighbor=neighbor_fn.allocate(st.positions[0])),
                               pot.energy(x, box=box), rtol=0, atol=1e-10)


def test_neighbor_list_two_species_triclinic_and_lj(al32):
    rng = np.random.default_rng(1)
    x = al32.structures.positions[1]
    species = jnp.asarray(rng.integers(0, 2, x.shape[0]))
    d = RadialDescriptor(RadialBasis("gaussian", 5, 2.0, R_CUT_32), n_species=2)
    box = al32.structures.box[1]
    for fmt in ("dense", "sparse", "ordered_sparse"):
        _, _, nf = periodic_space(box, R_CUT_32, dr_threshold=0.04, format=fmt)
        np.testing.assert_allclose(d.atomic(x, species=species, box=box, neighbor=nf.allocate(x)),
                                   d.atomic(x, species=species, box=box), rtol=0, atol=1e-12)
    # a sheared (triclinic) cell: rows are lattice vectors; jax-md periodic_general builds the list
    cell = np.diag(np.asarray(box)) + np.array([[0, 0, 0], [1.0, 0, 0], [0.5, 0.3, 0]])
    frac = np.asarray(x) / np.asarray(box)
    y = jnp.asarray(frac @ cell)
    _, _, nf = periodic_space(cell, 3.5, dr_threshold=0.0)
    lj = LJ(epsilon=0.4, sigma=2.6, r_cut=3.5)
    e_d, f_d = lj.energy_and_forces(y, box=jnp.asarray(cell))
    e_n, f_n = lj.energy_and_forces(y, box=jnp.asarray(cell), neighbor=nf.allocate(y))
    assert abs(float(e_d - e_n)) < 1e-10 and float(jnp.abs(f_d - f_n).max()) < 1e-10
    # triclinic Structures round trip through ASE
    atoms = to_atoms(from_positions_triclinic(y, cell))[0]
    st = from_atoms([atoms])
    assert st.box.shape == (1, 3, 3)
    np.testing.assert_allclose(st.box[0], cell)
    np.testing.assert_allclose(to_atoms(st)[0].cell[:], cell)


def from_positions_triclinic(y, cell):
    from jaxiap.structures import from_positions

    return from_positions(y, species_names=("Al",), box=cell)


def test_cell_narrower_than_twice_cutoff_is_rejected(al32):
    x, box = al32.structures.positions[0], al32.structures.box[0]
    d = RadialDescriptor(RadialBasis("chebyshev", 4, 2.0, R_CUT_FIT))
    with pytest.raises(JaxiapInputError, match="2 \\* r_cut"):
        d.structure(x, box=box)
    with pytest.raises(JaxiapInputError, match="larger supercell"):
        periodic_space(box, R_CUT_32, dr_threshold=0.5)
    with pytest.raises(JaxiapInputError, match="design_matrix"):
        design_matrix(LinearBasis(RadialBasis("chebyshev", 4, 2.0, R_CUT_FIT)), al32)
    with pytest.raises(JaxiapInputError, match="r_cut"):
        LJ().energy(x, box=box)


@pytest.mark.slow  # CI budget (2026-11-30): runs with -m slow; a cheaper default-run test covers the same code path
def test_fitted_al_force_rmse_against_emt(fitted):
    pot, post, test = fitted
    e, f = pot.batch_energy_and_forces(test.structures)
    err = np.asarray(f - test.forces)
    rmse = float(np.sqrt(np.mean(err**2)))
    per = np.sqrt(np.mean(err.reshape(4, 3, -1) ** 2, axis=(1, 2)))
    scale = float(jnp.sqrt(jnp.mean(test.forces**2)))
    e_rmse = float(jnp.sqrt(jnp.mean(((e - test.energy) / 108) ** 2)))
    print(f"\nfitted Al (r_cut {R_CUT_FIT} Å, 6 Chebyshev + per-atom energy, 24 train / 12 test cells of 108 atoms): "
          f"test force RMSE {rmse:.4f} eV/Å (EMT force RMS {scale:.3f}); per rattle 0.05/0.1/0.15/0.2 Å: "
          f"{np.round(per, 4).tolist()}; energy RMSE {1e3 * e_rmse:.3f} meV/atom")
    assert rmse < 0.1 * scale
    assert per[1] < 0.02  # the 300 K-like rattle
    # the same numbers through a neighbour list
    x, box = test.structures.positions[4], test.structures.box[4]
    _, _, nf = periodic_space(box, R_CUT_FIT, dr_threshold=0.5)
    e_n, f_n = pot.energy_and_forces(x, box=box, neighbor=nf.allocate(x))
    assert abs(float(e_n - e[4])) < 1e-10 and float(jnp.abs(f_n - f[4]).max()) < 1e-10


def test_quench_periodic_with_neighbor_list(fitted):
    from jaxiap.md.quench import quench

    pot = fitted[0]
    setup = al.al_md_setup(pot, repeat=3)
    x0 = setup["positions"] + 0.05 * jnp.asarray(np.random.default_rng(2).normal(size=setup["positions"].shape))
    r, fmax = quench(pot, x0, fmax=1e-4, max_steps=5000, dt_start=0.05, dt_max=0.2,
                     shift_fn=setup["shift_fn"], neighbor_fn=setup["neighbor_fn"], energy_kwargs={"box": setup["box"]})
    assert float(fmax) < 1e-4
    assert float(pot.energy(r, box=setup["box"])) < float(pot.energy(x0, box=setup["box"]))


@pytest.mark.slow  # CI budget (2026-11-30): runs with -m slow; a cheaper default-run test covers the same code path
def test_fitted_al_nvt_holds_temperature(fitted):
    """BAOAB Langevin of the fitted potential with a neighbour list, 300 K, in the MD runner (jaxiap.md.nvt).

    Units: eV, Å, amu, ASE time (ase.units.fs = 0.0982): dt = 2 fs, gamma = 0.01 / fs.
    5 blocks of 100 steps of equilibration, then the kinetic temperature (2 KE / 3N kB;
    Langevin does not conserve momentum, so 3N degrees of freedom) every 10
    steps for 35 blocks of 100 steps (200 fs); the block means give the standard error.
    """
    import ase.units as u

    from jaxiap.md.nvt import NVTSettings, run_nvt

    pot = fitted[0]
    setup = al.al_md_setup(pot, repeat=3)
    target = 300.0
    settings = NVTSettings(kT=target * u.kB, dt=2.0 * u.fs, gamma=0.01 / u.fs, mass=setup["mass"],
                           n_equilibrate_blocks=5, n_blocks=35, block_steps=100, record_every=10)
    run = run_nvt(pot, [0], setup["positions"], settings, shift_fn=setup["shift_fn"],
                  neighbor_fn=setup["neighbor_fn"], energy_kwargs=dict(box=setup["box"]), progress=False)
    assert not run.failed.any()  # no neighbour-list overflow, finite state
    blocks = run.results["kinetic_temperature"][0, 0] / u.kB
    mean, se = float(blocks.mean()), float(blocks.std(ddof=1) / np.sqrt(len(blocks)))
    n_rebuilds = int(run.results["neighbor_rebuilds"][0, 0])
    print(f"\nAl108 NVT 300 K, fitted potential, neighbour list, MD runner: <T_kin> = {mean:.1f} ± {se:.1f} K "
          f"(block SE, {len(blocks)} blocks of {settings.block_steps} steps; {n_rebuilds} list rebuilds)")
    assert np.all(np.isfinite(blocks)) and n_rebuilds > 0
    assert abs(mean - target) < 3 * se
    # the wrapped final positions stay in the cell
    final = run.results["final_positions"][0, 0]
    assert np.all(final >= -1e-9) and np.all(final <= np.asarray(setup["box"]) + 1e-9)
