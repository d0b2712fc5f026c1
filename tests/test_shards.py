"""Sweeps beyond one process (issue 15): shares of one folder written at once by several
processes, killed and rerun; `jax.distributed`; `gradflow status`; trajectories on disk."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import xarray as xr
from figcheck import problems as figure_problems

import gradflow as gf
from gradflow import cli, sweep
from gradflow.studies import redraw
from gradflow.studies._base import dumps, packaged_config

ROOT = Path(__file__).resolve().parent.parent


def _config(tmp: Path, name: str, num: int, steps: int, chunk: int = 4) -> Path:
    """The categorisation map's config: a `num x num` quick grid of `steps` SGD updates,
    `chunk` rows per chunk."""
    raw = tomllib.loads(packaged_config("categorization-map").read_text())
    raw["quick"]["proxies"]["num"] = [num, num]
    raw["quick"]["method"]["steps"] = steps
    raw["sweep"]["chunk_size"] = chunk
    path = tmp / f"{name}.toml"
    path.write_text(dumps(raw))
    return path


def _args(config: Path, out: Path, *extra: str) -> list[str]:
    return ["sweep", str(config), "--quick", "--out", str(out), "--no-plot", "--quiet", *extra]


def _start(config: Path, out: Path, *extra: str, env: dict | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu", **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "gradflow", *_args(config, out, *extra)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen) -> None:
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]


def _assert_same_sweep(a: Path, b: Path) -> None:
    """Every column of the two tables, and every array of the two trajectory stores, bit
    for bit (nan where nan)."""
    ta, tb = sweep.read(a), sweep.read(b)
    assert set(ta) == set(tb) and len(ta["row"]) > 0
    for k in ta:
        assert ta[k].dtype == tb[k].dtype and np.array_equal(ta[k], tb[k], equal_nan=ta[k].dtype.kind == "f"), k
    sa, sb = sweep.read_trajectories(a), sweep.read_trajectories(b)
    assert (sa is None) == (sb is None)
    for k in sa or {}:
        assert np.array_equal(sa[k], sb[k], equal_nan=sa[k].dtype.kind == "f"), k


def _parts(out: Path) -> dict[str, tuple[int, int]]:
    """`{part file: (inode, mtime)}`: a part rewritten would change both."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (out / "summary.parquet").glob("part-*")}


def _each_row_once(out: Path, n: int) -> None:
    count = np.zeros(n, int)
    for name in _parts(out):
        start, stop = (int(x) for x in name.removesuffix(".parquet").split("-")[1:3])
        count[start:stop] += 1
    assert (count == 1).all(), np.flatnonzero(count != 1)


def _status(out: Path, capsys) -> dict:
    assert cli.main(["status", str(out), "--json"]) == 0
    return json.loads(capsys.readouterr().out)["sweep"]


@pytest.fixture(scope="module")
def long_sweep(tmp_path_factory):
    """A 256-row sweep of 8,000 SGD updates per row with trajectories, in one process."""
    tmp = tmp_path_factory.mktemp("long")
    config = _config(tmp, "long", num=16, steps=8000)
    assert cli.main(_args(config, tmp / "one", "--trajectories")) == 0
    return config, tmp / "one"


