"""The UQ-method comparison for neural-network potentials (``jaxiap uq-compare``; Tan et al. 2023).

For each dataset and repetition (its own split of the training pool and its
own network initialisations), every method of :mod:`jaxiap.uq.nn_uq`
is trained on the same data and scored on held-out sets in and out of the
training domain with every metric of :mod:`jaxiap.uq.metrics`:

- **lj13** (reduced units): Langevin snapshots of the true LJ13 cluster at
  kT = 0.15 (train / validation / in-domain test split of one pool), out of
  domain at kT = 0.35 and the same kT = 0.35 snapshots quenched to their
  local minima (mostly defected, non-icosahedral basins);
- **al** (Å, eV): rattled 32-atom FCC cells labelled by ASE's EMT (the pool),
  out of domain the EMT liquid (Langevin at 3000 K).

Energies are scored per structure (mean, std, reference), forces per
component for calibration (miscalibration area, NLLs, ENCE) and per atom
(norm of the error against sqrt(sum of component variances)) for ranking
(Spearman, ROC-AUC). Run folder: config.json, data/ (the pools and test
sets), results/ (one JSON per dataset x repetition x method: the resume
unit), summary.json, report.md and figures. Re-running resumes.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import numpy as np

from jaxiap import runfolder
from jaxiap.data import Dataset, load_npz, save_npz, split
from jaxiap.errors import JaxiapInputError
from jaxiap.workflows.timing import StageTimer
from jaxiap.workflows.uq_compare_config import TEST_SETS, UQCompareConfig



# ----------------------------------------------------------------------------------------------- data
def _lj13_data(config: UQCompareConfig) -> dict:
    from jaxiap.md.quench import fire_quench_fn
    from jaxiap.structures import from_positions
    from jaxiap.systems.lj import lj13_dataset, lj_energy
    from jaxiap.systems.oracle import JaxOracle, label

    pool = lj13_dataset(seed=config.seed, n_trajectories=config.lj13_trajectories, n_samples=config.lj13_samples,
                        sample_every=100, kT=config.lj13_kT)
    n_traj = max(1, min(4, config.lj13_test))
    hot = lj13_dataset(seed=config.seed + 1, n_trajectories=n_traj, n_samples=-(-config.lj13_test // n_traj),
                       sample_every=100, kT=config.lj13_ood_kT)[: config.lj13_test]
    minima = np.asarray(jax.jit(jax.vmap(fire_quench_fn(lj_energy, 1e-6, 5000)))(hot.structures.positions)[0])
    quenched = label(JaxOracle(lj_energy), from_positions(minima))
    return {"pool": pool, "kT 0.35": hot, "quenched": quenched}


def _al_liquid(config: UQCompareConfig):
    from ase import units  # lazy: ase only when the study runs
    from ase.build import bulk
    from ase.calculators.emt import EMT
    from ase.md.langevin import Langevin

    from jaxiap.active.otf import maxwell_boltzmann
    from jaxiap.systems.aluminium import _dataset_from_frames

    atoms = bulk("Al", "fcc", a=4.046, cubic=True).repeat(config.al_repeat)
    atoms.calc = EMT()
    rng = np.random.default_rng(config.seed + 2)
    t = config.al_liquid_temperature
    atoms.set_velocities(maxwell_boltzmann(atoms.get_masses(), t, rng))
    dt = 2.0
    dyn = Langevin(atoms, dt * units.fs, temperature_K=t, friction=0.01 / units.fs, rng=rng, fixcm=False)
    dyn.run(int(round(config.al_equilibrate_ps * 1000 / dt)))
    frames = []
    for _ in range(config.al_test):
        dyn.run(max(1, int(round(config.al_spacing_ps * 1000 / dt))))
        fr = atoms.copy()
        fr.info["energy"], fr.arrays["forces"] = atoms.get_potential_energy(), atoms.get_forces()
        frames.append(fr)
    return _dataset_from_frames(frames)


def _al_data(config: UQCompareConfig) -> dict:
    from jaxiap.systems.aluminium import emt_dataset

    pool = emt_dataset(repeat=config.al_repeat, stdevs=config.al_stdevs, n_per_stdev=config.al_per_stdev,
                       seed=config.seed)
    return {"pool": pool, "liquid": _al_liquid(config)}


def load_data(config: UQCompareConfig, dataset: str, folder) -> dict:
    """The dataset's pool and out-of-domain sets, generated once and kept in ``folder`` (npz)."""
    folder = runfolder.ensure_dir(folder)
    names = ("pool",) + TEST_SETS[dataset][1:]
    paths = {n: folder / f"{dataset}_{n.replace(' ', '_').replace('.', '')}.npz" for n in names}
    if all(p.exists() for p in paths.values()):
        return {n: load_npz(p) for n, p in paths.items()}
    data = _lj13_data(config) if dataset == "lj13" else _al_data(config)
    for n, p in paths.items():
        save_npz(p, data[n])
    return data


def descriptor(config: UQCompareConfig, dataset: str):
    from jaxiap.descriptors.radial import RadialBasis, RadialDescriptor

    if dataset == "lj13":
        return RadialDescriptor(RadialBasis("gaussian", config.n_radial, 0.8, config.lj13_r_cut))
    return RadialDescriptor(RadialBasis("gaussian", config.n_radial, 2.0, config.al_r_cut))


