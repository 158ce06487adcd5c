"""Matplotlib figures for studies (PNG files). Each function returns the Figure.

matplotlib is imported lazily with the non-interactive Agg backend when no
backend was chosen, so figures render on headless machines.
"""

from __future__ import annotations

import numpy as np


def _plt():
    import matplotlib

    if matplotlib.get_backend().lower() not in ("agg", "module://matplotlib_inline.backend_inline"):
        try:
            matplotlib.use("Agg")
        except Exception:  # noqa: BLE001 - keep the active backend
            pass
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path):
    if path is not None:
        fig.savefig(path, dpi=120, bbox_inches="tight")
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
    """Kaplan-Meier survival curves {label: (t_grid, survival)}; optional bands {label: (t, lo, hi)}."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (label, (t, s)) in enumerate(curves.items()):
        ax.step(t, s, where="post", color=f"C{i}", label=label)
        if bands and label in bands:
            tb, lo, hi = bands[label]
            ax.fill_between(tb, lo, hi, step="post", color=f"C{i}", alpha=0.25)
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
