"""The Posterior protocol shared by every solver.

A posterior over coefficients c (K,) offers

- ``mean``: (K,) posterior mean (or point estimate);
- ``sample(key, n)``: (n, K) coefficient draws;
- ``predict(rows, row_weight=None)``: a ``Prediction`` for design rows (R, K):
  the push-forward mean and std of the model output a . c, and the
  posterior-predictive std that adds the data noise (noise_var / row_weight).

MD ensembles consume ``posterior.sample(key, M)``; active learning and plots
consume ``predict``. Posteriors are equinox Modules (PyTrees) and save to /
load from ``.npz`` (never pickle).
"""

from __future__ import annotations

from typing import NamedTuple, Protocol, runtime_checkable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np


class Prediction(NamedTuple):
    """mean (R,), std (R,) push-forward, std_predictive (R,) with data noise."""

    mean: jnp.ndarray
    std: jnp.ndarray
    std_predictive: jnp.ndarray


@runtime_checkable
class Posterior(Protocol):
    mean: jnp.ndarray

    def sample(self, key, n: int) -> jnp.ndarray: ...

    def predict(self, rows, row_weight=None) -> Prediction: ...


def _noise_std(noise_var, row_weight, n_rows, dtype):
    w = jnp.ones(n_rows, dtype) if row_weight is None else jnp.asarray(row_weight, dtype)
    return jnp.sqrt(noise_var / jnp.where(w > 0, w, jnp.inf))


class GaussianPosterior(eqx.Module):
    """c ~ N(mean, F F^T), with data noise variance ``noise_var`` per unit row weight.

    ``cov_factor`` F (K, K) is any square root of the covariance (Cholesky or
    V S^-1 from an SVD), so sampling is mean + F z.
    """

    mean: jnp.ndarray
    cov_factor: jnp.ndarray
    noise_var: jnp.ndarray
    kind: str = eqx.field(static=True, default="gaussian")

    @property
    def cov(self) -> jnp.ndarray:
        return self.cov_factor @ self.cov_factor.T

    @property
    def std(self) -> jnp.ndarray:
        return jnp.sqrt(jnp.sum(self.cov_factor**2, axis=1))

    def sample(self, key, n: int) -> jnp.ndarray:
        z = jax.random.normal(key, (n, self.cov_factor.shape[1]), self.mean.dtype)
        return self.mean + z @ self.cov_factor.T

    def predict(self, rows, row_weight=None) -> Prediction:
        rows = jnp.atleast_2d(rows)
        mean = rows @ self.mean
        var = jnp.sum((rows @ self.cov_factor) ** 2, axis=1)
        noise = _noise_std(self.noise_var, row_weight, rows.shape[0], mean.dtype) ** 2
        return Prediction(mean, jnp.sqrt(var), jnp.sqrt(var + noise))

    def save(self, path) -> None:
        np.savez(path, kind=self.kind, mean=np.asarray(self.mean),
                 cov_factor=np.asarray(self.cov_factor), noise_var=np.asarray(self.noise_var))


def load_posterior(path):
    """Load a posterior written by ``.save`` (npz, no pickle)."""
    with np.load(path, allow_pickle=False) as z:
        kind = str(z["kind"])
        if kind in ("gaussian", "lstsq", "blr"):
            return GaussianPosterior(jnp.asarray(z["mean"]), jnp.asarray(z["cov_factor"]),
                                     jnp.asarray(z["noise_var"]), kind)
    raise ValueError(f"{path}: unknown posterior kind {kind!r}")
