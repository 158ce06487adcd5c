"""Run folders: atomic writes, a manifest of what jaxiap wrote, strict JSON, versioned metadata.

Every file jaxiap writes into a run folder goes through the writers below:

- **Atomic**: the bytes go to a hidden temporary name in the same folder,
  are flushed to disk, and are renamed over the target (``os.replace``), so
  a kill at any moment leaves the old file or the new one, never a torn one.
- **Manifest**: a run folder holds a ``.jaxiap-files`` list of the names
  jaxiap wrote there (sub-folders end in ``/`` and have their own list).
  ``--overwrite`` removes exactly those names and nothing else; a file that
  exists in a run folder but is not listed (a user's ``notes.txt``) is never
  overwritten or removed: writing over it raises :class:`JaxiapInputError`.
  Outside a run folder (a plain ``posterior.save("x.npz")``) the writers
  are atomic and keep no list.
- **Strict JSON**: no ``NaN``/``Infinity`` literals, so every standard
  parser reads the files. ``+inf``/``-inf`` are written as the strings
  ``"Infinity"``/``"-Infinity"`` and NaN as ``null``; :func:`read_json`
  turns the strings back into floats (docs/science.md, "Files and JSON").
- **Versioned**: the folder's metadata file (``config.json`` for a study,
  ``ensemble_meta.json`` for an MD ensemble, ``loop.json`` for an
  active-learning loop) records ``jaxiap_format`` (:data:`FORMAT`),
  ``jaxiap_version`` and ``jaxiap_kind``. A folder of another format, or one
  whose identity differs in any key (a key missing on disk counts as
  different), is never resumed silently.

This module sits below every other jaxiap module (it imports only numpy and
:mod:`jaxiap.errors`), so any layer may write run-folder files.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
from pathlib import Path

import numpy as np

from jaxiap._version import __version__
from jaxiap.errors import JaxiapInputError

#: run-folder format number; bump when a folder written by this version cannot be resumed by the next
FORMAT = 1
#: name of the per-folder list of files jaxiap wrote
MANIFEST = ".jaxiap-files"
_TMP_TAG = ".jaxiap-tmp"
_FIX = "pass --overwrite (overwrite=True) to remove the files jaxiap wrote there, or choose a new folder"


# ----------------------------------------------------------------------------- JSON


def jsonable(x):
    """Plain JSON types: numpy scalars/arrays to Python, +-inf to "Infinity"/"-Infinity", NaN to None."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        x = float(x)
        if math.isnan(x):
            return None
        if math.isinf(x):
            return "Infinity" if x > 0 else "-Infinity"
        return x
    return x


def _decode(x):
    if isinstance(x, dict):
        return {k: _decode(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_decode(v) for v in x]
    if x == "Infinity":
        return math.inf
    if x == "-Infinity":
        return -math.inf
    return x


def dumps(data, indent: int | None = 2) -> str:
    """Strict JSON text of ``data`` (see :func:`jsonable`)."""
    return json.dumps(jsonable(data), indent=indent, allow_nan=False)


def read_json(path, what: str = "") -> dict:
    """Parse a JSON file written by jaxiap ("Infinity" strings back to floats).

    A missing, truncated or corrupt file raises :class:`JaxiapInputError`
    naming the file.
    """
    path = Path(path)
    try:
        return _decode(json.loads(path.read_text()))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise JaxiapInputError(f"{path}: cannot read {what or 'JSON file'} ({type(exc).__name__}: {exc}); "
                               f"the file is truncated or corrupt: {_FIX}") from None


# ----------------------------------------------------------------------------- manifest


def is_run_folder(path) -> bool:
    """True when ``path`` is a folder holding a jaxiap file manifest."""
    return (Path(path) / MANIFEST).is_file()


def written_names(folder) -> list[str]:
    """Names listed in ``folder``'s manifest (sub-folders end in "/"); [] outside a run folder."""
    m = Path(folder) / MANIFEST
    if not m.is_file():
        return []
    return [line for line in m.read_text().splitlines() if line and "/" not in line.rstrip("/")]


def _write_manifest(folder: Path, names: list[str]) -> None:
    tmp = folder / f"{MANIFEST}{_TMP_TAG}{os.getpid()}"
    with open(tmp, "w") as f:
        f.write("".join(n + "\n" for n in names))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, folder / MANIFEST)


