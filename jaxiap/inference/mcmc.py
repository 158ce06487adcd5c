"""Thin, checked wrappers around numpyro NUTS and SVI (float64).

A probabilistic model is a plain Python function with ``numpyro.sample``
sites (see ``model_error.py`` and ``sparse.py``); these wrappers run it and
return plain arrays plus diagnostics:

- :func:`run_nuts` -> :class:`NUTSResult`: samples per site, split R-hat and
  bulk ESS per site (``numpyro.diagnostics``), divergences, leapfrog-step
  counts, adapted step sizes and mass matrices, wall and compile time. It
  warns (one line naming the sites) when any R-hat > ``rhat_threshold``
  (1.01) or any transition diverged. numpyro's NUTS kernel runs inside one
  jaxiap-compiled program per (model, settings, shapes), cached across calls
  (``nuts_cache_info``, ``clear_nuts_cache``); an initial inverse mass matrix
  (e.g. an analytic posterior covariance) can be given and its adaptation
  switched off.
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

import collections
import dataclasses
import os
import time
import warnings
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec as P

from jaxiap.errors import JaxiapInputError

__all__ = ["NUTSResult", "SVIResult", "run_nuts", "run_svi", "to_arviz", "summarize_chains",
           "latent_site_names", "design_arrays", "nuts_cache_info", "clear_nuts_cache"]


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
    leapfrog steps of the sampling phase), ``num_steps_warmup`` (those of
    warmup), ``wall_time`` (seconds, compilation included when the call
    compiled), ``compile_time`` (seconds spent tracing and compiling, 0.0 when
    the compiled program was reused), ``compiled`` (bool), ``step_size`` (C,)
    and ``inverse_mass_matrix`` ((C, D, D) or (C, D); a dict by site block when
    the mass matrix has several blocks) at the end of warmup, ``num_chains``,
    ``num_samples``, ``num_warmup``, ``chain_method``.
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
    The ESS of each element is capped at N log10 N (N = C*S draws), as Stan does: strongly
    antithetic chains (NUTS on a well-preconditioned Gaussian) can reach ESS > N, and on short
    runs Geyer's estimate of the autocorrelation time can turn <= 0.
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
        # Geyer's estimator gives ESS > C*S for antithetic chains (fine) and a negative or huge value when
        # the autocorrelation time estimate is <= 0 on short, strongly antithetic chains; cap as Stan does
        n = flat.shape[0] * flat.shape[1]
        cap = n * np.log10(n)
        e = np.asarray(effective_sample_size(flat), np.float64)
        ess[name] = float(np.min(np.where((e > 0) & (e < cap), e, cap)))
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


# Compiled NUTS programs, keyed by (model, static model arguments, settings, shapes of the traced inputs);
# least recently used first. Each holds an XLA executable (and the model closure), so the cache is bounded.
_NUTS_CACHE: "collections.OrderedDict" = collections.OrderedDict()
_NUTS_CACHE_SIZE = 16
_NUTS_COMPILES = 0  # NUTS programs traced (and compiled) in this process; a trace-time side effect
_PROGRESS: dict = {}  # the tqdm bar of the running call (progress=True), fed from inside the program


def nuts_cache_info() -> dict:
    """{"compilations": NUTS programs compiled by ``run_nuts`` in this process, "entries": cached now}."""
    return dict(compilations=_NUTS_COMPILES, entries=len(_NUTS_CACHE))


def clear_nuts_cache() -> None:
    """Drop ``run_nuts``'s compiled programs (the next call of each shape compiles again)."""
    _NUTS_CACHE.clear()


def _is_traced_leaf(x) -> bool:
    return isinstance(x, (jax.Array, np.ndarray))


def _progress_tick(n):
    bar = _PROGRESS.get("bar")
    if bar is not None:
        bar.update(int(np.sum(n)))


