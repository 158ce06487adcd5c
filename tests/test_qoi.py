"""Tests for jaxiap.md.qoi: basin criteria on LJ13, evaporation, energy histograms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

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
