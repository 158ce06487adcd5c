"""Uncertainty quantification of QoIs: polynomial chaos surrogates, Sobol indices, survival and FRT statistics."""

from jaxiap.uq.frt import (
    compare_frt,
    frt_errors,
    frt_samples,
    log_mean_frt,
    per_sample_frt,
    survival_band,
    variance_split,
)
from jaxiap.uq.germ import from_germ, gaussian_germ
from jaxiap.uq.pce import (
    GERMS,
    PCE,
    basis_norms,
    fit_pce,
    hermite_basis,
    legendre_basis,
    pce_from_samples,
    polynomial_basis,
    total_degree_multi_indices,
    validation_error,
)
from jaxiap.uq.survival import (
    CENSORED,
    EVAPORATED,
    EVENT,
    FAILED,
    censored_exponential_mle,
    kaplan_meier,
    km_median,
    ks_two_sample,
    summarize_frt,
)

__all__ = [
    "PCE", "GERMS", "basis_norms", "fit_pce", "hermite_basis", "legendre_basis", "polynomial_basis",
    "pce_from_samples", "total_degree_multi_indices", "validation_error", "gaussian_germ", "from_germ",
    "variance_split", "per_sample_frt", "log_mean_frt", "survival_band", "frt_samples", "compare_frt", "frt_errors",
    "CENSORED", "EVENT", "EVAPORATED", "FAILED", "kaplan_meier", "km_median", "censored_exponential_mle",
    "ks_two_sample", "summarize_frt",
]
