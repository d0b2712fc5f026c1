"""Study configs: TOML files with a declared schema, validated key by key.

A schema maps section -> key -> `Field`. Unknown sections or keys, missing keys, wrong
types and out-of-range values are rejected with a `ValueError` that names the key
(`section.key`) and what was expected.
"""

from __future__ import annotations

import json
import math
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Field:
    """One config key: a kind (`"float"`, `"int"`, `"floats"`, `"bool"`, `"str"`, `"strs"`, `"ints"`), an
    optional check returning an error text (or `None`) and a default (`None`: the key is
    required)."""

    kind: str
    check: Callable[[Any], str | None] | None = None
    default: Any = None


def positive(x) -> str | None:
    values = x if isinstance(x, list) else [x]
    return None if all(v > 0 for v in values) else "positive values"


def probability(x) -> str | None:
    values = x if isinstance(x, list) else [x]
    return None if all(0 < v < 1 for v in values) else "values strictly between 0 and 1"


def nonempty(x) -> str | None:
    return None if len(x) > 0 else "a non-empty list"


def one_of(*choices: str) -> Callable[[Any], str | None]:
    """A check that a string (or every string of a list) is one of `choices`."""

    def check(x) -> str | None:
        values = x if isinstance(x, list) else [x]
        return None if all(v in choices for v in values) else f"one of {list(choices)}"

    return check


def _convert(path: str, field: Field, value):
    kind = field.kind
    ok = True
    if kind == "float":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        value = float(value) if ok else value
    elif kind == "int":
        ok = isinstance(value, int) and not isinstance(value, bool) and abs(value) <= 2**31 - 1
    elif kind == "floats":
        ok = isinstance(value, list) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value
        )
        value = [float(v) for v in value] if ok else value
    elif kind == "bool":
        ok = isinstance(value, bool)
    elif kind == "str":
        ok = isinstance(value, str)
    elif kind == "ints":
        ok = isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) and abs(v) <= 2**31 - 1
                                             for v in value)
    elif kind == "strs":
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
    else:  # pragma: no cover - schema error
        raise TypeError(f"unknown field kind {kind!r}")
    if not ok:
        want = {"floats": "a list of finite numbers", "float": "a finite number", "strs": "a list of strings", "ints": "a list of integers below 2**31", "int": "an integer below 2**31"}.get(kind, f"a {kind}")
        raise ValueError(f"config key `{path}`: expected {want}; got {value!r}.")
    if field.check is not None and (problem := field.check(value)) is not None:
        raise ValueError(f"config key `{path}`: expected {problem}; got {value!r}.")
    return value


def validate(raw: dict, schema: dict[str, dict[str, Field]], source: str = "config") -> dict:
    """Check `raw` (parsed TOML) against `schema`; return it with defaults filled in."""
    out: dict[str, dict[str, Any]] = {}
    for section in raw:
        if section not in schema:
            raise ValueError(
                f"{source}: unknown section [{section}]; expected one of {sorted(schema)}."
            )
    for section, fields in schema.items():
        given = raw.get(section, {})
        if not isinstance(given, dict):
            raise ValueError(f"{source}: `{section}` must be a [section] table.")
        for key in given:
            if key not in fields:
                raise ValueError(
                    f"{source}: unknown key `{section}.{key}`; expected one of {sorted(fields)}."
                )
        out[section] = {}
        for key, field in fields.items():
            if key in given:
                out[section][key] = _convert(f"{section}.{key}", field, given[key])
            elif field.default is None:
                raise ValueError(f"{source}: missing key `{section}.{key}` ({field.kind}).")
            else:
                out[section][key] = field.default
    return out


def dumps(raw: dict[str, dict[str, Any]]) -> str:
    """A config (section -> key -> value: numbers, booleans, strings or lists of them) as
    TOML text that `tomllib` reads back to the same dict."""

    def value(x) -> str:
        if isinstance(x, bool):
            return "true" if x else "false"
        if isinstance(x, str):
            return json.dumps(x)  # a TOML basic string
        if isinstance(x, list):
            return "[" + ", ".join(value(y) for y in x) + "]"
        return repr(x)

    return "\n".join(f"[{section}]\n" + "".join(f"{k} = {value(x)}\n" for k, x in keys.items())
                     for section, keys in raw.items())


def packaged_config(name: str) -> Path:
    """The path of the config shipped with the package for study `name`."""
    return Path(str(resources.files("gradflow") / "experiments" / f"{name}.toml"))


def load(path: str | Path, schema: dict[str, dict[str, Field]]) -> dict:
    """Read and validate a TOML config file."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"config {path} is a folder; expected a TOML file.")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ValueError(f"config file not found: {path}") from e
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"config {path} cannot be read: {e}") from e
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{path}: not valid TOML: {e}") from e
    return validate(raw, schema, source=str(path))
