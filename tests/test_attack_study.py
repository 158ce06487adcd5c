"""The attack-vs-random study (jaxiap.workflows.attack_study) on a tiny setting."""

import numpy as np
import pytest

import jaxiap  # noqa: F401  (enables float64)
from jaxiap.errors import JaxiapInputError
from jaxiap.workflows.attack_study import AttackStudyConfig, attack_vs_random


@pytest.mark.slow  # a bench workflow (bench/attack_study.py); its pieces are tested in tests/test_biased.py
def test_attack_study_tiny():
    c = AttackStudyConfig(repetitions=1, n_train=6, n_test=6, n_attack=4, attack_steps=40, sample_every=50,
                          burn_in=0)
    out = attack_vs_random(c)
    s = out["summary"]
    print("attack study (tiny):", {k: v for k, v in s.items() if k != "wall_s"})
    assert len(out["repetitions"]) == 1
    for rep in out["repetitions"]:
        # the baseline has exactly the attack's per-structure displacement norms
        assert rep["norm_mismatch"] < 1e-12
        assert len(rep["variance_ratio_attacked"]) == 4 and min(rep["displacement_norm"]) > 0
        assert np.all(np.isfinite(list(rep["force_rmse"].values())))
    # sigma^2 rises for >= 90% of the attacked structures, the true energy stays within 3 attack-kT
    assert s["variance_rose_fraction"] >= 0.9
    assert s["dE_over_kT_attacked"]["max_abs"] < 3.0
    assert s["failed_fits"] == 0
    for k in ("force_rmse_train_only", "force_rmse_attacked", "force_rmse_random", "attacked_minus_random"):
        assert len(s[k]) == 2 and np.isfinite(s[k][0])  # [mean, std]
    with pytest.raises(JaxiapInputError, match="attack_energy"):
        AttackStudyConfig(attack_energy="model")


def test_energy_matched_baseline_keeps_norm_and_picks_closest_energy():
    """The second baseline: random directions of the attack's norm, the draw closest in true energy change."""
    import jax
    import jax.numpy as jnp

    from jaxiap.systems.lj import icosahedron, lj_energy
    from jaxiap.workflows.attack_study import _energy_matched_random

    c = AttackStudyConfig(matched_draws=16)
    starts = jnp.stack([jnp.asarray(icosahedron())] * 3)
    norms = jnp.array([0.1, 0.3, 0.5])
    target = np.array([0.5, 1.0, 3.0])
    out = _energy_matched_random(c, jax.random.key(3), starts, norms, target)
    d = np.asarray(out - starts).reshape(3, -1)
    np.testing.assert_allclose(np.linalg.norm(d, axis=1), norms, rtol=1e-12)
    assert np.allclose(np.asarray(out - starts).mean(axis=1), 0.0, atol=1e-14)       # COM-free
    # brute force: the same 16 draws, the closest energy change per start
    from jaxiap.active.generate.attacks import random_displacements
    energies = jax.jit(jax.vmap(lj_energy))
    e0 = np.asarray(energies(starts))
    keys = jax.random.split(jax.random.key(3), 16)
    draws = np.stack([np.asarray(random_displacements(k, starts, norms)) for k in keys])      # (16, 3, 13, 3)
    de = np.asarray(energies(jnp.asarray(draws.reshape(48, 13, 3)))).reshape(16, 3) - e0[None]
    pick = np.argmin(np.abs(de - target[None]), axis=0)
    np.testing.assert_allclose(np.asarray(out), draws[pick, np.arange(3)], atol=1e-14)


def test_nn_ensemble_force_variance_equals_predicted_force_std():
    """The NN attack's sigma^2 (mean committee force variance) equals the mean squared force std of the
    ensemble posterior (issue 15's NNPosterior), and is differentiable (finite gradient)."""
    import jax
    import jax.numpy as jnp

    from jaxiap.structures import from_positions
    from jaxiap.systems.lj import icosahedron, lj_energy
    from jaxiap.systems.oracle import JaxOracle, label
    from jaxiap.uq.nn_uq import NNPosterior
    from jaxiap.workflows.attack_study import _NNEnsembleSurrogate

    c = AttackStudyConfig(surrogate="nn-ensemble", n_members=3, hidden=(4,), n_radial=4, label_forces=True)
    x0 = jnp.asarray(icosahedron())
    xs = x0[None] + 0.05 * jax.random.normal(jax.random.key(0), (4, 13, 3))
    data = label(JaxOracle(lj_energy), from_positions(xs))
    s = _NNEnsembleSurrogate(c, data, jax.random.key(1))
    members = s.init                                    # untrained members: the identity holds for any weights
    var = s.variance(members)
    import equinox as eqx

    pred = eqx.filter_jit(lambda m, st: NNPosterior(m, {}, "ensemble").predict_structures(st))(members,
                                                                                              data.structures)
    expect = np.mean(np.asarray(pred.forces_std) ** 2, axis=(1, 2))
    got = np.asarray(jax.jit(jax.vmap(var))(xs))
    np.testing.assert_allclose(got, expect, rtol=1e-10)
    g = jax.jit(jax.grad(var))(xs[0])
    assert g.shape == (13, 3) and np.all(np.isfinite(np.asarray(g)))
    np.testing.assert_allclose(float(s.mean_energy(members)(xs[0])), float(np.asarray(pred.energy)[0]), rtol=1e-12)
