"""Accuracy of linear ACE against the radial basis and the 2+3-body GP on EMT aluminium (issue 16).

Data (:func:`load_data`): EMT-labelled Al (a = 4.046 Å; ASE's ``EMT``), one
Langevin trajectory per category, snapshots every ``spacing_ps``:

- ``fcc_300K``, ``fcc_600K``, ``fcc_900K``: the cubic FCC cell repeated
  ``repeat`` times (3: 108 atoms, 12.14 Å);
- ``vacancy_600K``: the same cell with atom 0 removed (107 atoms);
- ``surface100_600K``: an fcc(100) slab (``slab_size``; default 4 x 4 x 6 =
  96 atoms, 11.44 Å wide, ``vacuum`` Å of vacuum on each side, periodic);
- ``liquid_2500K``: the FCC cell melted at 2500 K at the solid's volume
  (as ``jaxiap.workflows.uq_compare``'s liquid).

Per category the first ``n_train`` snapshots train and the next ``n_test``
test. Labels are energies (eV) and forces (eV/Å); no stresses (the linear
design rows have none). The frames are cached in ``folder`` under a hash of
the data settings, so a rerun reads them back.

Why 108 atoms and not 32: the linear models use the minimum-image
convention (:func:`jaxiap.geometry.check_cell`), so the cell must be wider
than 2 r_cut; the 32-atom cell (8.09 Å) would limit r_cut to 4.05 Å, i.e.
the first neighbour shell, while EMT's interactions reach ~5.4 Å (three
shells). The default r_cut is 5.5 Å.

Models, all on the same training structures:

- radial: :class:`~jaxiap.descriptors.radial.RadialDescriptor` (Chebyshev in
  r_min / r times (1 - r / r_cut)^3) with ``radial_sizes`` functions;
- ACE: :class:`~jaxiap.descriptors.ace.ACEDescriptor` at each (body order,
  n_max, l_max) of ``ace_sizes``. Every entry must be contained in
  ``ace_full``: the bases are column subsets of its design matrix, matched
  by feature label (Chebyshev radial functions do not depend on how many
  there are), so the expensive rows are built once. The exception is a
  body-order-2 block wider than ``ace_full``'s (n_max[0] up to the largest
  radial size): it is taken from the radial rows, since ACE's nu = 1
  features are 2 / sqrt(4 pi) times the radial ones;
- every linear basis gets one more column, the atom count (a per-atom
  reference energy).

Linear fits (:func:`fit_linear`): each column is divided by its RMS over the
training rows (energy and force rows), then type-II maximum-likelihood
Bayesian linear regression (``optimize_hyperparameters``: energy noise,
force noise, isotropic prior scale), whose maximised log evidence is
reported per basis. Sparse choice (:func:`fit_bcs_support`): Bayesian
compressive sensing (fast RVM, ``fit_bcs``) on the ACE basis with the most
columns, on the
rows re-weighted by the BLR noise ratio and with the force noise held at
the BLR value; then BLR on the chosen columns. Horseshoe (:func:`jaxiap.inference.compressed.fit_horseshoe`,
``horseshoe=True``; :func:`run_horseshoe` runs it alone, with the rows of the
largest basis cached by :func:`largest_ace_rows`): the horseshoe prior of
:mod:`jaxiap.inference.sparse` on the same re-weighted, scaled rows,
QR-compressed (``compressed_statistics``: the exact likelihood at K x K
cost), sampled by a Gibbs sampler (``horseshoe_gibbs``; NUTS and SVI
through the library are options, but did not mix at ~500 correlated columns);
"active" coefficients have posterior mean shrinkage kappa_k < 0.5.

GP (:func:`fit_gp`): the 2+3-body GP of ``docs/gp.md`` (r_cut 5.4 Å,
r_cut_3 3.2 Å as in the on-the-fly study), trained on the forces of
``gp_atoms`` random atoms of the first ``gp_structures`` training structures
of every category (hyperparameters by the log marginal likelihood on a
smaller subset, then frozen), tested on the first ``gp_test`` test
structures of every category (its prediction costs seconds per 108-atom
structure); its energies are referenced to the perfect FCC cell (it has no
per-atom constant).

Force design rows of the ACE basis (:func:`ace_design_rows`): the library's
chain-rule rows, :mod:`jaxiap.descriptors.ace_rows` (through the atomic base,
with the sparse derivatives of the invariants written out), which
:func:`jaxiap.potentials.linear.design_matrix` also uses for a single-species
ACE basis; docs/ace.md ("Design rows") has their cost against the generic
autodiff path.

Units: eV, Å; RMSEs in meV/atom (energy) and meV/Å (force components).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from jaxiap.descriptors.ace_rows import ace_structure_rows
from jaxiap.errors import JaxiapInputError
from jaxiap.inference.compressed import _one_blas_thread, compress, fit_horseshoe

#: category -> (kind, temperature K)
CATEGORIES = {
    "fcc_300K": ("bulk", 300.0),
    "fcc_600K": ("bulk", 600.0),
    "fcc_900K": ("bulk", 900.0),
    "vacancy_600K": ("vacancy", 600.0),
    "surface100_600K": ("surface", 600.0),
    "liquid_2500K": ("liquid", 2500.0),
}


@dataclasses.dataclass(frozen=True)
class AccuracySettings:
    """Sizes of the study. Data: ``categories`` (names of :data:`CATEGORIES`), ``repeat`` (FCC cell
    repeats), ``slab_size`` (fcc100 (nx, ny, layers)), ``vacuum`` (Å per side), ``n_train`` / ``n_test``
    snapshots per category, MD ``dt_fs``, ``friction_per_fs``, ``equilibrate_ps`` (``liquid_equilibrate_ps``
    for the liquid), ``spacing_ps``, ``seed``. Models: ``r_cut``, ``r_min`` (Å) of the radial and ACE bases,
    ``radial_sizes``, ``ace_sizes`` ((body order, n_max tuple, l_max tuple), ...), ``ace_full`` (the
    basis whose columns contain every ``ace_sizes`` entry apart from a wider body-order-2 block, which
    comes from the radial rows), ``chunk`` (structures per jitted call of the ACE rows), ``bcs_max_iter``,
    ``bcs_rotations`` (repeats of the BCS search on randomly rotated, mathematically equivalent
    systems); GP: ``gp`` (False: skipped), ``gp_r_cut``, ``gp_r_cut_3``, ``gp_structures``,
    ``gp_atoms``, ``gp_opt_atoms``, ``gp_test``, ``gp_max_iterations`` (see :func:`fit_gp`); horseshoe on the
    largest ACE basis: ``horseshoe`` (False: skipped), ``horseshoe_method`` ("gibbs", "nuts" or "svi"),
    ``horseshoe_warmup`` (burn-in iterations / NUTS warmup), ``horseshoe_samples`` (per chain, before
    thinning), ``horseshoe_chains``, ``horseshoe_thin`` (Gibbs), see :func:`jaxiap.inference.compressed.fit_horseshoe`."""

    categories: tuple = tuple(CATEGORIES)
    repeat: int = 3
    slab_size: tuple = (4, 4, 6)
    vacuum: float = 6.0
    n_train: int = 12
    n_test: int = 6
    dt_fs: float = 2.0
    friction_per_fs: float = 0.01
    equilibrate_ps: float = 1.0
    liquid_equilibrate_ps: float = 3.0
    spacing_ps: float = 0.1
    seed: int = 0
    r_cut: float = 5.5
    r_min: float = 1.9
    radial_sizes: tuple = (4, 8, 12, 16, 24)
    ace_sizes: tuple = (
        (2, (12,), ()),
        (3, (8, 4), (2,)), (3, (10, 6), (3,)), (3, (12, 8), (4,)),
        (4, (8, 4, 2), (2, 2)), (4, (10, 6, 3), (3, 2)), (4, (12, 8, 4), (4, 3)),
        (3, (24, 8), (4,)), (4, (24, 8, 4), (4, 3)),
    )
    ace_full: tuple = (4, (12, 8, 4), (4, 3))
    chunk: int = 4
    bcs_max_iter: int = 1500
    bcs_rotations: int = 3
    gp: bool = True
    gp_r_cut: float = 5.4
    gp_r_cut_3: float | None = 3.2
    gp_structures: int = 2
    gp_atoms: int = 16
    gp_opt_atoms: int = 4
    gp_test: int = 2
    gp_max_iterations: int = 30
    horseshoe: bool = False
    horseshoe_method: str = "gibbs"
    horseshoe_warmup: int = 5000
    horseshoe_samples: int = 20000
    horseshoe_chains: int = 2
    horseshoe_thin: int = 10

    def data_key(self) -> str:
        """Hash of the settings that determine the data (the cache file name)."""
        keys = ("categories", "repeat", "slab_size", "vacuum", "n_train", "n_test", "dt_fs", "friction_per_fs",
                "equilibrate_ps", "liquid_equilibrate_ps", "spacing_ps", "seed")
        blob = json.dumps({k: getattr(self, k) for k in keys}, sort_keys=True, default=list)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def quick_settings(**overrides) -> AccuracySettings:
    """A smoke-test size (32-atom cells, r_cut 3.5 Å, a few snapshots, tiny bases; seconds of compute)."""
    base = dict(repeat=2, slab_size=(3, 3, 4), vacuum=4.0, n_train=3, n_test=2, equilibrate_ps=0.02,
                liquid_equilibrate_ps=0.1, spacing_ps=0.01, r_cut=3.5, r_min=1.9, radial_sizes=(3, 6),
                ace_sizes=((2, (5,), ()), (3, (4, 2), (1,)), (4, (5, 3, 2), (2, 1)), (4, (6, 3, 2), (2, 1))),
                ace_full=(4, (5, 3, 2), (2, 1)),
                chunk=2, bcs_max_iter=200, bcs_rotations=1, gp_structures=1, gp_atoms=3, gp_opt_atoms=2, gp_test=1,
                gp_max_iterations=5, horseshoe_warmup=200, horseshoe_samples=400, horseshoe_thin=2)
    base.update(overrides)
    return AccuracySettings(**base)


# ----------------------------------------------------------------------------- data


def _start_atoms(kind: str, s: AccuracySettings):
    from ase.build import fcc100

    from jaxiap.systems.aluminium import AL_LATTICE, al_fcc

    if kind in ("bulk", "liquid"):
        return al_fcc(s.repeat)
    if kind == "vacancy":
        atoms = al_fcc(s.repeat)
        del atoms[0]
        return atoms
    if kind == "surface":
        atoms = fcc100("Al", size=tuple(s.slab_size), a=AL_LATTICE, vacuum=s.vacuum, orthogonal=True)
        atoms.pbc = True
        return atoms
    raise JaxiapInputError(f"unknown structure kind {kind!r}")


def generate_category(name: str, s: AccuracySettings) -> dict:
    """Langevin MD with EMT for one category: {positions (S, N, 3), box (3,), energy (S,), forces (S, N, 3)}."""
    from ase import units
    from ase.calculators.emt import EMT
    from ase.md.langevin import Langevin

    from jaxiap.active.otf import maxwell_boltzmann

    if name not in CATEGORIES:
        raise JaxiapInputError(f"unknown category {name!r}; choose from {tuple(CATEGORIES)}")
    kind, temp = CATEGORIES[name]
    atoms = _start_atoms(kind, s)
    atoms.calc = EMT()
    rng = np.random.default_rng([s.seed, list(CATEGORIES).index(name)])
    atoms.set_velocities(maxwell_boltzmann(atoms.get_masses(), temp, rng))
    dyn = Langevin(atoms, s.dt_fs * units.fs, temperature_K=temp, friction=s.friction_per_fs / units.fs, rng=rng,
                   fixcm=False)
    eq = s.liquid_equilibrate_ps if kind == "liquid" else s.equilibrate_ps
    dyn.run(int(round(eq * 1000 / s.dt_fs)))
    every = max(1, int(round(s.spacing_ps * 1000 / s.dt_fs)))
    pos, energy, forces = [], [], []
    for _ in range(s.n_train + s.n_test):
        dyn.run(every)
        pos.append(atoms.get_positions(wrap=True))
        energy.append(atoms.get_potential_energy())
        forces.append(atoms.get_forces())
    return dict(positions=np.asarray(pos), box=np.diag(np.asarray(atoms.cell[:])).copy(),
                energy=np.asarray(energy), forces=np.asarray(forces))


def load_data(s: AccuracySettings, folder, progress: bool = False) -> dict:
    """{category: frames dict} from ``folder``/al_accuracy_data_<hash>.npz, generated (and saved) if absent."""
    from jaxiap import runfolder

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"al_accuracy_data_{s.data_key()}.npz"
    fields = ("positions", "box", "energy", "forces")
    if path.exists():
        with np.load(path) as z:
            return {c: {f: z[f"{c}__{f}"] for f in fields} for c in s.categories}
    data = {}
    for c in s.categories:
        t = time.perf_counter()
        data[c] = generate_category(c, s)
        if progress:
            print(f"# data {c}: {data[c]['positions'].shape[0]} x {data[c]['positions'].shape[1]} atoms, "
                  f"{time.perf_counter() - t:.1f} s", flush=True)
    runfolder.savez(path, **{f"{c}__{f}": data[c][f] for c in data for f in fields})
    return data


def split_data(data: dict, s: AccuracySettings) -> tuple[dict, dict]:
    """(train, test) frame lists: {"positions": [...], ...} concatenated over categories, with "category"."""
    out = []
    for lo, hi in ((0, s.n_train), (s.n_train, s.n_train + s.n_test)):
        frames = {"positions": [], "box": [], "energy": [], "forces": [], "category": []}
        for c in s.categories:
            d = data[c]
            for k in range(lo, hi):
                frames["positions"].append(d["positions"][k])
                frames["box"].append(d["box"])
                frames["energy"].append(float(d["energy"][k]))
                frames["forces"].append(d["forces"][k])
                frames["category"].append(c)
        out.append(frames)
    return out[0], out[1]


def to_dataset(frames: dict, n_max: int):
    """A padded jaxiap Dataset (single species, orthorhombic boxes) of a frame list."""
    from jaxiap.data import Dataset
    from jaxiap.structures import Structures

    s = len(frames["energy"])
    pos, forces, mask = np.zeros((s, n_max, 3)), np.zeros((s, n_max, 3)), np.zeros((s, n_max), bool)
    for k, (x, f) in enumerate(zip(frames["positions"], frames["forces"])):
        pos[k, :len(x)], forces[k, :len(x)], mask[k, :len(x)] = x, f, True
    st = Structures(jnp.asarray(pos), jnp.zeros((s, n_max), jnp.int32), jnp.asarray(mask),
                    jnp.asarray(np.stack(frames["box"])), ("Al",))
    return Dataset(st, np.asarray(frames["energy"]), forces)


# ----------------------------------------------------------------------------- design rows


def ace_design_rows(desc, datasets, chunk: int = 4) -> list:
    """Unit-weight design rows (S, 1 + 3N, F) of an ACE basis for each dataset (clusters or orthorhombic
    cells): the library's chain-rule rows (:func:`jaxiap.descriptors.ace_rows.ace_structure_rows`), one
    neighbour capacity and one compilation for all of them."""
    return ace_structure_rows(desc, [ds.structures for ds in datasets], chunk)


def radial_design_rows(radial_desc, dataset, chunk: int = 8) -> np.ndarray:
    """Unit-weight design rows (S, 1 + 3N, F) of a RadialDescriptor through the library's generic path."""
    from jaxiap.potentials.linear import LinearBasis, structure_rows

    basis = LinearBasis(radial_desc)
    st = dataset.structures
    out = []
    for lo in range(0, len(st), chunk):
        idx = np.arange(lo, min(lo + chunk, len(st)))
        pad = np.concatenate([idx, np.full(chunk - len(idx), idx[-1])])
        out.append(np.asarray(structure_rows(basis, st[pad]))[:len(idx)])
    return np.concatenate(out)


