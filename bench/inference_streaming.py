"""Streaming Bayesian linear regression: jaxiap vs the same normal equations in numpy, and vs SVD lstsq.

What is measured
----------------
A weighted linear system with K features (default 12) and R design rows
(default R = 1e5, 1e6, 1e7) is solved three ways, each in a fresh subprocess:

* ``stream``: ``jaxiap.inference.streaming.accumulate`` reduces the rows chunk
  by chunk (``--chunk`` rows each, default 50,000) into ``NormalEquations``
  (A^T W A, A^T W y, y^T W y, row counts and sum log w, split by energy / force
  rows, with the NaN / weight / kind check; float64) and ``solve_blr`` returns
  the BLR posterior (prior precision 1e-8, noise_var 1). The chunks are host
  numpy arrays: ``accumulate`` transfers each one to the device inside the
  timed loop. Rows are split over ``--devices`` JAX devices (1 = the default
  CPU device; N > 1 fakes N host devices with
  ``XLA_FLAGS=--xla_force_host_platform_device_count=N``).
* ``numpy NE``: the peer doing the same work: the same host chunks, the same
  statistics per chunk in numpy (finite / weight / kind check; per row kind
  A^T W A, A^T W y, y^T W y, count, sum log w), summed, then the same BLR
  solve (Cholesky of 1e-8 I + A^T W A, ``scipy.linalg.cho_solve``). Streaming,
  O(K^2) memory.
* ``numpy lstsq``: the in-memory SVD route, separately: the full (R, K) design
  is materialised and solved by ``np.linalg.lstsq(W^1/2 A, W^1/2 y)`` (LAPACK
  gelsd), float64. Run for R <= ``--peer-max``. Not the same arithmetic (it
  does not square the condition number), so it is the reference for accuracy
  rather than a like-for-like timing.

Rows: a pool of ``--pool`` (default 16, 96 MB at K = 12: more than the CPU
caches) chunks of random rows is generated once per process with
``numpy.random.default_rng(0)`` (A ~ U(-1, 1) with column scales 1..K,
y = A c + 0.1 noise, w ~ U(0.5, 2), kinds alternating energy / force) and
cycled: chunk i is pool[i % pool]. Every engine sees exactly the same rows, so
their coefficients must agree (printed as max |dc| against lstsq). Row
generation is outside the timed region; the lstsq peer's materialisation of
A counts toward its memory (not its time), which is the point of streaming.

Reported per run: seconds of the timed solve, median and min-max over
``--repeats`` (stream and numpy NE: the chunk loop + solve; lstsq: weighting +
lstsq), rows/s at the median, "compile s" (stream: one warm-up chunk and a
solve, compilation and first-call costs included; ``accumulate`` compiles its
step once per block shape), the baseline RSS after imports, pool and warm-up
("base MB"), and the peak resident set size VmHWM from /proc/self/status at
the end ("peak MB"). tracemalloc is not used: it does not see XLA's
allocations. Ratios = peer median s / stream median s (> 1: jaxiap faster).

Scale mode (``--scale``): the same stream and numpy normal-equations peer at
``--ks`` features (default 100 and 1000) and many rows: ``--rows`` rows for
every K (default: 1e7 for K <= 100 and ``--wide-rows``, default 2e5, for
larger K; ``--full`` streams 1e7 rows at every K, about 2e13 FLOPs at
K = 1000, several minutes per engine on 2 cores). Rows come from a
bounded pool as above (about ``--pool-mb`` MB, 160 by default, of
``--scale-chunk``-row chunks generated before the timed region (the rows are
rounded to whole chunks): generation is
excluded from the timings and reported separately as "gen s" for the pool).
Each run also measures the machine's float64 matrix-multiply rate on the
chunk shape (n rows x K): numpy ``X.T @ Y`` (BLAS dgemm; Y a copy of X, so
numpy cannot switch to the half-cost syrk) and jitted ``jnp.dot(X.T, X)``,
best of 5, FLOP rate 2 n K^2 / t; the larger of the two is "peak". Reported per
engine: rows/s, achieved GFLOP/s = 2 R K^2 / t (the A^T W A product, the
dominant term, counted as a general product: what it is worth, not what was
executed), the fraction of peak, base and peak MB, and the coefficients'
max |dc| between the two engines. On one CPU device ``accumulate`` reduces
blocks of K >= 32 features on the host in numpy, A^T W A as X^T X with
X = sqrt(w) A (BLAS syrk, half the FLOPs of the peer's general products), so
at K = 100 and 1000 the comparison is that implementation against the
peer's, and the "fraction of peak" can exceed 1. On GPUs or several devices
the blocks go through XLA (``--devices 2`` fakes two CPU devices).

"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from _common import footer, header, load, med, spread  # noqa: E402


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

    t0 = time.perf_counter()
    pool = make_pool(args.pool, args.chunk, args.k)  # host numpy chunks, transferred by accumulate
    gen_s = time.perf_counter() - t0
    n_chunks = rows // args.chunk
    t0 = time.perf_counter()
    # compile + first-call costs: accumulate's step compiles once per block shape (the block is the first
    # chunk's shape), so one warm-up chunk leaves no compile in the timed passes
    solve_blr(accumulate(pool[:1]), prior_precision=1e-8, noise_var=1.0)
    compile_s = time.perf_counter() - t0
    base = _proc_status_mb("VmRSS")
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        ne = accumulate(pool[i % args.pool] for i in range(n_chunks))
        post = solve_blr(ne, prior_precision=1e-8, noise_var=1.0)
        coef = np.asarray(post.mean)
        times.append(time.perf_counter() - t0)
    return dict(seconds=times, compile_s=compile_s, base_mb=base, peak_mb=_proc_status_mb("VmHWM"),
                coef=coef.tolist(), devices=len(jax.devices()), gen_s=gen_s)


def numpy_stats(A, y, w, kind, acc):
    """Add one chunk's NormalEquations (per row kind) to acc, in numpy: the work stats_arrays does."""
    if not (np.isfinite(A).all() and np.isfinite(y).all() and np.isfinite(w).all()) or (w < 0).any() \
            or ((kind != 0) & (kind != 1)).any():
        raise ValueError("bad rows")
    for g in (0, 1):
        m = (kind == g) & (w > 0)
        Ag, yg, wg = A[m], y[m], w[m]
        wA = Ag * wg[:, None]
        acc["AtWA"][g] += wA.T @ Ag
        acc["AtWy"][g] += wA.T @ yg
        acc["ytWy"][g] += wg @ (yg * yg)
        acc["n"][g] += m.sum()
        acc["slw"][g] += np.log(wg).sum()


