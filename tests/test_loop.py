"""Pool-based active-learning loop: resume, strategies, oracle calls, ASE oracle, fingerprint."""

import jax
import numpy as np
import pytest

import jaxiap  # noqa: F401
from jaxiap.errors import JaxiapInputError


@pytest.fixture(scope="module")
def setup():
    """A pool of 24 labelled LJ13 configurations: the icosahedron with random displacements
    of several sizes (no MD, so the fixture is instant), and a 6-function basis."""
    from jaxiap.descriptors.radial import RadialBasis
    from jaxiap.potentials.linear import LinearBasis
    from jaxiap.structures import from_positions
    from jaxiap.systems.lj import icosahedron, lj_energy
    from jaxiap.systems.oracle import JaxOracle, label

    rng = np.random.default_rng(0)
    scale = np.repeat([0.03, 0.08, 0.15], 8)[:, None, None]
    pos = icosahedron()[None] * rng.uniform(0.95, 1.1, (24, 1, 1)) + scale * rng.normal(size=(24, 13, 3))
    ds = label(JaxOracle(lj_energy), from_positions(pos))
    basis = LinearBasis(RadialBasis("chebyshev", 6, 0.8, 3.0))
    return ds, basis


def _fit(design):
    from jaxiap.inference.linear import fit_blr

    return fit_blr(design, prior_precision=1e-2, noise_var=1e-4)


class CountingOracle:
    def __init__(self, pool):
        from jaxiap.systems.lj import lj_energy
        from jaxiap.systems.oracle import JaxOracle

        self.inner = JaxOracle(lj_energy)
        self.pool = np.asarray(pool.positions)
        self.calls = []

    def __call__(self, structures):
        pos = np.asarray(structures.positions)
        self.calls.append([int(np.flatnonzero(np.all(self.pool == p, axis=(1, 2)))[0]) for p in pos])
        return self.inner(structures)


def _run(setup, strategy="d-optimal", n_iterations=4, run_dir=None, oracle=None, **kw):
    from jaxiap.active.loop import run_pool_loop

    ds, basis = setup
    pool = ds.structures
    oracle = oracle or CountingOracle(pool)
    evaluate = lambda post: {"c0": float(post.mean[0])}
    kw.setdefault("force_weight", 0.0)  # energy-only labels: the design matters
    return run_pool_loop(strategy, pool, oracle, fit=_fit, basis=basis, initial=[0, 13], batch_size=2,
                         n_iterations=n_iterations, key=jax.random.key(7), evaluate=evaluate,
                         run_dir=run_dir, progress=False, **kw), oracle


def test_interrupted_loop_equals_uninterrupted(setup, tmp_path):
    full, _ = _run(setup, "dpp-sample", 4, tmp_path / "a")
    part, o1 = _run(setup, "dpp-sample", 2, tmp_path / "b")
    assert len(part.records) == 3 and len(o1.calls) == 3
    rest, o2 = _run(setup, "dpp-sample", 4, tmp_path / "b")
    # the resumed run labels only the new batches
    assert len(o2.calls) == 2 and all(len(c) == 2 for c in o2.calls)
    np.testing.assert_array_equal(full.order, rest.order)
    np.testing.assert_array_equal(full.n_labelled, [2, 4, 6, 8, 10])
    np.testing.assert_allclose(full.coefficients, rest.coefficients, rtol=0, atol=0)
    assert [r["metrics"] for r in full.records] == [r["metrics"] for r in rest.records]
    # the log holds one line per finished iteration
    lines = (tmp_path / "b" / "log.jsonl").read_text().splitlines()
    assert len(lines) == 5
    # and asking for fewer iterations returns the stored prefix
    short, o3 = _run(setup, "dpp-sample", 2, tmp_path / "b")
    assert o3.calls == [] and np.array_equal(short.order, part.order)
    np.testing.assert_array_equal(short.coefficients, part.coefficients)


