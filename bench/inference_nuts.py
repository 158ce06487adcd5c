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
init_params=...)`` (numpyro NUTS, target acceptance 0.8, ``--chains`` chains
vectorised on one CPU device), ``--warmup`` + ``--samples`` iterations. Each
row changes ONE factor against the first row:

1. ``defaults``: ``run_nuts`` defaults (mass-matrix regularisation on: numpyro
   shrinks the adapted mass matrix toward 1e-3 I).
2. ``regularize_mass_matrix=False``: only the regularisation changed.
3. ``reparametrised``: only the model changed: c = c_ls + s * z with
   s = 1 / sqrt(diag H) (H the posterior precision), sampled in z, which is
   O(1); regularisation on as in row 1. This is the advice in ``run_nuts``'s
   docstring and uses the same information as AM's warm start below.

(``run_nuts`` takes no initial inverse mass matrix, so the diagonal warm start
of the mass matrix that an earlier version of this benchmark gave numpyro
directly cannot be set through it; see bench/RESULTS.md.)

Peer, ``AM``: random-walk adaptive Metropolis (Haario, Saksman & Tamminen
2001; the AMCMC used by pytuq / FitSNAP UQ workflows): proposal N(x, C_t) with
C_t = (2.4^2 / d) (Cov(x_0..x_{t-1}) + eps I) refreshed every ``--tadapt``
steps after ``--t0`` steps, and C_0 = (2.4^2 / d) diag(1 / diag(H)) (a warm
start AM users rarely have). One log-density evaluation per step, no
gradient, ``--chains`` chains vmapped and jitted (compiled ahead of time).

Evaluations. ``run_nuts`` reports the leapfrog steps (one value-and-gradient
each) of the sampling phase only, not of warmup. "ESS per 1k evaluations" is
therefore measured on the sampling phase for both: NUTS min ESS over its
post-warmup leapfrog steps; AM min ESS over its post-burn-in steps (AM runs
``--am-steps`` steps per chain and discards the first third as burn-in).
This leaves NUTS's warmup out of the per-evaluation figure (it is in the
per-second figure): when warmup starts from the identity mass matrix on a
posterior with sds ~1e-3, most of a run's leapfrog steps can be warmup.

Time. A ``run_nuts`` call compiles its sampling loop every time (numpyro
re-jits per call), so its wall time ("wall s", as ``run_nuts`` reports it)
includes compilation, warmup and sampling. For a like-for-like figure the AM
wall time is compile (``lower().compile()``, once, added to every repeat) +
run, and "ESS / s" is min ESS
over that whole wall time for every row. "fixed s" is the wall time of the
same ``run_nuts`` call with 1 warmup + 1 sample iteration (compilation and
set-up, for scale), or AM's compile time.

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
from _common import footer, header, med, spread  # noqa: E402


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


def nuts_row(name, model, model_args, init, site, to_c, args, regularize, seed):
    """One run_nuts call (timed by run_nuts itself) -> dict."""
    import jax

    from jaxiap.inference.mcmc import run_nuts

    res = run_nuts(model, jax.random.key(seed), *model_args, num_warmup=args.warmup, num_samples=args.samples,
                   num_chains=args.chains, dense_mass=True, regularize_mass_matrix=regularize,
                   init_params={site: init}, progress=False, warn=False)
    d = res.diagnostics
    draws = to_c(np.asarray(res.chains[site]))  # (chains, S, K) in c coordinates
    return dict(name=name, draws=draws, evals=int(d["num_steps"]), wall=float(d["wall_time"]),
                divergent=int(d["n_divergent"]), rhat=res.max_rhat, chain_method=d["chain_method"])


def nuts_fixed_cost(model, model_args, init, site, args, regularize) -> float:
    """Wall time of the same run_nuts call with 1 warmup + 1 sample iteration (compile + set-up)."""
    import jax

    from jaxiap.inference.mcmc import run_nuts

    res = run_nuts(model, jax.random.key(0), *model_args, num_warmup=1, num_samples=1, num_chains=args.chains,
                   dense_mass=True, regularize_mass_matrix=regularize, init_params={site: init}, progress=False,
                   warn=False)
    return float(res.diagnostics["wall_time"])


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
    from numpyro.diagnostics import effective_sample_size

    return float(np.asarray(effective_sample_size(draws)).min())


