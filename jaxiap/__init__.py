"""jaxiap: differentiable Bayesian interatomic potentials on JAX.

Importing jaxiap enables JAX float64 (inference and its tests compare with
float64 references). Set ``JAXIAP_X64=0`` before import to leave JAX's
default precision alone. jax-md is imported lazily by the functions that use it.
"""

import os as _os

import jax as _jax

if _os.environ.get("JAXIAP_X64", "1") != "0":
    _jax.config.update("jax_enable_x64", True)

from jaxiap.structures import Structures, from_atoms, to_atoms  # noqa: E402
from jaxiap.data import Dataset, read_extxyz, write_extxyz  # noqa: E402

from jaxiap._version import __version__  # noqa: E402

__all__ = [
    "Structures",
    "Dataset",
    "from_atoms",
    "to_atoms",
    "read_extxyz",
    "write_extxyz",
    "__version__",
]
