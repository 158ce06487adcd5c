"""Acceptance tests of the 2+3-body Gaussian-process force field (issue 14, part 1).

Everything runs on rattled copies of the 4-atom cubic FCC cell (a = 4.046 Å,
two species, EMT labels) with r_cut = 4.4 Å > a, so every atom sees its own
periodic images (the 6 at distance a), and r_cut_3 = 3.3 Å (the 12 nearest
neighbours, 24 triplets per atom). The capacities are exactly what these
structures need, and every GP that predicts holds 8-12 environments and 24
rows (padded to 16 and 32), so the padded shapes, hence the compiled
programs, are shared by all tests (module-scoped fixtures build the data,
the GPs and the reference blocks once; predictions always ask for every
output, one compiled variant).
"""

from dataclasses import replace
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase import Atoms
from ase.calculators.emt import EMT

from jaxiap.descriptors.environments import Environments
from jaxiap.errors import JaxiapInputError
from jaxiap.potentials import gp as gp_mod
from jaxiap.potentials.gp import GaussianProcess, GPHyperparameters, GPSettings, structure_environments
from jaxiap.potentials.gp_kernels import block_matrix_autodiff, body_kernels
from jaxiap.potentials.gp_train import _Objective, log_marginal_likelihood, optimize_hyperparameters
from jaxiap.systems.aluminium import al_fcc

SETTINGS = GPSettings(r_cut=4.4, r_cut_3=3.3, max_neighbors=18, max_triplet_neighbors=12, max_triplets=24,
                      stress=True)
HYP = GPHyperparameters(sig2=0.05, l2=0.6, sig3=0.01, l3=0.7, noise=0.02, noise_energy=0.01, noise_stress=0.002)
Q = 1 + SETTINGS.n_p                     # (value, delta (3), eps (9))
BODY_WEIGHTS = (0.5, 1.0 / 3.0)          # E = sum_i S2_i / 2 + S3_i / 3
VOIGT = ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))
SPECIES = ((13, 29, 13, 13), (13, 13, 29, 13), (29, 13, 13, 29), (13, 13, 13, 29))   # structures A, B, C, D
# the mixed training set: (structure, atoms with force labels, energy label?, stress label?)
MIXED = ((0, (0, 2), True, True), (1, (1,), True, False), (2, (), True, True))


def _rel_close(actual, desired, rtol, what=""):
    """max |actual - desired| <= rtol * max |desired| (relative to the scale of the whole array)."""
    actual, desired = np.asarray(actual), np.asarray(desired)
    scale = np.max(np.abs(desired))
    err = np.max(np.abs(actual - desired))
    assert scale > 0, what
    assert err <= rtol * scale, f"{what}: max error {err:.3e} > {rtol:.0e} * scale {scale:.3e}"


def _make_structures():
    base = al_fcc(1)
    rng = np.random.default_rng(14)
    out = []
    for sp in SPECIES:
        atoms = Atoms(numbers=sp, positions=base.positions + rng.normal(0.0, 0.04, (4, 3)), cell=base.cell,
                      pbc=True)
        atoms.calc = EMT()
        out.append(dict(positions=atoms.positions.copy(), cell=np.asarray(atoms.cell).copy(), species=np.array(sp),
                        energy=atoms.get_potential_energy(), forces=atoms.get_forces(), stress=atoms.get_stress()))
    return out


@pytest.fixture(scope="module")
def structures():
    """Four rattled 4-atom cells (A, B, C, D) with EMT energies, forces and stresses (fixed seed)."""
    return _make_structures()


def _add(gp, s, atoms, energy, stress):
    kw = {}
    if atoms:
        kw.update(forces=s["forces"], atoms=list(atoms))
    if energy:
        kw["energy"] = s["energy"]
    if stress:
        kw["stress"] = s["stress"]
    return gp.add(s["positions"], s["cell"], s["species"], **kw)


@pytest.fixture(scope="module")
def mixed_gp(structures):
    """GP on energies, forces and stresses of A, B, C (24 rows, 12 environments), factorised by refit()."""
    gp = GaussianProcess(SETTINGS, HYP)
    for k, atoms, energy, stress in MIXED:
        _add(gp, structures[k], atoms, energy, stress)
    return gp.refit()


@pytest.fixture(scope="module")
def force_gp(structures):
    """GP on the forces alone of A and B (24 rows, 8 environments)."""
    gp = GaussianProcess(SETTINGS, HYP)
    for s in structures[:2]:
        gp.add(s["positions"], s["cell"], s["species"], forces=s["forces"])
    return gp.update()


