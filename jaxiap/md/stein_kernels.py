"""Kernels on configuration features for Stein variational MD (:mod:`jaxiap.md.stein`).

A configuration x is any array (a cluster (n_atoms, 3), a 2-D toy point
(2,)). A *feature map* ``features(x) -> (F,)`` sends it to the space the
kernel sees; None means the identity (x flattened, F = x.size). For clusters
pass an invariant map, e.g. ``lambda x: descriptor.structure(x)`` of a
:class:`jaxiap.descriptors.radial.RadialDescriptor` (invariant to rotations,
translations and permutations of the atoms).

A *feature kernel* is any callable ``k(f_a (F,), f_b (F,)) -> scalar``;
:func:`rbf_kernel` and :func:`linear_kernel` build the two standard ones.
:class:`SteinKernel` bundles a kernel kind, a feature map and a bandwidth
rule; :func:`resolve` turns it into the feature kernel of one step (the
median bandwidth is recomputed from the current particles, without gradient).

Bandwidth convention (Liu & Wang 2016, ``svgd.py``): k = exp(-d^2 / (2 h^2)),
d = ||f - f'||, h^2 = median(D2) / (2 log(N + 1)) where D2 is the FULL N x N
matrix of squared distances (its N zeros on the diagonal included), as
``svgd.py`` takes ``np.median(squareform(pdist(x))**2)``. blackjax's
``vi.svgd`` instead uses exp(-d^2 / l) with l = median(d over i < j)^2 / log N;
``rbf_kernel(length_scale=l)`` gives that kernel for a fixed l (2 h^2 = l).
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Union

import jax
import jax.numpy as jnp

from jaxiap.errors import JaxiapInputError

__all__ = ["SteinKernel", "as_stein_kernel", "flat_features", "linear_kernel", "median_bandwidth",
           "pairwise_sq_dists", "rbf_kernel", "resolve"]


def pairwise_sq_dists(feats):
    """(N, N) squared Euclidean distances of the rows of feats (N, F), exact zeros on the diagonal."""
    diff = feats[:, None, :] - feats[None, :, :]
    return jnp.sum(diff * diff, axis=-1)


def median_bandwidth(feats, *, include_diagonal: bool = True):
    """Median-heuristic bandwidth h (scalar, feature units) of Liu & Wang's RBF kernel.

    feats (N, F). h^2 = median(D2) / (2 log(N + 1)), D2 the (N, N) squared
    distances: the full matrix with its zero diagonal (``include_diagonal``
    True, as ``svgd.py``), or only the pairs i < j (False). The kernel is
    then exp(-d^2 / (2 h^2)): a particle at the median distance weighs
    1/(N + 1), so a particle's own term weighs about as much as all the
    others together (Liu & Wang 2016, sec. 5). A median of zero (coincident
    particles) gives h = 1. No gradient flows through h.
    """
    feats = jax.lax.stop_gradient(jnp.asarray(feats))
    n = feats.shape[0]
    d2 = pairwise_sq_dists(feats)
    if include_diagonal or n < 2:
        med = jnp.median(d2)
    else:
        iu = jnp.triu_indices(n, k=1)
        med = jnp.median(d2[iu])
    h2 = med / (2.0 * jnp.log(n + 1.0))
    return jnp.sqrt(jnp.where(h2 > 0, h2, 1.0))


def rbf_kernel(h=None, *, length_scale=None) -> Callable:
    """``k(f_a, f_b) = exp(-||f_a - f_b||^2 / (2 h^2))``; or exp(-d^2 / length_scale) (blackjax; 2 h^2 = l).

    Give exactly one of h (bandwidth, feature units) or length_scale.
    """
    if (h is None) == (length_scale is None):
        raise JaxiapInputError("rbf_kernel: give exactly one of h or length_scale")
    two_h2 = length_scale if h is None else 2.0 * jnp.asarray(h) ** 2

    def k(fa, fb):
        d = jnp.ravel(fa) - jnp.ravel(fb)
        return jnp.exp(-jnp.dot(d, d) / two_h2)

    return k


def linear_kernel(c: float = 1.0) -> Callable:
    """``k(f_a, f_b) = c + f_a . f_b`` (the kernel whose SVGD fixed points match Gaussian means and covariances)."""

    def k(fa, fb):
        return c + jnp.dot(jnp.ravel(fa), jnp.ravel(fb))

    return k


class SteinKernel(NamedTuple):
    """The kernel of Stein variational MD: kind, feature map and bandwidth rule.

    kind: ``"rbf"`` (:func:`rbf_kernel`), ``"linear"`` (:func:`linear_kernel`
        with constant ``c``) or any feature kernel ``k(f_a, f_b) -> scalar``
        (then ``bandwidth`` is ignored).
    features: ``features(x) -> (F,)`` or None (identity: x flattened).
    bandwidth: ``"median"`` (:func:`median_bandwidth` of the current moving
        and fixed particles' features, recomputed at every step) or a fixed
        float h (feature units). Only used by ``"rbf"``.
    c: constant of the linear kernel.
    """

    kind: Union[str, Callable] = "rbf"
    features: Callable | None = None
    bandwidth: Union[str, float] = "median"
    c: float = 1.0


def as_stein_kernel(kernel) -> SteinKernel:
    """A :class:`SteinKernel` from a SteinKernel, a kind string or a feature kernel callable (identity features)."""
    if isinstance(kernel, SteinKernel):
        k = kernel
    elif isinstance(kernel, str) or callable(kernel):
        k = SteinKernel(kind=kernel)
    else:
        raise JaxiapInputError(f"stein kernel must be a SteinKernel, 'rbf', 'linear' or a callable, got "
                               f"{type(kernel).__name__}")
    if isinstance(k.kind, str) and k.kind not in ("rbf", "linear"):
        raise JaxiapInputError(f"SteinKernel.kind must be 'rbf', 'linear' or a callable, got {k.kind!r}")
    if isinstance(k.bandwidth, str) and k.bandwidth != "median":
        raise JaxiapInputError(f"SteinKernel.bandwidth must be 'median' or a float, got {k.bandwidth!r}")
    return k


def resolve(kernel: SteinKernel, feats) -> Callable:
    """The feature kernel ``k(f_a, f_b)`` of one step, given all particles' features (N, F) for the median rule."""
    if callable(kernel.kind):
        return kernel.kind
    if kernel.kind == "linear":
        return linear_kernel(kernel.c)
    h = median_bandwidth(feats) if isinstance(kernel.bandwidth, str) else kernel.bandwidth
    return rbf_kernel(h)


def flat_features(kernel: SteinKernel, shape: tuple) -> Callable | None:
    """``v (D,) -> (F,)``: the kernel's feature map on a flattened configuration of ``shape``; None for identity."""
    if kernel.features is None:
        return None
    feats = kernel.features
    return lambda v: jnp.ravel(feats(v.reshape(shape)))
