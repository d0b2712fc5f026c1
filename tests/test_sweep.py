"""`gradflow.sweep`: the table is bitwise the same whatever the chunk size, the number of
devices (8 virtual CPU devices in a subprocess) and interruptions (a subprocess SIGKILLed
mid-sweep, then resumed: finished parts untouched, no row computed twice); a different
sweep in the same folder is refused; `rows=`, `done_rows`, `read` and the on-disk Parquet
dataset; bad arguments; a diverged run is flagged in its own row only.

The sweep (`tests/_sweep_worker.py`): the stalling problem with p(y*) = 0.10, SGD (lr 0.1)
for 300 steps, 40 Gaussian perturbations of the true reward. Compilation dominates: the
1-device reference table is computed once per module.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import _sweep_worker as worker
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pyarrow.parquet as pq
import pytest

import gradflow as gf
from gradflow import sweep

HERE = Path(__file__).parent
ROOT = HERE.parent
COLUMNS = {"row", "time_to_0.9", "final_true_reward", "status", "stall_level", "stall_duration", "rate"}
ONE_DEVICE = jax.devices()[:1]


def _assert_same_table(got: dict, want: dict) -> None:
    """Same columns and values, bitwise (NaN == NaN). A value read back from disk may come
    in a wider dtype (float32 -> float64 is exact); `test_read_keeps_dtypes` checks the
    dtypes themselves."""
    assert set(got) == set(want), (sorted(got), sorted(want))
    for k in want:
        a, b = np.asarray(got[k]), np.asarray(want[k])
        assert a.dtype.kind == b.dtype.kind, (k, a.dtype, b.dtype)
        assert a.shape == b.shape, (k, a.shape, b.shape)
        same = (a == b) | (np.isnan(a) & np.isnan(b)) if a.dtype.kind == "f" else a == b
        assert same.all(), (
            f"column {k!r} differs in rows {np.flatnonzero(~same).tolist()}: "
            f"{a[~same].tolist()} != {b[~same].tolist()}"
        )


def _parts(out: Path) -> dict[str, tuple[bytes, int]]:
    """`{part file name: (bytes, mtime_ns)}` of the finished parts under `out`."""
    folder = out / "summary.parquet"
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.glob("part-*.parquet"))}


def _ranges(names) -> list[tuple[int, int]]:
    return sorted(tuple(int(x) for x in Path(name).stem.split("-")[1:3]) for name in names)


def _env(devices: int) -> dict[str, str]:
    env = dict(os.environ)
    env["JAX_PLATFORMS"] = "cpu"
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}".strip()
    env.pop("JAX_ENABLE_X64", None)
    # The worker imports the same gradflow as this process (source tree or installed).
    where = str(Path(gf.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (where, env.get("PYTHONPATH")) if p)
    return env


@pytest.fixture(scope="module")
def problem():
    return worker.problem()


@pytest.fixture(scope="module")
def reference(problem):
    """The uninterrupted 1-device, in-memory table (chunks of 32 rows: 32 + 8 padded)."""
    fn, proxies = problem
    return sweep.run(fn, proxies, chunk_size=32, devices=ONE_DEVICE, progress=False)


def test_reference_table(problem, reference):
    """The table itself: one row per proxy, in order, each the row function of its own
    input; the sample mixes proxies that reach the target and proxies that do not."""
    fn, proxies = problem
    assert set(reference) == COLUMNS
    np.testing.assert_array_equal(reference["row"], np.arange(worker.N))
    assert np.all(reference["status"] == gf.status_code(gf.Status.ok))
    reached = np.isfinite(reference["time_to_0.9"])
    assert 0 < reached.sum() < worker.N  # some reach 0.9 within 300 steps, some do not
    one = jax.jit(fn)
    for i in (0, 17, worker.N - 1):
        row = jax.device_get(one(proxies[i]))
        for k, val in row.items():
            np.testing.assert_allclose(reference[k][i], val, rtol=1e-5, atol=1e-6, err_msg=f"{k}, row {i}")


def test_same_table_whatever_the_chunk_size(problem, reference, tmp_path):
    fn, proxies = problem
    in_memory = sweep.run(fn, proxies, chunk_size=7, devices=ONE_DEVICE, progress=False)
    _assert_same_table(in_memory, reference)
    on_disk = sweep.run(fn, proxies, tmp_path, chunk_size=7, devices=ONE_DEVICE, meta=worker.META,
                        progress=False)
    _assert_same_table(on_disk, reference)
    _assert_same_table(sweep.read(tmp_path), reference)
    assert _ranges(_parts(tmp_path)) == [(s, min(s + 7, worker.N)) for s in range(0, worker.N, 7)]


def test_same_table_with_chunks_of_one_row(problem, reference):
    """A chunk of one row (`chunk_size=1`, or `rows=(i, i + 1)`) is a batch of one: its
    rows must still be the reference's, bitwise."""
    fn, proxies = problem
    _assert_same_table(sweep.run(fn, proxies, chunk_size=1, devices=ONE_DEVICE, progress=False), reference)


