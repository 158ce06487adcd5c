"""The result of an FRT ensemble: (M samples, R seeds) arrays, survival summary, and lossless .npz I/O."""

from __future__ import annotations

import dataclasses
import json

import numpy as np

from jaxiap import runfolder
from jaxiap.md.frt import REPLICA_FIELDS
from jaxiap.md.frt_settings import FRTSettings
from jaxiap.md.qoi import FAILED
from jaxiap.uq.survival import summarize_frt

__all__ = ["FRTEnsembleResult", "load_frt_result"]


@dataclasses.dataclass
class FRTEnsembleResult:
    """Outcome of :func:`run_frt_ensemble`: arrays shaped (M, R) over (coefficient sample, seed).

    time (M, R) float: first-detection time (time units; see :func:`frt_replica_fn`).
    code (M, R) int32: CENSORED=0 / EVENT=1 / EVAPORATED=2 / FAILED=3.
    e0 (M, R): quenched reference energy under each sample's potential.
    e_last (M, R): quenched energy at the last check.
    n_checks (M, R) int32: checks made.
    energy_hist (M, R, nbins) int32 and energy_bin_edges (nbins + 1,).
    n_samples, n_outside (M, R) int32; mean_energy (M, R).
    quench_steps, quench_unconverged (M, R) int32; ref_max_force (M, R).
    seeds (R,), base_seed, settings (:class:`FRTSettings`), chunk_size,
    lanes_per_device.
    """

    time: np.ndarray
    code: np.ndarray
    e0: np.ndarray
    e_last: np.ndarray
    n_checks: np.ndarray
    energy_hist: np.ndarray
    n_samples: np.ndarray
    n_outside: np.ndarray
    mean_energy: np.ndarray
    quench_steps: np.ndarray
    quench_unconverged: np.ndarray
    ref_max_force: np.ndarray
    energy_bin_edges: np.ndarray
    seeds: np.ndarray
    base_seed: int
    settings: FRTSettings
    chunk_size: int = 0
    lanes_per_device: int = 0

    @property
    def shape(self) -> tuple:
        """(M, R)."""
        return tuple(self.code.shape)

    def summary(self) -> dict:
        """JSON-ready survival statistics (:func:`jaxiap.uq.survival.summarize_frt`).

        Returns dict(all=<summary over all M*R replicas>, per_sample=[<summary
        of sample m over its R seeds> for m in range(M)], t_censor,
        quench_unconverged (total count)). FAILED replicas are excluded from
        the statistics and counted in n_failed.
        """
        return dict(
            all=summarize_frt(self.time.ravel(), self.code.ravel()),
            per_sample=[summarize_frt(self.time[m], self.code[m]) for m in range(self.code.shape[0])],
            t_censor=float(self.settings.t_censor),
            quench_unconverged=int(np.sum(self.quench_unconverged)),
        )

    def pooled_energy_hist(self, per_sample: bool = False) -> np.ndarray:
        """Energy histogram summed over replicas, FAILED replicas excluded.

        Returns (nbins,) counts, or (M, nbins) with ``per_sample`` (summed over seeds).
        """
        ok = (self.code != FAILED)[..., None]
        h = np.where(ok, self.energy_hist, 0)
        return h.sum(axis=1) if per_sample else h.sum(axis=(0, 1))

    def save(self, path) -> None:
        """Write all arrays and the settings to ``path`` (.npz, no pickle; atomic)."""
        arrays = {f: getattr(self, f) for f in REPLICA_FIELDS}
        arrays.update(
            energy_bin_edges=self.energy_bin_edges,
            seeds=self.seeds,
            base_seed=np.asarray(self.base_seed),
            chunk_size=np.asarray(self.chunk_size),
            lanes_per_device=np.asarray(self.lanes_per_device),
            settings_json=np.asarray(json.dumps(self.settings.to_dict())),
        )
        runfolder.savez(path, **arrays)

    @classmethod
    def load(cls, path) -> "FRTEnsembleResult":
        """Read a file written by :meth:`save`."""
        with runfolder.read_npz(path, "FRT ensemble result") as z:
            kw = {f: z[f] for f in REPLICA_FIELDS}
            return cls(
                **kw,
                energy_bin_edges=z["energy_bin_edges"],
                seeds=z["seeds"],
                base_seed=int(z["base_seed"]),
                chunk_size=int(z["chunk_size"]),
                lanes_per_device=int(z["lanes_per_device"]),
                settings=FRTSettings.from_dict(json.loads(str(z["settings_json"]))),
            )


def load_frt_result(path) -> FRTEnsembleResult:
    """Read an :class:`FRTEnsembleResult` written by :meth:`FRTEnsembleResult.save`."""
    return FRTEnsembleResult.load(path)