@pytest.fixture(scope="module")
def all_envs(structures):
    """The 16 environments of A, B, C, D stacked in order (structure k, atom i) -> 4 k + i."""
    return _stacked_envs(structures)


def _stacked_envs(structures):
    envs = [structure_environments(s["positions"], s["cell"], s["species"], SETTINGS) for s in structures]
    return Environments(*[jnp.concatenate([getattr(e, f) for e in envs]) if f != "overflow" else jnp.asarray(False)
                          for f in Environments._fields])


# Test-only programs that run a few times are compiled without XLA's backend optimisations: that halves
# their compile time (the bulk of this module's run time); the numbers agree to round-off.
_QUICK = {"xla_backend_optimization_level": 0}
_autodiff_jit = jax.jit(block_matrix_autodiff, static_argnames=("r_cut", "r_cut_3", "n_p", "chunk"),
                        compiler_options=_QUICK)


@pytest.fixture(scope="module")
def ref_blocks(all_envs):
    """Reference (autodiff) blocks (16, 16, 2, 13, 13) between all environments at HYP's length scales."""
    return np.asarray(_autodiff_jit(all_envs, all_envs, r_cut=SETTINGS.r_cut, r_cut_3=SETTINGS.r_cut_3,
                                    l2=HYP.l2, l3=HYP.l3, n_p=SETTINGS.n_p))


@pytest.fixture(scope="module")
def fast_blocks(all_envs):
    """Fast (matrix-product) blocks rearranged to the reference layout (16, 16, 2, 13, 13)."""
    b = gp_mod._unit_blocks_jit(all_envs, all_envs, SETTINGS, HYP.l2, HYP.l3)      # (2, N, M, P, Q)
    return np.asarray(b).transpose(1, 2, 0, 3, 4)


def _predict(gp, positions, cell, species):
    """gp.predict with every output (one compiled variant of the prediction for the whole module)."""
    return gp.predict(positions, cell, species, energy_std=True, stress=True)


# --------------------------------------------------------------------------- 1. kernel derivatives
@partial(jax.jit, compiler_options=_QUICK)
def _kernel_batch(e1, e2, p1, p2):
    return jax.vmap(lambda a, b: body_kernels(e1, e2, a, b, SETTINGS.r_cut, SETTINGS.r_cut_3, HYP.l2, HYP.l3))(p1, p2)


def _central_differences(k, n, h):
    """(2, 1 + n, 1 + n) value / first / mixed second central differences from the batch of _fd_points."""
    out = np.zeros((2, 1 + n, 1 + n))
    out[:, 0, 0] = k[0]
    first = k[1:1 + 4 * n].reshape(n, 4, 2)
    out[:, 1:, 0] = ((first[:, 0] - first[:, 1]) / (2 * h)).T
    out[:, 0, 1:] = ((first[:, 2] - first[:, 3]) / (2 * h)).T
    mixed = k[1 + 4 * n:].reshape(n, n, 4, 2)
    second = (mixed[:, :, 0] - mixed[:, :, 1] - mixed[:, :, 2] + mixed[:, :, 3]) / (4 * h * h)     # (n, n, 2)
    out[:, 1:, 1:] = second.transpose(2, 0, 1)
    return out


def _fd_points(n, h):
    eye = np.eye(n) * h
    zero = np.zeros(n)
    p1, p2 = [zero], [zero]
    for a in range(n):                              # d/dp1_a, d/dp2_a
        p1 += [eye[a], -eye[a], zero, zero]
        p2 += [zero, zero, eye[a], -eye[a]]
    for a in range(n):                              # d^2 / dp1_a dp2_b
        for b in range(n):
            for s1, s2 in ((1, 1), (1, -1), (-1, 1), (-1, -1)):
                p1.append(s1 * eye[a])
                p2.append(s2 * eye[b])
    return np.array(p1), np.array(p2)


def _finite_difference_blocks(e1, e2, h=8e-4):
    """(2, Q, Q) value, first and mixed second derivatives of the value-only kernel in (p1, p2) (centre shift
    and strain of each environment) by central differences at steps h and 2 h, Richardson-extrapolated
    (error O(h^4); a plain O(h^2) difference of these ~500-valued kernels is round-off limited near 1e-7)."""
    n = SETTINGS.n_p
    a1, a2 = _fd_points(n, h)
    b1, b2 = _fd_points(n, 2 * h)
    k = np.asarray(_kernel_batch(e1, e2, jnp.asarray(np.concatenate([a1, b1])), jnp.asarray(np.concatenate([a2, b2]))))
    d_h = _central_differences(k[:len(a1)], n, h)
    d_2h = _central_differences(k[len(a1):], n, 2 * h)
    return (4.0 * d_h - d_2h) / 3.0


