"""Does variational inference underestimate extrapolative uncertainty? (issue 15)

Part (a), VI vs NUTS vs ensembles outside the training range. The sin^4
demo of docs/science.md 11.9: y = sin^4(2x - 0.3) + N(0, 0.01^2), a cubic
Legendre basis on [0, 1] (K = 4), training x ~ U(0, 0.6) (30 points),
test grids inside (x in [0, 0.6]) and outside (x in (0.6, 1.0]) the
training range. Bayesian linear regression with unknown noise (numpyro model
:func:`blr_model`: c_k ~ N(0, 10^2), sigma ~ HalfNormal(1), y ~ N(B c,
sigma^2)), fitted by

- NUTS (``run_nuts``, dense mass, 2 chains), the reference;
- SVI mean-field and SVI low-rank (``run_svi``: Adam at 1e-2, guides
  located at least squares with scale 0.01, below the least-squares standard
  errors) in the raw coordinates (c, log sigma), what a user writes: 20,000
  steps, and 200,000 for "SVI low-rank, long" (the least-squares coefficients
  are ~0.99 correlated, and the low-rank guide creeps towards the posterior
  spread only slowly);
- the mean-field optimum computed exactly (:func:`mean_field_optimum`: for a
  Gaussian posterior the best factorised Gaussian has variances
  1 / Lambda_kk), which tells a structural underestimate from an unconverged
  optimiser;
- SVI mean-field in whitened coordinates c = c_ls + L z (L the Cholesky factor
  of the least-squares covariance; :func:`blr_model_white`, the same
  posterior): mean-field misses correlations, so removing them first should
  repair it;
- bootstrap (points drawn with replacement, fraction 1) and committee (80%
  subsets) ensembles of 64 least-squares fits (``get_solver``).

Reported per method, averaged over seeds: the epistemic std (std over draws
or members of the model mean B(x) c) averaged over each grid, its ratio to
NUTS's, the RMS shift of the mean inside in units of NUTS's std, and the
coverage of the true function by the band mean +- 1.96 std (fraction of grid
points), inside and outside.

Part (b), embedded model error, SVI vs NUTS (``fit_model_error`` with
method "nuts" (2 chains x (500 + 500)), "svi" (guides "meanfield" and
"lowrank", the default 10,000 steps, started at the MAP; on LJ13 also the
low-rank guide with 50,000 steps) and "laplace"), IID
likelihood: the sin^4 demo trained on all of [0, 1] (N = 30 and 100, data
noise 0.01^2 given as ``noise_var``) with 2000 held-out noisy points, and an
LJ13 energy + force fit (Langevin data at kT = 0.3 as tests/conftest.py's
``lj13_data``, 8 trajectories x 20 snapshots, 75/25 split; a 4-function radial Chebyshev basis, exact labels) with the
held-out structures of the split. Reported: coverage of held-out data by
the 95% and 68% predictive bands mean +- 1.96 (1) std_predictive (posterior +
model error + data noise), the mean predictive std, its parameter part (RMS
posterior std of the mean) and model-error part, and the wall time of the
``fit_model_error`` call (MAP included; compilation included: SVI compiles
on every call, NUTS once per shape, on its first seed).

Usage: ``python bench/vi_extrapolation.py [--quick]`` (``--quick``: seconds,
:data:`QUICK`: one seed of part (a) with NUTS, SVI mean-field, its optimum
and the bootstrap, short runs; the N = 30 sin^4 case of part (b) with
Laplace only; no LJ13). Prints markdown tables.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's jaxiap
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import footer, header  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from numpy.polynomial import legendre  # noqa: E402

import jaxiap  # noqa: E402,F401  (float64)
from jaxiap.inference.mcmc import run_nuts, run_svi  # noqa: E402
from jaxiap.inference.model_error import fit_model_error  # noqa: E402
from jaxiap.inference.solvers import get_solver  # noqa: E402
from jaxiap.potentials.linear import DesignMatrix  # noqa: E402

SIGMA = 0.01  # data noise of the sin^4 demo
TRAIN_HI = 0.6  # part (a): training x ~ U(0, TRAIN_HI)
Z95 = 1.959963984540054


METHODS_A = ("NUTS", "SVI mean-field", "mean-field optimum (analytic)", "SVI low-rank", "SVI low-rank, long",
             "SVI mean-field, whitened", "bootstrap", "committee (80%)")
MERR_METHODS = {"NUTS": dict(method="nuts"), "Laplace": dict(method="laplace"),
                "SVI mean-field": dict(method="svi", guide="meanfield"),
                "SVI low-rank": dict(method="svi", guide="lowrank"),
                "SVI low-rank, 50k steps": dict(method="svi", guide="lowrank", svi_steps=50000)}


@dataclasses.dataclass(frozen=True)
class Settings:
    """Sizes of one run (full or --quick). SVI in part (a): Adam, learning rate 1e-2, ``svi_steps`` steps
    (``svi_steps_long`` for "SVI low-rank, long"), guide scale started at ``init_scale`` (raw coordinates)."""

    seeds_a: tuple = (0, 1, 2, 3, 4)
    n_train_a: int = 30
    methods_a: tuple = METHODS_A
    nuts_warmup: int = 500
    nuts_samples: int = 1000
    svi_steps: int = 20000
    svi_steps_long: int = 200000
    init_scale: float = 0.01
    n_draws: int = 4000
    n_members: int = 64
    seeds_b: tuple = (0, 1)
    n_b: tuple = (30, 100)
    merr_methods: tuple = ("NUTS", "Laplace", "SVI mean-field", "SVI low-rank")
    lj13_methods: tuple = tuple(MERR_METHODS)
    merr_warmup: int = 500
    merr_samples: int = 500
    lj13: bool = True


QUICK = Settings(seeds_a=(0,), methods_a=("NUTS", "SVI mean-field", "mean-field optimum (analytic)", "bootstrap"),
                 nuts_warmup=150, nuts_samples=150, svi_steps=5000, n_draws=1000, n_members=16, seeds_b=(0,),
                 n_b=(30,), merr_methods=("Laplace",), merr_samples=100, lj13=False)


# --------------------------------------------------------------------------------------------
# data


def sin4(x):
    """Truth y(x) = sin^4(2x - 0.3); x (...,) -> (...,)."""
    return np.sin(2 * x - 0.3) ** 4


def basis(x):
    """Cubic Legendre basis on [0, 1]: x (N,) -> (N, 4)."""
    return legendre.legvander(2 * np.asarray(x) - 1, 3)


def sin4_data(seed: int, n: int, hi: float):
    """(x (n,), y (n,)): x ~ U(0, hi), y = sin4(x) + N(0, SIGMA^2), from numpy seed ``seed``."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.0, hi, n)
    return x, sin4(x) + SIGMA * rng.normal(size=n)


