"""Figures and report.md of ``jaxiap fit`` and ``jaxiap sweep``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from jaxiap import plots, runfolder
from jaxiap.uq.metrics import calibration_curve


def _fmt(x, spec=".3g"):
    if x is None:
        return "n/a"
    if isinstance(x, float) and not np.isfinite(x):
        return "n/a"
    return format(x, spec)


# ----------------------------------------------------------------------------- fit


def write_fit_figures(out: Path, sets: dict, preds: dict, metrics: dict, noise_var: float,
                      force_weight: float) -> None:
    """parity.png (energy per atom, force components; train and held out) and calibration.png."""
    plt = plots._plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.5))
    for k, (name, (ds, _)) in enumerate(sets.items()):
        energy, energy_std, forces, forces_std = preds[name]
        mask = np.asarray(ds.structures.mask)
        n = mask.sum(axis=1)
        e_ref, e_pred = np.asarray(ds.energy) / n, energy / n
        f_ref, f_pred, f_std = np.asarray(ds.forces)[mask].ravel(), forces[mask].ravel(), forces_std[mask].ravel()
        m = metrics[name]
        axes[0].errorbar(e_ref, e_pred, yerr=energy_std / n, fmt="o", ms=3, lw=0.8, color=f"C{k}", alpha=0.7,
                         label=f"{name}: RMSE {m['energy_rmse_per_atom']:.3g}")
        axes[1].errorbar(f_ref, f_pred, yerr=f_std, fmt=".", ms=2, lw=0.5, color=f"C{k}", alpha=0.5,
                         label=f"{name}: RMSE {m['force_rmse']:.3g}")
    for ax, what in ((axes[0], "energy per atom (eV)"), (axes[1], "force component (eV/Å)")):
        lo, hi = ax.get_xlim()
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        ax.set(xlabel=f"reference {what}", ylabel=f"predicted {what}")
        ax.legend(fontsize=8)
    axes[0].set_title("error bars: predicted std (model)")
    fig.tight_layout()
    plots._save(fig, out / "parity.png")
    plt.close(fig)

    name = "held_out" if "held_out" in sets else "train"
    ds, _ = sets[name]
    _, _, forces, forces_std = preds[name]
    mask = np.asarray(ds.structures.mask)
    w = np.repeat((force_weight * np.asarray(ds.force_weight))[:, None], mask.shape[1], axis=1)[mask]
    w3 = np.repeat(w, 3)
    fitted = w3 > 0
    mean, std = forces[mask].ravel()[fitted], forces_std[mask].ravel()[fitted]
    y = np.asarray(ds.forces)[mask].ravel()[fitted]
    total = np.sqrt(std**2 + noise_var / w3[fitted])
    fig, ax = plt.subplots(figsize=(4.8, 4.5))
    ax.plot([0, 1], [0, 1], "k:", lw=1, label="ideal")
    for s, label, style in ((total, "std incl. noise", "-"), (std, "model std only", "--")):
        if np.all(s > 0):
            p, obs = calibration_curve(mean, s, y)
            ax.plot(p, obs, style, label=label)
    ax.set(xlabel="expected fraction in centred interval", ylabel="observed fraction",
           title=f"force components, {name.replace('_', '-')} set")
    ax.legend(fontsize=8)
    fig.tight_layout()
    plots._save(fig, out / "calibration.png")
    plt.close(fig)


def write_fit_report(out: Path, s: dict, config) -> None:
    """report.md of a fit from its summary dict."""
    d, m = s["data"], s["model"]
    rows = []
    for name in ("train", "held_out"):
        e = s.get(name)
        if e is None:
            continue
        stress = _fmt(e.get("stress_rmse"), ".3g") if "stress_rmse" in e else "n/a"
        rows.append(f"| {name.replace('_', '-')} | {e['n_structures']} | {e['energy_rmse_per_atom']:.4g} | "
                    f"{e['energy_mae_per_atom']:.4g} | {e['force_rmse']:.4g} | {e['force_mae']:.4g} | {stress} |")
    c = (s.get(s["calibration_set"]) or {}).get("calibration_forces") or {}
    cal = "no force rows to calibrate" if not c else f"""| | within 1 std | within 2 std |
