"""The ``jaxiap`` command.

Importing this module stays light (argparse only); the study code, JAX and
jax-md are imported when a subcommand runs.
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import sys

from jaxiap._version import __version__
from jaxiap.errors import JaxiapInputError


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _number(cast, minimum, what):
    """argparse type: ``cast(text)``, finite and >= ``minimum``; the error says ``what`` was expected."""

    def parse(text):
        try:
            v = cast(text)
        except ValueError:
            v = None
        if v is None or not minimum <= v < float("inf"):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return v

    return parse


_positive_int = _number(int, 1, "a positive integer")
_positive_float = _number(float, math.ulp(0.0), "a positive finite number")  # smallest float > 0
_nonneg_float = _number(float, 0.0, "a finite number >= 0")
_nonnegative_int = _number(int, 0, "an integer >= 0")


def _seed(text):
    """argparse type: a master seed, an integer in [0, 2**32) (the base seed of the 32-bit thermostat keys)."""
    try:
        v = int(text)
    except ValueError:
        v = None
    if v is None or not 0 <= v < 2**32:
        raise argparse.ArgumentTypeError(f"expected an integer in [0, 2**32), got {text!r}")
    return v


def _add_run_options(p, out: str, presets, seed: int, preset_help: str, devices: bool = True):
    """The 'run' option group every study command shares; returns the group for extra options."""
    g = p.add_argument_group("run")
    g.add_argument("--out", default=out, help=f"run folder [{out}]")
    g.add_argument("--config", default=None, metavar="FILE.toml",
                   help="TOML file of config fields (docs/config.md), e.g. a run folder's config.toml, which "
                        "holds that run's resolved configuration; options given here override it")
    g.add_argument("--preset", choices=presets, default=None,
                   help=f"size preset: {preset_help}, tiny (seconds; smoke test); a config file and explicit "
                        "options override the preset [the config file's preset key, else cpu]")
    g.add_argument("--seed", type=_seed, default=None, help=f"master random seed, in [0, 2**32) [{seed}]")
    g.add_argument("--overwrite", action="store_true", help="discard a run folder that holds another configuration")
    g.add_argument("--no-progress", action="store_true", help="no progress bars or stage messages")
    if not devices:
        return g
    g.add_argument("--devices", type=_positive_int, default=None,
                   help="split the CPU into this many JAX devices to shard the MD replicas [one per core, at most 8]")
    return g


def _add_lj13(sub):
    # lazy: keeps import jaxiap.cli light (see the module docstring)
    from jaxiap.workflows.lj13_config import POSTERIOR_CHOICES, PRESET_CHOICES, DEFAULTS as d

    p = sub.add_parser(
        "lj13",
        help="LJ13 study: fit a potential, compare first-rearrangement times with the true LJ",
        description=(
            "Generate LJ13 reference data from the true Lennard-Jones potential, fit a radial linear "
            "potential, run the first-rearrangement-time (FRT) ensemble for the true and the fitted "
            "potential with the same thermostat seeds, and write summary.json, figures and report.md "
            "to the run folder. Reduced LJ units throughout. Re-running the same command resumes."
        ),
    )
    g = _add_run_options(p, "runs/lj13", PRESET_CHOICES, d.seed,
                         "cpu (default run, minutes on 2 cores), gpu (4096 seeds, float32)")
    g.add_argument("--chunk-size", type=_positive_int, default=None,
                   help="replicas per compiled MD chunk [chosen from available memory]")
    g = p.add_argument_group("MD and FRT protocol")
    g.add_argument("--kT", type=_positive_float, default=None, help=f"temperature (epsilon) [{d.kT}]")
    g.add_argument("--gamma", type=_positive_float, default=None, help=f"Langevin friction (1/tau) [{d.gamma}]")
    g.add_argument("--dt", type=_positive_float, default=None, help=f"time step (tau) [{d.dt}]")
    g.add_argument("--n-q", type=_positive_int, default=None, help=f"MD steps between basin checks [{d.n_q}]")
    g.add_argument("--t-max", type=_positive_float, default=None, help=f"follow-up time per run (tau) [{d.t_max}]")
    g.add_argument("--r-b", type=_positive_float, default=None, help=f"bond cutoff of the basin criterion (sigma) [{d.r_b}]")
    g.add_argument("--criterion", choices=("graph", "energy", "n12"), default=None,
                   help=f"basin-change criterion [{d.criterion}]")
    g.add_argument("--screen-steps", type=_nonnegative_int, default=None,
                   help="FIRE steps of the screen that settles most basin checks without a full quench, with "
                        f"the same decisions (docs/science.md 5.2a); 0: quench every check fully [{d.screen_steps}]")
    g.add_argument("--seeds", type=_positive_int, default=None, help=f"thermostat seeds per potential [{d.n_seeds}]")
    g.add_argument("--dtype", choices=("float64", "float32"), default=None, help=f"MD precision [{d.dtype}]")
    g = p.add_argument_group("reference data")
    g.add_argument("--train-trajectories", type=_positive_int, default=None,
                   help=f"Langevin trajectories sampled for data [{d.n_trajectories}]")
    g.add_argument("--samples-per-trajectory", type=_positive_int, default=None,
                   help=f"snapshots per trajectory [{d.n_samples}]")
    g.add_argument("--sample-every", type=_positive_int, default=None, help=f"MD steps between snapshots [{d.sample_every}]")
    g = p.add_argument_group("fitted potential")
    g.add_argument("--basis", choices=("chebyshev", "bessel", "gaussian"), default=None,
                   help=f"radial function family [{d.basis}]")
    g.add_argument("--basis-size", type=_positive_int, default=None, help=f"number of radial functions [{d.basis_size}]")
    g.add_argument("--r-min", type=_positive_float, default=None, help=f"inner radius of the basis (sigma) [{d.r_min}]")
    g.add_argument("--r-cut", type=_positive_float, default=None, help=f"cutoff radius (sigma) [{d.r_cut}]")
    g.add_argument("--energy-weight", type=_nonneg_float, default=None, help=f"weight of energy rows [{d.energy_weight}]")
    g.add_argument("--force-weight", type=_nonneg_float, default=None, help=f"weight of force rows [{d.force_weight}]")
    g.add_argument("--posterior", choices=POSTERIOR_CHOICES, default=None, help=f"fit / posterior kind [{d.posterior}]")
    g = p.add_argument_group("uncertainty through MD (the three attempts)")
    g.add_argument("--attempts", default=None,
                   help=f"comma list of mle, subsets, posterior, or 'none' [{d.attempts}]")
    g.add_argument("--n-subsets", type=_positive_int, default=None,
                   help=f"attempt 'subsets': fits on random training subsets [{d.n_subsets}]")
    g.add_argument("--subset-fraction", type=_positive_float, default=None,
                   help=f"attempt 'subsets': share of training structures per fit, in (0, 1] [{d.subset_fraction}]")
    g.add_argument("--posterior-samples", type=_positive_int, default=None,
                   help=f"attempt 'posterior': coefficient draws [{d.n_posterior_samples}]")
    g.add_argument("--sample-posterior", choices=POSTERIOR_CHOICES, default=None,
                   help=f"attempt 'posterior': the posterior to draw from [{d.sample_posterior}]")
    g.add_argument("--attempt-seeds", type=_positive_int, default=None,
                   help=f"thermostat seeds per coefficient sample in the subsets/posterior attempts [{d.attempt_seeds}]")
    g.add_argument("--pce-degree", type=_positive_int, default=None,
                   help="total degree of the PCE of log mean FRT [automatic: 2 with enough samples, else 1]")
    p.set_defaults(func=_run_lj13, parser=p)


def _overrides(args, flags: dict) -> dict:
    """Config overrides from the parsed options, through the workflow's one table ``flags`` (field -> option).

    An option left out (None) keeps the preset's value; a ``--no-X`` switch, when given, sets its field to False.
    """
    overrides = {}
    for field, flag in flags.items():
        value = getattr(args, flag[2:].replace("-", "_"))
        if flag.startswith("--no-"):
            if value:
                overrides[field] = False
        elif value is not None:
            overrides[field] = value
    return overrides


#: the config module and dataclass of each study command (the module holds its CLI_FLAGS and PRESETS)
STUDY_CONFIGS = {
    "lj13": ("jaxiap.workflows.lj13_config", "LJ13Config"),
    "lj13-al": ("jaxiap.workflows.lj13_al_config", "LJ13ALConfig"),
    "otf": ("jaxiap.workflows.otf_config", "OTFConfig"),
    "uq-compare": ("jaxiap.workflows.uq_compare_config", "UQCompareConfig"),
    "fit": ("jaxiap.workflows.fit_config", "FitConfig"),
    "predict": ("jaxiap.workflows.predict_config", "PredictConfig"),
    "sweep": ("jaxiap.workflows.sweep_config", "SweepConfig"),
}


def study_config(args):
    """The study config of parsed ``args`` (``build_parser().parse_args([...])``): dataclass defaults <
    preset (``--preset``, else the config file's ``preset`` key, else cpu) < ``--config`` file < the
    options given on the command line (:func:`_overrides`; argparse defaults never override).

    A bad config file raises JaxiapInputError naming it, before any work (docs/config.md).
    """
    # lazy: keeps import jaxiap.cli light (see the module docstring)
    from jaxiap.workflows.config_file import resolve_config

    module_name, class_name = STUDY_CONFIGS[args.command]
    module = importlib.import_module(module_name)
    overrides = _overrides(args, module.CLI_FLAGS)
    for field in getattr(module, "POSITIONAL_FIELDS", ()):  # input files given as positional arguments
        if getattr(args, field, None) is not None:
            overrides[field] = getattr(args, field)
    return resolve_config(getattr(module, class_name), module.CLI_FLAGS, tuple(module.PRESETS),
                          preset=args.preset, path=args.config, overrides=overrides)


def _run_recorded(args, config, run):
    """``run()`` the study into ``args.out``, then write the folder's config.toml (the resolved config:
    ``jaxiap <command> --config <out>/config.toml`` reproduces the run), also when the run is interrupted
    or fails after its folder was opened; refuse a config.toml jaxiap did not write before any work."""
    from jaxiap.workflows.config_file import check_resolved_config_target, write_resolved_config

    check_resolved_config_target(args.out)
    try:
        result = run()
    except BaseException:
        try:
            write_resolved_config(args.out, config, args.command)
        except Exception:  # never hide the run's own error
            pass
        raise
    write_resolved_config(args.out, config, args.command)
    return result


def _split_cpu(n_devices: int | None) -> None:
    """Expose the CPU as several JAX devices so the replica axis shards over all cores.

    Takes effect only before JAX starts its backend; on a GPU machine the GPUs
    stay the default devices and the extra CPU devices are unused.
    """
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" in flags:
        return
    n = n_devices or min(os.cpu_count() or 1, 8)
    if n > 1:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n}".strip()


def _run_lj13(args) -> int:
    _split_cpu(args.devices)
    # lazy: keeps import jaxiap.cli light (see the module docstring)
    from jaxiap.workflows.lj13 import run_lj13

    config = study_config(args)
    summary = _run_recorded(args, config, lambda: run_lj13(config, args.out, overwrite=args.overwrite,
                                                             progress=not args.no_progress))
    t, f = summary["true"], summary["fitted"]
    print(f"mean FRT true   {t['frt_mean']:.3g} tau  95% [{t['frt_mean_ci95'][0]:.3g}, {t['frt_mean_ci95'][1]:.3g}]"
          f"  ({t['n_events']}/{t['n_runs']} events)")
    print(f"mean FRT fitted {f['frt_mean']:.3g} tau  95% [{f['frt_mean_ci95'][0]:.3g}, {f['frt_mean_ci95'][1]:.3g}]"
          f"  ({f['n_events']}/{f['n_runs']} events)")
    for name, a in summary.get("attempts", {}).items():
        if name == "mle":
            continue
        m, v = a["frt"], a["variance_split_restricted"]
        print(f"mean FRT {name:<9} {m['frt_mean']:.3g} tau  95% [{m['frt_mean_ci95'][0]:.3g}, {m['frt_mean_ci95'][1]:.3g}]"
              f"  ({a['n_samples']} samples x {a['n_seeds']} seeds; parametric share of variance "
              f"{v['parametric_fraction']:.2f})")
    print(f"KS D = {summary['ks_statistic']:.3f} (p = {summary['ks_pvalue']:.3g}); results in {args.out}/report.md")
    return 0


def _strategy_list(text):
    """argparse type: a comma list of active-learning strategy names."""
    # lazy: keeps import jaxiap.cli light (see the module docstring)
    from jaxiap.workflows.lj13_al_config import STRATEGY_NAMES

    names = [t.strip() for t in text.split(",") if t.strip()]
    bad = [n for n in names if n not in STRATEGY_NAMES]
    if not names or bad or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(
            f"expected distinct names from {','.join(STRATEGY_NAMES)}, got {text!r}")
    return tuple(names)


def _add_lj13_al(sub):
    # lazy: keeps import jaxiap.cli light (see the module docstring)
    from jaxiap.workflows.lj13_al_config import GENERATOR_NAMES, PRESET_CHOICES, STRATEGY_NAMES, DEFAULTS as d

    p = sub.add_parser(
        "lj13-al",
        help="LJ13 active learning: compare selection strategies (DPP, optimal design, QBC, ...)",
        description=(
            "Pool-based active learning of a radial linear potential for LJ13: select configurations "
            "from a pool of MD snapshots at several temperatures, label them with the true LJ, refit a "
            "Bayesian linear model, repeat; compare strategies by held-out force error and by the "
            "first-rearrangement-time (FRT) error against the true LJ, over repetitions. Writes "
            "summary.json, learning curves, a DPP inclusion-probability figure and report.md to the "
            "run folder. Re-running the same command resumes."
        ),
    )
    _add_run_options(p, "runs/lj13-al", PRESET_CHOICES, d.seed,
                     "cpu (default, minutes on 2 cores), gpu (more repetitions and FRT seeds)")
    g = p.add_argument_group("active learning")
    g.add_argument("--strategies", type=_strategy_list, default=None,
                   help=f"comma list of strategies [{','.join(STRATEGY_NAMES)}]")
    g.add_argument("--generator", choices=GENERATOR_NAMES, default=None,
                   help="where candidates come from: the fixed pool, or generated from the current posterior at "
                        "every iteration by Langevin, Stein, UDD, HAL or metadynamics MD on the surrogate, or by "
                        f"adversarial attacks (docs/generation.md) [{d.generator}]")
    g.add_argument("--candidates", type=_positive_int, default=None,
                   help=f"generated candidates per iteration, a multiple of 4 [{d.n_candidates}]")
    g.add_argument("--repetitions", type=_positive_int, default=None,
                   help=f"repetitions with different initial sets [{d.repetitions}]")
    g.add_argument("--initial", type=_positive_int, default=None, help=f"initial labelled configurations [{d.n_initial}]")
    g.add_argument("--batch-size", type=_positive_int, default=None, help=f"configurations per iteration [{d.batch_size}]")
    g.add_argument("--iterations", type=_positive_int, default=None, help=f"iterations per loop [{d.n_iterations}]")
    g.add_argument("--labels", choices=("energy", "energy+forces"), default=None,
                   help=f"labels used in the fit [{d.labels}]")
    g.add_argument("--basis-size", type=_positive_int, default=None, help=f"number of radial functions [{d.basis_size}]")
    g.add_argument("--threshold-factor", type=_positive_float, default=None,
                   help=f"error threshold as a multiple of the full-pool fit's error [{d.threshold_factor}]")
    g = p.add_argument_group("FRT evaluation")
    g.add_argument("--no-frt", action="store_true", help="skip the FRT ensembles (force errors only)")
    g.add_argument("--seeds", type=_positive_int, default=None, help=f"thermostat seeds per potential [{d.n_seeds}]")
    g.add_argument("--t-max", type=_positive_float, default=None, help=f"follow-up time per run (tau) [{d.t_max}]")
    p.set_defaults(func=_run_lj13_al, parser=p)


def _run_lj13_al(args) -> int:
    _split_cpu(args.devices)
    # lazy: keeps import jaxiap.cli light (see the module docstring)
    from jaxiap.workflows.lj13_al import run_lj13_al

    config = study_config(args)
    summary = _run_recorded(args, config, lambda: run_lj13_al(config, args.out, overwrite=args.overwrite,
                                                                progress=not args.no_progress))
    fmt = lambda v, spec: "n/a" if v is None else format(v, spec)
    print(f"{'strategy':<12} {'n->force thr':>12} {'vs random':>9} {'n->FRT thr':>10} {'vs random':>9}")
    for name, s in summary["strategies"].items():
        print(f"{name:<12} {fmt(s['n_to_force_threshold'], 'd'):>12} {fmt(s.get('relative_to_random_force'), '.2f'):>9} "
              f"{fmt(s.get('n_to_frt_threshold'), 'd'):>10} {fmt(s.get('relative_to_random_frt'), '.2f'):>9}")
    print(f"results in {args.out}/report.md")
    return 0


def _length_or_none(text):
    """argparse type: a length >= 0, or 'none'."""
    if text.strip().lower() == "none":
        return "none"
    return _nonneg_float(text)


def _temperature_or_none(text):
    """argparse type: a temperature > 0 (K), or 'none'."""
    if text.strip().lower() == "none":
        return "none"
    return _positive_float(text)


def _cutoff_or_none(text):
    """argparse type: a positive length, or 'none' (no 3-body term)."""
    if text.strip().lower() == "none":
        return "none"
    return _positive_float(text)


def _add_otf(sub):
    # lazy: keeps import jaxiap.cli light (see the module docstring)
    from jaxiap.workflows.otf_config import PRESET_CHOICES, DEFAULTS as d

    p = sub.add_parser(
        "otf",
        help="FLARE on-the-fly learning: a 2+3-body GP learns aluminium through a melt, with an ASE oracle",
        description=(
            "On-the-fly learning (FLARE): MD of FCC aluminium driven by a 2+3-body Gaussian-process force "
            "field; when the predicted force std exceeds the threshold the oracle (an ASE calculator, EMT by "
            "default) labels the frame and the most uncertain atoms join the training set. The crystal is "
            "melted by velocity rescaling half way. The final GP is tested on held-out MD frames of the "
            "oracle (solid and liquid) against FLARE's published table. Units: Å, eV, fs, ps, K. Writes "
            "summary.json, figures and report.md to the run folder; re-running the same command resumes."
        ),
    )
    _add_run_options(p, "runs/otf", PRESET_CHOICES, d.seed,
                     "cpu (the FLARE protocol, 10 ps with a melt at 5 ps: about 10 minutes on 2 cores, "
                     "docs/otf.md)", devices=False)
    g = p.add_argument_group("oracle and MD")
    g.add_argument("--calculator", default=None,
                   help="oracle: 'emt' or module:Class of any ASE calculator built without arguments, e.g. "
                        f"ase.calculators.emt:EMT [{d.calculator}]")
    g.add_argument("--steps", type=_positive_int, default=None, help=f"MD steps [{d.n_steps}]")
    g.add_argument("--dt-fs", type=_positive_float, default=None, help=f"time step (fs) [{d.dt_fs}]")
    g.add_argument("--temperature", type=_positive_float, default=None,
                   help=f"initial temperature of the velocities (K) [{d.temperature:g}]")
    g.add_argument("--melt-ps", type=_positive_float, default=None,
                   help=f"time of the velocity rescaling that melts the crystal (ps) [{d.melt_ps:g}]")
    g.add_argument("--melt-temperature", type=_positive_float, default=None,
                   help=f"temperature the velocities are rescaled to (K) [{d.melt_temperature:g}]")
    g.add_argument("--liquid-thermostat", type=_temperature_or_none, default=None,
                   help="after the melt, a Berendsen thermostat to this temperature (K), or none for NVE as in the "
                        f"paper [{d.liquid_thermostat}]")
    g.add_argument("--thermostat-tau-fs", type=_positive_float, default=None,
                   help=f"time constant of that thermostat (fs) [{d.thermostat_tau_fs:g}]")
    g = p.add_argument_group("Gaussian process and on-the-fly rule")
    g.add_argument("--r-cut", type=_positive_float, default=None, help=f"2-body cutoff (Å) [{d.r_cut}]")
    g.add_argument("--r-cut-3", type=_cutoff_or_none, default=None,
                   help=f"3-body cutoff (Å), or none for a 2-body model [{d.r_cut_3}]")
    g.add_argument("--core-repulsion", type=_length_or_none, default=None,
                   help="prior mean of the GP: a ZBL wall switched off between R/2 and R (Å), so atoms cannot fall "
                        f"into the hole below the labelled distances; none for FLARE's zero mean [{d.core_repulsion}]")
    g.add_argument("--pair-prior-frames", type=_nonnegative_int, default=None,
                   help="prior mean of the GP: a pair potential fitted to this many oracle-labelled rattled cells "
                        f"before the run (counted as oracle calls; docs/otf.md); 0 for none [{d.pair_prior_frames}]")
    g.add_argument("--pair-prior-max-stdev", type=_positive_float, default=None,
                   help=f"largest rattle std of those cells (Å; they run from 0.1 Å) [{d.pair_prior_max_stdev:g}]")
    g.add_argument("--pair-prior-r-cut", type=_positive_float, default=None,
                   help=f"cutoff of that pair potential (Å), below half the cell width [{d.pair_prior_r_cut:g}]")
    g.add_argument("--no-refresh-noise", action="store_true",
                   help="after the freeze keep every hyperparameter fixed (FLARE's freeze); by default the signal "
                        "variances and the noise are re-optimised at each update")
    g.add_argument("--std-tolerance", type=float, default=None,
                   help="oracle threshold: > 0 a multiple of the noise sigma_n, < 0 an absolute force std (eV/Å), "
                        f"0 only the first frame [{d.std_tolerance}]")
    g.add_argument("--max-atoms-added", type=_positive_int, default=None,
                   help=f"most uncertain atoms added per oracle call [{d.max_atoms_added}]")
    g.add_argument("--init-atoms", type=_positive_int, default=None,
                   help=f"atoms of the first frame added to the training set [{d.init_atoms}]")
    g.add_argument("--freeze-hyps", type=_nonnegative_int, default=None,
                   help="updates with full hyperparameter optimisation; later updates keep the length scales and "
                        "re-optimise only the signal variances and the noise, each within a factor "
                        f"{d.hyp_step_factor:g} of its previous value [{d.freeze_hyps}]")
    g.add_argument("--reoptimize-every", type=_nonnegative_int, default=None,
                   help="after the first --freeze-hyps updates, a full hyperparameter optimisation every this many "
                        f"updates (0: never) [{d.reoptimize_every}]")
    g.add_argument("--min-noise", type=_nonneg_float, default=None,
                   help=f"lower bound of the force noise sigma_n (eV/Å) [{d.min_noise}]")
    g.add_argument("--max-noise", type=_positive_float, default=None,
                   help=f"upper bound of the force noise sigma_n, and so of the threshold (eV/Å) [{d.max_noise}]")
    g.add_argument("--distance-guard", type=_length_or_none, default=None,
                   help="also call the oracle when two atoms come this much closer (Å) than the closest labelled "
                        f"pair, or none for FLARE's std rule alone [{d.distance_guard}]")
    g.add_argument("--test-frames", type=_positive_int, default=None,
                   help=f"held-out frames per phase (solid, liquid) [{d.n_test}]")
    p.set_defaults(func=_run_otf, parser=p)


def _run_otf(args) -> int:
    # lazy: keeps import jaxiap.cli light (see the module docstring)
    from jaxiap.workflows.otf_al import run_otf_study

    # "none" (--r-cut-3, --distance-guard, --core-repulsion, --liquid-thermostat) sets the field to None
    config = study_config(args)
    s = _run_recorded(args, config, lambda: run_otf_study(config, args.out, overwrite=args.overwrite,
                                                           progress=not args.no_progress))
    print(f"oracle calls {s['oracle_calls']} (before the melt {s['oracle_calls_before_melt']}, after "
          f"{s['oracle_calls_after_melt']}); training atoms {s['training_atoms']}")
    print(f"force MAE solid {s['force_mae_solid_meV_per_A']:.1f} meV/Å, liquid {s['force_mae_liquid_meV_per_A']:.1f} "
          f"meV/Å (FLARE paper: 32.9, 90.2); results in {args.out}/report.md")
    return 0


def _name_list(choices):
    """argparse type: comma-separated names, each one of ``choices``."""
    def parse(text):
        names = tuple(t.strip() for t in text.split(",") if t.strip())
        bad = [n for n in names if n not in choices]
        if bad or not names:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {', '.join(choices)}; got {text!r}")
        return names
    return parse


def _widths(text):
    """argparse type: comma-separated positive layer widths, e.g. 32,32."""
    try:
        widths = tuple(int(t) for t in text.split(","))
    except ValueError:
        widths = ()
    if not widths or min(widths) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, e.g. 32,32; got {text!r}")
    return widths


def _add_uq_compare(sub):
    from jaxiap.workflows.uq_compare_config import DATASETS, DEFAULTS as d, METHOD_CHOICES, PRESET_CHOICES

    p = sub.add_parser(
        "uq-compare",
        help="compare uncertainty methods of neural-network potentials (ensembles, MVE, evidential, GMM, "
             "last-layer BLR) in and out of domain",
        description=(
            "Train per-atom neural-network potentials with five uncertainty methods (deep ensemble, mean-variance "
            "estimation, deep evidential regression, GMM on latent features, last-layer Bayesian regression) on the "
            "same data and score their predicted stds with calibration and ranking metrics, in domain and out of "
            "domain, over repetitions with different splits and initialisations (Tan et al. 2023). Datasets: LJ13 "
            "(kT 0.15 train; kT 0.35 and quenched minima out of domain) and EMT aluminium (FCC solid train; liquid "
            "out of domain). Writes summary.json, report.md and calibration figures; re-running resumes."),
    )
    _add_run_options(p, "runs/uq-compare", PRESET_CHOICES, d.seed,
                     "cpu (every method on both datasets, 3 repetitions)", devices=False)
    g = p.add_argument_group("study")
    g.add_argument("--datasets", type=_name_list(DATASETS), default=None,
                   help=f"comma-separated datasets [{','.join(d.datasets)}]")
    g.add_argument("--methods", type=_name_list(METHOD_CHOICES), default=None,
                   help=f"comma-separated methods [{','.join(d.methods)}]")
    g.add_argument("--repetitions", type=_positive_int, default=None,
                   help=f"repetitions, each with its own split and initialisations [{d.repetitions}]")
    g.add_argument("--error-percentile", type=_positive_float, default=None,
                   help=f"errors above this percentile count as large for ROC-AUC [{d.error_percentile:g}]")
    g = p.add_argument_group("networks and training")
    g.add_argument("--hidden", type=_widths, default=None,
                   help=f"hidden layer widths, comma-separated [{','.join(map(str, d.hidden))}]")
    g.add_argument("--members", type=_positive_int, default=None, help=f"ensemble members [{d.n_members}]")
    g.add_argument("--epochs", type=_positive_int, default=None, help=f"maximum epochs [{d.epochs}]")
    g.add_argument("--batch-size", type=_positive_int, default=None, help=f"structures per minibatch [{d.batch_size}]")
    g.add_argument("--learning-rate", type=_positive_float, default=None, help=f"Adam learning rate [{d.learning_rate}]")
    g.add_argument("--patience", type=_positive_int, default=None,
                   help=f"early stopping: epochs without a better validation loss [{d.patience}]")
    g.add_argument("--gmm-components", type=_positive_int, default=None,
                   help=f"components of the GMM on latent features [{d.n_components}]")
    g.add_argument("--posterior-draws", type=_positive_int, default=None,
                   help="posterior draws of the Bayesian networks (methods svi-meanfield, svi-lowrank, nuts; for "
                        f"small --hidden) [{d.posterior_draws}]")
    p.set_defaults(func=_run_uq_compare, parser=p)


def _run_uq_compare(args) -> int:
    # lazy: keeps import jaxiap.cli light (see the module docstring)
    from jaxiap.workflows.uq_compare import run_uq_compare

    config = study_config(args)
    s = _run_recorded(args, config, lambda: run_uq_compare(config, args.out, overwrite=args.overwrite,
                                                            progress=not args.no_progress))
    for f in s["findings"]:
        print(f"finding {f['finding']} ({f['dataset']}): {'reproduced' if f['reproduced'] else 'not reproduced'}")
    print(f"results in {args.out}/report.md")
    return 0


# ----------------------------------------------------------------------------- the user's own data


def _add_fit(sub):
    # lazy: keeps import jaxiap.cli light (see the module docstring)
    from jaxiap.workflows.fit_config import PRESET_CHOICES, SOLVER_CHOICES, DEFAULTS as d
    from jaxiap.workflows.user_model import DESCRIPTOR_NAMES

    p = sub.add_parser(
        "fit",
        help="fit a Bayesian linear potential to your labelled structures (any file ASE reads)",
        description=(
            "Fit a linear potential E = c . B(x) (radial or ACE descriptor) to the energies, forces and (optionally) "
            "stresses in DATA, a file ase.io.read reads (extended XYZ, ...), with any solver of jaxiap (default: "
            "Bayesian regression with evidence-maximised noise and prior). A random held-out fraction measures the "
            "errors and the calibration of the predicted stds. Writes posterior.npz and model.json (the model, for "
            "jaxiap predict and jaxiap sweep), summary.json, parity and calibration figures and report.md to the run "
            "folder. Units are the data's (eV, Å). docs/commands.md."),
    )
    p.add_argument("data", nargs="?", default=None, metavar="DATA",
                   help="labelled structures: energy and forces per structure (calculator results, or info/arrays "
                        "under --energy-key / --forces-key)")
    _add_run_options(p, "runs/fit", PRESET_CHOICES, d.seed, "cpu (the defaults), tiny (4 radial functions)",
                     devices=False)
    g = p.add_argument_group("model")
    g.add_argument("--descriptor", choices=DESCRIPTOR_NAMES, default=None,
                   help=f"radial: pair radial functions; ace: ACE many-body features (docs/ace.md) [{d.descriptor}]")
    g.add_argument("--radial", choices=("chebyshev", "bessel", "gaussian"), default=None,
                   help=f"radial function family [{d.radial}]")
    g.add_argument("--basis-size", type=_positive_int, default=None,
                   help=f"radial functions (ACE: per correlation order) [{d.n_basis}]")
    g.add_argument("--r-cut", type=_positive_float, default=None, help=f"cutoff radius (Å) [{d.r_cut}]")
    g.add_argument("--r-min", type=_length_or_none, default=None,
                   help="inner radius of the radial basis (Å), or none for 0.9 x the shortest distance in the data "
                        "[none]")
    g.add_argument("--l-max", type=_nonnegative_int, default=None, help=f"ACE: largest angular momentum [{d.l_max}]")
    g.add_argument("--body-order", type=int, choices=(2, 3, 4), default=None,
                   help=f"ACE: body order (correlation order + 1) [{d.body_order}]")
    g.add_argument("--no-species-reference", action="store_true",
                   help="no per-species reference-energy columns (one energy per atom of each species)")
    g = p.add_argument_group("fit")
    g.add_argument("--solver", choices=SOLVER_CHOICES, default=None,
                   help=f"any solver of jaxiap.inference.solvers.SOLVERS, with its defaults [{d.solver}]")
    g.add_argument("--energy-weight", type=_nonneg_float, default=None,
                   help=f"weight of the per-atom energy rows [{d.energy_weight}]")
    g.add_argument("--force-weight", type=_nonneg_float, default=None,
                   help=f"weight of the force-component rows [{d.force_weight}]")
    g.add_argument("--stress-weight", type=_nonneg_float, default=None,
                   help="weight of the per-atom virial rows (stress x volume / atoms); they share the force "
                        f"noise; 0: stress not fitted [{d.stress_weight}]")
    g.add_argument("--held-out", type=_nonneg_float, default=None,
                   help=f"fraction of structures held out for errors and calibration, in [0, 1) [{d.held_out}]")
    g = p.add_argument_group("labels in DATA")
    g.add_argument("--energy-key", default=None, help=f"key of the energies [{d.energy_key}]")
    g.add_argument("--forces-key", default=None, help=f"key of the forces [{d.forces_key}]")
    g.add_argument("--stress-key", default=None, help=f"key of the stresses (eV/Å^3, ASE's sign) [{d.stress_key}]")
    p.set_defaults(func=_run_fit, parser=p)


def _run_fit(args) -> int:
    # lazy: keeps import jaxiap.cli light (see the module docstring)
    from jaxiap.workflows.user_fit import run_fit

    config = study_config(args)
    s = _run_recorded(args, config, lambda: run_fit(config, args.out, overwrite=args.overwrite,
                                                     progress=not args.no_progress))
    d = s["data"]
    m = s["model"]
    print(f"fitted {m['n_features']} coefficients ({m['descriptor']}, {m['posterior_kind']}) to {d['n_train']} "
          f"structures; {d['n_held_out']} held out")
    for name in ("train", "held_out"):
        e = s.get(name)
        if e:
            print(f"{name:<9} energy RMSE {e['energy_rmse_per_atom']:.3g} eV/atom, "
                  f"force RMSE {e['force_rmse']:.3g} eV/Å")
    c = (s.get(s["calibration_set"]) or {}).get("calibration_forces") or {}
    if c:
        print(f"{s['calibration_set']} force components within 1 / 2 predicted std: {c['within_1std']:.3f} / "
              f"{c['within_2std']:.3f} (Gaussian 0.683 / 0.954); miscalibration area {c['miscalibration_area']:.3f}")
    print(f"results in {args.out}/report.md")
    return 0


def _add_predict(sub):
    p = sub.add_parser(
        "predict",
        help="energies, forces and their predicted stds for your structures, from a jaxiap fit",
        description=(
            "Predict the energy and forces of every structure in STRUCTURES (any file ase.io.read reads) with the "
            "posterior mean of a fit, and their standard deviations (the model's uncertainty), and write them as "
            "extended XYZ: energy and energy_std in each frame's info, forces and forces_std in its arrays, every "
            "number at full precision. An existing output file that jaxiap predict did not write is never "
            "overwritten. docs/commands.md."),
    )
    p.add_argument("model", nargs="?", default=None, metavar="RUN_OR_POSTERIOR",
                   help="the run folder of jaxiap fit (or its posterior.npz, with model.json beside it)")
    p.add_argument("structures", nargs="?", default=None, metavar="STRUCTURES",
                   help="the structures to predict (labels, if any, are kept as ref_energy / ref_forces)")
    g = p.add_argument_group("run")
    g.add_argument("--out", default="predicted.xyz", help="output file (extended XYZ) [predicted.xyz]")
    g.add_argument("--config", default=None, metavar="FILE.toml",
                   help="TOML file of config fields (docs/config.md); options given here override it")
    g.add_argument("--index", default=None,
                   help="which structures of STRUCTURES, as ase.io.read's index: ':' all, '-1' the last, '::10' "
                        "every tenth [:]")
    g.add_argument("--batch-size", type=_positive_int, default=None, help="structures per compiled batch [64]")
    g.add_argument("--no-progress", action="store_true", help="no stage messages")
    p.set_defaults(func=_run_predict, parser=p, preset=None)


def _run_predict(args) -> int:
    # lazy: keeps import jaxiap.cli light (see the module docstring)
    from jaxiap.workflows.user_predict import run_predict

    config = study_config(args)
    s = run_predict(config, args.out, progress=not args.no_progress)
    print(f"wrote {s['n_structures']} structures to {s['out']}: energy_std (info) mean "
          f"{s['mean_energy_std_per_atom']:.3g} eV/atom, forces_std (arrays) mean {s['mean_force_std']:.3g} eV/Å, "
          f"max {s['max_force_std']:.3g} eV/Å")
    return 0


def _add_sweep(sub):
    # lazy: keeps import jaxiap.cli light (see the module docstring)
    from jaxiap.workflows.sweep_config import BASIN_CHOICES, PRESET_CHOICES, DEFAULTS as d

    p = sub.add_parser(
        "sweep",
        help="Langevin MD of a jaxiap fit over posterior samples x thermostat seeds: QoIs and their "
             "thermal / parametric variance",
        description=(
            "Run NVT Langevin MD (jax-md, BAOAB) from START (a free cluster, or a periodic cell with neighbour "
            "lists) for every posterior sample x thermostat seed of a fit, vectorised, and record per trajectory "
            "the mean potential energy per atom, the radial distribution function and the first basin-change time. "
            "Each QoI's variance is split into thermal (within-sample) and parametric (between-sample) parts by "
            "the law of total variance. Units: K, fs, 1/ps, Å, eV. Writes qoi.npz, summary.json, rdf.png, pe.png "
            "and report.md; re-running the same command resumes. docs/commands.md."),
    )
    p.add_argument("model", nargs="?", default=None, metavar="RUN_OR_POSTERIOR",
                   help="the run folder of jaxiap fit (or its posterior.npz, with model.json beside it)")
    p.add_argument("start", nargs="?", default=None, metavar="START",
                   help="the start structure (a file ase.io.read reads; --frame picks one)")
    g = _add_run_options(p, "runs/sweep", PRESET_CHOICES, d.seed,
                         "cpu (8 samples x 8 seeds, 11 ps), gpu (32 x 32, 51 ps)")
    g.add_argument("--chunk-size", type=_positive_int, default=None,
                   help="trajectories per compiled chunk and checkpoint file [chosen from memory]")
    g = p.add_argument_group("MD")
    g.add_argument("--frame", type=int, default=None, help=f"frame of START (-1: the last) [{d.frame}]")
    g.add_argument("--temperature", type=_positive_float, default=None,
                   help=f"thermostat temperature (K) [{d.temperature:g}]")
    g.add_argument("--timestep", type=_positive_float, default=None, help=f"time step (fs) [{d.timestep:g}]")
    g.add_argument("--friction", type=_positive_float, default=None, help=f"Langevin friction (1/ps) [{d.friction:g}]")
    g.add_argument("--steps", type=_positive_int, default=None, help=f"recorded MD steps [{d.steps}]")
    g.add_argument("--equilibrate", type=_nonnegative_int, default=None,
                   help=f"MD steps before recording (basin checks run from t = 0) [{d.equilibrate}]")
    g.add_argument("--record-every", type=_positive_int, default=None,
                   help=f"MD steps between recorded frames (energy, RDF) [{d.record_every}]")
    g.add_argument("--check-every", type=_positive_int, default=None,
                   help=f"MD steps between basin checks (the MD block) [{d.check_every}]")
    g.add_argument("--samples", type=_positive_int, default=None, help=f"posterior samples [{d.n_samples}]")
    g.add_argument("--seeds", type=_positive_int, default=None, help=f"thermostat seeds per sample [{d.n_seeds}]")
    g.add_argument("--skin", type=_length_or_none, default=None,
                   help="neighbour-list skin in a periodic cell (Å), or none: 0.5 Å, or less where the cell is "
                        "too narrow for it [none]")
    g = p.add_argument_group("quantities of interest")
    g.add_argument("--rdf-bins", type=_positive_int, default=None, help=f"RDF histogram bins [{d.rdf_bins}]")
    g.add_argument("--rdf-r-max", type=_cutoff_or_none, default=None,
                   help="RDF range (Å), or none: the model's cutoff in a cell; for a free cluster the larger of "
                        "it and 1.25 x the largest distance in START [none]")
    g.add_argument("--basin", choices=BASIN_CHOICES, default=None,
                   help="basin-change criterion: graph (bond graph of quenched structures, free clusters), "
                        "displacement (an atom left its start site, cells), off; auto: graph for a cluster, "
                        f"displacement in a cell [{d.basin}]")
    g.add_argument("--bond-cutoff", type=_cutoff_or_none, default=None,
                   help="graph criterion: bond length (Å), or none for 1.2 x the median nearest-neighbour "
                        "distance of START [none]")
    g.add_argument("--displacement", type=_cutoff_or_none, default=None,
                   help="displacement criterion: threshold (Å), or none for half the median nearest-neighbour "
                        "distance of START [none]")
    g.add_argument("--quench-steps", type=_positive_int, default=None,
                   help=f"graph criterion: FIRE steps per basin check [{d.quench_steps}]")
    p.set_defaults(func=_run_sweep, parser=p)


def _run_sweep(args) -> int:
    _split_cpu(args.devices)
    # lazy: keeps import jaxiap.cli light (see the module docstring)
    from jaxiap.workflows.user_sweep import run_sweep

    config = study_config(args)
    s = _run_recorded(args, config, lambda: run_sweep(config, args.out, overwrite=args.overwrite,
                                                       progress=not args.no_progress))
    q = s["qoi"]
    print(f"{s['n_runs']} trajectories ({s['n_samples']} samples x {s['n_seeds']} seeds), {s['n_failed']} failed")
    if "pe_per_atom" in q:
        e = q["pe_per_atom"]
        print(f"mean potential energy {e['mean']:.6g} eV/atom; variance {e['total']:.3g} eV^2 = thermal "
              f"{e['thermal']:.3g} + parametric {e['parametric']:.3g} "
              f"(parametric share {e['parametric_fraction']:.3g})")
        print(f"RDF {q['rdf']['kind']}: parametric share of the integrated variance "
              f"{q['rdf']['parametric_fraction']:.3g}")
    if "basin" in q:
        b = q["basin"]
        print(f"basin changes ({b['criterion']}): {b['n_changed']} of {b['n_runs']} trajectories within "
              f"{b['t_censor_ps']:.3g} ps")
    print(f"results in {args.out}/report.md")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="jaxiap",
        description="jaxiap: differentiable Bayesian interatomic potentials on JAX.",
    )
    parser.add_argument("--version", action="version", version=f"jaxiap {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    _add_lj13(sub)
    _add_lj13_al(sub)
    _add_otf(sub)
    _add_uq_compare(sub)
    _add_fit(sub)
    _add_predict(sub)
    _add_sweep(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # reported by the subcommand's parser: "jaxiap lj13: error: unrecognized arguments: ..."
        getattr(args, "parser", parser).error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return args.func(args)
    except JaxiapInputError as exc:
        print(f"jaxiap {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"jaxiap {args.command}: interrupted; finished chunks are kept, re-run the same command to resume",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
