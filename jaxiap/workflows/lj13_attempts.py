"""The three attempts of the LJ13 forward-UQ study (seed 000 "Attempt #1-#3").

Each attempt is a stack of coefficient vectors run against the same
thermostat seeds (common random numbers), compared with the true potential:

1. ``mle``: the single fitted (maximum-likelihood / posterior-mean) coefficients;
2. ``subsets``: B least-squares fits on independently drawn random subsets of
   the training structures (without replacement, a fraction of the pool each);
3. ``posterior``: M draws from a Bayesian posterior of one training set (any
   solver of :data:`jaxiap.inference.solvers.SOLVERS`: BLR, NIG, model
   error, horseshoe, bootstrap, ...).

For each: the pooled FRT distribution (censored-exponential mean with
interval, Kaplan-Meier median, KS distance to the truth), the law-of-total-
variance split into thermal and parametric parts (:mod:`jaxiap.uq.frt`), the
per-sample mean FRTs and, for the posterior attempt, a polynomial chaos of the
log mean FRT in the Gaussian germ of the coefficients.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import jax
import numpy as np

from jaxiap import plots, runfolder
from jaxiap.errors import JaxiapInputError
from jaxiap.inference.posterior import load_posterior
from jaxiap.inference.solvers import get_solver
from jaxiap.md.ensemble import run_frt_ensemble
from jaxiap.systems.lj import lj13_minimum
from jaxiap.uq.frt import compare_frt, frt_samples, log_mean_frt, per_sample_frt, survival_band, variance_split
from jaxiap.uq.germ import gaussian_germ
from jaxiap.uq.pce import fit_pce, total_degree_multi_indices, validation_error
from jaxiap.uq.survival import kaplan_meier

ATTEMPTS = ("mle", "subsets", "posterior")


def parse_attempts(text: str) -> tuple:
    """'mle,subsets' -> ('mle', 'subsets'); '' or 'none' -> ()."""
    names = tuple(a.strip() for a in str(text).split(",") if a.strip() and a.strip() != "none")
    bad = [a for a in names if a not in ATTEMPTS]
    if bad:
        raise JaxiapInputError(f"attempts={text!r}: unknown {bad}; choose a comma list of {ATTEMPTS} or 'none'")
    if len(set(names)) != len(names):
        raise JaxiapInputError(f"attempts={text!r}: names repeat")
    return names


def subset_coefficients(design, n_samples: int, *, key, fraction: float = 0.5) -> np.ndarray:
    """(n_samples, K) least-squares coefficients, each fitted on a random subset of the training structures.

    Each fit draws round(fraction * S) of the S training structures without
    replacement, independently of the others (the registry's ``committee``
    solver with ``fraction``; its members in order).
    """
    if not 0.0 < fraction <= 1.0:
        raise JaxiapInputError(f"subset_fraction={fraction}: must be in (0, 1]")
    n_samples = int(n_samples)
    committee = get_solver("committee", n_samples=n_samples, fraction=fraction)(design, key=key)
    return np.asarray(committee.ensemble(key, n_samples))


def posterior_coefficients(posterior, n_samples: int, *, key) -> np.ndarray:
    """(n_samples, K) coefficient draws from any Posterior (model error included where the posterior has it)."""
    return np.asarray(posterior.sample(key, int(n_samples)))


def posterior_germ(samples, reference_samples) -> np.ndarray:
    """Gaussian germ xi (M, K) of coefficient samples: xi = L^-1 (c - mean), with mean and L L^T = cov
    of ``reference_samples`` (S, K), a large cheap draw from the same posterior (see
    :func:`jaxiap.uq.germ.gaussian_germ`). Exact for Gaussian posteriors; for others
    (Student-t, model error, samples) it is the Gaussian germ of matching moments."""
    ref = np.asarray(reference_samples, np.float64)
    return np.asarray(gaussian_germ(samples, ref.mean(0), np.atleast_2d(np.cov(ref, rowvar=False)), kind="cov"))


def attempt_summary(result, true_result) -> dict:
    """JSON-ready statistics of one attempt's (M, R) FRT grid against the true run."""
    t_c = float(result.settings.t_censor)
    summ = result.summary()["all"]
    per = per_sample_frt(result.time, result.code)
    true_mean = true_result.summary()["all"]["frt_mean"]
    split = variance_split(result.time, result.code, t_c)
    true_split = variance_split(true_result.time, true_result.code, t_c)
    out = {
        "n_samples": int(result.shape[0]),
        "n_seeds": int(result.shape[1]),
        "frt": summ,
        **compare_frt(true_result, result),
        "mean_frt_ratio_to_true": summ["frt_mean"] / true_mean if true_mean and math.isfinite(true_mean) else None,
        "variance_split_restricted": split,
        "true_thermal_variance_restricted": true_split["thermal"],
        "per_sample": {k: np.asarray(v).tolist() for k, v in per.items()},
    }
    if result.shape[0] >= 2:
        lm = log_mean_frt(result.time, result.code)
        out["log_mean_frt"] = {k: (np.asarray(v).tolist() if isinstance(v, np.ndarray) else v) for k, v in lm.items()}
        finite = per["mean"][np.isfinite(per["mean"])]
        out["per_sample_mean_frt_quantiles"] = (np.quantile(finite, [0.05, 0.5, 0.95]).tolist()
                                                if finite.size else None)
        out["fraction_samples_ci_covering_true"] = float(np.mean((per["ci_low"] <= true_mean) & (true_mean <= per["ci_high"])))
    return out


