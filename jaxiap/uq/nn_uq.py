"""Uncertainty of neural-network potentials: five methods, one Posterior protocol (docs/uq_comparison.md).

Every method is fitted by a ``fit_*`` function and returns a
:class:`NNPosterior` whose ``predict_structures(structures)`` gives energies
and forces with their standard deviations (a
:class:`~jaxiap.inference.posterior.StructurePrediction`), so the selection
strategies and the metrics of :mod:`jaxiap.uq.metrics` take every method the
same way. Units: eV, Å; n the number of atoms, s the potential's
``energy_scale``.

- ``ensemble`` (deep ensemble, Lakshminarayanan et al. 2017): M networks
  from independent initialisations and minibatch orders, trained in one
  vmapped program; mean and std (ddof = 1) over members, per energy and per
  force component.
- ``mve`` (mean-variance estimation): heads o_1 (energy) and o_2 (forces),
  trained by Gaussian NLL; energy std n s sqrt(mean_i softplus(o_i1)), force-
  component std s sqrt(softplus(o_i2)).
- ``evidential`` (deep evidential regression, Amini et al. 2020): atom-
  averaged heads give (nu, alpha, beta) of a normal-inverse-gamma on the
  standardised per-atom energy; the energy std is the epistemic
  n s sqrt(beta / (nu (alpha - 1))) (``uncertainty="total"`` adds the
  aleatoric beta / (alpha - 1)); the force std of atom i is the same formula
  with atom i's own heads, times s (a per-atom score: the NIG has no force
  model).
- ``gmm``: a Gaussian mixture on the training atoms' latent features
  (last hidden layer) of one MSE-trained network; u_i = -log p(h_i). The
  score is not a std, so it is mapped to one by a positive increasing map:
  std_i = k_F softplus(u_i - u_0) (forces, per atom) and std_E = k_E
  sum_i softplus(u_i - u_0) (energies), u_0 the median training score and
  k the NLL-optimal scale on the validation set
  (:func:`jaxiap.uq.metrics.recalibration_scale`). Ranking metrics do not
  depend on the map.
- ``last-layer``: Bayesian linear regression on the per-atom latent features
  (plus a constant) of one MSE-trained network, its noise and prior scale by
  type-II maximum likelihood (evidence); the mean is the refitted last
  layer, the stds the Gaussian push-forward.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from jaxiap.data import Dataset
from jaxiap.errors import JaxiapInputError
from jaxiap.inference.nn_train import (TrainSettings, batch_outputs, nig_parameters, stack_members, train_members,
                                       unstack_member)
from jaxiap.inference.linear import optimize_hyperparameters
from jaxiap.inference.posterior import Posterior, StructurePrediction
from jaxiap.potentials.linear import LinearBasis, design_matrix
from jaxiap.potentials.nn import LatentDescriptor, NNPotential, init_nn_potential
from jaxiap.uq.gmm import fit_gmm
from jaxiap.uq.metrics import recalibration_scale

METHODS = ("ensemble", "mve", "evidential", "gmm", "last-layer")


class NNPosterior(Posterior):
    """Posterior view of trained networks (see the module docstring); ``predict_structures`` is the interface.

    ``members``: the stacked networks (leading axis M; M = 1 except for the ensemble); ``extra``: the
    method's fitted pieces (a GMM and its scales, the last-layer posterior and basis).
    """

    members: NNPotential
    extra: dict
    kind: str = eqx.field(static=True, default="ensemble")
    uncertainty: str = eqx.field(static=True, default="epistemic")

    @property
    def mean(self):
        leaves = jax.tree_util.tree_leaves(eqx.filter(unstack_member(self.members, 0).network, eqx.is_array))
        return jnp.concatenate([jnp.ravel(a) for a in leaves])

    @property
    def noise_var(self):
        return jnp.asarray(0.0)

    @property
    def n_members(self) -> int:
        return int(self.members.energy_shift.shape[0])

    def potential(self, i: int = 0) -> NNPotential:
        """Member i as a Potential (its mean energy drives MD)."""
        return unstack_member(self.members, i)

    def sample(self, key, n_samples: int):
        raise JaxiapInputError(f"an NN '{self.kind}' posterior has no coefficient distribution to sample; use "
                               "predict_structures (stds) or .potential(i) (members)")

    def covariance(self):
        raise JaxiapInputError(f"an NN '{self.kind}' posterior has no coefficient covariance; its uncertainty is "
                               "per prediction (predict_structures)")

    def save(self, path) -> None:
        raise JaxiapInputError("NN posteriors are not written to .npz; save the networks with "
                               "equinox.tree_serialise_leaves(path, posterior.members)")

    def predict_structures(self, structures, *, basis=None) -> StructurePrediction:
        """Energies (C,) and forces (C, N, 3) with their stds for C structures; ``basis`` is ignored."""
        mask = jnp.asarray(structures.mask)
        n = jnp.sum(mask, axis=1)
        if self.kind == "last-layer":
            return self.extra["posterior"].predict_structures(structures, basis=self.extra["basis"])
        e, f, o = eqx.filter_vmap(lambda p: batch_outputs(p, structures))(self.members)   # (M, C), (M, C, N, 3), ...
        s = self.members.energy_scale[0]
        if self.kind == "ensemble":
            if self.n_members < 2:
                raise JaxiapInputError("an ensemble posterior needs at least 2 members")
            return StructurePrediction(e.mean(0), e.std(0, ddof=1), f.mean(0), f.std(0, ddof=1))
        e, f, o = e[0], f[0], o[0]
        if self.kind == "mve":
            v_e = jnp.sum(jnp.where(mask[..., None], jax.nn.softplus(o[..., 1:2]), 0.0), axis=1)[:, 0] / n
            e_std = n * s * jnp.sqrt(v_e)
            f_std = s * jnp.sqrt(jnp.broadcast_to(jax.nn.softplus(o[..., 2:3]), f.shape))
        elif self.kind == "evidential":
            heads = jnp.sum(jnp.where(mask[..., None], o[..., 1:4], 0.0), axis=1) / n[:, None]
            e_std = n * s * jnp.sqrt(_nig_variance(*nig_parameters(heads), self.uncertainty))
            atom_var = _nig_variance(*nig_parameters(o[..., 1:4]), self.uncertainty)           # (C, N)
            f_std = s * jnp.sqrt(jnp.broadcast_to(atom_var[..., None], f.shape))
        elif self.kind == "gmm":
            g = self.extra
            u = jax.nn.softplus(gmm_scores(self.potential(0), g["gmm"], structures) - g["u0"])   # (C, N)
            e_std = g["k_energy"] * jnp.sum(jnp.where(mask, u, 0.0), axis=1)
            f_std = g["k_forces"] * jnp.broadcast_to(u[..., None], f.shape)
        else:
            raise JaxiapInputError(f"unknown NN posterior kind {self.kind!r}; one of {METHODS}")
        f_std = jnp.where(mask[..., None], f_std, 0.0)
        return StructurePrediction(e, e_std, f, f_std)


def _nig_variance(nu, alpha, beta, which: str):
    epistemic = beta / (nu * (alpha - 1.0))
    return epistemic + beta / (alpha - 1.0) if which == "total" else epistemic


def gmm_scores(potential: NNPotential, gmm, structures):
    """Per-atom GMM uncertainty -log p(h_i) (C, N) of the latent features (padded atoms 0)."""
    box = structures.box
    lat = jax.vmap(lambda x, m, sp, b: potential.latent(x, mask=m, species=sp, box=b),
                   in_axes=(0, 0, 0, None if box is None else 0))(structures.positions, structures.mask,
                                                                  structures.species, box)
    return jnp.where(structures.mask, gmm.uncertainty(lat), 0.0)


# ------------------------------------------------------------------------------------------------- fitting
def _members(key, descriptor, train: Dataset, n_members: int, hidden, n_outputs: int) -> NNPotential:
    keys = jax.random.split(key, n_members)
    return stack_members([init_nn_potential(k, descriptor, train, hidden=hidden, n_outputs=n_outputs) for k in keys])


def fit_nn(method: str, descriptor, train: Dataset, validation: Dataset, *, key, hidden=(32, 32),
           n_members: int = 5, settings: TrainSettings = TrainSettings(), n_components: int = 5,
           uncertainty: str = "epistemic", progress: bool = True) -> tuple[NNPosterior, dict]:
    """Train and fit one UQ ``method`` (one of :data:`METHODS`); returns (posterior, training history).

    ``validation`` drives early stopping (and the GMM's std scale). ``n_members`` is used by the ensemble;
    ``n_components`` by the GMM; ``uncertainty`` ("epistemic" | "total") by the evidential method.
    """
    if method not in METHODS:
        raise JaxiapInputError(f"fit_nn: method={method!r}; choose one of {METHODS}")
    if uncertainty not in ("epistemic", "total"):
        raise JaxiapInputError(f"fit_nn: uncertainty={uncertainty!r}; choose 'epistemic' or 'total'")
    if method == "ensemble" and not (isinstance(n_members, (int, np.integer)) and n_members >= 2):
        raise JaxiapInputError(f"fit_nn: an ensemble needs n_members >= 2 (got {n_members!r})")
    k_init, k_train, k_extra = jax.random.split(key, 3)
    loss = {"ensemble": "mse", "mve": "mve", "evidential": "evidential"}.get(method, "mse")
    n_out = {"mve": 3, "evidential": 4}.get(method, 1)
    m = n_members if method == "ensemble" else 1
    stacked = _members(k_init, descriptor, train, m, hidden, n_out)
    stacked, history = train_members(stacked, train, validation, key=k_train, kind=loss, settings=settings,
                                     progress=progress)
    extra: dict = {}
    if method == "gmm":
        extra = _fit_gmm_extra(k_extra, stacked, train, validation, n_components)
    elif method == "last-layer":
        extra = _fit_last_layer(unstack_member(stacked, 0), train)
        history["log_evidence"] = extra.pop("log_evidence")
    return NNPosterior(stacked, extra, method, uncertainty), history


def _fit_gmm_extra(key, stacked, train, validation, n_components):
    pot = unstack_member(stacked, 0)
    st = train.structures
    lat = jax.vmap(lambda x, mk, sp, b: pot.latent(x, mask=mk, species=sp, box=b),
                   in_axes=(0, 0, 0, None if st.box is None else 0))(st.positions, st.mask, st.species, st.box)
    rows = np.asarray(lat)[np.asarray(st.mask)]
    gmm = fit_gmm(key, rows, min(n_components, len(rows)), standardize=True)
    u_train = np.asarray(gmm.uncertainty(jnp.asarray(rows)))
    u0 = float(np.median(u_train))
    extra = {"gmm": gmm, "u0": u0, "k_energy": 1.0, "k_forces": 1.0}
    post = NNPosterior(stacked, extra, "gmm")
    p = post.predict_structures(validation.structures)
    vm = np.asarray(validation.structures.mask)
    extra["k_energy"] = recalibration_scale(np.asarray(p.energy), np.asarray(p.energy_std), np.asarray(validation.energy))
    extra["k_forces"] = recalibration_scale(np.asarray(p.forces)[vm], np.asarray(p.forces_std)[vm],
                                            np.asarray(validation.forces)[vm])
    return extra


def _fit_last_layer(potential: NNPotential, train: Dataset) -> dict:
    basis = LinearBasis(LatentDescriptor(potential))
    result = optimize_hyperparameters(design_matrix(basis, train))
    return {"posterior": result.posterior, "basis": basis, "log_evidence": float(result.log_evidence)}
