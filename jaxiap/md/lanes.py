"""Lane recycling: a queue of replicas of one :class:`~jaxiap.md.program.Program` on a fixed number of lanes.

``n_lanes`` replicas advance together (one vmapped ``program.step`` per
iteration of a ``lax.while_loop``); as soon as a lane's replica is done (or
failed), its result row is written and the lane starts the next replica of
the queue. Work is then about (sum of replica lengths) / n_lanes plus one
tail, instead of (chunk size) x (longest replica) for a plain vmap: for 64
LJ13 first-rearrangement replicas of 100 tau this was 3-4x faster.

Every replica runs the arithmetic of :func:`jaxiap.md.program.run_replica`
on a batch of ``n_lanes``, so for a given ``n_lanes`` (and device count)
results do not depend on the chunk size or on which replicas share a chunk
(bitwise in float64 on CPU). A program partitioned over another number of
devices may round differently by about 1 ulp: over 100 tau, 214 of 256 LJ13
FRT replicas agreed between 1 and 2 CPU devices (``bench/frt_ensemble.py``).
XLA may vectorise a batch of another width
differently (3 and 4 lanes agreed bitwise with each other but not with 12
on CPU); chaotic dynamics then drift apart and agree only statistically.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from jaxiap.md.program import Program, finished

__all__ = ["lane_chunk_fn", "select_lanes"]


def select_lanes(mask, new, old):
    """Per-lane select over a batched PyTree: ``leaf[i] = new[i] if mask[i] else old[i]`` (mask (L,) bool)."""

    def sel(a, b):
        m = mask.reshape(mask.shape + (1,) * (a.ndim - 1))
        if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
            return jax.random.wrap_key_data(
                jnp.where(m[..., None], jax.random.key_data(a), jax.random.key_data(b)),
                impl=jax.random.key_impl(a),
            )
        return jnp.where(m, a, b)

    return jax.tree_util.tree_map(sel, new, old)


def _grouped_prepare(program: Program, params, shared, n_rep: int, n_lanes: int):
    """``prepare`` of every queued replica, in groups of n_lanes (``lax.map`` over vmapped groups).

    Groups as wide as the lanes keep the round-off of ``prepare`` independent
    of the chunk size. Returns a PyTree with leading axis n_rep, or None.
    """
    if program.prepare is None:
        return None
    n_groups = -(-n_rep // n_lanes)
    pad = n_groups * n_lanes - n_rep

    def grouped(a):
        if pad:
            a = jnp.concatenate([a, jnp.repeat(a[-1:], pad, axis=0)])
        return a.reshape((n_groups, n_lanes) + a.shape[1:])

    prep = jax.lax.map(
        lambda pg: jax.vmap(program.prepare, in_axes=(0, None))(pg, shared),
        jax.tree_util.tree_map(grouped, params),
    )
    return jax.tree_util.tree_map(lambda a: a.reshape((-1,) + a.shape[2:])[:n_rep], prep)


def lane_chunk_fn(program: Program, n_lanes: int, progress_fn: Callable | None = None):
    """Build ``chunk(params (C, ...), keys (C,), n_valid, shared) -> (results, failed)`` for one device.

    params: the chunk's parameter rows (every leaf with leading axis C);
    keys: (C,) PRNG keys; n_valid: int, replicas ``0 .. n_valid - 1`` are
    computed and later rows are padding (their results come back as zeros);
    shared: PyTree seen by every replica. Returns results, a dict of
    (C, ...) arrays (:attr:`Program.result`), and failed, a (C,) bool mask.
    n_lanes may exceed C (the extra lanes idle). Jittable.

    progress_fn: optional host function, called through
    ``jax.debug.callback`` with the number of replicas finished in each
    iteration.
    """
    n_lanes = int(n_lanes)
    init = jax.vmap(program.init, in_axes=(0, 0, 0, None))
    if program.step_lanes is not None:
        step = program.step_lanes
    else:
        v_step = jax.vmap(program.step, in_axes=(0, 0, None))
        step = lambda carry, p, shared, active: v_step(carry, p, shared)  # noqa: E731
    result = jax.vmap(program.result)
    stop = jax.vmap(lambda c: finished(program, c))

    def chunk(params, keys, n_valid, shared):
        n_rep = keys.shape[0]
        take = lambda tree, idx: jax.tree_util.tree_map(lambda a: a[idx], tree)  # noqa: E731
        prep = _grouped_prepare(program, params, shared, n_rep, n_lanes)

        def fresh(idx):
            idx = jnp.minimum(idx, n_rep - 1)
            p = take(params, idx)
            return init(p, keys[idx], take(prep, idx), shared), p

        lane_idx = jnp.arange(n_lanes, dtype=jnp.int32)
        carry, p = fresh(lane_idx)
        active = lane_idx < n_valid
        out = jax.tree_util.tree_map(lambda a: jnp.zeros((n_rep,) + a.shape[1:], a.dtype), result(carry))
        out_failed = jnp.zeros((n_rep,), bool)
        next_idx = jnp.asarray(n_lanes, jnp.int32)

        def body(loop):
            carry, p, lane_idx, active, next_idx, out, out_failed = loop
            new = select_lanes(active, step(carry, p, shared, active), carry)
            ended, bad = stop(new)
            fin = active & ended
            widx = jnp.where(fin, lane_idx, n_rep)  # n_rep: dropped
            out = jax.tree_util.tree_map(lambda o, v: o.at[widx].set(v, mode="drop"), out, result(new))
            out_failed = out_failed.at[widx].set(bad & fin, mode="drop")
            cand = next_idx + jnp.cumsum(fin, dtype=jnp.int32) - 1
            got = fin & (cand < n_valid)
            f_carry, f_p = fresh(cand)
            carry = select_lanes(got, f_carry, new)
            p = select_lanes(got, f_p, p)
            lane_idx = jnp.where(got, cand, lane_idx)
            active = (active & ~fin) | got
            n_fin = jnp.sum(fin, dtype=jnp.int32)
            if progress_fn is not None:
                jax.debug.callback(progress_fn, n_fin)
            return carry, p, lane_idx, active, next_idx + n_fin, out, out_failed

        loop = jax.lax.while_loop(lambda lp: jnp.any(lp[3]), body,
                                  (carry, p, lane_idx, active, next_idx, out, out_failed))
        return loop[5], loop[6]

    return chunk
