"""``jaxiap predict RUN STRUCTURES --out predicted.xyz``: energies, forces and their stds from a fit.

The fit is read back from its run folder (:func:`jaxiap.workflows.user_model.load_model`),
the structures from any file ASE reads; every structure gets the posterior mean
energy and forces and their push-forward standard deviations
(``Posterior.predict_structures``: the model's uncertainty, without the data
noise). The output is extended XYZ with every float at full precision:
``energy`` and ``energy_std`` in each frame's info, ``forces`` and
``forces_std`` (N, 3) in its arrays (``ase.io.read`` gives the energy and
forces through ``atoms.get_potential_energy()`` / ``get_forces()``). Labels the
input already had are kept as ``ref_energy`` (info) and ``ref_forces``
(arrays); other info and arrays are copied. Each frame's info also holds
``jaxiap_predict`` (the model path), which marks the file as written by this
command: an existing output file without that mark (or, in a run folder, not
listed as written by jaxiap) is never overwritten.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np

from jaxiap import runfolder
from jaxiap.errors import JaxiapInputError
from jaxiap.structures import from_atoms
from jaxiap.workflows.predict_config import PredictConfig
from jaxiap.workflows.user_data import check_cells, read_structures, write_extxyz_exact
from jaxiap.workflows.user_fit import predict_batched
from jaxiap.workflows.user_model import load_model

MARK = "jaxiap_predict"


def written_by_predict(path) -> bool:
    """True when ``path`` is a file this command wrote: its first comment line holds the ``jaxiap_predict`` key."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            f.readline()
            comment = f.readline()
    except OSError:
        return False
    return re.search(rf"(^|\s){MARK}=", comment) is not None


def check_target(out) -> Path:
    """Refuse an output path that is a folder, or an existing file jaxiap predict did not write."""
    out = Path(out)
    if out.is_dir():
        raise JaxiapInputError(f"--out {out} is a folder; jaxiap predict writes one file, e.g. --out "
                               f"{out / 'predicted.xyz'}")
    if out.exists():
        in_run = runfolder.is_run_folder(out.parent)
        mine = out.name in runfolder.written_names(out.parent) if in_run else written_by_predict(out)
        if not mine:
            raise JaxiapInputError(f"--out {out} exists and was not written by jaxiap predict; jaxiap never "
                                   "overwrites a file it did not write: move it away, or choose another --out")
    return out


def _label(atoms, key, per_atom):
    results = getattr(atoms.calc, "results", None) if atoms.calc is not None else None
    if results and results.get(key) is not None:
        return np.asarray(results[key], float)
    store = atoms.arrays if per_atom else atoms.info
    return np.asarray(store[key], float) if key in store else None


def run_predict(config: PredictConfig, out_path="predicted.xyz", progress: bool = True) -> dict:
    """Predict every structure of ``config.structures`` with the fit ``config.model`` into ``out_path``."""
    if not config.model or not config.structures:
        raise JaxiapInputError("give the fit and the structures: jaxiap predict RUN_OR_POSTERIOR STRUCTURES.xyz "
                               "--out predicted.xyz")
    out = check_target(out_path)
    model = load_model(config.model)
    frames = read_structures(config.structures, index=config.index)
    known = set(model.species_names)
    for k, a in enumerate(frames):
        unknown = sorted(set(a.get_chemical_symbols()) - known)
        if unknown:
            raise JaxiapInputError(f"{config.structures}: structure {k} holds {', '.join(unknown)}, but the model was "
                                   f"fitted to {', '.join(model.species_names)} only")
    try:
        st = from_atoms(frames, species_names=model.species_names)
    except JaxiapInputError as exc:
        raise JaxiapInputError(f"{config.structures}: {exc}") from None
    check_cells(st, model.cutoff, config.structures, option="the model's cutoff")
    if progress:
        print(f"[jaxiap] predicting {len(frames)} structures ...", file=sys.stderr, flush=True)
    energy, energy_std, forces, forces_std = predict_batched(model.posterior, model.basis, st, config.batch_size)
    written = []
    for k, a in enumerate(frames):
        n = len(a)
        ref_e, ref_f = _label(a, "energy", False), _label(a, "forces", True)
        b = a.copy()
        b.calc = None
        for key in ("energy", "free_energy", "stress", "energy_std", MARK):
            b.info.pop(key, None)
        for key in ("forces", "forces_std"):
            if key in b.arrays:
                del b.arrays[key]
        if ref_e is not None and ref_e.size == 1:
            b.info["ref_energy"] = float(ref_e.reshape(()))
        if ref_f is not None and ref_f.shape == (n, 3):
            b.arrays["ref_forces"] = ref_f
        b.info["energy"] = float(energy[k])
        b.info["energy_std"] = float(energy_std[k])
        b.info[MARK] = str(config.model)
        b.arrays["forces"] = np.asarray(forces[k, :n], float)
        b.arrays["forces_std"] = np.asarray(forces_std[k, :n], float)
        written.append(b)
    if not out.parent.exists():
        out.parent.mkdir(parents=True)
    write_extxyz_exact(out, written)
    n_atoms = np.asarray(st.mask).sum(axis=1)
    return {"n_structures": len(frames), "out": str(out), "model": str(config.model),
            "mean_energy_std_per_atom": float(np.mean(energy_std / n_atoms)),
            "mean_force_std": float(np.mean(forces_std[np.asarray(st.mask)])),
            "max_force_std": float(np.max(forces_std[np.asarray(st.mask)]))}
