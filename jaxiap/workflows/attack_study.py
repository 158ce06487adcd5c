"""Do adversarial attacks on the uncertainty pick better training structures than random displacements?

Protocol (LJ13, reduced units; docs/biased-sampling.md, "Attack study"). Per
repetition r (keys folded from ``seed`` and r):

1. surrogate: a Chebyshev pair basis (``basis_size`` functions on [0.8, 3.0],
   :class:`~jaxiap.potentials.linear.LinearBasis`) fitted by type-II
   Bayesian linear regression to the ENERGIES only (force rows weighted 0,
   so that it stays uncertain) of ``n_train`` true-LJ Langevin snapshots at
   ``kT`` (one trajectory from the quenched icosahedron, a snapshot every
   ``sample_every`` steps);
2. test set: ``n_test`` snapshots of an independent true-LJ trajectory at
   ``kT`` (same spacing), labelled with energies and forces;
3. attack: ``n_attack`` starts (the training snapshots, cycled) are displaced
   by :func:`~jaxiap.active.generate.attacks.adversarial_attack` (Adam on
   -log sigma^2 + E / kT_attack, from a ``jitter`` N(0, 1) initial delta),
   sigma^2 = b^T Sigma b the surrogate's energy variance and E the TRUE LJ
   energy (``attack_energy="true"``, default) or the surrogate mean
   (``"surrogate"``);
4. baseline: the same starts displaced by
   :func:`~jaxiap.active.generate.attacks.random_displacements` of the same
   per-structure Frobenius norm |delta| (centre-of-mass free);
5. both sets are labelled with the true LJ and the surrogate is refitted
   (type-II again) on train + attacked and on train + random, with the same
   labels as the training set (energies only, or also forces with
   ``label_forces``); the score is the held-out force RMSE on the test set
   (train-only fit included).

Why the true energy in the Boltzmann factor: the study asks whether the
DIRECTION of sigma^2 finds informative structures; with the surrogate mean of
6 energy labels the factor exp(-E/kT) is itself wrong (it does not keep the
structures thermally accessible in the true landscape) and mixes a second
effect into the comparison. ``attack_energy="surrogate"`` is the
oracle-free variant of the original paper.

Reported per repetition: the three RMSEs, the fraction of attacked
structures whose sigma^2 rose, the sigma^2 ratios, and the energy changes
E_true(end) - E_true(start) in units of the attack kT (for both sets).
:func:`attack_vs_random` returns a JSON-able dict; ``bench/attack_study.py``
prints the table.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxiap.active.generate.attacks import adversarial_attack, partition_log_z, random_displacements
from jaxiap.active.generate.uncertainty import linear_energy_variance
from jaxiap.descriptors.radial import RadialBasis
from jaxiap.errors import JaxiapInputError, SingularSystemError
from jaxiap.inference.linear import optimize_hyperparameters, reweight
from jaxiap.md.integrators import block_langevin
from jaxiap.potentials.linear import FORCE_ROW, LinearBasis, design_matrix
from jaxiap.structures import from_positions
from jaxiap.systems.lj import lj13_minimum, lj_energy
from jaxiap.systems.oracle import JaxOracle, label

__all__ = ["AttackStudyConfig", "attack_vs_random"]

ATTACK_ENERGIES = ("true", "surrogate")


@dataclasses.dataclass(frozen=True)
class AttackStudyConfig:
    """Settings of the attack-vs-random study (reduced LJ units; module docstring)."""

    repetitions: int = 5
    seed: int = 0
    kT: float = 0.3  # sampling temperature of the training and test snapshots
    dt: float = 0.005
    gamma: float = 1.0
    sample_every: int = 100
    burn_in: int = 200
    n_train: int = 6
    n_test: int = 40
    basis_size: int = 8
    n_attack: int = 8
    attack_kT: float = 3.0  # 10 x kT: with kT the Boltzmann term quenches the thermal snapshots (docs)
    attack_steps: int = 200
    attack_lr: float = 0.01
    jitter: float = 0.01
    attack_energy: str = "true"
    label_forces: bool = False

    def __post_init__(self):
        if self.attack_energy not in ATTACK_ENERGIES:
            raise JaxiapInputError(f"AttackStudyConfig.attack_energy={self.attack_energy!r}: choose from "
                                   f"{ATTACK_ENERGIES}")
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name in ("attack_energy", "label_forces", "seed", "burn_in", "jitter"):
                continue
            if not (math.isfinite(v) and v > 0):
                raise JaxiapInputError(f"AttackStudyConfig.{f.name}={v!r} must be a positive finite number")
        if self.jitter < 0 or self.burn_in < 0:
            raise JaxiapInputError("AttackStudyConfig: jitter and burn_in must be >= 0")


def _lj(x, **unused):
    return lj_energy(x)


_oracle = JaxOracle(lj_energy)
_lj_batch = jax.jit(jax.vmap(lj_energy))


@functools.lru_cache(maxsize=8)
def _sampler(dt, gamma, kT, burn_in, every, n):
    """Jitted key -> n true-LJ Langevin snapshots at kT (n, 13, 3) (one trajectory from the icosahedron,
    after burn_in steps, a snapshot every ``every`` steps); cached so repetitions reuse the compilation."""
    init, run = block_langevin(_lj, dt=dt, gamma=gamma, kT=kT)
    x0 = jnp.asarray(lj13_minimum())  # computed (quenched) outside the trace

    @jax.jit
    def sample(key):
        state = init(key, x0)
        if burn_in:
            state, _ = run(state, 1, burn_in, lambda s: None)
        return run(state, n, every, lambda s: s.position)[1]

    return sample


def _snapshots(c: AttackStudyConfig, key, n):
    """n snapshots of one trajectory (the first n of max(n_train, n_test): one compilation for both sets)."""
    return _sampler(c.dt, c.gamma, c.kT, c.burn_in, c.sample_every, max(c.n_train, c.n_test))(key)[:n]


def _fit(c: AttackStudyConfig, basis, data):
    """Type-II BLR (``get_solver("blr")``'s default: optimize_hyperparameters, 500 L-BFGS steps at most):
    (posterior, fitted energy noise std); (None, nan) when the evidence optimum is numerically singular."""
    d = design_matrix(basis, data)
    try:
        r = optimize_hyperparameters(d if c.label_forces else reweight(d, 1.0, 0.0), steps=500, tol=1e-8)
    except SingularSystemError:
        return None, float("nan")
    return r.posterior, r.sigma_energy


def _force_rmse(basis, post, test_design):
    if post is None:
        return float("nan")
    f = np.asarray(test_design.kind) == FORCE_ROW
    r = np.asarray(test_design.A)[f] @ np.asarray(post.mean) - np.asarray(test_design.y)[f]
    return float(np.sqrt(np.mean(r**2)))


def _one_repetition(c: AttackStudyConfig, key):
    k_train, k_test, k_attack, k_random = jax.random.split(key, 4)
    basis = LinearBasis(RadialBasis("chebyshev", c.basis_size, 0.8, 3.0))
    train_x = _snapshots(c, k_train, c.n_train)
    test_design = design_matrix(basis, label(_oracle, from_positions(_snapshots(c, k_test, c.n_test))))
    train = label(_oracle, from_positions(train_x))
    post, sig_e = _fit(c, basis, train)
    if post is None:
        raise SingularSystemError("attack study: the train-only type-II fit is singular; change seed or n_train")

    variance = linear_energy_variance(post, basis)
    if c.attack_energy == "true":
        energy = lj_energy
    else:
        mean = jnp.asarray(post.mean)
        energy = lambda x: mean @ basis(x)  # noqa: E731
    starts = train_x[jnp.arange(c.n_attack) % c.n_train]
    log_z = partition_log_z(jax.vmap(energy)(train_x), c.attack_kT)
    res = adversarial_attack(energy, variance, starts, kT=c.attack_kT, log_Z=log_z, n_steps=c.attack_steps,
                             learning_rate=c.attack_lr, delta_std=c.jitter, key=k_attack)
    norms = jnp.linalg.norm(res.delta.reshape(c.n_attack, -1), axis=1)
    rnd = random_displacements(k_random, starts, norms)
    var_b = jax.jit(jax.vmap(variance))
    v0, v_att, v_rnd = (np.asarray(var_b(x)) for x in (starts, res.positions, rnd))
    e0, e_att, e_rnd = (np.asarray(_lj_batch(x)) for x in (starts, res.positions, rnd))

    rmse = {"train_only": _force_rmse(basis, post, test_design)}
    sigma_e = {"train_only": sig_e}
    for name, x in (("attacked", res.positions), ("random", rnd)):
        new = label(_oracle, from_positions(jnp.concatenate([train_x, x])))
        p, sigma_e[name] = _fit(c, basis, new)
        rmse[name] = _force_rmse(basis, p, test_design)
    rnd_norms = np.linalg.norm(np.asarray(rnd - starts).reshape(c.n_attack, -1), axis=1)
    return {
        "force_rmse": rmse,
        "sigma_energy": sigma_e,
        "variance_ratio_attacked": (v_att / v0).tolist(),
        "variance_ratio_random": (v_rnd / v0).tolist(),
        "variance_rose_fraction": float(np.mean(v_att > v0)),
        "dE_over_kT_attacked": ((e_att - e0) / c.attack_kT).tolist(),
        "dE_over_kT_random": ((e_rnd - e0) / c.attack_kT).tolist(),
        "displacement_norm": np.asarray(norms).tolist(),
        "norm_mismatch": float(np.max(np.abs(rnd_norms - np.asarray(norms)))),
        "loss_first_last": [np.asarray(res.loss[0]).tolist(), np.asarray(res.loss[-1]).tolist()],
    }


def _mean_std(v):
    """[mean, sample std (ddof 1)] over the finite entries (std 0 for fewer than two)."""
    v = np.asarray(v, float)
    v = v[np.isfinite(v)]
    return [float(v.mean()) if v.size else float("nan"), float(v.std(ddof=1)) if v.size > 1 else 0.0]


def attack_vs_random(config: AttackStudyConfig = AttackStudyConfig(), progress: bool = False) -> dict:
    """Run the study (module docstring); a JSON-able dict with ``config``, ``repetitions`` (one dict
    each) and ``summary`` (mean and std over repetitions of the force RMSEs, of the attacked-minus-random
    difference, the pooled sigma^2-rise fraction, median sigma^2 ratios and |dE|/kT statistics)."""
    if isinstance(config, dict):
        config = AttackStudyConfig(**config)
    t0 = time.perf_counter()
    reps = []
    for r in range(config.repetitions):
        reps.append(_one_repetition(config, jax.random.fold_in(jax.random.key(config.seed), r)))
        if progress:
            f = reps[-1]["force_rmse"]
            print(f"[jaxiap] attack study rep {r}: force RMSE train-only {f['train_only']:.4f} attacked "
                  f"{f['attacked']:.4f} random {f['random']:.4f}; sigma^2 rose for "
                  f"{reps[-1]['variance_rose_fraction']:.0%}", flush=True)
    summary = {}
    for name in ("train_only", "attacked", "random"):
        v = np.array([rep["force_rmse"][name] for rep in reps])
        summary[f"force_rmse_{name}"] = _mean_std(v)
        summary[f"force_rmse_median_{name}"] = float(np.nanmedian(v))
    summary["failed_fits"] = int(sum(np.isnan(rep["force_rmse"][n]) for rep in reps for n in ("attacked", "random")))
    diff = np.array([rep["force_rmse"]["attacked"] - rep["force_rmse"]["random"] for rep in reps])
    summary["attacked_minus_random"] = _mean_std(diff)
    summary["attacked_better_fraction"] = float(np.mean(diff[np.isfinite(diff)] < 0))
    summary["variance_rose_fraction"] = float(np.mean([rep["variance_rose_fraction"] for rep in reps]))
    for s in ("attacked", "random"):
        ratio = np.concatenate([rep[f"variance_ratio_{s}"] for rep in reps])
        de = np.concatenate([rep[f"dE_over_kT_{s}"] for rep in reps])
        summary[f"variance_ratio_median_{s}"] = float(np.median(ratio))
        summary[f"dE_over_kT_{s}"] = {"mean": float(de.mean()), "median": float(np.median(de)),
                                      "max_abs": float(np.abs(de).max())}
    summary["displacement_norm_mean"] = float(np.mean(np.concatenate([rep["displacement_norm"] for rep in reps])))
    summary["wall_s"] = time.perf_counter() - t0
    return {"config": dataclasses.asdict(config), "repetitions": reps, "summary": summary}
