"""FLARE's on-the-fly learning: MD on the GP mean, the oracle called when the predicted force std is too large.

Algorithm (Vandermause et al. 2020; docs/otf.md):

1. Step 0 calls the oracle and trains the GP on ``init_atoms`` atoms.
2. Every step predicts forces and their epistemic std (no noise) with the GP.
3. The threshold is ``std_tolerance * sigma_n`` (the GP's force noise) for a
   positive tolerance, ``|std_tolerance|`` eV/Å for a negative one; 0 never
   calls the oracle after step 0.
4. When the largest std component exceeds it, the oracle (any ASE
   calculator) labels the frame, the ``max_atoms_added`` atoms of largest
   std are added, and the step is taken with the oracle's forces.
   Hyperparameters (the freeze rule): all are optimised at each of the
   first ``freeze_hyps`` updates; afterwards the length scales stay fixed
   except for a full optimisation every ``reoptimize_every`` updates (0:
   never), and with ``refresh_noise`` the signal variances and the noise
   are re-optimised at every update (cheap: the kernel blocks do not
   change, only their weights). With ``refresh_noise=False`` and
   ``reoptimize_every=0`` the hyperparameters are frozen and each update
   extends the Cholesky factor incrementally (O(n^2) per added row block).
5. Velocity rescaling events (the melt) set the instantaneous temperature at
   a given step.
6. Optional ``distance_guard`` (Å; not in FLARE): the oracle is also called
   when two atoms come closer than the closest pair of any labelled frame
   minus the guard, and that pair's atoms join the training set first.
7. ``max_noise`` caps sigma_n and ``hyp_step_factor`` (after the freeze)
   keeps each update's hyperparameters within that factor of the previous
   ones. Options 6 and 7 were added while a periodic-image bug (fixed;
   docs/otf.md, "History") made the liquid run away. ``jaxiap otf`` keeps
   them on; without them (FLARE's rule alone) the study also completes
   within the paper's budget (docs/otf.md, "Results").

Integrator: velocity Verlet (NVE between rescalings), ASE units (Å, eV,
amu; dt in fs). Every oracle call is logged; the run checkpoints to a folder
(atomically) every ``checkpoint_every`` steps and after each oracle call,
and resumes from it: the GP is rebuilt from the stored oracle frames and
hyperparameters (a refit, so the continuation agrees with an uninterrupted
run to rounding, not bit for bit).
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Callable

import numpy as np

from jaxiap.errors import JaxiapInputError
from jaxiap.potentials.gp import GaussianProcess
from jaxiap.potentials.gp_train import BOUNDS, free_hyperparameters, optimize_hyperparameters
from jaxiap.runfolder import read_npz, savez

#: Boltzmann constant in eV/K (ase.units.kB)
KB = 8.617330337217213e-05
#: ASE time unit per fs (ase.units.fs)
FS = 0.09822694788464063


@dataclasses.dataclass(frozen=True)
class OTFSettings:
    """Settings of the on-the-fly loop (see the module docstring)."""

    n_steps: int = 2000
    dt_fs: float = 5.0
    std_tolerance: float = 1.0
    max_atoms_added: int = 1
    init_atoms: int = 4
    freeze_hyps: int = 10
    hyp_max_iterations: int = 30
    refresh_noise: bool = True     # after the freeze: re-optimise signal variances and noise (blocks unchanged)
    reoptimize_every: int = 0     # after the freeze: a full optimisation every this many updates (0: never)
    min_noise: float = 0.0         # lower bound of the force noise sigma_n (eV/Å)
    distance_guard: float | None = None  # Å: also call when a pair is this much closer than any labelled pair
    max_noise: float = 1.0         # upper bound of sigma_n (eV/Å)
    hyp_step_factor: float | None = None  # after the freeze: each update moves a hyperparameter by at most this factor
    rescale: tuple = ()            # ((step, temperature K), ...)
    thermostat: tuple | None = None  # (first step, temperature K, time constant fs): Berendsen from that step on
    checkpoint_every: int = 100

    def __post_init__(self):
        for name in ("n_steps", "max_atoms_added", "init_atoms", "hyp_max_iterations", "checkpoint_every"):
            v = getattr(self, name)
            if not (isinstance(v, (int, np.integer)) and v >= 1):
                raise JaxiapInputError(f"OTFSettings: {name}={v!r} must be a positive integer")
        for name in ("freeze_hyps", "reoptimize_every"):
            v = getattr(self, name)
            if not (isinstance(v, (int, np.integer)) and v >= 0):
                raise JaxiapInputError(f"OTFSettings: {name}={v!r} must be an integer >= 0")
        if not (math.isfinite(self.dt_fs) and self.dt_fs > 0):
            raise JaxiapInputError(f"OTFSettings: dt_fs={self.dt_fs!r} must be a positive time step (fs)")
        if not (math.isfinite(self.max_noise) and self.max_noise > 0):
            raise JaxiapInputError(f"OTFSettings: max_noise={self.max_noise!r} must be a positive number (eV/Å)")
        if self.hyp_step_factor is not None and not (math.isfinite(self.hyp_step_factor) and self.hyp_step_factor > 1):
            raise JaxiapInputError(f"OTFSettings: hyp_step_factor={self.hyp_step_factor!r} must be None or > 1")
        if self.distance_guard is not None and not (math.isfinite(self.distance_guard) and self.distance_guard >= 0):
            raise JaxiapInputError(f"OTFSettings: distance_guard={self.distance_guard!r} must be None or >= 0 (Å)")
        if self.thermostat is not None and not (len(self.thermostat) == 3 and self.thermostat[0] >= 0
                                                and self.thermostat[1] > 0 and self.thermostat[2] >= self.dt_fs):
            raise JaxiapInputError(f"OTFSettings: thermostat={self.thermostat!r} must be (first step >= 0, "
                                   "temperature K > 0, time constant fs >= dt_fs) or None")
        if not math.isfinite(self.std_tolerance):
            raise JaxiapInputError(f"OTFSettings: std_tolerance={self.std_tolerance!r} must be finite")
        rescale = tuple((int(s), float(t)) for s, t in self.rescale)
        for s, t in rescale:
            if not (0 <= s < self.n_steps and t > 0):
                raise JaxiapInputError(f"OTFSettings: rescale event ({s}, {t}) needs 0 <= step < n_steps and T > 0 K")
        object.__setattr__(self, "rescale", rescale)


def temperature(velocities, masses) -> float:
    """Instantaneous temperature (K) = 2 KE / (3 N k_B), velocities in Å per ASE time unit, masses amu."""
    ke = 0.5 * float(np.sum(masses[:, None] * velocities**2))
    return 2.0 * ke / (3 * len(masses) * KB)


def maxwell_boltzmann(masses, temperature_k: float, rng) -> np.ndarray:
    """Velocities (N, 3) at ``temperature_k`` with zero total momentum, rescaled to the exact temperature."""
    v = rng.normal(size=(len(masses), 3)) * np.sqrt(KB * temperature_k / masses)[:, None]
    v -= np.sum(masses[:, None] * v, axis=0) / np.sum(masses)
    t = temperature(v, masses)
    return v * math.sqrt(temperature_k / t) if t > 0 else v


class OTFResult(dict):
    """Logs of an on-the-fly run (a dict): per-step arrays and the list of oracle calls."""


def _threshold(gp: GaussianProcess, tol: float) -> float:
    if tol > 0:
        return tol * gp.hyperparameters.noise
    if tol < 0:
        return -tol
    return math.inf


def run_otf(atoms, gp: GaussianProcess, settings: OTFSettings, *, velocities=None, temperature_k: float = 300.0,
            seed: int = 0, folder=None, progress: bool = True, on_call: Callable | None = None) -> OTFResult:
    """On-the-fly MD of ``atoms`` (ASE Atoms whose ``calc`` is the oracle) with the GaussianProcess ``gp``.

    velocities: (N, 3) Å per ASE time unit, or None to draw them at
    ``temperature_k`` from ``seed``. folder: checkpoint folder (resumed when
    it holds a checkpoint of this run). on_call(record): called after each
    oracle call. Returns an :class:`OTFResult` with per-step arrays
    ``time_ps``, ``temperature``, ``max_std``, ``threshold``, ``oracle``
    (bool), ``n_train_atoms``, ``noise`` and the list ``calls`` (step, time,
    atoms added, max std, hyperparameters, wall time).
    """
    if atoms.calc is None:
        raise JaxiapInputError("run_otf: atoms.calc is None; attach the oracle, e.g. atoms.calc = EMT()")
    calc = atoms.calc
    atoms = atoms.copy()
    atoms.calc = calc
    oracle = _oracle_of(atoms)
    n = len(atoms)
    if settings.init_atoms > n or settings.max_atoms_added > n:
        raise JaxiapInputError(f"run_otf: init_atoms={settings.init_atoms} and max_atoms_added="
                               f"{settings.max_atoms_added} must not exceed the {n} atoms")
    masses = atoms.get_masses()
    cell = np.asarray(atoms.cell) if atoms.pbc.any() else None
    numbers = atoms.numbers
    dt = settings.dt_fs * FS
    rng = np.random.default_rng(seed)
    rescale = dict(settings.rescale)
    ckpt = None if folder is None else Path(folder) / "otf_checkpoint.npz"

    state = _resume(ckpt, gp, n, cell, numbers) if ckpt is not None and ckpt.exists() else None
    if state is None:
        x = atoms.positions.copy()
        # v: the full-step velocity at step 0, afterwards the half-step velocity v(t - dt/2) awaiting F(x(t))
        v = maxwell_boltzmann(masses, temperature_k, rng) if velocities is None else np.asarray(velocities, float)
        logs = {k: [] for k in LOG_KEYS}
        frames, calls, step, n_updates = [], [], 0, 0
    else:
        x, v, logs, frames, calls, step, n_updates = state
    probe = atoms.copy()
    probe.calc = None
    r_min_labelled = min([_closest_pair(probe, f[0])[0] for f in frames], default=np.inf)
    guard_calls = 0
    bar = _bar(settings.n_steps, step, progress)
    t_wall = time.perf_counter()
    try:
        while step < settings.n_steps:
            if gp.n_rows:
                pred = gp.predict(x, cell, numbers, energy_std=False)
                f_gp, std = pred["forces"], pred["forces_std"]
            else:
                f_gp, std = np.zeros((n, 3)), np.full((n, 3), np.inf)
            thr = _threshold(gp, settings.std_tolerance)
            close_pair = None
            if settings.distance_guard is not None and frames:
                d_min, close_pair = _closest_pair(probe, x)
                if d_min >= r_min_labelled - settings.distance_guard:
                    close_pair = None
            call = step == 0 or float(std.max()) > thr or close_pair is not None
            forces = f_gp
            if call:
                e_ref, f_ref = oracle(x)
                forces = f_ref
                per_atom = std.max(axis=1)
                k = settings.init_atoms if not gp.n_rows else settings.max_atoms_added
                if np.all(np.isinf(per_atom)):
                    chosen = np.sort(rng.choice(n, size=k, replace=False))
                else:
                    if close_pair is not None:  # the guard fired: the closest pair goes in first
                        per_atom = per_atom.copy()
                        per_atom[list(close_pair)] = np.inf
                    chosen = np.sort(np.argsort(-per_atom, kind="stable")[:k])
                r_min_labelled = min(r_min_labelled, _closest_pair(probe, x)[0])
                guard_calls += close_pair is not None
                gp.add(x, cell, numbers, forces=f_ref, atoms=chosen)
                frames.append((x.copy(), f_ref, e_ref, chosen))
                t0 = time.perf_counter()
                bounds = _update_bounds(gp, settings, first=n_updates < settings.freeze_hyps)
                full = n_updates < settings.freeze_hyps or (
                    settings.reoptimize_every > 0 and (n_updates - settings.freeze_hyps + 1) % settings.reoptimize_every == 0)
                if full:
                    optimize_hyperparameters(gp, max_iterations=settings.hyp_max_iterations, bounds=bounds)
                elif settings.refresh_noise:
                    names = tuple(n for n in free_hyperparameters(gp) if n not in ("l2", "l3"))
                    optimize_hyperparameters(gp, names=names, max_iterations=settings.hyp_max_iterations,
                                             bounds=bounds)
                else:
                    gp.update()
                n_updates += 1
                record = {"step": step, "time_ps": step * settings.dt_fs / 1000.0, "atoms": chosen.tolist(),
                          "guard": close_pair is not None,
                          "max_std": float(std.max()) if np.isfinite(std.max()) else None, "threshold": thr,
                          "n_train_atoms": gp.n_force_atoms, "hyperparameters": gp.hyperparameters._asdict(),
                          "train_seconds": time.perf_counter() - t0}
                calls.append(record)
                if on_call is not None:
                    on_call(record)
            if step > 0:  # complete the velocity Verlet step: v(t) = v(t - dt/2) + F(t) dt / 2m
                v = v + 0.5 * dt * forces / masses[:, None]
            if step in rescale:
                t_now = temperature(v, masses)
                v = v * math.sqrt(rescale[step] / t_now) if t_now > 0 else maxwell_boltzmann(masses, rescale[step], rng)
            if settings.thermostat is not None and step > settings.thermostat[0]:
                # Berendsen (weak coupling): T relaxes to the target with time constant tau
                t_now, (_, t_target, tau) = temperature(v, masses), settings.thermostat
                if t_now > 0:
                    v = v * math.sqrt(max(0.0, 1.0 + settings.dt_fs / tau * (t_target / t_now - 1.0)))
            logs["time_ps"].append(step * settings.dt_fs / 1000.0)
            logs["temperature"].append(temperature(v, masses))
            logs["max_std"].append(float(std.max()) if np.isfinite(std.max()) else np.nan)
            logs["threshold"].append(thr if np.isfinite(thr) else np.nan)
            logs["oracle"].append(bool(call))
            logs["n_train_atoms"].append(gp.n_force_atoms)
            logs["noise"].append(gp.hyperparameters.noise)
            v = v + 0.5 * dt * forces / masses[:, None]      # v(t + dt/2)
            x = x + dt * v
            step += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(calls=len(calls), atoms=gp.n_force_atoms, T=f"{logs['temperature'][-1]:.0f}K")
            if ckpt is not None and (call or step % settings.checkpoint_every == 0 or step == settings.n_steps):
                _checkpoint(ckpt, x, v, logs, frames, calls, step, n_updates, gp)
    finally:
        if bar is not None:
            bar.close()
    result = OTFResult({k: np.asarray(val) for k, val in logs.items()})
    result["calls"] = calls
    result["frames"] = frames
    result["final_positions"] = x
    result["wall_seconds"] = time.perf_counter() - t_wall
    return result


LOG_KEYS = ("time_ps", "temperature", "max_std", "threshold", "oracle", "n_train_atoms", "noise")


def _update_bounds(gp, settings: OTFSettings, first: bool) -> dict:
    """Hyperparameter bounds of one update: the global ones, the noise floor and ceiling, and (after the
    freeze) a trust region of ``hyp_step_factor`` around the current values."""
    lo_n = max(settings.min_noise, BOUNDS["noise"][0])
    bounds = {k: tuple(v) for k, v in BOUNDS.items()}
    bounds["noise"] = (lo_n, max(lo_n, min(settings.max_noise, BOUNDS["noise"][1])))
    if not first and settings.hyp_step_factor is not None:
        f = settings.hyp_step_factor
        for name, (lo, hi) in bounds.items():
            v = getattr(gp.hyperparameters, name)
            bounds[name] = (max(lo, min(hi, v / f)), min(hi, max(lo, v * f)))
    return bounds


def _closest_pair(probe, x):
    """(smallest interatomic distance, (i, j)) of positions x, minimum image in ``probe``'s cell."""
    probe.positions = x
    d = probe.get_all_distances(mic=bool(probe.pbc.any()))
    np.fill_diagonal(d, np.inf)
    i, j = np.unravel_index(np.argmin(d), d.shape)
    return float(d[i, j]), (int(i), int(j))


