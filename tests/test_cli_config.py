"""``jaxiap <command> --config FILE.toml`` and the run folder's ``config.toml`` (docs/config.md).

Config resolution is tested directly (``jaxiap.cli.study_config`` on parsed arguments, no study runs);
one tiny ``jaxiap otf`` run (the cheapest study, seconds) is made from a config file and rerun from the
``config.toml`` it wrote. The error cases are the config-file table of docs/input-errors.md, both ways.
"""

import dataclasses
import json
import re
import shlex
import time
from pathlib import Path

import pytest

import jaxiap.workflows.lj13 as lj13
import jaxiap.workflows.lj13_al as lj13_al
import jaxiap.workflows.otf_al as otf_al
import jaxiap.workflows.uq_compare as uq_compare
from jaxiap.cli import STUDY_CONFIGS, _overrides, build_parser, main, study_config
from jaxiap.errors import JaxiapInputError
from jaxiap.runfolder import written_names
from jaxiap.workflows import (fit_config, lj13_al_config, lj13_config, otf_config, predict_config, sweep_config,
                              uq_compare_config)
from jaxiap.workflows.config_file import config_toml, resolve_config, toml_value

DOC = Path(__file__).resolve().parents[1] / "docs" / "input-errors.md"
MODULES = {"lj13": lj13_config, "lj13-al": lj13_al_config, "otf": otf_config, "uq-compare": uq_compare_config,
           "fit": fit_config, "predict": predict_config, "sweep": sweep_config}


def _config(argv):
    """The config ``jaxiap <argv>`` would run, resolved as the CLI does (nothing runs)."""
    return study_config(build_parser().parse_args(argv))


def _write(path, text):
    path.write_text(text)
    return str(path)


# ----------------------------------------------------------------------------- round trip


@pytest.mark.parametrize("command", list(MODULES))
def test_every_config_round_trips_through_toml(command, tmp_path):
    """config -> config.toml text -> config is the identity, for every preset (defaults included)."""
    module = MODULES[command]
    cls = getattr(module, STUDY_CONFIGS[command][1])
    configs = [cls()] + [cls.from_preset(p) for p in module.PRESETS]
    if command == "otf":  # every nullable field None, and a non-default float
        configs.append(cls.from_preset("cpu", r_cut_3=None, distance_guard=None, core_repulsion=None,
                                       liquid_thermostat=1500.0, hyp_step_factor=None, std_tolerance=-0.05))
    if command == "lj13":
        configs.append(cls.from_preset("tiny", pce_degree=1, chunk_size=None, kT=0.1 + 0.2, attempts="mle"))
    if command == "fit":  # input files are fields too; r_min None (automatic) and a float
        configs.append(cls.from_preset("tiny", data="my data.xyz", r_min=1.5, descriptor="ace", solver="bootstrap",
                                       species_reference=False))
    if command == "sweep":
        configs.append(cls.from_preset("gpu", model="runs/fit", start="start.xyz", rdf_r_max=4.5, skin=0.3,
                                       chunk_size=64, basin="off"))
    for config in configs:
        text = config_toml(config, command)
        assert len([ln for ln in text.splitlines() if not ln.startswith("#")]) == len(dataclasses.fields(cls))
        f = _write(tmp_path / "config.toml", text)
        back = resolve_config(cls, module.CLI_FLAGS, tuple(module.PRESETS), path=f)
        assert back == config, command
        assert dataclasses.asdict(back) == dataclasses.asdict(config)
        assert config_toml(back, command) == text
        # and through the command line, with a --preset that the file's full settings make irrelevant
        # (jaxiap predict has no presets)
        assert _config([command, "--config", f, *(["--preset", "tiny"] if "tiny" in module.PRESETS else [])]) == config


def test_toml_values():
    assert toml_value(None) == '"none"'
    assert toml_value(True) == "true" and toml_value(3) == "3" and toml_value(0.1) == "0.1"
    assert toml_value(float("inf")) == "inf" and toml_value(1e-300) == "1e-300"
    assert toml_value(("a", 'b"\\')) == '["a", "b\\"\\\\"]'
    import tomllib

    for v in (0.1 + 0.2, 1e22, -0.0, 5e-324, "Å tab\t del\x7f nl\n", (1, 2), ()):
        got = tomllib.loads(f"x = {toml_value(v)}")["x"]
        assert (tuple(got) if isinstance(got, list) else got) == v


