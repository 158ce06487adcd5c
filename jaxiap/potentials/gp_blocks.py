"""Fast derivative blocks of the 2+3-body kernel: squared exponentials summed by matrix products.

Same quantity as :func:`jaxiap.potentials.gp_kernels.block_matrix_autodiff`
(the tests check the two against each other and against finite
differences), computed without nesting autodiff around the pair sums.

Each environment is a set of *elements*: its pairs (distance d = r_ij,
D = 1) or its triplets (d = (r_ij, r_ik, r_jk), D = 3). An element carries
its cutoff weight a(d), the gradient grad_a (D,), and the Jacobian
J = dd/dp (D, Q) of its distances with respect to the perturbation
p = (value slot, delta (3), eps (9)) of its environment (column 0, the value
slot, is zero; J comes from autodiff of the distances). For the
squared exponential g = exp(-|d - d'|^2 / (2 l^2)) the kernel between two
elements is h = a a' g, and the block sum_{t in rho, u in rho'} of its
value/derivative tensor projected on (p, p') is

    sum_tu g_tu [ c_t c_u^T + (a' c_t s_u^T - a s_t c_u^T) / l^2
                  + a a' (J_t^T J_u / l^2 - s_t s_u^T / l^4) ],

with c = a e0 + J^T grad_a, s_t = J_t^T (d_t - d_u), s_u = J_u^T (d_t - d_u).
Expanding d_t - d_u turns every term into sum_tu g_tu x_t y_u^T, i.e.
matrix products with the matrix of g values. The 3-body permutation sum is
done by listing each training triplet under its 6 permutations.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxiap.descriptors.environments import Environments
from jaxiap.potentials.gp_kernels import _ATOM_PERMUTATIONS, TRIPLET_PERMUTATIONS, _safe_norm, perturb, quadratic_cutoff

_SPECIES_BASE = 1024


class Elements(NamedTuple):
    """Kernel elements of M environments, E per environment (padded: a = 0)."""

    d: jnp.ndarray        # (M, E, D) distances
    a: jnp.ndarray        # (M, E) cutoff weight
    grad_a: jnp.ndarray   # (M, E, D)
    jac: jnp.ndarray      # (M, E, D, Q) d(d)/d(value, delta, eps); column 0 is zero
    species: jnp.ndarray  # (M, E) int code (pair or ordered triplet of species)


def _cutoff_and_grad(d, r_cut):
    fc = quadratic_cutoff(d, r_cut)                                  # (..., D)
    dfc = jnp.where(d < r_cut, -2.0 * (r_cut - d), 0.0)
    a = jnp.prod(fc, axis=-1)
    if d.shape[-1] == 1:
        return a, dfc
    others = jnp.stack([fc[..., 1] * fc[..., 2], fc[..., 0] * fc[..., 2], fc[..., 0] * fc[..., 1]], axis=-1)
    return a, dfc * others


def _with_value_slot(jac):
    return jnp.concatenate([jnp.zeros(jac.shape[:-1] + (1,), jac.dtype), jac], axis=-1)


def pair_elements(envs: Environments, r_cut: float, n_p: int) -> Elements:
    """The pairs of each environment as kernel elements (D = 1, Q = 1 + n_p)."""
    mask = envs.mask & (jnp.sum(envs.vectors**2, -1) < r_cut**2)

    def dist(v, m, p):
        return _safe_norm(perturb(v[None], p), m[None])[0]

    z = jnp.zeros(n_p, envs.vectors.dtype)
    flat_v = envs.vectors.reshape(-1, 3)
    flat_m = mask.reshape(-1)
    r = _safe_norm(flat_v, flat_m)
    if n_p:
        jac = jax.vmap(jax.grad(dist, argnums=2), in_axes=(0, 0, None))(flat_v, flat_m, z)   # (ME, n_p)
    else:
        jac = jnp.zeros((flat_v.shape[0], 0), flat_v.dtype)
    jac = jnp.where(flat_m[:, None], jac, 0.0)
    m_, e_ = mask.shape
    d = r.reshape(m_, e_, 1)
    a, ga = _cutoff_and_grad(d, r_cut)
    a = jnp.where(mask, a, 0.0)
    ga = jnp.where(mask[..., None], ga, 0.0)
    lo = jnp.minimum(envs.center_species[:, None], envs.species)
    hi = jnp.maximum(envs.center_species[:, None], envs.species)
    return Elements(d, a, ga, _with_value_slot(jac.reshape(m_, e_, 1, n_p)), lo * _SPECIES_BASE + hi)


def triplet_elements(envs: Environments, r_cut_3: float, n_p: int, permute: bool = False) -> Elements:
    """The triplets of each environment as kernel elements (D = 3); ``permute``: list each under its 6 permutations."""
    def dists(vj, vk, m, p):
        wj = perturb(vj[None], p)[0]
        wk = perturb(vk[None], p)[0]
        mm = m[None]
        return jnp.stack([_safe_norm(wj[None], mm)[0], _safe_norm(wk[None], mm)[0], _safe_norm((wj - wk)[None], mm)[0]])

    vj = jnp.take_along_axis(envs.vectors, envs.triplets[..., 0:1], axis=1)   # (M, T, 3)
    vk = jnp.take_along_axis(envs.vectors, envs.triplets[..., 1:2], axis=1)
    m = envs.triplet_mask
    m_, t_ = m.shape
    z = jnp.zeros(n_p, envs.vectors.dtype)
    fv = (vj.reshape(-1, 3), vk.reshape(-1, 3), m.reshape(-1))
    d = jax.vmap(dists, in_axes=(0, 0, 0, None))(*fv, z).reshape(m_, t_, 3)
    if n_p:
        jac = jax.vmap(jax.jacfwd(dists, argnums=3), in_axes=(0, 0, 0, None))(*fv, z).reshape(m_, t_, 3, n_p)
    else:
        jac = jnp.zeros((m_, t_, 3, 0), d.dtype)
    jac = jnp.where(m[..., None, None], jac, 0.0)
    a, ga = _cutoff_and_grad(d, r_cut_3)
    a = jnp.where(m, a, 0.0)
    ga = jnp.where(m[..., None], ga, 0.0)
    sj = jnp.take_along_axis(envs.species, envs.triplets[..., 0], axis=1)
    sk = jnp.take_along_axis(envs.species, envs.triplets[..., 1], axis=1)
    sp = jnp.stack([jnp.broadcast_to(envs.center_species[:, None], sj.shape), sj, sk], axis=-1)   # (M, T, 3)
    jac = _with_value_slot(jac)
    if not permute:
        return Elements(d, a, ga, jac, _triplet_code(sp))
    ds, gas, jacs, codes = [], [], [], []
    for perm_d, perm_a in zip(TRIPLET_PERMUTATIONS, _ATOM_PERMUTATIONS):
        pd = jnp.asarray(perm_d)
        ds.append(d[..., pd])
        gas.append(ga[..., pd])
        jacs.append(jac[..., pd, :])
        codes.append(_triplet_code(sp[..., jnp.asarray(perm_a)]))
    cat = lambda xs: jnp.concatenate(xs, axis=1)  # noqa: E731
    return Elements(cat(ds), jnp.tile(a, (1, 6)), cat(gas), cat(jacs), cat(codes))


def _triplet_code(sp):
    return (sp[..., 0] * _SPECIES_BASE + sp[..., 1]) * _SPECIES_BASE + sp[..., 2]


def _c_sigma(el: Elements):
    """c = a e0 + J^T grad_a and sigma = J^T d (M, E, Q), shared by both sides of the expansion."""
    a = el.a[..., None]
    c = a * jax.nn.one_hot(0, el.jac.shape[-1], dtype=el.d.dtype) + jnp.einsum("meD,meDq->meq", el.grad_a, el.jac)
    return c, jnp.einsum("meD,meDq->meq", el.d, el.jac)


def _query_features(el: Elements, inv):
    """x_t features (M, E, F, Q) of the expansion (module docstring)."""
    a = el.a[..., None]                                           # (M, E, 1)
    c, sigma = _c_sigma(el)
    big_d = el.d.shape[-1]
    feats = [c, a * sigma]
    feats += [a * el.jac[:, :, m] for m in range(big_d)]                              # C_m
    feats += [el.d[..., n:n + 1] * (c - inv * a * sigma) for n in range(big_d)]      # D_n
    feats += [a * el.d[..., n:n + 1] * el.jac[:, :, m] for m in range(big_d) for n in range(big_d)]  # F_mn
    return jnp.stack(feats, axis=2)


def _train_features(el: Elements, inv):
    """y_u features (M, E, F, Q), paired with :func:`_query_features`."""
    inv2 = inv * inv
    a = el.a[..., None]
    c, sigma = _c_sigma(el)
    big_d = el.d.shape[-1]
    feats = [c - inv * a * sigma, -inv * c + inv2 * a * sigma]
    feats += [inv * (el.d[..., m:m + 1] * c + a * el.jac[:, :, m]) - inv2 * a * el.d[..., m:m + 1] * sigma
              for m in range(big_d)]
    feats += [inv * a * el.jac[:, :, n] for n in range(big_d)]
    feats += [inv2 * a * el.d[..., m:m + 1] * el.jac[:, :, n] for m in range(big_d) for n in range(big_d)]
    return jnp.stack(feats, axis=2)


def se_blocks(query: Elements, train: Elements, length_scale, max_entries: int = 20_000_000) -> jnp.ndarray:
    """Blocks (N, M, Q, Q) of the element-summed squared exponential between N query and M training environments.

    ``train`` must carry the permutations (``permute=True``) for triplets.
    B[i, j, p, q] = d_p d_q sum_{t in i, u in j} a_t a_u exp(-|d_t - d_u|^2 / 2 l^2), species matched.
    Query environments are processed in chunks so that the matrix of g
    values stays below ``max_entries`` entries.
    """
    inv = 1.0 / length_scale**2
    x = _query_features(query, inv)                   # (N, T, F, Q)
    y = _train_features(train, inv)                   # (M, U, F, Q)
    n, t = query.a.shape
    m, u = train.a.shape
    y_flat = y.reshape(m, u, -1)
    d_train = train.d.reshape(m * u, -1)
    sq_train = jnp.sum(d_train**2, -1)

    def chunk_blocks(qd, qs, xq):
        nc = qd.shape[0]
        dq = qd.reshape(nc * t, -1)
        sq = jnp.sum(dq**2, -1)[:, None] + sq_train[None, :] - 2.0 * dq @ d_train.T
        g = jnp.exp(-0.5 * inv * jnp.maximum(sq, 0.0))
        g = g * (qs.reshape(-1)[:, None] == train.species.reshape(-1)[None, :])
        g = g.reshape(nc * t, m, u).transpose(1, 0, 2)                 # (M, nc T, U)
        z = jnp.matmul(g, y_flat).reshape(m, nc, t, y.shape[2], y.shape[3])
        return jnp.einsum("ntfp,mntfq->nmpq", xq, z)

    per_query = max(1, t * m * u)
    chunk = int(max(1, min(n, max_entries // per_query)))
    if chunk >= n:
        return chunk_blocks(query.d, query.species, x)
    n_chunks = -(-n // chunk)
    pad = n_chunks * chunk - n

    def padded(a):
        a = jnp.concatenate([a, jnp.zeros((pad,) + a.shape[1:], a.dtype)], axis=0) if pad else a
        return a.reshape((n_chunks, chunk) + a.shape[1:])

    out = jax.lax.map(lambda c: chunk_blocks(*c), (padded(query.d), padded(query.species), padded(x)))
    return out.reshape((n_chunks * chunk,) + out.shape[2:])[:n]
