"""``jaxiap uq-compare``: summary statistics, the findings rules, scoring, and (slow) the tiny run end to end."""

import json

import numpy as np
import pytest

import jaxiap  # noqa: F401  (float64)
from jaxiap.inference.posterior import StructurePrediction
from jaxiap.workflows.uq_compare_config import UQCompareConfig
from jaxiap.workflows.uq_compare_report import findings, summarize


def _result(dataset, rep, method, sets, values):
    """A fake result: every metric of every set is values[method] (+ rep * 0.01)."""
    keys = ("rmse", "mae", "spearman", "roc_auc", "miscalibration_area", "nll", "recalibration_scale",
            "recalibrated_nll", "sharpness", "coefficient_of_variation", "ence")
    out = {"dataset": dataset, "repetition": rep, "method": method, "fit_seconds": 1.0, "epochs_run": 3,
           "log_evidence": -1.0, "sets": {}}
    for name in sets:
        v = values[method][name] + 0.01 * rep
        q = {k: v for k in keys}
        out["sets"][name] = {"energy": dict(q), "forces": {**q, "spearman_atom": v, "roc_auc_atom": v}}
    return out


def test_summary_means_spreads_and_findings():
    """Mean and ddof-1 std over repetitions; each finding's rule on a hand-made table."""
    sets = ("solid", "liquid")
    # rmse = nll = spearman = auc = the same number: lower wins RMSE/NLL, higher wins Spearman/AUC
    values = {"ensemble": {"solid": 0.5, "liquid": 0.9}, "mve": {"solid": 0.1, "liquid": 0.95},
              "evidential": {"solid": 0.3, "liquid": 0.6}, "gmm": {"solid": 0.4, "liquid": 0.7},
              "last-layer": {"solid": 0.6, "liquid": 0.8}}
    config = UQCompareConfig(datasets=("al",), repetitions=2)
    results = [_result("al", r, m, sets, values) for r in range(2) for m in config.methods]
    s = summarize(config, results)
    mean, std = s["table"]["al"]["liquid"]["gmm"]["forces"]["rmse"]
    assert mean == pytest.approx(0.705) and std == pytest.approx(np.std([0.7, 0.71], ddof=1))
    verdict = {f["finding"]: f["reproduced"] for f in s["findings"]}
    # 1: ensemble has neither the lowest OOD RMSE (evidential 0.605) nor ... -> not reproduced
    assert verdict[1] is False
    # 2: MVE has the lowest in-domain NLL (0.105) and not the lowest OOD NLL -> reproduced
    assert verdict[2] is True
    # 3: GMM's OOD AUC 0.705 vs MVE 0.955 -> not reproduced
    assert verdict[3] is False
    # 4: evidential is best on OOD RMSE / NLL, by 0.1 > the spreads (0.007) -> not reproduced, and says where
    f4 = next(f for f in s["findings"] if f["finding"] == 4)
    assert f4["reproduced"] is False and "decisively best on F RMSE on liquid" in f4["text"]
    # make the ensemble win out of domain on both counts
    values["ensemble"]["liquid"] = 0.55
    results = [_result("al", r, m, sets, values) for r in range(2) for m in config.methods]
    s = summarize(config, results)
    f1 = next(f for f in findings(s) if f["finding"] == 1)
    assert f1["reproduced"] is False  # lowest RMSE but not the highest Spearman (same number): rule needs both
    # a win inside the spread does not count for finding 4: evidential's liquid RMSE 0.655 +- 0.22 against
    # the others' 0.705 +- 0.007
    values = {m: {"solid": 0.5, "liquid": 0.7} for m in config.methods}   # ties elsewhere: the first method wins
    results = [_result("al", r, m, ("solid", "liquid"), values) for r in range(2) for m in config.methods]
    for r in results:
        if r["method"] == "evidential":
            r["sets"]["liquid"]["forces"]["rmse"] += -0.05 + 0.3 * (r["repetition"] - 0.5)
    f4 = next(f for f in findings(summarize(config, results)) if f["finding"] == 4)
    assert f4["reproduced"] is True and "within the spread on F RMSE on liquid" in f4["text"]


def test_score_uses_the_metrics_on_energies_components_and_atoms():
    from jaxiap.structures import from_positions
    from jaxiap.data import Dataset
    from jaxiap.uq.metrics import uq_metrics
    from jaxiap.workflows.uq_compare import score

    rng = np.random.default_rng(0)
    c, n = 8, 4
    st = from_positions(rng.normal(size=(c, n, 3)))
    data = Dataset(st, rng.normal(size=c), rng.normal(size=(c, n, 3)))
    pred = StructurePrediction(rng.normal(size=c), rng.uniform(0.5, 1, c), rng.normal(size=(c, n, 3)),
                               rng.uniform(0.5, 1, (c, n, 3)))
    out = score(pred, data, 90.0)
    ref = uq_metrics(pred.forces.reshape(-1), pred.forces_std.reshape(-1), np.asarray(data.forces).reshape(-1))
    assert out["forces"]["nll"] == pytest.approx(ref["nll"], rel=1e-12)
    atom_err = np.linalg.norm(pred.forces - np.asarray(data.forces), axis=-1).reshape(-1)
    from scipy import stats
    atom_std = np.sqrt(np.sum(pred.forces_std**2, axis=-1)).reshape(-1)
    assert out["forces"]["spearman_atom"] == pytest.approx(stats.spearmanr(atom_std, atom_err).statistic, abs=1e-12)
    assert len(out["calibration"]["forces"][0]) == 100


@pytest.mark.slow  # CI budget: five trainings and their compilations (about a minute on 2 cores)
def test_tiny_run_writes_tables_figures_and_resumes(tmp_path):
    from jaxiap.cli import main

    out = tmp_path / "uq"
    args = ["uq-compare", "--preset", "tiny", "--datasets", "lj13", "--methods", "ensemble,mve,gmm",
            "--repetitions", "2", "--out", str(out), "--no-progress"]
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    table = summary["table"]["lj13"]
    assert set(table) == {"in-domain", "kT 0.35", "quenched"}
    for name in table:
        for method in ("ensemble", "mve", "gmm"):
            rmse, spread = table[name][method]["forces"]["rmse"]
            assert np.isfinite(rmse) and rmse > 0 and spread >= 0
    assert (out / "lj13_calibration.png").stat().st_size > 10000
    report = (out / "report.md").read_text()
    assert "Finding 1 (lj13)" in report and "kT 0.35" in report
    mtime = (out / "results" / "lj13_rep0_gmm.json").stat().st_mtime
    assert main(args) == 0                                         # resumes: nothing is refitted
    assert (out / "results" / "lj13_rep0_gmm.json").stat().st_mtime == mtime


@pytest.mark.slow  # CI budget: the notebook trains every method at the tiny size (minutes on 2 cores)
def test_notebook_runs_at_the_tiny_size(tmp_path, monkeypatch):
    from notebooks import execute_notebook, outputs_text

    monkeypatch.setenv("JAXIAP_NOTEBOOK_OUT", str(tmp_path / "nb"))
    nb = execute_notebook("uq_comparison.ipynb", size="tiny", timeout=900)
    line = [x for x in outputs_text(nb).splitlines() if x.startswith('{"notebook": "uq_comparison"')][-1]
    out = json.loads(line)
    assert out["size"] == "tiny" and len(out["findings"]) == 8
    assert out["lj13_in_domain_ensemble_force_rmse"] > 0