# ----------------------------------------------------------------------------- resolution and precedence


LJ13_FLAGS = ["--preset", "tiny", "--seed", "7", "--kT", "0.25", "--seeds", "6", "--n-q", "50", "--t-max", "4",
              "--criterion", "energy", "--train-trajectories", "3", "--basis", "bessel", "--basis-size", "4",
              "--r-cut", "2.5", "--attempts", "mle,posterior", "--posterior-samples", "8",
              "--sample-posterior", "nig", "--attempt-seeds", "3", "--pce-degree", "1", "--chunk-size", "12"]
LJ13_TOML = """\
preset = "tiny"
seed = 7
kT = 0.25
n_seeds = 6
n_q = 50
t_max = 4          # an integer is accepted for a float field
criterion = "energy"
n_trajectories = 3
basis = "bessel"
basis_size = 4
r_cut = 2.5
attempts = "mle,posterior"
n_posterior_samples = 8
sample_posterior = "nig"
attempt_seeds = 3
pce_degree = 1
chunk_size = 12
"""


def test_lj13_config_file_equals_the_same_flags(tmp_path):
    f = _write(tmp_path / "run.toml", LJ13_TOML)
    by_flags = _config(["lj13", *LJ13_FLAGS])
    by_file = _config(["lj13", "--config", f])
    assert by_file == by_flags
    assert isinstance(by_file.t_max, float) and by_file.t_max == 4.0
    assert by_file != lj13_config.LJ13Config.from_preset("tiny")  # the file did set something


FLAG_SETS = {  # per command: options given on the command line, to be written as a config file instead
    "lj13": LJ13_FLAGS,
    "lj13-al": ["--preset", "tiny", "--strategies", "random,qbc", "--iterations", "2", "--batch-size", "3",
                "--no-frt", "--labels", "energy+forces", "--generator", "langevin", "--candidates", "8"],
    "otf": ["--r-cut", "3.0", "--r-cut-3", "none", "--distance-guard", "none", "--liquid-thermostat", "1200",
            "--steps", "400", "--melt-ps", "1", "--std-tolerance", "-0.1"],
    "uq-compare": ["--preset", "tiny", "--datasets", "al", "--methods", "gmm,mve", "--hidden", "8,4",
                   "--members", "3", "--learning-rate", "0.01"],
    "fit": ["--preset", "tiny", "--descriptor", "ace", "--r-min", "none", "--r-cut", "4.5", "--no-species-reference",
            "--solver", "nig", "--stress-weight", "2", "--energy-key", "REF_energy", "--held-out", "0"],
    "sweep": ["--preset", "tiny", "--temperature", "450", "--timestep", "2", "--samples", "3", "--basin", "off",
              "--rdf-r-max", "none", "--skin", "0.3", "--chunk-size", "6"],
    "predict": ["--batch-size", "8", "--index", "::2"],
}


@pytest.mark.parametrize("command", list(FLAG_SETS))
def test_config_file_equals_the_same_options(command, tmp_path):
    """For every command: the given options' fields written as a TOML file resolve to the same config
    (derived settings included: lj13-al re-derives its FRT checkpoints, otf's cpu preset 3-body cutoff
    3.2 > r_cut 3.0 is switched off by the same file)."""
    args = build_parser().parse_args([command, *FLAG_SETS[command]])
    fields = _overrides(args, MODULES[command].CLI_FLAGS)
    lines = [f'preset = "{args.preset}"'] if args.preset else []
    lines += [f"{k} = {toml_value(v)}" for k, v in fields.items()]
    f = _write(tmp_path / "run.toml", "\n".join(lines) + "\n")
    by_file = _config([command, "--config", f])
    assert by_file == _config([command, *FLAG_SETS[command]])
    for k, v in fields.items():
        assert getattr(by_file, k) == (None if v == "none" else v), k


