"""The LJ13 study: how does a fitted potential change first-rearrangement times?

Stages (each timed; finished stages are reused when the same command runs again):

1. data:   Langevin MD of the true LJ13 at kT, snapshots labelled with exact
           energies and forces, split into train / test (extended XYZ files);
2. fit:    a radial linear potential fitted by weighted least squares;
3. frt:    the FRT ensemble for the true LJ and for the fitted potential with
           the same thermostat seeds (chunked, resumable);
4. report: summary.json, figures (PNG) and report.md.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxiap.errors import JaxiapInputError
from jaxiap.inference.solvers import SOLVERS, get_solver

PRESETS = {
    # defaults: the 2-core CPU run of the README (under 5 minutes)
    "cpu": {},
    # thousands of seeds on a GPU, float32 MD
    "gpu": dict(n_seeds=4096, n_trajectories=64, dtype="float32",
                n_subsets=100, n_posterior_samples=128, attempt_seeds=1024),
    # seconds-long smoke runs for tests and notebooks
    "tiny": dict(n_seeds=8, t_max=5.0, n_trajectories=4, n_samples=20, sample_every=50,
                 n_subsets=3, n_posterior_samples=6, attempt_seeds=4, sample_posterior="blr"),
}


#: the ``jaxiap lj13`` option of each LJ13Config field (config errors name both)
CLI_FLAGS = {
    "seed": "--seed", "kT": "--kT", "gamma": "--gamma", "dt": "--dt", "n_q": "--n-q", "t_max": "--t-max",
    "r_b": "--r-b", "criterion": "--criterion", "n_seeds": "--seeds", "dtype": "--dtype",
    "n_trajectories": "--train-trajectories", "n_samples": "--samples-per-trajectory",
    "sample_every": "--sample-every", "basis": "--basis", "basis_size": "--basis-size", "r_min": "--r-min",
    "r_cut": "--r-cut", "energy_weight": "--energy-weight", "force_weight": "--force-weight",
    "posterior": "--posterior", "attempts": "--attempts", "n_subsets": "--n-subsets",
    "subset_fraction": "--subset-fraction", "n_posterior_samples": "--posterior-samples",
    "sample_posterior": "--sample-posterior", "attempt_seeds": "--attempt-seeds", "pce_degree": "--pce-degree",
    "chunk_size": "--chunk-size",
}

#: seeds are 32-bit: the config seed is the base seed of the thermostat keys
#: (``run_frt_ensemble(base_seed=seed)``) and thermostat seeds are 0 .. n_seeds - 1
SEED_LIMIT = 2**32


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def field_text(config, name: str, flags: dict) -> str:
    """``"n_q=7 (--n-q)"``: a config field, its value and (when it has one) its command-line option."""
    flag = flags.get(name)
    return f"{name}={getattr(config, name)!r}" + (f" ({flag})" if flag else "")


def check_seed(config, flags: dict, derived: str) -> None:
    """The config seed must be an integer in [0, 2**32); ``derived`` says what else it keys."""
    if not (_is_int(config.seed) and 0 <= config.seed < SEED_LIMIT):
        raise JaxiapInputError(f"{field_text(config, 'seed', flags)}: must be an integer in [0, 2**32) (the "
                               f"base seed of the thermostat keys; {derived}); e.g. --seed 0")


def validated_frt_settings(config, flags: dict, **fields):
    """FRTSettings from config fields, built (and so validated) once, when the config is made.

    Errors name the config field and its command-line option.
    """
    from jaxiap.md.ensemble import FRTSettings

    every = FRTSettings.sample_every  # MD steps between energy samples of the FRT ensemble (fixed)
    n_q = fields.get("n_q", FRTSettings.n_q)
    if _is_int(n_q) and n_q >= 1 and n_q % every:
        lo, opt = every * max(1, n_q // every), flags.get("n_q", "n_q =")
        raise JaxiapInputError(f"{field_text(config, 'n_q', flags)}: must be a multiple of {every} (the FRT "
                               f"ensemble samples the potential energy every {every} MD steps); e.g. {opt} {lo}")
    try:
        return FRTSettings(**fields)
    except JaxiapInputError as exc:
        flag = flags.get(getattr(exc, "field", None))
        raise JaxiapInputError(f"{exc}" + (f" (set by {flag})" if flag else "")) from None


@dataclasses.dataclass(frozen=True)
class LJ13Config:
    """Every setting of the study (reduced LJ units: sigma = epsilon = mass = 1)."""

    seed: int = 0
    # MD / FRT protocol (docs/science.md sections 3-5)
    kT: float = 0.30
    gamma: float = 1.0
    dt: float = 0.005
    n_q: int = 100
    t_max: float = 100.0
    r_b: float = 1.35
    criterion: str = "graph"
    n_seeds: int = 256
    dtype: str = "float64"
    # reference data
    n_trajectories: int = 16
    n_samples: int = 50
    sample_every: int = 100
    n_equilibrate: int = 200
    test_fraction: float = 0.2
    # fitted potential
    basis: str = "chebyshev"
    basis_size: int = 3
    r_min: float = 0.8
    r_cut: float = 3.0
    energy_weight: float = 1.0
    force_weight: float = 1.0
    posterior: str = "lstsq"
    # forward UQ: the three attempts (jaxiap.workflows.lj13_attempts)
    attempts: str = "mle,subsets,posterior"
    n_subsets: int = 8
    subset_fraction: float = 0.5
    n_posterior_samples: int = 16
    sample_posterior: str = "merr-iid"
    attempt_seeds: int = 64
    pce_degree: int | None = None
    # execution
    chunk_size: int | None = None

    def __post_init__(self):
        def field(name):
            return field_text(self, name, CLI_FLAGS)

        def bad(name, why):
            raise JaxiapInputError(f"{field(name)}: {why}")

        check_seed(self, CLI_FLAGS, "seed + 1, + 2, + 3 key the data split, the fit and the attempts")
        for name in ("kT", "gamma", "dt", "t_max", "r_b", "r_cut", "r_min"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float, np.number)) and math.isfinite(v) and v > 0):
                bad(name, "must be a positive finite number")
        for name in ("n_q", "n_seeds", "n_trajectories", "n_samples", "sample_every", "basis_size",
                     "n_subsets", "n_posterior_samples", "attempt_seeds"):
            if not (_is_int(getattr(self, name)) and getattr(self, name) >= 1):
                bad(name, "must be a positive integer")
        for name in ("n_seeds", "attempt_seeds"):
            if getattr(self, name) > SEED_LIMIT:
                bad(name, "thermostat seeds are 32-bit: at most 2**32 of them")
        if not (_is_int(self.n_equilibrate) and self.n_equilibrate >= 0):
            bad("n_equilibrate", "must be an integer >= 0")
        if not 0.0 < self.test_fraction < 1.0:
            bad("test_fraction", "must be in (0, 1)")
        if self.r_min >= self.r_cut:
            bad("r_min", f"must be smaller than {field('r_cut')}")
        if not all(isinstance(w, (int, float, np.number)) and math.isfinite(w)
                   for w in (self.energy_weight, self.force_weight)):
            bad("force_weight", "energy and force weights must be finite numbers")
        if self.energy_weight < 0 or self.force_weight < 0 or self.energy_weight + self.force_weight == 0:
            bad("force_weight", f"energy and force weights must be >= 0 and not both 0 ({field('energy_weight')})")
        if not 0.0 < self.subset_fraction <= 1.0:
            bad("subset_fraction", "must be in (0, 1]")
        if self.pce_degree is not None and not (_is_int(self.pce_degree) and self.pce_degree >= 1):
            bad("pce_degree", "must be a positive integer (or None for automatic)")
        from jaxiap.workflows.lj13_attempts import parse_attempts

        try:
            attempts = parse_attempts(self.attempts)
        except JaxiapInputError as exc:
            raise JaxiapInputError(f"{exc} (--attempts)") from None
        if self.chunk_size is not None and not (_is_int(self.chunk_size) and self.chunk_size >= 1):
            bad("chunk_size", "must be a positive integer")
        from jaxiap.descriptors.radial import FAMILIES

        if self.basis not in FAMILIES:
            bad("basis", f"choose one of {FAMILIES}")
        for name in ("posterior", "sample_posterior"):
            if getattr(self, name) not in SOLVERS:
                bad(name, f"choose one of {tuple(SOLVERS)}")
        # the FRT settings of every ensemble of the study, validated once here
        object.__setattr__(self, "_frt_settings", validated_frt_settings(
            self, CLI_FLAGS, kT=self.kT, gamma=self.gamma, dt=self.dt, n_q=self.n_q, t_max=self.t_max,
            r_b=self.r_b, criterion=self.criterion, dtype=self.dtype))

        # data: the train / test split of generate_data (jaxiap.data.split) must leave both non-empty
        n_total = self.n_trajectories * self.n_samples
        fractions = np.asarray((1 - self.test_fraction, self.test_fraction), float)
        n_train, n_end = np.round(np.cumsum(fractions) * n_total).astype(int)
        n_train, n_test = int(n_train), int(n_end - n_train)
        if n_train < 1 or n_test < 1:
            raise JaxiapInputError(
                f"{field('n_trajectories')} x {field('n_samples')} = {n_total} structures: split {n_train} train / "
                f"{n_test} test (test_fraction {self.test_fraction}), each needs at least one; raise "
                "--train-trajectories or --samples-per-trajectory")

        # least-squares fits need more weighted rows than coefficients (fit_lstsq, the flat-prior NIG)
        rows = (1 if self.energy_weight > 0 else 0) + (3 * 13 if self.force_weight > 0 else 0)
        k = self.basis_size

        def enough_rows(n_structures, what, fix):
            if n_structures * rows <= k:
                bad("basis_size", f"{what} sees {n_structures} training structure(s) x {rows} weighted row(s) = "
                                  f"{n_structures * rows} rows, not more than the {k} coefficients; lower "
                                  f"--basis-size or {fix}")

        more_data = "raise --train-trajectories / --samples-per-trajectory"
        for name, kind in (("posterior", self.posterior), ("sample_posterior", self.sample_posterior)):
            if name == "sample_posterior" and ("posterior" not in attempts or kind == self.posterior):
                continue
            what = f"{CLI_FLAGS[name]} {kind}"
            if kind in ("lstsq", "nig"):
                enough_rows(n_train, what, more_data)
            elif kind in ("bootstrap", "committee"):  # 32 fits on 0.8 x the training structures
                enough_rows(max(1, int(round(0.8 * n_train))), what, more_data)
        if "subsets" in attempts:  # least-squares fits on round(subset_fraction x n_train) structures
            enough_rows(max(1, int(round(self.subset_fraction * n_train))), "each 'subsets' fit",
                        f"raise --subset-fraction or {more_data}")

        # the attempts' thermal / parametric variance split needs 2 seeds per ensemble
        if attempts and self.n_seeds < 2:
            bad("n_seeds", "the attempts' thermal/parametric variance split needs at least 2 seeds; use --seeds 2 "
                           "or more, or --attempts none")
        if set(attempts) & {"subsets", "posterior"} and self.attempt_seeds < 2:
            bad("attempt_seeds", "the thermal/parametric variance split needs at least 2 seeds per coefficient "
                                 "sample; use --attempt-seeds 2 or more")
        # an explicit PCE degree must be fittable from the posterior samples (frt_pce: 3/4 train, 1/4 test)
        if self.pce_degree is not None and "posterior" in attempts:
            m = self.n_posterior_samples
            n_fit = m - max(1, int(round(0.25 * m)))
            terms = math.comb(k + self.pce_degree, self.pce_degree)
            if m < 4 or n_fit < terms:
                bad("pce_degree", f"a degree-{self.pce_degree} chaos in the {k} coefficients has {terms} terms and "
                                  f"is fitted on 3/4 of the posterior samples ({n_fit} of {field('n_posterior_samples')}, "
                                  f"at least 4 needed); raise --posterior-samples, lower --pce-degree or leave it "
                                  "out (automatic)")
        # a chunk larger than every MD ensemble would only be padding
        if self.chunk_size is not None:
            sizes = {"--seeds": self.n_seeds}
            if "subsets" in attempts:
                sizes["--n-subsets x --attempt-seeds"] = self.n_subsets * self.attempt_seeds
            if "posterior" in attempts:
                sizes["--posterior-samples x --attempt-seeds"] = self.n_posterior_samples * self.attempt_seeds
            largest = max(sizes.values())
            if self.chunk_size > largest:
                which = " / ".join(f"{opt} = {n}" for opt, n in sizes.items())
                bad("chunk_size", f"larger than the largest MD ensemble ({which} replicas), so it would only pad; "
                                  f"use --chunk-size {largest} or less, or leave it out (automatic)")

    @classmethod
    def from_preset(cls, preset: str = "cpu", **overrides) -> "LJ13Config":
        if preset not in PRESETS:
            raise JaxiapInputError(f"preset={preset!r} is unknown; choose one of {tuple(PRESETS)}")
        return cls(**{**PRESETS[preset], **overrides})

    def frt_settings(self):
        """The FRTSettings of the study's ensembles (built and validated with the config)."""
        return self._frt_settings


