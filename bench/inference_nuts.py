"""NUTS through ``jaxiap.inference.mcmc.run_nuts`` vs adaptive Metropolis on the LJ13 linear-potential posterior.

What is measured
----------------
The posterior of a K = 8 Chebyshev radial-basis linear potential fitted to
LJ13 energies and forces (``lj13_dataset``: Langevin snapshots at kT = 0.30,
exact LJ labels; every energy and force row, weights from the dataset; by
default 2 trajectories x 40 snapshots = 3,200 design rows):

    c ~ N(0, s0^2 I) (s0 = 1e3 max |c_lstsq|, effectively flat),
    y_r ~ N(A_r c, sig^2 / w_r),  sig^2 = the least-squares residual variance (fixed).

The posterior is Gaussian, so the exact mean and covariance are known
(``fit_blr``); it is also very strongly correlated (the radial-basis columns
are nearly collinear), which is what makes it a sampler benchmark. Every
sampler evaluates the same log density over all rows (no
sufficient-statistics shortcut) and starts at the least-squares solution.

NUTS rows: the public ``run_nuts(model, key, ..., dense_mass=True,
init_params=...)`` (numpyro's NUTS kernel, target acceptance 0.8 unless
stated, ``--chains`` chains vectorised on one CPU device). Rows 1-3 run
``--warmup`` + ``--samples`` iterations and each changes ONE factor against
row 1:

1. ``defaults``: ``run_nuts`` defaults (mass-matrix regularisation on: numpyro
   shrinks the adapted mass matrix toward 1e-3 I).
2. ``unregularised``: only ``regularize_mass_matrix=False``.
3. ``reparametrised``: only the model changed: c = c_ls + s * z with
   s = 1 / sqrt(diag H) (H the posterior precision), sampled in z, which is
   O(1); regularisation on as in row 1. This is the advice in ``run_nuts``'s
   docstring and uses the same information as AM's warm start below.

Rows 4-5 precondition with the analytic posterior: ``inverse_mass_matrix=``
the exact BLR posterior (its ``covariance()``), ``adapt_mass_matrix=False``
(warmup tunes only the step size), ``pool_step_size=True`` (every chain
samples with the median of the chains' adapted step sizes, so the vectorised
chains build trees of equal size), ``--precond-warmup`` + ``--precond-samples``
iterations (default 150 + 2000):

4. ``precond``: target acceptance 0.8 (the default);
5. ``precond-tap0.6``: target acceptance 0.6 (near the 0.65 optimum for
   Gaussian targets of Beskos et al. 2013). On this posterior the adapted step
   size then exceeds ~1 (in whitened units), where NUTS stops at 3 leapfrog
   steps per iteration instead of 7.

Peers: random-walk adaptive Metropolis (Haario, Saksman & Tamminen 2001; the
AMCMC used by pytuq / FitSNAP UQ workflows): proposal N(x, C_t) with
C_t = (2.4^2 / d) (Cov(x_0..x_{t-1}) + eps I) refreshed every ``--tadapt``
steps after ``--t0`` steps, warm-started with C_0 = (2.4^2 / d) diag(1 / diag(H))
(``AM``, the peer of rows 1-3; a warm start AM users rarely have) or with
C_0 = (2.4^2 / d) Sigma, the exact posterior covariance (``AM, exact
covariance``: the same information rows 4-5 get). One log-density evaluation
per step, no gradient, ``--chains`` chains vmapped and jitted (compiled ahead
of time).

Evaluations. "ESS / 1k evals" is measured on the sampling phase for both:
NUTS min ESS over its post-warmup leapfrog steps (one value-and-gradient
each); AM min ESS over its post-burn-in steps (AM runs ``--am-steps`` steps per
chain and discards the first third as burn-in). "all evals" adds NUTS's
warmup leapfrog steps and AM's burn-in.

Time. ``run_nuts`` compiles its program (warmup + sampling of all chains) on
the first call with a given model, settings and shapes, and caches it: the
first repeat of each row compiles, the later ones do not. Per repeat, "run s"
is ``run_nuts``'s wall time minus its compile time (warmup + sampling +
transfers) and AM's run time; "compile s" is the first call's compile time
(``run_nuts``'s ``compile_time``: trace, lower and compile; AM:
``lower().compile()``). Two rates are reported: "ESS / s warm" = min ESS /
run s (compilation excluded, both samplers; the rate of every call after the
first), over all repeats; and "ESS / s first call" = min ESS / (compile s +
run s) of the first repeat (compilation included, both samplers).

Each row is repeated ``--repeats`` times (``--defaults-repeats`` for row 1,
whose runs take minutes) with different seeds (NUTS: the ``run_nuts`` key;
AM: the chain keys); the table gives the median and min-max.
Also reported: the error of the sample mean (in posterior sds) and the range of
sample sd / exact sd, from the first repeat.

Run ``python bench/inference_nuts.py --help`` for the options.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's jaxiap
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import footer, header, load, med, spread  # noqa: E402


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


def scaled_model(A, y, w, sig2, s0, c_ref, scale):
    """The same posterior in z = (c - c_ref) / scale (O(1) coordinates)."""
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist

    z = numpyro.sample("z", dist.Normal(-c_ref / scale, s0 / scale).to_event(1))
    c = c_ref + scale * z
    numpyro.factor("loglik", -0.5 * jnp.sum(w * (y - A @ c) ** 2) / sig2)


def nuts_row(model, model_args, init, site, to_c, args, seed, **options):
    """One run_nuts call (timed by run_nuts itself) -> dict."""
    import jax

    from jaxiap.inference.mcmc import run_nuts

    res = run_nuts(model, jax.random.key(seed), *model_args, num_chains=args.chains, dense_mass=True,
                   init_params={site: init}, progress=False, warn=False, **options)
    d = res.diagnostics
    draws = to_c(np.asarray(res.chains[site]))  # (chains, S, K) in c coordinates
    return dict(draws=draws, evals=int(d["num_steps"]), evals_all=int(d["num_steps"] + d["num_steps_warmup"]),
                run=float(d["wall_time"] - d["compile_time"]), compile=float(d["compile_time"]),
                divergent=int(d["n_divergent"]), rhat=res.max_rhat, chain_method=d["chain_method"],
                step_size=float(np.median(d["step_size"])))


def make_am(logp, c0, C0, chains, n_steps, t0_adapt, tadapt):
    """Compiled Haario adaptive Metropolis: keys (chains,) -> (draws, accepted); and the compile seconds."""
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

    keys = jax.random.split(jax.random.key(0), chains)
    t0 = time.perf_counter()
    compiled = jax.jit(jax.vmap(one_chain)).lower(keys).compile()
    return compiled, time.perf_counter() - t0


def run_am(compiled, t_compile, chains, n_steps, seed):
    import jax

    keys = jax.random.split(jax.random.key(seed + 1), chains)
    t0 = time.perf_counter()
    xs, acc = jax.block_until_ready(compiled(keys))
    wall = time.perf_counter() - t0
    return dict(draws=np.asarray(xs), accept=np.asarray(acc) / n_steps, wall=wall, compile=t_compile)


def min_ess(draws) -> float:
    """Min bulk ESS over coefficients, as run_nuts reports it (numpyro's estimator, capped at N log10 N)."""
    from jaxiap.inference.mcmc import summarize_chains

    return summarize_chains({"x": np.asarray(draws)})[1]["x"]


def accuracy(draws, exact_mean, exact_sd):
    flat = draws.reshape(-1, draws.shape[-1])
    sd_ratio = flat.std(0) / exact_sd
    return float(np.max(np.abs(flat.mean(0) - exact_mean) / exact_sd)), float(sd_ratio.min()), float(sd_ratio.max())


ROWS = ("defaults", "unregularised", "reparametrised", "precond", "precond-tap0.6")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--trajectories", type=int, default=2, help="LJ13 MD trajectories (default 2)")
    p.add_argument("--snapshots", type=int, default=40, help="snapshots per trajectory (default 40)")
    p.add_argument("--n-basis", type=int, default=8, help="radial basis size K (default 8)")
    p.add_argument("--chains", type=int, default=4)
    p.add_argument("--warmup", type=int, default=500, help="warmup iterations of rows 1-3")
    p.add_argument("--samples", type=int, default=500, help="sampling iterations of rows 1-3")
    p.add_argument("--precond-warmup", type=int, default=150,
                   help="warmup iterations of the preconditioned rows 4-5 (step size only)")
    p.add_argument("--precond-samples", type=int, default=2000, help="sampling iterations of rows 4-5")
    p.add_argument("--repeats", type=int, default=5, help="seeds per row (median and min-max are reported)")
    p.add_argument("--defaults-repeats", type=int, default=2,
                   help="seeds for the 'defaults' row (regularised mass: ~1000 leapfrog steps per iteration, "
                        "minutes per run)")
    p.add_argument("--am-steps", type=int, default=60_000, help="AM steps per chain (first third is burn-in)")
    p.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated NUTS rows to run ({', '.join(ROWS)})")
    p.add_argument("--t0", type=int, default=1000, help="AM: steps before adaptation starts")
    p.add_argument("--tadapt", type=int, default=100, help="AM: refresh the proposal every tadapt steps")
    p.add_argument("--seed", type=int, default=0, help="data seed; repeat r uses sampler seed r")
    p.add_argument("--quick", action="store_true",
                   help="tiny smoke run: 2 trajectories x 10 snapshots, 2 chains, 50 + 100 iterations "
                        "(preconditioned: 50 + 300), AM 3000 steps, 2 repeats")
    args = p.parse_args(argv)
    if args.quick:
        args.trajectories, args.snapshots, args.chains, args.warmup, args.samples, args.repeats = 2, 10, 2, 50, 100, 2
        args.t0, args.am_steps, args.defaults_repeats = 100, 3000, 1
        args.precond_warmup, args.precond_samples = 50, 300
    rows_wanted = args.rows.split(",")
    unknown = [r for r in rows_wanted if r not in ROWS]
    if unknown:
        p.error(f"unknown row(s) {unknown}; choose from {', '.join(ROWS)}")

    header("bench/inference_nuts.py")
    t_all = time.perf_counter()
    import jax
    import jax.numpy as jnp

    import jaxiap  # noqa: F401  (float64)

    t = time.perf_counter()
    A, y, w, sig2, s0, c_ls, exact = build_problem(args.trajectories, args.snapshots, args.n_basis, args.seed)
    print(f"LJ13 design: {A.shape[0]} rows x K = {A.shape[1]} ({time.perf_counter() - t:.1f} s to build); "
          f"sig^2 = {sig2:.3g}")
    exact_mean, exact_cov = np.asarray(exact.mean), np.asarray(exact.cov)
    exact_sd = np.sqrt(np.diag(exact_cov))
    corr = exact_cov / np.outer(exact_sd, exact_sd)
    print(f"posterior: max |correlation| = {np.abs(corr - np.eye(len(corr))).max():.6f}, "
          f"condition number of the covariance = {np.linalg.cond(exact_cov):.3g}, sds {exact_sd.min():.2g}-"
          f"{exact_sd.max():.2g}", flush=True)

    H = np.linalg.inv(exact_cov)
    scale = 1.0 / np.sqrt(np.diag(H))
    c0 = jnp.asarray(c_ls)
    plain_args = (A, y, w, sig2, s0)
    basic = dict(num_warmup=args.warmup, num_samples=args.samples)
    precond = dict(num_warmup=args.precond_warmup, num_samples=args.precond_samples, inverse_mass_matrix=exact,
                   adapt_mass_matrix=False, pool_step_size=True)
    # key: (label, model, model args, init, site, to c coordinates, run_nuts options, peer)
    configs = {
        "defaults": ("NUTS run_nuts defaults (regularised mass)", linear_model, plain_args, c0, "c",
                     lambda d: d, dict(basic), "AM"),
        "unregularised": ("NUTS run_nuts regularize_mass_matrix=False", linear_model, plain_args, c0, "c",
                          lambda d: d, dict(basic, regularize_mass_matrix=False), "AM"),
        "reparametrised": ("NUTS run_nuts defaults, model in z = (c - c_ls) / s", scaled_model,
                           (*plain_args, c0, jnp.asarray(scale)), jnp.zeros_like(c0), "z",
                           lambda d: c_ls + scale * d, dict(basic), "AM"),
        "precond": ("NUTS run_nuts inverse_mass_matrix=exact cov, no mass adaptation, pooled step size",
                    linear_model, plain_args, c0, "c", lambda d: d, dict(precond), "AM-cov"),
        "precond-tap0.6": ("NUTS run_nuts as row 4, target_accept_prob=0.6", linear_model, plain_args, c0, "c",
                           lambda d: d, dict(precond, target_accept_prob=0.6), "AM-cov"),
    }
    results = {}
    for key in rows_wanted:
        name, model, margs, init, site, to_c, options, peer = configs[key]
        reps = []
        for r in range(args.defaults_repeats if key == "defaults" else args.repeats):
            out = nuts_row(model, margs, init, site, to_c, args, seed=r, **options)
            out["ess"] = min_ess(out["draws"])
            reps.append(out)
            print(f"  {key} seed {r}: min ESS {out['ess']:.0f}, {out['evals']} post-warmup + "
                  f"{out['evals_all'] - out['evals']} warmup evals, run {out['run']:.2f} s + compile "
                  f"{out['compile']:.1f} s, step size {out['step_size']:.3g}, {out['divergent']} divergent, "
                  f"max R-hat {out['rhat']:.3f}; load {load()}", flush=True)
        results[key] = dict(name=name, reps=reps, peer=peer, options=options)

    n_am = args.am_steps
    burn = n_am // 3
    from numpyro.infer.util import initialize_model

    info_logp = initialize_model(jax.random.key(0), linear_model, model_args=plain_args).potential_fn
    logp = lambda c: -info_logp({"c": c})  # noqa: E731
    peers_wanted = sorted({res["peer"] for res in results.values()}) or ["AM"]
    am_configs = {"AM": ("AM (Haario, random walk; peer), C0 = diag warm start", np.diag(scale**2)),
                  "AM-cov": ("AM (Haario, random walk; peer), C0 = exact covariance", exact_cov)}
    am_results = {}
    for peer in peers_wanted:
        label, C = am_configs[peer]
        am_compiled, am_compile = make_am(logp, c0, jnp.asarray(C * 2.4**2 / len(c_ls)), args.chains, n_am,
                                          args.t0, args.tadapt)
        am_reps = []
        for r in range(args.repeats):
            am = run_am(am_compiled, am_compile, args.chains, n_am, seed=r)
            am["draws"] = am["draws"][:, burn:]
            am["ess"] = min_ess(am["draws"])
            am["evals"] = (n_am - burn) * args.chains
            am["evals_all"] = n_am * args.chains
            am["run"] = am["wall"]
            am_reps.append(am)
            print(f"  {peer} seed {r}: min ESS {am['ess']:.0f}, {n_am} steps per chain ({burn} burn-in), "
                  f"run {am['wall']:.2f} s + compile {am['compile']:.1f} s, acceptance {am['accept'].mean():.3f}; "
                  f"load {load()}", flush=True)
        am_results[peer] = dict(name=label, reps=am_reps)

    chain_method = next(iter(results.values()))["reps"][0]["chain_method"] if results else "-"
    print(f"\n{args.chains} chains (NUTS chain method {chain_method}); NUTS rows 1-3 {args.warmup} warmup + "
          f"{args.samples} sampling iterations, rows 4-5 {args.precond_warmup} + {args.precond_samples}; AM {n_am} "
          f"steps per chain, first {burn} discarded; {args.repeats} seeds per row: median (min-max, n)\n")
    hdr = ("sampler", "min ESS", "sampling-phase evals", "ESS / 1k evals", "ESS / 1k evals (all)",
           "ESS / s warm", "ESS / s first call", "run s", "compile s", "step size", "max \\|mean err\\| / sd",
           "sd ratio", "divergent")
    print("| " + " | ".join(hdr) + " |")
    print("|---|" + "---:|" * (len(hdr) - 1))

    def rates(reps):
        per_k = [1e3 * r["ess"] / r["evals"] for r in reps]
        per_k_all = [1e3 * r["ess"] / r["evals_all"] for r in reps]
        warm = [r["ess"] / r["run"] for r in reps]
        first = reps[0]["ess"] / (reps[0]["compile"] + reps[0]["run"])
        return per_k, per_k_all, warm, first

    def row(name, reps, step, div):
        per_k, per_k_all, warm, first = rates(reps)
        err, lo, hi = accuracy(reps[0]["draws"], exact_mean, exact_sd)
        print(f"| {name} | {spread(r['ess'] for r in reps)} | {spread([r['evals'] for r in reps])} | "
              f"{spread(per_k)} | {spread(per_k_all)} | {spread(warm)} | {first:.3g} | "
              f"{spread(r['run'] for r in reps)} | {reps[0]['compile']:.1f} | {step} | {err:.3f} | {lo:.2f}-{hi:.2f} | "
              f"{div} |")

    for key, res in results.items():
        reps = res["reps"]
        row(res["name"], reps, spread(r["step_size"] for r in reps),
            spread([r["divergent"] for r in reps], "{:.0f}"))
    for peer, res in am_results.items():
        row(res["name"], res["reps"], "-", "-")
    print()
    for key, res in results.items():
        per_k, _, warm, first = rates(res["reps"])
        # every row against its own peer; the preconditioned rows also against the historic AM peer
        peers = [res["peer"]] + (["AM"] if res["peer"] == "AM-cov" and "AM" in am_results else [])
        for peer in peers:
            am = am_results[peer]
            am_k, _, am_warm, am_first = rates(am["reps"])
            print(f"{res['name']} / {peer}: min ESS per evaluation {med(per_k) / med(am_k):.3g}x, min ESS per "
                  f"second {med(warm) / med(am_warm):.3g}x warm (compilation excluded), "
                  f"{first / am_first:.3g}x first call (compilation included) (ratios of medians)")
    footer(time.perf_counter() - t_all)


if __name__ == "__main__":
    main()
