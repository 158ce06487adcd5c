"""The LJ13 active-learning study: which selection rule reaches a good potential with fewest labels?

Design (chosen so that strategies can differ):

- pool: snapshots of Langevin MD of the true LJ13 at several temperatures
  (default kT in {0.1, 0.3, 0.5}: near-icosahedral, the study temperature,
  and hot/partly evaporating clusters), unlabelled; the oracle (true LJ) labels
  only what a strategy selects;
- test set: fresh MD snapshots at the study temperature kT = 0.3;
- potential: a 10-function Chebyshev pair basis on [0.8, 3.0] sigma;
- labels: energies only by default. With forces, one configuration gives 39
  force rows and any strategy saturates after the first pick (tested: the held-out
  force error is at the full-data level after 1 configuration for 6-12
  functions), so there is nothing to choose. With energies only, each
  configuration gives one row and the choice of configurations decides the fit;
- posterior: Bayesian linear regression with *fixed* hyperparameters (noise and
  prior scale from type-II maximum likelihood on the fully labelled pool, which
  is also the "full-pool" reference fit), so uncertainty and design criteria mean
  the same thing at every iteration;
- loop: start from ``n_initial`` random configurations (the same for every
  strategy within a repetition), add ``batch_size`` per iteration for
  ``n_iterations`` iterations, ``repetitions`` times with different initial sets;
- metrics: held-out force RMSE / force std at every iteration; FRT error (KS
  distance and relative error of the mean FRT, against the true potential's FRT
  ensemble with the same thermostat seeds) at a few checkpoints, all fitted
  potentials in one batched ensemble;
- QoI strategy: C-optimal design with c = d<E>/dc, the gradient of the canonical
  mean potential energy at kT, from the fluctuation formula <B> - cov(E, B)/kT
  evaluated on the pool's study-temperature snapshots (true-LJ samples used as an
  approximation of the current model's ensemble).

Outputs in the run folder: summary.json, report.md, learning_curves.png,
frt_learning_curves.png (with FRT), inclusion_probability.png, one resumable
loop folder per (strategy, repetition) and the FRT ensembles.
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxiap import runfolder
from jaxiap.errors import JaxiapInputError

STRATEGY_NAMES = ("random", "dpp-sample", "dpp-greedy", "d-optimal", "a-optimal", "qbc", "uncertainty", "qoi")

PRESETS = {
    # defaults: a few minutes on 2 CPU cores
    "cpu": {},
    # more repetitions, a larger pool and many FRT seeds on a GPU (float32 MD)
    "gpu": dict(repetitions=8, pool_trajectories=8, n_iterations=14, n_seeds=512, t_max=100.0,
                frt_checkpoints=(6, 12, 20, 30), dtype="float32", series_frames=400),
    # seconds-long smoke runs for tests and notebooks
    "tiny": dict(pool_trajectories=2, pool_samples=6, sample_every=50, n_equilibrate=50, test_trajectories=2,
                 basis_size=6, repetitions=2, n_iterations=3, committee_size=4, n_seeds=4, t_max=3.0,
                 frt_checkpoints=(4, 8), series_frames=24, series_every=10),
}


#: the ``jaxiap lj13-al`` option of each LJ13ALConfig field (config errors name both)
CLI_FLAGS = {
    "seed": "--seed", "strategies": "--strategies", "repetitions": "--repetitions", "n_initial": "--initial",
    "batch_size": "--batch-size", "n_iterations": "--iterations", "labels": "--labels", "basis_size": "--basis-size",
    "threshold_factor": "--threshold-factor", "n_seeds": "--seeds", "t_max": "--t-max", "frt": "--no-frt",
}


@dataclasses.dataclass(frozen=True)
class LJ13ALConfig:
    """Every setting of the study (reduced LJ units)."""

    seed: int = 0
    kT: float = 0.30
    gamma: float = 1.0
    dt: float = 0.005
    # candidate pool and test set (Langevin MD of the true LJ13)
    pool_kTs: tuple = (0.1, 0.3, 0.5)
    pool_trajectories: int = 4
    pool_samples: int = 25
    sample_every: int = 100
    n_equilibrate: int = 200
    test_trajectories: int = 4  # test snapshots: test_trajectories x pool_samples at kT
    # potential and labels
    basis: str = "chebyshev"
    basis_size: int = 10
    r_min: float = 0.8
    r_cut: float = 3.0
    labels: str = "energy"  # "energy" or "energy+forces"
    # loop
    strategies: tuple = STRATEGY_NAMES
    repetitions: int = 3
    n_initial: int = 2
    batch_size: int = 2
    n_iterations: int = 12
    committee_size: int = 8
    threshold_factor: float = 3.0
    extra_threshold_factors: tuple = (1.5, 2.0, 5.0)
    # FRT evaluation
    frt: bool = True
    frt_checkpoints: tuple = (6, 14, 26)
    n_seeds: int = 24
    t_max: float = 40.0
    n_q: int = 100
    r_b: float = 1.35
    dtype: str = "float64"
    frt_error_floor: float = 0.1
    frt_threshold_factor: float = 1.5
    # inclusion-probability figure: one MD trajectory at kT
    series_frames: int = 200
    series_every: int = 20

    def __post_init__(self):
        from jaxiap.workflows.lj13 import SEED_LIMIT, check_seed, field_text, validated_frt_settings

        def field(name):
            return field_text(self, name, CLI_FLAGS)

        def bad(name, why):
            raise JaxiapInputError(f"{field(name)}: {why}")

        check_seed(self, CLI_FLAGS, "seed * 1000 + 2, + 10 and seed + 3, + 4 key the data, the loops and the "
                                    "initial sets")
        object.__setattr__(self, "pool_kTs", tuple(float(v) for v in self.pool_kTs))
        object.__setattr__(self, "strategies", tuple(self.strategies))
        object.__setattr__(self, "frt_checkpoints", tuple(int(v) for v in self.frt_checkpoints))
        object.__setattr__(self, "extra_threshold_factors", tuple(float(v) for v in self.extra_threshold_factors))
        for name in ("kT", "gamma", "dt", "t_max", "r_b", "r_cut", "r_min", "threshold_factor",
                     "frt_threshold_factor"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                bad(name, "must be a positive finite number")
        if not self.pool_kTs or not all(math.isfinite(v) and v > 0 for v in self.pool_kTs):
            bad("pool_kTs", "must be positive temperatures")
        for name in ("pool_trajectories", "pool_samples", "sample_every", "test_trajectories",
                     "basis_size", "repetitions", "n_initial", "batch_size", "n_iterations", "committee_size",
                     "n_seeds", "n_q", "series_frames", "series_every"):
            if not (isinstance(getattr(self, name), (int, np.integer)) and getattr(self, name) >= 1):
                bad(name, "must be a positive integer")
        if self.n_seeds > SEED_LIMIT:
            bad("n_seeds", "thermostat seeds are 32-bit: at most 2**32 of them")
        if not (math.isfinite(self.frt_error_floor) and self.frt_error_floor >= 0):
            bad("frt_error_floor", "must be a number >= 0")
        if not all(math.isfinite(f) and f > 0 for f in self.extra_threshold_factors):
            bad("extra_threshold_factors", "must be positive numbers")
        if self.committee_size < 2:
            bad("committee_size", "must be at least 2")
        if self.r_min >= self.r_cut:
            bad("r_min", f"must be smaller than r_cut={self.r_cut}")
        if self.labels not in ("energy", "energy+forces"):
            bad("labels", "choose 'energy' or 'energy+forces'")
        unknown = [s for s in self.strategies if s not in STRATEGY_NAMES]
        if unknown or not self.strategies or len(set(self.strategies)) != len(self.strategies):
            bad("strategies", f"must be distinct names from {STRATEGY_NAMES}")
        n_pool = len(self.pool_kTs) * self.pool_trajectories * self.pool_samples
        if self.n_initial >= n_pool:
            bad("n_initial", f"the pool holds only {n_pool} candidates ({len(self.pool_kTs)} temperatures x "
                             f"{self.pool_trajectories} trajectories x {self.pool_samples} snapshots) and the loop "
                             f"must leave some to select; use --initial {max(1, n_pool // 4)} or less")
        n_final = self.n_initial + self.batch_size * self.n_iterations
        if n_final > n_pool:
            room = n_pool - self.n_initial
            fix = (f"--iterations {room // self.batch_size}" if room >= self.batch_size
                   else f"--batch-size {room} --iterations 1")
            bad("n_iterations", f"{field('n_initial')} + {self.n_iterations} x {field('batch_size')} = {n_final} "
                                f"labelled configurations exceed the pool of {n_pool} candidates; keep --iterations x "
                                f"--batch-size <= {room} (e.g. {fix})")
        reachable = {self.n_initial + self.batch_size * i for i in range(self.n_iterations + 1)}
        if any(c not in reachable for c in self.frt_checkpoints):
            bad("frt_checkpoints", f"labelled-set sizes must be among {sorted(reachable)}")
        if self.dtype not in ("float64", "float32"):
            bad("dtype", "choose float64 or float32")
        if self.basis not in ("chebyshev", "bessel", "gaussian"):
            bad("basis", "choose chebyshev, bessel or gaussian")
        # the FRT settings of the study's ensembles, validated once here
        object.__setattr__(self, "_frt_settings", validated_frt_settings(
            self, CLI_FLAGS, kT=self.kT, gamma=self.gamma, dt=self.dt, n_q=self.n_q, t_max=self.t_max, r_b=self.r_b,
            dtype=self.dtype))

    @classmethod
    def from_preset(cls, preset: str = "cpu", **overrides) -> "LJ13ALConfig":
        if preset not in PRESETS:
            raise JaxiapInputError(f"preset={preset!r} is unknown; choose one of {tuple(PRESETS)}")
        cfg = {**PRESETS[preset], **overrides}
        if "frt_checkpoints" not in overrides and ("n_iterations" in overrides or "batch_size" in overrides
                                                   or "n_initial" in overrides):
            cfg["frt_checkpoints"] = ()  # re-derived below from the new loop length
        if cfg.get("frt_checkpoints", None) == ():
            n0, b = cfg.get("n_initial", 2), cfg.get("batch_size", 2)
            n_it = cfg.get("n_iterations", cls.n_iterations)
            cfg["frt_checkpoints"] = tuple(sorted({n0 + b * min(2, n_it), n0 + b * (n_it // 2), n0 + b * n_it}))
        return cls(**cfg)

    @property
    def energy_weight(self) -> float:
        return 1.0

    @property
    def force_weight(self) -> float:
        return 0.0 if self.labels == "energy" else 1.0

    def frt_settings(self):
        """The FRTSettings of the study's ensembles (built and validated with the config)."""
        return self._frt_settings