def _env_tuple(envs, i):
    return tuple(a[i] for a in (envs.vectors, envs.mask, envs.species, envs.center_species, envs.triplets,
                                envs.triplet_mask))


# value; energy-force (d/dp1: force, strain of the first environment; d/dp2: of the second); force-force;
# all second derivatives (force-stress, stress-stress)
SECTIONS = (("value", np.s_[0, 0]), ("d/dp1", np.s_[1:, 0]), ("d/dp2", np.s_[0, 1:]),
            ("d2/dp1dp2 (forces)", np.s_[1:4, 1:4]), ("d2/dp1dp2 (all)", np.s_[1:, 1:]))


def test_force_and_stress_covariances_are_derivatives_of_the_energy_kernel(all_envs, ref_blocks, fast_blocks):
    """Energy-force, force-force and stress covariances (autodiff reference and fast blocks) equal central
    finite differences of the value-only kernel body_kernels in the centre shifts and strains (1e-6 relative,
    per body order and per value / first / second-derivative section); fast == autodiff to 1e-12."""
    for c in range(2):
        for sec, sl in SECTIONS:
            _rel_close(fast_blocks[:, :, c][(...,) + sl], ref_blocks[:, :, c][(...,) + sl], 1e-12,
                       f"fast vs autodiff blocks, body {c + 2} {sec}")
    # the blocks are symmetric under exchange of the two environments
    _rel_close(ref_blocks, ref_blocks.transpose(1, 0, 2, 4, 3), 1e-12, "B(j, i) = B(i, j)^T")
    # pairs: Cu-Cu centres of two structures, Al vs Cu centre, an environment with itself
    for i, j in ((1, 8), (0, 6), (3, 3)):
        fd = _finite_difference_blocks(_env_tuple(all_envs, i), _env_tuple(all_envs, j))
        for name, blocks in (("autodiff", ref_blocks), ("fast", fast_blocks)):
            b = blocks[i, j]
            for c in range(2):
                for sec, sl in SECTIONS:
                    _rel_close(b[c][sl], fd[c][sl], 1e-6, f"{name} envs ({i}, {j}) body {c + 2} {sec}")
            assert np.max(np.abs(b[1])) > 0 and np.max(np.abs(b[0, 1:4, 1:4])) > 0   # both bodies contribute


# --------------------------------------------------------------------------- 2. energy from forces
def _path_margin(x0, x1, cell, cutoffs, n=41):
    """Smallest |distance - cutoff| over all atom-image pairs along the straight path x0 -> x1."""
    shifts = np.array([(a, b, c) for a in range(-2, 3) for b in range(-2, 3) for c in range(-2, 3)]) @ cell
    margin = np.inf
    for t in np.linspace(0.0, 1.0, n):
        x = x0 + t * (x1 - x0)
        d = np.linalg.norm(x[None, :, None] + shifts[None, None] - x[:, None, None], axis=-1).ravel()
        margin = min(margin, min(np.min(np.abs(d - rc)) for rc in cutoffs))
    return margin


def test_energies_of_a_force_trained_gp_integrate_its_forces(force_gp, structures):
    """A GP trained on forces alone: E(x1) - E(x0) = -int_0^1 F(x(t)) . (x1 - x0) dt along a straight path
    (20-point Gauss-Legendre, no cutoff crossed) to 1e-8 relative; GPPotential.mean_forces = -grad energy and
    the potential's energy and forces equal predict's."""
    s = structures[3]
    x0, cell, sp = s["positions"], s["cell"], s["species"]
    x1 = x0.copy()
    x1[0] += [0.07, -0.05, 0.03]
    x1[3] += [-0.04, 0.06, 0.05]
    assert _path_margin(x0, x1, cell, (SETTINGS.r_cut, SETTINGS.r_cut_3)) > 0.05   # integrand analytic on the path
    e0 = _predict(force_gp, x0, cell, sp)["energy"]
    e1 = _predict(force_gp, x1, cell, sp)["energy"]
    nodes, weights = np.polynomial.legendre.leggauss(20)
    integral = 0.0
    for t, w in zip(0.5 * (nodes + 1.0), 0.5 * weights):
        f = _predict(force_gp, x0 + t * (x1 - x0), cell, sp)["forces"]
        integral += w * np.sum(f * (x1 - x0))
    assert abs(e1 - e0) > 1e-3                          # a real energy change, not round-off
    assert abs((e1 - e0) + integral) <= 1e-8 * abs(e1 - e0), (e1 - e0, -integral)

    pot = force_gp.potential(cell)

    @partial(jax.jit, compiler_options=_QUICK)          # one compiled program for the three quantities
    def energy_grad_forces(x):
        e, g = jax.value_and_grad(lambda y: pot.energy(y, species=jnp.asarray(sp)))(x)
        return e, g, pot.mean_forces(x, species=jnp.asarray(sp))

    e, g, f = energy_grad_forces(jnp.asarray(x1))
    f = np.asarray(f)
    _rel_close(f, -np.asarray(g), 1e-10, "mean_forces vs -grad energy")
    _rel_close(f, _predict(force_gp, x1, cell, sp)["forces"], 1e-10, "potential vs predict forces")
    assert abs(float(e) - e1) <= 1e-10 * abs(e1)


