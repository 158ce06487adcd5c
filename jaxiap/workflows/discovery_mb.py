"""Which sampler finds the Müller–Brown basins, and which one's configurations train the best surrogate?

Protocol (docs/generation.md, "Müller–Brown benchmark"):

- surrogate: Bayesian linear regression on Gaussian bumps (:class:`SurfaceBasis`,
  a ``grid x grid`` lattice of centres, ``width``) with a fixed prior scale and
  noise, fitted on ``n_train`` energy + force labels from Langevin MD in basin A
  (the deepest minimum). Its posterior is fixed during the runs: it only supplies
  the uncertainty that UDD, HAL and metadynamics bias along; the basin-A
  configurations are also the fixed particles of Stein MD (they push, do not move);
- Stein MD comes in two noise variants: ``stein`` (kernel-correlated noise,
  Boltzmann-preserving) and ``stein-independent`` (independent noise per
  particle as in Cairn.jl/SKMD: with the 1/N drift this samples a hotter
  distribution, docs/stein.md);
- every method moves on the TRUE surface at the same kT (the biased methods on
  true + bias), starts in basin A and may spend ``budget`` force evaluations
  (Stein MD: particles x steps);
- discovery: the force evaluations spent until all three minima have been
  visited (within 0.15 of each), per repetition (None if not within the budget);
- surrogate quality: ``n_labels`` of each run's recorded configurations (evenly
  spaced in time, over the particles for Stein MD) are labelled (energy and
  forces) and added to the basin-A data; the refitted surrogate's energy RMSE on
  the grid points below V = 0 (``test_grid``) is the test error.

:func:`run_mb_discovery` returns a JSON-able dict; ``bench/generation.py`` and
``notebooks/generation.ipynb`` call it.
"""

from __future__ import annotations

import dataclasses
import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxiap.active.generate.biased_md import run_biased_langevin
from jaxiap.active.generate.hal import hal_adapt, hal_components, hal_energy_fn
from jaxiap.active.generate.metad import run_metad
from jaxiap.active.generate.udd import calibrate_udd_B, udd_bias_energy_fn
from jaxiap.active.generate.uncertainty import linear_energy_std
from jaxiap.errors import JaxiapInputError, check_positive_fields
from jaxiap.inference.linear import fit_blr
from jaxiap.md.integrators import block_langevin
from jaxiap.md.stein import energy_score_fn, run_stein_langevin
from jaxiap.md.stein_kernels import SteinKernel
from jaxiap.potentials.linear import ENERGY_ROW, FORCE_ROW, DesignMatrix
from jaxiap.systems.muller_brown import MINIMA, SurfaceBasis, grid_centers, muller_brown, nearest_minimum, test_grid

__all__ = ["MBDiscoveryConfig", "MB_METHODS", "run_mb_discovery", "fit_surface", "surface_rmse"]

MB_METHODS = ("langevin", "stein", "stein-independent", "udd", "hal", "metad")


@dataclasses.dataclass(frozen=True)
class MBDiscoveryConfig:
    """Settings of the Müller–Brown comparison (the surface's energy and length units; unit mass)."""

    kT: float = 10.0
    dt: float = 0.005
    gamma: float = 5.0
    budget: int = 40_000  # force evaluations per run
    record_every: int = 10  # MD steps between recorded frames (Stein: steps between recorded particle sets)
    repetitions: int = 4
    seed: int = 0
    n_train: int = 16
    n_labels: int = 32
    grid: int = 12
    width: float = 0.2
    prior_scale: float = 100.0
    noise_std: float = 1.0  # energy label noise (energy)
    force_noise_std: float = 10.0  # force label noise (energy / length)
    stein_particles: int = 16
    stein_dt: float = 2e-3
    udd_A: float = 100.0
    udd_ratio: float = 0.36
    hal_tau_rel: float = 0.2
    metad_height: float = 5.0
    metad_width: float = 2.0
    metad_bias_factor: float = 10.0
    metad_pace: int = 50
    methods: tuple = MB_METHODS

    def __post_init__(self):
        unknown = [m for m in self.methods if m not in MB_METHODS]
        if unknown or not self.methods:
            raise JaxiapInputError(f"MBDiscoveryConfig.methods: unknown {unknown}; choose from {MB_METHODS}")
        check_positive_fields(self, skip=("methods", "seed"))
        if self.budget % (self.record_every * self.stein_particles) or self.budget % self.metad_pace:
            raise JaxiapInputError("MBDiscoveryConfig.budget must be a multiple of record_every x stein_particles "
                                   "and of metad_pace")


# ----------------------------------------------------------------------------- surrogate


