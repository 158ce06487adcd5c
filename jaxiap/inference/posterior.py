"""The Posterior protocol shared by every solver.

A posterior is a distribution over the parameters c (K,) of a model. Every
posterior, whatever its family or model, offers

- ``mean``: (K,) posterior mean (or point estimate); ``std``: (K,) marginal stds;
- ``noise_var``: the data-noise variance per unit row weight (0 if it has none);
- ``sample(key, n_samples)``: (n_samples, K) independent draws;
- ``ensemble(key, n_samples)``: (n_samples, K) vectors to run side by side (a
  committee's members in stored order; for the other kinds ``sample``);
- ``covariance()``: (K, K); ``precision(ridge=0.0)``: its inverse;
- ``predict_structures(structures, *, basis=None)``: a ``StructurePrediction``
  of energy and forces with their push-forward standard deviations;
- ``mean_potential(*, basis=None)``: the Potential of the posterior mean
  (``LinearPotential(basis, mean)`` for a linear posterior), or None where
  there is no single mean potential (what :class:`jaxiap.calculator.PosteriorCalculator`
  runs for energies, forces and stress).

Covariance access is a method of the protocol: callers never probe for
attributes (``cov_factor``, ``cov``) of one family.

Linear models (E = c . B(x)) are the special case this module implements:
``predict(rows, row_weight=None)`` gives a ``Prediction`` for design rows
(R, K) (the push-forward mean and std of a . c, and the posterior-predictive
std that adds the data noise noise_var / row_weight), and
``predict_structures`` builds those rows from ``basis`` (a LinearBasis, with
:func:`jaxiap.potentials.linear.structure_rows`), so a linear posterior needs
``basis=``. A posterior of a nonlinear model (a GP, a neural network)
subclasses ``Posterior`` and implements ``predict_structures(structures)``
with its own model, ignoring ``basis``; it has no design rows, so its
``predict`` raises.

Kinds: ``GaussianPosterior`` (lstsq, BLR, BCS), ``StudentTPosterior`` (NIG,
unknown noise), ``SamplePosterior`` (committees, MCMC draws) and
``ModelErrorPosterior`` (jaxiap/inference/model_error.py). Posteriors are
equinox Modules (PyTrees) and save to / load from ``.npz`` (never pickle):
every file stores a ``kind`` and a ``family``; ``load_posterior`` dispatches
on the family through a table of loaders that each family's module fills at
import (``register_family``), so this module imports none of them (the
package ``jaxiap.inference`` imports them all).

Keys: the random functions of a posterior take the key first (``sample(key,
n)``, as ``jax.random``); the solvers (``jaxiap.inference.solvers``) take it
keyword-only.
"""

import abc
from typing import Callable, NamedTuple

import equinox as eqx
from equinox import AbstractVar
import jax
import jax.numpy as jnp
import numpy as np

from jaxiap import runfolder
from jaxiap.errors import JaxiapInputError
from jaxiap.potentials.linear import LinearPotential, structure_rows


class Prediction(NamedTuple):
    """mean (R,), std (R,) push-forward, std_predictive (R,) with data noise."""

    mean: jnp.ndarray
    std: jnp.ndarray
    std_predictive: jnp.ndarray


class StructurePrediction(NamedTuple):
    """Structure-level prediction of C structures of N (padded) atoms.

    energy (C,), energy_std (C,), forces (C, N, 3), forces_std (C, N, 3): the
    posterior mean and push-forward standard deviation (model uncertainty, no
    data noise). Padded atoms have force and std 0.
    """

    energy: jnp.ndarray
    energy_std: jnp.ndarray
    forces: jnp.ndarray
    forces_std: jnp.ndarray


def _noise_std(noise_var, row_weight, n_rows, dtype):
    w = jnp.ones(n_rows, dtype) if row_weight is None else jnp.asarray(row_weight, dtype)
    return jnp.sqrt(noise_var / jnp.where(w > 0, w, jnp.inf))