def test_precedence_defaults_preset_file_options(tmp_path):
    f = _write(tmp_path / "run.toml", 'preset = "tiny"\nseed = 5\nn_seeds = 10\nt_max = 6.0\n')
    tiny = lj13_config.LJ13Config.from_preset("tiny")
    c = _config(["lj13", "--config", f])
    assert (c.seed, c.n_seeds, c.t_max) == (5, 10, 6.0)                 # file over preset
    assert c.n_trajectories == tiny.n_trajectories != lj13_config.DEFAULTS.n_trajectories  # preset over defaults
    assert c.kT == lj13_config.DEFAULTS.kT                              # defaults where nobody sets it
    c = _config(["lj13", "--config", f, "--seeds", "12"])               # a given option over the file
    assert (c.seed, c.n_seeds, c.t_max) == (5, 12, 6.0)                 # argparse defaults (None) do not clobber
    c = _config(["lj13", "--config", f, "--preset", "cpu"])             # --preset over the file's preset key
    assert (c.seed, c.n_seeds, c.n_trajectories) == (5, 10, lj13_config.DEFAULTS.n_trajectories)
    assert _config(["lj13"]) == lj13_config.DEFAULTS                    # no file, no preset: cpu
    # a switch the file sets stays set when the option is left out; the option can only switch off
    g = _write(tmp_path / "al.toml", "frt = false\nrepetitions = 2\n")
    assert _config(["lj13-al", "--config", g]).frt is False
    assert _config(["lj13-al", "--config", g, "--repetitions", "4"]).repetitions == 4
    # an empty file is the preset
    e = _write(tmp_path / "empty.toml", "# nothing\n")
    assert _config(["otf", "--config", e, "--preset", "tiny"]) == otf_config.OTFConfig.from_preset("tiny")


def test_file_arrays_and_none(tmp_path):
    f = _write(tmp_path / "run.toml", 'pool_kTs = [0.2, 1]\nstrategies = ["random", "qbc"]\n'
                                      'frt_checkpoints = [4, 8]\npreset = "tiny"\n')
    c = _config(["lj13-al", "--config", f])
    assert c.pool_kTs == (0.2, 1.0) and c.strategies == ("random", "qbc") and c.frt_checkpoints == (4, 8)
    g = _write(tmp_path / "otf.toml", 'r_cut_3 = "none"\ncore_repulsion = "None"\nliquid_thermostat = 900\n')
    c = _config(["otf", "--config", g])
    assert (c.r_cut_3, c.core_repulsion, c.liquid_thermostat) == (None, None, 900.0)
    assert _config(["otf", "--config", g, "--r-cut-3", "2.5"]).r_cut_3 == 2.5


# ----------------------------------------------------------------------------- error cases (docs table)


#: (command, lines of run.toml or None for no file, options) — one per row of the config-file table
CONFIG_CASES = [
    ("lj13", None, "--config run.toml"),
    ("lj13", ("kT = 0.3", "n_seeds = 8 8"), "--config run.toml"),
    ("lj13", ("n_seed = 8",), "--config run.toml"),
    ("lj13", ("seeds = 8",), "--config run.toml"),
    ("lj13", ("n-q = 20",), "--config run.toml"),
    ("lj13", ('out = "runs/x"',), "--config run.toml"),
    ("lj13", ('n_seeds = "many"',), "--config run.toml"),
    ("lj13", ('kT = "0.3"',), "--config run.toml"),
    ("lj13", ("chunk_size = 1e3",), "--config run.toml"),
    ("lj13", ('preset = "huge"',), "--config run.toml"),
    ("lj13-al", ('strategies = "random,qbc"',), "--config run.toml"),
    ("otf", ('r_cut_3 = "off"',), "--config run.toml"),
    ("uq-compare", ("hidden = [32, 32.5]",), "--config run.toml"),
    ("uq-compare", ("[networks]", "hidden = [32]"), "--config run.toml"),
    ("lj13", ("n_seeds = 1",), "--config run.toml"),
]


def _config_rows():
    """{(command, lines or None, options): message excerpt} from the config-file table of input-errors.md."""
    rows = {}
    for line in DOC.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("|") else []
        if len(cells) != 5 or not cells[0].startswith("`"):
            continue
        m = re.fullmatch(r"`jaxiap (lj13(?:-al)?|otf|uq-compare) --config`", cells[0])
        assert m, cells[0]
        lines = None if cells[1] == "no file" else tuple(re.findall(r"`([^`]*)`", cells[1]))
        key = (m.group(1), lines, cells[2].strip("`"))
        assert key not in rows, f"duplicate row {key}"
        rows[key] = cells[3].strip("`")
    return rows


CONFIG_ROWS = _config_rows()


def test_config_table_and_cases_agree():
    assert len(set(CONFIG_CASES)) == len(CONFIG_CASES) == len(CONFIG_ROWS)
    assert set(CONFIG_ROWS) - set(CONFIG_CASES) == set(), "rows of docs/input-errors.md without a test case"
    assert set(CONFIG_CASES) - set(CONFIG_ROWS) == set(), "test cases without a row in docs/input-errors.md"


