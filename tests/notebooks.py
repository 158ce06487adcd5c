"""Execute a notebook with the current interpreter's kernel (for tests)."""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def execute_notebook(name: str, size: str = "tiny", timeout: int = 600):
    """Run notebooks/<name> top to bottom at ``size``; returns the executed notebook."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    os.environ["JAXIAP_NOTEBOOK_SIZE"] = size
    os.environ.setdefault("MPLBACKEND", "Agg")
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(ROOT / "notebooks")}})
    # run the kernel with this interpreter, whatever kernelspec is installed
    client.kernel_manager_class = _this_python_kernel_manager()
    client.execute()
    return nb


def _this_python_kernel_manager():
    from jupyter_client.manager import KernelManager

    class ThisPython(KernelManager):
        def format_kernel_cmd(self, extra_arguments=None):
            return [sys.executable, "-m", "ipykernel_launcher", "-f", self.connection_file]

    return ThisPython


def outputs_text(nb) -> str:
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            parts.append(out.get("text", "") or str(out.get("data", {}).get("text/plain", "")))
    return "\n".join(parts)
