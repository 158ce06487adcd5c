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

Kinds: ``GaussianPosterior`` (lstsq, BLR), ``StudentTPosterior`` (NIG,
unknown noise), ``SamplePosterior`` (committees, MCMC draws) and
``ModelErrorPosterior`` (jaxiap/inference/model_error.py). Every file
stores a ``kind`` string and ``load_posterior`` dispatches on it.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol, runtime_checkable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from jaxiap import runfolder
from jaxiap.errors import JaxiapInputError


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
        runfolder.savez(path, kind=self.kind, family="gaussian", mean=np.asarray(self.mean),
                 cov_factor=np.asarray(self.cov_factor), noise_var=np.asarray(self.noise_var))

    @classmethod
    def load(cls, z) -> "GaussianPosterior":
        return cls(jnp.asarray(z["mean"]), jnp.asarray(z["cov_factor"]),
                   jnp.asarray(z["noise_var"]), str(z["kind"]))


def _t_variance_factor(df):
    """df / (df - 2): variance of a unit-scale Student-t; inf for df <= 2."""
    return jnp.where(df > 2, df / jnp.where(df > 2, df - 2, 1.0), jnp.inf)


class StudentTPosterior(eqx.Module):
    """c ~ multivariate Student-t(df, mean, Sigma) with scale matrix Sigma = F F^T.

    From the normal-inverse-gamma posterior (docs/science.md sections 9.4-9.5):
    df = 2 a_n, Sigma = (b_n / a_n) L_n^-1, ``noise_scale2`` = b_n / a_n, and a
    new datum with row a and weight w has Student-t(df) predictive with
    scale^2 = a^T Sigma a + noise_scale2 / w (push-forward: without the noise
    term). ``predict`` reports *standard deviations*, std = scale sqrt(df/(df-2))
    (inf for df <= 2); ``predict_scale`` gives the t scales themselves, e.g. for
    quantiles loc + scale * t_df.ppf(q).

    Sampling: c = mean + F z / sqrt(u / df), z ~ N(0, I), u ~ chi2(df).
    """

    mean: jnp.ndarray
    scale_factor: jnp.ndarray
    df: jnp.ndarray
    noise_scale2: jnp.ndarray
    kind: str = eqx.field(static=True, default="student_t")

    @property
    def an(self) -> jnp.ndarray:
        """a_n = df / 2 of the inverse-gamma noise posterior IG(a_n, b_n)."""
        return self.df / 2

    @property
    def bn(self) -> jnp.ndarray:
        """b_n = noise_scale2 * a_n."""
        return self.noise_scale2 * self.df / 2

    @property
    def noise_var(self) -> jnp.ndarray:
        """Posterior mean of the noise variance, b_n / (a_n - 1) (inf if a_n <= 1)."""
        return jnp.where(self.an > 1, self.bn / jnp.where(self.an > 1, self.an - 1, 1.0), jnp.inf)

    @property
    def scale_matrix(self) -> jnp.ndarray:
        return self.scale_factor @ self.scale_factor.T

    @property
    def cov(self) -> jnp.ndarray:
        """Covariance Sigma df/(df-2) (inf for df <= 2)."""
        return self.scale_matrix * _t_variance_factor(self.df)

    @property
    def std(self) -> jnp.ndarray:
        return jnp.sqrt(jnp.sum(self.scale_factor**2, axis=1) * _t_variance_factor(self.df))

    def sample(self, key, n: int) -> jnp.ndarray:
        """(n, K) draws: Gaussian draws divided by sqrt(chi2_df / df)."""
        kz, ku = jax.random.split(key)
        z = jax.random.normal(kz, (n, self.scale_factor.shape[1]), self.mean.dtype)
        u = 2.0 * jax.random.gamma(ku, self.df / 2, (n,), self.mean.dtype)  # chi2(df)
        return self.mean + (z @ self.scale_factor.T) / jnp.sqrt(u / self.df)[:, None]

    def predict_scale(self, rows, row_weight=None) -> Prediction:
        """Like ``predict`` but with Student-t scales (not stds) in the std fields."""
        rows = jnp.atleast_2d(rows)
        mean = rows @ self.mean
        s2 = jnp.sum((rows @ self.scale_factor) ** 2, axis=1)
        noise = _noise_std(self.noise_scale2, row_weight, rows.shape[0], mean.dtype) ** 2
        return Prediction(mean, jnp.sqrt(s2), jnp.sqrt(s2 + noise))

    def predict(self, rows, row_weight=None) -> Prediction:
        """Push-forward and predictive std = t-scale * sqrt(df/(df-2)) (inf for df <= 2)."""
        mean, s, sp = self.predict_scale(rows, row_weight)
        f = jnp.sqrt(_t_variance_factor(self.df))
        return Prediction(mean, s * f, sp * f)

    def save(self, path) -> None:
        runfolder.savez(path, kind=self.kind, family="student_t", mean=np.asarray(self.mean),
                 scale_factor=np.asarray(self.scale_factor), df=np.asarray(self.df),
                 noise_scale2=np.asarray(self.noise_scale2))

    @classmethod
    def load(cls, z) -> "StudentTPosterior":
        return cls(jnp.asarray(z["mean"]), jnp.asarray(z["scale_factor"]), jnp.asarray(z["df"]),
                   jnp.asarray(z["noise_scale2"]), str(z["kind"]))