# --------------------------------------------------------------------------- 3. rotations
def _rotation(seed):
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def test_rotating_a_structure_rotates_the_predicted_forces(force_gp, structures):
    """R x -> forces R F, same energy and energy std, same per-atom force-std norms (the trace of each
    atom's force covariance), to 1e-10: for a free 4-atom cluster (cell None) and for a periodic cell rotated
    together with its atoms."""
    s = structures[3]
    rot = _rotation(5)
    cluster = s["positions"] - s["positions"].mean(0)
    for x, cell in ((s["positions"], s["cell"]), (cluster, None)):
        p = _predict(force_gp, x, cell, s["species"])
        pr = _predict(force_gp, x @ rot.T, None if cell is None else cell @ rot.T, s["species"])
        assert np.max(np.abs(p["forces"])) > 1e-3
        _rel_close(pr["forces"], p["forces"] @ rot.T, 1e-10, f"rotated forces (cell {cell is not None})")
        assert abs(pr["energy"] - p["energy"]) <= 1e-10 * abs(p["energy"])
        assert abs(pr["energy_std"] - p["energy_std"]) <= 1e-10 * p["energy_std"]
        _rel_close(np.linalg.norm(pr["forces_std"], axis=1), np.linalg.norm(p["forces_std"], axis=1), 1e-10,
                   "force std norms")


def test_moving_atoms_by_lattice_vectors_changes_nothing(force_gp, structures):
    """Atoms carried several cells away (as MD leaves them, unwrapped) have the same environments: energy,
    forces and stds equal those of the wrapped structure to 1e-10. Without wrapping, a neighbour more
    than one cell away falls outside the image shifts and is silently lost."""
    s = structures[3]
    n = np.array([[3, 0, 0], [0, -2, 1], [-4, 5, 0], [0, 0, 0]])[: len(s["positions"])]
    far = s["positions"] + n @ s["cell"]
    p, q = _predict(force_gp, s["positions"], s["cell"], s["species"]), _predict(force_gp, far, s["cell"], s["species"])
    assert np.max(np.abs(p["forces"])) > 1e-3
    for k in ("forces", "forces_std"):
        _rel_close(q[k], p[k], 1e-10, f"{k} of the unwrapped structure")
    assert abs(q["energy"] - p["energy"]) <= 1e-10 * abs(p["energy"])
    assert abs(q["energy_std"] - p["energy_std"]) <= 1e-10 * p["energy_std"]


# --------------------------------------------------------------------------- 4. dense numpy reference
def _reference_rows(structures, spec):
    """Design rows W (2, R, 16 Q) over (environment 4 k + i, component) and targets y (R,), built from the
    model definition: forces -d/d(delta); energy sum_i (w2 S2_i, w3 S3_i); stress (1 / V) times the
    Voigt-symmetrised strain derivative of the energy."""
    rows, y = [], []
    for k, atoms, energy, stress in spec:
        s = structures[k]
        for i in atoms:
            for a in range(3):
                w = np.zeros((2, 16, Q))
                w[:, 4 * k + i, 1 + a] = -1.0
                rows.append(w)
                y.append(s["forces"][i, a])
        if energy:
            w = np.zeros((2, 16, Q))
            for c in range(2):
                w[c, 4 * k:4 * k + 4, 0] = BODY_WEIGHTS[c]
            rows.append(w)
            y.append(s["energy"])
        if stress:
            vol = abs(np.linalg.det(s["cell"]))
            for v, (a, b) in enumerate(VOIGT):
                w = np.zeros((2, 16, Q))
                for c in range(2):
                    w[c, 4 * k:4 * k + 4, 4 + 3 * a + b] += 0.5 * BODY_WEIGHTS[c] / vol
                    w[c, 4 * k:4 * k + 4, 4 + 3 * b + a] += 0.5 * BODY_WEIGHTS[c] / vol
                rows.append(w)
                y.append(s["stress"][v])
    return np.stack(rows, axis=1).reshape(2, len(rows), 16 * Q), np.array(y)


