"""How good is the pair-potential prior mean of ``jaxiap otf --pair-prior-frames`` on its own? (issue 14)

The prior is fitted exactly as in the study (:func:`jaxiap.workflows.otf_al.pair_prior`: least squares on
the EMT energies and forces of ``--frames`` rattled copies of the 32-atom FCC Al cell, stds 0.1 Å to
``--max-stdev``, a Chebyshev pair basis on [r_min, r_cut] with the tangent-line wall below r_min) and
scored, with no Gaussian process on top, on held-out EMT Langevin frames of the solid and the liquid
(:func:`jaxiap.workflows.otf_al.test_frames`: ``--test-frames`` frames 0.1 ps apart after 2 ps at each
temperature), and checks that EMT itself conserves energy in NVE at the study's 5 fs step from the melt's
10^4 K (velocity Verlet, 5 ps). Prints the force MAE and RMSE (meV/Å) next to FLARE's table (the GP's targets: 32.9 solid,
90.2 liquid) and the mean |F| of the frames; one line per (n_basis, temperature).

Usage: ``python bench/otf_pair_prior.py [--frames 8] [--max-stdev 0.4] [--test-frames 20]
[--temperatures 300,3000,5000] [--n-basis 8,10]``
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import jaxiap  # noqa: F401  (enables float64)
from jaxiap.workflows.otf_al import PAPER_TABLE, initial_atoms, pair_prior, test_frames
from jaxiap.workflows.otf_config import OTFConfig


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--max-stdev", type=float, default=0.4)
    p.add_argument("--test-frames", type=int, default=20)
    p.add_argument("--temperatures", default="300,3000,5000")
    p.add_argument("--n-basis", default="8,10")
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    base = OTFConfig(pair_prior_frames=a.frames, pair_prior_max_stdev=a.max_stdev, n_test=a.test_frames)
    cell = jnp.asarray(np.asarray(initial_atoms(base).cell))
    frames = {t: test_frames(base, float(t), 1000 + t) for t in (int(v) for v in a.temperatures.split(","))}
    print(f"pair prior: {a.frames} EMT-labelled rattled cells (0.1-{a.max_stdev} Å), r_cut {base.pair_prior_r_cut} Å, "
          f"r_min {base.pair_prior_r_min} Å; test: {a.test_frames} EMT Langevin frames per temperature")
    print(f"{'n_basis':>7} {'T (K)':>6} {'mean T':>7} {'MAE':>7} {'RMSE':>7} {'mean |F|':>9}   (meV/Å)")
    with tempfile.TemporaryDirectory() as tmp:
        for nb in (int(v) for v in a.n_basis.split(",")):
            folder = Path(tmp) / f"nb{nb}"
            folder.mkdir()
            prior, calls = pair_prior(dataclasses.replace(base, pair_prior_n_basis=nb), folder)
            energy = jax.jit(lambda x: prior.environment_energy(*_environment(x, cell, base.pair_prior_r_cut)))
            forces = jax.jit(jax.grad(lambda x: -energy(x)))
            for t, (xs, fs, ts) in frames.items():
                pred = np.stack([np.asarray(forces(jnp.asarray(x))) for x in xs])
                err = 1000 * (pred - fs)
                print(f"{nb:>7} {t:>6} {np.mean(ts):7.0f} {np.mean(np.abs(err)):7.1f} {np.sqrt(np.mean(err**2)):7.1f} "
                      f"{1000 * np.mean(np.abs(fs)):9.1f}")
    _emt_nve(base)
    print("FLARE's table (meV/Å, solid / liquid): " + ", ".join(f"{k} {s} / {liq}" for k, (s, liq) in PAPER_TABLE.items()))
    print(f"wall {time.perf_counter() - t0:.0f} s")


def _emt_nve(config: OTFConfig, ps: float = 5.0):
    """Does the oracle itself conserve energy at the study's time step in the hot liquid? EMT velocity Verlet
    from 10^4 K Maxwell-Boltzmann velocities (the melt's rescaling), ``ps`` ps at ``config.dt_fs``."""
    from ase import units
    from ase.md.verlet import VelocityVerlet

    from jaxiap.active.otf import maxwell_boltzmann

    atoms = initial_atoms(config)
    atoms.set_velocities(maxwell_boltzmann(atoms.get_masses(), config.melt_temperature, np.random.default_rng(0)))
    dyn = VelocityVerlet(atoms, config.dt_fs * units.fs)
    e0 = atoms.get_total_energy()
    drift, temps = [], []
    for _ in range(int(ps * 1000 / config.dt_fs) // 50):
        dyn.run(50)
        drift.append(atoms.get_total_energy() - e0)
        temps.append(atoms.get_temperature())
    print(f"EMT NVE, {config.dt_fs} fs, from {config.melt_temperature:g} K, {ps} ps: mean T {np.mean(temps):.0f} K, "
          f"max |E - E0| {np.max(np.abs(drift)):.3f} eV (32 atoms)")


def _environment(x, cell, r_cut):
    """(vectors (N, N*27, 3), mask, species, centre species) of every atom within r_cut, images included."""
    x = x - jnp.floor(x @ jnp.linalg.inv(cell)) @ cell  # wrapped: the -1..1 shifts reach every image only then
    shifts = jnp.asarray(np.array(np.meshgrid(*[np.arange(-1, 2)] * 3, indexing="ij")).reshape(3, -1).T, x.dtype)
    d = (x[None, :, None, :] + (shifts @ cell)[None, None] - x[:, None, None, :]).reshape(x.shape[0], -1, 3)
    r2 = jnp.sum(d**2, axis=-1)
    mask = (r2 > 1e-12) & (r2 < r_cut**2)
    zeros = jnp.zeros(x.shape[0], int)
    return d, mask, jnp.zeros(mask.shape, int), zeros


if __name__ == "__main__":
    main()
