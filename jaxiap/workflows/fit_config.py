"""Configuration of ``jaxiap fit`` (a linear potential fitted to the user's labelled structures).

:class:`FitConfig` holds every setting and checks them all when it is made,
naming the config field and its ``jaxiap fit`` option (:data:`CLI_FLAGS`).
The data file is the field ``data`` (the command's positional argument
``DATA``), so a run folder's ``config.toml`` reproduces the fit. Units are
those of the data (ASE's: eV, Å); lengths below are in them.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from jaxiap.descriptors.radial import FAMILIES
from jaxiap.errors import JaxiapInputError
from jaxiap.inference.solvers import SOLVERS
from jaxiap.workflows.lj13_config import check_seed, field_text
from jaxiap.workflows.user_model import DESCRIPTOR_NAMES

PRESETS = {
    # the defaults: an 8-function radial basis inside 5 Å, evidence-maximising Bayesian regression
    "cpu": {},
    # seconds-long smoke fits for tests and notebooks
    "tiny": dict(n_basis=4),
}
PRESET_CHOICES = tuple(PRESETS)
SOLVER_CHOICES = tuple(SOLVERS)

#: config fields given as the command's positional arguments (input files)
POSITIONAL_FIELDS = ("data",)

#: the ``jaxiap fit`` option of each FitConfig field (the positional DATA is the field ``data``)
CLI_FLAGS = {
    "seed": "--seed", "descriptor": "--descriptor", "radial": "--radial", "n_basis": "--basis-size",
    "r_cut": "--r-cut", "r_min": "--r-min", "l_max": "--l-max", "body_order": "--body-order",
    "species_reference": "--no-species-reference", "solver": "--solver", "energy_weight": "--energy-weight",
    "force_weight": "--force-weight", "stress_weight": "--stress-weight", "energy_key": "--energy-key",
    "forces_key": "--forces-key", "stress_key": "--stress-key", "held_out": "--held-out",
}


@dataclasses.dataclass(frozen=True)
class FitConfig:
    """Every setting of ``jaxiap fit``.

    data: the labelled structures (any file ASE reads). descriptor: "radial" (pair radial
    functions) or "ace" (ACE many-body features, docs/ace.md); radial: the radial function family;
    n_basis: radial functions (ACE: per correlation order); r_cut, r_min: cutoff and inner radius
    (r_min None: 0.9 x the shortest interatomic distance in the data); l_max, body_order: ACE only;
    species_reference: one energy column per species (a per-atom reference energy).
    solver: a name of jaxiap.inference.solvers.SOLVERS, with its default options (blr: evidence
    maximisation of the noise levels and the prior scale). energy_weight, force_weight,
    stress_weight: row weights (precisions) of the per-atom energy, force-component and
    per-atom virial rows, multiplied by the per-structure ``energy_weight`` / ``force_weight`` /
    ``stress_weight`` of the file's info where present; stress rows share the force-noise
    parameter (0: stress not fitted). *_key: where the labels are (calculator results, else
    info / arrays). held_out: fraction of structures kept out of the fit for the held-out errors
    and the calibration (0: none).
    """

    data: str = ""
    seed: int = 0
    descriptor: str = "radial"
    radial: str = "chebyshev"
    n_basis: int = 8
    r_cut: float = 5.0
    r_min: float | None = None
    l_max: int = 3
    body_order: int = 3
    species_reference: bool = True
    solver: str = "blr"
    energy_weight: float = 1.0
    force_weight: float = 1.0
    stress_weight: float = 0.0
    energy_key: str = "energy"
    forces_key: str = "forces"
    stress_key: str = "stress"
    held_out: float = 0.1
    chunk_size: int = 64  # structures per design-matrix chunk (memory)

    def __post_init__(self):
        def bad(name, why):
            raise JaxiapInputError(f"{field_text(self, name, CLI_FLAGS)}: {why}")

        check_seed(self, CLI_FLAGS, "it draws the held-out split and the samples of random solvers")
        if not isinstance(self.data, str):
            bad("data", "must be the path of a structure file (a string)")
        if self.descriptor not in DESCRIPTOR_NAMES:
            bad("descriptor", f"unknown descriptor; choose one of {', '.join(DESCRIPTOR_NAMES)}")
        if self.radial not in FAMILIES:
            bad("radial", f"unknown radial family; choose one of {', '.join(FAMILIES)}")
        if self.solver not in SOLVERS:
            bad("solver", f"unknown solver; choose one of {', '.join(SOLVERS)}")
        for name in ("n_basis", "chunk_size"):
            v = getattr(self, name)
            if not (isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1):
                bad(name, "must be a positive integer")
        if not (isinstance(self.l_max, (int, np.integer)) and not isinstance(self.l_max, bool) and self.l_max >= 0):
            bad("l_max", "must be an integer >= 0")
        if self.body_order not in (2, 3, 4):
            bad("body_order", "must be 2, 3 or 4 (ACE correlation order + 1)")
        if not (isinstance(self.r_cut, (int, float)) and math.isfinite(self.r_cut) and self.r_cut > 0):
            bad("r_cut", "must be a positive finite length")
        if self.r_min is not None and not (isinstance(self.r_min, (int, float)) and 0 < self.r_min < self.r_cut):
            bad("r_min", f"must be in (0, r_cut={self.r_cut}), or none for 0.9 x the shortest distance in the data")
        for name in ("energy_weight", "force_weight", "stress_weight"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                bad(name, "must be a finite number >= 0")
        if self.energy_weight == 0 and self.force_weight == 0:
            bad("force_weight", "energy and force weights must not both be 0")
        if not (isinstance(self.held_out, (int, float)) and 0 <= self.held_out < 1):
            bad("held_out", "must be a fraction in [0, 1)")
        for name in ("energy_key", "forces_key", "stress_key"):
            if not (isinstance(getattr(self, name), str) and getattr(self, name).strip()):
                bad(name, "must be a non-empty key name")

    @classmethod
    def from_preset(cls, preset: str = "cpu", **overrides) -> "FitConfig":
        if preset not in PRESETS:
            raise JaxiapInputError(f"unknown preset {preset!r}; choose one of {PRESET_CHOICES}")
        return cls(**{**PRESETS[preset], **overrides})


DEFAULTS = FitConfig()
