"""NVT Langevin runs of any Potential, free or in a periodic cell, as a runner program.

One replica equilibrates, then records block averages of the kinetic
temperature and of the potential energy. In a periodic cell the positions
are wrapped by the cell's ``shift_fn`` and the energy may use a jax-md
neighbour list: the list is allocated once on the host from the start
structure (:func:`nvt_shared`), travels in ``shared``, and every replica
updates its own copy after each step (a rebuild when an atom has moved half
the skin). A list that outgrows its capacity fails the replica (the runner
masks it and counts it); allocate with a larger ``capacity_multiplier``.

Units: those of the potential (eV, Å, amu and ASE time for the aluminium
system; reduced units for LJ). The kinetic temperature is 2 KE / (3 N) in
energy units (Langevin does not conserve momentum, so there are 3N degrees
of freedom), the quantity jax-md's ``quantity.temperature`` returns.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax_md import quantity

from jaxiap.errors import JaxiapInputError
from jaxiap.md import integrators
from jaxiap.md.program import Program
from jaxiap.md.runner import ProgramRun, run_program
from jaxiap.md.sizing import LANES_PER_DEVICE
from jaxiap.potentials.base import Potential, parameters

__all__ = ["NVTSettings", "nvt_program", "nvt_shared", "run_nvt"]


@dataclass(frozen=True)
class NVTSettings:
    """What one NVT replica computes.

    kT: thermostat temperature (energy units); dt: time step; gamma:
    friction (1 / time); mass: atomic mass (scalar). The replica runs
    ``n_equilibrate_blocks`` unrecorded blocks, then ``n_blocks`` blocks of
    ``block_steps`` steps, observing every ``record_every`` steps.
    """

    kT: float
    dt: float
    gamma: float
    mass: float = 1.0
    n_equilibrate_blocks: int = 5
    n_blocks: int = 35
    block_steps: int = 100
    record_every: int = 10

    def __post_init__(self):
        for name in ("kT", "dt", "gamma", "mass"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and np.isfinite(v) and v > 0):
                raise JaxiapInputError(f"NVTSettings: {name}={v!r} must be a positive finite number")
        for name in ("n_blocks", "block_steps", "record_every"):
            v = getattr(self, name)
            if not (isinstance(v, (int, np.integer)) and v >= 1):
                raise JaxiapInputError(f"NVTSettings: {name}={v!r} must be an integer >= 1")
        if not (isinstance(self.n_equilibrate_blocks, (int, np.integer)) and self.n_equilibrate_blocks >= 0):
            raise JaxiapInputError(f"NVTSettings: n_equilibrate_blocks={self.n_equilibrate_blocks!r} "
                                   "must be an integer >= 0")
        if self.block_steps % self.record_every:
            raise JaxiapInputError(f"NVTSettings: block_steps={self.block_steps} must be a multiple of "
                                   f"record_every={self.record_every}")


def nvt_shared(start, neighbor_fn=None):
    """``shared`` of :func:`nvt_program`: the start positions (N, 3) and, with a neighbour list, its allocation."""
    start = jnp.asarray(start)
    if start.ndim != 2 or start.shape[1] != 3:
        raise JaxiapInputError(f"nvt_shared: start must be positions of shape (N, 3), got {tuple(start.shape)}")
    if neighbor_fn is None:
        return dict(start=start)
    return dict(start=start, neighbor=neighbor_fn.allocate(start))


def nvt_program(potential: Potential, settings: NVTSettings, *, shift_fn: Callable | None = None,
                energy_kwargs: dict | None = None) -> Program:
    """The NVT replica :class:`~jaxiap.md.program.Program` of ``potential``.

    params: one sample of :func:`jaxiap.potentials.base.parameters`
    (``parameters(potential)`` itself for a fixed potential, or a stack from
    ``parameters(stack_parameters(potential, samples))``). shared:
    :func:`nvt_shared` (with ``neighbor`` the energy gets ``neighbor=``).
    shift_fn: the cell's jax-md shift (``periodic_space(box, ...)[1]``), None
    for a free cluster. energy_kwargs: fixed keyword arguments of the energy
    (``box=``, ``species=``). Result fields per replica:
    ``kinetic_temperature`` and ``potential_energy`` (n_blocks,) block means,
    ``final_positions`` (N, 3), ``neighbor_rebuilds`` (int).
    """
    if not isinstance(potential, Potential):
        raise JaxiapInputError(f"nvt_program: potential must be a jaxiap Potential, got {type(potential).__name__}")
    if not isinstance(settings, NVTSettings):
        raise JaxiapInputError(f"nvt_program: settings must be NVTSettings, got {type(settings).__name__}")
    s = settings
    kwargs = dict(energy_kwargs or {})
    _, static = eqx.partition(potential, potential.parameter_spec())

    def energy(positions, params, **neighbor):
        return eqx.combine(params, static).energy(positions, **kwargs, **neighbor)

    init_fn, step_fn = integrators.langevin(energy, dt=s.dt, gamma=s.gamma, kT=s.kT, shift_fn=shift_fn)
    n_obs = s.block_steps // s.record_every
    n_total = s.n_equilibrate_blocks + s.n_blocks

    def nb_kwargs(nbrs):
        return {} if nbrs is None else dict(neighbor=nbrs)

    def init(params, key, prep, shared):
        start = shared["start"]
        nbrs = shared.get("neighbor")
        if nbrs is not None:
            nbrs = nbrs.update(start)
        zeros = jnp.zeros(s.n_blocks, start.dtype)
        return dict(
            state=init_fn(key, start, mass=jnp.asarray(s.mass, start.dtype), params=params, **nb_kwargs(nbrs)),
            nbrs=nbrs,
            block=jnp.zeros((), jnp.int32),
            kt=zeros,
            pe=zeros,
            rebuilds=jnp.zeros((), jnp.int32),
        )

    def one_step(carry, params):
        state, nbrs, rebuilds = carry
        state = step_fn(state, params=params, **nb_kwargs(nbrs))
        if nbrs is not None:
            ref = nbrs.reference_position
            nbrs = nbrs.update(state.position)
            rebuilds = rebuilds + jnp.any(nbrs.reference_position != ref).astype(jnp.int32)
        return state, nbrs, rebuilds

    def step(c, params, shared):
        def observe(carry, _):
            carry = jax.lax.fori_loop(0, s.record_every, lambda _, x: one_step(x, params), carry)
            st, nbrs, _ = carry
            kt = quantity.temperature(momentum=st.momentum, mass=st.mass)
            return carry, (kt, energy(st.position, params, **nb_kwargs(nbrs)))

        (state, nbrs, rebuilds), (kts, pes) = jax.lax.scan(observe, (c["state"], c["nbrs"], c["rebuilds"]),
                                                            None, length=n_obs)
        rec = c["block"] - s.n_equilibrate_blocks
        slot = jnp.clip(rec, 0, s.n_blocks - 1)
        keep = rec >= 0
        return dict(
            state=state,
            nbrs=nbrs,
            block=c["block"] + 1,
            kt=c["kt"].at[slot].set(jnp.where(keep, jnp.mean(kts), c["kt"][slot])),
            pe=c["pe"].at[slot].set(jnp.where(keep, jnp.mean(pes), c["pe"][slot])),
            rebuilds=rebuilds,
        )

    def done(c):
        return c["block"] >= n_total

    def failed(c):
        bad = ~(jnp.all(jnp.isfinite(c["state"].position)) & jnp.all(jnp.isfinite(c["state"].momentum)))
        if c["nbrs"] is not None:
            bad = bad | c["nbrs"].did_buffer_overflow
        return bad

    def result(c):
        return dict(kinetic_temperature=c["kt"], potential_energy=c["pe"], final_positions=c["state"].position,
                    neighbor_rebuilds=c["rebuilds"])

    return Program(name="nvt", init=init, step=step, done=done, result=result, failed=failed,
                   cache_key=None)


def run_nvt(potential: Potential, seeds, start, settings: NVTSettings, *, samples=None, shift_fn=None,
            neighbor_fn=None, energy_kwargs: dict | None = None, base_seed: int = 0, run_dir=None,
            overwrite: bool = False, progress: bool = True, **runner_kwargs) -> ProgramRun:
    """NVT replicas of ``potential`` for every (parameter sample, seed) in the runner.

    samples: None (the potential's own parameters, M = 1) or a stacked
    parameter tree ``parameters(stack_parameters(potential, samples))``.
    seeds: (R,) ints; start: (N, 3) positions (wrapped into the cell for a
    periodic run); shift_fn / neighbor_fn: from
    :func:`jaxiap.geometry.periodic_space` (None: free cluster, dense).
    Other keywords (``chunk_size``, ``lanes_per_device``, ``devices``) go to
    :func:`jaxiap.md.runner.run_program`; unless given, ``lanes_per_device``
    is the platform default (:data:`jaxiap.md.sizing.LANES_PER_DEVICE`) or
    the replicas per device if fewer, so a few large-cell replicas do not
    pay for idle lanes. Returns the runner's ``ProgramRun``
    (``results[name]`` shaped (M, R, ...)).
    """
    program = nvt_program(potential, settings, shift_fn=shift_fn, energy_kwargs=energy_kwargs)
    params = samples if samples is not None else jax.tree_util.tree_map(lambda x: x[None], parameters(potential))
    if runner_kwargs.get("lanes_per_device") is None:
        devices = runner_kwargs.get("devices") or jax.devices()
        m = jax.tree_util.tree_leaves(params)[0].shape[0]
        per_device = -(-m * len(np.atleast_1d(seeds)) // len(devices))
        runner_kwargs["lanes_per_device"] = max(1, min(per_device, LANES_PER_DEVICE.get(devices[0].platform, 4096)))
    shared = nvt_shared(start, neighbor_fn)
    identity = dict(program="nvt", settings=asdict(settings), potential=type(potential).__name__)
    return run_program(program, params, seeds, shared, base_seed=base_seed, run_dir=run_dir, overwrite=overwrite,
                       progress=progress, identity=identity, where="run_nvt", **runner_kwargs)
