"""Sweep chunks as Dask tasks: :func:`run_program_dask`, one chunk of a run_program sweep per task.

The grid, chunking, keys and run-folder identity are those of
:func:`jaxiap.md.runner.run_program`: each task computes ONE chunk with
:func:`jaxiap.md.runner.run_chunk` on its worker's devices and writes
``chunk_XXXXX.npz`` atomically into the run folder, which the driver and
every worker must see (a shared filesystem). The driver waits for the tasks
and merges the chunk files into the :class:`~jaxiap.md.runner.ProgramRun`
that run_program returns. A task first loads its chunk when the file is
already finished (idempotent), so a rerun, a retried task or a task that Dask
reschedules after its worker died computes nothing twice, and
``run_program`` on the same folder afterwards loads every chunk.

For the same lanes_per_device and devices per worker, the numbers are
bitwise those of a serial ``run_program`` on that many devices (see
:mod:`jaxiap.md.runner` for what changes with the device count).

Dask is an optional dependency (``pip install "jaxiap[distributed]"``); it
is imported when :func:`run_program_dask` is called. Cluster recipes
(``LocalCluster``, ``dask_jobqueue.SLURMCluster`` / ``PBSCluster``) are in
docs/distributed.md.
"""

from __future__ import annotations

import hashlib
import os
import sys
from typing import Any, Callable

import jax
import numpy as np
from tqdm.auto import tqdm

from jaxiap import runfolder
from jaxiap.errors import JaxiapInputError
from jaxiap.md.program import Program, check_program
from jaxiap.md.runner import (CHUNK_FMT, ChunkComputer, ProgramRun, chunk_path, chunk_rows, collect_chunk,
                              load_chunk, open_sweep_folder, plan_sweep, program_run, result_spec, run_chunk)

__all__ = ["run_program_dask"]

_INSTALL = 'install Dask with pip install "jaxiap[distributed]" (dask[distributed])'


def _resolve_program(program, where: str) -> Program:
    if isinstance(program, Program):
        return program
    if callable(program):
        return check_program(program(), f"{where} (the program factory's return value)")
    raise JaxiapInputError(f"{where}: program must be a jaxiap.md.program.Program or a picklable zero-argument "
                           f"function returning one (e.g. functools.partial(frt_program, energy_fn, settings)), "
                           f"got {type(program).__name__}")


