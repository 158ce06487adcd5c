"""Summary, figures and report of ``jaxiap uq-compare`` (tables with spreads; Tan et al.'s four findings).

The findings are checked from the summary table with explicit rules (the
numbers appear in the report next to each verdict):

1. *Ensembles generalise best*: the ensemble has the lowest force RMSE out of
   domain (averaged over the out-of-domain sets), and the best per-atom force
   Spearman there.
2. *MVE helps only in-domain*: MVE has the best (lowest) force NLL in domain
   among the methods, and loses that rank out of domain.
3. *GMM is better out of domain* (than the single-model methods MVE and
   evidential): its per-atom force ROC-AUC out of domain exceeds both.
4. *Evidential is never preferable*: it is not decisively the best method
   for any of the headline metrics (force RMSE, Spearman, ROC-AUC,
   miscalibration area, NLL, recalibrated NLL) on any test set; decisively
   means ahead of the runner-up by more than the larger of the two spreads
   over repetitions (a win inside the noise is reported but not counted).
"""

from __future__ import annotations

import numpy as np

from jaxiap import runfolder
from jaxiap.workflows.uq_compare_config import TEST_SETS

#: metrics of the tables: (quantity, key, label, better)
HEADLINE = (
    ("forces", "rmse", "F RMSE", "low"),
    ("forces", "spearman_atom", "F Spearman", "high"),
    ("forces", "roc_auc_atom", "F ROC-AUC", "high"),
    ("forces", "miscalibration_area", "F miscal.", "low"),
    ("forces", "nll", "F NLL", "low"),
    ("forces", "recalibrated_nll", "F NLL recal.", "low"),
    ("energy", "rmse", "E RMSE", "low"),
    ("energy", "spearman", "E Spearman", "high"),
)


def summarize(config, results: list[dict]) -> dict:
    """Mean and std over repetitions of every metric: summary[dataset][set][method][quantity][metric] = [mean, std]."""
    table: dict = {}
    for dataset in config.datasets:
        table[dataset] = {}
        for name in TEST_SETS[dataset]:
            table[dataset][name] = {}
            for method in config.methods:
                runs = [r["sets"][name] for r in results if r["dataset"] == dataset and r["method"] == method]
                if not runs:
                    continue
                entry = {}
                for q in ("energy", "forces"):
                    entry[q] = {k: [float(np.mean([r[q][k] for r in runs])),
                                    float(np.std([r[q][k] for r in runs], ddof=1)) if len(runs) > 1 else 0.0]
                                for k in runs[0][q]}
                table[dataset][name][method] = entry
    fits = {f"{d}/{m}": float(np.mean([r["fit_seconds"] for r in results if r["dataset"] == d and r["method"] == m]))
            for d in config.datasets for m in config.methods
            if any(r["dataset"] == d and r["method"] == m for r in results)}
    evidence = {d: [float(np.mean([r["log_evidence"] for r in results
                                   if r["dataset"] == d and r["method"] == "last-layer"]))]
                for d in config.datasets if "last-layer" in config.methods}
    summary = {"table": table, "fit_seconds": fits, "repetitions": config.repetitions,
               "methods": list(config.methods), "datasets": list(config.datasets),
               "last_layer_log_evidence": evidence}
    summary["findings"] = findings(summary)
    return summary


def _value(summary, dataset, name, method, q, key):
    return summary["table"][dataset][name][method][q][key][0]


def _best(summary, dataset, name, q, key, better):
    vals = {m: _value(summary, dataset, name, m, q, key) for m in summary["table"][dataset][name]}
    pick = min if better == "low" else max
    return pick(vals, key=vals.get), vals


def _decisive(summary, dataset, name, q, key, better):
    """(winner, decisive?): the best mean, and whether it leads the runner-up by more than either's spread."""
    entries = summary["table"][dataset][name]
    order = sorted(entries, key=lambda m: entries[m][q][key][0], reverse=better == "high")
    if len(order) < 2:
        return order[0], True
    (m1, s1), (m2, s2) = entries[order[0]][q][key], entries[order[1]][q][key]
    return order[0], abs(m1 - m2) > max(s1, s2)