def test_predictions_and_likelihood_match_a_dense_numpy_reference(mixed_gp, structures, ref_blocks):
    """K assembled in numpy from the autodiff reference blocks (energy, force and stress rows), solved with
    numpy: predictive mean and std of D's energy, forces and stress and the log marginal likelihood equal
    gp.predict / gp.log_marginal_likelihood to 1e-8 relative."""
    big = [ref_blocks[:, :, c].transpose(0, 2, 1, 3).reshape(16 * Q, 16 * Q) for c in range(2)]
    sig = (HYP.sig2**2, HYP.sig3**2)

    def cov(wa, wb):
        return sum(sig[c] * wa[c] @ big[c] @ wb[c].T for c in range(2))

    w, y = _reference_rows(structures, MIXED)
    noise = []
    for k, atoms, energy, stress in MIXED:
        noise += [HYP.noise**2] * 3 * len(atoms) + [HYP.noise_energy**2] * energy + [HYP.noise_stress**2] * 6 * stress
    kmat = cov(w, w) + np.diag(noise)
    assert kmat.shape == (24, 24) and mixed_gp.n_rows == 24
    np.testing.assert_array_equal(mixed_gp.targets, y)               # same rows in the same order
    alpha = np.linalg.solve(kmat, y)
    _, logdet = np.linalg.slogdet(kmat)
    lml = -0.5 * y @ alpha - 0.5 * logdet - 0.5 * len(y) * np.log(2 * np.pi)
    assert abs(mixed_gp.log_marginal_likelihood() - lml) <= 1e-8 * abs(lml)

    d = structures[3]
    wq, _ = _reference_rows(structures, ((3, (0, 1, 2, 3), True, True),))   # 12 force, 1 energy, 6 stress rows
    kq = cov(wq, w)
    mean = kq @ alpha
    var = np.diag(cov(wq, wq)) - np.sum(kq * np.linalg.solve(kmat, kq.T).T, axis=1)
    std = np.sqrt(var)
    pred = _predict(mixed_gp, d["positions"], d["cell"], d["species"])
    _rel_close(pred["forces"], mean[:12].reshape(4, 3), 1e-8, "forces")
    _rel_close(pred["forces_std"], std[:12].reshape(4, 3), 1e-8, "forces std")
    assert abs(pred["energy"] - mean[12]) <= 1e-8 * abs(mean[12])
    assert abs(pred["energy_std"] - std[12]) <= 1e-8 * std[12]
    _rel_close(pred["stress"], mean[13:], 1e-8, "stress")
    _rel_close(pred["stress_std"], std[13:], 1e-8, "stress std")
    # the data inform the prediction: the posterior std is well below the prior's
    assert np.all(var < 0.9 * np.diag(cov(wq, wq)))


# --------------------------------------------------------------------------- 5. incremental update
def test_incremental_update_equals_refit(mixed_gp, structures):
    """Rows added in three batches with update() after each (Cholesky extension and block extension) give
    the Cholesky factor, alpha and predictions of the GP refitted on all rows at once, to 1e-10."""
    gp = GaussianProcess(SETTINGS, HYP)
    _add(gp, structures[0], *MIXED[0][1:])
    gp.update()
    chol_first = gp._chol.copy()
    _add(gp, structures[1], *MIXED[1][1:])
    gp.update()
    _add(gp, structures[2], *MIXED[2][1:])
    gp.update()
    assert gp._chol.shape == mixed_gp._chol.shape == (24, 24)
    np.testing.assert_array_equal(gp._chol[:13, :13], chol_first)        # the factor was extended, not redone
    _rel_close(gp._chol, mixed_gp._chol, 1e-10, "Cholesky factor")
    _rel_close(gp._alpha, mixed_gp._alpha, 1e-10, "alpha")
    d = structures[3]
    a = _predict(gp, d["positions"], d["cell"], d["species"])
    b = _predict(mixed_gp, d["positions"], d["cell"], d["species"])
    for key in ("energy", "energy_std", "forces", "forces_std", "stress", "stress_std"):
        _rel_close(a[key], b[key], 1e-10, key)


# --------------------------------------------------------------------------- 6. hyperparameters
NAMES = ("sig2", "l2", "sig3", "l3", "noise", "noise_energy", "noise_stress")


