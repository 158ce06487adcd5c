"""Replica programs: what one trajectory of an ensemble computes, as pure functions.

An *ensemble* is a grid of M parameter samples (e.g. posterior coefficient
samples of a potential) times R thermostat seeds; one *replica* is one cell
of it. A :class:`Program` says what a replica does; the runner
(:func:`jaxiap.md.runner.run_program`) says how many replicas run together:
it chunks the grid, shards chunks over devices, recycles vectorised lanes as
replicas finish, masks blown-up replicas, checkpoints chunks and resumes. A
new kind of trajectory (a first-passage time, a fixed-time average, a toy
random walk) is one file that builds a Program; the runner is not edited.

Shapes below are per replica (the runner vmaps them over lanes):

* ``params``: one parameter sample, the slice ``leaf[m]`` of every leaf of
  the (M, ...) stack given to the runner (e.g. coefficients (K,)).
* ``shared``: a PyTree of arrays every replica sees unchanged (start
  structure (N, 3), reference structure (N, 3), ...), or None.
* ``key``: the replica's PRNG key, ``fold_in(key(base_seed), seed_r)``
  (:func:`jaxiap.md.runner.replica_key`): the same for every sample m with
  seed r (common random numbers).
* ``prep``: what :attr:`Program.prepare` returns (None without prepare).
* ``carry``: any PyTree of arrays of fixed shapes (the replica's state).

All functions must be pure and traceable by JAX (no Python control flow on
traced values), and a replica must not read another's data: lanes are
vmapped, so a NaN in one lane cannot reach the others.
"""

from __future__ import annotations

from typing import Any, Callable, Hashable, NamedTuple

import jax
import jax.numpy as jnp

from jaxiap.errors import JaxiapInputError

__all__ = ["Program", "run_replica", "check_program", "finished"]


class Program(NamedTuple):
    """A replica program (a NamedTuple of pure functions plus identification).

    name: short name (progress bar label and run-folder kind), e.g.
        ``"frt-ensemble"``.
    init: ``init(params, key, prep, shared) -> carry``: the replica's
        initial state.
    step: ``step(carry, params, shared) -> carry``: advance one block (e.g.
        n MD steps and a check). The runner calls it until done or failed.
    done: ``done(carry) -> bool`` scalar: the replica has its result (the
        program must make it true eventually, e.g. at a maximum number of
        blocks).
    result: ``result(carry) -> dict`` of per-replica arrays (fixed shapes
        and dtypes; the runner returns them stacked as (M, R, ...)). The
        names ``failed``, ``replica_index`` and ``fingerprint`` are reserved.
    failed: ``failed(carry) -> bool`` scalar, or None (never fails): the
        replica blew up (non-finite state, energy out of range). The runner
        stops it, returns its last result row with ``failed = True`` and
        counts it; other replicas are unaffected.
    prepare: ``prepare(params, shared) -> prep`` or None: per-replica setup
        that does not need the key (e.g. a reference quench). The runner
        evaluates it in groups as wide as the lanes, so its round-off does
        not depend on the chunk size.
    cache_key: hashable identity of the computation (e.g. ``(name,
        settings, energy_fn)``): programs with equal cache keys must compute
        the same thing, and share one compiled program per device set and
        lane width. None: compiled afresh on every call.
    postfix: optional host function ``postfix(results) -> dict`` for the
        progress bar, given the finished rows' results as numpy arrays
        (e.g. ``{"events": 12}``).
    step_lanes: optional ``step_lanes(carry, params, shared, active) ->
        carry`` over a batch of lanes (every leaf of carry and params with a
        leading lane axis L; active (L,) bool, lanes whose result still
        counts). The runner calls it instead of ``vmap(step)``, so a program
        can share work across lanes (e.g. run an expensive branch only for
        the lanes that need it, in compact groups). It must compute, lane by
        lane, what ``step`` computes; :func:`run_replica` runs it on a batch
        of one.
    """

    name: str
    init: Callable
    step: Callable
    done: Callable
    result: Callable
    failed: Callable | None = None
    prepare: Callable | None = None
    cache_key: Hashable = None
    postfix: Callable | None = None
    step_lanes: Callable | None = None


def check_program(program: Any, where: str = "run_program") -> Program:
    """Raise :class:`jaxiap.errors.JaxiapInputError` unless ``program`` is a usable :class:`Program`."""
    if not isinstance(program, Program):
        raise JaxiapInputError(f"{where}: program must be a jaxiap.md.program.Program, got "
                               f"{type(program).__name__}; build one with Program(name=..., init=..., ...)")
    for name in ("init", "step", "done", "result"):
        if not callable(getattr(program, name)):
            raise JaxiapInputError(f"{where}: program.{name} must be a function")
    for name in ("failed", "prepare", "postfix", "step_lanes"):
        v = getattr(program, name)
        if v is not None and not callable(v):
            raise JaxiapInputError(f"{where}: program.{name} must be a function or None")
    try:
        hash(program.cache_key)
    except TypeError:
        raise JaxiapInputError(f"{where}: program.cache_key must be hashable (or None), "
                               f"got {type(program.cache_key).__name__}") from None
    return program


def finished(program: Program, carry):
    """``(stop, failed)`` bools of one replica: stop when done or failed."""
    done = jnp.asarray(program.done(carry), bool)
    if program.failed is None:
        return done, jnp.zeros((), bool)
    bad = jnp.asarray(program.failed(carry), bool)
    return done | bad, bad


def _step_one(program: Program, carry, params, shared):
    """``program.step`` of one replica, through ``step_lanes`` on a batch of one when the program has it."""
    if program.step_lanes is None:
        return program.step(carry, params, shared)
    one = lambda tree: jax.tree_util.tree_map(lambda a: jnp.expand_dims(a, 0), tree)  # noqa: E731
    out = program.step_lanes(one(carry), one(params), shared, jnp.ones((1,), bool))
    return jax.tree_util.tree_map(lambda a: a[0], out)


def run_replica(program: Program, params, key, shared=None):
    """Run ONE replica to its end: ``(result dict, failed bool)``.

    The definition of a replica's computation, without lanes or chunks
    (pure, jittable, vmappable). The runner computes the same arithmetic on
    a batch of lanes; with a batch as wide as its lanes the numbers agree
    bitwise for a program without ``step_lanes``. A program with
    ``step_lanes`` runs it here on a batch of one, which may round its
    shared work differently (ulps; the FRT program's decisions and times
    agree, see :mod:`jaxiap.md.frt_screen`).
    """
    prep = program.prepare(params, shared) if program.prepare is not None else None
    carry = program.init(params, key, prep, shared)
    carry = jax.lax.while_loop(lambda c: ~finished(program, c)[0], lambda c: _step_one(program, c, params, shared),
                               carry)
    return program.result(carry), finished(program, carry)[1]
