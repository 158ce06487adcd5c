"""The FLARE Fig. 2 error-tracking workflow at its smallest size (jaxiap.workflows.gp_error_tracking)."""

import numpy as np

from jaxiap.workflows import gp_error_tracking as et


def test_capacities_are_exact_counts():
    s = et.perturbed_al(0.0, 0)
    caps = et.environment_capacities([s], 3.5, 3.0, margin=0)
    # perfect FCC: 12 nearest neighbours (2.86 Å) within 3.5 Å and 3.0 Å; each pair of them at 2.86 Å
    # forms a triplet: 12 * 4 / 2 = 24
    assert caps == dict(max_neighbors=12, max_triplet_neighbors=12, max_triplets=24)


def test_error_tracking_smallest():
    # one 2-body model (r_cut 3.5 Å, first shell): trained and optimised once, tested at delta = 5% (its
    # fit row, as in the cutoff sweep) and at 1% and 9%
    settings = et.quick_settings(r_cuts_2=(), r_cuts_3=(), test_deltas=(0.01, 0.09),
                                 perturbation_model=(3.5, None), curve_sizes=(), max_iterations=20)
    res = et.error_tracking_study(settings, parts=("perturbation",))
    row = res["perturbation"]["model"]
    assert np.isfinite(row["sigma_n"]) and 0 < row["sigma_n"] < 1.0
    assert np.isfinite(row["rmse"]) and row["rmse"] > 0
    # the optimiser moved the noise away from its data-scaled start (0.1 x force std)
    start = 0.1 * float(np.std(et.perturbed_al(settings.train_delta, 1000 * settings.seed)["forces"]))
    assert abs(np.log(row["sigma_n"] / start)) > 0.1
    lo, hi = res["perturbation"]["rows"]
    assert (lo["delta"], hi["delta"]) == (0.01, 0.09)
    assert hi["rmse"] > lo["rmse"] and hi["v_mean"] > lo["v_mean"] > 0
    for r in (lo, hi):
        assert r["combined"] >= r["sigma_n"]
        assert np.isclose(r["combined"] ** 2, r["sigma_n"] ** 2 + r["v_mean"])
    assert "sigma_n" in et.report_markdown(res)
