"""The Müller–Brown surface: a 2-D test bed for samplers that must find rare basins.

V(x, y) = sum_k A_k exp(a_k (x - x0_k)^2 + b_k (x - x0_k)(y - y0_k) + c_k (y - y0_k)^2)
with the standard parameters of Müller & Brown (Theor. Chim. Acta 53, 75 (1979)).
Stationary points (checked in tests/test_generation.py by Newton iterations):
minima A (-0.558, 1.442) V = -146.70, B (0.623, 0.028) -108.17, C (-0.050, 0.467)
-80.77; saddles (-0.822, 0.624) -40.67 and (0.212, 0.293) -72.25. Arbitrary
energy and length units; unit mass.

A configuration is a position of shape (2,). :func:`rbf_features` is a linear
surrogate's basis (Gaussian bumps on a grid), so that a Bayesian linear
regression gives the posterior that uncertainty-biased samplers need; the
test error of that surrogate is measured on :func:`test_grid` (points below an
energy ceiling).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["muller_brown", "MINIMA", "SADDLES", "nearest_minimum", "rbf_features", "grid_centers", "test_grid",
           "SurfaceBasis"]

_A = (-200.0, -100.0, -170.0, 15.0)
_a = (-1.0, -1.0, -6.5, 0.7)
_b = (0.0, 0.0, 11.0, 0.6)
_c = (-10.0, -10.0, -6.5, 0.7)
_x0 = (1.0, 0.0, -0.5, -1.0)
_y0 = (0.0, 0.5, 1.5, 1.0)

#: (3, 2) minima A, B, C (the deepest first) and their energies
MINIMA = np.array([[-0.558224, 1.441726], [0.623499, 0.028038], [-0.050011, 0.466694]])
MINIMUM_ENERGIES = np.array([-146.699517, -108.166724, -80.767817])
#: (2, 2) saddle points between A and C, and between C and B
SADDLES = np.array([[-0.822002, 0.624313], [0.212487, 0.292988]])


def muller_brown(position, **unused):
    """V(position) for a position (2,) or (1, 2) (x, y); scalar. Extra keywords (e.g. ``mask=``) are ignored."""
    position = jnp.reshape(position, (2,))
    x, y = position[0], position[1]
    v = 0.0
    for A, a, b, c, x0, y0 in zip(_A, _a, _b, _c, _x0, _y0):
        dx, dy = x - x0, y - y0
        v = v + A * jnp.exp(a * dx * dx + b * dx * dy + c * dy * dy)
    return v


def nearest_minimum(positions, radius: float = 0.15):
    """Index (...,) of the minimum within ``radius`` of each position (..., 2), or -1 if none."""
    d = np.linalg.norm(np.asarray(positions)[..., None, :] - MINIMA, axis=-1)
    i = np.argmin(d, axis=-1)
    return np.where(np.min(d, axis=-1) < radius, i, -1)


def grid_centers(n: int = 10, lo=(-1.6, -0.4), hi=(1.1, 2.0)) -> np.ndarray:
    """(n * n, 2) centres of a regular grid over the box [lo, hi] (the surface's low-energy region)."""
    gx, gy = np.linspace(lo[0], hi[0], n), np.linspace(lo[1], hi[1], n)
    return np.stack(np.meshgrid(gx, gy, indexing="ij"), -1).reshape(-1, 2)


def rbf_features(position, centers, width: float):
    """Surrogate basis (K,) = (1, exp(-|x - c_k|^2 / (2 width^2)) for each centre c_k) at a position (2,)."""
    d2 = jnp.sum((position[None, :] - jnp.asarray(centers)) ** 2, axis=-1)
    return jnp.concatenate([jnp.ones((1,), d2.dtype), jnp.exp(-d2 / (2.0 * width**2))])


class SurfaceBasis(eqx.Module):
    """The surrogate's basis as a LinearBasis-like callable: ``basis(position (2,) or (1, 2)) -> (K,)``."""

    centers: jnp.ndarray
    width: float = eqx.field(static=True)

    @property
    def n_features(self) -> int:
        return 1 + self.centers.shape[0]

    def __call__(self, positions, mask=None, species=None, box=None, neighbor=None):
        return rbf_features(jnp.reshape(positions, (2,)), self.centers, self.width)


def test_grid(n: int = 60, ceiling: float = 0.0, lo=(-1.6, -0.4), hi=(1.1, 2.0)) -> np.ndarray:
    """(T, 2) points of an n x n grid over [lo, hi] with V below ``ceiling`` (the surrogate's test set)."""
    pts = grid_centers(n, lo, hi)
    v = np.asarray(jax.vmap(muller_brown)(jnp.asarray(pts)))
    return pts[v < ceiling]
