"""Pool-based active learning: select, label, refit, repeat (docs/science.md sections 17-19).

One iteration of :func:`run_pool_loop`:

1. a *strategy* picks ``batch_size`` unlabelled candidates from the pool;
2. the oracle labels only those structures (any ``oracle(structures) ->
   (energy, forces)``: ``JaxOracle``, ``ASEOracle``, a DFT code);
3. the potential is refitted on all labelled structures;
4. ``evaluate(posterior)`` metrics, the selected indices, the labelled-set size,
   the posterior mean and the wall time are appended to ``run_dir/log.jsonl``
   and the labelled set to ``run_dir/state.npz``.

A strategy is a plain function ``select(key, ctx, k) -> (k,) int indices`` of
distinct unlabelled candidates; :data:`jaxiap.active.strategies.STRATEGIES` maps
names to them and :class:`jaxiap.active.strategies.LoopContext` is what they see
(the strategies live in :mod:`jaxiap.active.strategies`; this module holds the
loop, its run folder and its log).

Resuming: with the same ``run_dir`` a rerun continues after the last finished
iteration (the oracle is not called again for labelled structures) and gives
the same numbers as an uninterrupted run, because every random draw uses
``fold_in(key, iteration)``. The settings are fingerprinted in
``run_dir/loop.json``; a rerun with different settings raises
:class:`~jaxiap.errors.JaxiapInputError`. ``n_iterations`` is not part of the
fingerprint, so a finished run can be extended.

Float64 throughout (``import jaxiap`` enables it).
"""

from __future__ import annotations

import functools
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple

import jax
import numpy as np

from jaxiap import runfolder
from jaxiap.active.design import candidate_rows
from jaxiap.active.strategies import STRATEGIES, LoopContext, default_lengthscale, pool_features
from jaxiap.data import Dataset, concatenate
from jaxiap.errors import JaxiapInputError
from jaxiap.inference.linear import reweight
from jaxiap.inference.solvers import Solver, as_solver
from jaxiap.potentials.linear import design_from_rows  # noqa: F401  (re-exported; it lives beside design_matrix)
from jaxiap.systems.oracle import label

__all__ = [
    "LoopResult",
    "run_pool_loop",
    "design_from_rows",
]


class LoopResult(NamedTuple):
    """Outcome of :func:`run_pool_loop`.

    order: (n,) pool indices in the order they were labelled (initial set first).
    n_labelled: (T+1,) labelled-set size after iteration t (t = 0 is the initial fit).
    records: T+1 dicts as written to log.jsonl (iteration, selected, n_labelled,
        metrics, coefficients, wall_s).
    coefficients: (T+1, K) posterior means.
    posterior: the final Posterior.
    dataset: the labelled Dataset (in ``order``).
    """

    order: np.ndarray
    n_labelled: np.ndarray
    records: list
    coefficients: np.ndarray
    posterior: Any
    dataset: Any


# ----------------------------------------------------------------------------- run folder


