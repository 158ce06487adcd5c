"""Training neural-network potentials with optax: minibatches, early stopping, vmapped members.

One code path trains M members at once: the member axis is vmapped
(``eqx.filter_vmap``), each member with its own initialisation and its own
minibatch order, so a deep ensemble of M networks is one compiled program and
a single network is M = 1.

Losses (per structure, averaged over the minibatch; ``s`` the potential's
``energy_scale``, n the number of real atoms, targets y = E / n, forces F):

- ``"mse"``: w_E ((E_pred - E) / (n s))^2 + w_F mean_components ((F_pred - F) / s)^2;
- ``"mve"`` (mean-variance estimation): Gaussian NLLs of the standardised
  per-atom energy with variance v_E = mean_i softplus(o_i1) and of each force
  component with variance v_F,i = softplus(o_i2) (clamped at 1e-8, as Tan et
  al.'s NllLoss);
- ``"evidential"`` (Amini et al. 2020): the normal-inverse-gamma NLL of the
  standardised per-atom energy with (nu, alpha, beta) = softplus of the atom-
  averaged heads o_1..o_3 (+1e-4, alpha + 1) plus lambda |y - gamma| (2 nu +
  alpha), and the force MSE (the NIG has no force output).

Early stopping: the validation loss of every member is evaluated each epoch
and the best parameters so far are kept (training stops when no member has
improved for ``patience`` epochs). Progress: a tqdm bar per epoch.
"""

from __future__ import annotations

import dataclasses
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from jaxiap.data import Dataset
from jaxiap.errors import JaxiapInputError
from jaxiap.potentials.nn import NNPotential

