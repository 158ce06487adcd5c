"""``jaxiap fit`` / ``predict`` / ``sweep`` on the user's own files (docs/commands.md), end to end through
``jaxiap.cli.main``.

EMT-labelled aluminium written to extended XYZ in a temporary folder: 8 strained and rattled 32-atom FCC cells
with energies, forces and stresses (a fit with stress rows and a held-out set; predictions of the same file), a
sweep of an Al6 cluster with that model (quenched bond-graph criterion, P(r), resume) and, marked slow, one of
the perfect cell (neighbour list, g(r), displacement criterion). Tiny sizes, float64, fixed seeds; about 30 s
of CPU without the slow test, which adds about 10 s.
The input errors of the three commands are rows of docs/input-errors.md, tested in tests/test_cli_errors.py.
"""

import json

import ase.io
import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.optimize import FIRE

import jaxiap  # noqa: F401  (float64)
from jaxiap.cli import main
from jaxiap.runfolder import written_names
from jaxiap.structures import from_atoms
from jaxiap.uq.variance import variance_split_grid
from jaxiap.workflows.user_model import load_model

# jax-md's dense neighbour-list pruning scatters int64 into int32 under float64 (a jax FutureWarning)
pytestmark = pytest.mark.filterwarnings("ignore:scatter inputs have incompatible types:FutureWarning")


def _cluster(n_atoms: int) -> Atoms:
    """An Al6 octahedron (edges 2.7 Å), with two atoms capping opposite faces for n_atoms = 8."""
    r0 = 2.7 / np.sqrt(2)
    pos = [r0 * np.array(v, float) for v in ((1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1))]
    if n_atoms == 8:
        c = r0 / np.sqrt(3) + np.sqrt(r0**2 / 3 - r0**2 + 2.7**2)  # 2.7 Å from the face's three atoms
        pos += [c * np.ones(3) / np.sqrt(3), -c * np.ones(3) / np.sqrt(3)]
    return Atoms(f"Al{n_atoms}", positions=pos)


def _label(frames):
    for a in frames:
        a.calc = EMT()
        a.get_potential_energy()
        if a.pbc.any():
            a.get_stress()
    return frames


def _json(path):
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """data.xyz: 8 strained and rattled 32-atom FCC Al cells labelled by EMT (energy, forces, stress);
    fcc.xyz: the perfect cell; cluster.xyz: an EMT-relaxed Al6 octahedron."""
    d = tmp_path_factory.mktemp("al")
    rng = np.random.default_rng(1)
    frames = []
    for k in range(8):
        a = bulk("Al", "fcc", a=4.05 * (1 + 0.01 * rng.normal()), cubic=True).repeat(2)
        a.positions += rng.normal(scale=0.04 + 0.04 * (k % 3), size=a.positions.shape)
        frames.append(a)
    ase.io.write(d / "data.xyz", _label(frames), format="extxyz")
    ase.io.write(d / "fcc.xyz", bulk("Al", "fcc", a=4.05, cubic=True).repeat(2), format="extxyz")
    cluster = _cluster(6)
    cluster.calc = EMT()
    FIRE(cluster, logfile=None).run(fmax=1e-4)
    cluster.calc = None
    ase.io.write(d / "cluster.xyz", cluster, format="extxyz")
    return d


@pytest.fixture(scope="module")
def fitted(files):
    """``jaxiap fit`` of data.xyz: radial, 4 Chebyshev functions inside 3.7 Å (the 8.1 Å cells allow < 4.05 Å),
    stress rows, default solver (evidence-maximising BLR), 2 of 8 cells held out."""
    fit = files / "fit"
    assert main(["fit", str(files / "data.xyz"), "--out", str(fit), "--basis-size", "4", "--r-cut", "3.7",
                 "--stress-weight", "10", "--held-out", "0.25", "--no-progress"]) == 0
    return fit


