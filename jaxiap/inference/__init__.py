"""Inference: every solver returns an object of the Posterior protocol."""

from jaxiap.inference.posterior import (
    GaussianPosterior,
    Posterior,
    Prediction,
    SamplePosterior,
    StudentTPosterior,
    load_posterior,
)

__all__ = ["Posterior", "GaussianPosterior", "StudentTPosterior", "SamplePosterior", "Prediction", "load_posterior"]
