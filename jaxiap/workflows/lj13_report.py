"""Figures and report.md of the LJ13 study (:mod:`jaxiap.workflows.lj13`)."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxiap import plots
from jaxiap.runfolder import write_text
from jaxiap.systems.lj import lj_pair
from jaxiap.uq.frt import frt_samples
from jaxiap.uq.survival import kaplan_meier
from jaxiap.workflows.lj13_attempts import attempts_report


def pair_curves(basis, coefficients, r=None):
    """Pair energy and force of the fitted radial model and of the true LJ on a grid r (P,)."""
    r = jnp.linspace(0.88, basis.radial.r_cut + 0.3, 300) if r is None else jnp.asarray(r)
    fit_e = basis.radial(r) @ jnp.asarray(coefficients)[: basis.radial.n_basis]
    fit_f = -jax.vmap(jax.grad(lambda x: basis.radial(x) @ jnp.asarray(coefficients)[: basis.radial.n_basis]))(r)
    true_e = lj_pair(r)
    true_f = -jax.vmap(jax.grad(lj_pair))(r)
    return tuple(np.asarray(v) for v in (r, true_e, fit_e, true_f, fit_f))


def write_figures(out: Path, config, basis, coef, parity, true_res, fit_res) -> None:
    """parity.png, pair_profiles.png, frt_histogram.png, survival.png and energy_histogram.png in ``out``."""
    plots.parity(parity, out / "parity.png", title="fitted potential on held-out LJ13 data")
    plots.pair_profiles(*pair_curves(basis, coef), path=out / "pair_profiles.png")
    samples = {"true LJ": frt_samples(true_res), "fitted": frt_samples(fit_res)}
    plots.frt_histograms(samples, out / "frt_histogram.png", t_max=true_res.settings.t_censor)
    plots.survival_curves({k: kaplan_meier(*v) for k, v in samples.items()}, out / "survival.png")
    plots.energy_histograms(true_res.energy_bin_edges,
                            {"true LJ": true_res.pooled_energy_hist(), "fitted": fit_res.pooled_energy_hist()},
                            out / "energy_histogram.png")
    import matplotlib.pyplot as plt  # lazy: matplotlib only for figures

    plt.close("all")


def _fmt(x, spec=".3g"):
    if x is None:
        return "n/a"
    if isinstance(x, str):
        return x
    return format(x, spec)


def write_report(out: Path, s: dict) -> None:
    """report.md in ``out`` from the summary dict ``s`` of :func:`jaxiap.workflows.lj13.run_lj13`."""
    rows = []
    for key in ("true", "fitted"):
        d = s[key]
        lo, hi = d["frt_mean_ci95"]
        rows.append(f"| {key} | {d['n_runs']} | {d['n_events']} | {d['n_censored']} | {d['n_evaporated']} | "
                    f"{d['n_failed']} | {_fmt(d['frt_mean'])} | [{_fmt(lo)}, {_fmt(hi)}] | {_fmt(d['frt_median'])} |")
    fit = s["fit"]
    st = s["settings"]
    text = f"""# LJ13 first-rearrangement times: true vs fitted potential

Settings: kT = {st['kT']}, gamma = {st['gamma']}, dt = {st['dt']}, basin check every n_q = {st['n_q']} steps,
t_max = {st['t_max']} tau (censoring at {s['t_censor']:.4g} tau), criterion `{st['criterion']}` (r_b = {st['r_b']}),
{st['n_seeds']} thermostat seeds, seed {st['seed']}, {st['dtype']}.

## Fitted potential

{fit['basis']} radial basis, {fit['basis_size']} functions, r in [{fit['r_min']}, {fit['r_cut']}], posterior `{fit['posterior']}`;
trained on {s['data']['n_train']} structures, tested on {s['data']['n_test']}.

| set | energy RMSE / atom | force RMSE | force RMSE / force std |
|---|---|---|---|
| train | {fit['train']['energy_rmse_per_atom']:.3g} | {fit['train']['force_rmse']:.3g} | {fit['train']['force_rmse_relative']:.3g} |
| test | {fit['test']['energy_rmse_per_atom']:.3g} | {fit['test']['force_rmse']:.3g} | {fit['test']['force_rmse_relative']:.3g} |

![parity](parity.png)

![pair profiles](pair_profiles.png)

## First rearrangement times

| potential | runs | events | censored | evaporated | failed | mean FRT (MLE) | 95% interval | median (KM) |
|---|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}

Two-sample KS (min(FRT, t_censor), true vs fitted): D = {s['ks_statistic']:.3f}, p = {s['ks_pvalue']:.3g}.

![FRT histograms](frt_histogram.png)

![survival](survival.png)

![energy histograms](energy_histogram.png)

{attempts_report(s["attempts"]) if s.get("attempts") else ""}
Wall time per stage (s): {', '.join(f'{k} {v:.1f}' for k, v in s.get('wall_time_s', {}).items())}
"""
    write_text(out / "report.md", text)
