"""FLARE's Fig. 2 on EMT-labelled FCC Al: does the GP's own error estimate track its test error?

Vandermause et al., npj Comput. Mater. 6, 20 (2020), Fig. 2, with ASE's EMT
in place of DFT (:mod:`jaxiap.workflows.gp_error_tracking` has the protocol).
32-atom FCC Al cell, a = 4.046 Å, every coordinate perturbed uniformly by up
to delta of the lattice parameter; GP hyperparameters (sig2, l2[, sig3, l3],
sigma_n) optimised by the log marginal likelihood on all forces of ONE
delta = 5% structure.

(a) cutoff sweep: 2-body models over r_cut, 2+3-body models at r_cut = 6 Å
    over r_cut_3: the optimised noise sigma_n against the force RMSE on an
    independent delta = 5% structure;
(b) learning curve: training atoms added one at a time (incremental
    Cholesky updates, re-optimised at the recorded sizes): RMSE against the
    combined error sqrt(sigma_n^2 + V_mean), V_mean the mean predicted
    variance over the test force components;
(c) perturbation sweep: the delta = 5% model tested at delta = 1% ... 9%:
    RMSE, sqrt(V_mean) and the combined error.

Writes ``DIR/table.md`` (also printed), ``DIR/results.json`` and
``DIR/error_tracking.png`` (three panels), with the Pearson correlations of
sigma_n with the RMSE across cutoffs and of the combined error with the RMSE
across perturbations and along the learning curve. Default run ~7 minutes (403 s) on
2 cores at load 4-5; ``--quick`` (2 cutoffs of each kind, 3 perturbations, 3 curve
points, smaller cutoffs) a few minutes.

Usage: ``python bench/gp_error_tracking.py [--out bench/_work/gp_error_tracking] [--quick]
[--parts cutoff perturbation curve] [--n-test 1] [--max-iterations 50] [--optimizer plain|staged] [--seed 0]``
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's jaxiap
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import footer, header  # noqa: E402

import numpy as np  # noqa: E402

import jaxiap  # noqa: E402,F401  (float64)
from jaxiap.workflows import gp_error_tracking as et  # noqa: E402


def _model_name(model) -> str:
    rc, rc3 = model
    return f"2-body {rc:g} Å" if rc3 is None else f"2+3-body {rc:g}/{rc3:g} Å"


def figure(result: dict, path: Path) -> None:
    """Three panels: (a) sigma_n and RMSE against the cutoffs, (b) learning curve, (c) perturbation sweep."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [k for k in ("cutoff", "learning_curve", "perturbation") if result.get(k)]
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(4.6 * max(1, len(panels)), 3.9), squeeze=False)
    axes = list(axes[0])
    ax_iter = iter(axes)
    if result.get("cutoff"):
        ax = next(ax_iter)
        for model, key, color in (("2-body", "r_cut", "C0"), ("2+3-body", "r_cut_3", "C1")):
            rows = [r for r in result["cutoff"] if r["model"] == model]
            if not rows:
                continue
            x = [r[key] for r in rows]
            fixed = f" (r_cut {rows[0]['r_cut']:g} Å)" if model == "2+3-body" else ""
            ax.plot(x, [r["sigma_n"] for r in rows], "o-", color=color, label=f"{model} sigma_n, x = {key}{fixed}")
            ax.plot(x, [r["rmse"] for r in rows], "s:", color=color, label=f"{model} test RMSE")
        ax.set(xlabel="cutoff (Å)", ylabel="eV/Å", yscale="log", title="(a) optimised noise vs test RMSE")
        ax.legend(fontsize=7)
    if result.get("learning_curve"):
        ax = next(ax_iter)
        rows = result["learning_curve"]
        n = [r["n_atoms"] for r in rows]
        ax.plot(n, [r["rmse"] for r in rows], "s:", color="k", label="test RMSE")
        ax.plot(n, [r["combined"] for r in rows], "o-", color="C2", label="sqrt(sigma_n^2 + V_mean)")
        ax.plot(n, [r["sigma_n"] for r in rows], "--", color="C7", label="sigma_n")
        ax.set(xlabel="training atoms", ylabel="eV/Å", xscale="log", yscale="log",
               title=f"(b) learning curve ({_model_name(result['settings']['curve_model'])})")
        ax.legend(fontsize=7)
    if result.get("perturbation"):
        ax = next(ax_iter)
        rows = result["perturbation"]["rows"]
        d = [100 * r["delta"] for r in rows]
        ax.plot(d, [r["rmse"] for r in rows], "s:", color="k", label="test RMSE")
        ax.plot(d, [np.sqrt(r["v_mean"]) for r in rows], "o-", color="C3", label="sqrt(V_mean)")
        ax.plot(d, [r["combined"] for r in rows], "^-", color="C2", label="sqrt(sigma_n^2 + V_mean)")
        ax.axvline(100 * result["settings"]["train_delta"], color="C7", lw=0.8, ls="--")
        ax.set(xlabel="test perturbation delta (% of a)", ylabel="eV/Å", yscale="log",
               title=f"(c) trained at delta 5% ({_model_name(result['settings']['perturbation_model'])})")
        ax.legend(fontsize=7)
    fig.suptitle("GP error tracking, EMT FCC Al (32 atoms), FLARE Fig. 2 protocol", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "_work" / "gp_error_tracking")
    ap.add_argument("--quick", action="store_true", help="smoke-run sizes (numbers mean little)")
    ap.add_argument("--parts", nargs="+", default=["cutoff", "perturbation", "curve"],
                    choices=["cutoff", "perturbation", "curve"])
    ap.add_argument("--n-test", type=int, default=1, help="independent test structures per point (pooled)")
    ap.add_argument("--max-iterations", type=int, default=50, help="L-BFGS-B iterations per optimisation stage")
    ap.add_argument("--optimizer", choices=["plain", "staged"], default="plain",
                    help="plain: one optimize_hyperparameters call (staged only if it did not move); "
                         "staged: trust-box stages (gp_error_tracking.optimize_in_stages)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    header("gp_error_tracking")
    t0 = time.perf_counter()
    common = dict(n_test=args.n_test, max_iterations=args.max_iterations, seed=args.seed, optimizer=args.optimizer)
    settings = et.quick_settings(**common) if args.quick else et.ErrorTrackingSettings(**common)
    print(f"# settings: {settings}", flush=True)

    def progress(msg):
        print(f"# [{time.perf_counter() - t0:7.1f} s] {msg}", flush=True)

    result = et.error_tracking_study(settings, parts=tuple(args.parts), progress=progress)
    result["wall_s"] = time.perf_counter() - t0
    table = et.report_markdown(result)
    print()
    print(table)
    print("timing (s): " + ", ".join(f"{k} {v:.0f}" for k, v in result["timing"].items()))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "table.md").write_text(table + "\n")
    (args.out / "results.json").write_text(json.dumps(result, indent=1, default=float) + "\n")
    figure(result, args.out / "error_tracking.png")
    print(f"# wrote {args.out / 'table.md'}, {args.out / 'results.json'}, {args.out / 'error_tracking.png'}")
    footer(time.perf_counter() - t0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
