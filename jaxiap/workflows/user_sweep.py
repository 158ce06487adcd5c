"""``jaxiap sweep RUN START --out SWEEP``: Langevin MD of a fit over posterior samples x thermostat seeds.

The fit is read back from its run folder
(:func:`jaxiap.workflows.user_model.load_model`), ``n_samples`` parameter
vectors are drawn from its posterior (a committee's members in order), and
every (sample, seed) pair runs one NVT Langevin trajectory from the user's
start structure (:mod:`jaxiap.md.nvt_qoi`: BAOAB, jax-md; a free cluster, or
a periodic cell with a jax-md neighbour list), all vectorised by the MD runner
(:func:`jaxiap.md.runner.run_program`: chunks, devices, checkpoints in
``md/``, resume). Units: temperature in K (kT = k_B T in eV), time step in fs,
friction in 1/ps, masses from ASE (amu); so the fit's data must be in eV and Å.

QoIs per trajectory: the mean potential energy per atom, the radial
distribution function (g(r) in a cell; the pair-distance distribution P(r)
for a free cluster) and the first basin-change time (bond graph of quenched
structures for a cluster, displacement of an atom from its start site in a
cell; ``--basin``). Each QoI's variance over the grid is split by the law of
total variance into thermal (within-sample) and parametric (between-sample)
parts (:func:`jaxiap.uq.variance.variance_split_grid`, crossed design: the
runner gives every sample the same thermostat seeds, common random numbers;
the basin time restricted to the run's end, min(t, t_censor)).
Writes ``qoi.npz``, ``summary.json``, ``rdf.png``, ``pe.png``, ``report.md``.
"""

from __future__ import annotations

import dataclasses
import sys
import warnings

import jax
import numpy as np

from jaxiap import runfolder
from jaxiap.errors import JaxiapInputError
from jaxiap.geometry import cell_widths, check_cell, periodic_space
from jaxiap.md.nvt_qoi import QoISettings, nvt_qoi_program, rdf_from_counts
from jaxiap.md.runner import run_program
from jaxiap.md.sizing import LANES_PER_DEVICE
from jaxiap.potentials.base import parameters, stack_parameters
from jaxiap.potentials.linear import LinearPotential
from jaxiap.structures import from_atoms
from jaxiap.uq.survival import CENSORED, EVENT, FAILED
from jaxiap.uq.variance import variance_split_grid
from jaxiap.workflows.lj13_config import field_text
from jaxiap.workflows.sweep_config import CLI_FLAGS, SweepConfig
from jaxiap.workflows.timing import StageTimer
from jaxiap.workflows.user_data import distance_matrix, read_structures
from jaxiap.workflows.user_model import file_sha256, load_model

@dataclasses.dataclass
class SweepInputs:
    model: object
    atoms: object
    positions: np.ndarray
    species: np.ndarray
    box: np.ndarray | None
    masses: np.ndarray
    settings: QoISettings
    basin: str
    bond_cutoff: float | None
    displacement: float | None
    nn_distance: float
    rdf_r_max: float
    volume: float | None
    start_sha256: str
    skin: float | None
    shift_fn: object
    neighbor_fn: object


def _nearest_neighbour(positions, box) -> float:
    """The median over atoms of the nearest-neighbour distance (minimum image in a cell)."""
    return float(np.median(distance_matrix(positions, box).min(axis=1)))