PRESET_CHOICES = tuple(PRESETS)
DEFAULTS = LJ13ALConfig()


# ----------------------------------------------------------------------------- data


def make_basis(config: LJ13ALConfig):
    from jaxiap.descriptors.radial import RadialBasis
    from jaxiap.potentials.linear import LinearBasis

    return LinearBasis(RadialBasis(config.basis, config.basis_size, config.r_min, config.r_cut))


def generate_data(config: LJ13ALConfig, folder: Path | None = None):
    """(pool Dataset, pool temperatures (C,), test Dataset, series Dataset); cached in ``folder``.

    Pool and test trajectories (Langevin MD of the true LJ13 from the icosahedron)
    run in one compiled call; the series is one longer, finer trajectory at kT.
    The pool is stored with its true labels (pool.npz) only for the full-pool
    reference fit; the loops label their selections through the oracle.
    """
    from jaxiap.data import load_npz, save_npz
    from jaxiap.structures import from_positions
    from jaxiap.systems.lj import lj13_minimum, lj_energy
    from jaxiap.systems.oracle import JaxOracle, label
    from jaxiap.systems.sampling import langevin_trajectories

    names = ("pool", "test", "series")
    if folder is not None and all((folder / f"{n}.npz").exists() for n in names):
        pool, test, series = (load_npz(folder / f"{n}.npz") for n in names)
        return pool, runfolder.load_npy(folder / "pool_kT.npy", "pool temperatures"), test, series
    kTs = np.concatenate([np.repeat(config.pool_kTs, config.pool_trajectories),
                          np.full(config.test_trajectories, config.kT)])
    keys = jax.random.split(jax.random.key(config.seed * 1000 + 10), len(kTs))
    r0 = jnp.asarray(lj13_minimum())
    frames = np.asarray(langevin_trajectories(keys, kTs, lj_energy, r0, config.pool_samples, config.sample_every,
                                              config.gamma, config.dt, config.n_equilibrate))
    n_pool = len(config.pool_kTs) * config.pool_trajectories
    oracle = JaxOracle(lj_energy)
    pool = label(oracle, from_positions(frames[:n_pool].reshape(-1, 13, 3)))
    test = label(oracle, from_positions(frames[n_pool:].reshape(-1, 13, 3)))
    sframes = langevin_trajectories(jax.random.split(jax.random.key(config.seed * 1000 + 2), 1), [config.kT],
                                    lj_energy, r0, config.series_frames, config.series_every, config.gamma,
                                    config.dt, config.n_equilibrate)
    series = label(oracle, from_positions(np.asarray(sframes).reshape(-1, 13, 3)))
    pool_kT = np.repeat(kTs[:n_pool], config.pool_samples)
    if folder is not None:
        runfolder.ensure_dir(folder)
        for n, ds in zip(names, (pool, test, series)):
            save_npz(folder / f"{n}.npz", ds)
        runfolder.save_npy(folder / "pool_kT.npy", pool_kT)
    return pool, pool_kT, test, series


