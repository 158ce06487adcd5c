"""The FLARE aluminium protocol (``jaxiap otf``): on-the-fly GP learning through a melt, tested on held-out MD.

1. On-the-fly MD (:func:`jaxiap.active.otf.run_otf`) of the FCC cell with
   the 2+3-body GP, the oracle an ASE calculator (EMT by default), melted at
   ``melt_ps`` by rescaling the velocities to ``melt_temperature``.
2. Held-out test frames: two independent MD runs of the oracle itself
   (Langevin, ASE), at the mean temperatures of the solid and the liquid
   halves of the on-the-fly run, ``n_test`` frames each, ``test_spacing_ps``
   apart after ``test_equilibrate_ps`` (the paper: 100 frames 0.1 ps apart
   from 10 ps AIMD runs).
3. Force MAE and RMSE of the final GP on those frames, against FLARE's
   table (EAM, AGNI, FLARE: 46.1 / 41.2 / 32.9 meV/Å solid, 157.0 / 128.0 /
   90.2 liquid) and the std-error calibration.

Run folder: config.json, otf/ (checkpoint), test_frames.npz, summary.json,
otf_log.npz, figures (otf_timeline.png, std_vs_error.png) and report.md.
Re-running the same command resumes the MD from its last checkpoint.
"""

from __future__ import annotations

import dataclasses
import importlib
import time

import numpy as np

from jaxiap import runfolder
from jaxiap.active.otf import OTFSettings, maxwell_boltzmann, run_otf
from jaxiap.errors import JaxiapInputError
from jaxiap.potentials.gp import GaussianProcess, GPHyperparameters, GPSettings
from jaxiap.potentials.repulsion import CoreRepulsion, PairPrior
from jaxiap.workflows.otf_config import OTFConfig
from jaxiap.workflows.timing import StageTimer

#: FLARE's Table I (Vandermause et al. 2020): force MAE in meV/Å on AIMD solid and liquid test frames
PAPER_TABLE = {"EAM": (46.1, 157.0), "AGNI": (41.2, 128.0), "FLARE": (32.9, 90.2)}


def make_calculator(spec: str):
    """An ASE calculator from "emt" or "module:Class" (instantiated without arguments)."""
    if spec == "emt":
        from ase.calculators.emt import EMT  # lazy: ase calculators only when the study runs

        return EMT()
    module, _, name = spec.partition(":")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise JaxiapInputError(f"--calculator {spec!r}: cannot import {name} from {module} ({exc})") from None
    return cls()


def gp_settings(config: OTFConfig) -> GPSettings:
    return GPSettings(r_cut=config.r_cut, r_cut_3=config.r_cut_3, max_neighbors=config.max_neighbors,
                      max_triplet_neighbors=config.max_triplet_neighbors, max_triplets=config.max_triplets)


