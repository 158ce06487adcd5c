"""The EMT aluminium accuracy study (jaxiap.workflows.al_accuracy, bench/al_accuracy.py) at a tiny size.

Structures: three EMT-labelled 32-atom FCC cells (one with a vacancy, so one
padded atom), r_cut 3.5 Å. Not the 4-atom cell: the linear bases use the
minimum image, so the cell must be wider than 2 r_cut, and a 4.05 Å cell
would leave r_cut < 2.03 Å, below the nearest-neighbour distance (2.86 Å).

What is checked, each a number that could be wrong:
- (the chain-rule ACE rows equal the generic autodiff rows: tests/test_ace.py);
- a smaller ACE basis equals the label-matched columns of a larger one;
- ACE at body order 2 and the radial basis with the same radial functions
  give the same BLR fit (they span the same space up to the constant
  2 / sqrt(4 pi), which the column scaling removes): log evidence, noise and
  predictions;
- the study's RMSE table equals a direct numpy computation;
- BCS on the QR-compressed system picks the same basis functions as on the
  full rows.
"""

from __future__ import annotations

import numpy as np
import pytest

import jaxiap  # noqa: F401  (float64)
from jaxiap.descriptors.ace import ACEDescriptor
from jaxiap.descriptors.radial import RadialBasis, RadialDescriptor
from jaxiap.inference import compressed
from jaxiap.workflows import al_accuracy as alacc

R_CUT, R_MIN = 3.5, 1.9


@pytest.fixture(scope="module")
def frames():
    from ase.calculators.emt import EMT

    from jaxiap.systems.aluminium import al_fcc

    rng = np.random.default_rng(7)
    out = {"positions": [], "box": [], "energy": [], "forces": [], "category": []}
    for k in range(3):
        atoms = al_fcc(2)
        if k == 2:
            del atoms[5]
        atoms.positions += rng.normal(scale=0.08, size=atoms.positions.shape)
        atoms.calc = EMT()
        out["positions"].append(atoms.get_positions(wrap=True))
        out["box"].append(np.diag(np.asarray(atoms.cell[:])).copy())
        out["energy"].append(float(atoms.get_potential_energy()))
        out["forces"].append(atoms.get_forces())
        out["category"].append("vacancy" if k == 2 else "fcc")
    return out


@pytest.fixture(scope="module")
def dataset(frames):
    return alacc.to_dataset(frames, 32)


@pytest.fixture(scope="module")
def full_ace():
    return ACEDescriptor(n_max=(4, 3, 2), l_max=(2, 1), r_cut=R_CUT, r_min=R_MIN, body_order=4)


@pytest.fixture(scope="module")
def full_rows(full_ace, dataset):
    return alacc.ace_design_rows(full_ace, [dataset], chunk=3)[0]


def test_smaller_basis_is_a_column_subset(full_ace, dataset, full_rows):
    small = ACEDescriptor(n_max=(3, 2), l_max=1, r_cut=R_CUT, r_min=R_MIN, body_order=3)
    cols = alacc.column_subset(full_ace, small)
    direct = alacc.ace_design_rows(small, [dataset], chunk=3)[0]
    np.testing.assert_allclose(full_rows[..., cols], direct, rtol=0, atol=1e-12 * np.abs(direct).max())