def _oracle_of(atoms):
    def oracle(x):
        a = atoms.copy()
        a.positions = x
        a.calc = atoms.calc
        return float(a.get_potential_energy()), np.asarray(a.get_forces())
    return oracle


def _bar(total, initial, progress):
    if not progress:
        return None
    from tqdm.auto import tqdm  # lazy: only when a bar is shown

    return tqdm(total=total, initial=initial, desc="otf MD", unit="step", leave=False)


def _checkpoint(path: Path, x, v, logs, frames, calls, step, n_updates, gp):
    import json

    savez(path, x=x, v=v, step=step, n_updates=n_updates,
          frame_x=np.array([f[0] for f in frames]), frame_f=np.array([f[1] for f in frames]),
          frame_e=np.array([f[2] for f in frames]),
          frame_atoms=np.array(json.dumps([list(map(int, f[3])) for f in frames])),
          calls=np.array(json.dumps(calls)), hyperparameters=np.array(list(gp.hyperparameters)),
          **{f"log_{k}": np.asarray(val) for k, val in logs.items()})


def _resume(path: Path, gp: GaussianProcess, n: int, cell, numbers):
    """(x, v, logs, frames, calls, step, n_updates) from a checkpoint; rebuilds ``gp`` from its oracle frames."""
    import json

    from jaxiap.potentials.gp import GPHyperparameters

    with read_npz(path, "on-the-fly checkpoint") as zf:
        z = {k: np.asarray(zf[k]) for k in zf.files}
    x = z["x"]
    if x.shape != (n, 3):
        raise JaxiapInputError(f"{path} holds a run of {x.shape[0]} atoms, not {n}; choose another folder")
    if gp.n_rows:
        raise JaxiapInputError("run_otf: resuming needs an empty GaussianProcess (it is rebuilt from the checkpoint)")
    frames = []
    atoms_lists = json.loads(str(z["frame_atoms"]))
    for fx, ff, fe, fa in zip(z["frame_x"], z["frame_f"], z["frame_e"], atoms_lists):
        frames.append((np.asarray(fx), np.asarray(ff), float(fe), np.asarray(fa, int)))
        gp.add(frames[-1][0], cell, numbers, forces=frames[-1][1], atoms=frames[-1][3])
    gp.set_hyperparameters(GPHyperparameters(*np.asarray(z["hyperparameters"]).tolist()))
    if frames:
        gp.refit()
    logs = {k: list(z["log_" + k]) for k in LOG_KEYS}
    return x, np.asarray(z["v"]), logs, frames, json.loads(str(z["calls"])), int(z["step"]), int(z["n_updates"])
