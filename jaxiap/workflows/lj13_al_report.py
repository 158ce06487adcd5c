"""Summary, figures and report.md of the LJ13 active-learning study (:mod:`jaxiap.workflows.lj13_al`)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from jaxiap import plots, runfolder
from jaxiap.active.dpp import inclusion_probabilities
from jaxiap.active.dpp_kernels import quality_diversity_kernel
from jaxiap.active.strategies import default_lengthscale, pool_features


# ----------------------------------------------------------------------------- summary


def first_reaching(n, values, threshold):
    """Smallest n with values <= threshold (values NaN are skipped); None if never."""
    for x, v in zip(n, values):
        if v is not None and np.isfinite(v) and v <= threshold:
            return int(x)
    return None


def _band(a):
    a = np.asarray(a, float)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns (no FRT events) give NaN -> null
        return {"mean": np.nanmean(a, axis=0).tolist(), "min": np.nanmin(a, axis=0).tolist(),
                "max": np.nanmax(a, axis=0).tolist()}


def _threshold_table(config, n_lab, curves, full_err) -> dict:
    """{factor: {"threshold", "n": {strategy: n or None}, "relative_to_random": {...}}} on the mean curves."""
    table = {}
    for f in sorted({config.threshold_factor, *config.extra_threshold_factors}):
        thr = f * full_err["force_rmse_relative"]
        n = {name: first_reaching(n_lab, _band(curves[name])["mean"], thr) for name in config.strategies}
        base = n.get("random")
        table[f"{f:g}"] = {"threshold": thr, "n": n,
                           "relative_to_random": {k: None if v is None or base is None else v / base
                                                  for k, v in n.items()}}
    return table


def build_summary(config, n_lab, curves, qoi_curves, full_err, hyper, frt, picks_kT, n_pool, n_test) -> dict:
    """The JSON-ready summary of the study (summary.json without the wall times).

    n_lab (T+1,) labelled-set sizes; curves / qoi_curves: {strategy: (repetitions, T+1)} held-out force
    errors and QoI errors; full_err: the full-pool fit's errors; hyper: its hyperparameters; frt: the
    result of :func:`jaxiap.workflows.lj13_al.run_frt_checkpoints` or None; picks_kT: {strategy: mean
    pool temperature of the picks}; n_pool, n_test: data sizes.
    """
    thr_f = config.threshold_factor * full_err["force_rmse_relative"]
    strategies = {}
    for name in config.strategies:
        band = _band(curves[name])
        strategies[name] = {"force_rmse_relative": band,
                            "n_to_force_threshold": first_reaching(n_lab, band["mean"], thr_f),
                            "n_to_force_threshold_per_rep": [first_reaching(n_lab, c, thr_f) for c in curves[name]],
                            "mean_pool_kT_of_picks": picks_kT[name]}
    out = {
        "study": "lj13-al",
        "data": {"n_pool": n_pool, "pool_kTs": list(config.pool_kTs), "n_test": n_test, "kT": config.kT,
                 "labels": config.labels},
        "fit": {"basis": config.basis, "basis_size": config.basis_size, "r_min": config.r_min, "r_cut": config.r_cut,
                "posterior": "BLR, fixed type-II (full pool) hyperparameters", **hyper},
        "loop": {"n_initial": config.n_initial, "batch_size": config.batch_size,
                 "n_iterations": config.n_iterations, "repetitions": config.repetitions},
        "n_labelled": np.asarray(n_lab).tolist(),
        "full_pool": {**full_err},
        "force_threshold": thr_f,
        "threshold_factor": config.threshold_factor,
        "force_thresholds": _threshold_table(config, n_lab, curves, full_err),
        "strategies": strategies,
    }
    if frt is not None:
        ks_full = frt["full_pool"]["ks"]
        thr_ks = max(config.frt_threshold_factor * ks_full, config.frt_error_floor)
        out["frt"] = {"true": frt["true"], "full_pool": frt["full_pool"], "t_censor": frt["t_censor"],
                      "checkpoints": list(config.frt_checkpoints), "n_seeds": config.n_seeds,
                      "ks_threshold": thr_ks, "ks_floor": config.frt_error_floor,
                      "ks_factor": config.frt_threshold_factor}
        for name in config.strategies:
            per = [[frt["per_run"][name, rep, c] for c in config.frt_checkpoints] for rep in range(config.repetitions)]
            ks = np.array([[e["ks"] for e in row] for row in per])
            rel = np.array([[np.nan if e["frt_mean_rel_error"] is None else e["frt_mean_rel_error"] for e in row]
                            for row in per])
            band = _band(ks)
            strategies[name]["frt_ks"] = band
            strategies[name]["frt_mean_rel_error"] = _band(rel)
            strategies[name]["qoi_md_error"] = _band([[np.nan if e["qoi_md_error"] is None else e["qoi_md_error"]
                                                      for e in row] for row in per])
            strategies[name]["frt_failed_runs"] = int(sum(e["n_failed"] for row in per for e in row))
            strategies[name]["n_to_frt_threshold"] = first_reaching(config.frt_checkpoints, band["mean"], thr_ks)
    for key, rel in (("n_to_force_threshold", "relative_to_random_force"),
                     ("n_to_frt_threshold", "relative_to_random_frt")):
        base = strategies.get("random", {}).get(key)
        for name in config.strategies:
            if key in strategies[name]:
                v = strategies[name][key]
                strategies[name][rel] = None if v is None or base is None else v / base
    for name in config.strategies:
        strategies[name]["qoi_error"] = _band(qoi_curves[name])
    return out



# ----------------------------------------------------------------------------- figures and report


#: RBF lengthscale of the inclusion-probability figure, as a multiple of the median pairwise distance
#: (at 1x every frame of an MD series looks alike and K_ii is flat; 0.3x resolves excursions)
SERIES_LENGTHSCALE_FACTOR = 0.3


def inclusion_probability_series(basis, series, quality=None, lengthscale=None):
    """DPP inclusion probabilities K_ii (T,) over an MD time series of T frames.

    L_ij = q_i k(phi_i, phi_j) q_j with phi the standardised pair features,
    uniform quality by default, and an RBF lengthscale of
    SERIES_LENGTHSCALE_FACTOR x the median pairwise distance unless given.
    """
    phi = pool_features(basis, series.structures)
    ls = SERIES_LENGTHSCALE_FACTOR * default_lengthscale(phi) if lengthscale is None else lengthscale
    q = np.ones(len(series)) if quality is None else np.asarray(quality)
    return np.asarray(inclusion_probabilities(quality_diversity_kernel(phi, q, ls)))


def write_figures(out: Path, config, n_lab, curves, qoi_curves, full_err, frt, basis, series, summary) -> None:
    """learning_curves.png, qoi_learning_curves.png, frt_learning_curves.png (with FRT) and
    inclusion_probability.png in ``out``."""
    plots.learning_curves(n_lab, curves, out / "learning_curves.png", ylabel="held-out force RMSE / force std",
                          reference=full_err["force_rmse_relative"], threshold=summary["force_threshold"],
                          logy=True, title=f"LJ13 active learning ({config.labels} labels, "
                                           f"{config.repetitions} repetitions, min-max band)")
    plots.learning_curves(n_lab, qoi_curves, out / "qoi_learning_curves.png", logy=True,
                          ylabel="|error of mean potential energy| per atom (kT test set)",
                          reference=full_err["qoi_error"], title="QoI error (canonical mean energy at kT)")
    if frt is not None:
        ks = {name: np.array([[frt["per_run"][name, rep, c]["ks"] for c in config.frt_checkpoints]
                              for rep in range(config.repetitions)]) for name in config.strategies}
        plots.learning_curves(np.asarray(config.frt_checkpoints), ks, out / "frt_learning_curves.png",
                              ylabel="FRT KS distance to true LJ", reference=frt["full_pool"]["ks"],
                              threshold=summary["frt"]["ks_threshold"], title=f"FRT error ({config.n_seeds} seeds)")
    incl = inclusion_probability_series(basis, series)
    t = np.arange(len(series)) * config.series_every * config.dt
    plots.inclusion_probability_trace(t, incl, np.asarray(series.energy), out / "inclusion_probability.png")
    import matplotlib.pyplot as plt  # lazy: matplotlib only for figures

    plt.close("all")


def _div(x, d):
    return None if x is None else x / d


def _fmt(x, spec=".3g"):
    if x is None:
        return "n/a"
    return format(x, spec)


def _picks(kTs) -> str:
    return "n/a (generated)" if kTs is None else ", ".join(f"{v:.2f}" for v in kTs[:6])


def _generator_text(s: dict) -> str:
    g = s.get("generator") or {"name": "pool"}
    if g["name"] == "pool":
        return "Candidates: the fixed pool."
    evals = g.get("surrogate_force_evals") or {}
    per = ", ".join(f"{k} {v[-1]:.3g}" for k, v in evals.items())
    return (f"Candidates: {g['n_candidates']} generated per iteration by `{g['name']}` on the current surrogate "
            f"(docs/generation.md), from labelled configurations; surrogate force evaluations by the end "
            f"(mean over repetitions): {per}. The pool is used only for the initial sets and the full-pool "
            "reference fit.")


def write_report(out: Path, s: dict) -> None:
    """report.md in ``out`` from the summary ``s`` of :func:`jaxiap.workflows.lj13_al.run_lj13_al`."""
    rows = []
    for name, d in s["strategies"].items():
        f = d["force_rmse_relative"]["mean"]
        rows.append(f"| {name} | {_fmt(f[len(f) // 2])} | {_fmt(f[-1])} | {_fmt(d['qoi_error']['mean'][-1])} | "
                    f"{_fmt(d['n_to_force_threshold'], 'd')} | "
                    f"{_fmt(d.get('relative_to_random_force'), '.2f')} | "
                    f"{_fmt(d['frt_ks']['mean'][-1]) if 'frt_ks' in d else 'n/a'} | "
                    f"{_fmt(d['qoi_md_error']['mean'][-1]) if 'qoi_md_error' in d else 'n/a'} | "
                    f"{_fmt(d.get('n_to_frt_threshold'), 'd')} | {_fmt(d.get('relative_to_random_frt'), '.2f')} | "
                    f"{_picks(d['mean_pool_kT_of_picks'])} |")
    n = s["n_labelled"]
    frt_text = "FRT evaluation was switched off (--no-frt)."
    if "frt" in s:
        fr = s["frt"]
        frt_text = (f"FRT ensembles at n_labelled in {fr['checkpoints']}, {fr['n_seeds']} seeds, censoring at "
                    f"{fr['t_censor']:.3g} tau. True LJ mean FRT {_fmt(fr['true']['frt_mean'])} tau; full-pool fit "
                    f"KS {fr['full_pool']['ks']:.3f}, mean FRT {_fmt(fr['full_pool']['frt_mean'])}. MD QoI: mean potential energy "
                    f"per atom sampled along the same runs up to each run's first rearrangement, so it mixes the energy with the "
                    f"FRT (true {_fmt(_div(fr['true']['md_mean_energy'], 13))}); "
                    f"its error per atom is the 'MD QoI err' column (full-pool fit {_fmt(fr['full_pool']['qoi_md_error'])}). "
                    f"FRT threshold: KS <= {fr['ks_threshold']:.3f} (the full-pool fit's KS times {fr['ks_factor']}, "
                    f"at least the floor {fr['ks_floor']}).\n\n![FRT learning curves](frt_learning_curves.png)")
    text = f"""# LJ13 active learning: strategies compared