def test_fit_writes_model_errors_and_calibration(files, fitted, capsys):
    for name in ("posterior.npz", "model.json", "summary.json", "report.md", "parity.png", "calibration.png",
                 "config.toml", "config.json"):
        assert name in written_names(fitted), name
    s = _json(fitted / "summary.json")
    frames = ase.io.read(files / "data.xyz", ":")
    assert s["data"]["n_train"] == 6 and s["data"]["n_held_out"] == 2 and s["data"]["periodic"]
    assert s["data"]["n_with_stress"] == 8 and s["model"]["n_features"] == 5  # 4 radial + 1 reference energy
    assert s["model"]["posterior_kind"] == "blr" and s["calibration_set"] == "held_out"
    for name in ("train", "held_out"):
        e = s[name]
        assert e["force_rmse"] < 0.2 * e["force_std"], name
        # the stress rows fit EMT's stresses (ASE's sign convention: (1/V) dE/d strain)
        assert e["stress_rmse"] < 0.2 * np.std([a.get_stress() for a in frames]), name
    cal = s["held_out"]["calibration_forces"]
    assert cal["n_components"] == 2 * 32 * 3 and 0 <= cal["within_1std"] <= cal["within_2std"] <= 1
    assert 0 <= cal["miscalibration_area"] <= 0.5 and np.isfinite(cal["nll"])
    assert cal["rms_predicted_std"] ** 2 == pytest.approx(cal["rms_model_std"] ** 2 + cal["noise_std"] ** 2)
    model = json.loads((fitted / "model.json").read_text())
    assert model["descriptor"] == "radial" and model["species_names"] == ["Al"]
    assert (fitted / "config.toml").read_text().splitlines()[3] == f'data = "{files / "data.xyz"}"'
    # the same command refits into its folder; other settings are refused
    capsys.readouterr()
    assert main(["fit", str(files / "data.xyz"), "--out", str(fitted), "--r-cut", "3.7", "--basis-size", "5",
                 "--no-progress"]) == 2
    assert "holds a run with other settings" in capsys.readouterr().err


def test_predict_writes_the_posterior_prediction(files, fitted, tmp_path, capsys):
    data = files / "data.xyz"
    pred = tmp_path / "predicted.xyz"
    assert main(["predict", str(fitted), str(data), "--out", str(pred), "--no-progress"]) == 0
    model = load_model(fitted)
    frames = ase.io.read(data, ":")
    ref = model.posterior.predict_structures(from_atoms(frames, species_names=model.species_names),
                                             basis=model.basis)
    got = ase.io.read(pred, ":")
    assert len(got) == len(frames)
    for k, a in enumerate(got):
        assert a.get_potential_energy() == pytest.approx(float(ref.energy[k]), abs=1e-10)
        assert abs(a.info["energy_std"] - float(ref.energy_std[k])) < 1e-10
        np.testing.assert_allclose(a.get_forces(), np.asarray(ref.forces[k]), rtol=0, atol=1e-10)
        np.testing.assert_allclose(a.arrays["forces_std"], np.asarray(ref.forces_std[k]), rtol=0, atol=1e-10)
        assert a.info["ref_energy"] == pytest.approx(frames[k].get_potential_energy(), abs=1e-12)
        np.testing.assert_allclose(a.cell[:], frames[k].cell[:], rtol=0, atol=0)
    # rerunning onto its own output is fine; a file it did not write is never overwritten
    assert main(["predict", str(fitted), str(data), "--out", str(pred), "--no-progress"]) == 0
    foreign = tmp_path / "mine.xyz"
    foreign.write_text("my notes\n")
    capsys.readouterr()
    assert main(["predict", str(fitted), str(data), "--out", str(foreign), "--no-progress"]) == 2
    assert "exists and was not written by jaxiap predict" in capsys.readouterr().err
    assert foreign.read_text() == "my notes\n"


def _check_split(e, values):
    """The law of total variance: total = thermal + parametric (both estimates); the plug-in one is the plain
    variance of all trajectories' values, the thermal one the mean over samples of the variance over seeds."""
    assert e["total"] == pytest.approx(e["thermal"] + e["parametric"], rel=1e-12)
    assert e["plugin"]["total"] == pytest.approx(e["plugin"]["thermal"] + e["plugin"]["parametric"], rel=1e-12)
    assert e["plugin"]["total"] == pytest.approx(np.var(values), rel=1e-10)
    assert e["thermal"] == pytest.approx(np.mean(np.var(values, axis=1, ddof=1)), rel=1e-10)
    assert e["mean"] == pytest.approx(values.mean(), rel=1e-12)
    # the crossed (common random numbers) estimate: (MS_samples - MS_residual) / R, here with M = R = 2
    m, r = values.shape
    row, col, grand = values.mean(1), values.mean(0), values.mean()
    ms_a = r * np.sum((row - grand) ** 2) / (m - 1)
    ms_e = np.sum((values - row[:, None] - col[None] + grand) ** 2) / ((m - 1) * (r - 1))
    assert e["design"] == "crossed" and e["parametric"] == pytest.approx(max(0.0, (ms_a - ms_e) / r), abs=1e-30)


