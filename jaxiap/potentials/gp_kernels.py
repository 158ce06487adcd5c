"""2- and 3-body squared-exponential kernels on local environments, and their derivative blocks.

The latent functions of the FLARE model (Vandermause et al. 2020, eqs. 2-5)
are a pair energy phi(r) and a triplet energy psi(d), d = (r_ij, r_ik, r_jk),
with Gaussian-process priors

    cov(phi(r), phi(r'))  = exp(-(r - r')^2 / (2 l2^2)) fc2(r) fc2(r')
    cov(psi(d), psi(d'))  = sum over the 6 permutations P of d':
                            exp(-|d - P d'|^2 / (2 l3^2)) fc3(d) fc3(d')

(species must match position by position; fc(r) = (r_cut - r)^2 for
r < r_cut, the quadratic cutoff; fc3(d) is the product over the three
distances). On one environment rho_i the sums S2_i = sum_j phi(r_ij) and
S3_i = sum_{j<k} psi(d_ijk) have the covariances :func:`pair_kernel` and
:func:`triplet_kernel` (unit signal variance). Because psi is symmetric in
its three distances, the total energy and the force on atom i are

    E = sum_i (S2_i / 2 + S3_i / 3),     F_i = -d/d(delta) [S2_i + S3_i](rho_i - delta),

where rho_i - delta moves the central atom by delta. A homogeneous strain
eps maps every neighbour vector v to v (1 + eps) (ASE's row convention), so
the stress is (1 / V) sum_i d/d(eps) (S2_i / 2 + S3_i / 3).

:func:`derivative_blocks` returns, for two environments and each body
order, the covariances of the value and of its derivatives with respect to
the perturbation p = (delta (3), eps (9)) of each environment, by autodiff
(forward over reverse) of the kernel: the energy-conserving, rotationally
covariant force and stress kernels.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxiap.descriptors.environments import Environments

#: The 6 permutations of a triplet's distance vector (r_ij, r_ik, r_jk).
TRIPLET_PERMUTATIONS = ((0, 1, 2), (1, 0, 2), (0, 2, 1), (2, 0, 1), (1, 2, 0), (2, 1, 0))
# the permutation of the atoms (center, j, k) behind each distance permutation above, for species
_ATOM_PERMUTATIONS = ((0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0))


def quadratic_cutoff(r, r_cut):
    """(r_cut - r)^2 inside the cutoff, 0 outside (FLARE's quadratic cutoff)."""
    return jnp.where(r < r_cut, (r_cut - r) ** 2, 0.0)


def _safe_norm(v, mask):
    sq = jnp.sum(v**2, axis=-1)
    safe = jnp.where(mask, sq, 1.0)
    return jnp.where(mask, jnp.sqrt(safe), 0.0)


def perturb(vectors, p):
    """Neighbour vectors (K, 3) after moving the centre by delta = p[:3] and straining by eps = p[3:12].

    p has length 0 (no perturbation), 3 (delta) or 12 (delta, eps row-major).
    """
    if p.shape[0] == 0:
        return vectors
    out = vectors - p[:3]
    if p.shape[0] > 3:
        out = out + out @ p[3:12].reshape(3, 3)
    return out


def pair_terms(vectors, mask, r_cut):
    """Pair distances (K,) and their cutoff weights fc2 (K,) (zero at masked slots)."""
    r = _safe_norm(vectors, mask)
    return r, jnp.where(mask, quadratic_cutoff(r, r_cut), 0.0)


def triplet_terms(vectors, mask, triplets, triplet_mask, r_cut_3):
    """Triplet distance vectors d (T, 3) = (r_ij, r_ik, r_jk) and cutoff weights fc3 (T,)."""
    vj = vectors[triplets[:, 0]]
    vk = vectors[triplets[:, 1]]
    m = triplet_mask
    d = jnp.stack([_safe_norm(vj, m), _safe_norm(vk, m), _safe_norm(vj - vk, m)], axis=-1)
    fc = jnp.prod(quadratic_cutoff(d, r_cut_3), axis=-1)
    return d, jnp.where(m, fc, 0.0)


def pair_kernel(v1, m1, s1, c1, v2, m2, s2, c2, r_cut, l2):
    """cov(S2(rho1), S2(rho2)) at unit signal variance: sum_jk fc fc' exp(-(r_j - r'_k)^2 / 2 l2^2), species matched."""
    r1, f1 = pair_terms(v1, m1, r_cut)
    r2, f2 = pair_terms(v2, m2, r_cut)
    same = ((c1 == c2) & (s1[:, None] == s2[None, :])) | ((c1 == s2[None, :]) & (s1[:, None] == c2))
    k = jnp.exp(-((r1[:, None] - r2[None, :]) ** 2) / (2.0 * l2**2))
    return jnp.sum(f1[:, None] * f2[None, :] * jnp.where(same, k, 0.0))


def triplet_kernel(v1, m1, s1, c1, t1, tm1, v2, m2, s2, c2, t2, tm2, r_cut_3, l3):
    """cov(S3(rho1), S3(rho2)) at unit signal variance, summed over the 6 permutations of the second triplet."""
    d1, f1 = triplet_terms(v1, m1, t1, tm1, r_cut_3)
    d2, f2 = triplet_terms(v2, m2, t2, tm2, r_cut_3)
    sp1 = jnp.stack([jnp.full(t1.shape[0], c1), s1[t1[:, 0]], s1[t1[:, 1]]], axis=-1)  # (T1, 3)
    sp2 = jnp.stack([jnp.full(t2.shape[0], c2), s2[t2[:, 0]], s2[t2[:, 1]]], axis=-1)
    total = 0.0
    for perm_d, perm_a in zip(TRIPLET_PERMUTATIONS, _ATOM_PERMUTATIONS):
        dp = d2[:, perm_d]
        spp = sp2[:, perm_a]
        match = jnp.all(sp1[:, None, :] == spp[None, :, :], axis=-1)
        sq = jnp.sum((d1[:, None, :] - dp[None, :, :]) ** 2, axis=-1)
        total = total + jnp.sum(jnp.where(match, jnp.exp(-sq / (2.0 * l3**2)), 0.0) * f1[:, None] * f2[None, :])
    return total


def _env(envs: Environments, i):
    return (envs.vectors[i], envs.mask[i], envs.species[i], envs.center_species[i],
            envs.triplets[i], envs.triplet_mask[i])


def body_kernels(e1, e2, p1, p2, r_cut, r_cut_3, l2, l3):
    """(k2, k3) between environment tuples e1, e2 (see :func:`_env`) perturbed by p1, p2."""
    v1, m1, s1, c1, t1, tm1 = e1
    v2, m2, s2, c2, t2, tm2 = e2
    w1 = perturb(v1, p1)
    w2 = perturb(v2, p2)
    k2 = pair_kernel(w1, m1, s1, c1, w2, m2, s2, c2, r_cut, l2)
    if r_cut_3 is None or t1.shape[0] == 0:
        return jnp.stack([k2, jnp.zeros_like(k2)])
    k3 = triplet_kernel(w1, m1, s1, c1, t1, tm1, w2, m2, s2, c2, t2, tm2, r_cut_3, l3)
    return jnp.stack([k2, k3])


def derivative_blocks(e1, e2, r_cut, r_cut_3, l2, l3, n_p: int):
    """Blocks B (2, 1 + n_p, 1 + n_p) of one environment pair, per body order (2-body, 3-body).

    B[c, a, b] = d_a d_b k_c with a over (value, p1 components), b over
    (value, p2 components): B[c, 0, 0] = k_c, B[c, 1:, 0] = dk_c/dp1,
    B[c, 0, 1:] = dk_c/dp2, B[c, 1:, 1:] = d^2 k_c / dp1 dp2.
    n_p: 3 (forces) or 12 (forces and stress).
    """
    dtype = e1[0].dtype
    z = jnp.zeros(n_p, dtype)

    def k_of(p1, p2):
        return body_kernels(e1, e2, p1, p2, r_cut, r_cut_3, l2, l3)

    def value_and_d2(p1):
        val, vjp = jax.vjp(lambda p2: k_of(p1, p2), z)
        grads = jax.vmap(lambda ct: vjp(ct)[0])(jnp.eye(2, dtype=dtype))   # (2, n_p) d/dp2
        return val, grads

    val, g2 = value_and_d2(z)
    d1val, d12 = jax.jacfwd(value_and_d2)(z)            # (2, n_p), (2, n_p(p2), n_p(p1))
    top = jnp.concatenate([val[:, None, None], g2[:, None, :]], axis=2)                 # (2, 1, 1 + n_p)
    bottom = jnp.concatenate([d1val[:, :, None], jnp.swapaxes(d12, 1, 2)], axis=2)      # (2, n_p, 1 + n_p)
    return jnp.concatenate([top, bottom], axis=1)


def block_matrix_autodiff(envs1: Environments, envs2: Environments, r_cut, r_cut_3, l2, l3, n_p: int,
                          chunk: int = 8):
    """Reference: :func:`derivative_blocks` for all pairs, (M1, M2, 2, 1 + n_p, 1 + n_p). Slow; for tests."""
    m1 = envs1.vectors.shape[0]
    n_chunks = -(-m1 // chunk)
    pad = n_chunks * chunk - m1
    e1 = _tuple(envs1)
    if pad:
        e1 = tuple(jnp.concatenate([a, jnp.repeat(a[:1], pad, axis=0)], axis=0) for a in e1)
    env2_all = _tuple(envs2)

    def row_chunk(c):
        sl = tuple(jax.lax.dynamic_slice_in_dim(a, c * chunk, chunk, 0) for a in e1)
        return jax.vmap(lambda a: jax.vmap(lambda b: derivative_blocks(a, b, r_cut, r_cut_3, l2, l3, n_p))(env2_all))(sl)

    out = jax.lax.map(row_chunk, jnp.arange(n_chunks))
    out = out.reshape((n_chunks * chunk,) + out.shape[2:])
    return out[:m1]


def _tuple(envs: Environments):
    return (envs.vectors, envs.mask, envs.species, envs.center_species, envs.triplets, envs.triplet_mask)
