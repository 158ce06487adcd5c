"""Linear-in-coefficients potentials E(x) = sum_k c_k B_k(x) and their design matrices.

``LinearBasis`` maps one structure to its features B(x) (K,): the structure
features of any descriptor (radial pair features summed over the structure
for the LJ13 study), optionally followed by one column per species counting
its atoms (per-species reference energies). ``LinearPotential`` is a
:class:`~jaxiap.potentials.base.Potential`; both accept periodic cells
(``box``) and jax-md neighbour lists (``neighbor=``). Forces are
F = -c . dB/dx by autodiff, so the force rows of the design matrix are
-dB/dx.

Design-matrix layout, per structure: one energy row B(x), then 3N force rows
-dB/dx_{i,a} in atom-major order (i, a) for a = x, y, z. Rows of padded
atoms are present with weight 0, so every structure has 1 + 3 N_max rows and
chunks have fixed shapes.

Rows come from the descriptor's fast path when it has one
(:meth:`~jaxiap.descriptors.base.Descriptor.design_rows_fn`: the ACE
descriptor's chain-rule rows, :mod:`jaxiap.descriptors.ace_rows`), else from
K reverse-mode passes; ``fast_rows=False`` forces the latter. Both give the
same rows to round-off.
"""

from __future__ import annotations

from typing import Iterator, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from jaxiap.data import Dataset
from jaxiap.descriptors.base import Descriptor
from jaxiap.descriptors.radial import RadialBasis, RadialDescriptor
from jaxiap.errors import JaxiapInputError
from jaxiap.geometry import check_cell
from jaxiap.potentials.base import Potential
from jaxiap.potentials.pair_sum import cluster_pair_sum
from jaxiap.structures import Structures

ENERGY_ROW, FORCE_ROW = 0, 1


class LinearBasis(eqx.Module):
    """Structure features B(x) (K,) for a linear potential.

    descriptor: any :class:`~jaxiap.descriptors.base.Descriptor` (its
        ``structure`` features), or a :class:`RadialBasis`, which is wrapped
        into a :class:`RadialDescriptor` with ``n_species`` species (the LJ13
        study's basis; its numbers are unchanged by the wrapping).
    n_species: species count, for the reference-energy columns.
    species_reference: append one column per species counting its atoms.
    """

    descriptor: Descriptor
    n_species: int = eqx.field(static=True, default=1)
    species_reference: bool = eqx.field(static=True, default=False)

    def __init__(self, descriptor, n_species: int = 1, species_reference: bool = False):
        if isinstance(descriptor, RadialBasis):
            descriptor = RadialDescriptor(descriptor, int(n_species))
        if not isinstance(descriptor, Descriptor):
            raise JaxiapInputError(
                f"LinearBasis: descriptor must be a Descriptor (e.g. RadialDescriptor) or a RadialBasis, "
                f"got {type(descriptor).__name__}"
            )
        d_species = getattr(descriptor, "n_species", None)
        if d_species is not None and int(d_species) != int(n_species):
            if int(n_species) != 1:
                raise JaxiapInputError(
                    f"LinearBasis: n_species={n_species} disagrees with the descriptor's n_species={d_species}"
                )
            n_species = int(d_species)
        self.descriptor = descriptor
        self.n_species = int(n_species)
        self.species_reference = bool(species_reference)

    @property
    def radial(self) -> RadialBasis:
        """The RadialBasis of a radial descriptor (AttributeError for other descriptors)."""
        if isinstance(self.descriptor, RadialDescriptor):
            return self.descriptor.radial
        raise AttributeError(f"LinearBasis.radial: the descriptor is a {type(self.descriptor).__name__}")

    @property
    def cutoff(self):
        return self.descriptor.cutoff

    @property
    def n_features(self) -> int:
        return self.descriptor.n_features + (self.n_species if self.species_reference else 0)

    def __call__(self, positions, mask=None, species=None, box=None, neighbor=None):
        """positions (N, 3), mask (N,), species (N,) int, box None/(3,)/(3, 3), neighbor -> (K,)."""
        b = self.descriptor.structure(positions, mask=mask, species=species, box=box, neighbor=neighbor)
        if self.species_reference:
            n = positions.shape[0]
            m = jnp.ones(n, bool) if mask is None else mask
            s = jnp.zeros(n, jnp.int32) if species is None else species
            counts = jnp.sum(jax.nn.one_hot(s, self.n_species, dtype=b.dtype) * m[:, None], axis=0)
            b = jnp.concatenate([b, counts])
        return b

    def jacobian(self, positions, mask=None, species=None, box=None, neighbor=None):
        """dB/dx (K, N, 3) by reverse-mode autodiff (K backward passes)."""
        return jax.jacrev(lambda x: self(x, mask, species, box, neighbor))(positions)


