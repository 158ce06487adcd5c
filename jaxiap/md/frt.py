"""The first-rearrangement-time (FRT) replica program (docs/science.md section 5).

One replica is one Langevin trajectory of a free cluster under one potential
sample with one thermostat seed; :func:`frt_program` defines it as a
:class:`jaxiap.md.program.Program` that :func:`jaxiap.md.runner.run_program`
runs over the (samples x seeds) grid (:func:`jaxiap.md.ensemble.run_frt_ensemble`
is the user-facing driver).

Algorithm of one replica (docs/science.md section 5.2):

1. ``prepare``: quench the reference structure (default: the start
   structure) with FIRE under the replica's own potential: E0 and the
   reference basin (bond graph, n12; :func:`jaxiap.md.qoi.basin_reference`).
2. ``init``: BAOAB Langevin MD (:func:`jaxiap.md.integrators.free_langevin`,
   jax-md ``nvt_langevin`` in ``space.free()``) from the start positions with
   Maxwell-Boltzmann momenta at kT; jax-md subtracts the mean momentum, so
   the centre-of-mass momentum is exactly zero at t = 0 (the Langevin noise
   does not conserve it afterwards; it need not).
3. ``step``: one block of ``n_q`` MD steps (``n_q * dt`` tau), sampling the
   potential energy every ``sample_every`` steps, then a quench of a copy of
   the positions and a classification with precedence FAILED > EVAPORATED >
   EVENT: FAILED if anything is non-finite or the energy left
   ``|E - E0| <= explode_energy`` or an atom left ``explode_distance`` of the
   centre of mass; EVAPORATED if :func:`jaxiap.md.qoi.evaporated`; EVENT if
   the quench converged (max |F| < fmax, and downhill from the snapshot) and
   :func:`jaxiap.md.qoi.basin_changed` (``settings.criterion``). Checks whose
   quench did not converge make no EVENT decision and are counted in
   ``quench_unconverged``.
4. ``done``: the first non-CENSORED block ends the replica; its time is the
   simulated time at that check, ``n_checks_done * n_q * dt``. Without an
   outcome after ``n_checks = ceil(t_max / (n_q dt))`` blocks it is CENSORED
   at ``n_checks * n_q * dt``. ``failed``: code FAILED.

Energy histogram / mean energy: accumulated over the MD samples of every
block up to and including the deciding one. The samples of a FAILED block
are discarded (they may be NaN or astronomically large), so a failed
replica keeps only the samples of its earlier, healthy blocks.

Units: those of ``energy_fn`` (LJ reduced units for the defaults: energies
in epsilon, lengths in sigma, times in tau, mass 1).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import jax.numpy as jnp
import numpy as np

from jaxiap.errors import JaxiapInputError
from jaxiap.md import integrators
from jaxiap.md.lanes import lane_chunk_fn
from jaxiap.md.program import Program, run_replica
from jaxiap.md.qoi import CENSORED, EVENT, EVAPORATED, FAILED  # outcome codes
from jaxiap.md.quench import fire_quench_fn

__all__ = ["FRTSettings", "REPLICA_FIELDS", "frt_program", "frt_replica_fn", "frt_chunk_fn"]

#: Per-replica outputs of the FRT program, in file order.
REPLICA_FIELDS = (
    "time",
    "code",
    "e0",
    "e_last",
    "n_checks",
    "energy_hist",
    "n_samples",
    "n_outside",
    "mean_energy",
    "quench_steps",
    "quench_unconverged",
    "ref_max_force",
)


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
                     "fire_dt_start", "fire_dt_max", "explode_energy", "explode_distance"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                bad(name, "must be a positive finite number")
        for name in ("n_q", "quench_max_steps", "sample_every"):
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


def frt_program(energy_fn: Callable, settings: FRTSettings = FRTSettings()) -> Program:
    """The FRT replica :class:`~jaxiap.md.program.Program` of ``energy_fn`` under ``settings``.

    energy_fn(coefficients, positions (N, 3)) -> scalar potential energy of a
    free cluster; coefficients any PyTree (a dummy for a fixed potential).
    params: one coefficient sample. shared: ``dict(start=(N, 3) MD start,
    reference=(N, 3) structure whose quench defines the reference basin)``,
    both in ``settings.dtype``. The result fields are :data:`REPLICA_FIELDS`
    (see :func:`frt_replica_fn`). cache_key: ``("frt", energy_fn, settings)``.
    """
    from jaxiap.md import qoi

    s = settings
    lo, hi, nbins = float(s.energy_bins[0]), float(s.energy_bins[1]), int(s.energy_bins[2])
    n_inner = s.n_q // s.sample_every
    n_checks = s.n_checks

    def energy(positions, coefficients):
        # the MD runs in the positions' dtype (settings.dtype): a potential whose
        # constants are float64 (e.g. a fitted basis) must not promote the state
        return jnp.asarray(energy_fn(coefficients, positions)).astype(positions.dtype)

    init_fn, step_fn = integrators.free_langevin(energy, dt=s.dt, gamma=s.gamma, kT=s.kT)
    fire = dict(fmax=s.fmax, dt_start=s.fire_dt_start, dt_max=s.fire_dt_max)
    quench_ref = fire_quench_fn(energy, max_steps=10 * s.quench_max_steps, **fire)
    quench = fire_quench_fn(energy, max_steps=s.quench_max_steps, **fire)

    def prepare(coefficients, shared):
        rq, ref_f, _ = quench_ref(shared["reference"], coefficients=coefficients)
        e0 = energy(rq, coefficients)
        return dict(basin=qoi.basin_reference(rq, e0, s.r_b), e0=e0, ref_f=ref_f)

    def init(coefficients, key, ref, shared):
        start = shared["start"]
        zero_i = jnp.zeros((), jnp.int32)
        return dict(
            state=init_fn(key, start, mass=jnp.ones((), start.dtype), coefficients=coefficients),
            ref=ref,
            block=zero_i,
            code=zero_i,
            e_last=ref["e0"],
            hist=jnp.zeros(nbins, jnp.int32),
            n_samples=zero_i,
            n_outside=zero_i,
            e_sum=jnp.zeros((), start.dtype),
            quench_steps=zero_i,
            unconverged=zero_i,
        )

    def done(c):
        return (c["code"] != CENSORED) | (c["block"] >= n_checks)

    def failed(c):
        return c["code"] == FAILED

    def step(c, coefficients, shared):
        e0 = c["ref"]["e0"]
        state, es = integrators.sample_every(step_fn, c["state"], n_inner, s.sample_every,
                                             lambda st: energy(st.position, coefficients),
                                             coefficients=coefficients)
        pos = state.position
        rq, fq, nq = quench(pos, coefficients=coefficients)
        eq = energy(rq, coefficients)
        # A usable quench converged and went downhill from the snapshot: FIRE
        # with steps too large for a stiff potential can fling atoms apart and
        # "converge" at a dispersed, higher-energy structure.
        e_snap = es[-1]
        converged = (fq < s.fmax) & jnp.isfinite(eq) & (eq <= e_snap + 1e-6 * (1.0 + jnp.abs(e_snap)))

        finite = (
            jnp.all(jnp.isfinite(es)) & jnp.all(jnp.isfinite(pos))
            & jnp.all(jnp.isfinite(state.momentum)) & jnp.isfinite(e0)
        )
        com = jnp.mean(pos, axis=0)
        exploded = (
            ~finite
            | jnp.any(jnp.abs(es - e0) > s.explode_energy)
            | jnp.any(jnp.sum((pos - com) ** 2, axis=-1) > s.explode_distance**2)
        )
        evap = qoi.evaporated(pos, r_evap=s.r_evap)
        changed = converged & qoi.basin_changed(s.criterion, c["ref"]["basin"], rq, eq, s.r_b, s.e_tol)
        code = jnp.where(
            exploded, FAILED, jnp.where(evap, EVAPORATED, jnp.where(changed, EVENT, CENSORED))
        ).astype(jnp.int32)

        keep = ~exploded  # the samples of a failed block are discarded
        n_in = jnp.sum((es >= lo) & (es <= hi), dtype=jnp.int32)
        block_hist = qoi.energy_histogram(es, nbins, (lo, hi))
        return dict(
            state=state,
            ref=c["ref"],
            block=c["block"] + 1,
            code=code,
            e_last=eq,
            hist=c["hist"] + jnp.where(keep, block_hist, 0),
            n_samples=c["n_samples"] + jnp.where(keep, n_inner, 0).astype(jnp.int32),
            n_outside=c["n_outside"] + jnp.where(keep, n_inner - n_in, 0).astype(jnp.int32),
            e_sum=c["e_sum"] + jnp.where(keep, jnp.sum(es), 0.0),
            quench_steps=c["quench_steps"] + nq.astype(jnp.int32),
            unconverged=c["unconverged"] + (~converged).astype(jnp.int32),
        )

    def result(c):
        dtype = c["e_sum"].dtype
        time = c["block"].astype(dtype) * jnp.asarray(s.n_q * s.dt, dtype)
        mean_e = jnp.where(
            c["n_samples"] > 0, c["e_sum"] / jnp.maximum(c["n_samples"], 1).astype(dtype), jnp.nan
        )
        return dict(
            time=time,
            code=c["code"],
            e0=c["ref"]["e0"],
            e_last=c["e_last"],
            n_checks=c["block"],
            energy_hist=c["hist"],
            n_samples=c["n_samples"],
            n_outside=c["n_outside"],
            mean_energy=mean_e,
            quench_steps=c["quench_steps"],
            quench_unconverged=c["unconverged"],
            ref_max_force=c["ref"]["ref_f"],
        )

    def postfix(results):
        return dict(events=int(np.sum(results["code"] == EVENT)))

    return Program(name="frt-ensemble", init=init, step=step, done=done, result=result, failed=failed,
                   prepare=prepare, cache_key=("frt", energy_fn, settings), postfix=postfix)


def frt_replica_fn(energy_fn: Callable, settings: FRTSettings = FRTSettings()):
    """Build the FRT computation of ONE replica (:func:`jaxiap.md.program.run_replica` of :func:`frt_program`).

    energy_fn(coefficients, positions) -> scalar potential energy; positions
    (N, 3) of a free cluster; coefficients any PyTree (pass a dummy array
    and ignore it for a fixed potential such as the true LJ).

    Returns ``replica(coefficients, key, start_positions, reference_positions=None)
    -> dict`` (pure, jittable, vmappable over any argument), where key is a
    ``jax.random`` key (thermostat noise and initial momenta), start_positions
    (N, 3) the MD start, and reference_positions (N, 3) the structure whose
    quench defines the reference basin (None: the start structure).
    The dict holds scalars unless noted:

    time: first-detection time of the outcome (time units): check number
        x n_q x dt; the censoring time n_checks x n_q x dt for CENSORED.
    code: int32 CENSORED=0 / EVENT=1 / EVAPORATED=2 / FAILED=3.
    e0: quenched reference energy E0.
    e_last: quenched energy at the last check made (the new basin's energy
        for an EVENT).
    n_checks: int32 number of checks made (the deciding one included).
    energy_hist: (nbins,) int32 counts of sampled MD potential energies.
    n_samples: int32 number of energy samples taken (inside or outside the bins).
    n_outside: int32 samples outside the histogram range.
    mean_energy: mean sampled potential energy (NaN with no samples).
    quench_steps: int32 total FIRE steps of the check quenches.
    quench_unconverged: int32 check quenches that hit quench_max_steps or
        ended above the snapshot's energy (FIRE unstable: steps too large for
        the potential's stiffness); no EVENT decision is made at those checks.
    ref_max_force: max |F| after the reference quench (should be < fmax).
    """
    program = frt_program(energy_fn, settings)

    def replica(coefficients, key, start_positions, reference_positions=None):
        start = jnp.asarray(start_positions)
        ref = start if reference_positions is None else jnp.asarray(reference_positions, start.dtype)
        return run_replica(program, coefficients, key, dict(start=start, reference=ref))[0]

    return replica


def frt_chunk_fn(energy_fn: Callable, settings: FRTSettings, n_lanes: int, progress_fn: Callable | None = None):
    """The FRT program for a chunk of replicas sharing ``n_lanes`` recycled lanes (:mod:`jaxiap.md.lanes`).

    Returns ``chunk(coefficients (C, ...), keys (C,), n_valid, start_positions
    (N, 3), reference_positions (N, 3)) -> dict of (C, ...) arrays`` (the
    fields of :func:`frt_replica_fn`), jittable. Replicas ``0 .. n_valid-1``
    are computed; later rows are padding and come back as zeros.
    progress_fn: optional host function called with the number of replicas
    finished in each iteration.
    """
    chunk = lane_chunk_fn(frt_program(energy_fn, settings), n_lanes, progress_fn)

    def frt_chunk(coefficients, keys, n_valid, start, reference_positions):
        return chunk(coefficients, keys, n_valid, dict(start=start, reference=reference_positions))[0]

    return frt_chunk
