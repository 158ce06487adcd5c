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

The configuration lives in :mod:`jaxiap.workflows.lj13_al_config`, the summary,
figures and report in :mod:`jaxiap.workflows.lj13_al_report`; this module runs
the stages.
"""

from __future__ import annotations

import dataclasses
import functools
import zlib
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxiap import runfolder
from jaxiap.active.design import candidate_rows
from jaxiap.active.generator_loop import run_generator_loop
from jaxiap.active.generators import GeneratorSettings, make_generator
from jaxiap.active.loop import run_pool_loop
from jaxiap.active.strategies import mean_energy_gradient_from_samples, pool_features
from jaxiap.data import load_npz, save_npz
from jaxiap.descriptors.radial import RadialBasis
from jaxiap.inference.linear import optimize_hyperparameters, reweight
from jaxiap.inference.solvers import get_solver
from jaxiap.md.ensemble import run_frt_ensemble
from jaxiap.md.qoi import FAILED, evaporated
from jaxiap.potentials.linear import LinearBasis, design_from_rows, energy_fn
from jaxiap.structures import from_positions
from jaxiap.systems.lj import lj13_minimum, lj_energy
from jaxiap.systems.oracle import JaxOracle, label
from jaxiap.systems.sampling import langevin_trajectories
from jaxiap.uq.frt import frt_errors
from jaxiap.uq.survival import summarize_frt
from jaxiap.workflows.lj13 import true_lj_energy
from jaxiap.workflows.lj13_al_config import LJ13ALConfig
from jaxiap.workflows.lj13_al_report import build_summary, write_figures, write_report
from jaxiap.workflows.timing import StageTimer


# ----------------------------------------------------------------------------- data


def make_basis(config: LJ13ALConfig):
    return LinearBasis(RadialBasis(config.basis, config.basis_size, config.r_min, config.r_cut))


def generate_data(config: LJ13ALConfig, folder: Path | None = None):
    """(pool Dataset, pool temperatures (C,), test Dataset, series Dataset); cached in ``folder``.

    Pool and test trajectories (Langevin MD of the true LJ13 from the icosahedron)
    run in one compiled call; the series is one longer, finer trajectory at kT.
    The pool is stored with its true labels (pool.npz) only for the full-pool
    reference fit; the loops label their selections through the oracle.
    """
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


# ----------------------------------------------------------------------------- generated candidates


def generator_settings(config: LJ13ALConfig) -> GeneratorSettings:
    """The generators' settings: the study's temperature, time step and friction, the other defaults."""
    return GeneratorSettings(kT=config.kT, dt=config.dt, gamma=config.gamma)


def valid_candidate(positions, r_min: float) -> bool:
    """A generated LJ13 candidate the oracle may label: no pair closer than the basis's r_min and no atom
    evaporated (farther than 3 sigma from every other atom): the surrogate is not trusted outside."""
    x = np.asarray(positions)
    d = np.linalg.norm(x[:, None] - x[None], axis=-1) + np.eye(len(x)) * 1e9
    return bool(np.isfinite(x).all() and d.min() > r_min and not bool(evaporated(x)))


# ----------------------------------------------------------------------------- study


def _strategy_key(seed: int, rep: int, name: str):
    return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed + 3), rep), zlib.crc32(name.encode()) % 2**31)


def initial_sets(config: LJ13ALConfig, n_pool: int) -> list:
    """One random initial set per repetition, shared by all strategies."""
    return [np.sort(np.asarray(jax.random.choice(jax.random.fold_in(jax.random.key(config.seed + 4), r), n_pool,
                                                 (config.n_initial,), replace=False))).tolist()
            for r in range(config.repetitions)]


def run_lj13_al(config: LJ13ALConfig = LJ13ALConfig(), out_dir="runs/lj13-al", overwrite: bool = False,
                progress: bool = True) -> dict:
    """Run the study into ``out_dir``; returns the summary dict (also in summary.json). Resumable."""
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
    generate = None
    if config.generator != "pool":
        generate = make_generator(config.generator, basis, generator_settings(config))
    with timer("loops"):
        for name in config.strategies:
            for rep, init in enumerate(inits):
                if generate is not None:
                    loops[name, rep] = run_generator_loop(
                        name, generate, label(oracle, pool[np.asarray(init)]), oracle, fit=fit, basis=basis,
                        batch_size=config.batch_size, n_iterations=config.n_iterations,
                        n_candidates=config.n_candidates, key=_strategy_key(config.seed, rep, name),
                        valid=functools.partial(valid_candidate, r_min=config.r_min), evaluate=evaluate,
                        run_dir=out / "loops" / name / f"rep{rep}", progress=progress,
                        energy_weight=config.energy_weight, force_weight=config.force_weight,
                        qoi_gradient=qoi_gradient if name == "qoi" else None, committee_size=config.committee_size,
                        settings={"hyper": hyper, "oracle": "true LJ",
                                  "generator": dataclasses.asdict(generator_settings(config))})
                    continue
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
    picks_kT = {name: None if generate is not None else
                np.mean([pool_kT[loops[name, rep].order[config.n_initial:]]
                         for rep in range(config.repetitions)], axis=0).tolist()
                for name in config.strategies}
    force_evals = None if generate is None else {
        name: np.mean([[r["n_force_evals"] for r in loops[name, rep].records] for rep in range(config.repetitions)],
                      axis=0).tolist() for name in config.strategies}

    frt = None
    if config.frt:
        with timer("frt"):
            frt = run_frt_checkpoints(config, out, basis, loops, full_post, n_lab, progress)

    previous = out / "summary.json"
    history = runfolder.read_json(previous, "summary").get("wall_time_history", []) if previous.exists() else []
    with timer("report"):
        full_err["qoi_error"] = abs(float(np.mean(test_rows[:, 0, :] @ np.asarray(full_post.mean) - e_test))) / 13.0
        summary = build_summary(config, n_lab, curves, qoi_curves, full_err, hyper, frt, picks_kT, len(pool),
                                len(test))
        summary["generator"] = {"name": config.generator, "n_candidates": config.n_candidates,
                                "settings": None if generate is None else dataclasses.asdict(generator_settings(config)),
                                "surrogate_force_evals": force_evals}
        write_figures(out, config, n_lab, curves, qoi_curves, full_err, frt, basis, series, summary)
        summary["wall_time_s"] = dict(timer.times)  # this call (a resumed call reuses finished stages)
    summary["wall_time_s"] = dict(timer.times)
    summary["wall_time_history"] = history + [dict(timer.times)]  # one entry per call, first = the full run
    runfolder.write_json(out / "summary.json", summary)
    write_report(out, summary)
    return runfolder.read_json(out / "summary.json", "summary")  # NaN -> None, as on disk


def run_frt_checkpoints(config, out, basis, loops, full_post, n_lab, progress) -> dict:
    """One batched FRT ensemble of every (strategy, repetition, checkpoint) potential + the full-pool fit."""
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
    return {"true": {**summarize_frt(tt, tc), "md_mean_energy": e_true}, "full_pool": errs["full-pool", -1, -1],
            "per_run": errs, "t_censor": float(settings.t_censor)}


def _md_mean_energy(result, m):
    """Sample-weighted mean MD potential energy of coefficient sample m over its non-failed replicas."""
    ok = (result.code[m] != FAILED) & (result.n_samples[m] > 0) & np.isfinite(result.mean_energy[m])
    if not ok.any():
        return None
    w = result.n_samples[m][ok].astype(float)
    return float(np.sum(result.mean_energy[m][ok] * w) / w.sum())
