"""Streaming normal equations: Bayesian linear fits without materialising A.

The sufficient statistics ``NormalEquations`` (A^T W A, A^T W y, y^T W y,
N, sum log w; split by energy / force rows) add over disjoint row sets, so a
design of any size is reduced chunk by chunk in O(K^2) memory:

    ne = accumulate(iter_design_chunks(basis, dataset, chunk_size))
    post = solve_blr(ne, prior_precision=1.0, noise_var=1e-4)

Chunks (host numpy or device arrays, any row counts) are cut into blocks of
one fixed shape (the first chunk's rows; a short chunk is padded with
zero-weight rows, a long one split), so the reduction step compiles once per
stream; at most ``max_in_flight`` blocks are queued ahead of the one being
reduced, so memory stays O(block rows x K) however fast the chunks come.
Within each block the rows are split over devices (a 1-D ``jax.sharding.Mesh``
with axis "rows"); each device reduces its rows and the partial sums are
combined with ``psum``. Results equal the single-device ones up to float64
summation order. A^T W A is the dominant cost (2 R K^2 FLOPs): it is made by
float64 matmuls per row kind: by XLA, or, for wide designs on one CPU device,
by numpy on the host (BLAS syrk; see ``accumulate``). The solvers are those of
``jaxiap.inference.linear`` applied to the statistics; the least-squares solver here uses a Cholesky of
A^T W A, so it needs a better-conditioned design than the SVD in
``fit_lstsq`` (scaled condition number of A up to ~ 1e6).

Numerical note: statistics-based quadratic forms (sighat^2, bn, the
evidence) are computed as y^T W y - b^T Lambda^-1 b, which loses
log10(|y|^2 / |r|^2) digits when the fit is very close; in-memory solvers
evaluate them from residuals instead.
"""

from __future__ import annotations

import collections
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
)
from jaxiap.inference.posterior import GaussianPosterior, StudentTPosterior
from jaxiap.potentials.linear import ENERGY_ROW, FORCE_ROW, DesignMatrix, iter_design_chunks

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


_HI = jax.lax.Precision.HIGHEST
_SORT_MIN_FEATURES = 64  # from here on the Gram matrix costs more than sorting the rows by kind
# On one CPU device, from this many features on, blocks are reduced on the host in numpy, A^T W A per kind
# as X^T X with X = sqrt(w) A (numpy calls BLAS syrk). Measured on the 2-core development machine (load 1.5-3,
# 4 blocks, median of 3): K = 100 x 50,000 rows XLA 400 ms, host numpy 220 ms; K = 1000 x 5,000 rows XLA
# ~950 ms, host numpy 420 ms (XLA's float64 CPU matmul ran at ~40 % of OpenBLAS dgemm, and syrk does half
# the FLOPs); K = 12 level (~25-35 ms). A host callback from inside the XLA step ran the same numpy code 2x
# slower (XLA's worker threads compete with BLAS's), so the host path bypasses XLA altogether.
_HOST_GRAM_MIN_FEATURES = 32
_SUB_BLOCKS = 8  # row sub-blocks per device block when sorting (at most one of them holds both kinds)
_SUB_MIN_ROWS = 512
_COL_BLOCK = 256  # column block of the symmetric Gram product (upper block triangle only)
_STEP_TRACES = 0  # traces (= compilations) of the chunk step in this process; a trace-time side effect


def _gram(A, w, col_blocks: int):
    """(A * w)^T A in float64 (HIGHEST precision), as one matmul or, for wide A, by its upper block triangle.

    With col_blocks = b > 1 the K columns are cut into b blocks and only the b (b + 1) / 2 blocks
    on and above the diagonal are multiplied (the rest mirrored): (b + 1) / (2 b) of the FLOPs, the
    symmetric rank-k update that XLA has no primitive for.
    """
    Aw = A * w[:, None]
    if col_blocks <= 1:
        return jnp.dot(Aw.T, A, precision=_HI)
    edges = np.linspace(0, A.shape[1], col_blocks + 1).astype(int)
    cols = [slice(int(lo), int(hi)) for lo, hi in zip(edges[:-1], edges[1:])]
    blk = {(i, j): jnp.dot(Aw[:, ci].T, A[:, cj], precision=_HI)
           for i, ci in enumerate(cols) for j, cj in enumerate(cols) if j >= i}
    return jnp.concatenate([jnp.concatenate([blk[i, j] if j >= i else blk[j, i].T for j in range(len(cols))], axis=1)
                            for i in range(len(cols))], axis=0)


