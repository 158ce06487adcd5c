"""Does the GP's own error estimate track its test error? FLARE's Fig. 2 study on EMT-labelled FCC Al.

Vandermause et al., npj Comput. Mater. 6, 20 (2020), Fig. 2 (docs/science.md
section 8, FLARE), with ASE's EMT calculator in place of DFT. Structures: the
32-atom cubic FCC Al cell (a = 4.046 Å, :func:`jaxiap.systems.aluminium.al_fcc`)
with every Cartesian coordinate displaced by an independent uniform random
number in [-delta a, delta a] ("randomly perturbed by up to delta of the
lattice parameter"), labelled by EMT (:func:`perturbed_al`).

- :func:`cutoff_sweep` (Fig. 2a): train on all 96 force components of ONE
  structure (delta = 5%), optimise (sig2, l2[, sig3, l3], sigma_n) by the
  log marginal likelihood (:func:`~jaxiap.potentials.gp_train.optimize_hyperparameters`),
  test on independent structure(s). 2-body models sweep r_cut; 2+3-body
  models hold r_cut (6 Å) and sweep r_cut_3. Claim: the optimised noise
  sigma_n tracks the test force RMSE.
- :func:`perturbation_sweep` (Fig. 2c): train on one delta = 5% structure,
  test on structures with delta = 1% ... 9%: the test RMSE, the mean
  predicted variance V_mean (epistemic, noise excluded) and the combined error
  sqrt(sigma_n^2 + V_mean) should rise together.
- :func:`learning_curve` (Fig. 2b): add the training atoms one at a time
  (re-optimising at the recorded sizes): RMSE against sqrt(sigma_n^2 + V_mean).

Every function returns plain dicts / lists (JSON-able);
:func:`error_tracking_study` runs the parts named in its settings and adds
Pearson correlations (:func:`pearson`); :func:`report_markdown` formats it.
Capacities of the environments (neighbour, triplet-neighbour and triplet
slots) come from exact counts on the structures used plus a margin
(:func:`environment_capacities`), so no capacity overflows and none is
oversized (the kernel cost grows with the square of the slot counts).
Units: eV, Å; RMSE, sigma_n and the error estimates are per force
component, eV/Å.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable

import numpy as np

from jaxiap.descriptors.environments import image_shifts
from jaxiap.errors import JaxiapInputError
from jaxiap.potentials.gp import GaussianProcess, GPHyperparameters, GPSettings
from jaxiap.potentials.gp_train import BOUNDS, free_hyperparameters, optimize_hyperparameters
from jaxiap.systems.aluminium import AL_LATTICE, al_fcc


@dataclasses.dataclass(frozen=True)
class ErrorTrackingSettings:
    """Sizes of the study (defaults: the full run, ~7 min on 2 loaded cores; :func:`quick_settings`: ~2 min).

    r_cuts_2: 2-body cutoffs of the 2-body-only models (Å); r_cut_fixed: the
    2-body cutoff of the 2+3-body models; r_cuts_3: their 3-body cutoffs;
    train_delta: perturbation of the training structure (fraction of a);
    test_deltas: perturbations of the test structures of the perturbation
    sweep; n_test: independent test structures per perturbation (their force
    components are pooled); perturbation_model / curve_model: (r_cut, r_cut_3
    or None) of the models of the perturbation sweep and learning curve;
    curve_sizes: numbers of training atoms at which the learning curve
    re-optimises and records (empty: no learning curve); max_iterations:
    L-BFGS-B iterations per optimisation; optimizer: "plain" (one
    :func:`~jaxiap.potentials.gp_train.optimize_hyperparameters` call, staged
    only if it did not move) or "staged" (:func:`optimize_in_stages`);
    margin: extra environment slots
    beyond the exact counts; seed: structures are reproducible from it.
    """

    r_cuts_2: tuple = (3.5, 4.0, 4.5, 5.0, 5.5, 6.0, 6.5, 7.0)
    r_cut_fixed: float = 6.0
    r_cuts_3: tuple = (3.0, 3.5, 4.0, 4.5)
    train_delta: float = 0.05
    test_deltas: tuple = (0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.09)
    n_test: int = 1
    perturbation_model: tuple = (6.0, 3.5)
    curve_model: tuple = (5.0, None)
    curve_sizes: tuple = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)
    max_iterations: int = 50
    optimizer: str = "plain"
    margin: int = 2
    seed: int = 0

    def __post_init__(self):
        for name in ("r_cuts_2", "r_cuts_3", "test_deltas", "curve_sizes"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        for name in ("train_delta", "r_cut_fixed"):
            v = getattr(self, name)
            if not (np.isfinite(v) and v > 0):
                raise JaxiapInputError(f"ErrorTrackingSettings: {name}={v!r} must be positive")
        if any(not (np.isfinite(d) and d >= 0) for d in self.test_deltas):
            raise JaxiapInputError(f"ErrorTrackingSettings: test_deltas={self.test_deltas} must be >= 0")
        if any(r > self.r_cut_fixed for r in self.r_cuts_3):
            raise JaxiapInputError(
                f"ErrorTrackingSettings: r_cuts_3={self.r_cuts_3} must not exceed r_cut_fixed={self.r_cut_fixed}")
        if any(not (1 <= int(s) <= 32) for s in self.curve_sizes):
            raise JaxiapInputError(f"ErrorTrackingSettings: curve_sizes={self.curve_sizes} must be in 1..32 atoms")
        if self.optimizer not in ("plain", "staged"):
            raise JaxiapInputError(f"ErrorTrackingSettings: optimizer={self.optimizer!r} must be 'plain' or 'staged'")
        for name in ("n_test", "max_iterations"):
            if int(getattr(self, name)) < 1:
                raise JaxiapInputError(f"ErrorTrackingSettings: {name} must be >= 1")


def quick_settings(**changes) -> ErrorTrackingSettings:
    """A smoke-test size: 2 cutoffs of each kind, 3 perturbations, a 3-point learning curve."""
    base = dict(r_cuts_2=(3.5, 5.0), r_cuts_3=(3.0, 3.5), r_cut_fixed=5.0, test_deltas=(0.01, 0.05, 0.09),
                perturbation_model=(5.0, None), curve_model=(4.5, None), curve_sizes=(1, 4, 16),
                max_iterations=30)
    base.update(changes)
    return ErrorTrackingSettings(**base)


# ----------------------------------------------------------------------------- structures

def perturbed_al(delta: float, seed: int, repeat: int = 2, a: float = AL_LATTICE) -> dict:
    """FCC Al (``al_fcc(repeat)``) with coordinates displaced uniformly in [-delta a, delta a], labelled by EMT.

    Returns a dict: ``positions`` (N, 3) Å, ``cell`` (3, 3) Å, ``forces``
    (N, 3) eV/Å, ``energy`` eV, ``delta``, ``seed``.
    """
    from ase.calculators.emt import EMT  # lazy: ase only when structures are made

    if not (np.isfinite(delta) and delta >= 0):
        raise JaxiapInputError(f"perturbed_al: delta={delta!r} must be a fraction >= 0 of the lattice parameter")
    rng = np.random.default_rng(seed)
    atoms = al_fcc(repeat, a)
    atoms.positions = atoms.positions + rng.uniform(-delta * a, delta * a, size=atoms.positions.shape)
    atoms.calc = EMT()
    forces = np.asarray(atoms.get_forces())
    energy = float(atoms.get_potential_energy())
    return dict(positions=np.asarray(atoms.positions), cell=np.asarray(atoms.cell[:]), forces=forces,
                energy=energy, delta=float(delta), seed=int(seed))


def environment_capacities(structures, r_cut: float, r_cut_3: float | None = None, margin: int = 2) -> dict:
    """Exact per-atom maxima over ``structures`` of the environment counts, plus ``margin``.

    Returns ``max_neighbors`` (neighbours within r_cut, all periodic images),
    ``max_triplet_neighbors`` (neighbours within r_cut_3) and
    ``max_triplets`` (pairs j < k with r_ij, r_ik, r_jk < r_cut_3), as
    :class:`~jaxiap.potentials.gp.GPSettings` wants them (r_cut_3 None: the
    triplet capacities are 1).
    """
    n_nb, n_3, n_t = 0, 0, 0
    for s in structures:
        pos, cell = np.asarray(s["positions"], float), np.asarray(s["cell"], float)
        pos = pos - np.floor(pos @ np.linalg.inv(cell)) @ cell  # wrapped, as the GP's environments are
        offsets = image_shifts(cell, r_cut) @ cell
        cand = (pos[None, :, None, :] + offsets[None, None, :, :] - pos[:, None, None, :]).reshape(len(pos), -1, 3)
        d2 = np.sum(cand**2, -1)
        real = d2 > 1e-12
        n_nb = max(n_nb, int(np.max(np.sum(real & (d2 < r_cut**2), axis=1))))
        if r_cut_3 is None:
            continue
        for i in range(len(pos)):
            v = cand[i][real[i] & (d2[i] < r_cut_3**2)]
            n_3 = max(n_3, len(v))
            if len(v) > 1:
                djk = np.sum((v[:, None] - v[None, :]) ** 2, -1)
                n_t = max(n_t, int(np.sum(np.triu(djk < r_cut_3**2, k=1))))
    extra = int(margin)
    if r_cut_3 is None:
        return dict(max_neighbors=n_nb + extra, max_triplet_neighbors=1, max_triplets=1)
    return dict(max_neighbors=n_nb + extra, max_triplet_neighbors=n_3 + extra,
                max_triplets=n_t + 4 * extra)


def gp_settings(structures, r_cut: float, r_cut_3: float | None, margin: int = 2) -> GPSettings:
    """:class:`GPSettings` of the cutoffs with the capacities of :func:`environment_capacities`."""
    return GPSettings(r_cut=float(r_cut), r_cut_3=None if r_cut_3 is None else float(r_cut_3),
                      **environment_capacities(structures, r_cut, r_cut_3, margin))


# ----------------------------------------------------------------------------- one model

def initial_hyperparameters(gp: GaussianProcess, force_std: float, l2: float = 1.0, l3: float = 1.0,
                            three_body_share: float = 0.3, noise_share: float = 0.1) -> GPHyperparameters:
    """Start of the optimisation, scaled to the data: prior force std of the 2-body (3-body) part
    = force_std (three_body_share * force_std), noise = noise_share * force_std.

    The signal variances carry the cutoff units (the quadratic cutoff makes
    the unit-signal kernel grow like r_cut^4 per pair), so a fixed start would
    be orders of magnitude off at some cutoffs.
    """
    tiny = 1e-12
    f_idx = [i for i, r in enumerate(gp._rows) if r.kind == 0]
    k2 = np.diag(gp.kernel_matrix(GPHyperparameters(sig2=1.0, l2=l2, sig3=tiny, l3=l3, noise=tiny)))[f_idx]
    sig2 = force_std / np.sqrt(max(np.mean(k2), 1e-300))
    sig3 = 0.1
    if gp.settings.three_body:
        k3 = np.diag(gp.kernel_matrix(GPHyperparameters(sig2=tiny, l2=l2, sig3=1.0, l3=l3, noise=tiny)))[f_idx]
        sig3 = three_body_share * force_std / np.sqrt(max(np.mean(k3), 1e-300))
    return GPHyperparameters(sig2=float(sig2), l2=l2, sig3=float(sig3), l3=l3, noise=noise_share * force_std)


def optimize_in_stages(gp: GaussianProcess, max_iterations: int = 50, radius: float = 1.0,
                       max_stages: int = 12) -> dict:
    """:func:`optimize_hyperparameters` inside a moving trust box of +-``radius`` in log space around the
    current hyperparameters, re-centred while the optimum lands on the box (at most ``max_stages`` times).

    Why: from a start with a steep gradient, L-BFGS-B's first trial point is
    the projected steepest-descent step, which can land on the global bounds
    (noise 1e-4, l2 0.05 Å) where K + noise is numerically not positive
    definite. The objective retries such a K with a jitter (since commit
    52b1760) and otherwise returns 1e30 with a zero gradient; then the line
    search falls back to the start and scipy reports convergence there, so the
    hyperparameters never move (what happened before the jitter retry, from
    the data-scaled start of :func:`initial_hyperparameters`). A box of +-1
    in log space keeps every trial point well conditioned. A stage that does
    not move at all halves the box.
    Returns the last stage's dict plus ``stages`` and the total ``evaluations``.
    """
    names = free_hyperparameters(gp)
    total, stages, res = 0, 0, None
    while stages < max_stages:
        x = np.log([getattr(gp.hyperparameters, n) for n in names])
        box = {n: (max(BOUNDS[n][0], float(np.exp(v - radius))), min(BOUNDS[n][1], float(np.exp(v + radius))))
               for n, v in zip(names, x)}
        res = optimize_hyperparameters(gp, names=names, max_iterations=max_iterations, bounds=box)
        total += res["evaluations"]
        stages += 1
        y = np.log([getattr(gp.hyperparameters, n) for n in names])
        if np.allclose(x, y, rtol=0.0, atol=1e-9):   # did not move (exp/log round trips differ by ulps)
            if radius < 0.1:
                break
            radius /= 2
            continue
        on_edge = any((abs(v - np.log(box[n][0])) < 1e-6 and box[n][0] > BOUNDS[n][0])
                      or (abs(v - np.log(box[n][1])) < 1e-6 and box[n][1] < BOUNDS[n][1])
                      for n, v in zip(names, y))
        if not on_edge:
            break
    return {**res, "evaluations": total, "stages": stages}


def optimize(gp: GaussianProcess, max_iterations: int = 50, method: str = "plain") -> dict:
    """Maximise the log marginal likelihood: "plain" = one :func:`optimize_hyperparameters` call over the
    default names, followed by :func:`optimize_in_stages` only if it did not move; "staged" = stages only.
    Returns the optimiser's dict with ``evaluations`` (all calls) and ``stages`` (calls)."""
    if method == "staged":
        return optimize_in_stages(gp, max_iterations)
    names = free_hyperparameters(gp)
    x = np.log([getattr(gp.hyperparameters, n) for n in names])
    res = optimize_hyperparameters(gp, names=names, max_iterations=max_iterations)
    y = np.log([getattr(gp.hyperparameters, n) for n in names])
    if not np.allclose(x, y, rtol=0.0, atol=1e-9):
        return {**res, "stages": 1}
    more = optimize_in_stages(gp, max_iterations)
    return {**more, "evaluations": res["evaluations"] + more["evaluations"], "stages": 1 + more["stages"]}