def worker_numpy_ne(rows: int, args) -> dict:
    import scipy.linalg as sla

    t0 = time.perf_counter()
    pool = make_pool(args.pool, args.chunk, args.k)
    gen_s = time.perf_counter() - t0
    n_chunks = rows // args.chunk
    k = args.k
    base = _proc_status_mb("VmRSS")
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        acc = dict(AtWA=np.zeros((2, k, k)), AtWy=np.zeros((2, k)), ytWy=np.zeros(2), n=np.zeros(2),
                   slw=np.zeros(2))
        for i in range(n_chunks):
            numpy_stats(*pool[i % args.pool], acc)
        lam = 1e-8 * np.eye(k) + acc["AtWA"].sum(0) / 1.0  # prior precision 1e-8, noise_var 1
        coef = sla.cho_solve((np.linalg.cholesky(lam), True), acc["AtWy"].sum(0) / 1.0)
        times.append(time.perf_counter() - t0)
    return dict(seconds=times, compile_s=0.0, base_mb=base, peak_mb=_proc_status_mb("VmHWM"),
                coef=coef.tolist(), devices=1, gen_s=gen_s)


def worker_matmul(rows: int, args) -> dict:
    """The machine's float64 matmul rate on the chunk shape: numpy dgemm and jitted jnp.dot, best of 5."""
    sys.path.insert(0, ROOT)
    import jax
    import jax.numpy as jnp

    import jaxiap  # noqa: F401  (float64)

    X = np.random.default_rng(1).normal(size=(args.chunk, args.k))
    Y = X.copy()  # a second buffer: numpy would run X.T @ X as a half-cost syrk
    flops = 2.0 * args.chunk * args.k**2

    def best(fn, n=5):
        fn()
        ts = []
        for _ in range(n):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        return min(ts)

    t_np = best(lambda: X.T @ Y)
    dot = jax.jit(lambda a: jnp.dot(a.T, a, precision=jax.lax.Precision.HIGHEST))
    Xj = jnp.asarray(X)
    t_jax = best(lambda: dot(Xj).block_until_ready())
    return dict(numpy_gflops=flops / t_np / 1e9, jax_gflops=flops / t_jax / 1e9, rows=args.chunk, k=args.k)


def worker_numpy(rows: int, args) -> dict:
    pool = make_pool(args.pool, args.chunk, args.k)
    n_chunks = rows // args.chunk
    base = _proc_status_mb("VmRSS")
    A = np.concatenate([pool[i % args.pool][0] for i in range(n_chunks)])
    y = np.concatenate([pool[i % args.pool][1] for i in range(n_chunks)])
    w = np.concatenate([pool[i % args.pool][2] for i in range(n_chunks)])
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        sw = np.sqrt(w)
        coef = np.linalg.lstsq(A * sw[:, None], y * sw, rcond=None)[0]
        times.append(time.perf_counter() - t0)
    return dict(seconds=times, compile_s=0.0, base_mb=base, peak_mb=_proc_status_mb("VmHWM"),
                coef=coef.tolist(), devices=1)


