"""Oracles label structures with reference energies and forces.

An oracle is any callable ``oracle(structures) -> (energy (S,), forces (S, N, 3))``.
``JaxOracle`` wraps a pure-JAX energy function (e.g. the true LJ);
``ASEOracle`` wraps any ASE calculator (EMT, LJ, a DFT code).
``label(oracle, structures)`` returns a ``Dataset``.
"""

from __future__ import annotations

from typing import Callable, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from jaxiap.data import Dataset
from jaxiap.structures import Structures, to_atoms


class Oracle(Protocol):
    def __call__(self, structures: Structures) -> tuple: ...


class JaxOracle:
    """Oracle from ``energy_fn(positions (N,3), mask (N,)) -> scalar``, vmapped and jitted."""

    def __init__(self, energy_fn: Callable):
        self.energy_fn = energy_fn
        self._batch = jax.jit(jax.vmap(jax.value_and_grad(energy_fn)))

    def __call__(self, structures: Structures):
        e, g = self._batch(structures.positions, structures.mask)
        return e, -g


class ASEOracle:
    """Oracle from an ASE calculator, called structure by structure."""

    def __init__(self, calculator):
        self.calculator = calculator

    def __call__(self, structures: Structures):
        n_max = structures.n_max
        energies, forces = [], []
        for atoms in to_atoms(structures):
            atoms.calc = self.calculator
            energies.append(atoms.get_potential_energy())
            f = np.zeros((n_max, 3))
            f[: len(atoms)] = atoms.get_forces()
            forces.append(f)
        return jnp.asarray(energies), jnp.asarray(np.stack(forces))


def label(oracle: Callable, structures: Structures, energy_weight=None, force_weight=None) -> Dataset:
    """Label a batch with an oracle into a Dataset."""
    energy, forces = oracle(structures)
    return Dataset(structures, energy, forces, energy_weight, force_weight)
