"""Matplotlib figures for studies (PNG files). Each function returns the Figure.

matplotlib is imported lazily with the non-interactive Agg backend when no
backend was chosen, so figures render on headless machines.
"""

from __future__ import annotations

import numpy as np

from jaxiap.runfolder import atomic_path


def _plt():
    import matplotlib  # lazy: matplotlib only for figures

    if matplotlib.get_backend().lower() not in ("agg", "module://matplotlib_inline.backend_inline"):
        try:
            matplotlib.use("Agg")
        except Exception:  # noqa: BLE001 - keep the active backend
            pass
    import matplotlib.pyplot as plt  # lazy: matplotlib only for figures

    return plt


def _save(fig, path):
    if path is not None:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=120, bbox_inches="tight")
    return fig


def parity(parity_data: dict, path=None, title: str = ""):
    """Energy-per-atom and force-component parity plots from ``inference.metrics.parity_data``."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(9, 4))
    for ax, key, label in ((axes[0], "energy", "energy per atom"), (axes[1], "force", "force component")):
        ref, pred = parity_data[f"{key}_ref"], parity_data[f"{key}_pred"]
        ax.plot(ref, pred, ".", ms=2, alpha=0.5)
        lo, hi = float(min(ref.min(), pred.min())), float(max(ref.max(), pred.max()))
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        rmse = float(np.sqrt(np.mean((pred - ref) ** 2)))
        ax.set(xlabel=f"reference {label}", ylabel=f"predicted {label}", title=f"RMSE {rmse:.3g}")
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def pair_profiles(r, true_energy, fit_energy, true_force, fit_force, path=None, band=None):
    """Fitted pair energy and force against the truth (top) and their errors (bottom).

    r (P,); *_energy, *_force (P,); band: optional dict with 'energy_std', 'force_std' (P,).
    """
    plt = _plt()
    fig, axes = plt.subplots(2, 2, figsize=(10, 6), sharex=True)
    for col, (name, t, f) in enumerate((("pair energy V(r)", true_energy, fit_energy),
                                        ("pair force -V'(r)", true_force, fit_force))):
        ax = axes[0, col]
        ax.plot(r, t, "k-", label="true LJ")
        ax.plot(r, f, "C1--", label="fitted")
        if band is not None:
            s = band["energy_std" if col == 0 else "force_std"]
            ax.fill_between(r, f - 2 * s, f + 2 * s, color="C1", alpha=0.3, label="±2 std")
        lim = np.percentile(np.abs(t), 70) * 3
        ax.set(ylabel=name, ylim=(-lim, lim))
        ax.legend()
        axes[1, col].plot(r, f - t, "C3-")
        axes[1, col].axhline(0, color="k", lw=0.6)
        axes[1, col].set(xlabel="r (sigma)", ylabel="fitted - true")
    fig.tight_layout()
    return _save(fig, path)


def frt_histograms(samples: dict, path=None, bins: int = 30, t_max=None):
    """Overlaid histograms of observed first-rearrangement times, one per label.

    samples: {label: (times (n,), events (n,) bool)}; censored runs are counted in the legend.
    """
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    observed = [t[e] for t, e in samples.values() if e.any()]
    hi = t_max if t_max is not None else (max(float(o.max()) for o in observed) if observed else 1.0)
    edges = np.linspace(0, hi, bins + 1)
    for label, (t, e) in samples.items():
        ax.hist(t[e], bins=edges, alpha=0.5, density=False,
                label=f"{label} ({int(e.sum())} events, {int((~e).sum())} censored)")
    ax.set(xlabel="first rearrangement time (tau)", ylabel="count")
    ax.legend()
    fig.tight_layout()
    return _save(fig, path)


def survival_curves(curves: dict, path=None, bands: dict | None = None):
    """Kaplan-Meier survival curves {label: (t_grid, survival)}.

    bands: optional {label: (t, lo, hi)} or {label: [(t, lo, hi), ...]} (e.g. a
    5-95% and a 25-75% band over coefficient samples, outer first).
    """
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (label, (t, s)) in enumerate(curves.items()):
        ax.step(t, s, where="post", color=f"C{i}", label=label)
        if bands and label in bands:
            b = bands[label]
            for tb, lo, hi in ([b] if isinstance(b, tuple) else b):
                ax.fill_between(tb, lo, hi, step="post", color=f"C{i}", alpha=0.2)
    ax.set(xlabel="t (tau)", ylabel="P(no rearrangement by t)", ylim=(0, 1.02))
    ax.legend()
    fig.tight_layout()
    return _save(fig, path)


def energy_histograms(edges, counts: dict, path=None):
    """Potential-energy histograms {label: counts (B,)} on shared bin edges (B+1,), normalised."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    centres = 0.5 * (edges[1:] + edges[:-1])
    width = edges[1] - edges[0]
    for label, c in counts.items():
        c = np.asarray(c, float)
        ax.plot(centres, c / max(c.sum() * width, 1e-300), label=label)
    ax.set(xlabel="potential energy (epsilon)", ylabel="density")
    ax.legend()
    fig.tight_layout()
    return _save(fig, path)