def with_count_column(rows: np.ndarray, dataset) -> np.ndarray:
    """Append the atom-count column (energy row N, force rows 0): a per-atom reference energy."""
    s, p, _ = rows.shape
    col = np.zeros((s, p, 1))
    col[:, 0, 0] = np.asarray(dataset.structures.mask).sum(axis=1)
    return np.concatenate([rows, col], axis=2)


def ace_descriptor(size, s: AccuracySettings):
    from jaxiap.descriptors.ace import ACEDescriptor

    body_order, n_max, l_max = size
    return ACEDescriptor(n_max=tuple(n_max), l_max=tuple(l_max) if len(l_max) else 0, r_cut=s.r_cut, r_min=s.r_min,
                         body_order=body_order)


def column_subset(full_desc, desc) -> np.ndarray:
    """Columns of ``full_desc`` that hold the features of ``desc`` (an ACEDescriptor with the same chebyshev
    or bessel radial basis, r_min and r_cut, or a list of its labels), matched by label."""
    if isinstance(desc, (list, tuple)):
        wanted = list(desc)
    else:
        if (full_desc.radial.family != desc.radial.family or full_desc.radial.family == "gaussian"
                or float(full_desc.radial.r_cut) != float(desc.radial.r_cut)
                or float(full_desc.radial.r_min) != float(desc.radial.r_min)):
            raise JaxiapInputError("column_subset: both bases need the same chebyshev/bessel radial basis")
        wanted = list(desc.labels)
    pos = {lab: k for k, lab in enumerate(full_desc.labels)}
    missing = [lab for lab in wanted if lab not in pos]
    if missing:
        raise JaxiapInputError(f"column_subset: {len(missing)} features (e.g. {missing[0]}) are not in the full basis")
    return np.asarray([pos[lab] for lab in wanted], int)


