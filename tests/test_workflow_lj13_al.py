"""The LJ13 active-learning study at tiny size: outputs, resume, CLI errors, notebook."""

import json

import numpy as np
import pytest

import jaxiap  # noqa: F401


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from jaxiap.workflows.lj13_al import run_lj13_al
    from jaxiap.workflows.lj13_al_config import LJ13ALConfig

    out = tmp_path_factory.mktemp("al") / "run"
    config = LJ13ALConfig.from_preset("tiny")
    return config, out, run_lj13_al(config, out, progress=False)


def test_tiny_study_outputs(tiny_run):
    from jaxiap.workflows.lj13_al_config import STRATEGY_NAMES

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


def _log(out, name, rep):
    return [json.loads(line) for line in (out / "loops" / name / f"rep{rep}" / "log.jsonl").read_text().splitlines()]


def test_learning_curves_equal_independent_refits(tiny_run):
    """Every logged fit is the BLR posterior mean of its labelled set, solved here with numpy from the
    saved pool and the summary's fixed hyperparameters; every logged error is that fit's held-out force
    error; the summary's bands, thresholds and ratios are those of the logs."""
    from jaxiap.data import load_npz
    from jaxiap.potentials.linear import design_matrix
    from jaxiap.workflows.lj13_al import make_basis
    from jaxiap.workflows.lj13_al_config import STRATEGY_NAMES

    config, out, _ = tiny_run
    s = json.loads((out / "summary.json").read_text())
    basis = make_basis(config)
    pool, test = (load_npz(out / "data" / f"{n}.npz") for n in ("pool", "test"))
    k = basis.n_features
    B = np.asarray(design_matrix(basis, pool).A).reshape(len(pool), 1 + 3 * 13, k)[:, 0, :]  # energy rows
    E = np.asarray(pool.energy)
    A_test = np.asarray(design_matrix(basis, test).A).reshape(len(test), 1 + 3 * 13, k)
    F_test = np.asarray(test.forces).reshape(len(test), -1)
    assert config.labels == "energy"  # energy rows only, noise variance sigma_E^2, prior N(0, prior_scale^2)
    nv, p0 = s["fit"]["sigma_energy"] ** 2, 1.0 / s["fit"]["prior_scale"] ** 2
    assert s["fit"]["noise_var"] == pytest.approx(nv, rel=1e-12)
    firsts = {}
    for name in STRATEGY_NAMES:
        curves = []
        for rep in range(config.repetitions):
            recs = _log(out, name, rep)
            order = [i for r in recs for i in r["selected"]]
            assert len(set(order)) == len(order) and 0 <= min(order) and max(order) < len(pool), name
            assert [r["n_labelled"] for r in recs] == s["n_labelled"]
            firsts.setdefault(rep, recs[0]["selected"])
            assert recs[0]["selected"] == firsts[rep]  # the initial set is shared within a repetition
            seen = []
            for r in recs:
                seen += r["selected"]
                Bs, c = B[seen], np.asarray(r["coefficients"])
                P, b = p0 * np.eye(k) + Bs.T @ Bs / nv, Bs.T @ E[seen] / nv
                # the normal equations hold to round-off (measured backward error <= 3e-16); the condition
                # number (up to 8e9 here) bounds the forward error against numpy's solve
                scale = np.linalg.norm(P, 2) * np.linalg.norm(c) + np.linalg.norm(b)
                assert np.linalg.norm(P @ c - b) <= 1e-13 * scale
                ref = np.linalg.solve(P, b)
                assert np.abs(c - ref).max() <= 1e-14 * np.linalg.cond(P) * np.abs(ref).max()
                df = A_test[:, 1:, :] @ c - F_test
                np.testing.assert_allclose(r["metrics"]["force_rmse_relative"],
                                           np.sqrt(np.mean(df**2)) / F_test.std(), rtol=1e-10)
            curves.append([r["metrics"]["force_rmse_relative"] for r in recs])
        band, curves = s["strategies"][name]["force_rmse_relative"], np.asarray(curves)
        np.testing.assert_allclose(band["mean"], curves.mean(0), rtol=1e-12)
        np.testing.assert_allclose(band["min"], curves.min(0), rtol=1e-12)
        np.testing.assert_allclose(band["max"], curves.max(0), rtol=1e-12)
        first = next((n for n, v in zip(s["n_labelled"], band["mean"]) if v <= s["force_threshold"]), None)
        assert s["strategies"][name]["n_to_force_threshold"] == first, name
    base = s["strategies"]["random"]["n_to_force_threshold"]
    for name in STRATEGY_NAMES:
        n = s["strategies"][name]["n_to_force_threshold"]
        assert s["strategies"][name]["relative_to_random_force"] == (None if n is None or base is None else n / base)


