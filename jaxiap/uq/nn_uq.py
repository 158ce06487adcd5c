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
  (last hidden layer) of one MSE-trained network; u_i = -log p(h_i),
  standardised as z_i = (u_i - median) / std over the training atoms. The
  score is not a std, so it is mapped to one by a log-linear map fitted by
  maximum likelihood on the validation set (:func:`log_linear_std_map`):
  std_i = exp(a_F + b_F t_i) per force component of atom i and std_E =
  exp(a_E + b_E mean_i t_i) per structure, b >= 0, with t_i = log(1 +
  softplus(z_i)) (a power law in the score far from the data). Ranking
  metrics do not depend on the map.
- ``svi-meanfield``, ``svi-lowrank``, ``nuts`` (for small networks): a
  Bayesian neural network, weights w ~ N(0, prior_scale^2) and Gaussian
  likelihoods of the standardised energy and force residuals with noise
  stds ~ HalfNormal(1), fitted by numpyro SVI (AutoNormal / AutoLowRank
  guide) or NUTS, both started at the MSE-trained weights; the posterior
  draws of w are the members (mean and std over draws, as the ensemble).
- ``last-layer``: Bayesian linear regression on the per-atom latent features
  (plus a constant, projected onto their independent directions:
  :func:`~jaxiap.potentials.nn.latent_projection`) of one MSE-trained network, its noise and prior scale by
  type-II maximum likelihood (evidence); the mean is the refitted last
  layer, the stds the Gaussian push-forward.

``NNPosterior.mean_potential()`` is the Potential of the mean prediction (the
members' mean for the ensemble and the Bayesian methods), which
:class:`jaxiap.calculator.PosteriorCalculator` runs in ASE with the stds;
``to_inference_data`` (:mod:`jaxiap.inference.arviz_export`) exports the
members' flattened weights to ArviZ (docs/interop.md).
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
from jaxiap.inference.arviz_export import export_stored, to_inference_data
from jaxiap.inference.linear import optimize_hyperparameters
from jaxiap.inference.posterior import Posterior, StructurePrediction
from jaxiap.potentials.base import Potential
from jaxiap.potentials.linear import LinearBasis, design_matrix
from jaxiap.potentials.nn import LatentDescriptor, NNPotential, init_nn_potential, latent_projection
from jaxiap.uq.gmm import fit_gmm

METHODS = ("ensemble", "mve", "evidential", "gmm", "last-layer", "svi-meanfield", "svi-lowrank", "nuts")
#: the methods that sample the weights of a (small) Bayesian network with numpyro
BAYESIAN = ("svi-meanfield", "svi-lowrank", "nuts")


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

    def mean_potential(self, *, basis=None) -> Potential:
        """The Potential of the mean prediction (``basis`` is ignored).

        ensemble / SVI / NUTS: :class:`MemberMeanPotential`, the mean of the members' energies (its forces
        are the members' mean forces, as in ``predict_structures``); mve / evidential / gmm: the one network
        (output 0 is its energy); last-layer: the refitted last layer, a LinearPotential on the latent basis.
        """
        if self.kind == "last-layer":
            return self.extra["posterior"].mean_potential(basis=self.extra["basis"])
        if self.kind == "ensemble" or self.kind in BAYESIAN:
            return MemberMeanPotential(self.members)
        return self.potential(0)

    def flat_weights(self) -> jnp.ndarray:
        """(M, W) each member's network weights, raveled as ``mean`` ravels member 0's (``jax.tree`` order)."""
        leaves = jax.tree_util.tree_leaves(eqx.filter(self.members.network, eqx.is_array))
        return jnp.concatenate([jnp.reshape(a, (a.shape[0], -1)) for a in leaves], axis=1)

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
        if self.kind == "ensemble" or self.kind in BAYESIAN:
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
            z = _gmm_z(self.potential(0), g, structures)                                        # (C, N)
            z_mean = jnp.sum(jnp.where(mask, z, 0.0), axis=1) / n
            e_std = jnp.exp(g["energy_map"][0] + g["energy_map"][1] * z_mean)
            f_std = jnp.broadcast_to(jnp.exp(g["force_map"][0] + g["force_map"][1] * z)[..., None], f.shape)
        else:
            raise JaxiapInputError(f"unknown NN posterior kind {self.kind!r}; one of {METHODS}")
        f_std = jnp.where(mask[..., None], f_std, 0.0)
        return StructurePrediction(e, e_std, f, f_std)


class MemberMeanPotential(Potential):
    """E(x) = mean over members of E_m(x), for networks stacked by ``stack_members`` (leading axis M on every
    array leaf); forces and stress by autodiff are the members' means."""

    members: NNPotential

    @property
    def cutoff(self):
        return unstack_member(self.members, 0).cutoff

    def energy(self, positions, **kwargs):
        return jnp.mean(eqx.filter_vmap(lambda p: p.energy(positions, **kwargs))(self.members))


@to_inference_data.register(NNPosterior)
def _nn_inference_data(obj: NNPosterior, *, n_samples: int = 1000, key=None, n_chains: int = 1):
    """ArviZ export of an NN posterior (see :mod:`jaxiap.inference.arviz_export`): the members' flattened weights
    (ensemble, SVI, NUTS), the last layer's Gaussian (last-layer), else an error."""
    if obj.kind == "last-layer":
        idata = to_inference_data(obj.extra["posterior"], n_samples=n_samples, key=key, n_chains=n_chains)
        idata.posterior.attrs.update(jaxiap_kind="last-layer", jaxiap_class=type(obj).__name__)
        return idata
    if obj.kind == "ensemble" or obj.kind in BAYESIAN:
        return export_stored(obj, "weights", np.asarray(obj.flat_weights()), dim="weight", n_chains=n_chains)
    raise JaxiapInputError(f"to_inference_data: an NN '{obj.kind}' posterior is one network whose uncertainty is a "
                           "per-prediction head or score, not a distribution over weights, so it has no draws to "
                           "export; use predict_structures for its stds (ensemble, svi-*, nuts and last-layer "
                           "posteriors export)")


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
           uncertainty: str = "epistemic", bayes: dict | None = None,
           progress: bool = True) -> tuple[NNPosterior, dict]:
    """Train and fit one UQ ``method`` (one of :data:`METHODS`); returns (posterior, training history).

    ``validation`` drives early stopping (and the GMM's std map). ``n_members`` is used by the ensemble
    and is the number of posterior draws of the Bayesian methods; ``n_components`` by the GMM;
    ``uncertainty`` ("epistemic" | "total") by the evidential method; ``bayes`` overrides the Bayesian
    methods' options (:data:`BAYES_DEFAULTS`).
    """
    if method not in METHODS:
        raise JaxiapInputError(f"fit_nn: method={method!r}; choose one of {METHODS}")
    if uncertainty not in ("epistemic", "total"):
        raise JaxiapInputError(f"fit_nn: uncertainty={uncertainty!r}; choose 'epistemic' or 'total'")
    if method in ("ensemble",) + BAYESIAN and not (isinstance(n_members, (int, np.integer)) and n_members >= 2):
        raise JaxiapInputError(f"fit_nn: method {method!r} needs n_members >= 2 members or posterior draws "
                               f"(got {n_members!r})")
    unknown = set(bayes or {}) - set(BAYES_DEFAULTS)
    if unknown:
        raise JaxiapInputError(f"fit_nn: unknown bayes options {sorted(unknown)}; known: {sorted(BAYES_DEFAULTS)}")
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
    elif method in BAYESIAN:
        opts = {**BAYES_DEFAULTS, **(bayes or {})}
        stacked, info = _fit_bayesian(method, k_extra, unstack_member(stacked, 0), train, n_members, opts, progress)
        history.update(info)
    return NNPosterior(stacked, extra, method, uncertainty), history


