"""Deep-ensemble training throughput: M members in one vmapped program vs the members one after another.

Both sides do the same work: the same M initialisations, the same minibatch
orders (member i draws its order from fold_in(epoch_key, i); trained alone it
gets ``member_ids=[i]``), the same epochs, no early stopping (patience >
epochs). The members trained one after another equal the vmapped ones to
round-off (checked here; tests/test_nn.py checks it to 1e-10).

Data: Langevin snapshots of the true LJ13 at kT = 0.15 (``lj13_dataset``),
Gaussian radial descriptor (8 functions, 0.8-3.0), (32, 32) SiLU MLPs, MSE
loss on energies and forces, Adam, minibatch 16. Throughput is member x
structure gradient evaluations per second: M x n_train x epochs / wall time.
Each timing runs after a warm-up call of the same shapes (compilation).

    python bench/nn_ensemble.py [--members 2 5 10] [--epochs 20] [--structures 256]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import numpy as np  # noqa: E402

import jaxiap  # noqa: F401, E402  (float64)
from _common import footer, header  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--members", type=int, nargs="+", default=[2, 5, 10])
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--structures", type=int, default=256, help="training structures")
    ap.add_argument("--hidden", type=int, nargs="+", default=[32, 32])
    args = ap.parse_args(argv)
    t_all = time.perf_counter()
    header("nn_ensemble")

    from jaxiap.descriptors.radial import RadialBasis, RadialDescriptor
    from jaxiap.inference.nn_train import TrainSettings, stack_members, train_members, unstack_member
    from jaxiap.potentials.nn import init_nn_potential
    from jaxiap.systems.lj import lj13_dataset

    n_traj = 8
    data = lj13_dataset(seed=0, n_trajectories=n_traj, n_samples=-(-args.structures // n_traj), sample_every=100,
                        kT=0.15)[: args.structures]
    desc = RadialDescriptor(RadialBasis("gaussian", 8, 0.8, 3.0))
    settings = TrainSettings(epochs=args.epochs, batch_size=16, patience=args.epochs + 1)
    print(f"# {len(data)} LJ13 structures, hidden {tuple(args.hidden)}, {args.epochs} epochs, minibatch 16")
    print("| members M | vmapped (s) | one after another (s) | vmapped throughput (member-structures/s) | "
          "sequential throughput | speed-up | max param. difference |")
    print("|---|---|---|---|---|---|---|")
    for m in args.members:
        members = [init_nn_potential(k, desc, data, hidden=tuple(args.hidden))
                   for k in jax.random.split(jax.random.key(m), m)]
        stacked = stack_members(members)
        run = lambda s, ids=None: train_members(s, data, None, key=jax.random.key(1), settings=settings,  # noqa: E731
                                                progress=False, member_ids=ids)
        jax.block_until_ready(run(stacked)[0])                                   # warm-up: compile M-wide
        jax.block_until_ready(run(stack_members([members[0]]), [0])[0])          # warm-up: compile 1-wide
        t0 = time.perf_counter()
        together, _ = run(stacked)
        jax.block_until_ready(together)
        t_vmap = time.perf_counter() - t0
        t0 = time.perf_counter()
        alone = []
        for i in range(m):
            trained, _ = run(stack_members([members[i]]), [i])
            alone.append(jax.block_until_ready(trained))
        t_seq = time.perf_counter() - t0
        diff = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
                   for i in range(m)
                   for a, b in zip(jax.tree_util.tree_leaves(unstack_member(together, i).network),
                                   jax.tree_util.tree_leaves(unstack_member(alone[i], 0).network)))
        work = m * len(data) * args.epochs
        print(f"| {m} | {t_vmap:.2f} | {t_seq:.2f} | {work / t_vmap:.0f} | {work / t_seq:.0f} | "
              f"{t_seq / t_vmap:.2f}x | {diff:.1e} |", flush=True)
    footer(time.perf_counter() - t_all)
    return 0


if __name__ == "__main__":
    sys.exit(main())
