"""Study configurations as TOML files: ``jaxiap <command> --config run.toml``, and each run's ``config.toml``.

A config file sets fields of the study's config dataclass (:class:`LJ13Config`,
:class:`LJ13ALConfig`, :class:`OTFConfig`, :class:`UQCompareConfig`) by their
field names, plus an optional ``preset = "tiny"`` key (docs/config.md)::

    preset = "tiny"
    n_seeds = 8          # the field behind --seeds
    t_max = 10.0
    attempts = "mle,posterior"
    pce_degree = "none"  # None: the automatic choice

Precedence, lowest first: the dataclass defaults, the preset (``--preset``
beats the file's ``preset`` key), the file, the options given on the command
line (:func:`resolve_config`). Tuple fields are TOML arrays; TOML has no null,
so a field whose value may be None takes the string ``"none"`` for it (the
spelling of the command-line options, e.g. ``--r-cut-3 none``). Field names
are the only key spelling: an option's spelling (``seeds``, ``n-q``) is
refused with the field name to write instead.

Every problem of the file (missing, not TOML, an unknown key, a value of the
wrong type) raises :class:`JaxiapInputError` naming the file and the key
before any work; the values are then checked by the config dataclass itself.

:func:`config_toml` writes every field of a resolved config back in the same
form, so ``jaxiap <command> --config RUN/config.toml --out NEW`` rebuilds the
same config; :func:`write_resolved_config` puts that file into a run folder.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import tomllib
import typing
from pathlib import Path

from jaxiap._version import __version__
from jaxiap.errors import JaxiapInputError

#: the TOML spelling of None (as the command-line options spell it: ``--r-cut-3 none``)
NONE = "none"
#: name of the resolved config in a run folder
CONFIG_TOML = "config.toml"
#: options of every study command that are not config fields (given on the command line only)
RUN_OPTIONS = ("out", "overwrite", "no-progress", "devices", "config")

_TOML_TYPE = {bool: "a boolean", int: "an integer", float: "a float", str: "a string", list: "an array",
              dict: "a table"}


# ----------------------------------------------------------------------------- field types


@dataclasses.dataclass(frozen=True)
class _Kind:
    """What a config field holds: ``base`` (bool, int, float, str or tuple), the tuple's ``item`` type,
    and whether None is allowed."""

    base: type
    item: type | None = None
    optional: bool = False

    def describe(self) -> str:
        if self.base is tuple:
            what = {int: "an array of integers", float: "an array of numbers", str: "an array of strings"}.get(
                self.item, "an array")
        else:
            what = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[self.base]
        return what + (f' or "{NONE}"' if self.optional else "")


def field_kinds(cls) -> dict[str, _Kind]:
    """{field name: _Kind} of the config dataclass ``cls``, from its annotations (and, for tuples, the
    type of its default's items)."""
    hints = typing.get_type_hints(cls)
    kinds = {}
    for f in dataclasses.fields(cls):
        hint, optional = hints[f.name], False
        args = typing.get_args(hint)
        if type(None) in args:
            optional = True
            rest = [a for a in args if a is not type(None)]
            hint = rest[0] if len(rest) == 1 else object
        base = typing.get_origin(hint) or hint
        if base not in (bool, int, float, str, tuple):
            raise TypeError(f"{cls.__name__}.{f.name}: type {hint!r} has no TOML form")
        item = None
        if base is tuple:
            default = f.default if f.default is not dataclasses.MISSING else ()
            types = {float if type(v) is int and any(type(w) is float for w in default) else type(v) for v in default}
            item = types.pop() if len(types) == 1 else None
        kinds[f.name] = _Kind(base, item, optional)
    return kinds


def _scalar(value, base: type):
    """``value`` (a parsed TOML scalar) as ``base``, or raise TypeError."""
    if base is bool:
        if isinstance(value, bool):
            return value
    elif base is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif base is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif base is str:
        if isinstance(value, str):
            return value
    else:  # no item type known: any scalar
        if isinstance(value, (bool, int, float, str)):
            return value
    raise TypeError


def _convert(value, kind: _Kind):
    """A parsed TOML value as the field's Python value (arrays to tuples, ints to floats, "none" to None)."""
    if kind.optional and isinstance(value, str) and value.strip().lower() == NONE:
        return None
    if kind.base is tuple:
        if not isinstance(value, list):
            raise TypeError
        return tuple(_scalar(v, kind.item or object) for v in value)
    return _scalar(value, kind.base)


def _toml_type(value) -> str:
    """What a parsed TOML value is, in words: "a string", "an array of integers and strings"."""
    if isinstance(value, list) and value:
        inner = sorted({_toml_type(v).split(" ", 1)[1] for v in value})
        return "an array of " + " and ".join(t if t.endswith("s") else t + "s" for t in inner)
    return _TOML_TYPE.get(type(value), "a date or time")


# ----------------------------------------------------------------------------- writing


def toml_value(value) -> str:
    """The TOML text of a config value: bool, int, float, str, None (``"none"``) or a tuple of those."""
    if value is None:
        return f'"{NONE}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(float(value))  # shortest text that reads back to the same float
    if isinstance(value, str):
        # a TOML basic string: JSON's escapes are TOML's (non-ASCII stays literal UTF-8); DEL must be escaped
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007F")
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"{value!r} ({type(value).__name__}) has no TOML form")


