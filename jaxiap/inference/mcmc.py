"""Thin, checked wrappers around numpyro NUTS and SVI (float64).

A probabilistic model is a plain Python function with ``numpyro.sample``
sites (see ``model_error.py`` and ``sparse.py``); these wrappers run it and
return plain arrays plus diagnostics:

- :func:`run_nuts` -> :class:`NUTSResult`: samples per site, split R-hat and
  bulk ESS per site (``numpyro.diagnostics``), divergences, leapfrog-step
  counts and wall time. It warns (one line naming the sites) when any
  R-hat > ``rhat_threshold`` (1.01) or any transition diverged.
- :func:`run_svi` -> :class:`SVIResult`: mean-field (``AutoNormal``) or
  low-rank (``AutoLowRankMultivariateNormal``) Gaussian guides fitted with an
  optax optimiser, plus draws from the guide pushed through the model (so
  deterministic sites are available too).
- :func:`to_arviz`: an ``arviz`` InferenceData when arviz is installed
  (it is optional: ``pip install arviz``).

These wrappers keep numpyro's own names and order (``run_nuts(model, key,
*model_args, num_warmup=, num_samples=, num_chains=)``, as ``MCMC.run(key,
*args)``); the fits built on them (``fit_sparse``, ``fit_model_error``) take
``key=`` keyword-only and call the draws ``n_samples``, as every jaxiap solver.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxiap.errors import JaxiapInputError

__all__ = ["NUTSResult", "SVIResult", "run_nuts", "run_svi", "to_arviz", "summarize_chains",
           "latent_site_names", "design_arrays"]


def design_arrays(design, y=None, w=None, name: str = "design", drop_zero_weight: bool = True):
    """(A (N, K), y (N,), w (N,)) float64 numpy arrays of the rows with w > 0.

    ``design`` is a ``DesignMatrix`` (anything with ``.A, .y, .w``) or a plain
    A (R, K) array given together with ``y`` (R,) and optional ``w`` (R,)
    (default ones). Rows with zero weight are dropped; NaN/inf or negative
    weights raise ``JaxiapInputError``. With ``drop_zero_weight=False`` all
    rows are returned (callers mask w = 0 rows themselves, keeping shapes
    fixed so compiled code is reused when only the weights change).
    """
    if hasattr(design, "A") and hasattr(design, "y"):
        if y is not None or w is not None:
            raise JaxiapInputError(f"{name}: pass either a DesignMatrix or arrays (A, y, w), not both")
        A, y, w = design.A, design.y, design.w
    else:
        A = design
        if y is None:
            raise JaxiapInputError(f"{name}: a plain matrix A needs targets y (R,)")
    A = np.asarray(A, np.float64)
    y = np.asarray(y, np.float64)
    w = np.ones(len(y)) if w is None else np.asarray(w, np.float64)
    if A.ndim != 2 or y.shape != (A.shape[0],) or w.shape != y.shape:
        raise JaxiapInputError(f"{name}: need A (R, K), y (R,), w (R,); got shapes {A.shape}, {y.shape}, "
                               f"{w.shape}")
    for label, v in (("design matrix A", A), ("targets y", y), ("row weights w", w)):
        if not np.isfinite(v).all():
            raise JaxiapInputError(f"{name}: {label} contains NaN/inf; check the dataset labels and positions")
    if (w < 0).any():
        raise JaxiapInputError(f"{name}: row weights w must be >= 0")
    keep = w > 0
    if not keep.any():
        raise JaxiapInputError(f"{name}: every row has zero weight; nothing to fit")
    if not drop_zero_weight:
        return A, y, w
    return A[keep], y[keep], w[keep]


@dataclasses.dataclass
class NUTSResult:
    """Output of :func:`run_nuts`.

    samples: site -> (C*S, ...) draws with chains concatenated;
    chains: site -> (C, S, ...) draws per chain;
    extra: extra field -> (C, S) (always ``diverging`` and ``num_steps``);
    diagnostics: ``r_hat`` (site -> max split R-hat over the site's elements),
    ``ess`` (site -> min bulk ESS), ``n_divergent``, ``num_steps`` (total
    leapfrog steps, warmup excluded), ``wall_time`` (seconds, compilation
    included on a first call), ``num_chains``, ``num_samples``, ``chain_method``.
    """

    samples: dict
    chains: dict
    extra: dict
    diagnostics: dict

    @property
    def min_ess(self) -> float:
        return float(min(self.diagnostics["ess"].values()))

    @property
    def max_rhat(self) -> float:
        return float(max(self.diagnostics["r_hat"].values()))


@dataclasses.dataclass
class SVIResult:
    """Output of :func:`run_svi`.

    samples: site -> (num_samples, ...) draws from the fitted guide (latent and
    deterministic sites); params: the guide's optimised parameters; losses
    (num_steps,) ELBO loss trace; guide: the numpyro autoguide; diagnostics:
    ``final_loss`` (mean of the last 10% of the trace), ``wall_time``, ``guide_kind``.
    """

    samples: dict
    params: dict
    losses: np.ndarray
    guide: Any
    diagnostics: dict


# --------------------------------------------------------------------------------------------
# diagnostics


def summarize_chains(chains: dict) -> tuple[dict, dict]:
    """Per-site max split R-hat and min bulk ESS from draws (C, S, ...) per site.

    Sites whose draws are constant (e.g. a fixed deterministic) are skipped.
    Returns (r_hat, ess) dicts keyed by site name.
    """
    from numpyro.diagnostics import effective_sample_size, split_gelman_rubin  # lazy: numpyro (~0.2 s to import) only for NUTS/SVI/MAP

    r_hat, ess = {}, {}
    for name, x in chains.items():
        x = np.asarray(x, dtype=np.float64)
        if x.ndim < 2 or x.shape[1] < 4 or not np.isfinite(x).all():
            continue
        flat = x.reshape(x.shape[0], x.shape[1], -1)
        keep = np.ptp(flat.reshape(-1, flat.shape[-1]), axis=0) > 0
        if not keep.any():
            continue
        flat = flat[..., keep]
        r_hat[name] = float(np.max(split_gelman_rubin(flat)))
        ess[name] = float(np.min(effective_sample_size(flat)))
    return r_hat, ess


def _warn_if_bad(r_hat: dict, n_divergent: int, rhat_threshold: float, stacklevel: int = 3):
    bad = sorted((k for k, v in r_hat.items() if v > rhat_threshold), key=lambda k: -r_hat[k])
    parts = []
    if bad:
        parts.append("R-hat > %g at site(s) %s" % (
            rhat_threshold, ", ".join(f"{k} ({r_hat[k]:.3f})" for k in bad)))
    if n_divergent > 0:
        parts.append(f"{n_divergent} divergent transition(s)")
    if parts:
        warnings.warn("NUTS did not converge cleanly: " + "; ".join(parts)
                      + " -- run longer warmup, more chains, or raise target_accept_prob",
                      UserWarning, stacklevel=stacklevel)


def latent_site_names(model: Callable, *model_args, **model_kwargs) -> tuple[list, list]:
    """(latent sample sites, deterministic sites) of a model, by tracing it once."""
    from numpyro import handlers  # lazy: numpyro (~0.2 s to import) only for NUTS/SVI/MAP

    tr = handlers.trace(handlers.seed(model, jax.random.key(0))).get_trace(*model_args, **model_kwargs)
    latent = [k for k, s in tr.items() if s["type"] == "sample" and not s["is_observed"]]
    det = [k for k, s in tr.items() if s["type"] == "deterministic"]
    return latent, det


# --------------------------------------------------------------------------------------------
# NUTS

def _default_chain_method(num_chains: int) -> str:
    if num_chains <= 1:
        return "sequential"
    # one CPU device cannot run chains in parallel; vectorised chains share one jit
    return "parallel" if jax.local_device_count() >= num_chains else "vectorized"


def run_nuts(
    model: Callable,
    key,
    *model_args,
    num_warmup: int = 1000,
    num_samples: int = 1000,
    num_chains: int = 2,
    target_accept_prob: float = 0.8,
    progress: bool = True,
    dense_mass: bool = False,
    max_tree_depth: int = 10,
    regularize_mass_matrix: bool = True,
    init_params: dict | None = None,
    init_strategy: Callable | None = None,
    chain_method: str | None = None,
    thinning: int = 1,
    rhat_threshold: float = 1.01,
    warn: bool = True,
    **model_kwargs,
) -> NUTSResult:
    """Sample ``model(*model_args, **model_kwargs)`` with numpyro NUTS.

    key: a jax PRNG key. ``chain_method`` defaults to "parallel" when there
    are at least ``num_chains`` devices and to "vectorized" otherwise (one CPU
    device: numpyro's "parallel" needs one device per chain). ``init_params`` are constrained-space values
    per site (all chains start there, e.g. a MAP estimate); otherwise
    ``init_strategy`` (default numpyro's ``init_to_uniform``) is used.
    ``regularize_mass_matrix`` (numpyro's default) shrinks the adapted mass
    matrix toward 1e-3 I: turn it off, or better reparametrise to O(1)
    coordinates, when posterior standard deviations are far below 0.03 (on
    the LJ13 linear-potential posterior, sds ~1e-4, it cost 14x more leapfrog
    steps and 100x less ESS per step; see bench/inference_nuts.py).
    Every call compiles its sampling loop (numpyro 0.22 re-jits
    ``fori_collect`` per run, a few seconds on CPU): batch independent
    problems into one model rather than calling this in a tight loop.

    Warns (``UserWarning``, one line naming the sites) when any site's max
    split R-hat exceeds ``rhat_threshold`` or any post-warmup transition diverged.
    """
    for name, v in (("num_warmup", num_warmup), ("num_samples", num_samples), ("num_chains", num_chains)):
        if int(v) != v or v < (0 if name == "num_warmup" else 1):
            raise JaxiapInputError(f"run_nuts: {name} must be a non-negative integer (>= 1 for samples and "
                                   f"chains), got {v!r}")
    if not 0.0 < target_accept_prob < 1.0:
        raise JaxiapInputError(f"run_nuts: target_accept_prob must lie in (0, 1), got {target_accept_prob}")
    chain_method = chain_method or _default_chain_method(num_chains)
    nuts_kwargs = dict(target_accept_prob=float(target_accept_prob), dense_mass=bool(dense_mass),
                       max_tree_depth=int(max_tree_depth), regularize_mass_matrix=bool(regularize_mass_matrix))
    if init_params is not None:
        from numpyro.infer import init_to_value  # lazy: numpyro (~0.2 s to import) only for NUTS/SVI/MAP

        init_strategy = init_to_value(values={k: jnp.asarray(v) for k, v in init_params.items()})
    if init_strategy is not None:
        nuts_kwargs["init_strategy"] = init_strategy
    from numpyro.infer import MCMC, NUTS  # lazy: numpyro (~0.2 s to import) only for NUTS/SVI/MAP

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*There are not enough devices.*")
        mcmc = MCMC(NUTS(model, **nuts_kwargs), num_warmup=int(num_warmup), num_samples=int(num_samples),
                    num_chains=int(num_chains), chain_method=chain_method, progress_bar=bool(progress),
                    thinning=int(thinning))
    t0 = time.perf_counter()
    mcmc.run(key, *model_args, extra_fields=("diverging", "num_steps"), **model_kwargs)
    chains = {k: np.asarray(v) for k, v in mcmc.get_samples(group_by_chain=True).items()}
    extra = {k: np.asarray(v) for k, v in mcmc.get_extra_fields(group_by_chain=True).items()}
    wall = time.perf_counter() - t0
    samples = {k: v.reshape((-1,) + v.shape[2:]) for k, v in chains.items()}
    r_hat, ess = summarize_chains(chains)
    n_div = int(np.sum(extra["diverging"]))
    diagnostics = dict(r_hat=r_hat, ess=ess, n_divergent=n_div, num_steps=int(np.sum(extra["num_steps"])),
                       wall_time=wall, num_chains=int(num_chains), num_samples=int(num_samples),
                       num_warmup=int(num_warmup), chain_method=chain_method)
    if warn:
        _warn_if_bad(r_hat, n_div, rhat_threshold)
    return NUTSResult(samples, chains, extra, diagnostics)


# --------------------------------------------------------------------------------------------
# SVI


def _make_guide(model, guide_kind: str, rank, init_loc_fn, init_scale):
    # lazy: numpyro (~0.2 s to import) only for NUTS/SVI/MAP
    from numpyro.infer import init_to_median
    from numpyro.infer.autoguide import AutoLowRankMultivariateNormal, AutoNormal

    init_loc_fn = init_loc_fn or init_to_median(num_samples=15)
    if guide_kind == "meanfield":
        return AutoNormal(model, init_loc_fn=init_loc_fn, init_scale=init_scale)
    if guide_kind == "lowrank":
        return AutoLowRankMultivariateNormal(model, init_loc_fn=init_loc_fn, init_scale=init_scale, rank=rank)
    raise JaxiapInputError(f"guide_kind must be 'meanfield' or 'lowrank', got {guide_kind!r}")


def run_svi(
    model: Callable,
    key,
    *model_args,
    guide_kind: str = "meanfield",
    num_steps: int = 5000,
    learning_rate: float = 1e-2,
    optimizer=None,
    num_particles: int = 1,
    num_samples: int = 1000,
    rank: int | None = None,
    init_params: dict | None = None,
    init_scale: float = 0.1,
    progress: bool = True,
    **model_kwargs,
) -> SVIResult:
    """Stochastic variational inference with a Gaussian autoguide.

    guide_kind "meanfield" -> ``AutoNormal`` (independent Gaussians in the
    unconstrained space); "lowrank" -> ``AutoLowRankMultivariateNormal``
    (W W^T + D, ``rank`` default ceil(sqrt(dim))). ``optimizer`` is an optax
    GradientTransformation (default ``optax.adam(learning_rate)``);
    ``num_particles`` ELBO particles per step. ``init_params``: constrained
    values per site to start the guide's location at. Returns an
    :class:`SVIResult` with ``num_samples`` draws of every latent and
    deterministic site.
    """
    # lazy: numpyro (~0.2 s to import) only for NUTS/SVI/MAP
    from numpyro.infer import SVI, Predictive, Trace_ELBO, init_to_value
    from numpyro.optim import optax_to_numpyro
    import optax  # lazy: optax takes ~0.1 s to import (only needed to fit)

    if num_steps < 1:
        raise JaxiapInputError(f"run_svi: num_steps must be >= 1, got {num_steps}")
    init_loc_fn = None
    if init_params is not None:
        init_loc_fn = init_to_value(values={k: jnp.asarray(v) for k, v in init_params.items()})
    guide = _make_guide(model, guide_kind, rank, init_loc_fn, init_scale)
    opt = optax_to_numpyro(optimizer if optimizer is not None else optax.adam(learning_rate))
    svi = SVI(model, guide, opt, loss=Trace_ELBO(num_particles=num_particles))
    k_fit, k_draw = jax.random.split(key)
    t0 = time.perf_counter()
    res = svi.run(k_fit, int(num_steps), *model_args, progress_bar=bool(progress), **model_kwargs)
    latent, det = latent_site_names(model, *model_args, **model_kwargs)
    pred = Predictive(model, guide=guide, params=res.params, num_samples=int(num_samples),
                      return_sites=latent + det)
    samples = {k: np.asarray(v) for k, v in pred(k_draw, *model_args, **model_kwargs).items()}
    wall = time.perf_counter() - t0
    losses = np.asarray(res.losses)
    tail = losses[-max(1, len(losses) // 10):]
    diagnostics = dict(final_loss=float(np.mean(tail)), wall_time=wall, guide_kind=guide_kind,
                       num_steps=int(num_steps))
    if not np.isfinite(tail).all():
        warnings.warn(f"SVI ({guide_kind}) ended with a non-finite loss; lower learning_rate", UserWarning,
                      stacklevel=2)
    return SVIResult(samples, res.params, losses, guide, diagnostics)


# --------------------------------------------------------------------------------------------
# arviz


def to_arviz(result: NUTSResult | SVIResult):
    """Convert a result to ``arviz.InferenceData`` (needs the optional ``arviz`` package).

    NUTS results keep the chain dimension and carry ``diverging`` and
    ``num_steps`` as sample stats; SVI draws become a single chain.
    """
    try:
        import arviz as az  # lazy: arviz is an optional extra (pip install jaxiap[arviz])
    except ImportError as err:  # pragma: no cover - exercised by monkeypatching in tests
        raise ImportError("to_arviz needs the optional arviz package: pip install arviz") from err
    if isinstance(result, NUTSResult):
        posterior = {k: np.asarray(v) for k, v in result.chains.items()}
        stats = {k: np.asarray(v) for k, v in result.extra.items()}
        return az.from_dict(posterior=posterior, sample_stats=stats)
    if isinstance(result, SVIResult):
        return az.from_dict(posterior={k: np.asarray(v)[None] for k, v in result.samples.items()})
    raise TypeError(f"to_arviz expects a NUTSResult or SVIResult, got {type(result).__name__}")