#: the --posterior / --sample-posterior choices: the names of the solver registry
#: (jaxiap.inference.solvers.SOLVERS; each fit is ``get_solver(name)(design, key=...)``)
POSTERIOR_CHOICES = tuple(SOLVERS)
PRESET_CHOICES = tuple(PRESETS)
DEFAULTS = LJ13Config()


def true_lj_energy(coefficients, positions):
    """The true LJ energy in the ``energy_fn(coefficients, positions)`` form (coefficients unused)."""
    from jaxiap.systems.lj import lj_energy

    return lj_energy(positions)


def make_basis(config: LJ13Config):
    from jaxiap.descriptors.radial import RadialBasis
    from jaxiap.potentials.linear import LinearBasis

    return LinearBasis(RadialBasis(config.basis, config.basis_size, config.r_min, config.r_cut))


def _check_reference_data(ds, config) -> None:
    """Refuse reference data from an MD run that blew up or evaporated (e.g. --dt far too large)."""
    from jaxiap.md.qoi import evaporated

    finite = np.isfinite(np.asarray(ds.energy)) & np.all(np.isfinite(np.asarray(ds.forces)), axis=(1, 2))
    gone = np.asarray(jax.vmap(evaporated)(jnp.asarray(ds.structures.positions)))
    n_bad = int(np.sum(~finite | gone))
    if not finite.all() or n_bad > len(finite) // 2:
        raise JaxiapInputError(
            f"reference MD blew up or evaporated: {n_bad} of {len(finite)} snapshots are non-finite or have an "
            f"atom farther than 3 sigma from the rest, at dt={config.dt} (--dt) and kT={config.kT} (--kT); "
            "use a smaller --dt (0.005 tau is the LJ default) or a lower --kT")