def point_design(A, y, w=None) -> DesignMatrix:
    """A DesignMatrix with one 'structure' per row (so ensembles resample points). A (N, K), y (N,)."""
    n = len(y)
    return DesignMatrix(jnp.asarray(A), jnp.asarray(y), jnp.ones(n) if w is None else jnp.asarray(w),
                        jnp.zeros(n, int), jnp.arange(n), jnp.ones(n))


# --------------------------------------------------------------------------------------------
# part (a): Bayesian linear regression with unknown noise


def blr_model(A, y):
    """c (K,) ~ N(0, 10^2 I), sigma ~ HalfNormal(1), y ~ N(A c, sigma^2 I). A (N, K), y (N,)."""
    import numpyro
    import numpyro.distributions as dist

    c = numpyro.sample("c", dist.Normal(jnp.zeros(A.shape[1]), 10.0).to_event(1))
    sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
    numpyro.sample("y", dist.Normal(A @ c, sigma).to_event(1), obs=y)


def blr_model_white(A, y, c0, L):
    """:func:`blr_model` in whitened coordinates c = c0 + L z (same posterior; z (K,) the latent site).

    The z ~ N(0, I) site is corrected by a factor to the N(0, 10^2 I) prior of c (the map is linear).
    """
    import numpyro
    import numpyro.distributions as dist

    z = numpyro.sample("z", dist.Normal(jnp.zeros(A.shape[1]), 1.0).to_event(1))
    c = numpyro.deterministic("c", c0 + L @ z)
    numpyro.factor("prior_c", dist.Normal(0.0, 10.0).log_prob(c).sum() - dist.Normal(0.0, 1.0).log_prob(z).sum())
    sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
    numpyro.sample("y", dist.Normal(A @ c, sigma).to_event(1), obs=y)


def lstsq(A, y):
    """(c (K,), sigma_hat, covariance (K, K)) of ordinary least squares."""
    c, *_ = np.linalg.lstsq(A, y, rcond=None)
    n, k = A.shape
    s2 = float(np.sum((y - A @ c) ** 2) / (n - k))
    return c, np.sqrt(s2), s2 * np.linalg.inv(A.T @ A)


