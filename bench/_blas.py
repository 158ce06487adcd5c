"""``--blas-threads`` for bench scripts, applied before numpy loads OpenBLAS (so this module imports no numpy).

Call :func:`set_blas_threads_from_argv` at the top of a script, before any import that loads numpy.
"""

from __future__ import annotations

import os

BLAS_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def blas_threads_option(argv, default: str | None = None) -> str | None:
    """The value of ``--blas-threads N`` / ``--blas-threads=N`` in ``argv``, else ``default``."""
    for i, a in enumerate(argv):
        if a == "--blas-threads" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--blas-threads="):
            return a.split("=", 1)[1]
    return default


def set_blas_threads_from_argv(argv, default: str | None = None) -> None:
    """Set the BLAS thread variables from ``--blas-threads`` (or ``default``; None: leave them alone)."""
    value = blas_threads_option(argv, default)
    if value is not None:
        for var in BLAS_VARIABLES:
            os.environ[var] = str(int(value))