def generate_data(config: LJ13Config, folder: Path | None = None):
    """(train, test) Datasets; read from ``folder`` when already written there.

    Each split is written as extended XYZ (for other codes) and as a lossless .npz.
    """
    from jaxiap.data import load_npz, save_npz, split, write_extxyz
    from jaxiap.runfolder import ensure_dir
    from jaxiap.systems.lj import lj13_dataset

    if folder is not None and (folder / "train.npz").exists() and (folder / "test.npz").exists():
        return load_npz(folder / "train.npz"), load_npz(folder / "test.npz")
    ds = lj13_dataset(config.seed, config.n_trajectories, config.n_samples, config.sample_every,
                      config.kT, config.gamma, config.dt, config.n_equilibrate)
    _check_reference_data(ds, config)
    train, test = split(jax.random.key(config.seed + 1), ds, (1 - config.test_fraction, config.test_fraction))
    if folder is not None:
        ensure_dir(folder)
        for name, ds in (("train", train), ("test", test)):
            write_extxyz(folder / f"{name}.xyz", ds)
            save_npz(folder / f"{name}.npz", ds)
    return train, test


def fit_potential(config: LJ13Config, train, saved=None):
    """Fit the configured posterior; returns (basis, posterior, design).

    ``saved``: a posterior .npz written by an earlier run of the same
    configuration; when it exists it is loaded instead of refitting.
    """
    from jaxiap.inference.linear import reweight
    from jaxiap.inference.posterior import load_posterior
    from jaxiap.potentials.linear import design_matrix

    basis = make_basis(config)
    design = reweight(design_matrix(basis, train), config.energy_weight, config.force_weight)
    if saved is not None and Path(saved).exists():
        return basis, load_posterior(saved), design
    posterior = get_solver(config.posterior)(design, key=jax.random.key(config.seed + 2))
    if saved is not None:
        posterior.save(saved)
    return basis, posterior, design


