"""Early, clear input errors: every bad input in docs/input-errors.md fails at once, naming itself.

CLI rows run ``jaxiap.cli.main`` in-process with the data stages replaced by a
function that fails the test, so a row passes only if the error comes before
any work (and before the run folder is made). Function rows call the public
function. Each row of the table in docs/input-errors.md is one case here (and
the reverse); the table's message excerpt must appear in the actual message.
"""

import math
import re
import shlex
import time
from pathlib import Path

import numpy as np
import pytest

import jaxiap.workflows.lj13 as lj13
import jaxiap.workflows.lj13_al as lj13_al
import jaxiap.workflows.lj13_al_config as lj13_al_config
import jaxiap.workflows.lj13_config as lj13_config
import jaxiap.workflows.otf_al as otf_al
import jaxiap.workflows.otf_config as otf_config
import jaxiap.workflows.uq_compare as uq_compare
import jaxiap.workflows.uq_compare_config as uq_compare_config
import jaxiap.workflows.user_fit as user_fit
import jaxiap.workflows.user_predict as user_predict
import jaxiap.workflows.user_sweep as user_sweep
from jaxiap.cli import main
from jaxiap.errors import JaxiapInputError

DOC = Path(__file__).resolve().parents[1] / "docs" / "input-errors.md"

#: (command, option the message must name, arguments)
CLI_CASES = [
    ("lj13", "--seed", "--seed -1"),
    ("lj13", "--seed", "--seed 4294967296"),
    ("lj13", "--kT", "--kT -0.3"),
    ("lj13", "--kT", "--kT nan"),
    ("lj13", "--seeds", "--seeds 0"),
    ("lj13", "--seeds", "--seeds 1"),
    ("lj13", "--n-q", "--n-q 7"),
    ("lj13", "--screen-steps", "--screen-steps -1"),
    ("lj13", "--t-max", "--t-max 1e12"),
    ("lj13", "--train-trajectories", "--train-trajectories 1 --samples-per-trajectory 2"),
    ("lj13", "--basis-size", "--basis-size 1000 --force-weight 0"),
    ("lj13", "--basis", "--basis legendre"),
    ("lj13", "--r-min", "--r-min 4 --r-cut 3"),
    ("lj13", "--force-weight", "--energy-weight 0 --force-weight 0"),
    ("lj13", "--attempts", "--attempts bogus"),
    ("lj13", "--subset-fraction", "--subset-fraction 1.5"),
    ("lj13", "--basis-size", "--subset-fraction 0.001 --force-weight 0"),
    ("lj13", "--attempt-seeds", "--attempt-seeds 1"),
    ("lj13", "--pce-degree", "--posterior-samples 1 --pce-degree 1"),
    ("lj13", "--pce-degree", "--pce-degree 0"),
    ("lj13", "--chunk-size", "--chunk-size 100000"),
    ("lj13", "--chunk-size", "--chunk-size 0"),
    ("lj13", "--devices", "--devices 0"),
    ("lj13", "--no-such-option", "--no-such-option"),
    ("lj13-al", "--seed", "--seed -1"),
    ("lj13-al", "--initial", "--initial 400"),
    ("lj13-al", "--iterations", "--batch-size 20 --iterations 20"),
    ("lj13-al", "--strategies", '--strategies ""'),
    ("lj13-al", "--strategies", "--strategies random,bogus"),
    ("lj13-al", "--strategies", "--strategies random,random"),
    ("lj13-al", "--threshold-factor", "--threshold-factor 0"),
    ("lj13-al", "--seeds", "--seeds 0"),
    ("lj13-al", "--generator", "--generator bogus"),
    ("lj13-al", "--candidates", "--generator stein --candidates 6"),
    ("lj13-al", "--t-max", "--t-max 1e12"),
    ("lj13-al", "--labels", "--labels forces"),
    ("otf", "--steps", "--steps 0"),
    ("otf", "--melt-ps", "--melt-ps 20"),
    ("otf", "--r-cut-3", "--r-cut-3 6"),
    ("otf", "--calculator", "--calculator emtx"),
    ("otf", "--calculator", "--calculator ase.calculators.nothere:X"),
    ("otf", "--init-atoms", "--init-atoms 40"),
    ("otf", "--std-tolerance", "--std-tolerance nan"),
    ("otf", "--core-repulsion", "--core-repulsion 6"),
    ("otf", "--pair-prior-frames", "--pair-prior-frames 8 --core-repulsion 2"),
    ("otf", "--pair-prior-r-cut", "--pair-prior-frames 8 --pair-prior-r-cut 4.5"),
    ("uq-compare", "--methods", "--methods bogus"),
    ("uq-compare", "--datasets", "--datasets al,foo"),
    ("uq-compare", "--members", "--members 1"),
    ("uq-compare", "--hidden", "--hidden 0"),
    ("uq-compare", "--error-percentile", "--error-percentile 100"),
    # the user's own files (run in a folder holding the files of user_files below)
    ("fit", "DATA", "--held-out 0"),
    ("fit", "missing.xyz", "missing.xyz"),
    ("fit", "garbage.xyz", "garbage.xyz"),
    ("fit", "nolabels.xyz", "nolabels.xyz"),
    ("fit", "--energy-key", "data.xyz --energy-key REF_energy"),
    ("fit", "--stress-weight", "clusters.xyz --stress-weight 1"),
    ("fit", "--r-cut", "data.xyz --r-cut 6"),
    ("fit", "--held-out", "data.xyz --held-out 1"),
    ("fit", "--descriptor", "data.xyz --descriptor soap"),
    ("fit", "--solver", "data.xyz --solver magic"),
    ("predict", "RUN_OR_POSTERIOR", "--batch-size 4"),
    ("predict", "nofit", "nofit data.xyz"),
    ("predict", "model.json", "lonely/post.npz data.xyz"),
    ("predict", "missing.xyz", "fit missing.xyz"),
    ("predict", "Cu", "fit copper.xyz"),
    ("predict", "--out", "fit data.xyz --out notmine.xyz"),
    ("predict", "--batch-size", "fit data.xyz --batch-size 0"),
    ("sweep", "START", "fit"),
    ("sweep", "--seeds", "fit start.xyz --seeds 1"),
    ("sweep", "--check-every", "fit start.xyz --steps 150"),
    ("sweep", "--frame", "fit start.xyz --frame 3"),
    ("sweep", "--basin", "fit cell.xyz --basin graph"),
    ("sweep", "--rdf-r-max", "fit cell.xyz --rdf-r-max 5"),
    ("sweep", "--skin", "fit cell.xyz --skin 0.5"),
    ("sweep", "--temperature", "fit start.xyz --temperature -5"),
]