def _design(basis: SurfaceBasis, points, force_weight: float) -> DesignMatrix:
    """Energy and force rows (3 per point) of the surrogate at points (P, 2), labelled by the true surface."""
    pts = jnp.asarray(points).reshape(-1, 2)
    b = jax.vmap(basis)(pts)  # (P, K)
    jac = jax.vmap(jax.jacfwd(basis))(pts)  # (P, K, 2)
    e, g = jax.vmap(jax.value_and_grad(muller_brown))(pts)
    A = jnp.concatenate([b[:, None, :], -jnp.swapaxes(jac, 1, 2)], axis=1).reshape(-1, b.shape[1])
    y = jnp.concatenate([e[:, None], -g], axis=1).reshape(-1)
    p = pts.shape[0]
    kind = jnp.tile(jnp.array([ENERGY_ROW, FORCE_ROW, FORCE_ROW]), p)
    w = jnp.tile(jnp.array([1.0, force_weight, force_weight]), p)  # precisions relative to the energy noise
    return DesignMatrix(A, y, w, kind, jnp.repeat(jnp.arange(p), 3), jnp.ones(3 * p, jnp.int32))


def fit_surface(config: MBDiscoveryConfig, points):
    """(basis, GaussianPosterior) of the surrogate fitted on energy + force labels at points (P, 2)."""
    basis = SurfaceBasis(jnp.asarray(grid_centers(config.grid)), config.width)
    design = _design(basis, points, (config.noise_std / config.force_noise_std) ** 2)
    post = fit_blr(design, prior_precision=1.0 / config.prior_scale**2, noise_var=config.noise_std**2)
    return basis, post


def surface_rmse(basis, posterior, grid=None) -> float:
    """Energy RMSE of the surrogate mean on the test grid (points with V < 0)."""
    pts = jnp.asarray(test_grid() if grid is None else grid)
    pred = jax.vmap(basis)(pts) @ jnp.asarray(posterior.mean)
    return float(jnp.sqrt(jnp.mean((pred - jax.vmap(muller_brown)(pts)) ** 2)))


def basin_a_samples(config: MBDiscoveryConfig, key) -> np.ndarray:
    """(n_train, 2) Langevin snapshots in basin A at kT (the surrogate's initial data)."""
    init, run = block_langevin(muller_brown, dt=config.dt, gamma=config.gamma, kT=config.kT)
    st = init(key, jnp.asarray(MINIMA[0]))
    return np.asarray(run(st, config.n_train, 50, lambda s: s.position)[1])


# ----------------------------------------------------------------------------- samplers


def _energy(x, **unused):
    return muller_brown(x)


