"""Uncertainty quantification of QoIs: polynomial chaos surrogates and Sobol indices."""

from jaxiap.uq.pce import (
    PCE,
    basis_norms,
    fit_pce,
    hermite_basis,
    pce_from_samples,
    total_degree_multi_indices,
    validation_error,
)

__all__ = [
    "PCE",
    "basis_norms",
    "fit_pce",
    "hermite_basis",
    "pce_from_samples",
    "total_degree_multi_indices",
    "validation_error",
]