def per_sample_means(attempts: dict, true_mean, true_ci, path=None, t_censor=None):
    """Per-sample mean FRT with intervals against the true potential's mean and interval.

    attempts: {label: dict(mean, ci_low, ci_high) of (M,) arrays (tau)}, e.g.
    from :func:`jaxiap.uq.frt.per_sample_frt`. Samples are sorted by mean;
    infinite upper limits (no event) are drawn up to the top of the axis.
    """
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    vals = [true_mean, *true_ci, t_censor or np.nan]
    for v in attempts.values():
        vals += list(np.asarray(v["ci_high"], float)) + list(np.asarray(v["mean"], float))
    vals = np.asarray(vals, float)
    vals = vals[np.isfinite(vals) & (vals > 0)]
    top = float(vals.max()) * 1.5 if vals.size else 1.0
    if np.isfinite(true_mean):
        ax.axhspan(true_ci[0], min(true_ci[1], top), color="k", alpha=0.15, label="true LJ, 95% interval")
        ax.axhline(true_mean, color="k", lw=1)
    for i, (label, v) in enumerate(attempts.items()):
        mean_all = np.asarray(v["mean"], float)
        order = np.argsort(np.nan_to_num(mean_all, nan=np.inf))
        order = order[~np.isnan(mean_all[order])]
        x = (np.arange(order.size) + 0.5) / max(order.size, 1) + i * 0.004
        mean = np.minimum(mean_all[order], top)
        lo = np.minimum(np.asarray(v["ci_low"], float)[order], mean)
        hi = np.maximum(np.minimum(np.asarray(v["ci_high"], float)[order], top), mean)
        ax.errorbar(x, mean, yerr=[mean - lo, hi - mean], fmt="o", ms=3, lw=0.8, color=f"C{i}",
                    label=f"{label} ({order.size} samples)")
    ax.set(yscale="log", xlabel="coefficient sample (sorted by mean FRT, as a fraction)",
           ylabel="mean FRT (tau)", ylim=(None, top))
    if t_censor is not None:
        ax.axhline(t_censor, color="C3", ls=":", lw=0.8, label="t_censor")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def learning_curves(n_labelled, curves: dict, path=None, ylabel: str = "error", reference=None, threshold=None,
                    logy: bool = False, title: str = ""):
    """Error against labelled-set size, one line per strategy with a min-max band over repetitions.

    n_labelled (T,); curves {label: (R, T) values over R repetitions} (NaN allowed);
    reference: a horizontal line (e.g. the full-data fit); threshold: a dotted line.
    """
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    n = np.asarray(n_labelled)
    styles = ["-", "--", "-.", ":"]
    for i, (label, v) in enumerate(curves.items()):
        v = np.atleast_2d(np.asarray(v, float))
        with np.errstate(all="ignore"):
            mean, lo, hi = np.nanmean(v, axis=0), np.nanmin(v, axis=0), np.nanmax(v, axis=0)
        color = f"C{i % 10}"
        ax.plot(n, mean, styles[(i // 10) % 4], color=color, marker="o", ms=3, label=label)
        if v.shape[0] > 1:
            ax.fill_between(n, lo, hi, color=color, alpha=0.12)
    if reference is not None:
        ax.axhline(reference, color="k", lw=0.8, label="full pool")
    if threshold is not None:
        ax.axhline(threshold, color="k", lw=0.8, ls=":", label="threshold")
    if logy:
        ax.set_yscale("log")
    ax.set(xlabel="labelled configurations", ylabel=ylabel, title=title)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return _save(fig, path)


def inclusion_probability_trace(t, inclusion, energy, path=None, title: str = ""):
    """DPP inclusion probabilities K_ii over an MD time series (bottom), potential energy above.

    t (T,) times; inclusion (T,) K_ii; energy (T,) potential energy of each frame.
    """
    plt = _plt()
    fig, (ax_e, ax_k) = plt.subplots(2, 1, figsize=(8, 5), sharex=True, gridspec_kw={"height_ratios": [1, 1.4]})
    ax_e.plot(t, energy, "k-", lw=1)
    ax_e.set(ylabel="potential energy", title=title)
    ax_k.bar(t, inclusion, width=(t[1] - t[0]) * 0.9 if len(t) > 1 else 1.0, color="C0")
    top = float(np.max(inclusion)) if len(inclusion) else 1.0
    ax_k.set(xlabel="t (tau)", ylabel="inclusion probability K_ii", ylim=(0, min(1.02, 1.15 * top + 1e-12)))
    fig.tight_layout()
    return _save(fig, path)