#: commands whose cases run in the folder of user_files (their arguments name those files)
USER_COMMANDS = ("fit", "predict", "sweep")


def _features(T=40, K=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(T, K)), rng.normal(size=T)


def _call(name):
    """Function rows: ``"fn(argument)"`` -> a callable taking the bad value."""
    from jaxiap.active.strategies import mean_energy_gradient_from_samples
    from jaxiap.md import fluctuation as fluct
    from jaxiap.md.ensemble import FRTSettings
    from jaxiap.systems.lj import lj13_dataset
    from jaxiap.uq.frt import variance_split

    B, A = _features()
    c = np.ones(B.shape[1])
    times, codes = np.full((2, 4), 3.0), np.zeros((2, 4), np.int32)
    return {
        "fluctuation_gradient(kT)": lambda v: fluct.fluctuation_gradient(A, B, v),
        "mean_energy_gradient(kT)": lambda v: fluct.mean_energy_gradient(B, c, v),
        "mean_energy_gradient(coefficients)": lambda v: fluct.mean_energy_gradient(B, np.ones(v), 0.3),
        "fluctuation_gradient_estimate(kT)": lambda v: fluct.fluctuation_gradient_estimate(A, B, v, n_blocks=4),
        "mean_energy_gradient_estimate(kT)": lambda v: fluct.mean_energy_gradient_estimate(B, c, v, n_blocks=4),
        "mean_energy_gradient_from_samples(kT)": lambda v: mean_energy_gradient_from_samples(B, c, v),
        "lj13_dataset(kT)": lambda v: lj13_dataset(kT=v),
        "lj13_dataset(n_samples)": lambda v: lj13_dataset(n_samples=v),
        "lj13_dataset(n_trajectories)": lambda v: lj13_dataset(n_trajectories=v),
        "lj13_dataset(sample_every)": lambda v: lj13_dataset(sample_every=v),
        "variance_split(t_censor)": lambda v: variance_split(times, codes, v),
        "SamplePosterior.sample(n)": _sample_without_resampling,
        "load_posterior(kind)": _load_unknown_kind,
        "FRTSettings(n_q)": lambda v: FRTSettings(n_q=v),
        "FRTSettings(t_max)": lambda v: FRTSettings(t_max=v),
        "FRTSettings(screen_steps)": lambda v: FRTSettings(screen_steps=v),
    }[name]


