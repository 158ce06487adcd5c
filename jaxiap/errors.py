"""Error types: every message names the offending input and the fix."""

import dataclasses
import math


class JaxiapInputError(ValueError):
    """Bad user input (shapes, NaNs, unknown keys, impossible values)."""


class SingularSystemError(JaxiapInputError):
    """A linear system that cannot be solved as posed (rank-deficient design)."""


def check_positive_fields(settings, skip=()) -> None:
    """Raise JaxiapInputError naming the first dataclass field of ``settings`` (outside ``skip``) that is not
    a positive finite number: ``Type.field=value must be a positive finite number``."""
    for f in dataclasses.fields(settings):
        v = getattr(settings, f.name)
        if f.name not in skip and not (math.isfinite(v) and v > 0):
            raise JaxiapInputError(f"{type(settings).__name__}.{f.name}={v!r} must be a positive finite number")
