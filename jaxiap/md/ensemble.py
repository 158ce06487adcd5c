"""First-rearrangement-time (FRT) ensembles: Langevin MD over (coefficient sample, seed).

The engine behind the LJ13 uncertainty-propagation study (docs/science.md
sections 3-5). One *replica* is one Langevin trajectory of a free cluster
under one potential sample ``m`` with one thermostat seed ``r``; a run is the
grid of M x R replicas. The pieces, each in its own module:

* :mod:`jaxiap.md.frt_settings`: :class:`FRTSettings`;
* :mod:`jaxiap.md.frt`: :func:`frt_program`, the
  replica program (reference quench, MD blocks with basin checks, outcome
  codes; the algorithm of docs/science.md section 5.2), with
  :func:`frt_replica_fn` (one replica) and :func:`frt_chunk_fn` (a chunk on
  recycled lanes);
* :mod:`jaxiap.md.runner`: :func:`jaxiap.md.runner.run_program`, which runs
  any replica program: chunks, device sharding, lane recycling, masking of
  blown-up replicas, run folders with resume, progress bar;
* :mod:`jaxiap.md.sizing`: memory sizing (:func:`auto_chunk_size`);
* :mod:`jaxiap.md.frt_result`: :class:`FRTEnsembleResult` and its I/O.

This module holds :func:`run_frt_ensemble`, the FRT driver (input checks,
sizing, run-folder identity, result type), and re-exports the names above.

Randomness: replica (m, r) uses the key
``jax.random.fold_in(jax.random.key(base_seed), seeds[r])``
(:func:`replica_key`), the same for every coefficient sample m (common
random numbers: the same thermostat noise drives every potential sample),
and independent of chunking and device count.

Reproducibility: a replica's numbers depend only on its coefficients,
seed, base_seed, structures and settings, and on the floating-point
round-off of the compiled program. With the same ``lanes_per_device`` and
device count they are bitwise identical whatever the chunk size or which
replicas share a chunk (tested in float64 on CPU). XLA may round differently
for another lane width or for a program partitioned over more devices (we
measured relative differences of ~1e-15 after 4 tau between 1 and 4 faked
CPU devices); MD is chaotic, so such runs drift apart after tens of tau and
then agree only statistically. Float32 (``settings.dtype``) is faster on
GPUs but drifts sooner, and FIRE cannot reach fmax much below 1e-4 in it.

Units: those of ``energy_fn`` (LJ reduced units for the defaults:
energies in epsilon, lengths in sigma, times in tau, mass 1).
"""

from __future__ import annotations

import warnings
from typing import Any, Callable

import jax
import numpy as np

from jaxiap.errors import JaxiapInputError
from jaxiap.md.frt import REPLICA_FIELDS, frt_chunk_fn, frt_program, frt_replica_fn
from jaxiap.md.frt_result import FRTEnsembleResult, load_frt_result
from jaxiap.md.frt_settings import FRTSettings
from jaxiap.md.quench import fire_quench_fn
from jaxiap.md.runner import check_seeds, replica_key, run_program
from jaxiap.md.sizing import auto_chunk_size

__all__ = [
    "FRTSettings",
    "FRTEnsembleResult",
    "REPLICA_FIELDS",
    "frt_program",
    "frt_replica_fn",
    "run_frt_ensemble",
    "load_frt_result",
    "auto_chunk_size",
    "replica_key",
    "fire_quench_fn",
    "frt_chunk_fn",
]

#: version of the FRT run-folder identity (2: chunk files written by jaxiap.md.runner, with a failed mask)
_FORMAT_VERSION = 2


def _fn_name(fn) -> str:
    f = getattr(fn, "func", fn)  # functools.partial
    return f"{getattr(f, '__module__', '?')}.{getattr(f, '__qualname__', type(f).__name__)}"