def _inv_spd(M):
    cho = jax.scipy.linalg.cho_factor(M, lower=True)
    Minv = jax.scipy.linalg.cho_solve(cho, jnp.eye(M.shape[0], dtype=M.dtype))
    return 0.5 * (Minv + Minv.T)


def precision_from_covariance(cov, ridge: float = 0.0):
    """(K, K) inverse of a covariance, regularised by ``ridge * mean(diag cov) * I``.

    Raises JaxiapInputError (naming ``ridge``) when the covariance is not
    finite or not positive definite, e.g. the sample covariance of fewer than
    K + 1 draws.
    """
    cov = jnp.asarray(cov, dtype=jnp.float64)
    if cov.ndim != 2 or cov.shape[0] != cov.shape[1]:
        raise JaxiapInputError(f"the posterior covariance must be (K, K); got {tuple(cov.shape)}.")
    covc = _concrete(cov)
    if covc is not None and not np.all(np.isfinite(covc)):
        raise JaxiapInputError("posterior covariance contains NaN or inf; check the features / weights that built it.")
    if ridge:
        cov = cov + ridge * jnp.mean(jnp.diagonal(cov)) * jnp.eye(cov.shape[0], dtype=cov.dtype)
    covc = _concrete(cov)
    if covc is not None:
        try:
            np.linalg.cholesky(0.5 * (covc + covc.T))
        except np.linalg.LinAlgError:
            raise JaxiapInputError(
                "the posterior covariance is singular (e.g. a committee with fewer members than K + 1), "
                "so it has no precision; pass ridge > 0 (e.g. 1e-6) or use more samples.") from None
    return _inv_spd(0.5 * (cov + cov.T))


def _concrete(x):
    try:
        return np.asarray(x)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


