"""Tests for jaxiap.md.qoi: basin criteria on LJ13, survival statistics, histograms."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import jaxiap  # noqa: F401  (float64)
from jaxiap.errors import JaxiapInputError
from jaxiap.md import qoi
from jaxiap.systems.lj import LJ13_MINIMUM_ENERGY, lj13_minimum, lj_energy

R_B = 1.35
KINDS = ("graph", "energy", "n12")


# ---------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def x0():
    return jnp.asarray(lj13_minimum())


@pytest.fixture(scope="module")
def quench():
    """Batched FIRE quench (S, 13, 3) -> (positions, max|F|), jitted once for the module."""
    from jaxiap.md.quench import fire_quench_fn

    run = fire_quench_fn(lj_energy, fmax=1e-6, max_steps=5000)
    return jax.jit(jax.vmap(lambda x: run(x)[:2]))


@pytest.fixture(scope="module")
def criteria():
    """Jitted, vmapped (over structures) evaluation of all three criteria against one reference."""

    def all_changed(ref, pos, e):
        return jnp.stack([qoi.basin_changed(k, ref, pos, e, r_b=R_B) for k in KINDS])

    return jax.jit(jax.vmap(all_changed, in_axes=(None, 0, 0)))


@pytest.fixture(scope="module")
def reference(x0):
    return qoi.basin_reference(x0, lj_energy(x0), R_B)


# ---------------------------------------------------------------------------
# basin criteria
# ---------------------------------------------------------------------------


def test_icosahedron_coordination(x0):
    c = np.asarray(qoi.coordination(x0, R_B))
    assert c[0] == 12
    np.testing.assert_array_equal(c[1:], 6)
    assert int(qoi.n12(x0, R_B)) == 1
    g = np.asarray(qoi.bond_graph(x0, R_B))
    assert g.shape == (13, 13) and not g.diagonal().any() and (g == g.T).all()
    assert g.sum() == 12 + 12 * 6  # directed count: 2 * (12 spokes + 30 edges)

    # padded to 16 atoms with far-away junk: same answer under the mask
    xp = jnp.concatenate([x0, jnp.full((3, 3), 0.5)])  # junk sits inside the cluster
    mask = jnp.arange(16) < 13
    cp = np.asarray(qoi.coordination(xp, R_B, mask))
    np.testing.assert_array_equal(cp[:13], c)
    np.testing.assert_array_equal(cp[13:], 0)
    assert int(qoi.n12(xp, R_B, mask)) == 1
    # without the mask the junk atoms would change the answer
    assert int(qoi.n12(xp, R_B)) != 1


def _capped_starts(x0):
    """Move surface atom 1 onto the hollow above each outer-shell face not containing it.

    Faces are grouped by the distance of their centroid from atom 1's vertex:
    nearest (~1.25 sigma), middle (~1.50) and farthest (~1.84). The capping
    atom sits 0.907 sigma above the face plane (1.12 sigma from its 3 atoms).
    """
    x0 = np.asarray(x0)
    surf = x0[1:]
    d = np.linalg.norm(surf[:, None] - surf[None], axis=-1)
    starts = {}
    for i in range(1, 12):
        for j in range(i + 1, 12):
            for k in range(j + 1, 12):
                if d[i, j] < 1.3 and d[j, k] < 1.3 and d[i, k] < 1.3:
                    c = surf[[i, j, k]].mean(0)
                    key = round(float(np.linalg.norm(c - surf[0])), 2)
                    x = x0.copy()
                    x[1] = c + 0.907 * c / np.linalg.norm(c)
                    starts.setdefault(key, x)
    return starts


def test_constructed_basin_change(x0, quench, reference, criteria):
    starts = _capped_starts(x0)
    assert sorted(starts) == [1.25, 1.5, 1.84]
    xs = jnp.asarray(np.stack([starts[1.84], starts[1.5], starts[1.25]]))
    q, fmax = quench(xs)
    assert float(jnp.max(fmax)) < 1e-6
    e = jax.vmap(lj_energy)(q)
    # The three lowest LJ13 defect minima of docs/science.md section 2.3.
    np.testing.assert_allclose(np.asarray(e), [-41.47198, -41.44460, -41.39440], atol=1e-3)
    assert np.all(np.asarray(e) - LJ13_MINIMUM_ENERGY >= 2.8)
    coord = np.asarray(jax.vmap(lambda p: qoi.coordination(p, R_B))(q))
    np.testing.assert_array_equal(coord.max(axis=1), 11)
    np.testing.assert_array_equal(np.asarray(jax.vmap(lambda p: qoi.n12(p, R_B))(q)), 0)
    changed = np.asarray(criteria(reference, q, e))
    assert changed.shape == (3, 3) and changed.all()


def test_thermal_noise_same_basin(x0, quench, reference, criteria):
    noise = 0.02 * jax.random.normal(jax.random.PRNGKey(0), (3, 13, 3))
    q, fmax = quench(x0[None] + noise)
    assert float(jnp.max(fmax)) < 1e-6
    e = jax.vmap(lj_energy)(q)
    np.testing.assert_allclose(np.asarray(e), LJ13_MINIMUM_ENERGY, atol=1e-5)
    changed = np.asarray(criteria(reference, q, e))
    assert changed.shape == (3, 3) and not changed.any()


def test_permuted_icosahedron_only_graph_changes(x0, reference, criteria):
    # Swap the labels of two bonded surface atoms: same structure and energy,
    # different labelled graph (a transposition is no icosahedral symmetry).
    perm = np.arange(13)
    perm[[1, 2]] = [2, 1]
    assert bool(qoi.bond_graph(x0, R_B)[1, 2])
    xp = x0[perm]
    # and swap the centre with a surface atom
    perm2 = np.arange(13)
    perm2[[0, 5]] = [5, 0]
    xs = jnp.stack([xp, x0[perm2]])
    e = jax.vmap(lj_energy)(xs)
    changed = np.asarray(criteria(reference, xs, e))
    np.testing.assert_array_equal(changed, [[True, False, False], [True, False, False]])


def test_energy_tolerance_and_bad_kind(x0, reference):
    f = jax.jit(qoi.basin_changed, static_argnums=0)
    e0 = reference.energy
    assert not bool(f("energy", reference, x0, e0 + 0.9e-3))
    assert bool(f("energy", reference, x0, e0 - 1.1e-3))
    assert not bool(f("energy", reference, x0, jnp.nan))
    with pytest.raises(JaxiapInputError, match="kind"):
        qoi.basin_changed("volume", reference, x0, e0)


def test_evaporated(x0):
    f = jax.jit(qoi.evaporated)
    assert not bool(f(x0))
    far = x0.at[4].set(jnp.array([0.0, 0.0, 4.2]))  # nearest neighbour ~3.1 > 3
    assert bool(f(far))
    assert not bool(qoi.evaporated(far, r_evap=3.5))
    mid = x0.at[4].set(jnp.array([0.0, 0.0, 3.8]))  # nearest neighbour just under 3
    nn = float(jnp.min(jnp.linalg.norm(mid[4] - jnp.delete(mid, 4, axis=0), axis=1)))
    assert 2.5 < nn < 3.0
    assert not bool(f(mid))
    # a padded atom far away is ignored
    xp = jnp.concatenate([x0, jnp.array([[50.0, 0.0, 0.0]])])
    mask = jnp.arange(14) < 13
    assert not bool(f(xp, mask))
    assert bool(f(xp))
    # vmapped
    np.testing.assert_array_equal(np.asarray(jax.vmap(f)(jnp.stack([x0, far, mid]))), [False, True, False])


# ---------------------------------------------------------------------------
# histograms
# ---------------------------------------------------------------------------


def test_energy_histogram_matches_numpy():
    rng = np.random.default_rng(1)
    e = rng.normal(-42.0, 2.0, size=500)
    e[:4] = [-45.0, -35.0, -50.0, 10.0]  # both edges (included) and two outside
    e[4] = np.nan
    bins, rng_ = 20, (-45.0, -35.0)
    h = jax.jit(qoi.energy_histogram, static_argnums=(1, 2))(jnp.asarray(e), bins, rng_)
    ref, edges = np.histogram(e[np.isfinite(e)], bins=bins, range=rng_)
    np.testing.assert_array_equal(np.asarray(h), ref)
    np.testing.assert_allclose(qoi.histogram_edges(bins, rng_), edges)
    with np.errstate(invalid="ignore"):
        assert int(h.sum()) == np.count_nonzero((e >= -45.0) & (e <= -35.0)) < 500 - 3
    assert int(h[0]) >= 1 and int(h[-1]) >= 1  # the edge values landed in the end bins
    # weights (e.g. a live-replica mask)
    w = (rng.uniform(size=500) < 0.5).astype(np.float64)
    hw = qoi.energy_histogram(jnp.asarray(e), bins, rng_, weights=jnp.asarray(w))
    ok = np.isfinite(e)
    np.testing.assert_allclose(np.asarray(hw), np.histogram(e[ok], bins=bins, range=rng_, weights=w[ok])[0])


def test_energy_histogram_accumulates_in_scan():
    e = jax.random.uniform(jax.random.PRNGKey(3), (50, 8), minval=-44.0, maxval=-40.0)  # (steps, replicas)

    def step(counts, e_t):
        return counts + qoi.energy_histogram(e_t, 16, (-44.0, -40.0)), None

    counts, _ = jax.jit(lambda e: jax.lax.scan(step, jnp.zeros(16, jnp.int32), e))(e)
    np.testing.assert_array_equal(np.asarray(counts), np.histogram(np.asarray(e), bins=16, range=(-44.0, -40.0))[0])


# ---------------------------------------------------------------------------
# survival statistics
# ---------------------------------------------------------------------------


def test_kaplan_meier_ties_and_censoring():
    # sorted: 1e 2e 2c 3e 4e 4e 5c 6c   (e = event, c = censored); given shuffled
    times = [4, 2, 6, 1, 4, 3, 2, 5]
    events = [1, 0, 0, 1, 1, 1, 1, 0]
    t, s = qoi.kaplan_meier(times, events)
    # t=1: n=8, d=1 -> 7/8
    # t=2: n=7 (the run censored at 2 is still at risk), d=1 -> 7/8 * 6/7 = 3/4
    # t=3: n=5, d=1 -> 3/4 * 4/5 = 3/5
    # t=4: n=4, d=2 -> 3/5 * 2/4 = 3/10
    np.testing.assert_allclose(t, [0, 1, 2, 3, 4])
    np.testing.assert_allclose(s, [1, 7 / 8, 3 / 4, 3 / 5, 3 / 10], rtol=1e-14)
    assert qoi.km_median(times, events) == 4.0
    # S = 1/2 exactly at an event time counts as the median: 1e 2e 3c 4c -> S(2) = 1/2
    assert qoi.km_median([1, 2, 3, 4], [1, 1, 0, 0]) == 2.0
    # never reaches 1/2: 1e then 5 censored -> S = 5/6
    assert qoi.km_median([1, 9, 9, 9, 9, 9], [1, 0, 0, 0, 0, 0]) == math.inf
    t, s = qoi.kaplan_meier([3.0, 4.0], [0, 0])
    np.testing.assert_allclose(t, [0.0])
    np.testing.assert_allclose(s, [1.0])
    with pytest.raises(JaxiapInputError):
        qoi.kaplan_meier([1.0, np.nan], [1, 1])


def test_censored_exponential_mle_hand_values():
    r = qoi.censored_exponential_mle([1, 2, 3, 10, 10], [1, 1, 1, 0, 0])
    assert r["n_events"] == 3 and r["total_time"] == 26.0
    assert r["mean"] == pytest.approx(26 / 3, rel=1e-14)
    # Garwood interval: 2T/chi2_{0.975}(2d+2) .. 2T/chi2_{0.025}(2d), d = 3, T = 26
    assert r["ci_low"] == pytest.approx(52 / stats.chi2.ppf(0.975, 8), rel=1e-12)
    assert r["ci_high"] == pytest.approx(52 / stats.chi2.ppf(0.025, 6), rel=1e-12)
    # independent numbers: chi2_{0.975}(8) = 17.5345, chi2_{0.025}(6) = 1.23734
    assert r["ci_low"] == pytest.approx(52 / 17.5345, rel=1e-5)
    assert r["ci_high"] == pytest.approx(52 / 1.237344, rel=1e-5)
    # level changes the interval
    r90 = qoi.censored_exponential_mle([1, 2, 3, 10, 10], [1, 1, 1, 0, 0], level=0.9)
    assert r["ci_low"] < r90["ci_low"] < r90["mean"] < r90["ci_high"] < r["ci_high"]

    # d = 0: chi2 with 2 dof has ppf(p) = -2 ln(1 - p), so ci_low = T / ln(40) at 95%
    r0 = qoi.censored_exponential_mle([5.0, 5.0], [0, 0])
    assert r0["mean"] == math.inf and r0["ci_high"] == math.inf and r0["n_events"] == 0
    assert r0["ci_low"] == pytest.approx(10 / math.log(40), rel=1e-12)


def test_censored_exponential_mle_large_sample_and_coverage():
    rng = np.random.default_rng(7)
    mean_true, t_max = 5.0, 8.0
    x = rng.exponential(mean_true, size=2000)
    r = qoi.censored_exponential_mle(np.minimum(x, t_max), x <= t_max)
    assert r["ci_low"] < mean_true < r["ci_high"]
    assert r["mean"] == pytest.approx(mean_true, rel=0.08)
    assert r["ci_high"] / r["ci_low"] < 1.3  # ~ +-2/sqrt(1600 events)
    # coverage of the 95% interval over 400 small censored experiments
    hits = 0
    for _ in range(400):
        x = rng.exponential(mean_true, size=16)
        r = qoi.censored_exponential_mle(np.minimum(x, t_max), x <= t_max)
        hits += r["ci_low"] <= mean_true <= r["ci_high"]
    assert 0.92 <= hits / 400 <= 0.995


def test_ks_two_sample():
    # fully separated samples of size 3: D = 1, exact p = 2 / C(6, 3) = 0.1
    d, p = qoi.ks_two_sample([1.0, 2.0, 3.0], [4.0, 5.0, 6.0])
    assert d == 1.0
    assert p == pytest.approx(0.1, rel=1e-12)
    d, _ = qoi.ks_two_sample([1.0, 2.0, 3.0, 4.0], [3.5, 4.5])
    assert d == pytest.approx(0.75)  # at t in [3, 3.5): F_a = 3/4, F_b = 0


def test_summarize_frt():
    assert (qoi.CENSORED, qoi.EVENT, qoi.EVAPORATED, qoi.FAILED) == (0, 1, 2, 3)
    times = [1.0, 2.0, 3.0, 10.0, 10.0, np.nan]
    codes = [1, 1, 1, 0, 2, 3]
    s = qoi.summarize_frt(times, codes)
    assert (s["n_runs"], s["n_events"], s["n_censored"], s["n_evaporated"], s["n_failed"]) == (6, 3, 1, 1, 1)
    assert s["frt_mean"] == pytest.approx(26 / 3)
    lo, hi = s["frt_mean_ci95"]
    assert lo == pytest.approx(52 / stats.chi2.ppf(0.975, 8)) and hi == pytest.approx(52 / stats.chi2.ppf(0.025, 6))
    # KM over the 5 kept runs: S(1) = 4/5, S(2) = 3/5, S(3) = 2/5 -> median 3
    assert s["frt_median"] == 3.0
    assert s["frt_sample_mean_events"] == pytest.approx(2.0)
    with pytest.raises(JaxiapInputError, match="codes"):
        qoi.summarize_frt([1.0], [7])
