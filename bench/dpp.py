"""DPP sampling and greedy MAP: jaxiap.active.dpp against DPPy (issue 6).

One PSD L-ensemble kernel per N: a quality-diversity RBF kernel
L_ij = q_i exp(-|phi_i - phi_j|^2 / (2 ell^2)) q_j on random features phi ~ N(0, I_d), ell = 4,
d = 10, q_i ~ U(0.5, 1.5), built once in numpy and handed to both libraries.

Timed per N, for jaxiap and DPPy (``FiniteDPP('likelihood', L=L)``, mode 'GS'):

- eig: the one-off eigendecomposition. jaxiap: ``dpp_spectrum(L)`` (symmetry check,
  jitted ``jnp.linalg.eigh``, PSD check on those eigenvalues); DPPy: a fresh FiniteDPP's
  first ``sample_exact`` (``scipy.linalg.eigh`` + one sample) minus the median per-sample
  time. ``--eig-reps`` calls each.
- exact DPP sample, per sample, given the eigendecomposition: both libraries cache it
  (jaxiap: the ``DPPSpectrum`` from ``dpp_spectrum``, sampled with the public
  ``sample_dpp_spectral(key, spec)``; DPPy: the FiniteDPP object). Sample sizes |Y| are
  random and differ between samples, and both samplers cost O(N |Y|^2), so the raw times are
  also given normalised: each sample's time divided by its |Y|^2.
- k-DPP sample (k = ``--k``): the equal-size comparison (``sample_kdpp_spectral(key, spec, k)``
  vs ``sample_exact_k_dpp(size=k, mode='GS')``).
- end to end: the public ``sample_dpp(key, L)`` (checks + eigh + sample) against a fresh
  FiniteDPP's first sample, ``--eig-reps`` calls each.
- greedy MAP of k items. DPPy has no greedy MAP (only exact and MCMC samplers), so
  the peer is a plain-numpy fast greedy MAP (Chen, Zhang & Zhou 2018, incremental
  Cholesky, O(N k^2)) written below. jaxiap: its jitted core ``_greedy_map``,
  ``greedy_map(L, k)`` (public, default O(N^2) check) and ``greedy_map(L, k, check="full")``
  (adds the O(N^3) ``eigvalsh``; ``--eig-reps`` calls).

jaxiap is timed after compilation with ``block_until_ready``; compile time is
``jit(...).lower(...).compile()``. Every row gives the median and min-max over ``--reps``
samples / calls (different keys / seeds), or ``--eig-reps`` for rows containing an
eigendecomposition; the ratio is of the medians. Correctness is checked on a tiny kernel
(N = 12): mean sample size and inclusion frequencies of both exact samplers against
sum lam/(1+lam) and diag K, k-DPP sizes, and greedy MAP indices equal to the numpy
reference.

Usage: ``python bench/dpp.py [--sizes 1000 2000] [--k 50] [--reps 20] [--eig-reps 5] [--quick]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import footer, header, load, med, spread  # noqa: E402

import numpy as np  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import jaxiap  # noqa: E402,F401  (float64)
from jaxiap.active import dpp as jdpp  # noqa: E402

try:
    from dppy.finite_dpps import FiniteDPP  # noqa: E402
except ImportError:  # pragma: no cover
    FiniteDPP = None


# ----------------------------------------------------------------------------- kernel

def make_kernel(n: int, d: int = 10, lengthscale: float = 4.0, seed: int = 0) -> np.ndarray:
    """Quality-diversity RBF kernel (n, n), float64, exactly symmetric."""
    rng = np.random.default_rng(seed)
    phi = rng.normal(size=(n, d))
    q = rng.uniform(0.5, 1.5, size=n)
    sq = np.sum(phi * phi, axis=1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * phi @ phi.T, 0.0)
    np.fill_diagonal(d2, 0.0)
    L = q[:, None] * np.exp(-0.5 * d2 / lengthscale**2) * q[None, :]
    return 0.5 * (L + L.T)


# ----------------------------------------------------------------------------- numpy peer for greedy MAP

def greedy_map_numpy(L: np.ndarray, k: int, eps: float = 1e-10) -> np.ndarray:
    """Fast greedy MAP (Chen, Zhang & Zhou 2018, Alg. 1): incremental Cholesky, O(N k^2)."""
    n = L.shape[0]
    C = np.zeros((k, n))
    d2 = np.diag(L).copy()
    sel = []
    j = int(np.argmax(d2))
    for t in range(k):
        if d2[j] < eps:
            break
        sel.append(j)
        e = (L[j] - C[:t].T @ C[:t, j]) / np.sqrt(d2[j])
        C[t] = e
        d2 = d2 - e * e
        d2[sel] = -np.inf
        j = int(np.argmax(d2))
    return np.array(sel, dtype=int)


# ----------------------------------------------------------------------------- timing helpers

def _block(x):
    return jax.block_until_ready(x)


def _times(fn, reps: int) -> list[float]:
    """Wall times of ``reps`` calls of fn(i)."""
    ts = []
    for i in range(reps):
        t0 = time.perf_counter()
        fn(i)
        ts.append(time.perf_counter() - t0)
    return ts


def _compile_s(jitted, *args, static=()):
    t0 = time.perf_counter()
    jitted.lower(*args, *static).compile()
    return time.perf_counter() - t0


# ----------------------------------------------------------------------------- correctness on a tiny case

def correctness(n_samples: int = 4000) -> list[str]:
    L = make_kernel(12, d=3, lengthscale=1.0, seed=1) * 2.0
    lam, V = np.linalg.eigh(L)
    lam = np.maximum(lam, 0.0)
    K = (V * (lam / (1 + lam))) @ V.T
    e_size = float(np.sum(lam / (1 + lam)))
    keys = jax.random.split(jax.random.key(0), n_samples)
    Lj = jnp.asarray(L)
    spec = jdpp.dpp_spectrum(Lj)
    jm = np.array([np.asarray(jdpp.sample_dpp_spectral(kk, spec)) for kk in keys])  # bucketed fast path
    dpp = FiniteDPP("likelihood", L=L)
    rng = np.random.RandomState(0)
    dm = np.zeros((n_samples, 12), bool)
    for s in range(n_samples):
        dm[s, dpp.sample_exact(mode="GS", random_state=rng)] = True
    se = np.sqrt(np.sum(K.diagonal() * (1 - K.diagonal())) / n_samples)  # rough s.e. of the mean size
    lines = [f"tiny N=12 kernel, {n_samples} samples each: E|Y| exact {e_size:.4f} | "
             f"jaxiap {jm.sum(1).mean():.4f} | DPPy {dm.sum(1).mean():.4f} (s.e. ~{se:.3f})",
             f"  max |inclusion freq - K_ii|: jaxiap {np.abs(jm.mean(0) - K.diagonal()).max():.4f}, "
             f"DPPy {np.abs(dm.mean(0) - K.diagonal()).max():.4f} "
             f"(binomial s.e. <= {0.5 / np.sqrt(n_samples):.4f})"]
    k = 3
    jk = np.asarray(jax.vmap(lambda kk: jdpp.sample_kdpp_spectral(kk, spec, k))(keys))
    dk = np.zeros((n_samples, 12), bool)
    for s in range(n_samples):
        dk[s, dpp.sample_exact_k_dpp(size=k, mode="GS", random_state=rng)] = True
    lines.append(f"  k-DPP k={k}: sizes jaxiap {sorted(set(jk.sum(1).tolist()))}, DPPy "
                 f"{sorted(set(dk.sum(1).tolist()))}; max |inclusion freq jaxiap - DPPy| "
                 f"{np.abs(jk.mean(0) - dk.mean(0)).max():.4f}")
    big = make_kernel(1000, seed=3)
    gi, _ = jdpp.greedy_map(big, 50)
    ni = greedy_map_numpy(big, 50)
    lines.append(f"  greedy MAP N=1000 k=50: jaxiap indices == numpy reference: "
                 f"{np.array_equal(np.asarray(gi), ni)}")
    return lines


# ----------------------------------------------------------------------------- benchmark

def bench_one(n: int, k: int, reps: int, eig_reps: int, exact_max_n: int) -> list[dict]:
    L = make_kernel(n)
    Lj = jnp.asarray(L)
    _block(Lj)
    rows = [] if n > exact_max_n else bench_exact(n, k, reps, eig_reps, L, Lj)
    return rows + bench_greedy(n, k, reps, eig_reps if n <= exact_max_n else 0, L, Lj)


def bench_exact(n, k, reps, eig_reps, L, Lj) -> list[dict]:
    rows = []
    rng = np.random.RandomState(0)
    keys = jax.random.split(jax.random.key(1), reps + 1)

    # --- eigendecomposition (one-off): jaxiap dpp_spectrum; DPPy: a fresh FiniteDPP's first sample
    c_eig = _compile_s(jdpp._eigh, Lj)
    _block(jdpp.dpp_spectrum(jnp.eye(n)))  # warm the jit dispatch caches (lower().compile() does not)
    t_eig_j = _times(lambda i: _block(jdpp.dpp_spectrum(Lj)), eig_reps)
    spec = jdpp.dpp_spectrum(Lj)
    lam_j, V_j = spec
    t_first_d = []
    for _ in range(eig_reps):  # scipy.linalg.eigh + one sample, what a new FiniteDPP costs
        fresh = FiniteDPP("likelihood", L=L)
        t0 = time.perf_counter()
        fresh.sample_exact(mode="GS", random_state=rng)
        t_first_d.append(time.perf_counter() - t0)
    dpp = fresh
    lam = np.maximum(np.asarray(lam_j), 0.0)
    esize = float(np.sum(lam / (1 + lam)))

    # --- exact DPP, per sample given eig; sizes differ per sample, so also time / |Y|^2
    kp, keep, m0 = jdpp._dpp_phase1(keys[0], lam_j)
    c_dpp = _compile_s(jdpp._project, kp, V_j, keep, static=(jdpp._bucket(int(m0), n),))
    for kk in keys:  # compile every width bucket these keys need, outside the timing
        _block(jdpp.sample_dpp_spectral(kk, spec))
    sizes, dsizes = [], []
    tj = _times(lambda i: sizes.append(int(_block(jdpp.sample_dpp_spectral(keys[i + 1], spec)).sum())), reps)
    td = _times(lambda i: dsizes.append(len(dpp.sample_exact(mode="GS", random_state=rng))), reps)
    t_eig_d = [max(t - float(np.median(td)), 0.0) for t in t_first_d]
    rows.append(dict(N=n, task="eig (one-off)", jax=t_eig_j, peer=t_eig_d, compile=c_eig,
                     note="DPPy: a fresh FiniteDPP's first sample_exact minus the median per-sample time"))
    rows.append(dict(N=n, task="DPP sample given eig (raw, sizes differ)", jax=tj, peer=td, compile=c_dpp,
                     note=f"E|Y| = {esize:.1f}; mean |Y| jaxiap {np.mean(sizes):.1f}, DPPy {np.mean(dsizes):.1f}"))
    rows.append(dict(N=n, task="DPP sample given eig, per |Y|^2 (us)",
                     jax=[1e6 * t / max(m, 1) ** 2 for t, m in zip(tj, sizes)],
                     peer=[1e6 * t / max(m, 1) ** 2 for t, m in zip(td, dsizes)], compile=float("nan"),
                     note="each sample's time over its size squared (both samplers are O(N |Y|^2))"))

    # --- k-DPP, per sample given eig (equal sizes: k)
    c_k = _compile_s(jdpp._sample_kdpp_fixed, keys[0], lam_j, V_j, static=(k,))
    _block(jdpp.sample_kdpp_spectral(keys[0], spec, k))
    dpp.sample_exact_k_dpp(size=k, mode="GS", random_state=rng)  # DPPy: elementary symmetric polys, cached
    tjk = _times(lambda i: _block(jdpp.sample_kdpp_spectral(keys[i + 1], spec, k)), reps)
    tdk = _times(lambda i: dpp.sample_exact_k_dpp(size=k, mode="GS", random_state=rng), reps)
    rows.append(dict(N=n, task=f"k-DPP sample given eig (k={k}, equal sizes)", jax=tjk, peer=tdk, compile=c_k,
                     note=""))

    # --- public end-to-end calls (checks + eig + sample)
    _block(jdpp.sample_dpp(keys[0], Lj))
    te = _times(lambda i: _block(jdpp.sample_dpp(keys[i % reps + 1], Lj)), eig_reps)
    rows.append(dict(N=n, task="sample_dpp(key, L) end-to-end", jax=te, peer=t_first_d, compile=float("nan"),
                     note="jaxiap: checks + eigh (PSD check on its eigenvalues) + sample; DPPy: fresh FiniteDPP, "
                          "first sample"))
    return rows


def bench_greedy(n, k, reps, eig_reps, L, Lj) -> list[dict]:
    rows = []
    eps = jnp.asarray(1e-10)
    t0 = time.perf_counter()
    jdpp._greedy_map.lower(Lj, k, eps).compile()
    c_g = time.perf_counter() - t0
    _block(jdpp._greedy_map(Lj, k, eps))
    tg = _times(lambda i: _block(jdpp._greedy_map(Lj, k, eps)), reps)
    tn = _times(lambda i: greedy_map_numpy(L, k), reps)
    same = np.array_equal(np.asarray(jdpp._greedy_map(Lj, k, eps)[0]), greedy_map_numpy(L, k))
    rows.append(dict(N=n, task=f"greedy MAP core (k={k})", jax=tg, peer=tn, compile=c_g,
                     note=f"peer: numpy Chen et al. 2018; same indices: {same}"))
    _block(jdpp.greedy_map(Lj, k)[0])
    tpub = _times(lambda i: _block(jdpp.greedy_map(Lj, k)[0]), reps)
    rows.append(dict(N=n, task=f"greedy_map(L, k) public (k={k})", jax=tpub, peer=tn,
                     compile=float("nan"), note="jaxiap: default check (symmetry, diagonal >= 0), O(N^2)"))
    if eig_reps:
        tfull = _times(lambda i: _block(jdpp.greedy_map(Lj, k, check="full")[0]), eig_reps)
        rows.append(dict(N=n, task=f"greedy_map(L, k, check='full') (k={k})", jax=tfull, peer=tn,
                         compile=float("nan"), note="jaxiap: + O(N^3) eigvalsh PSD check"))
    return rows


def _fmt(x):
    if x != x:  # nan
        return "-"
    return f"{x:.3g}" if x < 100 else f"{x:.0f}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 2000])
    ap.add_argument("--k", type=int, default=50, help="k-DPP size and greedy MAP steps")
    ap.add_argument("--reps", type=int, default=20, help="samples / calls timed per sampling and greedy row")
    ap.add_argument("--eig-reps", type=int, default=5,
                    help="calls timed per row that contains an O(N^3) eigendecomposition")
    ap.add_argument("--exact-max-n", type=int, default=2000,
                    help="above this N only greedy MAP (core and default public call) is timed")
    ap.add_argument("--no-check", action="store_true", help="skip the tiny correctness check")
    ap.add_argument("--quick", action="store_true", help="tiny smoke run: N = 200, k = 10, 5 reps, no check")
    args = ap.parse_args(argv)
    if args.quick:
        args.sizes, args.k, args.reps, args.eig_reps, args.no_check = [200], 10, 5, 5, True
    if FiniteDPP is None:
        print("DPPy is not installed (pip install dppy, or the project's [bench] extra)", file=sys.stderr)
        return 2
    t_all = time.perf_counter()
    header("bench/dpp.py")
    print(f"# jax {jax.__version__}, numpy {np.__version__}")
    if not args.no_check:
        for line in correctness():
            print(line, flush=True)
    rows = []
    for n in args.sizes:
        t0 = time.perf_counter()
        rows += bench_one(n, args.k, args.reps, args.eig_reps, args.exact_max_n)
        print(f"N={n} done in {time.perf_counter() - t0:.1f} s (load average {load()})", flush=True)
    print()
    print("Times in s (the per-|Y|^2 row in us): median (min-max, n = calls or samples); ratio = median peer / "
          "median jaxiap (> 1: jaxiap faster)\n")
    print("| N | task | jaxiap | peer | peer / jaxiap | jaxiap compile s | note |")
    print("|---:|---|---|---|---:|---:|---|")
    for r in rows:
        ratio = med(r["peer"]) / med(r["jax"]) if med(r["jax"]) > 0 else float("nan")
        print(f"| {r['N']} | {r['task']} | {spread(r['jax'])} | {spread(r['peer'])} | {ratio:.3g}x | "
              f"{_fmt(r['compile'])} | {r['note']} |")
    footer(time.perf_counter() - t_all)
    return 0


if __name__ == "__main__":
    sys.exit(main())