def band_stats(draws, B, truth) -> tuple:
    """(mean (G,), epistemic std (G,), coverage of truth by mean +- 1.96 std) on a grid.

    draws (S, K) coefficients, B (G, K) grid rows, truth (G,).
    """
    f = np.asarray(draws) @ B.T  # (S, G)
    m, s = f.mean(0), f.std(0)
    return m, s, float(np.mean(np.abs(truth - m) <= Z95 * s))


def mean_field_optimum(key, A, y, sigma: float, n: int):
    """(n, K) draws of the optimal mean-field Gaussian of c | sigma (c_k ~ N(mu_k, 1 / Lambda_kk)).

    For a Gaussian posterior N(mu, Lambda^-1), Lambda = A^T A / sigma^2 + I / 10^2, the KL(q || p)-optimal
    factorised Gaussian has the exact mean and variances 1 / Lambda_kk: the spread along one coordinate with
    the others held fixed (Bishop 2006, section 10.1.2).
    """
    lam = A.T @ A / sigma**2 + np.eye(A.shape[1]) / 10.0**2
    mu = np.linalg.solve(lam, A.T @ y / sigma**2)
    return mu + np.asarray(jax.random.normal(key, (n, A.shape[1]))) / np.sqrt(np.diag(lam))


def _svi(model, key, args, init, guide: str, steps: int, st: Settings, init_scale: float):
    """(S, K) draws of c from run_svi (Adam 1e-2, ``steps`` steps)."""
    r = run_svi(model, key, *args, guide_kind=guide, num_steps=steps, learning_rate=1e-2, num_samples=st.n_draws,
                init_params=init, init_scale=init_scale, progress=False)
    return r.samples["c"]


def fit_methods_a(seed: int, st: Settings) -> dict:
    """{method: ((S, K) coefficient draws, wall s, NUTS max R-hat or nan)} for one seed of part (a)."""
    x, y = sin4_data(seed, st.n_train_a, TRAIN_HI)
    A = basis(x)
    c0, s0, cov0 = lstsq(A, y)
    args = (jnp.asarray(A), jnp.asarray(y))
    init = {"c": jnp.asarray(c0), "sigma": jnp.asarray(s0)}
    L = np.linalg.cholesky(cov0)
    white_args = args + (jnp.asarray(c0), jnp.asarray(L))
    white_init = {"z": jnp.zeros(A.shape[1]), "sigma": jnp.asarray(s0)}
    dm = point_design(A, y)
    keys = dict(zip(METHODS_A, jax.random.split(jax.random.key(100 + seed), len(METHODS_A))))

    def nuts(k):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # R-hat / divergence warnings: R-hat is reported in the table
            res = run_nuts(blr_model, k, *args, num_warmup=st.nuts_warmup, num_samples=st.nuts_samples,
                           num_chains=2, dense_mass=True, progress=False, init_params=init)
        return res.samples["c"], res.max_rhat

    fits = {
        "NUTS": nuts,
        "SVI mean-field": lambda k: _svi(blr_model, k, args, init, "meanfield", st.svi_steps, st, st.init_scale),
        "mean-field optimum (analytic)": lambda k: mean_field_optimum(k, A, y, s0, st.n_draws),
        "SVI low-rank": lambda k: _svi(blr_model, k, args, init, "lowrank", st.svi_steps, st, st.init_scale),
        "SVI low-rank, long": lambda k: _svi(blr_model, k, args, init, "lowrank", st.svi_steps_long, st,
                                             st.init_scale),
        "SVI mean-field, whitened": lambda k: _svi(blr_model_white, k, white_args, white_init, "meanfield",
                                                   st.svi_steps, st, 0.1),
        "bootstrap": lambda k: get_solver("bootstrap", n_samples=st.n_members, fraction=1.0)(dm, key=k).samples,
        "committee (80%)": lambda k: get_solver("committee", n_samples=st.n_members)(dm, key=k).samples,
    }
    out = {}
    for name in st.methods_a:
        t = time.perf_counter()
        res = fits[name](keys[name])
        draws, rhat = res if name == "NUTS" else (res, np.nan)
        out[name] = (np.asarray(draws), time.perf_counter() - t, rhat)
    return out


