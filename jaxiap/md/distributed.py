"""Several processes, one sweep: the ``jax.distributed`` helpers of the runner.

:func:`jaxiap.md.runner.run_program` shards each chunk over a 1-D mesh of
``devices``. After :func:`initialize` (``jax.distributed.initialize``)
``jax.devices()`` lists the devices of every process, and a sweep over them
runs as one SPMD program: every process calls ``run_program`` with the same
inputs (host arrays that all processes hold), each computes its own devices'
share of every chunk, the results are gathered to every process, and only
process 0 writes the run folder and shows the progress bar (the others wait
at a barrier). See docs/distributed.md for launch recipes (one process per
GPU, SLURM's ``srun``, CPU collectives over gloo).

The gathers and broadcasts here move bytes only (no arithmetic), so a sweep
over 2 processes of 1 device each gives the numbers of one process with the
same 2 devices, bitwise.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from jaxiap.errors import JaxiapInputError

__all__ = ["initialize", "spans_processes", "is_main_process", "check_devices", "global_array", "gather",
           "from_main", "check_same", "barrier", "ENV_COORDINATOR", "ENV_NUM_PROCESSES", "ENV_PROCESS_ID"]

#: environment variables read by :func:`initialize` when its arguments are None
ENV_COORDINATOR = "JAXIAP_COORDINATOR"
ENV_NUM_PROCESSES = "JAXIAP_NUM_PROCESSES"
ENV_PROCESS_ID = "JAXIAP_PROCESS_ID"


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, local_device_ids=None, cpu_collectives: str | None = "gloo",
               **kwargs) -> None:
    """Join this process to a multi-process JAX job (``jax.distributed.initialize``); call before any JAX work.

    coordinator_address: ``"host:port"`` of process 0 (every process passes
        the same); num_processes: int; process_id: int in [0, num_processes).
        Each None is read from ``JAXIAP_COORDINATOR``,
        ``JAXIAP_NUM_PROCESSES``, ``JAXIAP_PROCESS_ID``; when all three are
        unset too, JAX detects the cluster itself: under SLURM (``srun``),
        Open MPI / MPICH ``mpirun`` or Kubernetes ``jax.distributed.initialize()``
        with no arguments finds the coordinator, the process count and id.
    local_device_ids: the local devices this process uses (e.g. ``[gpu]``
        for one process per GPU); None: all visible ones.
    cpu_collectives: collectives of the CPU backend (``"gloo"`` needs no MPI);
        None leaves JAX's setting. Unused on GPU / TPU.
    kwargs: passed on to ``jax.distributed.initialize``.

    Idempotent: a second call in an initialised process does nothing.
    """
    if jax.distributed.is_initialized():
        return
    env = os.environ
    coordinator_address = coordinator_address or env.get(ENV_COORDINATOR) or None
    try:
        if num_processes is None and env.get(ENV_NUM_PROCESSES):
            num_processes = int(env[ENV_NUM_PROCESSES])
        if process_id is None and env.get(ENV_PROCESS_ID):
            process_id = int(env[ENV_PROCESS_ID])
    except ValueError:
        raise JaxiapInputError(f"initialize: {ENV_NUM_PROCESSES} and {ENV_PROCESS_ID} must be integers, got "
                               f"{env.get(ENV_NUM_PROCESSES)!r} and {env.get(ENV_PROCESS_ID)!r}") from None
    if num_processes is not None and process_id is not None and not 0 <= process_id < num_processes:
        raise JaxiapInputError(f"initialize: process_id must lie in [0, num_processes = {num_processes}), "
                               f"got {process_id}")
    if cpu_collectives is not None:
        jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
    try:
        jax.distributed.initialize(coordinator_address, num_processes, process_id,
                                   local_device_ids=local_device_ids, **kwargs)
    except (ValueError, RuntimeError) as exc:
        raise JaxiapInputError(
            f"initialize: jax.distributed.initialize failed ({type(exc).__name__}: {exc}); outside SLURM / MPI / "
            f"Kubernetes pass coordinator_address='host:port', num_processes and process_id (or set "
            f"{ENV_COORDINATOR}, {ENV_NUM_PROCESSES}, {ENV_PROCESS_ID}), and call it before any JAX work") from exc


def spans_processes(devices) -> bool:
    """True when ``devices`` include a device of another process (a multi-process sweep)."""
    me = jax.process_index()
    return any(d.process_index != me for d in devices)


def is_main_process() -> bool:
    """True in process 0 (the one that writes run folders and shows progress)."""
    return jax.process_index() == 0


def check_devices(devices, where: str = "run_program") -> None:
    """Raise :class:`JaxiapInputError` unless ``devices`` include a device of every process.

    A multi-process sweep gathers its results to every process, so every
    process must take part (and call the runner with the same inputs).
    """
    have = {d.process_index for d in devices}
    missing = sorted(set(range(jax.process_count())) - have)
    if missing:
        raise JaxiapInputError(f"{where}: devices span several processes but include none of process(es) "
                               f"{missing}; pass devices=None (all of jax.devices()) or devices of every process")


def global_array(x, sharding) -> jax.Array:
    """A global ``jax.Array`` with ``sharding`` from the host array ``x`` that every process holds."""
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])


def gather(tree: Any) -> Any:
    """Every leaf (a global ``jax.Array``) as one numpy array in every process (bytes only, exact)."""
    return multihost_utils.process_allgather(tree, tiled=True)


def from_main(tree: Any) -> Any:
    """Process 0's values of ``tree`` (numpy leaves of the same shapes in every process), in every process.

    Exact (an all-gather, not a sum: ``-0.0`` and NaN payloads survive).
    """
    stacked = multihost_utils.process_allgather(tree, tiled=False)
    return jax.tree_util.tree_map(lambda a: np.asarray(a[0]), stacked)


def check_same(digest: str, what: str, where: str = "run_program") -> None:
    """Raise :class:`JaxiapInputError` in every process unless all pass the same hex ``digest`` of ``what``."""
    mine = np.frombuffer(bytes.fromhex(digest), np.uint8)
    every = np.asarray(multihost_utils.process_allgather(mine, tiled=False))
    differ = [p for p in range(every.shape[0]) if not np.array_equal(every[p], every[0])]
    if differ:
        raise JaxiapInputError(f"{where}: process(es) {differ} were given other {what} than process 0; every "
                               "process of a multi-process sweep must call it with the same inputs")


def barrier(name: str) -> None:
    """Wait until every process reaches the barrier ``name`` (``sync_global_devices``)."""
    multihost_utils.sync_global_devices(name)