def _fit_gmm_extra(key, stacked, train, validation, n_components):
    pot = unstack_member(stacked, 0)
    st = train.structures
    lat = jax.vmap(lambda x, mk, sp, b: pot.latent(x, mask=mk, species=sp, box=b),
                   in_axes=(0, 0, 0, None if st.box is None else 0))(st.positions, st.mask, st.species, st.box)
    rows = np.asarray(lat)[np.asarray(st.mask)]
    gmm = fit_gmm(key, rows, min(n_components, len(rows)), standardize=True)
    u_train = np.asarray(gmm.uncertainty(jnp.asarray(rows)))
    extra = {"gmm": gmm, "u0": float(np.median(u_train)), "u_scale": float(max(np.std(u_train), 1e-12)),
             "energy_map": (0.0, 0.0), "force_map": (0.0, 0.0)}
    vm = np.asarray(validation.structures.mask)
    z = np.asarray(_gmm_z(pot, extra, validation.structures))
    p = NNPosterior(stacked, extra, "gmm").predict_structures(validation.structures)
    e_err = np.abs(np.asarray(p.energy) - np.asarray(validation.energy))
    f_err = np.abs(np.asarray(p.forces) - np.asarray(validation.forces))[vm]            # (atoms, 3)
    z_atoms = np.repeat(z[vm][:, None], 3, axis=1)
    extra["energy_map"] = log_linear_std_map(_structure_z(z, vm), e_err)
    extra["force_map"] = log_linear_std_map(z_atoms.reshape(-1), f_err.reshape(-1))
    return extra


def _gmm_z(potential, extra, structures):
    """Per-atom GMM feature of the std map (C, N): t = log(1 + softplus((u - median_train) / std_train)).

    The log keeps the map's growth a power of the score far from the data (scores of out-of-domain atoms
    reach thousands of training stds, and exp of a linear map would overflow).
    """
    z = (gmm_scores(potential, extra["gmm"], structures) - extra["u0"]) / extra["u_scale"]
    return jnp.log1p(jax.nn.softplus(z))


