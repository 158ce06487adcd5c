import json
import subprocess
import sys

import numpy as np
import pytest

from jaxiap.cli import main
from jaxiap.errors import JaxiapInputError
from jaxiap.workflows.lj13 import LJ13Config

TINY = ["--preset", "tiny", "--seeds", "4", "--t-max", "2", "--no-progress"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """Built once per worker: the suite runs with ``--dist loadfile`` (one worker per file)."""
    out = tmp_path_factory.mktemp("lj13") / "run"
    assert main(["lj13", "--out", str(out), *TINY]) == 0
    return out


def test_run_folder_contents(tiny_run):
    for name in ("summary.json", "report.md", "parity.png", "pair_profiles.png", "frt_histogram.png",
                 "survival.png", "energy_histogram.png", "posterior.npz", "config.json"):
        assert (tiny_run / name).exists(), name
    s = json.loads((tiny_run / "summary.json").read_text())
    assert s["data"]["n_train"] + s["data"]["n_test"] == 4 * 20
    for key in ("true", "fitted"):
        for field in ("n_runs", "n_events", "n_censored", "n_evaporated", "frt_mean", "frt_mean_ci95", "frt_median"):
            assert field in s[key]
        assert s[key]["n_runs"] == 4
    assert 0.0 <= s["ks_statistic"] <= 1.0 and 0.0 <= s["ks_pvalue"] <= 1.0
    assert set(s["settings"]) >= {"kT", "gamma", "dt", "n_q", "t_max", "r_b", "seed"}
    assert set(s["wall_time_s"]) >= {"data", "fit", "frt_true", "frt_fitted"}
    assert s["fit"]["test"]["force_rmse"] > 0
    assert "![survival](survival.png)" in (tiny_run / "report.md").read_text()


def test_three_attempts_are_reported(tiny_run):
    """Tiny preset: mle (1 x 4 seeds), subsets (3 x 4), posterior (6 blr draws x 4); same seeds."""
    s = json.loads((tiny_run / "summary.json").read_text())
    a = s["attempts"]
    assert list(a) == ["mle", "subsets", "posterior"]
    assert (a["mle"]["n_samples"], a["subsets"]["n_samples"], a["posterior"]["n_samples"]) == (1, 3, 6)
    assert a["mle"]["frt"] == s["fitted"]  # attempt 1 is the main fitted run
    for name in ("subsets", "posterior"):
        v = a[name]["variance_split_restricted"]
        assert v["thermal"] >= 0 and v["parametric"] >= 0 and v["n_seeds"] == 4
        assert len(a[name]["per_sample"]["mean"]) == a[name]["n_samples"]
        assert 0 <= a[name]["ks_statistic"] <= 1
    coef = np.load(tiny_run / "coefficients_posterior.npy")
    assert coef.shape == (6, 3) and np.all(coef.std(0) > 0)
    subsets = np.load(tiny_run / "coefficients_subsets.npy")
    assert subsets.shape == (3, 3) and np.all(subsets.std(0) > 0)
    assert a["posterior"]["pce"]["degree"] == 1
    for name in ("frt_attempts_histogram.png", "survival_attempts.png", "per_sample_frt.png"):
        assert (tiny_run / name).exists(), name
    report = (tiny_run / "report.md").read_text()
    assert "the three attempts" in report and "parametric" in report


def test_rerun_resumes_with_identical_numbers(tiny_run):
    before = json.loads((tiny_run / "summary.json").read_text())
    assert main(["lj13", "--out", str(tiny_run), *TINY]) == 0
    after = json.loads((tiny_run / "summary.json").read_text())
    for key in ("true", "fitted", "fit", "ks_statistic", "attempts"):
        assert after[key] == before[key]


def test_changed_config_in_same_folder_is_refused(tiny_run, capsys):
    assert main(["lj13", "--out", str(tiny_run), *TINY, "--kT", "0.25"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "kT" in err and "--overwrite" in err


@pytest.mark.parametrize("argv,needle", [
    (["lj13", "--no-such-option"], "unrecognized arguments"),
    (["lj13", "--kT", "-0.3"], "--kT"),
    (["lj13", "--seeds", "0"], "--seeds"),
    (["lj13", "--basis", "legendre"], "--basis"),
    (["lj13", "--r-min", "4", "--r-cut", "3"], "r_min"),
    (["lj13", "--attempts", "mle,typo"], "attempts"),
    (["lj13", "--subset-fraction", "1.5"], "subset_fraction"),
])
def test_bad_options_give_one_line_errors(argv, needle, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "jaxiap.cli", *argv, "--out", str(tmp_path / "x")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], proc.stderr


def test_help_documents_every_option():
    proc = subprocess.run([sys.executable, "-m", "jaxiap.cli", "lj13", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    for opt in ("--seeds", "--t-max", "--preset", "--basis-size", "--basis", "--kT", "--gamma", "--dt",
                "--n-q", "--r-b", "--criterion", "--out", "--posterior", "--attempts", "--posterior-samples",
                "--n-subsets", "--sample-posterior", "--attempt-seeds"):
        assert opt in proc.stdout


def test_config_validation():
    with pytest.raises(JaxiapInputError, match="preset"):
        LJ13Config.from_preset("huge")
    with pytest.raises(JaxiapInputError, match="test_fraction"):
        LJ13Config(test_fraction=1.5)


def test_notebook_runs_at_tiny_size():
    from notebooks import execute_notebook, outputs_text

    nb = execute_notebook("lj13_frt.ipynb", "tiny")
    text = outputs_text(nb)
    assert "quenched icosahedron energy: -44.3268" in text
    assert "KS D =" in text


@pytest.mark.parametrize("kind", ["blr", "nig", "bootstrap", "merr-abc"])
def test_posterior_choices_give_samples_near_the_mle(lj13_data, kind):
    """Each --posterior choice returns a Posterior whose mean is near the WLS fit and whose samples spread."""
    import jax

    from jaxiap.inference.linear import fit_lstsq
    from jaxiap.potentials.linear import design_matrix
    from jaxiap.inference.solvers import get_solver
    from jaxiap.workflows.lj13 import make_basis

    train, _ = lj13_data
    design = design_matrix(make_basis(LJ13Config()), train)
    ref = np.asarray(fit_lstsq(design).mean)
    post = get_solver(kind)(design, key=jax.random.key(0))
    draws = np.asarray(post.sample(jax.random.key(1), 64))
    assert draws.shape == (64, ref.size)
    assert np.all(np.isfinite(draws)) and np.all(draws.std(axis=0) > 0)
    np.testing.assert_allclose(post.mean, ref, rtol=0.1, atol=0.05 * np.abs(ref).max())
