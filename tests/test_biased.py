"""Uncertainty-biased sampling (jaxiap.active.generate): UDD, HAL, biased MD, metadynamics, attacks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxiap  # noqa: F401  (enables float64)
from jaxiap.active.generate import (
    adversarial_attack,
    calibrate_udd_B,
    committee_energies,
    hal_adapt,
    hal_bias_forces,
    hal_components,
    hal_energy_fn,
    hal_force_uncertainty,
    linear_energy_variance,
    metad_bias,
    metad_energy_fn,
    partition_log_z,
    random_displacements,
    run_biased_langevin,
    run_metad,
    udd_bias,
    udd_bias_energy_fn,
    udd_energy_fn,
    udd_force_ratio,
    udd_rho,
    udd_sigma2,
)
from jaxiap.descriptors.radial import RadialBasis
from jaxiap.errors import JaxiapInputError
from jaxiap.inference.solvers import get_solver
from jaxiap.potentials.linear import LinearBasis, design_matrix
from jaxiap.structures import from_positions
from jaxiap.systems.lj import icosahedron, lj_energy
from jaxiap.systems.oracle import JaxOracle, label

N_ATOMS = 13


@pytest.fixture(scope="module")
def lj_fit():
    """BLR fit of a 6-term radial potential on 12 labelled near-icosahedron LJ13 structures."""
    rng = np.random.default_rng(0)
    x0 = jnp.asarray(icosahedron())
    train_x = x0[None] + 0.04 * rng.normal(size=(12, N_ATOMS, 3))
    ds = label(JaxOracle(lambda x, m: lj_energy(x, m)), from_positions(train_x))
    basis = LinearBasis(RadialBasis("chebyshev", 6, 0.8, 3.0))
    post = get_solver("blr", prior_precision=1e-2, noise_var=1e-4)(design_matrix(basis, ds))
    return basis, post, x0, np.asarray(ds.energy), rng


def _fd_grad(f, x, eps=1e-5):
    """Central finite differences of scalar f at x (N, 3), all coordinates in one vmapped call."""
    dirs = jnp.eye(x.size).reshape((x.size,) + x.shape) * eps
    f = jax.jit(jax.vmap(f))
    return np.asarray((f(x + dirs) - f(x - dirs)) / (2 * eps)).reshape(x.shape)


def test_udd_closed_form_and_committee_convergence(lj_fit):
    basis, post, x0, _, rng = lj_fit
    x = x0 + 0.1 * jnp.asarray(rng.normal(size=(N_ATOMS, 3)))
    b = np.asarray(jax.jit(lambda y: basis(y))(x))
    v = float(b @ np.asarray(post.covariance()) @ b)
    A, B = 1.0, np.sqrt(v / (2 * N_ATOMS))  # bias argument 1: sensitive to the uncertainty

    @jax.jit
    def closed_forms(x):
        return (linear_energy_variance(post, basis)(x), udd_bias_energy_fn(post, basis, A=A, B=B, n_atoms=N_ATOMS)(x),
                udd_energy_fn(post, basis, A=A, B=B, n_atoms=N_ATOMS)(x), udd_rho(post, basis, n_atoms=N_ATOMS)(x))

    var, closed, total, rho = (float(a) for a in closed_forms(x))
    np.testing.assert_allclose(var, v, rtol=1e-12)
    np.testing.assert_allclose(closed, A * (np.exp(-v / (2 * N_ATOMS * B**2)) - 1), rtol=1e-12)
    np.testing.assert_allclose(total, float(post.mean @ b) + closed, rtol=1e-12)
    np.testing.assert_allclose(rho, np.sqrt(v / N_ATOMS), rtol=1e-12)
    # the committee formula itself: sig2 = 1/2 sum (E - Ebar)^2, bias with N_M N_A B^2
    e = np.array([1.0, 2.0, 4.0])
    assert float(udd_sigma2(e)) == pytest.approx(0.5 * (16 / 9 + 1 / 9 + 25 / 9))
    assert float(udd_bias(udd_sigma2(e), 3, 2, 2.0, 0.5)) == pytest.approx(2 * (np.exp(-(7 / 3) / 1.5) - 1))
    # a committee of posterior draws: the same numbers as the formula on those draws
    key = jax.random.key(5)
    comm = udd_bias_energy_fn(post, basis, A=A, B=B, n_atoms=N_ATOMS, n_members=8, key=key)
    e8 = np.asarray(post.sample(key, 8)) @ b
    np.testing.assert_allclose(jax.jit(comm)(x), A * (np.exp(-0.5 * np.sum((e8 - e8.mean()) ** 2) / (8 * N_ATOMS * B**2)) - 1),
                               rtol=1e-10)
    # committee bias -> closed form like 1/sqrt(N_M) (64 committees per size)
    sizes, errors = (8, 32, 128, 512), []
    for m in sizes:
        e = (np.asarray(post.sample(jax.random.key(m), 64 * m)) @ b).reshape(64, m)
        bias_m = np.asarray(udd_bias(udd_sigma2(e), m, N_ATOMS, A, B))
        errors.append(float(np.mean(np.abs(bias_m - closed))))
    slope = np.polyfit(np.log(sizes), np.log(errors), 1)[0]
    print("UDD committee |bias - closed| per N_M:", dict(zip(sizes, np.round(errors, 5))), "slope", round(slope, 3))
    assert -0.75 <= slope <= -0.3, (errors, slope)
    assert errors[-1] < 0.25 * errors[0]
    with pytest.raises(JaxiapInputError, match="key"):
        udd_energy_fn(post, basis, A=A, B=B, n_atoms=N_ATOMS, n_members=4)


def test_udd_bias_forces_and_calibration(lj_fit):
    basis, post, x0, _, rng = lj_fit
    x = x0 + 0.1 * jnp.asarray(rng.normal(size=(N_ATOMS, 3)))
    for n_members in (None, 16):
        bias = udd_bias_energy_fn(post, basis, A=2.0, B=0.02, n_atoms=N_ATOMS, n_members=n_members,
                                  key=jax.random.key(3))
        g = np.asarray(jax.jit(jax.grad(bias))(x))
        rel = np.abs(_fd_grad(bias, x) - g).max() / np.abs(g).max()
        assert rel < 1e-6, (n_members, rel)
    confs = x0[None] + 0.05 * jnp.asarray(rng.normal(size=(6, N_ATOMS, 3)))
    A = 1000.0  # the ratio is proportional to A; this fit's energy std is small (~0.003 epsilon)
    B = calibrate_udd_B(post, basis, confs, A=A, n_atoms=N_ATOMS)
    r = udd_force_ratio(post, basis, confs, A=A, B=B, n_atoms=N_ATOMS)
    print("calibrated B", B, "ratio", r)
    assert r == pytest.approx(0.36, rel=1e-6)
    assert udd_force_ratio(post, basis, confs, A=A, B=1.2 * B, n_atoms=N_ATOMS) < r  # the unsaturated branch
    with pytest.raises(JaxiapInputError, match="increase A"):
        calibrate_udd_B(post, basis, confs, A=1.0, n_atoms=N_ATOMS)


def test_hal_bias_force_equals_minus_gradient(lj_fit):
    basis, post, x0, _, rng = lj_fit
    x = x0 + 0.1 * jnp.asarray(rng.normal(size=(N_ATOMS, 3)))
    samples = post.sample(jax.random.key(7), 8)
    members = committee_energies(samples, basis)
    energies = members(x)
    forces = -jax.jacrev(members)(x)  # (M, N, 3)
    tau = 0.7
    f_formula = np.asarray(hal_bias_forces(energies, forces, tau))
    mean_e, sigma = hal_components(post, basis, n_members=8, key=jax.random.key(7))
    np.testing.assert_allclose(sigma(x), np.std(np.asarray(energies)), rtol=1e-12)
    bias = lambda y: -tau * sigma(y)  # noqa: E731
    np.testing.assert_allclose(f_formula, -np.asarray(jax.grad(bias)(x)), rtol=1e-9, atol=1e-12)
    rel = np.abs(f_formula + _fd_grad(bias, x)).max() / np.abs(f_formula).max()
    assert rel < 1e-6, rel
    energy = hal_energy_fn(post, basis)
    np.testing.assert_allclose(energy(x, 0.5), post.mean @ basis(x) - 0.5 * np.sqrt(
        float(linear_energy_variance(post, basis)(x))), rtol=1e-12)
    # force uncertainty measure, closed form vs a large committee
    m_closed, m_comm = (float(v) for v in jax.jit(lambda y: (
        hal_force_uncertainty(post, basis)(y),
        hal_force_uncertainty(post, basis, n_members=1000, key=jax.random.key(1))(y)))(x))
    assert m_comm == pytest.approx(m_closed, rel=0.15)


def test_biased_langevin_udd_stop_and_hal_tau(lj_fit):
    basis, post, x0, _, rng = lj_fit
    rho = udd_rho(post, basis, n_atoms=N_ATOMS)
    r0 = float(rho(x0))
    energy = udd_energy_fn(post, basis, A=5.0, B=0.0005, n_atoms=N_ATOMS)
    starts = jnp.stack([x0, x0 + 0.02 * jnp.asarray(rng.normal(size=(N_ATOMS, 3)))])
    thr = 1.2 * r0
    run = run_biased_langevin(jax.random.key(0), energy, starts, kT=0.3, dt=0.005, gamma=1.0, n_blocks=40,
                              block_steps=25, uncertainty_fn=rho, stop_threshold=thr)
    print("UDD run: rho0", r0, "stopped_at", run.stopped_at, "rho at stop",
          [float(run.uncertainty[s, i]) for i, s in enumerate(run.stopped_at) if s >= 0])
    assert run.frames.shape[1:] == (2, N_ATOMS, 3)
    for i, s in enumerate(run.stopped_at):
        if s >= 0:  # stopped at the first block above the threshold, frozen afterwards
            assert run.uncertainty[s, i] > thr and np.all(run.uncertainty[:s, i] <= thr)
            assert run.n_force_evals[i] == 1 + 25 * (s + 1)
            np.testing.assert_array_equal(run.frames[-1, i], run.frames[s, i])
        else:
            assert run.n_force_evals[i] == 1 + 25 * run.frames.shape[0]
    assert np.any(run.stopped_at >= 0)
    # HAL: tau adapted through the hook, tau_inst = tau_rel <|F|>/<|F_sigma|>
    mean_e, sigma = hal_components(post, basis)
    hal = hal_energy_fn(post, basis)
    res = run_biased_langevin(jax.random.key(1), hal, x0, kT=0.3, dt=0.005, gamma=1.0, n_blocks=4, block_steps=10,
                              adapt=hal_adapt(mean_e, sigma, tau_rel=0.1, smoothing=0.5),
                              energy_kwargs={"tau": 0.0})
    tau = res.energy_kwargs["tau"]
    grads = jax.jit(jax.vmap(lambda y: (jax.grad(mean_e)(y), jax.grad(sigma)(y))))
    gf, gs = (np.asarray(g) for g in grads(jnp.asarray(res.frames[:2])))
    inst, inst2 = 0.1 * np.linalg.norm(gf, axis=-1).mean(1) / np.linalg.norm(gs, axis=-1).mean(1)
    assert tau.shape == (4,) and tau[0] == pytest.approx(inst, rel=1e-10) and np.all(tau > 0)
    assert tau[1] == pytest.approx(0.5 * tau[0] + 0.5 * inst2, rel=1e-10)
    assert res.n_force_evals == 41 and res.stopped_at == -1


def test_metad_bias_force_and_double_well():
    # bias force of V(s(x)) against finite differences, with a nonlinear CV
    rng = np.random.default_rng(3)
    centers, heights = jnp.asarray(rng.normal(size=5)), jnp.asarray(rng.uniform(0.1, 1.0, 5))
    cv = lambda x: jnp.sqrt(jnp.sum(x**2))  # noqa: E731
    e = metad_energy_fn(lambda x: 0.0 * jnp.sum(x), cv, 0.3)
    x = jnp.asarray(rng.normal(size=(2, 3)))
    g = np.asarray(jax.grad(e)(x, centers, heights))
    fd = _fd_grad(lambda y: metad_bias(cv(y), centers, heights, 0.3), x)
    np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-9)
    # 1-D double well, CV = x: the well-tempered bias approaches -(1 - 1/gamma) E + const
    kT, gamma_b, barrier = 1.0, 6.0, 4.0
    well = lambda x: barrier * (x[0, 0] ** 2 - 1.0) ** 2  # noqa: E731
    res = run_metad(jax.random.key(0), well, lambda x: x[0, 0], jnp.array([[-1.0]]), kT=kT, dt=0.02, gamma=2.0,
                    n_blocks=3000, block_steps=25, height=0.2, width=0.15, bias_factor=gamma_b)
    s = np.linspace(-1.2, 1.2, 49)
    target = -(1 - 1 / gamma_b) * barrier * (s**2 - 1) ** 2
    dev = np.asarray(res.bias(s)) - target
    dev -= dev.mean()
    print("metad: max |V - target| over [-1.2, 1.2]", float(np.abs(dev).max()), "barrier", barrier,
          "final hill", float(res.hill_heights[-1]), "crossings", int(np.sum(np.diff(np.sign(res.cv)) != 0)))
    assert np.abs(dev).max() < 0.15 * (1 - 1 / gamma_b) * barrier + 0.2
    assert res.hill_heights[-1] < 0.2 * 0.5  # tempering shrinks the hills
    assert np.sum(np.diff(np.sign(res.cv)) != 0) > 10  # the barrier is crossed back and forth


def test_adversarial_attack_raises_variance(lj_fit):
    basis, post, x0, train_e, rng = lj_fit
    kT = 1.0
    energy = lambda x: post.mean @ basis(x)  # noqa: E731
    variance = linear_energy_variance(post, basis)
    starts = x0[None] + 0.01 * jnp.asarray(rng.normal(size=(8, N_ATOMS, 3)))
    log_z = partition_log_z(train_e, kT)
    np.testing.assert_allclose(log_z, np.log(np.mean(np.exp(-(train_e - train_e.min()) / kT))) - train_e.min() / kT,
                               rtol=1e-12)
    res = adversarial_attack(energy, variance, starts, kT=kT, log_Z=log_z, n_steps=60, learning_rate=0.01)
    ratio = np.asarray(res.variance_end / res.variance_start)
    de = np.asarray(res.energy_end - res.energy_start)
    print("attack: variance ratio", np.round(ratio, 5), "dE/kT", np.round(de / kT, 3))
    assert np.mean(ratio > 1) >= 0.9
    assert np.all(np.abs(de) < 3 * kT)
    assert res.loss.shape == (60, 8) and np.all(res.loss[-1] < res.loss[0])
    np.testing.assert_allclose(res.positions, starts + res.delta, rtol=1e-12)
    # random displacements of the same norm: COM-free, norm as asked
    norms = jnp.linalg.norm(res.delta.reshape(8, -1), axis=1)
    rnd = random_displacements(jax.random.key(0), starts, norms)
    d = np.asarray(rnd - starts)
    np.testing.assert_allclose(np.linalg.norm(d.reshape(8, -1), axis=1), norms, rtol=1e-12)
    np.testing.assert_allclose(d.mean(axis=1), 0.0, atol=1e-12)
    # the attack beats random displacements of the same norm on its objective log sig^2 - E / kT
    log_a = jax.jit(jax.vmap(lambda y: jnp.log(variance(y)) - energy(y) / kT))
    gain_attack = np.asarray(log_a(res.positions) - log_a(starts))
    gain_random = np.asarray(log_a(rnd) - log_a(starts))
    print("log-objective gain: attack", np.round(gain_attack, 3), "random", np.round(gain_random, 3))
    assert np.mean(gain_attack > gain_random) >= 0.9 and np.all(gain_attack > 0)
