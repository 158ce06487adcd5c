"""Hyperactive learning (HAL; van der Oord et al. 2023): MD on Ebar - tau sigma_E.

sigma_E is the STANDARD DEVIATION of the energy (energy units): the closed
form sqrt(b^T Sigma b) of a linear posterior (``n_members=None``) or the
population std sqrt(mean_k (E_k - Ebar)^2) (ddof 0) of a committee. With
forces F_k = -dE_k/dx, the bias energy -tau sigma_E has the force

    F_bias = -d(-tau sigma_E)/dx = tau d sigma_E/dx
           = -tau mean_k[(E_k - Ebar)(F_k - Fbar)] / sigma_E

(:func:`hal_bias_forces`; ACEHAL writes tau mean_k[(E_k - Ebar)(F_k - Fbar)] /
sigma_E with its own sign convention for F; the force here is the one that
pushes towards larger sigma_E, and it equals -grad of the bias energy).

tau is set relative to the forces, tau = tau_rel <|F|> / <|F_sigma|> with
F_sigma = d sigma_E / dx (the bias force at tau = 1) and <.> the mean per-atom
norm, and smoothed exponentially between MD blocks
(:func:`hal_adapt`, the ``adapt`` hook of
:func:`~jaxiap.active.generate.biased_md.run_biased_langevin`). A run stops
when max_i sigma_F,i / (|F_i| + eps) > tol (:func:`hal_force_uncertainty`;
ACEHAL: tol 0.4, tau_rel 0.05-0.2, smoothing over about 100 steps).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxiap.active.generate.uncertainty import (
    committee_energies,
    committee_std,
    linear_energy_variance,
    posterior_members,
    safe_sqrt,
)

__all__ = ["hal_components", "hal_energy_fn", "hal_bias_forces", "hal_tau", "hal_adapt", "hal_force_uncertainty"]


def hal_components(posterior, basis, *, n_members=None, key=None):
    """``(mean_energy(positions, mask=None), sigma(positions, mask=None))``: Ebar and the energy STD.

    n_members None: (mean . b, sqrt(b^T Sigma b)); an integer: a committee of
    that many posterior members (``posterior.ensemble(key, n)``), its mean and
    population std (ddof 0).
    """
    if n_members is None:
        var = linear_energy_variance(posterior, basis)
        mean = jnp.asarray(posterior.mean)
        return (lambda positions, mask=None: mean @ basis(positions, mask),
                lambda positions, mask=None: safe_sqrt(var(positions, mask)))
    members = committee_energies(posterior_members(posterior, n_members, key), basis)
    return (lambda positions, mask=None: jnp.mean(members(positions, mask)),
            lambda positions, mask=None: committee_std(members(positions, mask)))


def hal_energy_fn(posterior, basis, *, n_members=None, key=None):
    """``energy(positions, tau, mask=None) -> Ebar(x) - tau sigma_E(x)`` (sigma_E the energy STD)."""
    mean_energy, sigma = hal_components(posterior, basis, n_members=n_members, key=key)

    def energy(positions, tau, mask=None):
        return mean_energy(positions, mask) - tau * sigma(positions, mask)

    return energy


def hal_bias_forces(energies, forces, tau):
    """(N, 3) HAL bias force of a committee: -tau mean_k[(E_k - Ebar)(F_k - Fbar)] / sigma_E.

    energies (M,), forces (M, N, 3) with F_k = -dE_k/dx, sigma_E the population
    std of the energies. Equals -d(-tau sigma_E)/dx.
    """
    e = jnp.asarray(energies)
    f = jnp.asarray(forces)
    de = e - jnp.mean(e)
    df = f - jnp.mean(f, axis=0)
    return -tau * jnp.einsum("k,k...->...", de, df) / e.shape[0] / committee_std(e)


def _mean_norm(v):
    return jnp.mean(jnp.linalg.norm(v, axis=-1))


def hal_tau(mean_energy, sigma, positions, tau_rel):
    """Instantaneous tau = tau_rel <|F|> / <|F_sigma|> at positions (F = -grad Ebar, F_sigma = grad sigma_E)."""
    f = jax.grad(mean_energy)(positions)
    fs = jax.grad(sigma)(positions)
    return tau_rel * _mean_norm(f) / jnp.maximum(_mean_norm(fs), 1e-300)


def hal_adapt(mean_energy, sigma, *, tau_rel: float = 0.1, smoothing: float = 0.1):
    """``adapt(positions, kwargs) -> kwargs``: the HAL tau update between MD blocks.

    tau <- (1 - smoothing) tau + smoothing tau_inst, tau_inst = :func:`hal_tau`
    at the block's last positions; a tau <= 0 (the start) is replaced by
    tau_inst. ``smoothing`` = block_steps / (smoothing time in steps), e.g.
    10 / 100. Pure JAX (vmapped and jitted by the MD driver).
    """

    def adapt(positions, kwargs):
        tau = kwargs["tau"]
        inst = hal_tau(mean_energy, sigma, positions, tau_rel)
        new = jnp.where(tau > 0, (1.0 - smoothing) * tau + smoothing * inst, inst)
        return {**kwargs, "tau": new}

    return adapt


def hal_force_uncertainty(posterior, basis, *, n_members=None, key=None, eps: float = 1e-2):
    """``fn(positions, mask=None) -> max_i sigma_F,i / (|F_i| + eps)``, HAL's stopping measure.

    sigma_F,i = sqrt(sum_a Var[F_ia]) (per-atom norm of the component stds)
    and F_i the mean force. Closed form: Var[F_ia] = j_ia^T Sigma j_ia with
    j_ia = dB/dx_ia; committee: population variance of the members' forces.
    Padded atoms are excluded. Stop when it exceeds tol (ACEHAL: 0.4).
    """
    if n_members is None:
        cov = jnp.asarray(posterior.covariance())
        mean = jnp.asarray(posterior.mean)

        def moments(positions, mask):
            jac = basis.jacobian(positions, mask)  # (K, N, 3)
            f = -jnp.tensordot(mean, jac, axes=1)
            var = jnp.einsum("kia,kl,lia->ia", jac, cov, jac)
            return f, var
    else:
        samples = posterior_members(posterior, n_members, key)

        def moments(positions, mask):
            jac = basis.jacobian(positions, mask)
            fk = -jnp.tensordot(samples, jac, axes=1)  # (M, N, 3)
            return jnp.mean(fk, axis=0), jnp.var(fk, axis=0)

    def measure(positions, mask=None):
        f, var = moments(positions, mask)
        r = safe_sqrt(jnp.sum(var, axis=-1)) / (jnp.linalg.norm(f, axis=-1) + eps)
        if mask is not None:
            r = jnp.where(mask, r, -jnp.inf)
        return jnp.max(r)

    return measure