@pytest.fixture
def no_work(monkeypatch):
    """Any data generation fails the test; XLA_FLAGS (set by the CLI) is restored afterwards."""
    import os

    monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))

    def work_started(*args, **kwargs):
        raise AssertionError("the study started work before rejecting its config file")

    monkeypatch.setattr(lj13, "generate_data", work_started)
    monkeypatch.setattr(lj13_al, "generate_data", work_started)
    monkeypatch.setattr(otf_al, "run_otf", work_started)
    monkeypatch.setattr(uq_compare, "load_data", work_started)


@pytest.mark.parametrize("command,lines,options", CONFIG_CASES, ids=[f"{c} {ln}" for c, ln, _ in CONFIG_CASES])
def test_bad_config_file_fails_at_once(command, lines, options, tmp_path, monkeypatch, capsys, no_work):
    monkeypatch.chdir(tmp_path)  # the table's messages name the file as given: run.toml
    if lines is not None:
        (tmp_path / "run.toml").write_text("\n".join(lines) + "\n")
    t0 = time.perf_counter()
    rc = main([command, *shlex.split(options), "--out", "run", "--no-progress"])
    elapsed = time.perf_counter() - t0
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"jaxiap {command}: error: "), err
    assert CONFIG_ROWS[(command, lines, options)] in err, err
    assert not (tmp_path / "run").exists()
    assert elapsed < 5.0


def test_unreadable_config_files(tmp_path):
    cls, flags, presets = lj13_config.LJ13Config, lj13_config.CLI_FLAGS, tuple(lj13_config.PRESETS)
    with pytest.raises(JaxiapInputError, match="is a folder, not a TOML file"):
        resolve_config(cls, flags, presets, path=tmp_path)
    (tmp_path / "bad.toml").write_bytes(b"basis = '\xff'\n")
    with pytest.raises(JaxiapInputError, match="not a UTF-8 text file"):
        resolve_config(cls, flags, presets, path=tmp_path / "bad.toml")
    (tmp_path / "two.toml").write_text("seeds = 1\nn-q = 20\n")  # every unknown key is reported
    with pytest.raises(JaxiapInputError, match="'seeds'.*'n-q'"):
        resolve_config(cls, flags, presets, path=tmp_path / "two.toml")
    (tmp_path / "date.toml").write_text("seed = 2024-01-01\n")
    with pytest.raises(JaxiapInputError, match="seed = .* is a date or time; seed \\(--seed\\) takes an integer"):
        resolve_config(cls, flags, presets, path=tmp_path / "date.toml")


# ----------------------------------------------------------------------------- run folders


def _numbers(summary: dict) -> dict:
    """summary.json without its wall-clock timings."""
    return {k: v for k, v in summary.items() if "wall" not in k and "seconds" not in k}


def _flat(x, prefix=""):
    """{path: leaf} of nested dicts and lists."""
    if isinstance(x, dict):
        return {p: v for k, item in x.items() for p, v in _flat(item, f"{prefix}/{k}").items()}
    if isinstance(x, list):
        return {p: v for i, item in enumerate(x) for p, v in _flat(item, f"{prefix}/{i}").items()}
    return {prefix: x}


def test_run_from_config_file_writes_and_reproduces_its_config_toml(tmp_path, capsys):
    """The cheapest study (otf, tiny, 16 MD steps): a run from a config file writes config.toml (every
    field, listed as written by jaxiap); a run from that file into a new folder gives the same config
    and the same numbers; rerunning into the first folder with its own config.toml resumes."""
    f = _write(tmp_path / "run.toml", 'preset = "tiny"\nn_steps = 16\nn_test = 2\n')
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["otf", "--config", f, "--out", str(a), "--no-progress"]) == 0
    config = _config(["otf", "--config", f])
    assert "config.toml" in written_names(a) and "config.json" in written_names(a)
    assert (a / "config.toml").read_text() == config_toml(config, "otf")
    recorded = json.loads((a / "config.json").read_text())
    assert {k: recorded[k] for k in dataclasses.asdict(config)} == json.loads(json.dumps(dataclasses.asdict(config)))

    assert _config(["otf", "--config", str(a / "config.toml")]) == config
    assert main(["otf", "--config", str(a / "config.toml"), "--out", str(b), "--no-progress"]) == 0
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (a, b))
    assert _numbers(sa) == _numbers(sb)
    assert (b / "config.toml").read_text() == (a / "config.toml").read_text()
    # same folder, same config: resumed, not refused (the GP read back from its checkpoint predicts the
    # same to round-off, as tests/test_otf.py checks for a resumed run)
    assert main(["otf", "--config", str(a / "config.toml"), "--out", str(a), "--no-progress"]) == 0
    resumed, first = _flat(_numbers(json.loads((a / "summary.json").read_text()))), _flat(_numbers(sa))
    assert resumed.keys() == first.keys()
    for k, v in first.items():
        assert resumed[k] == (pytest.approx(v, rel=1e-9) if isinstance(v, float) else v), k
    # another config into that folder is refused, and its config.toml is left as it was
    text = (a / "config.toml").read_text()
    assert main(["otf", "--config", str(a / "config.toml"), "--seed", "1", "--out", str(a), "--no-progress"]) == 2
    assert "holds a run with other settings (differs in: seed)" in capsys.readouterr().err
    assert (a / "config.toml").read_text() == text


