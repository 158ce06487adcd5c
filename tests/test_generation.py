"""Generated candidates in active learning (jaxiap.active.generators / generator_loop) and the Müller–Brown surface."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxiap.active.generator_loop import Generated, run_generator_loop
from jaxiap.active.generators import GENERATOR_NAMES, GeneratorSettings, make_generator
from jaxiap.errors import JaxiapInputError
from jaxiap.inference.solvers import get_solver
from jaxiap.potentials.linear import LinearBasis
from jaxiap.descriptors.radial import RadialBasis
from jaxiap.systems.lj import lj_energy
from jaxiap.systems.muller_brown import MINIMA, MINIMUM_ENERGIES, SADDLES, muller_brown, nearest_minimum
from jaxiap.systems.oracle import JaxOracle, label
from jaxiap.workflows.lj13_al import valid_candidate
from jaxiap.workflows.lj13_al_config import GENERATOR_NAMES as CONFIG_GENERATORS, LJ13ALConfig


def test_muller_brown_stationary_points():
    """Newton's method from the tabulated points stays there (gradient 0), with the tabulated energies and
    Hessian signatures: 3 minima (both eigenvalues > 0) and 2 saddles (one negative)."""
    g, h = jax.grad(muller_brown), jax.jit(jax.hessian(muller_brown))
    newton = jax.jit(jax.vmap(lambda x: jax.lax.fori_loop(0, 10, lambda _, y: y - jnp.linalg.solve(h(y), g(y)), x)))
    points = np.concatenate([MINIMA, SADDLES])
    for i, (p, x) in enumerate(zip(points, newton(jnp.asarray(points)))):
        assert np.abs(np.asarray(x) - p).max() < 2e-6
        eig = np.linalg.eigvalsh(np.asarray(h(x)))
        assert (eig > 0).all() if i < 3 else (eig[0] < 0 < eig[1])
        if i < 3:
            assert abs(float(muller_brown(x)) - MINIMUM_ENERGIES[i]) < 1e-5
    assert nearest_minimum(MINIMA + 0.05).tolist() == [0, 1, 2]
    assert nearest_minimum(SADDLES).tolist() == [-1, -1]


def test_generator_names_agree_with_the_config():
    assert GENERATOR_NAMES == CONFIG_GENERATORS
    with pytest.raises(JaxiapInputError, match="generator"):
        LJ13ALConfig(generator="nope")
    with pytest.raises(JaxiapInputError, match="n_candidates"):
        LJ13ALConfig(generator="langevin", n_candidates=6)
    with pytest.raises(JaxiapInputError, match="unknown"):
        make_generator("pool", None)


@pytest.fixture(scope="module")
def al_setup(lj13_data):
    train, test = lj13_data
    basis = LinearBasis(RadialBasis("chebyshev", 6, 0.8, 3.0))
    fit = get_solver("blr", prior_precision=1e-2, noise_var=1e-2)
    oracle = JaxOracle(lj_energy)
    initial = label(oracle, train.structures[np.array([0, 17])])
    return basis, fit, oracle, initial


SMALL = GeneratorSettings(every=10, n_equilibrate=10, stein_steps=20, attack_steps=10, n_starts=4)


# langevin, hal and metad share their MD driver with udd (biased_md / block_langevin): slow, to keep CI short
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in ("langevin", "hal", "metad") else n
                                  for n in GENERATOR_NAMES if n != "pool"])
def test_generators_give_finite_candidates_and_count_force_evaluations(al_setup, name):
    basis, fit, oracle, initial = al_setup
    from jaxiap.active.generator_loop import GeneratorContext
    from jaxiap.inference.linear import reweight
    from jaxiap.potentials.linear import design_matrix

    post = fit(reweight(design_matrix(basis, initial), 1.0, 0.0))
    gen = make_generator(name, basis, SMALL)
    out = gen(jax.random.key(1), GeneratorContext(post, basis, initial, 8))
    pos = np.asarray(out.positions)
    assert pos.shape == (8, 13, 3) and np.isfinite(pos).all()
    expected = {"langevin": 4 * (1 + 10 + 2 * 10), "stein": 8 * 20, "udd": 4 * (1 + 2 * 10), "hal": 4 * (1 + 2 * 10),
                "metad": 1 + 8 * 11, "adversarial": 8 * 10}[name]
    assert out.n_force_evals == expected
    # the candidates moved away from the labelled starts (MD, Stein and attacks all displace)
    start = np.asarray(initial.structures.positions)
    assert min(np.abs(pos - s).max() for s in start) > 1e-3


def test_generator_loop_resumes_and_replaces_invalid_candidates(al_setup, tmp_path):
    """A generator that returns a NaN candidate and one with overlapping atoms: both are replaced (logged as
    invalid), the oracle never sees them, and a run resumed from its folder equals an uninterrupted run."""
    basis, fit, oracle, initial = al_setup
    calls = []

    def generate(key, ctx):
        base = np.asarray(ctx.labelled.structures.positions)[-1]
        pos = base + 0.05 * np.asarray(jax.random.normal(key, (ctx.n_candidates,) + base.shape))
        pos[0] = np.nan
        pos[1, 0] = pos[1, 1]  # two atoms on top of each other
        calls.append(1)
        return Generated(pos, 7)

    def checked_oracle(structures):
        assert np.isfinite(np.asarray(structures.positions)).all()
        assert all(valid_candidate(p, 0.8) for p in np.asarray(structures.positions))
        return oracle(structures)

    kw = dict(fit=fit, basis=basis, batch_size=2, n_candidates=8, key=jax.random.key(3), progress=False,
              valid=functools.partial(valid_candidate, r_min=0.8), force_weight=0.0,
              evaluate=lambda p: {"c0": float(np.asarray(p.mean)[0])})
    full = run_generator_loop("uncertainty", generate, initial, checked_oracle, n_iterations=3, **kw)
    assert [r["n_invalid"] for r in full.records][0] == 0
    assert all(r["n_invalid"] >= 2 for r in full.records[1:])
    assert [r["n_force_evals"] for r in full.records] == [0, 7, 14, 21]
    assert full.n_labelled.tolist() == [2, 4, 6, 8]
    part = run_generator_loop("uncertainty", generate, initial, checked_oracle, n_iterations=2,
                              run_dir=tmp_path / "loop", **kw)
    calls.clear()
    resumed = run_generator_loop("uncertainty", generate, initial, checked_oracle, n_iterations=3,
                                 run_dir=tmp_path / "loop", **kw)
    assert len(calls) == 1  # only the missing iteration generated
    np.testing.assert_array_equal(resumed.coefficients, full.coefficients)
    np.testing.assert_array_equal(part.coefficients, full.coefficients[:3])
    np.testing.assert_array_equal(np.asarray(resumed.dataset.structures.positions),
                                  np.asarray(full.dataset.structures.positions))
    with pytest.raises(JaxiapInputError, match="n_candidates"):
        run_generator_loop("random", generate, initial, oracle, **{**kw, "n_candidates": 1}, n_iterations=1)


@pytest.mark.slow  # about 40 s (a kernel, two discovery studies' compilations): kept out of the 15-minute CI run
def test_generation_notebook_runs_tiny(monkeypatch):
    """notebooks/generation.ipynb at tiny size: every cell runs, the figures are drawn, and its numbers hold
    (quadrature to 1e-6, the UDD committee error falling with N_M, the mixture near its moments)."""
    import json

    from notebooks import execute_notebook, outputs_text  # tests/notebooks.py

    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")  # figures as outputs
    nb = execute_notebook("generation.ipynb", size="tiny", timeout=600)
    line = next(s for s in outputs_text(nb).splitlines() if s.startswith("GENERATION_JSON "))
    got = json.loads(line[len("GENERATION_JSON "):])
    assert got["size"] == "tiny"
    assert got["quadrature"]["mean_error"] < 1e-6 and got["quadrature"]["cov_error"] < 1e-6
    assert abs(got["mixture"]["mean"] - 2 / 3) < 0.25 and abs(got["mixture"]["variance"] - 4.556) < 0.9
    assert got["udd_slope"] < -0.3
    assert set(got["muller_brown"]) == {"udd"}
    assert set(got["lj13"]) == {"metad"} and got["lj13"]["metad"] >= 1
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) == 4  # mixture, Müller–Brown trajectories, LJ13 discovery, UDD convergence