def _sample_without_resampling(n):
    import jax
    import jax.numpy as jnp

    from jaxiap.inference.posterior import SamplePosterior

    return SamplePosterior(jnp.ones((2, 3)), 0.0).sample(jax.random.key(0), n, resample=False)


def _load_unknown_kind(kind, _dir=[]):
    import tempfile

    from jaxiap.inference.posterior import load_posterior

    if not _dir:
        _dir.append(tempfile.mkdtemp())
    path = Path(_dir[0]) / "weird.npz"
    np.savez(path, kind=kind, family="unknown", mean=np.zeros(3))
    return load_posterior(path)


#: (function(argument), bad value as written in the table)
FUNCTION_CASES = [
    ("fluctuation_gradient(kT)", "0.0"),
    ("fluctuation_gradient(kT)", "-0.3"),
    ("fluctuation_gradient(kT)", "nan"),
    ("mean_energy_gradient(kT)", "0.0"),
    ("mean_energy_gradient(coefficients)", "4"),
    ("fluctuation_gradient_estimate(kT)", "-1.0"),
    ("mean_energy_gradient_estimate(kT)", "inf"),
    ("mean_energy_gradient_from_samples(kT)", "0.0"),
    ("lj13_dataset(kT)", "-0.3"),
    ("lj13_dataset(kT)", "0.0"),
    ("lj13_dataset(n_samples)", "0"),
    ("lj13_dataset(n_trajectories)", "0"),
    ("lj13_dataset(sample_every)", "0"),
    ("variance_split(t_censor)", "0.0"),
    ("variance_split(t_censor)", "-5.0"),
    ("SamplePosterior.sample(n)", "3"),
    ("load_posterior(kind)", "'weird'"),
    ("FRTSettings(n_q)", "7"),
    ("FRTSettings(t_max)", "1e12"),
    ("FRTSettings(screen_steps)", "-1"),
]


def _value(text):
    """A table value: int, float (nan / inf included) or a quoted string."""
    if text[:1] in "'\"":
        return text[1:-1]
    try:
        return int(text)
    except ValueError:
        return float(text)


def _doc_rows():
    """{(kind, key...): message excerpt} from the table of docs/input-errors.md."""
    rows = {}
    for line in DOC.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("|") else []
        if len(cells) != 4 or not cells[0].startswith("`"):
            continue
        inp, value, message = (c.strip("`") for c in cells[:3])
        m = re.fullmatch(r"jaxiap (lj13(?:-al)?|otf|uq-compare|fit|predict|sweep) (\S+)", inp)
        key = ("cli", m.group(1), m.group(2), value) if m else ("function", inp, value)
        assert key not in rows, f"duplicate row {key}"
        rows[key] = message
    return rows


DOC_ROWS = _doc_rows()


def test_table_and_cases_agree():
    cases = {("cli", *c) for c in CLI_CASES} | {("function", *c) for c in FUNCTION_CASES}
    assert len(cases) == len(CLI_CASES) + len(FUNCTION_CASES)
    assert set(DOC_ROWS) - cases == set(), "rows of docs/input-errors.md without a test case"
    assert cases - set(DOC_ROWS) == set(), "test cases without a row in docs/input-errors.md"


@pytest.fixture
def no_work(monkeypatch):
    """Any data generation fails the test; XLA_FLAGS (set by the CLI) is restored afterwards."""
    import os

    monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))

    def work_started(*args, **kwargs):
        raise AssertionError("the study started work before rejecting its input")

    monkeypatch.setattr(lj13, "generate_data", work_started)
    monkeypatch.setattr(lj13_al, "generate_data", work_started)
    monkeypatch.setattr(otf_al, "run_otf", work_started)
    monkeypatch.setattr(uq_compare, "load_data", work_started)
    monkeypatch.setattr(user_fit, "all_rows", work_started)
    monkeypatch.setattr(user_predict, "predict_batched", work_started)
    monkeypatch.setattr(user_sweep, "run_program", work_started)


def _labelled(frames):
    from ase.calculators.emt import EMT

    for a in frames:
        a.calc = EMT()
        a.get_potential_energy()
    return frames