# ----------------------------------------------------------------------------- fit and metrics


def reference_fit(config: LJ13ALConfig, basis, pool_rows, pool):
    """Type-II ML on the fully labelled pool: fixed hyperparameters for the loops and the reference fit.

    Returns (fit: the registry's "blr" Solver at those fixed values, ``fit(design) ->
    GaussianPosterior``; the full-pool posterior; hyperparameters dict).
    """
    from jaxiap.inference.linear import optimize_hyperparameters, reweight
    from jaxiap.inference.solvers import get_solver
    from jaxiap.potentials.linear import design_from_rows

    design = reweight(design_from_rows(pool_rows, pool), config.energy_weight, config.force_weight)
    t2 = optimize_hyperparameters(design)
    if config.force_weight == 0:
        noise_var, energy_noise_var = t2.sigma_energy**2, None
    else:  # energy rows re-weighted (by sigma_F^2 / sigma_E^2) so that one noise_var (the force one) serves both
        noise_var, energy_noise_var = t2.sigma_force**2, t2.sigma_energy**2
    prior_precision = 1.0 / t2.prior_scale**2
    # BLR with fixed (type-II on the full pool) noise and prior scale
    fit = get_solver("blr", prior_precision=prior_precision, noise_var=noise_var, energy_noise_var=energy_noise_var)
    hyper = {"sigma_energy": t2.sigma_energy, "sigma_force": t2.sigma_force, "prior_scale": t2.prior_scale,
             "noise_var": noise_var}
    return fit, fit(design), hyper


