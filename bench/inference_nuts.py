"""NUTS (numpyro, via jaxiap) vs adaptive Metropolis on the LJ13 linear-potential posterior.

What is measured
----------------
The posterior of a K = 8 Chebyshev radial-basis linear potential fitted to
LJ13 energies and forces (``lj13_dataset``: Langevin snapshots at kT = 0.30,
exact LJ labels; every energy and force row, weights from the dataset):

    c ~ N(0, s0^2 I) (s0 = 1e3 max |c_lstsq|, effectively flat),
    y_r ~ N(A_r c, sig^2 / w_r),  sig^2 = the least-squares residual variance (fixed).

The posterior is Gaussian, so the exact mean and covariance are known
(``fit_blr``); it is also very strongly correlated (the radial-basis columns
are nearly collinear), which is what makes it a sampler benchmark. Both
samplers evaluate the *same* log density, the numpyro potential energy of the
model over all rows (no sufficient-statistics shortcut), and start at the
least-squares solution.

* ``NUTS``: numpyro NUTS with dense mass-matrix adaptation (step size and
  mass adapted during warmup), target acceptance 0.8, ``--chains`` chains
  vmapped, started from the same diagonal inverse mass diag(1 / diag(H)) as
  AM's first proposal, with numpyro's mass-matrix regularisation (shrinkage
  toward 1e-3 I) off: with it, on this posterior (sds ~1e-4), NUTS needs
  hundreds of leapfrog steps per draw (``--also-numpyro-default`` adds that
  run as a third row). The warmup + sampling loop is one ``lax.scan`` compiled ahead of
  time, so the timed call excludes compilation. Log-density evaluations are
  counted as leapfrog steps (``num_steps``; each is one value-and-gradient).
* ``AM``: random-walk adaptive Metropolis (Haario, Saksman & Tamminen 2001;
  the AMCMC used by pytuq / FitSNAP UQ workflows): proposal N(x, C_t) with
  C_t = (2.4^2 / d) (Cov(x_0..x_{t-1}) + eps I) refreshed every ``--tadapt``
  steps after ``--t0`` steps, and C_0 = (2.4^2 / d) diag(1 / diag(H)) with H
  the posterior precision (a warm start AM users rarely have). One
  log-density evaluation per step, no gradient. It gets exactly as many
  evaluations per chain as NUTS used (warmup + sampling), and discards the
  same fraction as burn-in that NUTS spent in warmup.

Reported per sampler: min over coefficients of the bulk ESS
(``numpyro.diagnostics.effective_sample_size`` over all chains), ESS per
1000 log-density evaluations, ESS per second of sampling wall time, the
compile time, and the error of the sample mean (in posterior sds) and of the
sample sds (ratio) against the exact posterior. "ratio" = NUTS / AM.

Run ``python bench/inference_nuts.py --help`` for the options.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np


def build_problem(n_traj: int, n_samples: int, n_basis: int, seed: int):
    import jax.numpy as jnp

    from jaxiap.descriptors.radial import RadialBasis
    from jaxiap.inference.linear import fit_blr, fit_lstsq
    from jaxiap.potentials.linear import LinearBasis, design_matrix
    from jaxiap.systems.lj import lj13_dataset

    ds = lj13_dataset(seed=seed, n_trajectories=n_traj, n_samples=n_samples, sample_every=100, kT=0.30)
    basis = LinearBasis(RadialBasis("chebyshev", n_basis, 0.8, 3.0))
    dm = design_matrix(basis, ds)
    keep = np.asarray(dm.w) > 0
    A, y, w = (jnp.asarray(np.asarray(v)[keep]) for v in (dm.A, dm.y, dm.w))
    ls = fit_lstsq(dm)
    sig2 = float(ls.noise_var)
    s0 = 1e3 * float(np.abs(np.asarray(ls.mean)).max())
    exact = fit_blr(dm, prior_precision=1.0 / s0**2, noise_var=sig2)
    return A, y, w, sig2, s0, np.asarray(ls.mean), exact


def linear_model(A, y, w, sig2, s0):
    """c ~ N(0, s0^2 I), y ~ N(A c, sig2 / w) (numpyro)."""
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist

    c = numpyro.sample("c", dist.Normal(jnp.zeros(A.shape[1]), s0).to_event(1))
    numpyro.factor("loglik", -0.5 * jnp.sum(w * (y - A @ c) ** 2) / sig2)


def run_nuts_bench(potential, c0, chains, warmup, samples, seed, inv_mass=None, regularize=True):
    import jax
    import jax.numpy as jnp
    from numpyro.infer.hmc import hmc

    init_kernel, sample_kernel = hmc(potential_fn=potential, algo="NUTS")
    keys = jax.random.split(jax.random.key(seed), chains)
    init = jnp.broadcast_to(c0, (chains, c0.shape[0]))
    state0 = jax.vmap(lambda z, k: init_kernel(z, warmup, dense_mass=True, target_accept_prob=0.8,
                                               inverse_mass_matrix=inv_mass, regularize_mass_matrix=regularize,
                                               rng_key=k))(init, keys)
    vsample = jax.vmap(sample_kernel)

    def loop(state):
        def step(s, _):
            s = vsample(s)
            return s, (s.z, s.num_steps, s.diverging)

        return jax.lax.scan(step, state, None, length=warmup + samples)[1]

    t0 = time.perf_counter()
    compiled = jax.jit(loop).lower(state0).compile()
    t_compile = time.perf_counter() - t0
    t0 = time.perf_counter()
    z, steps, div = jax.block_until_ready(compiled(state0))
    wall = time.perf_counter() - t0
    z = np.asarray(z).transpose(1, 0, 2)  # (chains, T, K)
    steps = np.asarray(steps).T
    return dict(draws=z[:, warmup:], evals=steps.sum(axis=1), warm_evals=steps[:, :warmup].sum(axis=1),
                divergent=int(np.asarray(div)[warmup:].sum()), wall=wall, compile=t_compile)


def run_am_bench(logp, c0, C0, chains, n_steps, t0_adapt, tadapt, seed):
    """Haario adaptive Metropolis, ``chains`` vmapped chains of ``n_steps`` steps each."""
    import jax
    import jax.numpy as jnp

    d = c0.shape[0]
    sd = 2.4**2 / d
    eps = 1e-10 * float(np.trace(C0)) / d

    def one_chain(key):
        L0 = jnp.linalg.cholesky(C0)

        def step(carry, key_t):
            x, lp, mean, m2, t, L, acc = carry
            k1, k2 = jax.random.split(key_t)
            prop = x + L @ jax.random.normal(k1, (d,), x.dtype)
            lp_prop = logp(prop)
            accept = jnp.log(jax.random.uniform(k2, dtype=x.dtype)) < lp_prop - lp
            x = jnp.where(accept, prop, x)
            lp = jnp.where(accept, lp_prop, lp)
            # Welford running mean and scatter of the chain (including repeats)
            t1 = t + 1
            delta = x - mean
            mean = mean + delta / t1
            m2 = m2 + jnp.outer(delta, x - mean)
            refresh = (t1 > t0_adapt) & (t1 % tadapt == 0)
            L = jax.lax.cond(refresh,
                             lambda: jnp.linalg.cholesky(sd * (m2 / (t1 - 1) + eps * jnp.eye(d))),
                             lambda: L)
            return (x, lp, mean, m2, t1, L, acc + accept), x

        carry = (c0, logp(c0), jnp.zeros(d), jnp.zeros((d, d)), jnp.asarray(0), L0, jnp.asarray(0))
        carry, xs = jax.lax.scan(step, carry, jax.random.split(key, n_steps))
        return xs, carry[-1]

    keys = jax.random.split(jax.random.key(seed + 1), chains)
    t0 = time.perf_counter()
    compiled = jax.jit(jax.vmap(one_chain)).lower(keys).compile()
    t_compile = time.perf_counter() - t0
    t0 = time.perf_counter()
    xs, acc = jax.block_until_ready(compiled(keys))
    wall = time.perf_counter() - t0
    return dict(draws=np.asarray(xs), accept=np.asarray(acc) / n_steps, wall=wall, compile=t_compile)


def summarize(name, draws, evals, wall, compile_s, exact_mean, exact_sd):
    from numpyro.diagnostics import effective_sample_size

    ess = np.asarray(effective_sample_size(draws))
    flat = draws.reshape(-1, draws.shape[-1])
    mean_err = np.max(np.abs(flat.mean(0) - exact_mean) / exact_sd)
    sd_ratio = flat.std(0) / exact_sd
    return dict(name=name, min_ess=float(ess.min()), evals=int(evals), ess_per_kevals=1e3 * float(ess.min()) / evals,
                ess_per_s=float(ess.min()) / wall, wall=wall, compile=compile_s, mean_err_sd=float(mean_err),
                sd_ratio_min=float(sd_ratio.min()), sd_ratio_max=float(sd_ratio.max()))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--trajectories", type=int, default=8, help="LJ13 MD trajectories (default 8)")
    p.add_argument("--snapshots", type=int, default=40, help="snapshots per trajectory (default 40)")
    p.add_argument("--n-basis", type=int, default=8, help="radial basis size K (default 8)")
    p.add_argument("--chains", type=int, default=4)
    p.add_argument("--warmup", type=int, default=500)
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--t0", type=int, default=1000, help="AM: steps before adaptation starts")
    p.add_argument("--tadapt", type=int, default=100, help="AM: refresh the proposal every tadapt steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--also-numpyro-default", action="store_true",
                   help="add a NUTS run with numpyro's defaults (identity initial mass, mass matrix regularised "
                        "toward 1e-3 I): slow on this posterior, whose standard deviations are ~1e-4")
    args = p.parse_args(argv)

    import jax
    import jax.numpy as jnp

    import jaxiap  # noqa: F401  (float64)
    from numpyro.infer.util import initialize_model

    t = time.perf_counter()
    A, y, w, sig2, s0, c_ls, exact = build_problem(args.trajectories, args.snapshots, args.n_basis, args.seed)
    print(f"LJ13 design: {A.shape[0]} rows x K = {A.shape[1]} ({time.perf_counter() - t:.1f} s to build); "
          f"sig^2 = {sig2:.3g}")
    exact_mean, exact_cov = np.asarray(exact.mean), np.asarray(exact.cov)
    exact_sd = np.sqrt(np.diag(exact_cov))
    corr = exact_cov / np.outer(exact_sd, exact_sd)
    print(f"posterior: max |correlation| = {np.abs(corr - np.eye(len(corr))).max():.6f}, "
          f"condition number of the covariance = {np.linalg.cond(exact_cov):.3g}")

    info = initialize_model(jax.random.key(0), linear_model, model_args=(A, y, w, sig2, s0))
    pe = info.potential_fn  # dict -> -log density (identity transform for a real-valued site)
    potential = lambda c: pe({"c": c})  # noqa: E731
    c0 = jnp.asarray(c_ls)

    H = np.linalg.inv(exact_cov)
    diag_warm = np.diag(1.0 / np.diag(H))  # the same diagonal warm start for both samplers
    nuts = run_nuts_bench(potential, c0, args.chains, args.warmup, args.samples, args.seed,
                          jnp.asarray(diag_warm), regularize=False)
    evals_per_chain = int(np.round(nuts["evals"].mean()))
    warm_frac = float(nuts["warm_evals"].sum() / nuts["evals"].sum())
    C0 = jnp.asarray(diag_warm * 2.4**2 / len(c_ls))
    am = run_am_bench(lambda c: -potential(c), c0, C0, args.chains, evals_per_chain, args.t0, args.tadapt, args.seed)
    burn = int(round(warm_frac * evals_per_chain))

    rows = [
        summarize("NUTS (numpyro, dense mass, unregularised)", nuts["draws"], int(nuts["evals"].sum()),
                  nuts["wall"], nuts["compile"], exact_mean, exact_sd),
        summarize("AM (Haario, random walk)", am["draws"][:, burn:], evals_per_chain * args.chains, am["wall"],
                  am["compile"], exact_mean, exact_sd),
    ]
    if args.also_numpyro_default:
        nd = run_nuts_bench(potential, c0, args.chains, args.warmup, args.samples, args.seed)
        rows.append(summarize("NUTS (numpyro defaults: identity start, regularised mass)", nd["draws"],
                              int(nd["evals"].sum()), nd["wall"], nd["compile"], exact_mean, exact_sd))
    print(f"\nchains {args.chains}; NUTS warmup {args.warmup} + samples {args.samples} iterations; "
          f"{evals_per_chain} log-density evaluations per chain for both ({100 * warm_frac:.0f}% in NUTS warmup = "
          f"AM burn-in); NUTS divergences {nuts['divergent']}; AM acceptance "
          f"{am['accept'].mean():.3f}")
    hdr = ("sampler", "min ESS", "evals", "ESS/1k evals", "ESS/s", "sample s", "compile s", "max|mean err|/sd",
           "sd ratio")
    print("| " + " | ".join(hdr) + " |")
    print("|" + "---|" * len(hdr))
    for r in rows:
        print(f"| {r['name']} | {r['min_ess']:.0f} | {r['evals']} | {r['ess_per_kevals']:.3g} | {r['ess_per_s']:.3g} | "
              f"{r['wall']:.2f} | {r['compile']:.1f} | {r['mean_err_sd']:.3f} | "
              f"{r['sd_ratio_min']:.2f}-{r['sd_ratio_max']:.2f} |")
    n, a = rows[:2]
    print(f"\nratio NUTS / AM: min ESS per evaluation {n['ess_per_kevals'] / max(a['ess_per_kevals'], 1e-300):.3g}x, "
          f"min ESS per second {n['ess_per_s'] / max(a['ess_per_s'], 1e-300):.3g}x")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"jax {jax.__version__} on {jax.devices()[0].platform}")


if __name__ == "__main__":
    main()
