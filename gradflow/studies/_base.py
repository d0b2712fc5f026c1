"""What every study is made of: a typed config read from TOML by one loader, and the
study's protocol (`compute`, `report`, `plot`).

**Configs.** A study's config is a frozen dataclass (a subclass of
[`StudyConfig`][gradflow.studies._base.StudyConfig]) whose fields are its sections, each
itself a frozen dataclass of typed keys: `float`, `int`, `bool`, `str`, or a list of them,
`tuple[float, ...]`, `tuple[int, ...]`, `tuple[str, ...]`. A key declares its range check,
its default and its `--quick` default next to it with [`key`][gradflow.studies._base.key].
[`from_toml`][gradflow.studies._base.from_toml] derives every check from these
declarations: unknown sections and keys, missing keys, wrong types and out-of-range values
are rejected with a `ValueError` that names the key (`section.key`) and what was expected.
Checks that relate several keys go in the config's `__post_init__`.

**`--quick`.** A config file may hold `[quick.<section>]` tables that mirror its sections:

```toml
[flow]
t1 = 5000.0

[quick.flow]        # `--quick`: a reduced run
t1 = 500.0
```

The loader applies them once: with `quick=True` their values replace the full-run values
(a key may also declare a `quick` default, used when the file gives none), so a study's
code reads `config.flow.t1` and never asks which mode it runs in. They are checked in both
modes.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
import typing
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

Check = Callable[[Any], str | None]
"""A range check: `None` if the value is fine, else what was expected (`"positive values"`)."""

_MISSING = dataclasses.MISSING


def key(check: Check | None = None, *, default: Any = _MISSING, quick: Any = _MISSING) -> Any:
    """Declare one config key (a field of a section dataclass).

    **Arguments:**

    - `check`: a range check on the converted value (`None` if the value is fine, else
      what was expected, e.g. `"positive values"`), or `None`.
    - `default`: the value when the file omits the key (none: the key is required).
    - `quick`: the value with `--quick` when the file has no `[quick.<section>]` entry
      for the key (none: the full-run value).

    **Returns:** a `dataclasses.field` carrying the declarations as metadata.
    """
    meta: dict[str, Any] = {"check": check}
    if quick is not _MISSING:
        meta["quick"] = quick
    return dataclasses.field(default=default, metadata=meta)


# ----------------------------------------------------------------------- range checks


def _values(x) -> tuple:
    return tuple(x) if isinstance(x, (list, tuple)) else (x,)


def positive(x) -> str | None:
    return None if all(v > 0 for v in _values(x)) else "positive values"


def probability(x) -> str | None:
    return None if all(0 < v < 1 for v in _values(x)) else "values strictly between 0 and 1"


def nonempty(x) -> str | None:
    return None if len(x) > 0 else "a non-empty list"


def one_of(*choices: str) -> Check:
    """A check that a string (or every string of a list) is one of `choices`."""

    def check(x) -> str | None:
        return None if all(v in choices for v in _values(x)) else f"one of {list(choices)}"

    return check


def at_least(low, why: str = "") -> Check:
    """A check that a number is at least `low` (`"at least 2 (a group)"` with `why`)."""

    def check(x) -> str | None:
        return None if x >= low else f"at least {low}{f' ({why})' if why else ''}"

    return check


def increasing(x) -> str | None:
    return None if list(x) == sorted(set(x)) else "strictly increasing values"


def distinct(x) -> str | None:
    return None if len(set(x)) == len(x) else "names without repeats"


def all_of(*checks: Check) -> Check:
    """The first failing check's expectation, or `None` when all pass."""

    def check(x) -> str | None:
        for c in checks:
            if (problem := c(x)) is not None:
                return problem
        return None

    return check


# ----------------------------------------------------------------------------- loader