def _resolve_inverse_mass_matrix(imm, dense_mass):
    """(inverse mass matrix as float64 jnp array or {tuple of sites: array}, or None; dense_mass)."""
    if imm is None:
        return None, bool(dense_mass) if dense_mass is not None else False
    if hasattr(imm, "covariance") and callable(imm.covariance):
        imm = imm.covariance()
    if isinstance(imm, dict):
        out = {}
        for k, v in imm.items():
            names = (k,) if isinstance(k, str) else tuple(k)
            out[tuple(sorted(names))] = jnp.asarray(v, jnp.float64)
        if dense_mass is None:
            dense_mass = any(v.ndim == 2 for v in out.values())
        return out, bool(dense_mass)
    m = np.asarray(imm, np.float64)
    if m.ndim not in (1, 2) or (m.ndim == 2 and m.shape[0] != m.shape[1]):
        raise JaxiapInputError(f"run_nuts: inverse_mass_matrix must be a (D,) diagonal or a (D, D) matrix "
                               f"(D = the number of unconstrained latent values), got shape {m.shape}")
    if not np.isfinite(m).all():
        raise JaxiapInputError("run_nuts: inverse_mass_matrix contains NaN/inf")
    if m.ndim == 1:
        if (m <= 0).any():
            raise JaxiapInputError("run_nuts: a diagonal inverse_mass_matrix must be > 0")
    else:
        if not np.allclose(m, m.T, rtol=1e-8, atol=1e-14 * np.abs(m).max()):
            raise JaxiapInputError("run_nuts: inverse_mass_matrix is not symmetric")
        m = 0.5 * (m + m.T)
        try:
            np.linalg.cholesky(m)
        except np.linalg.LinAlgError:
            raise JaxiapInputError("run_nuts: inverse_mass_matrix is not positive definite") from None
        if dense_mass is False:
            raise JaxiapInputError("run_nuts: a (D, D) inverse_mass_matrix needs dense_mass=True (or None)")
        dense_mass = True
    return jnp.asarray(m), bool(dense_mass) if dense_mass is not None else False


