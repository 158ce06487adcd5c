"""Candidate generators for :func:`jaxiap.active.generator_loop.run_generator_loop`.

A generator is ``generate(key, ctx: GeneratorContext) -> Generated``: it makes
``ctx.n_candidates`` configurations from the current posterior without calling
the oracle, and says how many surrogate force evaluations it spent. All of them
move on the surrogate's mean energy ``E(x) = b(x) . mean`` (plus a bias) and
start from labelled configurations:

- ``langevin``: BAOAB Langevin MD at kT (the plain baseline);
- ``stein``: stochastic Stein variational MD (docs/stein.md) of the candidate
  set as interacting particles, the labelled configurations as fixed particles;
- ``udd``: Langevin MD on mean + UDD bias (docs/biased-sampling.md);
- ``hal``: Langevin MD on mean - tau sigma, tau adapted (HAL);
- ``metad``: well-tempered metadynamics along the posterior's energy std;
- ``adversarial``: Adam on displacements maximising sigma^2 exp(-E/kT) / Z.

``make_generator(name, basis, settings)`` builds one (its jitted functions are
built once, the posterior enters as arguments, so iterations do not
recompile); :data:`GENERATOR_NAMES` lists the names (``pool`` = the fixed pool
of :func:`jaxiap.active.loop.run_pool_loop`, no generator).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jaxiap.active.generator_loop import Generated, GeneratorContext
from jaxiap.errors import JaxiapInputError, check_positive_fields
from jaxiap.md.integrators import block_langevin
from jaxiap.potentials.linear import LinearPotential

__all__ = ["GENERATOR_NAMES", "GeneratorSettings", "make_generator", "pick_starts"]

GENERATOR_NAMES = ("pool", "langevin", "stein", "udd", "hal", "metad", "adversarial")


@dataclasses.dataclass(frozen=True)
class GeneratorSettings:
    """Settings shared by the generators (units of the energy function; LJ reduced units for LJ13).

    kT, dt, gamma: temperature, time step and friction of the MD generators.
    n_starts: labelled configurations the MD generators start from (n_candidates must be a multiple).
    every: MD steps between candidates of one trajectory (also the Stein steps per candidate set / n).
    n_equilibrate: steps before the first candidate.
    stein_dt: time step of the overdamped Stein dynamics; stein_steps: its steps.
    udd_A, udd_ratio: UDD bias depth (energy) and target mean |F_bias| / |F| (B is calibrated to it).
    hal_tau_rel: HAL's relative bias strength.
    metad_height, metad_width, metad_bias_factor: hill height and width (both in units of kT; the CV
        is the posterior's energy std) and the well-tempered bias factor.
    attack_steps, attack_lr: Adam steps and learning rate (length) of the attacks.
    """

    kT: float = 0.3
    dt: float = 0.005
    gamma: float = 1.0
    n_starts: int = 4
    every: int = 100
    n_equilibrate: int = 100
    stein_dt: float = 1e-4
    stein_steps: int = 400
    udd_A: float = 2.0
    udd_ratio: float = 0.36
    hal_tau_rel: float = 0.1
    metad_height: float = 0.5
    metad_width: float = 0.5
    metad_bias_factor: float = 5.0
    attack_steps: int = 60
    attack_lr: float = 0.01

    def __post_init__(self):
        check_positive_fields(self)


def pick_starts(key, ctx: GeneratorContext, n: int):
    """(n, N, 3) labelled configurations to start from: the most recent ones first, then random ones."""
    pos = np.asarray(ctx.labelled.structures.positions)
    recent = np.arange(len(pos))[::-1][: min(n, len(pos))]
    extra = np.asarray(jax.random.choice(key, len(pos), (n - recent.size,))) if n > recent.size else []
    return jnp.asarray(pos[np.concatenate([recent, np.asarray(extra, int)]).astype(int)])


def _mean_energy(basis):
    """energy(positions, coefficients=) of the linear surrogate (free cluster)."""
    return lambda x, coefficients: LinearPotential(basis, coefficients).energy(x)


def _langevin_generator(basis, s: GeneratorSettings):
    init, run = block_langevin(_mean_energy(basis), dt=s.dt, gamma=s.gamma, kT=s.kT)

    @jax.jit
    def trajectories(keys, starts, coefficients, n_per):
        def one(k, x0):
            st = init(k, x0, coefficients=coefficients)
            st, _ = run(st, 1, s.n_equilibrate, lambda q: 0.0, coefficients=coefficients)
            return run(st, n_per.shape[0], s.every, lambda q: q.position, coefficients=coefficients)[1]

        return jax.vmap(one)(keys, starts)

    def generate(key, ctx: GeneratorContext) -> Generated:
        n_per = _per_start(ctx.n_candidates, s.n_starts)
        k_start, k_md = jax.random.split(key)
        starts = pick_starts(k_start, ctx, s.n_starts)
        frames = trajectories(jax.random.split(k_md, s.n_starts), starts, jnp.asarray(ctx.posterior.mean),
                              jnp.zeros(n_per))
        n_evals = s.n_starts * (1 + s.n_equilibrate + n_per * s.every)
        return Generated(np.asarray(frames).reshape((ctx.n_candidates,) + starts.shape[1:]), n_evals)

    return generate


def _per_start(n_candidates: int, n_starts: int) -> int:
    if n_candidates % n_starts:
        raise JaxiapInputError(f"n_candidates={n_candidates} must be a multiple of n_starts={n_starts} "
                               "(candidates per MD trajectory)")
    return n_candidates // n_starts


def _starts_for(key, ctx: GeneratorContext, n: int, jitter: float = 0.0):
    """(n, N, 3) starts: pick_starts of n_starts configurations repeated, plus Gaussian jitter (length)."""
    k1, k2 = jax.random.split(key)
    x = pick_starts(k1, ctx, n)
    return x + jitter * jax.random.normal(k2, x.shape, x.dtype) if jitter else x


def _frames(frames, ctx: GeneratorContext):
    """(T, B, N, 3) frames of B trajectories -> (C, N, 3) candidates, trajectory-major."""
    f = np.swapaxes(np.asarray(frames), 0, 1)
    return f.reshape((ctx.n_candidates,) + f.shape[2:])


def _stein_generator(basis, s: GeneratorSettings):
    from jaxiap.md.stein import SteinKernel, energy_score_fn, run_stein_langevin  # lazy: Stein only here

    def features(x):
        return basis.descriptor.structure(x) / x.shape[0]

    def generate(key, ctx: GeneratorContext) -> Generated:
        energy = _mean_energy(basis)
        coefficients = jnp.asarray(ctx.posterior.mean)
        e = lambda x, **kw: energy(x, coefficients)  # noqa: E731
        k_start, k_md = jax.random.split(key)
        starts = _starts_for(k_start, ctx, ctx.n_candidates, jitter=0.02)
        fixed = jnp.asarray(ctx.labelled.structures.positions)
        traj = run_stein_langevin(k_md, energy_score_fn(e, s.kT), starts, SteinKernel("rbf", features=features),
                                  dt=s.stein_dt, n_steps=s.stein_steps, every=s.stein_steps, noise="independent",
                                  fixed=fixed, own_force=True)
        return Generated(np.asarray(traj.positions), ctx.n_candidates * s.stein_steps)

    return generate


def _biased_run(energy, ctx, key, s, n_per, **kw):
    from jaxiap.active.generate.biased_md import run_biased_langevin  # lazy: biased MD only here

    k_start, k_md = jax.random.split(key)
    starts = pick_starts(k_start, ctx, s.n_starts)
    res = run_biased_langevin(k_md, energy, starts, kT=s.kT, dt=s.dt, gamma=s.gamma, n_blocks=n_per,
                              block_steps=s.every, **kw)
    return Generated(_frames(res.frames, ctx), int(np.sum(res.n_force_evals)))


def _udd_generator(basis, s: GeneratorSettings):
    from jaxiap.active.generate.udd import calibrate_udd_B, udd_energy_fn  # lazy: UDD only here

    def generate(key, ctx: GeneratorContext) -> Generated:
        n_atoms = int(ctx.labelled.structures.positions.shape[1])
        labelled = jnp.asarray(ctx.labelled.structures.positions)
        B = calibrate_udd_B(ctx.posterior, basis, labelled, A=s.udd_A, n_atoms=n_atoms, target=s.udd_ratio,
                            unreachable="max")
        energy = udd_energy_fn(ctx.posterior, basis, A=s.udd_A, B=B, n_atoms=n_atoms)
        return _biased_run(lambda x: energy(x), ctx, key, s, _per_start(ctx.n_candidates, s.n_starts))

    return generate


def _hal_generator(basis, s: GeneratorSettings):
    from jaxiap.active.generate.hal import hal_adapt, hal_components, hal_energy_fn  # lazy: HAL only here

    def generate(key, ctx: GeneratorContext) -> Generated:
        mean_e, sigma = hal_components(ctx.posterior, basis)
        energy = hal_energy_fn(ctx.posterior, basis)
        return _biased_run(lambda x, tau: energy(x, tau), ctx, key, s, _per_start(ctx.n_candidates, s.n_starts),
                           adapt=hal_adapt(mean_e, sigma, tau_rel=s.hal_tau_rel), energy_kwargs={"tau": 0.0})

    return generate


def _metad_generator(basis, s: GeneratorSettings):
    from jaxiap.active.generate.metad import run_metad  # lazy: metadynamics only here
    from jaxiap.active.generate.uncertainty import linear_energy_std  # lazy: as above

    def generate(key, ctx: GeneratorContext) -> Generated:
        coefficients = jnp.asarray(ctx.posterior.mean)
        energy = _mean_energy(basis)
        k_start, k_md = jax.random.split(key)
        res = run_metad(k_md, lambda x: energy(x, coefficients), linear_energy_std(ctx.posterior, basis),
                        pick_starts(k_start, ctx, 1)[0], kT=s.kT, dt=s.dt, gamma=s.gamma,
                        n_blocks=ctx.n_candidates, block_steps=s.every, height=s.metad_height * s.kT,
                        width=s.metad_width * s.kT, bias_factor=s.metad_bias_factor)
        return Generated(np.asarray(res.frames), res.n_force_evals)

    return generate


def _adversarial_generator(basis, s: GeneratorSettings):
    from jaxiap.active.generate.attacks import adversarial_attack, partition_log_z  # lazy: attacks only here
    from jaxiap.active.generate.uncertainty import linear_energy_variance  # lazy: as above

    def generate(key, ctx: GeneratorContext) -> Generated:
        coefficients = jnp.asarray(ctx.posterior.mean)
        energy = _mean_energy(basis)
        e = lambda x: energy(x, coefficients)  # noqa: E731
        labelled = jnp.asarray(ctx.labelled.structures.positions)
        log_z = partition_log_z(jax.vmap(e)(labelled), s.kT)
        k_start, k_att = jax.random.split(key)
        res = adversarial_attack(e, linear_energy_variance(ctx.posterior, basis),
                                 _starts_for(k_start, ctx, ctx.n_candidates), kT=s.kT, log_Z=log_z,
                                 n_steps=s.attack_steps, learning_rate=s.attack_lr, delta_std=0.01, key=k_att)
        return Generated(np.asarray(res.positions), ctx.n_candidates * s.attack_steps)

    return generate


_FACTORIES = {"langevin": _langevin_generator, "stein": _stein_generator, "udd": _udd_generator,
              "hal": _hal_generator, "metad": _metad_generator, "adversarial": _adversarial_generator}


def make_generator(name: str, basis, settings: GeneratorSettings = GeneratorSettings()):
    """``generate(key, ctx) -> Generated`` of generator ``name`` (see the module docstring)."""
    if name not in _FACTORIES:
        known = tuple(n for n in GENERATOR_NAMES if n != "pool")
        raise JaxiapInputError(f"generator={name!r} is unknown; choose one of {known} (or 'pool' for the fixed pool)")
    generate = _FACTORIES[name](basis, settings)
    generate.name = name
    return generate