class Posterior(eqx.Module):
    """Base class of every posterior (see the module docstring for the protocol).

    Subclasses provide ``mean``, ``noise_var``, ``kind``, ``sample``,
    ``covariance`` and ``save``; the rest has defaults built on those. The
    defaults of ``predict`` / ``predict_structures`` are the linear model's.
    """

    # a field or a property in each subclass (equinox needs these annotations unstringified: this
    # module has no `from __future__ import annotations`)
    mean: AbstractVar[jnp.ndarray]
    noise_var: AbstractVar[jnp.ndarray]  # data-noise variance per unit row weight (0 if none)
    kind: AbstractVar[str]

    @abc.abstractmethod
    def sample(self, key, n_samples: int) -> jnp.ndarray:
        """(n_samples, K) independent draws."""

    @abc.abstractmethod
    def covariance(self) -> jnp.ndarray:
        """(K, K) posterior covariance of the parameters."""

    @abc.abstractmethod
    def save(self, path) -> None:
        """Write the posterior to an .npz file that ``load_posterior`` reads."""

    @property
    def std(self) -> jnp.ndarray:
        """(K,) marginal standard deviations, sqrt(diag(covariance()))."""
        return jnp.sqrt(jnp.diagonal(self.covariance()))

    def precision(self, ridge: float = 0.0) -> jnp.ndarray:
        """(K, K) inverse of ``covariance() + ridge * mean(diag) * I`` (see :func:`precision_from_covariance`)."""
        return precision_from_covariance(self.covariance(), ridge)

    def ensemble(self, key, n_samples: int) -> jnp.ndarray:
        """(n_samples, K) parameter vectors to run side by side; by default ``sample(key, n_samples)``.

        Posteriors made of stored members (a committee) return them in stored order instead.
        """
        return self.sample(key, n_samples)

    def predict(self, rows, row_weight=None) -> Prediction:
        """Linear model: push-forward of design rows (R, K), std from ``covariance()``."""
        rows = jnp.atleast_2d(rows)
        mean = rows @ self.mean
        var = jnp.sum((rows @ self.covariance()) * rows, axis=1)
        noise = _noise_std(self.noise_var, row_weight, rows.shape[0], mean.dtype) ** 2
        return Prediction(mean, jnp.sqrt(var), jnp.sqrt(var + noise))

    def mean_potential(self, *, basis=None):
        """The Potential of the posterior mean: ``LinearPotential(basis, mean)`` for E = c . B(x).

        Its energies and forces equal ``predict_structures(...).energy / .forces``
        (the push-forward mean of a linear model is the model of the mean), and
        it gives the stress of periodic cells by autodiff. A nonlinear posterior
        overrides this (an NN ensemble: the mean of its members) or returns None
        when it has no single mean potential.
        """
        if basis is None:
            raise JaxiapInputError(f"{type(self).__name__}.mean_potential needs basis=, the LinearBasis the "
                                   "coefficients were fitted with (a linear posterior has no model of its own)")
        k = jnp.shape(self.mean)[-1]
        if basis.n_features != k:
            raise JaxiapInputError(f"basis has {basis.n_features} features but the posterior has K = {k} "
                                   "coefficients; pass basis= the LinearBasis the posterior was fitted with")
        return LinearPotential(basis, jnp.asarray(self.mean))

    def predict_structures(self, structures, *, basis=None) -> StructurePrediction:
        """Energy and forces of C structures with push-forward stds, for E = c . B(x).

        ``basis``: the LinearBasis the coefficients belong to (required for a
        linear posterior). The rows are those of the design matrix (energy row
        B(x), force rows -dB/dx; :func:`jaxiap.potentials.linear.structure_rows`),
        so the energy std is sqrt(b^T Sigma b) and the force stds those of the
        force rows (through ``predict``: ddof=1 sample moments for a committee).
        """
        if basis is None:
            raise JaxiapInputError(f"{type(self).__name__}.predict_structures needs basis=, the LinearBasis the "
                                   "coefficients were fitted with (a linear posterior has no model of its own)")
        rows = structure_rows(basis, structures)
        C, P, K = rows.shape
        k = jnp.shape(self.mean)[-1]
        if K != k:
            raise JaxiapInputError(f"basis has {K} features but the posterior has K = {k} coefficients; pass "
                                   "basis= the LinearBasis the posterior was fitted with")
        p = self.predict(rows.reshape(C * P, K))
        mask = jnp.asarray(structures.mask)[:, :, None]
        mean, std = p.mean.reshape(C, P), p.std.reshape(C, P)
        forces = jnp.where(mask, mean[:, 1:].reshape(C, -1, 3), 0.0)
        forces_std = jnp.where(mask, std[:, 1:].reshape(C, -1, 3), 0.0)
        return StructurePrediction(mean[:, 0], std[:, 0], forces, forces_std)


class GaussianPosterior(Posterior):
    """c ~ N(mean, F F^T), with data noise variance ``noise_var`` per unit row weight.

    ``cov_factor`` F (K, K) is any square root of the covariance (Cholesky or
    V S^-1 from an SVD), so sampling is mean + F z.
    """

    mean: jnp.ndarray
    cov_factor: jnp.ndarray
    noise_var: jnp.ndarray
    kind: str = eqx.field(static=True, default="gaussian")

    def covariance(self) -> jnp.ndarray:
        return self.cov_factor @ self.cov_factor.T

    @property
    def cov(self) -> jnp.ndarray:
        """Alias of ``covariance()``."""
        return self.covariance()

    @property
    def std(self) -> jnp.ndarray:
        return jnp.sqrt(jnp.sum(self.cov_factor**2, axis=1))

    def precision(self, ridge: float = 0.0) -> jnp.ndarray:
        """(F F^T)^-1 = F^-T F^-1 from the factor (ridge = 0), else the regularised covariance inverse."""
        if ridge:
            return super().precision(ridge)
        F = jnp.asarray(self.cov_factor, dtype=jnp.float64)
        Fc = _concrete(F)
        if Fc is not None and np.linalg.matrix_rank(Fc) < F.shape[0]:
            raise JaxiapInputError("the posterior's covariance factor is singular (e.g. coefficients pruned by "
                                   "BCS), so it has no precision; refit with a prior (ridge) or pass ridge > 0.")
        Finv = jnp.linalg.solve(F, jnp.eye(F.shape[0], dtype=F.dtype))
        Pm = Finv.T @ Finv
        return 0.5 * (Pm + Pm.T)

    def sample(self, key, n_samples: int) -> jnp.ndarray:
        z = jax.random.normal(key, (n_samples, self.cov_factor.shape[1]), self.mean.dtype)
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


