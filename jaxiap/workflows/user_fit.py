"""``jaxiap fit DATA --out RUN``: a Bayesian linear potential fitted to the user's labelled structures.

Stages (docs/commands.md):

1. checks, before the run folder is made: the file is read (any format ASE
   reads) and every structure must carry the labels (energy, forces; stress
   when ``stress_weight > 0``); periodic cells must be wider than twice the
   cutoff; the descriptor is built (``radial``, or ``ace`` when that module is
   present) and the solver looked up in :data:`jaxiap.inference.solvers.SOLVERS`;
2. a random held-out split (``held_out`` of the structures, from ``seed``);
3. the weighted design matrix of the training structures: one per-atom energy
   row, 3N force rows and, with ``stress_weight > 0``, six per-atom virial
   rows sigma V / N = c . (1/N) dB/d(strain) per structure with a stress label
   (these share the force-noise parameter); the solver's posterior;
4. predictions with push-forward stds on both sets, errors and the
   calibration of the held-out force components (the predicted std with the
   fitted noise, sqrt(std^2 + noise_var / row weight));
5. ``posterior.npz``, ``model.json`` (what ``jaxiap predict`` / ``jaxiap
   sweep`` need to rebuild the basis), ``summary.json``, ``parity.png``,
   ``calibration.png``, ``report.md``.

The run folder records the configuration and the data file's SHA-256 in
``config.json``: rerunning the same command refits into it, other settings or
changed data are refused without ``--overwrite``. Units are the data's (eV, Å).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxiap import runfolder
from jaxiap.errors import JaxiapInputError
from jaxiap.inference.metrics import fit_errors
from jaxiap.inference.solvers import get_solver
from jaxiap.potentials.linear import FORCE_ROW, DesignMatrix, design_from_rows, structure_rows
from jaxiap.uq import metrics as uq_metrics
from jaxiap.workflows.fit_config import CLI_FLAGS, FitConfig
from jaxiap.workflows.lj13_config import field_text
from jaxiap.workflows.timing import StageTimer
from jaxiap.workflows.user_data import VOIGT, check_cells, read_labelled, shortest_distance
from jaxiap.workflows.user_model import (
    MODEL_FORMAT, MODEL_JSON, POSTERIOR_NPZ, build_basis, descriptor_options, file_sha256,
)

#: expected coverage of centred Gaussian intervals of 1 and 2 standard deviations
COVERAGE = {"1": math.erf(1 / math.sqrt(2)), "2": math.erf(2 / math.sqrt(2))}


# ----------------------------------------------------------------------------- inputs


@dataclasses.dataclass
class FitInputs:
    """Everything checked before the run folder is made."""

    data: object  # LabelledData
    basis: object
    solver: object
    r_min: float
    options: dict
    train_idx: np.ndarray
    held_idx: np.ndarray
    sha256: str


def split_indices(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) structure indices: ``round(fraction n)`` held out (at least 1 when fraction > 0)."""
    if fraction <= 0:
        return np.arange(n), np.arange(0)
    n_held = max(1, int(round(fraction * n)))
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[n_held:]), np.sort(perm[:n_held])


def check_inputs(config: FitConfig) -> FitInputs:
    """Read and check the data and build the model, before any fitting (JaxiapInputError naming the problem)."""
    if not config.data:
        raise JaxiapInputError("no data file: give the labelled structures, jaxiap fit DATA.xyz (or data = "
                               "\"DATA.xyz\" in the --config file)")
    data = read_labelled(config.data, energy_key=config.energy_key, forces_key=config.forces_key,
                         stress_key=config.stress_key, need_stress=config.stress_weight > 0)
    st = data.dataset.structures
    check_cells(st, config.r_cut, config.data)
    r_min = config.r_min
    if r_min is None:
        r_min = 0.9 * shortest_distance(st)
        if not 0 < r_min < config.r_cut:
            raise JaxiapInputError(f"{field_text(config, 'r_cut', CLI_FLAGS)}: the shortest interatomic distance in "
                                   f"{config.data} is {r_min / 0.9:.4g}, so no pair is inside the cutoff; raise "
                                   "--r-cut or set --r-min")
    n = len(data)
    if config.held_out > 0 and n < 2:
        raise JaxiapInputError(f"{field_text(config, 'held_out', CLI_FLAGS)}: {config.data} holds 1 structure, "
                               "nothing to hold out; use --held-out 0")
    train_idx, held_idx = split_indices(n, config.held_out, config.seed)
    if train_idx.size == 0:
        raise JaxiapInputError(f"{field_text(config, 'held_out', CLI_FLAGS)}: leaves no training structure")
    options = descriptor_options(config.descriptor, radial=config.radial, n_basis=config.n_basis, r_cut=config.r_cut,
                                 r_min=r_min, l_max=config.l_max, body_order=config.body_order)
    basis = build_basis(config.descriptor, options, st.species_names, config.species_reference)
    solver = get_solver(config.solver)
    return FitInputs(data, basis, solver, float(r_min), options, train_idx, held_idx, file_sha256(config.data))


