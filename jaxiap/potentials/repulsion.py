"""Core repulsion: the ZBL screened-Coulomb pair energy, switched off smoothly, as a prior mean.

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
"""

from __future__ import annotations

import dataclasses

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