def otf_settings(config: OTFConfig) -> OTFSettings:
    return OTFSettings(n_steps=config.n_steps, dt_fs=config.dt_fs, std_tolerance=config.std_tolerance,
                       max_atoms_added=config.max_atoms_added, init_atoms=config.init_atoms,
                       freeze_hyps=config.freeze_hyps, hyp_max_iterations=config.hyp_max_iterations,
                       refresh_noise=config.refresh_noise,
                       reoptimize_every=config.reoptimize_every, distance_guard=config.distance_guard,
                       max_noise=config.max_noise, hyp_step_factor=config.hyp_step_factor,
                       rescale=((config.melt_step, config.melt_temperature),), min_noise=config.min_noise,
                       thermostat=None if config.liquid_thermostat is None else (
                           config.melt_step, config.liquid_thermostat, config.thermostat_tau_fs),
                       checkpoint_every=max(1, min(100, config.n_steps // 10)))


def initial_atoms(config: OTFConfig):
    from ase.build import bulk  # lazy: ase only when the study runs

    atoms = bulk("Al", "fcc", a=config.lattice, cubic=True).repeat(config.repeat)
    atoms.calc = make_calculator(config.calculator)
    return atoms


def test_frames(config: OTFConfig, temperature: float, seed: int):
    """(positions (F, N, 3), forces (F, N, 3), temperatures (F,)) from Langevin MD of the oracle at ``temperature``."""
    from ase import units  # lazy: ase only when the study runs
    from ase.md.langevin import Langevin

    atoms = initial_atoms(config)
    rng = np.random.default_rng(seed)
    atoms.set_velocities(maxwell_boltzmann(atoms.get_masses(), temperature, rng))
    dyn = Langevin(atoms, config.dt_fs * units.fs, temperature_K=temperature, friction=0.01 / units.fs, rng=rng, fixcm=False)
    every = max(1, int(round(config.test_spacing_ps * 1000 / config.dt_fs)))
    dyn.run(int(round(config.test_equilibrate_ps * 1000 / config.dt_fs)))
    xs, fs, ts = [], [], []
    for _ in range(config.n_test):
        dyn.run(every)
        xs.append(atoms.positions.copy())
        fs.append(atoms.get_forces())
        ts.append(atoms.get_temperature())
    return np.array(xs), np.array(fs), np.array(ts)


def evaluate(gp: GaussianProcess, cell, numbers, positions, forces) -> dict:
    """Force errors (meV/Å) and the predicted stds of the GP on test frames."""
    pred = [gp.predict(x, cell, numbers, energy_std=False) for x in positions]
    mean = np.array([p["forces"] for p in pred])
    std = np.array([p["forces_std"] for p in pred])
    err = mean - forces
    noise = gp.hyperparameters.noise
    return {"mae": 1000 * float(np.mean(np.abs(err))), "rmse": 1000 * float(np.sqrt(np.mean(err**2))),
            "mean_std": 1000 * float(np.mean(std)),
            "combined_error": 1000 * float(np.sqrt(noise**2 + np.mean(std**2))),
            "abs_error": np.abs(err), "std": std}


def core_repulsion(config: OTFConfig) -> CoreRepulsion | None:
    """The GP's prior mean: a ZBL wall switched off between r_outer / 2 and r_outer = ``config.core_repulsion``."""
    if config.core_repulsion is None:
        return None
    return CoreRepulsion(r_inner=0.5 * config.core_repulsion, r_outer=config.core_repulsion)


def pair_prior(config: OTFConfig, out) -> tuple:
    """(PairPrior or None, oracle calls it took): a Chebyshev pair potential fitted by least squares to the
    energies and forces of ``pair_prior_frames`` rattled copies of the initial cell (stds 0.1 Å to
    ``pair_prior_max_stdev``), labelled by the oracle. The labelled frames are kept in ``out`` so a resumed
    run does not call the oracle again."""
    if not config.pair_prior_frames:
        return None, 0
    from jaxiap.data import from_atoms_list  # lazy: only with a pair prior
    from jaxiap.systems.aluminium import fit_al_potential

    path = out / "pair_prior_frames.npz"
    if path.exists():
        with runfolder.read_npz(path, "pair-prior frames") as z:
            xs, es, fs = np.asarray(z["positions"]), np.asarray(z["energy"]), np.asarray(z["forces"])
    else:
        rng = np.random.default_rng(config.seed + 7919)
        calc = make_calculator(config.calculator)
        xs, es, fs = [], [], []
        for std in np.linspace(0.1, config.pair_prior_max_stdev, config.pair_prior_frames):
            atoms = initial_atoms(config)
            atoms.positions += rng.normal(scale=std, size=atoms.positions.shape)
            atoms.calc = calc
            xs.append(atoms.positions.copy())
            es.append(atoms.get_potential_energy())
            fs.append(atoms.get_forces())
        xs, es, fs = np.array(xs), np.array(es), np.array(fs)
        runfolder.savez(path, positions=xs, energy=es, forces=fs)
    from ase.calculators.singlepoint import SinglePointCalculator  # lazy: only with a pair prior

    frames = []
    for x, e, f in zip(xs, es, fs):
        atoms = initial_atoms(config)
        atoms.positions = x
        atoms.calc = SinglePointCalculator(atoms, energy=float(e), forces=f)   # the stored labels, no new call
        frames.append(atoms)
    data = from_atoms_list(frames)
    potential, post = fit_al_potential(data, r_cut=config.pair_prior_r_cut, n_basis=config.pair_prior_n_basis,
                                       r_min=config.pair_prior_r_min)
    prior = PairPrior.from_linear(potential.basis, post.mean)
    v0, dv0 = prior.wall()
    if not dv0 < 0:
        raise JaxiapInputError(f"the fitted pair prior is attractive at pair_prior_r_min={config.pair_prior_r_min} Å "
                               f"(V' = {dv0:.3g} eV/Å), so its continuation below it would be a hole; raise "
                               "--pair-prior-max-stdev (shorter distances in the fit) or pair_prior_r_min")
    return prior, len(xs)


def run_otf_study(config: OTFConfig = OTFConfig(), out_dir="runs/otf", overwrite: bool = False,
                  progress: bool = True) -> dict:
    """Run the study into ``out_dir``; returns the summary dict (also in summary.json). Resumable."""
    from jaxiap.workflows.otf_report import write_figures, write_report  # lazy: matplotlib only for figures

    atoms = initial_atoms(config)  # a bad --calculator fails here, before the run folder is made
    out = runfolder.open_run_folder(out_dir, dataclasses.asdict(config), kind="otf", overwrite=overwrite)
    timer = StageTimer(verbose=progress)
    cell, numbers = np.asarray(atoms.cell), atoms.numbers
    with timer("prior mean"):
        prior, prior_calls = pair_prior(config, out)
    gp = GaussianProcess(gp_settings(config), GPHyperparameters(sig2=0.1, l2=0.5, sig3=0.01, l3=0.5,
                                                                noise=max(0.05, config.min_noise)),
                         prior if prior is not None else core_repulsion(config))
    with timer("otf"):
        t0 = time.perf_counter()
        result = run_otf(atoms, gp, otf_settings(config), temperature_k=config.temperature, seed=config.seed,
                         folder=runfolder.ensure_dir(out / "otf"), progress=progress)
        otf_seconds = time.perf_counter() - t0
    temps = result["temperature"]
    melt = config.melt_step
    t_solid = float(np.mean(temps[min(10, melt - 1):melt]))
    t_liquid = float(np.mean(temps[melt + min(10, (config.n_steps - melt) // 2):]))
    with timer("test frames"):
        frames_path = out / "test_frames.npz"
        if frames_path.exists():
            with runfolder.read_npz(frames_path, "test frames") as z:
                test = {k: (np.asarray(z[f"{k}_x"]), np.asarray(z[f"{k}_f"]), np.asarray(z[f"{k}_t"]))
                        for k in ("solid", "liquid")}
        else:
            test = {"solid": test_frames(config, t_solid, config.seed * 1000 + 1),
                    "liquid": test_frames(config, t_liquid, config.seed * 1000 + 2)}
            runfolder.savez(frames_path, **{f"{k}_{s}": v for k, (x, f, t) in test.items()
                                            for s, v in (("x", x), ("f", f), ("t", t))})
    with timer("evaluation"):
        scores = {k: evaluate(gp, cell, numbers, x, f) for k, (x, f, t) in test.items()}
    calls = result["calls"]
    oracle = np.asarray(result["oracle"], bool)
    summary = {
        "oracle_calls": int(oracle.sum()) + prior_calls,
        "oracle_calls_md": int(oracle.sum()),
        "oracle_calls_prior_mean": prior_calls,
        "pair_prior": None if prior is None else {"coefficients": list(prior.coefficients),
                                                  "atom_energy": prior.atom_energy, "r_min": prior.r_min,
                                                  "r_cut": prior.r_cut, "wall_eV_and_eV_per_A": list(prior.wall())},
        "oracle_calls_before_melt": int(oracle[:melt].sum()),
        "oracle_calls_by_distance_guard": int(sum(bool(c.get("guard")) for c in calls)),
        "oracle_calls_after_melt": int(oracle[melt:].sum()),
        "oracle_calls_first_ps": int(oracle[: int(1000 / config.dt_fs)].sum()),
        "oracle_calls_first_ps_after_melt": int(oracle[melt: melt + int(1000 / config.dt_fs)].sum()),
        "oracle_call_times_ps": [c["time_ps"] for c in calls],
        "training_atoms_at_calls": [c["n_train_atoms"] for c in calls],
        "noise_at_calls_eV_per_A": [c["hyperparameters"]["noise"] for c in calls],
        "training_atoms": int(gp.n_force_atoms),
        "training_atoms_at_melt": int(result["n_train_atoms"][melt - 1]),
        "temperature_solid_K": t_solid, "temperature_liquid_K": t_liquid,
        "test_temperature_solid_K": float(np.mean(test["solid"][2])),
        "test_temperature_liquid_K": float(np.mean(test["liquid"][2])),
        "force_mae_solid_meV_per_A": scores["solid"]["mae"], "force_mae_liquid_meV_per_A": scores["liquid"]["mae"],
        "force_rmse_solid_meV_per_A": scores["solid"]["rmse"],
        "force_rmse_liquid_meV_per_A": scores["liquid"]["rmse"],
        "mean_std_solid_meV_per_A": scores["solid"]["mean_std"],
        "mean_std_liquid_meV_per_A": scores["liquid"]["mean_std"],
        "combined_error_solid_meV_per_A": scores["solid"]["combined_error"],
        "combined_error_liquid_meV_per_A": scores["liquid"]["combined_error"],
        "hyperparameters": gp.hyperparameters._asdict(),
        "paper_table_meV_per_A": {k: {"solid": s, "liquid": liq} for k, (s, liq) in PAPER_TABLE.items()},
        "otf_wall_seconds_this_session": round(otf_seconds, 1),
        "stage_seconds": timer.times,
    }
    runfolder.savez(out / "otf_log.npz", **{k: np.asarray(result[k]) for k in
                                           ("time_ps", "temperature", "max_std", "threshold", "oracle",
                                            "n_train_atoms", "noise")})
    write_figures(out, result, scores, config)
    runfolder.write_json(out / "summary.json", summary)
    write_report(out / "report.md", summary, config)
    return summary