def force_errors(test_rows, test, coefficients) -> dict:
    """Held-out energy-per-atom and force errors from unit-weight rows (T, 1 + 3N, K)."""
    pred = np.asarray(test_rows) @ np.asarray(coefficients)
    mask = np.asarray(test.structures.mask)
    n_atoms = mask.sum(axis=1)
    de = (pred[:, 0] - np.asarray(test.energy)) / n_atoms
    f_ref = np.asarray(test.forces)[mask]
    df = pred[:, 1:].reshape(len(test), -1, 3)[mask] - f_ref
    rmse = float(np.sqrt(np.mean(df**2)))
    return {"force_rmse_relative": rmse / float(np.std(f_ref)), "force_rmse": rmse,
            "energy_rmse_per_atom": float(np.sqrt(np.mean(de**2)))}


def frt_errors(true_times, true_codes, times, codes) -> dict:
    """KS distance and relative error of the MLE mean FRT, fitted vs true (same seeds)."""
    from jaxiap.md.qoi import FAILED, ks_two_sample, summarize_frt

    ok_t, ok = true_codes != FAILED, codes != FAILED
    out = {"n_failed": int(np.sum(~ok))}
    if not ok.any():
        return {**out, "ks": 1.0, "frt_mean": None, "frt_mean_rel_error": None}
    stat, _ = ks_two_sample(true_times[ok_t], times[ok])
    m_true = summarize_frt(true_times, true_codes)["frt_mean"]
    m = summarize_frt(times, codes)["frt_mean"]
    rel = abs(m - m_true) / m_true if np.isfinite(m) and np.isfinite(m_true) and m_true > 0 else None
    return {**out, "ks": float(stat), "frt_mean": m if np.isfinite(m) else None, "frt_mean_rel_error": rel}


# ----------------------------------------------------------------------------- study


def _strategy_key(seed: int, rep: int, name: str):
    return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed + 3), rep), zlib.crc32(name.encode()) % 2**31)


def initial_sets(config: LJ13ALConfig, n_pool: int) -> list:
    """One random initial set per repetition, shared by all strategies."""
    return [np.sort(np.asarray(jax.random.choice(jax.random.fold_in(jax.random.key(config.seed + 4), r), n_pool,
                                                 (config.n_initial,), replace=False))).tolist()
            for r in range(config.repetitions)]


def first_reaching(n, values, threshold):
    """Smallest n with values <= threshold (values NaN are skipped); None if never."""
    for x, v in zip(n, values):
        if v is not None and np.isfinite(v) and v <= threshold:
            return int(x)
    return None