def _check_inputs(coefficients, seeds, start_positions, reference_positions, dtype):
    leaves, treedef = jax.tree_util.tree_flatten(coefficients)
    if not leaves:
        raise JaxiapInputError(
            "run_frt_ensemble: coefficients has no array leaves; pass an (M, ...) array "
            "(for a fixed potential a dummy such as np.zeros((1, 1)))"
        )
    leaves = [np.asarray(x) for x in leaves]
    ms = {x.shape[0] if x.ndim else None for x in leaves}
    if len(ms) != 1 or None in ms:
        raise JaxiapInputError(
            "run_frt_ensemble: every coefficients leaf needs the same leading axis M "
            f"(coefficient samples); got shapes {[x.shape for x in leaves]}"
        )
    m = ms.pop()
    if m < 1:
        raise JaxiapInputError("run_frt_ensemble: coefficients has M = 0 samples")
    cast = [x.astype(dtype) if np.issubdtype(x.dtype, np.floating) else x for x in leaves]
    for x in cast:
        if np.issubdtype(x.dtype, np.inexact) and not np.all(np.isfinite(x)):
            raise JaxiapInputError("run_frt_ensemble: coefficients contain NaN/inf; drop or fix those samples")

    seeds = check_seeds(seeds, "run_frt_ensemble")

    def pos(x, name):
        x = np.asarray(x, dtype=dtype)
        if x.ndim != 2 or x.shape[1] != 3 or x.shape[0] < 2:
            raise JaxiapInputError(f"run_frt_ensemble: {name} must be (N, 3) with N >= 2, got {x.shape}")
        if not np.all(np.isfinite(x)):
            raise JaxiapInputError(f"run_frt_ensemble: {name} contains NaN/inf")
        return x

    start = pos(start_positions, "start_positions")
    ref = start if reference_positions is None else pos(reference_positions, "reference_positions")
    if ref.shape != start.shape:
        raise JaxiapInputError(
            f"run_frt_ensemble: reference_positions {ref.shape} and start_positions {start.shape} differ in shape"
        )
    return cast, treedef, m, seeds, start, ref


