"""Configuration of the LJ13 study (``jaxiap lj13``): presets, the command-line option table, checks.

:class:`LJ13Config` holds every setting and checks them all when it is made,
so a bad value fails before any work, naming the config field and its
``jaxiap lj13`` option (:data:`CLI_FLAGS`, the one table the CLI builds its
options' field map from). The MD defaults are those of
:class:`jaxiap.md.frt_settings.FRTSettings`. The helpers :func:`field_text`,
:func:`check_seed` and :func:`validated_frt_settings` are shared with the
active-learning study's config (:mod:`jaxiap.workflows.lj13_al_config`).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from jaxiap.descriptors.radial import FAMILIES
from jaxiap.errors import JaxiapInputError
from jaxiap.inference.solvers import SOLVERS
from jaxiap.md.frt_settings import FRTSettings
from jaxiap.workflows.lj13_attempts import parse_attempts

#: the MD defaults the study configs take over (each default is written once, in FRTSettings)
FRT_DEFAULTS = FRTSettings()

PRESETS = {
    # defaults: the 2-core CPU run of the README (under 5 minutes)
    "cpu": {},
    # thousands of seeds on a GPU, float32 MD
    "gpu": dict(n_seeds=4096, n_trajectories=64, dtype="float32",
                n_subsets=100, n_posterior_samples=128, attempt_seeds=1024),
    # seconds-long smoke runs for tests and notebooks
    "tiny": dict(n_seeds=8, t_max=5.0, n_trajectories=4, n_samples=20, sample_every=50,
                 n_subsets=3, n_posterior_samples=6, attempt_seeds=4, sample_posterior="blr",
                 # one chunk shape for every ensemble (8, 12 and 24 replicas), so each potential's
                 # FRT program compiles once; results do not depend on the chunk size
                 chunk_size=24),
}


#: the ``jaxiap lj13`` option of each LJ13Config field: config errors name both, and the CLI maps its
#: options to config fields with this table
CLI_FLAGS = {
    "seed": "--seed", "kT": "--kT", "gamma": "--gamma", "dt": "--dt", "n_q": "--n-q", "t_max": "--t-max",
    "r_b": "--r-b", "criterion": "--criterion", "screen_steps": "--screen-steps", "n_seeds": "--seeds", "dtype": "--dtype",
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
    kT: float = FRT_DEFAULTS.kT
    gamma: float = FRT_DEFAULTS.gamma
    dt: float = FRT_DEFAULTS.dt
    n_q: int = FRT_DEFAULTS.n_q
    t_max: float = FRT_DEFAULTS.t_max
    r_b: float = FRT_DEFAULTS.r_b
    criterion: str = FRT_DEFAULTS.criterion
    screen_steps: int = FRT_DEFAULTS.screen_steps
    n_seeds: int = 256
    dtype: str = FRT_DEFAULTS.dtype
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
        try:
            attempts = parse_attempts(self.attempts)
        except JaxiapInputError as exc:
            raise JaxiapInputError(f"{exc} (--attempts)") from None
        if self.chunk_size is not None and not (_is_int(self.chunk_size) and self.chunk_size >= 1):
            bad("chunk_size", "must be a positive integer")
        if self.basis not in FAMILIES:
            bad("basis", f"choose one of {FAMILIES}")
        for name in ("posterior", "sample_posterior"):
            if getattr(self, name) not in SOLVERS:
                bad(name, f"choose one of {tuple(SOLVERS)}")
        # the FRT settings of every ensemble of the study, validated once here
        object.__setattr__(self, "_frt_settings", validated_frt_settings(
            self, CLI_FLAGS, kT=self.kT, gamma=self.gamma, dt=self.dt, n_q=self.n_q, t_max=self.t_max,
            r_b=self.r_b, criterion=self.criterion, screen_steps=self.screen_steps, dtype=self.dtype))

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
            sizes = self.ensemble_sizes()
            largest = max(sizes.values())
            if self.chunk_size > largest:
                which = " / ".join(f"{opt} = {n}" for opt, n in sizes.items())
                bad("chunk_size", f"larger than the largest MD ensemble ({which} replicas), so it would only pad; "
                                  f"use --chunk-size {largest} or less, or leave it out (automatic)")

    def ensemble_sizes(self) -> dict:
        """Replicas of each MD ensemble the run makes, keyed by the options that set them."""
        attempts = parse_attempts(self.attempts)
        sizes = {"--seeds": self.n_seeds}
        if "subsets" in attempts:
            sizes["--n-subsets x --attempt-seeds"] = self.n_subsets * self.attempt_seeds
        if "posterior" in attempts:
            sizes["--posterior-samples x --attempt-seeds"] = self.n_posterior_samples * self.attempt_seeds
        return sizes

    @classmethod
    def from_preset(cls, preset: str = "cpu", **overrides) -> "LJ13Config":
        """The preset's values, then ``overrides``. A chunk size that comes from the preset (not
        from ``overrides``) is capped at the largest MD ensemble, e.g. ``tiny`` with ``--attempts none``."""
        if preset not in PRESETS:
            raise JaxiapInputError(f"preset={preset!r} is unknown; choose one of {tuple(PRESETS)}")
        values = {**PRESETS[preset], **overrides}
        if values.get("chunk_size") is not None and "chunk_size" not in overrides:
            largest = max(cls(**{**values, "chunk_size": None}).ensemble_sizes().values())
            values["chunk_size"] = min(values["chunk_size"], largest)
        return cls(**values)

    def frt_settings(self):
        """The FRTSettings of the study's ensembles (built and validated with the config)."""
        return self._frt_settings


#: the --posterior / --sample-posterior choices: the names of the solver registry
#: (jaxiap.inference.solvers.SOLVERS; each fit is ``get_solver(name)(design, key=...)``)
POSTERIOR_CHOICES = tuple(SOLVERS)
PRESET_CHOICES = tuple(PRESETS)
DEFAULTS = LJ13Config()
