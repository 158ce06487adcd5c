"""Stage timing for the study workflows."""

from __future__ import annotations

import contextlib
import sys
import time


class StageTimer:
    """Records wall time per named stage and prints one line per stage to stderr."""

    def __init__(self, verbose: bool = True):
        self.times: dict[str, float] = {}
        self.verbose = verbose

    @contextlib.contextmanager
    def __call__(self, name: str):
        if self.verbose:
            print(f"[jaxiap] {name} ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        yield
        self.times[name] = round(time.perf_counter() - t0, 3)
        if self.verbose:
            print(f"[jaxiap] {name} done in {self.times[name]:.1f} s", file=sys.stderr, flush=True)