def _test_errors(gp: GaussianProcess, tests) -> dict:
    """Pooled force RMSE, mean predicted variance V_mean and max std over the test structures."""
    err, var = [], []
    for s in tests:
        p = gp.predict(s["positions"], s["cell"], energy_std=False)
        err.append((p["forces"] - s["forces"]).ravel())
        var.append((p["forces_std"] ** 2).ravel())
    err, var = np.concatenate(err), np.concatenate(var)
    sigma_n = float(gp.hyperparameters.noise)
    v_mean = float(np.mean(var))
    return dict(rmse=float(np.sqrt(np.mean(err**2))), mae=float(np.mean(np.abs(err))), v_mean=v_mean,
                std_mean=float(np.mean(np.sqrt(var))), std_max=float(np.sqrt(np.max(var))),
                combined=float(np.sqrt(sigma_n**2 + v_mean)))


def fit_and_test(train, tests, r_cut: float, r_cut_3: float | None, *, atoms=None, max_iterations: int = 50,
                 margin: int = 2, capacity_structures=None, return_gp: bool = False, optimizer: str = "plain"):
    """Train a GP on the forces of ``train`` (all atoms, or ``atoms``), optimise, test on ``tests``.

    ``capacity_structures``: the structures the capacities are counted on
    (default train + tests). Returns a dict of the settings, the optimised
    hyperparameters, the log marginal likelihood, the test errors
    (:func:`_test_errors`: rmse, v_mean, combined, ...), sigma_n and timings
    (s); with ``return_gp`` the pair (dict, the trained GaussianProcess).
    """
    t0 = time.perf_counter()
    cap = [train, *tests] if capacity_structures is None else list(capacity_structures)
    settings = gp_settings(cap, r_cut, r_cut_3, margin)
    gp = GaussianProcess(settings)
    gp.add(train["positions"], train["cell"], forces=train["forces"], atoms=atoms)
    used = np.asarray(train["forces"]) if atoms is None else np.asarray(train["forces"])[np.atleast_1d(atoms)]
    gp.set_hyperparameters(initial_hyperparameters(gp, float(np.std(used))))
    t1 = time.perf_counter()
    opt = optimize(gp, max_iterations, optimizer)
    t2 = time.perf_counter()
    errors = _test_errors(gp, tests)
    t3 = time.perf_counter()
    hyp = gp.hyperparameters
    row = dict(r_cut=float(r_cut), r_cut_3=None if r_cut_3 is None else float(r_cut_3),
                model="2-body" if r_cut_3 is None else "2+3-body", n_train_atoms=gp.n_force_atoms,
                capacities=dict(max_neighbors=settings.max_neighbors,
                                max_triplet_neighbors=settings.max_triplet_neighbors,
                                max_triplets=settings.max_triplets),
                hyperparameters=dict(sig2=hyp.sig2, l2=hyp.l2, sig3=hyp.sig3, l3=hyp.l3, noise=hyp.noise),
                sigma_n=float(hyp.noise), log_marginal_likelihood=opt["log_marginal_likelihood"],
                evaluations=opt["evaluations"], stages=opt["stages"], message=opt["message"], **errors,
                time_setup=t1 - t0, time_optimize=t2 - t1, time_predict=t3 - t2)
    return (row, gp) if return_gp else row


