"""Configuration of the UQ-method comparison (``jaxiap uq-compare``): presets, checks, CLI options.

Units: LJ reduced units for the LJ13 dataset; Å, eV, K for aluminium.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from jaxiap.errors import JaxiapInputError
from jaxiap.workflows.lj13_config import check_seed, field_text

DATASETS = ("lj13", "al")
#: every method ``--methods`` accepts; the default runs the first five (the Bayesian networks are for small sizes)
METHOD_CHOICES = ("ensemble", "mve", "evidential", "gmm", "last-layer", "svi-meanfield", "svi-lowrank", "nuts")
#: test sets of each dataset, the in-domain one first
TEST_SETS = {"lj13": ("in-domain", "kT 0.35", "quenched"), "al": ("solid", "liquid")}

PRESETS = {
    # every method on both datasets, 3 repetitions (README states the run time)
    "cpu": {},
    # seconds-long smoke runs for tests and notebooks
    "tiny": dict(repetitions=2, lj13_trajectories=2, lj13_samples=13, lj13_test=6, al_per_stdev=9, al_test=6,
                 hidden=(6,), n_members=2, epochs=3, batch_size=4, n_components=2, al_equilibrate_ps=0.05,
                 al_spacing_ps=0.01),
}
PRESET_CHOICES = tuple(PRESETS)

CLI_FLAGS = {
    "seed": "--seed", "datasets": "--datasets", "methods": "--methods", "repetitions": "--repetitions",
    "hidden": "--hidden", "n_members": "--members", "epochs": "--epochs", "batch_size": "--batch-size",
    "learning_rate": "--learning-rate", "patience": "--patience", "n_components": "--gmm-components",
    "error_percentile": "--error-percentile", "posterior_draws": "--posterior-draws",
}


@dataclasses.dataclass(frozen=True)
class UQCompareConfig:
    """Every setting of the comparison: data, networks, training, metrics."""

    seed: int = 0
    datasets: tuple = DATASETS
    methods: tuple = METHOD_CHOICES[:5]
    repetitions: int = 3
    # LJ13: train / in-domain test at kT 0.15, out of domain at kT 0.35 and quenched from kT 0.35
    lj13_kT: float = 0.15
    lj13_ood_kT: float = 0.35
    lj13_trajectories: int = 8
    lj13_samples: int = 40
    lj13_test: int = 60
    lj13_r_cut: float = 3.0
    # aluminium (EMT): train on rattled FCC solid, test on rattled solid and on the liquid
    al_repeat: int = 2
    al_stdevs: tuple = (0.05, 0.1, 0.15)
    al_per_stdev: int = 40
    al_test: int = 40
    al_liquid_temperature: float = 3000.0
    al_equilibrate_ps: float = 2.0
    al_spacing_ps: float = 0.1
    al_r_cut: float = 4.0
    # descriptor: Gaussian radial functions
    n_radial: int = 8
    # networks and training
    hidden: tuple = (32, 32)
    n_members: int = 5
    epochs: int = 1000
    batch_size: int = 16
    learning_rate: float = 3e-3
    patience: int = 100
    n_components: int = 5
    posterior_draws: int = 32        # draws of the Bayesian networks (svi-*, nuts)
    # metrics: an error is "large" above this percentile of the in-domain errors (ROC-AUC)
    error_percentile: float = 90.0

    def __post_init__(self):
        def bad(name, why):
            raise JaxiapInputError(f"{field_text(self, name, CLI_FLAGS)}: {why}")

        check_seed(self, CLI_FLAGS, "it draws the data, the splits and the network initialisations")
        object.__setattr__(self, "datasets", tuple(self.datasets))
        object.__setattr__(self, "methods", tuple(self.methods))
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        object.__setattr__(self, "al_stdevs", tuple(float(s) for s in self.al_stdevs))
        for d in self.datasets:
            if d not in DATASETS:
                bad("datasets", f"{d!r} is not one of {DATASETS}")
        if not self.datasets:
            bad("datasets", f"name at least one of {DATASETS}")
        for mth in self.methods:
            if mth not in METHOD_CHOICES:
                bad("methods", f"{mth!r} is not one of {METHOD_CHOICES}")
        if not self.methods:
            bad("methods", f"name at least one of {METHOD_CHOICES}")
        for name in ("repetitions", "lj13_trajectories", "lj13_samples", "lj13_test", "al_repeat", "al_per_stdev",
                     "al_test", "n_radial", "epochs", "batch_size", "patience", "n_components"):
            v = getattr(self, name)
            if not (isinstance(v, (int, np.integer)) and v >= 1):
                bad(name, "must be a positive integer")
        if not (isinstance(self.posterior_draws, (int, np.integer)) and self.posterior_draws >= 2):
            bad("posterior_draws", "the Bayesian networks need at least 2 posterior draws")
        if not (isinstance(self.n_members, (int, np.integer)) and self.n_members >= 2):
            bad("n_members", "an ensemble needs at least 2 members")
        if not self.hidden or any(h < 1 for h in self.hidden):
            bad("hidden", "give one or more positive layer widths, e.g. 32,32")
        for name in ("lj13_kT", "lj13_ood_kT", "lj13_r_cut", "al_liquid_temperature", "al_equilibrate_ps",
                     "al_spacing_ps", "al_r_cut", "learning_rate"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                bad(name, "must be a positive finite number")
        if not 0 < self.error_percentile < 100:
            bad("error_percentile", "must be in (0, 100)")
        if 2 * self.al_r_cut > 4.046 * self.al_repeat:
            bad("al_r_cut", f"must be at most half the cell width ({4.046 * self.al_repeat / 2:.3f} Å)")
        if self.lj13_trajectories * self.lj13_samples < 25:
            bad("lj13_samples", "the LJ13 pool (trajectories x samples) needs at least 25 structures: its 20 % "
                                "in-domain test set is scored and needs 5")
        if len(self.al_stdevs) * self.al_per_stdev < 25:
            bad("al_per_stdev", "the aluminium pool (stdevs x per stdev) needs at least 25 structures: its 20 % "
                                "in-domain test set is scored and needs 5")
        for name in ("lj13_test", "al_test"):
            if getattr(self, name) < 5:
                bad(name, "an out-of-domain test set needs at least 5 structures to be scored")

    @classmethod
    def from_preset(cls, preset: str = "cpu", **overrides) -> "UQCompareConfig":
        if preset not in PRESETS:
            raise JaxiapInputError(f"unknown preset {preset!r}; choose one of {PRESET_CHOICES}")
        return cls(**{**PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}})


DEFAULTS = UQCompareConfig()
