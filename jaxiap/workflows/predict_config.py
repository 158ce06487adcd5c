"""Configuration of ``jaxiap predict`` (energies, forces and their stds for the user's structures).

The fit (``model``) and the structure file (``structures``) are the
command's positional arguments; :data:`CLI_FLAGS` holds its options.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxiap.errors import JaxiapInputError
from jaxiap.workflows.lj13_config import field_text

PRESETS = {"cpu": {}}
PRESET_CHOICES = tuple(PRESETS)

#: config fields given as the command's positional arguments (input files)
POSITIONAL_FIELDS = ("model", "structures")

#: the ``jaxiap predict`` option of each PredictConfig field (the positionals are the fields model, structures)
CLI_FLAGS = {"batch_size": "--batch-size", "index": "--index"}


@dataclasses.dataclass(frozen=True)
class PredictConfig:
    """model: a fit's run folder or posterior file; structures: any file ASE reads; index: which of its
    structures (ase.io.read's index, e.g. ":" all, "0", "-1", "::10"); batch_size: structures per
    compiled batch (memory)."""

    model: str = ""
    structures: str = ""
    index: str = ":"
    batch_size: int = 64

    def __post_init__(self):
        if not (isinstance(self.batch_size, (int, np.integer)) and not isinstance(self.batch_size, bool)
                and self.batch_size >= 1):
            raise JaxiapInputError(f"{field_text(self, 'batch_size', CLI_FLAGS)}: must be a positive integer")
        if not (isinstance(self.index, str) and self.index.strip()):
            raise JaxiapInputError(f"{field_text(self, 'index', CLI_FLAGS)}: must be an ase.io.read index, e.g. "
                                   "':' (all), '0' or '::10'")
        for name in ("model", "structures"):
            if not isinstance(getattr(self, name), str):
                raise JaxiapInputError(f"{name}={getattr(self, name)!r}: must be a path (a string)")

    @classmethod
    def from_preset(cls, preset: str = "cpu", **overrides) -> "PredictConfig":
        if preset not in PRESETS:
            raise JaxiapInputError(f"unknown preset {preset!r}; choose one of {PRESET_CHOICES}")
        return cls(**{**PRESETS[preset], **overrides})


DEFAULTS = PredictConfig()
