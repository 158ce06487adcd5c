"""Settings of an FRT ensemble (:class:`FRTSettings`): protocol, quench, histogram and failure thresholds.

Kept apart from the replica program (:mod:`jaxiap.md.frt`) so that code that
only needs the settings and their defaults (the study configs of
:mod:`jaxiap.workflows`) does not import the MD engine.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from jaxiap.errors import JaxiapInputError

__all__ = ["FRTSettings"]


@dataclasses.dataclass(frozen=True)
class FRTSettings:
    """Settings of an FRT ensemble (hashable; one compiled program per settings object).

    Units are those of the potential (defaults: LJ reduced units, energies in
    epsilon, lengths in sigma, times in tau, masses 1).

    kT: thermostat temperature (energy).
    gamma: Langevin friction (1/time). jax-md's own default is 0.1; the LJ13
        protocol uses 1.0.
    dt: MD time step (time); 0.005 tau is LAMMPS' lj default.
    n_q: MD steps between basin checks (100 steps = 0.5 tau by default).
    t_max: follow-up time (time); ``n_checks = ceil(t_max / (n_q * dt))``
        checks are made, so the censoring time is ``n_checks * n_q * dt``.
    r_b: bond cutoff of the basin criteria (length).
    r_evap: nearest-neighbour distance beyond which an atom counts as
        evaporated (length).
    criterion: basin-change criterion of :func:`jaxiap.md.qoi.basin_changed`:
        ``"graph"`` (labelled bond graph, default), ``"energy"``
        (|E_IS - E0| > e_tol) or ``"n12"``.
    e_tol: energy tolerance of the ``"energy"`` criterion (energy).
    fmax: FIRE stops when max |F| < fmax (energy/length). For LJ13 snapshots
        at kT 0.3, fmax 1e-3 and 1e-2 found the same basins (graph and
        energy to 1e-3) as 1e-6, with ~40% fewer FIRE steps than 1e-6.
    quench_max_steps: FIRE step cap per check quench (the reference quench
        gets 10x this). A check quench that does not converge, or ends
        above the MD snapshot's energy, makes no EVENT decision.
    fire_dt_start, fire_dt_max: FIRE's initial and maximal step (time).
        jax-md's defaults (0.1, 0.4) are far too large for LJ in reduced
        units: they fling thermal LJ13 snapshots apart (251 of 256 kT = 0.3
        snapshots ended in the wrong basin); with (0.01, 0.05) 253 of 256
        matched L-BFGS (gtol 1e-10) inherent structures. For another
        potential scale them like the MD time step (with 1/sqrt(stiffness)).
    screen_steps: FIRE steps of the screen at every check
        (:mod:`jaxiap.md.frt_screen`): a lane whose partly quenched structure
        keeps the reference bond graph with every pair distance at least
        ``screen_margin`` from r_b is settled (no change) without the full
        quench; the others finish the same quench in groups of
        ``screen_lanes`` lanes. 0: the full-quench protocol (every check
        quenched to fmax, all lanes together). The decisions, hence the
        times, equal the full-quench protocol's on the same seeds (see
        docs/science.md section 5.2 for the exception and the check).
    screen_margin: distance (length) every pair must keep from r_b for the
        screen to settle a check.
    screen_lanes: width of the groups in which the unsettled lanes finish
        their quench.
    energy_bins: (lo, hi, nbins) of the potential-energy histogram (energy);
        the default suits LJ13 in reduced units. Samples outside [lo, hi]
        are counted in ``n_outside``.
    sample_every: MD steps between potential-energy samples; must divide n_q.
    explode_energy: a replica FAILs when a sampled energy leaves
        |E - E0| <= explode_energy (energy), in either direction (a fitted
        potential with a hole collapses to very negative energies).
    explode_distance: a replica FAILs when an atom is farther than this
        from the centre of mass (length).
    dtype: "float64" (default; bitwise reproducible) or "float32" (positions,
        momenta and floating coefficient leaves are cast to it).
    """

    kT: float = 0.30
    gamma: float = 1.0
    dt: float = 0.005
    n_q: int = 100
    t_max: float = 100.0
    r_b: float = 1.35
    r_evap: float = 3.0
    criterion: str = "graph"
    e_tol: float = 1e-3
    fmax: float = 1e-3
    quench_max_steps: int = 2000
    screen_steps: int = 40
    screen_margin: float = 0.1
    screen_lanes: int = 4
    fire_dt_start: float = 0.01
    fire_dt_max: float = 0.05
    energy_bins: tuple = (-46.0, -26.0, 200)
    sample_every: int = 10
    explode_energy: float = 1.0e3
    explode_distance: float = 1.0e3
    dtype: str = "float64"

    def __post_init__(self):
        def bad(name, why):
            exc = JaxiapInputError(f"FRTSettings: {name}={getattr(self, name)!r} {why}")
            exc.field = name  # the offending field, for callers that map it to their own option names
            raise exc

        for name in ("kT", "gamma", "dt", "t_max", "r_b", "r_evap", "e_tol", "fmax",
                     "fire_dt_start", "fire_dt_max", "explode_energy", "explode_distance", "screen_margin"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                bad(name, "must be a positive finite number")
        if not (isinstance(self.screen_steps, (int, np.integer)) and self.screen_steps >= 0):
            bad("screen_steps", "must be a non-negative integer (0: quench every check fully)")
        for name in ("n_q", "quench_max_steps", "sample_every", "screen_lanes"):
            v = getattr(self, name)
            if not (isinstance(v, (int, np.integer)) and v >= 1):
                bad(name, "must be a positive integer")
        if self.n_q % self.sample_every:
            bad("sample_every", f"must divide n_q={self.n_q} (use an n_q that is a multiple of {self.sample_every})")
        checks = self.t_max / (self.n_q * self.dt)  # ~ n_checks; energy samples of a censored replica:
        if not (checks + 1) * (self.n_q // self.sample_every) < 2**31:
            bad("t_max", f"needs {checks:.3g} basin checks of n_q*dt={self.n_q * self.dt:g} per replica, with "
                         f"{self.n_q // self.sample_every} energy samples each: more than the int32 counters "
                         "hold (2**31 - 1); lower t_max or raise n_q")
        if self.criterion not in ("graph", "energy", "n12"):
            bad("criterion", "must be one of 'graph', 'energy', 'n12'")
        if self.dtype not in ("float32", "float64"):
            bad("dtype", "must be 'float32' or 'float64'")
        eb = self.energy_bins
        if isinstance(eb, list):  # from JSON
            object.__setattr__(self, "energy_bins", tuple(eb))
            eb = self.energy_bins
        if not (isinstance(eb, tuple) and len(eb) == 3 and float(eb[1]) > float(eb[0])
                and isinstance(eb[2], (int, np.integer)) and eb[2] >= 1):
            bad("energy_bins", "must be (lo, hi, nbins) with hi > lo and an integer nbins >= 1")

    @property
    def n_checks(self) -> int:
        """Number of basin checks (blocks of n_q steps) covering t_max."""
        return max(1, math.ceil(self.t_max / (self.n_q * self.dt) - 1e-9))

    @property
    def check_interval(self) -> float:
        """Simulated time between checks, n_q * dt."""
        return self.n_q * self.dt

    @property
    def t_censor(self) -> float:
        """Censoring time n_checks * n_q * dt (>= t_max)."""
        return self.n_checks * self.check_interval

    @property
    def bin_edges(self) -> np.ndarray:
        """Histogram bin edges (nbins + 1,), numpy.histogram convention."""
        lo, hi, n = self.energy_bins
        return np.linspace(float(lo), float(hi), int(n) + 1)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["energy_bins"] = list(self.energy_bins)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "FRTSettings":
        d = dict(d)
        if "energy_bins" in d:
            lo, hi, n = d["energy_bins"]
            d["energy_bins"] = (float(lo), float(hi), int(n))
        return cls(**d)