# ----------------------------------------------------------------------------- the three parts

def structures_for(settings: ErrorTrackingSettings) -> dict:
    """The training structure and the test structures (independent seeds derived from ``settings.seed``)."""
    s = settings.seed * 1000
    train = perturbed_al(settings.train_delta, s)
    cutoff_tests = [perturbed_al(settings.train_delta, s + 1 + k) for k in range(settings.n_test)]
    by_delta = {d: [perturbed_al(d, s + 100 + 10 * j + k) for k in range(settings.n_test)]
                for j, d in enumerate(settings.test_deltas)}
    return dict(train=train, cutoff_tests=cutoff_tests, delta_tests=by_delta)


def _log(progress, msg):
    if progress is not None:
        progress(msg)


def cutoff_sweep(settings: ErrorTrackingSettings, structures=None, progress: Callable | None = None) -> list[dict]:
    """Fig. 2a: one row per model (2-body at each r_cuts_2, then 2+3-body at r_cut_fixed and each r_cuts_3)."""
    st = structures_for(settings) if structures is None else structures
    models = [(rc, None) for rc in settings.r_cuts_2] + [(settings.r_cut_fixed, r3) for r3 in settings.r_cuts_3]
    rows = []
    for rc, r3 in models:
        row = fit_and_test(st["train"], st["cutoff_tests"], rc, r3, max_iterations=settings.max_iterations,
                           margin=settings.margin, optimizer=settings.optimizer)
        rows.append(row)
        _log(progress, f"cutoff sweep: {row['model']} r_cut={rc} r_cut_3={r3}: sigma_n={row['sigma_n']:.4f} "
                       f"rmse={row['rmse']:.4f} eV/Å ({row['time_optimize']:.1f} s optimise, "
                       f"{row['evaluations']} evaluations in {row['stages']} stages)")
    return rows