# ----------------------------------------------------------------------------- fits and errors


def column_scale(rows: np.ndarray, dataset) -> np.ndarray:
    """RMS of every column over the real rows (energy rows and force rows of real atoms); 1 where 0."""
    mask = np.asarray(dataset.structures.mask)
    keep = np.concatenate([np.ones((len(mask), 1), bool), np.repeat(mask, 3, axis=1)], axis=1)
    a = rows[keep]
    rms = np.sqrt(np.mean(a**2, axis=0))
    return np.where(rms > 0, rms, 1.0)


def predict_rows(rows: np.ndarray, coef: np.ndarray, n_max: int):
    """Energies (S,) and forces (S, N, 3) from design rows (S, 1 + 3N, K) and coefficients (K,)."""
    y = rows @ coef
    return y[:, 0], y[:, 1:].reshape(len(rows), n_max, 3)


def rmse_table(energy, forces, frames: dict, n_max: int, subset=None) -> dict:
    """{"all": {...}, category: {...}}: energy RMSE per atom (meV/atom) and force-component RMSE (meV/Å)."""
    cats = np.asarray(frames["category"])
    n_atoms = np.asarray([len(x) for x in frames["positions"]])
    e_ref = np.asarray(frames["energy"])
    sel = np.ones(len(cats), bool) if subset is None else np.asarray(subset, bool)
    de = (np.asarray(energy) - e_ref) / n_atoms
    out = {}
    for name in ["all"] + list(dict.fromkeys(cats)):
        k = np.flatnonzero(sel & ((cats == name) | (name == "all")))
        if k.size == 0:
            continue
        df = np.concatenate([(np.asarray(forces[i])[:n_atoms[i]] - frames["forces"][i]).reshape(-1) for i in k])
        out[name] = {"energy_meV_atom": 1e3 * float(np.sqrt(np.mean(de[k] ** 2))),
                     "force_meV_A": 1e3 * float(np.sqrt(np.mean(df**2))), "n_structures": int(k.size)}
    return out