def test_likelihood_gradient_matches_finite_differences_and_optimizer_improves(mixed_gp, structures):
    """d lml / d log theta for all seven hyperparameters equals central differences (1e-6 relative); the
    likelihood equals the GP's own; a few L-BFGS iterations raise it."""
    lml, grad = log_marginal_likelihood(mixed_gp, names=NAMES)
    assert abs(lml - mixed_gp.log_marginal_likelihood()) <= 1e-10 * abs(lml)
    # central differences in log theta at steps h and 2 h, Richardson-extrapolated (the likelihood's
    # round-off, ~1e-12, would swamp a plain difference of the small l3 derivative); the objective that
    # log_marginal_likelihood evaluates, kept across the steps so that it caches blocks per length scale
    objective = _Objective(mixed_gp, NAMES)
    x0 = np.log([getattr(HYP, n) for n in NAMES])
    assert abs(-objective(x0)[0] - lml) <= 1e-12 * abs(lml)

    def central(k, h):
        step = np.zeros(len(NAMES))
        step[k] = h
        return (objective(x0 - step)[0] - objective(x0 + step)[0]) / (2 * h)    # objective = -lml

    fd = np.array([(4 * central(k, 1e-3) - central(k, 2e-3)) / 3 for k in range(len(NAMES))])
    assert np.all(np.abs(grad) > 1e-3)                   # every hyperparameter matters here
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-8)

    gp = GaussianProcess(SETTINGS, HYP)
    for k, atoms, energy, stress in MIXED:
        _add(gp, structures[k], atoms, energy, stress)
    before = gp.refit().log_marginal_likelihood()
    res = optimize_hyperparameters(gp, max_iterations=4)
    assert res["log_marginal_likelihood"] > before + 1.0
    assert abs(gp.log_marginal_likelihood() - res["log_marginal_likelihood"]) <= 1e-8 * abs(before)
    assert gp.hyperparameters != HYP


# --------------------------------------------------------------------------- 7. core-repulsion prior mean
def test_core_repulsion_is_zbl_with_autodiff_forces_and_stress(structures):
    """The switched ZBL pair energy equals a hand evaluation; the baseline's forces and stress are finite
    differences of its energy; bad baselines are refused."""
    from jaxiap.potentials.repulsion import CoreRepulsion, zbl_pair_energy

    # hand evaluation: Al-Cu at 1.7 Å, switch 1.2 -> 2.2 Å
    a = 0.4685 / (13**0.23 + 29**0.23)
    x = 1.7 / a
    phi = (0.18175 * np.exp(-3.1998 * x) + 0.50986 * np.exp(-0.94229 * x) + 0.28022 * np.exp(-0.4029 * x)
           + 0.02817 * np.exp(-0.20162 * x))
    t = 0.5
    hand = 14.399645 * 13 * 29 / 1.7 * phi * (1 - 10 * t**3 + 15 * t**4 - 6 * t**5)
    assert abs(float(zbl_pair_energy(jnp.asarray(1.7), 13, 29, 1.2, 2.2)) - hand) <= 1e-12 * hand
    assert float(zbl_pair_energy(jnp.asarray(2.2), 13, 29, 1.2, 2.2)) == 0.0
    # r -> 0: the screening tends to 1 (the coefficients sum to 1), V r -> Z1 Z2 e^2 / (4 pi eps0)
    assert abs(float(zbl_pair_energy(jnp.asarray(1e-9), 13, 13, 1.0, 2.0)) * 1e-9 / (14.399645 * 169) - 1) < 1e-6
    gp = GaussianProcess(SETTINGS, HYP, CoreRepulsion(r_inner=2.0, r_outer=3.0))   # reaches the first shell
    s, h = structures[0], 1e-5
    b = gp._baseline_terms(s["positions"], s["cell"], s["species"], stress=True)
    assert b["energy"] > 0.01
    energy = lambda x, c: gp._baseline_terms(x, c, s["species"])["energy"]  # noqa: E731
    fd_f = np.zeros((4, 3))
    for i in range(4):
        for c in range(3):
            d = np.zeros((4, 3))
            d[i, c] = h
            fd_f[i, c] = -(energy(s["positions"] + d, s["cell"]) - energy(s["positions"] - d, s["cell"])) / (2 * h)
    _rel_close(b["forces"], fd_f, 1e-7, "baseline forces")
    fd_s = []
    for a_, b_ in VOIGT:
        eps = np.zeros((3, 3))
        eps[a_, b_] += h / 2
        eps[b_, a_] += h / 2
        up, dn = np.eye(3) + eps, np.eye(3) - eps
        fd_s.append((energy(s["positions"] @ up, s["cell"] @ up) - energy(s["positions"] @ dn, s["cell"] @ dn))
                    / (2 * h) / abs(np.linalg.det(s["cell"])))
    _rel_close(b["stress"], fd_s, 1e-7, "baseline stress")
    with pytest.raises(JaxiapInputError, match="range"):
        GaussianProcess(SETTINGS, HYP, CoreRepulsion(1.0, 5.0))
    with pytest.raises(JaxiapInputError, match="atomic numbers"):
        gp.add(s["positions"], s["cell"], None, forces=s["forces"])


