"""Energy uncertainties of a linear potential E = c . b(x) as functions of positions.

Every function here returns a closure ``fn(positions (N, 3), mask=None)``
that is differentiable in positions (docs/biased-sampling.md). The names say
which quantity they return, variance or standard deviation:

- :func:`linear_energy_variance`: Var[E(x)] = b(x)^T Sigma b(x), the closed
  form for any posterior with a covariance (exact for a Gaussian posterior);
- :func:`linear_energy_std`: its square root;
- :func:`committee_energies`: the (M,) energies E_m = c_m . b(x) of a committee;
- :func:`udd_sigma2`: Kulichenko et al.'s sig_E^2 = 1/2 sum_m (E_m - Ebar)^2,
  a SUM over members (not a mean): sig_E^2 / N_M -> Var[E] / 2 as N_M grows;
- :func:`committee_std`: the population std sqrt(mean_m (E_m - Ebar)^2)
  (ddof 0; HAL's sigma_E, whose gradient gives HAL's bias force exactly).
"""

from __future__ import annotations

import jax.numpy as jnp

from jaxiap.errors import JaxiapInputError

__all__ = ["linear_energy_variance", "linear_energy_std", "committee_energies", "udd_sigma2", "committee_std",
           "posterior_members", "safe_sqrt"]


def safe_sqrt(v, tiny: float = 1e-300):
    """sqrt(max(v, tiny)): a square root whose gradient stays finite at v = 0."""
    return jnp.sqrt(jnp.maximum(v, tiny))


def _check_k(k_post: int, basis) -> None:
    if int(k_post) != int(basis.n_features):
        raise JaxiapInputError(f"the posterior has {k_post} coefficients but the basis has {basis.n_features} "
                               "features; pass the LinearBasis the posterior was fitted with")


def linear_energy_variance(posterior, basis):
    """``fn(positions, mask=None) -> b(x)^T Sigma b(x)``: the VARIANCE of the energy (energy^2).

    Sigma = ``posterior.covariance()`` (K, K) is read once; b(x) = ``basis(positions, mask)``.
    """
    sigma = jnp.asarray(posterior.covariance())
    _check_k(sigma.shape[0], basis)
    sigma = 0.5 * (sigma + sigma.T)

    def variance(positions, mask=None):
        b = basis(positions, mask)
        return b @ sigma @ b

    return variance


def linear_energy_std(posterior, basis):
    """``fn(positions, mask=None) -> sqrt(b^T Sigma b)``: the STD of the energy (energy units)."""
    var = linear_energy_variance(posterior, basis)
    return lambda positions, mask=None: safe_sqrt(var(positions, mask))


def committee_energies(samples, basis):
    """``fn(positions, mask=None) -> (M,)`` energies c_m . b(x) of the committee ``samples`` (M, K)."""
    samples = jnp.atleast_2d(jnp.asarray(samples))
    _check_k(samples.shape[1], basis)
    return lambda positions, mask=None: samples @ basis(positions, mask)


def udd_sigma2(energies):
    """sig_E^2 = 1/2 sum_m (E_m - Ebar)^2 over the last axis (M,) (a SUM, Kulichenko et al. 2023)."""
    e = jnp.asarray(energies)
    return 0.5 * jnp.sum((e - jnp.mean(e, axis=-1, keepdims=True)) ** 2, axis=-1)


def committee_std(energies):
    """sqrt(mean_m (E_m - Ebar)^2) over the last axis: the population STD (ddof 0) of a committee."""
    e = jnp.asarray(energies)
    return safe_sqrt(jnp.mean((e - jnp.mean(e, axis=-1, keepdims=True)) ** 2, axis=-1))


def posterior_members(posterior, n_members: int, key):
    """(n_members, K) committee drawn from a posterior (``posterior.ensemble(key, n)``: stored members
    in order for a committee, independent draws otherwise)."""
    if not (isinstance(n_members, int) and n_members >= 2):
        raise JaxiapInputError(f"n_members={n_members!r} must be an integer >= 2 (a committee), or None for the "
                               "closed form")
    if key is None:
        raise JaxiapInputError("a committee of n_members draws needs key= (a jax.random key)")
    return jnp.asarray(posterior.ensemble(key, n_members))
