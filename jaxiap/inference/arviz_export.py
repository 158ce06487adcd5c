"""Every posterior as an ArviZ ``InferenceData``: one public entry point, :func:`to_inference_data`.

``to_inference_data(obj, *, n_samples=1000, key=None, n_chains=1)`` takes any
jaxiap posterior or a numpyro result and returns ``arviz.InferenceData``
(arviz is optional: ``pip install jaxiap[arviz]``; it is imported only here,
when called). What goes into its groups depends on the kind:

=============================== ================================================ ===========================
kind                            ``posterior`` group (dims ``chain, draw, ...``)  draws
=============================== ================================================ ===========================
NUTSResult / SVIResult          every site (NUTS: its chains, diverging and      the sampler's
                                num_steps as ``sample_stats``; SVI: one chain)
GaussianPosterior (lstsq, BLR,  ``coefficients`` (coefficient)                   ``posterior.sample(key, n)``
BCS)                            noise_var -> ``constant_data`` (a point value)
StudentTPosterior (NIG)         ``coefficients``, ``noise_var`` (joint draws of   ``sample_with_noise(key, n)``
                                the normal-inverse-gamma; the coefficients are
                                those of ``posterior.sample(key, n)``)
SamplePosterior (committee,     ``coefficients``: the stored members, in order;  stored, no key
bootstrap, MCMC draws)          noise_var -> ``constant_data``
ModelErrorPosterior             ``coefficients`` (c_s), ``embedding_factor``      stored, no key
                                (L_s, dims embedded, embedded_col); ``embed``
                                and noise_var -> ``constant_data``
NNPosterior ensemble / SVI /    ``weights`` (weight): each member's flattened     stored, no key
NUTS (jaxiap.uq.nn_uq)          network weights (``eqx.filter(net, is_array)``
                                leaves, raveled in ``jax.tree`` order)
NNPosterior last-layer          the last layer's Gaussian as above               ``sample(key, n)``
other NNPosterior kinds, GP     raise JaxiapInputError: their uncertainty is a
                                per-prediction head / a function-space GP, not a
                                distribution over parameters
=============================== ================================================ ===========================

Drawn kinds make ``n_chains * n_samples`` draws (``key`` required) and
reshape them to (n_chains, n_samples, ...); stored kinds split their S draws
into ``n_chains`` consecutive chains (S must divide; ``n_samples`` and ``key``
are not used). The attrs of the ``posterior`` group (and of the InferenceData) name the
source: ``jaxiap_kind`` (the posterior's ``kind``), ``jaxiap_class``,
``jaxiap_draws`` ("sampled" or "stored") and ``jaxiap_version``.

The function is a :func:`functools.singledispatch`: a posterior defined in a
higher layer registers its own exporter with ``@to_inference_data.register``
(the NN posterior does, in ``jaxiap/uq/nn_uq.py``). Posterior kinds without
one fall back to draws from ``posterior.sample(key, n)``.
``jaxiap.inference.mcmc.to_arviz`` remains the NUTS/SVI converter this calls.
"""

from __future__ import annotations

import functools

import numpy as np

from jaxiap._version import __version__
from jaxiap.errors import JaxiapInputError
from jaxiap.inference.mcmc import NUTSResult, SVIResult, to_arviz
from jaxiap.inference.model_error import ModelErrorPosterior
from jaxiap.inference.posterior import Posterior, SamplePosterior, StudentTPosterior

__all__ = ["to_inference_data", "export_draws", "export_stored"]


def _arviz():
    try:
        import arviz as az  # lazy: arviz is an optional extra (pip install jaxiap[arviz])
    except ImportError as err:
        raise ImportError("to_inference_data needs the optional arviz package: pip install jaxiap[arviz] "
                          "(or pip install arviz)") from err
    return az


def _check_chains(n_chains) -> int:
    if not (isinstance(n_chains, (int, np.integer)) and n_chains >= 1):
        raise JaxiapInputError(f"to_inference_data: n_chains={n_chains!r} must be a positive integer")
    return int(n_chains)


def _draw_count(n_samples, n_chains, key, what: str) -> int:
    if not (isinstance(n_samples, (int, np.integer)) and n_samples >= 1):
        raise JaxiapInputError(f"to_inference_data: n_samples={n_samples!r} must be a positive integer (draws per "
                               "chain)")
    if key is None:
        raise JaxiapInputError(f"to_inference_data: a {what} posterior is exported as draws, so it needs key= "
                               "(e.g. key=jax.random.key(0))")
    return int(n_samples) * n_chains


