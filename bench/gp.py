"""GP force field training and prediction time against the training-set size (issue 14).

Data: EMT-labelled 32-atom FCC Al cells (a = 4.046 Å, every coordinate
perturbed uniformly by up to 5% of a, :func:`jaxiap.workflows.gp_error_tracking.perturbed_al`,
fixed seeds). The training set of size n is the force labels (3 components
each) of the first n atoms of the sequence cell 0 atoms 0..31, cell 1 atoms
0..31, ...; the block added by an update is the next ``--block`` (b) atoms.
Model: 2+3-body GP, r_cut = 5.4 Å, r_cut_3 = 3.2 Å (the :class:`GPSettings`
defaults), capacities from exact neighbour / triplet counts on the cells plus
2 slots; hyperparameters fixed (scaled to the force spread of cell 0 by
:func:`~jaxiap.workflows.gp_error_tracking.initial_hyperparameters`). Forces
only, so R = 3 n rows.

Per n, timed after a warm-up repetition at the same sizes (compilation), each
repetition starting from a GP factorised at n atoms:

(a) jaxiap ``GaussianProcess``: ``update()`` after adding b atoms, split into
    the kernel blocks of the b new environments against all (jitted, on the
    device; ``_compute_blocks``) and the rest (numpy assembly of the new Gram
    rows, O(n^2 b) Cholesky extension, solve); against ``refit()`` at n + b
    with the blocks cached (full Gram assembly + O(n^3) Cholesky) and cold
    (every block recomputed first, as after a length-scale change). The pure
    linear algebra of both is timed on the same K: the extension
    L21 = (L^-1 K12)^T, L22 = chol(K22 - L21 L21^T) against chol(K).
    jaxiap computes blocks at padded capacities (``gp._capacity``: powers of
    two, at least 16), so the update's "new blocks" are 16 x 2^k environment
    pairs for b = 4 new and n + 4 stored ones, and a cold refit 2^k x 2^k.
(b) reference: a dense numpy/scipy GP of the same model built from the
    autodiff reference blocks (``gp_kernels.block_matrix_autodiff``, jitted,
    compiled ahead of the timing), K assembled in numpy,
    ``scipy.linalg.cho_factor`` / ``cho_solve`` refits at n + b (no
    incremental update); its prediction (autodiff blocks query x train,
    ``derivative_blocks`` self-blocks for the prior variance, triangular
    solve). Only for n + b <= ``--ref-max`` (its blocks cost ~M^2 nested
    autodiff pair sums: ~1 s at M = 20, ~9 s at M = 68 on 2 loaded cores). The max
    differences of forces and stds between it and jaxiap (after the update)
    check that both are the same model.
(c) prediction of forces + std (``predict(..., energy_std=False)``) of one
    independent 32-atom structure with the n + b training atoms.

Medians (min-max) over ``--reps`` repetitions (``--ref-reps`` for the
reference). ``time.perf_counter``; device results are converted to numpy
inside the timed calls (blocking).

BLAS threads: numpy's OpenBLAS uses one thread per core by default. On a
2-core machine shared with other processes its threaded Cholesky of a
200 x 200 matrix took ~250 ms instead of ~0.3 ms single-threaded (threads
descheduled at the synchronisation points), which swamps every factorisation
in (a) and (b); ``--blas-threads 1`` sets ``OPENBLAS_NUM_THREADS`` /
``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` before numpy is imported. The
header prints the BLAS thread count in use.

Usage: ``python bench/gp.py [--sizes 8 16 32 64 128] [--block 4] [--reps 5] [--ref-reps 2]
[--ref-max 68] [--blas-threads N] [--quick]``
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's jaxiap
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _blas import set_blas_threads_from_argv  # noqa: E402  (imports no numpy)

set_blas_threads_from_argv(sys.argv[1:], default=None)  # before numpy loads OpenBLAS
from _common import footer, header, med, spread  # noqa: E402

import numpy as np  # noqa: E402
import scipy.linalg  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import jaxiap  # noqa: E402,F401  (float64)
from jaxiap.potentials.gp import GaussianProcess, GPSettings, structure_environments  # noqa: E402
from jaxiap.potentials.gp_kernels import block_matrix_autodiff, derivative_blocks  # noqa: E402
from jaxiap.workflows.gp_error_tracking import gp_settings, initial_hyperparameters, perturbed_al  # noqa: E402

N_CELL = 32


def blas_threads() -> str:
    """'openblas 2 (OPENBLAS_NUM_THREADS unset)' or similar, from threadpoolctl when installed."""
    env = os.environ.get("OPENBLAS_NUM_THREADS")
    note = f"OPENBLAS_NUM_THREADS={env}" if env else "OPENBLAS_NUM_THREADS unset"
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return note
    pools = [f"{p['internal_api']} {p['num_threads']}" for p in threadpool_info() if p["user_api"] == "blas"]
    return f"{', '.join(pools) or 'unknown'} ({note})"


# ----------------------------------------------------------------------------- data

def make_cells(n_atoms: int, delta: float = 0.05, seed: int = 0):
    """Enough labelled cells for n_atoms training atoms, and one independent test cell."""
    n_cells = -(-n_atoms // N_CELL)
    cells = [perturbed_al(delta, seed * 1000 + k) for k in range(n_cells)]
    test = perturbed_al(delta, seed * 1000 + 999)
    return cells, test


def atom_groups(start: int, stop: int):
    """[(cell index, [atom indices])] of the training atoms start..stop-1."""
    out = {}
    for k in range(start, stop):
        out.setdefault(k // N_CELL, []).append(k % N_CELL)
    return sorted(out.items())


def add_atoms(gp: GaussianProcess, cells, start: int, stop: int) -> None:
    for c, atoms in atom_groups(start, stop):
        s = cells[c]
        gp.add(s["positions"], s["cell"], forces=s["forces"], atoms=atoms)


# ----------------------------------------------------------------------------- reference

class DenseReference:
    """The same GP as dense numpy/scipy: autodiff blocks, numpy assembly, cho_factor refits, no updates."""

    def __init__(self, settings: GPSettings, hyp):
        self.settings, self.hyp = settings, hyp
        rc, rc3 = settings.r_cut, settings.r_cut_3
        self._blocks = jax.jit(lambda a, b, l2, l3: block_matrix_autodiff(a, b, rc, rc3, l2, l3, 3))
        self._self = jax.jit(jax.vmap(lambda e, l2, l3: derivative_blocks(e, e, rc, rc3, l2, l3, 3),
                                      in_axes=(0, None, None)))
        self._compiled = {}

    def compiled(self, kind, *args):
        """AOT-compiled block function for these shapes (compile time recorded, not in the timings)."""
        key = (kind,) + tuple(a.vectors.shape[0] for a in args)
        if key not in self._compiled:
            t = time.perf_counter()
            l = (jnp.asarray(self.hyp.l2), jnp.asarray(self.hyp.l3))
            fn = self._self.lower(_tuple(args[0]), *l) if kind == "self" else self._blocks.lower(*args, *l)
            compiled = fn.compile()
            self._compiled[key] = (compiled, time.perf_counter() - t)
        return self._compiled[key][0]

    def compile_time(self):
        return sum(v[1] for v in self._compiled.values())

    def _force_gram(self, b):
        """(N, M, 2, 4, 4) blocks -> (3N, 3M) force-force covariance (F = -dS/d delta on both sides)."""
        h = self.hyp
        k = h.sig2**2 * b[:, :, 0, 1:, 1:] + h.sig3**2 * b[:, :, 1, 1:, 1:]
        n, m = k.shape[:2]
        return k.transpose(0, 2, 1, 3).reshape(3 * n, 3 * m)

    def fit(self, envs, y):
        """Returns (blocks seconds, assembly + factorisation seconds)."""
        l = (jnp.asarray(self.hyp.l2), jnp.asarray(self.hyp.l3))
        f = self.compiled("blocks", envs, envs)
        t0 = time.perf_counter()
        b = np.asarray(f(envs, envs, *l))
        t1 = time.perf_counter()
        k = self._force_gram(b) + self.hyp.noise**2 * np.eye(len(y))
        self.cf = scipy.linalg.cho_factor(k, lower=True)
        self.alpha = scipy.linalg.cho_solve(self.cf, y)
        t2 = time.perf_counter()
        self.train = envs
        return t1 - t0, t2 - t1

    def predict(self, query):
        """Forces (N, 3) and their stds (noise excluded)."""
        l = (jnp.asarray(self.hyp.l2), jnp.asarray(self.hyp.l3))
        f = self.compiled("blocks", query, self.train)
        g = self.compiled("self", query)
        b = np.asarray(f(query, self.train, *l))
        kq = self._force_gram(b)                                           # (3N, R)
        mean = kq @ self.alpha
        v = scipy.linalg.solve_triangular(self.cf[0], kq.T, lower=True)
        sb = np.asarray(g(_tuple(query), *l))                              # (N, 2, 4, 4)
        h = self.hyp
        prior = (h.sig2**2 * np.diagonal(sb[:, 0, 1:, 1:], axis1=1, axis2=2)
                 + h.sig3**2 * np.diagonal(sb[:, 1, 1:, 1:], axis1=1, axis2=2)).reshape(-1)
        var = prior - np.sum(v**2, axis=0)
        n = query.vectors.shape[0]
        return mean.reshape(n, 3), np.sqrt(np.maximum(var, 0.0)).reshape(n, 3)


def _tuple(e):
    return (e.vectors, e.mask, e.species, e.center_species, e.triplets, e.triplet_mask)


def stacked_envs(cells, stop: int, settings: GPSettings):
    """Environments of training atoms 0..stop-1 stacked (the reference's training inputs) and their labels."""
    parts, y = [], []
    for c, atoms in atom_groups(0, stop):
        s = cells[c]
        env = structure_environments(s["positions"], s["cell"], None, settings)
        idx = jnp.asarray(atoms)
        parts.append(jax.tree_util.tree_map(lambda a: a[idx] if a.ndim else a, env))
        y.append(np.asarray(s["forces"])[atoms].reshape(-1))
    envs = jax.tree_util.tree_map(lambda *a: jnp.concatenate(a) if a[0].ndim else a[0], *parts)
    return envs, np.concatenate(y)


# ----------------------------------------------------------------------------- jaxiap timings

def jaxiap_repetition(settings, hyp, cells, test, n: int, b: int) -> dict:
    """One repetition at size n: factorise n, add b, time update / refit / linear algebra / prediction."""
    gp = GaussianProcess(settings, hyp)
    add_atoms(gp, cells, 0, n)
    gp.refit()
    l_old = gp._chol.copy()
    add_atoms(gp, cells, n, n + b)
    out = {}
    t0 = time.perf_counter()
    gp._compute_blocks(gp.hyperparameters)        # update's kernel blocks: b new environments x all
    t1 = time.perf_counter()
    gp.update()                                      # Gram rows of the new block, Cholesky extension, solve
    t2 = time.perf_counter()
    out["upd_blocks"], out["upd_rest"], out["upd"] = t1 - t0, t2 - t1, t2 - t0
    chol_upd = gp._chol.copy()
    k = gp.kernel_matrix()
    r0 = 3 * n
    t0 = time.perf_counter()
    l21 = scipy.linalg.solve_triangular(l_old, k[:r0, r0:], lower=True).T
    l22 = np.linalg.cholesky(k[r0:, r0:] - l21 @ l21.T)
    t1 = time.perf_counter()
    l_full = np.linalg.cholesky(k)
    t2 = time.perf_counter()
    out["lin_ext"], out["lin_chol"] = t1 - t0, t2 - t1
    out["ext_vs_chol"] = float(max(np.max(np.abs(l21 - l_full[r0:, :r0])), np.max(np.abs(l22 - l_full[r0:, r0:]))))
    t0 = time.perf_counter()
    gp.refit()                                       # blocks cached: full Gram + Cholesky + solve
    t1 = time.perf_counter()
    out["refit_warm"] = t1 - t0
    out["upd_vs_refit"] = float(np.max(np.abs(chol_upd - gp._chol)))
    gp._blocks = None                                # as after a length-scale change: every block again
    t0 = time.perf_counter()
    gp.refit()
    t1 = time.perf_counter()
    out["refit_cold"] = t1 - t0
    gp._chol = chol_upd                              # predict with the updated factor (the same model)
    gp._solve()
    t0 = time.perf_counter()
    p = gp.predict(test["positions"], test["cell"], energy_std=False)
    t1 = time.perf_counter()
    out["predict"] = t1 - t0
    out["pred"] = p
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[8, 16, 32, 64, 128],
                    help="training atoms n before the update")
    ap.add_argument("--block", type=int, default=4, help="atoms b added by one update")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--ref-reps", type=int, default=2)
    ap.add_argument("--ref-max", type=int, default=68, help="largest n + b for the autodiff reference")
    ap.add_argument("--blas-threads", type=int, default=None,
                    help="threads of numpy's BLAS (set before numpy loads; default: the library's own choice)")
    ap.add_argument("--quick", action="store_true", help="smoke run: n in 4 8, 2 reps, reference at both")
    args = ap.parse_args(argv)
    if args.quick:
        args.sizes, args.reps, args.ref_reps, args.ref_max = [4, 8], 2, 1, 12
    sizes, b = sorted(set(args.sizes)), args.block

    header("gp")
    t_start = time.perf_counter()
    cells, test = make_cells(max(sizes) + b)
    settings = gp_settings(cells + [test], 5.4, 3.2)
    probe = GaussianProcess(settings)
    add_atoms(probe, cells, 0, N_CELL)
    hyp = initial_hyperparameters(probe, float(np.std(cells[0]["forces"])))
    print(f"# model: r_cut {settings.r_cut} Å, r_cut_3 {settings.r_cut_3} Å, slots: {settings.max_neighbors} "
          f"neighbours, {settings.max_triplet_neighbors} triplet neighbours, {settings.max_triplets} triplets; "
          f"block b = {b}; reps {args.reps} (reference {args.ref_reps}); float64, "
          f"{jax.default_backend()} ({jax.device_count()} device)", flush=True)
    print(f"# numpy BLAS threads: {blas_threads()}", flush=True)
    print(f"# hyperparameters (fixed): sig2 {hyp.sig2:.4g}, l2 {hyp.l2}, sig3 {hyp.sig3:.4g}, l3 {hyp.l3}, "
          f"noise {hyp.noise:.4g} eV/Å", flush=True)

    rows = []
    ref = DenseReference(settings, hyp)
    for n in sizes:
        t_n = time.perf_counter()
        jaxiap_repetition(settings, hyp, cells, test, n, b)   # warm-up: compiles the shapes of this n
        reps = [jaxiap_repetition(settings, hyp, cells, test, n, b) for _ in range(args.reps)]
        row = dict(n=n, reps=reps)
        if n + b <= args.ref_max:
            envs, y = stacked_envs(cells, n + b, settings)
            q = structure_environments(test["positions"], test["cell"], None, settings)
            ref_fit, ref_pred = [], []
            ref.compiled("blocks", envs, envs), ref.compiled("blocks", q, envs), ref.compiled("self", q)
            for _ in range(args.ref_reps):
                ref_fit.append(ref.fit(envs, y))
                t0 = time.perf_counter()
                f_ref, s_ref = ref.predict(q)
                ref_pred.append(time.perf_counter() - t0)
            p = reps[-1]["pred"]
            row.update(ref_blocks=[a for a, _ in ref_fit], ref_lin=[c for _, c in ref_fit],
                       ref_fit=[a + c for a, c in ref_fit], ref_pred=ref_pred,
                       dF=float(np.max(np.abs(f_ref - p["forces"]))),
                       dstd=float(np.max(np.abs(s_ref - p["forces_std"]))),
                       std_scale=float(np.max(p["forces_std"])))
        rows.append(row)
        print(f"# n = {n} done in {time.perf_counter() - t_n:.0f} s (reference compile so far "
              f"{ref.compile_time():.0f} s)", flush=True)

    def col(row, key):
        return [r[key] for r in row["reps"]]

    ms = "{:.2f}"

    def t(xs):
        return spread(np.asarray(xs) * 1e3, ms)

    print()
    print(f"### (a) incremental update (n -> n + {b} atoms) vs refit at n + {b}, times in ms")
    print()
    print("| n | rows 3(n+b) | update: new blocks | update: Gram rows + extension + solve | update total | "
          "refit, blocks cached | refit, cold (all blocks) | refit cold / update | refit cached / update | "
          "linalg: extension O(n^2 b) | linalg: chol O(n^3) | chol / extension | max abs diff L (update vs refit) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        n = row["n"]
        print(f"| {n} | {3 * (n + b)} | {t(col(row, 'upd_blocks'))} | {t(col(row, 'upd_rest'))} | "
              f"{t(col(row, 'upd'))} | {t(col(row, 'refit_warm'))} | {t(col(row, 'refit_cold'))} | "
              f"{med(col(row, 'refit_cold')) / med(col(row, 'upd')):.2f} | "
              f"{med(col(row, 'refit_warm')) / med(col(row, 'upd')):.2f} | "
              f"{spread(np.asarray(col(row, 'lin_ext')) * 1e3, '{:.3f}')} | "
              f"{spread(np.asarray(col(row, 'lin_chol')) * 1e3, '{:.3f}')} | "
              f"{med(col(row, 'lin_chol')) / med(col(row, 'lin_ext')):.2f} | "
              f"{max(col(row, 'upd_vs_refit')):.1e} |")
    print()
    print(f"### (b) dense numpy/scipy reference (autodiff blocks, cho_factor refit at n + {b}) vs jaxiap, times in ms")
    print()
    print("| n | ref: autodiff blocks | ref: assembly + cho_factor + solve | ref fit total | jaxiap refit cold | "
          "ref / jaxiap refit cold | jaxiap update | ref / jaxiap update | ref predict | jaxiap predict | "
          "ref / jaxiap predict | max abs dF (eV/Å) | max abs d std (eV/Å) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    skipped = []
    for row in rows:
        n = row["n"]
        if "ref_fit" not in row:
            skipped.append(n)
            continue
        print(f"| {n} | {t(row['ref_blocks'])} | {t(row['ref_lin'])} | {t(row['ref_fit'])} | "
              f"{t(col(row, 'refit_cold'))} | {med(row['ref_fit']) / med(col(row, 'refit_cold')):.1f} | "
              f"{t(col(row, 'upd'))} | {med(row['ref_fit']) / med(col(row, 'upd')):.1f} | {t(row['ref_pred'])} | "
              f"{t(col(row, 'predict'))} | {med(row['ref_pred']) / med(col(row, 'predict')):.1f} | "
              f"{row['dF']:.1e} | {row['dstd']:.1e} (max std {row['std_scale']:.3g}) |")
    if skipped:
        print(f"\nReference skipped at n = {skipped} (n + b > --ref-max {args.ref_max}: its autodiff blocks grow "
              f"as M^2 nested-autodiff pair sums, ~9 s per fit at M = 68 on 2 cores).")
    print(f"Reference compile time (AOT, excluded above): {ref.compile_time():.1f} s.")
    print()
    print("### (c) prediction of forces + std, one 32-atom structure, against n + b training atoms (ms)")
    print()
    print("| n + b | jaxiap predict | per atom |")
    print("|---|---|---|")
    for row in rows:
        p = np.asarray(col(row, "predict"))
        print(f"| {row['n'] + b} | {t(p)} | {med(p) / N_CELL * 1e3:.3f} |")
    print()
    footer(time.perf_counter() - t_start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