def _build_nuts_program(model, treedef, static_leaves, n_leaves, settings):
    """fn(keys (C,), traced leaves, init values, inverse mass matrix, step size) -> (draws, extra, stats).

    One loop over warmup and sampling iterations (so the program holds one copy of the NUTS
    transition); each iteration advances every chain: vmapped ("vectorized"), one after another
    ("sequential") or, inside a shard_map over one device per chain, "parallel".
    """
    from numpyro.infer import NUTS, init_to_value  # lazy: numpyro (~0.2 s to import) only for NUTS/SVI/MAP

    (num_warmup, num_samples, num_chains, thinning, chain_method, nuts_kwargs, init_strategy, pool,
     progress_rate) = settings
    static = dict(static_leaves)
    parallel = chain_method == "parallel"

    def over_chains(f):
        if chain_method == "sequential":
            return lambda *xs: jax.lax.map(lambda x: f(*x), xs)
        return jax.vmap(f)

    def local(keys, dyn, init_values, imm, step_size):
        it = iter(dyn)
        leaves = [static[i] if i in static else next(it) for i in range(n_leaves)]
        args, kwargs = jax.tree.unflatten(treedef, leaves)
        strategy = init_strategy if init_values is None else init_to_value(values=init_values)
        kw = dict(nuts_kwargs)
        if strategy is not None:
            kw["init_strategy"] = strategy
        kernel = NUTS(model, step_size=step_size, inverse_mass_matrix=imm, **kw)
        # one (unbatched) key per call: numpyro's single-chain path, vmapped / mapped here
        states = over_chains(lambda k: kernel.init(k, num_warmup, model_args=args, model_kwargs=kwargs))(keys)
        n_local = keys.shape[0]
        init_ok = jnp.isfinite(states.potential_energy) & jnp.all(jnp.stack(
            [jnp.all(jnp.isfinite(g.reshape(n_local, -1)), axis=1) for g in jax.tree.leaves(states.z_grad)]), axis=0)
        transition = over_chains(lambda s: kernel.sample(s, args, kwargs))

        def pool_step_size(s):
            eps = s.adapt_state.step_size
            every = jax.lax.all_gather(eps, "chains", tiled=True) if parallel else eps
            eps = jnp.broadcast_to(jnp.median(every), eps.shape)
            return s._replace(adapt_state=s.adapt_state._replace(step_size=eps))

        # draw j of the kept ones is the state after iteration num_warmup + skip + (j + 1) * thinning - 1
        skip = num_samples % thinning
        n_keep = num_samples // thinning
        first = num_warmup + skip
        buf = (jax.tree.map(lambda v: jnp.zeros((n_keep,) + v.shape, v.dtype), states.z),
               jnp.zeros((n_keep, n_local), bool), jnp.zeros((n_keep, n_local), states.num_steps.dtype))
        zero = jnp.zeros(n_local, states.num_steps.dtype)

        def advance(i, carry):
            s, n_warm, n_samp, buf = carry
            s = transition(s)
            if pool and num_warmup > 0:  # numpyro sets the final (averaged) step size at the last warmup step
                s = jax.lax.cond(i == num_warmup - 1, pool_step_size, lambda s: s, s)
            if progress_rate:
                jax.lax.cond(i % progress_rate == 0, lambda: jax.debug.callback(
                    _progress_tick, jnp.asarray(progress_rate * n_local)), lambda: None)
            warm = i < num_warmup
            n_warm = n_warm + jnp.where(warm, s.num_steps, 0)
            n_samp = n_samp + jnp.where(warm, 0, s.num_steps)
            keep = (i >= first) & ((i - first) % thinning == thinning - 1)
            j = jnp.clip((i - first) // thinning, 0, n_keep - 1)
            buf = jax.tree.map(lambda b, v: b.at[j].set(jnp.where(keep, v, b[j])), buf,
                               (s.z, s.diverging, s.num_steps))
            return s, n_warm, n_samp, buf

        states, n_warm, n_samp, (zs, diverging, steps) = jax.lax.fori_loop(
            0, num_warmup + num_samples, advance, (states, zero, zero, buf))
        constrain = kernel.postprocess_fn(args, kwargs)
        draws = jax.vmap(jax.vmap(constrain))(zs)  # (n_keep, chains, ...)
        chain_first = lambda x: jnp.swapaxes(x, 0, 1)  # noqa: E731
        ad = states.adapt_state
        stats = dict(num_steps_warmup=n_warm, num_steps=n_samp, step_size=ad.step_size,
                     inverse_mass_matrix=ad.inverse_mass_matrix, init_ok=init_ok)
        extra = dict(diverging=chain_first(diverging), num_steps=chain_first(steps))
        return jax.tree.map(chain_first, draws), extra, stats

    def program(keys, dyn, init_values, imm, step_size):
        global _NUTS_COMPILES
        _NUTS_COMPILES += 1  # runs once per trace, i.e. once per compilation
        if not parallel:
            return local(keys, dyn, init_values, imm, step_size)
        mesh = Mesh(np.array(jax.devices()[:num_chains]), ("chains",))
        return jax.shard_map(local, mesh=mesh, in_specs=(P("chains"), P(), P(), P(), P()),
                             out_specs=P("chains"), check_vma=False)(keys, dyn, init_values, imm, step_size)

    return program


def run_nuts(
    model: Callable,
    key,
    *model_args,
    num_warmup: int = 1000,
    num_samples: int = 1000,
    num_chains: int = 2,
    target_accept_prob: float = 0.8,
    progress: bool = True,
    dense_mass: bool | None = None,
    max_tree_depth: int = 10,
    regularize_mass_matrix: bool = True,
    inverse_mass_matrix=None,
    adapt_mass_matrix: bool = True,
    step_size: float = 1.0,
    adapt_step_size: bool = True,
    pool_step_size: bool = False,
    init_params: dict | None = None,
    init_strategy: Callable | None = None,
    chain_method: str | None = None,
    thinning: int = 1,
    rhat_threshold: float = 1.01,
    warn: bool = True,
    **model_kwargs,
) -> NUTSResult:
    """Sample ``model(*model_args, **model_kwargs)`` with numpyro's NUTS kernel, compiled once per shape.

    key: a jax PRNG key (split into one key per chain). ``chain_method``
    defaults to "parallel" when there are at least ``num_chains`` devices and
    to "vectorized" otherwise (chains vmapped in one program; "sequential"
    runs them one after another). ``init_params`` are constrained-space values
    per site (all chains start there, e.g. a MAP estimate); otherwise
    ``init_strategy`` (default numpyro's ``init_to_uniform``) is used.

    Mass matrix and step size. ``inverse_mass_matrix``: the initial inverse
    mass matrix in the unconstrained space, ideally the posterior covariance:
    a (D,) diagonal or a (D, D) matrix over the flattened latent sites in
    sorted-name order, a dict {site name or tuple of names: block}, or any
    object with a ``covariance()`` method (e.g. a ``GaussianPosterior`` of a
    model whose one latent site is the coefficient vector). A (D, D) matrix
    implies ``dense_mass=True`` (``dense_mass=None``, the default, means "dense
    when a dense inverse mass matrix is given, else diagonal"). With
    ``adapt_mass_matrix=False`` warmup only tunes the step size (starting
    from ``step_size``), so a short warmup (~100-200 iterations) suffices when
    the matrix is good. ``regularize_mass_matrix`` (numpyro's default)
    shrinks the adapted mass matrix toward 1e-3 I: turn it off, pass
    ``inverse_mass_matrix``, or reparametrise to O(1) coordinates, when
    posterior standard deviations are far below 0.03 (on the LJ13
    linear-potential posterior, sds ~1e-4, it cost 14x more leapfrog steps and
    100x less ESS per step; see bench/inference_nuts.py). ``step_size`` is
    the initial step size (``adapt_step_size=False`` keeps it fixed).
    ``pool_step_size=True`` gives every chain, after warmup, the median of the
    chains' adapted step sizes (still a valid sampler: the step size is fixed
    after warmup): vectorised chains advance in lockstep, each transition
    waiting for the longest trajectory among them, and a short warmup leaves
    step sizes that differ by ~10 % between chains, enough to double some
    chains' trajectories. The adapted step size and inverse mass matrix of
    each chain are returned in ``diagnostics`` (to pass into a later call).

    Compilation. Warmup and sampling of all chains are one XLA program,
    compiled on the first call and cached (least recently used, 16 programs)
    by the model function, the settings, the non-array model arguments and
    the shapes of the array ones: a later call with the same model object,
    settings and shapes (new data values, key, ``init_params`` values, mass
    matrix or step size) runs without tracing or compiling. Arrays among
    ``model_args`` / ``model_kwargs`` are inputs of the program (traced, as
    with numpyro's ``jit_model_args=True``: the model must not branch on
    their values in Python); anything else (Python numbers, strings, tuples
    of ints) is a compile-time constant, so pass values that change between
    calls as arrays. ``diagnostics`` says
    whether the call compiled (``compiled``) and how long that took
    (``compile_time``, included in ``wall_time``); ``nuts_cache_info()`` counts
    compilations.

    Warns (``UserWarning``, one line naming the sites) when any site's max
    split R-hat exceeds ``rhat_threshold`` or any post-warmup transition
    diverged. Raises ``JaxiapInputError`` when a chain starts at a
    non-finite log density or gradient.
    """
    for name, v in (("num_warmup", num_warmup), ("num_samples", num_samples), ("num_chains", num_chains),
                    ("thinning", thinning)):
        if int(v) != v or v < (0 if name == "num_warmup" else 1):
            raise JaxiapInputError(f"run_nuts: {name} must be a non-negative integer (>= 1 for samples, "
                                   f"chains and thinning), got {v!r}")
    num_warmup, num_samples, num_chains, thinning = (int(v) for v in (num_warmup, num_samples, num_chains,
                                                                      thinning))
    if num_samples < thinning:
        raise JaxiapInputError(f"run_nuts: num_samples ({num_samples}) must be >= thinning ({thinning})")
    if not 0.0 < target_accept_prob < 1.0:
        raise JaxiapInputError(f"run_nuts: target_accept_prob must lie in (0, 1), got {target_accept_prob}")
    if not (np.isfinite(step_size) and step_size > 0):
        raise JaxiapInputError(f"run_nuts: step_size must be finite and > 0, got {step_size}")
    chain_method = chain_method or _default_chain_method(num_chains)
    if chain_method not in ("vectorized", "sequential", "parallel"):
        raise JaxiapInputError(f"run_nuts: chain_method must be 'vectorized', 'sequential' or 'parallel', got "
                               f"{chain_method!r}")
    if chain_method == "parallel" and jax.device_count() < num_chains:
        raise JaxiapInputError(f"run_nuts: chain_method='parallel' needs one device per chain ({num_chains}), "
                               f"there are {jax.device_count()}; use 'vectorized'")
    imm, dense = _resolve_inverse_mass_matrix(inverse_mass_matrix, dense_mass)
    nuts_kwargs = (("target_accept_prob", float(target_accept_prob)), ("dense_mass", dense),
                   ("max_tree_depth", int(max_tree_depth)), ("regularize_mass_matrix", bool(regularize_mass_matrix)),
                   ("adapt_mass_matrix", bool(adapt_mass_matrix)), ("adapt_step_size", bool(adapt_step_size)))
    init_values = None
    if init_params is not None:
        init_values = {k: jnp.asarray(v) for k, v in init_params.items()}
        init_strategy = None
    if progress and ("CI" in os.environ or "PYTEST_CURRENT_TEST" in os.environ):
        progress = False
    total_iters = num_warmup + num_samples
    rate = max(1, total_iters // 20) if progress else 0

    leaves, treedef = jax.tree.flatten((tuple(model_args), dict(model_kwargs)))
    dyn = [jnp.asarray(v) for v in leaves if _is_traced_leaf(v)]
    static_leaves = tuple((i, v) for i, v in enumerate(leaves) if not _is_traced_leaf(v))
    keys = jax.random.split(key, num_chains)
    inputs = (keys, dyn, init_values, imm, jnp.asarray(float(step_size)))
    settings = (num_warmup, num_samples, num_chains, thinning, chain_method, nuts_kwargs, init_strategy,
                bool(pool_step_size), rate)
    signature = tuple((tuple(np.shape(v)), str(v.dtype)) for v in jax.tree.leaves(inputs))
    cache_key = (model, treedef, static_leaves, settings, jax.tree.structure(inputs), signature)
    try:
        compiled = _NUTS_CACHE.get(cache_key)
    except TypeError:  # an unhashable non-array model argument: compile, do not cache
        compiled, cache_key = None, None
    t0 = time.perf_counter()
    compile_time = 0.0
    if compiled is None:
        program = _build_nuts_program(model, treedef, static_leaves, len(leaves), settings)
        try:
            compiled = jax.jit(program).lower(*inputs).compile()
        except (TypeError, ValueError) as err:
            if imm is None:
                raise
            sizes = [tuple(np.shape(v)) for v in jax.tree.leaves(imm)]
            raise JaxiapInputError(f"run_nuts: could not build the sampler with inverse_mass_matrix of shape(s) "
                                   f"{sizes}; it must match the model's unconstrained latent values (sites in "
                                   f"sorted-name order, flattened): {err}") from err
        compile_time = time.perf_counter() - t0
        if cache_key is not None:
            _NUTS_CACHE[cache_key] = compiled
            while len(_NUTS_CACHE) > _NUTS_CACHE_SIZE:
                _NUTS_CACHE.popitem(last=False)
    else:
        _NUTS_CACHE.move_to_end(cache_key)
    bar = None
    if progress:
        from tqdm.auto import tqdm  # lazy: the progress bar only when asked for

        bar = _PROGRESS["bar"] = tqdm(total=total_iters * num_chains, desc=f"NUTS {num_chains} chain(s)")
    try:
        draws, extra, stats = jax.block_until_ready(compiled(*inputs))
    finally:
        if bar is not None:
            bar.close()
            _PROGRESS.pop("bar", None)
    chains = {k: np.asarray(v) for k, v in draws.items()}
    extra = {k: np.asarray(v) for k, v in extra.items()}
    stats = jax.device_get(stats)
    wall = time.perf_counter() - t0
    if not np.all(stats["init_ok"]):
        raise JaxiapInputError(f"run_nuts: {int(np.sum(~np.asarray(stats['init_ok'])))} of {num_chains} chains "
                               "start at a non-finite log density or gradient; pass init_params inside the "
                               "support or check the model")
    samples = {k: v.reshape((-1,) + v.shape[2:]) for k, v in chains.items()}
    r_hat, ess = summarize_chains(chains)
    n_div = int(np.sum(extra["diverging"]))
    imm_out = stats["inverse_mass_matrix"]
    if isinstance(imm_out, dict) and len(imm_out) == 1:
        imm_out = next(iter(imm_out.values()))
    diagnostics = dict(r_hat=r_hat, ess=ess, n_divergent=n_div, num_steps=int(np.sum(stats["num_steps"])),
                       num_steps_warmup=int(np.sum(stats["num_steps_warmup"])), wall_time=wall,
                       compile_time=compile_time, compiled=compile_time > 0, num_chains=num_chains,
                       num_samples=num_samples, num_warmup=num_warmup, chain_method=chain_method,
                       step_size=np.asarray(stats["step_size"]), inverse_mass_matrix=imm_out)
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