@pytest.fixture(scope="module")
def short_sweep(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("short")
    config = _config(tmp, "short", num=5, steps=200)
    assert cli.main(_args(config, tmp / "one")) == 0
    return config, tmp / "one"


def test_two_shards_at_once_one_killed_and_rerun(long_sweep, tmp_path, capsys):
    """Shares 0/2 and 1/2 sweep one folder at the same time; share 1 is SIGKILLed after a
    few chunks and rerun. The union is bit for bit the single-process sweep (table and
    trajectories), every row was written once, and the parts written before the kill
    were not rewritten. `gradflow status` tells each stage."""
    config, single = long_sweep
    out = tmp_path / "out"
    assert cli.main(["status", str(out)]) == 2  # nothing there yet
    assert "not a gradflow result folder" in capsys.readouterr().err
    first = _start(config, out, "--shard", "0/2", "--trajectories")
    second = _start(config, out, "--shard", "1/2", "--trajectories")
    deadline = time.monotonic() + 300
    while len([p for p in _parts(out) if int(p.split("-")[1]) >= 128]) < 2:  # share 1: rows 128-256
        assert second.poll() is None and time.monotonic() < deadline, "share 1 ended before it could be killed"
        time.sleep(0.01)
    second.send_signal(signal.SIGKILL)
    second.communicate()  # reaped, its pipes closed
    _finish(first)

    state = _status(out, capsys)
    assert state["rows"] == 256 and 128 + 2 * 4 <= state["done"] < 256
    shards = {s["index"]: s for s in state["shards"]}
    assert shards[0]["done"] == shards[0]["size"] == 128 and shards[0]["finished"] is not None
    assert shards[1]["finished"] is None and 8 <= shards[1]["done"] < 128  # killed mid-way
    assert state["missing"] and all(128 <= a < b <= 256 for a, b in state["missing"])
    before = _parts(out)

    assert cli.main(_args(config, out, "--shard", "1/2", "--trajectories")) == 0
    capsys.readouterr()
    after = _parts(out)
    assert all(after[name] == stamp for name, stamp in before.items())  # not rewritten
    _each_row_once(out, 256)
    _assert_same_sweep(single, out)
    state = _status(out, capsys)
    assert state["done"] == 256 and state["missing"] == []
    assert all(s["finished"] is not None for s in state["shards"])
    assert cli.main(["status", str(out)]) == 0
    text = capsys.readouterr().out
    assert "256 of 256 done; none missing" in text and "shard 1/2: rows 128-256, 128 of 128 done" in text
    # The bands of true reward over time, by label and by a column.
    assert cli.main(["plot", str(out)]) == 0
    assert "trajectory_bands.png" in capsys.readouterr().out
    assert cli.main(["plot", str(out), "--by", "reward_1"]) == 0
    for by in (None, "reward_1"):  # no text over text, no legend over the curves
        assert figure_problems(redraw(out, by=by)) == {}
    assert cli.main(["plot", str(out), "--by", "nonsense"]) == 2
    assert "no column 'nonsense'" in capsys.readouterr().err


def test_jax_distributed_processes_take_their_share(short_sweep, tmp_path):
    """Two processes started with `jax.distributed` (coordinator on localhost) take the
    shares 0/2 and 1/2 from it, each on its own device: the same table, bit for bit."""
    config, single = short_sweep
    out = tmp_path / "out"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [_start(config, out, "--shard", "jax",
                    env={"JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JAX_NUM_PROCESSES": "2",
                         "JAX_PROCESS_ID": str(i)}) for i in range(2)]
    for proc in procs:
        _finish(proc)
    _assert_same_sweep(single, out)
    _each_row_once(out, 25)
    state = sweep.status(out)
    assert [(s["index"], s["count"], s["done"]) for s in state["shards"]] == [(0, 2, 12), (1, 2, 13)]
    assert json.loads((out / "run.json").read_text())["backend"]["processes"] == 2


def test_slurm_job_array_index_is_the_share(short_sweep, tmp_path, monkeypatch):
    config, single = short_sweep
    out = tmp_path / "out"
    for task in (4, 5):  # an array numbered from 4 (--array=4-5)
        monkeypatch.setenv("SLURM_ARRAY_TASK_ID", str(task))
        monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "2")
        monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "4")
        assert cli.main(_args(config, out, "--shard", "array")) == 0
    _assert_same_sweep(single, out)
    assert [(s["index"], s["count"]) for s in sweep.status(out)["shards"]] == [(0, 2), (1, 2)]


@pytest.mark.parametrize("value", ["2/2", "0/0", "a/b", "1", "3/2"])
def test_bad_shard_exits_2_and_writes_nothing(short_sweep, tmp_path, capsys, value):
    config, _ = short_sweep
    with pytest.raises(SystemExit) as exc:
        cli.main(_args(config, tmp_path / "out", "--shard", value))
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--shard" in err and ("I/N" in err) and repr(value) in err
    assert not (tmp_path / "out").exists()


def test_shard_refusals_name_the_cause(short_sweep, tmp_path, capsys, monkeypatch):
    config, single = short_sweep
    out = tmp_path / "out"
    for name in ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT"):
        monkeypatch.delenv(name, raising=False)
    assert cli.main(_args(config, out, "--shard", "array")) == 2
    assert "SLURM_ARRAY_TASK_ID" in capsys.readouterr().err
    assert cli.main(_args(config, out, "--shard", "0/2", "--force")) == 2
    assert "would delete the rows of the other shares" in capsys.readouterr().err
    assert not out.exists()
    # A sweep started without trajectories refuses --trajectories (its fingerprint), and
    # nothing in it changes.
    before = {p: p.read_bytes() for p in single.rglob("*") if p.is_file()}
    assert cli.main(_args(config, single, "--trajectories")) == 2
    assert "it was started without --trajectories" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in single.rglob("*") if p.is_file()} == before


def test_shares_cover_every_row_once():
    for n, count, align in [(25, 2, 1), (25, 2, 4), (7, 3, 1), (3, 5, 1), (100, 7, 8), (256, 2, 4)]:
        bounds = [sweep.share(n, i, count, align) for i in range(count)]
        assert bounds[0][0] == 0 and bounds[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(bounds[:-1], bounds[1:], strict=True))
        assert all(a % align == 0 for a, _ in bounds) and all(a <= b for a, b in bounds)
        sizes = [b - a for a, b in bounds if b > a]
        assert max(sizes) - min(sizes) <= align  # as equal as the alignment allows
    with pytest.raises(ValueError, match="0 <= I < N"):
        sweep.share(10, 2, 2)


