"""Shared helpers of the bench scripts: machine line, load average, spreads.

Every bench script prints, before and after its measurements, the machine
(CPU model from /proc/cpuinfo, ``nproc``, memory), the date and the 1/5/15
minute load averages, so that a table pasted into bench/RESULTS.md carries
the conditions it was taken under.
"""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys

import numpy as np


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def mem_gib() -> float:
    try:
        with open("/proc/meminfo") as f:
            return int(f.readline().split()[1]) / 1024**2
    except (OSError, ValueError, IndexError):
        return float("nan")


def machine() -> str:
    return (f"{cpu_model()}, nproc {os.cpu_count()}, {mem_gib():.0f} GiB RAM, "
            f"{platform.system()} {platform.release()}, Python {platform.python_version()}")


def load() -> str:
    """'1.23 0.80 0.40' (1, 5, 15 minute load averages)."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def now() -> str:
    return datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")


def checkout() -> str:
    """'<short HEAD>' plus ' (+ uncommitted changes under jaxiap/)' when the library differs from HEAD."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        head = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--", "jaxiap"], capture_output=True,
                               text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (head or "unknown") + (" (+ uncommitted changes under jaxiap/)" if dirty else "")


def header(name: str) -> None:
    """Print the command, date, machine, checkout and load average at the start of a run."""
    print(f"# {name}: python {' '.join(sys.argv)}", flush=True)
    print(f"# {now()}; {machine()}; checkout {checkout()}", flush=True)
    print(f"# load average at start: {load()}", flush=True)


def footer(t_wall: float | None = None) -> None:
    extra = f"; total wall {t_wall:.0f} s" if t_wall is not None else ""
    print(f"# load average at end: {load()}{extra}", flush=True)


def spread(xs, fmt: str = "{:.3g}") -> str:
    """'median (min-max, n)' of a sample; one value prints as itself."""
    xs = np.asarray(list(xs), dtype=float)
    if xs.size == 0:
        return "-"
    if xs.size == 1:
        return fmt.format(xs[0])
    return f"{fmt.format(np.median(xs))} ({fmt.format(xs.min())}-{fmt.format(xs.max())}, n={xs.size})"


def med(xs) -> float:
    xs = np.asarray(list(xs), dtype=float)
    return float(np.median(xs)) if xs.size else float("nan")