def test_body_order_2_fit_equals_radial_fit_and_rmse(frames, dataset):
    n = 4
    radial = alacc.with_count_column(
        alacc.radial_design_rows(RadialDescriptor(RadialBasis("chebyshev", n, R_MIN, R_CUT)), dataset), dataset)
    ace2 = ACEDescriptor(n_max=(n,), l_max=0, r_cut=R_CUT, r_min=R_MIN, body_order=2)
    ace = alacc.with_count_column(alacc.ace_design_rows(ace2, [dataset], chunk=3)[0], dataset)
    # same radial functions: ACE nu = 1 = 2 / sqrt(4 pi) x radial (full vs half pair sums, Y_00)
    np.testing.assert_allclose(ace[..., :n], 2 / np.sqrt(4 * np.pi) * radial[..., :n], atol=1e-12)
    # train on the first two structures, test on all three
    train = dataset[np.arange(2)]
    fr = alacc.fit_linear(radial[:2], train, radial, frames, 32)
    fa = alacc.fit_linear(ace[:2], train, ace, frames, 32)
    assert fr["log_evidence"] == pytest.approx(fa["log_evidence"], rel=1e-9)
    assert fr["sigma_force"] == pytest.approx(fa["sigma_force"], rel=1e-6)
    for cat in ("all", "fcc", "vacancy"):
        for key in ("energy_meV_atom", "force_meV_A"):
            assert fr["test"][cat][key] == pytest.approx(fa["test"][cat][key], rel=1e-7)
    # the RMSE table against numpy
    coef = np.asarray(fr["_result"].posterior.mean)
    y = (radial / fr["_scale"]) @ coef
    n_atoms = np.array([32, 32, 31])
    e_err = (y[:, 0] - np.asarray(frames["energy"])) / n_atoms
    f_err = np.concatenate([(y[k, 1:].reshape(32, 3)[:n_atoms[k]] - frames["forces"][k]).ravel() for k in range(3)])
    assert fr["test"]["all"]["energy_meV_atom"] == pytest.approx(1e3 * np.sqrt(np.mean(e_err**2)), rel=1e-12)
    assert fr["test"]["all"]["force_meV_A"] == pytest.approx(1e3 * np.sqrt(np.mean(f_err**2)), rel=1e-12)
    assert fr["test"]["vacancy"]["force_meV_A"] == pytest.approx(
        1e3 * np.sqrt(np.mean(f_err[-31 * 3:] ** 2)), rel=1e-12)
    assert 1.0 < fr["test"]["all"]["force_meV_A"] < 1e3


def test_bcs_on_compressed_rows_picks_the_same_support(dataset, full_rows):
    from jaxiap.inference.bcs import fit_bcs
    from jaxiap.potentials.linear import design_from_rows

    rows = alacc.with_count_column(full_rows, dataset)
    design = design_from_rows(rows / alacc.column_scale(rows, dataset), dataset)
    a, y, w = (np.asarray(v) for v in design[:3])
    keep = w > 0
    noise = 1e-3
    _, full = fit_bcs(a[keep], y[keep], noise_var=noise, max_iter=300, return_info=True)
    sup, alpha, mean, info = alacc.fit_bcs_support(design, noise, max_iter=300)
    assert 3 <= len(sup) < rows.shape[2]
    np.testing.assert_array_equal(sup, full.support)
    np.testing.assert_allclose(alpha, full.alpha, rtol=1e-3)  # same path; the last re-estimates may differ
    assert np.count_nonzero(mean) == len(sup)


def test_horseshoe_on_compressed_rows():
    """The QR-compressed statistics give the exact weighted residual sum of squares, and the study's horseshoe
    (Gibbs, started away from the truth) recovers a 2-sparse vector of 30: the two signals kept (kappa < 0.5,
    95% intervals excluding 0, means within 0.01), the 28 zeros shrunk (kappa > 0.5, |mean| < 0.01)."""
    rng = np.random.default_rng(5)
    a = rng.normal(size=(200, 30))
    truth = np.zeros(30)
    truth[[0, 3]] = 3.0, -2.0
    w = np.where(np.arange(200) < 190, 1.0, 0.0)
    w[:20] = 4.0
    y = a @ truth + rng.normal(scale=0.1, size=200) / np.sqrt(np.maximum(w, 1.0))
    r, z, n, rss = compressed.compressed_statistics((a, y, w))
    c = rng.normal(size=30)
    keep = w > 0
    direct = np.sum(w[keep] * (y[keep] - a[keep] @ c) ** 2)
    assert n == 190 and rss + np.sum((z - r @ c) ** 2) == pytest.approx(direct, rel=1e-12)
    hs = compressed.fit_horseshoe((a, y, w), method="gibbs", num_warmup=500, n_samples=2000, num_chains=2,
                             init_mean=np.ones(30), init_sigma=1.0)
    np.testing.assert_allclose(hs["mean"][[0, 3]], truth[[0, 3]], atol=0.01)
    zeros = np.delete(np.arange(30), [0, 3])
    assert np.all(np.abs(hs["mean"][zeros]) < 0.01)
    assert hs["n_active"] == 2 and hs["n_interval_excludes_0"] == 2 and np.all(hs["kappa"][zeros] > 0.5)
    assert hs["sigma"] == pytest.approx(0.1, rel=0.15) and hs["diagnostics"]["r_hat_max"] < 1.2