def evaluate_fit(basis, coefficients, dataset):
    from jaxiap.inference.metrics import fit_errors, parity_data
    from jaxiap.potentials.linear import LinearPotential

    e, f = LinearPotential(basis, jnp.asarray(coefficients)).batch_energy_and_forces(dataset.structures)
    return fit_errors(dataset, e, f), parity_data(dataset, e, f)


def frt_samples(result):
    """(times, events) of non-failed replicas; events False means censored (or evaporated)."""
    from jaxiap.md.qoi import EVENT, FAILED

    ok = result.code.ravel() != FAILED
    return result.time.ravel()[ok], (result.code.ravel() == EVENT)[ok]


def compare_frt(true_result, fitted_result) -> dict:
    """Two-sample KS test of min(FRT, t_censor) between true and fitted runs.

    Censored runs enter at their censoring time; both ensembles share t_censor,
    so this compares the distributions of the censored times.
    """
    from jaxiap.md.qoi import ks_two_sample

    (ta, _), (tb, _) = frt_samples(true_result), frt_samples(fitted_result)
    stat, p = ks_two_sample(ta, tb)
    return {"ks_statistic": float(stat), "ks_pvalue": float(p)}


def run_lj13(config: LJ13Config = LJ13Config(), out_dir="runs/lj13", overwrite: bool = False,
             progress: bool = True) -> dict:
    """Run the whole study into ``out_dir``; returns the summary dict (also in summary.json)."""
    from jaxiap.md.ensemble import run_frt_ensemble
    from jaxiap.potentials.linear import energy_fn
    from jaxiap.systems.lj import lj13_minimum
    from jaxiap.runfolder import open_run_folder, write_json
    from jaxiap.workflows.timing import StageTimer

    out = open_run_folder(out_dir, dataclasses.asdict(config), kind="lj13", overwrite=overwrite)
    timer = StageTimer(verbose=progress)
    with timer("data"):
        train, test = generate_data(config, out / "data")
    with timer("fit"):
        basis, posterior, design = fit_potential(config, train, saved=out / "posterior.npz")
        coef = np.asarray(posterior.mean)
        errors = {"train": evaluate_fit(basis, coef, train)[0]}
        errors["test"], parity = evaluate_fit(basis, coef, test)

    settings = config.frt_settings()
    seeds = np.arange(config.n_seeds)
    start = lj13_minimum()
    common = dict(base_seed=config.seed, chunk_size=config.chunk_size, progress=progress)
    with timer("frt_true"):
        true_res = run_frt_ensemble(true_lj_energy, np.zeros((1, 1)), seeds, start, settings,
                                    run_dir=out / "frt_true", **common)
    with timer("frt_fitted"):
        fitted_energy = energy_fn(basis)
        fit_res = run_frt_ensemble(fitted_energy, coef[None], seeds, start, settings,
                                   run_dir=out / "frt_fitted", **common)
    from jaxiap.workflows.lj13_attempts import attempt_figures, run_attempts

    attempts, attempt_results = run_attempts(config, out, design, posterior, fitted_energy, true_res,
                                             progress=progress, mle_result=fit_res, timer=timer)
    with timer("report"):
        true_sum, fit_sum = true_res.summary()["all"], fit_res.summary()["all"]
        summary = {
            "study": "lj13",
            "data": {"n_train": len(train), "n_test": len(test),
                     "n_train_rows": int(np.sum(np.asarray(design.w) > 0)),
                     "n_atoms": 13, "kT": config.kT},
            "fit": {"basis": config.basis, "basis_size": config.basis_size, "r_min": config.r_min,
                    "r_cut": config.r_cut, "posterior": config.posterior,
                    "coefficients": coef.tolist(), **errors},
            "true": true_sum,
            "fitted": fit_sum,
            **compare_frt(true_res, fit_res),
            "attempts": attempts,
            "t_censor": settings.t_censor,
            "settings": {"kT": config.kT, "gamma": config.gamma, "dt": config.dt, "n_q": config.n_q,
                         "t_max": config.t_max, "r_b": config.r_b, "criterion": config.criterion,
                         "seed": config.seed, "n_seeds": config.n_seeds, "dtype": config.dtype},
        }
        write_figures(out, config, basis, coef, parity, true_res, fit_res)
        if attempt_results:
            attempt_figures(out, true_res, attempt_results)
        summary["wall_time_s"] = dict(timer.times)
        write_json(out / "summary.json", summary)
        write_report(out, summary)
    summary["wall_time_s"] = dict(timer.times)
    write_json(out / "summary.json", summary)
    return summary