@pytest.mark.slow  # two small lj13 runs (~1 minute each on 2 cores)
def test_lj13_run_by_config_file_equals_flags_and_reruns_from_its_folder(tmp_path):
    """Issue 16's acceptance, as runs: ``jaxiap lj13 --config f.toml`` gives the same summary numbers as
    the same options given as flags, and a run from the folder's own config.toml into a new folder
    reproduces them."""
    small = ["--attempts", "mle", "--seeds", "6", "--t-max", "3"]
    f = _write(tmp_path / "run.toml", 'preset = "tiny"\nseed = 3\nattempts = "mle"\nn_seeds = 6\nt_max = 3\n')
    a, b, c = tmp_path / "flags", tmp_path / "file", tmp_path / "rerun"
    assert main(["lj13", "--preset", "tiny", "--seed", "3", *small, "--out", str(a), "--no-progress"]) == 0
    assert main(["lj13", "--config", f, "--out", str(b), "--no-progress"]) == 0
    assert (a / "config.toml").read_text() == (b / "config.toml").read_text()
    assert main(["lj13", "--config", str(b / "config.toml"), "--out", str(c), "--no-progress"]) == 0
    sa, sb, sc = (_flat(_numbers(json.loads((d / "summary.json").read_text()))) for d in (a, b, c))
    assert sa == sb == sc
    assert any(isinstance(v, float) for v in sa.values())  # numbers were compared, not only names


def test_foreign_config_toml_in_the_run_folder_is_never_overwritten(tmp_path, capsys, no_work):
    """A config.toml jaxiap did not write (e.g. the user's input file put into the run folder) stops the
    command before any work."""
    from jaxiap.runfolder import ensure_dir

    out = ensure_dir(tmp_path / "run")
    mine = out / "config.toml"
    mine.write_text('preset = "tiny"\n')
    assert main(["otf", "--config", str(mine), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "config.toml exists and was not written by jaxiap" in err and "\n" not in err.strip()
    assert mine.read_text() == 'preset = "tiny"\n' and not (out / "config.json").exists()


def test_docs_example_resolves_and_its_commands_parse(tmp_path, monkeypatch):
    """docs/config.md: its example file is a valid lj13 config equal to the same options, and its
    command lines parse with the real parser."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "config.md").read_text()
    example = re.search(r"```toml\n(.*?)```", text, flags=re.S).group(1)
    monkeypatch.chdir(tmp_path)
    _write(tmp_path / "run.toml", example)
    c = _config(["lj13", "--config", "run.toml"])
    assert c == _config(["lj13", "--preset", "cpu", "--seed", "3", "--kT", "0.3", "--t-max", "150", "--seeds", "512",
                         "--train-trajectories", "32", "--basis", "chebyshev", "--basis-size", "4",
                         "--attempts", "mle,posterior", "--posterior-samples", "32", "--sample-posterior", "merr-iid"])
    assert _config(["lj13", "--config", "run.toml", "--seeds", "64"]).n_seeds == 64
    parser = build_parser()
    commands = [shlex.split(line.partition("#")[0]) for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S)
                for line in block.splitlines()]
    assert len(commands) >= 5
    for argv in commands:
        assert argv[0] == "jaxiap" and "--config" in argv
        parser.parse_args(argv[1:])  # exits (fails the test) on an unknown option or a bad value