def _split(a, n_chains: int, what: str):
    a = np.asarray(a)
    s = a.shape[0]
    if s % n_chains:
        raise JaxiapInputError(f"to_inference_data: {s} stored {what} do not split into n_chains={n_chains} equal "
                               "chains; pass an n_chains that divides them")
    return a.reshape((n_chains, s // n_chains) + a.shape[1:])


def _build(posterior_vars: dict, dims: dict, coords: dict, attrs: dict, constant_data: dict | None = None):
    az = _arviz()
    constant_data = {k: np.asarray(v) for k, v in (constant_data or {}).items()}
    attrs = {"jaxiap_version": __version__, **attrs}
    idata = az.from_dict(posterior=posterior_vars, dims=dims, coords=coords, constant_data=constant_data or None,
                         attrs=attrs)
    idata.posterior.attrs.update(attrs)  # on the group too: they travel with it (to_netcdf, extract)
    return idata


def _coef_coords(k: int) -> dict:
    return {"coefficient": np.arange(k)}


def export_draws(posterior, variables: dict, *, dims: dict, coords: dict, draws: str, constant_data=None,
                 n_chains: int = 1):
    """``InferenceData`` of per-draw arrays ``variables`` (name -> (n_chains * S, ...)), split into chains.

    The building block of the exporters (and of a posterior in another layer that registers its own):
    ``draws`` is "sampled" or "stored" (recorded in the attrs with the posterior's kind and class).
    """
    split = {name: _split(v, n_chains, "draws") for name, v in variables.items()}
    attrs = {"jaxiap_kind": str(getattr(posterior, "kind", type(posterior).__name__)),
             "jaxiap_class": type(posterior).__name__, "jaxiap_draws": draws}
    return _build(split, dims, coords, attrs, constant_data)


def export_stored(posterior, name: str, stored, *, dim: str, n_chains: int = 1, constant_data=None):
    """``InferenceData`` of stored draws (S, P) as variable ``name`` with dims (chain, draw, ``dim``)."""
    stored = np.asarray(stored)
    return export_draws(posterior, {name: stored}, dims={name: [dim]}, coords={dim: np.arange(stored.shape[1])},
                        draws="stored", constant_data=constant_data, n_chains=n_chains)


@functools.singledispatch
def to_inference_data(obj, *, n_samples: int = 1000, key=None, n_chains: int = 1):
    """``arviz.InferenceData`` of any jaxiap posterior or numpyro result (the table in the module docstring).

    n_samples: draws per chain of the kinds that are sampled (Gaussian,
        Student-t, and any posterior with only ``sample``); ignored by the
        kinds with stored draws (committees, MCMC, model error, NN ensembles).
    key: a JAX key, required by the sampled kinds.
    n_chains: chains to draw, or to split the stored draws into (must divide them).

    Needs the optional arviz package (``pip install jaxiap[arviz]``).
    """
    raise JaxiapInputError(f"to_inference_data: expected a jaxiap Posterior, NUTSResult or SVIResult, got "
                           f"{type(obj).__name__}")


@to_inference_data.register(Posterior)
def _(obj, *, n_samples: int = 1000, key=None, n_chains: int = 1):
    # Gaussian (lstsq, BLR, BCS) and any Posterior that only offers sample(): draws, noise_var a point value
    n_chains = _check_chains(n_chains)
    _arviz()
    n = _draw_count(n_samples, n_chains, key, obj.kind)
    c = np.asarray(obj.sample(key, n))
    return export_draws(obj, {"coefficients": c}, dims={"coefficients": ["coefficient"]},
                        coords=_coef_coords(c.shape[1]), draws="sampled", n_chains=n_chains,
                        constant_data={"noise_var": np.asarray(obj.noise_var)})


@to_inference_data.register(StudentTPosterior)
def _(obj, *, n_samples: int = 1000, key=None, n_chains: int = 1):
    n_chains = _check_chains(n_chains)
    _arviz()
    n = _draw_count(n_samples, n_chains, key, obj.kind)
    c, noise = obj.sample_with_noise(key, n)
    c = np.asarray(c)
    return export_draws(obj, {"coefficients": c, "noise_var": np.asarray(noise)},
                        dims={"coefficients": ["coefficient"]}, coords=_coef_coords(c.shape[1]), draws="sampled",
                        n_chains=n_chains, constant_data={"df": np.asarray(obj.df)})


@to_inference_data.register(SamplePosterior)
def _(obj, *, n_samples: int = 1000, key=None, n_chains: int = 1):
    n_chains = _check_chains(n_chains)
    return export_stored(obj, "coefficients", obj.samples, dim="coefficient", n_chains=n_chains,
                         constant_data={"noise_var": np.asarray(obj.noise_var)})


@to_inference_data.register(ModelErrorPosterior)
def _(obj, *, n_samples: int = 1000, key=None, n_chains: int = 1):
    n_chains = _check_chains(n_chains)
    c = np.asarray(obj.coef_samples)
    e = int(obj.embed.shape[0])
    return export_draws(obj, {"coefficients": c, "embedding_factor": np.asarray(obj.factor_samples)},
                        dims={"coefficients": ["coefficient"], "embedding_factor": ["embedded", "embedded_col"],
                              "embed": ["embedded"]},
                        coords={**_coef_coords(c.shape[1]), "embedded": np.arange(e), "embedded_col": np.arange(e)},
                        draws="stored", n_chains=n_chains,
                        constant_data={"embed": np.asarray(obj.embed), "noise_var": np.asarray(obj.noise_var)})


@to_inference_data.register(NUTSResult)
@to_inference_data.register(SVIResult)
def _(obj, *, n_samples: int = 1000, key=None, n_chains: int = 1):
    # numpyro results keep their own chains (NUTS) or are one chain (SVI); n_samples, key, n_chains unused
    _arviz()
    return to_arviz(obj)