def pair_curves(basis, coefficients, r=None):
    """Pair energy and force of the fitted radial model and of the true LJ on a grid r (P,)."""
    from jaxiap.systems.lj import lj_pair

    r = jnp.linspace(0.88, basis.radial.r_cut + 0.3, 300) if r is None else jnp.asarray(r)
    fit_e = basis.radial(r) @ jnp.asarray(coefficients)[: basis.radial.n_basis]
    fit_f = -jax.vmap(jax.grad(lambda x: basis.radial(x) @ jnp.asarray(coefficients)[: basis.radial.n_basis]))(r)
    true_e = lj_pair(r)
    true_f = -jax.vmap(jax.grad(lj_pair))(r)
    return tuple(np.asarray(v) for v in (r, true_e, fit_e, true_f, fit_f))


def write_figures(out: Path, config, basis, coef, parity, true_res, fit_res) -> None:
    from jaxiap import plots
    from jaxiap.md.qoi import kaplan_meier

    plots.parity(parity, out / "parity.png", title="fitted potential on held-out LJ13 data")
    plots.pair_profiles(*pair_curves(basis, coef), path=out / "pair_profiles.png")
    samples = {"true LJ": frt_samples(true_res), "fitted": frt_samples(fit_res)}
    plots.frt_histograms(samples, out / "frt_histogram.png", t_max=true_res.settings.t_censor)
    plots.survival_curves({k: kaplan_meier(*v) for k, v in samples.items()}, out / "survival.png")
    plots.energy_histograms(true_res.energy_bin_edges,
                            {"true LJ": true_res.pooled_energy_hist(), "fitted": fit_res.pooled_energy_hist()},
                            out / "energy_histogram.png")
    import matplotlib.pyplot as plt

    plt.close("all")