def run_lj13_al(config: LJ13ALConfig = LJ13ALConfig(), out_dir="runs/lj13-al", overwrite: bool = False,
                progress: bool = True) -> dict:
    """Run the study into ``out_dir``; returns the summary dict (also in summary.json). Resumable."""
    from jaxiap.active.design import candidate_rows
    from jaxiap.active.loop import mean_energy_gradient_from_samples, pool_features, run_pool_loop
    from jaxiap.systems.lj import lj_energy
    from jaxiap.systems.oracle import JaxOracle
    from jaxiap.workflows.timing import StageTimer

    out = runfolder.open_run_folder(out_dir, dataclasses.asdict(config), kind="lj13-al", overwrite=overwrite)
    timer = StageTimer(verbose=progress)
    with timer("data"):
        pool_ds, pool_kT, test, series = generate_data(config, out / "data")
        pool = pool_ds.structures
        basis = make_basis(config)
        pool_rows = np.asarray(candidate_rows(basis, pool))
        test_rows = np.asarray(candidate_rows(basis, test.structures))
        phi = pool_features(basis, pool)
    with timer("reference_fit"):
        fit, full_post, hyper = reference_fit(config, basis, pool_rows, pool_ds)
        full_err = force_errors(test_rows, test, full_post.mean)

    # QoI = canonical mean potential energy at kT; features of the pool's study-temperature snapshots
    at_kT = np.isclose(pool_kT, config.kT)
    qoi_feats = pool_rows[at_kT if at_kT.any() else slice(None), 0, :]

    def qoi_gradient(posterior):
        return mean_energy_gradient_from_samples(qoi_feats, np.asarray(posterior.mean), config.kT)

    evaluate = lambda post: force_errors(test_rows, test, post.mean)
    oracle = JaxOracle(lj_energy)
    inits = initial_sets(config, len(pool))
    loops = {}
    with timer("loops"):
        for name in config.strategies:
            for rep, init in enumerate(inits):
                res = run_pool_loop(
                    name, pool, oracle, fit=fit, basis=basis, initial=init, batch_size=config.batch_size,
                    n_iterations=config.n_iterations, key=_strategy_key(config.seed, rep, name), evaluate=evaluate,
                    run_dir=out / "loops" / name / f"rep{rep}", progress=progress,
                    energy_weight=config.energy_weight, force_weight=config.force_weight, phi=phi,
                    qoi_gradient=qoi_gradient if name == "qoi" else None, committee_size=config.committee_size,
                    settings={"hyper": hyper, "oracle": "true LJ"}, rows=pool_rows)
                loops[name, rep] = res
    n_lab = loops[config.strategies[0], 0].n_labelled
    curves = {name: np.array([[r["metrics"]["force_rmse_relative"] for r in loops[name, rep].records]
                              for rep in range(config.repetitions)]) for name in config.strategies}
    # QoI error: |predicted - true| mean potential energy per atom over the kT test snapshots (what "qoi" targets)
    e_test = np.asarray(test.energy)
    qoi_curves = {name: np.array([np.abs((loops[name, rep].coefficients @ test_rows[:, 0, :].T - e_test).mean(axis=1))
                                  / 13.0 for rep in range(config.repetitions)]) for name in config.strategies}
    picks_kT = {name: np.mean([pool_kT[loops[name, rep].order[config.n_initial:]]
                               for rep in range(config.repetitions)], axis=0).tolist()
                for name in config.strategies}

    frt = None
    if config.frt:
        with timer("frt"):
            frt = run_frt_checkpoints(config, out, basis, loops, full_post, n_lab, progress)

    previous = out / "summary.json"
    history = runfolder.read_json(previous, "summary").get("wall_time_history", []) if previous.exists() else []
    with timer("report"):
        full_err["qoi_error"] = abs(float(np.mean(test_rows[:, 0, :] @ np.asarray(full_post.mean) - e_test))) / 13.0
        summary = build_summary(config, n_lab, curves, full_err, hyper, frt, picks_kT, len(pool), len(test))
        for name in config.strategies:
            summary["strategies"][name]["qoi_error"] = _band(qoi_curves[name])
        write_figures(out, config, n_lab, curves, full_err, frt, basis, series, summary)
        from jaxiap import plots

        plots.learning_curves(n_lab, qoi_curves, out / "qoi_learning_curves.png", logy=True,
                              ylabel="|error of mean potential energy| per atom (kT test set)",
                              reference=full_err["qoi_error"], title="QoI error (canonical mean energy at kT)")
        summary["wall_time_s"] = dict(timer.times)  # this call (a resumed call reuses finished stages)
    summary["wall_time_s"] = dict(timer.times)
    summary["wall_time_history"] = history + [dict(timer.times)]  # one entry per call, first = the full run
    runfolder.write_json(out / "summary.json", summary)
    write_report(out, summary)
    return runfolder.read_json(out / "summary.json", "summary")  # NaN -> None, as on disk


