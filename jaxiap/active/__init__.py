"""Active learning: diverse subsets (DPPs), optimal designs, query by committee, pool-based loops.

Import the submodules directly for the full API: ``jaxiap.active.dpp``,
``jaxiap.active.dpp_kernels``, ``jaxiap.active.dpp_dual``, ``jaxiap.active.design``,
``jaxiap.active.qbc``, ``jaxiap.active.strategies`` and ``jaxiap.active.loop``.
"""

from jaxiap.active.design import (
    CRITERIA,
    DesignResult,
    candidate_rows,
    criterion_value,
    greedy_design,
    information_matrix,
    posterior_precision,
)
from jaxiap.active.dpp import (
    DPPSpectrum,
    dpp_spectrum,
    expected_size,
    greedy_map,
    inclusion_probabilities,
    marginal_kernel,
    sample_dpp,
    sample_dpp_spectral,
    sample_kdpp,
    sample_kdpp_spectral,
)
from jaxiap.active.dpp_dual import (
    dual_spectrum,
    inclusion_probabilities_dual,
    sample_dpp_dual,
    sample_kdpp_dual,
)
from jaxiap.active.dpp_kernels import (
    configuration_features,
    quality_diversity_kernel,
    quality_scores,
    rbf_kernel,
)
from jaxiap.active.loop import LoopResult, run_pool_loop
from jaxiap.active.qbc import (
    Disagreement,
    committee_disagreement,
    committee_predictions,
    diversified_batch,
    predictive_std,
    select_top,
)
from jaxiap.active.strategies import STRATEGIES, LoopContext

__all__ = [
    # dpp
    "rbf_kernel", "quality_diversity_kernel", "configuration_features", "quality_scores",
    "marginal_kernel", "inclusion_probabilities", "expected_size",
    "DPPSpectrum", "dpp_spectrum", "dual_spectrum",
    "sample_dpp", "sample_kdpp", "sample_dpp_spectral", "sample_kdpp_spectral", "greedy_map",
    "inclusion_probabilities_dual", "sample_dpp_dual", "sample_kdpp_dual",
    # design
    "CRITERIA", "DesignResult", "candidate_rows", "information_matrix", "criterion_value",
    "greedy_design", "posterior_precision",
    # qbc
    "Disagreement", "committee_predictions", "committee_disagreement", "predictive_std",
    "select_top", "diversified_batch",
    # strategies and loop
    "STRATEGIES", "LoopContext", "LoopResult", "run_pool_loop",
]
