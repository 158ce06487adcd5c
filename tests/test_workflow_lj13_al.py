"""The LJ13 active-learning study at tiny size: outputs, resume, CLI errors, notebook."""

import json

import numpy as np
import pytest

import jaxiap  # noqa: F401


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from jaxiap.workflows.lj13_al import LJ13ALConfig, run_lj13_al

    out = tmp_path_factory.mktemp("al") / "run"
    config = LJ13ALConfig.from_preset("tiny")
    return config, out, run_lj13_al(config, out, progress=False)


def test_tiny_study_outputs(tiny_run):
    from jaxiap.workflows.lj13_al import STRATEGY_NAMES

    config, out, summary = tiny_run
    on_disk = json.loads((out / "summary.json").read_text())
    assert set(on_disk["strategies"]) == set(STRATEGY_NAMES)
    n = on_disk["n_labelled"]
    assert n == [config.n_initial + config.batch_size * i for i in range(config.n_iterations + 1)]
    for name, s in on_disk["strategies"].items():
        band = s["force_rmse_relative"]
        assert len(band["mean"]) == len(n)
        assert all(lo <= m <= hi for lo, m, hi in zip(band["min"], band["mean"], band["max"])), name
        # every strategy starts from the same initial sets, so the first point is shared
        assert band["mean"][0] == on_disk["strategies"]["random"]["force_rmse_relative"]["mean"][0]
        # more labels help: the last fit is far better than the 2-configuration one (energy-only labels, 6 functions)
        assert band["mean"][-1] < 0.5 * band["mean"][0], name
        assert len(s["frt_ks"]["mean"]) == len(config.frt_checkpoints)
        assert "relative_to_random_force" in s and "relative_to_random_frt" in s
    assert on_disk["strategies"]["random"]["relative_to_random_force"] in (1.0, None)
    # the threshold is the configured multiple of the full-pool fit
    assert np.isclose(on_disk["force_threshold"], config.threshold_factor * on_disk["full_pool"]["force_rmse_relative"])
    for fig in ("learning_curves.png", "frt_learning_curves.png", "qoi_learning_curves.png", "inclusion_probability.png"):
        assert (out / fig).stat().st_size > 5000, fig
    assert "| d-optimal |" in (out / "report.md").read_text()
    # the loop folders hold one log line per iteration
    for name in STRATEGY_NAMES:
        lines = (out / "loops" / name / "rep0" / "log.jsonl").read_text().splitlines()
        assert len(lines) == config.n_iterations + 1


def test_rerun_resumes_with_identical_numbers(tiny_run):
    from jaxiap.workflows.lj13_al import run_lj13_al

    config, out, first = tiny_run
    again = run_lj13_al(config, out, progress=False)
    for key in ("strategies", "n_labelled", "full_pool", "force_threshold", "frt"):
        assert again[key] == json.loads(json.dumps(first[key])), key
    # nothing was recomputed: the loops resumed after their last iteration
    assert again["wall_time_s"]["loops"] < max(5.0, first["wall_time_s"]["loops"] / 3)


def test_inclusion_probabilities_sum_to_expected_size(tiny_run):
    from jaxiap.data import load_npz
    from jaxiap.workflows.lj13_al import inclusion_probability_series, make_basis

    config, out, _ = tiny_run
    series = load_npz(out / "data" / "series.npz")
    incl = inclusion_probability_series(make_basis(config), series)
    assert incl.shape == (config.series_frames,)
    assert np.all((incl > 0) & (incl < 1))
    # K_ii of L = k (uniform quality) equals the eigen-decomposition formula sum_n V_in^2 lam_n / (1 + lam_n)
    from jaxiap.active.dpp import quality_diversity_kernel
    from jaxiap.active.loop import default_lengthscale, pool_features

    phi = pool_features(make_basis(config), series.structures)
    from jaxiap.workflows.lj13_al import SERIES_LENGTHSCALE_FACTOR

    ls = SERIES_LENGTHSCALE_FACTOR * default_lengthscale(phi)
    L = np.asarray(quality_diversity_kernel(phi, np.ones(len(series)), ls))
    np.testing.assert_allclose(incl, np.diag(L @ np.linalg.inv(L + np.eye(len(L)))), atol=1e-10)


def test_cli_bad_option_one_line_error(capsys):
    from jaxiap.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["lj13-al", "--strategies", "random,bogus"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--strategies" in err and "bogus" in err
    # a setting that only the study can check: still one line, exit code 2
    assert main(["lj13-al", "--preset", "tiny", "--iterations", "500", "--out", "/nonexistent/x"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "n_iterations=500" in err


def test_notebook_runs_tiny(tiny_run, monkeypatch):
    from notebooks import execute_notebook, outputs_text  # tests/notebooks.py

    _, out, summary = tiny_run
    monkeypatch.setenv("JAXIAP_NOTEBOOK_OUT", str(out))  # reuse the finished tiny run (resumes instantly)
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")  # figures as outputs
    nb = execute_notebook("active_learning.ipynb", size="tiny", timeout=300)
    text = outputs_text(nb)
    line = next(s for s in text.splitlines() if s.startswith("AL_SUMMARY_JSON "))
    got = json.loads(line[len("AL_SUMMARY_JSON "):])
    assert got["size"] == "tiny" and got["n_labelled"] == summary["n_labelled"]
    assert got["strategies"] == sorted(summary["strategies"])
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) >= 3  # learning curves, FRT curves, inclusion probabilities