def _fmt(x, spec=".3g"):
    if x is None:
        return "n/a"
    if isinstance(x, str):
        return x
    return format(x, spec)


def write_report(out: Path, s: dict) -> None:
    from jaxiap.workflows.lj13_attempts import attempts_report

    rows = []
    for key in ("true", "fitted"):
        d = s[key]
        lo, hi = d["frt_mean_ci95"]
        rows.append(f"| {key} | {d['n_runs']} | {d['n_events']} | {d['n_censored']} | {d['n_evaporated']} | "
                    f"{d['n_failed']} | {_fmt(d['frt_mean'])} | [{_fmt(lo)}, {_fmt(hi)}] | {_fmt(d['frt_median'])} |")
    fit = s["fit"]
    st = s["settings"]
    text = f"""# LJ13 first-rearrangement times: true vs fitted potential

Settings: kT = {st['kT']}, gamma = {st['gamma']}, dt = {st['dt']}, basin check every n_q = {st['n_q']} steps,
t_max = {st['t_max']} tau (censoring at {s['t_censor']:.4g} tau), criterion `{st['criterion']}` (r_b = {st['r_b']}),
{st['n_seeds']} thermostat seeds, seed {st['seed']}, {st['dtype']}.

## Fitted potential

{fit['basis']} radial basis, {fit['basis_size']} functions, r in [{fit['r_min']}, {fit['r_cut']}], posterior `{fit['posterior']}`;
trained on {s['data']['n_train']} structures, tested on {s['data']['n_test']}.

| set | energy RMSE / atom | force RMSE | force RMSE / force std |
|---|---|---|---|
| train | {fit['train']['energy_rmse_per_atom']:.3g} | {fit['train']['force_rmse']:.3g} | {fit['train']['force_rmse_relative']:.3g} |
| test | {fit['test']['energy_rmse_per_atom']:.3g} | {fit['test']['force_rmse']:.3g} | {fit['test']['force_rmse_relative']:.3g} |

![parity](parity.png)

![pair profiles](pair_profiles.png)

## First rearrangement times

| potential | runs | events | censored | evaporated | failed | mean FRT (MLE) | 95% interval | median (KM) |
|---|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}

Two-sample KS (min(FRT, t_censor), true vs fitted): D = {s['ks_statistic']:.3f}, p = {s['ks_pvalue']:.3g}.

![FRT histograms](frt_histogram.png)

![survival](survival.png)

![energy histograms](energy_histogram.png)

{attempts_report(s["attempts"]) if s.get("attempts") else ""}
Wall time per stage (s): {', '.join(f'{k} {v:.1f}' for k, v in s.get('wall_time_s', {}).items())}
"""
    from jaxiap.runfolder import write_text

    write_text(out / "report.md", text)
