"""Full FRT pass (Langevin MD + periodic quench): jaxiap ensemble vs the same protocol in ASE.

Both run the LJ13 first-rearrangement-time protocol of SCIENCE.md section 1 on
the true LJ potential: start at the quenched icosahedron with Maxwell-Boltzmann
velocities at kT, BAOAB/Langevin at dt, every n_q steps quench a copy and
compare its labelled bond graph (r_b = 1.35) with the start basin; stop at the
first change or at t_max.

- ``jaxiap``: :func:`jaxiap.md.ensemble.run_frt_ensemble` over R seeds
  (jax-md BAOAB + FIRE, lanes recycled, sharded over the CPU devices).
- ``ASE``: ``ase.md.langevin.Langevin`` with ``LennardJones(rc=50)`` and an
  ``ase.optimize.FIRE`` quench (fmax = 1e-3, the same as jaxiap's default) on a
  few seeds, one trajectory after another. Reduced units map onto ASE with
  masses 1 amu, sigma 1 Å, epsilon 1 eV, so ASE's time unit is tau.

Reported: trajectories per second (finished FRT runs, event or censored, per
wall second), simulated time per wall second (sum of the runs' FRT or
censoring times: the work done, independent of how long each run happened to
last) and the ratios jaxiap / ASE, plus each side's mean FRT as a
physics check. Compile time of the jaxiap program is reported separately.

Usage: ``python bench/frt_ensemble.py [--seeds 256] [--ase-seeds 4] [--t-max 100] [--devices 2]``
"""

from __future__ import annotations

import argparse
import os
import sys
import time

KT, GAMMA, DT, N_Q, R_B = 0.30, 1.0, 0.005, 100, 1.35


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=256, help="jaxiap replicas")
    p.add_argument("--ase-seeds", type=int, default=4, help="ASE trajectories")
    p.add_argument("--t-max", type=float, default=100.0, help="follow-up time per trajectory (tau)")
    p.add_argument("--devices", type=int, default=os.cpu_count() or 1, help="CPU devices for jaxiap")
    p.add_argument("--float32", action="store_true", help="jaxiap MD in float32")
    return p.parse_args(argv)


def bench_jaxiap(args):
    import numpy as np

    from jaxiap.md.ensemble import FRTSettings, run_frt_ensemble
    from jaxiap.systems.lj import lj13_minimum
    from jaxiap.workflows.lj13 import true_lj_energy

    settings = FRTSettings(kT=KT, gamma=GAMMA, dt=DT, n_q=N_Q, t_max=args.t_max, r_b=R_B,
                           dtype="float32" if args.float32 else "float64")
    start = lj13_minimum()
    t0 = time.perf_counter()
    run_frt_ensemble(true_lj_energy, np.zeros((1, 1)), np.arange(8), start, settings, progress=False)
    first = time.perf_counter() - t0  # compile + 8 replicas
    t0 = time.perf_counter()
    res = run_frt_ensemble(true_lj_energy, np.zeros((1, 1)), np.arange(args.seeds), start, settings,
                           progress=False, base_seed=1)
    wall = time.perf_counter() - t0
    s = res.summary()["all"]
    return dict(engine=f"jaxiap ({len(__import__('jax').devices())} CPU devices, {settings.dtype})",
                n=args.seeds, wall=wall, compile=first, mean=s["frt_mean"], events=s["n_events"],
                simulated=float(np.sum(res.time)))


def ase_frt(seed: int, t_max: float, positions):
    """One ASE trajectory: returns (frt or t_max, event flag)."""
    import numpy as np
    from ase import Atoms, units
    from ase.calculators.lj import LennardJones
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import Stationary, MaxwellBoltzmannDistribution
    from ase.optimize import FIRE

    def graph(a):
        d = a.get_all_distances()
        return (d < R_B) & ~np.eye(len(a), dtype=bool)

    def quenched(a):
        q = a.copy()
        q.calc = LennardJones(sigma=1.0, epsilon=1.0, rc=50.0)
        FIRE(q, logfile=None).run(fmax=1e-3, steps=5000)
        return q

    atoms = Atoms("Ar13", positions=positions, masses=np.ones(13))
    atoms.calc = LennardJones(sigma=1.0, epsilon=1.0, rc=50.0)
    rng = np.random.default_rng(seed)
    MaxwellBoltzmannDistribution(atoms, temperature_K=KT / units.kB, rng=rng)
    Stationary(atoms)
    g0 = graph(quenched(atoms))
    dyn = Langevin(atoms, timestep=DT, temperature_K=KT / units.kB, friction=GAMMA, fixcm=False, rng=rng)
    n_checks = int(np.ceil(t_max / (N_Q * DT) - 1e-9))
    for check in range(1, n_checks + 1):
        dyn.run(N_Q)
        if (graph(quenched(atoms)) != g0).any():
            return check * N_Q * DT, True
    return n_checks * N_Q * DT, False


def bench_ase(args):
    import numpy as np

    from jaxiap.systems.lj import lj13_minimum

    start = lj13_minimum()
    times, events = [], []
    t0 = time.perf_counter()
    for seed in range(args.ase_seeds):
        t, e = ase_frt(seed, args.t_max, start)
        times.append(t)
        events.append(e)
    wall = time.perf_counter() - t0
    mean = sum(times) / max(sum(events), 1)
    return dict(engine="ASE (Langevin + FIRE quench, 1 core)", n=args.ase_seeds, wall=wall, compile=0.0,
                mean=mean, events=int(np.sum(events)), simulated=float(np.sum(times)))


def main(argv=None):
    args = parse(argv)
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count={args.devices}").strip()
    rows = [bench_jaxiap(args), bench_ase(args)]
    ase_rate = rows[1]["n"] / rows[1]["wall"]
    ase_tau = rows[1]["simulated"] / rows[1]["wall"]
    print(f"\nLJ13 FRT pass, kT={KT}, gamma={GAMMA}, dt={DT}, quench every {N_Q} steps, t_max={args.t_max} tau,"
          " graph criterion\n")
    print("| engine | trajectories | wall s | trajectories/s | simulated tau/s | compile s | mean FRT (tau) "
          "| events | vs ASE (traj/s) | vs ASE (tau/s) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        rate, tau = r["n"] / r["wall"], r["simulated"] / r["wall"]
        print(f"| {r['engine']} | {r['n']} | {r['wall']:.1f} | {rate:.3g} | {tau:.3g} | {r['compile']:.1f} | "
              f"{r['mean']:.3g} | {r['events']} | {rate / ase_rate:.3g}x | {tau / ase_tau:.3g}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
