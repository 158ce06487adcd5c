"""Uncertainty-driven dynamics (UDD; Kulichenko et al., Nat. Comput. Sci. 2023).

A committee of N_M members with energies E_m(x) on a structure of N_A atoms has

    sig_E^2 = 1/2 sum_m (E_m - Ebar)^2                      (a SUM; energy^2)
    E_bias  = A [exp(-sig_E^2 / (N_M N_A B^2)) - 1]           (0 at no uncertainty, -> -A)
    rho     = sqrt(2 sig_E^2 / (N_M N_A))                     (selection measure, energy / sqrt(atom))

and MD runs on Ebar + E_bias. A: energy (of the order of the barriers);
B: energy / sqrt(atom), chosen so that mean |F_bias| / |F_true| is about 0.36
(:func:`calibrate_udd_B`). A structure is selected (and the run stopped) when
rho exceeds a threshold (:func:`udd_rho` as ``uncertainty_fn`` with
``stop_threshold`` in :func:`~jaxiap.active.generate.biased_md.run_biased_langevin`).

Closed form. For a linear potential E = c . b(x) with posterior covariance
Sigma, a committee of N_M independent posterior draws has
E[sig_E^2] / N_M = (N_M - 1) / (2 N_M) Var[E] -> Var[E] / 2 with
Var[E] = b^T Sigma b (the VARIANCE of the energy), so

    sig_E^2 / N_M -> b^T Sigma b / 2,    rho^2 -> b^T Sigma b / N_A,
    E_bias -> A [exp(-b^T Sigma b / (2 N_A B^2)) - 1].

``n_members=None`` uses this closed form (no sampling noise); an integer
draws that many members from the posterior with ``key`` and uses the
committee formulas (Ebar is then the committee mean).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxiap.active.generate.uncertainty import (
    committee_energies,
    linear_energy_variance,
    posterior_members,
    safe_sqrt,
    udd_sigma2,
)
from jaxiap.errors import JaxiapInputError

__all__ = ["udd_bias", "udd_components", "udd_energy_fn", "udd_bias_energy_fn", "udd_rho", "udd_stop",
           "udd_force_ratio", "calibrate_udd_B"]


def udd_bias(sig2_E, n_members, n_atoms, A, B):
    """E_bias = A [exp(-sig2_E / (n_members n_atoms B^2)) - 1] (sig2_E: the SUM 1/2 sum (E_m - Ebar)^2)."""
    return A * (jnp.exp(-sig2_E / (n_members * n_atoms * B**2)) - 1.0)


def _check_atoms(n_atoms):
    if not (isinstance(n_atoms, (int, np.integer)) and n_atoms >= 1):
        raise JaxiapInputError(f"n_atoms={n_atoms!r} must be a positive integer (the atoms of the structure)")


def udd_components(posterior, basis, *, n_members=None, key=None):
    """``fn(positions, mask=None) -> (Ebar, sig2_E / N_M)``.

    Closed form (n_members None): (mean . b, b^T Sigma b / 2). Committee:
    (mean_m E_m, 1/2 mean_m (E_m - Ebar)^2) of ``n_members`` posterior members.
    """
    if n_members is None:
        var = linear_energy_variance(posterior, basis)
        mean = jnp.asarray(posterior.mean)

        def closed(positions, mask=None):
            return mean @ basis(positions, mask), 0.5 * var(positions, mask)

        return closed
    members = committee_energies(posterior_members(posterior, n_members, key), basis)

    def committee(positions, mask=None):
        e = members(positions, mask)
        return jnp.mean(e), udd_sigma2(e) / n_members

    return committee


def udd_bias_energy_fn(posterior, basis, *, A, B, n_atoms, n_members=None, key=None):
    """``bias(positions, mask=None) -> E_bias(x)`` alone (see :func:`udd_energy_fn`)."""
    _check_atoms(n_atoms)
    comp = udd_components(posterior, basis, n_members=n_members, key=key)

    def bias(positions, mask=None):
        _, s = comp(positions, mask)
        return udd_bias(s, 1.0, n_atoms, A, B)

    return bias


def udd_energy_fn(posterior, basis, *, A, B, n_atoms, n_members=None, key=None):
    """``energy(positions, mask=None) -> Ebar(x) + E_bias(x)``, the UDD energy to run MD on.

    A (energy), B (energy / sqrt(atom)), n_atoms N_A. ``n_members`` None: the
    closed form sig2_E / N_M = b^T Sigma b / 2 (rho^2 = 2 sig2_E / (N_M N_A) =
    b^T Sigma b / N_A); an integer: a committee of that many members drawn from
    the posterior with ``key`` (module docstring).
    """
    _check_atoms(n_atoms)
    comp = udd_components(posterior, basis, n_members=n_members, key=key)

    def energy(positions, mask=None):
        e, s = comp(positions, mask)
        return e + udd_bias(s, 1.0, n_atoms, A, B)

    return energy


def udd_rho(posterior, basis, *, n_atoms, n_members=None, key=None):
    """``rho(positions, mask=None) -> sqrt(2 sig2_E / (N_M N_A))`` (energy / sqrt(atom)), the UDD
    selection measure; closed form sqrt(b^T Sigma b / N_A). Stop / select when rho > threshold
    (:func:`udd_stop`)."""
    _check_atoms(n_atoms)
    comp = udd_components(posterior, basis, n_members=n_members, key=key)

    def rho(positions, mask=None):
        _, s = comp(positions, mask)
        return safe_sqrt(2.0 * s / n_atoms)

    return rho


def udd_stop(rho, threshold):
    """The stopping / selection rule: rho > threshold (Kulichenko et al.: 0.35 kcal/mol/sqrt(atom) for glycine)."""
    return jnp.asarray(rho) > threshold


def _force_ratio_parts(posterior, basis, configurations, n_members, key):
    comp = udd_components(posterior, basis, n_members=n_members, key=key)

    def parts(x):
        _, s = comp(x)
        ge, gs = jax.jacrev(comp)(x)  # gradients of Ebar and of s, each (N, 3)
        f_true = jnp.mean(jnp.linalg.norm(ge, axis=-1))
        g_s = jnp.mean(jnp.linalg.norm(gs, axis=-1))
        return s, g_s, f_true

    return jax.jit(jax.vmap(parts))(jnp.asarray(configurations))


def _ratio(u, A, s, g, f):
    # |F_bias,i| = A u exp(-s u) |grad_i s| with u = 1 / (N_A B^2)
    return jnp.mean(A * u * jnp.exp(-s * u) * g / f)


def udd_force_ratio(posterior, basis, configurations, *, A, B, n_atoms, n_members=None, key=None):
    """mean over configurations (C, N, 3) of mean_i |F_bias,i| / mean_i |F_true,i| (per-atom norms,
    F_true = -grad Ebar) at the given A, B."""
    _check_atoms(n_atoms)
    s, g, f = _force_ratio_parts(posterior, basis, configurations, n_members, key)
    return float(_ratio(1.0 / (n_atoms * B**2), A, s, g, f))


def calibrate_udd_B(posterior, basis, configurations, *, A, n_atoms, target: float = 0.36, n_members=None,
                    key=None, B_range=(1e-4, 1e4), n_grid: int = 161, n_bisect: int = 80,
                    unreachable: str = "raise") -> float:
    """B such that ``udd_force_ratio`` (mean |F_bias| / |F_true| over ``configurations`` (C, N, 3)) = target.

    |F_bias| = A u exp(-s u) |grad s| (u = 1 / (N_A B^2), s = sig2_E / N_M) is
    not monotone in B: it vanishes both for large B (no bias) and small B (a
    saturated, flat bias). The root is taken on the large-B branch, where the
    bias is not saturated: the ratio is evaluated on a log grid of ``B_range``,
    and bisection (in log B) runs between the grid maximum and the largest B
    whose ratio exceeds the target. Raises JaxiapInputError when even the
    maximum ratio is below the target (the ratio is proportional to A:
    increase A), or with ``unreachable="max"`` returns the B of the largest
    ratio (the strongest bias force this A allows; a surrogate that is very
    certain near its training data, as generators in a loop meet).
    """
    if unreachable not in ("raise", "max"):
        raise JaxiapInputError(f"calibrate_udd_B: unreachable={unreachable!r}; choose 'raise' or 'max'")
    _check_atoms(n_atoms)
    s, g, f = (np.asarray(a) for a in _force_ratio_parts(posterior, basis, configurations, n_members, key))
    ratio = lambda B: float(_ratio(1.0 / (n_atoms * B**2), A, s, g, f))  # noqa: E731
    lb = np.linspace(math.log(B_range[0]), math.log(B_range[1]), n_grid)
    r = np.array([ratio(math.exp(v)) for v in lb])
    i_max = int(np.argmax(r))
    if r[i_max] < target and unreachable == "max":
        return math.exp(lb[i_max])
    if r[i_max] < target:
        raise JaxiapInputError(f"calibrate_udd_B: the largest force ratio over B in {B_range} is {r[i_max]:.3g} < "
                               f"target {target}; the ratio is proportional to A={A}: increase A")
    above = np.nonzero(r[i_max:] >= target)[0]
    j = i_max + int(above[-1])
    if j == n_grid - 1:
        raise JaxiapInputError(f"calibrate_udd_B: the force ratio is still >= {target} at B={B_range[1]}; widen B_range")
    lo, hi = lb[j], lb[j + 1]  # ratio(lo) >= target > ratio(hi)
    for _ in range(n_bisect):
        mid = 0.5 * (lo + hi)
        if ratio(math.exp(mid)) >= target:
            lo = mid
        else:
            hi = mid
    return math.exp(0.5 * (lo + hi))