def fit_linear(rows_train: np.ndarray, train_ds, rows_test: np.ndarray, test_frames: dict, n_max: int,
               gp_subset=None) -> dict:
    """Type-II ML BLR on column-scaled rows; returns errors, log evidence, sigmas, coefficients (scaled)."""
    from jaxiap.inference.linear import optimize_hyperparameters
    from jaxiap.potentials.linear import design_from_rows

    scale = column_scale(rows_train, train_ds)
    t = time.perf_counter()
    res = optimize_hyperparameters(design_from_rows(rows_train / scale, train_ds))
    coef = np.asarray(res.posterior.mean)
    e, f = predict_rows(rows_test / scale, coef, n_max)
    out = dict(n_basis=int(rows_train.shape[2]), log_evidence=float(res.log_evidence),
               sigma_energy=float(res.sigma_energy), sigma_force=float(res.sigma_force),
               prior_scale=float(res.prior_scale), fit_seconds=time.perf_counter() - t,
               test=rmse_table(e, f, test_frames, n_max))
    if gp_subset is not None:
        out["gp_subset"] = rmse_table(e, f, test_frames, n_max, gp_subset)["all"]
    out["_result"] = res
    out["_scale"] = scale
    return out


def fit_bcs_support(design, noise_var: float, max_iter: int = 2000, rotation_seed: int | None = None):
    """BCS (fast RVM) on a weighted design with the noise held at ``noise_var``: (support, alpha, mean).

    The search depends on the data only through A^T W A and A^T W y, so it runs on the QR-compressed
    system (K rows), with numpy's BLAS on one thread: on 2 shared cores the threaded BLAS made the
    ~500 small iterations 80x slower, and its round-off changed the greedy path (the RVM's marginal
    likelihood has many local optima; single-threaded BLAS is deterministic). The returned mean (K,) is
    the BCS posterior mean at that noise. ``rotation_seed``: rotate the compressed system by a random
    orthogonal matrix first (mathematically the same search; a probe of its sensitivity to round-off)
    (diag(alpha) + A_S^T W A_S / noise)^-1 A_S^T W y / noise on the support, 0 elsewhere.
    """
    from jaxiap.inference.bcs import fit_bcs

    A, y, w = (np.asarray(v) for v in design[:3])
    keep = w > 0
    sw = np.sqrt(w[keep])
    with _one_blas_thread():
        r, z = compress(A[keep] * sw[:, None], y[keep] * sw)
        if rotation_seed is not None:  # same Gram and A^T y, different round-off
            rot = np.linalg.qr(np.random.default_rng(rotation_seed).normal(size=(len(r), len(r))))[0]
            r, z = rot @ r, rot @ z
        _, info = fit_bcs(r, z, noise_var=noise_var, max_iter=max_iter, return_info=True)
    sup = np.asarray(info.support, int)
    h = np.diag(info.alpha) + (r[:, sup].T @ r[:, sup]) / noise_var
    mean = np.zeros(A.shape[1])
    mean[sup] = np.linalg.solve(h, r[:, sup].T @ z / noise_var)
    return sup, np.asarray(info.alpha), mean, info


# ----------------------------------------------------------------------------- GP


