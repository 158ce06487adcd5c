"""Streaming normal equations: Bayesian linear fits without materialising A.

The sufficient statistics ``NormalEquations`` (A^T W A, A^T W y, y^T W y,
N, sum log w; split by energy / force rows) add over disjoint row sets, so a
design of any size is reduced chunk by chunk in O(K^2) memory:

    ne = accumulate(iter_design_chunks(basis, dataset, chunk_size))
    post = solve_blr(ne, prior_precision=1.0, noise_var=1e-4)

Within each chunk the rows are split over devices (a 1-D ``jax.sharding.Mesh``
with axis "rows"); each device reduces its rows and the partial sums are
combined with ``psum``. Results equal the single-device ones up to float64
summation order. The solvers are those of ``jaxiap.inference.linear``
applied to the statistics; the least-squares solver here uses a Cholesky of
A^T W A, so it needs a better-conditioned design than the SVD in
``fit_lstsq`` (scaled condition number of A up to ~ 1e6).

Numerical note: statistics-based quadratic forms (sighat^2, bn, the
evidence) are computed as y^T W y - b^T Lambda^-1 b, which loses
log10(|y|^2 / |r|^2) digits when the fit is very close; in-memory solvers
evaluate them from residuals instead.
"""

from __future__ import annotations

import functools
from typing import Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg as sla
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxiap.errors import JaxiapInputError, SingularSystemError
from jaxiap.inference.linear import fit_blr, fit_nig, log_evidence_blr, log_evidence_nig, select_by_evidence
from jaxiap.inference.stats import (
    _FLAT_FIX,
    NormalEquations,
    _as_stats,
    _checked_cholesky,
    _inv_factor,
    combine,
    stats_arrays,
)
from jaxiap.inference.posterior import GaussianPosterior, StudentTPosterior
from jaxiap.potentials.linear import DesignMatrix, iter_design_chunks

__all__ = [
    "NormalEquations",
    "combine",
    "row_mesh",
    "accumulate",
    "stream_normal_equations",
    "solve_lstsq",
    "solve_blr",
    "solve_nig",
    "log_evidence_blr",
    "log_evidence_nig",
    "select_basis_by_evidence",
]

ROWS = "rows"


def row_mesh(devices=None) -> Mesh:
    """1-D mesh with axis "rows" over ``devices`` (default: all of ``jax.devices()``)."""
    devs = jax.devices() if devices is None else list(devices)
    if not devs:
        raise JaxiapInputError("devices is empty; pass None for all devices or a list of jax devices")
    return Mesh(np.array(devs), (ROWS,), axis_types=(jax.sharding.AxisType.Auto,))


@functools.lru_cache(maxsize=16)
def _sharded_step(mesh: Mesh):
    """jit(total, bad, A, y, w, kind) -> (total + stats of the chunk, bad + its bad rows).

    Memoised per mesh so repeated ``accumulate`` calls reuse the compilation.
    """
    row, mat = P(ROWS), P(ROWS, None)

    def local(A, y, w, kind):
        ne, bad = stats_arrays(A, y, w, kind)
        return jax.lax.psum((ne, bad), ROWS)

    chunk_stats = jax.shard_map(local, mesh=mesh, in_specs=(mat, row, row, row), out_specs=P())

    def step(total, bad, A, y, w, kind):
        ne, b = chunk_stats(A, y, w, kind)
        return combine(total, ne), bad + b

    return jax.jit(step)


def _chunk_arrays(chunk, n_dev: int, mesh: Mesh):
    """Pad a chunk's rows to a multiple of n_dev (weight 0) and shard them over the mesh."""
    if isinstance(chunk, DesignMatrix):
        A, y, w, kind = chunk.A, chunk.y, chunk.w, chunk.kind
    else:
        A, y, w, kind = chunk
    A = jnp.asarray(A, jnp.float64)
    if A.ndim != 2:
        raise JaxiapInputError(f"chunk design matrix A must be 2-D (R, K), got shape {A.shape}")
    r = A.shape[0]
    arrs = [A, jnp.asarray(y, A.dtype), jnp.asarray(w, A.dtype), jnp.asarray(kind, jnp.int32)]
    for name, v in zip(("y", "w", "kind"), arrs[1:]):
        if v.shape != (r,):
            raise JaxiapInputError(f"chunk {name} has shape {v.shape}, expected ({r},) to match A")
    pad = (-r) % n_dev
    if pad:
        arrs = [jnp.pad(v, [(0, pad)] + [(0, 0)] * (v.ndim - 1)) for v in arrs]
    specs = (P(ROWS, None), P(ROWS), P(ROWS), P(ROWS))
    return [jax.device_put(v, NamedSharding(mesh, s)) for v, s in zip(arrs, specs)]


