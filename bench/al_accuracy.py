"""Accuracy on EMT aluminium: radial 2-body vs linear ACE (body order 2-4) vs the 2+3-body GP (issue 16).

Data: Langevin snapshots labelled by ASE's EMT (a = 4.046 Å): FCC at 300,
600 and 900 K (108 atoms), a vacancy at 600 K (107), an fcc(100) slab at
600 K (96 atoms, 6 Å of vacuum each side) and the liquid at 2500 K (108);
per category 12 training and 6 test snapshots, 0.1 ps apart, fixed seeds.
Generated once (~2.5 min on 2 loaded cores) and cached in ``--work``.

Models (:mod:`jaxiap.workflows.al_accuracy` has the details): radial
Chebyshev bases and ACE bases at several sizes, r_cut 5.5 Å, each with a
per-atom reference column, fitted by type-II maximum-likelihood Bayesian
linear regression (log evidence reported); Bayesian compressive sensing
chooses a subset of the largest ACE basis (then BLR on it); the 2+3-body GP
of the on-the-fly study (r_cut 5.4, r_cut_3 3.2 Å) on a subset of the
training forces, tested on a subset of the test structures.

Prints the markdown tables, writes ``--json`` and the figure
``bench/figures/al_accuracy.png`` (test force RMSE against the number of
basis functions).

The horseshoe on the largest ACE basis (Gibbs sampler on the QR-compressed
rows, started at the BLR fit): ``--horseshoe`` adds it to the study,
``--horseshoe-only`` runs it alone (data and that basis's rows cached in
``--work``; ~1 min of rows on the first run).

    python bench/al_accuracy.py [--json out.json] [--figure PATH] [--work DIR] [--no-gp] [--blas-threads N] [--quick]
                                [--horseshoe | --horseshoe-only] [--horseshoe-method gibbs|nuts|svi]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # this checkout's jaxiap
sys.path.insert(0, HERE)
from _blas import set_blas_threads_from_argv  # noqa: E402  (imports no numpy)

set_blas_threads_from_argv(sys.argv[1:], default="1")  # before numpy loads OpenBLAS

import jaxiap  # noqa: F401, E402  (float64)
from _common import footer, header  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", default=None, help="write the full result here")
    ap.add_argument("--figure", default=os.path.join(HERE, "figures", "al_accuracy.png"))
    ap.add_argument("--work", default=os.path.join(HERE, "_work", "al_accuracy"), help="data cache folder")
    ap.add_argument("--no-gp", action="store_true", help="skip the GP")
    ap.add_argument("--blas-threads", type=int, default=1,
                    help="numpy BLAS threads (default 1: on 2 shared cores threaded OpenBLAS made the BCS search "
                         "80x slower and the GP's small factorisations slower)")
    ap.add_argument("--quick", action="store_true", help="smoke run (32-atom cells, tiny bases; numbers mean nothing)")
    ap.add_argument("--horseshoe", action="store_true", help="add the horseshoe on the largest ACE basis")
    ap.add_argument("--horseshoe-only", action="store_true",
                    help="run only the horseshoe on the largest ACE basis (and its BLR fit)")
    ap.add_argument("--horseshoe-method", default="gibbs", choices=("gibbs", "nuts", "svi"))
    args = ap.parse_args(argv)
    t_all = time.perf_counter()
    header("al_accuracy")
    print(f"# numpy BLAS threads: {os.environ['OPENBLAS_NUM_THREADS']}", flush=True)

    from jaxiap.workflows.al_accuracy import (AccuracySettings, plot_accuracy, quick_settings, report_horseshoe,
                                              report_markdown, run_horseshoe, run_study)

    opts = dict(gp=not args.no_gp, horseshoe=args.horseshoe or args.horseshoe_only,
                horseshoe_method=args.horseshoe_method)
    settings = quick_settings(**opts) if args.quick else AccuracySettings(**opts)
    if args.horseshoe_only:
        res = run_horseshoe(settings, args.work, progress=True)
        b = res["blr_test"]
        print(f"\nBLR on the same basis: test E {b['energy_meV_atom']:.2f} meV/atom, F {b['force_meV_A']:.1f} meV/Å, "
              f"sigma_F {1e3 * res['blr_sigma_force']:.1f} meV/Å; rows and data {res['rows_seconds']:.0f} s, "
              f"total {res['wall_seconds']:.0f} s\n")
        print(report_horseshoe(res))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(res, f, indent=1, default=float)
            print(f"# wrote {args.json}")
        footer(time.perf_counter() - t_all)
        return 0
    result = run_study(settings, args.work, progress=True)
    result["wall_seconds"] = time.perf_counter() - t_all
    n_cat = len(settings.categories)
    print(f"\n{result['n_train']} training structures ({settings.n_train} per category, "
          f"{result['n_train_force_rows']} force rows), {result['n_test']} test structures ({settings.n_test} per "
          f"category); atoms per category {result['atoms_per_category']}; r_cut {settings.r_cut} Å; "
          "timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in result["timings"].items())
          + f"; {n_cat} categories\n")
    print(report_markdown(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1, default=float)
        print(f"# wrote {args.json}")
    if args.figure:
        os.makedirs(os.path.dirname(os.path.abspath(args.figure)), exist_ok=True)
        plot_accuracy(result, args.figure)
        print(f"# wrote {args.figure}")
    footer(time.perf_counter() - t_all)
    return 0


if __name__ == "__main__":
    sys.exit(main())