def fit_gp(train_frames: dict, test_frames: dict, s: AccuracySettings, n_max: int, progress: bool = False) -> dict:
    """The 2+3-body GP on a subset of the training forces; errors on the first ``gp_test`` test structures
    of every category (``subset`` marks them).

    Training: ``gp_atoms`` random atoms of each of the first ``gp_structures`` training structures per
    category, forces only. Hyperparameters: log marginal likelihood maximised on the first
    ``gp_opt_atoms`` of those atoms in the first structure of each category (the kernel blocks cost
    O(n^2)), then frozen for the full training set (as the on-the-fly loop freezes them). Energies: the
    GP has no per-atom constant (its local energies vanish with the neighbours), so its energies are
    shifted by N (E_EMT - E_GP) / N_ref of the perfect FCC cell; ``energy_offset_eV_atom`` reports
    that shift, and ``test_unreferenced`` the errors without it.
    """
    from jaxiap.potentials.gp import GaussianProcess
    from jaxiap.potentials.gp_train import optimize_hyperparameters
    from jaxiap.systems.aluminium import al_fcc
    from jaxiap.workflows.gp_error_tracking import gp_settings, initial_hyperparameters

    cats = np.asarray(train_frames["category"])
    rng = np.random.default_rng([s.seed, 16])
    train_idx = [list(np.flatnonzero(cats == c)[:s.gp_structures]) for c in s.categories]
    tcats = np.asarray(test_frames["category"])
    test_idx = [k for c in s.categories for k in np.flatnonzero(tcats == c)[:s.gp_test]]
    cell = lambda b: np.diag(np.asarray(b, float))  # noqa: E731
    ref = al_fcc(s.repeat)
    structs = ([dict(positions=train_frames["positions"][k], cell=cell(train_frames["box"][k]))
                for ks in train_idx for k in ks]
               + [dict(positions=test_frames["positions"][k], cell=cell(test_frames["box"][k])) for k in test_idx]
               + [dict(positions=ref.positions, cell=np.asarray(ref.cell[:]))])
    settings = gp_settings(structs, s.gp_r_cut, s.gp_r_cut_3)
    sizes = {k: len(train_frames["positions"][k]) for ks in train_idx for k in ks}
    picks = {k: np.sort(rng.choice(n, min(s.gp_atoms, n), replace=False)) for k, n in sizes.items()}

    def add(gp, k, atoms):
        gp.add(train_frames["positions"][k], cell(train_frames["box"][k]), forces=train_frames["forces"][k],
               atoms=atoms)

    t0 = time.perf_counter()
    small = GaussianProcess(settings)
    for ks in train_idx:
        add(small, ks[0], picks[ks[0]][:s.gp_opt_atoms])
    f_all = np.concatenate([train_frames["forces"][k][picks[k]].reshape(-1) for k in picks])
    small.set_hyperparameters(initial_hyperparameters(small, float(np.std(f_all))))
    opt = optimize_hyperparameters(small, max_iterations=s.gp_max_iterations)
    gp = GaussianProcess(settings, small.hyperparameters)
    for k, atoms in picks.items():
        add(gp, k, atoms)
    gp.refit()
    t1 = time.perf_counter()
    if progress:
        print(f"# GP: hyperparameters from {small.n_force_atoms} atoms, trained on {gp.n_force_atoms} atoms "
              f"({gp.n_rows} rows) in {t1 - t0:.1f} s: "
              f"{ {k: round(float(v), 4) for k, v in opt['hyperparameters'].items()} }", flush=True)
    from ase.calculators.emt import EMT

    ref.calc = EMT()
    e_ref = float(ref.get_potential_energy())
    e_gp_ref = float(gp.predict(ref.positions, np.asarray(ref.cell[:]), energy_std=False)["energy"])
    offset = (e_ref - e_gp_ref) / len(ref)
    energy = np.full(len(test_frames["energy"]), np.nan)
    forces = np.zeros((len(energy), n_max, 3))
    for k in test_idx:
        x = test_frames["positions"][k]
        p = gp.predict(x, cell(test_frames["box"][k]), energy_std=False)
        energy[k], forces[k, :len(x)] = float(p["energy"]), p["forces"]
    t2 = time.perf_counter()
    subset = np.zeros(len(energy), bool)
    subset[test_idx] = True
    n_atoms = np.asarray([len(x) for x in test_frames["positions"]])
    return dict(n_train_atoms=int(gp.n_force_atoms), n_rows=int(gp.n_rows), n_opt_atoms=int(small.n_force_atoms),
                settings=dataclasses.asdict(settings),
                hyperparameters={k: float(v) for k, v in opt["hyperparameters"].items()},
                log_marginal_likelihood_opt=float(opt["log_marginal_likelihood"]),
                energy_offset_eV_atom=float(offset), train_seconds=t1 - t0, predict_seconds=t2 - t1,
                subset=subset.tolist(),
                test=rmse_table(energy + offset * n_atoms, forces, test_frames, n_max, subset),
                test_unreferenced=rmse_table(energy, forces, test_frames, n_max, subset))


# ----------------------------------------------------------------------------- the study


def _ace_label(size) -> str:
    bo, n, l = size
    return f"ACE bo{bo} n{'/'.join(map(str, n))}" + (f" l{'/'.join(map(str, l))}" if len(l) else "")


def ace_size_rows(size, s: AccuracySettings, full, ace_rows: tuple, radial_rows: tuple, datasets: tuple):
    """Rows (with the count column) of one ``ace_sizes`` entry for each dataset, from the full ACE rows
    (label-matched columns) and, for a body-order-2 block wider than ``full``'s, the radial rows
    (ACE nu = 1 = 2 / sqrt(4 pi) x radial): (rows per dataset..., labels incl. ("count",), wide)."""
    desc = ace_descriptor(size, s)
    wide = size[1][0] > full.n_max[0]
    n_rad = radial_rows[0].shape[2]
    if wide:
        if size[1][0] > n_rad:
            raise JaxiapInputError(f"ACE size {size}: n_max[0] = {size[1][0]} exceeds both the full ACE basis "
                                   f"({full.n_max[0]}) and the largest radial basis ({n_rad})")
        many = [lab for lab in desc.labels if len(lab) > 1]
        cols = column_subset(full, many)
        n1 = size[1][0]
        nu1 = 2.0 / np.sqrt(4.0 * np.pi)
        parts = [(nu1 * rad[..., :n1], ace[..., cols]) for ace, rad in zip(ace_rows, radial_rows)]
        labels = [lab for lab in desc.labels if len(lab) == 1] + many
    else:
        cols = column_subset(full, desc)
        parts = [(ace[..., cols],) for ace in ace_rows]
        labels = list(desc.labels)
    rows = [with_count_column(np.concatenate(p, axis=2), ds) for p, ds in zip(parts, datasets)]
    return (*rows, labels + [("count",)], bool(wide))


