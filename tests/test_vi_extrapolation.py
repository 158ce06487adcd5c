"""bench/vi_extrapolation.py --quick (issue 15, "VI underestimates extrapolation"): structure and one inequality."""

import importlib.util
import os
import sys

import numpy as np
import pytest

import jaxiap  # noqa: F401  (float64)


def _load_bench():
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench", "vi_extrapolation.py")
    spec = importlib.util.spec_from_file_location("vi_extrapolation", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow  # CI budget: NUTS, SVI and bootstrap programs (about 20 s); the SVI fits are in test_model_error
def test_quick_study_structure_and_mean_field_underestimates_extrapolation(capsys):
    mod = _load_bench()
    out = mod.main(["--quick"])
    printed = capsys.readouterr().out
    st = out["settings"]
    assert st == mod.QUICK and out["b_lj13"] is None
    # part (a): every method, one entry per seed, finite stds, coverages in [0, 1]
    a = out["a"]
    assert tuple(a) == st.methods_a
    for name, r in a.items():
        for k in ("std_in", "std_out", "cov_in", "cov_out", "ratio_out", "wall"):
            assert r[k].shape == (len(st.seeds_a),), (name, k)
        assert np.all(np.isfinite(r["std_out"])) and np.all(r["std_out"] > 0)
        assert np.all((0 <= r["cov_out"]) & (r["cov_out"] <= 1))
        assert f"| {name} |" in printed
    np.testing.assert_array_equal(a["NUTS"]["ratio_out"], 1.0)
    # the claim, at every seed: mean-field SVI's epistemic std outside the training range is far below NUTS's
    # (full run, 5 seeds: 0.06-0.09 of NUTS, the analytic mean-field optimum 0.06-0.07), while inside it is
    # not (0.97-1.09); the bootstrap ensemble does not share the deficit (0.78-1.12 outside); the quick run
    # (seed 0, short runs, 16 members) measured 0.08, 0.07, 1.05 and 1.18
    assert np.all(a["SVI mean-field"]["ratio_out"] < 0.3)
    assert np.all(a["mean-field optimum (analytic)"]["ratio_out"] < 0.3)
    assert np.all((a["SVI mean-field"]["ratio_in"] > 0.5) & (a["SVI mean-field"]["ratio_in"] < 2))
    assert np.all(a["bootstrap"]["ratio_out"] > 0.5)
    # part (b): the sin^4 model-error rows, coverage in [0, 1], a positive predictive std
    b = out["b_sin4"]
    assert set(b) == {(n, m) for n in st.n_b for m in st.merr_methods}
    for r in b.values():
        assert r["cov95"].shape == (len(st.seeds_b),) and np.all((0 <= r["cov95"]) & (r["cov95"] <= 1))
        assert np.all(r["std"] > 0)
    assert "Part (a)" in printed and "Part (b1)" in printed and "Part (b2)" not in printed