def _host_block_stats(A, y, w, kind) -> tuple[NormalEquations, int]:
    """``_block_stats`` in numpy on the host (any number of rows); A^T W A per kind by BLAS syrk."""
    finite = np.isfinite(A).all(axis=1) & np.isfinite(y) & np.isfinite(w)
    bad = ~finite | (w < 0) | ((kind != ENERGY_ROW) & (kind != FORCE_ROW))
    pos = (w > 0) & ~bad
    k = A.shape[1]
    out = NormalEquations(np.zeros((2, k, k)), np.zeros((2, k)), np.zeros(2), np.zeros(2), np.zeros(2))
    for g in (ENERGY_ROW, FORCE_ROW):
        rows = np.flatnonzero(pos & (kind == g))
        if rows.size == 0:
            continue
        wg, yg = w[rows], y[rows]
        X = A[rows]
        out.AtWy[g] = (wg * yg) @ X
        X *= np.sqrt(wg)[:, None]
        out.AtWA[g] = X.T @ X  # numpy calls syrk for a product of an array with its own transpose
        out.ytWy[g] = wg @ (yg * yg)
        out.n_rows[g] = rows.size
        out.sum_log_w[g] = np.log(wg).sum()
    return out, int(bad.sum())


def _block_stats(A, y, w, kind, n_sub: int, col_blocks: int):
    """NormalEquations (and the count of bad rows) of one fixed-shape block of rows; pure JAX.

    The same statistics as ``stats_arrays``. A^T W A per row kind: with n_sub = 1 two weighted
    matmuls over all rows (each row multiplies by a zero weight in one of them); with n_sub > 1 the
    rows are first sorted by kind (energy, force, zero weight) and cut into n_sub sub-blocks, each a
    matmul into its kind's sum (all-zero-weight sub-blocks are skipped, at most one sub-block holds
    both kinds), i.e. about 2 R K^2 FLOPs instead of 4 R K^2.
    """
    finite = jnp.all(jnp.isfinite(A), axis=1) & jnp.isfinite(y) & jnp.isfinite(w)
    bad = ~finite | (w < 0) | ((kind != ENERGY_ROW) & (kind != FORCE_ROW))
    pos = (w > 0) & ~bad
    A0 = jnp.where(bad[:, None], 0.0, A)
    y0 = jnp.where(bad, 0.0, y)
    wk = jnp.stack([jnp.where(pos & (kind == g), w, 0.0) for g in (ENERGY_ROW, FORCE_ROW)]).astype(A.dtype)
    AtWy = jnp.dot(wk * y0[None], A0, precision=_HI)
    ytWy = jnp.dot(wk, y0 * y0, precision=_HI)
    used = wk > 0
    n_rows = jnp.sum(used, axis=1).astype(A.dtype)
    sum_log_w = jnp.sum(jnp.where(used, jnp.log(jnp.where(used, wk, 1.0)), 0.0), axis=1)
    k = A.shape[1]
    if n_sub <= 1:
        AtWA = jnp.stack([_gram(A0, wk[g], col_blocks) for g in range(2)])
    else:
        order = jnp.argsort(jnp.where(used[0], 0, jnp.where(used[1], 1, 2)), stable=True)
        subs = (A0[order].reshape(n_sub, -1, k), wk[:, order].reshape(2, n_sub, -1).transpose(1, 0, 2))

        def add(G, sub):
            Ab, wb = sub
            G = tuple(jax.lax.cond(jnp.any(wb[g] > 0), lambda x: x + _gram(Ab, wb[g], col_blocks), lambda x: x, G[g])
                      for g in range(2))
            return G, None

        zeros = jnp.zeros((k, k), A.dtype)
        AtWA = jnp.stack(jax.lax.scan(add, (zeros, zeros), subs)[0])
    return NormalEquations(AtWA, AtWy, ytWy, n_rows, sum_log_w), jnp.sum(bad)