Pool: {s['data']['n_pool']} unlabelled LJ13 MD snapshots at kT in {s['data']['pool_kTs']}; test: {s['data']['n_test']}
snapshots at kT = {s['data']['kT']}. Labels: {s['data']['labels']} (true LJ oracle, only selected structures).
Potential: {s['fit']['basis']} pair basis, {s['fit']['basis_size']} functions on [{s['fit']['r_min']}, {s['fit']['r_cut']}];
{s['fit']['posterior']} (sigma_E = {s['fit']['sigma_energy']:.3g}, prior scale = {s['fit']['prior_scale']:.3g}).
Loop: {s['loop']['n_initial']} random initial configurations, {s['loop']['batch_size']} per iteration,
{s['loop']['n_iterations']} iterations, {s['loop']['repetitions']} repetitions (n_labelled {n[0]}..{n[-1]}).
{_generator_text(s)}

Full-pool fit: held-out force RMSE / std = {s['full_pool']['force_rmse_relative']:.4g}; threshold = {s['force_threshold']:.4g}
({s['threshold_factor']} x the full-pool error).

| strategy | force err @ n={n[len(n) // 2]} | @ n={n[-1]} | QoI err @ n={n[-1]} | n to force thr. | vs random | FRT KS (last) | MD QoI err (last) | n to FRT thr. | vs random | mean pool kT of picks |
|---|---|---|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}

Labelled-set size to reach other force thresholds (multiples of the full-pool error; n/a = not reached by n={n[-1]}):

| factor | threshold | {' | '.join(s['strategies'])} |
|---|---|{'---|' * len(s['strategies'])}
{chr(10).join(f"| {f} | {t['threshold']:.3g} | " + ' | '.join(_fmt(t['n'][k], 'd') for k in s['strategies']) + ' |' for f, t in s['force_thresholds'].items())}

"vs random": labelled-set size to reach the threshold divided by random's (smaller is better;
n/a when either never reached it). Thresholds are judged on the mean curve over repetitions.

![learning curves](learning_curves.png)

QoI error: |predicted - true| mean potential energy per atom over the test snapshots at kT (the quantity the
"qoi" strategy's C-optimal design targets); full-pool fit {_fmt(s['full_pool']['qoi_error'])}.

![QoI learning curves](qoi_learning_curves.png)

{frt_text}

DPP inclusion probabilities K_ii (uniform quality, RBF on standardised pair features with lengthscale
{SERIES_LENGTHSCALE_FACTOR} x the median pairwise distance) over one MD trajectory at kT, potential energy above:

![inclusion probabilities](inclusion_probability.png)

Wall time per stage (s), one line per call of the study on this folder (later calls resume):

{chr(10).join('- ' + ', '.join(f'{k} {v:.1f}' for k, v in h.items()) for h in s.get('wall_time_history', [])) or 'n/a'}
"""
    runfolder.write_text(out / "report.md", text)
