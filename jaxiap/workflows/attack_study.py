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

``surrogate="nn-ensemble"`` (the paper's setting) replaces step 1 by an
ensemble of ``n_members`` per-atom MLPs (``hidden``, ``n_radial`` Gaussian
radial features) trained with Adam for ``epochs`` on the energies (and,
with ``label_forces``, the forces) of the snapshots, every fit starting from
the same initial networks and standardisation; sigma^2 is then the
committee's force variance averaged over atoms and components.

Every repetition also refits on a second baseline, the energy-matched random
set: per start, ``matched_draws`` random directions of the attack's norm, the
one whose true energy change is closest to the attacked structure's (same
size and energy, another direction). ``hot_test_kT > 0`` adds a second test
set of ``n_test`` snapshots at that kT (``force_rmse_hot``).

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
SURROGATES = ("blr", "nn-ensemble")


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
    surrogate: str = "blr"  # "blr" (Chebyshev pair basis) or "nn-ensemble" (module docstring)
    # the NN ensemble (surrogate="nn-ensemble"): members, hidden widths, Gaussian radial features, training
    n_members: int = 4
    hidden: tuple = (16, 16)
    n_radial: int = 8
    epochs: int = 2000
    learning_rate: float = 5e-3
    matched_draws: int = 256  # random directions per start for the energy-matched baseline
    hot_test_kT: float = 0.0  # > 0: a second, extrapolation test set of n_test snapshots at this kT

    def __post_init__(self):
        if self.attack_energy not in ATTACK_ENERGIES:
            raise JaxiapInputError(f"AttackStudyConfig.attack_energy={self.attack_energy!r}: choose from "
                                   f"{ATTACK_ENERGIES}")
        if self.surrogate not in SURROGATES:
            raise JaxiapInputError(f"AttackStudyConfig.surrogate={self.surrogate!r}: choose from {SURROGATES}")
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        if not self.hidden or min(self.hidden) < 1:
            raise JaxiapInputError(f"AttackStudyConfig.hidden={self.hidden!r}: give positive layer widths, e.g. (16, 16)")
        if self.n_members < 2:
            raise JaxiapInputError(f"AttackStudyConfig.n_members={self.n_members!r}: an ensemble needs >= 2 members")
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name in ("attack_energy", "label_forces", "seed", "burn_in", "jitter", "surrogate", "hidden",
                          "hot_test_kT"):
                continue
            if not (math.isfinite(v) and v > 0):
                raise JaxiapInputError(f"AttackStudyConfig.{f.name}={v!r} must be a positive finite number")
        if not (math.isfinite(self.hot_test_kT) and self.hot_test_kT >= 0):
            raise JaxiapInputError(f"AttackStudyConfig.hot_test_kT={self.hot_test_kT!r}: give a kT > 0, or 0 for none")
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


def _snapshots(c: AttackStudyConfig, key, n, kT=None):
    """n snapshots of one trajectory at kT (default c.kT) (the first n of max(n_train, n_test): one
    compilation for both sets)."""
    kT = c.kT if kT is None else kT
    return _sampler(c.dt, c.gamma, kT, c.burn_in, c.sample_every, max(c.n_train, c.n_test))(key)[:n]


class _BLRSurrogate:
    """Chebyshev pair basis, type-II BLR; sigma^2 = b^T Sigma b (energy variance)."""

    def __init__(self, c: AttackStudyConfig, train, key):
        self.c = c
        self.basis = LinearBasis(RadialBasis("chebyshev", c.basis_size, 0.8, 3.0))
        self._designs = {}

    def fit(self, data):
        """(posterior, fitted energy noise std); (None, nan) when the evidence optimum is numerically singular
        (``get_solver("blr")``'s default: optimize_hyperparameters, 500 L-BFGS steps at most)."""
        d = design_matrix(self.basis, data)
        try:
            r = optimize_hyperparameters(d if self.c.label_forces else reweight(d, 1.0, 0.0), steps=500, tol=1e-8)
        except SingularSystemError:
            return None, float("nan")
        return r.posterior, r.sigma_energy

    def variance(self, model):
        return linear_energy_variance(model, self.basis)

    def mean_energy(self, model):
        mean = jnp.asarray(model.mean)
        return lambda x: mean @ self.basis(x)

    def force_rmse(self, model, test):
        if model is None:
            return float("nan")
        if id(test) not in self._designs:
            self._designs[id(test)] = (test, design_matrix(self.basis, test))
        d = self._designs[id(test)][1]
        f = np.asarray(d.kind) == FORCE_ROW
        r = np.asarray(d.A)[f] @ np.asarray(model.mean) - np.asarray(d.y)[f]
        return float(np.sqrt(np.mean(r**2)))