class StudentTPosterior(Posterior):
    """c ~ multivariate Student-t(df, mean, Sigma) with scale matrix Sigma = F F^T.

    From the normal-inverse-gamma posterior (docs/science.md sections 9.4-9.5):
    df = 2 a_n, Sigma = (b_n / a_n) L_n^-1, ``noise_scale2`` = b_n / a_n, and a
    new datum with row a and weight w has Student-t(df) predictive with
    scale^2 = a^T Sigma a + noise_scale2 / w (push-forward: without the noise
    term). ``predict`` reports *standard deviations*, std = scale sqrt(df/(df-2))
    (inf for df <= 2); ``predict_scale`` gives the t scales themselves, e.g. for
    quantiles loc + scale * t_df.ppf(q). ``covariance()`` is Sigma df/(df-2).

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

    def covariance(self) -> jnp.ndarray:
        """Covariance Sigma df/(df-2) (inf for df <= 2)."""
        return self.scale_matrix * _t_variance_factor(self.df)

    @property
    def cov(self) -> jnp.ndarray:
        """Alias of ``covariance()``."""
        return self.covariance()

    @property
    def std(self) -> jnp.ndarray:
        return jnp.sqrt(jnp.sum(self.scale_factor**2, axis=1) * _t_variance_factor(self.df))

    def sample(self, key, n_samples: int) -> jnp.ndarray:
        """(n_samples, K) draws: Gaussian draws divided by sqrt(chi2_df / df)."""
        return self.sample_with_noise(key, n_samples)[0]

    def sample_with_noise(self, key, n_samples: int) -> tuple[jnp.ndarray, jnp.ndarray]:
        """Joint draws (c (n_samples, K), noise variance (n_samples,)) of the normal-inverse-gamma posterior.

        sigma^2 = b_n / g with g = u / 2 ~ Gamma(a_n) (so sigma^2 ~ IG(a_n, b_n)) and
        c | sigma^2 ~ N(mean, sigma^2 (a_n / b_n) Sigma); the c are exactly those of
        ``sample(key, n_samples)`` (the same key gives the same draws).
        """
        kz, ku = jax.random.split(key)
        z = jax.random.normal(kz, (n_samples, self.scale_factor.shape[1]), self.mean.dtype)
        u = 2.0 * jax.random.gamma(ku, self.df / 2, (n_samples,), self.mean.dtype)  # chi2(df)
        c = self.mean + (z @ self.scale_factor.T) / jnp.sqrt(u / self.df)[:, None]
        return c, self.bn / (u / 2)

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


class SamplePosterior(Posterior):
    """An empirical posterior: equally weighted coefficient draws ``samples`` (S, K).

    Used for committees (bootstrap / subsampling) and MCMC output. ``mean`` is
    the sample mean; ``covariance()`` and ``predict`` use the sample moments
    (ddof=1 when S > 1), and ``predict`` adds ``noise_var / row_weight`` for
    the predictive std. ``ensemble(key, n)`` returns the first n stored draws
    in order (each committee member once).
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

    def _ddof(self) -> int:
        return 1 if self.n_samples > 1 else 0

    def covariance(self) -> jnp.ndarray:
        return jnp.atleast_2d(jnp.cov(self.samples, rowvar=False, ddof=self._ddof()))

    @property
    def cov(self) -> jnp.ndarray:
        """Alias of ``covariance()``."""
        return self.covariance()

    @property
    def std(self) -> jnp.ndarray:
        return jnp.std(self.samples, axis=0, ddof=self._ddof())

    def sample(self, key, n_samples: int, *, resample: bool = True) -> jnp.ndarray:
        """(n_samples, K): rows drawn with replacement; ``resample=False`` returns the first
        n_samples rows in stored order (what :meth:`ensemble` does; requires n_samples <= S)."""
        if not resample:
            if n_samples > self.n_samples:
                raise JaxiapInputError(f"resample=False needs n <= {self.n_samples} stored samples, got "
                                       f"n={n_samples}; use resample=True to draw with replacement")
            return self.samples[:n_samples]
        idx = jax.random.randint(key, (n_samples,), 0, self.n_samples)
        return self.samples[idx]

    def ensemble(self, key, n_samples: int) -> jnp.ndarray:
        """The first n_samples stored draws in order (each committee member once; ``key`` is unused)."""
        return self.sample(key, n_samples, resample=False)

    def predict(self, rows, row_weight=None) -> Prediction:
        rows = jnp.atleast_2d(rows)
        out = rows @ self.samples.T  # (R, S)
        mean = jnp.mean(out, axis=1)
        var = jnp.var(out, axis=1, ddof=self._ddof())
        noise = _noise_std(self.noise_var, row_weight, rows.shape[0], mean.dtype) ** 2
        return Prediction(mean, jnp.sqrt(var), jnp.sqrt(var + noise))

    def save(self, path) -> None:
        runfolder.savez(path, kind=self.kind, family="samples", samples=np.asarray(self.samples),
                        noise_var=np.asarray(self.noise_var))

    @classmethod
    def load(cls, z) -> "SamplePosterior":
        return cls(jnp.asarray(z["samples"]), jnp.asarray(z["noise_var"]), str(z["kind"]))