def _digest(*arrays) -> str:
    h = hashlib.sha1()
    for a in arrays:
        a = np.ascontiguousarray(np.asarray(a))
        h.update(str((a.dtype, a.shape)).encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def _open_loop_folder(run_dir: Path, fingerprint: dict) -> None:
    runfolder.open_run_folder(run_dir, fingerprint, kind="pool-loop", meta_name="loop.json",
                              option="run_dir")


def _save_state(path: Path, iteration: int, order, dataset) -> None:
    runfolder.savez(path, iteration=iteration, order=np.asarray(order, np.int64),
                    energy=np.asarray(dataset.energy), forces=np.asarray(dataset.forces))


def _read_log(path: Path, upto: int) -> list:
    """Records of iterations <= upto; an unparsable line (a write cut short in an older folder) ends the log."""
    if not path.exists():
        return []
    recs = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            recs.append(runfolder._decode(json.loads(line)))
        except json.JSONDecodeError:
            break
    return [r for r in recs if r["iteration"] <= upto]


def _write_log(path: Path, records: list) -> None:
    """The whole log, one strict-JSON record a line, written atomically."""
    runfolder.write_text(path, "".join(runfolder.dumps(r, indent=None) + "\n" for r in records))


# ----------------------------------------------------------------------------- the loop


def _name(fn) -> str:
    return getattr(fn, "__qualname__", None) or type(fn).__name__


#: a solver named by the loop's ``fit`` gets ``key=jax.random.fold_in(key, FIT_FOLD)`` bound
FIT_FOLD = 0xF17


def _loop_fit(fit, key):
    """(refit(design) -> Posterior, its name for the fingerprint) from the loop's ``fit`` argument.

    A registry name (``jaxiap.inference.solvers.SOLVERS``) becomes that solver with the
    loop's fit key bound (``fold_in(key, FIT_FOLD)``: random solvers are reproducible and
    resumable); a callable ``fit(design, *, key=None)`` is called as ``fit(design)`` (bind
    the key of a random solver yourself, e.g. ``functools.partial(solver, key=k)``).
    """
    solver = as_solver(fit)
    if isinstance(fit, str):
        return functools.partial(solver, key=jax.random.fold_in(key, FIT_FOLD)), solver.label
    return solver, (solver.label if isinstance(solver, Solver) else _name(solver))


def run_pool_loop(
    strategy,
    pool,
    oracle: Callable,
    *,
    fit: Callable,
    basis,
    initial,
    batch_size: int,
    n_iterations: int,
    key,
    evaluate: Callable | None = None,
    run_dir=None,
    progress: bool = True,
    energy_weight: float = 1.0,
    force_weight: float = 1.0,
    phi=None,
    lengthscale: float | None = None,
    qoi_gradient: Callable | None = None,
    committee_size: int = 8,
    settings: dict | None = None,
    rows=None,
) -> LoopResult:
    """Pool-based active learning of a linear potential.

    strategy: a name in :data:`jaxiap.active.strategies.STRATEGIES` or a function ``select(key, ctx, k)``.
    pool: Structures, the C candidates (only their positions are used; labels
        come from ``oracle``).
    oracle: ``oracle(structures) -> (energy (S,), forces (S, N, 3))``, called
        only on the selected structures (once per iteration).
    fit: a solver name of ``jaxiap.inference.solvers.SOLVERS`` (its key bound to
        ``fold_in(key, FIT_FOLD)``) or a callable ``fit(design, *, key=None) ->
        Posterior``, called as ``fit(design)`` (the design is already reweighted by
        ``energy_weight`` / ``force_weight``).
    basis: LinearBasis of the potential.
    initial: pool indices labelled before the first selection.
    batch_size, n_iterations: candidates per iteration and number of iterations.
    key: jax.random key; iteration t draws with ``fold_in(key, t)``.
    evaluate: ``evaluate(posterior) -> dict`` of JSON-able metrics, or None.
    run_dir: folder for loop.json (fingerprint), log.jsonl and state.npz; None
        keeps everything in memory (no resume).
    energy_weight, force_weight: row weights of the fit and of the candidate
        rows (force_weight=0: energy-only labels are used in the fit).
    phi: (C, d) configuration features (default :func:`jaxiap.active.strategies.pool_features`);
        lengthscale: RBF lengthscale (default the median pairwise distance).
    qoi_gradient: ``qoi_gradient(posterior) -> (K,)``, needed by "qoi".
    settings: extra JSON-able settings to fingerprint (e.g. the fit's
        hyperparameters and the oracle's name, which the loop cannot see).
    rows: precomputed unit-weight (C, 1 + 3N, K) candidate rows (default
        ``active.design.candidate_rows(basis, pool)``); the fits' design matrices
        are assembled from them (identical to ``design_matrix`` of the labelled set).

    Returns a :class:`LoopResult`.
    """
    fit, fit_name = _loop_fit(fit, key)
    select = STRATEGIES.get(strategy) if isinstance(strategy, str) else strategy
    if select is None:
        raise JaxiapInputError(f"strategy={strategy!r} is unknown; choose one of {tuple(STRATEGIES)} or pass a function")
    c_total = len(pool)
    initial = np.asarray(initial, np.int64).reshape(-1)
    if initial.size == 0 or len(set(initial.tolist())) != initial.size or initial.min() < 0 or initial.max() >= c_total:
        raise JaxiapInputError(f"initial must be distinct pool indices in [0, {c_total}), got {initial.tolist()}")
    if batch_size < 1 or n_iterations < 0:
        raise JaxiapInputError(f"batch_size must be >= 1 and n_iterations >= 0, got {batch_size}, {n_iterations}")
    if initial.size + batch_size * n_iterations > c_total:
        raise JaxiapInputError(f"{initial.size} initial + {n_iterations} x {batch_size} selected exceeds the pool "
                               f"of {c_total} candidates; lower n_iterations or batch_size")

    if rows is None:
        rows = candidate_rows(basis, pool)
    raw = np.asarray(rows)  # (C, P, K) unit-weight rows: the fit's design is cut from them (no recompiles)
    if raw.shape[:2] != (c_total, 1 + 3 * pool.n_max):
        raise JaxiapInputError(f"rows must have shape (C, 1 + 3N, K) = ({c_total}, {1 + 3 * pool.n_max}, K), "
                               f"got {raw.shape}")
    row_scale = np.concatenate([[np.sqrt(energy_weight)], np.full(3 * pool.n_max, np.sqrt(force_weight))])
    rows = raw * row_scale[None, :, None]
    phi = pool_features(basis, pool) if phi is None else np.asarray(phi)
    lengthscale = default_lengthscale(phi) if lengthscale is None else float(lengthscale)
    strategy_name = strategy if isinstance(strategy, str) else _name(strategy)

    run_dir = None if run_dir is None else Path(run_dir)
    log_path = state_path = None
    if run_dir is not None:
        fingerprint = {
            "strategy": strategy_name, "batch_size": int(batch_size), "initial": initial.tolist(),
            "key": np.asarray(jax.random.key_data(key)).tolist(), "pool": _digest(pool.positions, pool.mask),
            "rows": _digest(rows), "phi": _digest(phi), "lengthscale": lengthscale,
            "energy_weight": energy_weight, "force_weight": force_weight, "fit": fit_name,
            "committee_size": committee_size, "settings": settings or {},
        }
        _open_loop_folder(run_dir, fingerprint)
        log_path, state_path = run_dir / "log.jsonl", run_dir / "state.npz"

    def refit(order, dataset):
        design = reweight(design_from_rows(raw[np.asarray(order)], dataset), energy_weight, force_weight)
        return design, fit(design)

    def record(iteration, selected, order, posterior, t0):
        metrics = {} if evaluate is None else dict(evaluate(posterior))
        return {"iteration": iteration, "selected": [int(i) for i in selected], "n_labelled": len(order),
                "metrics": metrics, "coefficients": np.asarray(posterior.mean).tolist(),
                "wall_s": round(time.perf_counter() - t0, 4)}

    # --- start or resume
    start_it, records = 0, []
    if state_path is not None and state_path.exists():
        with runfolder.read_npz(state_path, "active-learning state") as z:
            start_it = int(z["iteration"])
            order = [int(i) for i in z["order"]]
            energy, forces = z["energy"], z["forces"]
        dataset = Dataset(pool[np.asarray(order)], energy, forces)
        records = _read_log(log_path, start_it)
        if len(records) != start_it + 1:
            raise JaxiapInputError(f"{log_path} holds {len(records)} records but {state_path} is at iteration "
                                   f"{start_it}; the folder is damaged: use another run_dir or delete this one")
        _write_log(log_path, records)
        if start_it > n_iterations:  # a longer run is stored: return its first n_iterations
            n_keep = records[n_iterations]["n_labelled"]
            order, dataset = order[:n_keep], dataset[np.arange(n_keep)]
        design, posterior = refit(order, dataset)
        if progress:
            print(f"[jaxiap] active learning ({strategy_name}): resuming after iteration {start_it} "
                  f"({len(order)} labelled)", file=sys.stderr, flush=True)
    else:
        t0 = time.perf_counter()
        order = initial.tolist()
        dataset = label(oracle, pool[initial])
        design, posterior = refit(order, dataset)
        rec = record(0, order, order, posterior, t0)
        records = [rec]
        if log_path is not None:
            _write_log(log_path, records)
            _save_state(state_path, 0, order, dataset)

    for it in range(start_it + 1, n_iterations + 1):
        t0 = time.perf_counter()
        labelled = np.zeros(c_total, bool)
        labelled[order] = True
        qg = None if qoi_gradient is None else np.asarray(qoi_gradient(posterior))
        ctx = LoopContext(rows, phi, posterior, labelled, basis, pool, design, fit, qg, lengthscale,
                          "energy" if force_weight == 0 else "force", committee_size)
        sel = np.asarray(select(jax.random.fold_in(key, it), ctx, batch_size), np.int64).reshape(-1)
        if sel.size != batch_size or len(set(sel.tolist())) != sel.size or labelled[sel].any():
            raise JaxiapInputError(f"strategy {strategy_name!r} returned {sel.tolist()}: expected {batch_size} "
                                   "distinct unlabelled pool indices")
        dataset = concatenate([dataset, label(oracle, pool[sel])])
        order = order + sel.tolist()
        design, posterior = refit(order, dataset)
        rec = record(it, sel, order, posterior, t0)
        records.append(rec)
        if log_path is not None:
            _write_log(log_path, records)  # log first: a crash before the state is saved redoes this iteration
            _save_state(state_path, it, order, dataset)
        if progress:
            m = ", ".join(f"{k} {v:.4g}" for k, v in rec["metrics"].items() if isinstance(v, (int, float)))
            print(f"[jaxiap] {strategy_name} iteration {it}/{n_iterations}: {len(order)} labelled"
                  f"{'; ' + m if m else ''} ({rec['wall_s']:.1f} s)", file=sys.stderr, flush=True)

    records = records[: n_iterations + 1]
    return LoopResult(
        order=np.asarray(order, np.int64),
        n_labelled=np.asarray([r["n_labelled"] for r in records]),
        records=records,
        coefficients=np.asarray([r["coefficients"] for r in records]),
        posterior=posterior,
        dataset=dataset,
    )