def accuracy(draws, exact_mean, exact_sd):
    flat = draws.reshape(-1, draws.shape[-1])
    sd_ratio = flat.std(0) / exact_sd
    return float(np.max(np.abs(flat.mean(0) - exact_mean) / exact_sd)), float(sd_ratio.min()), float(sd_ratio.max())


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--trajectories", type=int, default=2, help="LJ13 MD trajectories (default 2)")
    p.add_argument("--snapshots", type=int, default=40, help="snapshots per trajectory (default 40)")
    p.add_argument("--n-basis", type=int, default=8, help="radial basis size K (default 8)")
    p.add_argument("--chains", type=int, default=4)
    p.add_argument("--warmup", type=int, default=500)
    p.add_argument("--samples", type=int, default=500)
    p.add_argument("--repeats", type=int, default=5, help="seeds per row (median and min-max are reported)")
    p.add_argument("--defaults-repeats", type=int, default=2,
                   help="seeds for the 'defaults' row (regularised mass: ~1000 leapfrog steps per iteration, "
                        "minutes per run)")
    p.add_argument("--am-steps", type=int, default=60_000, help="AM steps per chain (first third is burn-in)")
    p.add_argument("--rows", default="defaults,unregularised,reparametrised",
                   help="comma-separated NUTS rows to run (defaults, unregularised, reparametrised)")
    p.add_argument("--t0", type=int, default=1000, help="AM: steps before adaptation starts")
    p.add_argument("--tadapt", type=int, default=100, help="AM: refresh the proposal every tadapt steps")
    p.add_argument("--seed", type=int, default=0, help="data seed; repeat r uses sampler seed r")
    p.add_argument("--quick", action="store_true",
                   help="tiny smoke run: 2 trajectories x 10 snapshots, 2 chains, 50 + 100 iterations, 2 repeats")
    args = p.parse_args(argv)
    if args.quick:
        args.trajectories, args.snapshots, args.chains, args.warmup, args.samples, args.repeats = 2, 10, 2, 50, 100, 2
        args.t0, args.am_steps, args.defaults_repeats = 100, 3000, 1
    rows_wanted = args.rows.split(",")

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
    configs = {
        "defaults": ("NUTS run_nuts defaults (regularised mass)", linear_model, plain_args, c0, "c",
                     lambda d: d, True),
        "unregularised": ("NUTS run_nuts regularize_mass_matrix=False", linear_model, plain_args, c0, "c",
                          lambda d: d, False),
        "reparametrised": ("NUTS run_nuts defaults, model in z = (c - c_ls) / s", scaled_model,
                           (*plain_args, c0, jnp.asarray(scale)), jnp.zeros_like(c0), "z",
                           lambda d: c_ls + scale * d, True),
    }
    results = {}
    for key in rows_wanted:
        name, model, margs, init, site, to_c, reg = configs[key]
        fixed = nuts_fixed_cost(model, margs, init, site, args, reg)
        reps = []
        for r in range(args.defaults_repeats if key == "defaults" else args.repeats):
            out = nuts_row(name, model, margs, init, site, to_c, args, reg, seed=r)
            out["ess"] = min_ess(out["draws"])
            reps.append(out)
            print(f"  {key} seed {r}: min ESS {out['ess']:.0f}, {out['evals']} post-warmup evals, "
                  f"wall {out['wall']:.1f} s (fixed {fixed:.1f} s), {out['divergent']} divergent, "
                  f"max R-hat {out['rhat']:.3f}", flush=True)
        results[key] = dict(name=name, fixed=fixed, reps=reps)

    n_am = args.am_steps
    burn = n_am // 3
    C0 = jnp.asarray(np.diag(scale**2) * 2.4**2 / len(c_ls))
    from numpyro.infer.util import initialize_model

    info_logp = initialize_model(jax.random.key(0), linear_model, model_args=plain_args).potential_fn
    logp = lambda c: -info_logp({"c": c})  # noqa: E731
    am_reps = []
    am_compiled, am_compile = make_am(logp, c0, C0, args.chains, n_am, args.t0, args.tadapt)
    for r in range(args.repeats):
        am = run_am(am_compiled, am_compile, args.chains, n_am, seed=r)
        am["draws"] = am["draws"][:, burn:]
        am["ess"] = min_ess(am["draws"])
        am["evals"] = (n_am - burn) * args.chains
        am_reps.append(am)
        print(f"  AM seed {r}: min ESS {am['ess']:.0f}, {n_am} steps per chain ({burn} burn-in), "
              f"compile {am['compile']:.1f} s + run {am['wall']:.1f} s, acceptance {am['accept'].mean():.3f}", flush=True)

    print(f"\n{args.chains} chains; NUTS {args.warmup} warmup + {args.samples} sampling iterations "
          f"(chain method {next(iter(results.values()))['reps'][0]['chain_method']}); AM {n_am} steps per chain, "
          f"first {burn} discarded; {args.repeats} seeds per row: median (min-max, n)\n")
    hdr = ("sampler", "min ESS", "sampling-phase evals", "ESS / 1k evals", "ESS / s", "wall s (compile incl.)", "fixed s",
           "max |mean err| / sd", "sd ratio", "divergent")
    print("| " + " | ".join(hdr) + " |")
    print("|---|" + "---:|" * (len(hdr) - 1))
    table = {}
    for key, res in results.items():
        reps = res["reps"]
        per_k = [1e3 * r["ess"] / r["evals"] for r in reps]
        per_s = [r["ess"] / r["wall"] for r in reps]
        err, lo, hi = accuracy(reps[0]["draws"], exact_mean, exact_sd)
        table[key] = (per_k, per_s)
        print(f"| {res['name']} | {spread(r['ess'] for r in reps)} | {spread([r['evals'] for r in reps])} | "
              f"{spread(per_k)} | {spread(per_s)} | {spread(r['wall'] for r in reps)} | {res['fixed']:.1f} | "
              f"{err:.3f} | {lo:.2f}-{hi:.2f} | {spread([r['divergent'] for r in reps], '{:.0f}')} |")
    am_k = [1e3 * a["ess"] / a["evals"] for a in am_reps]
    am_s = [a["ess"] / (a["compile"] + a["wall"]) for a in am_reps]
    err, lo, hi = accuracy(am_reps[0]["draws"], exact_mean, exact_sd)
    print(f"| AM (Haario, random walk; peer) | {spread(a['ess'] for a in am_reps)} | {am_reps[0]['evals']} | "
          f"{spread(am_k)} | {spread(am_s)} | {spread(a['compile'] + a['wall'] for a in am_reps)} | "
          f"{am_reps[0]['compile']:.1f} (compile) | {err:.3f} | {lo:.2f}-{hi:.2f} | - |")
    print()
    for key, (per_k, per_s) in table.items():
        print(f"{results[key]['name']} / AM: min ESS per evaluation {med(per_k) / med(am_k):.3g}x, "
              f"min ESS per second {med(per_s) / med(am_s):.3g}x (ratios of medians)")
    footer(time.perf_counter() - t_all)


if __name__ == "__main__":
    main()