def run_study(s: AccuracySettings, folder, progress: bool = False) -> dict:
    """Data, every linear model, BCS on the largest ACE basis, the GP: a JSON-able dict."""
    from jaxiap.descriptors.radial import RadialBasis, RadialDescriptor

    timings = {}
    t = time.perf_counter()
    data = load_data(s, folder, progress)
    timings["data"] = time.perf_counter() - t
    train_f, test_f = split_data(data, s)
    n_max = max(len(x) for x in train_f["positions"] + test_f["positions"])
    train_ds, test_ds = to_dataset(train_f, n_max), to_dataset(test_f, n_max)
    gp_res = None
    gp_subset = None
    if s.gp:
        t = time.perf_counter()
        gp_res = fit_gp(train_f, test_f, s, n_max, progress)
        gp_subset = np.asarray(gp_res["subset"])
        timings["gp"] = time.perf_counter() - t

    models = []

    def record(family, label, rows_tr, rows_te, **extra):
        r = fit_linear(rows_tr, train_ds, rows_te, test_f, n_max, gp_subset)
        r.update(family=family, label=label, **extra)
        if progress:
            a = r["test"]["all"]
            print(f"# {label}: K = {r['n_basis']}, log evidence {r['log_evidence']:.1f}, test E "
                  f"{a['energy_meV_atom']:.2f} meV/atom, F {a['force_meV_A']:.1f} meV/Å ({r['fit_seconds']:.1f} s)",
                  flush=True)
        models.append(r)
        return r

    # radial: the largest basis once, smaller ones are its first columns (T_k does not depend on K)
    t = time.perf_counter()
    big = RadialDescriptor(RadialBasis("chebyshev", max(s.radial_sizes), s.r_min, s.r_cut))
    rad_tr, rad_te = radial_design_rows(big, train_ds), radial_design_rows(big, test_ds)
    timings["radial_rows"] = time.perf_counter() - t
    for k in s.radial_sizes:
        cols = list(range(k))
        record("radial", f"radial n{k}", with_count_column(rad_tr[..., cols], train_ds),
               with_count_column(rad_te[..., cols], test_ds), n_radial=k)

    # ACE: the full basis once, the others are label-matched column subsets; a body-order-2 block wider
    # than the full basis's comes from the radial rows (ACE nu = 1 = 2 / sqrt(4 pi) x radial features)
    t = time.perf_counter()
    full = ace_descriptor(s.ace_full, s)
    ace_tr, ace_te = ace_design_rows(full, [train_ds, test_ds], s.chunk)
    timings["ace_rows"] = time.perf_counter() - t
    if progress:
        print(f"# ACE rows, {full.n_features} features: {timings['ace_rows']:.1f} s", flush=True)
    largest = None
    for size in s.ace_sizes:
        rows_tr, rows_te, labels, wide = ace_size_rows(size, s, full, (ace_tr, ace_te), (rad_tr, rad_te),
                                                       (train_ds, test_ds))
        r = record("ace", _ace_label(size), rows_tr, rows_te, body_order=size[0], n_max=list(size[1]),
                   l_max=list(size[2]), two_body_from_radial=bool(wide))
        if largest is None or r["n_basis"] > largest[0]["n_basis"]:
            largest = (r, rows_tr, rows_te, labels, size)

    # BCS chooses the active functions of the largest ACE basis
    t = time.perf_counter()
    full_fit, full_tr, full_te, labels, size = largest
    res = full_fit["_result"]
    sup, alpha, mean, info = fit_bcs_support(res.design, res.sigma_force**2, s.bcs_max_iter)
    e, f = predict_rows(full_te / full_fit["_scale"], mean, n_max)
    bcs_mean = dict(test=rmse_table(e, f, test_f, n_max))
    if gp_subset is not None:
        bcs_mean["gp_subset"] = rmse_table(e, f, test_f, n_max, gp_subset)["all"]
    chosen = np.sort(sup)
    bcs_fit = record("bcs", f"BCS on {_ace_label(size)} + BLR", full_tr[..., chosen], full_te[..., chosen],
                     bcs_iterations=int(info.n_iter), bcs_converged=bool(info.converged),
                     bcs_mean=bcs_mean, of_basis=full_fit["label"])
    per_order = {}
    for c in chosen:
        order = "ref" if labels[c] == ("count",) else str(len(labels[c]) + 1)
        per_order[order] = per_order.get(order, 0) + 1
    bcs_fit["chosen_per_body_order"] = per_order
    repeats = []
    for seed in range(s.bcs_rotations):
        sup_r, _, mean_r, info_r = fit_bcs_support(res.design, res.sigma_force**2, s.bcs_max_iter, rotation_seed=seed)
        e, f = predict_rows(full_te / full_fit["_scale"], mean_r, n_max)
        repeats.append(dict(seed=seed, n_basis=int(len(sup_r)), iterations=int(info_r.n_iter),
                            converged=bool(info_r.converged), overlap=int(len(np.intersect1d(sup_r, chosen))),
                            test=rmse_table(e, f, test_f, n_max)["all"]))
    bcs_fit["rotations"] = repeats
    timings["bcs"] = time.perf_counter() - t

    # the horseshoe on the same basis (its own BLR re-weighting and scaling), if asked for
    if s.horseshoe:
        t = time.perf_counter()
        hs = horseshoe_entry(s, full_fit, full_te, labels, size, test_f, n_max)
        models.append(hs)
        timings["horseshoe"] = time.perf_counter() - t
        if progress:
            print("# " + report_horseshoe(hs).split("\n")[-1], flush=True)

    for m in models:
        m.pop("_result", None)
        m.pop("_scale", None)
    return dict(settings=dataclasses.asdict(s), n_train=len(train_f["energy"]), n_test=len(test_f["energy"]),
                n_train_force_rows=int(3 * np.asarray(train_ds.structures.mask).sum()),
                atoms_per_category={c: int(data[c]["positions"].shape[1]) for c in s.categories},
                models=models, gp=gp_res, timings=timings)


def largest_ace_rows(s: AccuracySettings, folder, train_ds, test_ds, progress: bool = False):
    """(rows_train, rows_test, labels, size) of the ``ace_sizes`` entry with the most columns (as
    :func:`run_study` builds them), cached in ``folder``/al_accuracy_rows_<hash>.npz (a hash of the data
    and basis settings), so a rerun skips the ~1 min of rows."""
    from jaxiap import runfolder
    from jaxiap.descriptors.radial import RadialBasis, RadialDescriptor

    size = max(s.ace_sizes, key=lambda z: ace_descriptor(z, s).n_features)
    blob = json.dumps(dict(data=s.data_key(), size=size, full=s.ace_full, r_cut=s.r_cut, r_min=s.r_min,
                           radial=max(s.radial_sizes)), sort_keys=True, default=list)
    path = Path(folder) / f"al_accuracy_rows_{hashlib.sha256(blob.encode()).hexdigest()[:12]}.npz"
    labels_of = lambda lab: [tuple(tuple(f) if isinstance(f, (list, tuple)) else f for f in x) for x in lab]  # noqa
    if path.exists():
        with np.load(path, allow_pickle=False) as z:
            return z["train"], z["test"], labels_of(json.loads(str(z["labels"]))), size
    t = time.perf_counter()
    full = ace_descriptor(s.ace_full, s)
    ace = ace_design_rows(full, [train_ds, test_ds], s.chunk)
    big = RadialDescriptor(RadialBasis("chebyshev", max(s.radial_sizes), s.r_min, s.r_cut))
    rad = (radial_design_rows(big, train_ds), radial_design_rows(big, test_ds))
    rows_tr, rows_te, labels, _ = ace_size_rows(size, s, full, ace, rad, (train_ds, test_ds))
    runfolder.savez(path, train=rows_tr, test=rows_te, labels=np.asarray(json.dumps(labels)))
    if progress:
        print(f"# rows of {_ace_label(size)} ({rows_tr.shape[2]} columns): {time.perf_counter() - t:.1f} s, "
              f"cached in {path}", flush=True)
    return rows_tr, rows_te, labels, size


