"""Samplers that generate configurations worth labelling, compared (docs/generation.md).

Three studies, each a function of the library run as written here:

- ``mb``: Müller–Brown, force evaluations until all three minima have been
  visited and the test error of a surrogate trained on each method's
  configurations (:func:`jaxiap.workflows.discovery_mb.run_mb_discovery`);
- ``lj13``: distinct LJ13 minima found per force evaluation at kT = 0.20
  (:func:`jaxiap.workflows.discovery_lj13.run_lj13_discovery`);
- ``al``: ``jaxiap lj13-al --no-frt`` learning curves with candidates from
  the fixed pool and from each generator, and the labelled-set size to reach
  the study's force threshold relative to random selection from the pool.

Usage: ``python bench/generation.py mb lj13 al`` (any subset; ``--quick`` for a
smoke run at small sizes). Results: JSON in ``bench/_work/generation/``,
tables on stdout, figures ``bench/figures/generation_*.png``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import checkout, load, machine, now  # noqa: E402

HERE = Path(__file__).resolve().parent
WORK = HERE / "_work" / "generation"
FIGS = HERE / "figures"


def _header(name):
    print(f"## {name}: {now()}, {machine()}, checkout {checkout()}, load {load()}", flush=True)


def _fmt(v, spec=".3g"):
    return "n/a" if v is None else format(v, spec)


def run_mb(quick: bool):
    import jaxiap  # noqa: F401  (float64)
    from jaxiap.workflows.discovery_mb import MBDiscoveryConfig, run_mb_discovery

    cfg = MBDiscoveryConfig(repetitions=2, budget=8_000) if quick else MBDiscoveryConfig()
    _header("Müller–Brown")
    res = run_mb_discovery(cfg, progress=True)
    print(f"\nkT {cfg.kT}, budget {cfg.budget} force evaluations, {cfg.repetitions} repetitions; surrogate RMSE "
          f"before any method: {np.mean(res['initial_surface_rmse']):.3g}")
    print("| method | runs that found all 3 minima | force evals to all 3 (per run) | surrogate RMSE mean +- s.e. "
          "(per run) | wall s |")
    print("|---|---|---|---|---|")
    for m, d in res["methods"].items():
        per = ", ".join(_fmt(v, "d") for v in d["evals_to_all_minima"])
        rm = ", ".join(f"{v:.3g}" for v in d["surface_rmse"])
        print(f"| {m} | {d['found_all_fraction']:.2f} | {per} | {d['surface_rmse_mean']:.3g} +- "
              f"{_fmt(d['surface_rmse_sem'])} ({rm}) | {d['wall_s']:.1f} |")
    print(f"load after: {load()}")
    _save("mb", res)
    return res


def run_lj13(quick: bool):
    import jaxiap  # noqa: F401
    from jaxiap.workflows.discovery_lj13 import LJ13DiscoveryConfig, run_lj13_discovery

    cfg = LJ13DiscoveryConfig(repetitions=1, budget=16_000) if quick else LJ13DiscoveryConfig()
    _header("LJ13 minima discovery")
    res = run_lj13_discovery(cfg, progress=True)
    print(f"\nkT {cfg.kT}, budget {cfg.budget} force evaluations, {cfg.repetitions} repetitions")
    print("| method | distinct minima (per run) | per 1000 force evals | evaporated frames | lowest minima found | "
          "wall s |")
    print("|---|---|---|---|---|---|")
    for m, d in res["methods"].items():
        low = ", ".join(f"{e:.2f}" for e in d["lowest_energies"][0][:5])
        print(f"| {m} | {', '.join(str(v) for v in d['n_minima'])} | {d['minima_per_1000_evals']:.3g} | "
              f"{np.mean(d['evaporated_fraction']):.2f} | {low} | {d['wall_s']:.1f} |")
    print(f"load after: {load()}")
    _save("lj13", res)
    _discovery_figure(res, FIGS / "generation_lj13_discovery.png")
    return res


def run_al(quick: bool):
    import jaxiap  # noqa: F401
    from jaxiap.workflows.lj13_al import run_lj13_al
    from jaxiap.workflows.lj13_al_config import GENERATOR_NAMES, LJ13ALConfig

    _header("lj13-al learning curves per generator")
    preset = "tiny" if quick else "cpu"
    rows, curves = {}, {}
    for g in GENERATOR_NAMES:
        cfg = LJ13ALConfig.from_preset(preset, generator=g, strategies=("random", "uncertainty"), frt=False)
        t0 = time.perf_counter()
        s = run_lj13_al(cfg, WORK / f"al-{g}", progress=False)
        wall = time.perf_counter() - t0
        for name, d in s["strategies"].items():
            rows[g, name] = (d["n_to_force_threshold"], d["force_rmse_relative"]["mean"][-1],
                             (s["generator"]["surrogate_force_evals"] or {}).get(name, [0])[-1], wall)
            curves[g, name] = (s["n_labelled"], d["force_rmse_relative"]["mean"])
        print(f"[bench] {g}: {wall:.0f} s", flush=True)
    base = rows["pool", "random"][0]
    print(f"\nthreshold: {cfg.threshold_factor} x the full-pool fit's relative force error "
          f"(n_labelled {s['n_labelled'][0]}..{s['n_labelled'][-1]}, {cfg.repetitions} repetitions)")
    print("| generator | strategy | n to threshold | relative to random from the pool | final rel. force error | "
          "surrogate force evals | wall s |")
    print("|---|---|---|---|---|---|---|")
    for (g, name), (n, err, ev, wall) in rows.items():
        rel = None if n is None or base is None else n / base
        print(f"| {g} | {name} | {_fmt(n, 'd')} | {_fmt(rel, '.2f')} | {err:.3g} | {ev:.3g} | {wall:.0f} |")
    print(f"load after: {load()}")
    _save("al", {f"{g}/{n}": {"n_to_threshold": v[0], "final_error": v[1], "force_evals": v[2]}
                 for (g, n), v in rows.items()})
    _al_figure(curves, FIGS / "generation_al_curves.png")


def _save(name, res):
    WORK.mkdir(parents=True, exist_ok=True)
    (WORK / f"{name}.json").write_text(json.dumps(res, indent=1, default=float))


def _discovery_figure(res, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for m, d in res["methods"].items():
        xs, ys = d["curves"][0]
        ax.step([0] + xs + [res["config"]["budget"]], [0] + ys + [ys[-1] if ys else 0], where="post", label=m)
    ax.set_xlabel("force evaluations")
    ax.set_ylabel("distinct minima (quenched, true LJ)")
    ax.set_title(f"LJ13 at kT = {res['config']['kT']}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    print(f"figure: {path}")


def _al_figure(curves, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True)
    for ax, strategy in zip(axes, ("random", "uncertainty")):
        for (g, name), (n, err) in curves.items():
            if name == strategy:
                ax.semilogy(n, err, marker="o", ms=3, label=g)
        ax.set_title(f"strategy: {strategy}")
        ax.set_xlabel("labelled configurations")
    axes[0].set_ylabel("held-out force RMSE / std")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    print(f"figure: {path}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("studies", nargs="+", choices=("mb", "lj13", "al"))
    p.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    args = p.parse_args(argv)
    for s in args.studies:
        {"mb": run_mb, "lj13": run_lj13, "al": run_al}[s](args.quick)


if __name__ == "__main__":
    main()
