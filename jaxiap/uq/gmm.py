"""Gaussian-mixture (GMM) uncertainty of per-atom features, differentiable in positions.

The uncertainty of a feature vector h (d,) is its negative log density under a
Gaussian mixture fitted to training features (Tan, Dietschreit,
Gomez-Bombarelli, arXiv 2402.03753; docs/biased-sampling.md):

    u(h) = -log sum_k w_k N(h; mu_k, Sigma_k)

written with the Cholesky factor of each precision, U_k with
U_k U_k^T = Sigma_k^-1 (scikit-learn's ``precisions_cholesky_``, full
covariance), so that

    log N(h; mu_k, Sigma_k) = -d/2 log(2 pi) + sum_j log (U_k)_jj - 1/2 |(h - mu_k) U_k|^2

and the log-sum-exp over components keeps it finite far from the data. Every
step is smooth, so ``jax.grad`` of an uncertainty through a descriptor gives
a bias force.

Standardisation. A :class:`GaussianMixture` may store a per-feature shift
``feature_mean`` and scale ``feature_std``; ``log_density(h)`` evaluates the
mixture at ``(h - feature_mean) / feature_std`` (the density of the
standardised features: no Jacobian term, which would only add a constant).
``from_sklearn`` stores the identity (zeros / ones), so it reproduces
``score_samples``; ``fit_gmm(..., standardize=True)`` fits on standardised
features and stores their mean and std (useful for radial features whose
columns differ by orders of magnitude).

``fit_gmm`` is expectation-maximisation in JAX (float64), initialised like
scikit-learn (k-means, here with k-means++ seeding, then responsibilities
from the hard k-means labels), with ``reg_covar`` added to every covariance
diagonal.
"""

from __future__ import annotations

import functools
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from jaxiap.errors import JaxiapInputError

__all__ = ["GaussianMixture", "fit_gmm", "kmeans", "structure_uncertainty", "atomic_uncertainty",
           "training_features", "gmm_uncertainty_fn"]

_REDUCTIONS = ("sum", "mean", "max")


class GaussianMixture(eqx.Module):
    """A full-covariance Gaussian mixture of K components in d dimensions.

    weights (K,), means (K, d), precisions_cholesky (K, d, d) (upper-triangular
    U_k with U_k U_k^T = Sigma_k^-1, scikit-learn's convention), feature_mean /
    feature_std (d,) the standardisation applied before evaluating (identity by
    default; see the module docstring).
    """

    weights: jnp.ndarray
    means: jnp.ndarray
    precisions_cholesky: jnp.ndarray
    feature_mean: jnp.ndarray
    feature_std: jnp.ndarray

    def __init__(self, weights, means, precisions_cholesky, feature_mean=None, feature_std=None):
        means = jnp.asarray(means, jnp.float64)
        if means.ndim != 2:
            raise JaxiapInputError(f"GaussianMixture: means must be (K, d), got shape {tuple(means.shape)}")
        k, d = means.shape
        weights = jnp.asarray(weights, jnp.float64)
        pc = jnp.asarray(precisions_cholesky, jnp.float64)
        if tuple(weights.shape) != (k,) or tuple(pc.shape) != (k, d, d):
            raise JaxiapInputError(f"GaussianMixture: with means {(k, d)} expected weights ({k},) and "
                                   f"precisions_cholesky {(k, d, d)} (full covariance), got {tuple(weights.shape)} "
                                   f"and {tuple(pc.shape)}")
        self.weights, self.means, self.precisions_cholesky = weights, means, pc
        self.feature_mean = jnp.zeros(d) if feature_mean is None else jnp.asarray(feature_mean, jnp.float64)
        self.feature_std = jnp.ones(d) if feature_std is None else jnp.asarray(feature_std, jnp.float64)

    @property
    def n_components(self) -> int:
        return self.means.shape[0]

    @property
    def n_features(self) -> int:
        return self.means.shape[1]

    @classmethod
    def from_sklearn(cls, est) -> "GaussianMixture":
        """From a fitted ``sklearn.mixture.GaussianMixture(covariance_type="full")`` (duck-typed:
        reads ``weights_``, ``means_``, ``precisions_cholesky_``; scikit-learn is not imported)."""
        pc = np.asarray(est.precisions_cholesky_)
        if pc.ndim != 3:
            raise JaxiapInputError("GaussianMixture.from_sklearn needs covariance_type='full' (precisions_cholesky_ "
                                   f"of shape (K, d, d)), got shape {pc.shape}")
        return cls(np.asarray(est.weights_), np.asarray(est.means_), pc)

    def standardize(self, h):
        """(h - feature_mean) / feature_std, the point at which the mixture is evaluated."""
        return (jnp.asarray(h) - self.feature_mean) / self.feature_std

    def component_log_density(self, h):
        """(..., K): log w_k + log N(z; mu_k, Sigma_k) at z = standardize(h), h (..., d)."""
        z = self.standardize(h)
        d = self.n_features
        diff = z[..., None, :] - self.means  # (..., K, d)
        y = jnp.einsum("...ki,kij->...kj", diff, self.precisions_cholesky)
        log_det = jnp.sum(jnp.log(jnp.diagonal(self.precisions_cholesky, axis1=-2, axis2=-1)), axis=-1)  # (K,)
        return jnp.log(self.weights) - 0.5 * d * math.log(2 * math.pi) + log_det - 0.5 * jnp.sum(y * y, axis=-1)

    def log_density(self, h):
        """(...,): log p(h) for h (..., d) (log-sum-exp over the components; jitted)."""
        return _log_density(self, jnp.asarray(h))

    def uncertainty(self, h):
        """(...,): -log p(h), the GMM uncertainty (negative log-likelihood) of features h (..., d)."""
        return -self.log_density(h)


