"""Linear-in-coefficients potentials E(x) = sum_k c_k B_k(x) and their design matrices.

``LinearBasis`` maps one structure to its features B(x) (K,): radial pair
features summed over the structure, optionally followed by one column per
species counting its atoms (per-species reference energies). Forces are
F = -c . dB/dx by autodiff, so the force rows of the design matrix are
-dB/dx.

Design-matrix layout, per structure: one energy row B(x), then 3N force rows
-dB/dx_{i,a} in atom-major order (i, a) for a = x, y, z. Rows of padded
atoms are present with weight 0, so every structure has 1 + 3 N_max rows and
chunks have fixed shapes.
"""

from __future__ import annotations

from typing import Iterator, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from jaxiap.data import Dataset
from jaxiap.descriptors.radial import RadialBasis, structure_features
from jaxiap.errors import JaxiapInputError
from jaxiap.structures import Structures

ENERGY_ROW, FORCE_ROW = 0, 1


class LinearBasis(eqx.Module):
    """Structure features B(x) (K,) for a linear potential."""

    radial: RadialBasis
    n_species: int = eqx.field(static=True, default=1)
    species_reference: bool = eqx.field(static=True, default=False)

    @property
    def n_features(self) -> int:
        return self.radial.n_basis * self.n_species + (self.n_species if self.species_reference else 0)

    def __call__(self, positions, mask=None, species=None, box=None):
        """positions (N, 3), mask (N,), species (N,) int, box (3,) -> (K,)."""
        b = structure_features(self.radial, positions, mask, box, species, self.n_species)
        if self.species_reference:
            n = positions.shape[0]
            m = jnp.ones(n, bool) if mask is None else mask
            s = jnp.zeros(n, jnp.int32) if species is None else species
            counts = jnp.sum(jax.nn.one_hot(s, self.n_species, dtype=b.dtype) * m[:, None], axis=0)
            b = jnp.concatenate([b, counts])
        return b

    def jacobian(self, positions, mask=None, species=None, box=None):
        """dB/dx (K, N, 3) by reverse-mode autodiff (K backward passes)."""
        return jax.jacrev(self.__call__)(positions, mask, species, box)


class LinearPotential(eqx.Module):
    """E(x) = c . B(x). ``coefficients`` is (K,) or a stack (M, K) of samples."""

    basis: LinearBasis
    coefficients: jnp.ndarray

    def energy(self, positions, mask=None, species=None, box=None):
        """Energy of one structure: scalar for (K,) coefficients, (M,) for (M, K)."""
        return self.coefficients @ self.basis(positions, mask, species, box)

    def forces(self, positions, mask=None, species=None, box=None):
        """Forces (N, 3), or (M, N, 3) for a coefficient stack."""
        jac = self.basis.jacobian(positions, mask, species, box)
        return -jnp.tensordot(self.coefficients, jac, axes=1)

    def energy_and_forces(self, positions, mask=None, species=None, box=None):
        b, vjp = jax.vjp(lambda x: self.basis(x, mask, species, box), positions)
        if self.coefficients.ndim == 1:
            return self.coefficients @ b, -vjp(self.coefficients)[0]
        f = jax.vmap(lambda c: -vjp(c)[0])(self.coefficients)
        return self.coefficients @ b, f

    def batch_energy_and_forces(self, structures: Structures):
        """Energies (S,) and forces (S, N, 3) of a batch (single coefficient vector)."""
        box = structures.box
        fn = lambda x, m, s, b: self.energy_and_forces(x, m, s, b)
        return jax.vmap(fn, in_axes=(0, 0, 0, None if box is None else 0))(
            structures.positions, structures.mask, structures.species, box
        )


def energy_fn(basis: LinearBasis):
    """``energy(coefficients (K,), positions (N, 3)) -> scalar`` for MD ensembles (free cluster)."""

    def energy(coefficients, positions, **kwargs):
        return coefficients @ basis(positions)

    return energy


class DesignMatrix(NamedTuple):
    """Rows of a weighted linear system: minimise sum_r w_r (y_r - A_r . c)^2.

    A (R, K), y (R,), w (R,) row weights (precisions), kind (R,) ENERGY_ROW or
    FORCE_ROW, structure (R,) structure index, n_atoms (R,) atoms of that structure.
    """

    A: jnp.ndarray
    y: jnp.ndarray
    w: jnp.ndarray
    kind: jnp.ndarray
    structure: jnp.ndarray
    n_atoms: jnp.ndarray


def _structure_rows(basis: LinearBasis, positions, mask, species, box):
    b, vjp = jax.vjp(lambda x: basis(x, mask, species, box), positions)
    k = b.shape[0]
    jac = jax.vmap(lambda e: vjp(e)[0])(jnp.eye(k, dtype=b.dtype))  # (K, N, 3)
    force_rows = -jac.reshape(k, -1).T  # (3N, K)
    return jnp.concatenate([b[None], force_rows], axis=0)


def _chunk_rows_fn(basis: LinearBasis, periodic: bool):
    rows = lambda x, m, s, b: _structure_rows(basis, x, m, s, b)
    return jax.jit(jax.vmap(rows, in_axes=(0, 0, 0, 0 if periodic else None)))


def iter_design_chunks(
    basis: LinearBasis, dataset: Dataset, chunk_size: int = 256
) -> Iterator[DesignMatrix]:
    """Yield the design matrix chunk by chunk (``chunk_size`` structures each).

    The last chunk is padded to the fixed chunk shape for compilation and the
    padding dropped before yielding, so memory stays O(chunk_size * (1 + 3N) * K).
    """
    st = dataset.structures
    s_total, n = st.positions.shape[:2]
    if chunk_size < 1:
        raise JaxiapInputError(f"chunk_size must be >= 1, got {chunk_size}")
    chunk_size = min(chunk_size, s_total)
    rows_fn = _chunk_rows_fn(basis, st.box is not None)
    per = 1 + 3 * n
    kind = np.concatenate([[ENERGY_ROW], np.full(3 * n, FORCE_ROW)])
    for start in range(0, s_total, chunk_size):
        idx = np.arange(start, min(start + chunk_size, s_total))
        pad = np.concatenate([idx, np.full(chunk_size - len(idx), idx[-1])])
        box = None if st.box is None else st.box[pad]
        A = rows_fn(st.positions[pad], st.mask[pad], st.species[pad], box)[: len(idx)]
        c = len(idx)
        A = A.reshape(c * per, -1)
        mask = np.asarray(st.mask[idx])
        y = jnp.concatenate([dataset.energy[idx, None], dataset.forces[idx].reshape(c, -1)], axis=1)
        w_force = np.repeat(mask, 3, axis=1) * np.asarray(dataset.force_weight[idx])[:, None]
        w = np.concatenate([np.asarray(dataset.energy_weight[idx])[:, None], w_force], axis=1)
        yield DesignMatrix(
            A=A,
            y=y.reshape(-1),
            w=jnp.asarray(w.reshape(-1)),
            kind=jnp.asarray(np.tile(kind, c)),
            structure=jnp.asarray(np.repeat(idx, per)),
            n_atoms=jnp.asarray(np.repeat(mask.sum(axis=1), per)),
        )


def design_matrix(basis: LinearBasis, dataset: Dataset, chunk_size: int = 256) -> DesignMatrix:
    """The full design matrix, assembled from fixed-size chunks."""
    chunks = list(iter_design_chunks(basis, dataset, chunk_size))
    return DesignMatrix(*(jnp.concatenate(parts) for parts in zip(*chunks)))
