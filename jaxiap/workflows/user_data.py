"""The user's structure files: reading labelled data for ``jaxiap fit``, structures for ``predict`` / ``sweep``,
and writing predictions as extended XYZ at full precision.

Any format ASE reads (``ase.io.read``, format guessed from the file name and
content) is accepted. Labels are looked up by key, first in the results of a
calculator attached by the reader (ASE's extxyz reader puts ``energy``,
``forces`` and ``stress`` there), then in ``atoms.info`` (energy, stress) or
``atoms.arrays`` (forces), so ``--energy-key REF_energy`` reads a file whose
reference energies are stored under another name. Per-structure weights are
read from ``info["energy_weight"]``, ``info["force_weight"]`` and
``info["stress_weight"]`` (default 1). Stress is ASE's: (1 / V) dE/d(strain)
in eV/Å^3, Voigt order xx, yy, zz, yz, xz, xy (a 3 x 3 matrix is also read).

Every problem raises :class:`JaxiapInputError` naming the file (and the
structure and key where it applies) before any fitting.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from jaxiap import runfolder
from jaxiap.data import Dataset
from jaxiap.errors import JaxiapInputError
from jaxiap.geometry import check_cell
from jaxiap.structures import from_atoms

#: Voigt order of ASE's stress
VOIGT = ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))


def read_structures(path, index=":", what: str = "structure file") -> list:
    """ASE Atoms read from ``path`` (``index`` as ase.io.read); JaxiapInputError naming the file if it
    is missing, a folder, unreadable or empty."""
    import ase.io  # lazy: ase.io only for file I/O (keeps import jaxiap fast)

    p = Path(path)
    if not p.exists():
        raise JaxiapInputError(f"{path}: no such file")
    if p.is_dir():
        raise JaxiapInputError(f"{path}: is a folder, not a {what}")
    try:
        frames = ase.io.read(str(p), index=index)
    except Exception as exc:  # noqa: BLE001 - ASE's readers raise many kinds
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise JaxiapInputError(f"{path}: cannot read it as a {what} ({type(exc).__name__}: {text}); jaxiap reads "
                               "any format ase.io.read reads (extended XYZ, ...) and guesses it from the file name "
                               "and content") from None
    frames = [frames] if hasattr(frames, "get_positions") else list(frames)
    if not frames:
        raise JaxiapInputError(f"{path}: holds no structures")
    for k, a in enumerate(frames):
        if len(a) == 0:
            raise JaxiapInputError(f"{path}: structure {k} has no atoms")
    return frames


def _keys(atoms) -> str:
    calc = sorted(getattr(atoms.calc, "results", {}) or {}) if atoms.calc is not None else []
    info = sorted(k for k in atoms.info)
    arrays = sorted(k for k in atoms.arrays if k not in ("numbers", "positions"))
    return f"calculator results {calc}, info {info}, arrays {arrays}"


def _lookup(atoms, key: str, per_atom: bool):
    """The value of label ``key`` (calculator results first, then arrays / info), or None."""
    results = getattr(atoms.calc, "results", None) if atoms.calc is not None else None
    if results and key in results and results[key] is not None:
        return np.asarray(results[key], float)
    store = atoms.arrays if per_atom else atoms.info
    if key in store:
        try:
            return np.asarray(store[key], float)
        except (TypeError, ValueError):
            return None
    return None


def _voigt(stress) -> np.ndarray | None:
    s = np.asarray(stress, float).reshape(-1)
    if s.size == 6:
        return s
    if s.size == 9:
        m = s.reshape(3, 3)
        return np.array([m[i, j] for i, j in VOIGT])
    return None


class LabelledData:
    """A :class:`~jaxiap.data.Dataset` of the file's structures plus their stress labels.

    dataset: energies (S,), forces (S, N, 3), per-structure energy and force weights (info,
    default 1). stress: (S, 6) Voigt (zeros where absent); has_stress: (S,) bool;
    stress_weight: (S,) per-structure weights (info, default 1). atoms: the ASE frames.
    """

    def __init__(self, dataset, stress, has_stress, stress_weight, atoms, path):
        self.dataset, self.stress, self.has_stress, self.stress_weight = dataset, stress, has_stress, stress_weight
        self.atoms, self.path = atoms, str(path)

    def __len__(self):
        return len(self.dataset)


def read_labelled(path, *, energy_key: str = "energy", forces_key: str = "forces", stress_key: str = "stress",
                  need_stress: bool = False) -> LabelledData:
    """Read labelled structures for a fit (see the module docstring for where labels are found).

    need_stress: the stress label is required (a fit with stress_weight > 0) in at least one structure.
    Raises JaxiapInputError naming the file, the structure and the key for a missing or malformed label.
    """
    frames = read_structures(path, what="structure file")
    s = len(frames)
    energy = np.zeros(s)
    stress = np.zeros((s, 6))
    has_stress = np.zeros(s, bool)
    weights = {name: np.ones(s) for name in ("energy_weight", "force_weight", "stress_weight")}
    forces = []
    for k, a in enumerate(frames):
        e = _lookup(a, energy_key, per_atom=False)
        if e is None or e.size != 1:
            raise JaxiapInputError(
                f"{path}: structure {k} has no energy label {energy_key!r} (looked in its {_keys(a)}); label every "
                "structure, or name the key that holds the energies with --energy-key")
        f = _lookup(a, forces_key, per_atom=True)
        if f is None or f.shape != (len(a), 3):
            raise JaxiapInputError(
                f"{path}: structure {k} has no forces label {forces_key!r} of shape ({len(a)}, 3) (looked in its "
                f"{_keys(a)}); label every structure, or name the key that holds the forces with --forces-key")
        energy[k] = float(e.reshape(()))
        forces.append(f)
        st = _lookup(a, stress_key, per_atom=False) if any(a.pbc) else None
        if st is not None:
            v = _voigt(st)
            if v is None:
                raise JaxiapInputError(f"{path}: structure {k}: stress label {stress_key!r} has {st.size} values; "
                                       "expected 6 (Voigt xx yy zz yz xz xy) or 9 (3 x 3)")
            stress[k], has_stress[k] = v, True
        for name, w in weights.items():
            if name in a.info:
                try:
                    w[k] = float(a.info[name])
                except (TypeError, ValueError):
                    raise JaxiapInputError(f"{path}: structure {k}: info[{name!r}] = {a.info[name]!r} is not a "
                                           "number") from None
                if not (np.isfinite(w[k]) and w[k] >= 0):
                    raise JaxiapInputError(f"{path}: structure {k}: info[{name!r}] = {w[k]!r} must be a finite "
                                           "weight >= 0")
    if need_stress and not has_stress.any():
        raise JaxiapInputError(f"{path}: no structure has a stress label {stress_key!r} (periodic structures only; "
                               "looked in the calculator results and info), but --stress-weight > 0; use "
                               "--stress-weight 0 or name the key with --stress-key")
    try:
        st = from_atoms(frames)
    except JaxiapInputError as exc:
        raise JaxiapInputError(f"{path}: {exc}") from None
    n = st.positions.shape[1]
    f_pad = np.zeros((s, n, 3))
    for k, f in enumerate(forces):
        f_pad[k, : len(f)] = f
    try:
        ds = Dataset(st, energy, f_pad, weights["energy_weight"], weights["force_weight"])
    except JaxiapInputError as exc:
        raise JaxiapInputError(f"{path}: {exc}") from None
    return LabelledData(ds, stress, has_stress, weights["stress_weight"], frames, path)


def check_cells(structures, r_cut: float, path, option: str = "--r-cut") -> None:
    """Every periodic cell of ``structures`` must be wider than 2 r_cut (minimum image); names the file."""
    if structures.box is None:
        return
    boxes = np.asarray(structures.box)
    flat = boxes.reshape(boxes.shape[0], -1)
    _, first = np.unique(flat, axis=0, return_index=True)
    for k in sorted(first):
        check_cell(boxes[k], r_cut, f"{path}: structure {k} ({option} {r_cut:g} Å)")


def distance_matrix(positions, box=None) -> np.ndarray:
    """(N, N) interatomic distances of one structure in numpy (minimum image in a cell; inf on the diagonal)."""
    x = np.asarray(positions, float)
    dr = x[None, :, :] - x[:, None, :]
    if box is not None:
        b = np.asarray(box, float)
        if b.ndim == 1:
            dr = dr - b * np.round(dr / b)
        else:
            frac = dr @ np.linalg.inv(b)
            dr = (frac - np.round(frac)) @ b
    r = np.sqrt(np.sum(dr**2, axis=-1))
    np.fill_diagonal(r, np.inf)
    return r


def shortest_distance(structures) -> float:
    """The shortest interatomic distance over a batch (minimum image in cells)."""
    pos, mask = np.asarray(structures.positions), np.asarray(structures.mask)
    box = None if structures.box is None else np.asarray(structures.box)
    return float(min(distance_matrix(pos[k][mask[k]], None if box is None else box[k]).min()
                     for k in range(pos.shape[0])))


# ----------------------------------------------------------------------------- writing


def _format_column(values, kind: str):
    if kind == "R":
        return [repr(float(v)) for v in values]
    if kind == "I":
        return [str(int(v)) for v in values]
    if kind == "L":
        return ["T" if v else "F" for v in values]
    return [str(v) for v in values]


def extxyz_text(atoms_list) -> str:
    """Extended XYZ of ``atoms_list`` with every float at full precision (shortest round-trip repr).

    ``ase.io.write`` rounds per-atom arrays to 8 decimals; this writes the same layout (Lattice,
    Properties, info key=value pairs, pbc) so that ``ase.io.read`` reads the exact numbers back.
    Calculator results are not written: put values into info / arrays.
    """
    from ase.io.extxyz import key_val_dict_to_str  # lazy: ase.io only for file I/O

    lines = []
    for atoms in atoms_list:
        columns = [("species", "S", 1, np.asarray(atoms.get_chemical_symbols())),
                   ("pos", "R", 3, atoms.positions)]
        for name, arr in atoms.arrays.items():
            if name in ("numbers", "positions", "species", "pos"):
                continue
            arr = np.asarray(arr)
            kind = {"f": "R", "i": "I", "u": "I", "b": "L"}.get(arr.dtype.kind, "S")
            ncol = 1 if arr.ndim == 1 else int(np.prod(arr.shape[1:]))
            columns.append((name, kind, ncol, arr.reshape(len(atoms), -1) if ncol > 1 else arr))
        props = ":".join(f"{name}:{kind}:{ncol}" for name, kind, ncol, _ in columns)
        info = dict(atoms.info)
        info["pbc"] = atoms.get_pbc()
        head = ""
        if atoms.cell.any():
            head = 'Lattice="' + " ".join(repr(float(x)) for x in np.asarray(atoms.cell[:]).reshape(-1)) + '" '
        lines.append(str(len(atoms)))
        lines.append(head + f"Properties={props} " + key_val_dict_to_str(info))
        cols = []
        for _, kind, ncol, arr in columns:
            a = arr.reshape(len(atoms), ncol) if ncol > 1 else arr.reshape(len(atoms), 1)
            cols.append([_format_column(a[:, c], kind) for c in range(a.shape[1])])
        for i in range(len(atoms)):
            lines.append(" ".join(col[i] for block in cols for col in block))
    return "\n".join(lines) + "\n"


def write_extxyz_exact(path, atoms_list) -> None:
    """Write :func:`extxyz_text` atomically (a file in a run folder is listed in its manifest)."""
    runfolder.write_text(path, extxyz_text(atoms_list))
