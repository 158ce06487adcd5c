"""Fit-error metrics and parity data for energies and forces."""

from __future__ import annotations

import numpy as np

from jaxiap.data import Dataset


def fit_errors(dataset: Dataset, energy_pred, forces_pred) -> dict:
    """Energy RMSE/MAE per atom, force-component RMSE/MAE and the reference force std.

    energy_pred (S,), forces_pred (S, N, 3); padded atoms are ignored.
    """
    mask = np.asarray(dataset.structures.mask)
    n_atoms = mask.sum(axis=1)
    de = (np.asarray(energy_pred) - np.asarray(dataset.energy)) / n_atoms
    f_ref = np.asarray(dataset.forces)[mask]
    df = np.asarray(forces_pred)[mask] - f_ref
    return {
        "n_structures": int(len(n_atoms)),
        "energy_rmse_per_atom": float(np.sqrt(np.mean(de**2))),
        "energy_mae_per_atom": float(np.mean(np.abs(de))),
        "force_rmse": float(np.sqrt(np.mean(df**2))),
        "force_mae": float(np.mean(np.abs(df))),
        "force_std": float(np.std(f_ref)),
        "force_rmse_relative": float(np.sqrt(np.mean(df**2)) / np.std(f_ref)),
    }


def parity_data(dataset: Dataset, energy_pred, forces_pred) -> dict:
    """Arrays for parity plots: per-atom energies and force components (reference, predicted)."""
    mask = np.asarray(dataset.structures.mask)
    n_atoms = mask.sum(axis=1)
    return {
        "energy_ref": np.asarray(dataset.energy) / n_atoms,
        "energy_pred": np.asarray(energy_pred) / n_atoms,
        "force_ref": np.asarray(dataset.forces)[mask].ravel(),
        "force_pred": np.asarray(forces_pred)[mask].ravel(),
    }