def config_toml(config, command: str) -> str:
    """Every field of ``config`` as a TOML config file for ``jaxiap <command> --config``."""
    name = type(config).__name__
    lines = [f"# jaxiap {command}: the resolved configuration of a run, every {name} field (jaxiap {__version__}).",
             f"# Reproduce the run: jaxiap {command} --config THIS_FILE --out NEW_FOLDER",
             f'# "{NONE}" stands for None (the automatic or switched-off setting); docs/config.md.']
    lines += [f"{f.name} = {toml_value(getattr(config, f.name))}" for f in dataclasses.fields(config)]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- reading


def _unknown_key(key: str, value, fields: list[str], flags: dict, cls) -> str:
    """Why ``key`` (holding ``value``) is not a config key, and what to write instead."""
    if isinstance(value, dict):
        return (f"unknown key {key!r}: a config file has no [{key}] table (section); write the "
                f"{cls.__name__} fields at the top level, before any [table] line")
    by_flag = {flag[2:]: name for name, flag in flags.items() if not flag.startswith("--no-")}
    bare = key.lstrip("-")
    if bare in RUN_OPTIONS:
        return f"unknown key {key!r}: --{bare} is a run option, given on the command line, not in a config file"
    if bare in by_flag:
        return (f"unknown key {key!r}: that is the option --{bare}; a config file names the field, "
                f"{by_flag[bare]} = ...")
    if bare.replace("-", "_") in fields:
        return f"unknown key {key!r}: field names are written with underscores, {bare.replace('-', '_')} = ..."
    close = difflib.get_close_matches(key, fields + ["preset"], n=3, cutoff=0.6)
    hint = f" (did you mean {' or '.join(close)}?)" if close else ""
    return (f"unknown key {key!r}{hint}; the keys are preset and the {cls.__name__} fields: "
            f"{', '.join(fields)}")