def part_a(st: Settings) -> dict:
    """Per method, arrays over seeds: std_in, std_out (grid means), cov_in, cov_out, ratio_in, ratio_out (to
    NUTS), shift_in (RMS over the inside grid of (mean - NUTS mean) / NUTS std), wall; rhat (NUTS)."""
    x_in = np.linspace(0.0, TRAIN_HI, 121)
    x_out = np.linspace(TRAIN_HI, 1.0, 81)[1:]
    grids = {"in": (basis(x_in), sin4(x_in)), "out": (basis(x_out), sin4(x_out))}
    keys = ("std_in", "std_out", "cov_in", "cov_out", "shift_in", "wall", "rhat")
    rows: dict = {}
    for seed in st.seeds_a:
        fits = fit_methods_a(seed, st)
        ref_m, ref_s, _ = band_stats(fits["NUTS"][0], *grids["in"])
        for name, (draws, wall, rhat) in fits.items():
            r = rows.setdefault(name, {k: [] for k in keys})
            for where, (B, truth) in grids.items():
                m, s, c = band_stats(draws, B, truth)
                r[f"std_{where}"].append(float(np.mean(s)))
                r[f"cov_{where}"].append(c)
                if where == "in":
                    r["shift_in"].append(float(np.sqrt(np.mean(((m - ref_m) / ref_s) ** 2))))
            r["wall"].append(wall)
            r["rhat"].append(rhat)
    rows = {name: {k: np.asarray(v) for k, v in r.items()} for name, r in rows.items()}
    for r in rows.values():
        r["ratio_out"] = r["std_out"] / rows["NUTS"]["std_out"]
        r["ratio_in"] = r["std_in"] / rows["NUTS"]["std_in"]
    return rows


def table_a(rows: dict, st: Settings) -> str:
    lines = [f"Part (a): sin^4 cubic, {st.n_train_a} training points x ~ U(0, {TRAIN_HI}), "
             f"{len(st.seeds_a)} seed(s) (mean over seeds; [min, max] of the per-seed ratio)", "",
             "| method | epistemic std inside | epistemic std outside | ratio to NUTS inside | ratio to NUTS outside "
             "| mean shift inside (NUTS stds) | 95% coverage of truth inside | outside | wall (s) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['std_in'].mean():.4f} | {r['std_out'].mean():.4f} "
                     f"| {r['ratio_in'].mean():.2f} [{r['ratio_in'].min():.2f}, {r['ratio_in'].max():.2f}] "
                     f"| {r['ratio_out'].mean():.2f} [{r['ratio_out'].min():.2f}, {r['ratio_out'].max():.2f}] "
                     f"| {r['shift_in'].mean():.2f} | {r['cov_in'].mean():.2f} | {r['cov_out'].mean():.2f} "
                     f"| {r['wall'].mean():.2f} |")
    lines += ["", "NUTS max split R-hat per seed: " + ", ".join(f"{v:.3f}" for v in rows["NUTS"]["rhat"])]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# part (b): embedded model error, SVI vs NUTS

def merr_fit(design, method_kw: dict, key, st: Settings, noise_var: float):
    """(ModelErrorPosterior, wall s) of one fit_model_error call (IID likelihood)."""
    kw = dict(method_kw)
    if kw["method"] == "nuts":
        kw.update(num_warmup=st.merr_warmup, n_samples=st.merr_samples, num_chains=2)
    else:
        kw.update(n_samples=2 * st.merr_samples)
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        post = fit_model_error(design, likelihood="iid", noise_var=noise_var, key=key, progress=False, **kw)
    return post, time.perf_counter() - t


def held_out(post, A, y) -> dict:
    """Held-out rows A (R, K), y (R,): coverage of y by mean +- 1.96 (cov95) and +- 1 (cov68) std_predictive,
    mean std_predictive (std), RMS posterior (parameter) std of the mean (post_std) and RMS model-error std
    (merr_std)."""
    p = post.predict(A)
    sp = post.predict_split(A)
    std = np.asarray(p.std_predictive)
    z = np.abs(y - np.asarray(p.mean)) / std
    return dict(cov95=float(np.mean(z <= Z95)), cov68=float(np.mean(z <= 1.0)), std=float(np.mean(std)),
                post_std=float(np.sqrt(np.mean(sp["posterior_var"]))),
                merr_std=float(np.sqrt(np.mean(sp["model_error_var"]))))


def part_b_sin4(st: Settings) -> dict:
    """{(N, method): {"cov95", "cov68", "std", "post_std", "merr_std", "wall"}: arrays over seeds}."""
    out: dict = {}
    n_max = max(st.n_b)
    for seed in st.seeds_b:
        x, y = sin4_data(1000 + seed, n_max, 1.0)
        xt, yt = sin4_data(2000 + seed, 2000, 1.0)
        for n in st.n_b:
            # one n_max-row design; zero weights leave rows out, so each N shares one compiled NUTS program
            dm = point_design(basis(x), y, (np.arange(n_max) < n).astype(float))
            for name in st.merr_methods:
                post, wall = merr_fit(dm, MERR_METHODS[name], jax.random.key(seed), st, SIGMA**2)
                r = out.setdefault((n, name), {})
                for k, v in dict(held_out(post, basis(xt), yt), wall=wall).items():
                    r.setdefault(k, []).append(v)
    return {k: {kk: np.asarray(vv) for kk, vv in v.items()} for k, v in out.items()}


