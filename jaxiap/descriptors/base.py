"""The descriptor protocol: per-atom features of a structure, with a documented shape.

A :class:`Descriptor` is an equinox Module (a PyTree: its hyperparameters
may be array leaves, so it can be ``vmap``-ed or differentiated) with

- ``n_features``: F, the number of features per atom (a Python int);
- ``cutoff``: the interaction range (features do not change when an atom
  farther than it moves), or None for a descriptor without one; neighbour
  lists must cover it;
- ``atomic(positions, *, mask=None, species=None, box=None, neighbor=None)
  -> (N, F)``: per-atom features, zero for padded atoms (mask False);
- ``structure(positions, **same) -> (F,)``: per-structure features, the
  sum of ``atomic`` over atoms (extensive, like an energy);
- ``design_rows_fn(structures)``: optional fast linear-fit rows (energy row
  ``structure``, force rows its negative gradient) as a host-side function,
  or None (the default: :mod:`jaxiap.potentials.linear` uses autodiff).

Arguments, the same for every descriptor and potential in jaxiap:
positions (N, 3) Cartesian; mask (N,) bool, True for real atoms; species
(N,) int; box None (free cluster), (3,) orthorhombic lengths or (3, 3) cell
rows (see :mod:`jaxiap.geometry`); neighbor a jax-md
``partition.NeighborList`` (any format) or None for the dense all-pairs path.
Both paths give the same features.

A linear potential E = c . B(x) takes any descriptor:
``LinearBasis(descriptor)`` uses ``descriptor.structure`` as B(x).
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp


class Descriptor(eqx.Module):
    """Base class of descriptors: subclasses define ``n_features``, ``atomic`` and (optionally) ``cutoff``."""

    @property
    def n_features(self) -> int:
        raise NotImplementedError(f"{type(self).__name__} must define n_features")

    @property
    def cutoff(self):
        return None

    def atomic(self, positions, *, mask=None, species=None, box=None, neighbor=None):
        """Per-atom features (N, F), zero rows for padded atoms."""
        raise NotImplementedError(f"{type(self).__name__} must define atomic(positions, ...)")

    def structure(self, positions, *, mask=None, species=None, box=None, neighbor=None):
        """Per-structure features (F,): the sum of :meth:`atomic` over atoms."""
        return jnp.sum(self.atomic(positions, mask=mask, species=species, box=box, neighbor=neighbor), axis=0)

    def design_rows_fn(self, structures):
        """Optional fast design rows of a batch of structures, or None (default: autodiff is used).

        A descriptor with a cheaper way to its force rows than K reverse-mode
        passes returns ``rows(index) -> (len(index), 1 + 3N, F)`` numpy: for
        each structure ``structures[k]``, k in ``index`` (int array), the row
        ``structure(x)`` then the 3N rows -d structure / dx_{i,a} (atom-major),
        exactly as :func:`jaxiap.potentials.linear.structure_rows` without
        reference columns. It returns None for structures it does not support
        (and for traced arrays), so callers fall back to autodiff.
        """
        return None

    def __call__(self, positions, **kwargs):
        """Alias of :meth:`structure`."""
        return self.structure(positions, **kwargs)
