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
2. ``init``: BAOAB Langevin MD (:func:`jaxiap.md.integrators.block_langevin`:
   jax-md's BAOAB scheme, free cluster, the noise of each block drawn in one
   call) from the start positions with Maxwell-Boltzmann momenta at kT minus
   their mean, so the centre-of-mass momentum is exactly zero at t = 0 (the
   Langevin noise does not conserve it afterwards; it need not).
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

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxiap.md import integrators
from jaxiap.md import qoi
from jaxiap.md.lanes import lane_chunk_fn
from jaxiap.md.program import Program, run_replica
from jaxiap.md.frt_settings import FRTSettings
from jaxiap.md.qoi import CENSORED, EVENT, EVAPORATED, FAILED  # outcome codes
from jaxiap.md.frt_screen import screened_quench_lanes
from jaxiap.md.quench import fire_fns, fire_quench_fn

__all__ = ["REPLICA_FIELDS", "frt_program", "frt_replica_fn", "frt_chunk_fn"]

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


def frt_program(energy_fn: Callable, settings: FRTSettings = FRTSettings()) -> Program:
    """The FRT replica :class:`~jaxiap.md.program.Program` of ``energy_fn`` under ``settings``.

    energy_fn(coefficients, positions (N, 3)) -> scalar potential energy of a
    free cluster; coefficients any PyTree (a dummy for a fixed potential).
    params: one coefficient sample. shared: ``dict(start=(N, 3) MD start,
    reference=(N, 3) structure whose quench defines the reference basin)``,
    both in ``settings.dtype``. The result fields are :data:`REPLICA_FIELDS`
    (see :func:`frt_replica_fn`). cache_key: ``("frt", energy_fn, settings)``.
    """
    s = settings
    lo, hi, nbins = float(s.energy_bins[0]), float(s.energy_bins[1]), int(s.energy_bins[2])
    n_inner = s.n_q // s.sample_every
    n_checks = s.n_checks

    def energy(positions, coefficients):
        # the MD runs in the positions' dtype (settings.dtype): a potential whose
        # constants are float64 (e.g. a fitted basis) must not promote the state
        return jnp.asarray(energy_fn(coefficients, positions)).astype(positions.dtype)

    init_fn, run_md = integrators.block_langevin(energy, dt=s.dt, gamma=s.gamma, kT=s.kT)
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
            state=init_fn(key, start, coefficients=coefficients),
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

    def md_block(c, coefficients):
        """n_q MD steps of one lane: (state, (n_inner,) sampled energies)."""
        return run_md(c["state"], n_inner, s.sample_every, lambda st: energy(st.position, coefficients),
                      coefficients=coefficients)

    def classify(c, coefficients, state, es, rq, fq, nq, settled):
        """One lane's check: the carry after a block, from the MD and the check quench (rq, fq, nq).

        settled: the screen certified the reference basin (no quench result needed).
        """
        e0 = c["ref"]["e0"]
        pos = state.position
        eq = energy(rq, coefficients)
        # A usable quench converged and went downhill from the snapshot: FIRE
        # with steps too large for a stiff potential can fling atoms apart and
        # "converge" at a dispersed, higher-energy structure.
        e_snap = es[-1]
        converged = settled | (
            (fq < s.fmax) & jnp.isfinite(eq) & (eq <= e_snap + 1e-6 * (1.0 + jnp.abs(e_snap))))

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
        changed = ~settled & converged & qoi.basin_changed(s.criterion, c["ref"]["basin"], rq, eq, s.r_b, s.e_tol)
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
            e_last=jnp.where(settled, e0, eq),
            hist=c["hist"] + jnp.where(keep, block_hist, 0),
            n_samples=c["n_samples"] + jnp.where(keep, n_inner, 0).astype(jnp.int32),
            n_outside=c["n_outside"] + jnp.where(keep, n_inner - n_in, 0).astype(jnp.int32),
            e_sum=c["e_sum"] + jnp.where(keep, jnp.sum(es), 0.0),
            quench_steps=c["quench_steps"] + nq.astype(jnp.int32),
            unconverged=c["unconverged"] + (~converged).astype(jnp.int32),
        )

    def step(c, coefficients, shared):
        """Full-quench protocol: quench every snapshot to fmax."""
        state, es = md_block(c, coefficients)
        rq, fq, nq = quench(state.position, coefficients=coefficients)
        return classify(c, coefficients, state, es, rq, fq, nq, jnp.zeros((), bool))

    fire_init, fire_apply = fire_fns(energy, dt_start=s.fire_dt_start, dt_max=s.fire_dt_max)

    def step_lanes(c, coefficients, shared, active):
        """Screened protocol over a batch of lanes (:mod:`jaxiap.md.frt_screen`)."""
        state, es = jax.vmap(md_block)(c, coefficients)
        rq, fq, nq, settled = screened_quench_lanes(
            fire_init, fire_apply, state.position, coefficients, c["ref"]["basin"].graph, active,
            fmax=s.fmax, max_steps=s.quench_max_steps, screen_steps=s.screen_steps, margin=s.screen_margin,
            r_b=s.r_b, group=s.screen_lanes)
        return jax.vmap(classify)(c, coefficients, state, es, rq, fq, nq, settled)

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
                   prepare=prepare, cache_key=("frt", energy_fn, settings), postfix=postfix,
                   step_lanes=step_lanes if s.screen_steps > 0 else None)


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
