"""Screened basin checks for the FRT program: a short quench for every lane, the full quench only where needed.

The full-quench protocol (:mod:`jaxiap.md.frt` with ``screen_steps=0``)
quenches every lane's snapshot to ``max |F| < fmax`` at every check; under
vmap that costs the slowest lane's FIRE steps for all lanes, about 2.5x the
MD of a block for LJ13. Most checks find the reference basin. The screened
protocol (docs/science.md section 5.2) makes the same decision per lane:

1. every lane runs at most ``screen_steps`` FIRE steps (the same FIRE
   iterates as the full quench, which stops a lane when it converges);
2. a lane that converged is decided as before; a lane whose structure has
   the reference bond graph with every pair distance at least
   ``screen_margin`` away from the bond cutoff ``r_b`` is *settled*: no
   basin change at this check;
3. every other active lane continues the SAME FIRE run to ``fmax`` (or the
   step cap) in compact groups of ``screen_lanes`` lanes, so the full quench
   costs the width of a group instead of all lanes.

The decision of a settled lane is the full quench's unless the rest of the
quench would carry a bond across r_b that is at least ``screen_margin``
away (never seen in 2,560 LJ13 snapshots at kT 0.3 with 40 steps and a
0.1 sigma margin; the FRT-equality test and ``bench/frt_ensemble.py``
compare the protocols on the same seeds). Lanes that continue follow the
full quench's iterates; a group narrower than the lanes may round
differently (ulps), which can only matter for a structure on a knife edge.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from jaxiap.geometry import pair_distances
from jaxiap.md.lanes import select_lanes

__all__ = ["screen_passes", "screened_quench_lanes"]


def screen_passes(positions, graph_ref, r_b: float, margin: float):
    """Does a partly quenched structure certainly keep the reference bond graph?  () bool.

    True when the bond graph at ``r_b`` equals ``graph_ref`` (N, N) and every
    pair distance lies at least ``margin`` away from ``r_b`` (free cluster,
    all atoms real). positions (N, 3).
    """
    r, pair_mask = pair_distances(positions)
    same = ~jnp.any((pair_mask & (r < r_b)) != graph_ref)
    clear = jnp.all(jnp.where(pair_mask, jnp.abs(r - r_b) >= margin, True))
    return same & clear


def screened_quench_lanes(fire_init: Callable, fire_apply: Callable, positions, coefficients, graph_ref, active, *,
                          fmax: float, max_steps: int, screen_steps: int, margin: float, r_b: float,
                          group: int):
    """Screened check quench of a batch of lanes.

    fire_init(positions, coefficients=) / fire_apply(state, coefficients=):
    jax-md FIRE functions of one lane. positions (L, N, 3), coefficients a
    PyTree with leading axis L, graph_ref (L, N, N) reference bond graphs,
    active (L,) bool (inactive lanes never enter the full quench).

    Returns ``(positions (L, N, 3), max_force (L,), n_steps (L,) int32,
    settled (L,) bool)``: a settled lane stopped after the screen with the
    reference graph certified; every other lane holds the full quench's
    result (converged, or stopped at ``max_steps``).
    """
    n_lanes = positions.shape[0]
    init = jax.vmap(lambda x, c: fire_init(x, coefficients=c))
    apply = jax.vmap(lambda s, c: fire_apply(s, coefficients=c))

    def max_force(state):  # (L,)
        return jnp.max(jnp.abs(state.force), axis=(-2, -1))

    def going(state, n):
        return (max_force(state) >= fmax) & (n < max_steps)

    def screen_step(_, carry):
        state, n = carry
        go = going(state, n)
        return select_lanes(go, apply(state, coefficients), state), n + go.astype(jnp.int32)

    state = init(positions, coefficients)
    n = jnp.zeros(n_lanes, jnp.int32)
    state, n = jax.lax.fori_loop(0, screen_steps, screen_step, (state, n))
    unfinished = going(state, n)
    settled = unfinished & jax.vmap(lambda x, g: screen_passes(x, g, r_b, margin))(state.position, graph_ref)
    todo = active & unfinished & ~settled

    def finish_group(carry):
        state, n, todo = carry
        idx = jnp.nonzero(todo, size=group, fill_value=n_lanes)[0]  # (group,), n_lanes = empty slot
        real = idx < n_lanes
        take = jnp.minimum(idx, n_lanes - 1)
        sub = jax.tree_util.tree_map(lambda a: a[take], state)
        c_sub = jax.tree_util.tree_map(lambda a: a[take], coefficients)
        n_sub = jnp.where(real, n[take], max_steps)  # empty slots do not step

        def cond(c):
            s, k = c
            return jnp.any(going(s, k))

        def body(c):
            s, k = c
            go = going(s, k)
            return select_lanes(go, apply(s, c_sub), s), k + go.astype(jnp.int32)

        sub, n_sub = jax.lax.while_loop(cond, body, (sub, n_sub))
        state = jax.tree_util.tree_map(lambda a, b: a.at[idx].set(b, mode="drop"), state, sub)
        n = n.at[idx].set(n_sub, mode="drop")
        return state, n, todo.at[idx].set(False, mode="drop")

    state, n, _ = jax.lax.while_loop(lambda c: jnp.any(c[2]), finish_group, (state, n, todo))
    return state.position, max_force(state), n, settled