def test_each_strategy_returns_distinct_unlabelled(setup):
    from jaxiap.active.loop import STRATEGIES, LoopContext, mean_energy_gradient_from_samples, pool_features
    from jaxiap.active.design import candidate_rows
    from jaxiap.inference.linear import reweight
    from jaxiap.potentials.linear import design_matrix

    ds, basis = setup
    labelled = np.zeros(len(ds), bool)
    labelled[[0, 5, 13]] = True
    design = reweight(design_matrix(basis, ds[np.flatnonzero(labelled)]), 1.0, 0.0)
    post = _fit(design)
    rows = candidate_rows(basis, ds.structures, 1.0, 0.0)
    feats = np.asarray(jax.vmap(basis)(ds.structures.positions))
    c = mean_energy_gradient_from_samples(feats, np.asarray(post.mean), 0.3)
    ctx = LoopContext(rows, pool_features(basis, ds.structures), post, labelled, basis, ds.structures, design,
                      _fit, c, 2.0, "energy", 4)
    assert set(STRATEGIES) == {"random", "dpp-sample", "dpp-greedy", "d-optimal", "a-optimal", "qbc",
                               "uncertainty", "qoi"}
    picks = {}
    for name, select in STRATEGIES.items():
        idx = np.asarray(select(jax.random.key(1), ctx, 3))
        assert idx.shape == (3,), name
        assert len(set(idx.tolist())) == 3, name
        assert not labelled[idx].any(), name
        picks[name] = tuple(sorted(idx.tolist()))
    # they are not all the same rule
    assert len(set(picks.values())) >= 3
    # the fluctuation gradient agrees with a finite difference of the reweighted mean energy
    B = feats
    cm = np.asarray(post.mean)

    def mean_e(cc):  # <E_cc> estimated by reweighting the samples from E_cm
        logw = -(B @ (cc - cm)) / 0.3
        w = np.exp(logw - logw.max())
        return float(np.sum(w * (B @ cc)) / w.sum())

    h = 1e-6
    fd = np.array([(mean_e(cm + h * e) - mean_e(cm - h * e)) / (2 * h) for e in np.eye(len(cm))])
    np.testing.assert_allclose(c, fd, rtol=1e-5, atol=1e-6 * np.abs(fd).max())


def test_design_from_rows_matches_design_matrix(setup):
    from jaxiap.active.design import candidate_rows
    from jaxiap.active.loop import design_from_rows
    from jaxiap.potentials.linear import design_matrix

    ds, basis = setup
    idx = np.array([3, 17, 8])
    sub = ds[idx].with_weights(energy_weight=np.array([1.0, 2.0, 0.5]), force_weight=np.array([0.3, 1.0, 2.0]))
    a = design_from_rows(candidate_rows(basis, ds.structures)[idx], sub)
    b = design_matrix(basis, sub)
    for x, y in zip(a, b):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-12, atol=1e-12)


def test_oracle_called_only_on_selected(setup):
    res, oracle = _run(setup, "uncertainty", 3)
    assert oracle.calls[0] == [0, 13]
    flat = [i for call in oracle.calls for i in call]
    assert flat == res.order.tolist()
    assert [r["selected"] for r in res.records[1:]] == oracle.calls[1:]
    # the labels in the result are the oracle's
    from jaxiap.systems.lj import lj_energy

    e = [float(lj_energy(p)) for p in np.asarray(setup[0].structures.positions)[res.order]]
    np.testing.assert_allclose(np.asarray(res.dataset.energy), e, rtol=1e-12)


def test_ase_oracle_matches_jax_oracle(setup):
    from ase.calculators.lj import LennardJones

    from jaxiap.systems.oracle import ASEOracle, JaxOracle
    from jaxiap.systems.lj import lj_energy

    ds, _ = setup
    calc = LennardJones(sigma=1.0, epsilon=1.0, rc=100.0, smooth=False)
    a, _ = _run(setup, "random", 2, oracle=ASEOracle(calc), force_weight=1.0)
    j, _ = _run(setup, "random", 2, oracle=JaxOracle(lj_energy), force_weight=1.0)
    np.testing.assert_array_equal(a.order, j.order)
    # ASE shifts its LJ by the energy at rc; at rc = 100 the shift is ~1e-24 per pair
    np.testing.assert_allclose(np.asarray(a.dataset.energy), np.asarray(j.dataset.energy), rtol=1e-9)
    np.testing.assert_allclose(np.asarray(a.dataset.forces), np.asarray(j.dataset.forces), atol=1e-9)
    np.testing.assert_allclose(a.coefficients, j.coefficients, rtol=1e-6, atol=1e-8)


def test_changed_settings_give_clear_error(setup, tmp_path):
    _run(setup, "random", 1, tmp_path / "r")
    with pytest.raises(JaxiapInputError, match=r"differs in: strategy"):
        _run(setup, "d-optimal", 1, tmp_path / "r")
    with pytest.raises(JaxiapInputError, match=r"batch_size"):
        from jaxiap.active.loop import run_pool_loop

        ds, basis = setup
        run_pool_loop("random", ds.structures, CountingOracle(ds.structures), fit=_fit, basis=basis,
                      initial=[0, 13], batch_size=3, n_iterations=1, key=jax.random.key(7),
                      run_dir=tmp_path / "r", progress=False, force_weight=0.0)
    with pytest.raises(JaxiapInputError, match="unknown"):
        _run(setup, "nope", 1)