def _register(folder: Path, name: str) -> None:
    names = written_names(folder)
    if name not in names:
        _write_manifest(folder, names + [name])


def register_names(folder, names) -> None:
    """List ``names`` in run folder ``folder``'s manifest before they are written (one manifest write).

    For parallel writers into one folder (Dask tasks writing chunk files):
    each atomic write lists its name by rewriting the manifest, so two
    writers at once could each drop the other's name; names listed
    beforehand are never rewritten.
    """
    folder = Path(folder)
    if not is_run_folder(folder):
        raise JaxiapInputError(f"{folder} is not a jaxiap run folder (no {MANIFEST}); open it first")
    have = written_names(folder)
    new = [n for n in dict.fromkeys(names) if n not in have]
    if new:
        _write_manifest(folder, have + new)


def _check_target(path: Path) -> None:
    """In a run folder, refuse to write over a file jaxiap did not write."""
    if path.exists() and is_run_folder(path.parent) and path.name not in written_names(path.parent):
        raise JaxiapInputError(
            f"{path} exists and was not written by jaxiap (it is not in {path.parent / MANIFEST}); "
            "jaxiap never overwrites such a file: move it away, or choose another folder")


def ensure_dir(path) -> Path:
    """Create the folder ``path`` as a run (sub-)folder: it gets a manifest, and is listed in its
    parent's manifest when the parent is a run folder. Returns the Path."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise JaxiapInputError(f"{path} is a file, not a folder; choose a folder path")
    if not path.parent.exists():
        ancestor = next(p for p in path.parents if p.exists())
        if is_run_folder(ancestor):  # folders made inside a run folder are listed at every level
            ensure_dir(path.parent)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
    parent_is_run = is_run_folder(path.parent)
    if parent_is_run and path.exists() and path.name + "/" not in written_names(path.parent) \
            and not is_run_folder(path) and any(path.iterdir()):
        raise JaxiapInputError(f"{path} exists, is not empty and was not made by jaxiap; move it away, "
                               "or choose another folder")
    path.mkdir(parents=True, exist_ok=True)
    if parent_is_run:
        _register(path.parent, path.name + "/")
    if not is_run_folder(path):
        _write_manifest(path, [])
    return path


# ----------------------------------------------------------------------------- atomic writers


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path (same folder and suffix) to write ``path`` through; on success it is
    flushed and renamed over ``path`` (and listed in the run folder's manifest)."""
    path = Path(path)
    _check_target(path)
    tmp = path.with_name(f".{path.stem}{_TMP_TAG}{os.getpid()}{path.suffix}")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        if is_run_folder(path.parent):
            _register(path.parent, path.name)  # listed before it exists: a kill leaves no unlisted file
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


def write_text(path, text: str) -> None:
    """Atomically write ``text`` to ``path``."""
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)


def write_json(path, data) -> None:
    """Atomically write strict JSON (see :func:`jsonable`)."""
    write_text(path, dumps(data) + "\n")


def savez(path, **arrays) -> Path:
    """Atomic ``np.savez`` (".npz" appended when missing, as numpy does); returns the path."""
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_name(path.name + ".npz")
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
    return path