def run_worker(method: str, rows: int, args) -> dict:
    env = dict(os.environ)
    if method == "stream" and args.devices > 1:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.devices}"
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", method, "--worker-rows", str(rows),
           "--k", str(args.k), "--chunk", str(args.chunk), "--pool", str(args.pool),
           "--repeats", str(args.repeats), "--devices", str(args.devices)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        return dict(error=proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"rc {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


WORKERS = {"stream": worker_stream, "numpy_ne": worker_numpy_ne, "numpy": worker_numpy, "matmul": worker_matmul}
LABELS = {"numpy_ne": "numpy normal equations (streamed, same statistics)",
          "numpy": "numpy lstsq, SVD (in-memory)"}


def scale_layout(k: int, args) -> tuple[int, int]:
    """(chunk rows, pool chunks) of the scale mode: ~40 MB chunks, ~--pool-mb MB of pool."""
    chunk = args.scale_chunk or int(np.clip(round(40e6 / (8 * k), -3), 2000, 100_000))
    pool = max(2, int(round(args.pool_mb * 1e6 / (8 * k * chunk))))
    return chunk, pool


def main_scale(args) -> None:
    header("bench/inference_streaming.py")
    t_all = time.perf_counter()
    print(f"scale mode: K = {args.ks}, repeats = {args.repeats}, stream devices = {args.devices}")
    hdr = ("| K | rows | engine | s, median (min-max) | rows/s | GFLOP/s (2RK^2/t) | fraction of peak | compile s | "
           "gen s (pool) | base MB | peak MB | peer s / stream s | max abs dc stream vs numpy |")
    lines = [hdr, "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    peaks = []
    for k in args.ks:
        chunk, pool = scale_layout(k, args)
        size = args.rows if args.rows else (1e7 if (k <= 100 or args.full) else args.wide_rows)
        chunk = min(chunk, int(size))  # a reduced run of fewer rows than one chunk: one chunk of them
        rows = max(1, int(round(size / chunk))) * chunk  # whole chunks
        sub = argparse.Namespace(**vars(args))
        sub.k, sub.chunk, sub.pool = k, chunk, pool
        mm = run_worker("matmul", chunk, sub)
        if "error" in mm:
            print(f"  K = {k}: matmul rate failed: {mm['error']}")
            peak = float("nan")
        else:
            peak = max(mm["numpy_gflops"], mm["jax_gflops"])
            peaks.append(f"K = {k}, {chunk} x {k}: numpy dgemm {mm['numpy_gflops']:.1f} GFLOP/s, jax dot "
                         f"{mm['jax_gflops']:.1f} GFLOP/s")
            print(f"  matmul rate, {peaks[-1]}; load {load()}", flush=True)
        res = {"stream": run_worker("stream", rows, sub), "numpy_ne": run_worker("numpy_ne", rows, sub)}
        for name, r, label, ratio in _engine_rows(res, f"{k} | {rows:.0e} | ", 9, lines):
            t = med(r["seconds"])
            gf = 2.0 * rows * k**2 / t / 1e9
            other = res["numpy_ne" if name == "stream" else "stream"]
            dc = (f"{np.max(np.abs(np.subtract(r['coef'], other['coef']))):.1e}" if "error" not in other else "")
            lines.append(f"| {k} | {rows:.0e} | {label} | {spread(r['seconds'])} | {rows / t:.3g} | {gf:.3g} | "
                         f"{gf / peak:.2f} | {r['compile_s']:.2f} | {r['gen_s']:.2f} | {r['base_mb']:.0f} | "
                         f"{r['peak_mb']:.0f} | {ratio} | {dc} |")
            print(f"  K = {k}, {rows:.0e} rows, {label}: {spread(r['seconds'])} s ({chunk}-row chunks, pool {pool}); "
                  f"load {load()}", flush=True)
    print()
    print("machine matmul rate (float64, chunk shape, best of 5, same run): " + "; ".join(peaks))
    print()
    print("\n".join(lines))
    footer(time.perf_counter() - t_all)


def _engine_rows(res: dict, prefix: str, n_blank: int, lines: list):
    """Yield (name, result, label, time ratio to the stream) of each engine that ran; append a
    failure row (``prefix``, then ``n_blank`` empty cells) to ``lines`` for each that did not."""
    t_stream = med(res["stream"]["seconds"]) if "error" not in res["stream"] else float("nan")
    for name, r in res.items():
        if "error" in r:
            lines.append(f"| {prefix}{name} | failed: {r['error']} |" + " |" * n_blank)
            continue
        label = f"jaxiap stream ({r['devices']} dev)" if name == "stream" else LABELS[name]
        yield name, r, label, ("" if name == "stream" else f"{med(r['seconds']) / t_stream:.2f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=float, nargs="+", default=[1e5, 1e6, 1e7], help="design rows R")
    ap.add_argument("--k", type=int, default=12, help="features K")
    ap.add_argument("--chunk", type=int, default=50_000, help="rows per streamed chunk")
    ap.add_argument("--pool", type=int, default=16, help="distinct pre-generated chunks, cycled")
    ap.add_argument("--repeats", type=int, default=None,
                    help="timed repeats (median and min-max reported; default 5, scale mode 2)")
    ap.add_argument("--devices", type=int, default=1, help="JAX devices for the stream (fake host devices if > 1)")
    ap.add_argument("--peer-max", type=float, default=1e7, help="largest R for the in-memory lstsq peer")
    ap.add_argument("--quick", action="store_true",
                    help="tiny smoke run: R = 1e4 and 1e5, chunk 5000, 2 repeats (scale mode: 2e4 rows at K = 100 "
                         "and 1000)")
    ap.add_argument("--scale", action="store_true", help="scale mode: many rows at K = --ks (see the docstring)")
    ap.add_argument("--ks", type=int, nargs="+", default=[100, 1000], help="scale mode: feature counts")
    ap.add_argument("--rows", type=float, default=None,
                    help="scale mode: rows at every K (default 1e7 for K <= 100, --wide-rows above)")
    ap.add_argument("--wide-rows", type=float, default=2e5, help="scale mode: default rows for K > 100")
    ap.add_argument("--full", action="store_true", help="scale mode: 1e7 rows at every K (minutes per engine)")
    ap.add_argument("--scale-chunk", type=int, default=None,
                    help="scale mode: rows per chunk (default ~40 MB: 50,000 at K = 100, 5,000 at K = 1000)")
    ap.add_argument("--pool-mb", type=float, default=160.0, help="scale mode: size of the row pool in MB")
    ap.add_argument("--worker", choices=list(WORKERS), help=argparse.SUPPRESS)
    ap.add_argument("--worker-rows", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.repeats is None:
        args.repeats = 2 if args.scale else 5
    if args.quick:
        if args.scale:
            args.rows, args.repeats, args.pool_mb = args.rows or 2e4, 1, 40.0
            args.scale_chunk = args.scale_chunk or 5000
        else:
            args.sizes, args.chunk, args.repeats, args.pool = [1e4, 1e5], 5000, 2, 4

    if args.worker:
        print(json.dumps(WORKERS[args.worker](args.worker_rows, args)))
        return
    if args.scale:
        main_scale(args)
        return

    header("bench/inference_streaming.py")
    t_all = time.perf_counter()
    print(f"K = {args.k}, chunk = {args.chunk} rows, pool = {args.pool} chunks, repeats = {args.repeats}, "
          f"stream devices = {args.devices}")
    header_row = ("| rows | engine | solve s, median (min-max) | rows/s | compile s | base MB | peak MB | "
                  "peer s / stream s | max abs dc vs lstsq |")
    lines = [header_row, "|---|---|---|---|---|---|---|---|---|"]
    for size in args.sizes:
        rows = int(round(size / args.chunk)) * args.chunk
        res = {"stream": run_worker("stream", rows, args), "numpy_ne": run_worker("numpy_ne", rows, args)}
        if rows <= args.peer_max:
            res["numpy"] = run_worker("numpy", rows, args)
        ref = res.get("numpy")
        for name, r, label, ratio in _engine_rows(res, f"{rows:.0e} | ", 6, lines):
            dc = (f"{np.max(np.abs(np.subtract(r['coef'], ref['coef']))):.1e}"
                  if ref is not None and "error" not in ref and name != "numpy" else "")
            lines.append(f"| {rows:.0e} | {label} | {spread(r['seconds'])} | {rows / med(r['seconds']):.3g} | "
                         f"{r['compile_s']:.2f} | {r['base_mb']:.0f} | {r['peak_mb']:.0f} | {ratio} | {dc} |")
            print(f"  {rows:.0e} {label}: {spread(r['seconds'])} s; load {load()}", flush=True)
    print()
    print("\n".join(lines))
    footer(time.perf_counter() - t_all)


if __name__ == "__main__":
    main()