def repetition_split(config: UQCompareConfig, pool: Dataset, rep: int) -> tuple[Dataset, Dataset, Dataset]:
    """(train, validation, in-domain test) = 60 / 20 / 20 % of the pool, shuffled by (seed, rep)."""
    key = jax.random.fold_in(jax.random.key(config.seed), 1000 + rep)
    return tuple(split(key, pool, (0.6, 0.2, 0.2)))


# -------------------------------------------------------------------------------------------- scoring
def score(prediction, data: Dataset, percentile: float) -> dict:
    """Metrics of one method on one set: {"energy": {...}, "forces": {...}} plus calibration curves."""
    from jaxiap.uq.metrics import calibration_curve, force_uq_arrays, roc_auc, spearman, uq_metrics

    e, es = np.asarray(prediction.energy), np.maximum(np.asarray(prediction.energy_std), 1e-12)
    if len(e) < 5:
        raise JaxiapInputError(f"a test set of {len(e)} structures is too small to score; enlarge the dataset "
                               "(at least 5 structures per test set)")
    out = {"energy": uq_metrics(e, es, np.asarray(data.energy), percentile=percentile,
                                ence_bins=max(1, min(100, len(e) // 5)))}
    arrays = force_uq_arrays(np.asarray(prediction.forces), np.maximum(np.asarray(prediction.forces_std), 1e-12),
                             np.asarray(data.forces), np.asarray(data.structures.mask))
    mu, s, y = arrays["component"]
    forces = uq_metrics(mu, s, y, percentile=percentile)
    atom_std, atom_err = arrays["atom"]
    forces["spearman_atom"] = spearman(atom_std, atom_err)
    forces["roc_auc_atom"] = roc_auc(atom_std, atom_err, percentile=percentile)
    out["forces"] = forces
    out["calibration"] = {q: [c.tolist() for c in calibration_curve(*arrs)] for q, arrs in
                          (("energy", (e, es, np.asarray(data.energy))), ("forces", (mu, s, y)))}
    return out


def run_one(config: UQCompareConfig, dataset: str, rep: int, method: str, sets: dict, progress: bool) -> dict:
    """Train ``method`` on this repetition's split and score it on every test set."""
    from jaxiap.inference.nn_train import TrainSettings
    from jaxiap.uq.nn_uq import BAYESIAN, fit_nn

    train, valid = sets["train"], sets["validation"]
    settings = TrainSettings(epochs=config.epochs, batch_size=config.batch_size, learning_rate=config.learning_rate,
                             patience=config.patience)
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(config.seed), rep), config.methods.index(method))
    t0 = time.perf_counter()
    draws = config.posterior_draws if method in BAYESIAN else config.n_members
    post, history = fit_nn(method, descriptor(config, dataset), train, valid, key=key, hidden=config.hidden,
                           n_members=draws, settings=settings, n_components=config.n_components,
                           progress=progress)
    fit_seconds = time.perf_counter() - t0
    result = {"dataset": dataset, "repetition": rep, "method": method, "fit_seconds": fit_seconds,
              "epochs_run": int(history["epochs_run"]), "sets": {}}
    if "log_evidence" in history:
        result["log_evidence"] = history["log_evidence"]
    for name in TEST_SETS[dataset]:
        result["sets"][name] = score(post.predict_structures(sets[name].structures), sets[name],
                                     config.error_percentile)
    return result


# ---------------------------------------------------------------------------------------------- study
def run_uq_compare(config: UQCompareConfig = UQCompareConfig(), out_dir="runs/uq-compare", overwrite: bool = False,
                   progress: bool = True) -> dict:
    """Run (or resume) the comparison into ``out_dir``; returns the summary (also summary.json)."""
    from tqdm.auto import tqdm  # lazy: progress bar only when the study runs

    from jaxiap.workflows.uq_compare_report import summarize, write_figures, write_report  # lazy: matplotlib

    out = runfolder.open_run_folder(out_dir, dataclasses.asdict(config), kind="uq-compare", overwrite=overwrite)
    timer = StageTimer(verbose=progress)
    results_dir = runfolder.ensure_dir(out / "results")
    results = []
    for dataset in config.datasets:
        with timer(f"{dataset} data"):
            data = load_data(config, dataset, out / "data")
        tasks = [(r, m) for r in range(config.repetitions) for m in config.methods]
        bar = tqdm(tasks, desc=f"{dataset} fits", disable=not progress)
        with timer(f"{dataset} fits"):
            for rep, method in bar:
                path = results_dir / f"{dataset}_rep{rep}_{method}.json"
                if path.exists():
                    results.append(runfolder.read_json(path, "UQ-comparison result"))
                    continue
                bar.set_postfix(rep=rep, method=method)
                train, valid, test = repetition_split(config, data["pool"], rep)
                sets = {"train": train, "validation": valid, TEST_SETS[dataset][0]: test,
                        **{n: data[n] for n in TEST_SETS[dataset][1:]}}
                res = run_one(config, dataset, rep, method, sets, progress=False)
                runfolder.write_json(path, res)
                results.append(res)
        bar.close()
    summary = summarize(config, results)
    summary["stage_seconds"] = timer.times
    runfolder.write_json(out / "summary.json", summary)
    with timer("figures and report"):
        write_figures(summary, results, out)
        write_report(summary, out)
    return summary