def perturbation_sweep(settings: ErrorTrackingSettings, structures=None,
                       progress: Callable | None = None) -> dict:
    """Fig. 2c: one model trained on the delta = train_delta structure, tested at each of test_deltas."""
    st = structures_for(settings) if structures is None else structures
    rc, r3 = settings.perturbation_model
    tests_all = [s for ts in st["delta_tests"].values() for s in ts]
    fit, model = fit_and_test(st["train"], st["cutoff_tests"], rc, r3, max_iterations=settings.max_iterations,
                              margin=settings.margin, return_gp=True, optimizer=settings.optimizer,
                              capacity_structures=[st["train"], *st["cutoff_tests"], *tests_all])
    rows = []
    for d, ts in st["delta_tests"].items():
        e = _test_errors(model, ts)
        force_rms = float(np.sqrt(np.mean(np.concatenate([np.ravel(s["forces"]) for s in ts]) ** 2)))
        rows.append(dict(delta=float(d), sigma_n=fit["sigma_n"], force_rms=force_rms, **e))
        _log(progress, f"perturbation sweep: delta={d:.0%}: rmse={e['rmse']:.4f} V_mean={e['v_mean']:.3g} "
                       f"combined={e['combined']:.4f} eV/Å")
    return dict(model=fit, rows=rows)