@pytest.mark.slow  # about 10 s more (its own MD compilation): run with python -m pytest -m slow
def test_sweep_in_a_periodic_cell(files, fitted, tmp_path):
    """2 posterior samples x 2 seeds, 60 steps of the 32-atom cell: neighbour list, g(r), displacement criterion."""
    sweep = tmp_path / "sweep"
    argv = ["sweep", str(fitted), str(files / "fcc.xyz"), "--out", str(sweep), "--preset", "tiny", "--skin", "0.3",
            "--temperature", "500", "--devices", "1", "--no-progress"]
    assert main(argv) == 0
    for name in ("qoi.npz", "summary.json", "report.md", "rdf.png", "pe.png", "config.toml", "md/"):
        assert name in written_names(sweep), name
    s = _json(sweep / "summary.json")
    assert s["n_runs"] == 4 and s["n_failed"] == 0 and s["start"]["periodic"]
    assert s["settings"]["basin"] == "displacement" and s["settings"]["frames_per_trajectory"] == 8
    assert s["neighbor_rebuilds"] >= 0
    q = np.load(sweep / "qoi.npz")
    pe, rdf, r = q["pe_per_atom"], q["rdf"], q["r"]
    assert pe.shape == (2, 2) and rdf.shape == (2, 2, 30)
    _check_split(s["qoi"]["pe_per_atom"], pe)
    g = s["qoi"]["rdf"]
    assert g["kind"] == "g(r)" and g["total"] == pytest.approx(g["thermal"] + g["parametric"], rel=1e-12)
    np.testing.assert_allclose(np.asarray(g["total_per_bin"]),
                               np.asarray(g["thermal_per_bin"]) + np.asarray(g["parametric_per_bin"]), rtol=1e-12)
    assert np.all(rdf[..., r < 2.2] == 0) and rdf.max() > 1  # no pair closer than 2.2 Å; the first shell peaks
    b = s["qoi"]["basin"]
    assert b["criterion"] == "displacement" and b["n_runs"] == 4 and b["n_changed"] == 0  # a solid at 500 K


def test_sweep_of_a_free_cluster_and_resume(files, fitted, tmp_path, capsys):
    """2 posterior samples x 2 seeds, 60 steps of a free Al6 cluster with the model fitted to the cells (dense
    pairs): the quenched bond-graph criterion, P(r), the variance splits; resume and refusal."""
    sweep = tmp_path / "sweep"
    argv = ["sweep", str(fitted), str(files / "cluster.xyz"), "--out", str(sweep), "--preset", "tiny",
            "--temperature", "900", "--devices", "1", "--no-progress"]
    assert main(argv) == 0
    for name in ("qoi.npz", "summary.json", "report.md", "rdf.png", "pe.png", "config.toml", "md/"):
        assert name in written_names(sweep), name
    s = _json(sweep / "summary.json")
    assert s["n_runs"] == 4 and s["n_failed"] == 0 and not s["start"]["periodic"]
    assert s["settings"]["basin"] == "graph" and 2.74 < s["settings"]["bond_cutoff"] < 3.88
    assert s["quench_unconverged"] == 0  # every basin check's FIRE quench converged, so every check decided
    q = np.load(sweep / "qoi.npz")
    _check_split(s["qoi"]["pe_per_atom"], q["pe_per_atom"])
    assert s["qoi"]["rdf"]["kind"] == "P(r)"
    dr = float(q["r"][1] - q["r"][0])
    np.testing.assert_allclose(q["rdf"].sum(axis=-1) * dr, 1.0, rtol=1e-12)  # every pair is inside r_max
    b = s["qoi"]["basin"]
    assert b["criterion"] == "graph" and b["n_runs"] == 4 and 0 <= b["n_changed"] <= 4
    assert b["split"]["total"] == pytest.approx(b["split"]["thermal"] + b["split"]["parametric"], abs=1e-15)
    assert s["settings"]["frames_per_trajectory"] == 8 and q["pe_per_atom"].shape == (2, 2)
    assert q["rdf"].shape == (2, 2, 30) and q["basin_code"].shape == (2, 2)
    # rerunning the same command resumes from the MD checkpoint: the same numbers, the chunk not rewritten
    chunk = sweep / "md" / "chunk_00000.npz"
    mtime = chunk.stat().st_mtime_ns
    assert main(argv) == 0
    assert _json(sweep / "summary.json")["qoi"] == s["qoi"] and chunk.stat().st_mtime_ns == mtime
    # other settings into the same folder are refused
    capsys.readouterr()
    assert main([*argv[:-1], "--seeds", "3", "--no-progress"]) == 2
    assert "holds a run with other settings" in capsys.readouterr().err


