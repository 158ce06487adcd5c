"""Full FRT pass (Langevin MD + periodic quench): jaxiap ensemble on 1 and 2 CPU devices vs ASE.

Both run the LJ13 first-rearrangement-time protocol of docs/science.md section 5 on
the true LJ potential: start at the quenched icosahedron with Maxwell-Boltzmann
velocities at kT, BAOAB/Langevin at dt, every n_q steps quench a copy and
compare its labelled bond graph (r_b = 1.35) with the start basin; stop at the
first change or at t_max.

- ``jaxiap``: :func:`jaxiap.md.ensemble.run_frt_ensemble` over R seeds
  (BAOAB with block noise, screened FIRE checks, lanes recycled, sharded
  over the CPU devices). The
  number of CPU devices is fixed when JAX starts
  (``XLA_FLAGS=--xla_force_host_platform_device_count=N``), so each entry of
  ``--devices`` runs in its own subprocess of this script, one after another,
  on the same seeds. The partitioned 2-device program rounds differently from
  the 1-device one (about 1 ulp), which the chaotic MD amplifies over 100 tau,
  so some replicas end at different FRTs and the work differs slightly; the
  number of replicas with identical outcomes is printed, and the device
  comparison uses simulated tau per second. Each subprocess compiles once (a warm-up call on 8 other seeds)
  and then times ``--repeats`` full passes over the R seeds.
- ``ASE``: ``ase.md.langevin.Langevin`` with ``LennardJones(rc=50)`` and an
  ``ase.optimize.FIRE`` quench (fmax = 1e-3, the same as jaxiap's default) on
  ``--ase-seeds`` seeds, one trajectory after another (one core). Reduced units
  map onto ASE with masses 1 amu, sigma 1 A, epsilon 1 eV, so ASE's time unit
  is tau.

Reported: per engine the wall time of a pass (jaxiap: median and min-max over
the repeats), trajectories per second, simulated tau per second (sum of the
runs' FRT or censoring times per wall second: the work done, independent of
how long each run happened to last; ASE: also the median and range of the
per-trajectory rate), cpu/wall (process CPU seconds over wall seconds: the
cores kept busy), each side's mean FRT (censored-exponential MLE) as a physics
check, the ratios to ASE, and the ratio of the 2-device to the 1-device
simulated tau/s (medians) from the same run.

Screened vs full quench: the first device count's worker also runs one pass
of the full-quench protocol (``screen_steps=0``) on the same seeds; the
script prints how many replicas have the same FRT and outcome, whether the
energy histograms are identical, the FIRE steps and the speed-up, and draws
the two protocols' FRTs against each other (``--figure``).

Usage: ``python bench/frt_ensemble.py [--seeds 256] [--ase-seeds 12] [--t-max 100] [--devices 1 2]
[--repeats 5] [--quick]``
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's jaxiap
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import footer, header, load, med, spread  # noqa: E402

KT, GAMMA, DT, N_Q, R_B = 0.30, 1.0, 0.005, 100, 1.35


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=256, help="jaxiap replicas per pass")
    p.add_argument("--ase-seeds", type=int, default=12, help="ASE trajectories")
    p.add_argument("--t-max", type=float, default=100.0, help="follow-up time per trajectory (tau)")
    p.add_argument("--devices", type=int, nargs="+", default=[1, 2],
                   help="CPU device counts for jaxiap, each in its own subprocess (default: 1 2)")
    p.add_argument("--repeats", type=int, default=5, help="timed jaxiap passes per device count")
    p.add_argument("--float32", action="store_true", help="jaxiap MD in float32")
    p.add_argument("--figure", default=str(Path(__file__).resolve().parent / "figures" / "frt_screen_vs_full.png"),
                   help="where to draw the screened-vs-full-quench FRT comparison (first device count), "
                        "'none' to skip that comparison")
    p.add_argument("--full-quench", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--quick", action="store_true",
                   help="tiny smoke run: 16 seeds, 1 ASE seed, t_max 5 tau, 2 repeats")
    p.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.seeds, args.ase_seeds, args.t_max, args.repeats = 16, 1, 5.0, 2
    return args


def worker(args) -> dict:
    """One device count (set by the parent in XLA_FLAGS): compile, then ``repeats`` timed passes."""
    import jax
    import numpy as np

    from jaxiap.md.ensemble import FRTSettings, auto_chunk_size, run_frt_ensemble
    from jaxiap.systems.lj import lj13_minimum
    from jaxiap.workflows.lj13 import true_lj_energy

    assert len(jax.devices()) == args.worker, (jax.devices(), args.worker)
    settings = FRTSettings(kT=KT, gamma=GAMMA, dt=DT, n_q=N_Q, t_max=args.t_max, r_b=R_B,
                           dtype="float32" if args.float32 else "float64")
    start = lj13_minimum()
    coef = np.zeros((1, 1))
    # the compiled chunk program depends on the chunk shape: warm up with the chunk size of the timed
    # pass (8 seeds padded to it), or the first timed pass would compile again
    chunk, lanes = auto_chunk_size(args.seeds, 13, itemsize=np.dtype(settings.dtype).itemsize)
    common = dict(chunk_size=chunk, lanes_per_device=lanes, progress=False)
    t0 = time.perf_counter()
    run_frt_ensemble(true_lj_energy, coef, np.arange(10_000, 10_008), start, settings, **common)
    first = time.perf_counter() - t0  # compile + 8 replicas (other seeds)
    walls, cpus = [], []
    for _ in range(args.repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        res = run_frt_ensemble(true_lj_energy, coef, np.arange(args.seeds), start, settings,
                               base_seed=1, **common)
        walls.append(time.perf_counter() - t0)
        cpus.append((time.process_time() - c0) / walls[-1])
    s = res.summary()["all"]
    out = dict(devices=len(jax.devices()), dtype=settings.dtype, n=args.seeds, walls=walls, cpu=cpus,
               first=first, mean=s["frt_mean"], events=int(s["n_events"]),
               simulated=float(np.sum(res.time)), lanes=int(res.lanes_per_device), chunk=int(res.chunk_size),
               time=np.asarray(res.time).ravel().tolist(), code=np.asarray(res.code).ravel().tolist(),
               quench_steps=int(np.sum(res.quench_steps)))
    if args.full_quench:
        # the full-quench protocol (every check quenched to fmax, all lanes together) on the same seeds
        full = dataclasses.replace(settings, screen_steps=0)
        run_frt_ensemble(true_lj_energy, coef, np.arange(10_000, 10_008), start, full, **common)  # compile
        t0 = time.perf_counter()
        ref = run_frt_ensemble(true_lj_energy, coef, np.arange(args.seeds), start, full, base_seed=1, **common)
        out["full"] = dict(wall=time.perf_counter() - t0, time=np.asarray(ref.time).ravel().tolist(),
                           code=np.asarray(ref.code).ravel().tolist(), quench_steps=int(np.sum(ref.quench_steps)),
                           hist_equal=bool(np.array_equal(ref.energy_hist, res.energy_hist)))
    return out


def run_worker(n_dev: int, args) -> dict:
    env = dict(os.environ)
    flags = re.sub(r"--xla_force_host_platform_device_count=\S+", "", env.get("XLA_FLAGS", ""))
    env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n_dev}".strip()
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", str(n_dev), "--seeds", str(args.seeds),
           "--t-max", str(args.t_max), "--repeats", str(args.repeats)] + (["--float32"] if args.float32 else [])
    if n_dev == args.devices[0] and args.figure != "none":
        cmd.append("--full-quench")
    before = load()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"worker --devices {n_dev} failed:\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["load"] = (before, load())
    print(f"  jaxiap {n_dev} device(s): pass wall s {spread(out['walls'])}, cpu/wall {spread(out['cpu'], '{:.2f}')}; "
          f"load {before} -> {out['load'][1]}", flush=True)
    return out


def ase_frt(seed: int, t_max: float, positions):
    """One ASE trajectory: returns (frt or t_max, event flag)."""
    import numpy as np
    from ase import Atoms, units
    from ase.calculators.lj import LennardJones
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary
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


def bench_ase(args) -> dict:
    import numpy as np

    from jaxiap.systems.lj import lj13_minimum

    start = np.asarray(lj13_minimum())
    times, events, walls = [], [], []
    before = load()
    c0 = time.process_time()
    for seed in range(args.ase_seeds):
        t0 = time.perf_counter()
        t, e = ase_frt(seed, args.t_max, start)
        walls.append(time.perf_counter() - t0)
        times.append(t)
        events.append(e)
    wall = sum(walls)
    out = dict(n=args.ase_seeds, wall=wall, cpu=(time.process_time() - c0) / wall,
               mean=sum(times) / max(sum(events), 1), events=int(np.sum(events)), simulated=float(np.sum(times)),
               per_traj_tau_s=[t / w for t, w in zip(times, walls)], load=(before, load()))
    print(f"  ASE: {args.ase_seeds} trajectories in {wall:.1f} s; load {before} -> {out['load'][1]}", flush=True)
    return out


def screen_vs_full(r: dict, args) -> None:
    """Print and draw the screened protocol's FRTs against the full-quench protocol's (same seeds)."""
    import numpy as np

    f = r["full"]
    t_s, t_f = np.asarray(r["time"]), np.asarray(f["time"])
    c_s, c_f = np.asarray(r["code"]), np.asarray(f["code"])
    same = int(np.sum((t_s == t_f) & (c_s == c_f)))
    print(f"\nScreened checks (default, screen_steps=40) vs the full-quench protocol (screen_steps=0), "
          f"{r['devices']} device(s), the same {r['n']} seeds: {same} of {r['n']} replicas with the same FRT and "
          f"outcome; energy histograms {'identical' if f['hist_equal'] else 'DIFFERENT'}; FIRE steps "
          f"{r['quench_steps']} vs {f['quench_steps']} ({r['quench_steps'] / f['quench_steps']:.2f}x); "
          f"pass wall {med(r['walls']):.1f} s vs {f['wall']:.1f} s ({f['wall'] / med(r['walls']):.2f}x faster)")
    if args.figure == "none":
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.2, 4.0))
    ev = c_f == 1
    ax.plot([0, args.t_max], [0, args.t_max], color="0.7", lw=1, zorder=0)
    ax.scatter(t_f[ev], t_s[ev], s=10, label="event")
    ax.scatter(t_f[~ev], t_s[~ev], s=10, marker="x", label="censored / other")
    ax.set_xlabel("FRT, full quench at every check (tau)")
    ax.set_ylabel("FRT, screened checks (tau)")
    ax.set_title(f"LJ13 kT={KT}: {same}/{r['n']} identical", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    Path(args.figure).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.figure, dpi=110)
    print(f"figure: {args.figure}")


def main(argv=None):
    args = parse(argv)
    if args.worker is not None:
        print(json.dumps(worker(args)))
        return 0
    header("bench/frt_ensemble.py")
    t_all = time.perf_counter()
    jx = [run_worker(n, args) for n in args.devices]
    ase = bench_ase(args)
    ase_rate, ase_tau = ase["n"] / ase["wall"], ase["simulated"] / ase["wall"]
    print(f"\nLJ13 FRT pass, kT={KT}, gamma={GAMMA}, dt={DT}, quench every {N_Q} steps, t_max={args.t_max} tau,"
          f" graph criterion; jaxiap: {args.repeats} timed passes over {args.seeds} seeds per device count "
          f"(median (min-max)); ASE: {args.ase_seeds} trajectories\n")
    print("| engine | trajectories | wall s per pass | trajectories/s | simulated tau/s | cpu/wall | "
          "compile + 8 replicas s | mean FRT (tau) | events | vs ASE (traj/s) | vs ASE (tau/s) |")
    print("|---|---:|---|---:|---|---:|---:|---:|---:|---:|---:|")
    for r in jx:
        w = med(r["walls"])
        taus = [r["simulated"] / x for x in r["walls"]]
        print(f"| jaxiap ({r['devices']} CPU device{'s' if r['devices'] > 1 else ''}, {r['dtype']}, "
              f"{r['lanes']} lanes/device) | {r['n']} | {spread(r['walls'])} | {r['n'] / w:.3g} | {spread(taus)} | "
              f"{med(r['cpu']):.2f} | {r['first']:.1f} | {r['mean']:.3g} | {r['events']} | "
              f"{r['n'] / w / ase_rate:.3g}x | {r['simulated'] / w / ase_tau:.3g}x |")
    print(f"| ASE (Langevin + FIRE quench, 1 core) | {ase['n']} | {ase['wall']:.1f} (all trajectories) | "
          f"{ase_rate:.3g} | {ase_tau:.3g} (per trajectory: {spread(ase['per_traj_tau_s'])}) | {ase['cpu']:.2f} | - | "
          f"{ase['mean']:.3g} | {ase['events']} | 1x | 1x |")
    if len(jx) > 1:
        base = jx[0]
        print()
        for r in jx[1:]:
            tau_b = [base["simulated"] / x for x in base["walls"]]
            tau_r = [r["simulated"] / x for x in r["walls"]]
            ratio = med(tau_r) / med(tau_b)
            lo, hi = min(tau_r) / max(tau_b), max(tau_r) / min(tau_b)
            same = sum(a == b and c == d for a, b, c, d in zip(r["time"], base["time"], r["code"], base["code"]))
            print(f"{r['devices']} devices vs {base['devices']} device(s), same {args.seeds} seeds: "
                  f"{ratio:.2f}x the simulated tau/s (ratio of medians; extremes {lo:.2f}-{hi:.2f}x); "
                  f"ratio of median pass times {med(base['walls']) / med(r['walls']):.2f}x; "
                  f"{same} of {args.seeds} replicas with the same FRT and outcome (the partitioned program "
                  "rounds differently, about 1 ulp, and chaotic MD amplifies that over long runs, so the "
                  "work differs slightly: compare tau/s)")
    if "full" in jx[0]:
        screen_vs_full(jx[0], args)
    print()
    for r in jx:
        print(f"load average around jaxiap {r['devices']}-device worker: {r['load'][0]} -> {r['load'][1]}")
    print(f"load average around ASE: {ase['load'][0]} -> {ase['load'][1]}")
    footer(time.perf_counter() - t_all)
    return 0


if __name__ == "__main__":
    sys.exit(main())
