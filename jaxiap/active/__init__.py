"""Active learning: selection of new configurations (diverse subsets, designs)."""

from jaxiap.active.dpp import (
    expected_size,
    greedy_map,
    inclusion_probabilities,
    inclusion_probabilities_dual,
    marginal_kernel,
    quality_diversity_kernel,
    rbf_kernel,
    sample_dpp,
    sample_dpp_dual,
    sample_kdpp,
    sample_kdpp_dual,
)

__all__ = [
    "rbf_kernel",
    "quality_diversity_kernel",
    "marginal_kernel",
    "inclusion_probabilities",
    "expected_size",
    "sample_dpp",
    "sample_kdpp",
    "greedy_map",
    "inclusion_probabilities_dual",
    "sample_dpp_dual",
    "sample_kdpp_dual",
]