# --------------------------------------------------------------------------------------------
# loading: family -> loader, filled by each family's module at import

_LOADERS: dict[str, Callable] = {}
_KIND_FAMILY: dict[str, str] = {}


def register_family(family: str, loader: Callable, kinds: tuple = ()) -> None:
    """Make ``load_posterior`` read files of ``family`` with ``loader(npz_dict)``.

    ``kinds``: kind strings that mean this family in files written without a
    ``family`` entry (older files).
    """
    _LOADERS[family] = loader
    for kind in kinds:
        _KIND_FAMILY[kind] = family


register_family("gaussian", GaussianPosterior.load, ("gaussian", "lstsq", "blr"))
register_family("student_t", StudentTPosterior.load, ("student_t", "nig"))
register_family("samples", SamplePosterior.load, ("samples", "committee", "bootstrap", "mcmc", "nuts"))


def load_posterior(path) -> Posterior:
    """Load a posterior written by ``.save`` (npz, no pickle), dispatching on its ``family``.

    Files without a ``family`` entry dispatch on their ``kind``. The families
    are those registered with :func:`register_family` (importing
    ``jaxiap.inference`` registers every family of the package).
    """
    with runfolder.read_npz(path, "posterior") as npz:
        z = {k: npz[k] for k in npz.files}
    if "kind" not in z:
        raise JaxiapInputError(f"{path}: not a jaxiap posterior file (no 'kind' array); pass a file written by "
                               "Posterior.save")
    kind = str(z["kind"])
    family = str(z["family"]) if "family" in z else _KIND_FAMILY.get(kind, "")
    loader = _LOADERS.get(family) or _LOADERS.get(_KIND_FAMILY.get(kind, ""))
    if loader is None:
        raise JaxiapInputError(f"{path}: unknown posterior kind {kind!r} (family {family!r}); expected one of the "
                               f"families {tuple(_LOADERS)} or kinds {tuple(_KIND_FAMILY)}")
    return loader(z)
