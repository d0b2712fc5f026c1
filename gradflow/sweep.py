"""Sweeps: run a batch of any size in chunks, sharded over devices, with results written
incrementally and resumed after an interruption.

The unit of work is a function `fn` of ONE input (a pytree without batch axis) that
returns a dict of scalars: one row of the result table. [`gradflow.sweep.run`][] applies
`jax.jit(jax.vmap(fn))` to chunks of the batch, each chunk sharded over all devices along
one mesh axis (`"batch"`), and writes every finished chunk atomically as one Parquet file
of the dataset `OUT/summary.parquet/` (a directory that `pandas.read_parquet`,
`pyarrow.parquet.read_table` and polars open as one table). Rerunning the same sweep on
the same `OUT` skips the rows already written: nothing finished is lost or recomputed.

Rows depend only on their own input, never on the chunk they ran in, so the table is the
same whatever the chunk size and the number of devices. Randomness must therefore come
in with the input (e.g. a key per row, `jax.random.fold_in(key, row)`).

Several hosts: call `jax.distributed.initialize()` first on every host; `jax.devices()`
then lists the devices of all hosts and the mesh spans them. Each chunk is computed
collectively, and only process 0 should write: pass `out=None` elsewhere, or give each
host its own range of rows with `rows=`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import equinox as eqx
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from . import _progress
from ._results import write_json

__all__ = ["run", "read", "done_rows", "claim", "read_manifest"]

_DATASET = "summary.parquet"
_LANES = 16
_MANIFEST = "sweep.json"


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


def _chunks(todo: np.ndarray, size: int) -> list[tuple[int, int]]:
    """Contiguous `[start, stop)` ranges of at most `size` rows covering `todo`."""
    out = []
    idx = np.flatnonzero(todo)
    if idx.size == 0:
        return out
    breaks = np.flatnonzero(np.diff(idx) != 1) + 1
    for run in np.split(idx, breaks):
        for s in range(int(run[0]), int(run[-1]) + 1, size):
            out.append((s, min(s + size, int(run[-1]) + 1)))
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


def claim(out: str | Path, inputs, meta: dict | None = None, *, replace: bool = False) -> None:
    """Make `out` the folder of the sweep of `inputs` and `meta` (as `run` does first).

    A folder that already holds this sweep is kept as it is (its rows are resumed); one
    that holds a different sweep is refused with a `ValueError`, or, with `replace`, has
    that sweep's rows and manifest deleted.
    """
    out = Path(out)
    inputs = jax.tree.map(lambda x: x if hasattr(x, "shape") else np.asarray(x), inputs)
    n = int(jax.tree.leaves(inputs)[0].shape[0])
    manifest = {"rows": n, "fingerprint": _fingerprint(inputs, dict(meta or {})), "meta": dict(meta or {})}
    old = read_manifest(out)
    if old is not None and (old.get("fingerprint"), old.get("rows")) == (manifest["fingerprint"], n):
        return
    if old is not None and not replace:
        raise ValueError(
            f"{out} holds the results of a different sweep ({old.get('rows')} rows, other "
            "inputs or settings); use a new --out folder, or --force to replace it."
        )
    if replace:
        shutil.rmtree(out / _DATASET, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / _MANIFEST, manifest)


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
    meta: dict | None = None,
    post: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]] | None = None,
    progress: bool = True,
) -> dict[str, np.ndarray]:
    """Apply `fn` to every entry of the batch `inputs`, chunked and sharded, writing rows
    to `out` as they finish.

    **Arguments:**

    - `fn`: a function of one input (a pytree without batch axis) returning a dict of
      scalars (one row).
    - `inputs`: a pytree whose leaves share a leading batch axis of length `n`.
    - `out`: a folder; rows go to `out/summary.parquet/part-START-STOP.parquet` and a
      manifest to `out/sweep.json`. Rerunning on the same folder resumes. `None` keeps
      everything in memory.
    - `chunk_size`: rows per chunk (one compiled call, one Parquet part); bounds memory.
      Each call is padded to a multiple of 16 rows per device, so one compilation serves
      all chunks. Columns with per-row shape `(a, b)` are written as `name_i_j`.
    - `devices`: the devices to shard each chunk over (default `jax.devices()`).
    - `rows`: compute only rows `[start, stop)` (e.g. one host's share).
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
    start, stop = (0, n) if rows is None else rows
    if not 0 <= start < stop <= n:
        raise ValueError(f"`rows` must be a range within [0, {n}); got {rows}.")
    meta = dict(meta or {})

    devices = list(jax.devices() if devices is None else devices)
    # Chunks are padded to a multiple of `_LANES` rows per device: XLA's CPU code for a
    # batch that is not a multiple of the vector width can round the trailing rows
    # differently (1 ulp), which would make a row's bits depend on its place in a chunk.
    quantum = _LANES * len(devices)
    rows_per_chunk = min(chunk_size, stop - start)  # a small batch is not padded up to chunk_size
    size = -(-rows_per_chunk // quantum) * quantum  # rows computed per call, padding included
    mesh = Mesh(np.array(devices), ("batch",))  # "auto" axis: XLA propagates the sharding
    sharding = NamedSharding(mesh, PartitionSpec("batch"))

    todo = np.zeros(n, bool)
    todo[start:stop] = True
    results: list[dict[str, np.ndarray]] = []
    if out is not None:
        out = Path(out)
        claim(out, inputs, meta)
        todo &= ~done_rows(out, n)

    chunks = _chunks(todo, rows_per_chunk)
    bar = _progress.bar(stop - start, "sweep", initial=int((stop - start) - todo.sum())) if progress else None
    for a, b in chunks:
        idx = np.minimum(np.arange(a, a + size), b - 1)  # pad by repeating the last row
        chunk = jax.tree.map(lambda x, idx=idx: jax.device_put(x[idx], sharding), inputs)
        rows_out = jax.device_get(_batched(fn, chunk))
        columns = {k: np.asarray(val)[: b - a] for k, val in rows_out.items()}
        if post is not None:
            columns = post(columns)
        if out is not None:
            _write(out, a, b, columns)
        else:
            results.append({"row": np.arange(a, b), **columns})
        if bar is not None:
            bar.update(b - a)
    if bar is not None:
        bar.close()
    if out is not None:
        return read(out)
    if not results:
        return {}
    columns = {k: np.concatenate([r[k] for r in results]) for k in results[0]}
    order = np.argsort(columns["row"], kind="stable")
    return {k: val[order] for k, val in columns.items()}