def test_frt_errors_equal_the_chunk_files(tiny_run):
    """The FRT errors per strategy recomputed from the replica arrays in the chunk files of the one
    batched ensemble (the full-pool fit, then strategy x repetition x checkpoint, m-major): the KS
    distance to the true runs and the error of the MD mean potential energy per atom. (At tiny size
    every run is censored at t_max, so the KS distances are all 0; the MD energies differ per fit.)"""
    from scipy.stats import ks_2samp

    from jaxiap.workflows.lj13_al_config import STRATEGY_NAMES

    config, out, _ = tiny_run
    s = json.loads((out / "summary.json").read_text())

    def chunks(folder):
        parts = [np.load(f) for f in sorted(folder.glob("chunk_*.npz"))]
        idx = np.concatenate([p["replica_index"] for p in parts])
        order = np.argsort(idx)
        np.testing.assert_array_equal(idx[order], np.arange(idx.size))
        return {k: np.concatenate([p[k] for p in parts])[order].reshape(-1, config.n_seeds)
                for k in ("time", "code", "mean_energy", "n_samples")}

    true, fit = chunks(out / "frt_true"), chunks(out / "frt_fitted")
    n_ck = len(config.frt_checkpoints)
    assert true["time"].shape[0] == 1 and fit["time"].shape[0] == 1 + len(STRATEGY_NAMES) * config.repetitions * n_ck
    assert s["frt"]["true"]["n_runs"] == config.n_seeds
    assert s["frt"]["true"]["n_events"] == int(np.sum(true["code"] == 1))

    def ks(m):
        return ks_2samp(true["time"][0][true["code"][0] != 3], fit["time"][m][fit["code"][m] != 3]).statistic

    def md_energy(r, m):  # sample-weighted mean over the non-failed replicas
        ok = r["code"][m] != 3
        return np.sum(r["mean_energy"][m][ok] * r["n_samples"][m][ok]) / np.sum(r["n_samples"][m][ok])

    e_true = md_energy(true, 0)
    err = np.array([abs(md_energy(fit, m) - e_true) / 13 for m in range(fit["time"].shape[0])])
    assert len(np.unique(err)) > err.size // 2, err  # the fits differ in their MD energies: a mix-up would show
    np.testing.assert_allclose(s["frt"]["full_pool"]["ks"], ks(0), rtol=1e-12)
    np.testing.assert_allclose(s["frt"]["full_pool"]["qoi_md_error"], err[0], rtol=1e-10)
    m = 1
    for name in STRATEGY_NAMES:
        per_ks, per_e = np.zeros((config.repetitions, n_ck)), np.zeros((config.repetitions, n_ck))
        for rep in range(config.repetitions):
            for j in range(n_ck):
                per_ks[rep, j], per_e[rep, j] = ks(m), err[m]
                m += 1
        got = s["strategies"][name]
        np.testing.assert_allclose(got["frt_ks"]["mean"], per_ks.mean(0), rtol=1e-12, err_msg=name)
        np.testing.assert_allclose(got["qoi_md_error"]["mean"], per_e.mean(0), rtol=1e-10, err_msg=name)
        np.testing.assert_allclose(got["qoi_md_error"]["max"], per_e.max(0), rtol=1e-10, err_msg=name)


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
    from jaxiap.workflows.lj13_al import make_basis
    from jaxiap.workflows.lj13_al_report import inclusion_probability_series

    config, out, _ = tiny_run
    series = load_npz(out / "data" / "series.npz")
    incl = inclusion_probability_series(make_basis(config), series)
    assert incl.shape == (config.series_frames,)
    assert np.all((incl > 0) & (incl < 1))
    # K_ii of L = k (uniform quality) equals the eigen-decomposition formula sum_n V_in^2 lam_n / (1 + lam_n)
    from jaxiap.active.dpp_kernels import quality_diversity_kernel
    from jaxiap.active.strategies import default_lengthscale, pool_features

    phi = pool_features(make_basis(config), series.structures)
    from jaxiap.workflows.lj13_al_report import SERIES_LENGTHSCALE_FACTOR

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


@pytest.mark.slow  # CI budget (29 s): the tiny study above checks the same run folder; pytest -m slow runs it
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