def _layout(rows: int, k: int, mesh: Mesh) -> tuple[int, int, int, bool]:
    """(block rows, row sub-blocks, column blocks, host Gram) of the fixed block shape for ``rows``-row chunks."""
    n_dev = mesh.devices.size
    per_dev = -(-rows // n_dev)
    # one CPU device only: with several, XLA splits the rows over them
    host = n_dev == 1 and mesh.devices.flat[0].platform == "cpu" and k >= _HOST_GRAM_MIN_FEATURES
    n_sub = (_SUB_BLOCKS if not host and k >= _SORT_MIN_FEATURES and per_dev >= _SUB_BLOCKS * _SUB_MIN_ROWS // 4
             else 1)
    per_dev = n_sub * -(-per_dev // n_sub)
    col_blocks = 1 if host else max(1, k // _COL_BLOCK)
    return per_dev * n_dev, n_sub, col_blocks, host


@functools.lru_cache(maxsize=16)
def _sharded_step(mesh: Mesh, n_sub: int = 1, col_blocks: int = 1):
    """jit(total, bad, A, y, w, kind) -> (total + stats of the block, bad + its bad rows).

    Memoised per (mesh, layout), with explicit input and output shardings (totals replicated,
    rows split over the mesh), so every block of one shape reuses one compilation, the fresh zero
    totals of the first block included.
    """
    row, mat, rep = P(ROWS), P(ROWS, None), P()

    def local(A, y, w, kind):
        ne, bad = _block_stats(A, y, w, kind, n_sub, col_blocks)
        return jax.lax.psum((ne, bad), ROWS)

    # check_vma=False: the per-kind sums start from zeros that are not marked as varying over "rows"
    chunk_stats = jax.shard_map(local, mesh=mesh, in_specs=(mat, row, row, row), out_specs=rep, check_vma=False)

    def step(total, bad, A, y, w, kind):
        global _STEP_TRACES
        _STEP_TRACES += 1  # runs once per trace
        ne, b = chunk_stats(A, y, w, kind)
        return combine(total, ne), bad + b

    sh = lambda spec: NamedSharding(mesh, spec)  # noqa: E731
    return jax.jit(step, in_shardings=(sh(rep), sh(rep), sh(mat), sh(row), sh(row), sh(row)),
                   out_shardings=(sh(rep), sh(rep)))


def _chunk_parts(chunk):
    """(A, y, w, kind) of a chunk, host numpy or device arrays as given, with shapes checked."""
    if isinstance(chunk, DesignMatrix):
        A, y, w, kind = chunk.A, chunk.y, chunk.w, chunk.kind
    else:
        A, y, w, kind = chunk
    on_device = isinstance(A, jax.Array)
    xp = jnp if on_device else np
    A = xp.asarray(A, xp.float64)
    if A.ndim != 2:
        raise JaxiapInputError(f"chunk design matrix A must be 2-D (R, K), got shape {A.shape}")
    r = A.shape[0]
    parts = [A, xp.asarray(y, xp.float64), xp.asarray(w, xp.float64), xp.asarray(kind, xp.int32)]
    for name, v in zip(("y", "w", "kind"), parts[1:]):
        if v.shape != (r,):
            raise JaxiapInputError(f"chunk {name} has shape {v.shape}, expected ({r},) to match A")
    return parts


def _blocks(parts, block_rows: int):
    """Cut a chunk into blocks of exactly ``block_rows`` rows (the last one padded with zero-weight rows)."""
    r = parts[0].shape[0]
    if r == block_rows:
        yield parts
        return
    for start in range(0, max(r, 1), block_rows):
        piece = [v[start:start + block_rows] for v in parts]
        pad = block_rows - piece[0].shape[0]
        if pad:
            xp = jnp if isinstance(piece[0], jax.Array) else np
            piece = [xp.pad(v, [(0, pad)] + [(0, 0)] * (v.ndim - 1)) for v in piece]
        yield piece


def accumulate(chunks: Iterable, devices=None, block_rows: int | None = None,
               max_in_flight: int = 2) -> NormalEquations:
    """Sum NormalEquations over design chunks (DesignMatrix or (A, y, w, kind) tuples).

    Chunks may be host numpy arrays or JAX arrays, of any number of rows. Every chunk is cut into
    blocks of one fixed shape, ``block_rows`` rows (default: the first chunk's rows, rounded up
    to the layout) x K: a shorter chunk (the ragged last one) is padded with zero-weight rows, a
    longer one split, so the reduction step compiles once per stream shape. Each block is
    split by rows over ``devices`` (default all of ``jax.devices()``); the per-device partial
    sums are reduced with psum. A^T W A is formed with float64 matmuls by XLA (rows sorted by
    kind for K >= 64, the upper block triangle only for K >= 512), except on a single CPU device
    for K >= 32, where the blocks are reduced on the host in numpy (BLAS syrk; synchronous, the
    same statistics and checks; faster than XLA's CPU kernels there).
    Memory is O(block rows x K): at most ``max_in_flight`` blocks are queued on the devices
    ahead of the one being reduced (the host waits for older ones), so a fast producer cannot
    pile up transfers. Raises JaxiapInputError for NaN/inf rows, negative weights or unknown row
    kinds (checked once, after the last chunk).
    To re-weight, map ``reweight`` over the chunks first.
    """
    if max_in_flight < 1:
        raise JaxiapInputError(f"max_in_flight must be >= 1, got {max_in_flight}")
    if block_rows is not None and block_rows < 1:
        raise JaxiapInputError(f"block_rows must be >= 1 (or None: the first chunk's rows), got {block_rows}")
    mesh = row_mesh(devices)
    total = bad = step = None
    n_chunks, k = 0, None
    in_flight = collections.deque()
    rows_spec, mat_spec, rep = (NamedSharding(mesh, s) for s in (P(ROWS), P(ROWS, None), P()))
    host = False
    for chunk in chunks:
        parts = _chunk_parts(chunk)
        if total is None:
            k = parts[0].shape[1]
            block_rows, n_sub, col_blocks, host = _layout(block_rows or parts[0].shape[0], k, mesh)
            zeros = NormalEquations(np.zeros((2, k, k)), np.zeros((2, k)), np.zeros(2), np.zeros(2), np.zeros(2))
            if host:
                total, bad = zeros, 0
            else:
                step = _sharded_step(mesh, n_sub, col_blocks)
                total = jax.device_put(zeros, rep)
                bad = jax.device_put(np.zeros((), np.int64 if jax.config.jax_enable_x64 else np.int32), rep)
        elif parts[0].shape[1] != k:
            raise JaxiapInputError(f"chunk {n_chunks} has {parts[0].shape[1]} features, earlier chunks "
                                   f"{k}; every chunk must come from the same basis")
        if host:  # synchronous numpy, in pieces of at most block_rows rows (no padding needed)
            A, y, w, kind = (np.asarray(v) for v in parts)
            for start in range(0, A.shape[0], block_rows):
                ne, b = _host_block_stats(*(v[start:start + block_rows] for v in (A, y, w, kind)))
                total, bad = combine(total, ne), bad + b
        else:
            for A, y, w, kind in _blocks(parts, block_rows):
                args = [jax.device_put(A, mat_spec)] + [jax.device_put(v, rows_spec) for v in (y, w, kind)]
                total, bad = step(total, bad, *args)
                in_flight.append(bad)
                if len(in_flight) > max_in_flight:
                    in_flight.popleft().block_until_ready()
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