def learning_curve(settings: ErrorTrackingSettings, structures=None, progress: Callable | None = None) -> list[dict]:
    """Fig. 2b: training atoms added one at a time (FLARE's incremental update); at each of ``curve_sizes``
    the hyperparameters are re-optimised (warm start) and the test errors recorded."""
    st = structures_for(settings) if structures is None else structures
    if not settings.curve_sizes:
        return []
    rc, r3 = settings.curve_model
    train, tests = st["train"], st["cutoff_tests"]
    gs = gp_settings([train, *tests], rc, r3, settings.margin)
    order = np.random.default_rng(settings.seed + 7).permutation(len(train["positions"]))
    gp = GaussianProcess(gs)
    sizes = sorted(set(int(s) for s in settings.curve_sizes))
    rows, started = [], False
    for k in range(1, sizes[-1] + 1):
        gp.add(train["positions"], train["cell"], forces=train["forces"], atoms=[int(order[k - 1])])
        if not started:
            gp.set_hyperparameters(initial_hyperparameters(gp, float(np.std(train["forces"]))))
            started = True
        if k not in sizes:
            gp.update()
            continue
        t0 = time.perf_counter()
        opt = optimize(gp, settings.max_iterations, settings.optimizer)
        e = _test_errors(gp, tests)
        rows.append(dict(n_atoms=k, sigma_n=float(gp.hyperparameters.noise),
                         hyperparameters=opt["hyperparameters"], time=time.perf_counter() - t0, **e))
        _log(progress, f"learning curve: {k} atoms: rmse={e['rmse']:.4f} combined={e['combined']:.4f} "
                       f"sigma_n={gp.hyperparameters.noise:.4f} eV/Å")
    return rows


