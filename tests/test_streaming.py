"""Streaming normal equations: chunked / sharded statistics equal the in-memory solvers."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxiap.data import Dataset
from jaxiap.descriptors.radial import RadialBasis
from jaxiap.errors import JaxiapInputError, SingularSystemError
from jaxiap.inference.linear import (
    fit_blr,
    fit_lstsq,
    fit_nig,
    log_evidence_blr,
    log_evidence_nig,
    normal_equations,
    select_by_evidence,
)
from jaxiap.inference.streaming import (
    accumulate,
    select_basis_by_evidence,
    solve_blr,
    solve_lstsq,
    solve_nig,
)
from jaxiap.potentials.linear import DesignMatrix, LinearBasis, design_matrix
from jaxiap.structures import from_positions
from jaxiap.systems.lj import icosahedron, lj_energy, lj_forces

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def synthetic_design(r=1003, k=4, seed=0) -> DesignMatrix:
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(r, k)) * np.array([1.0, 3.0, 0.5, 2.0])[:k]
    kind = rng.integers(0, 2, r)
    w = rng.uniform(0.2, 3.0, r)
    w[rng.choice(r, 20, replace=False)] = 0.0
    y = A @ rng.normal(size=k) + np.where(kind == 0, 0.4, 0.1) * rng.normal(size=r) + 0.5
    return DesignMatrix(*(jnp.asarray(v) for v in (A, y, w, kind, np.arange(r) // 7, np.full(r, 7))))


def chunks_of(dm: DesignMatrix, size: int):
    r = dm.A.shape[0]
    return [DesignMatrix(*(v[i:i + size] for v in dm)) for i in range(0, r, size)]


def rel(a, b):
    """max |a - b| / max |b| (0 when both are all zero)."""
    a, b = np.asarray(a), np.asarray(b)
    return np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300)


def test_streaming_equals_in_memory():
    dm = synthetic_design()
    ne = accumulate(chunks_of(dm, 128))  # 8 chunks, the last one short
    ref = normal_equations(dm)
    for a, b in zip(ne, ref):
        assert rel(a, b) < 1e-13
    # float64 sums against a plain numpy reference
    A, y, w, kind = (np.asarray(v) for v in dm[:4])
    f = kind == 1
    np.testing.assert_allclose(ne.AtWA[1], A[f].T @ (w[f, None] * A[f]), rtol=1e-12)
    np.testing.assert_allclose(ne.n_rows, [np.sum((w > 0) & ~f), np.sum((w > 0) & f)])
    np.testing.assert_allclose(ne.sum_log_w.sum(), np.log(w[w > 0]).sum(), rtol=1e-13)

    ls, ls_ref = solve_lstsq(ne), fit_lstsq(dm)  # Cholesky of A^T W A vs SVD of W^1/2 A
    assert rel(ls.mean, ls_ref.mean) < 1e-10
    assert rel(ls.noise_var, ls_ref.noise_var) < 1e-10
    assert rel(ls.cov, ls_ref.cov) < 1e-10
    P0 = np.diag([1.0, 0.5, 2.0, 0.1])
    b, b_ref = solve_blr(ne, P0, 0.3, noise_var=0.05), fit_blr(dm, P0, 0.3, noise_var=0.05)
    assert rel(b.mean, b_ref.mean) < 1e-10 and rel(b.cov, b_ref.cov) < 1e-10
    t, t_ref = solve_nig(ne, 2.0, 0.1, P0), fit_nig(dm, 2.0, 0.1, P0)
    assert rel(t.mean, t_ref.mean) < 1e-10 and rel(t.scale_matrix, t_ref.scale_matrix) < 1e-10
    assert rel(t.df, t_ref.df) < 1e-15
    for fn, args in ((log_evidence_blr, (P0, (0.16, 0.01))), (log_evidence_nig, (2.0, 0.1, P0))):
        assert rel(fn(ne, *args), fn(dm, *args)) < 1e-10


def _numpy_stats(A, y, w, kind):
    """Per-kind X^T W X, X^T W y, y^T W y in plain numpy float64 (rows with w > 0)."""
    out = []
    for g in (0, 1):
        m = (kind == g) & (w > 0)
        Ag, yg, wg = A[m], y[m], w[m]
        out.append(((Ag * wg[:, None]).T @ Ag, (Ag * wg[:, None]).T @ yg, wg @ (yg * yg), m.sum()))
    return [np.stack(v) for v in zip(*out)]


@pytest.mark.parametrize("k, rows, on_device, host_gram", [(5, 1000, True, False), (80, 4096, False, False),
                                                           (300, 2048, False, True), (520, 2048, True, False)])
def test_ragged_stream_equals_numpy_and_compiles_once(k, rows, on_device, host_gram, monkeypatch):
    """A ragged stream (a short last chunk, and one chunk longer than the block) is reduced by one
    compiled step: the short chunk is padded with zero-weight rows, the long one split. K = 5: two
    weighted matmuls in XLA; K = 80: XLA with the rows sorted by kind; K = 300 on one CPU device: the
    host BLAS (syrk) through a callback; K = 520 (XLA forced): sorted rows and the upper-block-triangle
    Gram."""
    import jaxiap.inference.streaming as streaming

    if not host_gram:
        monkeypatch.setattr(streaming, "_HOST_GRAM_MIN_FEATURES", 10**9)  # XLA, as on a GPU or several devices
    assert streaming._layout(rows, k, streaming.row_mesh())[3] == host_gram
    rng = np.random.default_rng(k)
    r = 3 * rows + rows // 3 + 7  # first chunk of `rows` rows (sets the block), one of 2 * rows, a ragged one
    A = rng.normal(size=(r, k)) * rng.uniform(0.5, 2.0, k)
    y = A @ rng.normal(size=k) + rng.normal(size=r)
    w = rng.uniform(0.1, 2.0, r)
    w[rng.choice(r, r // 10, replace=False)] = 0.0
    kind = rng.integers(0, 2, r).astype(np.int32)
    cuts = [0, rows, 3 * rows, r]
    to = jnp.asarray if on_device else np.asarray
    chunks = [tuple(to(v[a:b]) for v in (A, y, w, kind)) for a, b in zip(cuts[:-1], cuts[1:])]
    before = streaming._STEP_TRACES
    ne = accumulate(chunks)
    assert streaming._STEP_TRACES - before <= 1  # 0 if an earlier test compiled this block shape
    AtWA, AtWy, ytWy, n = _numpy_stats(A, y, w, kind)
    assert rel(ne.AtWA, AtWA) < 1e-12 and rel(ne.AtWy, AtWy) < 1e-12 and rel(ne.ytWy, ytWy) < 1e-12
    np.testing.assert_array_equal(ne.n_rows, n)
    assert rel(ne.AtWA, np.swapaxes(ne.AtWA, 1, 2)) < 1e-14
    traced = streaming._STEP_TRACES
    again = accumulate(chunks[::-1], block_rows=rows)  # the same block shape: no new trace, the same sums
    assert streaming._STEP_TRACES == traced
    assert rel(again.AtWA, AtWA) < 1e-12
    with pytest.raises(JaxiapInputError, match="max_in_flight"):
        accumulate(chunks, max_in_flight=0)
    nan_chunks = [tuple(np.array(v) for v in c) for c in chunks]
    nan_chunks[1][0][3, 0] = np.nan
    nan_chunks[2][2][5] = -1.0
    with pytest.raises(JaxiapInputError, match="2 design rows hold NaN/inf, a negative weight"):
        accumulate(nan_chunks)


@pytest.fixture(scope="module")
def small_lj():
    """24 perturbed LJ13 icosahedra with exact LJ energies and forces (cheap; no MD)."""
    rng = np.random.default_rng(3)
    pos = jnp.asarray(icosahedron()[None] + 0.07 * rng.normal(size=(24, 13, 3)))
    return Dataset(from_positions(pos), jax.vmap(lj_energy)(pos), jax.vmap(lj_forces)(pos))


def test_lj_basis_selection_streams_the_in_memory_numbers(small_lj):
    train = small_lj
    bases = {k: LinearBasis(RadialBasis("chebyshev", k, 0.8, 3.0)) for k in (2, 8)}
    best, table = select_basis_by_evidence(bases, train, chunk_size=10)  # streamed from the Dataset
    dms = {k: design_matrix(b, train, chunk_size=10) for k, b in bases.items()}
    best_mem, table_mem = select_by_evidence(dms)
    assert best == best_mem == 8  # two radial functions cannot fit LJ13
    for k in bases:
        assert table[k]["n_features"] == k
        # same optimum up to the optimiser's float64 stopping noise (log evidence ~ 2e3)
        np.testing.assert_allclose(table[k]["log_evidence"], table_mem[k]["log_evidence"], rtol=0, atol=1e-3)
        # the evidence is flat at its optimum: a 1e-6 change of log evidence moves sigma by ~1e-4 relative,
        # so the optimiser's stopping point (not the statistics, equal to ~1e-15) sets this tolerance
        np.testing.assert_allclose(table[k]["sigma_force"], table_mem[k]["sigma_force"], rtol=2e-4)
    assert table[8]["sigma_force"] < 0.5 * table[2]["sigma_force"]
    # chunked statistics of the real LJ design, and least squares through them
    dm = dms[8]
    ne = accumulate(chunks_of(dm, 100))
    for a, b in zip(ne, normal_equations(dm)):
        assert rel(a, b) < 1e-12
    ls, ls_ref = solve_lstsq(ne), fit_lstsq(dm)
    assert rel(ls.mean, ls_ref.mean) < 1e-8  # normal equations square the condition number
    assert rel(ls.noise_var, ls_ref.noise_var) < 1e-6


_SHARDED_SCRIPT = textwrap.dedent("""
    import json, sys
    import jax, numpy as np
    sys.path.insert(0, {root!r})
    sys.path.insert(0, {tests!r})
    import jaxiap
    from jaxiap.inference.streaming import accumulate, row_mesh, solve_blr
    from test_streaming import chunks_of, synthetic_design
    dm = synthetic_design(r=1001)
    many = accumulate(chunks_of(dm, 250))                     # 4 devices, 2 padded rows per chunk
    one = accumulate(chunks_of(dm, 250), devices=jax.devices()[:1])
    rel = max(float(np.max(np.abs(a - b)) / np.max(np.abs(b))) for a, b in zip(many, one))
    post = solve_blr(many, 1.0, noise_var=0.1)
    np.savez({out!r}, *many)
    # K = 256: XLA's rows-sorted-by-kind Gram on 4 devices against the host-BLAS Gram on 1
    rng = np.random.default_rng(5)
    r = 2 * 8192 + 123
    A = rng.normal(size=(r, 256)); y = rng.normal(size=r); w = rng.uniform(0.0, 2.0, r)
    kind = rng.integers(0, 2, r).astype(np.int32)
    chunks = [tuple(v[i:i + 8192] for v in (A, y, w, kind)) for i in range(0, r, 8192)]
    wide = [accumulate(chunks), accumulate(chunks, devices=jax.devices()[:1])]
    rel_wide = max(float(np.max(np.abs(a - b)) / np.max(np.abs(b))) for ne in wide for a, b in zip(ne, wide[1]))
    print(json.dumps(dict(n_devices=len(jax.devices()), mesh=int(row_mesh().devices.size), rel=rel,
                          rel_wide=rel_wide)))
