"""Posterior x seed FRT sweep (issue 5 "GPU scale"): jaxiap vs the same protocol in ASE.

The sweep of the LJ13 forward-UQ study: M coefficient samples of a fitted
3-function Chebyshev potential (drawn from its Student-t posterior, NIG) times R
thermostat seeds, each replica running Langevin MD at kT = 0.3 with a FIRE
quench and a bond-graph check every n_q steps until the first rearrangement or
t_max (docs/science.md section 5).

- ``jaxiap``: :func:`jaxiap.md.ensemble.run_frt_ensemble` on the (M, R) grid
  (lanes recycled, sharded over the devices: the CPU split into ``--devices``
  devices, or the GPU).
- ``ASE``: ``ase.md.langevin.Langevin`` + ``ase.optimize.FIRE`` with an ASE
  calculator evaluating the same fitted potential: ``energy_fn(basis)``, the
  function jaxiap's MD differentiates, under ONE ``jax.jit(value_and_grad)``
  built once and taking the coefficients as an argument, compiled and warmed
  for each precision before the timing (as jaxiap's program is warmed on 8
  other replicas), one (sample, seed) replica after another: what a user of
  the fitted potential would run in ASE.

Precision: each of ``--dtypes`` (default float64 and float32) runs on both
sides in the same run, and each jaxiap row is compared with the ASE row of the
same precision. jaxiap float32: MD state, coefficients and energies in
float32 (``FRTSettings(dtype="float32")``). ASE float32: the calculator is
called with float32 positions and coefficients; ASE's integrator and FIRE
are numpy float64 and cannot be switched. On both sides the fitted basis
promotes part of the energy evaluation to float64 (its constants are float64
when jaxiap enables x64), so "float32" is float32 state with a mixed-precision
potential, the same on both sides.

Reported: MD atom-steps per second (13 atoms x Langevin steps; quench work
excluded from the count but included in the wall time), finished
trajectories per second, simulated tau per second, and ratios to ASE at the
same precision (ASE: totals over its replicas, and the median and min-max of
the per-replica atom-steps/s). jaxiap makes one pass per precision (its
replicas are the repeats). On a GPU the script also prints the
bandwidth-bound limit of the MD step it estimates for that GPU (see
:func:`bandwidth_bound`).

Usage: ``python bench/uq_sweep.py [--samples 16] [--seeds 64] [--t-max 20] [--ase-runs 6]
[--devices 2] [--dtypes float64 float32] [--quick]``
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's jaxiap
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import footer, header, load, spread  # noqa: E402

KT, GAMMA, DT, N_Q, R_B = 0.30, 1.0, 0.005, 100, 1.35
N_ATOMS = 13

#: HBM bandwidth (bytes/s) of GPUs we may be lent.
GPU_BANDWIDTH = {"H100": 3.35e12, "H200": 4.8e12, "A100": 2.0e12}


def bandwidth_bound(bandwidth: float, itemsize: int = 4) -> float:
    """Atom-steps/s if every Langevin step streams the replica state through memory once.

    Per atom and step a BAOAB update reads and writes positions, momenta and
    forces and reads one Gaussian draw per component: (3 arrays read + 3
    written + 1 noise read) x 3 components x itemsize bytes = 21 itemsize
    bytes. The 13 x 13 pair forces are computed from positions already loaded
    (about 400 flop per atom-step, far below the flop roofline), so the step
    is memory-bound when the state leaves registers between steps.
    """
    return bandwidth / (21 * itemsize)


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--samples", type=int, default=16, help="posterior samples M")
    p.add_argument("--seeds", type=int, default=64, help="thermostat seeds R per sample")
    p.add_argument("--t-max", type=float, default=20.0, help="follow-up time per trajectory (tau)")
    p.add_argument("--ase-runs", type=int, default=6, help="ASE (sample, seed) replicas per precision")
    p.add_argument("--devices", type=int, default=os.cpu_count() or 1, help="CPU devices for jaxiap")
    p.add_argument("--dtypes", nargs="+", default=["float64", "float32"], choices=["float64", "float32"],
                   help="precisions, each run on both sides")
    p.add_argument("--quick", action="store_true",
                   help="tiny smoke run: 2 samples x 8 seeds, t_max 2 tau, 2 ASE runs per precision")
    args = p.parse_args(argv)
    if args.quick:
        args.samples, args.seeds, args.t_max, args.ase_runs = 2, 8, 2.0, 2
    return args


def fitted_posterior():
    """(basis, (M_max, K) posterior draws) of a 3-function Chebyshev fit to LJ13 data at kT 0.3."""
    import jax

    from jaxiap.descriptors.radial import RadialBasis
    from jaxiap.inference.linear import fit_nig
    from jaxiap.potentials.linear import LinearBasis, design_matrix
    from jaxiap.systems.lj import lj13_dataset

    data = lj13_dataset(0, 8, 25, 100, KT, GAMMA, DT, 200)
    basis = LinearBasis(RadialBasis("chebyshev", 3, 0.8, 3.0))
    post = fit_nig(design_matrix(basis, data))
    return basis, post, jax.random.key(7)


def bench_jaxiap(args, basis, post, key, dtype):
    import jax
    import numpy as np

    from jaxiap.md.ensemble import FRTSettings, auto_chunk_size, run_frt_ensemble
    from jaxiap.potentials.linear import energy_fn
    from jaxiap.systems.lj import lj13_minimum

    settings = FRTSettings(kT=KT, gamma=GAMMA, dt=DT, n_q=N_Q, t_max=args.t_max, r_b=R_B, dtype=dtype)
    coef = np.asarray(post.sample(key, args.samples))
    fn = energy_fn(basis)
    start = lj13_minimum()
    chunk, lanes = auto_chunk_size(coef.shape[0] * args.seeds, N_ATOMS, n_coef=coef.shape[1],
                                   itemsize=np.dtype(dtype).itemsize)
    common = dict(chunk_size=chunk, lanes_per_device=lanes, progress=False)
    before = load()
    t0 = time.perf_counter()
    run_frt_ensemble(fn, coef[:1], np.arange(10_000, 10_008), start, settings, **common)
    first = time.perf_counter() - t0  # compile (same chunk program) + 8 replicas (other seeds)
    t0, c0 = time.perf_counter(), time.process_time()
    res = run_frt_ensemble(fn, coef, np.arange(args.seeds), start, settings, base_seed=1, **common)
    wall = time.perf_counter() - t0
    cpu = (time.process_time() - c0) / wall
    steps = float(np.sum(res.n_checks)) * settings.n_q
    dev = jax.devices()[0]
    print(f"  jaxiap {dtype}: {res.code.size} replicas in {wall:.1f} s; load {before} -> {load()}", flush=True)
    return dict(engine=f"jaxiap ({len(jax.devices())} {dev.platform} devices, {dtype})", dtype=dtype,
                n=res.code.size, wall=wall, compile=first, atom_steps=steps * N_ATOMS, cpu=cpu,
                simulated=float(np.sum(res.time)), events=int(np.sum(res.code == 1)),
                device=getattr(dev, "device_kind", dev.platform), coef=coef, per_run=None)


def bench_ase(args, basis, coef, dtype):
    import jax
    import jax.numpy as jnp
    import numpy as np
    from ase import Atoms, units
    from ase.calculators.calculator import Calculator, all_changes
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary
    from ase.optimize import FIRE

    from jaxiap.potentials.linear import energy_fn
    from jaxiap.systems.lj import lj13_minimum

    jdt = jnp.dtype(dtype)
    value_and_grad = jax.jit(jax.value_and_grad(energy_fn(basis), argnums=1))  # one program for every sample
    t0 = time.perf_counter()
    jax.block_until_ready(value_and_grad(jnp.asarray(coef[0], jdt), jnp.asarray(lj13_minimum(), jdt)))
    warm = time.perf_counter() - t0  # compile + first call, outside the timing (like jaxiap's warm-up)

    class Fitted(Calculator):
        implemented_properties = ["energy", "forces"]

        def __init__(self, c):
            super().__init__()
            self._c = jnp.asarray(c, jdt)

        def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
            super().calculate(atoms, properties, system_changes)
            e, g = value_and_grad(self._c, jnp.asarray(self.atoms.positions, jdt))
            self.results = {"energy": float(e), "forces": -np.asarray(g, np.float64)}

    def graph(a):
        d = a.get_all_distances()
        return (d < R_B) & ~np.eye(len(a), dtype=bool)

    def quenched(a, calc):
        q = a.copy()
        q.calc = calc
        FIRE(q, logfile=None).run(fmax=1e-3, steps=5000)
        return q

    steps = simulated = events = 0
    per_run = []
    before = load()
    t0, c0 = time.perf_counter(), time.process_time()
    for run in range(args.ase_runs):
        t_run, steps_run = time.perf_counter(), 0
        calc = Fitted(coef[run % len(coef)])
        atoms = Atoms("Ar13", positions=lj13_minimum(), masses=np.ones(N_ATOMS))
        atoms.calc = calc
        rng = np.random.default_rng(run)
        MaxwellBoltzmannDistribution(atoms, temperature_K=KT / units.kB, rng=rng)
        Stationary(atoms)
        g0 = graph(quenched(atoms, calc))
        dyn = Langevin(atoms, timestep=DT, temperature_K=KT / units.kB, friction=GAMMA, fixcm=False, rng=rng)
        n_checks = int(np.ceil(args.t_max / (N_Q * DT) - 1e-9))
        for check in range(1, n_checks + 1):
            dyn.run(N_Q)
            steps_run += N_Q
            if (graph(quenched(atoms, calc)) != g0).any():
                events += 1
                break
        simulated += check * N_Q * DT
        steps += steps_run
        per_run.append(steps_run * N_ATOMS / (time.perf_counter() - t_run))
    wall = time.perf_counter() - t0
    cpu = (time.process_time() - c0) / wall
    print(f"  ASE {dtype} calculator: {args.ase_runs} replicas in {wall:.1f} s; load {before} -> {load()}",
          flush=True)
    return dict(engine=f"ASE (Langevin + FIRE, jitted jaxiap calculator in {dtype}, 1 core)", dtype=dtype,
                n=args.ase_runs, wall=wall, compile=warm, atom_steps=steps * N_ATOMS, simulated=simulated,
                events=events, device="cpu", cpu=cpu, per_run=per_run)


def main(argv=None):
    args = parse(argv)
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count={args.devices}").strip()
    header("bench/uq_sweep.py")
    t_all = time.perf_counter()
    basis, post, key = fitted_posterior()
    rows = []
    for dtype in args.dtypes:
        jx = bench_jaxiap(args, basis, post, key, dtype)
        rows += [jx, bench_ase(args, basis, jx["coef"], dtype)]
    print(f"\nLJ13 posterior x seed FRT sweep: {args.samples} NIG samples x {args.seeds} seeds, kT={KT}, "
          f"dt={DT}, quench every {N_Q} steps, t_max={args.t_max} tau; ratios against ASE at the same precision\n")
    print("| engine | replicas | wall s | atom-steps/s | trajectories/s | simulated tau/s | cpu/wall | warm-up s "
          "| events | vs ASE (atom-steps/s) | vs ASE (traj/s) |")
    print("|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        base = next(b for b in rows if b["dtype"] == r["dtype"] and b["per_run"] is not None)
        a, t = r["atom_steps"] / r["wall"], r["n"] / r["wall"]
        rate = f"{a:.3g}" + (f" (per replica {spread(r['per_run'])})" if r["per_run"] is not None else "")
        print(f"| {r['engine']} | {r['n']} | {r['wall']:.1f} | {rate} | {t:.3g} | {r['simulated'] / r['wall']:.3g} | "
              f"{r['cpu']:.2f} | {r['compile']:.1f} | {r['events']} | "
              f"{a / (base['atom_steps'] / base['wall']):.3g}x | {t / (base['n'] / base['wall']):.3g}x |")
    for r in rows:
        if r["per_run"] is not None:
            continue
        kind = str(r["device"])
        bw = next((v for k, v in GPU_BANDWIDTH.items() if k in kind), None)
        if bw is not None:
            size = 4 if r["dtype"] == "float32" else 8
            bound = bandwidth_bound(bw, size)
            rate = r["atom_steps"] / r["wall"]
            print(f"\n{kind} {r['dtype']}: bandwidth-bound estimate {bound:.3g} atom-steps/s ({bw / 1e12:.2f} TB/s, "
                  f"21 x {size} bytes per atom-step); measured {rate:.3g} = {rate / bound:.3g} of it")
    footer(time.perf_counter() - t_all)
    return 0


if __name__ == "__main__":
    sys.exit(main())