def test_same_table_whatever_the_chunk_size_flow():
    """The same for the adaptive flow (diffrax): 16 proxies in one chunk, or in chunks of
    5 (so rows 4, 9 and 14 sit at position 4 of a 5-row batch)."""
    policy = gf.TabularSoftmax.from_probs(jnp.asarray(worker.PROBS, jnp.float32))
    true = jnp.asarray(worker.TRUE, jnp.float32)
    fn = gf.proxy_row(policy, true, method=gf.GradientFlow(), targets=(0.9,), t1=300.0)
    proxies = gf.perturb.gaussian(jax.random.key(0), true, 0.3, 16)
    whole = sweep.run(fn, proxies, chunk_size=16, devices=ONE_DEVICE, progress=False)
    assert np.all(whole["status"] == gf.status_code(gf.Status.ok)) and np.isfinite(whole["time_to_0.9"]).any()
    _assert_same_table(sweep.run(fn, proxies, chunk_size=5, devices=ONE_DEVICE, progress=False), whole)


def test_same_table_with_8_devices(reference, tmp_path):
    """A fresh process with 8 virtual CPU devices shards each chunk (12 rows, padded to
    128 = 8 devices x 16 rows) over all 8 and writes the same table as 1 device, bitwise."""
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, str(HERE / "_sweep_worker.py"), "devices", str(out)],
        env=_env(8), cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["devices"] == 8
    assert report["outputs"], "the worker saw no chunk outputs"
    for leaf in report["outputs"]:
        assert leaf["devices"] == 8 and not leaf["replicated"], leaf
        assert leaf["shape"] == [128] and leaf["shards"] == [[16]], leaf
    assert "sweep" in proc.stderr  # the progress bar (tqdm, on stderr)
    _assert_same_table(sweep.read(out), reference)
    assert _ranges(_parts(out)) == [(0, 12), (12, 24), (24, 36), (36, 40)]


def test_sigkill_then_resume(problem, reference, tmp_path):
    """SIGKILL a sweep of slow chunks once at least 2 parts are written; rerunning it
    finishes with the uninterrupted table, leaves the finished parts untouched and
    computes exactly the missing rows, once each."""
    fn, proxies = problem
    out = tmp_path / "out"
    folder = out / "summary.parquet"
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "_sweep_worker.py"), "slow", str(out)],
        env=_env(1), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 240
        while len(list(folder.glob("part-*.parquet"))) < 2:
            if proc.poll() is not None:
                pytest.fail(f"the worker exited ({proc.returncode}) before 2 parts: {proc.stderr.read()[-4000:]!r}")
            assert time.monotonic() < deadline, "the worker wrote fewer than 2 parts in 240 s"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL

    before = _parts(out)
    done = sweep.done_rows(out, worker.N)
    assert len(before) >= 2 and 0 < done.sum() < worker.N, "the kill did not land mid-sweep"
    np.testing.assert_array_equal(done, np.isin(np.arange(worker.N), np.concatenate(
        [np.arange(a, b) for a, b in _ranges(before)])))
    partial = sweep.read(out)  # what was finished is readable, and is the reference's rows
    _assert_same_table(partial, {k: v[done] for k, v in reference.items()})
    # An unfinished write (as a kill during `pq.write_table` leaves) is not a result.
    (folder / ".tmp-000000000000-000000000040-1").write_bytes(b"not parquet")

    computed = []

    def post(columns):
        computed.append(len(next(iter(columns.values()))))
        return columns

    table = sweep.run(fn, proxies, out, chunk_size=worker.SLOW_CHUNK, devices=ONE_DEVICE,
                      meta=worker.META, post=post, progress=False)
    _assert_same_table(table, reference)
    _assert_same_table(sweep.read(out), reference)
    assert sweep.done_rows(out, worker.N).all()
    assert sum(computed) == worker.N - done.sum()  # each missing row once, nothing else

    after = _parts(out)
    for name, (data, mtime) in before.items():
        assert after[name] == (data, mtime), f"{name} was rewritten"
    new = _ranges(set(after) - set(before))
    ranges = sorted(_ranges(before) + new)
    assert ranges[0][0] == 0 and ranges[-1][1] == worker.N
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:], strict=False)), ranges  # disjoint, no gaps
    assert sum(b - a for a, b in new) == worker.N - done.sum()
    on_disk = pq.read_table(folder).to_pydict()
    assert sorted(on_disk["row"]) == list(range(worker.N))