def lj13_designs():
    """(train, test) DesignMatrix of LJ13 energies + forces, 4-function radial Chebyshev basis (r 0.8-3.0)."""
    from jaxiap.data import split
    from jaxiap.descriptors.radial import RadialBasis
    from jaxiap.potentials.linear import LinearBasis, design_matrix
    from jaxiap.systems.lj import lj13_dataset

    ds = lj13_dataset(seed=0, n_trajectories=8, n_samples=20, sample_every=100, kT=0.30)
    train, test = split(jax.random.key(1), ds, (0.75, 0.25))
    b = LinearBasis(RadialBasis("chebyshev", 4, 0.8, 3.0))
    return design_matrix(b, train), design_matrix(b, test)


def part_b_lj13(st: Settings) -> dict:
    """{method: {"E": held_out dict of the energy rows, "F": of the force rows, "wall", "n_train_rows"}}."""
    train, test = lj13_designs()
    A, y, w, kind = (np.asarray(v) for v in (test.A, test.y, test.w, test.kind))
    keep = w > 0
    out = {}
    for name in st.lj13_methods:
        post, wall = merr_fit(train, MERR_METHODS[name], jax.random.key(7), st, 0.0)
        out[name] = {"wall": wall, "n_train_rows": int(np.sum(np.asarray(train.w) > 0))}
        for label, sel in (("E", keep & (kind == 0)), ("F", keep & (kind == 1))):
            out[name][label] = held_out(post, A[sel], y[sel])
    return out


def table_b(sin4_rows: dict, lj_rows: dict | None, st: Settings) -> str:
    lines = [f"Part (b1): model error (IID) on sin^4, cubic on [0, 1], {len(st.seeds_b)} seed(s), 2000 held-out noisy "
             "points (mean over seeds; predictive = posterior + model error + noise 0.01^2)", "",
             "| N | method | 95% coverage | 68% coverage | mean predictive std | RMS posterior std "
             "| RMS model-error std | wall (s) |", "|---|---|---|---|---|---|---|---|"]
    for (n, name), r in sin4_rows.items():
        lines.append(f"| {n} | {name} | {r['cov95'].mean():.3f} | {r['cov68'].mean():.3f} | {r['std'].mean():.4f} "
                     f"| {r['post_std'].mean():.4f} | {r['merr_std'].mean():.4f} | {r['wall'].mean():.2f} |")
    if lj_rows is not None:
        n_rows = next(iter(lj_rows.values()))["n_train_rows"]
        lines += ["", f"Part (b2): model error (IID) on LJ13, 4 radial Chebyshev functions, {n_rows} training rows "
                  "(energies + forces, exact labels), held-out structures (E: energy rows, F: force rows)", "",
                  "| method | 95% coverage E | 95% coverage F | 68% coverage F | mean predictive std E "
                  "| mean predictive std F | RMS posterior std F | RMS model-error std F | wall (s) |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for name, r in lj_rows.items():
            e, f = r["E"], r["F"]
            lines.append(f"| {name} | {e['cov95']:.3f} | {f['cov95']:.3f} | {f['cov68']:.3f} | {e['std']:.3f} "
                         f"| {f['std']:.4f} | {f['post_std']:.2e} | {f['merr_std']:.4f} | {r['wall']:.2f} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------


def main(argv=None) -> dict:
    """Run the study; print the tables. Returns {"a": part (a) rows, "b_sin4": ..., "b_lj13": ... or None}."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="seconds-long version (2 seeds, short runs, no LJ13)")
    args = ap.parse_args(argv)
    st = QUICK if args.quick else Settings()
    header("vi_extrapolation")
    t0 = time.perf_counter()
    rows_a = part_a(st)
    print("\n" + table_a(rows_a, st) + "\n", flush=True)
    rows_b = part_b_sin4(st)
    rows_lj = part_b_lj13(st) if st.lj13 else None
    print(table_b(rows_b, rows_lj, st) + "\n", flush=True)
    footer(time.perf_counter() - t0)
    return {"a": rows_a, "b_sin4": rows_b, "b_lj13": rows_lj, "settings": st}


if __name__ == "__main__":
    main()
