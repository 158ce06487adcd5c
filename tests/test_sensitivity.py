"""Sensitivities d QoI / d coefficients (jaxiap.md.sensitivity, jaxiap.md.fluctuation,
jaxiap.md.first_passage).

Every estimator is compared with central finite differences using common
random numbers (same keys), with closed forms, or with exact quadrature.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxiap  # noqa: F401  (float64)
from jaxiap.descriptors.radial import RadialBasis
from jaxiap.errors import JaxiapInputError
from jaxiap.md import first_passage as fp
from jaxiap.md import fluctuation as fluct
from jaxiap.md import sensitivity as sens
from jaxiap.potentials.linear import LinearBasis, energy_fn as linear_energy_fn
from jaxiap.systems.lj import icosahedron

# 3-function Chebyshev pair basis (r_min 0.8, r_cut 2.5) fitted to the LJ pair
# curve (weighted least squares on r in [0.95, 2.5]): minimum -0.93 eps near
# r = 1.13, a soft but repulsive wall; stable for LJ13 MD at dt = 0.005.
C_LJ3 = jnp.array([3.81520598, 3.43910912, 10.40381828])


@pytest.fixture(scope="module")
def lj3():
    basis = LinearBasis(RadialBasis("chebyshev", 3, 0.8, 2.5))
    return linear_energy_fn(basis), jnp.asarray(icosahedron(1.1))


# ---------------------------------------------------------------------------
# Pathwise reverse mode
# ---------------------------------------------------------------------------

PATH_KW = dict(kT=0.3, gamma=1.0, dt=0.005, n_steps=200, sample_every=2)


KEYS4 = jax.random.split(jax.random.key(3), 4)


def _obs_e_plus_rg(energy):
    pe = sens.potential_energy_observable(energy)
    return lambda c, x: pe(c, x) + 5.0 * sens.radius_of_gyration(x)


@pytest.fixture(scope="module")
def pathwise_default(lj3):
    """Replica-mean time average of E(c, x) + 5 Rg(x) over 4 replicas x 200 BAOAB
    steps (sampled every 2), default checkpointing (blocks of ~sqrt(200) steps)."""
    energy, x0 = lj3
    qoi = sens.trajectory_qoi(energy, _obs_e_plus_rg(energy), **PATH_KW)
    return qoi, sens.ensemble_qoi_and_grad(qoi, C_LJ3, KEYS4, x0)


def test_pathwise_grad_matches_central_fd(lj3, pathwise_default):
    """Reverse-mode grad through the checkpointed MD scan vs central FD with the
    same keys (deterministic, so 1e-5 relative). The observable mixes a direct
    c-dependence (the potential energy) and a pure path one (Rg)."""
    energy, x0 = lj3
    qoi, res = pathwise_default
    assert res.values.shape == (4,)
    assert np.isfinite(np.asarray(res.values)).all()
    np.testing.assert_allclose(res.value, np.mean(res.values), rtol=1e-14)
    h = 1e-5
    fd = []
    for k in range(3):
        e = jnp.zeros(3).at[k].set(h)
        vp = jnp.mean(sens.ensemble_qoi(qoi, C_LJ3 + e, KEYS4, x0))
        vm = jnp.mean(sens.ensemble_qoi(qoi, C_LJ3 - e, KEYS4, x0))
        fd.append((vp - vm) / (2 * h))
    fd = np.array(fd)
    g = np.asarray(res.grad)
    assert np.all(np.abs(g) > 1e-2)  # a non-trivial gradient
    np.testing.assert_allclose(g, fd, rtol=1e-5, atol=1e-7 * np.max(np.abs(fd)))


def test_checkpointing_does_not_change_grad(lj3, pathwise_default):
    """A plain scan (no checkpointing) gives the default's gradient to 1e-10. The
    default (checkpoint_every = round(sqrt(200)) = 14 steps = 7 samples) runs
    14 checkpointed blocks plus a checkpointed tail of 2 samples."""
    energy, x0 = lj3
    g_default = np.asarray(pathwise_default[1].grad)
    qoi = sens.trajectory_qoi(energy, _obs_e_plus_rg(energy), checkpoint_every=0, **PATH_KW)
    g = np.asarray(sens.ensemble_qoi_and_grad(qoi, C_LJ3, KEYS4, x0).grad)
    np.testing.assert_allclose(g, g_default, rtol=1e-10, atol=0)


def test_trajectory_qoi_inputs_and_builtin_observable(lj3):
    """The built-in Rg observable averages radius_of_gyration over the samples of
    the same trajectory that sample_trajectory returns."""
    energy, x0 = lj3
    key = jax.random.key(0)
    kw = dict(kT=0.3, gamma=1.0, dt=0.005)
    a = sens.ensemble_qoi(sens.trajectory_qoi(energy, "radius_of_gyration", n_steps=20, sample_every=4, **kw),
                          C_LJ3, key[None], x0)[0]
    traj = jax.jit(lambda c, k, x: jax.vmap(sens.radius_of_gyration)(
        sens.sample_trajectory(energy, c, k, x, n_samples=5, sample_every=4, **kw)))
    ref = float(np.mean(traj(C_LJ3, key, x0)))
    np.testing.assert_allclose(float(a), ref, rtol=1e-12)
    assert 0.9 < ref < 1.3  # icosahedron-like cluster, Rg ~ 1 sigma
    with pytest.raises(JaxiapInputError, match="sample_every"):
        sens.trajectory_qoi(energy, "potential_energy", n_steps=10, sample_every=3, **kw)
    with pytest.raises(JaxiapInputError, match="observable"):
        sens.trajectory_qoi(energy, "kinetic", n_steps=10, **kw)


# ---------------------------------------------------------------------------
# Fluctuation estimators
# ---------------------------------------------------------------------------


def test_fluctuation_harmonic_closed_form():
    """E = c1 x^2/2 + c2 y^2/2, A = x^2: <A> = kT/c1, d<A>/dc = (-kT/c1^2, 0);
    <E> = kT, so d<E>/dc = 0. Exact i.i.d. samples; agreement within 3 s.e."""
    kT, c = 0.7, np.array([2.0, 0.5])
    rng = np.random.default_rng(0)
    xy = rng.normal(size=(100_000, 2)) * np.sqrt(kT / c)
    B = 0.5 * xy**2
    A = xy[:, 0] ** 2
    est = fluct.fluctuation_gradient_estimate(A, B, kT, n_blocks=20)
    exact = np.array([-kT / c[0] ** 2, 0.0])
    assert np.all(np.asarray(est.stderr) > 0)
    assert np.all(np.abs(np.asarray(est.grad) - exact) < 3 * np.asarray(est.stderr))
    assert float(est.stderr[0]) < 0.05 * kT / c[0] ** 2  # a sharp test
    np.testing.assert_allclose(est.grad, fluct.fluctuation_gradient(A, B, kT), rtol=1e-14)
    me = fluct.mean_energy_gradient_estimate(B, c, kT, n_blocks=20)
    assert np.all(np.abs(np.asarray(me.grad)) < 3 * np.asarray(me.stderr))
    np.testing.assert_allclose(me.grad, fluct.mean_energy_gradient(B, c, kT), rtol=1e-14)
    with pytest.raises(JaxiapInputError, match="observable"):
        fluct.fluctuation_gradient(A[:-1], B, kT)
    with pytest.raises(JaxiapInputError, match="NaN"):
        fluct.fluctuation_gradient(np.where(np.arange(len(A)) == 3, np.nan, A), B, kT)


def _dw_features(x):
    """Double-well features B(x) = ((x^2 - 1)^2, x) for x (..., 1) -> (..., 2)."""
    x = x[..., 0]
    return jnp.stack([(x**2 - 1.0) ** 2, x], axis=-1)


def _dw_energy(c, x):
    return c @ _dw_features(x)


C_DW = jnp.array([1.0, 0.3])
KT_DW = 0.5


def _quadrature_averages(c, kT=KT_DW):
    x = np.linspace(-3.5, 3.5, 14001)[:, None]
    B = np.asarray(_dw_features(jnp.asarray(x)))
    E = B @ np.asarray(c)
    w = np.exp(-(E - E.min()) / kT)
    w /= w.sum()
    return x[:, 0], B, w, float(w @ x[:, 0]), float(w @ E)


def test_fluctuation_matches_quadrature_double_well():
    """With Boltzmann quadrature weights the fluctuation formulas are exact:
    compare with central FD of the quadrature averages <x> and <E> (1e-6)."""
    x, B, w, _, _ = _quadrature_averages(C_DW)
    g = fluct.fluctuation_gradient(x, B, KT_DW, weights=w)
    ge = fluct.mean_energy_gradient(B, C_DW, KT_DW, weights=w)
    h = 1e-5
    fd_a, fd_e = [], []
    for k in range(2):
        e = np.zeros(2)
        e[k] = h
        p, m = _quadrature_averages(C_DW + e), _quadrature_averages(C_DW - e)
        fd_a.append((p[3] - m[3]) / (2 * h))
        fd_e.append((p[4] - m[4]) / (2 * h))
    assert abs(fd_a[1]) > 0.1  # tilt moves <x> visibly
    np.testing.assert_allclose(g, fd_a, rtol=1e-6)
    np.testing.assert_allclose(ge, fd_e, rtol=1e-6)


def test_fluctuation_from_md_samples_double_well():
    """Canonical samples from BAOAB MD (32 independent replicas, one batch per
    replica) give the quadrature derivatives within 3 standard errors."""
    R, n_samples = 32, 400
    keys = jax.random.split(jax.random.key(11), R)
    x0 = jnp.where(jnp.arange(R)[:, None] % 2 == 0, -1.0, 1.0)
    run = jax.jit(jax.vmap(lambda k, x: sens.sample_trajectory(
        _dw_energy, C_DW, k, x, kT=KT_DW, gamma=1.0, dt=0.02, n_samples=n_samples, sample_every=25, n_burn=200)))
    xs = run(keys, x0).reshape(-1, 1)  # replica-major: each replica is one block
    B = _dw_features(xs)
    x, Bq, w, _, _ = _quadrature_averages(C_DW)
    exact_a = np.asarray(fluct.fluctuation_gradient(x, Bq, KT_DW, weights=w))
    exact_e = np.asarray(fluct.mean_energy_gradient(Bq, C_DW, KT_DW, weights=w))
    est = fluct.fluctuation_gradient_estimate(xs[:, 0], B, KT_DW, n_blocks=R)
    me = fluct.mean_energy_gradient_estimate(B, C_DW, KT_DW, n_blocks=R)
    for e, ex in ((est, exact_a), (me, exact_e)):
        z = (np.asarray(e.grad) - ex) / np.asarray(e.stderr)
        assert np.all(np.abs(z) < 3), (e, ex)
        assert np.all(np.asarray(e.stderr) < 0.2 * np.abs(ex) + 0.02)  # informative


# ---------------------------------------------------------------------------
# Likelihood-ratio estimator for first-passage times
# ---------------------------------------------------------------------------

C_FP = jnp.array([1.0, 0.0])
FP_KW = dict(kT=0.35, gamma=1.0, dt=0.02, n_steps=500)  # t_max = 10


def _fp_runner(integrator="overdamped", event=True, **kw):
    rep = fp.first_passage_lr_fn(
        _dw_energy, (lambda x: x[0] > 0.0) if event else None, integrator=integrator, **{**FP_KW, **kw}
    )
    return jax.jit(jax.vmap(rep, in_axes=(None, 0, None)))


def test_lr_first_passage_matches_fd_overdamped():
    """Overdamped Euler-Maruyama in the double well, start x = -1, event x > 0,
    t_max = 10. LR derivatives of m = E[min(tau, t_max)] and of the log
    censored-exponential rate vs central FD with common random numbers."""
    R = 20_000
    keys = jax.random.split(jax.random.key(2), R)
    x0 = jnp.array([-1.0])
    run = _fp_runner()
    out = run(C_FP, keys, x0)
    est = fp.first_passage_lr_gradient(out["time"], out["event"], out["score"])
    assert 0.2 * R < est.n_events < 0.8 * R
    # Sanity: the score has mean zero, and a QoI independent of the path has
    # LR derivative zero.
    S = np.asarray(out["score"])
    assert np.all(np.abs(S.mean(0)) < 3 * S.std(0) / np.sqrt(R))
    q_indep = jax.random.normal(jax.random.key(99), (R,))
    g0, se0 = fp.lr_gradient(q_indep, S)
    assert np.all(np.abs(np.asarray(g0)) < 3 * np.asarray(se0))

    h = 0.05
    for k in range(2):
        e = jnp.zeros(2).at[k].set(h)
        p, m = run(C_FP + e, keys, x0), run(C_FP - e, keys, x0)
        Tp, Tm = np.asarray(p["time"]), np.asarray(m["time"])
        d = (Tp - Tm) / (2 * h)
        fd, fd_se = d.mean(), d.std(ddof=1) / np.sqrt(R)
        lr, lr_se = float(est.grad_mean_time[k]), float(est.stderr_mean_time[k])
        assert abs(lr - fd) < 3 * np.hypot(lr_se, fd_se), (k, lr, lr_se, fd, fd_se)
        assert abs(fd) > 4 * fd_se  # the derivative is resolved
        # log rate = log sum D - log sum T
        Dp, Dm = np.asarray(p["event"], float), np.asarray(m["event"], float)
        fd_lr = (np.log(Dp.mean() / Tp.mean()) - np.log(Dm.mean() / Tm.mean())) / (2 * h)
        psi = (Dp / Dp.mean() - Tp / Tp.mean() - Dm / Dm.mean() + Tm / Tm.mean()) / (2 * h)
        fd_lr_se = psi.std(ddof=1) / np.sqrt(R)
        g, se = float(est.grad_log_rate[k]), float(est.stderr_log_rate[k])
        assert abs(g - fd_lr) < 3 * np.hypot(se, fd_lr_se), (k, g, se, fd_lr, fd_lr_se)


def test_lr_score_baoab_fixed_time():
    """Underdamped BAOAB positions-path score (with its momentum-tangent
    recursion): (a) the score has mean zero; (b) LR d E[x_N]/dc at a fixed
    time (no event, N = 100 steps of 0.05) agrees with the pathwise central FD
    with common random numbers within 3 combined standard errors."""
    R = 20_000
    keys = jax.random.split(jax.random.key(4), R)
    x0 = jnp.array([-1.0])
    run = _fp_runner("baoab", event=False, n_steps=100, dt=0.05)
    out = run(C_FP, keys, x0)
    S = np.asarray(out["score"])
    assert np.all(np.abs(S.mean(0)) < 3 * S.std(0) / np.sqrt(R))
    g, se = fp.lr_gradient(out["positions"][:, 0], S)
    h = 1e-4
    for k in range(2):
        e = jnp.zeros(2).at[k].set(h)
        d = (np.asarray(run(C_FP + e, keys, x0)["positions"][:, 0])
             - np.asarray(run(C_FP - e, keys, x0)["positions"][:, 0])) / (2 * h)
        fd, fd_se = d.mean(), d.std(ddof=1) / np.sqrt(R)
        assert abs(float(g[k]) - fd) < 3 * np.hypot(float(se[k]), fd_se), (k, g, se, fd, fd_se)
        assert abs(fd) > 5 * float(se[k])


def test_quenched_graph_event_lj13():
    """The LJ13 event helper: a slightly perturbed icosahedron quenches back to
    the reference bond graph (no event); swapping the labels of the centre and
    a surface atom quenches to the same shape with a different labelled graph
    (event)."""
    from jaxiap.systems.lj import lj_energy

    ico = jnp.asarray(icosahedron())
    event = jax.jit(fp.quenched_graph_event(lj_energy, ico))
    noisy = ico + 0.03 * jax.random.normal(jax.random.key(0), ico.shape)
    swapped = noisy[jnp.array([1, 0] + list(range(2, 13)))]
    assert not bool(event(noisy))
    assert bool(event(swapped))