def run_frt_checkpoints(config, out, basis, loops, full_post, n_lab, progress) -> dict:
    """One batched FRT ensemble of every (strategy, repetition, checkpoint) potential + the full-pool fit."""
    from jaxiap.md.ensemble import run_frt_ensemble
    from jaxiap.potentials.linear import energy_fn
    from jaxiap.systems.lj import lj13_minimum
    from jaxiap.workflows.lj13 import true_lj_energy

    settings = config.frt_settings()
    seeds = np.arange(config.n_seeds)
    start = lj13_minimum()
    its = [int(np.flatnonzero(n_lab == c)[0]) for c in config.frt_checkpoints]
    labels, coefs = [("full-pool", -1, -1)], [np.asarray(full_post.mean)]
    for name in config.strategies:
        for rep in range(config.repetitions):
            for c, it in zip(config.frt_checkpoints, its):
                labels.append((name, rep, c))
                coefs.append(loops[name, rep].coefficients[it])
    common = dict(base_seed=config.seed, progress=progress)
    true_res = run_frt_ensemble(true_lj_energy, np.zeros((1, 1)), seeds, start, settings,
                                run_dir=out / "frt_true", **common)
    fit_res = run_frt_ensemble(energy_fn(basis), np.stack(coefs), seeds, start, settings,
                               run_dir=out / "frt_fitted", **common)
    tt, tc = true_res.time[0], true_res.code[0]
    errs = {lab: frt_errors(tt, tc, fit_res.time[m], fit_res.code[m]) for m, lab in enumerate(labels)}
    # MD QoI: mean potential energy per atom sampled along the runs (before the first rearrangement)
    e_true = _md_mean_energy(true_res, 0)
    for m, lab in enumerate(labels):
        e = _md_mean_energy(fit_res, m)
        errs[lab]["md_mean_energy"] = e
        errs[lab]["qoi_md_error"] = None if e is None or e_true is None else abs(e - e_true) / 13.0
    from jaxiap.md.qoi import summarize_frt

    return {"true": {**summarize_frt(tt, tc), "md_mean_energy": e_true}, "full_pool": errs["full-pool", -1, -1],
            "per_run": errs, "t_censor": float(settings.t_censor)}


def _md_mean_energy(result, m):
    """Sample-weighted mean MD potential energy of coefficient sample m over its non-failed replicas."""
    from jaxiap.md.qoi import FAILED

    ok = (result.code[m] != FAILED) & (result.n_samples[m] > 0) & np.isfinite(result.mean_energy[m])
    if not ok.any():
        return None
    w = result.n_samples[m][ok].astype(float)
    return float(np.sum(result.mean_energy[m][ok] * w) / w.sum())


def _band(a):
    import warnings

    a = np.asarray(a, float)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns (no FRT events) give NaN -> null
        return {"mean": np.nanmean(a, axis=0).tolist(), "min": np.nanmin(a, axis=0).tolist(),
                "max": np.nanmax(a, axis=0).tolist()}


def _threshold_table(config, n_lab, curves, full_err) -> dict:
    """{factor: {"threshold", "n": {strategy: n or None}, "relative_to_random": {...}}} on the mean curves."""
    table = {}
    for f in sorted({config.threshold_factor, *config.extra_threshold_factors}):
        thr = f * full_err["force_rmse_relative"]
        n = {name: first_reaching(n_lab, _band(curves[name])["mean"], thr) for name in config.strategies}
        base = n.get("random")
        table[f"{f:g}"] = {"threshold": thr, "n": n,
                           "relative_to_random": {k: None if v is None or base is None else v / base
                                                  for k, v in n.items()}}
    return table


def build_summary(config, n_lab, curves, full_err, hyper, frt, picks_kT, n_pool, n_test) -> dict:
    thr_f = config.threshold_factor * full_err["force_rmse_relative"]
    strategies = {}
    for name in config.strategies:
        band = _band(curves[name])
        strategies[name] = {"force_rmse_relative": band,
                            "n_to_force_threshold": first_reaching(n_lab, band["mean"], thr_f),
                            "n_to_force_threshold_per_rep": [first_reaching(n_lab, c, thr_f) for c in curves[name]],
                            "mean_pool_kT_of_picks": picks_kT[name]}
    out = {
        "study": "lj13-al",
        "data": {"n_pool": n_pool, "pool_kTs": list(config.pool_kTs), "n_test": n_test, "kT": config.kT,
                 "labels": config.labels},
        "fit": {"basis": config.basis, "basis_size": config.basis_size, "r_min": config.r_min, "r_cut": config.r_cut,
                "posterior": "BLR, fixed type-II (full pool) hyperparameters", **hyper},
        "loop": {"n_initial": config.n_initial, "batch_size": config.batch_size,
                 "n_iterations": config.n_iterations, "repetitions": config.repetitions},
        "n_labelled": np.asarray(n_lab).tolist(),
        "full_pool": {**full_err},
        "force_threshold": thr_f,
        "threshold_factor": config.threshold_factor,
        "force_thresholds": _threshold_table(config, n_lab, curves, full_err),
        "strategies": strategies,
    }
    if frt is not None:
        ks_full = frt["full_pool"]["ks"]
        thr_ks = max(config.frt_threshold_factor * ks_full, config.frt_error_floor)
        out["frt"] = {"true": frt["true"], "full_pool": frt["full_pool"], "t_censor": frt["t_censor"],
                      "checkpoints": list(config.frt_checkpoints), "n_seeds": config.n_seeds,
                      "ks_threshold": thr_ks, "ks_floor": config.frt_error_floor,
                      "ks_factor": config.frt_threshold_factor}
        for name in config.strategies:
            per = [[frt["per_run"][name, rep, c] for c in config.frt_checkpoints] for rep in range(config.repetitions)]
            ks = np.array([[e["ks"] for e in row] for row in per])
            rel = np.array([[np.nan if e["frt_mean_rel_error"] is None else e["frt_mean_rel_error"] for e in row]
                            for row in per])
            band = _band(ks)
            strategies[name]["frt_ks"] = band
            strategies[name]["frt_mean_rel_error"] = _band(rel)
            strategies[name]["qoi_md_error"] = _band([[np.nan if e["qoi_md_error"] is None else e["qoi_md_error"]
                                                      for e in row] for row in per])
            strategies[name]["frt_failed_runs"] = int(sum(e["n_failed"] for row in per for e in row))
            strategies[name]["n_to_frt_threshold"] = first_reaching(config.frt_checkpoints, band["mean"], thr_ks)
    for key, rel in (("n_to_force_threshold", "relative_to_random_force"),
                     ("n_to_frt_threshold", "relative_to_random_frt")):
        base = strategies.get("random", {}).get(key)
        for name in config.strategies:
            if key in strategies[name]:
                v = strategies[name][key]
                strategies[name][rel] = None if v is None or base is None else v / base
    return out


