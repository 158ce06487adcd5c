"""NVT Langevin replicas that record quantities of interest, as a runner program (``jaxiap sweep``).

One replica is one Langevin trajectory of a Potential under one parameter
sample with one thermostat seed, from a given start structure (a free
cluster, or a periodic cell with a jax-md neighbour list: allocated once on
the host, carried in ``shared``, updated by every replica after each step;
an overflow fails the replica). The trajectory runs ``n_equilibrate_blocks +
n_blocks`` blocks of ``block_steps`` BAOAB steps (jax-md's
``nvt_langevin``, :func:`jaxiap.md.integrators.langevin`) and records, per
replica:

- ``pe_per_atom``: the mean potential energy per atom over the recorded
  frames (every ``record_every`` steps of the production blocks);
- ``rdf_counts`` (rdf_bins,): the mean number of pairs per frame whose
  distance falls in each bin of [0, rdf_r_max) (each unordered pair once;
  minimum image in a cell), over the same frames; the caller normalises it
  (:func:`rdf_from_counts`);
- ``basin_block``: the first block after which the structure had left its
  start basin (-1: never), checked after every block from t = 0
  (equilibration included) by one criterion:

  * ``"graph"`` (free clusters): a copy of the positions is quenched with
    FIRE (at most ``quench_steps`` steps, to max |F| < ``quench_fmax``) and
    its bond graph (pairs closer than ``bond_cutoff``) is compared with that
    of the quenched start structure under the replica's own parameters; a
    change of any bond is a basin change (the permutational criterion of the
    LJ13 study, docs/science.md 5.3). A check whose quench does not converge
    decides nothing and is counted (``quench_unconverged``);
  * ``"displacement"`` (periodic solids): an atom has moved more than
    ``displacement`` from its start position (minimum image, after removing
    the mean displacement of all atoms, i.e. the drift of the centre of mass);
  * ``"none"``: no check.

Units: those of the potential (eV, Å, amu and ASE time for ``jaxiap sweep``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from jaxiap.errors import JaxiapInputError
from jaxiap.geometry import minimum_image, neighbor_pairs, pair_distances
from jaxiap.md import integrators
from jaxiap.md.program import Program
from jaxiap.md.quench import fire_quench_fn
from jaxiap.potentials.base import Potential

__all__ = ["QoISettings", "BASIN_CRITERIA", "nvt_qoi_program", "rdf_from_counts"]

#: basin-change criteria of :func:`nvt_qoi_program`
BASIN_CRITERIA = ("graph", "displacement", "none")


@dataclass(frozen=True)
class QoISettings:
    """What one replica computes (units of the potential: energy, length, time, mass).

    kT, dt, gamma: thermostat temperature (energy), time step, friction (1 / time).
    n_equilibrate_blocks, n_blocks, block_steps, record_every: blocks before recording, recorded
    blocks, MD steps per block (one basin check after each), steps between recorded frames.
    rdf_bins, rdf_r_max: the pair-distance histogram. basin: one of :data:`BASIN_CRITERIA`;
    bond_cutoff, quench_steps, quench_fmax: the "graph" criterion; displacement: the
    "displacement" criterion's threshold (length).
    """

    kT: float
    dt: float
    gamma: float
    n_equilibrate_blocks: int
    n_blocks: int
    block_steps: int
    record_every: int
    rdf_bins: int
    rdf_r_max: float
    basin: str = "none"
    bond_cutoff: float = 0.0
    displacement: float = 0.0
    quench_steps: int = 2000
    quench_fmax: float = 1e-3

    def __post_init__(self):
        for name in ("kT", "dt", "gamma", "rdf_r_max", "quench_fmax"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and np.isfinite(v) and v > 0):
                raise JaxiapInputError(f"QoISettings: {name}={v!r} must be a positive finite number")
        for name in ("n_blocks", "block_steps", "record_every", "rdf_bins", "quench_steps"):
            v = getattr(self, name)
            if not (isinstance(v, (int, np.integer)) and v >= 1):
                raise JaxiapInputError(f"QoISettings: {name}={v!r} must be an integer >= 1")
        if not (isinstance(self.n_equilibrate_blocks, (int, np.integer)) and self.n_equilibrate_blocks >= 0):
            raise JaxiapInputError(f"QoISettings: n_equilibrate_blocks={self.n_equilibrate_blocks!r} must be an "
                                   "integer >= 0")
        if self.block_steps % self.record_every:
            raise JaxiapInputError(f"QoISettings: record_every={self.record_every} must divide "
                                   f"block_steps={self.block_steps}")
        if self.basin not in BASIN_CRITERIA:
            raise JaxiapInputError(f"QoISettings: basin={self.basin!r} is unknown; choose one of {BASIN_CRITERIA}")
        if self.basin == "graph" and not self.bond_cutoff > 0:
            raise JaxiapInputError(f"QoISettings: bond_cutoff={self.bond_cutoff!r} must be > 0 for basin='graph'")
        if self.basin == "displacement" and not self.displacement > 0:
            raise JaxiapInputError(f"QoISettings: displacement={self.displacement!r} must be > 0 for "
                                   "basin='displacement'")

    @property
    def n_total_blocks(self) -> int:
        return self.n_equilibrate_blocks + self.n_blocks

    @property
    def n_frames(self) -> int:
        """Recorded frames per replica."""
        return self.n_blocks * (self.block_steps // self.record_every)


def rdf_from_counts(counts, n_atoms: int, r_max: float, volume: float | None = None):
    """(r centres (B,), rdf (..., B)) from mean pair counts per frame (..., B) on [0, r_max).

    With a cell ``volume``: the radial distribution function g(r) = counts V / (N (N - 1) / 2 *
    4/3 pi (r_hi^3 - r_lo^3)) (dimensionless, -> 1 in a homogeneous fluid). Without (a free
    cluster): the pair-distance distribution P(r) = counts / (N (N - 1) / 2 * dr) (1 / length; it
    integrates to the fraction of pairs closer than r_max).
    """
    counts = np.asarray(counts, np.float64)
    b = counts.shape[-1]
    edges = np.linspace(0.0, float(r_max), b + 1)
    centres = 0.5 * (edges[1:] + edges[:-1])
    n_pairs = n_atoms * (n_atoms - 1) / 2.0
    if volume is None:
        return centres, counts / (n_pairs * np.diff(edges))
    shell = 4.0 / 3.0 * np.pi * (edges[1:] ** 3 - edges[:-1] ** 3)
    return centres, counts * float(volume) / (n_pairs * shell)


def nvt_qoi_program(potential: Potential, settings: QoISettings, *, masses, shift_fn: Callable | None = None,
                    box=None, energy_kwargs: dict | None = None) -> Program:
    """The QoI replica :class:`~jaxiap.md.program.Program` of ``potential`` (see the module docstring).

    params: one sample of :func:`jaxiap.potentials.base.parameters` (a stack from
    ``parameters(stack_parameters(potential, samples))`` for the runner). shared:
    ``dict(start=(N, 3))`` plus ``neighbor`` (an allocated jax-md list) for a cell
    (:func:`jaxiap.md.nvt.nvt_shared`). masses: (N,) or scalar. shift_fn: the cell's jax-md
    shift (None: free cluster). box: the cell ((3,) or (3, 3) rows; None: free cluster) for the
    minimum image of the RDF and the displacements; bind it into the energy with
    ``energy_kwargs=dict(box=box, species=...)``. Result fields per replica: ``pe_per_atom``,
    ``rdf_counts`` (rdf_bins,), ``basin_block`` (int32, -1: no change), ``quench_unconverged``,
    ``neighbor_rebuilds``.
    """
    if not isinstance(potential, Potential):
        raise JaxiapInputError(f"nvt_qoi_program: potential must be a jaxiap Potential, got "
                               f"{type(potential).__name__}")
    if not isinstance(settings, QoISettings):
        raise JaxiapInputError(f"nvt_qoi_program: settings must be QoISettings, got {type(settings).__name__}")
    if settings.basin == "graph" and box is not None:
        raise JaxiapInputError("nvt_qoi_program: basin='graph' quenches free clusters; use 'displacement' in a cell")
    s = settings
    kwargs = dict(energy_kwargs or {})
    box = None if box is None else jnp.asarray(box)
    masses = jnp.asarray(masses)
    _, static = eqx.partition(potential, potential.parameter_spec())

    def energy(positions, params, **neighbor):
        return eqx.combine(params, static).energy(positions, **kwargs, **neighbor)

    init_fn, step_fn = integrators.langevin(energy, dt=s.dt, gamma=s.gamma, kT=s.kT, shift_fn=shift_fn)
    n_obs = s.block_steps // s.record_every
    bin_width = s.rdf_r_max / s.rdf_bins

    def nb(nbrs):
        return {} if nbrs is None else dict(neighbor=nbrs)

    def quench(positions, params):
        run = fire_quench_fn(lambda x: energy(x, params), fmax=s.quench_fmax, max_steps=s.quench_steps)
        xq, fmax, _ = run(positions)
        r, pair_mask = pair_distances(xq)
        return pair_mask & (r < s.bond_cutoff), fmax < s.quench_fmax

    def prepare(params, shared):
        if s.basin != "graph":
            return None
        graph, _ = quench(shared["start"], params)
        return graph

    def histogram(positions, nbrs):
        if nbrs is not None:
            pairs = neighbor_pairs(positions, nbrs, None, box)
            r, valid, weight = pairs.r, pairs.mask, 1.0 if pairs.ordered else 0.5
        else:
            r, valid = pair_distances(positions, None, box)
            weight = 0.5  # the (N, N) matrix holds every pair twice
        use = valid & (r < s.rdf_r_max)
        idx = jnp.clip(jnp.floor(r / bin_width).astype(jnp.int32), 0, s.rdf_bins - 1)
        return jnp.zeros(s.rdf_bins, positions.dtype).at[idx.reshape(-1)].add(
            jnp.where(use, weight, 0.0).reshape(-1))

    def init(params, key, prep, shared):
        start = shared["start"]
        nbrs = shared.get("neighbor")
        if nbrs is not None:
            nbrs = nbrs.update(start)
        zero = jnp.zeros((), start.dtype)
        return dict(
            state=init_fn(key, start, mass=masses, params=params, **nb(nbrs)),
            nbrs=nbrs,
            ref=prep if s.basin == "graph" else start,
            block=jnp.zeros((), jnp.int32),
            pe_sum=zero,
            rdf_sum=jnp.zeros(s.rdf_bins, start.dtype),
            basin_block=jnp.full((), -1, jnp.int32),
            unconverged=jnp.zeros((), jnp.int32),
            rebuilds=jnp.zeros((), jnp.int32),
        )

    def one_step(carry, params):
        state, nbrs, rebuilds = carry
        state = step_fn(state, params=params, **nb(nbrs))
        if nbrs is not None:
            ref = nbrs.reference_position
            nbrs = nbrs.update(state.position)
            rebuilds = rebuilds + jnp.any(nbrs.reference_position != ref).astype(jnp.int32)
        return state, nbrs, rebuilds

    def changed(c, positions, params):
        """(left the start basin, the check decided) after a block."""
        if s.basin == "graph":
            graph, converged = quench(positions, params)
            return converged & jnp.any(graph != c["ref"]), converged
        if s.basin == "displacement":
            u = minimum_image(positions - c["ref"], box)
            u = u - jnp.mean(u, axis=0)
            return jnp.max(jnp.sum(u**2, axis=-1)) > s.displacement**2, jnp.ones((), bool)
        return jnp.zeros((), bool), jnp.ones((), bool)

    def step(c, params, shared):
        n_atoms = c["state"].position.shape[0]

        def observe(carry, _):
            carry = jax.lax.fori_loop(0, s.record_every, lambda _, x: one_step(x, params), carry)
            st, nbrs, _ = carry
            return carry, (energy(st.position, params, **nb(nbrs)) / n_atoms, histogram(st.position, nbrs))

        (state, nbrs, rebuilds), (pes, hists) = jax.lax.scan(
            observe, (c["state"], c["nbrs"], c["rebuilds"]), None, length=n_obs)
        keep = c["block"] >= s.n_equilibrate_blocks
        left, decided = changed(c, state.position, params)
        first = (c["basin_block"] < 0) & left
        return dict(
            state=state,
            nbrs=nbrs,
            ref=c["ref"],
            block=c["block"] + 1,
            pe_sum=c["pe_sum"] + jnp.where(keep, jnp.sum(pes), 0.0),
            rdf_sum=c["rdf_sum"] + jnp.where(keep, jnp.sum(hists, axis=0), 0.0),
            basin_block=jnp.where(first, c["block"], c["basin_block"]),
            unconverged=c["unconverged"] + (~decided).astype(jnp.int32),
            rebuilds=rebuilds,
        )

    def done(c):
        return c["block"] >= s.n_total_blocks

    def failed(c):
        bad = ~(jnp.all(jnp.isfinite(c["state"].position)) & jnp.all(jnp.isfinite(c["state"].momentum))
                & jnp.isfinite(c["pe_sum"]))
        if c["nbrs"] is not None:
            bad = bad | c["nbrs"].did_buffer_overflow
        return bad

    def result(c):
        frames = max(s.n_frames, 1)
        return dict(pe_per_atom=c["pe_sum"] / frames, rdf_counts=c["rdf_sum"] / frames,
                    basin_block=c["basin_block"], quench_unconverged=c["unconverged"],
                    neighbor_rebuilds=c["rebuilds"])

    return Program(name="nvt-qoi", init=init, step=step, done=done, result=result, failed=failed,
                   prepare=prepare if s.basin == "graph" else None, cache_key=None)
