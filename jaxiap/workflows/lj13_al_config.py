"""Configuration of the LJ13 active-learning study (``jaxiap lj13-al``): strategies, presets, checks.

:class:`LJ13ALConfig` holds every setting and checks them all when it is made,
naming the config field and its ``jaxiap lj13-al`` option (:data:`CLI_FLAGS`,
the one table the CLI builds its options' field map from). The MD defaults are
those of :class:`jaxiap.md.frt_settings.FRTSettings` (except the shorter ``t_max``);
the seed and FRT checks are those of :mod:`jaxiap.workflows.lj13_config`.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from jaxiap.errors import JaxiapInputError
from jaxiap.workflows.lj13_config import FRT_DEFAULTS, SEED_LIMIT, check_seed, field_text, validated_frt_settings

STRATEGY_NAMES = ("random", "dpp-sample", "dpp-greedy", "d-optimal", "a-optimal", "qbc", "uncertainty", "qoi")
#: candidate sources: "pool" = the fixed pool of MD snapshots; the others generate candidates from the
#: current posterior at every iteration (jaxiap.active.generators; kept in sync by tests/test_generation.py)
GENERATOR_NAMES = ("pool", "langevin", "stein", "udd", "hal", "metad", "adversarial")

PRESETS = {
    # defaults: a few minutes on 2 CPU cores
    "cpu": {},
    # more repetitions, a larger pool and many FRT seeds on a GPU (float32 MD)
    "gpu": dict(repetitions=8, pool_trajectories=8, n_iterations=14, n_seeds=512, t_max=100.0,
                frt_checkpoints=(6, 12, 20, 30), dtype="float32", series_frames=400),
    # seconds-long smoke runs for tests and notebooks
    "tiny": dict(pool_trajectories=2, pool_samples=6, sample_every=50, n_equilibrate=50, test_trajectories=2,
                 basis_size=6, repetitions=2, n_iterations=3, committee_size=4, n_seeds=4, t_max=3.0,
                 frt_checkpoints=(4, 8), series_frames=24, series_every=10),
}


#: the ``jaxiap lj13-al`` option of each LJ13ALConfig field: config errors name both, and the CLI maps its
#: options to config fields with this table (``--no-frt`` sets ``frt=False``)
CLI_FLAGS = {
    "seed": "--seed", "strategies": "--strategies", "repetitions": "--repetitions", "n_initial": "--initial",
    "batch_size": "--batch-size", "n_iterations": "--iterations", "labels": "--labels", "basis_size": "--basis-size",
    "threshold_factor": "--threshold-factor", "n_seeds": "--seeds", "t_max": "--t-max", "frt": "--no-frt",
    "generator": "--generator", "n_candidates": "--candidates",
}


@dataclasses.dataclass(frozen=True)
class LJ13ALConfig:
    """Every setting of the study (reduced LJ units)."""

    seed: int = 0
    kT: float = FRT_DEFAULTS.kT
    gamma: float = FRT_DEFAULTS.gamma
    dt: float = FRT_DEFAULTS.dt
    # candidate pool and test set (Langevin MD of the true LJ13)
    pool_kTs: tuple = (0.1, 0.3, 0.5)
    pool_trajectories: int = 4
    pool_samples: int = 25
    sample_every: int = 100
    n_equilibrate: int = 200
    test_trajectories: int = 4  # test snapshots: test_trajectories x pool_samples at kT
    # potential and labels
    basis: str = "chebyshev"
    basis_size: int = 10
    r_min: float = 0.8
    r_cut: float = 3.0
    labels: str = "energy"  # "energy" or "energy+forces"
    # loop
    strategies: tuple = STRATEGY_NAMES
    repetitions: int = 3
    n_initial: int = 2
    batch_size: int = 2
    n_iterations: int = 12
    committee_size: int = 8
    threshold_factor: float = 3.0
    # candidates: the fixed pool, or generated from the current posterior at every iteration
    generator: str = "pool"
    n_candidates: int = 32  # generated candidates per iteration (a multiple of 4, the MD starts)
    extra_threshold_factors: tuple = (1.5, 2.0, 5.0)
    # FRT evaluation
    frt: bool = True
    frt_checkpoints: tuple = (6, 14, 26)
    n_seeds: int = 24
    t_max: float = 40.0
    n_q: int = FRT_DEFAULTS.n_q
    r_b: float = FRT_DEFAULTS.r_b
    dtype: str = FRT_DEFAULTS.dtype
    frt_error_floor: float = 0.1
    frt_threshold_factor: float = 1.5
    # inclusion-probability figure: one MD trajectory at kT
    series_frames: int = 200
    series_every: int = 20

    def __post_init__(self):
        def field(name):
            return field_text(self, name, CLI_FLAGS)

        def bad(name, why):
            raise JaxiapInputError(f"{field(name)}: {why}")

        check_seed(self, CLI_FLAGS, "seed * 1000 + 2, + 10 and seed + 3, + 4 key the data, the loops and the "
                                    "initial sets")
        object.__setattr__(self, "pool_kTs", tuple(float(v) for v in self.pool_kTs))
        object.__setattr__(self, "strategies", tuple(self.strategies))
        object.__setattr__(self, "frt_checkpoints", tuple(int(v) for v in self.frt_checkpoints))
        object.__setattr__(self, "extra_threshold_factors", tuple(float(v) for v in self.extra_threshold_factors))
        for name in ("kT", "gamma", "dt", "t_max", "r_b", "r_cut", "r_min", "threshold_factor",
                     "frt_threshold_factor"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                bad(name, "must be a positive finite number")
        if not self.pool_kTs or not all(math.isfinite(v) and v > 0 for v in self.pool_kTs):
            bad("pool_kTs", "must be positive temperatures")
        for name in ("pool_trajectories", "pool_samples", "sample_every", "test_trajectories",
                     "basis_size", "repetitions", "n_initial", "batch_size", "n_iterations", "committee_size",
                     "n_seeds", "n_q", "series_frames", "series_every", "n_candidates"):
            if not (isinstance(getattr(self, name), (int, np.integer)) and getattr(self, name) >= 1):
                bad(name, "must be a positive integer")
        if self.n_seeds > SEED_LIMIT:
            bad("n_seeds", "thermostat seeds are 32-bit: at most 2**32 of them")
        if not (math.isfinite(self.frt_error_floor) and self.frt_error_floor >= 0):
            bad("frt_error_floor", "must be a number >= 0")
        if not all(math.isfinite(f) and f > 0 for f in self.extra_threshold_factors):
            bad("extra_threshold_factors", "must be positive numbers")
        if self.committee_size < 2:
            bad("committee_size", "must be at least 2")
        if self.r_min >= self.r_cut:
            bad("r_min", f"must be smaller than r_cut={self.r_cut}")
        if self.labels not in ("energy", "energy+forces"):
            bad("labels", "choose 'energy' or 'energy+forces'")
        unknown = [s for s in self.strategies if s not in STRATEGY_NAMES]
        if unknown or not self.strategies or len(set(self.strategies)) != len(self.strategies):
            bad("strategies", f"must be distinct names from {STRATEGY_NAMES}")
        n_pool = len(self.pool_kTs) * self.pool_trajectories * self.pool_samples
        if self.n_initial >= n_pool:
            bad("n_initial", f"the pool holds only {n_pool} candidates ({len(self.pool_kTs)} temperatures x "
                             f"{self.pool_trajectories} trajectories x {self.pool_samples} snapshots) and the loop "
                             f"must leave some to select; use --initial {max(1, n_pool // 4)} or less")
        n_final = self.n_initial + self.batch_size * self.n_iterations
        if n_final > n_pool:
            room = n_pool - self.n_initial
            fix = (f"--iterations {room // self.batch_size}" if room >= self.batch_size
                   else f"--batch-size {room} --iterations 1")
            bad("n_iterations", f"{field('n_initial')} + {self.n_iterations} x {field('batch_size')} = {n_final} "
                                f"labelled configurations exceed the pool of {n_pool} candidates; keep --iterations x "
                                f"--batch-size <= {room} (e.g. {fix})")
        reachable = {self.n_initial + self.batch_size * i for i in range(self.n_iterations + 1)}
        if any(c not in reachable for c in self.frt_checkpoints):
            bad("frt_checkpoints", f"labelled-set sizes must be among {sorted(reachable)}")
        if self.generator not in GENERATOR_NAMES:
            bad("generator", f"choose one of {GENERATOR_NAMES}")
        if self.generator != "pool" and (self.n_candidates % 4 or self.n_candidates < self.batch_size):
            bad("n_candidates", f"must be a multiple of 4 (the MD starts) and at least {field('batch_size')}, "
                                f"e.g. --candidates {max(4, 4 * math.ceil(self.batch_size / 4))}")
        if self.dtype not in ("float64", "float32"):
            bad("dtype", "choose float64 or float32")
        if self.basis not in ("chebyshev", "bessel", "gaussian"):
            bad("basis", "choose chebyshev, bessel or gaussian")
        # the FRT settings of the study's ensembles, validated once here
        object.__setattr__(self, "_frt_settings", validated_frt_settings(
            self, CLI_FLAGS, kT=self.kT, gamma=self.gamma, dt=self.dt, n_q=self.n_q, t_max=self.t_max, r_b=self.r_b,
            dtype=self.dtype))

    @classmethod
    def from_preset(cls, preset: str = "cpu", **overrides) -> "LJ13ALConfig":
        if preset not in PRESETS:
            raise JaxiapInputError(f"preset={preset!r} is unknown; choose one of {tuple(PRESETS)}")
        cfg = {**PRESETS[preset], **overrides}
        if "frt_checkpoints" not in overrides and ("n_iterations" in overrides or "batch_size" in overrides
                                                   or "n_initial" in overrides):
            cfg["frt_checkpoints"] = ()  # re-derived below from the new loop length
        if cfg.get("frt_checkpoints", None) == ():
            n0, b = cfg.get("n_initial", 2), cfg.get("batch_size", 2)
            n_it = cfg.get("n_iterations", cls.n_iterations)
            cfg["frt_checkpoints"] = tuple(sorted({n0 + b * min(2, n_it), n0 + b * (n_it // 2), n0 + b * n_it}))
        return cls(**cfg)

    @property
    def energy_weight(self) -> float:
        return 1.0

    @property
    def force_weight(self) -> float:
        return 0.0 if self.labels == "energy" else 1.0

    def frt_settings(self):
        """The FRTSettings of the study's ensembles (built and validated with the config)."""
        return self._frt_settings


PRESET_CHOICES = tuple(PRESETS)
DEFAULTS = LJ13ALConfig()
