"""Memory sizing of ensemble runs: lanes per device and replicas per chunk.

A *lane* is one replica being advanced (its working set lives on the device
while it runs); a *chunk* is the queue of replicas one compiled call
processes and one checkpoint file holds (their parameters, prepared data and
result rows stay on the device for the whole call). Both are bounded by a
fraction of the free memory of the first device: accelerator
``memory_stats`` on GPU/TPU, host RAM (psutil, /proc/meminfo, sysconf) on CPU.
When the devices span several processes, process 0's figure holds for all.
"""

from __future__ import annotations

import os

import jax
import numpy as np

from jaxiap.md import distributed

__all__ = ["LANES_PER_DEVICE", "REPLICAS_PER_LANE", "choose_chunking", "program_bytes", "auto_chunk_size"]

#: Default lanes (concurrent trajectories) per device. On CPU, LJ13 lanes
#: scale well up to a few dozen per core; accelerators want wide batches.
LANES_PER_DEVICE = {"cpu": 32, "gpu": 4096, "tpu": 4096}

#: Default replicas queued per lane in one chunk: more means a smaller share
#: of the chunk's tail (the wait for its slowest replicas), fewer means finer
#: resume granularity.
REPLICAS_PER_LANE = 16


def _available_bytes(device) -> int:
    """Free memory for ``device``: accelerator memory_stats, else host RAM."""
    if device.platform != "cpu":
        try:
            st = device.memory_stats() or {}
            if "bytes_limit" in st:
                return int(st["bytes_limit"]) - int(st.get("bytes_in_use", 0))
        except Exception:  # memory_stats is optional for a backend
            pass
    try:
        import psutil  # lazy: psutil is optional (else /proc/meminfo)

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 2**31


def _free_bytes(devices) -> int:
    """Free memory of the first device. Devices of several processes (:mod:`jaxiap.md.distributed`):
    process 0's figure for its own first device, in every process, so that all size alike."""
    if not distributed.spans_processes(devices):
        return _available_bytes(devices[0])
    local = [d for d in devices if d.process_index == jax.process_index()] or list(devices[:1])
    return int(distributed.from_main(np.asarray(_available_bytes(local[0]), np.int64)))


def choose_chunking(n_replicas: int, lane_bytes: int, replica_bytes: int, devices=None,
                    lanes_per_device: int | None = None, memory_fraction: float = 0.25) -> tuple[int, int]:
    """Choose (chunk_size, lanes_per_device) from per-lane and per-replica byte estimates.

    lanes_per_device (unless given): :data:`LANES_PER_DEVICE` for the
    platform, bounded by half of ``memory_fraction`` of the free memory over
    ``lane_bytes``. It does not depend on n_replicas, so runs of any size
    share one lane width (and bitwise results).
    chunk_size (summed over devices, a multiple of the device count): up to
    :data:`REPLICAS_PER_LANE` replicas per lane, bounded by the other half of
    the memory over ``replica_bytes``, spread evenly over the needed number
    of chunks so that the last chunk needs little padding.
    """
    devices = list(devices) if devices is not None else jax.devices()
    nd = len(devices)
    free = memory_fraction * _free_bytes(devices)
    if lanes_per_device is None:
        by_mem = int(free // 2 // lane_bytes)
        lanes_per_device = max(1, min(by_mem, LANES_PER_DEVICE.get(devices[0].platform, 4096)))
    lanes_per_device = int(lanes_per_device)
    per_dev_needed = -(-int(n_replicas) // nd)
    by_mem = int(free // 2 // replica_bytes)
    cap = max(1, min(by_mem, REPLICAS_PER_LANE * lanes_per_device))
    n_chunks = -(-per_dev_needed // cap)
    per_dev = -(-per_dev_needed // n_chunks)
    return per_dev * nd, lanes_per_device


def _nbytes(tree) -> int:
    return int(sum(np.prod(a.shape, dtype=np.int64) * np.dtype(a.dtype).itemsize
                   for a in jax.tree_util.tree_leaves(tree) if hasattr(a, "dtype")
                   and not jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key)))


def program_bytes(program, params_row, shared) -> tuple[int, int]:
    """Rough (lane_bytes, replica_bytes) of a :class:`~jaxiap.md.program.Program` from its shapes.

    ``jax.eval_shape`` of prepare / init / result (nothing runs). A lane is
    counted as 16 copies of its carry (step temporaries are unknown) plus
    its parameters; a queued replica as its parameters, prepared data and
    result row. Programs with large step temporaries (pair arrays) should
    pass chunk_size / lanes_per_device to the runner instead.
    """
    key = jax.random.key(0)
    prep = jax.eval_shape(program.prepare, params_row, shared) if program.prepare is not None else None
    carry = jax.eval_shape(program.init, params_row, key, prep, shared)
    res = jax.eval_shape(program.result, carry)
    p = _nbytes(params_row)
    return 16 * _nbytes(carry) + p + 4096, p + _nbytes(prep) + _nbytes(res) + 256


def _per_lane_bytes(n_atoms: int, n_coef: int, nbins: int, itemsize: int) -> int:
    """Rough working-set estimate of one running FRT lane (bytes).

    Counts ~40 (N, 3) arrays (MD and FIRE states, forces, temporaries), ~16
    (N, N) pair arrays (distances, masks, their gradients), 4 copies of the
    coefficients and the histogram; deliberately generous because
    ``energy_fn`` temporaries are unknown.
    """
    return int(itemsize * (40 * 3 * n_atoms + 16 * n_atoms * n_atoms + 4 * n_coef) + 8 * nbins + 4096)


def _per_replica_bytes(n_atoms: int, n_coef: int, nbins: int, itemsize: int) -> int:
    """Bytes of one queued FRT replica: its coefficients, reference basin and output row."""
    return int(itemsize * (2 * n_coef + 4 * n_atoms * 3 + 16) + n_atoms * n_atoms + 4 * nbins + 256)


def auto_chunk_size(n_replicas: int, n_atoms: int, n_coef: int = 1, nbins: int = 200,
                    itemsize: int = 8, devices=None, lanes_per_device: int | None = None,
                    memory_fraction: float = 0.25) -> tuple[int, int]:
    """Choose (chunk_size, lanes_per_device) of an FRT ensemble (:func:`choose_chunking`).

    n_atoms: atoms of the cluster; n_coef: coefficients per sample; nbins:
    energy-histogram bins; itemsize: bytes per float (8 for float64).
    Lane and replica bytes are :func:`_per_lane_bytes` and
    :func:`_per_replica_bytes`.
    """
    return choose_chunking(n_replicas, _per_lane_bytes(n_atoms, n_coef, nbins, itemsize),
                           _per_replica_bytes(n_atoms, n_coef, nbins, itemsize), devices,
                           lanes_per_device, memory_fraction)
