"""Memory of reverse-mode sensitivities through long MD: gradient checkpointing.

Task: d/dc of the replica-mean time average of the potential energy over
``steps`` BAOAB steps of a 64-replica LJ13 ensemble (3-function Chebyshev
pair basis, linear potential, float64, kT 0.3, gamma 1, dt 0.005, sampled
every step), via ``jaxiap.md.sensitivity.trajectory_qoi`` +
``ensemble_qoi_and_grad``. With checkpointing (blocks of about
sqrt(steps) steps) the backward pass stores one state per block and one
block's residuals at a time; without it, every step's residuals.

Each configuration runs in a fresh subprocess; peak memory is that
process's ``ru_maxrss`` (which includes ~300-400 MB of jax/XLA runtime and
the compile). "compile s" is ``lower().compile()``; "run s" one execution
of the compiled value-and-grad program.

Usage: python bench/sensitivity_memory.py [--configs 10000:auto 2000:auto 1000:auto 250:0 500:0 1000:0 2000:0]
[--quick] (``steps:checkpoint_every``, ``auto`` = the default ~sqrt(steps), 0 = none). No peer: the
comparison is with and without checkpointing, in the same run. One execution per configuration (peak
memory is the figure of interest; it does not vary between runs of the same program).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def child(steps: int, ck: str, replicas: int):
    import resource

    import jax
    import jax.numpy as jnp

    import jaxiap  # noqa: F401
    from jaxiap.descriptors.radial import RadialBasis
    from jaxiap.md import sensitivity as sens
    from jaxiap.potentials.linear import LinearBasis, energy_fn
    from jaxiap.systems.lj import icosahedron

    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    c = jnp.array([3.81520598, 3.43910912, 10.40381828])
    energy = energy_fn(LinearBasis(RadialBasis("chebyshev", 3, 0.8, 2.5)))
    x0 = jnp.asarray(icosahedron(1.1))
    keys = jax.random.split(jax.random.key(0), replicas)
    ck_every = None if ck == "auto" else int(ck)
    qoi = sens.trajectory_qoi(energy, "potential_energy", kT=0.3, gamma=1.0, dt=0.005,
                              n_steps=steps, checkpoint_every=ck_every)

    def vg(c, keys, x0):
        def mean_fn(c):
            vals = jax.vmap(qoi, in_axes=(None, 0, None))(c, keys, x0)
            return jnp.mean(vals)

        return jax.value_and_grad(mean_fn)(c)

    t = time.perf_counter()
    compiled = jax.jit(vg).lower(c, keys, x0).compile()
    t_compile = time.perf_counter() - t
    t = time.perf_counter()
    v, g = jax.block_until_ready(compiled(c, keys, x0))
    t_run = time.perf_counter() - t
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps(dict(steps=steps, checkpoint=ck if ck != "auto" else f"auto({round(steps ** 0.5)})",
                          replicas=replicas, compile_s=t_compile, run_s=t_run,
                          base_mb=rss0 / 1024, peak_mb=rss / 1024, value=float(v),
                          grad=[float(x) for x in g])))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", nargs="+",
                    default=["10000:auto", "2000:auto", "1000:auto", "250:0", "500:0", "1000:0", "2000:0"])
    ap.add_argument("--replicas", type=int, default=64)
    ap.add_argument("--quick", action="store_true", help="tiny smoke run: 8 replicas, 100:auto and 100:0")
    ap.add_argument("--child", nargs=2)
    args = ap.parse_args()
    if args.child:
        child(int(args.child[0]), args.child[1], args.replicas)
        return
    if args.quick:
        args.configs, args.replicas = ["100:auto", "100:0"], 8
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from _common import footer, header

    header("bench/sensitivity_memory.py")
    t_all = time.perf_counter()
    rows = []
    for cfg in args.configs:
        steps, ck = cfg.split(":")
        out = subprocess.run([sys.executable, __file__, "--replicas", str(args.replicas), "--child", steps, ck],
                             capture_output=True, text=True)
        if out.returncode:
            print(f"{cfg} failed:\n{out.stderr[-2000:]}", flush=True)
            continue
        row = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("\n| steps | checkpoint_every | replicas | compile s | run s | base MB | peak MB | grad |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        g = ", ".join(f"{x:.6g}" for x in r["grad"])
        print(f"| {r['steps']} | {r['checkpoint']} | {r['replicas']} | {r['compile_s']:.1f} | "
              f"{r['run_s']:.1f} | {r['base_mb']:.0f} | {r['peak_mb']:.0f} | {g} |")
    footer(time.perf_counter() - t_all)


if __name__ == "__main__":
    main()
