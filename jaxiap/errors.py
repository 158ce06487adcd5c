"""Error types: every message names the offending input and the fix."""


class JaxiapInputError(ValueError):
    """Bad user input (shapes, NaNs, unknown keys, impossible values)."""


class SingularSystemError(JaxiapInputError):
    """A linear system that cannot be solved as posed (rank-deficient design)."""