def _run_method(name, config: MBDiscoveryConfig, key, basis, post, train):
    """(frames (T, 2), force evaluations after each frame (T,)) of one run of ``name``."""
    c = config
    x0 = jnp.asarray(MINIMA[0]).reshape(1, 2)
    n_blocks = c.budget // c.record_every
    if name in ("stein", "stein-independent"):
        kernel = SteinKernel("rbf")
        n_steps = c.budget // c.stein_particles
        start = x0.reshape(1, 2) + 0.05 * jax.random.normal(jax.random.fold_in(key, 1), (c.stein_particles, 2))
        traj = run_stein_langevin(key, energy_score_fn(_energy, c.kT), start, kernel, dt=c.stein_dt, n_steps=n_steps,
                                  every=c.record_every, noise="kernel" if name == "stein" else "independent",
                                  fixed=jnp.asarray(train))
        frames = np.asarray(traj.samples).reshape(-1, 2)  # (T * P, 2): every particle at every record
        evals = np.repeat(np.arange(1, n_steps // c.record_every + 1) * c.record_every * c.stein_particles,
                          c.stein_particles)
        return frames, evals
    if name == "langevin":
        init, run = block_langevin(_energy, dt=c.dt, gamma=c.gamma, kT=c.kT)
        frames = run(init(key, x0), n_blocks, c.record_every, lambda s: s.position)[1]
        return np.asarray(frames).reshape(-1, 2), np.arange(1, n_blocks + 1) * c.record_every
    if name == "udd":
        configs = jnp.asarray(train).reshape(-1, 1, 2)
        B = calibrate_udd_B(post, basis, configs, A=c.udd_A, n_atoms=1, target=c.udd_ratio, unreachable="max")
        bias = udd_bias_energy_fn(post, basis, A=c.udd_A, B=B, n_atoms=1)
        res = run_biased_langevin(key, lambda x: muller_brown(x) + bias(x), x0, kT=c.kT, dt=c.dt, gamma=c.gamma,
                                  n_blocks=n_blocks, block_steps=c.record_every)
        return np.asarray(res.frames).reshape(-1, 2), np.arange(1, n_blocks + 1) * c.record_every
    if name == "hal":
        mean_e, sigma = hal_components(post, basis)
        hal = hal_energy_fn(post, basis)
        true_mean = lambda x, mask=None: muller_brown(x)  # noqa: E731  (the true surface replaces the mean)
        res = run_biased_langevin(key, lambda x, tau: muller_brown(x) - tau * hal(x, 1.0) + tau * mean_e(x),
                                  x0, kT=c.kT, dt=c.dt, gamma=c.gamma, n_blocks=n_blocks, block_steps=c.record_every,
                                  adapt=hal_adapt(true_mean, sigma, tau_rel=c.hal_tau_rel),
                                  energy_kwargs={"tau": 0.0})
        return np.asarray(res.frames).reshape(-1, 2), np.arange(1, n_blocks + 1) * c.record_every
    if name == "metad":
        std = linear_energy_std(post, basis)
        n_hills = c.budget // c.metad_pace
        res = run_metad(key, _energy, std, x0, kT=c.kT, dt=c.dt, gamma=c.gamma, n_blocks=n_hills,
                        block_steps=c.metad_pace, height=c.metad_height, width=c.metad_width,
                        bias_factor=c.metad_bias_factor)
        return np.asarray(res.frames).reshape(-1, 2), np.arange(1, n_hills + 1) * (c.metad_pace + 1)
    raise JaxiapInputError(f"unknown method {name!r}; choose from {MB_METHODS}")


def evals_to_all_minima(frames, evals) -> int | None:
    """Force evaluations until every minimum has been visited (within 0.15), None if some never was."""
    lab = nearest_minimum(frames)
    first = []
    for m in range(len(MINIMA)):
        hit = np.flatnonzero(lab == m)
        if hit.size == 0:
            return None
        first.append(int(evals[hit[0]]))
    return max(first)


def _labels_from(frames, n: int) -> np.ndarray:
    ok = np.isfinite(frames).all(axis=1)
    f = frames[ok]
    return f[np.linspace(0, len(f) - 1, n).round().astype(int)]


def run_mb_discovery(config: MBDiscoveryConfig = MBDiscoveryConfig(), progress: bool = True,
                     keep_frames: bool = False) -> dict:
    """Discovery and surrogate-error comparison of the samplers (module docstring); a JSON-able dict.

    keep_frames: also return ``frames`` {method: (T, 2) configurations of the first repetition}
    (numpy arrays, for figures).
    """
    out = {"config": dataclasses.asdict(config), "methods": {}}
    grid = test_grid()
    base_err = []
    for m in config.methods:
        out["methods"][m] = {"evals_to_all_minima": [], "surface_rmse": [], "visited": [], "wall_s": 0.0}
    for rep in range(config.repetitions):
        key = jax.random.fold_in(jax.random.key(config.seed), rep)
        train = basin_a_samples(config, jax.random.fold_in(key, 7))
        basis, post = fit_surface(config, train)
        base_err.append(surface_rmse(basis, post, grid))
        for i, m in enumerate(config.methods):
            t0 = time.perf_counter()
            frames, evals = _run_method(m, config, jax.random.fold_in(key, 100 + i), basis, post, train)
            d = out["methods"][m]
            d["wall_s"] += time.perf_counter() - t0
            if keep_frames and rep == 0:
                out.setdefault("frames", {})[m] = frames
            d["evals_to_all_minima"].append(evals_to_all_minima(frames, evals))
            d["visited"].append(sorted({int(v) for v in nearest_minimum(frames) if v >= 0}))
            _, refit = fit_surface(config, np.concatenate([train, _labels_from(frames, config.n_labels)]))
            d["surface_rmse"].append(surface_rmse(basis, refit, grid))
            if progress:
                print(f"[jaxiap] muller-brown rep {rep} {m}: all minima after {d['evals_to_all_minima'][-1]} force "
                      f"evaluations, surrogate RMSE {d['surface_rmse'][-1]:.3g}", flush=True)
    out["initial_surface_rmse"] = base_err
    for d in out["methods"].values():
        e = [v for v in d["evals_to_all_minima"] if v is not None]
        d["found_all_fraction"] = len(e) / config.repetitions
        d["median_evals_found"] = float(np.median(e)) if e else None
        d["surface_rmse_mean"] = float(np.mean(d["surface_rmse"]))
        d["surface_rmse_sem"] = float(np.std(d["surface_rmse"], ddof=1) / math.sqrt(len(d["surface_rmse"]))) \
            if len(d["surface_rmse"]) > 1 else None
    return out
