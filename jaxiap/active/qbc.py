"""Query-by-committee and push-forward uncertainty scores (docs/science.md section 18).

Scores for ranking a pool of C candidate configurations:

- :func:`committee_disagreement`: a committee of M coefficient vectors (e.g. from
  ``fit_committee``) predicts every candidate; the scores are the std across members of
  the energy per atom, and the max over atoms and components of the std of the force
  components.
- :func:`predictive_std`: the same two scores from any Posterior, from its
  structure-level prediction ``posterior.predict_structures(structures, basis=basis)``
  (for a linear posterior: the push-forward std on the candidates' unweighted design rows).

Selection: :func:`select_top` (top-k by score) and :func:`diversified_batch` (top
``pre_factor * k`` by score, then greedy DPP MAP on a quality-diversity kernel, so that
near-duplicate configurations are not all picked). All float64.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from jaxiap.active import dpp, dpp_kernels
from jaxiap.active.design import candidate_rows
from jaxiap.errors import JaxiapInputError

__all__ = [
    "Disagreement",
    "committee_predictions",
    "committee_disagreement",
    "predictive_std",
    "select_top",
    "diversified_batch",
]


class Disagreement(NamedTuple):
    """energy_per_atom (C,): std of E / N_atoms; max_force (C,): max over atoms and
    components of the std of the force components (energy / length units)."""

    energy_per_atom: jnp.ndarray
    max_force: jnp.ndarray


def _samples(samples):
    s = jnp.asarray(samples, dtype=jnp.float64)
    if s.ndim == 1:
        s = s[None]
    if s.ndim != 2:
        raise JaxiapInputError(f"samples must be an (M, K) stack of coefficient vectors; got {tuple(s.shape)}.")
    sc = np.asarray(s)
    if not np.all(np.isfinite(sc)):
        raise JaxiapInputError("samples contain NaN or inf; check the committee fit.")
    return s


def _unweighted_rows(basis, structures, k):
    rows = candidate_rows(basis, structures)
    if rows.shape[-1] != k:
        raise JaxiapInputError(f"the coefficients have K = {k} entries but the basis has "
                               f"{rows.shape[-1]} features; use the basis the posterior was fitted with.")
    return rows


def committee_predictions(samples, basis, structures):
    """Energies (M, C) and forces (M, C, N, 3) of every committee member on every candidate.

    Args:
        samples: (M, K) coefficient vectors (a (K,) vector is read as M = 1).
        basis: the LinearBasis the coefficients belong to.
        structures: Structures with C candidates of N (padded) atoms; padded atoms get 0 force.
    """
    s = _samples(samples)
    rows = _unweighted_rows(basis, structures, s.shape[1])
    out = jnp.einsum("cpk,mk->mcp", rows, s)
    C, P = rows.shape[:2]
    return out[:, :, 0], out[:, :, 1:].reshape(s.shape[0], C, (P - 1) // 3, 3)


def committee_disagreement(samples, basis, structures, ddof=1):
    """Committee disagreement of each candidate (docs/science.md section 18.1).

    energy_per_atom = std_m(E_m) / N_atoms, max_force = max over real atoms j and components
    a of std_m(F_m,j,a). The std uses ``ddof`` (default 1, as SamplePosterior.predict;
    0 when M = 1, giving zero).

    Returns:
        :class:`Disagreement` of (C,) arrays.
    """
    s = _samples(samples)
    E, F = committee_predictions(s, basis, structures)
    d = ddof if s.shape[0] > 1 else 0
    n_atoms = jnp.sum(structures.mask, axis=1).astype(E.dtype)
    e_std = jnp.std(E, axis=0, ddof=d) / jnp.maximum(n_atoms, 1.0)
    f_std = jnp.std(F, axis=0, ddof=d)  # (C, N, 3)
    f_std = jnp.where(structures.mask[:, :, None], f_std, 0.0)
    return Disagreement(e_std, jnp.max(f_std, axis=(1, 2)))


def predictive_std(posterior, basis, structures):
    """Push-forward std of any Posterior on the candidates, as a :class:`Disagreement`.

    Uses ``posterior.predict_structures(structures, basis=basis)``: for a linear
    posterior the std of the unweighted design rows of every candidate, so for a
    GaussianPosterior the result is sqrt(diag(R Sigma R^T)) (no data noise) and for a
    SamplePosterior it equals :func:`committee_disagreement` of its samples (ddof = 1);
    a posterior with its own model (GP, network) ignores ``basis``.

    Returns:
        energy_per_atom (C,): std(E) / N_atoms; max_force (C,): max over real atoms and
        components of the force-component std.
    """
    p = posterior.predict_structures(structures, basis=basis)
    n_atoms = jnp.sum(structures.mask, axis=1).astype(p.energy_std.dtype)
    return Disagreement(p.energy_std / jnp.maximum(n_atoms, 1.0), jnp.max(p.forces_std, axis=(1, 2)))


def _check_scores(scores, exclude):
    s = jnp.asarray(scores, dtype=jnp.float64)
    if s.ndim != 1:
        raise JaxiapInputError(f"scores must be a (C,) vector; got shape {tuple(s.shape)}.")
    sc = np.asarray(s)
    if np.any(np.isnan(sc)):
        raise JaxiapInputError("scores contain NaN; check the committee / posterior predictions.")
    if exclude is None:
        ex = np.zeros(sc.shape[0], bool)
    else:
        ex = np.asarray(exclude)
        if ex.shape != sc.shape or ex.dtype != np.bool_:
            raise JaxiapInputError(f"exclude must be a (C,) = ({sc.shape[0]},) bool mask; got shape "
                                   f"{ex.shape} dtype {ex.dtype}.")
    return sc, ex


def _check_count(k, n_avail, n):
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)):
        raise JaxiapInputError(f"k must be a Python int; got {k!r}.")
    if k < 0 or k > n_avail:
        raise JaxiapInputError(f"k = {k} is out of range: only {n_avail} of {n} candidates are available "
                               "(not excluded); lower k or add candidates to the pool.")
    return int(k)


def _top(sc, ex, m):
    order = np.argsort(-np.where(ex, -np.inf, sc), kind="stable")
    return order[:m]


def select_top(scores, k, exclude=None):
    """Indices (k,) int of the k highest scores, best first, never an excluded candidate.

    Ties keep the pool order (stable sort).
    """
    sc, ex = _check_scores(scores, exclude)
    k = _check_count(k, int((~ex).sum()), sc.shape[0])
    return jnp.asarray(_top(sc, ex, k), dtype=jnp.int32)


def diversified_batch(scores, phi, k, *, lengthscale=None, exclude=None, pre_factor=3):
    """Top-score candidates de-duplicated by greedy DPP MAP (docs/science.md section 18.3).

    1. Keep the m = min(pre_factor * k, available) highest-scoring non-excluded candidates.
    2. Quality q = score / max score over those (min-max scaled instead if any score is
       negative), floored at 1e-3 so every kept candidate stays selectable.
    3. L = q_i exp(-|phi_i - phi_j|^2 / (2 l^2)) q_j with l = ``lengthscale``, by default the
       median non-zero pairwise distance of the kept phi (1 if there is none).
    4. Greedy MAP for k items (:func:`jaxiap.active.dpp.greedy_map`); if it stops early
       (only identical features are left), the remaining slots take the best-scoring
       unpicked kept candidates.

    Args:
        scores: (C,) non-NaN scores, larger = more informative.
        phi: (C, d) invariant descriptors (e.g. :func:`~jaxiap.active.dpp_kernels.configuration_features`).
        k: Python int, batch size.
        lengthscale: RBF lengthscale in phi units, or None for the median heuristic.
        exclude: (C,) bool mask of candidates never to pick (e.g. already labelled).
        pre_factor: int >= 1, size of the pre-selection as a multiple of k.

    Returns:
        (k,) int32 distinct pool indices, in greedy order.
    """
    sc, ex = _check_scores(scores, exclude)
    n = sc.shape[0]
    phi = np.asarray(jnp.asarray(phi, dtype=jnp.float64))
    if phi.ndim != 2 or phi.shape[0] != n:
        raise JaxiapInputError(f"phi must have shape (C, d) with C = {n} (one row per score); "
                               f"got {phi.shape}.")
    if not np.all(np.isfinite(phi)):
        raise JaxiapInputError("phi contains NaN or inf; check the descriptors.")
    if not isinstance(pre_factor, (int, np.integer)) or pre_factor < 1:
        raise JaxiapInputError(f"pre_factor must be an int >= 1; got {pre_factor!r}.")
    n_avail = int((~ex).sum())
    k = _check_count(k, n_avail, n)
    if k == 0:
        return jnp.zeros((0,), jnp.int32)
    m = min(int(pre_factor) * k, n_avail)
    top = _top(sc, ex, m)
    s = sc[top]
    if np.min(s) >= 0:
        q = s / np.max(s) if np.max(s) > 0 else np.ones_like(s)
    else:
        span = np.max(s) - np.min(s)
        q = (s - np.min(s)) / span if span > 0 else np.ones_like(s)
    q = np.clip(q, 1e-3, 1.0)
    f = phi[top]
    if lengthscale is None:
        d = np.sqrt(np.maximum(np.sum((f[:, None, :] - f[None, :, :]) ** 2, axis=-1), 0.0))
        d = d[np.triu_indices(m, 1)]
        d = d[d > 0]
        lengthscale = float(np.median(d)) if d.size else 1.0
    L = dpp_kernels.quality_diversity_kernel(f, q, lengthscale)
    idx, _ = dpp.greedy_map(L, k)
    idx = [int(i) for i in np.asarray(idx) if i >= 0]
    for j in range(m):  # fill after an early stop, best score first
        if len(idx) == k:
            break
        if j not in idx:
            idx.append(j)
    return jnp.asarray(top[np.asarray(idx, dtype=int)], dtype=jnp.int32)