@pytest.fixture(scope="module")
def user_files(tmp_path_factory):
    """The files the fit / predict / sweep cases name: data.xyz (2 labelled 32-atom Al cells), clusters.xyz (2
    labelled Al6 clusters, no stress), nolabels.xyz, garbage.xyz, copper.xyz, start.xyz (Al6), cell.xyz (Al32),
    notmine.xyz (a user's file), fit/ (a model.json and posterior.npz as jaxiap fit writes them: radial, 4
    functions inside 3.7 Å, one reference column), lonely/post.npz (a posterior without model.json)."""
    import json

    import ase.io
    from ase import Atoms
    from ase.build import bulk

    d = tmp_path_factory.mktemp("user-files")
    cell = lambda: bulk("Al", "fcc", a=4.05, cubic=True).repeat(2)  # noqa: E731
    octahedron = lambda: Atoms("Al6", positions=1.9 * np.vstack([np.eye(3), -np.eye(3)]))  # noqa: E731
    cells = [cell(), cell()]
    cells[1].rattle(0.05, seed=1)
    ase.io.write(d / "data.xyz", _labelled(cells), format="extxyz")
    ase.io.write(d / "clusters.xyz", _labelled([octahedron(), octahedron()]), format="extxyz")
    ase.io.write(d / "nolabels.xyz", cell(), format="extxyz")
    ase.io.write(d / "copper.xyz", bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2), format="extxyz")
    ase.io.write(d / "start.xyz", octahedron(), format="extxyz")
    ase.io.write(d / "cell.xyz", cell(), format="extxyz")
    (d / "garbage.xyz").write_text("this is not a structure file\n")
    (d / "notmine.xyz").write_text("my notes\n")
    for folder in ("fit", "lonely"):
        (d / folder).mkdir()
    posterior = dict(kind="blr", family="gaussian", mean=np.zeros(5), cov_factor=0.01 * np.eye(5), noise_var=1e-4)
    np.savez(d / "fit" / "posterior.npz", **posterior)
    np.savez(d / "lonely" / "post.npz", **posterior)
    (d / "fit" / "model.json").write_text(json.dumps(dict(
        jaxiap_model=1, descriptor="radial", descriptor_options=dict(family="chebyshev", n_basis=4, r_min=2.0,
                                                                     r_cut=3.7),
        species_names=["Al"], species_reference=True, n_features=5, cutoff=3.7)))
    return d


@pytest.mark.parametrize("command,option,args", CLI_CASES, ids=[f"{c} {a}" for c, _, a in CLI_CASES])
def test_bad_cli_input_fails_at_once(command, option, args, tmp_path, capsys, no_work, request, monkeypatch):
    out = tmp_path / "run"
    if command in USER_COMMANDS:
        monkeypatch.chdir(request.getfixturevalue("user_files"))  # the table's messages name the files as given
    words = shlex.split(args)
    if "--out" not in words:
        words += ["--out", str(out)]
    t0 = time.perf_counter()
    try:
        rc = main([command, *words, "--no-progress"])
    except SystemExit as exc:  # argparse
        rc = exc.code
    elapsed = time.perf_counter() - t0
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"jaxiap {command}: error: "), err
    assert option in err, err
    assert DOC_ROWS[("cli", command, option, args)] in err, err
    assert not out.exists()
    assert elapsed < 5.0  # checks only: no JAX compilation or MD


@pytest.mark.parametrize("name,value", FUNCTION_CASES, ids=[f"{n}={v}" for n, v in FUNCTION_CASES])
def test_bad_function_input_names_the_argument(name, value):
    argument = re.fullmatch(r"[\w.]+\((\w+)\)", name).group(1)
    with pytest.raises(JaxiapInputError, match=re.escape(argument)) as exc:
        _call(name)(_value(value))
    assert DOC_ROWS[("function", name, value)] in str(exc.value)


def test_input_error_is_a_value_error():
    assert issubclass(JaxiapInputError, ValueError)


