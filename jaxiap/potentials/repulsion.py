"""Prior means of the Gaussian process: a ZBL core repulsion, or a pair potential fitted to the oracle.

A Gaussian process with a zero prior mean relaxes back to zero energy below
the shortest distance it was trained on, so its mean potential has a hole
there: atoms that get that close fall in and the MD heats up (see
``docs/otf.md``). GAP and ACE fits add a fixed short-range repulsion for this
reason; :class:`CoreRepulsion` is that term, and the GP learns the rest.

Pair energy (Ziegler, Biersack & Littmark, *The Stopping and Range of Ions
in Solids*, 1985):

    V(r) = Z1 Z2 e^2 / (4 pi eps0 r) * phi(r / a) * s(r),
    phi(x) = 0.18175 e^(-3.19980 x) + 0.50986 e^(-0.94229 x)
             + 0.28022 e^(-0.40290 x) + 0.02817 e^(-0.20162 x),
    a = 0.46850 Å / (Z1^0.23 + Z2^0.23),

with the switch s = 1 - 10 t^3 + 15 t^4 - 6 t^5, t = (r - r_inner) /
(r_outer - r_inner) clipped to [0, 1] (s and its first two derivatives are
continuous; V = 0 beyond r_outer). Units: Å, eV.

:class:`PairPrior` is the other prior mean: a linear pair potential
E = sum_{i<j} sum_k c_k g_k(r_ij) + e_atom * N on a
:class:`~jaxiap.descriptors.radial.RadialBasis` (the same g_k, cutoff
included, as ``LinearBasis(RadialDescriptor(basis), species_reference=True)``),
with coefficients fitted to a few oracle labels before the GP starts
(``docs/otf.md``, "A pair potential as the prior mean"). Below r_min the
fitted sum is replaced by its tangent line, so the wall cannot turn over. Both classes are
frozen dataclasses (hashable: static arguments of jitted code) with
``environment_energy`` and ``range`` (Å, the distance beyond which they vanish).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jaxiap.errors import JaxiapInputError

#: e^2 / (4 pi eps0) in eV Å
COULOMB = 14.399645
ZBL_COEFFICIENTS = (0.18175, 0.50986, 0.28022, 0.02817)
ZBL_EXPONENTS = (3.19980, 0.94229, 0.40290, 0.20162)


def zbl_screening(x):
    """The universal screening function phi(x) (dimensionless)."""
    return sum(c * jnp.exp(-e * x) for c, e in zip(ZBL_COEFFICIENTS, ZBL_EXPONENTS))


def smooth_switch(r, r_inner: float, r_outer: float):
    """1 below r_inner, 0 above r_outer, C2 in between (quintic smootherstep)."""
    t = jnp.clip((r - r_inner) / (r_outer - r_inner), 0.0, 1.0)
    return 1.0 - t**3 * (10.0 - 15.0 * t + 6.0 * t**2)


def zbl_pair_energy(r, z1, z2, r_inner: float, r_outer: float):
    """Switched ZBL pair energy (eV) at distances r (Å, > 0) between atomic numbers z1, z2 (broadcast)."""
    z1 = jnp.asarray(z1, r.dtype)
    z2 = jnp.asarray(z2, r.dtype)
    a = 0.46850 / (z1**0.23 + z2**0.23)
    return COULOMB * z1 * z2 / r * zbl_screening(r / a) * smooth_switch(r, r_inner, r_outer)


@dataclasses.dataclass(frozen=True)
class CoreRepulsion:
    """A fixed ZBL wall below ``r_outer`` (Å), zero beyond it (hashable: a static argument of jitted code).

    ``z``: the atomic number of every atom (None: use the structure's species,
    which must then be atomic numbers).
    """

    r_inner: float = 1.0
    r_outer: float = 2.0
    z: int | None = None

    def __post_init__(self):
        if not (np.isfinite(self.r_inner) and np.isfinite(self.r_outer) and 0 <= self.r_inner < self.r_outer):
            raise JaxiapInputError(f"CoreRepulsion: need 0 <= r_inner < r_outer (Å); got r_inner={self.r_inner!r}, "
                                   f"r_outer={self.r_outer!r}")
        if self.z is not None and not (isinstance(self.z, (int, np.integer)) and 1 <= self.z <= 118):
            raise JaxiapInputError(f"CoreRepulsion: z={self.z!r} must be an atomic number (1-118) or None")

    def environment_energy(self, vectors, mask, species, center_species):
        """Total energy (eV) from local environments: 1/2 sum_i sum_j V(|r_ij|) over neighbour slots.

        vectors (N, K, 3) Å, mask (N, K), species (N, K), center_species (N,); every
        pair appears twice (once from each end), images included.
        """
        d2 = jnp.sum(vectors**2, axis=-1)
        r = jnp.sqrt(jnp.where(mask, d2, 1.0))       # padded slots: a harmless r = 1 (masked out below)
        if self.z is None:
            z1, z2 = center_species[:, None], species
        else:
            z1 = z2 = self.z
        v = zbl_pair_energy(r, z1, z2, self.r_inner, self.r_outer)
        return 0.5 * jnp.sum(jnp.where(mask, v, 0.0))

    @property
    def range(self) -> float:
        """Distance (Å) beyond which the term is zero."""
        return float(self.r_outer)


@dataclasses.dataclass(frozen=True)
class PairPrior:
    """A fitted pair potential as the GP's prior mean (module docstring); hashable.

    ``coefficients``: c_k (eV) of the radial functions g_k of ``RadialBasis(family, len(coefficients), r_min,
    r_cut)``; ``atom_energy``: e_atom (eV per atom). Build it with :meth:`from_linear`.
    """

    coefficients: tuple
    r_min: float
    r_cut: float
    family: str = "chebyshev"
    atom_energy: float = 0.0

    def __post_init__(self):
        from jaxiap.descriptors.radial import FAMILIES  # lazy: the descriptor layer only for this prior

        object.__setattr__(self, "coefficients", tuple(float(c) for c in self.coefficients))
        if not self.coefficients or not all(np.isfinite(self.coefficients)) or not np.isfinite(self.atom_energy):
            raise JaxiapInputError(f"PairPrior: coefficients={self.coefficients!r} and atom_energy must be finite "
                                   "(one coefficient per radial function at least)")
        if not (np.isfinite(self.r_min) and np.isfinite(self.r_cut) and 0 < self.r_min < self.r_cut):
            raise JaxiapInputError(f"PairPrior: need 0 < r_min < r_cut (Å); got r_min={self.r_min!r}, "
                                   f"r_cut={self.r_cut!r}")
        if self.family not in FAMILIES:
            raise JaxiapInputError(f"PairPrior: family={self.family!r}; choose one of {FAMILIES}")

    @classmethod
    def from_linear(cls, basis, coefficients) -> "PairPrior":
        """From a fitted ``LinearBasis(RadialDescriptor(RadialBasis(...)), species_reference=True)`` of one
        species and its coefficients (K radial + 1 per-atom)."""
        d = getattr(basis, "descriptor", None)
        rb = getattr(d, "radial", None)
        if rb is None or getattr(d, "n_species", 1) != 1 or not basis.species_reference or basis.n_species != 1:
            raise JaxiapInputError("PairPrior.from_linear: need LinearBasis(RadialDescriptor(RadialBasis(...)), "
                                   "species_reference=True) of one species")
        c = np.asarray(coefficients, float)
        if c.shape != (rb.n_basis + 1,):
            raise JaxiapInputError(f"PairPrior.from_linear: expected {rb.n_basis + 1} coefficients, got {c.shape}")
        return cls(tuple(c[:-1]), float(rb.r_min), float(rb.r_cut), rb.family, float(c[-1]))

    @property
    def range(self) -> float:
        return float(self.r_cut)

    def _fitted(self, r):
        from jaxiap.descriptors.radial import RadialBasis  # lazy: see __post_init__

        basis = RadialBasis(self.family, len(self.coefficients), self.r_min, self.r_cut)
        return basis(r) @ jnp.asarray(self.coefficients, r.dtype)

    def wall(self) -> tuple[float, float]:
        """(V(r_min) eV, V'(r_min) eV/Å): the value and slope the continuation below r_min starts from."""
        r0 = jnp.asarray(float(self.r_min))
        v, dv = jax.jvp(self._fitted, (r0,), (jnp.ones_like(r0),))
        return float(v), float(dv)

    def pair_energy(self, r):
        """V(r) (eV) at distances r (Å, > 0): the fitted sum on [r_min, r_cut), zero beyond r_cut, and below
        r_min its tangent line V(r_min) + V'(r_min) (r - r_min) (C1; a polynomial basis extrapolated below
        its data can turn over into a hole, the line cannot when V'(r_min) < 0, see :meth:`wall`)."""
        r0 = jnp.asarray(self.r_min, r.dtype)
        v0, dv0 = jax.jvp(self._fitted, (r0,), (jnp.ones_like(r0),))
        inside = self._fitted(jnp.maximum(r, r0))
        v = jnp.where(r < r0, v0 + dv0 * (r - r0), inside)
        return jnp.where(r < self.r_cut, v, 0.0)

    def environment_energy(self, vectors, mask, species, center_species):
        """Total energy (eV): 1/2 sum_i sum_j V(|r_ij|) over neighbour slots (N, K) plus e_atom per centre."""
        d2 = jnp.sum(vectors**2, axis=-1)
        r = jnp.sqrt(jnp.where(mask, d2, 1.0))
        v = self.pair_energy(r)
        return 0.5 * jnp.sum(jnp.where(mask, v, 0.0)) + self.atom_energy * center_species.shape[0]


#: the prior-mean classes by name (GaussianProcess.save / load)
PRIOR_MEANS = {"zbl": CoreRepulsion, "pair": PairPrior}


def prior_to_dict(prior) -> dict:
    """JSON-able description of a prior mean (``kind`` + its fields)."""
    kind = next(k for k, c in PRIOR_MEANS.items() if isinstance(prior, c))
    return {"kind": kind, **dataclasses.asdict(prior)}


def prior_from_dict(d: dict):
    """Inverse of :func:`prior_to_dict` (files without ``kind`` hold a CoreRepulsion)."""
    d = dict(d)
    return PRIOR_MEANS[d.pop("kind", "zbl")](**d)
