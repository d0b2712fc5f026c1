"""Result folders: atomic files, standard JSON, figures, and the provenance record.

Every file a command writes goes through this module, so each one is either complete or
absent (written to a temporary name in the same folder, then `os.replace`d). A result
folder carries `run.json`, which records what made it: the command line, the kind and name
of the run (study or sweep), its config and mode (`"full"` or `"quick"`), the versions of
gradflow and jax, and when it started and finished (`null` while running or after an
interruption).

[`result_folder`][gradflow._util.results.result_folder] is how a command claims a folder: it
checks the path *before* any work, refuses a folder that holds another run's results
(unless `force`), and on a refused run (a `ValueError` raised inside it) puts everything
back as it was.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RUN_RECORD = "run.json"
#: Where results go when no `--out` is given.
RESULTS = Path("gradflow-results")

#: Functions called with `(figure, path)` before each figure is saved (tests use this to
#: check layouts: no overlapping text, nothing covering data).
FIGURE_HOOKS: list[Callable[[Any, Path], None]] = []


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` atomically: a reader sees the old file or the new one, never
    a part."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def write_text(path: str | Path, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def plain(x):
    """`x` with every non-finite float replaced by a string (`"inf"`, `"-inf"`, `"nan"`)
    and NumPy scalars and arrays turned into Python ones, so that it is standard JSON.
    `float("inf")` reads the strings back."""
    if hasattr(x, "tolist"):
        x = x.tolist()
    if isinstance(x, float):
        return x if math.isfinite(x) else str(x)
    if isinstance(x, dict):
        return {str(k): plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [plain(v) for v in x]
    return x


def dumps(x, **kwargs) -> str:
    """Standard JSON (no `Infinity`/`NaN` tokens; see [`plain`][gradflow._util.results.plain])."""
    return json.dumps(plain(x), allow_nan=False, **kwargs)


def write_json(path: str | Path, x) -> Path:
    return write_text(path, dumps(x, indent=2) + "\n")


def write_csv(path: str | Path, rows: list[dict]) -> Path:
    """One CSV file with a header, from rows of the same keys, atomically."""
    buf = io.StringIO(newline="")
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return write_text(path, buf.getvalue())


def save_figure(fig, path: str | Path, dpi: int = 120) -> Path:
    """Save a matplotlib figure atomically (after the layout checks in `FIGURE_HOOKS`) and
    close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    for hook in FIGURE_HOOKS:
        hook(fig, path)
    buf = io.BytesIO()
    fig.savefig(buf, dpi=dpi, format=path.suffix.lstrip(".") or "png")
    plt.close(fig)
    return write_bytes(path, buf.getvalue())


def default_out(name: str, quick: bool = False) -> Path:
    """The default result folder of run `name`: `gradflow-results/<name>/`, or
    `<name>-quick/` for a quick run (so that the two never share a folder)."""
    return RESULTS / (f"{name}-quick" if quick else name)


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("gradflow", "jax", "jaxlib", "equinox", "diffrax", "optax"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:  # pragma: no cover - a source checkout without install
            out[pkg] = "unknown"
    return out


def _backend() -> dict:
    import jax

    devices = jax.devices()
    return {"platform": devices[0].platform, "devices": len(devices), "processes": jax.process_count()}


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def read_record(folder: str | Path) -> dict | None:
    """The provenance record (`run.json`) of a result folder, or `None` if it has none."""
    path = Path(folder) / RUN_RECORD
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def check_folder(out: Path, what: str = "--out") -> None:
    """Refuse, before any work, an output path that cannot be a folder we write into: an
    existing file, or a path whose nearest existing parent is not a writable folder."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"`{what}` {out} exists and is not a folder.")
    parent = out
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"`{what}` {out} cannot be created: {parent} is not a folder.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"`{what}` {out} cannot be created or written: {parent} is not writable.")


@contextlib.contextmanager
def result_folder(
    out: str | Path, *, kind: str, name: str, config: dict, quick: bool, force: bool = False,
    what: str = "--out", shared: bool = False,
) -> Iterator[Path]:
    """Claim `out` for one run and record its provenance.

    **Arguments:**

    - `out`: the result folder (created, with its parents, if needed).
    - `kind`, `name`: what runs (`"study"`, `"stalling"`; `"sweep"`, the config's stem).
    - `config`: the validated config; with `quick`, the run's identity. A folder whose
      `run.json` records another identity is refused unless `force`; so is a non-empty folder
      without `run.json`.
    - `force`: take over the folder anyway (a different sweep's rows are then deleted).
    - `shared`: one of several processes that run the same thing into `out` at once
      (the shares of a sweep): a `run.json` of the same identity is kept as the first
      process wrote it, and the end is recorded by each process in its own record.

    **Returns:** a context manager yielding `out`. A `ValueError` raised inside it (a refused
    run) removes what it created and restores the previous `run.json`; a normal exit records
    the end time; any other exit (an interruption) leaves `finished` as `null`.
    """
    out = Path(out)
    check_folder(out, what)
    mode = "quick" if quick else "full"
    identity = {"kind": kind, "name": name, "mode": mode, "config": plain(config)}
    old = read_record(out)
    existed = out.exists()
    if existed and not force:
        if old is None and any(out.iterdir()):
            raise ValueError(
                f"`{what}` {out} is not empty and was not written by gradflow (no {RUN_RECORD}); "
                "choose another folder, or pass --force to write into it."
            )
        if old is not None and {k: old.get(k) for k in identity} != identity:
            was = f"{old.get('kind')} {old.get('name')!r} ({old.get('mode')})"
            diff = "a different config" if old.get("name") == name and old.get("mode") == mode else was
            raise ValueError(
                f"`{what}` {out} holds the results of {diff}; choose another folder, or pass "
                "--force to replace them."
            )
    created = []
    for p in [out, *out.parents]:
        if p.exists():
            break
        created.append(p)
    old_bytes = (out / RUN_RECORD).read_bytes() if (out / RUN_RECORD).is_file() else None
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"`{what}` {out} cannot be created: {e.strerror or e}.") from None
    record = {**identity, "command": [Path(sys.argv[0]).name, *sys.argv[1:]], "versions": _versions(),
              "backend": _backend(), "started": _now(), "finished": None}
    keep = shared and old is not None and {k: old.get(k) for k in identity} == identity
    if not keep:
        write_json(out / RUN_RECORD, record)
    try:
        yield out
    except ValueError:
        if old_bytes is not None:
            write_bytes(out / RUN_RECORD, old_bytes)
        elif created:
            shutil.rmtree(created[-1], ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                (out / RUN_RECORD).unlink()
        raise
    if not shared:
        write_json(out / RUN_RECORD, {**record, "finished": _now()})