# ----------------------------------------------------------------------------- study and report

def pearson(x, y) -> float:
    """Pearson correlation of two sequences (nan with fewer than 2 points or a constant one)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if x.size < 2 or np.std(x) == 0 or np.std(y) == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def spearman(x, y) -> float:
    """Spearman rank correlation (Pearson of the ranks; no ties expected in continuous data)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    return pearson(np.argsort(np.argsort(x)), np.argsort(np.argsort(y)))


def error_tracking_study(settings: ErrorTrackingSettings | None = None, parts=("cutoff", "perturbation", "curve"),
                         progress: Callable | None = None) -> dict:
    """Run the named parts; returns ``settings``, ``cutoff`` (rows), ``perturbation`` (model, rows),
    ``learning_curve`` (rows), ``correlations`` (Pearson, and Spearman's rank correlation
    under keys ending in ", rank") and ``timing`` (s per part)."""
    settings = ErrorTrackingSettings() if settings is None else settings
    unknown = set(parts) - {"cutoff", "perturbation", "curve"}
    if unknown:
        raise JaxiapInputError(f"error_tracking_study: unknown parts {sorted(unknown)}")
    timing = {}
    t = time.perf_counter()
    st = structures_for(settings)
    timing["structures"] = time.perf_counter() - t
    out = dict(settings=dataclasses.asdict(settings), cutoff=[], perturbation=None, learning_curve=[])
    corr = {}

    def correlate(name, x, y):
        corr[name] = pearson(x, y)
        corr[name + ", rank"] = spearman(x, y)

    if "cutoff" in parts:
        t = time.perf_counter()
        out["cutoff"] = cutoff_sweep(settings, st, progress)
        timing["cutoff"] = time.perf_counter() - t
        for model in ("2-body", "2+3-body"):
            rows = [r for r in out["cutoff"] if r["model"] == model]
            correlate(f"sigma_n vs rmse, {model} cutoffs", [r["sigma_n"] for r in rows], [r["rmse"] for r in rows])
        correlate("sigma_n vs rmse, all cutoff models", [r["sigma_n"] for r in out["cutoff"]],
                  [r["rmse"] for r in out["cutoff"]])
    if "perturbation" in parts:
        t = time.perf_counter()
        out["perturbation"] = perturbation_sweep(settings, st, progress)
        timing["perturbation"] = time.perf_counter() - t
        rows = out["perturbation"]["rows"]
        correlate("combined vs rmse, perturbations", [r["combined"] for r in rows], [r["rmse"] for r in rows])
        correlate("V_mean vs rmse^2, perturbations", [r["v_mean"] for r in rows], [r["rmse"] ** 2 for r in rows])
    if "curve" in parts and settings.curve_sizes:
        t = time.perf_counter()
        out["learning_curve"] = learning_curve(settings, st, progress)
        timing["curve"] = time.perf_counter() - t
        rows = out["learning_curve"]
        correlate("combined vs rmse, learning curve", [r["combined"] for r in rows], [r["rmse"] for r in rows])
    out["correlations"] = corr
    out["timing"] = timing
    return out