@eqx.filter_jit
def _log_density(gmm, h):
    return jax.scipy.special.logsumexp(gmm.component_log_density(h), axis=-1)


# ----------------------------------------------------------------------------------------- fitting


def _kmeans_pp(key, x, k):
    """k-means++ seeding: k rows of x (n, d), each new one drawn with probability ~ D^2."""
    n = x.shape[0]
    k0, key = jax.random.split(key)
    first = jax.random.randint(k0, (), 0, n)
    centers = jnp.zeros((k, x.shape[1]), x.dtype).at[0].set(x[first])
    d2 = jnp.sum((x - x[first]) ** 2, axis=1)

    def body(i, carry):
        centers, d2, key = carry
        key, sub = jax.random.split(key)
        logits = jnp.log(jnp.maximum(d2, 1e-300))
        idx = jax.random.categorical(sub, logits)
        c = x[idx]
        centers = centers.at[i].set(c)
        d2 = jnp.minimum(d2, jnp.sum((x - c) ** 2, axis=1))
        return centers, d2, key

    centers, _, _ = jax.lax.fori_loop(1, k, body, (centers, d2, key))
    return centers


def _lloyd(x, centers, n_iter):
    def body(_, c):
        d2 = jnp.sum((x[:, None, :] - c[None]) ** 2, axis=-1)
        onehot = jax.nn.one_hot(jnp.argmin(d2, axis=1), c.shape[0], dtype=x.dtype)
        counts = jnp.sum(onehot, axis=0)
        new = (onehot.T @ x) / jnp.maximum(counts, 1.0)[:, None]
        return jnp.where(counts[:, None] > 0, new, c)  # an empty cluster keeps its centre

    return jax.lax.fori_loop(0, n_iter, body, centers)


def kmeans(key, x, k: int, n_iter: int = 30, n_init: int = 10):
    """k-means centres (k, d) of rows x (n, d): ``n_init`` runs of k-means++ seeding and ``n_iter``
    Lloyd steps (vmapped), keeping the run of least inertia (sum of squared distances)."""
    x = jnp.asarray(x, jnp.float64)

    def one(key):
        c = _lloyd(x, _kmeans_pp(key, x, k), n_iter)
        return c, jnp.sum(jnp.min(jnp.sum((x[:, None, :] - c[None]) ** 2, axis=-1), axis=1))

    centers, inertia = jax.vmap(one)(jax.random.split(key, n_init))
    return centers[jnp.argmin(inertia)]