def test_refuses_a_different_sweep(problem, tmp_path):
    """Other inputs, other meta or another number of rows in the same folder: ValueError
    before anything is written."""
    fn, proxies = problem
    sweep.run(fn, proxies[:3], tmp_path, chunk_size=3, devices=ONE_DEVICE, meta=worker.META, progress=False)
    before = _parts(tmp_path)
    manifest = (tmp_path / "sweep.json").read_bytes()
    others = {
        "other inputs": dict(inputs=proxies[:3].at[1, 2].add(1e-3), meta=worker.META),
        "other meta": dict(inputs=proxies[:3], meta={**worker.META, "target": 0.8}),
        "no meta": dict(inputs=proxies[:3], meta=None),
        "more rows": dict(inputs=proxies[:4], meta=worker.META),
    }
    for what, kw in others.items():
        with pytest.raises(ValueError, match="different sweep"):
            sweep.run(fn, out=tmp_path, chunk_size=3, devices=ONE_DEVICE, progress=False, **kw)
        assert _parts(tmp_path) == before, what
        assert (tmp_path / "sweep.json").read_bytes() == manifest, what
    # The same sweep again: nothing to do, the same table.
    again = sweep.run(fn, proxies[:3], tmp_path, chunk_size=3, devices=ONE_DEVICE, meta=worker.META,
                      progress=False, post=lambda c: pytest.fail("recomputed a finished row"))
    _assert_same_table(again, sweep.read(tmp_path))
    assert _parts(tmp_path) == before


def test_rows_done_rows_read_and_parquet(problem, reference, tmp_path, capsys):
    """`rows=` computes only its range (in memory and on disk) and `done_rows` shows it;
    filling the rest writes parts out of order, and `read` and pyarrow's dataset reader
    both give every row once, `read` sorted."""
    fn, proxies = problem
    n = worker.N
    part = sweep.run(fn, proxies, rows=(5, 17), chunk_size=8, devices=ONE_DEVICE, progress=False)
    _assert_same_table(part, {k: v[5:17] for k, v in reference.items()})

    table = sweep.run(fn, proxies, tmp_path, rows=(5, 17), chunk_size=8, devices=ONE_DEVICE,
                      meta=worker.META, progress=True)
    assert "sweep" in capsys.readouterr().err  # the progress bar
    _assert_same_table(table, {k: v[5:17] for k, v in reference.items()})
    mask = np.zeros(n, bool)
    mask[5:17] = True
    np.testing.assert_array_equal(sweep.done_rows(tmp_path, n), mask)
    assert _ranges(_parts(tmp_path)) == [(5, 13), (13, 17)]

    table = sweep.run(fn, proxies, tmp_path, chunk_size=8, devices=ONE_DEVICE, meta=worker.META,
                      progress=False)
    _assert_same_table(table, reference)
    assert sweep.done_rows(tmp_path, n).all()
    assert _ranges(_parts(tmp_path)) == [(0, 5), (5, 13), (13, 17), (17, 25), (25, 33), (33, 40)]

    read = sweep.read(tmp_path)
    np.testing.assert_array_equal(read["row"], np.arange(n))
    _assert_same_table(read, reference)
    dataset = pq.read_table(tmp_path / "summary.parquet")
    assert dataset.num_rows == n and set(dataset.column_names) == COLUMNS
    cols = dataset.to_pydict()
    order = np.argsort(cols["row"])
    _assert_same_table({k: np.asarray(v)[order] for k, v in cols.items()}, reference)


