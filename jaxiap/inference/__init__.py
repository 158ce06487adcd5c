"""Inference: every solver returns an object of the Posterior protocol."""

from jaxiap.inference.posterior import GaussianPosterior, Posterior, Prediction

__all__ = ["Posterior", "GaussianPosterior", "Prediction"]
