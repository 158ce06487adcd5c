"""ACE descriptors (jaxiap/descriptors/ace.py): spherical harmonics, couplings, invariance, forces, counts."""

import ast
import itertools
import re
from pathlib import Path
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import sph_harm_y

from jaxiap.descriptors.ace import (ACEDescriptor, ace_basis_count, real_gaunt,
                                    real_spherical_harmonics, sh_index, sphere_quadrature)
from jaxiap.descriptors.radial import RadialBasis, RadialDescriptor
from jaxiap.errors import JaxiapInputError

R_CUT, R_MIN = 1.9, 0.7
DESC = ACEDescriptor((4, 3, 2), (3, 2), R_CUT, R_MIN, n_species=2)  # 8 + 84 + 160 = 252 features


def _random_orthogonal(rng, proper=True):
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if (np.linalg.det(q) > 0) != proper:
        q = -q
    return q


def _scipy_real_sh(v, l_max):
    """Real Y_lm from scipy's complex (Condon-Shortley) ones: sqrt(2) (-1)^m Re / Im Y_l^|m|."""
    theta, phi = np.arccos(np.clip(v[:, 2], -1, 1)), np.arctan2(v[:, 1], v[:, 0])
    cols = []
    for l in range(l_max + 1):
        for m in range(-l, l + 1):
            c = sph_harm_y(l, abs(m), theta, phi)
            cols.append(c.real if m == 0 else np.sqrt(2) * (-1) ** m * (c.real if m > 0 else c.imag))
    return np.stack(cols, -1)


def _combined(descriptor, seed):
    """One jitted program per system: per-atom features, and energy and gradient of a random linear energy."""
    coef = jnp.asarray(np.random.default_rng(seed).normal(size=descriptor.n_features))

    def energy(x, sp, aux):  # E = c . structure(x), the structure features being the sum of the atomic ones
        atomic = descriptor.atomic(x, species=sp, **(dict(mask=aux) if aux.dtype == bool else dict(box=aux)))
        return coef @ atomic.sum(0), atomic

    def run(x, sp, aux):
        (e, atomic), g = jax.value_and_grad(energy, has_aux=True)(x, sp, aux)
        return atomic, e, g

    return jax.jit(run)


@pytest.fixture(scope="module")
def cluster():
    """8 atoms of 2 species within a 1.8-wide cube (all have neighbours inside R_CUT), then 3 padded atoms:
    one on top of real atom 2, two coincident at the origin (r = 0 pairs)."""
    rng = np.random.default_rng(3)
    x = rng.uniform(0.0, 1.8, size=(8, 3))
    x = np.concatenate([x, [x[2], np.zeros(3), np.zeros(3)]])
    return jnp.asarray(x), jnp.asarray([0, 1, 0, 1, 1, 0, 0, 1, 1, 0, 0]), jnp.arange(11) < 8


