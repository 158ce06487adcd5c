"""Active learning with generated candidates: generate, select, label, refit, repeat.

:func:`run_pool_loop` chooses among a fixed pool; :func:`run_generator_loop`
makes a fresh candidate set at every iteration from the current posterior (no
oracle call), then lets the same strategies (:data:`jaxiap.active.strategies.STRATEGIES`)
choose ``batch_size`` of them, labels only those and refits:

1. ``generate(key, ctx) -> Generated(positions (C, N, 3), n_force_evals)``
   (:mod:`jaxiap.active.generators`: Langevin, Stein, UDD, HAL, metadynamics
   and adversarial generators over the surrogate);
2. candidates that fail ``valid(positions) -> bool`` (non-finite, outside the
   basis's domain) are replaced by jittered copies of labelled configurations,
   so the candidate set keeps its shape (nothing recompiles) and the oracle
   never sees a blown-up structure; the count is logged;
3. the strategy selects from the C candidates, the oracle labels them, the
   potential is refitted on every labelled structure.

The run folder holds loop.json (fingerprint), log.jsonl (one record per
iteration: selected candidates, labelled-set size, metrics, posterior mean,
cumulative surrogate force evaluations of the generator, invalid candidates,
wall time) and state.npz (the labelled positions and labels). A rerun with the
same folder continues after the last finished iteration with the numbers of an
uninterrupted run (every draw uses ``fold_in(key, iteration)``).

Float64 throughout (``import jaxiap`` enables it).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple

import jax
import numpy as np

from jaxiap import runfolder
from jaxiap.active.design import candidate_rows
from jaxiap.active.loop import LoopResult, _digest, _loop_fit, _name, _open_loop_folder, _read_log, _write_log
from jaxiap.active.strategies import STRATEGIES, LoopContext, default_lengthscale, pool_features
from jaxiap.data import Dataset, concatenate
from jaxiap.errors import JaxiapInputError
from jaxiap.inference.linear import reweight
from jaxiap.potentials.linear import design_from_rows
from jaxiap.structures import from_positions
from jaxiap.systems.oracle import label

__all__ = ["GeneratorContext", "Generated", "run_generator_loop"]


class GeneratorContext(NamedTuple):
    """What a generator sees at one iteration.

    posterior: the current Posterior; basis: the LinearBasis (surrogate energy
    ``b(x) . c``); labelled: Dataset of the labelled structures (positions and
    labels, e.g. for an attack's partition function); n_candidates: C, the
    candidate count to return.
    """

    posterior: Any
    basis: Any
    labelled: Any
    n_candidates: int


class Generated(NamedTuple):
    """positions (C, N, 3) of the candidates; n_force_evals: surrogate force evaluations spent."""

    positions: Any
    n_force_evals: int


def _replace_invalid(key, positions, valid, labelled_positions, jitter):
    """(positions with invalid rows replaced by jittered labelled configurations, number replaced)."""
    pos = np.array(positions, dtype=float)
    ok = np.array([bool(valid(p)) for p in pos]) if valid is not None else np.ones(len(pos), bool)
    ok &= np.isfinite(pos).reshape(len(pos), -1).all(axis=1)
    bad = np.flatnonzero(~ok)
    if bad.size:
        k1, k2 = jax.random.split(key)
        src = np.asarray(jax.random.choice(k1, len(labelled_positions), (bad.size,)))
        noise = np.asarray(jax.random.normal(k2, (bad.size,) + pos.shape[1:]))
        pos[bad] = np.asarray(labelled_positions)[src] + jitter * noise
    return pos, int(bad.size)


def run_generator_loop(
    strategy,
    generate: Callable,
    initial: Dataset,
    oracle: Callable,
    *,
    fit: Callable,
    basis,
    batch_size: int,
    n_iterations: int,
    n_candidates: int,
    key,
    valid: Callable | None = None,
    jitter: float = 0.02,
    evaluate: Callable | None = None,
    run_dir=None,
    progress: bool = True,
    energy_weight: float = 1.0,
    force_weight: float = 1.0,
    qoi_gradient: Callable | None = None,
    committee_size: int = 8,
    settings: dict | None = None,
) -> LoopResult:
    """Active learning of a linear potential on candidates generated from the current posterior.

    strategy: a name in :data:`jaxiap.active.strategies.STRATEGIES` or ``select(key, ctx, k)``.
    generate: ``generate(key, ctx: GeneratorContext) -> Generated`` (C = n_candidates).
    initial: labelled Dataset to start from (e.g. a few oracle-labelled structures).
    oracle, fit, basis, energy_weight, force_weight, qoi_gradient, committee_size,
    evaluate, run_dir, settings: as in :func:`jaxiap.active.loop.run_pool_loop`.
    valid: ``valid(positions (N, 3)) -> bool``; invalid or non-finite candidates are
        replaced by copies of labelled configurations jittered by ``jitter`` (length).
    Returns a :class:`jaxiap.active.loop.LoopResult`; ``order`` counts labelled
    structures (0..n-1, initial first) and each record holds ``n_force_evals``.
    """
    fit, fit_name = _loop_fit(fit, key)
    select = STRATEGIES.get(strategy) if isinstance(strategy, str) else strategy
    if select is None:
        raise JaxiapInputError(f"strategy={strategy!r} is unknown; choose one of {tuple(STRATEGIES)} or pass a function")
    if batch_size < 1 or n_iterations < 0:
        raise JaxiapInputError(f"batch_size must be >= 1 and n_iterations >= 0, got {batch_size}, {n_iterations}")
    if n_candidates < batch_size:
        raise JaxiapInputError(f"n_candidates={n_candidates} must be at least batch_size={batch_size}")
    strategy_name = strategy if isinstance(strategy, str) else _name(strategy)
    gen_name = getattr(generate, "name", None) or _name(generate)
    row_scale = None

    def rows_of(structures):
        nonlocal row_scale
        raw = np.asarray(candidate_rows(basis, structures))
        if row_scale is None:
            row_scale = np.concatenate([[np.sqrt(energy_weight)], np.full(raw.shape[1] - 1, np.sqrt(force_weight))])
        return raw

    run_dir = None if run_dir is None else Path(run_dir)
    log_path = state_path = None
    if run_dir is not None:
        fingerprint = {
            "strategy": strategy_name, "generator": gen_name, "batch_size": int(batch_size),
            "n_candidates": int(n_candidates), "key": np.asarray(jax.random.key_data(key)).tolist(),
            "initial": _digest(initial.structures.positions, initial.energy), "energy_weight": energy_weight,
            "force_weight": force_weight, "fit": fit_name, "committee_size": committee_size, "jitter": jitter,
            "settings": settings or {},
        }
        _open_loop_folder(run_dir, fingerprint)
        log_path, state_path = run_dir / "log.jsonl", run_dir / "state.npz"

    def refit(raw, dataset):
        design = reweight(design_from_rows(raw, dataset), energy_weight, force_weight)
        return design, fit(design)

    def record(iteration, selected, n_lab, posterior, t0, n_evals, n_invalid):
        metrics = {} if evaluate is None else dict(evaluate(posterior))
        return {"iteration": iteration, "selected": [int(i) for i in selected], "n_labelled": n_lab,
                "metrics": metrics, "coefficients": np.asarray(posterior.mean).tolist(),
                "n_force_evals": int(n_evals), "n_invalid": int(n_invalid),
                "wall_s": round(time.perf_counter() - t0, 4)}

    def save(it, dataset, raw):
        runfolder.savez(state_path, iteration=it, positions=np.asarray(dataset.structures.positions),
                        energy=np.asarray(dataset.energy), forces=np.asarray(dataset.forces), rows=raw)

    if state_path is not None and state_path.exists():
        with runfolder.read_npz(state_path, "active-learning state") as z:
            start_it = int(z["iteration"])
            dataset = Dataset(from_positions(z["positions"], initial.structures.species_names), z["energy"],
                              z["forces"])
            raw = np.asarray(z["rows"])  # the rows as computed when labelled: a resumed fit is bitwise the same
        records = _read_log(log_path, start_it)
        if len(records) != start_it + 1:
            raise JaxiapInputError(f"{log_path} holds {len(records)} records but {state_path} is at iteration "
                                   f"{start_it}; the folder is damaged: use another run_dir or delete this one")
        _write_log(log_path, records)
        if start_it > n_iterations:
            n_keep = records[n_iterations]["n_labelled"]
            dataset, raw = dataset[np.arange(n_keep)], raw[:n_keep]
        rows_of(dataset.structures[np.arange(1)])  # sets the row scale
        design, posterior = refit(raw, dataset)
        n_evals = records[min(start_it, n_iterations)]["n_force_evals"]
        if progress:
            print(f"[jaxiap] active learning ({gen_name}/{strategy_name}): resuming after iteration {start_it} "
                  f"({len(dataset)} labelled)", file=sys.stderr, flush=True)
    else:
        t0 = time.perf_counter()
        start_it, n_evals = 0, 0
        dataset = initial
        raw = rows_of(dataset.structures)
        design, posterior = refit(raw, dataset)
        records = [record(0, range(len(dataset)), len(dataset), posterior, t0, 0, 0)]
        if log_path is not None:
            _write_log(log_path, records)
            save(0, dataset, raw)

    for it in range(start_it + 1, n_iterations + 1):
        t0 = time.perf_counter()
        k_gen, k_fix, k_sel = jax.random.split(jax.random.fold_in(key, it), 3)
        gen = generate(k_gen, GeneratorContext(posterior, basis, dataset, int(n_candidates)))
        pos = np.asarray(gen.positions)
        if pos.shape != (n_candidates,) + tuple(dataset.structures.positions.shape[1:]):
            raise JaxiapInputError(f"generator {gen_name!r} returned positions of shape {pos.shape}; expected "
                                   f"({n_candidates}, N, 3)")
        pos, n_invalid = _replace_invalid(k_fix, pos, valid, dataset.structures.positions, jitter)
        n_evals += int(gen.n_force_evals)
        cand = from_positions(pos, dataset.structures.species_names)
        cand_raw = rows_of(cand)
        phi = pool_features(basis, cand)
        qg = None if qoi_gradient is None else np.asarray(qoi_gradient(posterior))
        ctx = LoopContext(cand_raw * row_scale[None, :, None], phi, posterior, np.zeros(n_candidates, bool), basis,
                          cand, design, fit, qg, default_lengthscale(phi),
                          "energy" if force_weight == 0 else "force", committee_size)
        sel = np.asarray(select(k_sel, ctx, batch_size), np.int64).reshape(-1)
        if sel.size != batch_size or len(set(sel.tolist())) != sel.size:
            raise JaxiapInputError(f"strategy {strategy_name!r} returned {sel.tolist()}: expected {batch_size} "
                                   "distinct candidate indices")
        dataset = concatenate([dataset, label(oracle, cand[sel])])
        raw = np.concatenate([raw, cand_raw[sel]])
        design, posterior = refit(raw, dataset)
        records.append(record(it, sel, len(dataset), posterior, t0, n_evals, n_invalid))
        if log_path is not None:
            _write_log(log_path, records)
            save(it, dataset, raw)
        if progress:
            m = ", ".join(f"{k} {v:.4g}" for k, v in records[-1]["metrics"].items() if isinstance(v, (int, float)))
            print(f"[jaxiap] {gen_name}/{strategy_name} iteration {it}/{n_iterations}: {len(dataset)} labelled, "
                  f"{n_invalid} invalid candidates{'; ' + m if m else ''} ({records[-1]['wall_s']:.1f} s)",
                  file=sys.stderr, flush=True)

    records = records[: n_iterations + 1]
    return LoopResult(
        order=np.arange(len(dataset), dtype=np.int64),
        n_labelled=np.asarray([r["n_labelled"] for r in records]),
        records=records,
        coefficients=np.asarray([r["coefficients"] for r in records]),
        posterior=posterior,
        dataset=dataset,
    )