|---|---|---|
| Gaussian ideal | {c['expected_within_1std']:.3f} | {c['expected_within_2std']:.3f} |
| predicted std incl. noise | {c['within_1std']:.3f} | {c['within_2std']:.3f} |
| model std only | {c['within_1std_model_only']:.3f} | {c['within_2std_model_only']:.3f} |

Miscalibration area {c['miscalibration_area']:.3f} (0 ideal, 0.5 worst), Gaussian NLL {c['nll']:.3f},
recalibration scale {c['recalibration_scale']:.3g} (the factor that would make the stds fit these errors best;
1 ideal), over {c['n_components']} force components. RMS predicted std {c['rms_predicted_std']:.3g} eV/Å
(model {c['rms_model_std']:.3g}, noise {c['noise_std']:.3g})."""
    opts = ", ".join(f"{k} = {v:.4g}" if isinstance(v, float) else f"{k} = {v}" for k, v in m["options"].items())
    refs = ", plus one reference-energy column per species" if m["species_reference"] else ""
    e_cal = (s.get(s["calibration_set"]) or {}).get("calibration_energy_model_only", {})
    text = f"""# jaxiap fit: {Path(d['path']).name}

Data: `{d['path']}` (SHA-256 {d['sha256'][:12]}...), {d['n_structures']} structures
({'periodic' if d['periodic'] else 'free clusters'}, up to {d['n_atoms_max']} atoms, species {', '.join(d['species'])},
{d['n_with_stress']} with stress); {d['n_train']} for training, {d['n_held_out']} held out (seed {config.seed}).

Model: descriptor `{m['descriptor']}` ({opts}){refs};
K = {m['n_features']} coefficients; solver `{m['solver']}` -> {m['posterior_kind']} posterior, noise std per unit
row weight {m['noise_std_unit_weight']:.3g}; {m['n_weighted_rows']} weighted rows (weights: energy per atom
{config.energy_weight}, forces {config.force_weight}, stress {config.stress_weight}).

## Errors

| set | structures | energy RMSE / atom (eV) | energy MAE / atom | force RMSE (eV/Å) | force MAE | stress RMSE (eV/Å³) |
|---|---|---|---|---|---|---|
{chr(10).join(rows)}

![parity](parity.png)

## Calibration of the predicted force std ({s['calibration_set'].replace('_', '-')} set)

{cal}

Energy stds are the model (push-forward) part only: the fraction of {s['calibration_set'].replace('_', '-')} energies
within 1 / 2 model stds is {_fmt(e_cal.get('within_1std'))} / {_fmt(e_cal.get('within_2std'))}.

![calibration](calibration.png)

Files: `posterior.npz` and `model.json` (the model: `jaxiap predict {out} STRUCTURES.xyz --out predicted.xyz`,
`jaxiap sweep {out} START.xyz --out SWEEP`), `summary.json` (every number above), `config.toml` (the settings:
`jaxiap fit --config config.toml --out NEW` refits).

