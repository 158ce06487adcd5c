"""The ensemble runner: any :class:`~jaxiap.md.program.Program` over an (M samples) x (R seeds) grid.

:func:`run_program` flattens the grid m-major (replica ``i = m * R + r``),
cuts it into chunks of ``chunk_size`` replicas, and runs each chunk as one
compiled call: ``jit(shard_map(...))`` over a 1-D mesh of ``devices``, each
device running its share of the chunk on its own ``lanes_per_device``
recycled lanes (:func:`jaxiap.md.lanes.lane_chunk_fn`; no cross-device
traffic, and no device waits for another's tail). A replica whose
``program.failed`` turns true is stopped and flagged; the others are not
affected. With ``run_dir`` every finished chunk is written as
``chunk_XXXXX.npz`` and a rerun with the same inputs loads finished chunks
and computes the rest (:mod:`jaxiap.runfolder`: atomic writes; a corrupt
chunk is recomputed with a warning).

The per-chunk work is public for other drivers: :func:`plan_sweep` checks
and sizes a sweep (:class:`SweepPlan`), :class:`ChunkComputer` holds its
compiled program on some devices, and :func:`run_chunk` loads or computes
and writes one chunk (the Dask driver :mod:`jaxiap.md.dask_sweep` runs it as
one task per chunk). ``devices`` may span several processes after
:func:`jaxiap.md.distributed.initialize`: every process then runs the same
sweep, inputs become global arrays, results are gathered to every process,
and only process 0 writes the run folder and shows the bar
(docs/distributed.md).

Randomness: replica (m, r) gets the key :func:`replica_key` ``(base_seed,
seeds[r])``, the same for every sample m (common random numbers), and
independent of chunking and device count. With the same lanes_per_device
and device count, results are bitwise identical whatever the chunk size or
which replicas share a chunk (float64 on CPU). XLA may round differently
for another lane width or another device count (relative ~1e-15 per block
for LJ13); chaotic runs then agree only statistically.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import warnings
from typing import Any, NamedTuple

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np
from tqdm.auto import tqdm

from jaxiap import runfolder
from jaxiap.errors import JaxiapInputError
from jaxiap.md import distributed
from jaxiap.md.lanes import lane_chunk_fn
from jaxiap.md.program import Program, check_program
from jaxiap.md.sizing import choose_chunking, program_bytes

__all__ = ["replica_key", "run_program", "ProgramRun", "RESERVED_NAMES", "META_NAME", "CHUNK_FMT", "SweepPlan",
           "plan_sweep", "ChunkComputer", "run_chunk", "load_chunk", "save_chunk", "chunk_rows", "chunk_path",
           "result_spec", "open_sweep_folder", "collect_chunk", "program_run"]

META_NAME = "ensemble_meta.json"
CHUNK_FMT = "chunk_{:05d}.npz"
#: chunk-file names the runner writes next to a program's results
RESERVED_NAMES = ("failed", "replica_index", "fingerprint")
_RUNNER_FORMAT = 1  # layout of the chunk files; part of every run folder's identity


def replica_key(base_seed, seed):
    """Key of every replica with thermostat seed ``seed``: ``fold_in(key(base_seed), seed)``."""
    return jax.random.fold_in(jax.random.key(base_seed), seed)


class ProgramRun(NamedTuple):
    """What :func:`run_program` returns.

    results: dict of (M, R, ...) arrays (:attr:`Program.result` per replica).
    failed: (M, R) bool, replicas stopped by :attr:`Program.failed`.
    chunk_size, lanes_per_device: the values used (after sizing / rounding).
    """

    results: dict
    failed: np.ndarray
    chunk_size: int
    lanes_per_device: int


# ---------------------------------------------------------------------------
# The compiled chunk program
# ---------------------------------------------------------------------------


class _Progress:
    """Routes a compiled program's progress callback to the bar of the call running it.

    ``jax.debug.callback`` binds its target when the program is traced, and
    the compiled program is cached and outlives that call; so each cached
    program gets its own holder, and each call sets its bar on it for the
    duration of the call (no module-wide bar).
    """

    def __init__(self):
        self.bar = None

    def __call__(self, n_finished) -> None:
        if self.bar is not None:
            self.bar.update(int(n_finished))


_COMPILED: dict = {}
_COMPILED_MAX = 16


def _compiled(program: Program, devices: tuple, lanes_per_device: int, with_progress: bool = True):
    """(jit(shard_map(chunk)), replica sharding, replicated sharding, progress holder), cached by cache_key.

    with_progress False compiles the program without its progress callback: the same arithmetic,
    and (unlike a program with a host callback) JAX's persistent compilation cache can keep it.
    """
    cache_key = None if program.cache_key is None else (program.cache_key, devices, lanes_per_device,
                                                        bool(with_progress))
    if cache_key in _COMPILED:
        return _COMPILED[cache_key]
    progress = _Progress()
    chunk = lane_chunk_fn(program, lanes_per_device, progress_fn=progress if with_progress else None)
    mesh = Mesh(np.asarray(devices, dtype=object), ("replica",), axis_types=(jax.sharding.AxisType.Auto,))

    def local(params, seeds, n_valid, base_seed, shared):
        keys = jax.vmap(lambda sd: replica_key(base_seed, sd))(seeds)
        return chunk(params, keys, n_valid[0], shared)

    sharded = jax.shard_map(local, mesh=mesh, in_specs=(P("replica"), P("replica"), P("replica"), P(), P()),
                            out_specs=P("replica"), check_vma=False)
    out = (jax.jit(sharded), NamedSharding(mesh, P("replica")), NamedSharding(mesh, P()), progress)
    if cache_key is not None:
        if len(_COMPILED) >= _COMPILED_MAX:
            _COMPILED.pop(next(iter(_COMPILED)))
        _COMPILED[cache_key] = out
    return out


# ---------------------------------------------------------------------------
# Inputs and run-folder identity
# ---------------------------------------------------------------------------


def _check_params(params):
    leaves, treedef = jax.tree_util.tree_flatten(params)
    if not leaves:
        raise JaxiapInputError("run_program: params has no array leaves; pass an (M, ...) array "
                               "(a dummy such as np.zeros((1, 1)) when the program has no parameters)")
    leaves = [np.asarray(x) for x in leaves]
    ms = {x.shape[0] if x.ndim else None for x in leaves}
    if len(ms) != 1 or None in ms:
        raise JaxiapInputError("run_program: every params leaf needs the same leading axis M (samples); "
                               f"got shapes {[x.shape for x in leaves]}")
    m = ms.pop()
    if m < 1:
        raise JaxiapInputError("run_program: params has M = 0 samples; pass at least one")
    return leaves, treedef, m


def check_seeds(seeds, where: str = "run_program") -> np.ndarray:
    """(R,) uint32 thermostat seeds, or JaxiapInputError."""
    seeds = np.asarray(seeds)
    if seeds.ndim != 1 or seeds.size < 1 or not np.issubdtype(seeds.dtype, np.integer):
        raise JaxiapInputError(f"{where}: seeds must be a non-empty 1-D integer array, got {seeds.shape} "
                               f"{seeds.dtype}; e.g. np.arange(R)")
    if np.any(seeds < 0) or np.any(seeds >= 2**32):
        raise JaxiapInputError(f"{where}: seeds must lie in [0, 2**32)")
    return seeds.astype(np.uint32)


def _fingerprint(parts: dict, arrays: list) -> str:
    h = hashlib.sha256(json.dumps(parts, sort_keys=True).encode())
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:32]


def _result_spec(program: Program, leaves, treedef, shared) -> dict:
    """name -> ShapeDtypeStruct of one replica's result (``jax.eval_shape``; nothing runs)."""
    row = jax.tree_util.tree_unflatten(treedef, [x[0] for x in leaves])
    prep = jax.eval_shape(program.prepare, row, shared) if program.prepare is not None else None
    carry = jax.eval_shape(program.init, row, jax.random.key(0), prep, shared)
    return jax.eval_shape(program.result, carry)


