"""Neural-network potentials (Behler-Parrinello style, equinox): per-atom networks on any descriptor.

E(x) = sum_i [shift + scale * o_i0],  o_i = MLP((phi_i - mu) / sigma),

with phi_i (F,) the per-atom features of any :class:`~jaxiap.descriptors.base.Descriptor`
(mu, sigma their training mean and std, fixed), an MLP with smooth (SiLU)
activations, and ``shift`` / ``scale`` the per-atom energy offset and scale
(eV, fixed at initialisation from the training energies). Forces are -dE/dR
by autodiff, so the model is energy-conserving and the NNPotential is a
:class:`~jaxiap.potentials.base.Potential`: every MD program runs it.

Extra per-atom outputs o_i1, o_i2, ... (``n_outputs`` > 1) are raw heads that
the uncertainty methods of :mod:`jaxiap.uq.nn_uq` interpret
(mean-variance, evidential). ``latent`` gives the last hidden layer (N, H),
the features of the GMM and last-layer Bayesian regression methods.
Units: eV, Å.
"""

from __future__ import annotations

from typing import Callable, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from jaxiap.descriptors.base import Descriptor
from jaxiap.errors import JaxiapInputError
from jaxiap.potentials.base import Potential


class AtomicMLP(eqx.Module):
    """A per-atom MLP: features (F,) -> outputs (n_outputs,), with its last hidden layer exposed."""

    layers: tuple
    activation: Callable = eqx.field(static=True)

    def __init__(self, key, n_features: int, hidden: Sequence[int] = (32, 32), n_outputs: int = 1,
                 activation: Callable = jax.nn.silu):
        sizes = [int(n_features), *[int(h) for h in hidden], int(n_outputs)]
        if any(s < 1 for s in sizes) or not hidden:
            raise JaxiapInputError(f"AtomicMLP: hidden={tuple(hidden)} must be a non-empty list of positive widths")
        keys = jax.random.split(key, len(sizes) - 1)
        self.layers = tuple(eqx.nn.Linear(a, b, key=k, dtype=jnp.float64) for a, b, k in zip(sizes[:-1], sizes[1:],
                                                                                              keys))
        self.activation = activation

    def hidden(self, x):
        """Last hidden layer (H,) of one feature vector x (F,)."""
        for layer in self.layers[:-1]:
            x = self.activation(layer(x))
        return x

    def __call__(self, x):
        return self.layers[-1](self.hidden(x))


class NNPotential(Potential):
    """Sum of per-atom network energies on a descriptor (see the module docstring).

    ``energy(positions, *, mask=None, species=None, box=None, neighbor=None)``
    like every jaxiap potential; the parameters are the network's weights
    (not the descriptor, the feature standardisation or the energy shift).
    """

    descriptor: Descriptor
    network: AtomicMLP
    feature_mean: jnp.ndarray     # (F,)
    feature_std: jnp.ndarray      # (F,)
    energy_shift: jnp.ndarray     # () eV per atom
    energy_scale: jnp.ndarray     # () eV per atom

    @property
    def cutoff(self):
        return self.descriptor.cutoff

    @property
    def n_outputs(self) -> int:
        return self.network.layers[-1].out_features

    def parameter_spec(self):
        spec = jax.tree_util.tree_map(lambda _: False, self)
        return eqx.tree_at(lambda p: p.network, spec, replace=jax.tree_util.tree_map(eqx.is_inexact_array,
                                                                                       self.network))

    def standardized_features(self, positions, *, mask=None, species=None, box=None, neighbor=None):
        phi = self.descriptor.atomic(positions, mask=mask, species=species, box=box, neighbor=neighbor)
        return (phi - self.feature_mean) / self.feature_std

    def atomic_outputs(self, positions, *, mask=None, species=None, box=None, neighbor=None):
        """Raw per-atom outputs (N, n_outputs); column 0 is the standardised atomic energy."""
        z = self.standardized_features(positions, mask=mask, species=species, box=box, neighbor=neighbor)
        return jax.vmap(self.network)(z)

    def atomic_energies(self, positions, *, mask=None, species=None, box=None, neighbor=None):
        """Per-atom energies (N,) eV, zero for padded atoms."""
        o = self.atomic_outputs(positions, mask=mask, species=species, box=box, neighbor=neighbor)
        e = self.energy_shift + self.energy_scale * o[:, 0]
        return e if mask is None else jnp.where(mask, e, 0.0)

    def energy(self, positions, *, mask=None, species=None, box=None, neighbor=None, **unused):
        return jnp.sum(self.atomic_energies(positions, mask=mask, species=species, box=box, neighbor=neighbor))

    def latent(self, positions, *, mask=None, species=None, box=None, neighbor=None):
        """Last hidden layer per atom (N, H), zero rows for padded atoms."""
        z = self.standardized_features(positions, mask=mask, species=species, box=box, neighbor=neighbor)
        h = jax.vmap(self.network.hidden)(z)
        return h if mask is None else jnp.where(mask[:, None], h, 0.0)


