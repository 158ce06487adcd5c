"""Inference: every solver returns an object of the Posterior protocol.

``jaxiap.inference.posterior``: the protocol and the Gaussian, Student-t and
sample posteriors; ``jaxiap.inference.model_error``: the model-error
posterior (importing this package registers its file loader, so
``load_posterior`` reads every kind); ``jaxiap.inference.solvers``: the one
solver signature ``solver(design, *, key=None) -> Posterior`` and the
registry ``SOLVERS`` / ``get_solver``; ``jaxiap.inference.arviz_export``:
``to_inference_data``, every posterior as an ArviZ InferenceData (docs/interop.md).
"""

from jaxiap.inference.arviz_export import to_inference_data
from jaxiap.inference.model_error import ModelErrorPosterior
from jaxiap.inference.posterior import (
    GaussianPosterior,
    Posterior,
    Prediction,
    SamplePosterior,
    StructurePrediction,
    StudentTPosterior,
    load_posterior,
)
from jaxiap.inference.solvers import SOLVERS, Solver, get_solver

__all__ = ["Posterior", "GaussianPosterior", "StudentTPosterior", "SamplePosterior", "ModelErrorPosterior",
           "Prediction", "StructurePrediction", "load_posterior", "SOLVERS", "Solver", "get_solver",
           "to_inference_data"]
