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
from jaxiap.md.lanes import lane_chunk_fn
from jaxiap.md.program import Program, check_program
from jaxiap.md.sizing import choose_chunking, program_bytes

__all__ = ["replica_key", "run_program", "ProgramRun", "RESERVED_NAMES", "META_NAME", "CHUNK_FMT"]

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


def _compiled(program: Program, devices: tuple, lanes_per_device: int):
    """(jit(shard_map(chunk)), replica sharding, replicated sharding, progress holder), cached by cache_key."""
    cache_key = None if program.cache_key is None else (program.cache_key, devices, lanes_per_device)
    if cache_key in _COMPILED:
        return _COMPILED[cache_key]
    progress = _Progress()
    chunk = lane_chunk_fn(program, lanes_per_device, progress_fn=progress)
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
        warnings.warn(f"{where}: {exc}; recomputing that chunk", RuntimeWarning, stacklevel=4)
        return None


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
    program = check_program(program, where)
    leaves, treedef, m_samples = _check_params(params)
    seeds = check_seeds(seeds, where)
    if not 0 <= int(base_seed) < 2**32:
        raise JaxiapInputError(f"{where}: base_seed must lie in [0, 2**32), got {base_seed}")
    for name, v in (("chunk_size", chunk_size), ("lanes_per_device", lanes_per_device)):
        if v is not None and int(v) < 1:
            raise JaxiapInputError(f"{where}: {name} must be >= 1 (or None for automatic), got {v}")
    devices = tuple(devices) if devices is not None else tuple(jax.devices())
    if not devices:
        raise JaxiapInputError(f"{where}: devices is empty; pass None (all of jax.devices()) or a list")
    nd = len(devices)
    r_seeds = seeds.shape[0]
    n_rep = m_samples * r_seeds
    if chunk_size is None or lanes_per_device is None:
        row = jax.tree_util.tree_unflatten(treedef, [x[0] for x in leaves])
        auto_cs, lanes_per_device = choose_chunking(n_rep, *program_bytes(program, row, shared), devices,
                                                    lanes_per_device)
    chunk_size = auto_cs if chunk_size is None else -(-int(chunk_size) // nd) * nd
    lanes_per_device = int(lanes_per_device)
    n_chunks = -(-n_rep // chunk_size)
    c_dev = chunk_size // nd
    shared_leaves = [np.asarray(x) for x in jax.tree_util.tree_leaves(shared)]

    fn, rep_sharding, full_sharding, bar_holder = _compiled(program, devices, lanes_per_device)

    fingerprint = spec = None
    if run_dir is not None:
        run_dir = os.fspath(run_dir)
        parts = dict(identity or {}, runner_format=_RUNNER_FORMAT, treedef=str(treedef), M=m_samples,
                     R=r_seeds, base_seed=int(base_seed), chunk_size=chunk_size)
        fingerprint = _fingerprint(parts, [seeds, *leaves, *shared_leaves])
        extra = dict(n_chunks=n_chunks, lanes_per_device=lanes_per_device, n_devices=nd,
                     devices=[str(d) for d in devices])
        runfolder.open_run_folder(run_dir, dict(parts, fingerprint=fingerprint), kind=kind or program.name,
                                  overwrite=overwrite, meta_name=META_NAME, extra=extra, option="run_dir")
        if any(os.path.exists(os.path.join(run_dir, CHUNK_FMT.format(c))) for c in range(n_chunks)):
            spec = _result_spec(program, leaves, treedef, shared)

    base = jax.device_put(np.asarray(base_seed, np.uint32), full_sharding)
    shared_d = jax.tree_util.tree_map(lambda x: jax.device_put(np.asarray(x), full_sharding), shared)
    out, out_failed = {}, np.zeros(n_rep, bool)
    bar = tqdm(total=n_rep, desc=desc or program.name, unit="replica", file=sys.stderr, disable=not progress,
               dynamic_ncols=True)
    n_done = 0
    try:
        for c in range(n_chunks):
            idx = np.arange(c * chunk_size, min((c + 1) * chunk_size, n_rep))
            path = os.path.join(run_dir, CHUNK_FMT.format(c)) if run_dir is not None else None
            got = _load_chunk(path, fingerprint, idx, spec, where) if spec is not None else None
            if got is None:
                # replica j of the chunk goes to device j % nd, row j // nd of its block, so
                # that every device gets the same share and its valid rows come first
                j = np.arange(idx.size)
                pos = (j % nd) * c_dev + j // nd
                rows = np.full(chunk_size, idx[-1])
                rows[pos] = idx
                n_valid = np.array([np.count_nonzero(j % nd == d) for d in range(nd)], np.int32)
                m_idx, r_idx = rows // r_seeds, rows % r_seeds
                p = jax.tree_util.tree_unflatten(treedef, [jax.device_put(x[m_idx], rep_sharding) for x in leaves])
                sd = jax.device_put(seeds[r_idx], rep_sharding)
                nv = jax.device_put(n_valid, rep_sharding)
                bar_holder.bar = bar if progress else None
                try:
                    res, failed = jax.device_get(fn(p, sd, nv, base, shared_d))
                    jax.effects_barrier()
                finally:
                    bar_holder.bar = None
                bad = sorted(set(res) & set(RESERVED_NAMES))
                if bad:
                    raise JaxiapInputError(f"{where}: program.result returns reserved names {bad}; rename them")
                res = {k: np.asarray(v)[pos] for k, v in res.items()}
                failed = np.asarray(failed)[pos]
                if path is not None:
                    runfolder.savez(path, **res, failed=failed, replica_index=idx,
                                    fingerprint=np.asarray(fingerprint))
                got = res, failed
            res, failed = got
            for k, v in res.items():
                if k not in out:
                    out[k] = np.empty((n_rep,) + v.shape[1:], v.dtype)
                out[k][idx] = v
            out_failed[idx] = failed
            n_done += idx.size
            bar.n = n_done
            if progress:
                info = dict(chunk=f"{c + 1}/{n_chunks}")
                if program.postfix is not None:
                    info.update(program.postfix({k: v[:n_done] for k, v in out.items()}))
                info["failed"] = int(np.sum(out_failed[:n_done]))
                bar.set_postfix(**info, refresh=False)
                bar.refresh()
    finally:
        bar.close()

    shaped = {k: v.reshape((m_samples, r_seeds) + v.shape[1:]) for k, v in out.items()}
    return ProgramRun(shaped, out_failed.reshape(m_samples, r_seeds), chunk_size, lanes_per_device)
