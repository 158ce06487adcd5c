"""The Potential and Descriptor protocols; a toy Morse potential defined here runs through the library unchanged."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxiap  # noqa: F401  (float64)
from jaxiap.descriptors.base import Descriptor
from jaxiap.descriptors.radial import RadialBasis, RadialDescriptor, structure_features
from jaxiap.errors import JaxiapInputError
from jaxiap.geometry import pair_distances
from jaxiap.potentials.base import (
    Potential, as_coefficient_energy, energy_fn, parameters, stack_parameters, with_parameters,
)
from jaxiap.potentials.linear import LinearBasis, LinearPotential
from jaxiap.potentials.linear import energy_fn as linear_energy_fn
from jaxiap.potentials.pair import LJ, PairPotential
from jaxiap.systems.lj import icosahedron, lj_energy

pytestmark = pytest.mark.filterwarnings("ignore:scatter inputs have incompatible types:FutureWarning")


class Morse(Potential):
    """Toy Morse pair potential V(r) = D [(1 - exp(-a (r - r_e)))^2 - 1], defined outside the library."""

    D: jnp.ndarray = eqx.field(converter=jnp.asarray)
    a: jnp.ndarray = eqx.field(converter=jnp.asarray)
    r_e: jnp.ndarray = eqx.field(converter=jnp.asarray)

    def energy(self, positions, *, mask=None, box=None, neighbor=None, species=None):
        r, pair_mask = pair_distances(positions, mask, box)
        v = self.D * (jnp.expm1(-self.a * (r - self.r_e)) ** 2 - 1.0)
        return 0.5 * jnp.sum(jnp.where(pair_mask, v, 0.0))


# a*r_e = 6: a Morse cluster with about LJ's curvature at the minimum
MORSE = Morse(1.0, 5.34, 1.1225)


def _cluster(rng, n=13, noise=0.02):
    return jnp.asarray(icosahedron()[:n] + noise * rng.normal(size=(n, 3)))


def _bipyramid(r_e):
    """Pentagonal bipyramid (7 atoms) with ring and apex bonds of length r_e."""
    ring = r_e / (2 * np.sin(np.pi / 5))
    h = np.sqrt(r_e**2 - ring**2)
    phi = 2 * np.pi * np.arange(5) / 5
    pts = np.c_[ring * np.cos(phi), ring * np.sin(phi), np.zeros(5)]
    return np.vstack([pts, [0, 0, h], [0, 0, -h]])


# ----------------------------------------------------------------------------- protocol basics


def test_lj_potential_equals_lj_energy(rng):
    x = _cluster(rng)
    lj = LJ()
    assert abs(float(lj.energy(x)) - float(lj_energy(x))) <= 1e-14 * abs(float(lj_energy(x)))
    np.testing.assert_allclose(lj.forces(x), -jax.grad(lj_energy)(x), rtol=0, atol=1e-12)
    lj2 = LJ(epsilon=1.3, sigma=0.9, r_cut=2.5)
    box = jnp.asarray([6.0, 6.5, 7.0])
    y = jnp.asarray(rng.uniform(size=(20, 3))) * box
    ref = lj_energy(y, box=box, r_cut=2.5, sigma=0.9, epsilon=1.3)
    assert abs(float(lj2(y, box=box)) - float(ref)) <= 1e-14 * abs(float(ref))
    # the generic pair path (triclinic cell rows) agrees with lj_energy's orthorhombic path
    np.testing.assert_allclose(float(lj2(y, box=jnp.diag(box))), float(ref), rtol=1e-12)
    e, f = lj.energy_and_forces(x)
    np.testing.assert_allclose(f, lj.forces(x), atol=1e-12)
    # parameters are the array leaves; a vmap over a stack of samples gives per-sample energies
    params = parameters(lj2)
    assert {k for k in ("epsilon", "sigma") if getattr(params, k) is not None} == {"epsilon", "sigma"}
    stacked = stack_parameters(lj2, [LJ(1.0, 1.0, r_cut=2.5), LJ(2.0, 1.1, r_cut=2.5)])
    es = jax.vmap(lambda p: p.energy(y, box=box))(stacked)
    np.testing.assert_allclose(es, [lj_energy(y, box=box, r_cut=2.5), lj_energy(y, box=box, r_cut=2.5, epsilon=2.0,
                                                                                 sigma=1.1)], rtol=1e-13)


def test_linear_potential_protocol(rng):
    x = _cluster(rng)
    basis = LinearBasis(RadialBasis("chebyshev", 6, 0.8, 3.0))
    cs = jnp.asarray(rng.normal(size=(3, 6)))
    pot = LinearPotential(basis, cs[0])
    assert isinstance(pot, Potential) and pot.cutoff == 3.0
    # the FRT ensemble's energy_fn(basis)(c, x) is the same number, bit for bit
    assert float(pot.energy(x)) == float(linear_energy_fn(basis)(cs[0], x))
    np.testing.assert_allclose(Potential.forces(pot, x), pot.forces(x), atol=1e-12)
    # parameters are the coefficients only; samples as an (M, K) array
    leaves = jax.tree_util.tree_leaves(parameters(pot))
    assert len(leaves) == 1 and leaves[0].shape == (6,)
    stacked = stack_parameters(pot, cs)
    es = jax.vmap(lambda p: p.energy(x))(stacked)
    np.testing.assert_allclose(es, LinearPotential(basis, cs).energy(x), rtol=1e-13)
    coef_e = as_coefficient_energy(pot)
    np.testing.assert_allclose(jax.vmap(lambda p: coef_e(p, x))(parameters(stacked)), es, rtol=1e-13)
    p2 = with_parameters(pot, jax.tree_util.tree_map(lambda c: 2 * c, parameters(pot)))
    np.testing.assert_allclose(p2.energy(x), 2 * pot.energy(x), rtol=1e-13)
    # energy_fn binds keyword arguments for jax-md
    box = jnp.asarray([7.0, 7.0, 7.0])
    np.testing.assert_allclose(energy_fn(pot, box=box)(x + 3.0), pot.energy(x + 3.0, box=box), rtol=1e-13)


class _Coordination(Descriptor):
    """Toy descriptor: per-atom smooth coordination numbers at two cutoffs (F = 2)."""

    r_cuts: tuple = eqx.field(static=True, default=(1.3, 1.8))

    @property
    def n_features(self):
        return len(self.r_cuts)

    def atomic(self, positions, *, mask=None, species=None, box=None, neighbor=None):
        r, pm = pair_distances(positions, mask, box)
        cols = [jnp.sum(jnp.where(pm, jax.nn.sigmoid(10.0 * (rc - r)), 0.0), axis=1) for rc in self.r_cuts]
        return jnp.stack(cols, axis=-1)


def test_descriptor_protocol(rng):
    x = _cluster(rng)
    radial = RadialBasis("bessel", 5, 0.8, 3.0)
    d = RadialDescriptor(radial, n_species=2)
    species = jnp.asarray(rng.integers(0, 2, 13))
    a = d.atomic(x, species=species)
    assert a.shape == (13, d.n_features) == (13, 10)
    np.testing.assert_allclose(d.structure(x, species=species), a.sum(0), rtol=1e-13)
    np.testing.assert_allclose(d.structure(x, species=species), structure_features(radial, x, None, None, species, 2),
                               rtol=0, atol=0)
    mask = jnp.arange(13) < 10
    assert float(jnp.abs(d.atomic(x, species=species, mask=mask)[10:]).max()) == 0.0
    with pytest.raises(JaxiapInputError, match="species"):
        d.atomic(x)
    # a linear basis takes any descriptor
    basis = LinearBasis(_Coordination(), species_reference=True)
    assert basis.n_features == 3
    b = basis(x)
    np.testing.assert_allclose(b[:2], _Coordination().atomic(x).sum(0))
    assert float(b[2]) == 13.0
    pot = LinearPotential(basis, jnp.asarray([0.1, -0.2, 0.3]))
    np.testing.assert_allclose(pot.forces(x), Potential.forces(pot, x), atol=1e-12)
    with pytest.raises(JaxiapInputError, match="Descriptor"):
        LinearBasis("chebyshev")
    with pytest.raises(JaxiapInputError, match="n_species"):
        LinearBasis(RadialDescriptor(radial, 2), n_species=3)


def test_stack_parameters_rejects_bad_samples():
    with pytest.raises(JaxiapInputError, match="parameter leaves"):
        stack_parameters(MORSE, jnp.ones((2, 3)))
    with pytest.raises(JaxiapInputError, match="shape"):
        stack_parameters(MORSE, [MORSE, Morse(1.0, 5.0, jnp.ones(2))])
    with pytest.raises(JaxiapInputError, match="disagree"):
        stack_parameters(MORSE, Morse(jnp.ones(2), jnp.ones(2), jnp.ones(3)))
    stacked = stack_parameters(MORSE, [MORSE, MORSE])
    assert parameters(stack_parameters(MORSE, parameters(stacked))).a.shape == (2,)
    with pytest.raises(JaxiapInputError, match="Potential"):
        energy_fn(lambda x: 0.0)


# ----------------------------------------------------------------------------- the toy Morse potential


def test_morse_quench_dimer_bond_length():
    from jaxiap.md.quench import quench

    x0 = jnp.asarray([[0.0, 0.0, 0.0], [1.4, 0.1, -0.05]])
    r, fmax = quench(MORSE, x0, fmax=1e-9, max_steps=20000)
    assert float(fmax) < 1e-9
    assert abs(float(jnp.linalg.norm(r[1] - r[0])) - 1.1225) < 1e-9
    np.testing.assert_allclose(float(MORSE.energy(r)), -1.0, atol=1e-12)


def test_morse_ase_calculator():
    from ase import Atoms

    from jaxiap.calculator import JaxiapCalculator

    x = _bipyramid(1.1) + 0.03 * np.random.default_rng(3).normal(size=(7, 3))
    atoms = Atoms("Ar7", positions=x)
    atoms.calc = JaxiapCalculator(MORSE)
    e, f = MORSE.energy_and_forces(jnp.asarray(x))
    assert abs(atoms.get_potential_energy() - float(e)) < 1e-10
    np.testing.assert_allclose(atoms.get_forces(), f, atol=1e-10)


@pytest.mark.slow  # CI budget (2026-11-30): runs with -m slow; a cheaper default-run test covers the same code path
def test_morse_frt_ensemble():
    from jaxiap.md.ensemble import FRTSettings, run_frt_ensemble
    from jaxiap.md.qoi import CENSORED, EVENT, EVAPORATED
    from jaxiap.md.quench import quench

    start, _ = quench(MORSE, jnp.asarray(_bipyramid(1.1225)), fmax=1e-9, max_steps=20000)
    samples = [MORSE, Morse(1.0, 5.6, 1.1225)]
    stacked = stack_parameters(MORSE, samples)
    settings = FRTSettings(kT=0.2, t_max=2.0, n_q=100, energy_bins=(-20.0, 0.0, 40), quench_max_steps=2000)
    res = run_frt_ensemble(as_coefficient_energy(MORSE), parameters(stacked), np.arange(3), start, settings,
                           chunk_size=6, lanes_per_device=6, progress=False)
    assert res.code.shape == (2, 3)
    assert set(np.unique(res.code)) <= {CENSORED, EVENT, EVAPORATED}
    assert np.all((res.time > 0) & (res.time <= settings.t_censor + 1e-12))
    # each sample's reference energy is its own quenched minimum of the bipyramid
    for m, p in enumerate(samples):
        rq, _ = quench(p, start, fmax=1e-9, max_steps=20000)
        np.testing.assert_allclose(res.e0[m], float(p.energy(rq)), atol=1e-5)
    assert np.all(res.ref_max_force < settings.fmax)


# ----------------------------------------------------------------------------- unique-pair fast path


class MorsePair(PairPotential):
    """The Morse potential above as a PairPotential: it takes the unique-pair path on a free cluster."""

    D: jnp.ndarray = eqx.field(converter=jnp.asarray)
    a: jnp.ndarray = eqx.field(converter=jnp.asarray)
    r_e: jnp.ndarray = eqx.field(converter=jnp.asarray)

    def pair(self, r):
        return self.D * (jnp.expm1(-self.a * (r - self.r_e)) ** 2 - 1.0)


@pytest.mark.slow  # CI budget (2026-11-30): runs with -m slow; a cheaper default-run test covers the same code path
def test_unique_pair_sums_equal_the_dense_path(rng):
    """cluster_pair_sum (unique pairs, custom JVP) against the dense N x N path (taken with a mask).

    For LJ (with and without a shifted cutoff), a Morse PairPotential and a radial linear potential:
    energy to 1e-12, forces to 1e-12, the gradient in the parameters to 1e-11, and for LJ the Hessian to
    1e-9 (second derivatives through the JVP rule, the same code for every pair function), on a
    distorted 13-atom cluster.
    """
    x = _cluster(rng, noise=0.05)
    mask = jnp.ones(13, bool)
    basis = LinearBasis(RadialBasis("chebyshev", 5, 0.8, 3.0))
    c = jnp.asarray(rng.normal(size=5))
    morse = MorsePair(1.0, 5.34, 1.1225)
    cases = {
        "lj": (lambda p, y, m: lj_energy(y, m, sigma=p), jnp.asarray(1.0)),
        "lj cut": (lambda p, y, m: lj_energy(y, m, r_cut=2.0, sigma=p), jnp.asarray(1.0)),
        "morse": (lambda p, y, m: eqx.tree_at(lambda q: q.a, morse, p).energy(y, mask=m), jnp.asarray(5.34)),
        "linear": (lambda p, y, m: LinearPotential(basis, p).energy(y, m), c),
    }
    for name, (energy, p) in cases.items():
        fast, dense = (lambda y, q: energy(q, y, None)), (lambda y, q: energy(q, y, mask))
        np.testing.assert_allclose(fast(x, p), dense(x, p), rtol=1e-12, err_msg=name)
        np.testing.assert_allclose(jax.grad(fast)(x, p), jax.grad(dense)(x, p), atol=1e-12, rtol=1e-12, err_msg=name)
        if name == "lj":  # second derivatives run through the same JVP rule for every pair function
            np.testing.assert_allclose(jax.hessian(fast)(x, p), jax.hessian(dense)(x, p), atol=1e-9, err_msg=name)
        np.testing.assert_allclose(jax.grad(fast, 1)(x, p), jax.grad(dense, 1)(x, p), rtol=1e-11, err_msg=name)
    # the MD layer's energy_fn of a radial basis takes the same path
    np.testing.assert_allclose(linear_energy_fn(basis)(c, x), LinearPotential(basis, c).energy(x, mask), rtol=1e-12)
