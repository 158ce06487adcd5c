"""Execute a notebook in place at a given size, so that it is committed with its outputs and figures.

    python notebooks/execute.py uq_comparison.ipynb --size cpu --out runs/uq-compare

``--size`` sets ``JAXIAP_NOTEBOOK_SIZE`` (the notebook's preset) and ``--out`` sets
``JAXIAP_NOTEBOOK_OUT`` (its run folder: a finished run there is read back instead of recomputed).
The notebook's first output line states the size it ran at. Uses the kernel of this interpreter.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("notebook", help="file name under notebooks/, e.g. uq_comparison.ipynb")
    ap.add_argument("--size", default="cpu", help="the notebook's preset (JAXIAP_NOTEBOOK_SIZE) [cpu]")
    ap.add_argument("--out", default=None, help="its run folder (JAXIAP_NOTEBOOK_OUT) [the notebook's default]")
    ap.add_argument("--timeout", type=int, default=7200, help="seconds per cell [7200]")
    args = ap.parse_args(argv)
    import nbformat

    from notebooks import execute_notebook  # tests/notebooks.py: runs the kernel of this interpreter

    if args.out is not None:
        os.environ["JAXIAP_NOTEBOOK_OUT"] = str(Path(args.out).resolve())
    nb = execute_notebook(args.notebook, size=args.size, timeout=args.timeout)
    nbformat.write(nb, HERE / args.notebook)
    print(f"executed {args.notebook} at size {args.size}; outputs written into notebooks/{args.notebook}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