class SamplePosterior(eqx.Module):
    """An empirical posterior: equally weighted coefficient draws ``samples`` (S, K).

    Used for committees (bootstrap / subsampling) and MCMC output. ``mean`` is
    the sample mean; ``predict`` uses the sample moments of rows @ samples.T
    (std with ddof=1 when S > 1) and adds ``noise_var / row_weight`` for the
    predictive std.
    """

    samples: jnp.ndarray
    noise_var: jnp.ndarray
    kind: str = eqx.field(static=True, default="samples")

    def __init__(self, samples, noise_var=0.0, kind: str = "samples"):
        self.samples = jnp.atleast_2d(jnp.asarray(samples))
        self.noise_var = jnp.asarray(noise_var, self.samples.dtype)
        self.kind = kind

    @property
    def mean(self) -> jnp.ndarray:
        return jnp.mean(self.samples, axis=0)

    @property
    def n_samples(self) -> int:
        return self.samples.shape[0]

    @property
    def cov(self) -> jnp.ndarray:
        return jnp.atleast_2d(jnp.cov(self.samples, rowvar=False, ddof=1 if self.n_samples > 1 else 0))

    @property
    def std(self) -> jnp.ndarray:
        return jnp.std(self.samples, axis=0, ddof=1 if self.n_samples > 1 else 0)

    def sample(self, key, n: int, resample: bool = True) -> jnp.ndarray:
        """(n, K): rows drawn with replacement; ``resample=False`` returns the first n rows
        in stored order (e.g. each committee member once; requires n <= S)."""
        if not resample:
            if n > self.n_samples:
                raise JaxiapInputError(f"resample=False needs n <= {self.n_samples} stored samples, got n={n}; "
                                       "use resample=True to draw with replacement")
            return self.samples[:n]
        idx = jax.random.randint(key, (n,), 0, self.n_samples)
        return self.samples[idx]

    def predict(self, rows, row_weight=None) -> Prediction:
        rows = jnp.atleast_2d(rows)
        out = rows @ self.samples.T  # (R, S)
        mean = jnp.mean(out, axis=1)
        var = jnp.var(out, axis=1, ddof=1 if self.n_samples > 1 else 0)
        noise = _noise_std(self.noise_var, row_weight, rows.shape[0], mean.dtype) ** 2
        return Prediction(mean, jnp.sqrt(var), jnp.sqrt(var + noise))

    def save(self, path) -> None:
        runfolder.savez(path, kind=self.kind, family="samples", samples=np.asarray(self.samples),
                 noise_var=np.asarray(self.noise_var))

    @classmethod
    def load(cls, z) -> "SamplePosterior":
        return cls(jnp.asarray(z["samples"]), jnp.asarray(z["noise_var"]), str(z["kind"]))


GAUSSIAN_KINDS = ("gaussian", "lstsq", "blr")
STUDENT_T_KINDS = ("student_t", "nig")
SAMPLE_KINDS = ("samples", "committee", "bootstrap", "mcmc", "nuts")


def load_posterior(path):
    """Load a posterior written by ``.save`` (npz, no pickle), dispatching on its ``kind``.

    Kinds not listed above (e.g. a solver's own label) load by the stored
    ``family`` ("gaussian", "student_t", "samples") that every ``save`` writes.
    """
    with runfolder.read_npz(path, "posterior") as npz:
        z = {k: npz[k] for k in npz.files}
    if "kind" not in z:
        raise JaxiapInputError(f"{path}: not a jaxiap posterior file (no 'kind' array); pass a file written by "
                               "Posterior.save")
    kind = str(z["kind"])
    family = str(z["family"]) if "family" in z else ""
    # ---- branch point: model-error posteriors live in jaxiap/inference/model_error.py,
    # ---- which owns their file format (ModelErrorPosterior.load(npz_dict)).
    if kind == "model_error":
        from jaxiap.inference.model_error import ModelErrorPosterior

        return ModelErrorPosterior.load(z)
    elif kind in GAUSSIAN_KINDS or family == "gaussian":
        return GaussianPosterior.load(z)
    elif kind in STUDENT_T_KINDS or family == "student_t":
        return StudentTPosterior.load(z)
    elif kind in SAMPLE_KINDS or family == "samples":
        return SamplePosterior.load(z)
    raise JaxiapInputError(f"{path}: unknown posterior kind {kind!r}; expected one of "
                           f"{GAUSSIAN_KINDS + STUDENT_T_KINDS + SAMPLE_KINDS + ('model_error',)}")
