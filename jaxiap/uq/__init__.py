"""Uncertainty quantification of QoIs: polynomial chaos surrogates, Sobol indices, FRT statistics."""

from jaxiap.uq.frt import log_mean_frt, per_sample_frt, survival_band, variance_split
from jaxiap.uq.pce import (
    GERMS,
    PCE,
    basis_norms,
    fit_pce,
    from_germ,
    gaussian_germ,
    hermite_basis,
    legendre_basis,
    pce_from_samples,
    polynomial_basis,
    total_degree_multi_indices,
    validation_error,
)

__all__ = [
    "PCE", "GERMS", "basis_norms", "fit_pce", "hermite_basis", "legendre_basis", "polynomial_basis",
    "pce_from_samples", "total_degree_multi_indices", "validation_error", "gaussian_germ", "from_germ",
    "variance_split", "per_sample_frt", "log_mean_frt", "survival_band",
]
