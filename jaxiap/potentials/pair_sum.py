"""Pair sums over the unique pairs of a free cluster, with forces at the cost of about one energy.

``cluster_pair_sum(pair_fn, params, positions) = sum_{i<j} pair_fn(params, r_ij)``
for positions (N, 3) of a free cluster (no cell, every atom real). The pair
vectors come from one small matrix product with the pair-incidence matrix
D (P, N), P = N (N - 1) / 2, row p = e_i - e_j for the p-th pair i < j, so
each pair is computed once and there is no gather or scatter:

    d = D x (P, 3),  r = |d|,  E = sum_p v(r_p).

Its derivative is supplied as a custom JVP: dE = sum_p v'(r_p) d_p . (D dx)_p / r_p
(+ the parameters' tangent), with v' from a forward-mode derivative of the
scalar pair function. Reverse mode transposes that linear map, so
``jax.grad`` gives the forces ``F = -D^T (v'(r) / r * d)`` from the same
pass: about the cost of one energy, instead of the two or three of
reverse-mode autodiff through the N x N distance matrix. Higher derivatives
(force sensitivities, Hessians) differentiate the JVP rule itself.

Used by the LJ energy (:func:`jaxiap.potentials.lj.lj_energy`), by
:class:`jaxiap.potentials.pair.PairPotential` and by linear potentials on a
single-species radial basis (:mod:`jaxiap.potentials.linear`) whenever they
see a free cluster without a mask; every other case takes the dense path.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["incidence_matrix", "cluster_pair_sum"]

_HIGHEST = jax.lax.Precision.HIGHEST  # exact +-1 products also on accelerators (no TF32)


@functools.lru_cache(maxsize=64)
def _incidence_np(n: int) -> np.ndarray:
    i, j = np.triu_indices(n, 1)
    d = np.zeros((i.size, n))
    d[np.arange(i.size), i] = 1.0
    d[np.arange(i.size), j] = -1.0
    return d


def incidence_matrix(n: int, dtype=jnp.float64):
    """Pair-incidence matrix (N (N - 1) / 2, N): row p = e_i - e_j for the p-th pair i < j (row-major)."""
    return jnp.asarray(_incidence_np(int(n)), dtype)


def _pair_vectors(positions):
    d = jnp.matmul(incidence_matrix(positions.shape[0], positions.dtype), positions, precision=_HIGHEST)
    return d, jnp.sqrt(jnp.sum(d * d, axis=-1))


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _pair_sum(pair_fn, params, positions):
    _, r = _pair_vectors(positions)
    return jnp.sum(pair_fn(params, r))


@_pair_sum.defjvp
def _pair_sum_jvp(pair_fn, primals, tangents):
    params, positions = primals
    d_params, d_positions = tangents
    d, r = _pair_vectors(positions)
    dd = jnp.matmul(incidence_matrix(positions.shape[0], positions.dtype), d_positions, precision=_HIGHEST)
    dr = jnp.sum(d * dd, axis=-1) / r
    v, dv = jax.jvp(pair_fn, (params, r), (d_params, dr))
    return jnp.sum(v), jnp.sum(dv)


def cluster_pair_sum(pair_fn: Callable, params, positions):
    """sum over unique pairs i < j of ``pair_fn(params, r_ij)``: scalar, for a free cluster.

    pair_fn(params, r (P,)) -> (P,) elementwise pair energies (any JAX
    function, differentiable in params and r); params: any PyTree (e.g.
    (sigma, epsilon), or (radial basis, coefficients)); positions (N, 3),
    all atoms real, no cell. Differentiable in params and positions (see the
    module docstring for the cost of the gradient).
    """
    return _pair_sum(pair_fn, params, positions)