def run_program_dask(program: Program | Callable[[], Program], params: Any, seeds, shared: Any = None, *, client,
                     run_dir, chunk_size: int, lanes_per_device: int, devices_per_worker: int = 1,
                     base_seed: int = 0, overwrite: bool = False, identity: dict | None = None,
                     kind: str | None = None, retries: int = 1, progress: bool = True, desc: str | None = None,
                     where: str = "run_program_dask") -> ProgramRun:
    """Run ``program`` over the (M samples) x (R seeds) grid with one Dask task per chunk; a :class:`ProgramRun`.

    program: a :class:`~jaxiap.md.program.Program`, or a picklable
        zero-argument function returning one, called in each task (e.g.
        ``functools.partial(frt_program, energy_fn, settings)`` with a
        module-level ``energy_fn``: it pickles by reference, and equal
        programs share one compiled program per worker). A Program itself
        is sent with cloudpickle (its closures by value).
    params, seeds, shared, base_seed, identity, kind, desc: as in
        :func:`jaxiap.md.runner.run_program` (params (M, ...) leaves, seeds
        (R,)); every task receives a copy of params, seeds and shared.
    client: a ``distributed.Client`` of the cluster (``LocalCluster``,
        ``dask_jobqueue.SLURMCluster``, ...).
    run_dir: the run folder, on a filesystem shared by this process and
        every worker (required: the tasks write their chunks there).
    chunk_size: replicas per task and per chunk file (rounded up to a
        multiple of devices_per_worker); its identity is that of
        run_program with the same chunk_size.
    lanes_per_device: lanes each device advances together (required: the
        driver cannot size the workers' memory).
    devices_per_worker: devices of each worker a task shards its chunk
        over (the first ones of its ``jax.local_devices()``).
    overwrite: as in run_program (removes the files jaxiap wrote in run_dir).
    retries: times Dask reruns a task that raised. A task whose worker
        died is rescheduled on another worker without counting as a retry,
        up to the scheduler's ``distributed.scheduler.allowed-failures``
        (default 3) deaths.
    progress: tqdm bar over replicas on stderr, updated as chunks finish.

    Finished chunk files are loaded, not recomputed; a failed task leaves the
    other finished chunks in run_dir, so a rerun computes only the rest.
    """
    try:
        import cloudpickle  # lazy: a dependency of dask[distributed], an optional extra
        from distributed import Client, as_completed  # lazy: Dask is an optional extra
    except ImportError:
        raise JaxiapInputError(f"{where}: Dask distributed is not installed; {_INSTALL}") from None
    if not isinstance(client, Client):
        raise JaxiapInputError(f"{where}: client must be a distributed.Client, got {type(client).__name__}; e.g. "
                               "client = distributed.Client(distributed.LocalCluster(n_workers=2, "
                               "threads_per_worker=1))")
    if run_dir is None:
        raise JaxiapInputError(f"{where}: run_dir is required (the tasks write their chunks there); pass a folder "
                               "on a filesystem that this process and every worker see")
    for name, v in (("chunk_size", chunk_size), ("lanes_per_device", lanes_per_device),
                    ("devices_per_worker", devices_per_worker)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise JaxiapInputError(f"{where}: {name} must be an int >= 1, got {v!r}")
    if isinstance(retries, bool) or not isinstance(retries, (int, np.integer)) or retries < 0:
        raise JaxiapInputError(f"{where}: retries must be an int >= 0, got {retries!r}")
    prog = _resolve_program(program, where)
    try:
        cloudpickle.dumps(program)
    except Exception as exc:
        raise JaxiapInputError(
            f"{where}: program cannot be pickled for the Dask workers ({type(exc).__name__}: {exc}); pass a "
            "picklable factory instead, e.g. functools.partial(frt_program, energy_fn, settings) with a "
            "module-level energy_fn") from None

    plan = plan_sweep(prog, params, seeds, shared, base_seed=base_seed, chunk_size=chunk_size,
                      lanes_per_device=lanes_per_device, devices=int(devices_per_worker), identity=identity,
                      fingerprint=True, where=where)
    run_dir = os.path.abspath(os.fspath(run_dir))  # the workers' working folders may differ from ours
    extra = dict(n_chunks=plan.n_chunks, lanes_per_device=plan.lanes_per_device,
                 n_devices=int(devices_per_worker), devices=[f"dask {client.scheduler.address}"])
    open_sweep_folder(plan, run_dir, kind=kind, overwrite=overwrite, extra=extra)
    # listed up front: tasks writing at once would otherwise each rewrite the manifest
    runfolder.register_names(run_dir, [CHUNK_FMT.format(c) for c in range(plan.n_chunks)])
    spec = result_spec(plan)
    done = {}
    for c in range(plan.n_chunks):
        if os.path.exists(chunk_path(run_dir, c)):
            got = load_chunk(plan, run_dir, c, spec)
            if got is not None:
                done[c] = got

    params = jax.tree_util.tree_unflatten(plan.treedef, plan.leaves)
    args = (program, params, plan.seeds, shared, plan.base_seed, plan.chunk_size, plan.lanes_per_device,
            int(devices_per_worker), identity, plan.fingerprint, bool(jax.config.jax_enable_x64), run_dir, where)
    # task keys name the sweep and the folder: the same sweep into two folders is two sets of tasks
    tag = hashlib.sha256(f"{plan.fingerprint} {run_dir}".encode()).hexdigest()[:16]
    futures = [client.submit(_chunk_task, *args, c, key=f"jaxiap-chunk-{tag}-{c:05d}", retries=int(retries))
               for c in range(plan.n_chunks) if c not in done]
    bar = tqdm(total=plan.n_rep, initial=sum(chunk_rows(plan, c).size for c in done), desc=desc or prog.name,
               unit="replica", file=sys.stderr, disable=not progress, dynamic_ncols=True)
    n_finished = len(done)
    try:
        for fut in as_completed(futures):
            c = fut.result()
            n_finished += 1
            bar.set_postfix(chunks=f"{n_finished}/{plan.n_chunks}", refresh=False)
            bar.update(chunk_rows(plan, c).size)
    except BaseException as exc:
        client.cancel(futures)
        if isinstance(exc, Exception):
            exc.add_note(f"{where}: a chunk task failed; the finished chunks are kept in {run_dir}, so a rerun "
                         "computes only the rest")
        raise
    finally:
        bar.close()

    out, out_failed = {}, np.zeros(plan.n_rep, bool)
    for c in range(plan.n_chunks):
        got = done.get(c) or load_chunk(plan, run_dir, c, spec)
        if got is None:
            raise JaxiapInputError(
                f"{where}: {chunk_path(run_dir, c)}, written by a Dask worker, is missing or unreadable here; "
                "run_dir must be on a filesystem shared by this process and every worker")
        collect_chunk(out, out_failed, plan.n_rep, chunk_rows(plan, c), *got)
    return program_run(plan, out, out_failed)


_COMPUTERS: dict = {}


def _chunk_task(program, params, seeds, shared, base_seed, chunk_size, lanes_per_device, n_devices, identity,
                fingerprint, x64, run_dir, where, c):
    """One Dask task: chunk ``c`` loaded or computed on this worker's devices and written to run_dir; returns c."""
    if bool(jax.config.jax_enable_x64) != x64:
        raise JaxiapInputError(f"{where}: JAX float64 is {'off' if x64 else 'on'} on this Dask worker but "
                               f"{'on' if x64 else 'off'} in the driver; set JAXIAP_X64 alike for both")
    prog = _resolve_program(program, where)
    plan = plan_sweep(prog, params, seeds, shared, base_seed=base_seed, chunk_size=chunk_size,
                      lanes_per_device=lanes_per_device, devices=n_devices, identity=identity, fingerprint=True,
                      where=where)
    if plan.fingerprint != fingerprint:
        raise JaxiapInputError(f"{where}: a Dask worker sees other inputs than the driver (fingerprint "
                               f"{plan.fingerprint} != {fingerprint}); install the same jaxiap, JAX and numpy on "
                               "the workers, with float64 enabled")
    devices = tuple(jax.local_devices()[:n_devices])
    if len(devices) < n_devices:
        raise JaxiapInputError(f"{where}: devices_per_worker={n_devices} but this worker has {len(devices)} "
                               "local devices; lower devices_per_worker or give each worker more devices")
    if prog.cache_key is None:  # compiled afresh, as the Program says
        computer, spec = ChunkComputer(plan, devices, progress=False), result_spec(plan)
    else:  # one per sweep and worker process: the compiled program, device copies of shared, result shapes
        key = (fingerprint, prog.cache_key, devices)
        if key not in _COMPUTERS:
            _COMPUTERS.clear()
            _COMPUTERS[key] = ChunkComputer(plan, devices, progress=False), result_spec(plan)
        computer, spec = _COMPUTERS[key]
    run_chunk(plan, c, computer, run_dir=run_dir, spec=spec)
    return c
