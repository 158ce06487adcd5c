"""Configuration of ``jaxiap sweep`` (Langevin MD of a fit over posterior samples x thermostat seeds).

:class:`SweepConfig` holds every setting and checks them all when it is made,
naming the config field and its ``jaxiap sweep`` option (:data:`CLI_FLAGS`).
The fit (``model``) and the start structure (``start``) are the command's
positional arguments. Units: K, fs, ps, Å, eV (the data's units must be
ASE's, eV and Å, for the temperature and time step to mean what they say).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from jaxiap.errors import JaxiapInputError
from jaxiap.workflows.lj13_config import check_seed, field_text

#: basin-change criteria: auto = graph for a free cluster, displacement in a periodic cell; off: no checks
BASIN_CHOICES = ("auto", "graph", "displacement", "off")

PRESETS = {
    # the defaults: 8 samples x 8 seeds, 10 ps at 1 fs after 1 ps of equilibration
    "cpu": {},
    # many trajectories on a GPU
    "gpu": dict(n_samples=32, n_seeds=32, steps=50000),
    # seconds-long smoke runs for tests and notebooks
    "tiny": dict(n_samples=2, n_seeds=2, steps=40, equilibrate=20, check_every=20, record_every=5, rdf_bins=30,
                 quench_steps=300),
}
PRESET_CHOICES = tuple(PRESETS)

#: config fields given as the command's positional arguments (input files)
POSITIONAL_FIELDS = ("model", "start")

#: the ``jaxiap sweep`` option of each SweepConfig field (the positionals are the fields model, start)
CLI_FLAGS = {
    "seed": "--seed", "frame": "--frame", "temperature": "--temperature", "timestep": "--timestep",
    "friction": "--friction", "steps": "--steps", "equilibrate": "--equilibrate", "record_every": "--record-every",
    "check_every": "--check-every", "n_samples": "--samples", "n_seeds": "--seeds", "rdf_bins": "--rdf-bins",
    "rdf_r_max": "--rdf-r-max", "basin": "--basin", "bond_cutoff": "--bond-cutoff",
    "displacement": "--displacement", "quench_steps": "--quench-steps", "skin": "--skin",
    "chunk_size": "--chunk-size",
}


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    """Every setting of ``jaxiap sweep``.

    model: a fit's run folder (or its posterior.npz); start: the start structure (any file ASE
    reads; ``frame`` picks one frame, ase.io.read's index, -1 the last). temperature (K),
    timestep (fs), friction (1/ps): the Langevin thermostat. equilibrate, steps: MD steps before
    and while recording; record_every: steps between recorded frames (potential energy, RDF);
    check_every: steps between basin checks (they run from t = 0). n_samples posterior samples x
    n_seeds thermostat seeds. rdf_bins, rdf_r_max (Å; None: the model's cutoff in a cell, for a
    free cluster the larger of it and 1.25 x the largest distance in the start structure). basin: "auto"
    (graph for a free cluster, displacement in a cell), "graph", "displacement" or "off";
    bond_cutoff (Å; None: 1.2 x the median nearest-neighbour distance of the start) and
    quench_steps (FIRE steps per check) for "graph"; displacement (Å; None: half that median
    distance) for "displacement". skin (Å): the neighbour list's extra radius in a cell (None: 0.5 Å, or
    less where the cell allows less: 0.9 x (half the cell width - the cutoff)).
    chunk_size: trajectories per compiled chunk and checkpoint file (None: chosen from memory).
    """

    model: str = ""
    start: str = ""
    frame: int = -1
    seed: int = 0
    temperature: float = 300.0
    timestep: float = 1.0
    friction: float = 10.0
    steps: int = 10000
    equilibrate: int = 1000
    record_every: int = 10
    check_every: int = 100
    n_samples: int = 8
    n_seeds: int = 8
    rdf_bins: int = 100
    rdf_r_max: float | None = None
    basin: str = "auto"
    bond_cutoff: float | None = None
    displacement: float | None = None
    quench_steps: int = 2000
    quench_fmax: float = 1e-3   # eV/Å: a basin check's quench counts as converged below this max |F|
    skin: float | None = None
    chunk_size: int | None = None

    def __post_init__(self):
        def bad(name, why):
            raise JaxiapInputError(f"{field_text(self, name, CLI_FLAGS)}: {why}")

        check_seed(self, CLI_FLAGS, "it draws the posterior samples")
        for name in ("model", "start"):
            if not isinstance(getattr(self, name), str):
                bad(name, "must be a path (a string)")
        if not _is_int(self.frame):
            bad("frame", "must be an integer index of the start file's frames (-1: the last)")
        for name in ("temperature", "timestep", "friction", "quench_fmax"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                bad(name, "must be a positive finite number")
        if self.skin is not None and not (isinstance(self.skin, (int, float)) and math.isfinite(self.skin)
                                          and self.skin >= 0):
            bad("skin", "must be a length >= 0 (Å), or none for the automatic choice")
        for name in ("steps", "record_every", "check_every", "n_samples", "rdf_bins", "quench_steps"):
            if not (_is_int(getattr(self, name)) and getattr(self, name) >= 1):
                bad(name, "must be a positive integer")
        if not (_is_int(self.equilibrate) and self.equilibrate >= 0):
            bad("equilibrate", "must be an integer >= 0")
        if not (_is_int(self.n_seeds) and self.n_seeds >= 2):
            bad("n_seeds", "the thermal variance is the variance over seeds: use --seeds 2 or more")
        if self.chunk_size is not None and not (_is_int(self.chunk_size) and self.chunk_size >= 1):
            bad("chunk_size", "must be a positive integer, or none for the automatic choice")
        if self.check_every % self.record_every:
            bad("record_every", f"must divide check_every={self.check_every} (--check-every)")
        for name in ("steps", "equilibrate"):
            if getattr(self, name) % self.check_every:
                bad(name, f"must be a multiple of check_every={self.check_every} (--check-every), the MD block")
        if self.basin not in BASIN_CHOICES:
            bad("basin", f"unknown criterion; choose one of {', '.join(BASIN_CHOICES)}")
        for name in ("rdf_r_max", "bond_cutoff", "displacement"):
            v = getattr(self, name)
            if v is not None and not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                bad(name, "must be a positive length (Å), or none for the automatic choice")

    @property
    def t_total_ps(self) -> float:
        return (self.equilibrate + self.steps) * self.timestep / 1000.0

    @classmethod
    def from_preset(cls, preset: str = "cpu", **overrides) -> "SweepConfig":
        if preset not in PRESETS:
            raise JaxiapInputError(f"unknown preset {preset!r}; choose one of {PRESET_CHOICES}")
        return cls(**{**PRESETS[preset], **overrides})


DEFAULTS = SweepConfig()