def horseshoe_entry(s: AccuracySettings, blr_fit: dict, rows_test: np.ndarray, labels, size, test_frames: dict,
                    n_max: int) -> dict:
    """The horseshoe on a BLR-fitted basis (its noise-ratio re-weighted rows, column scaling, and its mean and
    noise as the start), with the ``horseshoe_*`` settings: a models entry (family "horseshoe") with test
    RMSEs of the posterior mean and the active count (posterior mean kappa_k < 0.5, :func:`jaxiap.inference.compressed.fit_horseshoe`)."""
    res = blr_fit["_result"]
    kw = dict(method=s.horseshoe_method, seed=s.seed, num_warmup=s.horseshoe_warmup, n_samples=s.horseshoe_samples,
              num_chains=s.horseshoe_chains, thin=s.horseshoe_thin)
    hs = fit_horseshoe(res.design, init_mean=np.asarray(res.posterior.mean), init_sigma=res.sigma_force, **kw)
    e, f = predict_rows(rows_test / blr_fit["_scale"], hs["mean"], n_max)
    per_order = {}
    for c in np.flatnonzero(hs["kappa"] < 0.5):
        order = "ref" if tuple(labels[c]) == ("count",) else str(len(labels[c]) + 1)
        per_order[order] = per_order.get(order, 0) + 1
    return dict(family="horseshoe", label=f"horseshoe ({s.horseshoe_method}) on {_ace_label(size)}",
                of_basis=blr_fit.get("label", _ace_label(size)), n_basis=int(rows_test.shape[2]),
                n_active=hs["n_active"], m_eff=hs["m_eff"], active_per_body_order=per_order,
                n_interval_excludes_0=hs["n_interval_excludes_0"],
                sigma_force=hs["sigma"], tau=hs["tau"], diagnostics=hs["diagnostics"], settings=kw,
                test=rmse_table(e, f, test_frames, n_max), fit_seconds=hs["seconds"], kappa=hs["kappa"].tolist())


def run_horseshoe(s: AccuracySettings, folder, progress: bool = False) -> dict:
    """The horseshoe on the largest ACE basis alone, data and rows cached in ``folder``: BLR first, then
    :func:`horseshoe_entry`; also returns the BLR errors (``blr_test``) and the timings."""
    t0 = time.perf_counter()
    data = load_data(s, folder, progress)
    train_f, test_f = split_data(data, s)
    n_max = max(len(x) for x in train_f["positions"] + test_f["positions"])
    train_ds, test_ds = to_dataset(train_f, n_max), to_dataset(test_f, n_max)
    rows_tr, rows_te, labels, size = largest_ace_rows(s, folder, train_ds, test_ds, progress)
    t1 = time.perf_counter()
    blr = fit_linear(rows_tr, train_ds, rows_te, test_f, n_max)
    blr["label"] = _ace_label(size)
    if progress:
        a = blr["test"]["all"]
        print(f"# BLR {_ace_label(size)}: K = {blr['n_basis']}, test E {a['energy_meV_atom']:.2f} meV/atom, "
              f"F {a['force_meV_A']:.1f} meV/Å ({blr['fit_seconds']:.1f} s)", flush=True)
    out = horseshoe_entry(s, blr, rows_te, labels, size, test_f, n_max)
    out.update(rows_seconds=t1 - t0, blr_test=blr["test"]["all"], blr_sigma_force=blr["sigma_force"],
               wall_seconds=time.perf_counter() - t0)
    return out


def report_horseshoe(res: dict) -> str:
    """One markdown table row (the columns of :func:`report_markdown`) and a summary line."""
    a = res["test"]["all"]
    row = (f"| {res['label']} | {res['n_basis']} ({res['n_active']} with kappa < 0.5) | - | "
           f"{a['energy_meV_atom']:.2f} | {a['force_meV_A']:.1f} | - | {1e3 * res['sigma_force']:.1f} |")
    line = (f"horseshoe: {res['n_active']} of {res['n_basis']} coefficients with posterior mean shrinkage "
            f"kappa < 0.5 (per body order: " + ", ".join(f"{k}: {v}" for k, v in
                                                        sorted(res["active_per_body_order"].items()))
            + f"), m_eff = sum(1 - kappa) = {res['m_eff']:.1f}, "
            f"{res['n_interval_excludes_0']} with a 95% interval excluding 0, tau median {res['tau']:.3g} (unit-RMS targets); "
            f"fit {res['fit_seconds']:.0f} s; " + ", ".join(f"{k} {v:.3g}" for k, v in res["diagnostics"].items()))
    return row + "\n\n" + line


# ----------------------------------------------------------------------------- report


