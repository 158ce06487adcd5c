"""Minimisation to inherent structures with jax-md's FIRE.

``quench`` runs jax-md's FIRE inside a ``lax.while_loop`` until
max |F| < fmax or ``max_steps``. It is jittable and vmappable (vmap over
positions gives per-replica step counts).

Step sizes: jax-md's defaults (dt_start 0.1, dt_max 0.4) are unstable for LJ
clusters in reduced units: the stiffest mode of the LJ13 icosahedron has
Hessian eigenvalue ~593, so velocity Verlet needs dt < 2/sqrt(593) ~ 0.082,
and with the defaults a slightly perturbed cluster flies apart while the
force check still passes (251 of 256 thermal kT = 0.3 snapshots end in the
wrong basin). We default to dt_start 0.01, dt_max 0.05 (253 of 256 match
L-BFGS at gtol 1e-10); the
other FIRE parameters keep jax-md's defaults (n_min 5, f_inc 1.1, f_dec 0.5,
alpha_start 0.1, f_alpha 0.99).

Potentials: ``energy_fn`` is either a plain ``energy_fn(R, **kwargs)``
(jax-md convention) or a :class:`jaxiap.potentials.base.Potential` (its
``energy``). Periodic cells: pass jax-md's ``shift_fn`` (e.g. from
:func:`jaxiap.geometry.periodic_space`) and the cell as an energy keyword
(``box=``); with a ``neighbor_fn`` the neighbour list is updated every FIRE
step inside the loop.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from jaxiap.errors import JaxiapInputError
from jaxiap.potentials.base import Potential


def _as_energy_fn(energy_fn):
    if isinstance(energy_fn, Potential):
        return energy_fn.energy
    if not callable(energy_fn):
        raise JaxiapInputError(
            f"energy_fn must be a Potential or a callable energy_fn(R, **kwargs), got {type(energy_fn).__name__}"
        )
    return energy_fn


def fire_fns(energy_fn: Callable, dt_start: float = 0.01, dt_max: float = 0.05, *, shift_fn: Callable | None = None):
    """jax-md FIRE ``(init(positions, **kw) -> state, apply(state, **kw) -> state)`` with jaxiap's step sizes.

    The functions :func:`fire_quench_fn` loops; for programs that run the
    FIRE iterations themselves (:mod:`jaxiap.md.frt_screen`).
    """
    from jax_md import minimize, space  # lazy: jax_md takes seconds to import (keeps jaxiap --help fast)

    if shift_fn is None:
        _, shift_fn = space.free()
    return minimize.fire_descent(_as_energy_fn(energy_fn), shift_fn, dt_start=dt_start, dt_max=dt_max)


def fire_quench_fn(
    energy_fn: Callable,
    fmax: float = 1e-6,
    max_steps: int = 5000,
    dt_start: float = 0.01,
    dt_max: float = 0.05,
    *,
    shift_fn: Callable | None = None,
    neighbor_fn=None,
):
    """Build ``quench(positions, **energy_kwargs) -> (positions, max_force, n_steps)``.

    energy_fn: a Potential or ``energy_fn(positions, **kwargs) -> scalar``.
    shift_fn: jax-md shift function (None: ``space.free()``, a free cluster).
    neighbor_fn: a jax-md ``NeighborListFns``; then the returned function is
        ``quench(positions, neighbor, **kw) -> (positions, max_force, n_steps,
        neighbor)``: the list is updated every step and passed to the energy
        as ``neighbor=``; check ``neighbor.did_buffer_overflow`` afterwards
        (:func:`quench` reallocates and reruns).
    """
    init_fn, apply_fn = fire_fns(energy_fn, dt_start, dt_max, shift_fn=shift_fn)

    def max_force(state):
        return jnp.max(jnp.abs(state.force))

    def run(positions, **kwargs):
        state = init_fn(positions, **kwargs)

        def cond(carry):
            state, i = carry
            return (max_force(state) >= fmax) & (i < max_steps)

        def body(carry):
            state, i = carry
            return apply_fn(state, **kwargs), i + 1

        state, n = jax.lax.while_loop(cond, body, (state, jnp.zeros((), jnp.int32)))
        return state.position, max_force(state), n

    if neighbor_fn is None:
        return run

    def run_neighbor(positions, neighbor, **kwargs):
        neighbor = neighbor.update(positions)
        state = init_fn(positions, neighbor=neighbor, **kwargs)

        def cond(carry):
            state, nbrs, i = carry
            return (max_force(state) >= fmax) & (i < max_steps) & ~jnp.asarray(nbrs.did_buffer_overflow, bool)

        def body(carry):
            state, nbrs, i = carry
            state = apply_fn(state, neighbor=nbrs, **kwargs)
            nbrs = nbrs.update(state.position)
            return state, nbrs, i + 1

        carry = (state, neighbor, jnp.zeros((), jnp.int32))
        state, neighbor, n = jax.lax.while_loop(cond, body, carry)
        return state.position, max_force(state), n, neighbor

    return run_neighbor


def quench(energy_fn: Callable, positions, fmax: float = 1e-6, max_steps: int = 5000, *,
           shift_fn: Callable | None = None, neighbor_fn=None, energy_kwargs: dict | None = None,
           **fire_kwargs):
    """Minimise one structure (N, 3); returns (positions, max |F|).

    energy_fn: a Potential or ``energy_fn(R, **kwargs)``; energy_kwargs: fixed
    keyword arguments of every energy call (e.g. ``{"box": box}``);
    shift_fn / neighbor_fn: see :func:`fire_quench_fn` (periodic cells,
    neighbour lists; a list that overflows is reallocated and the quench rerun).
    """
    if energy_kwargs:
        # bound into the energy, not passed to FIRE: jax-md hands step keywords to shift_fn
        # too, and periodic_general's shift_fn reads box= in its own (transposed) convention
        base, bound = _as_energy_fn(energy_fn), dict(energy_kwargs)
        energy_fn = lambda R, **kw: base(R, **{**bound, **kw})  # noqa: E731
    fn = fire_quench_fn(energy_fn, fmax, max_steps, shift_fn=shift_fn, neighbor_fn=neighbor_fn, **fire_kwargs)
    if neighbor_fn is None:
        r, f, _ = jax.jit(fn)(positions)
        return r, f
    run = jax.jit(fn)
    nbrs = neighbor_fn.allocate(positions)
    for _ in range(5):
        r, f, _, nbrs_out = run(positions, nbrs)
        if not bool(nbrs_out.did_buffer_overflow):
            return r, f
        nbrs = neighbor_fn.allocate(r)  # larger capacity from the moved structure
    raise JaxiapInputError("quench: the neighbour list kept overflowing; raise capacity_multiplier of neighbor_fn")