def _m_step(x, resp, reg_covar):
    """Weights, means, precision Cholesky factors from responsibilities (n, K)."""
    nk = jnp.sum(resp, axis=0) + 10 * jnp.finfo(x.dtype).eps
    means = (resp.T @ x) / nk[:, None]
    diff = x[None] - means[:, None]  # (K, n, d)
    cov = jnp.einsum("kn,kni,knj->kij", resp.T, diff, diff) / nk[:, None, None]
    cov = cov + reg_covar * jnp.eye(x.shape[1])
    chol = jnp.linalg.cholesky(cov)  # lower L, Sigma = L L^T
    eye = jnp.broadcast_to(jnp.eye(x.shape[1]), cov.shape)
    prec_chol = jnp.swapaxes(jax.scipy.linalg.solve_triangular(chol, eye, lower=True), -1, -2)  # L^-T
    return nk / x.shape[0], means, prec_chol


def fit_gmm(key, h, n_components: int = 5, *, n_iter: int = 100, reg_covar: float = 1e-6, tol: float = 1e-6,
            standardize: bool = False, kmeans_iter: int = 30, kmeans_init: int = 10) -> GaussianMixture:
    """Fit a full-covariance Gaussian mixture to rows h (n, d) by EM (float64).

    Initialisation: k-means (the best of ``kmeans_init`` runs of k-means++
    seeding and ``kmeans_iter`` Lloyd steps),
    whose hard labels give the first responsibilities (as scikit-learn's
    ``init_params="kmeans"``). EM stops after ``n_iter`` iterations or when the
    mean log-likelihood changes by less than ``tol`` (scikit-learn's rule).
    ``reg_covar`` is added to each covariance diagonal. ``standardize``: fit on
    (h - mean) / std per column and store them in the result (see the module
    docstring). Runs jitted (the shapes fix one compilation).
    """
    h = jnp.asarray(h, jnp.float64)
    if h.ndim != 2:
        raise JaxiapInputError(f"fit_gmm: h must be (n, d) rows of features, got shape {tuple(h.shape)}")
    n, d = h.shape
    if not (isinstance(n_components, (int, np.integer)) and 1 <= n_components <= n):
        raise JaxiapInputError(f"fit_gmm: n_components={n_components!r} must be an integer in [1, n={n}]")
    hc = np.asarray(h)
    if not np.all(np.isfinite(hc)):
        raise JaxiapInputError("fit_gmm: h contains NaN or inf")
    if standardize:
        mu, sd = hc.mean(axis=0), hc.std(axis=0)
        sd = np.where(sd > 0, sd, 1.0)
    else:
        mu, sd = np.zeros(d), np.ones(d)
    x = (h - mu) / sd
    weights, means, prec_chol = _fit_em(key, x, int(n_components), int(n_iter), float(reg_covar), float(tol),
                                        int(kmeans_iter), int(kmeans_init))
    return GaussianMixture(weights, means, prec_chol, mu, sd)


@functools.partial(jax.jit, static_argnames=("k", "n_iter", "kmeans_iter", "kmeans_init"))
def _fit_em(key, x, k, n_iter, reg_covar, tol, kmeans_iter, kmeans_init):
    centers = kmeans(key, x, k, kmeans_iter, kmeans_init)
    labels = jnp.argmin(jnp.sum((x[:, None, :] - centers[None]) ** 2, axis=-1), axis=1)
    resp = jax.nn.one_hot(labels, k, dtype=x.dtype)
    params = _m_step(x, resp, reg_covar)

    def e_step(params):
        clp = GaussianMixture(*params).component_log_density(x)  # (n, K)
        lp = jax.scipy.special.logsumexp(clp, axis=1)
        return jnp.exp(clp - lp[:, None]), jnp.mean(lp)

    def cond(c):
        i, _, ll, ll_old = c
        return (i < n_iter) & (jnp.abs(ll - ll_old) >= tol)

    def body(c):
        i, params, ll, _ = c
        resp, ll_new = e_step(params)
        return i + 1, _m_step(x, resp, reg_covar), ll_new, ll

    _, params, _, _ = jax.lax.while_loop(cond, body, (0, params, jnp.asarray(jnp.inf), jnp.asarray(-jnp.inf)))
    return params