# ----------------------------------------------------------------------------- design


def _voigt_strain_rows(basis, positions, mask, species, box):
    """(6, K): (1 / N) dB/d(strain) in Voigt order (symmetrised), for one periodic structure."""
    cell = jnp.diag(box) if box.ndim == 1 else box

    def features(eps):
        f = jnp.eye(3, dtype=positions.dtype) + eps
        return basis(positions @ f.T, mask, species, cell @ f.T)

    jac = jax.jacfwd(features)(jnp.zeros((3, 3), positions.dtype))  # (K, 3, 3)
    jac = 0.5 * (jac + jnp.swapaxes(jac, 1, 2))
    return jnp.stack([jac[:, i, j] for i, j in VOIGT]) / jnp.sum(mask)


def stress_rows(basis, structures) -> np.ndarray:
    """(S, 6, K) per-atom virial rows of periodic structures: sigma V / N = c . rows (Voigt order)."""
    fn = jax.jit(jax.vmap(lambda x, m, s, b: _voigt_strain_rows(basis, x, m, s, b)))
    return np.asarray(fn(structures.positions, structures.mask, structures.species, structures.box))


def volumes(structures) -> np.ndarray:
    box = np.asarray(structures.box)
    return np.prod(box, axis=1) if box.ndim == 2 else np.abs(np.linalg.det(box))


def _padded_chunks(structures, chunk: int):
    """(n_real, indices) per chunk of ``chunk`` structures, the last padded by repeating its final index, so
    every chunk has one shape (one compilation)."""
    s = structures.positions.shape[0]
    chunk = max(1, min(int(chunk), s))
    for start in range(0, s, chunk):
        idx = np.arange(start, min(start + chunk, s))
        yield idx.size, np.concatenate([idx, np.full(chunk - idx.size, idx[-1])])


def all_rows(basis, structures, chunk: int) -> np.ndarray:
    """Unit-weight design rows (S, 1 + 3N, K) of every structure (:func:`structure_rows`), in chunks of
    ``chunk`` structures with the last one padded, so the rows compile once."""
    parts = [np.asarray(structure_rows(basis, structures[pad]))[:n] for n, pad in _padded_chunks(structures, chunk)]
    return np.concatenate(parts)


def build_design(config: FitConfig, inputs: FitInputs, rows, srows) -> DesignMatrix:
    """The weighted design matrix of the training structures: per-atom energy rows, force rows and (with
    stress_weight > 0) per-atom virial rows. rows: :func:`all_rows`; srows: {structure: (6, K)} stress rows."""
    from jaxiap.inference.linear import reweight  # lazy: pulls in optax, only needed to fit

    idx = inputs.train_idx
    train = inputs.data.dataset[idx]
    design = reweight(design_from_rows(rows[idx], train), config.energy_weight, config.force_weight,
                      per_atom_energy=True)
    data = inputs.data
    use = [j for j, i in enumerate(idx) if i in srows] if config.stress_weight > 0 else []
    if not use:
        return design
    st = train.structures[np.asarray(use)]
    a = np.stack([srows[int(idx[j])] for j in use])  # (U, 6, K)
    n_atoms = np.asarray(st.mask).sum(axis=1)
    y = data.stress[idx[use]] * (volumes(st) / n_atoms)[:, None]
    w = np.repeat(config.stress_weight * data.stress_weight[idx[use]], 6)
    k = a.shape[-1]
    extra = DesignMatrix(A=jnp.asarray(a.reshape(-1, k)), y=jnp.asarray(y.reshape(-1)), w=jnp.asarray(w),
                         kind=jnp.full(w.size, FORCE_ROW, design.kind.dtype),
                         structure=jnp.asarray(np.repeat(use, 6), design.structure.dtype),
                         n_atoms=jnp.asarray(np.repeat(n_atoms, 6), design.n_atoms.dtype))
    return DesignMatrix(*(jnp.concatenate([a, b]) for a, b in zip(design, extra)))