def test_every_cli_flag_maps_to_a_config_field():
    """One table per study (``CLI_FLAGS``: config field -> option) names the option in config errors and
    is the CLI's field map: every entry is a config field and an option of the subcommand (whose dest the
    CLI derives from the option), and every study option of the subcommand is in the table."""
    import argparse
    import dataclasses

    from jaxiap.cli import _overrides, build_parser

    parser = build_parser()
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    run_options = {"-h", "--help", "--out", "--config", "--preset", "--overwrite", "--no-progress", "--devices"}
    from jaxiap.workflows import fit_config, predict_config, sweep_config

    for command, config, flags in (("lj13", lj13_config.LJ13Config, lj13_config.CLI_FLAGS),
                                   ("lj13-al", lj13_al_config.LJ13ALConfig, lj13_al_config.CLI_FLAGS),
                                   ("otf", otf_config.OTFConfig, otf_config.CLI_FLAGS),
                                   ("uq-compare", uq_compare_config.UQCompareConfig, uq_compare_config.CLI_FLAGS),
                                   ("fit", fit_config.FitConfig, fit_config.CLI_FLAGS),
                                   ("predict", predict_config.PredictConfig, predict_config.CLI_FLAGS),
                                   ("sweep", sweep_config.SweepConfig, sweep_config.CLI_FLAGS)):
        fields = {f.name for f in dataclasses.fields(config)}
        assert set(flags) <= fields, set(flags) - fields
        actions = subs[command]._option_string_actions
        assert len(set(flags.values())) == len(flags)
        assert set(actions) - run_options == set(flags.values()), set(actions) - run_options ^ set(flags.values())
        for field, flag in flags.items():
            assert actions[flag].dest == flag[2:].replace("-", "_"), (command, field, flag)
        # input files given as positional arguments are config fields too (so config.toml reproduces a run)
        for field in getattr(__import__(config.__module__, fromlist=["_"]), "POSITIONAL_FIELDS", ()):
            assert field in fields and any(a.dest == field and not a.option_strings for a in subs[command]._actions)
    # a given option overrides its field (a --no-X switch sets it to False), an option left out does not
    args = parser.parse_args(["lj13-al", "--no-frt", "--initial", "3"])
    assert _overrides(args, lj13_al_config.CLI_FLAGS) == {"n_initial": 3, "frt": False}
    args = parser.parse_args(["lj13", "--n-q", "20", "--train-trajectories", "2"])
    assert _overrides(args, lj13_config.CLI_FLAGS) == {"n_q": 20, "n_trajectories": 2}
    from jaxiap.cli import study_config

    config = study_config(parser.parse_args(["sweep", "fit", "start.xyz", "--seeds", "3", "--no-progress"]))
    assert (config.model, config.start, config.n_seeds) == ("fit", "start.xyz", 3)


def test_defaults_pass_and_keep_their_settings():
    """Only checks were added: the default configs and their FRT settings are as before."""
    from jaxiap.md.ensemble import FRTSettings

    for preset in lj13_config.PRESET_CHOICES:
        c = lj13_config.LJ13Config.from_preset(preset)
        assert c.frt_settings() == FRTSettings(kT=c.kT, gamma=c.gamma, dt=c.dt, n_q=c.n_q, t_max=c.t_max,
                                               r_b=c.r_b, criterion=c.criterion, dtype=c.dtype)
        assert "_frt_settings" not in __import__("dataclasses").asdict(c)
    for preset in lj13_al_config.PRESET_CHOICES:
        c = lj13_al_config.LJ13ALConfig.from_preset(preset)
        assert c.frt_settings() == FRTSettings(kT=c.kT, gamma=c.gamma, dt=c.dt, n_q=c.n_q, t_max=c.t_max,
                                               r_b=c.r_b, dtype=c.dtype)
    assert math.isclose(lj13_config.DEFAULTS.frt_settings().t_censor, 100.0)
    # the MD defaults come from FRTSettings (written once there) and keep their values
    d, a = lj13_config.DEFAULTS, lj13_al_config.DEFAULTS
    assert (d.kT, d.gamma, d.dt, d.n_q, d.t_max, d.r_b, d.criterion, d.dtype) == \
        (0.30, 1.0, 0.005, 100, 100.0, 1.35, "graph", "float64")
    assert (a.kT, a.gamma, a.dt, a.n_q, a.t_max, a.r_b, a.dtype) == (0.30, 1.0, 0.005, 100, 40.0, 1.35, "float64")


@pytest.mark.slow  # CI budget (2026-11-30): runs with -m slow; a cheaper default-run test covers the same code path
def test_reference_md_blow_up_stops_after_data(tmp_path, capsys):
    """--dt 0.5 evaporates every reference trajectory: one clear error before any fit or MD ensemble."""
    out = tmp_path / "run"
    assert main(["lj13", "--preset", "tiny", "--dt", "0.5", "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "reference MD blew up or evaporated: 80 of 80 snapshots" in err and "--dt" in err
    assert not (out / "posterior.npz").exists() and not (out / "frt_true").exists()