def prepare_sweep(config: SweepConfig) -> SweepInputs:
    """Read and check everything before the run folder is made (JaxiapInputError naming the problem)."""
    from ase import units  # lazy: ase only when a sweep runs

    if not config.model or not config.start:
        raise JaxiapInputError("give the fit and the start structure: jaxiap sweep RUN_OR_POSTERIOR START.xyz "
                               "--out runs/sweep")
    model = load_model(config.model)
    frames = read_structures(config.start, index=":", what="structure file")
    if not -len(frames) <= config.frame < len(frames):
        raise JaxiapInputError(f"{field_text(config, 'frame', CLI_FLAGS)}: {config.start} holds {len(frames)} "
                               "structure(s)")
    atoms = frames[config.frame]
    unknown = sorted(set(atoms.get_chemical_symbols()) - set(model.species_names))
    if unknown:
        raise JaxiapInputError(f"{config.start}: the start structure holds {', '.join(unknown)}, but the model was "
                               f"fitted to {', '.join(model.species_names)} only")
    if len(atoms) < 2:
        raise JaxiapInputError(f"{config.start}: the start structure has {len(atoms)} atom; MD needs at least 2")
    try:
        st = from_atoms([atoms], species_names=model.species_names)
    except JaxiapInputError as exc:
        raise JaxiapInputError(f"{config.start}: {exc}") from None
    box = None if st.box is None else np.asarray(st.box[0])
    periodic = box is not None
    basin = {"auto": "displacement" if periodic else "graph", "off": "none"}.get(config.basin, config.basin)
    if basin == "graph" and periodic:
        raise JaxiapInputError(f"{field_text(config, 'basin', CLI_FLAGS)}: the graph criterion quenches free "
                               f"clusters, and {config.start} is a periodic cell; use --basin displacement or off")
    r_cut = model.cutoff
    positions = np.asarray(atoms.get_positions(wrap=True) if periodic else atoms.get_positions())
    skin = config.skin
    if periodic:  # the neighbour list covers r_cut + skin: the cell must be twice as wide (minimum image)
        check_cell(box, r_cut, f"{config.start} (the model's cutoff {r_cut:g} Å)")
        if skin is None:
            skin = min(0.5, 0.9 * (0.5 * float(np.min(cell_widths(box))) - r_cut))
        check_cell(box, r_cut + skin, f"{config.start} (the model's cutoff {r_cut:g} Å + --skin {skin:g} Å)")
    if config.rdf_r_max is not None:
        r_max = float(config.rdf_r_max)
    elif periodic:
        r_max = r_cut
    else:  # a free cluster: every pair of the start structure, with room to breathe
        d = distance_matrix(positions)
        r_max = max(r_cut, 1.25 * float(np.max(np.where(np.isfinite(d), d, 0.0))))
    if periodic and r_max > r_cut:
        raise JaxiapInputError(f"{field_text(config, 'rdf_r_max', CLI_FLAGS)}: in a periodic cell the RDF is "
                               f"counted from the neighbour list, which holds the pairs within the model's cutoff "
                               f"{r_cut:g} Å; use --rdf-r-max {r_cut:g} or less")
    nn = _nearest_neighbour(positions, box)
    bond = (1.2 * nn if config.bond_cutoff is None else float(config.bond_cutoff)) if basin == "graph" else None
    disp = (0.5 * nn if config.displacement is None else float(config.displacement)) \
        if basin == "displacement" else None
    fs = units.fs
    settings = QoISettings(
        kT=float(config.temperature * units.kB), dt=float(config.timestep * fs),
        gamma=float(config.friction / 1000.0 / fs), n_equilibrate_blocks=config.equilibrate // config.check_every,
        n_blocks=config.steps // config.check_every, block_steps=config.check_every,
        record_every=config.record_every, rdf_bins=config.rdf_bins, rdf_r_max=r_max, basin=basin,
        bond_cutoff=bond or 0.0, displacement=disp or 0.0, quench_steps=config.quench_steps,
        quench_fmax=config.quench_fmax)
    volume = None if box is None else float(np.prod(box) if box.ndim == 1 else abs(np.linalg.det(box)))
    shift_fn = neighbor_fn = None
    if periodic:
        _, shift_fn, neighbor_fn = periodic_space(box, r_cut, dr_threshold=skin)
    return SweepInputs(model, atoms, positions, np.asarray(st.species[0]), box, np.asarray(atoms.get_masses()),
                       settings, basin, bond, disp, nn, r_max, volume, file_sha256(config.start),
                       skin if periodic else None, shift_fn, neighbor_fn)


def draw_samples(posterior, n: int, seed: int) -> np.ndarray:
    """(n, K) parameter vectors: the posterior's ensemble (a committee's first n members), or n draws."""
    key = jax.random.fold_in(jax.random.key(seed), 7)
    try:
        return np.asarray(posterior.ensemble(key, n))
    except JaxiapInputError:  # fewer stored members than asked for: draw with replacement
        return np.asarray(posterior.sample(key, n))


