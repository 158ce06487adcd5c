"""Quantities of interest computed inside the MD loop: basin criteria, evaporation, energy histograms.

Everything here is **pure JAX, jittable and vmappable** (fixed shapes, no
Python control flow on traced values), meant to run inside a jitted, vmapped
``lax.scan`` over an MD ensemble (see docs/science.md sections 5 and 6, "first
rearrangement time", FRT): :func:`bond_graph`, :func:`coordination`,
:func:`n12`, :func:`basin_reference`, :func:`basin_changed`,
:func:`evaporated`, :func:`energy_histogram`. They work in the precision of
their inputs (float32 on a GPU is fine: the criteria only compare distances
and energies against thresholds far from round-off). The survival statistics
of the resulting first-event times live in :mod:`jaxiap.uq.survival`.

Units: LJ reduced units (lengths in sigma, energies in epsilon, times in tau)
for the defaults (``r_b = 1.35``, ``r_evap = 3.0``, ``e_tol = 1e-3``); the
functions themselves never assume units, so pass thresholds in the units of
your positions and energies.

Per-run outcome codes of the FRT program (defined in :mod:`jaxiap.uq.survival`,
which summarises them, and re-exported here): ``CENSORED = 0`` (no event
before t_max), ``EVENT = 1`` (basin changed), ``EVAPORATED = 2`` (an atom left
the cluster first), ``FAILED = 3`` (the replica blew up).
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from jaxiap.errors import JaxiapInputError
from jaxiap.geometry import pair_distances
from jaxiap.uq.survival import CENSORED, EVAPORATED, EVENT, FAILED  # outcome codes of one FRT run

#: Basin-change criteria understood by :func:`basin_changed`.
BASIN_CRITERIA = ("graph", "energy", "n12")

__all__ = [
    "CENSORED",
    "EVENT",
    "EVAPORATED",
    "FAILED",
    "BASIN_CRITERIA",
    "bond_graph",
    "coordination",
    "n12",
    "BasinReference",
    "basin_reference",
    "basin_changed",
    "evaporated",
    "energy_histogram",
    "histogram_edges",
]


# ---------------------------------------------------------------------------
# Basin criteria (pure JAX)
# ---------------------------------------------------------------------------


def bond_graph(positions, r_b: float = 1.35, mask=None):
    """Labelled bond graph of one structure.

    positions: (N, 3) coordinates (free cluster, no periodic box);
    r_b: bond cutoff (same length unit; 1.35 sigma for LJ13, any value in
    1.3-1.6 sigma separates first (1.08-1.14) and second (~1.8) neighbours of
    quenched LJ13); mask: (N,) bool for real atoms, or None (all real).
    Returns G: (N, N) bool with G[i, j] = (i != j) & both real & (r_ij < r_b).
    """
    r, pair_mask = pair_distances(positions, mask)
    return pair_mask & (r < r_b)


def coordination(positions, r_b: float = 1.35, mask=None):
    """Number of neighbours within ``r_b`` of every atom: (N,) int32 (0 for padded atoms)."""
    return jnp.sum(bond_graph(positions, r_b, mask), axis=1, dtype=jnp.int32)


def n12(positions, r_b: float = 1.35, mask=None):
    """Number of atoms with exactly 12 neighbours inside ``r_b``: int32 scalar.

    1 for the LJ13 icosahedron (the centre atom), 0 for its three lowest
    defect minima (docs/science.md section 5.3, criterion (c)).
    """
    return jnp.sum(coordination(positions, r_b, mask) == 12, dtype=jnp.int32)


class BasinReference(NamedTuple):
    """The start basin that later inherent structures are compared with.

    A NamedTuple, hence a PyTree: it passes through ``jit`` and can be
    stacked/vmapped over replicas (one reference per potential sample).

    energy: () quenched energy E0 of the start structure under the potential
        used for the MD (energy thresholds are potential-specific);
    graph: (N, N) bool bond graph G0 of the quenched start structure;
    n12: () int32 number of 12-coordinated atoms of the quenched start.
    """

    energy: jnp.ndarray
    graph: jnp.ndarray
    n12: jnp.ndarray


def basin_reference(positions_quenched, energy, r_b: float = 1.35, mask=None) -> BasinReference:
    """Build the :class:`BasinReference` of a quenched start structure.

    positions_quenched: (N, 3) inherent structure of the start configuration;
    energy: () its energy under the MD potential (E0); r_b: bond cutoff;
    mask: (N,) bool or None. Jittable.
    """
    return BasinReference(
        energy=jnp.asarray(energy),
        graph=bond_graph(positions_quenched, r_b, mask),
        n12=n12(positions_quenched, r_b, mask),
    )


def basin_changed(
    kind: str,
    reference: BasinReference,
    positions_q,
    energy_q,
    r_b: float = 1.35,
    e_tol: float = 1e-3,
    mask=None,
):
    """Has the inherent structure left the reference basin?  () bool.

    kind (static Python string):
      * ``"graph"`` (default criterion, permutational FRT (b)): G_IS != G0,
        i.e. any labelled bond made or broken; also catches rearrangements
        that return to an icosahedron with atoms permuted;
      * ``"energy"`` (structural FRT (a)): |E_IS - E0| > e_tol (e_tol in
        energy units; 1e-3 eps for LJ13, whose lowest defect basins lie
        >= 2.85 eps above the icosahedron);
      * ``"n12"`` (cheap order parameter (c)): n12(IS) != reference n12.
    reference: from :func:`basin_reference` (same r_b and mask);
    positions_q: (N, 3) quenched (inherent-structure) positions;
    energy_q: () their energy. A NaN energy never counts as a change under
    ``"energy"``; blown-up replicas must be flagged separately.
    Jittable and vmappable over (reference, positions_q, energy_q).
    """
    if kind == "graph":
        return jnp.any(bond_graph(positions_q, r_b, mask) != reference.graph)
    if kind == "energy":
        return jnp.abs(jnp.asarray(energy_q) - reference.energy) > e_tol
    if kind == "n12":
        return n12(positions_q, r_b, mask) != reference.n12
    raise JaxiapInputError(
        f"basin_changed: unknown criterion kind={kind!r}; use one of {BASIN_CRITERIA}"
    )


def evaporated(positions, mask=None, r_evap: float = 3.0):
    """Has an atom left the cluster?  () bool.

    True when any real atom's nearest-neighbour distance exceeds ``r_evap``
    (3 sigma for LJ13; docs/science.md section 5.4). positions: (N, 3);
    mask: (N,) bool or None. A structure with fewer than two real atoms is
    never reported as evaporated. Jittable and vmappable.
    """
    r, pair_mask = pair_distances(positions, mask)
    nearest = jnp.min(jnp.where(pair_mask, r, jnp.inf), axis=1)  # (N,), inf for padded atoms
    has_neighbour = jnp.any(pair_mask, axis=1)
    return jnp.any(has_neighbour & (nearest > r_evap))


# ---------------------------------------------------------------------------
# Histograms (pure JAX)
# ---------------------------------------------------------------------------


def histogram_edges(bins: int, range) -> np.ndarray:  # noqa: A002 (numpy's name)
    """Bin edges (bins + 1,) of :func:`energy_histogram`, as ``numpy.histogram`` makes them."""
    lo, hi = float(range[0]), float(range[1])
    return np.linspace(lo, hi, int(bins) + 1)


def energy_histogram(energies, bins: int, range, weights=None):  # noqa: A002
    """Fixed-bin histogram usable inside ``jit``/``vmap``/``lax.scan``.

    energies: any shape (flattened), e.g. (M,) replica energies of one MD
    step; bins: static Python int; range: static (lo, hi) floats, in the
    energies' unit; weights: optional array of the same shape as ``energies``
    (e.g. a 0/1 mask of live replicas).
    Returns counts (bins,): int32 without weights, the weights' dtype with
    them. Bins follow ``numpy.histogram``: [e_k, e_{k+1}) with the last bin
    closed, values outside [lo, hi] and NaNs are dropped. Accumulate over an
    MD run by summing the returned counts in the scan carry.
    """
    bins = int(bins)
    lo, hi = float(range[0]), float(range[1])
    if not (hi > lo) or bins < 1:
        raise JaxiapInputError(
            f"energy_histogram: need bins >= 1 and range (lo, hi) with hi > lo; got bins={bins}, range={range}"
        )
    x = jnp.ravel(jnp.asarray(energies))
    edges = jnp.asarray(histogram_edges(bins, range), dtype=x.dtype)
    idx = jnp.searchsorted(edges, x, side="right") - 1
    idx = jnp.where(x == edges[-1], bins - 1, idx)  # last bin is closed on the right
    valid = (x >= edges[0]) & (x <= edges[-1])  # False for NaN
    idx = jnp.clip(idx, 0, bins - 1)
    if weights is None:
        w = valid.astype(jnp.int32)
    else:
        w = jnp.where(valid, jnp.ravel(jnp.asarray(weights)), 0)
    return jnp.zeros(bins, w.dtype).at[idx].add(w)
