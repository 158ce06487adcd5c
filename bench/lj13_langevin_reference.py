"""Independent reference for the LJ13 MD tests: mean potential energy from ASE's Langevin.

Writes ``tests/data/lj13_langevin_reference.json``, which
``tests/test_md_thermo.py`` compares jaxiap's MD (the FRT ensemble's jax-md
BAOAB integrator) against. Nothing here uses jaxiap: the structure, the
potential (``ase.calculators.lj.LennardJones``), the integrator
(``ase.md.langevin.Langevin``, the Vanden-Eijnden-Ciccotti scheme, not BAOAB)
and the statistics are all independent of the code under test.

Units. ASE works in eV, Angstrom, amu; its internal time unit is
Angstrom * sqrt(amu / eV) (about 10.18 fs). With sigma = 1 Angstrom,
epsilon = 1 eV and all masses 1 amu, LJ reduced units coincide with ASE's
internal units: one tau = one ASE time unit. Hence ``timestep=DT`` (NOT
multiplied by ``ase.units.fs``), ``friction=GAMMA`` in 1/tau, and
``temperature_K = KT / ase.units.kB`` (KT in eV = epsilon). The script checks
the conversion twice: the quenched icosahedron must have E = -44.326801
epsilon (Cambridge Cluster Database), and the mean kinetic energy must be
3N kT / 2 (equipartition, see fixcm below).

Cutoff. ``LennardJones`` shifts the pair energy by V(rc) (``smooth=False``);
its default rc = 3 sigma would shift the LJ13 minimum to -43.50. With
rc = 100 sigma the shift is 4e-12 per pair (3e-10 for all 78 pairs), and every
pair of a bound cluster is inside the cutoff, so this is the plain
full-range LJ of ``jaxiap.systems.lj.lj_energy``.

fixcm. ASE 3.29's Langevin defaults to ``fixcm=True``, which removes the
centre-of-mass velocity each step and rescales the noise; ASE itself warns
that this does not sample the canonical distribution exactly and deprecates
it. We use ``fixcm=False``: every atom gets its own friction and noise, as in
jax-md's ``nvt_langevin`` (whose O step does not conserve the total momentum
either), so the centre of mass diffuses freely and all 3N momenta are
thermalised (mean kinetic energy 3N kT / 2). The potential energy does not
depend on the centre of mass, so this choice only matters for the kinetic
check.

Temperature: kT = 0.15 epsilon, where LJ13 stays in its icosahedral basin (no
rearrangement in 16 x 1000 tau of jaxiap's MD) and does not evaporate. At
kT = 0.2 jaxiap's MD left the basin about once per 2000-4000 tau into a
defect basin that lived > 30 tau with <U> ~3.7 higher, so the mean potential
energy converged too slowly for a test.

Protocol (defaults): kT = 0.15 epsilon, friction 1/tau, dt = 0.005 tau, N_TRAJ independent
trajectories from the Mackay icosahedron with Maxwell-Boltzmann velocities
(seeds ``numpy.random.default_rng([SEED, i])``), N_EQUIL steps discarded,
then N_PROD steps with the energies sampled every SAMPLE_EVERY steps. The
standard error comes from block averages (blocks of BLOCK_TAU tau, more than
10 integrated autocorrelation times of the potential energy, ~0.7 tau at
kT 0.15, gamma 1) pooled over all trajectories; the script also prints it for
other block lengths (it should plateau) and the between-trajectory estimate.

Cost: ASE's LennardJones calculator is pure Python, about 1 ms per MD step
on one core, so the defaults (8 x 104,000 = 0.83 million steps) take about
15 CPU minutes (the stored run: 877 CPU s, 24 min wall with ``--workers 2``
on a busy 2-core machine); ``--workers 2`` spreads the trajectories over processes
(the numbers do not depend on it). Each finished trajectory is saved under
``bench/_work/lj13_langevin_reference/`` and reused by a rerun with the same
settings, so an interrupted run resumes. The wall and CPU time of the run
that made the stored file are in the file (``wall_s``, ``cpu_s``).

Usage::

    python bench/lj13_langevin_reference.py [--workers 2] [--out tests/data/lj13_langevin_reference.json] [--fresh]
    python bench/lj13_langevin_reference.py --quick     # 2 x 10 tau smoke run, writes nothing
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import sys
import time

import numpy as np

KT = 0.15  # epsilon (= eV here)
GAMMA = 1.0  # 1/tau
DT = 0.005  # tau
N_TRAJ = 8
N_EQUIL = 4_000  # 20 tau discarded (the potential energy relaxes from the minimum within ~10 tau)
N_PROD = 100_000  # 500 tau per trajectory
SAMPLE_EVERY = 10  # steps (0.05 tau)
BLOCK_TAU = 10.0  # tau
SEED = 20240613
RC = 100.0  # sigma
E_MIN = -44.326801  # LJ13 global minimum, epsilon (Cambridge Cluster Database)

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(HERE, "..", "tests", "data", "lj13_langevin_reference.json")
CACHE = os.path.join(HERE, "_work", "lj13_langevin_reference")


def icosahedron(radius: float = 1.0818) -> np.ndarray:
    """13-atom Mackay icosahedron (centre + 12 vertices at ``radius`` sigma), (13, 3)."""
    phi = (1.0 + np.sqrt(5.0)) / 2.0
    v = []
    for a in (-1.0, 1.0):
        for b in (-phi, phi):
            v += [(0.0, a, b), (a, b, 0.0), (b, 0.0, a)]
    v = np.asarray(v)
    v *= radius / np.linalg.norm(v[0])
    return np.vstack([np.zeros(3), v])


def lj13_atoms():
    from ase import Atoms
    from ase.calculators.lj import LennardJones

    atoms = Atoms("X13", positions=icosahedron(), masses=np.ones(13), pbc=False)
    atoms.calc = LennardJones(sigma=1.0, epsilon=1.0, rc=RC, smooth=False)
    return atoms


def quenched_minimum_energy() -> float:
    from ase.optimize import BFGS

    atoms = lj13_atoms()
    BFGS(atoms, logfile=None).run(fmax=1e-8, steps=1000)
    return float(atoms.get_potential_energy())


def trajectory(args):
    """One Langevin trajectory; returns (potential, kinetic) energies sampled during production, CPU seconds.

    With ``cache`` set, the result is saved there (and loaded instead of
    recomputed when a file for the same arguments exists).
    """
    i, seed, kT, gamma, dt, n_equil, n_prod, every, cache = args
    import ase

    key = f"{i}-{seed}-{kT}-{gamma}-{dt}-{n_equil}-{n_prod}-{every}-{RC}-ase{ase.__version__}"
    path = os.path.join(cache, f"traj_{i:03d}.npz") if cache else None
    if path and os.path.exists(path):
        with np.load(path) as z:
            if str(z["key"]) == key:
                return z["pe"], z["ke"], float(z["cpu_s"])
    c0 = time.process_time()
    from ase import units
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import thermalize_momenta

    rng = np.random.default_rng([seed, i])
    atoms = lj13_atoms()
    thermalize_momenta(atoms, temperature_K=kT / units.kB, rng=rng)
    md = Langevin(atoms, timestep=dt, temperature_K=kT / units.kB, friction=gamma, fixcm=False, rng=rng)
    md.run(n_equil)
    pe, ke = [], []

    def record():
        pe.append(atoms.get_potential_energy())
        ke.append(atoms.get_kinetic_energy())

    md.attach(record, interval=every)
    md.run(n_prod)
    # observers run when the step count (equilibration included) is a multiple of `every`
    pe, ke = np.asarray(pe), np.asarray(ke)
    assert pe.size == n_prod // every, (pe.size, n_prod // every)
    cpu = time.process_time() - c0
    if path:
        os.makedirs(cache, exist_ok=True)
        np.savez(path + ".tmp.npz", pe=pe, ke=ke, key=np.asarray(key), cpu_s=np.asarray(cpu))
        os.replace(path + ".tmp.npz", path)
    print(f"trajectory {i}: {n_equil + n_prod} steps, {cpu:.0f} CPU s", flush=True)
    return pe, ke, cpu


def block_se(x: np.ndarray, block: int) -> tuple[float, float, int]:
    """(mean, standard error, n_blocks) from non-overlapping blocks of ``block`` samples per trajectory row."""
    nb = x.shape[1] // block
    means = x[:, : nb * block].reshape(x.shape[0], nb, block).mean(-1).ravel()
    return float(means.mean()), float(means.std(ddof=1) / np.sqrt(means.size)), int(means.size)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--out", default=DEFAULT_OUT)
    p.add_argument("--quick", action="store_true", help="2 trajectories x 10 tau, print only")
    p.add_argument("--fresh", action="store_true", help=f"ignore saved trajectories in {CACHE}")
    a = p.parse_args(argv)

    import ase

    n_traj, n_equil, n_prod = (2, 400, 2000) if a.quick else (N_TRAJ, N_EQUIL, N_PROD)
    e_min = quenched_minimum_energy()
    print(f"ASE {ase.__version__}: quenched icosahedron E = {e_min:.6f} (expected {E_MIN})", flush=True)
    assert abs(e_min - E_MIN) < 1e-5, e_min

    t0 = time.perf_counter()
    cache = None if (a.quick or a.fresh) else CACHE
    jobs = [(i, SEED, KT, GAMMA, DT, n_equil, n_prod, SAMPLE_EVERY, cache) for i in range(n_traj)]
    if a.workers > 1:
        with multiprocessing.get_context("spawn").Pool(a.workers) as pool:
            out = pool.map(trajectory, jobs)
    else:
        out = [trajectory(j) for j in jobs]
    wall = time.perf_counter() - t0
    pe = np.stack([o[0] for o in out])
    ke = np.stack([o[1] for o in out])
    cpu = sum(o[2] for o in out)

    dt_sample = DT * SAMPLE_EVERY
    block = int(round(BLOCK_TAU / dt_sample)) if not a.quick else 20
    pe_mean, pe_se, nblk = block_se(pe, block)
    ke_mean, ke_se, _ = block_se(ke, block)
    per_traj = pe.mean(axis=1)
    n = pe.shape[0] * pe.shape[1]
    print(f"{n_traj} trajectories x {n_prod} steps ({n_prod * DT:g} tau) after {n_equil} discarded; "
          f"wall {wall:.0f} s (workers {a.workers}), {cpu:.0f} CPU s in the trajectories")
    print(f"potential energy {pe_mean:.5f} +- {pe_se:.5f} (block {block * dt_sample:g} tau, {nblk} blocks)")
    for b_tau in (0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0):
        b = int(round(b_tau / dt_sample))
        if pe.shape[1] // b >= 4:
            print(f"  block {b_tau:5g} tau: SE {block_se(pe, b)[1]:.5f}")
    print(f"  between trajectories: SE {per_traj.std(ddof=1) / np.sqrt(n_traj):.5f}")
    ekin = 1.5 * 13 * KT
    print(f"kinetic energy {ke_mean:.5f} +- {ke_se:.5f} (3N kT/2 = {ekin:.5f}: {(ke_mean - ekin) / ke_se:+.2f} SE)")
    if a.quick:
        return
    assert abs(ke_mean - ekin) < 4 * ke_se, "kinetic energy off equipartition: unit conversion?"

    result = dict(
        description="LJ13 mean potential energy (epsilon) under Langevin MD at kT, ASE reference "
                    "(bench/lj13_langevin_reference.py)",
        kT=KT, gamma=GAMMA, dt=DT, n_atoms=13, masses=1.0, sigma=1.0, epsilon=1.0, rc=RC,
        fixcm=False,
        n_trajectories=n_traj, n_equilibrate_steps=n_equil, n_production_steps=n_prod,
        n_steps_total=n_traj * (n_equil + n_prod), sample_every=SAMPLE_EVERY, n_samples=n,
        block_tau=BLOCK_TAU, n_blocks=nblk, seed=SEED,
        potential_energy_mean=pe_mean, potential_energy_se=pe_se,
        potential_energy_std=float(pe.std()),
        potential_energy_per_trajectory=[float(x) for x in per_traj],
        kinetic_energy_mean=ke_mean, kinetic_energy_se=ke_se,
        quenched_minimum_energy=e_min,
        ase_version=ase.__version__, numpy_version=np.__version__, python=platform.python_version(),
        wall_s=round(wall, 1), cpu_s=round(cpu, 1), workers=a.workers,
        command="python bench/lj13_langevin_reference.py" + (f" --workers {a.workers}" if a.workers > 1 else ""),
    )
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(result, f, indent=1)
        f.write("\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    sys.exit(main())
