"""Configuration of the on-the-fly aluminium study (``jaxiap otf``): presets, checks, CLI options.

:class:`OTFConfig` holds every setting and checks them all when it is made,
naming the config field and its ``jaxiap otf`` option (:data:`CLI_FLAGS`,
the one table the CLI builds its option-to-field map from). Units: Å, eV,
fs, ps, K.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from jaxiap.errors import JaxiapInputError
from jaxiap.workflows.lj13_config import check_seed, field_text

PRESETS = {
    # the FLARE protocol: 10 ps, melt at 5 ps; about 10 minutes on 2 CPU cores (README, docs/otf.md)
    "cpu": {},
    # seconds-long smoke runs for tests and notebooks
    "tiny": dict(repeat=1, n_steps=30, melt_ps=0.075, dt_fs=5.0, r_cut=4.2, r_cut_3=None, n_test=4,
                 test_spacing_ps=0.02, test_equilibrate_ps=0.05, init_atoms=2, max_atoms_added=1, freeze_hyps=1,
                 reoptimize_every=0, hyp_max_iterations=8),
}
PRESET_CHOICES = tuple(PRESETS)

#: the ``jaxiap otf`` option of each config field
CLI_FLAGS = {
    "seed": "--seed", "calculator": "--calculator", "n_steps": "--steps", "dt_fs": "--dt-fs",
    "temperature": "--temperature", "melt_ps": "--melt-ps", "melt_temperature": "--melt-temperature",
    "r_cut": "--r-cut", "r_cut_3": "--r-cut-3", "std_tolerance": "--std-tolerance",
    "max_atoms_added": "--max-atoms-added", "init_atoms": "--init-atoms", "freeze_hyps": "--freeze-hyps",
    "min_noise": "--min-noise", "n_test": "--test-frames", "reoptimize_every": "--reoptimize-every",
    "distance_guard": "--distance-guard", "max_noise": "--max-noise", "core_repulsion": "--core-repulsion",
    "liquid_thermostat": "--liquid-thermostat", "thermostat_tau_fs": "--thermostat-tau-fs",
    "pair_prior_frames": "--pair-prior-frames", "pair_prior_max_stdev": "--pair-prior-max-stdev",
    "pair_prior_r_cut": "--pair-prior-r-cut", "refresh_noise": "--no-refresh-noise",
}


@dataclasses.dataclass(frozen=True)
class OTFConfig:
    """Every setting of the study: FCC Al, EMT oracle, FLARE's melt protocol."""

    seed: int = 0
    calculator: str = "emt"          # "emt" or "module:Class" of any ASE calculator (no arguments)
    repeat: int = 2                  # cubic FCC cell repeated: 2 -> 32 atoms
    lattice: float = 4.046           # Å
    n_steps: int = 2000
    dt_fs: float = 5.0
    temperature: float = 600.0       # K, initial velocities (the solid equilibrates near half of it)
    melt_ps: float = 5.0             # velocity rescaling time (ps)
    melt_temperature: float = 1.0e4  # K
    liquid_thermostat: float | None = None  # K: Berendsen after the melt; None: NVE as FLARE
    thermostat_tau_fs: float = 25.0         # fs: its time constant
    # GP
    r_cut: float = 5.4
    r_cut_3: float | None = 3.2
    max_neighbors: int = 64
    max_triplet_neighbors: int = 24
    max_triplets: int = 96
    core_repulsion: float | None = None  # Å: r_outer of a ZBL prior mean (switched on from r_outer / 2); None: zero
    # a pair potential fitted to pair_prior_frames oracle labels of rattled cells as the prior mean (0: none)
    pair_prior_frames: int = 0
    pair_prior_max_stdev: float = 0.4   # Å: the rattles' stds run from 0.1 Å to this
    pair_prior_r_cut: float = 4.0       # Å: < half the cell width (the fit uses the minimum image)
    pair_prior_r_min: float = 1.5       # Å: inner end of the Chebyshev basis; below it, the tangent line
    pair_prior_n_basis: int = 8
    # on-the-fly rule
    std_tolerance: float = 1.0
    max_atoms_added: int = 2
    init_atoms: int = 4
    freeze_hyps: int = 10
    refresh_noise: bool = True       # after the freeze: re-optimise signal variances and noise (False: FLARE's freeze)
    reoptimize_every: int = 0
    hyp_max_iterations: int = 30
    min_noise: float = 0.01          # eV/Å
    distance_guard: float | None = 0.1   # Å (None: FLARE's rule alone)
    max_noise: float = 0.2               # eV/Å
    hyp_step_factor: float | None = 2.0
    # held-out test frames: EMT MD at the run's mean solid / liquid temperatures
    n_test: int = 100
    test_spacing_ps: float = 0.1
    test_equilibrate_ps: float = 2.0

    def __post_init__(self):
        def bad(name, why):
            raise JaxiapInputError(f"{field_text(self, name, CLI_FLAGS)}: {why}")

        check_seed(self, CLI_FLAGS, "it draws the initial velocities, the first training atoms and the test runs")
        for name in ("lattice", "dt_fs", "temperature", "melt_ps", "melt_temperature", "r_cut", "test_spacing_ps",
                     "test_equilibrate_ps"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                bad(name, "must be a positive finite number")
        for name in ("repeat", "n_steps", "max_neighbors", "max_triplet_neighbors", "max_triplets",
                     "max_atoms_added", "init_atoms", "hyp_max_iterations", "n_test"):
            if not (isinstance(getattr(self, name), (int, np.integer)) and getattr(self, name) >= 1):
                bad(name, "must be a positive integer")
        for name in ("freeze_hyps", "reoptimize_every"):
            if not (isinstance(getattr(self, name), (int, np.integer)) and getattr(self, name) >= 0):
                bad(name, "must be an integer >= 0")
        if not (math.isfinite(self.min_noise) and self.min_noise >= 0):
            bad("min_noise", "must be a number >= 0 (eV/Å)")
        if self.distance_guard is not None and not (isinstance(self.distance_guard, (int, float))
                                                    and math.isfinite(self.distance_guard) and self.distance_guard >= 0):
            bad("distance_guard", "must be a length >= 0 (Å), or none to use FLARE's std rule alone")
        if not (isinstance(self.max_noise, (int, float)) and math.isfinite(self.max_noise)
                and self.max_noise > self.min_noise):
            bad("max_noise", f"must exceed min_noise={self.min_noise} (eV/Å)")
        if self.hyp_step_factor is not None and not (math.isfinite(self.hyp_step_factor) and self.hyp_step_factor > 1):
            bad("hyp_step_factor", "must be None or a factor > 1")
        if not math.isfinite(self.std_tolerance):
            bad("std_tolerance", "must be finite: > 0 a multiple of the noise, < 0 an absolute eV/Å, 0 never")
        if self.liquid_thermostat is not None and not (isinstance(self.liquid_thermostat, (int, float))
                                                       and math.isfinite(self.liquid_thermostat)
                                                       and self.liquid_thermostat > 0):
            bad("liquid_thermostat", "must be a temperature > 0 (K), or none for NVE after the melt")
        if not (isinstance(self.thermostat_tau_fs, (int, float)) and math.isfinite(self.thermostat_tau_fs)
                and self.thermostat_tau_fs >= self.dt_fs):
            bad("thermostat_tau_fs", f"must be a time >= the time step {self.dt_fs} fs")
        if self.core_repulsion is not None and not (isinstance(self.core_repulsion, (int, float))
                                                    and 0 < self.core_repulsion <= self.r_cut):
            bad("core_repulsion", f"must be a length in (0, r_cut={self.r_cut}] Å, or none for a zero prior mean")
        if not (isinstance(self.pair_prior_frames, (int, np.integer)) and self.pair_prior_frames >= 0):
            bad("pair_prior_frames", "must be an integer >= 0 (0: no fitted prior mean)")
        if self.pair_prior_frames:
            if self.core_repulsion is not None:
                bad("pair_prior_frames", f"choose one prior mean: {field_text(self, 'core_repulsion', CLI_FLAGS)} "
                                         "is set too")
            if not (isinstance(self.pair_prior_n_basis, (int, np.integer)) and self.pair_prior_n_basis >= 1):
                bad("pair_prior_n_basis", "must be a positive integer")
            if not (math.isfinite(self.pair_prior_max_stdev) and self.pair_prior_max_stdev >= 0.1):
                bad("pair_prior_max_stdev", "must be >= 0.1 Å (the rattles run from 0.1 Å to it)")
            half = self.repeat * self.lattice / 2
            if not (0 < self.pair_prior_r_min < self.pair_prior_r_cut < half
                    and self.pair_prior_r_cut <= self.r_cut):
                bad("pair_prior_r_cut", f"need 0 < pair_prior_r_min ({self.pair_prior_r_min}) < pair_prior_r_cut < "
                                        f"half the cell width ({half:g} Å) and <= r_cut ({self.r_cut} Å)")
        if self.r_cut_3 is not None and not (0 < self.r_cut_3 <= self.r_cut):
            bad("r_cut_3", f"must be in (0, r_cut={self.r_cut}] Å")
        n_atoms = 4 * self.repeat**3
        if self.init_atoms > n_atoms or self.max_atoms_added > n_atoms:
            bad("init_atoms" if self.init_atoms > n_atoms else "max_atoms_added",
                f"the cell has only {n_atoms} atoms")
        if not self.melt_step < self.n_steps:
            bad("melt_ps", f"the run lasts {self.n_steps * self.dt_fs / 1000:g} ps ({field_text(self, 'n_steps', CLI_FLAGS)}"
                           f" x {self.dt_fs} fs); melt before its end")
        if self.calculator != "emt" and ":" not in self.calculator:
            bad("calculator", "use 'emt' or 'module:Class' (an ASE calculator class taking no arguments), "
                              "e.g. ase.calculators.emt:EMT")

    @property
    def melt_step(self) -> int:
        return int(round(self.melt_ps * 1000.0 / self.dt_fs))

    @classmethod
    def from_preset(cls, preset: str = "cpu", **overrides) -> "OTFConfig":
        """The preset's values, then ``overrides``; an override None sets its field to None (``r_cut_3=None``:
        no 3-body term), as ``--r-cut-3 none`` and ``r_cut_3 = "none"`` in a config file do."""
        if preset not in PRESETS:
            raise JaxiapInputError(f"unknown preset {preset!r}; choose one of {PRESET_CHOICES}")
        return cls(**{**PRESETS[preset], **overrides})


DEFAULTS = OTFConfig()
