"""The package's layering: the import-linter contract in pyproject.toml and no import cycles.

Both checks run on the installed tree and on a copy with one import added, so
the tests show that a back-import or a cycle really fails them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Lists every import cycle among jaxiap's modules (function-level imports included).
_CYCLES = textwrap.dedent(
    """
    import grimp
    graph = grimp.build_graph("jaxiap", cache_dir=None)
    found = set()
    for importer in sorted(graph.modules):
        for imported in sorted(graph.find_modules_directly_imported_by(importer)):
            back = graph.find_shortest_chain(importer=imported, imported=importer)
            if back:
                cycle = frozenset((importer,) + tuple(back))
                if cycle not in found:
                    found.add(cycle)
                    print("cycle:", importer, "->", " -> ".join(back))
    print("modules:", len(graph.modules))
    """
)


def _run(args, cwd, pythonpath=None):
    env = None if pythonpath is None else dict(os.environ, PYTHONPATH=str(pythonpath))
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _lint(cwd, pythonpath=None):
    cmd = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command(['--no-cache']))"
    return _run([sys.executable, "-c", cmd], cwd, pythonpath)


def _cycles(cwd, pythonpath=None):
    return _run([sys.executable, "-c", _CYCLES], cwd, pythonpath)


@pytest.fixture(scope="module")
def tampered(tmp_path_factory):
    """A copy of the package and its pyproject.toml, for adding a bad import."""

    def make(rel_path: str, line: str) -> Path:
        root = tmp_path_factory.mktemp("layers")
        shutil.copytree(ROOT / "jaxiap", root / "jaxiap", ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy(ROOT / "pyproject.toml", root / "pyproject.toml")
        target = root / rel_path
        target.write_text(target.read_text() + "\n" + line + "\n")
        return root

    return make


def test_layer_contract_holds():
    out = _lint(ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Contracts: 1 kept, 0 broken." in out.stdout


def test_no_import_cycles():
    out = _cycles(ROOT)
    assert out.returncode == 0, out.stderr
    assert "cycle:" not in out.stdout, out.stdout
    assert int(out.stdout.split("modules:")[1]) > 50  # the graph really covers the package


def test_back_import_breaks_the_contract(tampered):
    root = tampered("jaxiap/structures.py", "from jaxiap import cli  # a back-import, for the test")
    out = _lint(root, pythonpath=root)
    assert out.returncode != 0
    assert "jaxiap.structures is not allowed to import jaxiap.cli" in out.stdout, out.stdout


def test_cycle_within_a_layer_is_found(tampered):
    # runner imports lanes; lanes importing runner closes a cycle inside the md layer,
    # which the layers contract alone would allow.
    root = tampered("jaxiap/md/lanes.py", "import jaxiap.md.runner  # a cycle, for the test")
    assert _lint(root, pythonpath=root).returncode == 0
    out = _cycles(root, pythonpath=root)
    assert "cycle: jaxiap.md.lanes -> jaxiap.md.runner -> jaxiap.md.lanes" in out.stdout or (
        "cycle: jaxiap.md.runner -> jaxiap.md.lanes -> jaxiap.md.runner" in out.stdout
    ), out.stdout