def _load_chunk(path, fingerprint, idx, spec, where):
    """A finished chunk's (results, failed), or None when it is missing, from other inputs or unreadable.

    A truncated or corrupt chunk (e.g. damaged on disk) is recomputed with a
    warning that names it; the other chunks are kept.
    """
    if not os.path.exists(path):
        return None
    try:
        with runfolder.read_npz(path, "MD ensemble chunk") as z:
            if str(z["fingerprint"]) != fingerprint or not np.array_equal(z["replica_index"], idx):
                return None
            res = {k: z[k] for k in spec}
            failed = z["failed"]
        for k, s in spec.items():
            if res[k].shape != (idx.size,) + tuple(s.shape) or res[k].dtype != s.dtype:
                raise JaxiapInputError(f"{path}: MD ensemble chunk array {k!r} has shape {res[k].shape} "
                                       f"{res[k].dtype}, not {(idx.size,) + tuple(s.shape)} {s.dtype}")
        return res, failed.astype(bool)
    except JaxiapInputError as exc:
        warnings.warn(f"{where}: {exc}; recomputing that chunk", RuntimeWarning, stacklevel=6)
        return None


# ---------------------------------------------------------------------------
# One sweep, chunk by chunk (shared by run_program and jaxiap.md.dask_sweep)
# ---------------------------------------------------------------------------