class LinearPotential(Potential):
    """E(x) = c . B(x). ``coefficients`` is (K,) or a stack (M, K) of samples.

    A :class:`~jaxiap.potentials.base.Potential`: its parameters are the
    coefficients only (the basis hyperparameters are fixed data), so
    ``stack_parameters(pot, cs)`` takes an (M, K) array. The methods also
    accept an (M, K) coefficient stack directly (energies (M,), forces (M, N, 3)).
    """

    basis: LinearBasis
    coefficients: jnp.ndarray

    @property
    def cutoff(self):
        return self.basis.cutoff

    def parameter_spec(self):
        spec = jax.tree_util.tree_map(lambda _: False, self)
        return eqx.tree_at(lambda p: p.coefficients, spec, replace=True)

    def energy(self, positions, mask=None, species=None, box=None, *, neighbor=None):
        """Energy of one structure: scalar for (K,) coefficients, (M,) for (M, K)."""
        pair = _cluster_pair_fn(self.basis)
        if pair is not None and mask is None and box is None and neighbor is None and self.coefficients.ndim == 1:
            return cluster_pair_sum(pair, (self.basis.descriptor.radial, self.coefficients), positions)
        return self.coefficients @ self.basis(positions, mask, species, box, neighbor)

    def forces(self, positions, mask=None, species=None, box=None, *, neighbor=None):
        """Forces (N, 3), or (M, N, 3) for a coefficient stack."""
        jac = self.basis.jacobian(positions, mask, species, box, neighbor)
        return -jnp.tensordot(self.coefficients, jac, axes=1)

    def energy_and_forces(self, positions, mask=None, species=None, box=None, *, neighbor=None):
        b, vjp = jax.vjp(lambda x: self.basis(x, mask, species, box, neighbor), positions)
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


def _radial_pair(params, r):
    radial, coefficients = params
    return radial(r) @ coefficients


def _cluster_pair_fn(basis: LinearBasis):
    """The pair function of a basis whose energy is a plain pair sum (single-species radial, no
    reference columns), for :func:`~jaxiap.potentials.pair_sum.cluster_pair_sum`; None otherwise."""
    d = basis.descriptor
    if isinstance(d, RadialDescriptor) and d.n_species == 1 and not basis.species_reference:
        return _radial_pair
    return None


def energy_fn(basis: LinearBasis):
    """``energy(coefficients (K,), positions (N, 3)) -> scalar`` for MD ensembles (free cluster).

    A single-species radial basis sums the unique pairs once
    (:func:`~jaxiap.potentials.pair_sum.cluster_pair_sum`: pair energy
    c . g(r), forces at about the cost of one energy).
    """

    def energy(coefficients, positions, **kwargs):
        return LinearPotential(basis, coefficients).energy(positions)

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


def _reference_columns(basis: LinearBasis, structures: Structures, index) -> np.ndarray:
    """The species-count columns of ``basis`` for ``structures[index]`` as rows (C, 1 + 3N, n_species):
    atom counts in the energy row, 0 in the force rows (as :meth:`LinearBasis.__call__`)."""
    mask = np.asarray(structures.mask)[index]
    species = np.asarray(structures.species)[index]
    c, n = mask.shape
    out = np.zeros((c, 1 + 3 * n, basis.n_species))
    for z in range(basis.n_species):
        out[:, 0, z] = np.sum(mask & (species == z), axis=1)
    return out


def _fast_rows_fn(basis: LinearBasis, structures: Structures):
    """``rows(index) -> (C, 1 + 3N, K)`` numpy from the descriptor's fast path (plus the reference
    columns), or None when the descriptor has none for these structures."""
    fn = basis.descriptor.design_rows_fn(structures)
    if fn is None:
        return None

    def rows(index):
        b = fn(index)
        if basis.species_reference:
            b = np.concatenate([b, _reference_columns(basis, structures, index)], axis=2)
        return b

    return rows