def test_variance_split_grid_adds_up():
    rng = np.random.default_rng(3)
    q = rng.normal(size=(5, 7, 4)) + rng.normal(size=(5, 1, 1))
    ok = np.ones((5, 7), bool)
    ok[2, 3] = ok[4, 0] = False
    s = variance_split_grid(q, ok)
    np.testing.assert_allclose(s["total"], s["thermal"] + s["parametric"], rtol=1e-12)
    np.testing.assert_allclose(s["plugin"]["total"], np.var(q[ok], axis=0), rtol=1e-12)
    assert s["design"] == "crossed" and s["n_samples"] == 3  # the samples without a failed seed
    one = variance_split_grid(q[:1, :, 0])
    assert one["parametric"] == 0.0 and one["total"] == pytest.approx(np.var(q[0, :, 0], ddof=1))
    assert one["design"] == "nested"


def test_crossed_split_resolves_what_common_random_numbers_share():
    """q = a_m + b_r + e_mr with the seed effect b shared by every sample (common random numbers): the crossed
    estimate of the parametric variance is unbiased, the nested (one-way) one loses most of it."""
    rng = np.random.default_rng(0)
    crossed, nested, thermal = [], [], []
    for _ in range(600):
        x = rng.normal(0, 0.3, (6, 1)) + rng.normal(0, 1.0, (1, 8)) + rng.normal(0, 0.1, (6, 8))
        c = variance_split_grid(x)
        crossed.append(c["parametric"])
        thermal.append(c["thermal"])
        nested.append(variance_split_grid(x, design="nested")["parametric"])
    assert np.mean(crossed) == pytest.approx(0.09, rel=0.1)
    assert np.mean(thermal) == pytest.approx(1.01, rel=0.1)
    assert np.mean(nested) < 0.5 * 0.09


def test_commands_doc_lists_every_option_and_its_commands_parse():
    """docs/commands.md: each command's option table names every option of its parser and its config field,
    and the example session's jaxiap lines parse."""
    import argparse
    import re
    import shlex
    from pathlib import Path

    from jaxiap.cli import build_parser
    from jaxiap.workflows import fit_config, predict_config, sweep_config

    text = (Path(__file__).resolve().parents[1] / "docs" / "commands.md").read_text()
    parser = build_parser()
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    sections = re.split(r"^## ", text, flags=re.M)
    for command, module in (("fit", fit_config), ("predict", predict_config), ("sweep", sweep_config)):
        section = next(s for s in sections if s.startswith(f"`jaxiap {command} "))
        rows = {}
        for line in section.splitlines():
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if line.startswith("| `") and len(cells) == 4:
                rows[cells[0].strip("`")] = cells[1].strip("`")
        options = {o for o in subs[command]._option_string_actions if o not in ("-h", "--help")}
        assert options <= set(rows), options - set(rows)
        for field, flag in module.CLI_FLAGS.items():
            assert rows[flag] == field, (command, flag)
    block = re.search(r"## An example session.*?```bash\n(.*?)```", text, flags=re.S).group(1)
    lines = [ln for ln in block.splitlines() if ln.startswith("jaxiap ")]
    assert [shlex.split(ln)[1] for ln in lines] == ["fit", "predict", "sweep"]
    for ln in lines:
        parser.parse_args(shlex.split(ln)[1:])


@pytest.mark.slow  # CI budget: a fit and a 2 x 2 sweep inside a notebook kernel (about 35 s on 2 cores)
def test_from_extxyz_notebook_runs_at_the_tiny_size(tmp_path, monkeypatch):
    """notebooks/from_extxyz.ipynb: extxyz -> posterior -> MD ensemble -> figure; its numbers equal the run
    folders' summaries and are sane (a held-out force RMSE of a radial fit to EMT Al well below the forces)."""
    from notebooks import execute_notebook, outputs_text  # tests/notebooks.py

    monkeypatch.setenv("JAXIAP_NOTEBOOK_OUT", str(tmp_path / "nb"))
    nb = execute_notebook("from_extxyz.ipynb", size="tiny", timeout=600)
    line = [x for x in outputs_text(nb).splitlines() if x.startswith('{"size": "tiny"')][-1]
    out = json.loads(line)
    fit = _json(tmp_path / "nb" / "fit" / "summary.json")
    sweep = _json(tmp_path / "nb" / "sweep" / "summary.json")
    assert out["force_rmse"] == fit["held_out"]["force_rmse"] and 0 < out["force_rmse"] < 0.1
    assert out["rdf_parametric_fraction"] == sweep["qoi"]["rdf"]["parametric_fraction"]
    assert 0 <= out["rdf_parametric_fraction"] <= 1
    assert (tmp_path / "nb" / "rdf_band.png").stat().st_size > 10_000