# ------------------------------------------------------------------------------ trajectories


P0 = jnp.asarray([0.1, 0.5, 0.4 / 3, 0.4 / 3, 0.4 / 3])
TRUE = jnp.asarray([1.0, 0.8, -1.0, -1.0, -1.0])


def _trajectory_sweep(out: Path, chunk: int, proxies) -> dict:
    policy = gf.TabularSoftmax.from_probs(P0)
    method = gf.GradientFlow()
    saveat = gf.SaveAt(n=11, probs=True)
    row = gf.proxy_row(policy, TRUE, method=method, targets=(0.9,), t1=50.0, record=saveat)
    traj = sweep.Trajectories(np.asarray(jnp.linspace(0.0, 50.0, 11)),
                              {"true_reward": (), "proxy_reward": (), "probs": ("prompt", "output")},
                              input_dims={"reward": ("output",)})
    # A pytree row function (not a new lambda per sweep): both sweeps share one compilation.
    return sweep.run(jax.tree_util.Partial(_by_reward, row), {"reward": proxies}, out, chunk_size=chunk,
                     trajectories=traj, progress=False)


def _by_reward(row, inputs):
    return row(inputs["reward"])


def test_trajectory_store_opens_in_xarray_and_equals_separate_solves(tmp_path):
    """The store opens in xarray with named dimensions and the inputs as coordinates; its
    series are those of separate `gf.solve` calls; and it is bit for bit the same for any
    chunk size."""
    proxies = TRUE[None] + 0.5 * jax.random.normal(jax.random.key(0), (7, 5))
    _trajectory_sweep(tmp_path / "a", 3, proxies)
    _trajectory_sweep(tmp_path / "b", 5, proxies)
    a = xr.open_zarr(tmp_path / "a" / "trajectories.zarr").load()
    b = xr.open_zarr(tmp_path / "b" / "trajectories.zarr").load()
    assert a.equals(b)  # the same values and coordinates (the attributes record the chunking)
    assert a.true_reward.dims == ("run", "time") and a.probs.dims == ("run", "time", "prompt", "output")
    assert "reward" in a.coords and a.reward.dims == ("run", "output")
    np.testing.assert_array_equal(a.reward.values, np.asarray(proxies))
    np.testing.assert_array_equal(a.run.values, np.arange(7))
    policy = gf.TabularSoftmax.from_probs(P0)
    for i in (0, 6):
        sol = gf.solve(policy, reward=proxies[i], true_reward=TRUE, method=gf.GradientFlow(), t1=50.0,
                       saveat=gf.SaveAt(n=11, probs=True), targets=(0.9,))
        np.testing.assert_allclose(a.time.values, np.asarray(sol.time))
        np.testing.assert_allclose(a.true_reward.values[i], np.asarray(sol.true_reward), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(a.proxy_reward.values[i], np.asarray(sol.proxy_reward), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(a.probs.values[i], np.asarray(sol.probs), rtol=1e-5, atol=1e-6)
    # The series are not in the summary table.
    assert "true_reward" not in sweep.read(tmp_path / "a") and "final_true_reward" in sweep.read(tmp_path / "a")


def test_unfinished_runs_read_as_nan_and_rows_must_be_whole_chunks(tmp_path):
    proxies = TRUE[None] + 0.5 * jax.random.normal(jax.random.key(1), (7, 5))
    row = gf.proxy_row(gf.TabularSoftmax.from_probs(P0), TRUE, method=gf.GradientFlow(), t1=50.0,
                       record=gf.SaveAt(n=11))
    traj = sweep.Trajectories(np.linspace(0.0, 50.0, 11), {"true_reward": (), "proxy_reward": ()})
    sweep.run(row, proxies, tmp_path, chunk_size=3, rows=(3, 6), trajectories=traj, progress=False)
    store = sweep.read_trajectories(tmp_path)
    done = np.isfinite(store["true_reward"]).all(axis=1)
    np.testing.assert_array_equal(done, np.arange(7) // 3 == 1)
    assert store["input"].shape == (7, 5)  # a single array input is named "input"
    with pytest.raises(ValueError, match="whole chunks of 3 rows"):
        sweep.run(row, proxies, tmp_path, chunk_size=3, rows=(2, 6), trajectories=traj, progress=False)
    wrong = sweep.Trajectories(np.linspace(0.0, 50.0, 11), {"reward_curve": ()})
    with pytest.raises(ValueError, match=r"names the series \['reward_curve'\], which `fn` does not return"):
        sweep.run(row, proxies, tmp_path / "other", chunk_size=3, trajectories=wrong, progress=False)
    assert not (tmp_path / "other" / "summary.parquet").exists()
    with pytest.raises(ValueError, match="give `out`"):
        sweep.run(row, proxies, None, trajectories=traj)