def feature_statistics(descriptor: Descriptor, structures) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Mean and std (F,) of the per-atom features over the real atoms of ``structures`` (std floored at 1e-8)."""
    box = structures.box

    def one(x, m, s, b):
        return descriptor.atomic(x, mask=m, species=s, box=b)

    phi = jax.vmap(one, in_axes=(0, 0, 0, None if box is None else 0))(structures.positions, structures.mask,
                                                                        structures.species, box)
    mask = np.asarray(structures.mask)
    rows = np.asarray(phi)[mask]
    return jnp.asarray(rows.mean(axis=0)), jnp.asarray(np.maximum(rows.std(axis=0), 1e-8))


def init_nn_potential(key, descriptor: Descriptor, dataset, *, hidden: Sequence[int] = (32, 32), n_outputs: int = 1,
                      activation: Callable = jax.nn.silu) -> NNPotential:
    """An untrained NNPotential whose feature standardisation and energy shift/scale come from ``dataset``.

    shift = mean per-atom energy (eV); scale = the RMS force component (eV/Å) times 1 Å, floored at 1e-3,
    so that outputs of order 1 give forces of the data's size (the per-atom energy spread of a thermal
    dataset is often far smaller than its forces suggest).
    """
    mu, sd = feature_statistics(descriptor, dataset.structures)
    mask = np.asarray(dataset.structures.mask)
    per_atom = np.asarray(dataset.energy) / mask.sum(axis=1)
    scale = float(max(np.sqrt(np.mean(np.asarray(dataset.forces)[mask] ** 2)), 1e-3))
    net = AtomicMLP(key, descriptor.n_features, hidden, n_outputs, activation)
    return NNPotential(descriptor, net, mu, sd, jnp.asarray(float(np.mean(per_atom))), jnp.asarray(scale))


class LatentDescriptor(Descriptor):
    """The last hidden layer of a trained NNPotential plus a constant, as a Descriptor (N, H + 1), or (N, r)
    after an optional ``projection`` (H + 1, r) onto r independent directions (:func:`latent_projection`).

    ``LinearBasis(LatentDescriptor(nn))`` turns the network into a linear model in its last layer: the
    design matrices and Bayesian solvers of :mod:`jaxiap.inference` then give last-layer posteriors.
    """

    potential: NNPotential
    projection: jnp.ndarray | None = None

    @property
    def n_features(self) -> int:
        return self.potential.network.layers[-1].in_features + 1 if self.projection is None \
            else int(self.projection.shape[1])

    @property
    def cutoff(self):
        return self.potential.cutoff

    def atomic(self, positions, *, mask=None, species=None, box=None, neighbor=None):
        h = self.potential.latent(positions, mask=mask, species=species, box=box, neighbor=neighbor)
        one = jnp.ones((h.shape[0], 1), h.dtype) if mask is None else mask[:, None].astype(h.dtype)
        z = jnp.concatenate([h, one], axis=1)
        return z if self.projection is None else z @ self.projection


def latent_projection(potential: NNPotential, structures, rtol: float = 1e-6) -> jnp.ndarray:
    """(H + 1, r) orthonormal directions of the training atoms' [latent, 1] rows with singular values above
    ``rtol`` x the largest: wide layers have nearly collinear units, whose last-layer normal equations are
    numerically singular; projecting onto these directions keeps the same span, well conditioned."""
    box = structures.box
    rows = jax.vmap(lambda x, m, s, b: LatentDescriptor(potential).atomic(x, mask=m, species=s, box=b),
                    in_axes=(0, 0, 0, None if box is None else 0))(structures.positions, structures.mask,
                                                                   structures.species, box)
    rows = np.asarray(rows)[np.asarray(structures.mask)]
    _, sv, vt = np.linalg.svd(rows, full_matrices=False)
    keep = sv > rtol * sv[0]
    return jnp.asarray(vt[keep].T)
