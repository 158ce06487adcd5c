"""Design rows of an ACE descriptor by the chain rule: energy row B = sum_i B_i, force rows -dB/dx.

The linear-fit rows of :class:`~jaxiap.descriptors.ace.ACEDescriptor`
without K reverse-mode passes over all N^2 pairs:

    dB/dx = sum_i (dB_i/dA_i) (dA_i/dx)

with the sparse derivatives of the invariants written out (nu = 1:
constants; nu = 2: one factor; nu = 3: products of two factors times the
Gaunt coefficient, :func:`_derivative_terms`) and dA_i/dx from forward-mode
derivatives of R_n(r) Y_lm(r_hat) per neighbour pair, over a neighbour table
built on the host (:func:`neighbor_table`). The rows equal the generic
autodiff rows of :func:`jaxiap.potentials.linear.structure_rows` (to
round-off; tests/test_ace.py), which use them automatically through the
descriptor hook :meth:`ACEDescriptor.design_rows_fn`.

Supported: one species, ``center_resolved=False``, free clusters (box None:
all pairs within r_cut) and orthorhombic cells ((3,) lengths or a diagonal
(3, 3) cell; minimum image, cell wider than 2 r_cut). Anything else raises
here, and :meth:`~ACEDescriptor.design_rows_fn` returns None (the caller
falls back to autodiff). Units: positions and r_cut in the same length unit;
force rows in feature units per length.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from jaxiap.errors import JaxiapInputError

_FAR = 1.0e3  # dummy vector length of empty neighbour slots: beyond any cutoff, finite derivatives


def unsupported_reason(desc) -> str | None:
    """Why ``desc`` has no chain-rule rows (a sentence), or None when it has them."""
    if desc.n_species != 1:
        return f"n_species={desc.n_species} (the chain-rule rows are single-species)"
    if desc.center_resolved:
        return "center_resolved=True (the chain-rule rows are not centre-resolved)"
    return None


def orthorhombic_lengths(box) -> np.ndarray | None:
    """(3,) lengths of a box given as (3,) lengths or a diagonal (3, 3) cell; None for a free cluster.

    Raises JaxiapInputError for a non-orthorhombic (3, 3) cell or another shape.
    """
    if box is None:
        return None
    b = np.asarray(box, float)
    if b.shape == (3,):
        return b
    if b.shape == (3, 3) and np.count_nonzero(b - np.diag(np.diag(b))) == 0:
        return np.diag(b).copy()
    raise JaxiapInputError(f"ACE chain-rule rows: box must be None, (3,) lengths or a diagonal (3, 3) cell, got "
                           f"shape {b.shape}{' (not orthorhombic)' if b.shape == (3, 3) else ''}; use "
                           "jaxiap.potentials.linear.structure_rows(..., fast_rows=False) for triclinic cells")


def _pair_vectors(positions, mask, box, r_cut: float):
    """Displacements r_j - r_i (N, N, 3) (minimum image in an orthorhombic cell) and the neighbour mask (N, N)."""
    pos, mask = np.asarray(positions, float), np.asarray(mask, bool)
    lengths = orthorhombic_lengths(box)
    dr = pos[None, :, :] - pos[:, None, :]
    if lengths is not None:
        if float(lengths.min()) < 2.0 * r_cut:
            raise JaxiapInputError(f"neighbor_table: box {lengths.tolist()} is narrower than 2 r_cut = {2 * r_cut}; "
                                   "use a larger supercell or a shorter cutoff")
        dr -= lengths * np.round(dr / lengths)
    d = np.linalg.norm(dr, axis=-1)
    nb = (d < r_cut) & mask[:, None] & mask[None, :] & ~np.eye(len(pos), dtype=bool)
    return dr, nb


def neighbor_count(positions, mask, box, r_cut: float) -> int:
    """Neighbours within r_cut of the fullest atom of one structure (box as :func:`neighbor_table`)."""
    return int(_pair_vectors(positions, mask, box, r_cut)[1].sum(1).max(initial=0))


def neighbor_table(positions, mask, box, r_cut: float, capacity: int | None = None):
    """Neighbours within r_cut of one structure: (idx (N, M), vec (N, M, 3), valid (N, M), count of the
    fullest row). box None (free cluster: all pairs), (3,) lengths or a diagonal (3, 3) cell (minimum
    image). vec[i, k] = r_j - r_i of neighbour j = idx[i, k]; empty slots hold a far dummy (0, 0, 1000)."""
    dr, nb = _pair_vectors(positions, mask, box, r_cut)
    count = int(nb.sum(1).max(initial=0))
    m = max(count, 1) if capacity is None else int(capacity)
    if count > m:
        raise JaxiapInputError(f"neighbor_table: an atom has {count} neighbours > capacity {m}; raise capacity")
    n = len(nb)
    idx, vec, valid = np.zeros((n, m), np.int32), np.tile([0.0, 0.0, _FAR], (n, m, 1)), np.zeros((n, m), bool)
    for i in range(n):
        js = np.flatnonzero(nb[i])
        idx[i, :len(js)], vec[i, :len(js)], valid[i, :len(js)] = js, dr[i, js], True
    return idx, vec, valid, count


def _derivative_terms(desc):
    """Sparse dB/dA of the invariants as numpy arrays (feature, variable, coefficient, factor1, factor2):
    D[feature, variable] += coefficient * a[factor1] * a[factor2], with a the flat base of one atom
    (channels x (l_max + 1)^2) extended by a trailing 1 (index q) for absent factors."""
    t = desc._tables
    nlm = (max(desc.l_max, default=0) + 1) ** 2
    q = desc.radial.n_basis * desc.n_species * nlm
    rows, cols, coef, g1, g2 = [], [], [], [], []

    def add(f, v, c, a, b):
        for lst, val in zip((rows, cols, coef, g1, g2), (f, v, c, a, b)):
            lst.append(np.asarray(val).reshape(-1))

    f1 = len(t.c1)
    add(np.arange(f1), t.c1 * nlm, np.ones(f1), np.full(f1, q), np.full(f1, q))
    f0 = f1
    if t.n_l2:
        ra, cb = t.pairs2
        npair = len(ra)
        for l in range(t.n_l2):
            f = f0 + l * npair + np.arange(npair)
            for m in range(2 * l + 1):
                va = t.c2[ra] * nlm + l * l + m
                vb = t.c2[cb] * nlm + l * l + m
                add(f, va, np.ones(npair), vb, np.full(npair, q))
                add(f, vb, np.ones(npair), va, np.full(npair, q))
        f0 += t.n_l2 * npair
    if t.n3:
        f, i1, i2, i3, c = t.terms3
        f = f + f0
        add(f, i1, c, i2, i3)
        add(f, i2, c, i1, i3)
        add(f, i3, c, i1, i2)
    return tuple(np.concatenate(x) for x in (rows, cols, coef, g1, g2)), q


def _one_structure_rows(desc, idx, vec, valid):
    """Rows (1 + 3N, F) of one neighbour table (N, M[, 3]) (traced; the tables come from static fields)."""
    l_max = max(desc.l_max, default=0)
    radial = desc.radial
    nb, nlm = radial.n_basis, (l_max + 1) ** 2
    (d_row, d_col, d_coef, d_g1, d_g2), q = _derivative_terms(desc)
    n_feat = desc.n_features
    flat = jnp.asarray(d_row * q + d_col)
    d_coef = jnp.asarray(d_coef)

    def phi(v):  # R_n(r) Y_lm(v / r), flat (n * nlm,)
        r = jnp.sqrt(jnp.sum(v * v))
        return (radial(r)[:, None] * desc.harmonics(v / r)[None, :]).reshape(-1)

    n, m = idx.shape
    vf = vec.reshape(-1, 3)
    ok = valid.reshape(-1)
    val = jnp.where(ok[:, None], jax.vmap(phi)(vf), 0.0)                       # (N M, q)
    grad = jnp.where(ok[:, None, None], jax.vmap(jax.jacfwd(phi))(vf), 0.0)    # (N M, q, 3)
    a = val.reshape(n, m, q).sum(1)                                               # (N, q): the atomic base
    b = desc.invariants(a.reshape(n, 1, nb, nlm))                                 # (N, F)
    a1 = jnp.concatenate([a, jnp.ones((n, 1), a.dtype)], axis=1)
    vals = d_coef * a1[:, d_g1] * a1[:, d_g2]                                    # (N, E)
    d = jax.vmap(lambda v: jnp.zeros(n_feat * q, a.dtype).at[flat].add(v))(vals).reshape(n, n_feat, q)
    g = grad.reshape(n, m, q, 3).transpose(0, 2, 1, 3).reshape(n, q, m * 3)
    t = jnp.einsum("nfq,nqk->nfk", d, g).reshape(n, n_feat, m, 3).transpose(0, 2, 1, 3)  # dB_i/dx_j
    db = jax.ops.segment_sum(t.reshape(n * m, n_feat, 3), idx.reshape(-1), n) - t.sum(1)
    return jnp.concatenate([b.sum(0)[None], -db.transpose(0, 2, 1).reshape(3 * n, n_feat)], axis=0)


@eqx.filter_jit
def _rows_batch(desc, idx, vec, valid):
    # one structure at a time (lax.map): memory O(N F q), not O(S N F q)
    return jax.lax.map(lambda x: _one_structure_rows(desc, *x), (idx, vec, valid))


def ace_rows_function(desc):
    """``rows(idx, vec, valid) -> (S, 1 + 3N, F)`` for stacked neighbour tables (S, N, M[, 3]).

    Row 0 is the structure feature sum B = sum_i B_i, rows 1.. are -dB/dx_{i,a} atom-major, as
    :func:`jaxiap.potentials.linear.structure_rows` (without reference columns). Jitted once per
    descriptor setting and table shape. Raises JaxiapInputError for an unsupported descriptor.
    """
    why = unsupported_reason(desc)
    if why is not None:
        raise JaxiapInputError(f"ace_rows_function: {why}; use jaxiap.potentials.linear.structure_rows, which "
                               "falls back to autodiff")
    return lambda idx, vec, valid: _rows_batch(desc, idx, vec, valid)


def _boxes(structures):
    s = structures.positions.shape[0]
    return [None] * s if structures.box is None else list(np.asarray(structures.box, float))


def ace_structure_rows(desc, structures_list, chunk: int = 4) -> list:
    """Unit-weight design rows (S, 1 + 3N, F) (numpy) of an ACE descriptor for each Structures of
    ``structures_list``; one neighbour capacity and one compilation per distinct padded N.
    ``chunk``: structures per jitted call (the last call is padded to it)."""
    r_cut = float(desc.cutoff)
    fn = ace_rows_function(desc)
    per = []
    for st in structures_list:
        pos, mask = np.asarray(st.positions, float), np.asarray(st.mask, bool)
        per.append((pos, mask, _boxes(st)))
    cap = max((neighbor_count(p[k], m[k], b[k], r_cut) for p, m, b in per for k in range(len(p))), default=0)
    out = []
    for pos, mask, boxes in per:
        out.append(_rows_in_chunks(fn, pos, mask, boxes, np.arange(len(pos)), r_cut, max(cap, 1), chunk))
    return out


def _rows_in_chunks(fn, pos, mask, boxes, index, r_cut, capacity, chunk):
    rows = []
    for lo in range(0, len(index), chunk):
        part = list(index[lo:lo + chunk])
        n_real = len(part)
        part = part + [part[-1]] * (chunk - n_real)  # fixed chunk shape: one compilation
        tabs = [neighbor_table(pos[k], mask[k], boxes[k], r_cut, capacity) for k in part]
        args = [jnp.asarray(np.stack([t[j] for t in tabs])) for j in range(3)]
        rows.append(np.asarray(fn(*args))[:n_real])
    return np.concatenate(rows)


def design_rows_fn(desc, structures):
    """The hook behind :meth:`ACEDescriptor.design_rows_fn`: ``rows(index) -> (len(index), 1 + 3N, F)``
    numpy rows of ``structures[index]`` by the chain rule, or None when the descriptor or the structures
    are not supported (several species, centre-resolved, triclinic cells, traced arrays)."""
    if unsupported_reason(desc) is not None:
        return None
    arrays = (structures.positions, structures.mask, structures.box)
    if any(isinstance(a, jax.core.Tracer) for a in arrays) or isinstance(desc.radial.r_cut, jax.core.Tracer):
        return None
    try:
        boxes = [orthorhombic_lengths(b) for b in _boxes(structures)]
    except JaxiapInputError:
        return None
    r_cut = float(desc.cutoff)
    pos, mask = np.asarray(structures.positions, float), np.asarray(structures.mask, bool)
    cap = max(1, max((neighbor_count(pos[k], mask[k], boxes[k], r_cut) for k in range(len(pos))), default=0))
    fn = ace_rows_function(desc)

    def rows(index):
        index = np.asarray(index, int).reshape(-1)
        return _rows_in_chunks(fn, pos, mask, boxes, index, r_cut, cap, max(len(index), 1))

    return rows
