"""Selection strategies of the pool-based active-learning loop (docs/science.md sections 17-19).

A strategy is a plain function ``select(key, ctx, k) -> (k,) int indices`` of
``k`` distinct unlabelled pool candidates; :data:`STRATEGIES` maps names to
them. The :class:`LoopContext` ``ctx`` that :func:`jaxiap.active.loop.run_pool_loop`
builds at every iteration carries everything they may need: the pool's
sqrt-weighted candidate rows, configuration features, the current posterior,
the labelled mask, the basis, the refit function and the QoI gradient.

Strategies: uniform random, k-DPP sample and greedy DPP MAP (quality =
posterior push-forward std, diversity = RBF on the configuration features),
greedy Bayesian D-, A- and C-optimal design ("qoi": C-optimal for the gradient
of a QoI), query by committee and largest push-forward uncertainty (both batch
diversified). Also here: the configuration features :func:`pool_features`, the
RBF lengthscale heuristic :func:`default_lengthscale` and the QoI gradient
:func:`mean_energy_gradient_from_samples`.

Float64 throughout (``import jaxiap`` enables it).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxiap.active.design import greedy_design, posterior_precision
from jaxiap.active.dpp import greedy_map, sample_kdpp
from jaxiap.active.dpp_kernels import configuration_features, quality_diversity_kernel
from jaxiap.active.qbc import committee_disagreement, diversified_batch, predictive_std
from jaxiap.errors import JaxiapInputError
from jaxiap.inference.ensembles import fit_committee
from jaxiap.md.fluctuation import mean_energy_gradient

__all__ = [
    "LoopContext",
    "STRATEGIES",
    "select_random",
    "select_dpp_sample",
    "select_dpp_greedy",
    "select_qbc",
    "select_uncertainty",
    "pool_features",
    "default_lengthscale",
    "mean_energy_gradient_from_samples",
]


class LoopContext(NamedTuple):
    """What a strategy sees at one iteration (C candidates, P rows each, K coefficients).

    rows: (C, P, K) sqrt-weighted design rows of every pool candidate (energy row,
        then 3N force rows; weights from the loop's energy/force weights).
    phi: (C, d) configuration features (for DPP kernels and batch diversity).
    posterior: the current Posterior (fitted on the labelled set).
    labelled: (C,) bool, True for candidates already labelled.
    basis: the LinearBasis.
    structures: the pool Structures (C candidates).
    design: DesignMatrix of the labelled set (for committees).
    fit: ``fit(design) -> Posterior``, the loop's refit (a solver with its key bound).
    qoi_grad: (K,) gradient of the QoI with respect to the coefficients, or None.
    lengthscale: RBF lengthscale for phi.
    score: "energy" or "force": which disagreement drives QBC/uncertainty scores.
    committee_size: members of the QBC committee.
    """

    rows: Any
    phi: Any
    posterior: Any
    labelled: Any
    basis: Any
    structures: Any
    design: Any
    fit: Callable
    qoi_grad: Any = None
    lengthscale: float = 1.0
    score: str = "force"
    committee_size: int = 8


# ----------------------------------------------------------------------------- helpers


def _unlabelled(ctx: LoopContext) -> np.ndarray:
    return np.flatnonzero(~np.asarray(ctx.labelled))


def _check_k(ctx: LoopContext, k: int) -> np.ndarray:
    free = _unlabelled(ctx)
    if k > free.size:
        raise JaxiapInputError(f"batch of {k} requested but only {free.size} unlabelled candidates are left; "
                               "lower batch_size or n_iterations, or enlarge the pool")
    return free


def pool_features(basis, structures, standardize: bool = True) -> np.ndarray:
    """Configuration features phi (C, d) for DPP kernels: the basis features per atom.

    For a pair basis these are radial-function sums per atom (permutation and
    rotation invariant). With ``standardize`` each column is centred and scaled
    to unit std over the pool, so an RBF lengthscale is in units of "pool stds".
    """
    phi = np.asarray(configuration_features(basis, structures, standardize=False))
    phi = phi / np.asarray(structures.n_atoms)[:, None]
    if standardize:
        sd = phi.std(axis=0)
        phi = (phi - phi.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
    return phi


def default_lengthscale(phi) -> float:
    """Median pairwise distance of phi (the usual RBF heuristic)."""
    phi = np.asarray(phi)
    d2 = np.sum((phi[:, None, :] - phi[None, :, :]) ** 2, axis=-1)
    iu = np.triu_indices(len(phi), 1)
    med = float(np.sqrt(np.median(d2[iu]))) if iu[0].size else 1.0
    return med if med > 0 else 1.0


def _info_rows(ctx: LoopContext):
    """Candidate rows scaled by 1/sqrt(noise_var), so M0 + sum rows^T rows is the posterior precision."""
    nv = float(np.asarray(ctx.posterior.noise_var).reshape(-1)[0])
    return jnp.asarray(ctx.rows) / np.sqrt(nv if nv > 0 else 1.0)


def _design_select(criterion: str):
    def select(key, ctx: LoopContext, k: int):
        _check_k(ctx, k)
        c = None
        if criterion == "C":
            if ctx.qoi_grad is None:
                raise JaxiapInputError("the 'qoi' strategy needs a QoI gradient: pass qoi_gradient= to run_pool_loop")
            c = jnp.asarray(ctx.qoi_grad)
        res = greedy_design(_info_rows(ctx), posterior_precision(ctx.posterior), k, criterion, c=c,
                            exclude=jnp.asarray(ctx.labelled))
        return np.asarray(res.indices)

    select.__name__ = f"select_{criterion}_optimal"
    select.__doc__ = f"Greedy Bayesian {criterion}-optimal design from the current posterior precision."
    return select


def _score(d, kind: str):
    return np.asarray(d.energy_per_atom if kind == "energy" else d.max_force)


def select_random(key, ctx: LoopContext, k: int):
    """k distinct unlabelled candidates uniformly at random."""
    free = _check_k(ctx, k)
    return np.asarray(free[np.asarray(jax.random.choice(key, free.size, (k,), replace=False))])


def _quality(ctx: LoopContext):
    """DPP quality over the whole pool: the posterior's push-forward std (energy or force score),
    scaled to max 1 over the unlabelled candidates, and 0 for labelled ones (never selected)."""
    s = np.maximum(_score(predictive_std(ctx.posterior, ctx.basis, ctx.structures), ctx.score), 0.0)
    s = np.where(np.asarray(ctx.labelled), 0.0, s)
    return s / s.max() if s.max() > 0 else np.where(np.asarray(ctx.labelled), 0.0, 1.0)


def _dpp_kernel(ctx: LoopContext):
    """L over the whole pool (fixed shape: compiled once); labelled candidates have quality 0."""
    return quality_diversity_kernel(jnp.asarray(ctx.phi), jnp.asarray(_quality(ctx)), ctx.lengthscale)


def select_dpp_sample(key, ctx: LoopContext, k: int):
    """Exact k-DPP sample over the unlabelled pool, L = quality-diversity kernel (quality = push-forward std)."""
    _check_k(ctx, k)
    idx = np.flatnonzero(np.asarray(sample_kdpp(key, _dpp_kernel(ctx), k)))
    return _fill(ctx, idx, k)


def _fill(ctx: LoopContext, idx, k: int):
    """Drop labelled picks (possible only through round-off) and fill up with the highest quality."""
    idx = [int(i) for i in idx if i >= 0 and not ctx.labelled[i]]
    if len(idx) < k:
        q = _quality(ctx)
        idx += [int(i) for i in np.argsort(-q, kind="stable") if not ctx.labelled[i] and i not in idx][: k - len(idx)]
    return np.asarray(idx[:k], np.int64)


def select_dpp_greedy(key, ctx: LoopContext, k: int):
    """Greedy MAP of the same quality-diversity L (approximate DPP mode)."""
    _check_k(ctx, k)
    return _fill(ctx, np.asarray(greedy_map(_dpp_kernel(ctx), k)[0]), k)


def select_qbc(key, ctx: LoopContext, k: int):
    """Query by committee: refit ``committee_size`` members on 80 % subsets, score by disagreement, diversify."""
    _check_k(ctx, k)
    committee = fit_committee(ctx.design, ctx.committee_size, key=key, fraction=0.8, replace=False, solver=ctx.fit)
    samples = committee.ensemble(key, ctx.committee_size)
    scores = _score(committee_disagreement(samples, ctx.basis, ctx.structures), ctx.score)
    return np.asarray(diversified_batch(jnp.asarray(scores), jnp.asarray(ctx.phi), k,
                                        lengthscale=ctx.lengthscale, exclude=jnp.asarray(ctx.labelled)))


def select_uncertainty(key, ctx: LoopContext, k: int):
    """Largest push-forward std of the posterior (energy or force), batch diversified."""
    _check_k(ctx, k)
    scores = _score(predictive_std(ctx.posterior, ctx.basis, ctx.structures), ctx.score)
    return np.asarray(diversified_batch(jnp.asarray(scores), jnp.asarray(ctx.phi), k,
                                        lengthscale=ctx.lengthscale, exclude=jnp.asarray(ctx.labelled)))


#: strategy name -> select(key, ctx, k) -> (k,) distinct unlabelled pool indices
STRATEGIES: dict[str, Callable] = {
    "random": select_random,
    "dpp-sample": select_dpp_sample,
    "dpp-greedy": select_dpp_greedy,
    "d-optimal": _design_select("D"),
    "a-optimal": _design_select("A"),
    "qbc": select_qbc,
    "uncertainty": select_uncertainty,
    "qoi": _design_select("C"),
}


def mean_energy_gradient_from_samples(features, coefficients, kT):
    """d<E>/dc for E = c . B in the canonical ensemble at kT: <B> - cov(E, B) / kT (K,).

    features (T, K) are B(x_t) of (approximately) canonical samples x_t;
    coefficients (K,). The fluctuation estimator of :mod:`jaxiap.md.fluctuation`.
    """
    if not (isinstance(kT, (int, float, np.number)) and np.isfinite(kT) and kT > 0):
        raise JaxiapInputError(f"mean_energy_gradient_from_samples: kT={kT!r} must be a positive finite "
                               "temperature, the one the samples were drawn at")
    return np.asarray(mean_energy_gradient(features, coefficients, kT))