# ----------------------------------------------------------------------------- predictions and metrics


def predict_rows(posterior, rows, mask):
    """Energy (S,), energy std, forces (S, N, 3), force stds from unit-weight rows (S, 1 + 3N, K), as
    ``posterior.predict_structures`` computes them (push-forward stds, no noise); numpy."""
    s, p, k = rows.shape
    pred = posterior.predict(jnp.asarray(rows.reshape(s * p, k)))
    mean, std = np.asarray(pred.mean).reshape(s, p), np.asarray(pred.std).reshape(s, p)
    m = np.asarray(mask)[:, :, None]
    return (mean[:, 0], std[:, 0], np.where(m, mean[:, 1:].reshape(s, -1, 3), 0.0),
            np.where(m, std[:, 1:].reshape(s, -1, 3), 0.0))


def predict_batched(posterior, basis, structures, chunk: int = 64):
    """``posterior.predict_structures`` in chunks of ``chunk`` structures (the last padded, so one compile):
    numpy (energy (S,), energy_std, forces (S, N, 3), forces_std)."""
    parts = [[np.asarray(a)[:n] for a in posterior.predict_structures(structures[pad], basis=basis)]
             for n, pad in _padded_chunks(structures, chunk)]
    return tuple(np.concatenate(col) for col in zip(*parts))


def set_metrics(ds, pred, noise_var, force_weight: float, stress=None) -> dict:
    """Errors and calibration of one set: pred = (energy, energy_std, forces, forces_std)."""
    energy, energy_std, forces, forces_std = pred
    out = fit_errors(ds, energy, forces)
    mask = np.asarray(ds.structures.mask)
    n_atoms = mask.sum(axis=1)
    w = np.repeat((force_weight * np.asarray(ds.force_weight))[:, None], mask.shape[1], axis=1)[mask]  # per atom
    mean, std, y = forces[mask].reshape(-1), forces_std[mask].reshape(-1), np.asarray(ds.forces)[mask].reshape(-1)
    w3 = np.repeat(w, 3)
    fitted = w3 > 0
    noise_std = np.sqrt(float(noise_var) / np.where(fitted, w3, 1.0))
    total = np.sqrt(std**2 + noise_std**2)
    err = np.abs(mean - y)
    cal = {}
    if fitted.any() and np.all(total[fitted] > 0):
        m, s, t = mean[fitted], total[fitted], y[fitted]
        cal = {
            "n_components": int(fitted.sum()),
            "within_1std": float(np.mean(err[fitted] <= s)),
            "within_2std": float(np.mean(err[fitted] <= 2 * s)),
            "expected_within_1std": COVERAGE["1"], "expected_within_2std": COVERAGE["2"],
            "miscalibration_area": uq_metrics.miscalibration_area(m, s, t),
            "nll": uq_metrics.gaussian_nll(m, s, t),
            "recalibration_scale": uq_metrics.recalibration_scale(m, s, t),
            "rms_predicted_std": float(np.sqrt(np.mean(s**2))),
            "rms_model_std": float(np.sqrt(np.mean(std[fitted] ** 2))),
            "noise_std": float(np.sqrt(np.mean(noise_std[fitted] ** 2))),
            "within_1std_model_only": float(np.mean(err[fitted] <= std[fitted])),
            "within_2std_model_only": float(np.mean(err[fitted] <= 2 * std[fitted])),
        }
    de = np.abs(energy - np.asarray(ds.energy))
    out["calibration_forces"] = cal
    out["calibration_energy_model_only"] = {
        "within_1std": float(np.mean(de <= energy_std)), "within_2std": float(np.mean(de <= 2 * energy_std)),
        "rms_std_per_atom": float(np.sqrt(np.mean((energy_std / n_atoms) ** 2))),
    }
    if stress is not None:
        out.update(stress)
    return out


