"""GPU readiness check: the scale benchmarks in one script, sized for one GPU and under 5 minutes.

Runs, each in its own subprocess (so each gets a fresh device and its own
peak-memory reading) with a wall-clock limit:

1. ``bench/md_throughput.py`` (jax-md engine, float32) up to R = 1e5 LJ13
   replicas, without ASE and LAMMPS;
2. a shortened ``jaxiap lj13 --preset gpu`` (fewer seeds, shorter t_max,
   written to a temporary folder);
3. the posterior x seed FRT sweep, ``bench/uq_sweep.py`` (jaxiap side only
   is timed at scale; ASE does a couple of replicas);
4. NUTS through ``run_nuts`` against adaptive Metropolis, ``bench/inference_nuts.py``.

It prints each step's output tail, its wall time, the peak device memory of
its process (``device.memory_stats()["peak_bytes_in_use"]`` where the
backend reports it, else the process's peak RSS) and, for the MD rows, the
atom-steps/s with the ratio to the memory-bandwidth bound of
``bench/uq_sweep.py:bandwidth_bound`` (``--bandwidth``, bytes/s; default 4.8e12,
an H200's HBM3e; the CPU run uses 2e10 as a stated guess for 2 cores).

Without a GPU the script runs every step at a reduced size on the CPU, to
prove that it works end to end (``--cpu`` forces that; the numbers then
say nothing about a GPU). Usage::

    python bench/gpu_check.py             # GPU if present, else the reduced CPU run
    python bench/gpu_check.py --cpu       # reduced CPU run
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: run inside each subprocess: the step, then its peak memory on one JSON line
_WRAPPER = r"""
import json, resource, runpy, sys
sys.argv = {argv!r}
sys.path.insert(0, {root!r})
try:
    if {module!r}:
        from jaxiap.cli import main
        main(sys.argv[1:])
    else:
        runpy.run_path(sys.argv[0], run_name="__main__")
finally:
    peak, kind = None, "host RSS"
    try:
        import jax
        stats = jax.devices()[0].memory_stats() or {{}}
        if "peak_bytes_in_use" in stats:
            peak, kind = stats["peak_bytes_in_use"], f"{{jax.devices()[0].platform}} peak_bytes_in_use"
    except Exception:
        pass
    if peak is None:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print("GPU_CHECK_MEMORY " + json.dumps(dict(bytes=int(peak), kind=kind)), flush=True)
"""


def has_gpu() -> bool:
    probe = "import jax; print(any(d.platform == 'gpu' for d in jax.devices()))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    return out.stdout.strip().endswith("True")


def steps(gpu: bool, out_dir: str) -> list[tuple[str, list[str], bool, int]]:
    """(name, argv, is a jaxiap CLI call, timeout s) of each step."""
    b = lambda name: os.path.join(REPO_ROOT, "bench", name)  # noqa: E731
    if gpu:
        return [
            ("md_throughput", [b("md_throughput.py"), "--replicas", "1024,16384,100000", "--skip-ase",
                               "--skip-lammps", "--devices", "1", "--repeats", "3", "--steps", "200"], False, 120),
            ("lj13 --preset gpu (shortened)", ["jaxiap", "lj13", "--preset", "gpu", "--seeds", "1024", "--t-max", "20",
                                               "--attempt-seeds", "256", "--out", os.path.join(out_dir, "lj13"),
                                               "--no-progress"], True, 120),
            ("uq_sweep", [b("uq_sweep.py"), "--samples", "64", "--seeds", "256", "--t-max", "20", "--ase-runs", "2",
                          "--devices", "1", "--dtypes", "float32"], False, 60),
            ("inference_nuts", [b("inference_nuts.py"), "--quick"], False, 60),
        ]
    return [
        ("md_throughput", [b("md_throughput.py"), "--replicas", "1024,8192", "--skip-ase", "--skip-lammps",
                           "--devices", "1", "--repeats", "2", "--steps", "50"], False, 240),
        ("lj13 --preset gpu (reduced)", ["jaxiap", "lj13", "--preset", "gpu", "--seeds", "32", "--t-max", "5",
                                         "--train-trajectories", "4", "--samples-per-trajectory", "20",
                                         "--n-subsets", "3", "--posterior-samples", "4", "--attempt-seeds", "8",
                                         "--out", os.path.join(out_dir, "lj13"), "--no-progress"], True, 420),
        ("uq_sweep", [b("uq_sweep.py"), "--quick", "--devices", "1", "--dtypes", "float32"], False, 300),
        ("inference_nuts", [b("inference_nuts.py"), "--quick"], False, 300),
    ]


def md_rows(text: str) -> list[tuple[str, int, float]]:
    """(engine, R, atom-steps/s) of the jax-md and jaxiap rows of md_throughput's table."""
    rows = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) > 4 and cells[0] in ("jax-md", "jaxiap") and cells[1].isdigit():
            rows.append((cells[0], int(cells[1]), float(cells[4].split()[0])))
    return rows


def run_step(name, argv, module, timeout, env) -> dict:
    code = _WRAPPER.format(argv=argv, root=REPO_ROOT, module=module)
    t = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                              env=env, cwd=REPO_ROOT)
        rc, out = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        rc, out = "timeout", (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
    wall = time.perf_counter() - t
    mem = re.search(r"GPU_CHECK_MEMORY (\{.*\})", out)
    return dict(name=name, rc=rc, wall_s=wall, output=out, memory=json.loads(mem.group(1)) if mem else None)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cpu", action="store_true", help="reduced CPU run even if a GPU is present")
    p.add_argument("--bandwidth", type=float, default=None,
                   help="device memory bandwidth, bytes/s, for the MD bound [GPU 4.8e12, CPU 2e10]")
    args = p.parse_args(argv)
    gpu = not args.cpu and has_gpu()
    bandwidth = args.bandwidth or (4.8e12 if gpu else 2.0e10)
    sys.path.insert(0, os.path.join(REPO_ROOT, "bench"))
    from uq_sweep import bandwidth_bound

    env = dict(os.environ)
    if not gpu:
        env["JAX_PLATFORMS"] = "cpu"
    print(f"gpu_check: {'GPU' if gpu else 'CPU (reduced sizes; says nothing about a GPU)'}; "
          f"bandwidth {bandwidth:.3g} B/s; load average {os.getloadavg()}", flush=True)
    t0 = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory(prefix="jaxiap-gpu-check-") as out_dir:
        for name, step_argv, module, timeout in steps(gpu, out_dir):
            r = run_step(name, step_argv, module, timeout, env)
            results.append(r)
            mem = r["memory"]
            mem_txt = f"{mem['bytes'] / 2**30:.2f} GiB ({mem['kind']})" if mem else "n/a"
            print(f"\n=== {name}: rc {r['rc']}, {r['wall_s']:.1f} s, peak memory {mem_txt}", flush=True)
            print("\n".join(r["output"].splitlines()[-25:]))
            if name == "md_throughput":
                bound = bandwidth_bound(bandwidth, itemsize=4)
                for engine, reps, rate in md_rows(r["output"]):
                    print(f"MD {engine} R={reps}: {rate:.3g} atom-steps/s = {rate / bound:.3f} of the float32 bandwidth "
                          f"bound {bound:.3g} (21 x 4 bytes per atom-step at {bandwidth:.3g} B/s)")
    total = time.perf_counter() - t0
    bad = [r["name"] for r in results if r["rc"] != 0]
    print(f"\ngpu_check: {len(results) - len(bad)}/{len(results)} steps passed in {total:.0f} s"
          + (f"; failed: {', '.join(bad)}" if bad else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