# ----------------------------------------------------------------------------- figures and report


#: RBF lengthscale of the inclusion-probability figure, as a multiple of the median pairwise distance
#: (at 1x every frame of an MD series looks alike and K_ii is flat; 0.3x resolves excursions)
SERIES_LENGTHSCALE_FACTOR = 0.3


def inclusion_probability_series(basis, series, quality=None, lengthscale=None):
    """DPP inclusion probabilities K_ii (T,) over an MD time series of T frames.

    L_ij = q_i k(phi_i, phi_j) q_j with phi the standardised pair features,
    uniform quality by default, and an RBF lengthscale of
    SERIES_LENGTHSCALE_FACTOR x the median pairwise distance unless given.
    """
    from jaxiap.active.dpp import inclusion_probabilities, quality_diversity_kernel
    from jaxiap.active.loop import default_lengthscale, pool_features

    phi = pool_features(basis, series.structures)
    ls = SERIES_LENGTHSCALE_FACTOR * default_lengthscale(phi) if lengthscale is None else lengthscale
    q = np.ones(len(series)) if quality is None else np.asarray(quality)
    return np.asarray(inclusion_probabilities(quality_diversity_kernel(phi, q, ls)))


def write_figures(out: Path, config, n_lab, curves, full_err, frt, basis, series, summary) -> None:
    from jaxiap import plots

    plots.learning_curves(n_lab, curves, out / "learning_curves.png", ylabel="held-out force RMSE / force std",
                          reference=full_err["force_rmse_relative"], threshold=summary["force_threshold"],
                          logy=True, title=f"LJ13 active learning ({config.labels} labels, "
                                           f"{config.repetitions} repetitions, min-max band)")
    if frt is not None:
        ks = {name: np.array([[frt["per_run"][name, rep, c]["ks"] for c in config.frt_checkpoints]
                              for rep in range(config.repetitions)]) for name in config.strategies}
        plots.learning_curves(np.asarray(config.frt_checkpoints), ks, out / "frt_learning_curves.png",
                              ylabel="FRT KS distance to true LJ", reference=frt["full_pool"]["ks"],
                              threshold=summary["frt"]["ks_threshold"], title=f"FRT error ({config.n_seeds} seeds)")
    incl = inclusion_probability_series(basis, series)
    t = np.arange(len(series)) * config.series_every * config.dt
    plots.inclusion_probability_trace(t, incl, np.asarray(series.energy), out / "inclusion_probability.png")
    import matplotlib.pyplot as plt

    plt.close("all")


def _div(x, d):
    return None if x is None else x / d


def _fmt(x, spec=".3g"):
    if x is None:
        return "n/a"
    return format(x, spec)


