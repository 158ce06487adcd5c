"""The attack-vs-random study (jaxiap.workflows.attack_study) on a tiny setting."""

import numpy as np
import pytest

import jaxiap  # noqa: F401  (enables float64)
from jaxiap.errors import JaxiapInputError
from jaxiap.workflows.attack_study import AttackStudyConfig, attack_vs_random


@pytest.mark.slow  # a bench workflow (bench/attack_study.py); its pieces are tested in tests/test_biased.py
def test_attack_study_tiny():
    c = AttackStudyConfig(repetitions=1, n_train=6, n_test=6, n_attack=4, attack_steps=40, sample_every=50,
                          burn_in=0)
    out = attack_vs_random(c)
    s = out["summary"]
    print("attack study (tiny):", {k: v for k, v in s.items() if k != "wall_s"})
    assert len(out["repetitions"]) == 1
    for rep in out["repetitions"]:
        # the baseline has exactly the attack's per-structure displacement norms
        assert rep["norm_mismatch"] < 1e-12
        assert len(rep["variance_ratio_attacked"]) == 4 and min(rep["displacement_norm"]) > 0
        assert np.all(np.isfinite(list(rep["force_rmse"].values())))
    # sigma^2 rises for >= 90% of the attacked structures, the true energy stays within 3 attack-kT
    assert s["variance_rose_fraction"] >= 0.9
    assert s["dE_over_kT_attacked"]["max_abs"] < 3.0
    assert s["failed_fits"] == 0
    for k in ("force_rmse_train_only", "force_rmse_attacked", "force_rmse_random", "attacked_minus_random"):
        assert len(s[k]) == 2 and np.isfinite(s[k][0])  # [mean, std]
    with pytest.raises(JaxiapInputError, match="attack_energy"):
        AttackStudyConfig(attack_energy="model")
