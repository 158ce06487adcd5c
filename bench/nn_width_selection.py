"""Does uncertainty choose the network width? Last-layer evidence and held-out NLL against the test error.

LJ13 at kT = 0.15 (Langevin snapshots of the true potential, ``lj13_dataset``, seed 0): a pool split
60 / 20 / 20 % into train / validation / test; Gaussian radial descriptor (8 functions, 0.8-3.0);
(w, w) SiLU networks trained with the MSE loss (early stopping on the validation set) for each width w,
then a last-layer Bayesian regression with type-II maximum-likelihood noise and prior
(:func:`jaxiap.workflows.nn_width.width_scan`). Prints the table and writes
``bench/figures/nn_width_selection.png``. Repeated over ``--seeds`` (splits and initialisations).

    python bench/nn_width_selection.py [--widths 2 4 8 16 32 64] [--seeds 0 1 2] [--epochs 300]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402


import jaxiap  # noqa: F401, E402  (float64)
from _common import footer, header  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--widths", type=int, nargs="+", default=[2, 4, 8, 16, 32, 64])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=300)
    ap.add_argument("--trajectories", type=int, default=8)
    ap.add_argument("--samples", type=int, default=30)
    ap.add_argument("--figure", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "figures",
                                                     "nn_width_selection.png"))
    args = ap.parse_args(argv)
    t_all = time.perf_counter()
    header("nn_width_selection")

    from jaxiap.data import split
    from jaxiap.descriptors.radial import RadialBasis, RadialDescriptor
    from jaxiap.inference.nn_train import TrainSettings
    from jaxiap.systems.lj import lj13_dataset
    from jaxiap.workflows.nn_width import width_scan

    pool = lj13_dataset(seed=0, n_trajectories=args.trajectories, n_samples=args.samples, sample_every=100, kT=0.15)
    desc = RadialDescriptor(RadialBasis("gaussian", 8, 0.8, 3.0))
    settings = TrainSettings(epochs=args.epochs, patience=60)
    print(f"# {len(pool)} structures; widths {args.widths}; seeds {args.seeds}; at most {args.epochs} epochs")
    runs = []
    for seed in args.seeds:
        train, valid, test = split(jax.random.key(100 + seed), pool, (0.6, 0.2, 0.2))
        r = width_scan(desc, train, valid, test, args.widths, seed=seed, settings=settings)
        runs.append(r)
        print(f"\nseed {seed}: evidence picks {r['picked_by_evidence']}, validation NLL picks {r['picked_by_nll']}, "
              f"lowest test RMSE at {r['best_test']}")
        print("| width | log evidence / row | validation force NLL | test force RMSE | train s |")
        print("|---|---|---|---|---|")
        for i, w in enumerate(r["widths"]):
            print(f"| {w} | {r['log_evidence_per_row'][i]:.4f} | {r['validation_nll'][i]:.4f} | "
                  f"{r['test_rmse'][i]:.4f} | {r['train_seconds'][i]:.1f} |", flush=True)
    _figure(runs, args.figure)
    print(f"\nfigure: {args.figure}")
    footer(time.perf_counter() - t_all)
    return 0


def _figure(runs, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    for r in runs:
        for ax, key, label in zip(axes, ("test_rmse", "log_evidence_per_row", "validation_nll"),
                                  ("test force RMSE", "log evidence / training row", "validation force NLL")):
            ax.plot(r["widths"], r[key], "o-", alpha=0.8)
            ax.set(xscale="log", xlabel="hidden width", title=label)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