def frt_pce(xi, log_mean, noise_var, degree: int | None = None, test_fraction: float = 0.25) -> dict:
    """Polynomial chaos of the log mean FRT in the Gaussian germ xi (M, d) of the coefficients.

    The surrogate is fitted by least squares on the first (1 - test_fraction)
    of the samples and validated on the rest (relative L2 error, beside the
    noise floor sqrt(mean noise_var) / rms(log_mean) set by the finite seeds per
    sample). degree None: 2 when there are at least 2 x the quadratic terms
    for training, else 1. Returns a JSON-ready dict, or None with too few samples.
    """
    xi = np.asarray(xi, np.float64)
    q = np.asarray(log_mean, np.float64)
    M, d = xi.shape
    n_test = max(1, int(round(test_fraction * M)))
    n_train = M - n_test
    if degree is None:
        degree = 2 if n_train >= 2 * total_degree_multi_indices(d, 2).shape[0] else 1
    T = total_degree_multi_indices(d, degree).shape[0]
    if n_train < T or d == 0:
        return None
    pce = fit_pce(xi[:n_train], q[:n_train], degree)
    rms = float(np.sqrt(np.mean(q[n_train:] ** 2)))
    return {
        "degree": int(degree), "n_terms": int(T), "n_train": int(n_train), "n_test": int(n_test), "dim": int(d),
        "mean_log_frt": float(pce.mean), "std_log_frt": float(pce.std),
        "sample_mean_log_frt": float(q.mean()), "sample_std_log_frt": float(q.std(ddof=1)),
        "sobol_first": np.asarray(pce.sobol_first()).tolist(),
        "sobol_total": np.asarray(pce.sobol_total()).tolist(),
        "validation_error": validation_error(pce, xi[n_train:], q[n_train:]),
        "noise_floor": float(np.sqrt(np.mean(noise_var)) / rms) if rms > 0 else None,
    }


def attempt_coefficients(name: str, config, design, fitted_posterior, *, key, saved_posterior=None):
    """(coefficients (M, K), posterior or None) for attempt ``name`` of ``config``."""
    if name == "mle":
        return np.asarray(fitted_posterior.mean)[None], None
    if name == "subsets":
        return subset_coefficients(design, config.n_subsets, key=key, fraction=config.subset_fraction), None
    if name == "posterior":
        if config.sample_posterior == config.posterior:
            post = fitted_posterior
        elif saved_posterior is not None and Path(saved_posterior).exists():
            post = load_posterior(saved_posterior)
        else:
            post = get_solver(config.sample_posterior)(design, key=jax.random.fold_in(key, 1))
            if saved_posterior is not None:
                post.save(saved_posterior)
        return posterior_coefficients(post, config.n_posterior_samples, key=jax.random.fold_in(key, 2)), post
    raise JaxiapInputError(f"attempt {name!r} is unknown; choose one of {ATTEMPTS}")


def run_attempts(config, out, design, fitted_posterior, energy_fn, true_res, *, progress=True,
                 mle_result=None, timer=None, chunk_size=None) -> tuple:
    """Run every configured attempt; returns ({name: summary dict}, {name: FRTEnsembleResult}).

    The ``mle`` attempt reuses ``mle_result`` (the main fitted run) when given.
    Results go to ``out/frt_<name>`` (chunked, resumable). chunk_size: of every
    ensemble (None: ``config.chunk_size``).
    """
    names = parse_attempts(config.attempts)
    settings = config.frt_settings()
    seeds = np.arange(config.attempt_seeds)
    summaries, results = {}, {}
    for i, name in enumerate(names):
        stage = timer(f"attempt_{name}") if timer is not None else contextlib.nullcontext()
        with stage:
            key = jax.random.fold_in(jax.random.key(config.seed + 3), i)
            coef, post = attempt_coefficients(name, config, design, fitted_posterior, key=key,
                                              saved_posterior=out / f"posterior_{config.sample_posterior}.npz")
            if not np.all(np.isfinite(coef)):
                raise JaxiapInputError(f"attempt {name}: non-finite coefficients from the fits; "
                                       "use a smaller basis or more data")
            runfolder.save_npy(out / f"coefficients_{name}.npy", coef)
            if name == "mle" and mle_result is not None:
                res = mle_result
            else:
                res = run_frt_ensemble(energy_fn, coef, seeds if name != "mle" else np.arange(config.n_seeds),
                                       lj13_minimum(), settings, run_dir=out / f"frt_{name}",
                                       base_seed=config.seed,
                                       chunk_size=config.chunk_size if chunk_size is None else chunk_size,
                                       progress=progress)
            s = attempt_summary(res, true_res)
            if name == "posterior" and post is not None and coef.shape[0] >= 4:
                ref = posterior_coefficients(post, 4096, key=jax.random.fold_in(key, 3))
                xi = posterior_germ(coef, ref)
                lm = s.get("log_mean_frt")
                if lm is not None:
                    s["pce"] = frt_pce(xi, lm["log_mean"], lm["noise_var"], config.pce_degree)
            summaries[name], results[name] = s, res
    return summaries, results


