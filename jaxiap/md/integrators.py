"""Langevin dynamics: the one BAOAB integrator of jaxiap, with two front ends (docs/science.md section 3.1).

With ``h = dt / 2`` and ``c1 = exp(-gamma dt)`` one BAOAB step is
``B: p += h F(x); A: x += h p / m; O: p = c1 p + sqrt((1 - c1^2) m kT) xi;
A: x += h p / m; B: p += h F(x)`` with xi ~ N(0, I).

1. :func:`langevin` (jax-md ``simulate.nvt_langevin``; :func:`free_langevin`
   in ``space.free()``), with :func:`run_steps` and :func:`sample_every`: the
   MD engine of the FRT program (:mod:`jaxiap.md.frt`), of NVT runs in
   periodic cells (:mod:`jaxiap.md.nvt`) and of the reference-data generator
   (:mod:`jaxiap.systems.sampling`). The noise comes from the key carried
   in the state (split once per step), so a trajectory is fixed by its
   start key.
2. :func:`baoab_step` / :func:`initial_momenta`: the same scheme in plain
   JAX with the noise ``xi`` passed in, for :mod:`jaxiap.md.sensitivity`.
   Its estimators need what jax-md's step hides: the likelihood-ratio
   score is a function of each step's ``xi`` and of the split of the O
   step's noise into positions, and the pathwise estimator must draw step
   ``n``'s noise as ``normal(fold_in(key, n))`` so that checkpointed
   reverse-mode recomputation replays it. It also rounds the O step
   differently (``sqrt((1 - c1^2) m kT) * xi`` instead of jax-md's
   ``sqrt(kT (1 - c1^2))`` and a normal sample of variance ``c2^2 m``), so
   the two front ends agree only to round-off for the same noise.

Units: those of the energy function (LJ reduced units for LJ13: energies
in epsilon, lengths in sigma, times in tau); masses 1 unless given.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

__all__ = ["langevin", "free_langevin", "run_steps", "sample_every", "baoab_step", "initial_momenta",
           "BlockState", "block_langevin"]


# ---------------------------------------------------------------------------
# jax-md front end
# ---------------------------------------------------------------------------


def langevin(energy_fn: Callable, *, dt: float, gamma: float, kT: float | None = None,
             shift_fn: Callable | None = None):
    """``(init_fn, step_fn)`` of BAOAB Langevin MD (jax-md ``simulate.nvt_langevin``).

    energy_fn(positions (N, 3), **kwargs) -> scalar; the keyword arguments of
    ``init_fn``/``step_fn`` other than ``kT`` (e.g. ``coefficients=``,
    ``neighbor=``) are passed on to it.
    ``init_fn(key, positions (N, 3), mass=1.0, **kwargs) -> NVTLangevinState``
    draws Maxwell-Boltzmann momenta with zero mean (centre of mass at rest);
    ``step_fn(state, **kwargs) -> state`` makes one step of ``dt`` (time).
    kT (energy): a float is compiled into the program (the numbers of the
    FRT ensembles and the LJ13 reference data); None: pass ``kT=`` to both
    functions (a traced value, so one compilation serves all temperatures).
    gamma: friction (1 / time). shift_fn: jax-md's position update, e.g. the
    ``shift_fn`` of :func:`jaxiap.geometry.periodic_space` for a periodic
    cell (wraps positions into the box); None: a free cluster
    (``space.free()``).
    """
    from jax_md import simulate, space  # lazy: jax_md takes seconds to import (keeps jaxiap --help fast)

    if shift_fn is None:
        _, shift_fn = space.free()
    return simulate.nvt_langevin(energy_fn, shift_fn, dt=dt, kT=1.0 if kT is None else kT, gamma=gamma)


def free_langevin(energy_fn: Callable, *, dt: float, gamma: float, kT: float | None = None):
    """:func:`langevin` of a free cluster (no cell): the FRT program's and the data generator's engine."""
    return langevin(energy_fn, dt=dt, gamma=gamma, kT=kT)


def run_steps(step_fn: Callable, state, n_steps, **kwargs):
    """``n_steps`` MD steps (a ``fori_loop``; n_steps may be traced). Returns the new state."""
    return jax.lax.fori_loop(0, n_steps, lambda _, s: step_fn(s, **kwargs), state)


def sample_every(step_fn: Callable, state, n_samples: int, every: int, observe: Callable, **kwargs):
    """Advance ``n_samples * every`` steps, observing after every ``every`` steps.

    observe(state) -> PyTree of arrays (e.g. ``lambda s: s.position``).
    Returns ``(state, samples)`` with a leading (n_samples,) axis on every
    leaf of samples (a ``lax.scan``).
    """

    def block(s, _):
        s = run_steps(step_fn, s, every, **kwargs)
        return s, observe(s)

    return jax.lax.scan(block, state, None, length=n_samples)


# ---------------------------------------------------------------------------
# explicit-noise front end (sensitivities)
# ---------------------------------------------------------------------------


def baoab_step(force_fn: Callable, c, x, p, f, xi, *, dt, gamma, kT, mass=1.0):
    """One BAOAB Langevin step in plain JAX, differentiable in c, x and p.

    force_fn(c, x) -> force (shape of x); f: the force at x (carried, so one
    force evaluation per step); xi: standard normal noise (shape of x).
    Returns (x, p, f) after the step. The O step is
    ``p <- exp(-gamma dt) p + sqrt((1 - exp(-2 gamma dt)) m kT) xi``.
    """
    h = 0.5 * dt
    c1 = math.exp(-gamma * dt)
    sp = jnp.sqrt((1.0 - c1 * c1) * mass * kT)
    p = p + h * f
    x = x + h * p / mass
    p = c1 * p + sp * xi
    x = x + h * p / mass
    f = force_fn(c, x)
    p = p + h * f
    return x, p, f


def initial_momenta(key, positions, kT, mass=1.0):
    """Maxwell-Boltzmann momenta sqrt(m kT) N(0, 1), shape of positions.

    For clusters (positions (N, 3) with N > 1) the mean momentum is
    subtracted, so the centre of mass starts at rest (as in jax-md).
    """
    p = jnp.sqrt(mass * kT) * jax.random.normal(key, positions.shape, positions.dtype)
    if positions.ndim == 2 and positions.shape[0] > 1:
        p = p - jnp.mean(p, axis=0, keepdims=True)
    return p


# ---------------------------------------------------------------------------
# block-noise engine (the FRT program's MD)
# ---------------------------------------------------------------------------


class BlockState(NamedTuple):
    """State of :func:`block_langevin`: positions, momenta, forces (N, 3) and the PRNG key."""

    position: jnp.ndarray
    momentum: jnp.ndarray
    force: jnp.ndarray
    key: jnp.ndarray


def block_langevin(energy_fn: Callable, *, dt: float, gamma: float, kT: float, mass: float = 1.0,
                   noise_dtype="float32"):
    """``(init, run)``: BAOAB Langevin MD of a free cluster whose noise is drawn once per block.

    The scheme is :func:`baoab_step` (the same BAOAB as jax-md's
    ``nvt_langevin``; forces carried, one evaluation per step). Drawing the
    Gaussian noise is most of the cost of a small cluster's step (3N normals
    per step against N (N - 1) / 2 pair terms), so ``run`` draws the noise of
    a whole block in one call, from a key split once per block, with JAX's
    non-partitionable threefry (``jax.threefry_partitionable(False)``, 2-7x
    faster on CPU than the partitionable default; the replicas are
    independent, so nothing needs sharding-invariant random bits), as
    normals of ``noise_dtype`` (float32: 24-bit normals, 1.5-2x cheaper than
    float64 ones, far finer than any thermostat needs) cast to the state's
    dtype. A trajectory is fixed by its start key and its block lengths.

    energy_fn(positions (N, 3), **kwargs) -> scalar; the keyword arguments
    of ``init``/``run`` (e.g. ``coefficients=``) are passed on to it.
    ``init(key, positions, **kwargs) -> BlockState``: Maxwell-Boltzmann
    momenta with zero mean (:func:`initial_momenta`).
    ``run(state, n_samples, every, observe, **kwargs) -> (state, samples)``:
    ``n_samples * every`` steps, ``observe(state)`` after every ``every``
    steps (leading axis n_samples on every leaf of samples).
    Units: those of energy_fn; dt time, gamma 1/time, kT energy, mass.
    """

    def force(x, **kwargs):
        return -jax.grad(lambda y: energy_fn(y, **kwargs))(x)

    def init(key, positions, **kwargs):
        with jax.threefry_partitionable(False):
            k_p, k_run = jax.random.split(key)
            p = initial_momenta(k_p, positions, kT, mass)
        return BlockState(positions, p, force(positions, **kwargs), k_run)

    def run(state, n_samples: int, every: int, observe: Callable, **kwargs):
        x = state.position
        with jax.threefry_partitionable(False):
            key, sub = jax.random.split(state.key)
            xi = jax.random.normal(sub, (n_samples, every) + x.shape, noise_dtype).astype(x.dtype)
        f_fn = lambda _, y: force(y, **kwargs)  # noqa: E731

        def step(c, xi_n):
            return baoab_step(f_fn, None, *c, xi_n, dt=dt, gamma=gamma, kT=kT, mass=mass), None

        def sample(c, xi_block):
            c, _ = jax.lax.scan(step, c, xi_block)
            return c, observe(BlockState(*c, key))

        (x, p, f), samples = jax.lax.scan(sample, (x, state.momentum, state.force), xi)
        return BlockState(x, p, f, key), samples

    return init, run
