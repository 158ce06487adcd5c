"""First-rearrangement-time (FRT) ensembles: Langevin MD vmapped over (coefficient sample, seed).

The engine behind the LJ13 uncertainty-propagation study (docs/science.md
sections 3-5). One *replica* is one Langevin trajectory of a free cluster under
one potential sample ``m`` with one thermostat seed ``r``; a run is the grid
of M x R replicas, flattened m-major (replica ``i = m * R + r``), processed in
fixed-size chunks by a single compiled program, sharded over ``jax.devices()``
(``shard_map`` on a 1-D mesh; each device runs its share independently).

Pieces, from small to large (jax-md / optax style: small pure functions and
a frozen settings dataclass):

* :class:`FRTSettings`: temperature, friction, time step, check interval,
  thresholds, quench tolerance, histogram bins, precision.
* :func:`frt_replica_fn`: ``(energy_fn, settings) -> replica(coefficients,
  key, start_positions, reference_positions) -> dict`` for ONE replica; pure,
  jittable, vmappable. The definition of the computation.
* :func:`frt_chunk_fn`: the same computation for a queue of replicas on a
  fixed number of vectorised *lanes*; a lane whose replica has finished
  picks up the next one (lane recycling), so a chunk costs about
  sum(FRT) / lanes instead of chunk x max(FRT). At 64 replicas x 100 tau of
  LJ13 this was 3-4x faster than ``vmap(frt_replica_fn)``.
* :func:`run_frt_ensemble`: the grid driver (chunking, padding, device
  sharding, run folder with resume, progress bar) returning an
  :class:`FRTEnsembleResult` of (M, R) arrays.

Algorithm of one replica (docs/science.md section 5.2):

1. Quench the reference structure (default: the start structure) with FIRE
   under the replica's own potential: E0 and the reference basin
   (bond graph, n12; :func:`jaxiap.md.qoi.basin_reference`).
2. Start BAOAB Langevin MD (jax-md ``simulate.nvt_langevin`` in
   ``space.free()``) from the start positions with Maxwell-Boltzmann momenta
   at kT; jax-md's ``initialize_momenta`` subtracts the mean momentum, so the
   centre-of-mass momentum is exactly zero at t = 0 (the Langevin noise does
   not conserve it afterwards; it need not).
3. In blocks of ``n_q`` MD steps (``n_q * dt`` tau), sample the potential
   energy every ``sample_every`` steps, then quench a copy of the positions
   and classify the block with precedence FAILED > EVAPORATED > EVENT:
   FAILED if anything is non-finite or the energy left
   ``|E - E0| <= explode_energy`` or an atom left ``explode_distance`` of the
   centre of mass; EVAPORATED if :func:`jaxiap.md.qoi.evaporated`; EVENT if
   the quench converged (max |F| < fmax) and
   :func:`jaxiap.md.qoi.basin_changed` (``settings.criterion``). Checks whose
   quench did not converge make no EVENT decision and are counted in
   ``quench_unconverged``.
4. The first non-CENSORED block ends the replica: its time is the
   simulated time at that check, ``n_checks_done * n_q * dt``, and its state
   is no longer advanced. The block loop is a ``lax.while_loop`` that ends
   then or after ``n_checks = ceil(t_max / (n_q dt))`` blocks (CENSORED,
   time = n_checks * n_q * dt).

Energy histogram / mean energy: accumulated over the MD samples of every
block up to and including the block of the first event (or evaporation,
or t_max). The samples of a FAILED block are discarded (they may be NaN or
astronomically large), so a failed replica keeps only the samples of its
earlier, healthy blocks; ensemble reductions (:meth:`FRTEnsembleResult.pooled_energy_hist`,
:meth:`FRTEnsembleResult.summary`) exclude FAILED replicas altogether.

Randomness: replica (m, r) uses the key
``jax.random.fold_in(jax.random.key(base_seed), seeds[r])``, the same for
every coefficient sample m (common random numbers: the same thermostat noise
drives every potential sample), and independent of chunking and device count.

Reproducibility: a replica's numbers depend only on its coefficients,
seed, base_seed, structures and settings, and on the floating-point
round-off of the compiled program. With the same ``lanes_per_device`` and
device count they are bitwise identical whatever the chunk size or which
replicas share a chunk (tested in float64 on CPU). XLA may round differently
for another lane width or for a program partitioned over more devices (we
measured relative differences of ~1e-15 after 4 tau between 1 and 4 faked
CPU devices); MD is chaotic, so such runs drift apart after tens of tau and
then agree only statistically. Float32 (``settings.dtype``) is faster on
GPUs but drifts sooner, and FIRE cannot reach fmax much below 1e-4 in it.

Units: those of ``energy_fn`` (LJ reduced units for the defaults:
energies in epsilon, lengths in sigma, times in tau, mass 1).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import sys
import warnings
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxiap import runfolder
from jaxiap.errors import JaxiapInputError
from jaxiap.md.qoi import CENSORED, EVENT, EVAPORATED, FAILED  # outcome codes
from jaxiap.md.quench import fire_quench_fn

__all__ = [
    "FRTSettings",
    "FRTEnsembleResult",
    "frt_replica_fn",
    "run_frt_ensemble",
    "load_frt_result",
    "auto_chunk_size",
    "replica_key",
    "fire_quench_fn",
    "frt_chunk_fn",
]


#: Per-replica outputs of :func:`frt_replica_fn`, in file order.
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

_META_NAME = "ensemble_meta.json"
_CHUNK_FMT = "chunk_{:05d}.npz"
_FORMAT_VERSION = 1


# ---------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------
# One replica (pure JAX)
# ---------------------------------------------------------------------------


def replica_key(base_seed, seed):
    """Thermostat key of every replica with thermostat seed ``seed``: fold_in(key(base_seed), seed)."""
    return jax.random.fold_in(jax.random.key(base_seed), seed)


def frt_replica_fn(energy_fn: Callable, settings: FRTSettings = FRTSettings()):
    """Build the FRT computation of ONE replica.

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
    parts = _frt_parts(energy_fn, settings)

    def replica(coefficients, key, start_positions, reference_positions=None):
        start = jnp.asarray(start_positions)
        ref_in = start if reference_positions is None else jnp.asarray(reference_positions, start.dtype)
        carry = parts.init(coefficients, key, start, parts.reference(coefficients, ref_in))
        carry = jax.lax.while_loop(parts.alive, lambda c: parts.block(c, coefficients), carry)
        return parts.finalize(carry)

    return replica