class SweepPlan(NamedTuple):
    """A checked and sized sweep: what :func:`plan_sweep` returns.

    program: the :class:`Program`; treedef, leaves: the params structure and
    its (M, ...) numpy leaves; seeds: (R,) uint32; shared: PyTree or None;
    base_seed: int; chunk_size: replicas per chunk (a multiple of the device
    count); lanes_per_device: int; m_samples: M; n_rep: M * R; n_chunks:
    int; parts: the run-folder identity (JSON-able); fingerprint: hash of
    parts and of the seeds, params and shared bytes (None when not asked
    for); where: how errors name the caller.
    """

    program: Program
    treedef: Any
    leaves: list
    seeds: np.ndarray
    shared: Any
    base_seed: int
    chunk_size: int
    lanes_per_device: int
    m_samples: int
    n_rep: int
    n_chunks: int
    parts: dict
    fingerprint: str | None
    where: str


def plan_sweep(program: Program, params: Any, seeds, shared: Any = None, *, base_seed: int = 0,
               chunk_size: int | None = None, lanes_per_device: int | None = None, devices=None,
               identity: dict | None = None, fingerprint: bool = False, where: str = "run_program") -> SweepPlan:
    """Check a sweep's inputs and fix its chunking; returns a :class:`SweepPlan` (nothing runs).

    Arguments as in :func:`run_program`, except ``devices``: a tuple of
    devices, or an int device count (then chunk_size and lanes_per_device
    must be given); chunk_size is rounded up to a multiple of its length.
    fingerprint: compute the run-folder fingerprint (hashes every input byte).
    """
    program = check_program(program, where)
    leaves, treedef, m_samples = _check_params(params)
    seeds = check_seeds(seeds, where)
    if not 0 <= int(base_seed) < 2**32:
        raise JaxiapInputError(f"{where}: base_seed must lie in [0, 2**32), got {base_seed}")
    for name, v in (("chunk_size", chunk_size), ("lanes_per_device", lanes_per_device)):
        if v is not None and int(v) < 1:
            raise JaxiapInputError(f"{where}: {name} must be >= 1 (or None for automatic), got {v}")
    devices = tuple(jax.devices()) if devices is None else devices
    nd = devices if isinstance(devices, int) else len(devices)
    if nd < 1:
        raise JaxiapInputError(f"{where}: devices is empty; pass None (all of jax.devices()) or a list")
    r_seeds = seeds.shape[0]
    n_rep = m_samples * r_seeds
    if chunk_size is None or lanes_per_device is None:
        if isinstance(devices, int):
            raise JaxiapInputError(f"{where}: chunk_size and lanes_per_device must be given (automatic sizing "
                                   "needs the devices that run the chunks)")
        row = jax.tree_util.tree_unflatten(treedef, [x[0] for x in leaves])
        auto_cs, lanes_per_device = choose_chunking(n_rep, *program_bytes(program, row, shared), devices,
                                                    lanes_per_device)
    chunk_size = auto_cs if chunk_size is None else -(-int(chunk_size) // nd) * nd
    parts = dict(identity or {}, runner_format=_RUNNER_FORMAT, treedef=str(treedef), M=m_samples,
                 R=r_seeds, base_seed=int(base_seed), chunk_size=chunk_size)
    fp = None
    if fingerprint:
        shared_leaves = [np.asarray(x) for x in jax.tree_util.tree_leaves(shared)]
        fp = _fingerprint(parts, [seeds, *leaves, *shared_leaves])
    return SweepPlan(program, treedef, leaves, seeds, shared, int(base_seed), chunk_size, int(lanes_per_device),
                     m_samples, n_rep, -(-n_rep // chunk_size), parts, fp, where)


def chunk_rows(plan: SweepPlan, c: int) -> np.ndarray:
    """Flat replica indices (m * R + r) of chunk ``c``: (<= chunk_size,) int."""
    return np.arange(c * plan.chunk_size, min((c + 1) * plan.chunk_size, plan.n_rep))


def chunk_path(run_dir, c: int) -> str:
    """The file of chunk ``c`` in ``run_dir``."""
    return os.path.join(os.fspath(run_dir), CHUNK_FMT.format(c))


def open_sweep_folder(plan: SweepPlan, run_dir, *, kind: str | None = None, overwrite: bool = False,
                      extra: dict) -> str:
    """Create or resume ``run_dir`` for ``plan`` (:func:`jaxiap.runfolder.open_run_folder`); returns its path.

    extra: what is recorded but not compared (n_chunks, lanes_per_device,
    n_devices, devices); every writer uses these four keys.
    """
    run_dir = os.fspath(run_dir)
    runfolder.open_run_folder(run_dir, dict(plan.parts, fingerprint=plan.fingerprint),
                              kind=kind or plan.program.name, overwrite=overwrite, meta_name=META_NAME,
                              extra=extra, option="run_dir")
    return run_dir


def load_chunk(plan: SweepPlan, run_dir, c: int, spec: dict | None = None):
    """Chunk ``c``'s (results dict of (n, ...) arrays, failed (n,) bool) from ``run_dir``, or None.

    None when the file is missing, holds other inputs, or is unreadable (then
    with a warning). spec: :func:`result_spec` (computed when None).
    """
    spec = result_spec(plan) if spec is None else spec
    return _load_chunk(chunk_path(run_dir, c), plan.fingerprint, chunk_rows(plan, c), spec, plan.where)


def result_spec(plan: SweepPlan) -> dict:
    """name -> ShapeDtypeStruct of one replica's result (``jax.eval_shape``; nothing runs)."""
    return _result_spec(plan.program, plan.leaves, plan.treedef, plan.shared)


def save_chunk(plan: SweepPlan, run_dir, c: int, res: dict, failed) -> None:
    """Write chunk ``c`` atomically as ``chunk_XXXXX.npz`` (with its replica indices and fingerprint)."""
    runfolder.savez(chunk_path(run_dir, c), **res, failed=failed, replica_index=chunk_rows(plan, c),
                    fingerprint=np.asarray(plan.fingerprint))


class ChunkComputer:
    """Computes chunks of a :class:`SweepPlan` on ``devices``: ``computer(c, bar=None) -> (results, failed)``.

    Holds the compiled program and the device copies of base_seed and
    shared. When ``devices`` span several processes (``jax.distributed``),
    inputs become global arrays and results are gathered to every process
    (:mod:`jaxiap.md.distributed`); every process must then make the same calls.
    progress: compile the program with its progress callback (needed for a
    bar); without it, the same numbers and a persistently cacheable program.
    """

    def __init__(self, plan: SweepPlan, devices, progress: bool = True):
        devices = tuple(devices)
        if plan.chunk_size % len(devices):
            raise JaxiapInputError(f"{plan.where}: chunk_size {plan.chunk_size} is not a multiple of the "
                                   f"{len(devices)} devices; pick a chunk_size that is")
        self.plan, self.devices = plan, devices
        self.multi = distributed.spans_processes(devices)
        if self.multi:  # every process must run the same sweep, or the collectives would not match
            distributed.check_devices(devices, plan.where)
            shared_leaves = [np.asarray(x) for x in jax.tree_util.tree_leaves(plan.shared)]
            digest = _fingerprint(dict(plan.parts, lanes_per_device=plan.lanes_per_device,
                                       devices=[str(d) for d in devices]), [plan.seeds, *plan.leaves, *shared_leaves])
            distributed.check_same(digest, "inputs (params, seeds, shared, chunking or devices)", plan.where)
        self.fn, self.rep_sharding, full_sharding, self.bar_holder = _compiled(plan.program, devices,
                                                                                plan.lanes_per_device, progress)
        self.put = distributed.global_array if self.multi else jax.device_put
        self.base = self.put(np.asarray(plan.base_seed, np.uint32), full_sharding)
        self.shared = jax.tree_util.tree_map(lambda x: self.put(np.asarray(x), full_sharding), plan.shared)

    def __call__(self, c: int, bar=None):
        plan, nd, put = self.plan, len(self.devices), self.put
        idx = chunk_rows(plan, c)
        r_seeds = plan.seeds.shape[0]
        # replica j of the chunk goes to device j % nd, row j // nd of its block, so
        # that every device gets the same share and its valid rows come first
        j = np.arange(idx.size)
        pos = (j % nd) * (plan.chunk_size // nd) + j // nd
        rows = np.full(plan.chunk_size, idx[-1])
        rows[pos] = idx
        n_valid = np.array([np.count_nonzero(j % nd == d) for d in range(nd)], np.int32)
        m_idx, r_idx = rows // r_seeds, rows % r_seeds
        p = jax.tree_util.tree_unflatten(plan.treedef, [put(x[m_idx], self.rep_sharding) for x in plan.leaves])
        sd = put(plan.seeds[r_idx], self.rep_sharding)
        nv = put(n_valid, self.rep_sharding)
        self.bar_holder.bar = bar
        try:
            out = self.fn(p, sd, nv, self.base, self.shared)
            res, failed = distributed.gather(out) if self.multi else jax.device_get(out)
            jax.effects_barrier()
        finally:
            self.bar_holder.bar = None
        bad = sorted(set(res) & set(RESERVED_NAMES))
        if bad:
            raise JaxiapInputError(f"{plan.where}: program.result returns reserved names {bad}; rename them")
        return {k: np.asarray(v)[pos] for k, v in res.items()}, np.asarray(failed)[pos]


def run_chunk(plan: SweepPlan, c: int, computer: ChunkComputer, *, run_dir=None, spec: dict | None = None,
              bar=None):
    """Chunk ``c`` of ``plan``: ``(results, failed, loaded)``, loaded from ``run_dir`` or computed and written.

    results: dict of (n, ...) arrays, failed: (n,) bool for the replicas
    :func:`chunk_rows` ``(plan, c)``; loaded: True when read from a finished
    chunk file. spec: :func:`result_spec`; None skips loading (no chunk
    file exists yet). The same numbers whoever runs it (run_program's loop,
    a Dask task): for a given device count and lanes_per_device they do not
    depend on which chunks were computed before. In a multi-process sweep
    process 0 reads and writes the file and the others receive its copy.
    """
    main = not computer.multi or distributed.is_main_process()
    got = None
    if run_dir is not None and spec is not None:
        if main:
            got = load_chunk(plan, run_dir, c, spec)
        if computer.multi:
            got = _share_loaded(got, spec, chunk_rows(plan, c).size)
    if got is not None:
        return got[0], got[1], True
    res, failed = computer(c, bar)
    if run_dir is not None and main:
        save_chunk(plan, run_dir, c, res, failed)
    return res, failed, False


def _share_loaded(got, spec: dict, n: int):
    """Process 0's loaded chunk (or None) in every process of a multi-process sweep."""
    if not bool(distributed.from_main(np.asarray(got is not None))):
        return None
    if got is None:
        got = ({k: np.zeros((n,) + tuple(s.shape), s.dtype) for k, s in spec.items()}, np.zeros(n, bool))
    return distributed.from_main(got)


def collect_chunk(out: dict, out_failed: np.ndarray, n_rep: int, idx, res: dict, failed) -> None:
    """Put a chunk's rows ``idx`` into the flat (n_rep, ...) arrays ``out`` (created as needed) and ``out_failed``."""
    for k, v in res.items():
        if k not in out:
            out[k] = np.empty((n_rep,) + v.shape[1:], v.dtype)
        out[k][idx] = v
    out_failed[idx] = failed


def program_run(plan: SweepPlan, out: dict, out_failed: np.ndarray) -> ProgramRun:
    """The :class:`ProgramRun` of the flat arrays filled by :func:`collect_chunk`."""
    m, r = plan.m_samples, plan.seeds.shape[0]
    shaped = {k: v.reshape((m, r) + v.shape[1:]) for k, v in out.items()}
    return ProgramRun(shaped, out_failed.reshape(m, r), plan.chunk_size, plan.lanes_per_device)


# ---------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------


def run_program(program: Program, params: Any, seeds, shared: Any = None, *, base_seed: int = 0,
                chunk_size: int | None = None, lanes_per_device: int | None = None, devices=None,
                run_dir=None, overwrite: bool = False, progress: bool = True, identity: dict | None = None,
                kind: str | None = None, desc: str | None = None, where: str = "run_program") -> ProgramRun:
    """Run ``program`` for every (params sample m, seed r) pair; returns a :class:`ProgramRun`.

    program: a :class:`~jaxiap.md.program.Program`.
    params: PyTree whose leaves all have leading axis M (samples); replica
        (m, r) gets the slice ``leaf[m]`` of every leaf.
    seeds: (R,) integers in [0, 2**32); replica (m, r) gets the key
        :func:`replica_key` ``(base_seed, seeds[r])``.
    shared: PyTree of arrays passed unchanged to every replica (or None).
    base_seed: int in [0, 2**32).
    chunk_size: replicas per compiled call and per checkpoint file, rounded
        up to a multiple of the device count and spread evenly over the
        devices; the last chunk is padded (padding rows are not simulated).
        None: sized from memory (:func:`jaxiap.md.sizing.choose_chunking`
        with :func:`jaxiap.md.sizing.program_bytes`).
    lanes_per_device: replicas each device advances together (vector
        width). For the same lanes_per_device and device count, results are
        bitwise identical across chunk sizes; another device count may round
        differently (see the module docstring). None: the platform default of
        :data:`jaxiap.md.sizing.LANES_PER_DEVICE`, bounded by memory.
    devices: devices to shard each chunk over (default ``jax.devices()``).
        After :func:`jaxiap.md.distributed.initialize` they may span several
        processes: every process then calls run_program with the same
        inputs, gets the whole result, and only process 0 writes ``run_dir``
        and shows the bar (docs/distributed.md).
    run_dir: None or a folder for ``chunk_XXXXX.npz`` files and
        ``ensemble_meta.json`` (its identity: ``identity``, the params tree
        structure, M, R, base_seed, chunk_size, and a fingerprint of those
        and of the seeds, params and shared bytes). A rerun with the same
        folder loads finished chunks and computes the rest, with the numbers
        of an uninterrupted run. A folder holding other inputs raises
        :class:`JaxiapInputError` unless ``overwrite=True`` (which removes
        the files jaxiap wrote there).
    progress: tqdm bar over replicas on stderr, updated as replicas finish.
    identity: JSON-able dict of what else decides the results (settings,
        the energy function's name, a probe value); it cannot see the code.
    kind: run-folder kind (default ``program.name``); desc: bar label.
    where: how error messages name the caller.
    """
    devices = tuple(devices) if devices is not None else tuple(jax.devices())
    if not devices:
        raise JaxiapInputError(f"{where}: devices is empty; pass None (all of jax.devices()) or a list")
    plan = plan_sweep(program, params, seeds, shared, base_seed=base_seed, chunk_size=chunk_size,
                      lanes_per_device=lanes_per_device, devices=devices, identity=identity,
                      fingerprint=run_dir is not None, where=where)
    computer = ChunkComputer(plan, devices, progress=progress)
    main = not computer.multi or distributed.is_main_process()

    spec = None
    if run_dir is not None:
        extra = dict(n_chunks=plan.n_chunks, lanes_per_device=plan.lanes_per_device, n_devices=len(devices),
                     devices=[str(d) for d in devices])
        if computer.multi:  # process 0 opens the folder; the others learn whether it could
            error = None
            if main:
                try:
                    open_sweep_folder(plan, run_dir, kind=kind, overwrite=overwrite, extra=extra)
                except JaxiapInputError as exc:
                    error = exc
            opened = bool(distributed.from_main(np.asarray(error is None)))
            if error is not None:
                raise error
            if not opened:
                raise JaxiapInputError(f"{where}: process 0 could not open run_dir {os.fspath(run_dir)} "
                                       "(its error says why)")
            spec = result_spec(plan)
        else:
            open_sweep_folder(plan, run_dir, kind=kind, overwrite=overwrite, extra=extra)
            if any(os.path.exists(chunk_path(run_dir, c)) for c in range(plan.n_chunks)):
                spec = result_spec(plan)

    show = bool(progress) and main
    out, out_failed = {}, np.zeros(plan.n_rep, bool)
    bar = tqdm(total=plan.n_rep, desc=desc or plan.program.name, unit="replica", file=sys.stderr, disable=not show,
               dynamic_ncols=True)
    n_done = 0
    try:
        for c in range(plan.n_chunks):
            idx = chunk_rows(plan, c)
            res, failed, _ = run_chunk(plan, c, computer, run_dir=run_dir, spec=spec, bar=bar if show else None)
            collect_chunk(out, out_failed, plan.n_rep, idx, res, failed)
            n_done += idx.size
            bar.n = n_done
            if show:
                info = dict(chunk=f"{c + 1}/{plan.n_chunks}")
                if plan.program.postfix is not None:
                    info.update(plan.program.postfix({k: v[:n_done] for k, v in out.items()}))
                info["failed"] = int(np.sum(out_failed[:n_done]))
                bar.set_postfix(**info, refresh=False)
                bar.refresh()
    finally:
        bar.close()
    if computer.multi:  # nobody leaves before process 0 has written the last chunk
        distributed.barrier("jaxiap.md.runner.run_program")
    return program_run(plan, out, out_failed)
