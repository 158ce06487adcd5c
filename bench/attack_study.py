"""Adversarial attacks vs random displacements of the same norm as new training data (LJ13).

Protocol: :mod:`jaxiap.workflows.attack_study` (docs/biased-sampling.md,
"Attack study"). Prints, per repetition and as mean +/- std (ddof 1) over the
repetitions, the held-out force RMSE (reduced LJ units) of the type-II BLR
surrogate fitted on the training energies alone, on train + attacked and on
train + random, the fraction of attacked structures whose sigma^2 rose, the
median sigma^2 ratio end/start and the true-energy change in attack-kT units.

Usage: ``python bench/attack_study.py [--repetitions 5] [--attack-kT 3.0] [--attack-energy true|surrogate]
[--label-forces] [--surrogate blr|nn-ensemble] [--n-train 6] [--epochs 600] [--json out.json]``

The NN-ensemble setting of the closing note: ``--surrogate nn-ensemble --label-forces --n-train 20
--repetitions 10``.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

import jaxiap  # noqa: F401  (enables float64)
from jaxiap.workflows.attack_study import AttackStudyConfig, attack_vs_random


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    d = AttackStudyConfig()
    p.add_argument("--repetitions", type=int, default=d.repetitions)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--attack-kT", type=float, default=d.attack_kT)
    p.add_argument("--attack-steps", type=int, default=d.attack_steps)
    p.add_argument("--attack-lr", type=float, default=d.attack_lr)
    p.add_argument("--attack-energy", default=d.attack_energy, choices=("true", "surrogate"))
    p.add_argument("--label-forces", action="store_true")
    p.add_argument("--surrogate", default=d.surrogate, choices=("blr", "nn-ensemble"))
    p.add_argument("--n-train", type=int, default=d.n_train)
    p.add_argument("--epochs", type=int, default=d.epochs, help="NN ensemble training epochs")
    p.add_argument("--hot-test-kT", type=float, default=d.hot_test_kT,
                   help="also score on snapshots at this kT (extrapolation; 0: none)")
    p.add_argument("--json", default=None, help="write the full result dict here")
    a = p.parse_args(argv)
    c = AttackStudyConfig(repetitions=a.repetitions, seed=a.seed, attack_kT=a.attack_kT, attack_steps=a.attack_steps,
                          attack_lr=a.attack_lr, attack_energy=a.attack_energy, label_forces=a.label_forces,
                          surrogate=a.surrogate, n_train=a.n_train, epochs=a.epochs,
                          hot_test_kT=a.hot_test_kT)
    out = attack_vs_random(c, progress=True)
    labels = "energies and forces" if c.label_forces else "energies"
    print(f"\nLJ13, surrogate {c.surrogate}, {c.n_train} training structures ({labels}) at kT={c.kT}, {c.n_attack} new structures, test: {c.n_test} "
          f"snapshots; attack kT={c.attack_kT}, {c.attack_steps} Adam steps, lr {c.attack_lr}, E = {c.attack_energy}")
    print(f"{'rep':>4} {'train-only':>11} {'attacked':>9} {'random':>9} {'rnd E-match':>11} {'s2 rose':>8} {'s2 ratio att':>13} "
          f"{'s2 ratio rnd':>13} {'dE/kT att':>16} {'dE/kT rnd':>16}")
    for i, r in enumerate(out["repetitions"]):
        f = r["force_rmse"]
        da, dr = np.asarray(r["dE_over_kT_attacked"]), np.asarray(r["dE_over_kT_random"])
        print(f"{i:>4} {f['train_only']:11.4f} {f['attacked']:9.4f} {f['random']:9.4f} "
              f"{f['random_energy_matched']:11.4f} "
              f"{r['variance_rose_fraction']:8.0%} {np.median(r['variance_ratio_attacked']):13.3g} "
              f"{np.median(r['variance_ratio_random']):13.3g} {da.min():7.2f}..{da.max():<7.2f}"
              f"{dr.min():7.2f}..{dr.max():<7.2f}")
    s = out["summary"]
    ms = lambda k: f"{s[k][0]:.4f} +/- {s[k][1]:.4f}"  # noqa: E731
    print(f"mean +/- std: train-only {ms('force_rmse_train_only')}, attacked {ms('force_rmse_attacked')}, "
          f"random {ms('force_rmse_random')}, energy-matched random {ms('force_rmse_random_energy_matched')}")
    print(f"attacked - random {ms('attacked_minus_random')} (attacked better in "
          f"{s['attacked_better_fraction']:.0%} of repetitions); attacked - energy-matched random "
          f"{ms('attacked_minus_random_energy_matched')} (better in {s['attacked_better_fraction_energy_matched']:.0%})")
    print(f"medians: train-only {s['force_rmse_median_train_only']:.4f}, "
          f"attacked {s['force_rmse_median_attacked']:.4f}, random {s['force_rmse_median_random']:.4f}, "
          f"energy-matched random {s['force_rmse_median_random_energy_matched']:.4f}; "
          f"sigma^2 rose for {s['variance_rose_fraction']:.0%} of the attacked structures; "
          f"|dE|/kT max: attacked {s['dE_over_kT_attacked']['max_abs']:.2f}, random "
          f"{s['dE_over_kT_random']['max_abs']:.2f}, energy-matched random "
          f"{s['dE_over_kT_random_energy_matched']['max_abs']:.2f}; failed fits {s['failed_fits']}; wall {s['wall_s']:.0f} s")
    if c.hot_test_kT:
        print(f"hot test set (kT={c.hot_test_kT}), force RMSE mean +/- std: train-only "
              f"{ms('force_rmse_hot_train_only')}, attacked {ms('force_rmse_hot_attacked')}, random "
              f"{ms('force_rmse_hot_random')}, energy-matched random {ms('force_rmse_hot_random_energy_matched')}")
        print(f"hot: attacked - random {ms('attacked_minus_random_hot')} (better in "
              f"{s['attacked_better_fraction_hot']:.0%}); attacked - energy-matched random "
              f"{ms('attacked_minus_random_energy_matched_hot')} (better in "
              f"{s['attacked_better_fraction_energy_matched_hot']:.0%}); per repetition (train-only, attacked, "
              f"random, energy-matched): " + "; ".join(
                  " ".join(f"{r['force_rmse_hot'][k]:.3f}" for k in ("train_only", "attacked", "random",
                                                                     "random_energy_matched"))
                  for r in out["repetitions"]))
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
