"""Stein variational MD of LJ13: step cost against plain Langevin, and an energy-histogram check.

What is measured
----------------
* ``python bench/stein_step.py`` (step cost): N LJ13 configurations (N in
  --n, default 8 32 128), perturbed icosahedra, reduced units, kT = 0.25.
  One Stein step is :func:`jaxiap.md.stein.stein_langevin_step` (RBF kernel
  on a ``RadialDescriptor`` (8 Chebyshev functions, r_cut 3) of each
  configuration, median bandwidth recomputed every step, kernel noise
  K^{1/2} W via an N x N eigendecomposition; ``own_force`` False and True).
  Against it: the same N configurations under (a) an overdamped Euler step
  (vmapped forces + independent noise: the Stein step minus the kernel
  work) and (b) ``jaxiap.md.integrators.block_langevin`` BAOAB steps,
  vmapped over the N configurations. Each engine runs ``--steps`` steps in
  one jitted ``lax.scan``; compile first, then the median of ``--repeats``
  timed calls. Float64, one CPU device.
* ``--check`` (``lj13_stein_energy_check``): stochastic Stein MD with
  kernel noise (exact invariance of p^N up to the Euler time-step error:
  fixed bandwidth, no fixed set, SVGD drift) of N = 8 LJ13 configurations
  at kT = 0.25, against BAOAB Langevin (``jaxiap.systems.sampling.
  langevin_samples``): two-sample KS test of the potential energies and the
  ratio of the energy variances.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import jaxiap  # noqa: E402,F401  (float64)
from jaxiap.descriptors.radial import RadialBasis, RadialDescriptor  # noqa: E402
from jaxiap.md import integrators, stein  # noqa: E402
from jaxiap.systems.lj import icosahedron, lj13_minimum, lj_energy  # noqa: E402
from jaxiap.systems.sampling import langevin_samples  # noqa: E402

KT = 0.25
DESCRIPTOR = RadialDescriptor(RadialBasis(n_basis=8, r_min=0.8, r_cut=3.0))


def start_set(n, seed=0, scale=0.05):
    """(n, 13, 3) perturbed icosahedra."""
    return jnp.asarray(icosahedron()[None] + scale * np.random.RandomState(seed).normal(size=(n, 13, 3)))


def _time(fn, *args, repeats):
    out = fn(*args)
    jax.block_until_ready(out)
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        ts.append(time.perf_counter() - t)
    return float(np.median(ts))


def step_cost(ns=(8, 32, 128), steps=50, repeats=5, dt=1e-4):
    """Rows (engine, N, ms per step, ms per configuration-step)."""
    score = stein.energy_score_fn(lj_energy, KT)
    kernel = stein.SteinKernel(features=DESCRIPTOR.structure)
    rows = []
    for n in ns:
        x0 = start_set(n)
        key = jax.random.key(0)

        def stein_run(own):
            @jax.jit
            def run(key, x):
                def one(x, t):
                    x, info = stein.stein_langevin_step(jax.random.fold_in(key, t), x, score, kernel, dt=dt,
                                                        own_force=own)
                    return x, info["drift_norm"]
                return jax.lax.scan(one, x, jnp.arange(steps))
            return run

        @jax.jit
        def overdamped(key, x):
            def one(x, t):
                w = jax.random.normal(jax.random.fold_in(key, t), x.shape, x.dtype)
                return x + dt * jax.vmap(score)(x) + jnp.sqrt(2 * dt) * w, None
            return jax.lax.scan(one, x, jnp.arange(steps))

        init, run = integrators.block_langevin(lj_energy, dt=0.005, gamma=1.0, kT=KT, noise_dtype="float64")

        @jax.jit
        def baoab(key, x):
            st = jax.vmap(init)(jax.random.split(key, n), x)
            return jax.vmap(lambda s: run(s, 1, steps, lambda s: s.position[0, 0]))(st)

        for name, fn in (("stein (svgd drift)", stein_run(False)), ("stein (own force)", stein_run(True)),
                         ("overdamped Euler", overdamped), ("BAOAB block_langevin", baoab)):
            t = _time(fn, key, x0, repeats=repeats) / steps
            rows.append((name, n, 1e3 * t, 1e3 * t / n))
    return rows


def lj13_stein_energy_check(n_particles=8, dt=1e-4, n_steps=200_000, every=100, n_burn=200, seed=0, h_scale=0.25,
                            lang_traj=8, lang_samples=1000, lang_every=40, verbose=True):
    """KS test of LJ13 potential energies: stochastic Stein MD (kernel noise) vs BAOAB Langevin at kT = 0.25.

    The Stein set starts from N perturbed minima; the RBF bandwidth is fixed
    to h_scale times the median rule of a short overdamped warm-up set (so
    the kernel noise keeps p^N exactly, up to the time-step error; a small
    h_scale makes K nearly diagonal, so that each particle's own mobility
    is ~1/N instead of the set moving as one). Time dt in the overdamped unit
    (diffusion coefficient 1). Returns a dict:
    ks_p, ks_stat, mean/variance of E for both, variance_ratio (Stein over
    Langevin), the numbers of samples, and the wall time.
    """
    from scipy.stats import ks_2samp  # lazy: SciPy only for this check

    t0 = time.perf_counter()
    score = stein.energy_score_fn(lj_energy, KT)
    x0 = jnp.asarray(lj13_minimum()[None] + 0.05 * np.random.RandomState(seed).normal(size=(n_particles, 13, 3)))
    # warm-up (own force, independent noise: a repulsive overdamped run), then fix h by the median rule
    warm = stein.run_stein_langevin(jax.random.key(seed + 1), score, x0,
                                    stein.SteinKernel(features=DESCRIPTOR.structure), dt=dt, n_steps=2000,
                                    every=2000, noise="independent", own_force=True)
    feats = jax.vmap(DESCRIPTOR.structure)(warm.positions)
    h = h_scale * float(stein.median_bandwidth(feats))
    kernel = stein.SteinKernel(features=DESCRIPTOR.structure, bandwidth=h)
    traj = stein.run_stein_langevin(jax.random.key(seed), score, warm.positions, kernel, dt=dt, n_steps=n_steps,
                                    every=every, noise="kernel", observe=jax.vmap(lj_energy))
    e_stein = np.asarray(traj.samples)[n_burn:].ravel()
    frames = langevin_samples(jax.random.key(seed + 2), lj_energy, lj13_minimum(), lang_traj,
                                                      lang_samples, lang_every, KT, n_equilibrate=2000)
    e_lang = np.asarray(jax.vmap(jax.vmap(lj_energy))(frames)).ravel()
    ks = ks_2samp(e_stein, e_lang)
    out = dict(ks_p=float(ks.pvalue), ks_stat=float(ks.statistic), n_stein=e_stein.size, n_lang=e_lang.size,
               mean_stein=float(e_stein.mean()), mean_lang=float(e_lang.mean()), var_stein=float(e_stein.var()),
               var_lang=float(e_lang.var()), variance_ratio=float(e_stein.var() / e_lang.var()), bandwidth=h,
               mean_kernel_max=float(np.mean(traj.kernel_max[n_burn:])), wall_s=time.perf_counter() - t0)
    if verbose:
        print("# LJ13 kT=0.25, Stein kernel noise N=%d dt=%g steps=%d h_scale=%g vs BAOAB Langevin"
              % (n_particles, dt, n_steps, h_scale))
        for k, v in out.items():
            print(f"{k:>18s}  {v:.6g}" if isinstance(v, float) else f"{k:>18s}  {v}")
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, nargs="+", default=[8, 32, 128])
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--check", action="store_true", help="run the LJ13 energy-histogram check instead")
    args = ap.parse_args(argv)
    _common.header("stein_step")
    t0 = time.perf_counter()
    if args.check:
        lj13_stein_energy_check()
    else:
        rows = step_cost(args.n, args.steps, args.repeats)
        base = {(n): ms for name, n, ms, _ in rows if name == "BAOAB block_langevin"}
        print(f"{'engine':<22s} {'N':>5s} {'ms/step':>10s} {'ms/config-step':>15s} {'x BAOAB':>8s}")
        for name, n, ms, per in rows:
            print(f"{name:<22s} {n:>5d} {ms:>10.3f} {per:>15.4f} {ms / base[n]:>8.1f}")
    _common.footer(time.perf_counter() - t0)


if __name__ == "__main__":
    main()