class _Parts(NamedTuple):
    reference: Callable  # (coefficients, positions) -> ref dict
    init: Callable  # (coefficients, key, start, ref) -> carry
    block: Callable  # (carry, coefficients) -> carry
    alive: Callable  # carry -> bool
    finalize: Callable  # carry -> outputs dict


def _frt_parts(energy_fn: Callable, settings: FRTSettings) -> _Parts:
    """The pieces of one replica's FRT pass, shared by :func:`frt_replica_fn` and :func:`frt_chunk_fn`."""
    from jax_md import simulate, space

    from jaxiap.md import qoi

    s = settings
    lo, hi, nbins = float(s.energy_bins[0]), float(s.energy_bins[1]), int(s.energy_bins[2])
    n_inner = s.n_q // s.sample_every
    n_checks = s.n_checks

    def energy(positions, coefficients):
        # the MD runs in the positions' dtype (settings.dtype): a potential whose
        # constants are float64 (e.g. a fitted basis) must not promote the state
        return jnp.asarray(energy_fn(coefficients, positions)).astype(positions.dtype)

    _, shift_fn = space.free()
    init_fn, step_fn = simulate.nvt_langevin(energy, shift_fn, dt=s.dt, kT=s.kT, gamma=s.gamma)
    fire = dict(fmax=s.fmax, dt_start=s.fire_dt_start, dt_max=s.fire_dt_max)
    quench_ref = fire_quench_fn(energy, max_steps=10 * s.quench_max_steps, **fire)
    quench = fire_quench_fn(energy, max_steps=s.quench_max_steps, **fire)

    def reference(coefficients, positions):
        rq, ref_f, _ = quench_ref(positions, coefficients=coefficients)
        e0 = energy(rq, coefficients)
        return dict(basin=qoi.basin_reference(rq, e0, s.r_b), e0=e0, ref_f=ref_f)

    def init(coefficients, key, start, ref):
        dtype = start.dtype
        zero_i = jnp.zeros((), jnp.int32)
        return dict(
            state=init_fn(key, start, mass=jnp.ones((), dtype), coefficients=coefficients),
            ref=ref,
            block=zero_i,
            code=zero_i,
            e_last=ref["e0"],
            hist=jnp.zeros(nbins, jnp.int32),
            n_samples=zero_i,
            n_outside=zero_i,
            e_sum=jnp.zeros((), dtype),
            quench_steps=zero_i,
            unconverged=zero_i,
        )

    def alive(c):
        return (c["code"] == CENSORED) & (c["block"] < n_checks)

    def md_block(state, coefficients):
        def inner(st, _):
            st = jax.lax.fori_loop(0, s.sample_every, lambda _, x: step_fn(x, coefficients=coefficients), st)
            return st, energy(st.position, coefficients)

        return jax.lax.scan(inner, state, None, length=n_inner)

    def block(c, coefficients):
        e0 = c["ref"]["e0"]
        state, es = md_block(c["state"], coefficients)
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
        changed = converged & qoi.basin_changed(
            s.criterion, c["ref"]["basin"], rq, eq, s.r_b, s.e_tol
        )
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

    def finalize(c):
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

    return _Parts(reference, init, block, alive, finalize)


