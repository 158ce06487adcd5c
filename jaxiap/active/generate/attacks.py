"""Adversarial attacks on uncertainty (Schwalbe-Koda, Tan, Gomez-Bombarelli, Nat. Commun. 2021).

A displacement delta of a structure x is optimised to find configurations
that the model is unsure about yet which are thermally accessible:

    maximise  A(delta) = sigma^2(x + delta) exp(-E(x + delta) / kT) / Z,
    Z = mean_i exp(-E_i / kT) over the training energies E_i,

sigma^2 the uncertainty (a VARIANCE: e.g. the energy variance b^T Sigma b,
:func:`jaxiap.active.generate.uncertainty.linear_energy_variance`, or a mean
force variance) and E the mean energy, in the same energy units as kT.

What is optimised. By default (``log_objective=True``) Adam minimises
-log A(delta) = -log sigma^2(x + delta) + E(x + delta) / kT + log Z, which
has the same minimisers as -A (log is monotone) but stays finite when
E / kT is large (exp(-E/kT) of a -44 epsilon LJ cluster at kT = 0.1 is
e^440). ``log_objective=False`` minimises -A itself, as the original
code (evaluated as -exp(log A) from the same logs). ``loss`` in the result is
the optimised quantity per step.

delta starts at 0 (plus ``delta_std`` N(0, 1) noise with ``key``) and is
updated by ``optax.adam(learning_rate)`` for ``n_steps`` steps; the batch is
vmapped and the whole attack is one jitted ``lax.scan``.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from jaxiap.errors import JaxiapInputError

__all__ = ["AttackResult", "adversarial_attack", "partition_log_z", "random_displacements"]


class AttackResult(NamedTuple):
    """positions (B, N, 3) = x0 + delta; delta (B, N, 3); variance_start / variance_end (B,) (sigma^2
    at x0 and at the result); energy_start / energy_end (B,); loss (n_steps, B), the optimised
    objective before each step (see the module docstring)."""

    positions: jnp.ndarray
    delta: jnp.ndarray
    variance_start: jnp.ndarray
    variance_end: jnp.ndarray
    energy_start: jnp.ndarray
    energy_end: jnp.ndarray
    loss: jnp.ndarray


def partition_log_z(train_energies, kT):
    """log Z = log mean_i exp(-E_i / kT) (log-sum-exp; energies and kT in the same units)."""
    e = jnp.asarray(train_energies)
    return jax.scipy.special.logsumexp(-e / kT) - math.log(e.shape[0])


def adversarial_attack(energy_fn: Callable, variance_fn: Callable, x0, *, kT: float, log_Z, n_steps: int = 100,
                       learning_rate: float = 0.01, delta_std: float = 0.0, key=None,
                       log_objective: bool = True) -> AttackResult:
    """Adversarial displacements of a batch x0 (B, N, 3) (or (N, 3)) by Adam (module docstring).

    energy_fn(positions (N, 3)) -> the mean energy; variance_fn(positions) -> sigma^2 (a VARIANCE,
    > 0); kT in energy units; log_Z from :func:`partition_log_z` of the training energies.
    """
    import optax  # lazy: optax is needed only by the attack (keeps importing the package light)

    x0 = jnp.asarray(x0)
    if x0.ndim == 2:
        x0 = x0[None]
    if x0.ndim != 3:
        raise JaxiapInputError(f"adversarial_attack: x0 must be (B, N, 3) or (N, 3), got {tuple(x0.shape)}")
    if delta_std and key is None:
        raise JaxiapInputError("adversarial_attack: delta_std > 0 needs key=")
    if not kT > 0:
        raise JaxiapInputError(f"adversarial_attack: kT={kT!r} must be > 0")
    opt = optax.adam(learning_rate)

    def log_a(x):
        return jnp.log(variance_fn(x)) - energy_fn(x) / kT - log_Z

    def loss_fn(delta, x):
        la = log_a(x + delta)
        return -la if log_objective else -jnp.exp(la)

    def one(x, k):
        delta = jnp.zeros_like(x)
        if delta_std:
            delta = delta_std * jax.random.normal(k, x.shape, x.dtype)

        def step(carry, _):
            delta, opt_state = carry
            loss, g = jax.value_and_grad(loss_fn)(delta, x)
            updates, opt_state = opt.update(g, opt_state, delta)
            return (optax.apply_updates(delta, updates), opt_state), loss

        (delta, _), losses = jax.lax.scan(step, (delta, opt.init(delta)), None, length=int(n_steps))
        xe = x + delta
        return xe, delta, variance_fn(x), variance_fn(xe), energy_fn(x), energy_fn(xe), losses

    keys = jax.random.split(jax.random.key(0) if key is None else key, x0.shape[0])
    pos, delta, v0, v1, e0, e1, losses = jax.jit(jax.vmap(one))(x0, keys)
    return AttackResult(pos, delta, v0, v1, e0, e1, losses.T)


def random_displacements(key, x0, norms):
    """x0 + d with d random, of Frobenius norm ``norms`` (B,) per structure (the baseline of an attack
    with the same |delta|). x0 (B, N, 3); for clusters (N > 1) d has no centre-of-mass part."""
    x0 = jnp.asarray(x0)
    d = jax.random.normal(key, x0.shape, x0.dtype)
    if x0.shape[-2] > 1:
        d = d - jnp.mean(d, axis=-2, keepdims=True)
    d = d / jnp.linalg.norm(d.reshape(d.shape[0], -1), axis=1)[:, None, None]
    return x0 + jnp.asarray(norms)[:, None, None] * d