def _structure_z(z, mask):
    return np.sum(np.where(mask, z, 0.0), axis=1) / np.sum(mask, axis=1)


def log_linear_std_map(z, error, b_max: float = 10.0) -> tuple[float, float]:
    """(a, b >= 0) of the std map s = exp(a + b z) that maximises the Gaussian likelihood of ``error``.

    For fixed b the optimum is a = log(mean(e^2 exp(-2 b z))) / 2; b is a bounded 1-D minimisation.
    """
    from scipy.optimize import minimize_scalar

    z, e2 = np.asarray(z, float), np.asarray(error, float) ** 2

    def a_of(b):
        return 0.5 * np.log(max(np.mean(e2 * np.exp(-2 * b * z)), 1e-300))

    def nll(b):
        log_s = a_of(b) + b * z
        return float(np.mean(log_s + 0.5 * e2 * np.exp(-2 * log_s)))

    b = float(minimize_scalar(nll, bounds=(0.0, b_max), method="bounded").x)
    return a_of(b), b


#: options of the Bayesian-network methods: weight prior std, SVI steps and learning rate, NUTS warmup / chains
BAYES_DEFAULTS = {"prior_scale": 1.0, "svi_steps": 3000, "svi_learning_rate": 1e-2, "num_warmup": 300,
                  "num_chains": 1, "max_tree_depth": 8}


def _bnn_model(potential: NNPotential, train: Dataset, prior_scale: float):
    """numpyro model of a Bayesian network: flat weights w, HalfNormal(1) noise stds of the standardised residuals."""
    import numpyro  # lazy: numpyro only for the Bayesian methods
    import numpyro.distributions as dist
    from jax.flatten_util import ravel_pytree

    params, static = eqx.partition(potential, potential.parameter_spec())
    flat0, unravel = ravel_pytree(params)
    st = train.structures
    mask = st.mask
    n = jnp.sum(mask, axis=1)
    s = potential.energy_scale

    def model():
        w = numpyro.sample("w", dist.Normal(0.0, prior_scale).expand([flat0.size]).to_event(1))
        sig_e = numpyro.sample("sigma_energy", dist.HalfNormal(1.0))
        sig_f = numpyro.sample("sigma_forces", dist.HalfNormal(1.0))
        e, f, _ = batch_outputs(eqx.combine(unravel(w), static), st)
        r_e = (e - train.energy) / (n * s)
        r_f = (f - train.forces) / s
        numpyro.factor("energies", jnp.sum(dist.Normal(0.0, sig_e).log_prob(r_e)))
        numpyro.factor("forces", jnp.sum(jnp.where(mask[..., None], dist.Normal(0.0, sig_f).log_prob(r_f), 0.0)))

    return model, flat0, unravel, static


def _fit_bayesian(method, key, potential: NNPotential, train: Dataset, n_draws: int, opts: dict, progress: bool):
    """SVI or NUTS over the weights, started at ``potential`` (MSE-trained); returns (stacked draws, info)."""
    from jaxiap.inference.mcmc import run_nuts, run_svi

    model, flat0, unravel, static = _bnn_model(potential, train, float(opts["prior_scale"]))
    init = {"w": flat0, "sigma_energy": jnp.asarray(0.1), "sigma_forces": jnp.asarray(0.1)}
    if method == "nuts":
        res = run_nuts(model, key, num_warmup=int(opts["num_warmup"]), num_samples=int(n_draws),
                       num_chains=int(opts["num_chains"]), max_tree_depth=int(opts["max_tree_depth"]),
                       init_params=init, progress=progress, warn=False)
        info = {"r_hat_max": float(max(res.diagnostics["r_hat"].values())),
                "n_divergent": int(res.diagnostics["n_divergent"]), "wall_time": res.diagnostics["wall_time"]}
        draws = np.asarray(res.samples["w"])[-n_draws:]
    else:
        res = run_svi(model, key, guide_kind=method.split("-")[1], num_steps=int(opts["svi_steps"]),
                      learning_rate=float(opts["svi_learning_rate"]), num_samples=int(n_draws), init_params=init,
                      progress=progress)
        info = {"final_loss": res.diagnostics["final_loss"], "wall_time": res.diagnostics["wall_time"]}
        draws = np.asarray(res.samples["w"])
    members = [eqx.combine(unravel(jnp.asarray(w)), static) for w in draws]
    info["n_weights"] = int(flat0.size)
    return stack_members(members), info


def _fit_last_layer(potential: NNPotential, train: Dataset) -> dict:
    basis = LinearBasis(LatentDescriptor(potential, latent_projection(potential, train.structures)))
    result = optimize_hyperparameters(design_matrix(basis, train))
    return {"posterior": result.posterior, "basis": basis, "log_evidence": float(result.log_evidence)}