LOSSES = ("mse", "mve", "evidential")
#: outputs per atom each loss needs
N_OUTPUTS = {"mse": 1, "mve": 3, "evidential": 4}


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    """Optimisation settings: Adam(W) learning rate, epochs, minibatch size, loss weights, early stopping."""

    epochs: int = 300
    batch_size: int = 16
    learning_rate: float = 3e-3
    weight_decay: float = 0.0
    energy_weight: float = 1.0
    force_weight: float = 1.0
    patience: int = 50
    evidential_lambda: float = 0.2

    def __post_init__(self):
        for name in ("epochs", "batch_size", "patience"):
            v = getattr(self, name)
            if not (isinstance(v, (int, np.integer)) and v >= 1):
                raise JaxiapInputError(f"TrainSettings: {name}={v!r} must be a positive integer")
        for name in ("learning_rate", "weight_decay", "energy_weight", "force_weight", "evidential_lambda"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise JaxiapInputError(f"TrainSettings: {name}={v!r} must be a finite number >= 0")
        if self.learning_rate <= 0 or self.energy_weight + self.force_weight <= 0:
            raise JaxiapInputError("TrainSettings: learning_rate and energy_weight + force_weight must be > 0")


def structure_outputs(potential: NNPotential, positions, mask, species, box=None):
    """Energy (), forces (N, 3) and raw per-atom outputs (N, n_outputs) of one structure."""
    def energy(x):
        o = potential.atomic_outputs(x, mask=mask, species=species, box=box)
        e = jnp.sum(jnp.where(mask, potential.energy_shift + potential.energy_scale * o[:, 0], 0.0))
        return e, o

    (e, o), g = jax.value_and_grad(energy, has_aux=True)(positions)
    return e, -g, o


def batch_outputs(potential: NNPotential, structures):
    """:func:`structure_outputs` over a batch of structures: (B,), (B, N, 3), (B, N, n_outputs)."""
    box = structures.box
    return jax.vmap(structure_outputs, in_axes=(None, 0, 0, 0, None if box is None else 0))(
        potential, structures.positions, structures.mask, structures.species, box)


def _gaussian_nll(r, var):
    var = jnp.maximum(var, 1e-8)
    return 0.5 * jnp.log(2 * jnp.pi * var) + 0.5 * r**2 / var


def nig_nll(y, gamma, nu, alpha, beta):
    """Negative log of the normal-inverse-gamma marginal (a Student-t) at y (Amini et al. 2020, eq. 8)."""
    omega = 2.0 * beta * (1.0 + nu)
    return (0.5 * jnp.log(jnp.pi / nu) - alpha * jnp.log(omega)
            + (alpha + 0.5) * jnp.log(nu * (y - gamma) ** 2 + omega)
            + jax.scipy.special.gammaln(alpha) - jax.scipy.special.gammaln(alpha + 0.5))


def nig_parameters(o_mean):
    """(nu, alpha, beta) from raw heads (..., 3): softplus + 1e-4 (alpha + 1), as UQ_singleNN."""
    sp = jax.nn.softplus(o_mean) + 1e-4
    return sp[..., 0], sp[..., 1] + 1.0, sp[..., 2]


def loss_terms(potential: NNPotential, batch: Dataset, kind: str, settings: TrainSettings):
    """Per-structure losses (B,) of ``kind`` (see the module docstring)."""
    st = batch.structures
    e, f, o = batch_outputs(potential, st)
    mask = st.mask
    n = jnp.sum(mask, axis=1)
    s = potential.energy_scale
    r_e = (e - batch.energy) / (n * s)                               # standardised per-atom energy residual
    r_f = (f - batch.forces) / s                                     # standardised force residuals
    fmask = jnp.broadcast_to(mask[..., None], r_f.shape)
    n_comp = 3 * n
    w_e, w_f = settings.energy_weight, settings.force_weight
    if kind == "mse":
        return w_e * r_e**2 + w_f * jnp.sum(jnp.where(fmask, r_f**2, 0.0), axis=(1, 2)) / n_comp
    if kind == "mve":
        mean_heads = jnp.sum(jnp.where(mask[..., None], jax.nn.softplus(o[..., 1:2]), 0.0), axis=1)[:, 0] / n
        v_f = jnp.broadcast_to(jax.nn.softplus(o[..., 2:3]), r_f.shape)
        nll_f = jnp.sum(jnp.where(fmask, _gaussian_nll(r_f, v_f), 0.0), axis=(1, 2)) / n_comp
        return w_e * _gaussian_nll(r_e, mean_heads) + w_f * nll_f
    if kind == "evidential":
        heads = jnp.sum(jnp.where(mask[..., None], o[..., 1:4], 0.0), axis=1) / n[:, None]
        nu, alpha, beta = nig_parameters(heads)
        # y - gamma is the standardised residual, so gamma = 0 and y = -r_e in these units
        nll = nig_nll(-r_e, 0.0, nu, alpha, beta)
        reg = jnp.abs(r_e) * (2.0 * nu + alpha)
        mse_f = jnp.sum(jnp.where(fmask, r_f**2, 0.0), axis=(1, 2)) / n_comp
        return w_e * (nll + settings.evidential_lambda * reg) + w_f * mse_f
    raise JaxiapInputError(f"unknown loss {kind!r}; choose one of {LOSSES}")


def _take(dataset: Dataset, idx) -> Dataset:
    return jax.tree_util.tree_map(lambda a: a[idx], dataset)


def stack_members(members) -> NNPotential:
    """Stack M potentials of one architecture into one whose array leaves have a leading member axis."""
    return jax.tree_util.tree_map(lambda *a: jnp.stack(a) if eqx.is_array(a[0]) else a[0], *members)


def unstack_member(stacked: NNPotential, i: int) -> NNPotential:
    return jax.tree_util.tree_map(lambda a: a[i] if eqx.is_array(a) else a, stacked)


def train_members(stacked: NNPotential, train: Dataset, validation: Dataset | None = None, *, key,
                  kind: str = "mse", settings: TrainSettings = TrainSettings(), progress: bool = True,
                  member_ids=None):
    """Train M stacked members (leading axis M on every array leaf, :func:`stack_members`).

    Member i draws its minibatch order from ``fold_in(epoch_key, member_ids[i])`` (default ids 0..M-1), so
    training members one at a time with their ids reproduces the vmapped program (up to round-off).

    Returns (trained stacked potential, history dict with ``train_loss`` (epochs, M),
    ``validation_loss`` (epochs, M), ``best_epoch`` (M,), ``epochs_run``).
    """
    from tqdm.auto import tqdm  # lazy: a progress bar only to fit

    if kind not in LOSSES:
        raise JaxiapInputError(f"train_members: kind={kind!r}; choose one of {LOSSES}")
    m = int(jax.tree_util.tree_leaves(stacked.network)[0].shape[0])
    n_out = stacked.network.layers[-1].weight.shape[1]
    if n_out < N_OUTPUTS[kind]:
        raise JaxiapInputError(f"train_members: the '{kind}' loss needs networks with n_outputs >= {N_OUTPUTS[kind]}"
                               f" (got {n_out}); build them with init_nn_potential(..., n_outputs={N_OUTPUTS[kind]})")
    ids = jnp.arange(m) if member_ids is None else jnp.asarray(member_ids, int).reshape(-1)
    if ids.shape != (m,):
        raise JaxiapInputError(f"train_members: member_ids must hold M = {m} ids; got {ids.shape[0]}")
    n_train = len(train)
    if n_train < 1:
        raise JaxiapInputError("train_members: the training set is empty")
    b = min(settings.batch_size, n_train)
    n_batches = n_train // b
    params, static = eqx.partition(stacked, stacked.parameter_spec())  # works stacked
    opt_state = eqx.filter_vmap(_optimizer(settings).init)(params)
    best = params
    best_val = jnp.full((m,), jnp.inf)
    best_epoch = np.zeros(m, int)
    history = {"train_loss": [], "validation_loss": []}
    stale = 0
    bar = tqdm(range(settings.epochs), desc=f"train {kind} x{m}", disable=not progress, leave=False)
    for ep in bar:
        key, sub = jax.random.split(key)
        params, opt_state, tl = _epoch(params, static, opt_state, sub, ids, train, kind, settings, n_batches, b)
        vl = _evaluate(params, static, validation, kind, settings) if validation is not None and len(validation) \
            else tl
        improved = vl < best_val
        best = jax.tree_util.tree_map(lambda new, old: jnp.where(
            improved.reshape((m,) + (1,) * (new.ndim - 1)), new, old), params, best)
        best_val = jnp.where(improved, vl, best_val)
        best_epoch = np.where(np.asarray(improved), ep, best_epoch)
        history["train_loss"].append(np.asarray(tl))
        history["validation_loss"].append(np.asarray(vl))
        stale = 0 if bool(np.any(np.asarray(improved))) else stale + 1
        if progress:
            bar.set_postfix(train=f"{float(np.mean(tl)):.3g}", val=f"{float(np.mean(vl)):.3g}")
        if not np.all(np.isfinite(np.asarray(tl))):
            raise JaxiapInputError(f"train_members: the {kind} loss became non-finite at epoch {ep}; lower "
                                   f"TrainSettings.learning_rate (now {settings.learning_rate})")
        if stale >= settings.patience:
            break
    bar.close()
    history = {k: np.stack(v) for k, v in history.items()}
    history.update(best_epoch=best_epoch, epochs_run=len(history["train_loss"]))
    return eqx.combine(best, static), history


def _optimizer(settings: TrainSettings):
    import optax  # lazy: optax only to fit

    return optax.adamw(settings.learning_rate, weight_decay=settings.weight_decay)


def _member_loss(params, static, data, kind, settings):
    return jnp.mean(loss_terms(eqx.combine(params, static), data, kind, settings))


@eqx.filter_jit
def _epoch(params, static, opt_state, key, ids, train, kind, settings, n_batches, b):
    """One pass over the training set: M members, each with its own minibatch order (module level: the
    compiled program is reused by every call with the same shapes, kind and settings)."""
    import optax  # lazy: optax only to fit

    opt = _optimizer(settings)
    n_train = train.energy.shape[0]

    def one_step(p, st, s, idx):
        loss, g = jax.value_and_grad(_member_loss)(p, st, _take(train, idx), kind, settings)
        upd, s = opt.update(g, s, p)
        return optax.apply_updates(p, upd), s, loss

    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(ids)
    perms = jax.vmap(lambda k: jax.random.permutation(k, n_train)[: n_batches * b].reshape(n_batches, b))(keys)

    def step(carry, idx):                              # idx (M, b): each member its own minibatch
        p, s = carry
        p, s, loss = eqx.filter_vmap(one_step)(p, static, s, idx)
        return (p, s), loss

    (params, opt_state), losses = jax.lax.scan(step, (params, opt_state), jnp.swapaxes(perms, 0, 1))
    return params, opt_state, jnp.mean(losses, axis=0)


@eqx.filter_jit
def _evaluate(params, static, data, kind, settings):
    return eqx.filter_vmap(lambda p, st: _member_loss(p, st, data, kind, settings))(params, static)