def accumulate(chunks: Iterable, devices=None) -> NormalEquations:
    """Sum NormalEquations over design chunks (DesignMatrix or (A, y, w, kind) tuples).

    Each chunk (R_c, K) is split by rows over ``devices`` (default all of
    ``jax.devices()``); the per-device partial sums are reduced with psum.
    Memory is O(chunk rows x K) at a time. Chunks of equal shape reuse one
    compilation. Raises JaxiapInputError for NaN/inf rows, negative weights or
    unknown row kinds (checked once, after the last chunk, so the stream is not
    synchronised).
    To re-weight, map ``reweight`` over the chunks first.
    """
    mesh = row_mesh(devices)
    n_dev = mesh.devices.size
    step = _sharded_step(mesh)
    total, bad, n_chunks = None, jnp.zeros((), jnp.int64 if jax.config.jax_enable_x64 else jnp.int32), 0
    for chunk in chunks:
        A, y, w, kind = _chunk_arrays(chunk, n_dev, mesh)
        if total is None:
            k = A.shape[1]
            total = NormalEquations(jnp.zeros((2, k, k)), jnp.zeros((2, k)), jnp.zeros(2),
                                    jnp.zeros(2), jnp.zeros(2))
        elif A.shape[1] != total.n_features:
            raise JaxiapInputError(f"chunk {n_chunks} has {A.shape[1]} features, earlier chunks "
                                   f"{total.n_features}; every chunk must come from the same basis")
        total, bad = step(total, bad, A, y, w, kind)
        n_chunks += 1
    if total is None:
        raise JaxiapInputError("accumulate got no chunks; check the dataset is not empty")
    n_bad = int(bad)
    if n_bad:
        raise JaxiapInputError(f"{n_bad} design rows hold NaN/inf, a negative weight or an unknown row kind; "
                               "check the dataset labels, positions and weights (drop rows with NaN) and "
                               "that kind is ENERGY_ROW (0) or FORCE_ROW (1)")
    return jax.device_get(total)


def stream_normal_equations(basis, dataset, chunk_size: int = 256, devices=None) -> NormalEquations:
    """NormalEquations of ``design_matrix(basis, dataset)`` without materialising it."""
    return accumulate(iter_design_chunks(basis, dataset, chunk_size), devices)


def solve_lstsq(ne: NormalEquations, rcond: float = 1e-13) -> GaussianPosterior:
    """Weighted least squares from the statistics (Cholesky of A^T W A).

    Same result as ``fit_lstsq`` (mean, sighat^2 = r^T W r / (N - K), covariance
    sighat^2 (A^T W A)^-1) for well-conditioned designs. Raises
    SingularSystemError for a rank-deficient design (scaled eigenvalue ratio of
    A^T W A below rcond).
    """
    ne, _ = _as_stats(ne)
    t = ne.total()
    n, k = float(t.n_rows), ne.n_features
    if n <= k:
        raise SingularSystemError(f"only {int(n)} weighted rows for {k} coefficients; add data or reduce the basis")
    L = _checked_cholesky(t.AtWA, "the least-squares normal matrix A^T W A",
                          "the design matrix is rank-deficient: " + _FLAT_FIX, rcond)
    c = sla.cho_solve((L, True), t.AtWy)
    noise_var = max(float(t.ytWy - c @ t.AtWy), 0.0) / (n - k)
    return GaussianPosterior(jnp.asarray(c), jnp.asarray(np.sqrt(noise_var) * _inv_factor(L)),
                             jnp.asarray(noise_var), kind="lstsq")


def solve_blr(ne: NormalEquations, prior_precision=None, prior_mean=None, noise_var=1.0) -> GaussianPosterior:
    """Known-noise BLR from statistics; see ``jaxiap.inference.linear.fit_blr``."""
    return fit_blr(ne, prior_precision, prior_mean, noise_var)


def solve_nig(ne: NormalEquations, a0=None, b0=0.0, L0=None, mu0=None) -> StudentTPosterior:
    """Unknown-noise NIG posterior from statistics; see ``jaxiap.inference.linear.fit_nig``."""
    return fit_nig(ne, a0, b0, L0, mu0)


def select_basis_by_evidence(bases: Mapping, dataset, method="type2", chunk_size: int = 256,
                             devices=None, **kwargs):
    """Evidence-based choice among LinearBases {key: basis} for one Dataset.

    Streams each basis's NormalEquations (no full design in memory) and calls
    ``select_by_evidence``; returns (best_key, table).
    """
    cands = {key: (lambda b=b: stream_normal_equations(b, dataset, chunk_size, devices))
             for key, b in bases.items()}
    return select_by_evidence(cands, method=method, **kwargs)