def write_report(out: Path, s: dict) -> None:
    rows = []
    for name, d in s["strategies"].items():
        f = d["force_rmse_relative"]["mean"]
        rows.append(f"| {name} | {_fmt(f[len(f) // 2])} | {_fmt(f[-1])} | {_fmt(d['qoi_error']['mean'][-1])} | "
                    f"{_fmt(d['n_to_force_threshold'], 'd')} | "
                    f"{_fmt(d.get('relative_to_random_force'), '.2f')} | "
                    f"{_fmt(d['frt_ks']['mean'][-1]) if 'frt_ks' in d else 'n/a'} | "
                    f"{_fmt(d['qoi_md_error']['mean'][-1]) if 'qoi_md_error' in d else 'n/a'} | "
                    f"{_fmt(d.get('n_to_frt_threshold'), 'd')} | {_fmt(d.get('relative_to_random_frt'), '.2f')} | "
                    f"{', '.join(f'{v:.2f}' for v in d['mean_pool_kT_of_picks'][:6])} |")
    n = s["n_labelled"]
    frt_text = "FRT evaluation was switched off (--no-frt)."
    if "frt" in s:
        fr = s["frt"]
        frt_text = (f"FRT ensembles at n_labelled in {fr['checkpoints']}, {fr['n_seeds']} seeds, censoring at "
                    f"{fr['t_censor']:.3g} tau. True LJ mean FRT {_fmt(fr['true']['frt_mean'])} tau; full-pool fit "
                    f"KS {fr['full_pool']['ks']:.3f}, mean FRT {_fmt(fr['full_pool']['frt_mean'])}. MD QoI: mean potential energy "
                    f"per atom sampled along the same runs up to each run's first rearrangement, so it mixes the energy with the "
                    f"FRT (true {_fmt(_div(fr['true']['md_mean_energy'], 13))}); "
                    f"its error per atom is the 'MD QoI err' column (full-pool fit {_fmt(fr['full_pool']['qoi_md_error'])}). "
                    f"FRT threshold: KS <= {fr['ks_threshold']:.3f} (the full-pool fit's KS times {fr['ks_factor']}, "
                    f"at least the floor {fr['ks_floor']}).\n\n![FRT learning curves](frt_learning_curves.png)")
    text = f"""# LJ13 active learning: strategies compared

Pool: {s['data']['n_pool']} unlabelled LJ13 MD snapshots at kT in {s['data']['pool_kTs']}; test: {s['data']['n_test']}
snapshots at kT = {s['data']['kT']}. Labels: {s['data']['labels']} (true LJ oracle, only selected structures).
Potential: {s['fit']['basis']} pair basis, {s['fit']['basis_size']} functions on [{s['fit']['r_min']}, {s['fit']['r_cut']}];
{s['fit']['posterior']} (sigma_E = {s['fit']['sigma_energy']:.3g}, prior scale = {s['fit']['prior_scale']:.3g}).
Loop: {s['loop']['n_initial']} random initial configurations, {s['loop']['batch_size']} per iteration,
{s['loop']['n_iterations']} iterations, {s['loop']['repetitions']} repetitions (n_labelled {n[0]}..{n[-1]}).

Full-pool fit: held-out force RMSE / std = {s['full_pool']['force_rmse_relative']:.4g}; threshold = {s['force_threshold']:.4g}
({s['threshold_factor']} x the full-pool error).

| strategy | force err @ n={n[len(n) // 2]} | @ n={n[-1]} | QoI err @ n={n[-1]} | n to force thr. | vs random | FRT KS (last) | MD QoI err (last) | n to FRT thr. | vs random | mean pool kT of picks |
|---|---|---|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}

Labelled-set size to reach other force thresholds (multiples of the full-pool error; n/a = not reached by n={n[-1]}):

| factor | threshold | {' | '.join(s['strategies'])} |
|---|---|{'---|' * len(s['strategies'])}
{chr(10).join(f"| {f} | {t['threshold']:.3g} | " + ' | '.join(_fmt(t['n'][k], 'd') for k in s['strategies']) + ' |' for f, t in s['force_thresholds'].items())}

"vs random": labelled-set size to reach the threshold divided by random's (smaller is better;
n/a when either never reached it). Thresholds are judged on the mean curve over repetitions.

![learning curves](learning_curves.png)

QoI error: |predicted - true| mean potential energy per atom over the test snapshots at kT (the quantity the
"qoi" strategy's C-optimal design targets); full-pool fit {_fmt(s['full_pool']['qoi_error'])}.

![QoI learning curves](qoi_learning_curves.png)

{frt_text}

DPP inclusion probabilities K_ii (uniform quality, RBF on standardised pair features with lengthscale
{SERIES_LENGTHSCALE_FACTOR} x the median pairwise distance) over one MD trajectory at kT, potential energy above:

![inclusion probabilities](inclusion_probability.png)

Wall time per stage (s), one line per call of the study on this folder (later calls resume):

{chr(10).join('- ' + ', '.join(f'{k} {v:.1f}' for k, v in h.items()) for h in s.get('wall_time_history', [])) or 'n/a'}
"""
    runfolder.write_text(out / "report.md", text)