def _f(x, fmt="{:.4f}"):
    return "-" if x is None else fmt.format(x)


def report_markdown(result: dict) -> str:
    """Markdown tables of an :func:`error_tracking_study` result (eV/Å per force component)."""
    lines = []
    if result.get("cutoff"):
        lines += ["### Fig. 2a: optimised noise sigma_n and test RMSE against the cutoffs", "",
                  "| model | r_cut (Å) | r_cut_3 (Å) | slots (nb / nb3 / trip) | sigma_n | test RMSE | "
                  "sigma_n / RMSE | sqrt(V_mean) | combined | l2 | l3 | sig3 | LML | optimise (s) |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in result["cutoff"]:
            c, h = r["capacities"], r["hyperparameters"]
            three = r["r_cut_3"] is not None
            lines.append(
                f"| {r['model']} | {r['r_cut']:.2f} | {_f(r['r_cut_3'], '{:.2f}')} | "
                f"{c['max_neighbors']} / {c['max_triplet_neighbors'] if three else '-'} / "
                f"{c['max_triplets'] if three else '-'} | {r['sigma_n']:.4f} | {r['rmse']:.4f} | "
                f"{r['sigma_n'] / r['rmse']:.2f} | {np.sqrt(r['v_mean']):.4f} | {r['combined']:.4f} | "
                f"{h['l2']:.3g} | {_f(h['l3'] if three else None, '{:.3g}')} | "
                f"{_f(h['sig3'] if three else None, '{:.3g}')} | {r['log_marginal_likelihood']:.1f} | "
                f"{r['time_optimize']:.1f} |")
        lines.append("")
    pert = result.get("perturbation")
    if pert:
        m = pert["model"]
        lines += [f"### Fig. 2c: trained on one delta = {result['settings']['train_delta']:.0%} structure "
                  f"({m['model']}, r_cut {m['r_cut']} Å, r_cut_3 {m['r_cut_3']}; sigma_n = {m['sigma_n']:.4f}), "
                  "tested at delta", "",
                  "| delta | force RMS | test RMSE | sqrt(V_mean) | combined sqrt(sigma_n^2 + V_mean) | "
                  "combined / RMSE | max std |", "|---|---|---|---|---|---|---|"]
        for r in pert["rows"]:
            lines.append(f"| {r['delta']:.0%} | {r['force_rms']:.3f} | {r['rmse']:.4f} | {np.sqrt(r['v_mean']):.4f} | "
                         f"{r['combined']:.4f} | {r['combined'] / r['rmse']:.2f} | {r['std_max']:.4f} |")
        lines.append("")
    if result.get("learning_curve"):
        lines += ["### Fig. 2b: learning curve (atoms of the training structure added one at a time)", "",
                  "| training atoms | sigma_n | test RMSE | sqrt(V_mean) | combined | combined / RMSE |",
                  "|---|---|---|---|---|---|"]
        for r in result["learning_curve"]:
            lines.append(f"| {r['n_atoms']} | {r['sigma_n']:.4f} | {r['rmse']:.4f} | {np.sqrt(r['v_mean']):.4f} | "
                         f"{r['combined']:.4f} | {r['combined'] / r['rmse']:.2f} |")
        lines.append("")
    if result.get("correlations"):
        lines += ["### Correlations (Pearson r; \", rank\": Spearman)", "", "| pair | r |", "|---|---|"]
        lines += [f"| {k} | {v:.3f} |" for k, v in result["correlations"].items()]
        lines.append("")
    return "\n".join(lines)
