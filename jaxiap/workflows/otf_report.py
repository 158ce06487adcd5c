"""Figures and report.md of the on-the-fly aluminium study (``jaxiap otf``)."""

from __future__ import annotations

import numpy as np

from jaxiap import plots, runfolder


def timeline_figure(result, config, path=None):
    """FLARE's Fig. 3: temperature with the oracle calls marked; calls, training atoms and sigma_n over time."""
    plt = plots._plt()
    t = np.asarray(result["time_ps"])
    oracle = np.asarray(result["oracle"], bool)
    fig, axes = plt.subplots(2, 1, figsize=(7.5, 6), sharex=True)
    ax = axes[0]
    ax.plot(t, result["temperature"], lw=0.8, color="0.3", label="temperature")
    ax.plot(t[oracle], np.asarray(result["temperature"])[oracle], "o", ms=3, color="C3", label="oracle call")
    ax.axvline(config.melt_ps, color="C0", ls=":", lw=1, label="melt (velocity rescaling)")
    ax.set_yscale("log")
    ax.set_ylabel("temperature (K)")
    ax.legend(fontsize=8, loc="lower right")
    ax = axes[1]
    ax.plot(t, np.cumsum(oracle), color="C3", label="oracle calls (cumulative)")
    ax.plot(t, result["n_train_atoms"], color="C2", label="training atoms")
    ax.set_ylabel("count")
    ax.set_xlabel("time (ps)")
    ax2 = ax.twinx()
    ax2.plot(t, 1000 * np.asarray(result["noise"]), color="C0", ls="--", label="sigma_n (meV/Å)")
    ax2.set_ylabel("sigma_n (meV/Å)")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=8, loc="upper left")
    fig.tight_layout()
    return plots._save(fig, path)


def std_error_figure(scores, path=None, bins: int = 12):
    """Predicted force std against the true error on the held-out frames (binned means, solid and liquid)."""
    plt = plots._plt()
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    hi = 0.0
    for k, (name, s) in enumerate(scores.items()):
        std, err = 1000 * np.ravel(s["std"]), 1000 * np.ravel(s["abs_error"])
        ax.plot(std, err, ".", ms=1.5, alpha=0.15, color=f"C{k}")
        edges = np.quantile(std, np.linspace(0, 1, bins + 1))
        idx = np.clip(np.digitize(std, edges[1:-1]), 0, bins - 1)
        centers = np.array([std[idx == b].mean() for b in range(bins) if np.any(idx == b)])
        rms = np.array([np.sqrt(np.mean(err[idx == b] ** 2)) for b in range(bins) if np.any(idx == b)])
        ax.plot(centers, rms, "o-", color=f"C{k}", label=f"{name}: RMS error per std bin")
        hi = max(hi, float(np.quantile(err, 0.99)), float(std.max()))
    ax.plot([0, hi], [0, hi], "k:", lw=1, label="error = std")
    ax.set_xlabel("predicted force std (meV/Å)")
    ax.set_ylabel("|force error| (meV/Å)")
    ax.set_xlim(0, hi)
    ax.set_ylim(0, hi)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return plots._save(fig, path)


def write_figures(out, result, scores, config):
    plt = plots._plt()
    for fig in (timeline_figure(result, config, out / "otf_timeline.png"),
                std_error_figure(scores, out / "std_vs_error.png")):
        plt.close(fig)


def write_report(path, summary: dict, config) -> None:
    s = summary
    paper = s["paper_table_meV_per_A"]
    rows = "\n".join(f"| {k} (paper, DFT labels) | {v['solid']:.1f} | {v['liquid']:.1f} |" for k, v in paper.items())
    text = f"""# On-the-fly GP learning of aluminium through a melt (FLARE protocol)

Oracle: `{config.calculator}`; {4 * config.repeat ** 3}-atom FCC cell (a = {config.lattice} Å);
{config.n_steps} steps of {config.dt_fs} fs ({config.n_steps * config.dt_fs / 1000:g} ps); velocities
rescaled to {config.melt_temperature:g} K at {config.melt_ps:g} ps. GP: 2-body cutoff {config.r_cut} Å,
3-body cutoff {config.r_cut_3} Å; threshold {config.std_tolerance} x sigma_n (sigma_n >= {config.min_noise} eV/Å);
{config.max_atoms_added} atoms added per call; hyperparameters optimised for the first {config.freeze_hyps}
updates, then length scales frozen.

## Oracle calls

| | count |
|---|---|
| total | {s['oracle_calls']} |
| before the melt | {s['oracle_calls_before_melt']} |
| first ps | {s['oracle_calls_first_ps']} |
| after the melt | {s['oracle_calls_after_melt']} |
| first ps after the melt | {s['oracle_calls_first_ps_after_melt']} |
| training atoms (at the melt / final) | {s['training_atoms_at_melt']} / {s['training_atoms']} |

Mean temperature: solid {s['temperature_solid_K']:.0f} K, liquid {s['temperature_liquid_K']:.0f} K.

## Force errors on held-out frames (meV/Å)

{config.n_test} frames each, {config.test_spacing_ps} ps apart, from MD of the oracle at the solid
({s['test_temperature_solid_K']:.0f} K) and liquid ({s['test_temperature_liquid_K']:.0f} K) temperatures.

| model | solid MAE | liquid MAE |
|---|---|---|
{rows}
| jaxiap GP ({config.calculator} labels) | {s['force_mae_solid_meV_per_A']:.1f} | {s['force_mae_liquid_meV_per_A']:.1f} |

RMSE: solid {s['force_rmse_solid_meV_per_A']:.1f}, liquid {s['force_rmse_liquid_meV_per_A']:.1f} meV/Å.
Combined GP error sqrt(sigma_n^2 + mean V): solid {s['combined_error_solid_meV_per_A']:.1f},
liquid {s['combined_error_liquid_meV_per_A']:.1f} meV/Å.
The paper's rows are DFT-labelled: they frame the scale, they are not the same task.

![timeline](otf_timeline.png)

![std vs error](std_vs_error.png)
"""
    runfolder.write_text(path, text)