def _basin_summary(inp: SweepInputs, config: SweepConfig, blocks, failed) -> dict | None:
    if inp.basin == "none":
        return None
    dt_ps = config.timestep / 1000.0
    t_censor = config.t_total_ps
    changed = (blocks >= 0) & ~failed
    times = np.where(changed, (blocks + 1) * config.check_every * dt_ps, t_censor)
    codes = np.where(failed, FAILED, np.where(changed, EVENT, CENSORED)).astype(np.int32)
    try:  # the restricted time min(t, t_censor) that every trajectory observes; seeds are common random numbers
        split = variance_split_grid(times, ~failed)
    except JaxiapInputError:
        split = None
    description = (f"bond graph of the FIRE-quenched structure changed, bonds shorter than {inp.bond_cutoff:.3g} Å"
                   if inp.basin == "graph" else
                   f"an atom moved more than {inp.displacement:.3g} Å from its start site, centre-of-mass drift "
                   "removed")
    n_runs = int((~failed).sum())
    return {"criterion": inp.basin, "description": description, "t_censor_ps": t_censor,
            "n_runs": n_runs, "n_changed": int(changed.sum()),
            "fraction_changed": float(changed.sum() / max(n_runs, 1)),
            "times_ps": times.tolist(), "codes": codes.tolist(), "split": split}