def report_markdown(result: dict) -> str:
    """The main table (all test structures) and the per-category force RMSE table."""
    cats = list(result["settings"]["categories"])
    lines = ["| model | basis functions | log evidence | test E RMSE (meV/atom) | test F RMSE (meV/Å) | "
             "sigma_E (meV) | sigma_F (meV/Å) |", "|---|---|---|---|---|---|---|"]
    for m in result["models"]:
        if m["family"] == "horseshoe":
            continue
        a = m["test"]["all"]
        lines.append(f"| {m['label']} | {m['n_basis']} | {m['log_evidence']:.1f} | {a['energy_meV_atom']:.2f} | "
                     f"{a['force_meV_A']:.1f} | {1e3 * m['sigma_energy']:.1f} | {1e3 * m['sigma_force']:.1f} |")
    bcs = [m for m in result["models"] if m["family"] == "bcs"]
    for m in bcs:
        a = m["bcs_mean"]["test"]["all"]
        lines.append(f"| BCS posterior mean (noise fixed) | {m['n_basis']} | - | {a['energy_meV_atom']:.2f} | "
                     f"{a['force_meV_A']:.1f} | - | - |")
    horseshoes = [m for m in result["models"] if m["family"] == "horseshoe"]
    lines += [report_horseshoe(m).split("\n")[0] for m in horseshoes]
    gp = result.get("gp")
    if gp:
        a = gp["test"]["all"]
        lines.append(f"| GP 2+3-body ({gp['n_train_atoms']} training atoms, forces only; {a['n_structures']} test "
                     f"structures) | - | - | {a['energy_meV_atom']:.2f} | "
                     f"{a['force_meV_A']:.1f} | - | {1e3 * gp['hyperparameters']['noise']:.1f} |")
    out = ["\n".join(lines), ""]
    for m in bcs:
        out += [f"BCS (noise held at the BLR sigma_F of the full basis) kept {m['n_basis']} columns after "
                f"{m['bcs_iterations']} iterations (converged: {m['bcs_converged']}); per body order: "
                + ", ".join(f"{k}: {v}" for k, v in sorted(m["chosen_per_body_order"].items())), ""]
        if m.get("rotations"):
            out += ["The same BCS search on randomly rotated copies of the compressed system (same A^T W A and "
                    "A^T W y; only the round-off differs): " + "; ".join(
                        f"{r['n_basis']} columns ({r['overlap']} shared, {r['iterations']} iterations, converged "
                        f"{r['converged']}), test F {r['test']['force_meV_A']:.1f} meV/Å, E "
                        f"{r['test']['energy_meV_atom']:.2f} meV/atom" for r in m["rotations"]), ""]
    out += [report_horseshoe(m).split("\n")[-1] + "\n" for m in horseshoes]
    if gp:
        h = gp["hyperparameters"]
        out += [f"GP: {gp['n_train_atoms']} training atoms ({gp['n_rows']} force rows), hyperparameters from "
                f"{gp['n_opt_atoms']} atoms: sig2 {h['sig2']:.3g} eV, l2 {h['l2']:.3g} Å, sig3 {h['sig3']:.3g}, "
                f"l3 {h['l3']:.3g} Å, noise {h['noise']:.3g} eV/Å; energies shifted by "
                f"{1e3 * gp['energy_offset_eV_atom']:.1f} meV/atom (perfect FCC reference; unreferenced E RMSE "
                f"{gp['test_unreferenced']['all']['energy_meV_atom']:.1f} meV/atom); train "
                f"{gp['train_seconds']:.0f} s, predict {gp['predict_seconds']:.0f} s.", ""]
    head = "| model | " + " | ".join(cats) + " |"
    sep = "|---|" + "---|" * len(cats)
    for key, title in (("force_meV_A", "test force RMSE per category (meV/Å)"),
                       ("energy_meV_atom", "test energy RMSE per category (meV/atom)")):
        rows = [f"{title}:", "", head, sep]
        for m in result["models"]:
            rows.append(f"| {m['label']} | " + " | ".join(f"{m['test'][c][key]:.2f}" if key.startswith("e") else
                                                         f"{m['test'][c][key]:.1f}" for c in cats) + " |")
        if gp:
            rows.append("| GP 2+3-body (subset) | " + " | ".join(
                (f"{gp['test'][c][key]:.2f}" if key.startswith("e") else f"{gp['test'][c][key]:.1f}")
                if c in gp["test"] else "-" for c in cats) + " |")
        out += ["\n".join(rows), ""]
    if gp:
        rows = ["same GP test subset (first test structures of each category), linear models vs GP:", "",
                "| model | E RMSE (meV/atom) | F RMSE (meV/Å) |", "|---|---|---|"]
        for m in result["models"]:
            if "gp_subset" in m:
                rows.append(f"| {m['label']} | {m['gp_subset']['energy_meV_atom']:.2f} | "
                            f"{m['gp_subset']['force_meV_A']:.1f} |")
        a = gp["test"]["all"]
        rows.append(f"| GP 2+3-body | {a['energy_meV_atom']:.2f} | {a['force_meV_A']:.1f} |")
        out += ["\n".join(rows), ""]
    return "\n".join(out)


def plot_accuracy(result: dict, path) -> None:
    """Test force RMSE against the number of basis functions, one line per family; GP and BCS as markers."""
    from jaxiap.plots import _plt, _save

    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    fams = [("radial", "radial (2-body)", "o-"), ("ace2", "ACE body order 2", "x"), ("ace3", "ACE body order 3", "s-"),
            ("ace4", "ACE body order 4", "^-"), ("ace3w", "ACE body order 3, wide 2-body block", "s"),
            ("ace4w", "ACE body order 4, wide 2-body block", "^")]

    def key_of(m):
        if m["family"] != "ace":
            return m["family"]
        return f"ace{m.get('body_order')}" + ("w" if m.get("two_body_from_radial") else "")

    for key, label, style in fams:
        ms = [m for m in result["models"] if key_of(m) == key]
        if ms:
            if key.endswith("w"):
                label += f" (n1 = {ms[0]['n_max'][0]})"
            ax.plot([m["n_basis"] for m in ms], [m["test"]["all"]["force_meV_A"] for m in ms], style, label=label)
    for m in result["models"]:
        if m["family"] == "bcs":
            ax.plot([m["n_basis"]], [m["test"]["all"]["force_meV_A"]], "*", ms=12, color="k",
                    label=f"BCS-chosen subset of the largest ACE ({m['n_basis']})")
        if m["family"] == "horseshoe":
            ax.plot([m["n_active"]], [m["test"]["all"]["force_meV_A"]], "P", ms=10, color="C5",
                    label=f"horseshoe posterior mean ({m['n_active']} with kappa < 0.5)")
    gp = result.get("gp")
    if gp:
        ax.axhline(gp["test"]["all"]["force_meV_A"], color="gray", ls="--",
                   label=f"GP 2+3-body ({gp['n_train_atoms']} training atoms; test subset)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.yaxis.set_minor_formatter(NullFormatter())
    lo, hi = ax.get_ylim()
    ax.set_yticks([t for t in (5, 7, 10, 15, 20, 30, 50, 70, 100, 150, 200) if lo <= t <= hi])
    ax.set_xlabel("basis functions (incl. the per-atom reference column)")
    ax.set_ylabel("test force RMSE (meV/Å)")
    ax.set_title("EMT aluminium: solid, vacancy, surface, liquid")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)
    plt.close(fig)