_KINDS: dict[Any, str] = {
    float: "float", int: "int", bool: "bool", str: "str",
    tuple[float, ...]: "floats", tuple[int, ...]: "ints", tuple[str, ...]: "strs",
}
_WANT = {"floats": "a list of finite numbers", "float": "a finite number", "strs": "a list of strings",
         "ints": "a list of integers below 2**31", "int": "an integer below 2**31"}


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _integer(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and abs(v) <= 2**31 - 1


def _convert(path: str, kind: str, check: Check | None, value):
    """`value` of key `path` as `kind`, checked; a `ValueError` naming `path` if not."""
    if kind == "float":
        ok = _number(value)
        value = float(value) if ok else value
    elif kind == "int":
        ok = _integer(value)
    elif kind == "bool":
        ok = isinstance(value, bool)
    elif kind == "str":
        ok = isinstance(value, str)
    else:
        item = {"floats": _number, "ints": _integer, "strs": lambda v: isinstance(v, str)}[kind]
        ok = isinstance(value, list) and all(item(v) for v in value)
        if ok:
            value = tuple(float(v) for v in value) if kind == "floats" else tuple(value)
    if not ok:
        raise ValueError(f"config key `{path}`: expected {_WANT.get(kind, f'a {kind}')}; got {value!r}.")
    if check is not None and (problem := check(value)) is not None:
        shown = list(value) if isinstance(value, tuple) else value
        raise ValueError(f"config key `{path}`: expected {problem}; got {shown!r}.")
    return value


@dataclasses.dataclass(frozen=True, kw_only=True)
class StudyConfig:
    """The base of every study's config: its fields are the sections (frozen dataclasses
    of keys, see the module's notes), plus what the loader records:

    - `quick`: whether the `--quick` values were applied (for the printed summary only;
      the values themselves are already in the sections).
    - `overridden`: the keys (`"section.key"`) whose value came from a `[quick.<section>]`
      table, so that a check naming a key names the one the user wrote
      (see [`name`][gradflow.studies._base.StudyConfig.name]).
    """

    quick: bool = dataclasses.field(default=False, metadata={"loader": True})
    overridden: frozenset[str] = dataclasses.field(default=frozenset(), repr=False, metadata={"loader": True})

    def name(self, path: str) -> str:
        """The name of key `path` (`"section.key"`) as the user wrote it:
        `"quick.section.key"` when the value came from the `[quick.<section>]` table."""
        return f"quick.{path}" if path in self.overridden else path


def sections(cls: type[StudyConfig]) -> dict[str, type]:
    """The sections of config class `cls`: `{name: section dataclass}`, in order."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if not f.metadata.get("loader")}


def _keys(section: type) -> dict[str, tuple[str, dataclasses.Field]]:
    hints = typing.get_type_hints(section)
    out = {}
    for f in dataclasses.fields(section):
        if hints[f.name] not in _KINDS:  # pragma: no cover - a mistake in a study's declarations
            raise TypeError(f"{section.__name__}.{f.name}: unsupported config type {hints[f.name]!r}")
        out[f.name] = (_KINDS[hints[f.name]], f)
    return out


def from_toml(cls: type[StudyConfig], raw: dict, *, quick: bool = False, source: str = "config"):
    """Build the config `cls` from `raw` (parsed TOML), checking every key.

    **Arguments:**

    - `cls`: the study's config class (a [`StudyConfig`][gradflow.studies._base.StudyConfig]).
    - `raw`: the parsed TOML: `{section: {key: value}}`, and optionally
      `{"quick": {section: {key: value}}}`.
    - `quick`: apply the `[quick.<section>]` values (and the keys' `quick` defaults).
    - `source`: what to call the file in messages.

    **Returns:** an instance of `cls`.

    **Raises:** `ValueError` naming the section or key at fault and what was expected.
    """
    spec = sections(cls)
    known = sorted([*spec, "quick"])
    for name in raw:
        if name not in spec and name != "quick":
            raise ValueError(f"{source}: unknown section [{name}]; expected one of {known}.")
    quick_raw = raw.get("quick", {})
    if not isinstance(quick_raw, dict):
        raise ValueError(f"{source}: `quick` must be a table of [quick.<section>] tables.")
    for name, table in quick_raw.items():
        if not isinstance(table, dict):
            raise ValueError(
                f"{source}: unknown key `quick.{name}`; the --quick values go in tables that mirror the "
                f"sections, [quick.<section>] (one of {sorted(spec)}), e.g. [quick.{next(iter(spec))}].")
        if name not in spec:
            raise ValueError(f"{source}: unknown section [quick.{name}]; expected one of {sorted(spec)} "
                             "(the [quick.<section>] tables mirror the sections).")
    values: dict[str, Any] = {}
    overridden = set()
    for name, section in spec.items():
        given = raw.get(name, {})
        if not isinstance(given, dict):
            raise ValueError(f"{source}: `{name}` must be a [section] table.")
        keys = _keys(section)
        for k in given:
            if k not in keys:
                raise ValueError(f"{source}: unknown key `{name}.{k}`; expected one of {sorted(keys)}.")
        fields = {}
        for k, (kind, f) in keys.items():
            if k in given:
                fields[k] = _convert(f"{name}.{k}", kind, f.metadata.get("check"), given[k])
            elif f.default is _MISSING:
                raise ValueError(f"{source}: missing key `{name}.{k}` ({kind}).")
        overlay = quick_raw.get(name, {})
        for k in overlay:
            if k not in keys:
                raise ValueError(f"{source}: unknown key `quick.{name}.{k}`; expected one of {sorted(keys)}.")
        for k, (kind, f) in keys.items():
            if k in overlay:  # checked in both modes
                value = _convert(f"quick.{name}.{k}", kind, f.metadata.get("check"), overlay[k])
                if quick:
                    fields[k] = value
                    overridden.add(f"{name}.{k}")
            elif quick and "quick" in f.metadata:
                fields[k] = f.metadata["quick"]
        values[name] = section(**fields)
    return cls(**values, quick=quick, overridden=frozenset(overridden))


def read_toml(path: str | Path) -> dict:
    """Parse the TOML file `path`, with a `ValueError` that names the file when it is
    missing, a folder, unreadable or not TOML."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"config {path} is a folder; expected a TOML file.")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ValueError(f"config file not found: {path}") from e
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"config {path} cannot be read: {e}") from e
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{path}: not valid TOML: {e}") from e


def load(cls: type[StudyConfig], path: str | Path, *, quick: bool = False):
    """Read the TOML file `path` and build the config `cls` (see
    [`from_toml`][gradflow.studies._base.from_toml])."""
    return from_toml(cls, read_toml(path), quick=quick, source=str(path))


def to_dict(config: StudyConfig) -> dict[str, dict[str, Any]]:
    """The config's sections as plain data (`{section: {key: value}}`, lists for tuples),
    as recorded in a result folder's `run.json`."""
    out = {}
    for name in sections(type(config)):
        section = getattr(config, name)
        out[name] = {f.name: (list(v) if isinstance(v := getattr(section, f.name), tuple) else v)
                     for f in dataclasses.fields(section)}
    return out


def dumps(raw: dict[str, dict[str, Any]]) -> str:
    """A config (section -> key -> value: numbers, booleans, strings or lists of them;
    `quick` -> section -> key -> value) as TOML text that `tomllib` reads back to the same
    dict."""

    def value(x) -> str:
        if isinstance(x, bool):
            return "true" if x else "false"
        if isinstance(x, str):
            return json.dumps(x)  # a TOML basic string
        if isinstance(x, (list, tuple)):
            return "[" + ", ".join(value(y) for y in x) + "]"
        return repr(x)

    def tables(prefix: str, body: dict) -> list[str]:
        plain = {k: x for k, x in body.items() if not isinstance(x, dict)}
        out = [f"[{prefix}]\n" + "".join(f"{k} = {value(x)}\n" for k, x in plain.items())] if plain or not body else []
        for k, x in body.items():
            if isinstance(x, dict):
                out += tables(f"{prefix}.{k}", x)
        return out

    return "\n".join(t for section, keys in raw.items() for t in tables(section, keys))


def packaged_config(name: str) -> Path:
    """The path of the config shipped with the package for study `name`."""
    return Path(str(resources.files("gradflow") / "experiments" / f"{name}.toml"))


# ------------------------------------------------------------------------------ study


@runtime_checkable
class Study(Protocol):
    """What a study module provides (the registry `gradflow.studies.STUDIES` lists them).

    - `NAME`, `SUMMARY`: its command-line name and one-line description.
    - `Config`: its config class (a [`StudyConfig`][gradflow.studies._base.StudyConfig]).
    - `compute(config) -> tables`: the computation, pure (no files, no printing) except
      where it says otherwise (`COMPUTE_WRITES = True`: `compute(config, out)` writes
      resumable intermediate results under `out`).
    - `report(tables, config, out) -> figures`: writes the tables (CSV), the figure data
      and the figures under `out`, and prints the summary.
    - `plot(out) -> figures`: redraws the figures from the data saved in `out`
      (`gradflow plot DIR`).
    """

    NAME: str
    SUMMARY: str
    Config: type[StudyConfig]

    def compute(self, config: Any, /) -> Any: ...

    def report(self, tables: Any, config: Any, out: Path, /) -> list[Path]: ...

    def plot(self, out: Path, /) -> list[Path]: ...