def run_sweep(config: SweepConfig, out_dir="runs/sweep", overwrite: bool = False, progress: bool = True,
              devices=None) -> dict:
    """Run the sweep into ``out_dir``; returns the summary dict (also written to summary.json)."""
    from jaxiap.workflows.user_report import write_sweep_figures, write_sweep_report  # lazy: matplotlib only

    timer = StageTimer(verbose=progress)
    with timer("prepare"):
        inp = prepare_sweep(config)
        samples = draw_samples(inp.model.posterior, config.n_samples, config.seed)
    identity = {**dataclasses.asdict(config), "model_fingerprint": inp.model.fingerprint,
                "start_sha256": inp.start_sha256}
    out = runfolder.open_run_folder(out_dir, identity, kind="sweep", overwrite=overwrite)
    pot = LinearPotential(inp.model.basis, jax.numpy.asarray(inp.model.posterior.mean))
    params = parameters(stack_parameters(pot, jax.numpy.asarray(samples)))
    box = None if inp.box is None else jax.numpy.asarray(inp.box)
    program = nvt_qoi_program(pot, inp.settings, masses=inp.masses, shift_fn=inp.shift_fn, box=box,
                              energy_kwargs=dict(box=box, species=jax.numpy.asarray(inp.species)))
    with warnings.catch_warnings():  # jax-md's dense neighbour list scatters int64 into int32 under float64
        warnings.filterwarnings("ignore", "scatter inputs have incompatible types", FutureWarning)
        start = jax.numpy.asarray(inp.positions)
        shared = dict(start=start) if inp.neighbor_fn is None else dict(start=start,
                                                                         neighbor=inp.neighbor_fn.allocate(start))
    devices = tuple(devices) if devices is not None else tuple(jax.devices())
    n_rep = config.n_samples * config.n_seeds
    lanes = max(1, min(-(-n_rep // len(devices)), LANES_PER_DEVICE.get(devices[0].platform, 4096)))
    with timer("md"), warnings.catch_warnings():
        warnings.filterwarnings("ignore", "scatter inputs have incompatible types", FutureWarning)
        if progress:
            print(f"[jaxiap] {config.n_samples} posterior samples x {config.n_seeds} seeds, "
                  f"{config.equilibrate + config.steps} steps of {config.timestep:g} fs "
                  f"({config.t_total_ps:g} ps) each", file=sys.stderr, flush=True)
        run = run_program(program, params, np.arange(config.n_seeds), shared, base_seed=config.seed,
                          chunk_size=config.chunk_size, lanes_per_device=lanes, devices=devices,
                          run_dir=out / "md", progress=progress, kind="nvt-qoi", desc="sweep",
                          identity=dict(program="nvt-qoi", settings=dataclasses.asdict(inp.settings),
                                        model=inp.model.fingerprint, start=inp.start_sha256),
                          where="jaxiap sweep")
    with timer("report"):
        res = run.results
        failed = np.asarray(run.failed, bool)
        valid = ~failed
        pe = np.asarray(res["pe_per_atom"], np.float64)
        n_atoms = len(inp.positions)
        r, rdf = rdf_from_counts(res["rdf_counts"], n_atoms, inp.rdf_r_max, inp.volume)
        blocks = np.asarray(res["basin_block"])
        rdf_kind = "g(r)" if inp.volume is not None else "P(r)"
        qoi = {}
        split_rdf = None
        if (valid.sum(axis=1) >= 2).any():
            qoi["pe_per_atom"] = variance_split_grid(pe, valid)
            split_rdf = variance_split_grid(rdf, valid)
            dr = float(r[1] - r[0]) if r.size > 1 else inp.rdf_r_max
            integ = {k: float(np.sum(split_rdf[k]) * dr) for k in ("total", "thermal", "parametric")}
            qoi["rdf"] = {"kind": rdf_kind, "r": r.tolist(), "mean": split_rdf["mean"].tolist(),
                          "total_per_bin": split_rdf["total"].tolist(),
                          "thermal_per_bin": split_rdf["thermal"].tolist(),
                          "parametric_per_bin": split_rdf["parametric"].tolist(), **integ,
                          "parametric_fraction": integ["parametric"] / integ["total"] if integ["total"] > 0
                          else float("nan"),
                          "thermal_fraction": integ["thermal"] / integ["total"] if integ["total"] > 0
                          else float("nan")}
        basin = _basin_summary(inp, config, blocks, failed)
        if basin is not None:
            qoi["basin"] = basin
        basin_arrays = {} if basin is None else dict(basin_time_ps=np.asarray(basin["times_ps"]),
                                                     basin_code=np.asarray(basin["codes"], np.int32))
        runfolder.savez(out / "qoi.npz", pe_per_atom=pe, rdf=rdf, r=r, basin_block=blocks, failed=failed,
                        samples=samples, quench_unconverged=np.asarray(res["quench_unconverged"]),
                        neighbor_rebuilds=np.asarray(res["neighbor_rebuilds"]), **basin_arrays)
        summary = {
            "command": "sweep",
            "model": {"path": str(config.model), "fingerprint": inp.model.fingerprint,
                      "descriptor": inp.model.info["descriptor"],
                      "posterior_kind": inp.model.info.get("posterior_kind", "")},
            "start": {"path": str(config.start), "sha256": inp.start_sha256, "frame": config.frame,
                      "n_atoms": n_atoms, "periodic": inp.box is not None, "volume": inp.volume,
                      "species": sorted(set(inp.atoms.get_chemical_symbols())),
                      "nearest_neighbour_distance": inp.nn_distance},
            "settings": {"temperature": config.temperature, "timestep": config.timestep, "friction": config.friction,
                         "steps": config.steps, "equilibrate": config.equilibrate,
                         "record_every": config.record_every, "check_every": config.check_every,
                         "rdf_r_max": inp.rdf_r_max, "rdf_bins": config.rdf_bins,
                         "basin": "off" if inp.basin == "none" else inp.basin,
                         "bond_cutoff": inp.bond_cutoff, "displacement": inp.displacement, "skin": inp.skin,
                         "frames_per_trajectory": inp.settings.n_frames, "t_total_ps": config.t_total_ps},
            "n_samples": config.n_samples, "n_seeds": config.n_seeds, "n_runs": n_rep,
            "n_failed": int(failed.sum()),
            "quench_unconverged": int(np.sum(res["quench_unconverged"])),
            "neighbor_rebuilds": int(np.sum(res["neighbor_rebuilds"])),
            "qoi": qoi,
        }
        if split_rdf is not None:
            write_sweep_figures(out, r, rdf, valid, split_rdf, pe, "g(r)" if inp.volume is not None
                                else "pair-distance distribution P(r) (1/Å)")
        summary["wall_time_s"] = dict(timer.times)
        runfolder.write_json(out / "summary.json", summary)
        if "pe_per_atom" in qoi:
            write_sweep_report(out, summary)
        else:
            runfolder.write_text(out / "report.md", f"# jaxiap sweep\n\n{summary['n_failed']} of {n_rep} "
                                 "trajectories failed (non-finite state or neighbour-list overflow), leaving no "
                                 "sample with 2 valid seeds: lower --timestep or --temperature, or raise --skin.\n")
    return summary