def save_npy(path, array) -> None:
    """Atomic ``np.save``."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, np.asarray(array))


@contextlib.contextmanager
def read_npz(path, what: str = ""):
    """``np.load`` of an .npz (no pickle) as a context; a truncated or corrupt file raises
    :class:`JaxiapInputError` naming it. Use: ``with read_npz(p) as z: a = z["a"]``."""
    path = Path(path)
    try:
        z = np.load(path, allow_pickle=False)
    except Exception as exc:  # BadZipFile, EOFError, ValueError, OSError: all mean unreadable
        raise JaxiapInputError(f"{path}: cannot read {what or '.npz file'} ({type(exc).__name__}: {exc}); "
                               f"the file is truncated or corrupt: {_FIX}") from None
    try:
        yield _CheckedNpz(z, path, what)
    finally:
        z.close()


class _CheckedNpz:
    """An open NpzFile whose item access turns read errors into JaxiapInputError."""

    def __init__(self, z, path, what):
        self._z, self._path, self._what = z, path, what
        self.files = z.files

    def __contains__(self, key):
        return key in self._z.files

    def __getitem__(self, key):
        try:
            return self._z[key]
        except Exception as exc:
            missing = isinstance(exc, KeyError)
            why = f"has no array {key!r}" if missing else f"array {key!r} is unreadable ({type(exc).__name__}: {exc})"
            raise JaxiapInputError(f"{self._path}: {self._what or '.npz file'} {why}; the file is truncated, "
                                   f"corrupt or from another program: {_FIX}") from None


def load_npy(path, what: str = "") -> np.ndarray:
    """``np.load`` of an .npy (no pickle); unreadable files raise JaxiapInputError naming them."""
    try:
        return np.load(Path(path), allow_pickle=False)
    except Exception as exc:
        raise JaxiapInputError(f"{path}: cannot read {what or '.npy file'} ({type(exc).__name__}: {exc}); "
                               f"the file is truncated or corrupt: {_FIX}") from None


# ----------------------------------------------------------------------------- run folders


def stamp(kind: str) -> dict:
    """The version keys every run-folder metadata file carries."""
    return {"jaxiap_format": FORMAT, "jaxiap_version": __version__, "jaxiap_kind": kind}


def _differences(have: dict, want: dict) -> list[str]:
    out = []
    for k in sorted(set(have) | set(want)):
        if k not in have:
            out.append(f"{k} (missing in the folder)")
        elif k not in want:
            out.append(f"{k} (not in this run's settings)")
        elif have[k] != want[k]:
            out.append(k)
    return out


def plan_removal(folder) -> list[Path]:
    """Every path that :func:`remove_written` would delete (files first, then emptied folders)."""
    folder = Path(folder)
    files, dirs = [], []
    for name in written_names(folder):
        p = folder / name.rstrip("/")
        if name.endswith("/"):
            if p.is_dir():
                sub_files = plan_removal(p)
                files += [q for q in sub_files if not q.is_dir()]
                dirs += [q for q in sub_files if q.is_dir()]
        elif p.exists() or p.is_symlink():
            files.append(p)
    files += [p for p in folder.iterdir() if _TMP_TAG in p.name] if folder.is_dir() else []
    if is_run_folder(folder):
        files.append(folder / MANIFEST)
    return files + dirs + [folder]


def remove_written(folder, *, keep_root: bool = True) -> tuple[list[Path], list[Path]]:
    """Delete the files listed in ``folder``'s manifests (recursively) and the manifests; folders
    are removed only when nothing else is left in them. Returns (removed, kept_foreign)."""
    folder = Path(folder)
    removed = []
    for name in written_names(folder):
        p = folder / name.rstrip("/")
        if name.endswith("/"):
            if p.is_dir() and is_run_folder(p):
                removed += remove_written(p, keep_root=False)[0]
        elif p.is_file() or p.is_symlink():
            p.unlink()
            removed.append(p)
    for p in list(folder.iterdir()):
        if _TMP_TAG in p.name and p.is_file():
            p.unlink()
            removed.append(p)
    m = folder / MANIFEST
    if m.exists():
        m.unlink()
        removed.append(m)
    kept = sorted(p for p in folder.rglob("*") if p.is_file())
    if not keep_root and not any(folder.iterdir()):
        folder.rmdir()
    return removed, kept


def _describe_removal(folder: Path) -> str:
    paths = [p for p in plan_removal(folder) if p.is_file() and p.name != MANIFEST and _TMP_TAG not in p.name]
    top = {}
    for p in paths:
        rel = p.relative_to(folder)
        key = rel.parts[0] + ("/" if len(rel.parts) > 1 else "")
        top[key] = top.get(key, 0) + 1
    items = [k if n == 1 and not k.endswith("/") else f"{k} ({n} files)" for k, n in sorted(top.items())]
    return f"{len(paths)} files jaxiap wrote" + (f": {', '.join(items)}" if items else "")


def open_run_folder(path, identity: dict, *, kind: str, overwrite: bool = False, meta_name: str = "config.json",
                    extra: dict | None = None, option: str = "--out") -> Path:
    """Create the run folder ``path`` or resume it when its metadata matches ``identity``.

    identity: the settings that decide the folder's results (JSON-able);
        compared key by key with ``meta_name`` on disk; any difference,
        including a key missing on disk, refuses to resume.
    kind: what the folder holds ("lj13", "lj13-al", "frt-ensemble", ...).
    overwrite: when the folder holds other results (or an unreadable
        metadata file), remove the files jaxiap wrote there (listed in its
        manifests; anything else is kept and reported) and start afresh; what is removed and kept is printed to stderr.
    meta_name: the metadata file (written with :func:`stamp` and ``extra``).
    option: how the caller names the folder in messages ("--out", "run_dir").

    Errors (JaxiapInputError, before any work): ``path`` is a file; ``path``
    is a non-empty folder that is not a jaxiap run folder (also with
    overwrite: nothing is removed); the metadata is from another run-folder
    format, another kind, or other settings (without overwrite).
    """
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise JaxiapInputError(f"{option} {out} is a file, not a folder; choose a folder path")
    meta_path = out / meta_name
    want = jsonable({**stamp(kind), **identity})
    if out.is_dir() and not is_run_folder(out):
        if meta_path.exists():
            raise JaxiapInputError(
                f"{meta_path} was written by an older jaxiap (run-folder format 0: no version and no list of "
                f"the files it wrote), so it cannot be resumed or safely overwritten; choose a new {option}, "
                "or delete that folder yourself")
        if any(out.iterdir()):
            raise JaxiapInputError(
                f"{option} {out} exists, is not empty and is not a jaxiap run folder (no {MANIFEST}); "
                f"jaxiap writes only into new, empty or its own folders: choose another {option}"
                + ("; nothing was removed" if overwrite else ""))
    if is_run_folder(out) and not meta_path.exists() and written_names(out):
        raise JaxiapInputError(
            f"{option} {out} holds files jaxiap wrote but no {meta_name}, so it is not a {kind} run folder "
            f"(perhaps a parent of one); choose another {option}" + ("; nothing was removed" if overwrite else ""))
    if is_run_folder(out) and meta_path.exists():
        problem = None
        try:
            have = read_json(meta_path, "run-folder metadata")
        except JaxiapInputError as exc:
            if not overwrite:
                raise
            have, problem = None, str(exc)
        if have is not None:
            if not isinstance(have, dict):
                problem = f"{meta_path} does not hold a JSON object"
            elif have.get("jaxiap_format") != FORMAT:
                problem = (f"{meta_path} is from run-folder format {have.get('jaxiap_format', 0)} "
                           f"(jaxiap {have.get('jaxiap_version', '< 0.1.1')}); this jaxiap "
                           f"({__version__}) reads format {FORMAT}")
            elif have.get("jaxiap_kind") != kind:
                problem = f"{meta_path} holds a {have.get('jaxiap_kind')!r} run, not {kind!r}"
            else:
                cmp_have = {k: v for k, v in have.items() if k != "jaxiap_version" and k not in (extra or {})}
                cmp_want = {k: v for k, v in want.items() if k != "jaxiap_version"}
                diff = _differences(cmp_have, cmp_want)
                if diff:
                    problem = (f"{meta_path} holds a run with other settings (differs in: {', '.join(diff)})")
        if problem is not None:
            if not overwrite:
                raise JaxiapInputError(f"{problem}; pass --overwrite (overwrite=True) to remove the files "
                                       f"jaxiap wrote in {out} and start afresh, or choose a new {option}")
            what = _describe_removal(out)
            removed, kept = remove_written(out)
            print(f"[jaxiap] overwrite: {problem}; removed {what}"  # always said, also without progress
                  + (f"; kept {len(kept)} other files" if kept else ""), file=sys.stderr, flush=True)
    ensure_dir(out)
    write_json(meta_path, {**want, **jsonable(extra or {})})
    return out
