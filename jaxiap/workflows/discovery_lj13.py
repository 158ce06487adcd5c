"""Which sampler discovers the most LJ13 minima per force evaluation at kT = 0.20?

Protocol (docs/generation.md, "LJ13 minima discovery"):

- surrogate: a Chebyshev pair basis (``basis_size`` functions on [0.8, 3.0])
  with type-II Bayesian linear regression on ``n_train`` energy labels (no forces, so that it stays uncertain)
  of true-LJ Langevin snapshots at kT from the icosahedron. Its posterior
  supplies the uncertainty of UDD, HAL, metadynamics and the attacks; it is
  fixed during the runs;
- every method moves on the TRUE LJ energy (the biased ones on true + bias;
  the attacks maximise sigma^2 exp(-E_true/kT)), starts at the icosahedron
  (the attacks: from the training snapshots) and may spend ``budget`` force
  evaluations (Stein MD: particles x steps; attacks: structures x Adam steps);
- every ``record_every`` steps the configuration is quenched with FIRE on the
  true LJ; its class is (quenched energy rounded to 1e-3, sorted coordination
  numbers at r_b = 1.35), so permutational isomers count once; discovery =
  distinct classes against force evaluations.

:func:`run_lj13_discovery` returns a JSON-able dict (``bench/generation.py``,
``notebooks/generation.ipynb``).
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxiap.active.generate.attacks import adversarial_attack, partition_log_z
from jaxiap.active.generate.biased_md import run_biased_langevin
from jaxiap.active.generate.hal import hal_adapt, hal_components, hal_energy_fn
from jaxiap.active.generate.metad import run_metad
from jaxiap.active.generate.udd import calibrate_udd_B, udd_bias_energy_fn
from jaxiap.active.generate.uncertainty import linear_energy_std, linear_energy_variance
from jaxiap.descriptors.radial import RadialBasis
from jaxiap.errors import JaxiapInputError, check_positive_fields
from jaxiap.inference.linear import reweight
from jaxiap.inference.solvers import get_solver
from jaxiap.md.integrators import block_langevin
from jaxiap.md.qoi import coordination, evaporated
from jaxiap.md.quench import fire_quench_fn
from jaxiap.md.stein import SteinKernel, energy_score_fn, run_stein_langevin
from jaxiap.potentials.linear import LinearBasis, design_matrix
from jaxiap.structures import from_positions
from jaxiap.systems.lj import lj13_minimum, lj_energy
from jaxiap.systems.oracle import JaxOracle, label

__all__ = ["LJ13DiscoveryConfig", "LJ13_METHODS", "run_lj13_discovery", "minimum_classes"]

LJ13_METHODS = ("langevin", "stein", "udd", "hal", "metad", "adversarial")


@dataclasses.dataclass(frozen=True)
class LJ13DiscoveryConfig:
    """Settings of the LJ13 comparison (reduced LJ units)."""

    kT: float = 0.20
    dt: float = 0.005
    gamma: float = 1.0
    budget: int = 96_000  # force evaluations per run
    record_every: int = 500  # steps between quenched frames (Stein: steps between recorded particle sets)
    repetitions: int = 2
    seed: int = 0
    n_train: int = 16
    basis_size: int = 8
    stein_particles: int = 8
    stein_dt: float = 1e-4  # overdamped units (diffusion coefficient 1); 5e-4 runs hot at kT 0.2
    udd_A: float = 5.0
    udd_ratio: float = 0.36
    hal_tau_rel: float = 0.2
    metad_height: float = 0.1
    metad_width: float = 0.05
    metad_bias_factor: float = 10.0
    attack_structures: int = 16
    attack_lr: float = 0.01
    methods: tuple = LJ13_METHODS

    def __post_init__(self):
        unknown = [m for m in self.methods if m not in LJ13_METHODS]
        if unknown or not self.methods:
            raise JaxiapInputError(f"LJ13DiscoveryConfig.methods: unknown {unknown}; choose from {LJ13_METHODS}")
        check_positive_fields(self, skip=("methods", "seed"))
        if self.budget % (self.record_every * self.stein_particles) or self.budget % self.attack_structures:
            raise JaxiapInputError("LJ13DiscoveryConfig.budget must be a multiple of record_every x stein_particles "
                                   "and of attack_structures")


def _lj(x, **unused):
    return lj_energy(x)


_quench = jax.jit(jax.vmap(lambda x: fire_quench_fn(_lj, 1e-5, 4000)(x)[0]))
_energies = jax.jit(jax.vmap(_lj))
_coord = jax.jit(jax.vmap(coordination))
_evaporated = jax.jit(jax.vmap(evaporated))


def minimum_classes(frames) -> list:
    """Class (rounded quenched energy, sorted coordination numbers) of each frame (F, 13, 3) after a FIRE
    quench; None for a frame that is not finite or whose quenched cluster has lost an atom (evaporated)."""
    q = _quench(jnp.asarray(frames))
    e = np.asarray(_energies(q))
    c = np.sort(np.asarray(_coord(q)), axis=1)
    gone = np.asarray(_evaporated(q))
    return [(round(float(ei), 3), tuple(int(v) for v in ci)) if np.isfinite(ei) and not g else None
            for ei, ci, g in zip(e, c, gone)]


def training_surrogate(config: LJ13DiscoveryConfig, key):
    """(basis, posterior, training positions (n_train, 13, 3)) of the fixed surrogate."""
    init, run = block_langevin(_lj, dt=config.dt, gamma=config.gamma, kT=config.kT)
    x = np.asarray(run(init(key, jnp.asarray(lj13_minimum())), config.n_train, 100, lambda s: s.position)[1])
    data = label(JaxOracle(lj_energy), from_positions(x))
    basis = LinearBasis(RadialBasis("chebyshev", config.basis_size, 0.8, 3.0))
    post = get_solver("blr")(reweight(design_matrix(basis, data), 1.0, 0.0))  # energy labels only
    return basis, post, x


def _calibration_set(key, train, jitter: float = 0.1):
    """Training configurations displaced by ``jitter`` sigma (Gaussian): where UDD's B is calibrated (at
    the training configurations themselves a well-fitted surrogate's uncertainty, hence the bias force,
    is too small for any B to reach the target ratio)."""
    x = jnp.asarray(train)
    return x + jitter * jax.random.normal(jax.random.fold_in(key, 3), x.shape, x.dtype)


def _run_method(name, c: LJ13DiscoveryConfig, key, basis, post, train):
    """(frames (F, 13, 3), force evaluations after each frame (F,))."""
    x0 = jnp.asarray(lj13_minimum())
    n_blocks = c.budget // c.record_every
    blocks = np.arange(1, n_blocks + 1) * c.record_every
    if name == "langevin":
        init, run = block_langevin(_lj, dt=c.dt, gamma=c.gamma, kT=c.kT)
        return np.asarray(run(init(key, x0), n_blocks, c.record_every, lambda s: s.position)[1]), blocks
    if name == "stein":
        n_steps = c.budget // c.stein_particles
        start = x0 + 0.02 * jax.random.normal(jax.random.fold_in(key, 1), (c.stein_particles,) + x0.shape)
        feats = lambda x: basis.descriptor.structure(x) / 13.0  # noqa: E731
        traj = run_stein_langevin(key, energy_score_fn(_lj, c.kT), start, SteinKernel("rbf", features=feats),
                                  dt=c.stein_dt, n_steps=n_steps, every=c.record_every, noise="independent",
                                  fixed=jnp.asarray(train), own_force=True)
        frames = np.asarray(traj.samples).reshape((-1,) + x0.shape)
        return frames, np.repeat(np.arange(1, n_steps // c.record_every + 1) * c.record_every * c.stein_particles,
                                 c.stein_particles)
    if name == "udd":
        B = calibrate_udd_B(post, basis, _calibration_set(key, train), A=c.udd_A, n_atoms=13, target=c.udd_ratio,
                            unreachable="max")
        bias = udd_bias_energy_fn(post, basis, A=c.udd_A, B=B, n_atoms=13)
        res = run_biased_langevin(key, lambda x: lj_energy(x) + bias(x), x0, kT=c.kT, dt=c.dt, gamma=c.gamma,
                                  n_blocks=n_blocks, block_steps=c.record_every)
        return np.asarray(res.frames), blocks
    if name == "hal":
        mean_e, sigma = hal_components(post, basis)
        hal = hal_energy_fn(post, basis)
        res = run_biased_langevin(key, lambda x, tau: lj_energy(x) - tau * hal(x, 1.0) + tau * mean_e(x), x0,
                                  kT=c.kT, dt=c.dt, gamma=c.gamma, n_blocks=n_blocks, block_steps=c.record_every,
                                  adapt=hal_adapt(lambda x, mask=None: lj_energy(x), sigma, tau_rel=c.hal_tau_rel),
                                  energy_kwargs={"tau": 0.0})
        return np.asarray(res.frames), blocks
    if name == "metad":
        res = run_metad(key, _lj, linear_energy_std(post, basis), x0, kT=c.kT, dt=c.dt, gamma=c.gamma,
                        n_blocks=n_blocks, block_steps=c.record_every, height=c.metad_height, width=c.metad_width,
                        bias_factor=c.metad_bias_factor)
        return np.asarray(res.frames), np.arange(1, n_blocks + 1) * (c.record_every + 1)
    if name == "adversarial":
        n_steps = c.budget // c.attack_structures
        starts = jnp.asarray(train)[jnp.arange(c.attack_structures) % len(train)]
        log_z = partition_log_z(jax.vmap(lj_energy)(jnp.asarray(train)), c.kT)
        res = adversarial_attack(lj_energy, linear_energy_variance(post, basis), starts, kT=c.kT, log_Z=log_z,
                                 n_steps=n_steps, learning_rate=c.attack_lr, delta_std=0.02, key=key)
        # the attacked structures all arrive at the end of the budget
        return np.asarray(res.positions), np.full(c.attack_structures, c.budget)
    raise JaxiapInputError(f"unknown method {name!r}; choose from {LJ13_METHODS}")


def discovery_curve(classes, evals) -> tuple:
    """(force evaluations (D,), distinct classes found by then (D,)) at each new class."""
    seen, xs, ys = set(), [], []
    for cl, ev in zip(classes, evals):
        if cl is not None and cl not in seen:
            seen.add(cl)
            xs.append(int(ev))
            ys.append(len(seen))
    return xs, ys


def run_lj13_discovery(config: LJ13DiscoveryConfig = LJ13DiscoveryConfig(), progress: bool = True) -> dict:
    """Distinct minima per force evaluation for each method (module docstring); a JSON-able dict."""
    out = {"config": dataclasses.asdict(config), "methods": {m: {"curves": [], "n_minima": [], "wall_s": 0.0}
                                                             for m in config.methods}}
    for rep in range(config.repetitions):
        key = jax.random.fold_in(jax.random.key(config.seed), rep)
        basis, post, train = training_surrogate(config, jax.random.fold_in(key, 7))
        for i, m in enumerate(config.methods):
            t0 = time.perf_counter()
            frames, evals = _run_method(m, config, jax.random.fold_in(key, 100 + i), basis, post, train)
            classes = minimum_classes(frames)
            xs, ys = discovery_curve(classes, evals)
            d = out["methods"][m]
            d["wall_s"] += time.perf_counter() - t0
            d["curves"].append([xs, ys])
            d["n_minima"].append(ys[-1] if ys else 0)
            d.setdefault("evaporated_fraction", []).append(float(np.mean([cl is None for cl in classes])))
            d.setdefault("lowest_energies", []).append(sorted({cl[0] for cl in classes if cl is not None})[:8])
            if progress:
                print(f"[jaxiap] lj13 rep {rep} {m}: {d['n_minima'][-1]} distinct minima in {config.budget} force "
                      f"evaluations", flush=True)
    for d in out["methods"].values():
        d["n_minima_mean"] = float(np.mean(d["n_minima"]))
        d["minima_per_1000_evals"] = 1000.0 * d["n_minima_mean"] / config.budget
    return out