def attempt_figures(out, true_res, results: dict) -> None:
    """frt_attempts_histogram.png, survival_attempts.png (bands over samples), per_sample_frt.png."""
    t_c = float(true_res.settings.t_censor)
    samples = {"true LJ": frt_samples(true_res)}
    samples.update({name: frt_samples(r) for name, r in results.items()})
    plots.frt_histograms(samples, out / "frt_attempts_histogram.png", t_max=t_c)
    curves = {k: kaplan_meier(*v) for k, v in samples.items()}
    grid = np.linspace(0.0, t_c, 200)
    bands = {}
    for name, r in results.items():
        if r.shape[0] >= 2:
            q05, q25, q75, q95 = survival_band(r.time, r.code, grid, quantiles=(0.05, 0.25, 0.75, 0.95))
            bands[name] = [(grid, q05, q95), (grid, q25, q75)]
    plots.survival_curves(curves, out / "survival_attempts.png", bands=bands)
    true_sum = true_res.summary()["all"]
    multi = {name: per_sample_frt(r.time, r.code) for name, r in results.items() if r.shape[0] >= 2}
    if multi:
        plots.per_sample_means(multi, true_sum["frt_mean"], true_sum["frt_mean_ci95"],
                               out / "per_sample_frt.png", t_censor=t_c)
    import matplotlib.pyplot as plt  # lazy: matplotlib only for figures

    plt.close("all")


def attempts_report(s: dict) -> str:
    """Markdown section for report.md from summary['attempts']."""
    rows = []
    for name, a in s.items():
        f = a["frt"]
        v = a["variance_split_restricted"]
        lo, hi = f["frt_mean_ci95"]
        rows.append(
            f"| {name} | {a['n_samples']} x {a['n_seeds']} | {f['n_events']} | {_g(f['frt_mean'])} | [{_g(lo)}, {_g(hi)}] | "
            f"{_g(f['frt_median'])} | {a['ks_statistic']:.3f} | {_g(v['thermal'])} | {_g(v['parametric'])} | "
            f"{_g(v['parametric_fraction'])} |")
    text = ["## Uncertainty through MD: the three attempts", "",
            "Samples x seeds use common thermostat seeds. Variances are of min(FRT, t_censor) (tau^2), "
            "split by the law of total variance (thermal = seeds, parametric = coefficients, ANOVA bias-corrected).", "",
            "| attempt | samples x seeds | events | mean FRT | 95% interval | median | KS D vs true | thermal var | parametric var | parametric fraction |",
            "|---|---|---|---|---|---|---|---|---|---|", *rows, ""]
    for name, a in s.items():
        lm = a.get("log_mean_frt")
        if lm:
            text.append(f"- `{name}`: per-sample log mean FRT varies by {lm['between']:.3g} (variance), "
                        f"of which {lm['noise']:.3g} is seed noise: parametric {lm['parametric']:.3g} "
                        f"({_g(lm['parametric_fraction'])} of it); {a.get('fraction_samples_ci_covering_true', 0):.2f} "
                        "of the per-sample 95% intervals cover the true mean.")
        pce = a.get("pce")
        if pce:
            text.append(f"- `{name}` PCE of log mean FRT (degree {pce['degree']}, {pce['n_terms']} terms, d = {pce['dim']}): "
                        f"mean {pce['mean_log_frt']:.3g}, std {pce['std_log_frt']:.3g}; first-order Sobol "
                        f"{[round(x, 3) for x in pce['sobol_first']]}, total {[round(x, 3) for x in pce['sobol_total']]}; "
                        f"held-out error {pce['validation_error']:.3g} (noise floor {_g(pce['noise_floor'])}).")
    text += ["", "![FRT histograms per attempt](frt_attempts_histogram.png)", "",
             "![survival with coefficient bands (5-95% and 25-75% over samples)](survival_attempts.png)", ""]
    if any(a["n_samples"] >= 2 for a in s.values()):
        text += ["![per-sample mean FRT](per_sample_frt.png)", ""]
    return "\n".join(text)


def _g(x):
    if x is None:
        return "n/a"
    if isinstance(x, str):
        return x
    return format(x, ".3g")