@pytest.fixture(scope="module")
def fcc_cell():
    """A 2x2x2 FCC supercell (a = 2, 32 atoms, cell 4 wide), rattled by 0.05, 2 species; box as (3, 3) rows."""
    rng = np.random.default_rng(4)
    basis = np.array([[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    x = np.concatenate([(basis + np.array(s)) * 2.0 for s in np.ndindex(2, 2, 2)])
    x = x + rng.normal(scale=0.05, size=x.shape)
    return jnp.asarray(x), jnp.asarray(rng.integers(0, 2, 32)), jnp.asarray(np.eye(3) * 4.0)


@pytest.fixture(scope="module")
def free_fn():
    """(x, species, mask) -> (atomic (N, F), energy, dE/dx) for free clusters."""
    return _combined(DESC, 5)


@pytest.fixture(scope="module")
def cell_fn():
    """(x, species, box) -> (atomic (N, F), energy, dE/dx) in a periodic cell (dense minimum image)."""
    return _combined(DESC, 6)


# ----------------------------------------------------------------------------- spherical harmonics and couplings


def test_real_spherical_harmonics_match_scipy():
    rng = np.random.default_rng(0)
    v = rng.normal(size=(200, 3))
    v = np.concatenate([v, np.eye(3), -np.eye(3), [[1, 1, 0], [1, -1, 1e-9]]])  # poles and equator
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    ours = np.asarray(real_spherical_harmonics(jnp.asarray(v), 6))
    err = np.abs(ours - _scipy_real_sh(v, 6)).max()
    print(f"\nreal SH vs scipy, l <= 6: max error {err:.1e}")
    assert err < 1e-12
    np.testing.assert_allclose(real_spherical_harmonics(v, 6, xp=np), ours, rtol=0, atol=1e-15)
    assert sh_index(1, 1) == 3 and ours[0, sh_index(1, 1)] * v[0, 0] > 0  # Y_11 ~ +x
    nodes, w = sphere_quadrature(12)
    y = real_spherical_harmonics(nodes, 6, xp=np)
    np.testing.assert_allclose(y.T @ (w[:, None] * y), np.eye(49), rtol=0, atol=1e-13)


def test_real_gaunt_exact_and_symmetric():
    g = real_gaunt(3)
    nodes, w = sphere_quadrature(20)  # far above the degree 9 the table needs
    y = real_spherical_harmonics(nodes, 3, xp=np)
    np.testing.assert_allclose(g, np.einsum("qa,qb,qc,q->abc", y, y, y, w), rtol=0, atol=1e-13)
    for perm in itertools.permutations(range(3)):
        np.testing.assert_allclose(g, g.transpose(perm), rtol=0, atol=1e-15)
    np.testing.assert_allclose(np.diagonal(g[:, :, 0]), 1 / np.sqrt(4 * np.pi), rtol=1e-13)
    # parity and the triangle rule: odd l1 + l2 + l3 or l3 > l1 + l2 couple to nothing
    ls = np.repeat(np.arange(4), 2 * np.arange(4) + 1)
    l1, l2, l3 = np.meshgrid(ls, ls, ls, indexing="ij")
    forbidden = ((l1 + l2 + l3) % 2 == 1) | (l3 > l1 + l2) | (l3 < abs(l1 - l2))
    assert np.all(g[forbidden] == 0) and np.count_nonzero(g) > 0


def test_base_matches_numpy_loop(cluster, free_fn):
    """The atomic base against a loop over neighbours with scipy's harmonics; every feature column against
    its label ((z, n, l) per factor) contracted by hand from the base."""
    x, sp, mask = cluster
    base = np.asarray(jax.jit(lambda x: DESC.base(x, species=sp, mask=mask))(x))  # (11, 2, 4, 16)
    radial = DESC.radial
    xn, spn = np.asarray(x), np.asarray(sp)
    for i in (0, 5):
        expect = np.zeros((2, 4, 16))
        for j in range(8):
            if j != i:
                d = xn[j] - xn[i]
                r = np.linalg.norm(d)
                rn = np.asarray(radial(jnp.asarray(r)))
                expect[spn[j]] += rn[:, None] * _scipy_real_sh(d[None] / r, 3)[0][None, :]
        np.testing.assert_allclose(base[i], expect, rtol=1e-12, atol=1e-14)
    assert np.all(base[8:] == 0.0)
    feats, g = np.asarray(free_fn(x, sp, mask)[0]), real_gaunt(3)
    block = lambda z, n, l: base[:, z, n, l * l:(l + 1) ** 2]  # noqa: E731
    for col, lab in enumerate(DESC.labels):
        if len(lab) == 1:
            expect = block(*lab[0])[:, 0]
        elif len(lab) == 2:
            expect = np.sum(block(*lab[0]) * block(*lab[1]), axis=1)
        else:
            gl = g[np.ix_(*[np.arange(f[2] ** 2, (f[2] + 1) ** 2) for f in lab])]
            expect = np.einsum("abc,ia,ib,ic->i", gl, *[block(*f) for f in lab])
        np.testing.assert_allclose(feats[:, col], expect, rtol=1e-12, atol=1e-15, err_msg=str(lab))


def test_pair_block_is_the_radial_descriptor(cluster):
    """nu = 1 features are Y_00 sum_j R_n(r_ij): 2 / sqrt(4 pi) times the radial descriptor (half-pair sums)."""
    x, sp, mask = cluster
    d = ACEDescriptor(4, 0, R_CUT, R_MIN, n_species=2, body_order=2)
    radial = RadialDescriptor(RadialBasis("chebyshev", 4, R_MIN, R_CUT), n_species=2)
    ours, theirs = jax.jit(lambda x: (d.structure(x, species=sp, mask=mask),
                                      radial.structure(x, species=sp, mask=mask)))(x)
    np.testing.assert_allclose(ours, 2 / np.sqrt(4 * np.pi) * theirs, rtol=1e-12)


# ----------------------------------------------------------------------------- invariance


def test_cluster_invariance(cluster, free_fn):
    x, sp, m = cluster
    ref = free_fn(x, sp, m)[0]
    scale = float(jnp.abs(ref).max())
    rng = np.random.default_rng(7)
    errs = {}
    for name, proper in (("rotation", True), ("improper", False)):
        q = jnp.asarray(_random_orthogonal(rng, proper))
        errs[name] = float(jnp.abs(free_fn(x @ q.T + jnp.asarray([0.3, -1.1, 2.0]), sp, m)[0] - ref).max())
    perm = jnp.asarray(rng.permutation(11))  # real and padded atoms mixed
    errs["permutation"] = float(jnp.abs(free_fn(x[perm], sp[perm], m[perm])[0] - ref[perm]).max())
    like = jnp.asarray([2, 1, 6, 3, 4, 0, 5, 7, 8, 9, 10])  # moves like atoms only: species unchanged
    assert np.array_equal(sp[like], sp)
    errs["like atoms"] = float(jnp.abs(free_fn(x[like], sp, m)[0].sum(0) - ref.sum(0)).max())
    print(f"\ncluster: max |B| {scale:.3g}, errors " + ", ".join(f"{k} {v:.1e}" for k, v in errs.items()))
    assert max(errs.values()) < 1e-10 * max(scale, 1.0)
    assert float(jnp.abs(ref[:8, 8:]).min(0).max()) > 1e-3  # the many-body blocks are not trivially zero


def test_periodic_invariance(fcc_cell, cell_fn):
    x, sp, box = fcc_cell
    ref = cell_fn(x, sp, box)[0]
    scale = float(jnp.abs(ref).max())
    rng = np.random.default_rng(8)
    errs = {}
    for name, proper in (("rotation", True), ("improper", False)):
        q = jnp.asarray(_random_orthogonal(rng, proper))  # positions and cell rows rotate together
        errs[name] = float(jnp.abs(cell_fn(x @ q.T, sp, box @ q.T)[0] - ref).max())
    errs["translation"] = float(jnp.abs(cell_fn(x + jnp.asarray([1.3, 2.9, -0.7]), sp, box)[0] - ref).max())
    errs["lattice shift"] = float(jnp.abs(cell_fn(x.at[3].add(box[0] - box[2]), sp, box)[0] - ref).max())
    perm = jnp.asarray(rng.permutation(32))
    errs["permutation"] = float(jnp.abs(cell_fn(x[perm], sp[perm], box)[0] - ref[perm]).max())
    print(f"\nFCC cell: max |B| {scale:.3g}, errors " + ", ".join(f"{k} {v:.1e}" for k, v in errs.items()))
    assert max(errs.values()) < 1e-10 * max(scale, 1.0)


def test_features_independent():
    """No zero or duplicated column: the atomic features of random clusters have full column rank
    (an exact dependence would show as a singular value at rounding level, ~1e-16)."""
    d = ACEDescriptor((2, 2, 2), (2, 2), R_CUT, R_MIN)  # 2 + 9 + 26 features
    rng = np.random.default_rng(9)
    x = jnp.asarray(rng.uniform(0.0, 1.6, size=(12, 6, 3)))
    b = np.asarray(jax.jit(jax.vmap(lambda p: d.atomic(p)))(x)).reshape(-1, d.n_features)
    s = np.linalg.svd(b / np.abs(b).max(0), compute_uv=False)
    print(f"\nsingular values of the scaled feature matrix: {s[0]:.2g} .. {s[-1]:.2g}")
    assert s[-1] > 1e-10 * s[0]


# ----------------------------------------------------------------------------- forces and padding


def _fd_forces(fn, x, args, idx, h=1e-5):
    """Central differences -(E(x + h e) - E(x - h e)) / 2h of the energy (output 1 of ``fn``) at components idx."""
    out = []
    for i, a in idx:
        e = [float(fn(x.at[i, a].add(s * h), *args)[1]) for s in (1, -1)]
        out.append(-(e[0] - e[1]) / (2 * h))
    return np.asarray(out)


def test_forces_match_finite_differences(cluster, fcc_cell, free_fn, cell_fn):
    errs = {}
    cell_idx = [(0, 0), (5, 1), (17, 2), (31, 0), (12, 2)]
    for name, fn, (x, *args), idx in (("cluster", free_fn, cluster, list(np.ndindex(8, 3))),
                                      ("FCC cell", cell_fn, fcc_cell, cell_idx)):
        f = -np.asarray(fn(x, *args)[2])
        fd = _fd_forces(fn, x, args, idx)
        errs[name] = np.abs(f[tuple(np.transpose(idx))] - fd).max() / np.abs(f).max()
        np.testing.assert_allclose(f.sum(0), 0.0, atol=1e-10 * np.abs(f).max())  # translation invariance
    print("\nforces vs central differences (h = 1e-5), relative error: "
          + ", ".join(f"{k} {v:.1e}" for k, v in errs.items()))
    assert max(errs.values()) < 1e-6


def test_padded_atoms_change_nothing(cluster, free_fn):
    x, sp, m = cluster  # 8 real atoms + 3 padded ones at r = 0 from a real atom and from each other
    padded, _, grad = free_fn(x, sp, m)
    unpadded = jax.jit(lambda x: DESC.atomic(x, species=sp[:8]))(x[:8])
    np.testing.assert_allclose(padded[:8], unpadded, rtol=0, atol=1e-14)
    assert float(jnp.abs(padded[8:]).max()) == 0.0
    assert np.all(np.isfinite(np.asarray(grad))) and float(jnp.abs(grad[8:]).max()) == 0.0
    moved = free_fn(x.at[8:].set(jnp.asarray(np.random.default_rng(2).normal(size=(3, 3)))), sp.at[8:].set(1), m)
    np.testing.assert_allclose(moved[2], grad, rtol=0, atol=1e-13)


def _neighbor_list(x, box, r_list, fmt):
    """A jax-md-layout neighbour list built in numpy (jax-md itself takes seconds to import): ``idx`` and
    ``format.name`` are all that :func:`jaxiap.geometry.neighbor_pairs` reads. Padding slots hold N."""
    n = len(x)
    d = x[None, :, :] - x[:, None, :]
    d -= np.round(d @ np.linalg.inv(box)) @ box
    near = (np.linalg.norm(d, axis=-1) < r_list) & ~np.eye(n, dtype=bool)
    if fmt == "Dense":
        k = near.sum(1).max() + 2
        idx = np.full((n, k), n)
        for i in range(n):
            idx[i, :near[i].sum()] = np.flatnonzero(near[i])
    else:
        i, j = np.nonzero(np.triu(near) if fmt == "OrderedSparse" else near)
        idx = np.concatenate([np.stack([i, j]), np.full((2, 3), n)], axis=1)
    return idx


@pytest.mark.parametrize("fmt", ["Dense", "Sparse", "OrderedSparse"])
def test_neighbor_list_equals_dense(fcc_cell, cell_fn, fmt):
    x, sp, box = fcc_cell
    idx = _neighbor_list(np.asarray(x), np.asarray(box), R_CUT + 0.05, fmt)
    as_list = lambda idx: SimpleNamespace(idx=idx, format=SimpleNamespace(name=fmt))  # noqa: E731
    got = jax.jit(lambda x, idx: DESC.atomic(x, species=sp, box=box, neighbor=as_list(idx)))(x, jnp.asarray(idx))
    err = float(jnp.abs(got - cell_fn(x, sp, box)[0]).max())
    print(f"\n{fmt} neighbour list {idx.shape} vs dense: max |d B_i| {err:.1e}")
    assert err < 1e-12


# ----------------------------------------------------------------------------- counts and input errors


def _enumerate(n_species, n_max, l_max, body_order):
    """Brute force: ACE features per body order as sorted multisets of (l, channel) with the coupling rules."""
    n_max = (n_max,) * (body_order - 1) if np.ndim(n_max) == 0 else tuple(n_max)
    l_max = (l_max,) * (body_order - 2) if np.ndim(l_max) == 0 else tuple(l_max)
    chans = lambda nn: [(z, n) for z in range(n_species) for n in range(nn)]  # noqa: E731
    out = {2: {((0, c),) for c in chans(n_max[0])}}
    if body_order >= 3:
        items = [(l, c) for l in range(l_max[0] + 1) for c in chans(n_max[1])]
        out[3] = {t for t in itertools.combinations_with_replacement(items, 2) if t[0][0] == t[1][0]}
    if body_order >= 4:
        items = [(l, c) for l in range(l_max[1] + 1) for c in chans(n_max[2])]
        ok = lambda ls: sum(ls) % 2 == 0 and max(ls) <= sum(ls) - max(ls)  # noqa: E731
        out[4] = {t for t in itertools.combinations_with_replacement(items, 3) if ok([e[0] for e in t])}
    return out


@pytest.mark.parametrize("setting", [
    dict(n_species=2, n_max=(4, 3, 2), l_max=(3, 2), body_order=4),
    dict(n_species=1, n_max=3, l_max=4, body_order=4),
    dict(n_species=3, n_max=(5, 2), l_max=(2,), body_order=3),
    dict(n_species=2, n_max=4, l_max=0, body_order=2),
])
def test_feature_count_formula(setting):
    expect = {b: len(s) for b, s in _enumerate(**setting).items()}
    assert ace_basis_count(**setting) == expect
    d = ACEDescriptor(setting["n_max"], setting["l_max"], n_species=setting["n_species"],
                      body_order=setting["body_order"])
    assert d.n_features == sum(expect.values()) == len(d.labels) == len(set(d.labels))
    as_sets = {len(lab): set() for lab in d.labels}
    for lab in d.labels:  # ((z, n, l), ...) -> sorted ((l, (z, n)), ...)
        as_sets[len(lab)].add(tuple(sorted((f[2], (f[0], f[1])) for f in lab)))
    assert {nu + 1: s for nu, s in as_sets.items()} == _enumerate(**setting)
    c = ace_basis_count(**setting, center_resolved=True)
    assert c == {b: setting["n_species"] * k for b, k in expect.items()}


def test_docs_numbers():
    """docs/ace.md's example counts and its worked count-formula example agree with the code (no JAX evaluation:
    the whole example, run eagerly, takes ~10 s)."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "ace.md").read_text()
    m = re.search(r"ACEDescriptor\(n_max=(\(.*?\)), l_max=(\(.*?\)), .*?n_species=(\d+)", text)
    counts = ace_basis_count(ast.literal_eval(m.group(1)), ast.literal_eval(m.group(2)), int(m.group(3)))
    assert f"# {counts} {sum(counts.values())}" in text
    assert sum(ace_basis_count((4, 3, 2), (3, 2), 2).values()) == 252 and "= 8 + 84 + 160 = 252" in text


def test_center_resolved_splits_by_centre_species(cluster, free_fn):
    x, sp, m = cluster
    split = ACEDescriptor((4, 3, 2), (3, 2), R_CUT, R_MIN, n_species=2, center_resolved=True)
    b = jax.jit(lambda x: split.atomic(x, species=sp, mask=m))(x).reshape(11, 2, -1)
    np.testing.assert_allclose(b.sum(1), free_fn(x, sp, m)[0], rtol=1e-14)
    assert split.n_features == 2 * DESC.n_features and float(jnp.abs(b[np.asarray(sp) == 0, 1]).max()) == 0.0
    assert split.labels[DESC.n_features] == (1,) + DESC.labels[0]


def test_bad_input_names_the_argument():
    cases = [
        (dict(l_max=-1), "l_max=-1 must be an int >= 0"),
        (dict(l_max=(3, 2, 1)), "l_max=.* one int per correlation order"),
        (dict(n_max=0), "n_max=0 must be an int >= 1"),
        (dict(n_max=2.5), "n_max=2.5 must be an int >= 1"),
        (dict(r_min=0.0), "r_min=0.0 must be > 0"),
        (dict(r_cut=0.8, r_min=0.8), "r_cut=0.8 must be larger than r_min=0.8.*raise r_cut or lower r_min"),
        (dict(r_cut=2.0, r_min=3.0), "r_cut=2.0 must be larger than r_min=3.0"),
        (dict(body_order=5), "body_order=5 is not supported; use 2 .* 3 .* or 4"),
        (dict(body_order=1), "body_order=1"),
        (dict(n_species=0), "n_species=0"),
        (dict(radial="legendre"), "family='legendre' is unknown"),
    ]
    for kwargs, match in cases:
        with pytest.raises(JaxiapInputError, match=match):
            ACEDescriptor(**kwargs)
    with pytest.raises(JaxiapInputError, match="body_order"):
        ace_basis_count(4, 2, body_order=6)
    with pytest.raises(JaxiapInputError, match="needs species="):
        DESC.atomic(jnp.zeros((3, 3)))
    with pytest.raises(JaxiapInputError, match="narrower than"):
        DESC.atomic(jnp.zeros((3, 3)), species=jnp.zeros(3, int), box=jnp.ones(3) * 3.0)


# ----------------------------------------------------------------------------- design rows (chain rule)


def _dataset(positions, mask, box, seed, species=None):
    """A Dataset of stacked structures (one species unless ``species`` (S, N)) with random labels."""
    from jaxiap.data import Dataset
    from jaxiap.structures import Structures

    s, n = mask.shape
    rng = np.random.default_rng(seed)
    sp = np.zeros((s, n), np.int32) if species is None else np.asarray(species, np.int32)
    st = Structures(jnp.asarray(positions), jnp.asarray(sp), jnp.asarray(mask),
                    None if box is None else jnp.asarray(box), ("A", "B"))
    return Dataset(st, rng.normal(size=s), rng.normal(size=(s, n, 3)))


@pytest.mark.parametrize("system", ["cell", "cluster"])
def test_design_matrix_fast_rows_equal_autodiff(system, cluster, fcc_cell):
    """design_matrix of a single-species ACE LinearBasis takes the chain-rule rows (descriptors/ace_rows.py);
    they equal the generic K-reverse-pass rows, reference column and padded atoms included, over a padded
    last chunk. Periodic: the rattled 32-atom FCC cell (a (3, 3) diagonal cell, 4 wide, r_cut 1.9) three
    times, the last with atom 5 padded; cluster: the 8 + 3 padded atoms of ``cluster`` (padded atoms on top
    of a real one and at r = 0), and a rattled copy."""
    from jaxiap.potentials.linear import LinearBasis, design_matrix, structure_rows

    rng = np.random.default_rng(11)
    if system == "cell":
        x0, _, cell = (np.asarray(a) for a in fcc_cell)
        pos = np.stack([x0, x0 + rng.normal(scale=0.05, size=x0.shape), x0 + rng.normal(scale=0.05, size=x0.shape)])
        mask = np.ones((3, 32), bool)
        mask[2, 5] = False
        box = np.stack([cell] * 3)
    else:
        x0, _, m0 = (np.asarray(a) for a in cluster)
        pos = np.stack([x0, x0 + rng.normal(scale=0.05, size=x0.shape)])
        mask, box = np.stack([m0, m0]), None
    ds = _dataset(pos, mask, box, 1)
    desc = ACEDescriptor((3, 2, 2), (2, 1), R_CUT, R_MIN)  # 3 + 9 + 10 = 22 features
    basis = LinearBasis(desc, species_reference=True)
    assert desc.design_rows_fn(ds.structures) is not None  # the fast path is taken
    fast = design_matrix(basis, ds, chunk_size=2)
    slow = design_matrix(basis, ds, chunk_size=2, fast_rows=False)
    a, ref = np.asarray(fast.A), np.asarray(slow.A)
    assert a.shape == ref.shape == (len(pos) * (1 + 3 * pos.shape[1]), 23)
    assert np.abs(ref).max() > 1.0 and np.abs(ref[1:1 + 3 * pos.shape[1], :22]).max() > 0.1
    np.testing.assert_allclose(a, ref, rtol=0, atol=1e-10)
    for f, s in zip(fast[1:], slow[1:]):
        np.testing.assert_array_equal(np.asarray(f), np.asarray(s))
    rows = np.asarray(structure_rows(basis, ds.structures))
    np.testing.assert_allclose(rows.reshape(a.shape), ref, rtol=0, atol=1e-10)
    assert rows[-1, 0, 22] == mask[-1].sum()  # the count column: atoms of the structure


def test_design_rows_fall_back_to_autodiff(fcc_cell):
    """No chain-rule rows for 2 species, centre-resolved features or a triclinic cell: design_rows_fn is None
    and design_matrix/structure_rows use autodiff; the direct API raises a clear error."""
    from jaxiap.descriptors.ace_rows import ace_rows_function, neighbor_table
    from jaxiap.potentials.linear import LinearBasis, design_matrix, structure_rows

    x, sp, cell = fcc_cell
    ds = _dataset(np.asarray(x)[None, :8], np.ones((1, 8), bool), np.asarray(cell)[None] * 2.0, 2,
                  np.asarray(sp)[None, :8])
    two = ACEDescriptor((2, 2), 1, R_CUT, R_MIN, n_species=2, body_order=3)
    centre = ACEDescriptor((2, 2), 1, R_CUT, R_MIN, center_resolved=True, body_order=3)
    for desc in (two, centre):
        assert desc.design_rows_fn(ds.structures) is None
        with pytest.raises(JaxiapInputError, match="structure_rows, which falls back"):
            ace_rows_function(desc)
    st = ds.structures
    one = ACEDescriptor((2, 2), 1, R_CUT, R_MIN, body_order=3)
    tri = type(st)(st.positions, st.species, st.mask, st.box.at[:, 1, 0].set(0.5), st.species_names)
    assert one.design_rows_fn(tri) is None
    with pytest.raises(JaxiapInputError, match="not orthorhombic"):
        neighbor_table(np.asarray(x)[:8], np.ones(8, bool), np.asarray(tri.box[0]), R_CUT)
    basis = LinearBasis(two)
    dm = design_matrix(basis, ds)
    rows = np.asarray(structure_rows(basis, ds.structures, fast_rows=False))
    assert dm.A.shape == (25, two.n_features)
    np.testing.assert_allclose(np.asarray(dm.A), rows.reshape(25, -1), rtol=0, atol=1e-12)
    assert np.abs(rows[:, 1:]).max() > 0.1
