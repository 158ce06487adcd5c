"""Run folders: a config fingerprint, JSON files written atomically, stage timing."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from jaxiap.errors import JaxiapInputError


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating, float)):
        x = float(x)
        return x if np.isfinite(x) else (None if np.isnan(x) else ("inf" if x > 0 else "-inf"))
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    return x


def write_json(path, data) -> None:
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(_jsonable(data), indent=2) + "\n")
    os.replace(tmp, path)


def open_run_folder(out_dir, config: dict, overwrite: bool = False) -> Path:
    """Create ``out_dir`` or reuse it when its config.json matches ``config``.

    A folder holding a different configuration is never silently reused:
    the error names both and the fix. ``overwrite`` removes earlier results.
    """
    out = Path(out_dir)
    cfg_path = out / "config.json"
    want = _jsonable(config)
    if cfg_path.exists():
        have = json.loads(cfg_path.read_text())
        if have != want and not overwrite:
            diff = sorted(k for k in set(have) | set(want) if have.get(k) != want.get(k))
            raise JaxiapInputError(
                f"run folder {out} holds a run with a different configuration (differs in: "
                f"{', '.join(diff)}); choose another --out folder or pass --overwrite to discard it"
            )
        if have != want and overwrite:
            import shutil

            shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(cfg_path, want)
    return out


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