def iter_design_chunks(
    basis: LinearBasis, dataset: Dataset, chunk_size: int = 256, *, fast_rows: bool = True
) -> Iterator[DesignMatrix]:
    """Yield the design matrix chunk by chunk (``chunk_size`` structures each).

    The last chunk is padded to the fixed chunk shape for compilation and the
    padding dropped before yielding, so memory stays O(chunk_size * (1 + 3N) * K).
    ``fast_rows``: use the descriptor's fast rows when it has them (e.g. ACE,
    single species, cluster or orthorhombic cells); False: always autodiff.
    """
    st = dataset.structures
    s_total, n = st.positions.shape[:2]
    if chunk_size < 1:
        raise JaxiapInputError(f"chunk_size must be >= 1, got {chunk_size}")
    chunk_size = min(chunk_size, s_total)
    if st.box is not None:
        for b in np.unique(np.asarray(st.box).reshape(s_total, -1), axis=0):
            check_cell(b.reshape(np.shape(st.box)[1:]), basis.cutoff, "design_matrix: a structure's box")
    fast = _fast_rows_fn(basis, st) if fast_rows else None
    rows_fn = None if fast is not None else _chunk_rows_fn(basis, st.box is not None)
    per = 1 + 3 * n
    kind = np.concatenate([[ENERGY_ROW], np.full(3 * n, FORCE_ROW)])
    for start in range(0, s_total, chunk_size):
        idx = np.arange(start, min(start + chunk_size, s_total))
        pad = np.concatenate([idx, np.full(chunk_size - len(idx), idx[-1])])
        if fast is not None:
            A = jnp.asarray(fast(pad)[: len(idx)])
        else:
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


def design_matrix(basis: LinearBasis, dataset: Dataset, chunk_size: int = 256, *,
                  fast_rows: bool = True) -> DesignMatrix:
    """The full design matrix, assembled from fixed-size chunks (``fast_rows`` as :func:`iter_design_chunks`)."""
    chunks = list(iter_design_chunks(basis, dataset, chunk_size, fast_rows=fast_rows))
    return DesignMatrix(*(jnp.concatenate(parts) for parts in zip(*chunks)))


@jax.jit
def _structure_rows_batch(basis, positions, mask, species, box):
    fn = lambda x, m, s, b: _structure_rows(basis, x, m, s, b)
    return jax.vmap(fn, in_axes=(0, 0, 0, None if box is None else 0))(positions, mask, species, box)


def structure_rows(basis: LinearBasis, structures: Structures, *, fast_rows: bool = True):
    """Unit-weight design rows of each structure, (S, 1 + 3N, K): the energy row B(x), then the
    3N force rows -dB/dx (atom-major), as in :func:`design_matrix` (rows of padded atoms are
    not zeroed here). The descriptor's fast rows when it has them and ``fast_rows`` (all S
    structures in one call), else one jitted autodiff function of (basis, structures), compiled
    once per shape."""
    fast = _fast_rows_fn(basis, structures) if fast_rows else None
    if fast is not None:
        return jnp.asarray(fast(np.arange(structures.positions.shape[0])))
    return _structure_rows_batch(basis, structures.positions, structures.mask, structures.species, structures.box)


def design_from_rows(rows, dataset: Dataset) -> DesignMatrix:
    """The DesignMatrix of ``dataset`` from its unit-weight rows (S, 1 + 3N, K) (:func:`structure_rows`).

    Same rows, targets, weights and order as :func:`design_matrix`, without
    recomputing the basis Jacobians (e.g. subsets of a pool whose rows are known).
    """
    rows = np.asarray(rows)
    s, p, k = rows.shape
    mask = np.asarray(dataset.structures.mask)
    y = np.concatenate([np.asarray(dataset.energy)[:, None], np.asarray(dataset.forces).reshape(s, -1)], axis=1)
    w_force = np.repeat(mask, 3, axis=1) * np.asarray(dataset.force_weight)[:, None]
    w = np.concatenate([np.asarray(dataset.energy_weight)[:, None], w_force], axis=1)
    kind = np.concatenate([[ENERGY_ROW], np.full(p - 1, FORCE_ROW)])
    return DesignMatrix(A=jnp.asarray(rows.reshape(s * p, k)), y=jnp.asarray(y.reshape(-1)),
                        w=jnp.asarray(w.reshape(-1)), kind=jnp.asarray(np.tile(kind, s)),
                        structure=jnp.asarray(np.repeat(np.arange(s), p)),
                        n_atoms=jnp.asarray(np.repeat(mask.sum(axis=1), p)))
