"""One solver signature and one registry of solvers.

A solver turns data into a Posterior (jaxiap.inference.posterior)::

    solver(data, *, key=None) -> Posterior

``data`` is a ``DesignMatrix`` (jaxiap.potentials.linear): every solver here
fits a linear model, so its data are weighted design rows. ``key`` is
keyword-only: deterministic solvers ignore it, random ones (committees,
Laplace / NUTS draws) raise a JaxiapInputError naming ``key`` without it.
Calling with a positional key is a TypeError.

In the style of optax, a solver is a small object built by a factory from its
options, ``lstsq()``, ``blr(prior_precision=1.0, noise_var=1e-4)``,
``bootstrap(n_samples=32)``, ..., and :data:`SOLVERS` maps the public names to
those factories; :func:`get_solver` looks a name up and checks the options.
The ``jaxiap lj13`` options ``--posterior`` / ``--sample-posterior``, the
forward-UQ attempts and the active-learning loop all take these names.

Defaults reproduce the LJ13 study's fits: ``blr`` without options maximises the
evidence (type-II ML of the energy / force noise and the prior scale,
``optimize_hyperparameters``) and returns its posterior; ``bootstrap`` is a
32-member committee on structures drawn with replacement; ``merr-*`` are MAP +
Laplace embedded-model-error fits; ``horseshoe`` is NUTS with 2 chains x 500
draws.

Sample counts are ``n_samples`` everywhere in jaxiap: draws of a posterior,
committee members, Laplace draws; for NUTS, ``n_samples`` is the draws per
chain (numpyro's ``num_samples``; ``num_warmup`` and ``num_chains`` keep
numpyro's names).
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable, Mapping

import numpy as np

from jaxiap.errors import JaxiapInputError
from jaxiap.inference.bcs import fit_bcs
from jaxiap.inference.model_error import fit_model_error
from jaxiap.inference.posterior import Posterior
from jaxiap.inference.sparse import fit_sparse
from jaxiap.potentials.linear import ENERGY_ROW, DesignMatrix

__all__ = ["Solver", "SOLVERS", "get_solver", "as_solver", "lstsq", "blr", "nig", "committee", "bootstrap",
           "model_error", "sparse", "bcs"]


@dataclasses.dataclass(frozen=True)
class Solver:
    """``solver(data, *, key=None) -> Posterior``: a fit with its options bound.

    name: the registry name; options: the options it was built with (JSON-able
    where the inputs are); random: whether it needs ``key``; fit: ``fit(data,
    key) -> Posterior``, the implementation.
    """

    name: str
    fit: Callable[[Any, Any], Posterior]
    options: Mapping = dataclasses.field(default_factory=dict)
    random: bool = False

    def __call__(self, data, *, key=None) -> Posterior:
        if not isinstance(data, DesignMatrix):
            raise JaxiapInputError(f"solver {self.name!r}: data must be a DesignMatrix (build one with "
                                   f"jaxiap.potentials.linear.design_matrix), got {type(data).__name__}")
        if self.random and key is None:
            raise JaxiapInputError(f"solver {self.name!r} draws random numbers: pass key=, e.g. "
                                   f"solver(design, key=jax.random.key(0))")
        return self.fit(data, key)

    @property
    def label(self) -> str:
        """``name(option=value, ...)``: the solver in one line (for logs and run-folder fingerprints)."""
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"{self.name}({opts})"


# --------------------------------------------------------------------------------------------
# factories


def lstsq(*, rcond: float = 1e-12) -> Solver:
    """Weighted least squares (``fit_lstsq``): Gaussian posterior sighat^2 (A^T W A)^-1."""
    from jaxiap.inference.linear import fit_lstsq  # lazy: pulls in optax (~0.1 s to import), only needed to fit

    return Solver("lstsq", lambda data, key: fit_lstsq(data, rcond=rcond), dict(rcond=rcond))


def blr(*, prior_precision=None, noise_var=None, energy_noise_var=None, prior_mean=None, steps: int = 500,
        tol: float = 1e-8) -> Solver:
    """Known-noise Bayesian linear regression (Gaussian posterior).

    Without ``prior_precision`` and ``noise_var``: type-II maximum likelihood
    of (sigma_energy, sigma_force, prior_scale) (``optimize_hyperparameters``
    with ``steps``, ``tol``) and its posterior. With both: ``fit_blr`` at those
    fixed values; ``energy_noise_var`` (optional) gives energy rows their own
    noise variance by multiplying their weights by noise_var / energy_noise_var.
    """
    from jaxiap.inference.linear import fit_blr, optimize_hyperparameters  # lazy: pulls in optax (~0.1 s to import), only needed to fit

    if (prior_precision is None) != (noise_var is None):
        raise JaxiapInputError("blr: pass both prior_precision and noise_var (fixed hyperparameters) or neither "
                               "(type-II maximum likelihood)")
    if prior_precision is None:
        if energy_noise_var is not None:
            raise JaxiapInputError("blr: energy_noise_var needs fixed hyperparameters (prior_precision and "
                                   "noise_var); type-II ML fits the energy noise itself")

        def fit(data, key):
            return optimize_hyperparameters(data, steps=steps, tol=tol, prior_mean=prior_mean).posterior

        return Solver("blr", fit, dict(prior_mean=prior_mean, steps=steps, tol=tol))

    def fit_fixed(data, key):
        if energy_noise_var is not None:
            factor = noise_var / energy_noise_var
            w = np.where(np.asarray(data.kind) == ENERGY_ROW, factor, 1.0) * np.asarray(data.w)
            data = data._replace(w=w)
        return fit_blr(data, prior_precision=prior_precision, prior_mean=prior_mean, noise_var=noise_var)

    return Solver("blr", fit_fixed, dict(prior_precision=prior_precision, noise_var=noise_var,
                                         energy_noise_var=energy_noise_var, prior_mean=prior_mean))


def nig(*, a0=None, b0: float = 0.0, L0=None, mu0=None) -> Solver:
    """Unknown noise, normal-inverse-gamma prior (``fit_nig``; default the flat limit): Student-t posterior."""
    from jaxiap.inference.linear import fit_nig  # lazy: pulls in optax (~0.1 s to import), only needed to fit

    return Solver("nig", lambda data, key: fit_nig(data, a0=a0, b0=b0, L0=L0, mu0=mu0),
                  dict(a0=a0, b0=b0, L0=L0, mu0=mu0))


def committee(*, n_samples: int = 32, fraction: float = 0.8, replace: bool = False, member="lstsq") -> Solver:
    """``n_samples`` fits on random subsets of the training structures (``fit_committee``).

    member: the solver of each member, a registry name or a Solver (it is
    called without a key, so it must be deterministic). ``replace=True`` draws
    the structures with replacement (see :func:`bootstrap`).
    """
    from jaxiap.inference.ensembles import fit_committee  # lazy: pulls in optax (~0.1 s to import), only needed to fit

    member_solver = as_solver(member)
    name = "bootstrap" if replace else "committee"
    return Solver(name, lambda data, key: fit_committee(data, n_samples, key=key, fraction=fraction, replace=replace,
                                                        solver=member_solver),
                  dict(n_samples=n_samples, fraction=fraction, replace=replace, member=_solver_name(member)),
                  random=True)


def bootstrap(*, n_samples: int = 32, fraction: float = 0.8, member="lstsq") -> Solver:
    """Bootstrap committee (query by bagging): :func:`committee` with structures drawn with replacement."""
    return committee(n_samples=n_samples, fraction=fraction, replace=True, member=member)


def model_error(*, likelihood: str = "iid", method: str = "laplace", **options) -> Solver:
    """Embedded model error (``fit_model_error``; default MAP + Laplace, every coefficient, additive, diagonal).

    method: "map", "laplace", "nuts" or "svi". options: any other keyword of
    ``fit_model_error`` (``n_samples``, ``embed``, ``eps``, ``n_starts``, for
    SVI ``guide``, ``svi_steps``, ``svi_learning_rate``, ...).
    """
    _check_options(fit_model_error, options, f"merr-{likelihood}", exclude=("key", "return_info"))
    return Solver(f"merr-{likelihood}",
                  lambda data, key: fit_model_error(data, likelihood=likelihood, method=method, key=key, **options),
                  dict(likelihood=likelihood, method=method, **options), random=method != "map")


def sparse(*, prior: str = "horseshoe", method: str = "nuts", num_warmup: int = 500, n_samples: int = 500,
           **options) -> Solver:
    """Sparsity prior with NUTS or SVI (``fit_sparse``; default horseshoe, NUTS 2 chains x (500 + 500)).

    options: any other keyword of ``fit_sparse`` (``num_chains``, ``progress``, ``p0``, ...).
    """
    _check_options(fit_sparse, options, prior.replace("_", "-"), exclude=("key", "return_info"))
    return Solver(prior.replace("_", "-"),
                  lambda data, key: fit_sparse(data, prior=prior, method=method, key=key, num_warmup=num_warmup,
                                               n_samples=n_samples, **options),
                  dict(prior=prior, method=method, num_warmup=num_warmup, n_samples=n_samples, **options), random=True)


def bcs(*, noise_var=None, eta: float = 1e-8, max_iter: int = 100) -> Solver:
    """Bayesian compressive sensing, the fast relevance vector machine (``fit_bcs``): sparse Gaussian posterior."""
    return Solver("bcs", lambda data, key: fit_bcs(data, noise_var=noise_var, eta=eta, max_iter=max_iter),
                  dict(noise_var=noise_var, eta=eta, max_iter=max_iter))


def _merr(likelihood):
    def factory(**options) -> Solver:
        return model_error(likelihood=likelihood, **options)

    factory.__doc__ = f"Embedded model error, {likelihood.upper()} likelihood, MAP + Laplace (see model_error)."
    return factory


def _sparse(prior):
    def factory(**options) -> Solver:
        return sparse(prior=prior, **options)

    factory.__doc__ = f"{prior} prior, NUTS 2 chains x (500 warmup + 500 draws) (see sparse)."
    return factory


#: name -> factory(**options) -> Solver; the one public table of fits
SOLVERS: dict[str, Callable[..., Solver]] = {
    "lstsq": lstsq,
    "blr": blr,
    "nig": nig,
    "bootstrap": bootstrap,
    "merr-iid": _merr("iid"),
    "merr-abc": _merr("abc"),
    "horseshoe": _sparse("horseshoe"),
    "committee": committee,
    "bcs": bcs,
    "laplace": _sparse("laplace"),
    "reg-horseshoe": _sparse("reg_horseshoe"),
}


def _check_options(fn, options: dict, name: str, exclude=()) -> None:
    """Raise for options that are not keyword-only parameters of ``fn`` (less ``exclude``)."""
    params = inspect.signature(fn).parameters
    allowed = sorted(p for p, v in params.items() if v.kind == inspect.Parameter.KEYWORD_ONLY and p not in exclude)
    bad = sorted(set(options) - set(allowed))
    if bad:
        raise JaxiapInputError(f"solver {name!r} has no option(s) {bad}; its options are {allowed}")


def get_solver(name: str, **options) -> Solver:
    """The registry's solver ``name`` built with ``options`` (keywords of its factory).

    Raises JaxiapInputError for an unknown name (listing :data:`SOLVERS`) or an
    option the solver does not take (listing its options).
    """
    if not isinstance(name, str) or name not in SOLVERS:
        raise JaxiapInputError(f"solver {name!r} is unknown; choose one of {tuple(SOLVERS)}")
    factory = SOLVERS[name]
    try:
        inspect.signature(factory).bind(**options)
    except TypeError:
        params = inspect.signature(factory).parameters
        raise JaxiapInputError(f"solver {name!r} has no option(s) {sorted(set(options) - set(params))}; its "
                               f"options are {[p for p in params if p != 'options']}") from None
    return factory(**options)


def as_solver(fit) -> Callable:
    """A registry name -> its default Solver; a Solver or any callable ``fit(data, *, key=None)`` -> itself."""
    if isinstance(fit, str):
        return get_solver(fit)
    if not callable(fit):
        raise JaxiapInputError(f"fit must be a solver name (one of {tuple(SOLVERS)}) or a callable "
                               f"fit(design, *, key=None) -> Posterior, got {type(fit).__name__}")
    return fit


def _solver_name(fit) -> str:
    if isinstance(fit, str):
        return fit
    if isinstance(fit, Solver):
        return fit.label
    return getattr(fit, "__qualname__", None) or type(fit).__name__