class _NNEnsembleSurrogate:
    """An ensemble of ``n_members`` per-atom MLPs on Gaussian radial features (issue 15's NNPotential),
    trained with Adam on energies and forces (energies only unless ``label_forces``) from ONE set of
    initial networks, whose feature standardisation and energy shift/scale come from the training set
    alone (so train + attacked and train + random differ only by their structures); sigma^2 = the
    committee's force variance averaged over atoms and components (Schwalbe-Koda et al.'s uncertainty)."""

    def __init__(self, c: AttackStudyConfig, train, key):
        from jaxiap.descriptors.radial import RadialDescriptor  # lazy: the NN path only
        from jaxiap.inference.nn_train import TrainSettings, stack_members
        from jaxiap.potentials.nn import init_nn_potential

        self.c = c
        desc = RadialDescriptor(RadialBasis("gaussian", c.n_radial, 0.8, 3.0))
        keys = jax.random.split(key, c.n_members + 1)
        self.init = stack_members([init_nn_potential(k, desc, train, hidden=c.hidden) for k in keys[1:]])
        self.train_key = keys[0]
        self.settings = TrainSettings(epochs=c.epochs, batch_size=16, learning_rate=c.learning_rate,
                                      force_weight=1.0 if c.label_forces else 0.0, patience=c.epochs)

    def fit(self, data):
        from jaxiap.inference.nn_train import train_members  # lazy: the NN path only

        members, history = train_members(self.init, data, None, key=self.train_key, kind="mse",
                                         settings=self.settings, progress=False)
        return members, float(np.min(np.mean(history["train_loss"], axis=1)))

    @staticmethod
    def _member_energies(members, x):
        import equinox as eqx  # lazy: the NN path only

        return eqx.filter_vmap(lambda p: p.energy(x))(members)

    def variance(self, members):
        def force_variance(x):
            f = -jax.jacrev(lambda y: self._member_energies(members, y))(x)          # (M, N, 3)
            return jnp.mean(jnp.var(f, axis=0, ddof=1))
        return force_variance

    def mean_energy(self, members):
        return lambda x: jnp.mean(self._member_energies(members, x))

    def force_rmse(self, members, test):
        import equinox as eqx  # lazy: the NN path only

        pred = eqx.filter_jit(_ensemble_forces)(members, test.structures)
        return float(np.sqrt(np.mean((np.asarray(pred) - np.asarray(test.forces)) ** 2)))


def _ensemble_forces(members, structures):
    """Committee-mean forces (C, N, 3) of C structures."""
    from jaxiap.uq.nn_uq import NNPosterior  # lazy: the NN path only

    return NNPosterior(members, {}, "ensemble").predict_structures(structures).forces


def _energy_matched_random(c: AttackStudyConfig, key, starts, norms, de_attacked):
    """The second baseline: per start, ``c.matched_draws`` random displacements of the attack's norm; keep
    the one whose true energy change is closest to the attacked structure's (so it differs from the
    attack by its DIRECTION only, not by its size or its energy)."""
    draws = jax.vmap(lambda k: random_displacements(k, starts, norms))(jax.random.split(key, c.matched_draws))
    de = np.asarray(jax.vmap(_lj_batch)(draws)) - np.asarray(_lj_batch(starts))[None]     # (draws, B)
    pick = np.argmin(np.abs(de - np.asarray(de_attacked)[None]), axis=0)
    return draws[pick, np.arange(starts.shape[0])]


_SURROGATE_CLASSES = {"blr": _BLRSurrogate, "nn-ensemble": _NNEnsembleSurrogate}


