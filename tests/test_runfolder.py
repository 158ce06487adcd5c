"""Run-folder safety: atomic writes, the file manifest, versions, corrupt files, SIGKILL and resume.

Each test here fails on the run-folder code before the manifest (issue 10):
``--overwrite`` deleted the whole folder, metadata had no version, corrupt
files gave raw tracebacks, and JSON held non-standard literals.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest

from jaxiap import runfolder
from jaxiap.cli import main
from jaxiap.errors import JaxiapInputError

# ----------------------------------------------------------------------------- unit level


def test_strict_json_round_trip(tmp_path):
    data = {"a": np.float64(np.inf), "b": -np.inf, "c": np.nan, "d": np.arange(3), "e": (1.5, np.int32(2)),
            "f": np.bool_(True)}
    runfolder.write_json(tmp_path / "x.json", data)
    text = (tmp_path / "x.json").read_text()
    assert "NaN" not in text and "Infinity," not in text.replace('"Infinity"', "")
    raw = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard literal {c}"))
    assert raw == {"a": "Infinity", "b": "-Infinity", "c": None, "d": [0, 1, 2], "e": [1.5, 2], "f": True}
    back = runfolder.read_json(tmp_path / "x.json")
    assert back["a"] == np.inf and back["b"] == -np.inf and back["c"] is None


def test_atomic_write_leaves_old_or_new(tmp_path, monkeypatch):
    """A writer that dies mid-write leaves the old file intact and no temporary file behind."""
    p = tmp_path / "s.json"
    runfolder.write_json(p, {"v": 1})

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(json, "dumps", boom)
    with pytest.raises(KeyboardInterrupt):
        runfolder.write_json(p, {"v": 2})
    monkeypatch.undo()
    assert runfolder.read_json(p) == {"v": 1}
    assert sorted(os.listdir(tmp_path)) == ["s.json"]


def _make_run(tmp_path, identity=None):
    out = tmp_path / "run"
    runfolder.open_run_folder(out, identity or {"seed": 0}, kind="test")
    runfolder.write_json(out / "summary.json", {"x": 1})
    runfolder.ensure_dir(out / "sub" / "deeper")
    runfolder.savez(out / "sub" / "deeper" / "a.npz", a=np.ones(2))
    return out


def test_overwrite_removes_only_what_jaxiap_wrote(tmp_path, capsys):
    out = _make_run(tmp_path)
    (out / "notes.txt").write_text("mine")
    (out / "sub" / "deeper" / "mine.dat").write_text("mine too")
    with pytest.raises(JaxiapInputError, match=r"differs in: seed.*--overwrite"):
        runfolder.open_run_folder(out, {"seed": 1}, kind="test")
    runfolder.open_run_folder(out, {"seed": 1}, kind="test", overwrite=True)
    err = capsys.readouterr().err
    assert "removed 3 files jaxiap wrote: config.json, sub/ (1 files), summary.json" in err
    assert "kept 2 other files" in err
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "sub" / "deeper" / "mine.dat").read_text() == "mine too"
    assert not (out / "summary.json").exists() and not (out / "sub" / "deeper" / "a.npz").exists()
    assert runfolder.read_json(out / "config.json")["seed"] == 1


def test_names_registered_up_front(tmp_path, monkeypatch):
    """Parallel writers (Dask tasks) list their files first: a later write does not rewrite the manifest."""
    out = runfolder.open_run_folder(tmp_path / "run", {"seed": 0}, kind="test")
    runfolder.register_names(out, ["chunk_00000.npz", "chunk_00001.npz", "chunk_00000.npz"])
    assert runfolder.written_names(out) == ["config.json", "chunk_00000.npz", "chunk_00001.npz"]
    monkeypatch.setattr(runfolder, "_write_manifest", lambda *a: pytest.fail("manifest rewritten"))
    runfolder.savez(out / "chunk_00001.npz", a=np.zeros(2))
    monkeypatch.undo()
    runfolder.open_run_folder(out, {"seed": 1}, kind="test", overwrite=True)  # a listed name never written is fine
    assert sorted(os.listdir(out)) == [".jaxiap-files", "config.json"]
    with pytest.raises(JaxiapInputError, match="not a jaxiap run folder"):
        runfolder.register_names(tmp_path, ["x.npz"])


def test_never_overwrites_a_foreign_file(tmp_path):
    out = _make_run(tmp_path)
    (out / "report.md").write_text("my own report")
    with pytest.raises(JaxiapInputError, match="report.md exists and was not written by jaxiap"):
        runfolder.write_text(out / "report.md", "jaxiap's report")
    assert (out / "report.md").read_text() == "my own report"


@pytest.mark.parametrize("overwrite", [False, True])
def test_refuses_a_folder_that_is_not_a_run_folder(tmp_path, overwrite):
    d = tmp_path / "home"
    d.mkdir()
    (d / "thesis.tex").write_text("x")
    with pytest.raises(JaxiapInputError, match="is not a jaxiap run folder"):
        runfolder.open_run_folder(d, {"seed": 0}, kind="test", overwrite=overwrite)
    assert os.listdir(d) == ["thesis.tex"]


def test_out_that_is_a_file(tmp_path):
    f = tmp_path / "run"
    f.write_text("x")
    with pytest.raises(JaxiapInputError, match="is a file"):
        runfolder.open_run_folder(f, {}, kind="test")


def test_version_and_format_are_recorded_and_checked(tmp_path):
    out = _make_run(tmp_path)
    meta = runfolder.read_json(out / "config.json")
    assert meta["jaxiap_format"] == runfolder.FORMAT and meta["jaxiap_kind"] == "test"
    assert meta["jaxiap_version"] == runfolder.__version__
    meta["jaxiap_format"] = runfolder.FORMAT + 1
    runfolder.write_json(out / "config.json", meta)
    with pytest.raises(JaxiapInputError, match=r"config.json is from run-folder format 2.*--overwrite.*new --out"):
        runfolder.open_run_folder(out, {"seed": 0}, kind="test")


def test_a_key_missing_on_disk_is_a_difference(tmp_path):
    out = _make_run(tmp_path, {"seed": 0, "new_option": None})
    meta = runfolder.read_json(out / "config.json")
    del meta["new_option"]
    runfolder.write_json(out / "config.json", meta)
    with pytest.raises(JaxiapInputError, match=r"new_option \(missing in the folder\)"):
        runfolder.open_run_folder(out, {"seed": 0, "new_option": None}, kind="test")


def test_older_format_without_manifest(tmp_path):
    d = tmp_path / "old"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"seed": 0}))
    with pytest.raises(JaxiapInputError, match="older jaxiap .run-folder format 0"):
        runfolder.open_run_folder(d, {"seed": 0}, kind="test", overwrite=True)
    assert (d / "config.json").exists()


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_metadata_is_one_line_error(tmp_path, damage):
    out = _make_run(tmp_path)
    p = out / "config.json"
    text = p.read_text()
    p.write_text({"truncate": text[: len(text) // 2], "garbage": "\x00\x01zz", "empty": ""}[damage])
    with pytest.raises(JaxiapInputError) as exc:
        runfolder.open_run_folder(out, {"seed": 0}, kind="test")
    msg = str(exc.value)
    assert "\n" not in msg and str(p) in msg and "corrupt" in msg
    # --overwrite recovers: the damaged folder's files are removed and the run starts afresh
    runfolder.open_run_folder(out, {"seed": 0}, kind="test", overwrite=True)
    assert runfolder.read_json(p)["seed"] == 0 and not (out / "summary.json").exists()


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_npz_is_one_line_error(tmp_path, damage):
    from jaxiap.data import load_npz
    from jaxiap.inference.posterior import GaussianPosterior, load_posterior

    p = tmp_path / "post.npz"
    GaussianPosterior(np.zeros(2), np.eye(2), 0.0, "lstsq").save(p)
    b = p.read_bytes()
    p.write_bytes(b[: len(b) // 2] if damage == "truncate" else b"garbage")
    with pytest.raises(JaxiapInputError, match=r"post.npz: cannot read posterior"):
        load_posterior(p)
    with pytest.raises(JaxiapInputError, match=r"post.npz: cannot read dataset"):
        load_npz(p)


# ----------------------------------------------------------------------------- MD ensemble


@pytest.fixture(scope="module")
def tiny_ensemble():
    from jaxiap.md.ensemble import FRTSettings
    from jaxiap.systems.lj import lj13_minimum

    def energy(coefficients, positions):
        from jaxiap.systems.lj import lj_energy

        return coefficients[0] * lj_energy(positions)

    settings = FRTSettings(kT=0.5, t_max=1.0, n_q=50, sample_every=10)
    return energy, np.ones((1, 1)), np.arange(4), lj13_minimum(), settings


def _run(tiny_ensemble, run_dir, **kw):
    from jaxiap.md.ensemble import run_frt_ensemble

    energy, coef, seeds, start, settings = tiny_ensemble
    return run_frt_ensemble(energy, coef, seeds, start, settings, run_dir=run_dir, chunk_size=1,
                            lanes_per_device=1, progress=False, devices=__import__("jax").devices()[:1], **kw)


def test_ensemble_corrupt_chunk_recomputed_others_kept(tmp_path, tiny_ensemble):
    d = tmp_path / "ens"
    ref = _run(tiny_ensemble, d)
    assert runfolder.written_names(d) == ["ensemble_meta.json"] + [f"chunk_{i:05d}.npz" for i in range(4)]
    inodes = {p.name: p.stat().st_ino for p in d.glob("chunk_*.npz")}
    bad = d / "chunk_00002.npz"
    bad.write_bytes(bad.read_bytes()[:100])
    with pytest.warns(RuntimeWarning, match=r"chunk_00002.npz: cannot read MD ensemble chunk.*recomputing"):
        again = _run(tiny_ensemble, d)
    for k in ("time", "code", "e0", "mean_energy", "energy_hist"):
        np.testing.assert_array_equal(getattr(again, k), getattr(ref, k))
    now = {p.name: p.stat().st_ino for p in d.glob("chunk_*.npz")}
    assert [n for n in now if now[n] != inodes[n]] == ["chunk_00002.npz"]  # only the damaged one rewritten


def test_ensemble_corrupt_meta_and_overwrite(tmp_path, tiny_ensemble):
    d = tmp_path / "ens"
    _run(tiny_ensemble, d)
    (d / "ensemble_meta.json").write_text('{"jaxiap_format": 1, "fingerp')
    (d / "my_notes.txt").write_text("keep")
    with pytest.raises(JaxiapInputError, match=r"ensemble_meta.json: cannot read run-folder metadata"):
        _run(tiny_ensemble, d)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _run(tiny_ensemble, d, overwrite=True)
    assert (d / "my_notes.txt").read_text() == "keep"
    meta = runfolder.read_json(d / "ensemble_meta.json")
    assert meta["jaxiap_kind"] == "frt-ensemble" and meta["jaxiap_format"] == runfolder.FORMAT


# ----------------------------------------------------------------------------- the CLI: SIGKILL and resume

ARGS = ["--preset", "tiny", "--seeds", "4", "--t-max", "2", "--attempts", "none", "--chunk-size", "1",
        "--devices", "1", "--no-progress"]


def _cli(out, *extra):
    cmd = [sys.executable, "-m", "jaxiap.cli", "lj13", "--out", str(out), *ARGS, *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _numbers(out):
    s = runfolder.read_json(out / "summary.json")
    s.pop("wall_time_s")
    return s


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("lj13") / "ref"
    p = _cli(out)
    log, _ = p.communicate(timeout=900)
    assert p.returncode == 0, log
    return out


@pytest.mark.slow  # CI budget (60 s: a killed subprocess); the runner's resume tests stay in the default run
def test_sigkill_mid_ensemble_then_resume(tmp_path, uninterrupted):
    out = tmp_path / "killed"
    p = _cli(out)
    first = out / "frt_true" / "chunk_00000.npz"
    deadline = time.time() + 900
    while not first.exists() and p.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    p.send_signal(signal.SIGKILL)
    p.communicate()
    assert p.returncode == -signal.SIGKILL
    chunks = sorted((out / "frt_true").glob("chunk_*.npz"))
    assert 1 <= len(chunks) < 4, "the kill must land mid-ensemble"
    assert not (out / "summary.json").exists()
    inodes = {c.name: c.stat().st_ino for c in chunks}

    p = _cli(out)
    log, _ = p.communicate(timeout=900)
    assert p.returncode == 0, log
    assert {c.name: c.stat().st_ino for c in chunks} == inodes  # finished chunks reused, not rewritten
    assert _numbers(out) == _numbers(uninterrupted)
    assert not list(out.rglob("*.jaxiap-tmp*"))


def _copy_run(uninterrupted, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(uninterrupted, out)
    return out


def _no_work(monkeypatch):
    import jaxiap.workflows.lj13 as wf

    def refuse(*a, **k):
        raise AssertionError("work started")

    monkeypatch.setattr(wf, "run_frt_ensemble", refuse, raising=False)
    import jaxiap.md.ensemble as ens

    monkeypatch.setattr(ens, "run_frt_ensemble", refuse)


@pytest.mark.slow  # CI budget (2026-11-30): runs with -m slow; a cheaper default-run test covers the same code path
def test_cli_overwrite_keeps_foreign_file(tmp_path, uninterrupted, monkeypatch, capsys):
    out = _copy_run(uninterrupted, tmp_path)
    (out / "notes.txt").write_text("my notes")
    _no_work(monkeypatch)
    assert main(["lj13", "--out", str(out), *ARGS, "--seed", "5"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "differs in: seed" in err and "--overwrite" in err

    import jaxiap.workflows.lj13 as wf

    class Stop(Exception):
        pass

    def stop(*a, **k):
        raise Stop

    monkeypatch.setattr(wf, "generate_data", stop)
    with pytest.raises(Stop):
        main(["lj13", "--out", str(out), *ARGS, "--seed", "5", "--overwrite"])
    err = capsys.readouterr().err
    assert "removed" in err and "files jaxiap wrote" in err and "kept 1 other files" in err
    # the interrupted run keeps its config.json and the resolved config.toml the CLI writes even on failure
    assert sorted(p.name for p in out.iterdir()) == [".jaxiap-files", "config.json", "config.toml", "notes.txt"]
    assert (out / "notes.txt").read_text() == "my notes"


@pytest.mark.slow  # CI budget (2026-11-30): runs with -m slow; a cheaper default-run test covers the same code path
@pytest.mark.parametrize("victim", ["config.json", "data/train.npz", "posterior.npz", "frt_true/ensemble_meta.json"])
def test_cli_corrupt_file_is_one_line_error(tmp_path, uninterrupted, victim, capsys):
    out = _copy_run(uninterrupted, tmp_path)
    (out / "summary.json").unlink()  # so the rerun gets as far as the damaged file
    b = (out / victim).read_bytes()
    (out / victim).write_bytes(b[: len(b) // 3])
    assert main(["lj13", "--out", str(out), *ARGS]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and victim in err and "truncated or corrupt" in err, err
    assert (out / victim).read_bytes() == b[: len(b) // 3]  # nothing is deleted or rewritten by the error
