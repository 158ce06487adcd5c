"""UQ metrics (jaxiap.uq.metrics) against uncertainty-toolbox, scipy and scikit-learn, on random and real data.

Real data: a committee of least-squares fits of a radial basis to perturbed
LJ13 clusters, scored on held-out clusters (energies and per-atom forces).
"""

import jax
import numpy as np
import pytest
from scipy import stats

import jaxiap  # noqa: F401  (float64)
from jaxiap.errors import JaxiapInputError
from jaxiap.uq import metrics as m

uct = pytest.importorskip("uncertainty_toolbox")
sk_metrics = pytest.importorskip("sklearn.metrics")


def _random_sets():
    rng = np.random.default_rng(15)
    out = []
    for n, scale in ((50, 1.0), (400, 0.3), (1000, 3.0)):
        mean = rng.normal(size=n)
        std = rng.uniform(0.05, 2.0, n)
        y = mean + scale * std * rng.standard_normal(n)
        out.append((mean, std, y))
    # ties in the stds and the errors
    std = np.repeat([0.1, 0.2, 0.5, 1.0], 25)
    out.append((np.zeros(100), std, np.round(rng.normal(size=100) * std, 1)))
    return out


@pytest.fixture(scope="module")
def real_sets():
    """(mean, std, y) of energies and force components, and per-atom force (std, error), on held-out LJ13."""
    from jaxiap.descriptors.radial import RadialBasis
    from jaxiap.inference.solvers import get_solver
    from jaxiap.potentials.linear import LinearBasis, design_matrix
    from jaxiap.structures import from_positions
    from jaxiap.systems.lj import icosahedron, lj_energy
    from jaxiap.systems.oracle import JaxOracle, label

    rng = np.random.default_rng(3)
    pos = icosahedron()[None] * rng.uniform(0.97, 1.08, (40, 1, 1)) + 0.08 * rng.normal(size=(40, 13, 3))
    ds = label(JaxOracle(lj_energy), from_positions(pos))
    train = jax.tree_util.tree_map(lambda a: a[:20], ds)
    test = jax.tree_util.tree_map(lambda a: a[20:], ds)
    basis = LinearBasis(RadialBasis("chebyshev", 4, 0.8, 3.0))
    post = get_solver("committee", n_samples=8)(design_matrix(basis, train), key=jax.random.key(0))
    p = post.predict_structures(test.structures, basis=basis)
    f = m.force_uq_arrays(p.forces, p.forces_std, test.forces, test.structures.mask)
    return {"energy": (np.asarray(p.energy), np.asarray(p.energy_std), np.asarray(test.energy)),
            "forces": f["component"], "atom": f["atom"]}


def _all_sets(real_sets):
    return _random_sets() + [real_sets["energy"], real_sets["forces"]]


def test_calibration_metrics_equal_uncertainty_toolbox(real_sets):
    """Miscalibration area (toolbox defaults: 100 bins, centred intervals), NLL and sharpness to 1e-6."""
    for mean, std, y in _all_sets(real_sets):
        assert abs(m.miscalibration_area(mean, std, y) - uct.metrics_calibration.miscalibration_area(mean, std, y)) \
            <= 1e-6
        assert abs(m.gaussian_nll(mean, std, y) - uct.metrics_scoring_rule.nll_gaussian(mean, std, y)) <= 1e-6
        assert abs(m.sharpness(std) - uct.metrics_calibration.sharpness(std)) <= 1e-6
        expected, observed = m.calibration_curve(mean, std, y)
        exp_t, obs_t = uct.metrics_calibration.get_proportion_lists_vectorized(mean, std, y)
        np.testing.assert_allclose(expected, exp_t, atol=1e-12)
        np.testing.assert_allclose(observed, obs_t, atol=1e-12)
    # a perfectly calibrated large sample has a small area, an overconfident one a large area
    rng = np.random.default_rng(0)
    s = rng.uniform(0.5, 2.0, 20000)
    y = s * rng.standard_normal(20000)
    assert m.miscalibration_area(np.zeros_like(y), s, y) < 0.01
    assert m.miscalibration_area(np.zeros_like(y), 0.2 * s, y) > 0.3


def test_ranking_metrics_equal_scipy_and_scikit_learn(real_sets):
    """Spearman (scipy) and ROC-AUC (scikit-learn) to 1e-12, ties included; energies and per-atom forces."""
    sets = [(s, np.abs(y - mu)) for mu, s, y in _all_sets(real_sets)] + [real_sets["atom"]]
    for std, err in sets:
        assert abs(m.spearman(std, err) - stats.spearmanr(std, err).statistic) <= 1e-12
        for threshold in (None, float(np.median(err))):
            cut = np.percentile(err, 90) if threshold is None else threshold
            ref = sk_metrics.roc_auc_score(err > cut, std)
            assert abs(m.roc_auc(std, err, threshold) - ref) <= 1e-12


def test_nll_recalibration_dispersion_and_ence_by_hand():
    """Hand-computed values on a 4-point case; the recalibration scale minimises the NLL."""
    mean = np.array([0.0, 1.0, 2.0, 3.0])
    std = np.array([0.5, 1.0, 1.0, 2.0])
    y = np.array([0.5, 0.0, 2.5, 3.0])
    z2 = np.array([1.0, 1.0, 0.25, 0.0])
    nll = np.mean(0.5 * np.log(2 * np.pi * std**2) + 0.5 * z2)
    assert abs(m.gaussian_nll(mean, std, y) - nll) <= 1e-14
    k = np.sqrt(z2.mean())
    assert abs(m.recalibration_scale(mean, std, y) - k) <= 1e-14
    best = m.recalibrated_nll(mean, std, y)
    for kk in (0.9 * k, 1.1 * k):
        assert m.recalibrated_nll(mean, std, y, scale=kk) > best
    assert abs(m.coefficient_of_variation(std) - np.std(std, ddof=1) / np.mean(std)) <= 1e-14
    # ENCE with 2 bins: sorted stds (0.5, 1) | (1, 2), errors (0.5, 1) | (0.5, 0)
    rmv = np.sqrt([(0.25 + 1) / 2, (1 + 4) / 2])
    rmse = np.sqrt([(0.25 + 1) / 2, (0.25 + 0) / 2])
    assert abs(m.ence(std, np.abs(y - mean), n_bins=2) - np.mean(np.abs(rmv - rmse) / rmv)) <= 1e-14
    out = m.uq_metrics(mean, std, y, error_threshold=0.6, ence_bins=2)
    assert out["roc_auc"] == pytest.approx(m.roc_auc(std, np.abs(y - mean), 0.6))
    assert set(out) >= {"spearman", "roc_auc", "miscalibration_area", "nll", "recalibrated_nll", "sharpness",
                        "coefficient_of_variation", "ence"}


def test_bad_inputs_name_the_input():
    with pytest.raises(JaxiapInputError, match="std must be > 0"):
        m.gaussian_nll([0.0, 1.0], [0.0, 1.0], [0.0, 1.0])
    with pytest.raises(JaxiapInputError, match="same length"):
        m.spearman([1.0, 2.0], [1.0])
    with pytest.raises(JaxiapInputError, match="threshold"):
        m.roc_auc([1.0, 2.0], [0.1, 0.2], threshold=5.0)
    with pytest.raises(JaxiapInputError, match="non-finite"):
        m.sharpness([1.0, np.nan])
