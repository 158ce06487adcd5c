"""Stein variational MD of LJ13: step cost against plain Langevin, an energy-histogram check, variance collapse.

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
  kernel noise and the SVGD drift (the variant that keeps p^N exactly up to
  the Euler time-step error: fixed bandwidth, no fixed set), 16 sets of
  N = 8 LJ13 configurations started from equilibrated Langevin frames, at
  kT = 0.25, against BAOAB Langevin (``jaxiap.systems.sampling.
  langevin_samples``): integrated autocorrelation times and effective
  sample sizes of the potential energy for both, two-sample KS test on the
  samples thinned to one per 2 autocorrelation times, means and variances.
* ``--collapse`` (``variance_collapse``): deterministic SVGD (RBF, median
  bandwidth) of N in {4, 8, 16, 32, 64} LJ13 configurations in the 33
  vibrational normal coordinates of the minimum: the set's variance per
  coordinate against the harmonic kT tr(H^+)/39 and aligned Langevin frames.
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


def integrated_autocorr_time(chains, c=5.0):
    """Integrated autocorrelation time (in samples) of chains (C, T) of one observable, pooled over the chains.

    The autocorrelation function is the chains' FFT autocovariances (around
    the grand mean) averaged over chains and normalised at lag 0; tau = 1 +
    2 sum_{t=1}^{W} rho(t) with Sokal's automatic window: the smallest W
    with W >= c tau(W). tau = 1 for independent samples.
    """
    x = np.asarray(chains, dtype=float)
    x = np.atleast_2d(x) - x.mean()
    t = x.shape[1]
    f = np.fft.rfft(x, 2 * t, axis=1)
    acov = np.fft.irfft(f * np.conj(f), axis=1)[:, :t].mean(axis=0)
    rho = acov / acov[0]
    taus = 1.0 + 2.0 * np.cumsum(rho[1:])
    ok = np.nonzero(np.arange(1, t) >= c * taus)[0]
    return float(taus[ok[0]] if ok.size else taus[-1])


def thin(chains, tau, per_tau=2.0):
    """Every ceil(per_tau * tau)-th sample of each chain (C, T), flattened; and the stride."""
    stride = max(1, int(np.ceil(per_tau * tau)))
    return np.asarray(chains)[:, ::stride].ravel(), stride


def lj13_stein_energy_check(n_particles=8, n_sets=16, dt=4e-4, n_steps=12_000, every=20, n_burn=50, h_scale=0.25,
                            lang_traj=32, lang_samples=2000, lang_every=40, lang_equilibrate=20_000, per_tau=2.0,
                            seed=0, verbose=True):
    """Two-sample KS test of LJ13 potential energies, stochastic Stein MD vs BAOAB Langevin at kT = 0.25.

    Stein: n_sets independent sets of n_particles configurations, kernel
    noise and the SVGD drift (the variant that keeps p^N exactly up to the
    Euler error), RBF on radial features with a FIXED bandwidth h = h_scale
    x the median rule of the start configurations; dt in the overdamped
    unit (diffusion coefficient 1). The start configurations are
    equilibrated: the last frames of n_sets * n_particles independent BAOAB
    trajectories after lang_equilibrate steps from the minimum (about 3
    energy autocorrelation times). Each particle's energy series after
    n_burn samples is one chain.
    Langevin reference: lang_traj independent BAOAB trajectories (gamma 1,
    dt 0.005, lang_equilibrate steps, then lang_samples frames every
    lang_every steps), other keys.
    For each method, tau = integrated autocorrelation time of the energy
    (:func:`integrated_autocorr_time`, pooled over its chains); ESS = samples
    / tau; the KS test takes every ceil(per_tau * tau)-th sample of each
    chain. Returns a dict (ks_p, ks_stat on the thinned samples; the
    nominal ks on all samples; taus, ESS, thinned counts, means with
    standard errors, variance ratio, wall time).
    """
    from scipy.stats import ks_2samp  # lazy: SciPy only for this check

    t0 = time.perf_counter()
    score = stein.energy_score_fn(lj_energy, KT)
    n_start = n_sets * n_particles
    starts = langevin_samples(jax.random.key(seed + 1), lj_energy, lj13_minimum(), n_start, 1, 1, KT,
                              n_equilibrate=lang_equilibrate)[:, 0]
    x0 = starts.reshape(n_sets, n_particles, 13, 3)
    h = h_scale * float(stein.median_bandwidth(jax.vmap(DESCRIPTOR.structure)(starts)))
    kernel = stein.SteinKernel(features=DESCRIPTOR.structure, bandwidth=h)
    run = jax.jit(jax.vmap(lambda k, x: stein.run_stein_langevin(k, score, x, kernel, dt=dt, n_steps=n_steps,
                                                                 every=every, noise="kernel",
                                                                 observe=jax.vmap(lj_energy))))
    traj = run(jax.random.split(jax.random.key(seed), n_sets), x0)
    e_stein = np.asarray(traj.samples)[:, n_burn:]  # (sets, T, particles)
    e_stein = e_stein.transpose(0, 2, 1).reshape(n_start, -1)  # one chain per particle
    t_stein = time.perf_counter() - t0
    frames = langevin_samples(jax.random.key(seed + 2), lj_energy, lj13_minimum(), lang_traj, lang_samples,
                              lang_every, KT, n_equilibrate=lang_equilibrate)
    e_lang = np.asarray(jax.vmap(jax.vmap(lj_energy))(frames))  # (traj, samples)
    tau_s, tau_l = integrated_autocorr_time(e_stein), integrated_autocorr_time(e_lang)
    thin_s, stride_s = thin(e_stein, tau_s, per_tau)
    thin_l, stride_l = thin(e_lang, tau_l, per_tau)
    ks = ks_2samp(thin_s, thin_l)
    ks_all = ks_2samp(e_stein.ravel(), e_lang.ravel())
    ess_s, ess_l = e_stein.size / tau_s, e_lang.size / tau_l
    out = dict(ks_stat=float(ks.statistic), ks_p=float(ks.pvalue), n_thin_stein=thin_s.size, n_thin_lang=thin_l.size,
               tau_stein_steps=tau_s * every, tau_stein_time=tau_s * every * dt, tau_lang_steps=tau_l * lang_every,
               tau_lang_time=tau_l * lang_every * 0.005, stride_stein=stride_s, stride_lang=stride_l,
               ess_stein=ess_s, ess_lang=ess_l, n_stein=e_stein.size, n_lang=e_lang.size,
               mean_stein=float(e_stein.mean()), se_mean_stein=float(e_stein.std() / np.sqrt(ess_s)),
               mean_lang=float(e_lang.mean()), se_mean_lang=float(e_lang.std() / np.sqrt(ess_l)),
               var_stein=float(e_stein.var()), var_lang=float(e_lang.var()),
               variance_ratio=float(e_stein.var() / e_lang.var()), ks_stat_all=float(ks_all.statistic),
               ks_p_all_nominal=float(ks_all.pvalue), bandwidth=h,
               mean_kernel_max=float(np.mean(traj.kernel_max)), wall_stein_s=t_stein,
               wall_s=time.perf_counter() - t0)
    if verbose:
        print("# LJ13 kT=0.25: Stein (kernel noise, SVGD drift, fixed h) %d sets x %d particles, dt=%g, %d steps, "
              "every %d, burn %d samples; BAOAB %d x %d every %d; thinned at %g tau"
              % (n_sets, n_particles, dt, n_steps, every, n_burn, lang_traj, lang_samples, lang_every, per_tau))
        for k, v in out.items():
            print(f"{k:>18s}  {v:.6g}" if isinstance(v, float) else f"{k:>18s}  {v}", flush=True)
    return out


def _vibrational_modes(kT=KT):
    """(x_min (39,), U (39, 33) vibrational normal modes, harmonic variances kT / lambda (33,)) of the LJ13 minimum."""
    xmin = jnp.asarray(lj13_minimum()).ravel()
    hess = np.asarray(jax.hessian(lambda v: lj_energy(v.reshape(13, 3)))(xmin))
    w, u = np.linalg.eigh(hess)
    return np.asarray(xmin), u[:, 6:], kT / w[6:]


def _kabsch(frames, ref):
    """frames (F, 13, 3) rotated (proper rotations) and translated onto ref (13, 3), no permutation."""
    ref = ref - ref.mean(axis=0)
    out = np.empty_like(frames)
    for i, x in enumerate(frames):
        x = x - x.mean(axis=0)
        u, _, vt = np.linalg.svd(x.T @ ref)
        d = np.sign(np.linalg.det(u @ vt))
        out[i] = x @ (u @ np.diag([1.0, 1.0, d]) @ vt)
    return out


def variance_collapse(ns=(4, 8, 16, 32, 64), n_steps=10_000, step=5e-4, scale=0.02, seed=0, lang_traj=16,
                      lang_samples=200, lang_every=20, verbose=True):
    """Deterministic SVGD on LJ13 at kT = 0.25: the particle set's variance against Langevin's, N in ns.

    Coordinates: the 33 vibrational normal coordinates q of the minimum,
    x = x_min + U q (U the Hessian's eigenvectors with non-zero eigenvalue),
    target exp(-E(x_min + U q)/kT). In Cartesian coordinates the 3
    rotational zero modes are flat: the repulsion spreads the particles
    along them, the median bandwidth grows with that spread, and the
    vibrational variance collapses to ~0 (a trial run, N = 4 and 8, 2000
    iterations: vibrational variance < 0.1% of harmonic, all the spread
    rotational), so the zero modes are removed here.
    SVGD: RBF with the median bandwidth on the identity features of q
    (d = 33), SVGD drift, sgd step ``step`` (x <- x + step phi), n_steps
    iterations from q = scale * N(0, 1). Reported per N: ``var_coord`` =
    sum over the 33 modes of the set's variance around its mean / 39
    (the per-Cartesian-coordinate variance with centre of mass and
    rotations removed), its ratio to the harmonic value kT tr(H^+) / 39,
    and the median over modes of (modal variance) / (kT / lambda).
    Langevin reference: lang_traj BAOAB trajectories from the minimum (200
    steps equilibration, then lang_samples frames every lang_every steps:
    20 time units, inside the icosahedral basin), Kabsch-aligned to the
    minimum, projected on the same modes.
    """
    t0 = time.perf_counter()
    xmin, u, harm = _vibrational_modes()
    harm_coord = harm.sum() / 39
    frames = langevin_samples(jax.random.key(seed + 3), lj_energy, lj13_minimum(), lang_traj, lang_samples,
                              lang_every, KT, n_equilibrate=200)
    fr = _kabsch(np.asarray(frames).reshape(-1, 13, 3), lj13_minimum()).reshape(-1, 39)
    q = (fr - xmin) @ u
    lang = dict(var_coord=float(q.var(axis=0).sum() / 39), mode_ratio_median=float(np.median(q.var(axis=0) / harm)))
    lang["ratio"] = lang["var_coord"] / harm_coord
    xmin_j, u_j = jnp.asarray(xmin), jnp.asarray(u)
    score = stein.energy_score_fn(lambda qq: lj_energy((xmin_j + u_j @ qq).reshape(13, 3)), KT)
    rows = []
    for n in ns:
        q0 = scale * np.random.RandomState(seed).normal(size=(n, u.shape[1]))
        r = stein.run_svgd(score, q0, stein.SteinKernel(), n_steps=n_steps, step_size=step)
        qn = np.asarray(r.positions)
        var = float(qn.var(axis=0).sum() / 39)
        rows.append(dict(n=n, var_coord=var, ratio=var / harm_coord,
                         mode_ratio_median=float(np.median(qn.var(axis=0) / harm)),
                         drift_norm=float(r.drift_norm[-1])))
    out = dict(harmonic_var_coord=harm_coord, langevin=lang, svgd=rows, wall_s=time.perf_counter() - t0)
    if verbose:
        print("# LJ13 kT=0.25, deterministic SVGD in the 33 vibrational normal coordinates (RBF median, identity "
              "features, sgd %g, %d iterations, start %g N(0,1)); harmonic kT tr(H+)/39 = %.5f"
              % (step, n_steps, scale, harm_coord))
        print("| set | variance per coordinate | ratio to harmonic | median modal ratio | final mean drift norm |")
        print("|---|---|---|---|---|")
        print(f"| Langevin BAOAB ({lang_traj} x {lang_samples} frames, aligned) | {lang['var_coord']:.5f} | "
              f"{lang['ratio']:.3f} | {lang['mode_ratio_median']:.3f} | - |")
        for row in rows:
            print(f"| SVGD N = {row['n']} | {row['var_coord']:.5f} | {row['ratio']:.3f} | "
                  f"{row['mode_ratio_median']:.3f} | {row['drift_norm']:.2e} |")
        print(f"# wall {out['wall_s']:.0f} s", flush=True)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, nargs="+", default=[8, 32, 128])
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--check", action="store_true", help="run the LJ13 energy-histogram check instead")
    ap.add_argument("--collapse", action="store_true", help="run the SVGD variance-collapse table instead")
    args = ap.parse_args(argv)
    _common.header("stein_step")
    t0 = time.perf_counter()
    if args.check:
        lj13_stein_energy_check()
    elif args.collapse:
        variance_collapse()
    else:
        rows = step_cost(args.n, args.steps, args.repeats)
        base = {(n): ms for name, n, ms, _ in rows if name == "BAOAB block_langevin"}
        print(f"{'engine':<22s} {'N':>5s} {'ms/step':>10s} {'ms/config-step':>15s} {'x BAOAB':>8s}")
        for name, n, ms, per in rows:
            print(f"{name:<22s} {n:>5d} {ms:>10.3f} {per:>15.4f} {ms / base[n]:>8.1f}")
    _common.footer(time.perf_counter() - t0)


if __name__ == "__main__":
    main()
