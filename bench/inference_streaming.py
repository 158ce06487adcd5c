"""Streaming Bayesian linear regression: throughput and peak memory vs in-memory numpy lstsq.

What is measured
----------------
A weighted linear system with K features (default 12) and R design rows
(default R = 1e5, 1e6, 1e7) is solved two ways, each in a fresh subprocess:

* ``stream``: ``jaxiap.inference.streaming.accumulate`` reduces the rows chunk
  by chunk (``--chunk`` rows each, default 50,000) into ``NormalEquations``
  (A^T W A, A^T W y, ... split by energy / force rows; float64) and
  ``solve_blr`` returns the BLR posterior (prior precision 1e-8, noise_var 1).
  The design is never materialised. Rows are split over ``--devices`` JAX
  devices (1 = the default CPU device; N > 1 fakes N host devices with
  ``XLA_FLAGS=--xla_force_host_platform_device_count=N``).
* ``numpy``: the peer. The full (R, K) design is materialised and solved by
  ``np.linalg.lstsq(W^1/2 A, W^1/2 y)`` (LAPACK gelsd), float64. Run for
  R <= ``--peer-max``.

Rows: a pool of ``--pool`` (default 4) chunks of random rows is generated
once with ``numpy.random.default_rng(0)`` (A ~ U(-1, 1) with column scales
1..K, y = A c + 0.1 noise, w ~ U(0.5, 2), kinds alternating energy / force)
and cycled: chunk i is pool[i % pool]. Both engines see exactly the same
rows, so their coefficients must agree (printed as max |dc|). Row generation
is outside the timed region for both; the numpy peer's materialisation of A
counts toward its memory, which is the point of streaming.

Reported per run: seconds of the timed solve (fastest of ``--repeats``;
stream: accumulate + solve_blr; numpy: weighting + lstsq), rows/s,
"compile s" (stream: one warm-up chunk, compilation included), the baseline
RSS after imports, pool and warm-up ("base MB"), and the peak resident set
size VmHWM from /proc/self/status at the end ("peak MB"). tracemalloc is not
used: it does not see XLA's allocations. Ratio = numpy s / stream s.

Run ``python bench/inference_streaming.py --help`` for the options.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def _proc_status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def make_pool(n_pool: int, chunk: int, k: int, seed: int = 0):
    """n_pool chunks of (A (chunk, K), y, w, kind) float64 numpy arrays."""
    rng = np.random.default_rng(seed)
    c = rng.normal(size=k)
    pool = []
    for _ in range(n_pool):
        A = rng.uniform(-1, 1, size=(chunk, k)) * np.arange(1, k + 1)
        y = A @ c + 0.1 * rng.normal(size=chunk)
        w = rng.uniform(0.5, 2.0, chunk)
        kind = (np.arange(chunk) % 2).astype(np.int32)
        pool.append((A, y, w, kind))
    return pool


def worker_stream(rows: int, args) -> dict:
    sys.path.insert(0, ROOT)
    import jax

    import jaxiap  # noqa: F401  (float64)
    from jaxiap.inference.streaming import accumulate, solve_blr

    pool_np = make_pool(args.pool, args.chunk, args.k)
    pool = [tuple(jax.device_put(v) for v in chunk) for chunk in pool_np]
    n_chunks = rows // args.chunk
    t0 = time.perf_counter()
    accumulate(pool[:1])
    compile_s = time.perf_counter() - t0
    base = _proc_status_mb("VmRSS")
    best, post = np.inf, None
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        ne = accumulate(pool[i % args.pool] for i in range(n_chunks))
        post = solve_blr(ne, prior_precision=1e-8, noise_var=1.0)
        coef = np.asarray(post.mean)
        best = min(best, time.perf_counter() - t0)
    return dict(seconds=best, compile_s=compile_s, base_mb=base, peak_mb=_proc_status_mb("VmHWM"),
                coef=coef.tolist(), devices=len(jax.devices()))


def worker_numpy(rows: int, args) -> dict:
    pool = make_pool(args.pool, args.chunk, args.k)
    n_chunks = rows // args.chunk
    base = _proc_status_mb("VmRSS")
    A = np.concatenate([pool[i % args.pool][0] for i in range(n_chunks)])
    y = np.concatenate([pool[i % args.pool][1] for i in range(n_chunks)])
    w = np.concatenate([pool[i % args.pool][2] for i in range(n_chunks)])
    best = np.inf
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        sw = np.sqrt(w)
        coef = np.linalg.lstsq(A * sw[:, None], y * sw, rcond=None)[0]
        best = min(best, time.perf_counter() - t0)
    return dict(seconds=best, compile_s=0.0, base_mb=base, peak_mb=_proc_status_mb("VmHWM"),
                coef=coef.tolist(), devices=1)


def run_worker(method: str, rows: int, args) -> dict:
    env = dict(os.environ)
    if method == "stream" and args.devices > 1:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.devices}"
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", method, "--rows", str(rows),
           "--k", str(args.k), "--chunk", str(args.chunk), "--pool", str(args.pool),
           "--repeats", str(args.repeats), "--devices", str(args.devices)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        return dict(error=proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"rc {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def machine() -> str:
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem = _meminfo_gb()
    return f"{cpu}, {os.cpu_count()} CPUs visible (nproc), {mem:.0f} GB RAM, {platform.platform()}"


def _meminfo_gb() -> float:
    with open("/proc/meminfo") as f:
        return int(f.readline().split()[1]) / 1024**2


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=float, nargs="+", default=[1e5, 1e6, 1e7], help="design rows R")
    ap.add_argument("--k", type=int, default=12, help="features K")
    ap.add_argument("--chunk", type=int, default=50_000, help="rows per streamed chunk")
    ap.add_argument("--pool", type=int, default=4, help="distinct pre-generated chunks, cycled")
    ap.add_argument("--repeats", type=int, default=2, help="timed repeats (fastest kept)")
    ap.add_argument("--devices", type=int, default=1, help="JAX devices for the stream (fake host devices if > 1)")
    ap.add_argument("--peer-max", type=float, default=1e7, help="largest R for the in-memory numpy peer")
    ap.add_argument("--worker", choices=["stream", "numpy"], help=argparse.SUPPRESS)
    ap.add_argument("--rows", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker:
        fn = worker_stream if args.worker == "stream" else worker_numpy
        print(json.dumps(fn(args.rows, args)))
        return

    print(f"machine: {machine()}")
    print(f"K = {args.k}, chunk = {args.chunk} rows, pool = {args.pool} chunks, repeats = {args.repeats}, "
          f"stream devices = {args.devices}")
    header = ("| rows | engine | solve s | rows/s | compile s | base MB | peak MB | "
              "numpy s / stream s | max abs dc |")
    print(header)
    print("|---|---|---|---|---|---|---|---|---|")
    for size in args.sizes:
        rows = int(round(size / args.chunk)) * args.chunk
        res = {"stream": run_worker("stream", rows, args)}
        if rows <= args.peer_max:
            res["numpy"] = run_worker("numpy", rows, args)
        ok = all("error" not in r for r in res.values())
        ratio = res["numpy"]["seconds"] / res["stream"]["seconds"] if ok and "numpy" in res else float("nan")
        dc = (np.max(np.abs(np.subtract(res["numpy"]["coef"], res["stream"]["coef"])))
              if ok and "numpy" in res else float("nan"))
        for name, r in res.items():
            if "error" in r:
                print(f"| {rows:.0e} | {name} | failed: {r['error']} | | | | | | |")
                continue
            label = f"jaxiap stream ({r['devices']} dev)" if name == "stream" else "numpy lstsq (in-memory)"
            extra = f"{ratio:.2f} | {dc:.1e}" if name == "stream" and "numpy" in res else " | "
            print(f"| {rows:.0e} | {label} | {r['seconds']:.3f} | {rows / r['seconds']:.3g} | "
                  f"{r['compile_s']:.2f} | {r['base_mb']:.0f} | {r['peak_mb']:.0f} | {extra} |")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
