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
        np.testing.assert_allclose(table[k]["sigma_force"], table_mem[k]["sigma_force"], rtol=1e-6)
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
    print(json.dumps(dict(n_devices=len(jax.devices()), mesh=int(row_mesh().devices.size), rel=rel)))
""")


def test_four_fake_devices_equal_one(tmp_path):
    out = str(tmp_path / "many.npz")
    script = _SHARDED_SCRIPT.format(root=ROOT, tests=os.path.join(ROOT, "tests"), out=out)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["n_devices"] == 4 and res["mesh"] == 4
    assert res["rel"] < 1e-12
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
