"""The Gaussian-process force field as a :class:`~jaxiap.inference.posterior.Posterior`.

A GP has no finite coefficient vector: its posterior lives in function space.
:class:`GPPosterior` therefore implements the model-specific part of the
protocol, ``predict_structures(structures)`` (energies and forces with their
epistemic stds, from :meth:`jaxiap.potentials.gp.GaussianProcess.predict`),
so the selection strategies that rank candidates by predicted uncertainty
(:func:`jaxiap.active.qbc.predictive_std`, ``select_uncertainty``) take it
like any other posterior. ``mean`` is the vector of dual weights
alpha = (K + noise)^-1 y and ``noise_var`` the force noise sigma_n^2;
``sample`` and ``covariance`` (of coefficients) raise, and ``save`` writes
the GP's training set (:meth:`GaussianProcess.save`).
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
import numpy as np

from jaxiap.errors import JaxiapInputError
from jaxiap.inference.posterior import Posterior, StructurePrediction
from jaxiap.potentials.gp import GaussianProcess


class _Holder:
    """Hashable reference to the host-side GaussianProcess (static field of the Module)."""

    def __init__(self, gp):
        self.gp = gp


class GPPosterior(Posterior):
    """Posterior view of a trained :class:`GaussianProcess` (see the module docstring)."""

    mean: jnp.ndarray
    noise_var: jnp.ndarray
    kind: str = eqx.field(static=True, default="gp")
    holder: _Holder = eqx.field(static=True, default=None)

    @classmethod
    def from_gp(cls, gp: GaussianProcess) -> "GPPosterior":
        if gp.n_rows == 0:
            raise JaxiapInputError("GPPosterior.from_gp: the GP has no training data")
        gp.update()
        return cls(jnp.asarray(gp._alpha), jnp.asarray(gp.hyperparameters.noise**2), "gp", _Holder(gp))

    @property
    def gp(self) -> GaussianProcess:
        return self.holder.gp

    def sample(self, key, n_samples: int):
        raise JaxiapInputError("a GP posterior has no finite coefficient vector to sample; use predict_structures "
                               "(stds) or GaussianProcess.potential() (the mean)")

    def covariance(self):
        raise JaxiapInputError("a GP posterior has no coefficient covariance; its uncertainty is per prediction "
                               "(predict_structures, GaussianProcess.predict)")

    def save(self, path) -> None:
        self.gp.save(path)

    def predict_structures(self, structures, *, basis=None) -> StructurePrediction:
        """Energy and forces of C structures with their epistemic stds (no noise); ``basis`` is ignored."""
        from ase.data import atomic_numbers  # lazy: ase only for species names

        pos = np.asarray(structures.positions)
        mask = np.asarray(structures.mask)
        spc = np.asarray(structures.species)
        names = structures.species_names
        z_of = np.array([atomic_numbers.get(n, 0) for n in names])
        c, n = mask.shape
        e, es = np.zeros(c), np.zeros(c)
        f, fs = np.zeros((c, n, 3)), np.zeros((c, n, 3))
        for k in range(c):
            m = mask[k]
            cell = None if structures.box is None else np.asarray(structures.box[k])
            if cell is not None and cell.ndim == 1:
                cell = np.diag(cell)
            p = self.gp.predict(pos[k][m], cell, z_of[spc[k][m]])
            e[k], es[k] = p["energy"], p["energy_std"]
            f[k, m], fs[k, m] = p["forces"], p["forces_std"]
        return StructurePrediction(jnp.asarray(e), jnp.asarray(es), jnp.asarray(f), jnp.asarray(fs))
