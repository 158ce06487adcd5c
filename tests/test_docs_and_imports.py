"""The README's code runs as written, and importing jaxiap stays light."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_does_not_load_heavy_modules():
    code = ("import sys, jaxiap, jaxiap.cli, jaxiap.workflows.lj13; "
            "heavy = [m for m in ('jax_md', 'numpyro', 'matplotlib', 'ase.io', 'flax') if m in sys.modules]; "
            "print(heavy); assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def _readme_python_blocks():
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_readme_has_the_two_setup_commands():
    text = (ROOT / "README.md").read_text()
    bash = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    assert any("pip install -e ." in b and "jaxiap lj13" in b for b in bash)
    assert any('pip install -e ".[test]"' in b and "pytest" in b for b in bash)


def test_readme_python_blocks_run():
    """All Python blocks in order, in one interpreter (later blocks may use earlier names)."""
    blocks = _readme_python_blocks()
    assert len(blocks) >= 2
    proc = subprocess.run([sys.executable, "-c", "\n".join(blocks)], capture_output=True, text=True,
                          timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "force_rmse" in proc.stdout and "frt_mean" in proc.stdout