def _image_pair_energy(prior, positions, cell, n_images=2):
    """Brute force: 1/2 sum_i sum_j sum_images V(|x_j + n cell - x_i|) (self excluded) + e_atom N."""
    x = np.asarray(positions)
    rng = range(-n_images, n_images + 1)
    shifts = np.array([[a, b, c] for a in rng for b in rng for c in rng]) @ np.asarray(cell)
    d = x[None, :, None, :] + shifts[None, None] - x[:, None, None, :]           # (N, N, S, 3)
    r = np.linalg.norm(d, axis=-1)
    keep = r > 1e-9
    v = np.asarray(prior.pair_energy(jnp.asarray(np.where(keep, r, 1.0))))
    return 0.5 * float(np.sum(np.where(keep, v, 0.0))) + prior.atom_energy * len(x)


def test_pair_prior_equals_its_linear_potential_and_continues_below_r_min(structures):
    """PairPrior.from_linear gives the LinearPotential's energy (32-atom cell, brute-force images); as a GP
    baseline its energy equals the brute-force sum and its forces central differences; below r_min the pair
    energy is the tangent line (value and slope continuous); its dict round-trips; a too-long range is refused."""
    from jaxiap.descriptors.radial import RadialBasis, RadialDescriptor
    from jaxiap.potentials.linear import LinearBasis, LinearPotential
    from jaxiap.potentials.repulsion import PairPrior, prior_from_dict, prior_to_dict

    basis = LinearBasis(RadialDescriptor(RadialBasis("chebyshev", 6, 1.5, 4.0)), species_reference=True)
    c = np.random.default_rng(4).normal(size=7)
    prior = PairPrior.from_linear(basis, c)
    rng = np.random.default_rng(5)
    a = 4.046
    base = np.array([[0, 0, 0], [0, .5, .5], [.5, 0, .5], [.5, .5, 0]])
    cell = 2 * a * np.eye(3)
    x = (np.concatenate([base + np.array(o) for o in np.ndindex(2, 2, 2)]) * a + rng.normal(scale=0.1, size=(32, 3)))
    e_lin = float(LinearPotential(basis, jnp.asarray(c)).energy(jnp.asarray(x), box=jnp.asarray(cell)))
    assert abs(_image_pair_energy(prior, x, cell) - e_lin) <= 1e-10 * max(1.0, abs(e_lin))
    # as the GP's prior mean (the environments of the GP's own cutoff, images included)
    gp = GaussianProcess(SETTINGS, HYP, prior)
    s, h = structures[0], 1e-5
    b = gp._baseline_terms(s["positions"], s["cell"], s["species"])
    assert abs(b["energy"] - _image_pair_energy(prior, s["positions"], s["cell"])) <= 1e-10
    for i, comp in ((0, 0), (2, 1)):
        d = np.zeros_like(s["positions"])
        d[i, comp] = h
        e = lambda y: gp._baseline_terms(y, s["cell"], s["species"])["energy"]  # noqa: E731
        assert abs(-(e(s["positions"] + d) - e(s["positions"] - d)) / (2 * h) - b["forces"][i, comp]) <= 1e-6
    # below r_min: the tangent line, C1 at r_min
    v0, dv0 = prior.wall()
    r0 = 1.5
    vals = np.asarray(prior.pair_energy(jnp.asarray([r0 - 1e-6, r0, r0 + 1e-6, r0 - 0.4])))
    assert abs(vals[0] - v0) < 1e-4 and abs(vals[2] - v0) < 1e-4 and abs(vals[1] - v0) < 1e-12
    assert abs((vals[2] - vals[0]) / 2e-6 - dv0) <= 1e-5 * max(1.0, abs(dv0))
    assert abs(vals[3] - (v0 - 0.4 * dv0)) <= 1e-12 * max(1.0, abs(v0))
    assert float(prior.pair_energy(jnp.asarray(4.2))) == 0.0
    assert prior_from_dict(prior_to_dict(prior)) == prior
    with pytest.raises(JaxiapInputError, match="range"):
        GaussianProcess(SETTINGS, HYP, PairPrior(prior.coefficients, 1.5, 5.0))
    with pytest.raises(JaxiapInputError, match="r_min < r_cut"):
        PairPrior(prior.coefficients, 4.0, 3.0)