def test_read_keeps_dtypes(problem, reference, tmp_path):
    """The table from disk (`run(..., out)`, `read`) has the dtypes of the in-memory table
    (float32 times and rewards, int32 status), as the Parquet file itself does."""
    fn, proxies = problem
    table = sweep.run(fn, proxies, tmp_path, chunk_size=32, devices=ONE_DEVICE, progress=False)
    schema = pq.read_table(tmp_path / "summary.parquet").schema
    assert str(schema.field("final_true_reward").type) == "float"  # float32 on disk
    for got in (table, sweep.read(tmp_path)):
        assert {k: np.asarray(v).dtype for k, v in got.items()} == {k: v.dtype for k, v in reference.items()}


def test_bad_arguments(problem, tmp_path):
    fn, proxies = problem
    out = tmp_path / "never"
    bad = [
        ("chunk_size", dict(inputs=proxies, chunk_size=0)),
        ("chunk_size", dict(inputs=proxies, chunk_size=-3)),
        ("chunk_size", dict(inputs=proxies, chunk_size=True)),
        ("inputs", dict(inputs={"a": proxies, "b": jnp.zeros(worker.N - 1)})),
        ("inputs", dict(inputs={})),
        ("inputs", dict(inputs=proxies[:0])),
        ("inputs", dict(inputs=jnp.float32(1.0))),
        ("inputs", dict(inputs=[1.0, 2.0])),  # Python scalars: no batch axis
        ("rows", dict(inputs=proxies, rows=(3, 3))),
        ("rows", dict(inputs=proxies, rows=(0, worker.N + 1))),
        ("rows", dict(inputs=proxies, rows=(-1, 5))),
    ]
    for name, kw in bad:
        with pytest.raises(ValueError, match=f"`{name}`"):
            sweep.run(fn, out=out, progress=False, **{"chunk_size": 8, **kw})
        assert not out.exists(), f"{name}: a rejected sweep created its folder"
    # A wrong type: ValueError from the library, or first the TypeError of this suite's
    # runtime annotation checks (--jaxtyping-packages); either names the argument.
    with pytest.raises((ValueError, TypeError), match="chunk_size"):
        sweep.run(fn, proxies, out, chunk_size=2.5, progress=False)
    assert not out.exists()


def test_diverged_run_is_flagged(problem, reference):
    """A proxy whose rewards overflow float32 (`r - V` is inf) makes SGD diverge: its row
    says status 1 (DIVERGED) and NaN time (unknown); the other rows are unchanged."""
    fn, proxies = problem
    big = 3e38
    bad = proxies.at[3].set(jnp.asarray([1.0, 0.8, big, -big, -1.0], proxies.dtype))
    table = sweep.run(fn, bad, chunk_size=32, devices=ONE_DEVICE, progress=False)
    assert table["status"][3] == gf.status_code(gf.Status.diverged) == 1
    assert np.isnan(table["time_to_0.9"][3])
    others = np.arange(worker.N) != 3
    assert np.all(table["status"][others] == gf.status_code(gf.Status.ok))
    _assert_same_table({k: v[others] for k, v in table.items()}, {k: v[others] for k, v in reference.items()})


def test_proxy_row_with_attracts_writes_to_disk(tmp_path):
    """`proxy_row(..., attracts=True)` is documented as a row function for `sweep.run`;
    its `(prompts, outputs)` `attracts` column must survive the trip to Parquet."""
    _, proxies = worker.problem()
    policy = gf.TabularSoftmax.from_probs(jnp.asarray(worker.PROBS, jnp.float32))
    true = jnp.asarray(worker.TRUE, jnp.float32)
    method = gf.GradientAscent(optax.sgd(0.1), 2)
    row = gf.proxy_row(policy, true, method=method, attracts=True)
    in_memory = sweep.run(row, proxies[:4], devices=ONE_DEVICE, progress=False)
    assert in_memory["attracts"].shape == (4, 1, 5)
    on_disk = sweep.run(row, proxies[:4], tmp_path, devices=ONE_DEVICE, progress=False)
    # Parquet columns are 1-D: the (1, 5) per-row mask comes back as attracts_0_0 .. attracts_0_4.
    flat = np.stack([on_disk[f"attracts_0_{j}"] for j in range(5)], axis=-1)[:, None, :]
    np.testing.assert_array_equal(flat, in_memory["attracts"])