def _stress_errors(posterior, data, idx, srows) -> dict | None:
    """Stress RMSE (eV/Å^3) over the structures of ``idx`` that have a stress label, or None."""
    use = np.asarray([i for i in idx if int(i) in srows], int)
    if use.size == 0:
        return None
    st = data.dataset.structures[use]
    a = np.stack([srows[int(i)] for i in use])
    n_atoms = np.asarray(st.mask).sum(axis=1)
    pred = (a @ np.asarray(posterior.mean)) * (n_atoms / volumes(st))[:, None]
    ref = data.stress[use]
    return {"stress_rmse": float(np.sqrt(np.mean((pred - ref) ** 2))), "n_stress": int(use.size)}


# ----------------------------------------------------------------------------- the run


def run_fit(config: FitConfig, out_dir="runs/fit", overwrite: bool = False, progress: bool = True) -> dict:
    """Fit into ``out_dir``; returns the summary dict (also written to summary.json)."""
    from jaxiap.workflows.user_report import write_fit_figures, write_fit_report  # lazy: matplotlib only for figures

    timer = StageTimer(verbose=progress)
    with timer("read"):
        inputs = check_inputs(config)
    out = runfolder.open_run_folder(out_dir, {**dataclasses.asdict(config), "data_sha256": inputs.sha256},
                                    kind="fit", overwrite=overwrite)
    ds = inputs.data.dataset
    with timer("fit"):
        rows = all_rows(inputs.basis, ds.structures, config.chunk_size)
        with_stress = np.flatnonzero(inputs.data.has_stress)
        srows = {}
        if with_stress.size:
            srows = dict(zip(with_stress.tolist(), stress_rows(inputs.basis, ds.structures[with_stress])))
        design = build_design(config, inputs, rows, srows)
        posterior = inputs.solver(design, key=jax.random.key(config.seed))
        posterior.save(out / POSTERIOR_NPZ)
    species = list(ds.structures.species_names)
    model = {
        "jaxiap_model": MODEL_FORMAT, "descriptor": config.descriptor, "descriptor_options": inputs.options,
        "species_names": species, "species_reference": bool(config.species_reference),
        "n_features": int(inputs.basis.n_features), "cutoff": float(config.r_cut), "posterior": POSTERIOR_NPZ,
        "posterior_kind": str(posterior.kind), "solver": inputs.solver.label, "noise_var": float(posterior.noise_var),
        "energy_weight": config.energy_weight, "force_weight": config.force_weight,
        "stress_weight": config.stress_weight, "units": "those of the data (ASE: eV, Å, eV/Å)",
        "data": {"path": str(config.data), "sha256": inputs.sha256},
    }
    runfolder.write_json(out / MODEL_JSON, model)
    with timer("evaluate"):
        noise_var = float(posterior.noise_var)
        pred_all = predict_rows(posterior, rows, ds.structures.mask)
        sets = {"train": (ds[inputs.train_idx], inputs.train_idx)}
        if inputs.held_idx.size:
            sets["held_out"] = (ds[inputs.held_idx], inputs.held_idx)
        preds, metrics = {}, {}
        for name, (part, idx) in sets.items():
            preds[name] = tuple(a[idx] for a in pred_all)
            metrics[name] = set_metrics(part, preds[name], noise_var, config.force_weight,
                                        _stress_errors(posterior, inputs.data, idx, srows))
    n_rows = int(np.sum(np.asarray(design.w) > 0))
    summary = {
        "command": "fit",
        "data": {"path": str(config.data), "sha256": inputs.sha256, "n_structures": len(ds),
                 "n_train": int(inputs.train_idx.size), "n_held_out": int(inputs.held_idx.size),
                 "held_out_indices": inputs.held_idx.tolist(), "species": species,
                 "periodic": ds.structures.box is not None, "n_atoms_max": int(ds.structures.n_max),
                 "n_with_stress": int(inputs.data.has_stress.sum())},
        "model": {"descriptor": config.descriptor, "options": inputs.options, "n_features": model["n_features"],
                  "species_reference": bool(config.species_reference), "solver": inputs.solver.label,
                  "posterior_kind": str(posterior.kind), "noise_var": noise_var,
                  "noise_std_unit_weight": math.sqrt(max(noise_var, 0.0)), "n_weighted_rows": n_rows},
        "train": metrics["train"],
        "held_out": metrics.get("held_out"),
        "calibration_set": "held_out" if "held_out" in sets else "train",
    }
    with timer("report"):
        write_fit_figures(out, sets, preds, metrics, noise_var, config.force_weight)
        summary["wall_time_s"] = dict(timer.times)
        runfolder.write_json(out / "summary.json", summary)
        write_fit_report(out, summary, config)
    return summary