def run_frt_ensemble(
    energy_fn: Callable,
    coefficients: Any,
    seeds,
    start_positions,
    settings: FRTSettings = FRTSettings(),
    *,
    reference_positions=None,
    base_seed: int = 0,
    chunk_size: int | None = None,
    lanes_per_device: int | None = None,
    run_dir=None,
    overwrite: bool = False,
    progress: bool = True,
    devices=None,
) -> FRTEnsembleResult:
    """Run the (M coefficient samples) x (R thermostat seeds) FRT grid.

    energy_fn(coefficients, positions) -> scalar: the potential (units of
        the settings); coefficients is one sample (a leaf slice of the
        stack). For a fixed potential pass e.g. ``np.zeros((1, 1))`` and ignore it.
        For the compile cache to be reused across calls, pass the same
        function object (not a fresh lambda) and the same settings.
    coefficients: PyTree whose leaves all have leading axis M (samples).
        Floating leaves are cast to ``settings.dtype``.
    seeds: (R,) integers in [0, 2**32): thermostat seeds; replica (m, r) uses
        ``fold_in(key(base_seed), seeds[r])`` for every m (common random numbers).
    start_positions: (N, 3) MD start structure (length units).
    settings: :class:`FRTSettings`.
    reference_positions: (N, 3) or None; its quench (under each sample's
        potential) defines the reference basin and E0. None: quench of the start.
    base_seed: int in [0, 2**32), see ``seeds``.
    chunk_size: replicas per compiled call and per checkpoint file (the
        M*R replicas, flattened m-major, are cut into consecutive chunks);
        rounded up to a multiple of the device count; spread evenly over the
        devices. The last chunk is padded (padding rows are not simulated).
        None: :func:`auto_chunk_size`.
    lanes_per_device: trajectories each device advances together (vector
        width; :func:`frt_chunk_fn` recycles finished lanes). For the same
        lanes_per_device and device count results are bitwise identical
        across chunk sizes (another device count may round differently; see
        the module docstring); None takes the platform default of
        :func:`auto_chunk_size` (32 on CPU), which does not depend on the run size.
    run_dir: None or a folder. Each finished chunk is written as
        ``chunk_XXXXX.npz`` with an ``ensemble_meta.json`` (settings and a
        fingerprint of settings, shapes, seeds, coefficient, start and
        reference bytes, chunk size and a probe energy of ``energy_fn``);
        rerunning with the same folder loads finished chunks and computes the
        rest, giving the same numbers as an uninterrupted run. A folder with
        a different fingerprint, or from another run-folder format, raises
        :class:`JaxiapInputError` unless ``overwrite=True``, which removes
        the files jaxiap wrote there (chunks, metadata; others are kept).
        Every file is written atomically; a corrupt chunk is recomputed with
        a warning (:mod:`jaxiap.runfolder`). The code of
        ``energy_fn`` itself is not fingerprinted beyond its name and the
        probe energy.
    progress: tqdm bar over replicas (updated as replicas finish) on stderr.
    devices: devices to shard each chunk's replica axis over (default
        ``jax.devices()``); each device runs its own lanes and queue. Results
        do not depend on the chunk size; across device counts they agree up to
        round-off, which chaotic MD amplifies (see lanes_per_device).

    Returns an :class:`FRTEnsembleResult` with (M, R) arrays.
    """
    if not isinstance(settings, FRTSettings):
        raise JaxiapInputError(f"run_frt_ensemble: settings must be an FRTSettings, got {type(settings).__name__}")
    dtype = np.dtype(settings.dtype)
    if dtype == np.float64 and not jax.config.jax_enable_x64:
        raise JaxiapInputError(
            "run_frt_ensemble: settings.dtype='float64' needs JAX float64 "
            "(import jaxiap without JAXIAP_X64=0, or set jax_enable_x64); or use dtype='float32'"
        )
    if not 0 <= int(base_seed) < 2**32:
        raise JaxiapInputError(f"run_frt_ensemble: base_seed must lie in [0, 2**32), got {base_seed}")
    leaves, treedef, m_samples, seeds, start, ref = _check_inputs(
        coefficients, seeds, start_positions, reference_positions, dtype
    )
    for name, v in (("chunk_size", chunk_size), ("lanes_per_device", lanes_per_device)):
        if v is not None and int(v) < 1:
            raise JaxiapInputError(f"run_frt_ensemble: {name} must be >= 1, got {v}")
    devices = tuple(devices) if devices is not None else tuple(jax.devices())
    n_coef = sum(int(np.prod(x.shape[1:])) for x in leaves)
    auto_cs, lanes_per_device = auto_chunk_size(m_samples * seeds.shape[0], start.shape[0], n_coef,
                                                int(settings.energy_bins[2]), dtype.itemsize, devices,
                                                lanes_per_device)
    coef = jax.tree_util.tree_unflatten(treedef, leaves)
    identity = None
    if run_dir is not None:
        probe = jax.jit(energy_fn)(jax.tree_util.tree_unflatten(treedef, [x[0] for x in leaves]), start)
        identity = dict(format=_FORMAT_VERSION, settings=settings.to_dict(), energy_fn=_fn_name(energy_fn),
                        probe_energy=repr(float(probe)), N=start.shape[0])
    run = run_program(frt_program(energy_fn, settings), coef, seeds, dict(start=start, reference=ref),
                      base_seed=base_seed, chunk_size=auto_cs if chunk_size is None else chunk_size,
                      lanes_per_device=lanes_per_device, devices=devices, run_dir=run_dir, overwrite=overwrite,
                      progress=progress, identity=identity, kind="frt-ensemble", desc="FRT ensemble",
                      where="run_frt_ensemble")
    result = FRTEnsembleResult(
        **{k: run.results[k] for k in REPLICA_FIELDS},
        energy_bin_edges=settings.bin_edges,
        seeds=seeds,
        base_seed=int(base_seed),
        settings=settings,
        chunk_size=run.chunk_size,
        lanes_per_device=run.lanes_per_device,
    )
    n_unc = int(np.sum(result.quench_unconverged))
    if n_unc:
        n_q_total = int(np.sum(result.n_checks))
        warnings.warn(
            f"run_frt_ensemble: {n_unc} of {n_q_total} check quenches did not reach fmax={settings.fmax} "
            f"within quench_max_steps={settings.quench_max_steps} (no event decision was made at those "
            "checks); raise quench_max_steps or fmax if this is frequent",
            RuntimeWarning,
            stacklevel=2,
        )
    return result
