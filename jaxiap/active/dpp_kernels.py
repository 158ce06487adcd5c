"""L-ensemble kernels and their inputs for determinantal point processes (DPPs).

An L-ensemble over N candidates assigns P(Y = S) = det(L_S) / det(L + I) to each subset S, for
a symmetric positive semi-definite kernel L of shape (N, N) (Kulesza & Taskar 2012;
docs/science.md section 19). This module builds L; :mod:`jaxiap.active.dpp` samples from it.

- kernels: :func:`rbf_kernel`, :func:`quality_diversity_kernel` (L_ij = q_i k_ij q_j);
- features: :func:`configuration_features`, invariant per-configuration descriptors phi;
- qualities: :func:`quality_scores` (uniform, uncertainty, Boltzmann), the q_i of the kernel.

All functions are pure and work in float64 (inputs are cast); checks run on concrete inputs.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from jaxiap.active.dpp_checks import _as_float, _concrete
from jaxiap.descriptors.radial import RadialBasis, structure_features
from jaxiap.errors import JaxiapInputError

__all__ = [
    "rbf_kernel",
    "quality_diversity_kernel",
    "configuration_features",
    "quality_scores",
]


# ----------------------------------------------------------------------------- kernels

def rbf_kernel(phi, lengthscale):
    """Gaussian RBF similarity k_ij = exp(-|phi_i - phi_j|^2 / (2 lengthscale^2)).

    Args:
        phi: (N, F) descriptors, one row per candidate configuration.
        lengthscale: positive scalar.

    Returns:
        (N, N) symmetric PSD kernel with unit diagonal (float64).
    """
    phi = _as_float(phi, "phi")
    if phi.ndim != 2:
        raise JaxiapInputError(f"phi must be an (N, F) descriptor matrix; got shape {tuple(phi.shape)}.")
    ls = _as_float(lengthscale, "lengthscale")
    if ls.ndim != 0:
        raise JaxiapInputError(f"lengthscale must be a scalar; got shape {tuple(ls.shape)}.")
    ls_c = _concrete(ls)
    if ls_c is not None and not (np.isfinite(ls_c) and ls_c > 0):
        raise JaxiapInputError(f"lengthscale must be a positive finite number; got {float(ls_c)}.")
    phi_c = _concrete(phi)
    if phi_c is not None and not np.all(np.isfinite(phi_c)):
        raise JaxiapInputError("phi contains NaN or inf; check the descriptors.")
    return _rbf(phi, ls)


@jax.jit
def _rbf(phi, ls):
    sq = jnp.sum(phi * phi, axis=1)
    d2 = sq[:, None] + sq[None, :] - 2.0 * phi @ phi.T
    d2 = jnp.maximum(0.5 * (d2 + d2.T), 0.0)
    d2 = d2 * (1.0 - jnp.eye(phi.shape[0], dtype=d2.dtype))  # exact zeros on the diagonal
    return jnp.exp(-0.5 * d2 / ls**2)


def quality_diversity_kernel(phi, quality, lengthscale):
    """Quality-diversity kernel L_ij = q_i k(phi_i, phi_j) q_j with an RBF similarity k.

    P(Y = S) is then proportional to prod_{i in S} q_i^2 * det(k_S).

    Args:
        phi: (N, F) descriptors.
        quality: (N,) non-negative quality scores q_i.
        lengthscale: positive scalar RBF lengthscale.

    Returns:
        (N, N) symmetric PSD kernel L (float64).
    """
    k = rbf_kernel(phi, lengthscale)
    q = _as_float(quality, "quality")
    if q.shape != (k.shape[0],):
        raise JaxiapInputError(f"quality must have shape (N,) = ({k.shape[0]},); got {tuple(q.shape)}.")
    qc = _concrete(q)
    if qc is not None and not (np.all(np.isfinite(qc)) and np.all(qc >= 0)):
        raise JaxiapInputError("quality must be finite and non-negative (q_i >= 0).")
    L = q[:, None] * k * q[None, :]
    return 0.5 * (L + L.T)  # exactly symmetric despite rounding in the products


# ----------------------------------------------------------------------------- features and qualities

def configuration_features(basis_or_radial, structures, standardize=True):
    """Invariant per-configuration descriptors phi (C, d) for DPP similarity kernels.

    phi_i is :func:`jaxiap.descriptors.radial.structure_features` of configuration i (pair
    radial features summed over atoms, per species), which is invariant to permutations,
    rotations and translations.

    Args:
        basis_or_radial: a LinearBasis (its ``radial`` and ``n_species`` are used) or a
            RadialBasis (one species).
        structures: Structures with C configurations.
        standardize: if True (default), centre each feature over the C configurations and
            divide by its std (constant features become 0), so that an RBF lengthscale is
            in units of feature std.

    Returns:
        (C, d) float64 with d = n_basis * n_species.
    """
    if hasattr(basis_or_radial, "radial"):
        radial, n_species = basis_or_radial.radial, int(getattr(basis_or_radial, "n_species", 1))
    elif isinstance(basis_or_radial, RadialBasis):
        radial, n_species = basis_or_radial, 1
    else:
        raise JaxiapInputError(f"basis_or_radial must be a LinearBasis or a RadialBasis; got "
                               f"{type(basis_or_radial).__name__}.")
    phi = _config_features(radial, structures.positions, structures.mask, structures.species,
                           structures.box, n_species)
    phi = jnp.asarray(phi, jnp.float64)
    if standardize:
        mu = jnp.mean(phi, axis=0)
        sd = jnp.std(phi, axis=0)
        phi = jnp.where(sd > 0, (phi - mu) / jnp.where(sd > 0, sd, 1.0), 0.0)
    return phi


@partial(jax.jit, static_argnums=5)
def _config_features(radial, positions, mask, species, box, n_species):
    fn = lambda x, m, s, b: structure_features(radial, x, m, b, s, n_species)
    return jax.vmap(fn, in_axes=(0, 0, 0, None if box is None else 0))(positions, mask, species, box)


QUALITY_KINDS = ("uniform", "uncertainty", "boltzmann")


def _vector(x, name):
    x = np.asarray(jnp.asarray(x, jnp.float64))
    if x.ndim != 1:
        raise JaxiapInputError(f"{name} must be a (C,) vector; got shape {x.shape}.")
    if not np.all(np.isfinite(x)):
        raise JaxiapInputError(f"{name} contains NaN or inf.")
    return x


def quality_scores(kind, *, uncertainty=None, energies=None, kT=None, n_atoms=None, n=None):
    """DPP quality scores q (C,) for L_ij = q_i k_ij q_j (docs/science.md section 19.3).

    kinds:

    - "uniform": q = 1 (diversity only). The length C comes from ``n`` or from whichever of
      ``uncertainty``, ``energies``, ``n_atoms`` is given.
    - "uncertainty": q = u / max(u) for non-negative uncertainties u (e.g. committee
      disagreement); all ones if u is identically 0.
    - "boltzmann": q = exp(-(E - min E) / (2 kT)), so that q^2 is the Boltzmann weight
      relative to the lowest-energy candidate. ``energies`` are total energies in the units
      of ``kT``; if ``n_atoms`` (C,) is given, ``energies`` are read as per-atom energies and
      multiplied by n_atoms first.

    Returns:
        (C,) float64 in (0, 1] (uncertainty: [0, 1]).
    """
    if kind not in QUALITY_KINDS:
        raise JaxiapInputError(f"quality kind {kind!r} is unknown; choose one of {QUALITY_KINDS}.")
    if kind == "uniform":
        for name, x in (("uncertainty", uncertainty), ("energies", energies), ("n_atoms", n_atoms)):
            if n is None and x is not None:
                n = _vector(x, name).shape[0]
        if n is None:
            raise JaxiapInputError("quality 'uniform' needs the number of candidates: pass n=C "
                                   "(or any (C,) input such as energies=...).")
        return jnp.ones((int(n),), jnp.float64)
    if kind == "uncertainty":
        if uncertainty is None:
            raise JaxiapInputError("quality 'uncertainty' needs uncertainty=(C,) scores, e.g. "
                                   "committee_disagreement(...).max_force.")
        u = _vector(uncertainty, "uncertainty")
        if np.any(u < 0):
            raise JaxiapInputError("uncertainty must be >= 0 (a standard deviation or disagreement).")
        top = float(np.max(u)) if u.size else 0.0
        return jnp.asarray(u / top if top > 0 else np.ones_like(u))
    if energies is None or kT is None:
        raise JaxiapInputError("quality 'boltzmann' needs energies=(C,) and kT=... (a positive temperature "
                               "in the energy units).")
    e = _vector(energies, "energies")
    kT = float(kT)
    if not (np.isfinite(kT) and kT > 0):
        raise JaxiapInputError(f"kT must be a positive finite temperature; got {kT}.")
    if n_atoms is not None:
        na = _vector(n_atoms, "n_atoms")
        if na.shape != e.shape:
            raise JaxiapInputError(f"n_atoms must have the shape of energies {e.shape}; got {na.shape}.")
        e = e * na
    return jnp.asarray(np.exp(-(e - np.min(e)) / (2.0 * kT)))