@pytest.mark.slow  # CI budget: two more GPs, their predictions, a GPPotential and a reloaded GP (about 40 s)
def test_gp_with_a_core_repulsion_fits_residuals_from_it(structures, tmp_path):
    """A GP with the baseline equals a GP without it trained on the residual labels, plus the baseline
    (energies, forces, stresses, stds, likelihood, GPPotential), and survives save/load."""
    from jaxiap.potentials.repulsion import CoreRepulsion

    baseline = CoreRepulsion(r_inner=2.0, r_outer=3.0)
    gp = GaussianProcess(SETTINGS, HYP, baseline)
    plain = GaussianProcess(SETTINGS, HYP)
    for k, atoms, energy, stress in MIXED:
        s = structures[k]
        _add(gp, s, atoms, energy, stress)
        b = gp._baseline_terms(s["positions"], s["cell"], s["species"], stress=True)
        _add(plain, dict(s, energy=s["energy"] - b["energy"], forces=s["forces"] - b["forces"],
                         stress=s["stress"] - b["stress"]), atoms, energy, stress)
    gp.refit()
    plain.refit()
    q = structures[3]
    pb, pp = _predict(gp, q["positions"], q["cell"], q["species"]), _predict(plain, q["positions"], q["cell"],
                                                                           q["species"])
    bq = gp._baseline_terms(q["positions"], q["cell"], q["species"], stress=True)
    assert abs(pb["energy"] - pp["energy"] - bq["energy"]) <= 1e-10
    np.testing.assert_allclose(pb["forces"] - pp["forces"], bq["forces"], atol=1e-10)
    np.testing.assert_allclose(pb["stress"] - pp["stress"], bq["stress"], atol=1e-12)
    np.testing.assert_allclose(pb["forces_std"], pp["forces_std"], atol=1e-12)
    assert abs(gp.log_marginal_likelihood() - plain.log_marginal_likelihood()) <= 1e-9
    pot = gp.potential(q["cell"])
    xq, zq = jnp.asarray(q["positions"]), jnp.asarray(q["species"])
    assert abs(float(pot.energy(xq, species=zq)) - pb["energy"]) <= 1e-9
    np.testing.assert_allclose(np.asarray(pot.mean_forces(xq, species=zq)), pb["forces"], atol=1e-9)
    gp.save(tmp_path / "gp.npz")
    loaded = GaussianProcess.load(tmp_path / "gp.npz")
    assert loaded.baseline == baseline
    np.testing.assert_allclose(_predict(loaded, q["positions"], q["cell"], q["species"])["forces"], pb["forces"],
                               atol=1e-10)


# --------------------------------------------------------------------------- 8. input errors
def test_bad_inputs_raise_errors_naming_the_input(structures):
    """r_cut_3 > r_cut, forces of the wrong shape, stress without GPSettings(stress=True) (add and predict),
    a stress of the wrong shape, and a capacity overflow raise JaxiapInputError naming the input; a failed
    add leaves the GP unchanged."""
    s = structures[0]
    x, cell, sp = s["positions"], s["cell"], s["species"]
    with pytest.raises(JaxiapInputError, match="r_cut_3"):
        GPSettings(r_cut=3.0, r_cut_3=3.5)
    gp = GaussianProcess(SETTINGS, HYP)
    with pytest.raises(JaxiapInputError, match="forces"):
        gp.add(x, cell, sp, forces=np.zeros((3, 3)))
    with pytest.raises(JaxiapInputError, match="stress"):
        gp.add(x, cell, sp, energy=1.0, stress=np.zeros(5))
    assert gp.n_rows == 0 and gp.n_environments == 0              # nothing half-added
    no_stress = GaussianProcess(replace(SETTINGS, stress=False), HYP)
    with pytest.raises(JaxiapInputError, match="stress"):
        no_stress.add(x, cell, sp, stress=s["stress"])
    with pytest.raises(JaxiapInputError, match="stress"):
        no_stress.predict(x, cell, sp, stress=True)
    # compressed by 15 %, the third shell (24 images at 4.2 Å) enters r_cut: 42 neighbours > 18 slots
    with pytest.raises(JaxiapInputError, match="max_neighbors"):
        gp.add(0.85 * x, 0.85 * cell, sp, forces=s["forces"])
    assert gp.n_rows == 0 and gp.n_environments == 0
