"""Sweeps: run a batch of any size in chunks, sharded over devices and over processes,
with results written incrementally and resumed after an interruption.

The unit of work is a function `fn` of ONE input (a pytree without batch axis) that
returns a dict of scalars: one row of the result table. [`gradflow.sweep.run`][] applies
`jax.jit(jax.vmap(fn))` to chunks of the batch, each chunk sharded over the devices along
one mesh axis (`"batch"`), and writes every finished chunk atomically as one Parquet file
of the dataset `OUT/summary.parquet/` (a directory that `pandas.read_parquet`,
`pyarrow.parquet.read_table` and polars open as one table). Rerunning the same sweep on
the same `OUT` skips the rows already written: nothing finished is lost or recomputed.

Rows depend only on their own input, never on the chunk they ran in, so the table is the
same whatever the chunk size, the number of devices and the number of processes.
Randomness must therefore come in with the input (e.g. a key per row,
`jax.random.fold_in(key, row)`).

**Several processes** (on one host or on many that share a filesystem) sweep one `OUT`
together by each taking a share: `run(..., shard=(i, n))` computes the `i`-th of `n`
contiguous blocks of rows ([`gradflow.sweep.share`][]) on the process's own devices, and
records itself in `OUT/shards/I-of-N.json`. Shares never overlap, each part file is
written atomically, and a share that is rerun skips what it finished, so processes may
start, stop, be killed and be rerun in any order: every finished row is kept once.
[`gradflow.sweep.status`][] (`gradflow status DIR`) says how far each share has got.

**Trajectories.** With `trajectories=`[`gradflow.sweep.Trajectories`][], the outputs of
`fn` that are time series go to the Zarr store `OUT/trajectories.zarr` instead: one array
per series with dimensions `(run, time, ...)`, chunked along runs (one chunk per chunk of
rows, so that no two processes ever write one chunk), the inputs as coordinates along
`run`. `xarray.open_zarr(OUT / "trajectories.zarr")` opens it with named dimensions. A
chunk's series are written before its Parquet part, which marks the rows as done; runs not
yet done read as `nan`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import socket
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path

import equinox as eqx
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ._util import progress as _progress
from ._util.results import _now as now, write_json

__all__ = ["run", "read", "done_rows", "claim", "read_manifest", "share", "status", "read_shards", "Trajectories",
           "read_trajectories"]

_DATASET = "summary.parquet"
_LANES = 16
_MANIFEST = "sweep.json"
_SHARDS = "shards"
_STORE = "trajectories.zarr"


@dataclasses.dataclass(frozen=True)
class Trajectories:
    """Which outputs of a sweep's row function are time series, to be written to the Zarr
    store `OUT/trajectories.zarr` (see the module docs).

    **Arguments:**

    - `time`: the common time grid of every run, shape `(T,)` (flow time, or update
      index for discrete methods): the store's `time` coordinate.
    - `series`: the names of the outputs of `fn` that are series (per-row shape
      `(T, ...)`), each mapped to the names of its dimensions after `time`, e.g.
      `{"true_reward": (), "probs": ("prompt", "output")}`.
    - `input_dims`: for each input (by name: the key of a dict of inputs, or `"input"`
      for a single array), the names of its dimensions after `run`; default
      `<name>_dim_<i>`.
    """

    time: np.ndarray
    series: Mapping[str, tuple[str, ...]]
    input_dims: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)

    def describe(self) -> dict:
        """What identifies the store (part of the sweep's fingerprint)."""
        return {"time": np.asarray(self.time).tolist(), "series": {k: list(v) for k, v in self.series.items()}}


def _fingerprint(inputs, meta: dict) -> str:
    h = hashlib.sha256()
    for leaf in jax.tree.leaves(inputs):
        a = np.asarray(jax.random.key_data(leaf) if _is_key(leaf) else leaf)
        h.update(str((a.shape, a.dtype.str)).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    h.update(json.dumps(meta, sort_keys=True, default=str).encode())
    return h.hexdigest()


def _is_key(x) -> bool:
    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _parts(out: Path) -> list[tuple[int, int, Path]]:
    folder = out / _DATASET
    if not folder.is_dir():
        return []
    parts = []
    for p in folder.glob("part-*.parquet"):
        start, stop = (int(x) for x in p.stem.split("-")[1:3])
        parts.append((start, stop, p))
    return sorted(parts)


def done_rows(out: str | Path, n: int) -> np.ndarray:
    """A boolean mask of the rows of an `n`-row sweep already written under `out`."""
    done = np.zeros(n, bool)
    for start, stop, _ in _parts(Path(out)):
        done[start:stop] = True
    return done


def share(n: int, index: int, count: int, align: int = 1) -> tuple[int, int]:
    """The rows `[start, stop)` of share `index` of `count` of an `n`-row sweep.

    Shares are contiguous and as equal as possible, with bounds at multiples of `align`
    (a sweep with trajectories aligns them to its chunks, so that no two shares write one
    chunk of the store). A share is empty when there are more shares than chunks.
    """
    for name, value in (("index", index), ("count", count)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"shard `{name}` must be an integer; got {value!r}.")
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"a shard I/N needs N >= 1 and 0 <= I < N; got {index}/{count}.")
    blocks = -(-n // align)
    return min(index * blocks // count * align, n), min((index + 1) * blocks // count * align, n)


def _chunks(todo: np.ndarray, size: int, aligned: bool = False) -> list[tuple[int, int]]:
    """Contiguous `[start, stop)` ranges of at most `size` rows covering `todo`; with
    `aligned`, within the blocks `[k size, (k + 1) size)` (a chunk of the trajectory
    store), else packed from the first row to do."""
    out = []
    idx = np.flatnonzero(todo)
    if idx.size == 0:
        return out
    breaks = np.flatnonzero(np.diff(idx) != 1) + 1
    for run in np.split(idx, breaks):
        first, last = int(run[0]), int(run[-1]) + 1
        cuts = range((first // size + 1) * size if aligned else first + size, last, size)
        bounds = [first, *cuts, last]
        out.extend(zip(bounds[:-1], bounds[1:], strict=True))
    return out


def _write(out: Path, start: int, stop: int, columns: dict[str, np.ndarray]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = out / _DATASET
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"part-{start:012d}-{stop:012d}.parquet"
    tmp = folder / f".tmp-{start:012d}-{stop:012d}-{os.getpid()}"
    pq.write_table(pa.table({"row": np.arange(start, stop), **_flat(columns)}), tmp)
    os.replace(tmp, final)  # atomic: a part file is either complete or absent


def _flat(columns: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Parquet columns are 1-D: a column with per-row shape `(a, b)` becomes the columns
    `name_i_j`."""
    out = {}
    for k, val in columns.items():
        val = np.asarray(val)
        if val.ndim == 1:
            out[k] = val
        else:
            for idx in np.ndindex(*val.shape[1:]):
                out[k + "".join(f"_{i}" for i in idx)] = val[(slice(None), *idx)]
    return out


def read(out: str | Path) -> dict[str, np.ndarray]:
    """The rows written so far under `out`, as `{column: array}` sorted by `row`."""
    import pyarrow.parquet as pq

    parts = _parts(Path(out))
    if not parts:
        return {}
    import pyarrow as pa

    table = pa.concat_tables([pq.read_table(p) for _, _, p in parts])
    columns = {}
    for name in table.column_names:
        col = table.column(name).to_numpy()
        columns[name] = col.astype(str) if col.dtype == object else col  # strings: as NumPy str
    order = np.argsort(columns["row"], kind="stable")
    return {k: v[order] for k, v in columns.items()}


def read_manifest(out: str | Path) -> dict | None:
    """The manifest (`sweep.json`: rows, fingerprint, meta) of a sweep folder, or `None`."""
    path = Path(out) / _MANIFEST
    return json.loads(path.read_text()) if path.is_file() else None


def claim(
    out: str | Path, inputs, meta: dict | None = None, *, replace: bool = False,
    trajectories: Trajectories | None = None, chunk_size: int | None = None,
) -> None:
    """Make `out` the folder of the sweep of `inputs`, `meta` and `trajectories` (with
    `chunk_size`, the store's chunk), as `run` does first.

    A folder that already holds this sweep is kept as it is (its rows are resumed); one
    that holds a different sweep is refused with a `ValueError`, or, with `replace`, has
    that sweep's rows, trajectories, shard records and manifest deleted.
    """
    out = Path(out)
    inputs = jax.tree.map(lambda x: x if hasattr(x, "shape") else np.asarray(x), inputs)
    n = int(jax.tree.leaves(inputs)[0].shape[0])
    meta = dict(meta or {})
    if trajectories is not None:
        meta["trajectories"] = {**trajectories.describe(), "runs_per_chunk": chunk_size}
    manifest = {"rows": n, "fingerprint": _fingerprint(inputs, meta), "meta": meta}
    old = read_manifest(out)
    if old is not None and (old.get("fingerprint"), old.get("rows")) == (manifest["fingerprint"], n):
        return
    if old is not None and not replace:
        had = "trajectories" in old.get("meta", {})
        why = f"; it was started {'with' if had else 'without'} --trajectories" if had != (trajectories is not None) else ""
        raise ValueError(
            f"{out} holds the results of a different sweep ({old.get('rows')} rows, other inputs or "
            f"settings){why}. Use a new --out folder, or --force to replace it."
        )
    if replace:
        for name in (_DATASET, _STORE, _SHARDS):
            shutil.rmtree(out / name, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / _MANIFEST, manifest)


# ----------------------------------------------------------------------------- trajectories


def _input_leaves(inputs) -> dict[str, np.ndarray]:
    """The inputs by name: the keys of a dict (nested keys joined by `/`), or `"input"`."""
    out = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(inputs):
        name = "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)
        a = jax.random.key_data(leaf) if _is_key(leaf) else leaf
        out[name or "input"] = np.asarray(a)
    return out


def _create_store(out: Path, traj: Trajectories, inputs, example: dict[str, np.ndarray], n: int, chunk: int):
    """Create `OUT/trajectories.zarr` (built aside, then renamed into place: when several
    processes race to create it, one wins and the others use its store)."""
    import zarr

    path = out / _STORE
    if path.exists():
        return
    tmp = out / f".{_STORE}.{socket.gethostname()}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    group = zarr.open_group(tmp, mode="w", attributes={"runs_per_chunk": chunk})
    group.create_array("run", data=np.arange(n), dimension_names=("run",))
    group.create_array("time", data=np.asarray(traj.time), dimension_names=("time",))
    coords = []
    for name, a in _input_leaves(inputs).items():
        dims = tuple(traj.input_dims.get(name, [f"{name}_dim_{i}" for i in range(a.ndim - 1)]))
        group.create_array(name, data=a, dimension_names=("run", *dims))
        coords.append(name)
    for name, dims in traj.series.items():
        a = example[name]
        group.create_array(name, shape=(n, *a.shape[1:]), chunks=(chunk, *a.shape[1:]), dtype=a.dtype,
                           fill_value=np.nan if a.dtype.kind == "f" else 0,
                           dimension_names=("run", "time", *dims), attributes={"coordinates": " ".join(coords)})
    with warnings.catch_warnings():  # "not part of the Zarr 3 specification (yet)": xarray reads it
        warnings.filterwarnings("ignore", "Consolidated metadata", UserWarning)
        zarr.consolidate_metadata(tmp)  # the layout is fixed: readers (xarray) open it in one read
    try:
        os.rename(tmp, path)
    except OSError:  # another process created it first
        shutil.rmtree(tmp, ignore_errors=True)


def _write_series(out: Path, start: int, stop: int, series: dict[str, np.ndarray]) -> None:
    import zarr

    group = zarr.open_group(out / _STORE, mode="r+")
    for name, a in series.items():
        group[name][start:stop] = a


def read_trajectories(out: str | Path) -> dict[str, np.ndarray] | None:
    """The arrays of a sweep's trajectory store (`run`, `time`, the inputs and the series;
    runs not yet done are `nan`), or `None` if the sweep has none. (`xarray.open_zarr`
    opens the same store with its named dimensions.)"""
    path = Path(out) / _STORE
    if not path.is_dir():
        return None
    import zarr

    group = zarr.open_group(path, mode="r")
    return {name: np.asarray(arr[...]) for name, arr in group.arrays()}


# ------------------------------------------------------------------------------- shards


def _shard_record(out: Path, index: int, count: int) -> Path:
    return out / _SHARDS / f"{index}-of-{count}.json"


def read_shards(out: str | Path) -> list[dict]:
    """The shard records of a sweep folder (one per share that ever ran), sorted."""
    folder = Path(out) / _SHARDS
    records = []
    for p in folder.glob("*-of-*.json") if folder.is_dir() else []:
        try:
            records.append(json.loads(p.read_text()))
        except (OSError, ValueError):
            continue
    return sorted(records, key=lambda r: (r.get("count", 0), r.get("index", 0)))


def status(out: str | Path) -> dict | None:
    """How far the sweep in `out` has got, or `None` if `out` holds no sweep.

    **Returns:** a dict with `rows`, `done`, `missing` (the rows not done, as `[start,
    stop)` ranges), `fingerprint`, `trajectories` (whether a store exists) and `shards`:
    each recorded share with its `rows` range, `done` count, host, process and times
    (`finished` is `None` while it runs, or after it was interrupted).
    """
    out = Path(out)
    manifest = read_manifest(out)
    if manifest is None:
        return None
    n = int(manifest["rows"])
    done = done_rows(out, n)
    missing = _chunks(~done, max(n, 1))
    shards = []
    for rec in read_shards(out):
        a, b = rec.get("rows", [0, 0])
        shards.append({**rec, "done": int(done[a:b].sum()), "size": int(b - a)})
    return {"rows": n, "done": int(done.sum()), "missing": [list(m) for m in missing],
            "fingerprint": manifest["fingerprint"], "trajectories": (out / _STORE).is_dir(), "shards": shards}


@eqx.filter_jit
def _batched(fn, chunk):
    """`jax.vmap(fn)` over a chunk, compiled once per structure: a row function that is a
    pytree (such as `gradflow.proxy_row`'s) passes its arrays as arguments, so a new sweep of
    the same structure reuses the compilation; a plain function is keyed by identity."""
    return jax.vmap(fn)(chunk)


def run(
    fn: Callable,
    inputs,
    out: str | Path | None = None,
    *,
    chunk_size: int = 4096,
    devices=None,
    rows: tuple[int, int] | None = None,
    shard: tuple[int, int] | None = None,
    trajectories: Trajectories | None = None,
    meta: dict | None = None,
    post: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]] | None = None,
    progress: bool = True,
) -> dict[str, np.ndarray]:
    """Apply `fn` to every entry of the batch `inputs`, chunked and sharded, writing rows
    to `out` as they finish.

    **Arguments:**

    - `fn`: a function of one input (a pytree without batch axis) returning a dict of
      scalars (one row), and of series when `trajectories` names them.
    - `inputs`: a pytree whose leaves share a leading batch axis of length `n`.
    - `out`: a folder; rows go to `out/summary.parquet/part-START-STOP.parquet` and a
      manifest to `out/sweep.json`. Rerunning on the same folder resumes. `None` keeps
      everything in memory.
    - `chunk_size`: rows per chunk (one compiled call, one Parquet part); bounds memory.
      Chunks are the blocks `[k chunk_size, (k + 1) chunk_size)` of rows still to do.
      Each call is padded to a multiple of 16 rows per device, so one compilation serves
      all chunks. Columns with per-row shape `(a, b)` are written as `name_i_j`.
    - `devices`: the devices to shard each chunk over (default `jax.devices()`, or
      `jax.local_devices()` with `shard`).
    - `rows`: compute only rows `[start, stop)`.
    - `shard`: `(i, count)`: compute only the `i`-th of `count` shares of the rows
      ([`gradflow.sweep.share`][]) and record this process in `out/shards/`. Processes
      with different `i` may run at the same time on the same `out`.
    - `trajectories`: a [`gradflow.sweep.Trajectories`][]: write these outputs of `fn` to
      `out/trajectories.zarr` (needs `out`). Its time grid and series are part of the
      sweep's identity, and so is `chunk_size` (the store's chunk along runs).
    - `meta`: JSON-serialisable description stored in the manifest; part of the sweep's
      identity with the inputs (a different sweep in the same folder is an error). `fn`
      itself cannot be fingerprinted: describe it in `meta` (method, targets, ...).
    - `post`: host-side function applied to each chunk's columns before writing (e.g. to
      add labels computed with NumPy).
    - `progress`: show a progress bar (tqdm, on stderr).

    **Returns:** the full table (all rows written so far under `out`, or all computed
    rows when `out` is `None`), `{column: array}` sorted by `row`.
    """
    inputs = jax.tree.map(lambda x: x if hasattr(x, "shape") else np.asarray(x), inputs)
    leaves = jax.tree.leaves(inputs)
    if not leaves:
        raise ValueError("`inputs` must hold at least one array with a leading batch axis.")
    n = int(leaves[0].shape[0]) if leaves[0].ndim else 0
    if n == 0 or any(leaf.ndim == 0 or leaf.shape[0] != n for leaf in leaves):
        raise ValueError(
            "`inputs` must be arrays sharing a non-empty leading batch axis; got shapes "
            f"{[tuple(leaf.shape) for leaf in leaves]}."
        )
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"`chunk_size` must be a positive integer; got {chunk_size!r}.")
    if rows is not None and shard is not None:
        raise ValueError("give `rows` or `shard`, not both.")
    if trajectories is not None and out is None:
        raise ValueError("`trajectories` are written to disk: give `out`.")
    if shard is not None:
        start, stop = share(n, *shard, align=chunk_size if trajectories is not None else 1)
    else:
        start, stop = (0, n) if rows is None else rows
        if not 0 <= start < stop <= n:
            raise ValueError(f"`rows` must be a range within [0, {n}); got {rows}.")
        if trajectories is not None and (start % chunk_size or (stop % chunk_size and stop != n)):
            raise ValueError(f"with `trajectories`, `rows` must be whole chunks of {chunk_size} rows; got {rows}.")

    devices = list((jax.devices() if shard is None else jax.local_devices()) if devices is None else devices)
    # Chunks are padded to a multiple of `_LANES` rows per device: XLA's CPU code for a
    # batch that is not a multiple of the vector width can round the trailing rows
    # differently (1 ulp), which would make a row's bits depend on its place in a chunk.
    quantum = _LANES * len(devices)
    rows_per_chunk = min(chunk_size, max(stop - start, 1))  # a small range is not padded up to chunk_size
    size = -(-rows_per_chunk // quantum) * quantum  # rows computed per call, padding included
    mesh = Mesh(np.array(devices), ("batch",))  # "auto" axis: XLA propagates the sharding
    sharding = NamedSharding(mesh, PartitionSpec("batch"))

    todo = np.zeros(n, bool)
    todo[start:stop] = True
    results: list[dict[str, np.ndarray]] = []
    record = None
    if out is not None:
        out = Path(out)
        claim(out, inputs, meta, trajectories=trajectories, chunk_size=chunk_size)
        todo &= ~done_rows(out, n)
        if shard is not None:
            record = {"index": int(shard[0]), "count": int(shard[1]), "rows": [start, stop],
                      "host": socket.gethostname(), "pid": os.getpid(), "started": now(), "finished": None}
            (out / _SHARDS).mkdir(exist_ok=True)
            write_json(_shard_record(out, *shard), record)

    chunks = _chunks(todo, chunk_size, aligned=trajectories is not None)
    bar = _progress.bar(stop - start, "sweep", initial=int((stop - start) - todo.sum())) if progress else None
    series_names = () if trajectories is None else tuple(trajectories.series)
    def dispatch(a, b):
        idx = np.minimum(np.arange(a, a + size), b - 1)  # pad by repeating the last row
        chunk = jax.tree.map(lambda x, idx=idx: jax.device_put(x[idx], sharding), inputs)
        return a, b, _batched(fn, chunk)  # asynchronous: returns before the chunk is computed

    def finish(a, b, rows_out):
        columns = {k: np.asarray(val)[: b - a] for k, val in jax.device_get(rows_out).items()}
        missing = [k for k in series_names if k not in columns]
        if missing:
            raise ValueError(f"`trajectories` names the series {missing}, which `fn` does not return; it returns "
                             f"{sorted(columns)}.")
        series = {k: columns.pop(k) for k in series_names}
        if post is not None:
            columns = post(columns)
        if out is not None:
            if series:  # first the series, then the part that marks the rows as done
                _create_store(out, trajectories, inputs, series, n, chunk_size)
                _write_series(out, a, b, series)
            _write(out, a, b, columns)
        else:
            results.append({"row": np.arange(a, b), **columns})
        if bar is not None:
            bar.update(b - a)

    # One chunk ahead: the next chunk computes while this one is written.
    pending = None
    for a, b in chunks:
        ahead = dispatch(a, b)
        if pending is not None:
            finish(*pending)
        pending = ahead
    if pending is not None:
        finish(*pending)
    if bar is not None:
        bar.close()
    if record is not None:
        write_json(_shard_record(out, *shard), {**record, "finished": now()})
    if out is not None:
        return read(out)
    if not results:
        return {}
    columns = {k: np.concatenate([r[k] for r in results]) for k in results[0]}
    order = np.argsort(columns["row"], kind="stable")
    return {k: val[order] for k, val in columns.items()}