def read_config_file(path, cls, flags: dict, presets) -> tuple[str | None, dict]:
    """(preset or None, {field: value}) from the TOML config file ``path`` for the config dataclass ``cls``.

    flags: the study's CLI_FLAGS (field -> option), named in messages; presets: the preset names.
    Raises JaxiapInputError, naming the file, for a missing or unreadable file, a TOML syntax error
    (with its line), an unknown key, or a value of the wrong type. Values are converted to the field's
    type (arrays to tuples, integers to floats for float fields, "none" to None where None is allowed)
    but not range-checked: the config dataclass checks them.
    """
    path = Path(path)
    where = f"--config {path}"
    if path.is_dir():
        raise JaxiapInputError(f"{where}: is a folder, not a TOML file")
    try:
        data = tomllib.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise JaxiapInputError(f"{where}: no such file") from None
    except OSError as exc:
        raise JaxiapInputError(f"{where}: cannot read it ({type(exc).__name__}: {exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise JaxiapInputError(f"{where}: not a UTF-8 text file ({exc.reason} at byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise JaxiapInputError(f"{where}: not valid TOML: {exc}") from None
    kinds = field_kinds(cls)
    fields = list(kinds)
    unknown = [_unknown_key(k, v, fields, flags, cls) for k, v in data.items() if k != "preset" and k not in kinds]
    if unknown:
        raise JaxiapInputError(f"{where}: " + "; ".join(unknown))
    preset = data.pop("preset", None)
    if preset is not None and (not isinstance(preset, str) or preset not in presets):
        raise JaxiapInputError(f"{where}: preset = {_shown(preset)} is not a preset; choose one of "
                               f"{', '.join(presets)}")
    values = {}
    for key, value in data.items():
        kind = kinds[key]
        try:
            values[key] = _convert(value, kind)
        except TypeError:
            flag = flags.get(key)
            default = next(f.default for f in dataclasses.fields(cls) if f.name == key)
            example = "" if default is dataclasses.MISSING else f", e.g. {key} = {toml_value(default)}"
            raise JaxiapInputError(
                f"{where}: {key} = {_shown(value)} is {_toml_type(value)}; {key}"
                + (f" ({flag})" if flag else "") + f" takes {kind.describe()}{example}") from None
    return preset, values


def _shown(value) -> str:
    """A parsed TOML value as TOML text, for messages."""
    try:
        return toml_value(value)
    except TypeError:
        return repr(value)


# ----------------------------------------------------------------------------- resolving and recording


def resolve_config(cls, flags: dict, presets, *, preset: str | None = None, path=None,
                   overrides: dict | None = None):
    """The study config: dataclass defaults < preset < the config file at ``path`` < ``overrides``.

    preset: the ``--preset`` given on the command line, or None (then the file's ``preset`` key, else
    "cpu"). overrides: the options given on the command line ({field: value}; a nullable field's
    ``"none"`` means None). The result is ``cls.from_preset(preset, **file_values, **overrides)``, so a
    file behaves exactly as the same options given on the command line.
    """
    file_preset, values = (None, {}) if path is None else read_config_file(path, cls, flags, presets)
    kinds = field_kinds(cls)
    given = {k: None if kinds[k].optional and isinstance(v, str) and v.strip().lower() == NONE else v
             for k, v in (overrides or {}).items()}
    try:
        return cls.from_preset(preset or file_preset or "cpu", **{**values, **given})
    except JaxiapInputError as exc:  # the config's own checks: say when the faulty field came from the file
        message = str(exc)
        from_file = [k for k in values if k not in given and message.startswith(f"{k}=")]
        if not from_file:
            raise
        raise JaxiapInputError(f"{message} ({from_file[0]} is set in --config {path})") from None


def _same_config(folder: Path, config, kind: str) -> bool:
    """True when ``folder/config.json`` (the run folder's metadata) records ``kind`` and ``config``."""
    from jaxiap.runfolder import jsonable, read_json

    try:
        have = read_json(folder / "config.json")
    except JaxiapInputError:
        return False
    want = jsonable(dataclasses.asdict(config))
    return (isinstance(have, dict) and have.get("jaxiap_kind") == kind
            and all(k in have and jsonable(have[k]) == v for k, v in want.items()))


def check_resolved_config_target(out) -> None:
    """Before any work: refuse a run folder whose ``config.toml`` jaxiap did not write (it is never
    overwritten)."""
    from jaxiap.runfolder import is_run_folder, written_names

    out = Path(out)
    target = out / CONFIG_TOML
    if target.exists() and is_run_folder(out) and CONFIG_TOML not in written_names(out):
        raise JaxiapInputError(
            f"{target} exists and was not written by jaxiap; jaxiap writes the run's resolved configuration "
            "there and never overwrites a file it did not write: move it away (e.g. keep your input file "
            "outside the run folder), or choose another --out")


def write_resolved_config(out, config, command: str, kind: str | None = None) -> bool:
    """Write ``out/config.toml`` (:func:`config_toml`, atomically, listed as a file jaxiap wrote) when
    ``out`` is the run folder of ``config``: its config.json records the same kind and settings.
    Returns True when the file holds ``config`` afterwards."""
    from jaxiap.runfolder import atomic_path, is_run_folder

    out = Path(out)
    if not (is_run_folder(out) and _same_config(out, config, kind or command)):
        return False
    text = config_toml(config, command)
    target = out / CONFIG_TOML
    if not (target.is_file() and target.read_text(encoding="utf-8", errors="replace") == text):
        with atomic_path(target) as tmp:  # atomic, listed in the folder's .jaxiap-files; refuses a foreign file
            Path(tmp).write_text(text, encoding="utf-8")
    return True
