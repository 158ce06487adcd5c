"""The README's code runs and gives the numbers it claims; its command lines parse with the real
CLI parser; importing jaxiap stays light."""

import ast
import json
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_import_does_not_load_heavy_modules():
    code = ("import sys, jaxiap, jaxiap.cli, jaxiap.workflows.lj13; "
            "heavy = [m for m in ('jax_md', 'numpyro', 'matplotlib', 'ase.io', 'flax') if m in sys.modules]; "
            "print(heavy); assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# ----------------------------------------------------------------------------- command lines


def _readme_cli_uses():
    """Every ``jaxiap`` command line of the README (bash blocks and inline code) as
    ("argv", argv), every ``--option`` it names alone as ("option", command, option, value or
    None), with the command of the text it stands in (the nearest ``jaxiap <command>`` before
    it), and every ``pip install -e ".[extra]"`` as ("extra", name)."""
    text = re.sub(r"```python\n.*?```", "", README, flags=re.S)
    uses, current = [], None

    def options(words):
        for i, w in enumerate(words):
            if w.startswith("--"):
                nxt = words[i + 1] if i + 1 < len(words) and not words[i + 1].startswith("-") else None
                uses.append(("option", current, w, nxt))

    for m in re.finditer(r"```bash\n(.*?)```|`([^`\n]+)`", text, flags=re.S):
        lines = m.group(1).splitlines() if m.group(1) is not None else [m.group(2)]
        for line in lines:
            code, _, comment = line.partition("#")
            for seg in code.split("&&"):
                words = shlex.split(seg)
                if words[:1] == ["jaxiap"] and len(words) > 1:
                    current = words[1]
                    uses.append(("argv", words[1:]))
                elif words[:3] == ["pip", "install", "-e"]:
                    uses += [("extra", e) for e in re.findall(r"\[(.*?)\]", words[3])[0].split(",")] \
                        if "[" in words[3] else []
                elif words[:1] and words[0].startswith("--"):
                    options(words)
            options(comment.replace(";", " ").split())
    return uses


def _subparsers():
    import argparse

    from jaxiap.cli import build_parser

    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return parser, action.choices


def _parses(parser, argv):
    """True if the real parser accepts argv (--help exits 0, an unknown or invalid option exits 2)."""
    try:
        parser.parse_args(argv)
    except SystemExit as exc:
        return exc.code == 0
    return True


def test_readme_command_lines_parse_with_the_cli(capsys):
    parser, subs = _subparsers()
    uses = _readme_cli_uses()
    argvs = [u[1] for u in uses if u[0] == "argv"]
    opts = [u[1:] for u in uses if u[0] == "option"]
    # the README names both studies, the GPU preset and the options of the three attempts
    assert {a[0] for a in argvs} == {"lj13", "lj13-al", "otf", "uq-compare", "fit", "predict", "sweep"} \
        and len(argvs) >= 8, argvs
    assert {o[1] for o in opts} >= {"--seeds", "--t-max", "--basis-size", "--preset", "--attempts",
                                    "--n-subsets", "--posterior-samples", "--sample-posterior", "--devices"}
    for argv in argvs:
        assert _parses(parser, argv), f"README command `jaxiap {' '.join(argv)}` does not parse"
        for word in argv[1:]:  # spelled out in full (argparse would also accept a prefix)
            assert not word.startswith("--") or word in subs[argv[0]]._option_string_actions, (argv, word)
    for command, option, value in opts:
        assert command in subs, (command, option)
        actions = subs[command]._option_string_actions
        assert option in actions, f"README names `{option}`, which `jaxiap {command}` does not have"
        takes_value = actions[option].nargs != 0
        if takes_value and value is not None and not value.isupper():  # N, K: placeholders
            assert _parses(parser, [command, option, value]), f"`jaxiap {command} {option} {value}` does not parse"
    capsys.readouterr()  # --help output
    # and the check has teeth: an option the CLI lacks is refused, as is a bad value
    assert not _parses(parser, ["lj13", "--no-such-option"])
    assert not _parses(parser, ["lj13", "--preset", "huge"])
    assert "--no-such-option" not in subs["lj13"]._option_string_actions


def test_readme_install_extras_exist():
    """``pip install -e ".[x]"`` names extras that pyproject.toml defines."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    named = {u[1] for u in _readme_cli_uses() if u[0] == "extra"}
    assert named >= {"test", "cuda"}, named
    assert named <= set(extras), named - set(extras)
    # the test extras hold what the suite imports without skipping
    test = " ".join(extras["test"])
    for pkg in ("pytest", "pytest-xdist", "nbformat", "nbclient", "ipykernel", "arviz"):
        assert re.search(rf"(^| ){re.escape(pkg)}\b", test), pkg


def test_slow_studies_exist_and_are_excluded_by_default():
    """The README says slow studies are marked ``slow`` and run with ``python -m pytest -m slow``:
    at least one test carries the mark, the marker is registered and the default run deselects it."""
    assert "python -m pytest -m slow" in README
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert any(m.startswith("slow:") for m in cfg["markers"])
    assert "-m 'not slow'" in cfg["addopts"]
    slow = []
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                if any(ast.unparse(d).endswith("mark.slow") for d in node.decorator_list):
                    slow.append(f"{path.name}::{node.name}")
    assert slow, "no test is marked slow, so `pytest -m slow` collects nothing"


# ----------------------------------------------------------------------------- Python blocks

_EPILOGUE = '''
import json as _json
_B, _c = np.asarray(features), np.asarray(posterior.mean)
_E = _B @ _c
print("README_VALUES " + _json.dumps({
    "n_train": len(train), "n_test": len(test), "fit": fit_errors(test, energy, forces),
    "samples_shape": list(np.shape(coefficient_samples)), "frt": result.summary()["all"],
    "grad": np.asarray(estimate.grad).tolist(), "stderr": np.asarray(estimate.stderr).tolist(),
    "grad_numpy": (_B.mean(0) - ((_E - _E.mean())[:, None] * (_B - _B.mean(0))).mean(0) / 0.30).tolist()}))
'''


@pytest.fixture(scope="module")
def readme_values():
    """All Python blocks in order, in one interpreter (later blocks use earlier names), then the
    values they computed."""
    blocks = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    assert len(blocks) >= 3
    proc = subprocess.run([sys.executable, "-c", "\n".join(blocks) + _EPILOGUE], capture_output=True, text=True,
                          timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(s for s in proc.stdout.splitlines() if s.startswith("README_VALUES "))
    return json.loads(line[len("README_VALUES "):])


def test_readme_quick_start_values(readme_values):
    v = readme_values
    # 4 trajectories x 25 snapshots split 0.8 / 0.2; 16 posterior samples of the 8 coefficients
    assert (v["n_train"], v["n_test"]) == (80, 20)
    assert v["samples_shape"] == [16, 8]
    # "force RMSE ~1e-3 of the force spread": measured 0.00103 on this data
    assert v["fit"]["force_rmse_relative"] < 0.0011, v["fit"]
    # 64 seeds of the true LJ13 to t_max = 20 tau: every run accounted for, and the interval of the
    # mean FRT covers the README's 17.4 tau
    f = v["frt"]
    assert f["n_runs"] == 64 and f["n_events"] + f["n_censored"] + f["n_evaporated"] + f["n_failed"] == 64
    assert f["n_failed"] == 0 and f["n_events"] >= 32
    assert f["frt_mean_ci95"][0] <= 17.4 <= f["frt_mean_ci95"][1], f
    # the fluctuation estimator is <B> - cov(E, B) / kT of the sampled features (numpy, here)
    np.testing.assert_allclose(v["grad"], v["grad_numpy"], rtol=1e-10, atol=1e-12)
    assert np.all(np.asarray(v["stderr"]) > 0)