def _select(mask, new, old):
    """Per-lane select over a batched PyTree: leaf[i] = new[i] if mask[i] else old[i]."""

    def sel(a, b):
        m = mask.reshape(mask.shape + (1,) * (a.ndim - 1))
        if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
            return jax.random.wrap_key_data(
                jnp.where(m[..., None], jax.random.key_data(a), jax.random.key_data(b)),
                impl=jax.random.key_impl(a),
            )
        return jnp.where(m, a, b)

    return jax.tree_util.tree_map(sel, new, old)


def frt_chunk_fn(energy_fn: Callable, settings: FRTSettings, n_lanes: int, progress_fn: Callable | None = None):
    """Build the FRT program for a chunk of replicas that share ``n_lanes`` vectorised lanes.

    Returns ``chunk(coefficients (C, ...), keys (C,), n_valid, start_positions
    (N, 3), reference_positions (N, 3)) -> dict of (C, ...) arrays`` (the
    fields of :func:`frt_replica_fn`), jittable. Replicas ``0 .. n_valid-1``
    are computed; later rows are padding and come back as zeros. n_lanes
    may exceed C (the extra lanes idle).

    Lane recycling: ``n_lanes`` trajectories advance together (one vmapped
    MD block + quench per iteration); as soon as a lane's replica has its
    outcome, its results are written to the output rows and the lane starts
    the next replica of the queue. Work is then ~ (sum of FRTs) / n_lanes
    plus one tail, instead of (chunk size) x (largest FRT of the chunk) for
    a plain ``vmap(frt_replica_fn)``. Every replica runs the arithmetic of
    :func:`frt_replica_fn` on a batch of ``n_lanes``, so for a given
    ``n_lanes`` results do not depend on the chunk size, on which replicas
    share a chunk or on the device count (bitwise in float64). XLA may
    vectorise a batch of another width differently (we saw 3 and 4 lanes
    agree bitwise with each other but not with 12 on CPU); since MD is
    chaotic, trajectories of different lane widths then drift apart after
    tens of tau and only their statistics agree.

    progress_fn: optional host function called (via ``jax.debug.callback``)
    with the number of replicas finished in each iteration.
    """
    parts = _frt_parts(energy_fn, settings)
    n_lanes = int(n_lanes)

    def chunk(coefficients, keys, n_valid, start, reference_positions):
        n_rep = keys.shape[0]
        gather = lambda idx: jax.tree_util.tree_map(lambda a: a[idx], coefficients)  # noqa: E731
        # Reference quenches in batches of n_lanes (lax.map over groups), so that
        # their round-off, like the lanes', does not depend on the chunk size.
        n_groups = -(-n_rep // n_lanes)
        pad = n_groups * n_lanes - n_rep

        def grouped(a):
            if pad:
                a = jnp.concatenate([a, jnp.repeat(a[-1:], pad, axis=0)])
            return a.reshape((n_groups, n_lanes) + a.shape[1:])

        refs = jax.lax.map(
            lambda cg: jax.vmap(parts.reference, in_axes=(0, None))(cg, reference_positions),
            jax.tree_util.tree_map(grouped, coefficients),
        )
        refs = jax.tree_util.tree_map(lambda a: a.reshape((-1,) + a.shape[2:])[:n_rep], refs)
        init = jax.vmap(parts.init, in_axes=(0, 0, None, 0))

        def fresh(idx):
            idx = jnp.minimum(idx, n_rep - 1)
            coef = gather(idx)
            return init(coef, keys[idx], start, jax.tree_util.tree_map(lambda a: a[idx], refs)), coef

        lane_idx = jnp.arange(n_lanes, dtype=jnp.int32)
        carry, coef = fresh(lane_idx)
        active = lane_idx < n_valid
        out = jax.tree_util.tree_map(
            lambda a: jnp.zeros((n_rep,) + a.shape[1:], a.dtype), jax.vmap(parts.finalize)(carry)
        )
        next_idx = jnp.asarray(n_lanes, jnp.int32)

        def cond(loop):
            return jnp.any(loop[3])

        def body(loop):
            carry, coef, lane_idx, active, next_idx, out = loop
            new = _select(active, jax.vmap(parts.block)(carry, coef), carry)
            finished = active & ~jax.vmap(parts.alive)(new)
            widx = jnp.where(finished, lane_idx, n_rep)  # n_rep: dropped
            out = jax.tree_util.tree_map(
                lambda o, v: o.at[widx].set(v, mode="drop"), out, jax.vmap(parts.finalize)(new)
            )
            cand = next_idx + jnp.cumsum(finished, dtype=jnp.int32) - 1
            got = finished & (cand < n_valid)
            f_carry, f_coef = fresh(cand)
            carry = _select(got, f_carry, new)
            coef = _select(got, f_coef, coef)
            lane_idx = jnp.where(got, cand, lane_idx)
            active = (active & ~finished) | got
            n_fin = jnp.sum(finished, dtype=jnp.int32)
            if progress_fn is not None:
                jax.debug.callback(progress_fn, n_fin)
            return carry, coef, lane_idx, active, next_idx + n_fin, out

        loop = jax.lax.while_loop(cond, body, (carry, coef, lane_idx, active, next_idx, out))
        return loop[-1]

    return chunk


# ---------------------------------------------------------------------------
# Result container
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class FRTEnsembleResult:
    """Outcome of :func:`run_frt_ensemble`: arrays shaped (M, R) over (coefficient sample, seed).

    time (M, R) float: first-detection time (time units; see :func:`frt_replica_fn`).
    code (M, R) int32: CENSORED=0 / EVENT=1 / EVAPORATED=2 / FAILED=3.
    e0 (M, R): quenched reference energy under each sample's potential.
    e_last (M, R): quenched energy at the last check.
    n_checks (M, R) int32: checks made.
    energy_hist (M, R, nbins) int32 and energy_bin_edges (nbins + 1,).
    n_samples, n_outside (M, R) int32; mean_energy (M, R).
    quench_steps, quench_unconverged (M, R) int32; ref_max_force (M, R).
    seeds (R,), base_seed, settings (:class:`FRTSettings`), chunk_size,
    lanes_per_device.
    """

    time: np.ndarray
    code: np.ndarray
    e0: np.ndarray
    e_last: np.ndarray
    n_checks: np.ndarray
    energy_hist: np.ndarray
    n_samples: np.ndarray
    n_outside: np.ndarray
    mean_energy: np.ndarray
    quench_steps: np.ndarray
    quench_unconverged: np.ndarray
    ref_max_force: np.ndarray
    energy_bin_edges: np.ndarray
    seeds: np.ndarray
    base_seed: int
    settings: FRTSettings
    chunk_size: int = 0
    lanes_per_device: int = 0

    @property
    def shape(self) -> tuple:
        """(M, R)."""
        return tuple(self.code.shape)

    def summary(self) -> dict:
        """JSON-ready survival statistics (:func:`jaxiap.md.qoi.summarize_frt`).

        Returns dict(all=<summary over all M*R replicas>, per_sample=[<summary
        of sample m over its R seeds> for m in range(M)], t_censor,
        quench_unconverged (total count)). FAILED replicas are excluded from
        the statistics and counted in n_failed.
        """
        from jaxiap.md.qoi import summarize_frt

        return dict(
            all=summarize_frt(self.time.ravel(), self.code.ravel()),
            per_sample=[summarize_frt(self.time[m], self.code[m]) for m in range(self.code.shape[0])],
            t_censor=float(self.settings.t_censor),
            quench_unconverged=int(np.sum(self.quench_unconverged)),
        )

    def pooled_energy_hist(self, per_sample: bool = False) -> np.ndarray:
        """Energy histogram summed over replicas, FAILED replicas excluded.

        Returns (nbins,) counts, or (M, nbins) with ``per_sample`` (summed over seeds).
        """
        ok = (self.code != FAILED)[..., None]
        h = np.where(ok, self.energy_hist, 0)
        return h.sum(axis=1) if per_sample else h.sum(axis=(0, 1))

    def save(self, path) -> None:
        """Write all arrays and the settings to ``path`` (.npz, no pickle; atomic)."""
        arrays = {f: getattr(self, f) for f in REPLICA_FIELDS}
        arrays.update(
            energy_bin_edges=self.energy_bin_edges,
            seeds=self.seeds,
            base_seed=np.asarray(self.base_seed),
            chunk_size=np.asarray(self.chunk_size),
            lanes_per_device=np.asarray(self.lanes_per_device),
            settings_json=np.asarray(json.dumps(self.settings.to_dict())),
        )
        runfolder.savez(path, **arrays)

    @classmethod
    def load(cls, path) -> "FRTEnsembleResult":
        """Read a file written by :meth:`save`."""
        with runfolder.read_npz(path, "FRT ensemble result") as z:
            kw = {f: z[f] for f in REPLICA_FIELDS}
            return cls(
                **kw,
                energy_bin_edges=z["energy_bin_edges"],
                seeds=z["seeds"],
                base_seed=int(z["base_seed"]),
                chunk_size=int(z["chunk_size"]),
                lanes_per_device=int(z["lanes_per_device"]),
                settings=FRTSettings.from_dict(json.loads(str(z["settings_json"]))),
            )


def load_frt_result(path) -> FRTEnsembleResult:
    """Read an :class:`FRTEnsembleResult` written by :meth:`FRTEnsembleResult.save`."""
    return FRTEnsembleResult.load(path)


# ---------------------------------------------------------------------------
# Chunk sizing
# ---------------------------------------------------------------------------


def _available_bytes(device) -> int:
    """Free memory for ``device``: accelerator memory_stats, else host RAM."""
    if device.platform != "cpu":
        try:
            st = device.memory_stats() or {}
            if "bytes_limit" in st:
                return int(st["bytes_limit"]) - int(st.get("bytes_in_use", 0))
        except Exception:  # memory_stats is optional for a backend
            pass
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 2**31


def _per_lane_bytes(n_atoms: int, n_coef: int, nbins: int, itemsize: int) -> int:
    """Rough working-set estimate of one running lane (bytes).

    Counts ~40 (N, 3) arrays (MD and FIRE states, forces, temporaries), ~16
    (N, N) pair arrays (distances, masks, their gradients), 4 copies of the
    coefficients and the histogram; deliberately generous because
    ``energy_fn`` temporaries are unknown.
    """
    return int(itemsize * (40 * 3 * n_atoms + 16 * n_atoms * n_atoms + 4 * n_coef) + 8 * nbins + 4096)


def _per_replica_bytes(n_atoms: int, n_coef: int, nbins: int, itemsize: int) -> int:
    """Bytes of one queued replica: its coefficients, reference basin and output row."""
    return int(itemsize * (2 * n_coef + 4 * n_atoms * 3 + 16) + n_atoms * n_atoms + 4 * nbins + 256)


#: Default lanes (concurrent trajectories) per device. On CPU, LJ13 lanes
#: scale well up to a few dozen per core; accelerators want wide batches.
LANES_PER_DEVICE = {"cpu": 32, "gpu": 4096, "tpu": 4096}

#: Default replicas queued per lane in one chunk: more means a smaller share
#: of the chunk's tail (the wait for its slowest replicas), fewer means finer
#: resume granularity.
REPLICAS_PER_LANE = 16


def auto_chunk_size(n_replicas: int, n_atoms: int, n_coef: int = 1, nbins: int = 200,
                    itemsize: int = 8, devices=None, lanes_per_device: int | None = None,
                    memory_fraction: float = 0.25) -> tuple[int, int]:
    """Choose (chunk_size, lanes_per_device).

    lanes_per_device (unless given): :data:`LANES_PER_DEVICE` for the
    platform, bounded by half of ``memory_fraction`` of the free memory of
    the first device (device ``memory_stats`` on accelerators, psutil /
    /proc/meminfo / sysconf for host RAM) and :func:`_per_lane_bytes`. It does
    not depend on n_replicas, so that runs of any size share one lane width
    (and bitwise results).
    chunk_size (a multiple of the device count, summed over devices): up to
    :data:`REPLICAS_PER_LANE` replicas per lane, bounded by memory
    (:func:`_per_replica_bytes`), spread evenly over the needed number of
    chunks so that the last chunk needs little padding.
    """
    devices = list(devices) if devices is not None else jax.devices()
    nd = len(devices)
    free = memory_fraction * _available_bytes(devices[0])
    if lanes_per_device is None:
        by_mem = int(free // 2 // _per_lane_bytes(n_atoms, n_coef, nbins, itemsize))
        lanes_per_device = max(1, min(by_mem, LANES_PER_DEVICE.get(devices[0].platform, 4096)))
    lanes_per_device = int(lanes_per_device)
    per_dev_needed = -(-int(n_replicas) // nd)
    by_mem = int(free // 2 // _per_replica_bytes(n_atoms, n_coef, nbins, itemsize))
    cap = max(1, min(by_mem, REPLICAS_PER_LANE * lanes_per_device))
    n_chunks = -(-per_dev_needed // cap)
    per_dev = -(-per_dev_needed // n_chunks)
    return per_dev * nd, lanes_per_device


# ---------------------------------------------------------------------------
# Run folder helpers
# ---------------------------------------------------------------------------


def _fn_name(fn) -> str:
    f = getattr(fn, "func", fn)  # functools.partial
    return f"{getattr(f, '__module__', '?')}.{getattr(f, '__qualname__', type(f).__name__)}"


def _fingerprint(parts: dict, arrays: list) -> str:
    h = hashlib.sha256(json.dumps(parts, sort_keys=True).encode())
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:32]


# ---------------------------------------------------------------------------
# The compiled chunk program
# ---------------------------------------------------------------------------

_CHUNK_FN_CACHE: dict = {}
_PROGRESS: dict = {"bar": None}


def _progress_update(n_finished) -> None:
    bar = _PROGRESS["bar"]
    if bar is not None:
        bar.update(int(n_finished))


def _chunk_fn(energy_fn, settings: FRTSettings, devices: tuple, lanes_per_device: int):
    """jit(shard_map(frt_chunk_fn)) over a 1-D device mesh; cached per (energy_fn, settings, devices, lanes)."""
    cache_key = (energy_fn, settings, devices, lanes_per_device)
    try:
        return _CHUNK_FN_CACHE[cache_key]
    except (KeyError, TypeError):
        pass
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    chunk = frt_chunk_fn(energy_fn, settings, lanes_per_device, progress_fn=_progress_update)
    mesh = Mesh(np.asarray(devices, dtype=object), ("replica",), axis_types=(jax.sharding.AxisType.Auto,))

    def local(coefficients, seeds, n_valid, base_seed, start, reference):
        # Each device runs its own shard with its own lanes and queue: no
        # cross-device traffic, and no device waits for another's tail.
        keys = jax.vmap(lambda sd: replica_key(base_seed, sd))(seeds)
        return chunk(coefficients, keys, n_valid[0], start, reference)

    sharded = jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(P("replica"), P("replica"), P("replica"), P(), P(), P()),
        out_specs=P("replica"),
        check_vma=False,
    )
    out = (jax.jit(sharded), NamedSharding(mesh, P("replica")), NamedSharding(mesh, P()))
    try:
        if len(_CHUNK_FN_CACHE) >= 16:
            _CHUNK_FN_CACHE.pop(next(iter(_CHUNK_FN_CACHE)))
        _CHUNK_FN_CACHE[cache_key] = out
    except TypeError:  # unhashable energy_fn: no caching
        pass
    return out


# ---------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------


def _check_inputs(coefficients, seeds, start_positions, reference_positions, dtype):
    leaves, treedef = jax.tree_util.tree_flatten(coefficients)
    if not leaves:
        raise JaxiapInputError(
            "run_frt_ensemble: coefficients has no array leaves; pass an (M, ...) array "
            "(for a fixed potential a dummy such as np.zeros((1, 1)))"
        )
    leaves = [np.asarray(x) for x in leaves]
    ms = {x.shape[0] if x.ndim else None for x in leaves}
    if len(ms) != 1 or None in ms:
        raise JaxiapInputError(
            "run_frt_ensemble: every coefficients leaf needs the same leading axis M "
            f"(coefficient samples); got shapes {[x.shape for x in leaves]}"
        )
    m = ms.pop()
    if m < 1:
        raise JaxiapInputError("run_frt_ensemble: coefficients has M = 0 samples")
    cast = [x.astype(dtype) if np.issubdtype(x.dtype, np.floating) else x for x in leaves]
    for x in cast:
        if np.issubdtype(x.dtype, np.inexact) and not np.all(np.isfinite(x)):
            raise JaxiapInputError("run_frt_ensemble: coefficients contain NaN/inf; drop or fix those samples")

    seeds = np.asarray(seeds)
    if seeds.ndim != 1 or seeds.size < 1 or not np.issubdtype(seeds.dtype, np.integer):
        raise JaxiapInputError(f"run_frt_ensemble: seeds must be a non-empty 1-D integer array, got {seeds.shape} {seeds.dtype}")
    if np.any(seeds < 0) or np.any(seeds >= 2**32):
        raise JaxiapInputError("run_frt_ensemble: seeds must lie in [0, 2**32)")
    seeds = seeds.astype(np.uint32)

    def pos(x, name):
        x = np.asarray(x, dtype=dtype)
        if x.ndim != 2 or x.shape[1] != 3 or x.shape[0] < 2:
            raise JaxiapInputError(f"run_frt_ensemble: {name} must be (N, 3) with N >= 2, got {x.shape}")
        if not np.all(np.isfinite(x)):
            raise JaxiapInputError(f"run_frt_ensemble: {name} contains NaN/inf")
        return x

    start = pos(start_positions, "start_positions")
    ref = start if reference_positions is None else pos(reference_positions, "reference_positions")
    if ref.shape != start.shape:
        raise JaxiapInputError(
            f"run_frt_ensemble: reference_positions {ref.shape} and start_positions {start.shape} differ in shape"
        )
    return cast, treedef, m, seeds, start, ref


def run_frt_ensemble(
    energy_fn: Callable,
    coefficients: Any,
    seeds,
    start_positions,
    settings: FRTSettings = FRTSettings(),
    *,
    reference_positions=None,
    base_seed: int = 0,
    chunk_size: int | None = None,
    lanes_per_device: int | None = None,
    run_dir=None,
    overwrite: bool = False,
    progress: bool = True,
    devices=None,
) -> FRTEnsembleResult:
    """Run the (M coefficient samples) x (R thermostat seeds) FRT grid.

    energy_fn(coefficients, positions) -> scalar: the potential (units of
        the settings); coefficients is one sample (a leaf slice of the
        stack). For a fixed potential pass e.g. ``np.zeros((1, 1))`` and ignore it.
        For the compile cache to be reused across calls, pass the same
        function object (not a fresh lambda) and the same settings.
    coefficients: PyTree whose leaves all have leading axis M (samples).
        Floating leaves are cast to ``settings.dtype``.
    seeds: (R,) integers in [0, 2**32): thermostat seeds; replica (m, r) uses
        ``fold_in(key(base_seed), seeds[r])`` for every m (common random numbers).
    start_positions: (N, 3) MD start structure (length units).
    settings: :class:`FRTSettings`.
    reference_positions: (N, 3) or None; its quench (under each sample's
        potential) defines the reference basin and E0. None: quench of the start.
    base_seed: int in [0, 2**32), see ``seeds``.
    chunk_size: replicas per compiled call and per checkpoint file (the
        M*R replicas, flattened m-major, are cut into consecutive chunks);
        rounded up to a multiple of the device count; spread evenly over the
        devices. The last chunk is padded (padding rows are not simulated).
        None: :func:`auto_chunk_size`.
    lanes_per_device: trajectories each device advances together (vector
        width; :func:`frt_chunk_fn` recycles finished lanes). Results are
        bitwise identical across chunk sizes and device counts for the same
        lanes_per_device; None takes the platform default of
        :func:`auto_chunk_size` (32 on CPU), which does not depend on the run size.
    run_dir: None or a folder. Each finished chunk is written as
        ``chunk_XXXXX.npz`` with an ``ensemble_meta.json`` (settings and a
        fingerprint of settings, shapes, seeds, coefficient, start and
        reference bytes, chunk size and a probe energy of ``energy_fn``);
        rerunning with the same folder loads finished chunks and computes the
        rest, giving the same numbers as an uninterrupted run. A folder with
        a different fingerprint, or from another run-folder format, raises
        :class:`JaxiapInputError` unless ``overwrite=True``, which removes
        the files jaxiap wrote there (chunks, metadata; others are kept).
        Every file is written atomically; a corrupt chunk is recomputed with
        a warning (:mod:`jaxiap.runfolder`). The code of
        ``energy_fn`` itself is not fingerprinted beyond its name and the
        probe energy.
    progress: tqdm bar over replicas (updated as replicas finish) on stderr.
    devices: devices to shard each chunk's replica axis over (default
        ``jax.devices()``); each device runs its own lanes and queue. Results
        do not depend on the device count or chunk size (see lanes_per_device).

    Returns an :class:`FRTEnsembleResult` with (M, R) arrays.
    """
    if not isinstance(settings, FRTSettings):
        raise JaxiapInputError(f"run_frt_ensemble: settings must be an FRTSettings, got {type(settings).__name__}")
    dtype = np.dtype(settings.dtype)
    if dtype == np.float64 and not jax.config.jax_enable_x64:
        raise JaxiapInputError(
            "run_frt_ensemble: settings.dtype='float64' needs JAX float64 "
            "(import jaxiap without JAXIAP_X64=0, or set jax_enable_x64); or use dtype='float32'"
        )
    if not 0 <= int(base_seed) < 2**32:
        raise JaxiapInputError(f"run_frt_ensemble: base_seed must lie in [0, 2**32), got {base_seed}")
    leaves, treedef, m_samples, seeds, start, ref = _check_inputs(
        coefficients, seeds, start_positions, reference_positions, dtype
    )
    r_seeds = seeds.shape[0]
    n_rep = m_samples * r_seeds
    n_atoms = start.shape[0]
    nbins = int(settings.energy_bins[2])

    devices = tuple(devices) if devices is not None else tuple(jax.devices())
    nd = len(devices)
    n_coef = sum(int(np.prod(x.shape[1:])) for x in leaves)
    for name, v in (("chunk_size", chunk_size), ("lanes_per_device", lanes_per_device)):
        if v is not None and int(v) < 1:
            raise JaxiapInputError(f"run_frt_ensemble: {name} must be >= 1, got {v}")
    auto_cs, lanes_per_device = auto_chunk_size(
        n_rep, n_atoms, n_coef, nbins, dtype.itemsize, devices, lanes_per_device
    )
    chunk_size = auto_cs if chunk_size is None else -(-int(chunk_size) // nd) * nd
    n_chunks = -(-n_rep // chunk_size)
    c_dev = chunk_size // nd

    fn, rep_sharding, full_sharding = _chunk_fn(energy_fn, settings, devices, lanes_per_device)

    # ---- run folder -----------------------------------------------------
    fingerprint = None
    if run_dir is not None:
        run_dir = os.fspath(run_dir)
        probe = jax.jit(energy_fn)(jax.tree_util.tree_unflatten(treedef, [x[0] for x in leaves]), start)
        parts = dict(
            format=_FORMAT_VERSION,
            settings=settings.to_dict(),
            energy_fn=_fn_name(energy_fn),
            probe_energy=repr(float(probe)),
            treedef=str(treedef),
            M=m_samples,
            R=r_seeds,
            N=n_atoms,
            base_seed=int(base_seed),
            chunk_size=chunk_size,
        )
        fingerprint = _fingerprint(parts, [seeds, start, ref, *leaves])
        extra = dict(n_chunks=n_chunks, lanes_per_device=lanes_per_device, n_devices=nd,
                     devices=[str(d) for d in devices])
        runfolder.open_run_folder(run_dir, dict(parts, fingerprint=fingerprint), kind="frt-ensemble",
                                  overwrite=overwrite, meta_name=_META_NAME, extra=extra,
                                  option="run_dir")

    # ---- chunks ---------------------------------------------------------
    out = {}
    base = jax.device_put(np.asarray(base_seed, np.uint32), full_sharding)
    start_d = jax.device_put(start, full_sharding)
    ref_d = jax.device_put(ref, full_sharding)

    from tqdm.auto import tqdm

    bar = tqdm(total=n_rep, desc="FRT ensemble", unit="replica", file=sys.stderr,
               disable=not progress, dynamic_ncols=True)
    done = 0
    try:
        for c in range(n_chunks):
            idx = np.arange(c * chunk_size, min((c + 1) * chunk_size, n_rep))
            path = os.path.join(run_dir, _CHUNK_FMT.format(c)) if run_dir is not None else None
            res = _load_chunk(path, fingerprint, idx) if path is not None else None
            if res is None:
                # replica j of the chunk goes to device j % nd, row j // nd of its block, so
                # that every device gets the same share and its valid rows come first
                j = np.arange(idx.size)
                pos = (j % nd) * c_dev + j // nd
                rows = np.full(chunk_size, idx[-1])
                rows[pos] = idx
                n_valid = np.array([np.count_nonzero(j % nd == d) for d in range(nd)], np.int32)
                m_idx, r_idx = rows // r_seeds, rows % r_seeds
                coef = jax.tree_util.tree_unflatten(
                    treedef, [jax.device_put(x[m_idx], rep_sharding) for x in leaves]
                )
                sd = jax.device_put(seeds[r_idx], rep_sharding)
                nv = jax.device_put(n_valid, rep_sharding)
                _PROGRESS["bar"] = bar if progress else None
                try:
                    res = jax.device_get(fn(coef, sd, nv, base, start_d, ref_d))
                    jax.effects_barrier()
                finally:
                    _PROGRESS["bar"] = None
                res = {k: np.asarray(v)[pos] for k, v in res.items()}
                if path is not None:
                    runfolder.savez(path, **res, replica_index=idx, fingerprint=np.asarray(fingerprint))
            for k, v in res.items():
                if k not in out:
                    out[k] = np.empty((n_rep,) + v.shape[1:], v.dtype)
                out[k][idx] = v
            done += idx.size
            bar.n = done
            if progress:
                codes = out["code"][:done]
                bar.set_postfix(chunk=f"{c + 1}/{n_chunks}", events=int(np.sum(codes == EVENT)),
                                failed=int(np.sum(codes == FAILED)), refresh=False)
                bar.refresh()
    finally:
        bar.close()

    shaped = {k: v.reshape((m_samples, r_seeds) + v.shape[1:]) for k, v in out.items()}
    result = FRTEnsembleResult(
        **shaped,
        energy_bin_edges=settings.bin_edges,
        seeds=seeds,
        base_seed=int(base_seed),
        settings=settings,
        chunk_size=chunk_size,
        lanes_per_device=lanes_per_device,
    )
    n_unc = int(np.sum(result.quench_unconverged))
    if n_unc:
        n_q_total = int(np.sum(result.n_checks))
        warnings.warn(
            f"run_frt_ensemble: {n_unc} of {n_q_total} check quenches did not reach fmax={settings.fmax} "
            f"within quench_max_steps={settings.quench_max_steps} (no event decision was made at those "
            "checks); raise quench_max_steps or fmax if this is frequent",
            RuntimeWarning,
            stacklevel=2,
        )
    return result


def _load_chunk(path, fingerprint, idx):
    """Return a finished chunk's arrays, or None when it is missing, from other inputs or unreadable.

    A truncated or corrupt chunk (e.g. damaged on disk) is recomputed with a
    warning that names it; the other chunks are kept.
    """
    if not os.path.exists(path):
        return None
    try:
        with runfolder.read_npz(path, "MD ensemble chunk") as z:
            if str(z["fingerprint"]) != fingerprint or not np.array_equal(z["replica_index"], idx):
                return None
            return {k: z[k] for k in REPLICA_FIELDS}
    except JaxiapInputError as exc:
        warnings.warn(f"run_frt_ensemble: {exc}; recomputing that chunk", RuntimeWarning, stacklevel=3)
        return None
