"""The LJ13 study: how does a fitted potential change first-rearrangement times?

Stages (each timed; finished stages are reused when the same command runs again):

1. data:   Langevin MD of the true LJ13 at kT, snapshots labelled with exact
           energies and forces, split into train / test (extended XYZ files);
2. fit:    a radial linear potential fitted by weighted least squares;
3. frt:    the FRT ensemble for the true LJ and for the fitted potential with
           the same thermostat seeds (chunked, resumable);
4. report: summary.json, figures (PNG) and report.md.

The configuration lives in :mod:`jaxiap.workflows.lj13_config`, the figures and
report in :mod:`jaxiap.workflows.lj13_report`, the FRT comparisons in
:mod:`jaxiap.uq.frt`; this module runs the stages.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from jaxiap.data import load_npz, save_npz, split, write_extxyz
from jaxiap.descriptors.radial import RadialBasis
from jaxiap.errors import JaxiapInputError
from jaxiap.inference.metrics import fit_errors, parity_data
from jaxiap.inference.posterior import load_posterior
from jaxiap.inference.solvers import get_solver
from jaxiap.md.ensemble import run_frt_ensemble
from jaxiap.md.frt_settings import FRTSettings
from jaxiap.md.qoi import evaporated
from jaxiap.md.sizing import auto_chunk_size
from jaxiap.potentials.linear import LinearBasis, LinearPotential, design_matrix, energy_fn
from jaxiap.runfolder import ensure_dir, open_run_folder, write_json
from jaxiap.systems.lj import lj13_dataset, lj13_minimum, lj_energy
from jaxiap.uq.frt import compare_frt
from jaxiap.workflows.lj13_attempts import attempt_figures, parse_attempts, run_attempts
from jaxiap.workflows.lj13_config import LJ13Config
from jaxiap.workflows.lj13_report import write_figures, write_report
from jaxiap.workflows.timing import StageTimer


def true_lj_energy(coefficients, positions):
    """The true LJ energy in the ``energy_fn(coefficients, positions)`` form (coefficients unused)."""
    return lj_energy(positions)


def make_basis(config: LJ13Config):
    return LinearBasis(RadialBasis(config.basis, config.basis_size, config.r_min, config.r_cut))


_evaporated_batch = jax.jit(jax.vmap(evaporated))


@eqx.filter_jit
def _batch_energy_and_forces(potential, structures):
    return potential.batch_energy_and_forces(structures)


def _check_reference_data(ds, config) -> None:
    """Refuse reference data from an MD run that blew up or evaporated (e.g. --dt far too large)."""
    finite = np.isfinite(np.asarray(ds.energy)) & np.all(np.isfinite(np.asarray(ds.forces)), axis=(1, 2))
    gone = np.asarray(_evaporated_batch(jnp.asarray(ds.structures.positions)))
    n_bad = int(np.sum(~finite | gone))
    if not finite.all() or n_bad > len(finite) // 2:
        raise JaxiapInputError(
            f"reference MD blew up or evaporated: {n_bad} of {len(finite)} snapshots are non-finite or have an "
            f"atom farther than 3 sigma from the rest, at dt={config.dt} (--dt) and kT={config.kT} (--kT); "
            "use a smaller --dt (0.005 tau is the LJ default) or a lower --kT")


def generate_data(config: LJ13Config, folder: Path | None = None):
    """(train, test) Datasets; read from ``folder`` when already written there.

    Each split is written as extended XYZ (for other codes) and as a lossless .npz.
    """
    if folder is not None and (folder / "train.npz").exists() and (folder / "test.npz").exists():
        return load_npz(folder / "train.npz"), load_npz(folder / "test.npz")
    ds = lj13_dataset(config.seed, config.n_trajectories, config.n_samples, config.sample_every,
                      config.kT, config.gamma, config.dt, config.n_equilibrate)
    _check_reference_data(ds, config)
    train, test = split(jax.random.key(config.seed + 1), ds, (1 - config.test_fraction, config.test_fraction))
    if folder is not None:
        ensure_dir(folder)
        for name, ds in (("train", train), ("test", test)):
            write_extxyz(folder / f"{name}.xyz", ds)
            save_npz(folder / f"{name}.npz", ds)
    return train, test


def fit_potential(config: LJ13Config, train, saved=None):
    """Fit the configured posterior; returns (basis, posterior, design).

    ``saved``: a posterior .npz written by an earlier run of the same
    configuration; when it exists it is loaded instead of refitting.
    """
    from jaxiap.inference.linear import reweight  # lazy: pulls in optax (~0.1 s to import), only needed to fit

    basis = make_basis(config)
    design = reweight(design_matrix(basis, train), config.energy_weight, config.force_weight)
    if saved is not None and Path(saved).exists():
        return basis, load_posterior(saved), design
    posterior = get_solver(config.posterior)(design, key=jax.random.key(config.seed + 2))
    if saved is not None:
        posterior.save(saved)
    return basis, posterior, design


def evaluate_fit(basis, coefficients, dataset):
    e, f = _batch_energy_and_forces(LinearPotential(basis, jnp.asarray(coefficients)), dataset.structures)
    return fit_errors(dataset, e, f), parity_data(dataset, e, f)


def study_chunk_size(config: LJ13Config) -> int:
    """One chunk shape for every FRT ensemble of the study: ``config.chunk_size``, else the automatic
    size of the largest ensemble. The runner compiles one program per energy function and chunk
    shape, so the fitted run and the attempts (one energy function) share one compilation; smaller
    ensembles only pad their chunk (padding rows are not simulated)."""
    if config.chunk_size is not None:
        return int(config.chunk_size)
    names = parse_attempts(config.attempts)
    n_rep = [config.n_seeds]
    if "subsets" in names:
        n_rep.append(config.n_subsets * config.attempt_seeds)
    if "posterior" in names:
        n_rep.append(config.n_posterior_samples * config.attempt_seeds)
    itemsize = np.dtype(config.dtype).itemsize
    return auto_chunk_size(max(n_rep), 13, config.basis_size, int(FRTSettings.energy_bins[2]), itemsize)[0]


def run_lj13(config: LJ13Config = LJ13Config(), out_dir="runs/lj13", overwrite: bool = False,
             progress: bool = True) -> dict:
    """Run the whole study into ``out_dir``; returns the summary dict (also in summary.json)."""
    out = open_run_folder(out_dir, dataclasses.asdict(config), kind="lj13", overwrite=overwrite)
    timer = StageTimer(verbose=progress)
    with timer("data"):
        train, test = generate_data(config, out / "data")
    with timer("fit"):
        basis, posterior, design = fit_potential(config, train, saved=out / "posterior.npz")
        coef = np.asarray(posterior.mean)
        errors = {"train": evaluate_fit(basis, coef, train)[0]}
        errors["test"], parity = evaluate_fit(basis, coef, test)

    settings = config.frt_settings()
    seeds = np.arange(config.n_seeds)
    start = lj13_minimum()
    chunk_size = study_chunk_size(config)
    common = dict(base_seed=config.seed, chunk_size=chunk_size, progress=progress)
    with timer("frt_true"):
        true_res = run_frt_ensemble(true_lj_energy, np.zeros((1, 1)), seeds, start, settings,
                                    run_dir=out / "frt_true", **common)
    with timer("frt_fitted"):
        fitted_energy = energy_fn(basis)
        fit_res = run_frt_ensemble(fitted_energy, coef[None], seeds, start, settings,
                                   run_dir=out / "frt_fitted", **common)
    attempts, attempt_results = run_attempts(config, out, design, posterior, fitted_energy, true_res,
                                             progress=progress, mle_result=fit_res, timer=timer,
                                             chunk_size=chunk_size)
    with timer("report"):
        true_sum, fit_sum = true_res.summary()["all"], fit_res.summary()["all"]
        summary = {
            "study": "lj13",
            "data": {"n_train": len(train), "n_test": len(test),
                     "n_train_rows": int(np.sum(np.asarray(design.w) > 0)),
                     "n_atoms": 13, "kT": config.kT},
            "fit": {"basis": config.basis, "basis_size": config.basis_size, "r_min": config.r_min,
                    "r_cut": config.r_cut, "posterior": config.posterior,
                    "coefficients": coef.tolist(), **errors},
            "true": true_sum,
            "fitted": fit_sum,
            **compare_frt(true_res, fit_res),
            "attempts": attempts,
            "t_censor": settings.t_censor,
            "settings": {"kT": config.kT, "gamma": config.gamma, "dt": config.dt, "n_q": config.n_q,
                         "t_max": config.t_max, "r_b": config.r_b, "criterion": config.criterion,
                         "seed": config.seed, "n_seeds": config.n_seeds, "dtype": config.dtype},
        }
        write_figures(out, config, basis, coef, parity, true_res, fit_res)
        if attempt_results:
            attempt_figures(out, true_res, attempt_results)
        summary["wall_time_s"] = dict(timer.times)
        write_json(out / "summary.json", summary)
        write_report(out, summary)
    summary["wall_time_s"] = dict(timer.times)
    write_json(out / "summary.json", summary)
    return summary
