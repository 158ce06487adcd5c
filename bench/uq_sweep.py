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
  calculator evaluating the same fitted potential (jitted jaxiap
  ``LinearPotential``, float64), one (sample, seed) replica after another:
  what a user of the fitted potential would run in ASE.

Reported: MD atom-steps per second (13 atoms x Langevin steps; quench work
excluded from the count but included in the wall time), finished
trajectories per second, simulated tau per second, and ratios to ASE. On a
GPU the script also prints the bandwidth-bound limit of the MD step it
estimates for that GPU (see :func:`bandwidth_bound`).

Usage: ``python bench/uq_sweep.py [--samples 16] [--seeds 64] [--t-max 20] [--ase-runs 4] [--devices 2]``
"""

from __future__ import annotations

import argparse
import os
import sys
import time

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
    p.add_argument("--ase-runs", type=int, default=4, help="ASE (sample, seed) replicas")
    p.add_argument("--devices", type=int, default=os.cpu_count() or 1, help="CPU devices for jaxiap")
    p.add_argument("--float32", action="store_true", help="jaxiap MD in float32")
    return p.parse_args(argv)


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


def bench_jaxiap(args, basis, post, key):
    import numpy as np

    from jaxiap.md.ensemble import FRTSettings, run_frt_ensemble
    from jaxiap.potentials.linear import energy_fn
    from jaxiap.systems.lj import lj13_minimum

    settings = FRTSettings(kT=KT, gamma=GAMMA, dt=DT, n_q=N_Q, t_max=args.t_max, r_b=R_B,
                           dtype="float32" if args.float32 else "float64")
    coef = np.asarray(post.sample(key, args.samples))
    fn = energy_fn(basis)
    start = lj13_minimum()
    from jaxiap.md.ensemble import auto_chunk_size

    chunk, lanes = auto_chunk_size(coef.shape[0] * args.seeds, N_ATOMS, n_coef=coef.shape[1])
    common = dict(chunk_size=chunk, lanes_per_device=lanes, progress=False)
    t0 = time.perf_counter()
    run_frt_ensemble(fn, coef[:1], np.arange(8), start, settings, **common)
    first = time.perf_counter() - t0  # compile (same chunk program) + 8 replicas
    t0 = time.perf_counter()
    res = run_frt_ensemble(fn, coef, np.arange(args.seeds), start, settings, base_seed=1, **common)
    wall = time.perf_counter() - t0
    steps = float(np.sum(res.n_checks)) * settings.n_q
    import jax

    dev = jax.devices()[0]
    return dict(engine=f"jaxiap ({len(jax.devices())} {dev.platform} devices, {settings.dtype})",
                n=res.code.size, wall=wall, compile=first, atom_steps=steps * N_ATOMS,
                simulated=float(np.sum(res.time)), events=int(np.sum(res.code == 1)),
                device=getattr(dev, "device_kind", dev.platform), coef=coef)


def bench_ase(args, basis, coef):
    import jax
    import numpy as np
    from ase import Atoms, units
    from ase.calculators.calculator import Calculator, all_changes
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary
    from ase.optimize import FIRE

    from jaxiap.potentials.linear import LinearPotential
    from jaxiap.systems.lj import lj13_minimum

    class Fitted(Calculator):
        implemented_properties = ["energy", "forces"]

        def __init__(self, c):
            super().__init__()
            pot = LinearPotential(basis, jax.numpy.asarray(c))
            self._ef = jax.jit(lambda x: pot.energy_and_forces(x))

        def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
            super().calculate(atoms, properties, system_changes)
            e, f = self._ef(jax.numpy.asarray(self.atoms.positions))
            self.results = {"energy": float(e), "forces": np.asarray(f)}

    def graph(a):
        d = a.get_all_distances()
        return (d < R_B) & ~np.eye(len(a), dtype=bool)

    def quenched(a, calc):
        q = a.copy()
        q.calc = calc
        FIRE(q, logfile=None).run(fmax=1e-3, steps=5000)
        return q

    steps = simulated = events = 0
    t0 = time.perf_counter()
    for run in range(args.ase_runs):
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
            steps += N_Q
            if (graph(quenched(atoms, calc)) != g0).any():
                events += 1
                break
        simulated += check * N_Q * DT
    wall = time.perf_counter() - t0
    return dict(engine="ASE (Langevin + FIRE, jitted jaxiap calculator, 1 core)", n=args.ase_runs, wall=wall,
                compile=0.0, atom_steps=steps * N_ATOMS, simulated=simulated, events=events, device="cpu")


def main(argv=None):
    args = parse(argv)
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count={args.devices}").strip()
    basis, post, key = fitted_posterior()
    jx = bench_jaxiap(args, basis, post, key)
    rows = [jx, bench_ase(args, basis, jx["coef"])]
    base = rows[1]
    print(f"\nLJ13 posterior x seed FRT sweep: {args.samples} NIG samples x {args.seeds} seeds, kT={KT}, "
          f"dt={DT}, quench every {N_Q} steps, t_max={args.t_max} tau\n")
    print("| engine | replicas | wall s | atom-steps/s | trajectories/s | simulated tau/s | compile s | events "
          "| vs ASE (atom-steps/s) | vs ASE (traj/s) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        a, t = r["atom_steps"] / r["wall"], r["n"] / r["wall"]
        print(f"| {r['engine']} | {r['n']} | {r['wall']:.1f} | {a:.3g} | {t:.3g} | {r['simulated'] / r['wall']:.3g} | "
              f"{r['compile']:.1f} | {r['events']} | {a / (base['atom_steps'] / base['wall']):.3g}x | "
              f"{t / (base['n'] / base['wall']):.3g}x |")
    kind = str(jx["device"])
    bw = next((v for k, v in GPU_BANDWIDTH.items() if k in kind), None)
    if bw is not None:
        bound = bandwidth_bound(bw, 4 if args.float32 else 8)
        rate = jx["atom_steps"] / jx["wall"]
        print(f"\n{kind}: bandwidth-bound estimate {bound:.3g} atom-steps/s ({bw / 1e12:.2f} TB/s, "
              f"21 x {4 if args.float32 else 8} bytes per atom-step); measured {rate:.3g} = {rate / bound:.3g} of it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