def _one_repetition(c: AttackStudyConfig, key):
    k_train, k_test, k_attack, k_random = jax.random.split(key, 4)
    train_x = _snapshots(c, k_train, c.n_train)
    tests = {"": label(_oracle, from_positions(_snapshots(c, k_test, c.n_test)))}
    if c.hot_test_kT:
        tests["_hot"] = label(_oracle, from_positions(_snapshots(c, jax.random.fold_in(k_test, 1), c.n_test,
                                                                 c.hot_test_kT)))
    train = label(_oracle, from_positions(train_x))
    model = _SURROGATE_CLASSES[c.surrogate](c, train, jax.random.fold_in(key, 7))
    fitted, fit_info = model.fit(train)
    if fitted is None:
        raise SingularSystemError("attack study: the train-only type-II fit is singular; change seed or n_train")

    variance = model.variance(fitted)
    energy = lj_energy if c.attack_energy == "true" else model.mean_energy(fitted)
    starts = train_x[jnp.arange(c.n_attack) % c.n_train]
    log_z = partition_log_z(jax.vmap(energy)(train_x), c.attack_kT)
    res = adversarial_attack(energy, variance, starts, kT=c.attack_kT, log_Z=log_z, n_steps=c.attack_steps,
                             learning_rate=c.attack_lr, delta_std=c.jitter, key=k_attack)
    norms = jnp.linalg.norm(res.delta.reshape(c.n_attack, -1), axis=1)
    rnd = random_displacements(k_random, starts, norms)
    var_b = jax.jit(jax.vmap(variance))
    v0, v_att, v_rnd = (np.asarray(var_b(x)) for x in (starts, res.positions, rnd))
    e0, e_att, e_rnd = (np.asarray(_lj_batch(x)) for x in (starts, res.positions, rnd))
    matched = _energy_matched_random(c, jax.random.fold_in(k_random, 1), starts, norms, e_att - e0)
    e_mat, v_mat = np.asarray(_lj_batch(matched)), np.asarray(var_b(matched))

    rmse = {t: {"train_only": model.force_rmse(fitted, test)} for t, test in tests.items()}
    fit = {"train_only": fit_info}
    for name, x in (("attacked", res.positions), ("random", rnd), ("random_energy_matched", matched)):
        new = label(_oracle, from_positions(jnp.concatenate([train_x, x])))
        m, fit[name] = model.fit(new)
        for t, test in tests.items():
            rmse[t][name] = model.force_rmse(m, test)
    rnd_norms = np.linalg.norm(np.asarray(rnd - starts).reshape(c.n_attack, -1), axis=1)
    return {
        **{f"force_rmse{t}": r for t, r in rmse.items()},
        # BLR: the fitted energy noise std; NN ensemble: the lowest mean training loss
        "sigma_energy" if c.surrogate == "blr" else "train_loss": fit,
        "variance_ratio_attacked": (v_att / v0).tolist(),
        "variance_ratio_random": (v_rnd / v0).tolist(),
        "variance_ratio_random_energy_matched": (v_mat / v0).tolist(),
        "variance_rose_fraction": float(np.mean(v_att > v0)),
        "dE_over_kT_attacked": ((e_att - e0) / c.attack_kT).tolist(),
        "dE_over_kT_random": ((e_rnd - e0) / c.attack_kT).tolist(),
        "dE_over_kT_random_energy_matched": ((e_mat - e0) / c.attack_kT).tolist(),
        "displacement_norm": np.asarray(norms).tolist(),
        "norm_mismatch": float(np.max(np.abs(rnd_norms - np.asarray(norms)))),
        "loss_first_last": [np.asarray(res.loss[0]).tolist(), np.asarray(res.loss[-1]).tolist()],
    }


#: the new-structure sets refitted with the training set: the attack and its two random baselines
_NEW_SETS = ("attacked", "random", "random_energy_matched")


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
                  f"{f['attacked']:.4f} random {f['random']:.4f} energy-matched random "
                  f"{f['random_energy_matched']:.4f}; sigma^2 rose for "
                  f"{reps[-1]['variance_rose_fraction']:.0%}", flush=True)
    summary = {}
    for t in ("", "_hot") if config.hot_test_kT else ("",):
        for name in ("train_only",) + _NEW_SETS:
            v = np.array([rep[f"force_rmse{t}"][name] for rep in reps])
            summary[f"force_rmse{t}_{name}"] = _mean_std(v)
            summary[f"force_rmse{t}_median_{name}"] = float(np.nanmedian(v))
        for base, suffix in (("random", ""), ("random_energy_matched", "_energy_matched")):
            diff = np.array([rep[f"force_rmse{t}"]["attacked"] - rep[f"force_rmse{t}"][base] for rep in reps])
            summary[f"attacked_minus_random{suffix}{t}"] = _mean_std(diff)
            summary[f"attacked_better_fraction{suffix}{t}"] = float(np.mean(diff[np.isfinite(diff)] < 0))
    summary["failed_fits"] = int(sum(np.isnan(rep["force_rmse"][n]) for rep in reps for n in _NEW_SETS))
    summary["variance_rose_fraction"] = float(np.mean([rep["variance_rose_fraction"] for rep in reps]))
    for s in _NEW_SETS:
        ratio = np.concatenate([rep[f"variance_ratio_{s}"] for rep in reps])
        de = np.concatenate([rep[f"dE_over_kT_{s}"] for rep in reps])
        summary[f"variance_ratio_median_{s}"] = float(np.median(ratio))
        summary[f"dE_over_kT_{s}"] = {"mean": float(de.mean()), "median": float(np.median(de)),
                                      "max_abs": float(np.abs(de).max())}
    summary["displacement_norm_mean"] = float(np.mean(np.concatenate([rep["displacement_norm"] for rep in reps])))
    summary["wall_s"] = time.perf_counter() - t0
    return {"config": dataclasses.asdict(config), "repetitions": reps, "summary": summary}