def findings(summary) -> list[dict]:
    """Tan et al.'s four findings, each with a verdict per dataset and the numbers behind it."""
    out = []
    methods = set(summary["methods"])
    for dataset in summary["datasets"]:
        sets = TEST_SETS[dataset]
        ood = sets[1:]

        def ood_mean(m, q, key):
            return float(np.mean([_value(summary, dataset, s, m, q, key) for s in ood]))

        if "ensemble" in methods and len(methods) > 1:
            rmse = {m: ood_mean(m, "forces", "rmse") for m in methods}
            sp = {m: ood_mean(m, "forces", "spearman_atom") for m in methods}
            ok = min(rmse, key=rmse.get) == "ensemble" and max(sp, key=sp.get) == "ensemble"
            out.append({"finding": 1, "dataset": dataset, "reproduced": bool(ok),
                        "text": "ensembles generalise best: out-of-domain force RMSE "
                                + _fmt(rmse) + "; per-atom force Spearman " + _fmt(sp)})
        if "mve" in methods and len(methods) > 1:
            best_in, nll_in = _best(summary, dataset, sets[0], "forces", "nll", "low")
            nll_out = {m: ood_mean(m, "forces", "nll") for m in methods}
            ok = best_in == "mve" and min(nll_out, key=nll_out.get) != "mve"
            out.append({"finding": 2, "dataset": dataset, "reproduced": bool(ok),
                        "text": "MVE helps only in domain: force NLL in domain " + _fmt(nll_in)
                                + "; out of domain " + _fmt(nll_out)})
        if {"gmm", "mve", "evidential"} <= methods:
            auc = {m: ood_mean(m, "forces", "roc_auc_atom") for m in ("gmm", "mve", "evidential")}
            ok = auc["gmm"] > auc["mve"] and auc["gmm"] > auc["evidential"]
            out.append({"finding": 3, "dataset": dataset, "reproduced": bool(ok),
                        "text": "GMM better out of domain: out-of-domain per-atom force ROC-AUC " + _fmt(auc)})
        if "evidential" in methods and len(methods) > 1:
            wins, close = [], []
            for s in sets:
                for q, key, label, better in HEADLINE:
                    winner, decisive = _decisive(summary, dataset, s, q, key, better)
                    if winner == "evidential":
                        (wins if decisive else close).append(f"{label} on {s}")
            text = "evidential never preferable: " + ("decisively best on no headline metric" if not wins
                                                      else "decisively best on " + ", ".join(wins))
            if close:
                text += "; best within the spread on " + ", ".join(close)
            out.append({"finding": 4, "dataset": dataset, "reproduced": not wins, "text": text})
    return out


def _fmt(vals: dict) -> str:
    return ", ".join(f"{m} {v:.3g}" for m, v in sorted(vals.items(), key=lambda kv: kv[1]))


def _table(summary, dataset) -> str:
    lines = []
    for name in TEST_SETS[dataset]:
        lines.append(f"\n**{dataset}, {name}** (mean ± std over {summary['repetitions']} repetitions)\n")
        lines.append("| method | " + " | ".join(h[2] for h in HEADLINE) + " |")
        lines.append("|---|" + "---|" * len(HEADLINE))
        for method, entry in summary["table"][dataset][name].items():
            cells = [f"{entry[q][k][0]:.3g} ± {entry[q][k][1]:.2g}" for q, k, _, _ in HEADLINE]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(summary, out) -> None:
    parts = ["# UQ-method comparison (`jaxiap uq-compare`)\n",
             "Neural-network potentials (per-atom MLPs on Gaussian radial features) with five uncertainty methods, "
             "scored in and out of the training domain (docs/uq_comparison.md). Forces: RMSE in eV/Å (aluminium) or "
             "reduced units (LJ13); calibration per component, ranking per atom.\n"]
    for dataset in summary["datasets"]:
        parts.append(f"\n## {dataset}\n")
        parts.append(_table(summary, dataset))
        parts.append(f"\n\n![calibration]({dataset}_calibration.png)\n")
    parts.append("\n## Tan et al.'s findings\n")
    for f in summary["findings"]:
        verdict = "reproduced" if f["reproduced"] else "not reproduced"
        parts.append(f"- Finding {f['finding']} ({f['dataset']}): **{verdict}**. {f['text']}.")
    parts.append("\n## Fit times (s, mean per repetition)\n")
    parts.append("| dataset/method | seconds |\n|---|---|")
    parts.extend(f"| {k} | {v:.1f} |" for k, v in summary["fit_seconds"].items())
    runfolder.write_text(out / "report.md", "\n".join(parts) + "\n")


def write_figures(summary, results, out) -> None:
    """Per dataset: force calibration curves (observed vs expected proportion), one panel per test set."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for dataset in summary["datasets"]:
        sets = TEST_SETS[dataset]
        fig, axes = plt.subplots(1, len(sets), figsize=(4 * len(sets), 3.8), squeeze=False)
        for ax, name in zip(axes[0], sets):
            for method in summary["methods"]:
                runs = [r for r in results if r["dataset"] == dataset and r["method"] == method]
                if not runs:
                    continue
                exp = np.asarray(runs[0]["sets"][name]["calibration"]["forces"][0])
                obs = np.mean([r["sets"][name]["calibration"]["forces"][1] for r in runs], axis=0)
                ax.plot(exp, obs, label=method)
            ax.plot([0, 1], [0, 1], "k:", lw=1)
            ax.set(title=f"{dataset}: {name}", xlabel="expected proportion", ylabel="observed proportion")
        axes[0][0].legend(fontsize=8)
        fig.tight_layout()
        path = out / f"{dataset}_calibration.png"
        with runfolder.atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110, format="png")
        plt.close(fig)