""")


def test_four_fake_devices_equal_one(tmp_path):
    out = str(tmp_path / "many.npz")
    script = _SHARDED_SCRIPT.format(root=ROOT, tests=os.path.join(ROOT, "tests"), out=out)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["n_devices"] == 4 and res["mesh"] == 4
    assert res["rel"] < 1e-12 and res["rel_wide"] < 1e-12
    # and the 4-device statistics equal this (1-device) process's in-memory ones
    with np.load(out) as z:
        many = [z[f"arr_{i}"] for i in range(5)]
    for a, b in zip(many, normal_equations(synthetic_design(r=1001))):
        assert rel(a, b) < 1e-12


def test_streaming_errors():
    dm = synthetic_design(r=300)
    chunks = chunks_of(dm, 100)
    chunks[1] = chunks[1]._replace(y=chunks[1].y.at[5].set(jnp.nan))
    with pytest.raises(JaxiapInputError, match="1 design rows hold NaN/inf, a negative weight"):
        accumulate(chunks)
    with pytest.raises(JaxiapInputError, match="2 design rows"):
        accumulate([dm._replace(w=dm.w.at[3].set(-1.0), kind=dm.kind.at[7].set(5))])
    with pytest.raises(JaxiapInputError, match="ENERGY_ROW"):
        normal_equations(dm._replace(kind=dm.kind.at[7].set(5)))
    with pytest.raises(JaxiapInputError, match="no chunks"):
        accumulate([])
    with pytest.raises(JaxiapInputError, match="features"):
        accumulate([dm, dm._replace(A=dm.A[:, :3])])
    dup = dm._replace(A=jnp.concatenate([dm.A, 2 * dm.A[:, 1:2]], axis=1))
    with pytest.raises(SingularSystemError, match="rank-deficient"):
        solve_lstsq(accumulate(chunks_of(dup, 100)))
    with pytest.raises(SingularSystemError, match="weighted rows"):
        solve_lstsq(accumulate([DesignMatrix(*(v[:3] for v in dm))]))