Wall time per stage (s): {', '.join(f'{k} {v:.1f}' for k, v in s.get('wall_time_s', {}).items())}
"""
    runfolder.write_text(out / "report.md", text)


# ----------------------------------------------------------------------------- sweep


def write_sweep_figures(out: Path, r, rdf, valid, split_rdf, pe, rdf_label: str) -> None:
    """rdf.png (mean RDF with the parametric and total bands, per-sample means) and pe.png."""
    plt = plots._plt()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    m = rdf.shape[0]
    for i in range(m):
        ok = valid[i]
        if ok.any():
            ax.plot(r, rdf[i][ok].mean(axis=0), lw=0.6, color="0.6", alpha=0.8,
                    label="mean of each posterior sample" if i == 0 else None)
    mean = split_rdf["mean"]
    tot, par = np.sqrt(split_rdf["total"]), np.sqrt(split_rdf["parametric"])
    ax.fill_between(r, mean - 2 * tot, mean + 2 * tot, color="C0", alpha=0.15, label="±2 std, total (one trajectory)")
    ax.fill_between(r, mean - 2 * par, mean + 2 * par, color="C3", alpha=0.35, label="±2 std, parametric")
    ax.plot(r, mean, color="C0", lw=1.5, label="mean")
    ax.set(xlabel="r (Å)", ylabel=rdf_label)
    ax.legend(fontsize=8)
    fig.tight_layout()
    plots._save(fig, out / "rdf.png")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.0, 3.8))
    for i in range(pe.shape[0]):
        ok = valid[i]
        ax.plot(np.full(ok.sum(), i), pe[i][ok], "o", ms=3, color="C0", alpha=0.6)
        if ok.any():
            ax.plot([i - 0.3, i + 0.3], [pe[i][ok].mean()] * 2, color="C3", lw=1.5)
    ax.set(xlabel="posterior sample", ylabel="mean potential energy per atom (eV)",
           title="each dot: one trajectory (thermostat seed); bar: the sample's mean")
    fig.tight_layout()
    plots._save(fig, out / "pe.png")
    plt.close(fig)


def _split_row(name, v, unit):
    return (f"| {name} | {_fmt(v['mean'], '.5g')} | {_fmt(v['total'])} | {_fmt(v['thermal'])} | "
            f"{_fmt(v['parametric'])} | {_fmt(v['parametric_fraction'])} | {unit} |")


def write_sweep_report(out: Path, s: dict) -> None:
    """report.md of a sweep from its summary dict."""
    q, st = s["qoi"], s["settings"]
    rows = [_split_row("mean potential energy per atom", q["pe_per_atom"], "eV, eV²")]
    rd = q["rdf"]
    rows.append(f"| {rd['kind']} (integrated over r) | | {_fmt(rd['total'])} | {_fmt(rd['thermal'])} | "
                f"{_fmt(rd['parametric'])} | {_fmt(rd['parametric_fraction'])} | Å·(unit of the RDF)² |")
    b = q.get("basin")
    basin = "Basin changes were not checked (`--basin off`)."
    if b is not None:
        if b["split"] is not None:
            rows.append(_split_row(f"basin-change time, restricted to {b['t_censor_ps']:.4g} ps", b["split"],
                                   "ps, ps²"))
        basin = (f"Basin criterion `{b['criterion']}` ({b['description']}): {b['n_changed']} of {b['n_runs']} "
                 f"trajectories left their start basin (fraction {b['fraction_changed']:.2f}); times are measured "
                 f"from t = 0 at the check after each {st['check_every']} steps, unchanged trajectories count "
                 f"with the censoring time {b['t_censor_ps']:.4g} ps.")
    text = f"""# jaxiap sweep: {Path(s['start']['path']).name}

Model `{s['model']['path']}` ({s['model']['descriptor']}, {s['model']['posterior_kind']} posterior); start
`{s['start']['path']}` ({s['start']['n_atoms']} atoms, {'periodic cell' if s['start']['periodic'] else 'free cluster'}).
Langevin NVT at {st['temperature']} K, time step {st['timestep']} fs, friction {st['friction']} / ps;
{st['equilibrate']} equilibration steps, then {st['steps']} recorded steps (a frame every {st['record_every']});
{s['n_samples']} posterior samples x {s['n_seeds']} thermostat seeds = {s['n_runs']} trajectories
({s['n_failed']} failed and left out).

## Variance of each QoI: thermal (seeds) + parametric (posterior samples)

| QoI | mean | total variance | thermal | parametric | parametric share | units |
|---|---|---|---|---|---|---|
{chr(10).join(rows)}

Law of total variance over one fresh trajectory (new parameter sample and seed): total = thermal
(mean over samples of the variance over seeds) + parametric (the variance of the per-sample means, estimated
from the samples x seeds table with its shared seeds: every sample ran with the same thermostat seeds, common
random numbers, so the seed noise cancels from the differences between samples); docs/commands.md. {basin}

![RDF](rdf.png)

![potential energy](pe.png)

Files: `qoi.npz` (every trajectory's QoIs, shaped samples x seeds), `summary.json`, `md/` (MD checkpoints:
rerunning the same command resumes), `config.toml`.

Wall time per stage (s): {', '.join(f'{k} {v:.1f}' for k, v in s.get('wall_time_s', {}).items())}
"""
    runfolder.write_text(out / "report.md", text)