# ------------------------------------------------------------------------------ structures


def atomic_uncertainty(gmm: GaussianMixture, descriptor, positions, mask=None, **descriptor_kwargs):
    """(N,) per-atom -log p of ``descriptor.atomic(positions, mask=mask)``; 0 for padded atoms."""
    feats = descriptor.atomic(positions, mask=mask, **descriptor_kwargs)
    u = gmm.uncertainty(feats)
    return u if mask is None else jnp.where(mask, u, 0.0)


def structure_uncertainty(gmm: GaussianMixture, descriptor, positions, reduce: str = "sum", mask=None,
                          **descriptor_kwargs):
    """Scalar GMM uncertainty of one structure: per-atom -log p of the descriptor's atomic
    features (N, F), reduced over the real atoms by ``reduce`` ("sum", "mean" or "max").

    The features are standardised by the mixture's stored ``feature_mean`` /
    ``feature_std`` (see :class:`GaussianMixture`). Differentiable in positions
    ("max" almost everywhere). ``descriptor_kwargs`` (species=, box=, neighbor=)
    go to ``descriptor.atomic``.
    """
    if reduce not in _REDUCTIONS:
        raise JaxiapInputError(f"structure_uncertainty: reduce={reduce!r} must be one of {_REDUCTIONS}")
    u = atomic_uncertainty(gmm, descriptor, positions, mask, **descriptor_kwargs)
    m = jnp.ones(u.shape, bool) if mask is None else jnp.asarray(mask, bool)
    if reduce == "sum":
        return jnp.sum(jnp.where(m, u, 0.0))
    if reduce == "mean":
        return jnp.sum(jnp.where(m, u, 0.0)) / jnp.maximum(jnp.sum(m), 1)
    return jnp.max(jnp.where(m, u, -jnp.inf))


def gmm_uncertainty_fn(gmm: GaussianMixture, descriptor, reduce: str = "sum", as_variance: bool = False,
                       **descriptor_kwargs):
    """``fn(positions (N, 3), mask=None) -> scalar``: :func:`structure_uncertainty` as a closure of
    positions alone, the form the samplers take (the CV of
    :func:`jaxiap.active.generate.metad.run_metad`, the ``uncertainty_fn`` of
    :func:`jaxiap.active.generate.biased_md.run_biased_langevin`).

    ``as_variance=True`` returns exp(u) instead of u: a positive stand-in for the
    VARIANCE that :func:`jaxiap.active.generate.attacks.adversarial_attack` takes
    (its log objective then optimises log exp(u) - E / kT = u - E / kT, the
    GMM negative log-likelihood itself). exp overflows for u > ~700: use
    ``reduce="mean"`` (or "max") for structures far from the training data.
    """
    if reduce not in _REDUCTIONS:
        raise JaxiapInputError(f"gmm_uncertainty_fn: reduce={reduce!r} must be one of {_REDUCTIONS}")

    def fn(positions, mask=None):
        u = structure_uncertainty(gmm, descriptor, positions, reduce, mask, **descriptor_kwargs)
        return jnp.exp(u) if as_variance else u

    return fn


def training_features(descriptor, structures) -> jnp.ndarray:
    """(n_real_atoms, F): the descriptor's atomic features of every real atom of a Structures batch,
    the rows to pass to :func:`fit_gmm`."""
    f = np.asarray(_batch_atomic(descriptor, structures.positions, structures.mask, structures.species,
                                 structures.box))
    return jnp.asarray(f[np.asarray(structures.mask)])


@eqx.filter_jit
def _batch_atomic(descriptor, positions, mask, species, box):
    return jax.vmap(lambda x, m, s, b: descriptor.atomic(x, mask=m, species=s, box=b),
                    in_axes=(0, 0, 0, None if box is None else 0))(positions, mask, species, box)
