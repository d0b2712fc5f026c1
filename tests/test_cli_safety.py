"""Nothing lost, nothing silent: result folders, provenance, refusals before work, and the
bad inputs a new user met (issue 14). Each refusal is checked for its message and for
leaving the disk exactly as it was."""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradflow as gf
from gradflow import cli, sweep
from gradflow._util import results as _results
from gradflow.studies import categorization_map, stalling
from gradflow.studies._base import dumps, load, packaged_config, to_dict

ROOT = Path(__file__).resolve().parent.parent


def _snapshot(folder: Path) -> dict[str, str]:
    """`{relative path: sha256}` of every file under `folder` (empty if it does not exist)."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _sweep_config(tmp: Path, name: str = "small", **edits) -> Path:
    """The categorisation map's config with a 5 x 5 quick grid of 200 SGD steps; `edits`
    are `section__key=value` (`quick__section__key=value` for the `--quick` values)."""
    raw = tomllib.loads(packaged_config("categorization-map").read_text())
    raw["quick"]["proxies"]["num"] = [5, 5]
    raw["quick"]["method"]["steps"] = 200
    for k, v in edits.items():
        *tables, key = k.split("__")
        table = raw
        for t in tables:
            table = table[t]
        table[key] = v
    path = tmp / f"{name}.toml"
    path.write_text(dumps(raw))
    return path


def _sweep(config: Path, out: Path, *extra: str) -> int:
    return cli.main(["sweep", str(config), "--quick", "--out", str(out), "--no-plot", "--quiet", *extra])


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """A finished quick sweep folder and its config."""
    tmp = tmp_path_factory.mktemp("swept")
    config = _sweep_config(tmp)
    out = tmp / "out"
    assert _sweep(config, out) == 0
    return config, out


def test_run_record_says_what_made_the_folder(swept):
    config, out = swept
    record = json.loads((out / "run.json").read_text())
    assert record["kind"] == "sweep" and record["name"] == "small" and record["mode"] == "quick"
    assert record["config"] == json.loads(_results.dumps(to_dict(load(categorization_map.Config, config, quick=True))))
    assert record["versions"]["jax"] == jax.__version__
    assert record["finished"] is not None and record["started"] <= record["finished"]
    assert record["command"][0]  # the command line that made it


def test_cli_sweep_is_bitwise_the_same_on_8_devices(swept, tmp_path):
    """`gradflow sweep` in a process with 8 virtual CPU devices writes the same table as
    with one device, every column bitwise (the labels and the instantaneous `rate`
    included), and the same reference."""
    config, out = swept
    out8 = tmp_path / "o8"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=8".strip()}
    proc = subprocess.run([sys.executable, "-m", "gradflow", "sweep", str(config), "--quick", "--out", str(out8),
                           "--no-plot", "--quiet"], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((out8 / "run.json").read_text())["backend"]["devices"] == 8
    assert json.loads((out / "run.json").read_text())["backend"]["devices"] == 1
    one, eight = sweep.read(out), sweep.read(out8)
    assert set(one) == set(eight) and len(one) > 10
    for k in one:
        a, b = one[k], eight[k]
        same = (a == b) | (np.isnan(a) & np.isnan(b)) if a.dtype.kind == "f" else a == b
        assert a.dtype == b.dtype and same.all(), k
    assert (out / "reference.json").read_text() == (out8 / "reference.json").read_text()


def test_refused_sweep_changes_nothing(swept, tmp_path, capsys):
    """A different config into a folder that holds a sweep: refused before any work, and
    every file (reference.json included) is as it was; `plot` still draws the old sweep."""
    config, out = swept
    before = _snapshot(out)
    changed = _sweep_config(tmp_path, name="small", analysis__targets=[0.95])
    assert _sweep(changed, out) == 2
    err = capsys.readouterr().err
    assert "holds the results of a different config" in err and "--force" in err
    assert _snapshot(out) == before
    # A study, or a different sweep name, into the same folder: refused too, nothing changed.
    assert cli.main(["demo", "--quick", "--out", str(out), "--quiet"]) == 2
    assert "holds the results of sweep 'small' (quick)" in capsys.readouterr().err
    assert _snapshot(out) == before
    # The folder still draws as the sweep it holds.
    assert cli.main(["plot", str(out)]) == 0
    assert "categorization_map.png" in capsys.readouterr().out


def test_force_replaces_a_different_sweep(swept, tmp_path):
    config, out = swept
    copy = tmp_path / "copy"
    copy.mkdir()
    for rel in _snapshot(out):
        (copy / rel).parent.mkdir(parents=True, exist_ok=True)
        (copy / rel).write_bytes((out / rel).read_bytes())
    changed = _sweep_config(tmp_path, name="small", analysis__targets=[0.95])
    assert _sweep(changed, copy, "--force") == 0
    record = json.loads((copy / "run.json").read_text())
    assert record["config"]["analysis"]["targets"] == [0.95]
    table = sweep.read(copy)
    assert "time_to_0.95" in table and "time_to_0.9" not in table and len(table["row"]) == 25
    assert json.loads((copy / "reference.json").read_text())["reference"]["status"] == "ok"


def test_tables_and_json_are_standard(swept, capsys):
    """Status is a name in Parquet (as in the studies' CSVs); reference.json is standard
    JSON (infinity as a string); `--json` prints the summary as standard JSON."""
    config, out = swept
    table = sweep.read(out)
    assert table["status"].dtype.kind == "U" and set(table["status"]) == {"ok"}

    def strict(text):
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))

    ref = strict((out / "reference.json").read_text())["reference"]
    assert all(isinstance(v, str) or math.isfinite(v) for v in ref.values())
    assert math.isinf(float(ref["time_to_0.9"]))  # the reference stalls below 0.9: "inf"
    capsys.readouterr()
    assert _sweep(config, out, "--json") == 0  # resumes: nothing to compute
    captured = capsys.readouterr()
    summary = strict(captured.out)
    assert summary["rows"] == 25 and sum(summary["labels"].values()) + summary["failed"] == 25
    assert "Sweep: 25 of 25 proxies done" in captured.err  # the human summary went to stderr


def test_progress_goes_to_stderr_and_quiet_silences_it(swept, capsys):
    config, out = swept
    assert cli.main(["sweep", str(config), "--quick", "--out", str(out), "--no-plot"]) == 0
    captured = capsys.readouterr()
    assert "reference run: trained on the true reward (compilation included)" in captured.err
    assert "reference run" not in captured.out and "Sweep: 25 of 25 proxies done" in captured.out
    assert _sweep(config, out) == 0  # --quiet
    assert capsys.readouterr().err == ""


def test_unusable_out_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    def never(*args):
        raise AssertionError("the study ran")

    monkeypatch.setattr(stalling, "compute", never)
    a_file = tmp_path / "file"
    a_file.write_text("keep me")
    for out, message in [(a_file, "exists and is not a folder"),
                         (a_file / "sub", "is not a folder"),
                         (Path("/proc/gradflow-test/out"), "cannot be created")]:
        assert cli.main(["study", "stalling", "--quick", "--out", str(out), "--quiet"]) == 2
        assert message in capsys.readouterr().err
    assert a_file.read_text() == "keep me"
    config = _sweep_config(tmp_path)
    assert _sweep(config, a_file) == 2
    assert "exists and is not a folder" in capsys.readouterr().err
    # A non-empty folder that gradflow did not write.
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("x")
    assert cli.main(["study", "stalling", "--quick", "--out", str(other), "--quiet"]) == 2
    assert "was not written by gradflow" in capsys.readouterr().err
    assert _snapshot(other) == {"notes.txt": hashlib.sha256(b"x").hexdigest()}


def test_quick_and_full_runs_never_share_a_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert _results.default_out("stalling", True) != _results.default_out("stalling", False)
    out = tmp_path / "gradflow-results" / "stalling"
    out.mkdir(parents=True)
    _results.write_json(out / "run.json", {"kind": "study", "name": "stalling", "mode": "quick", "config": {}})
    before = _snapshot(out)
    assert cli.main(["demo", "--out", str(out), "--quiet"]) == 2
    assert "holds the results of study 'stalling' (quick)" in capsys.readouterr().err
    assert _snapshot(out) == before


@pytest.mark.parametrize("edit, key, message", [
    ({"method__steps": 10**12}, "method.steps", "an integer below 2**31"),
    ({"analysis__targets": [5.0]}, "targets", "outside the range the expected true reward can reach, [-1, 1]"),
    ({"method__learning_rate": 1e6}, "status", "'saturated'"),
])
def test_bad_sweep_configs_are_refused_and_write_nothing(tmp_path, capsys, edit, key, message):
    config = _sweep_config(tmp_path, **edit)
    out = tmp_path / "out"
    assert _sweep(config, out) == 2
    err = capsys.readouterr().err
    assert key in err and message in err, err
    assert not out.exists()


def test_a_folder_as_config(tmp_path, capsys):
    assert cli.main(["sweep", str(tmp_path), "--quiet"]) == 2
    assert "is a folder; expected a TOML file" in capsys.readouterr().err
    assert cli.main(["study", "stalling", "--config", str(tmp_path), "--quiet"]) == 2
    assert "is a folder" in capsys.readouterr().err


@pytest.mark.parametrize("value, message", [
    ("1" * 400, "overflows a float"),
    ("1e308", "is too large"),
])
def test_rm_eval_refuses_overflowing_numbers_by_row_and_column(tmp_path, capsys, value, message):
    lines = [json.dumps({"prompt_id": 0, "response_id": i, "logprob": -1.0, "true_reward": float(i), "rm_a": 0.5})
             for i in range(3)]
    lines[1] = lines[1].replace('"rm_a": 0.5', f'"rm_a": {value}')
    path = tmp_path / "records.jsonl"
    path.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    assert cli.main(["rm-eval", str(path), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "line 2, column 'rm_a'" in err and message in err and len(err) < 400, err
    assert not out.exists()


def test_engine_refusals_and_flags():
    policy = gf.TabularSoftmax.from_probs(jnp.asarray([0.05, 0.5, 0.15, 0.15, 0.15]))
    r = jnp.asarray([1.0, 0.8, -1.0, -1.0, -1.0])
    with pytest.raises(ValueError, match="steps against the gradient"):
        gf.GradientAscent(optax.sgd(-0.1), 10)
    with pytest.raises(ValueError, match="`steps` must be at most 2147483647"):
        gf.GradientAscent(optax.sgd(0.1), 10**12)
    for lr in (1e30, 1e6):  # parameters far beyond what a float softmax resolves
        sol = gf.solve(policy, reward=r, method=gf.GradientAscent(optax.sgd(lr), 10), targets=(0.9,))
        assert sol.status == gf.Status.saturated
        assert math.isnan(float(gf.time_to_reward(sol, 0.9)))  # unknown, not "never"
    sol = gf.solve(policy, reward=r, method=gf.GradientAscent(optax.sgd(0.1), 2000))
    assert sol.status == gf.Status.ok
    assert gf.status_name(gf.Status.saturated) == "saturated"


def test_traced_bad_value_names_the_argument_without_a_tracer():
    policy = gf.TabularSoftmax.from_probs(jnp.asarray([0.2, 0.8]))
    run = jax.jit(jax.vmap(lambda t1: gf.solve(policy, reward=jnp.asarray([1.0, 0.0]), method=gf.GradientFlow(),
                                               t1=t1).status))
    with pytest.raises(Exception) as info:  # noqa: B017 - JAX's runtime error type varies
        run(jnp.asarray([1.0, -1.0]))
    text = str(info.value)
    assert "`t1` must be positive (a value traced under jit/vmap was not)" in text
    assert "Tracer" not in text


def test_files_are_written_atomically(tmp_path, monkeypatch):
    path = tmp_path / "a.json"
    _results.write_json(path, {"x": 1.0})

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError):
        _results.write_json(path, {"x": 2.0})
    assert json.loads(path.read_text()) == {"x": 1.0}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]  # no temporary file left


def test_version_module_entry_and_a_light_parser():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "gradflow", "--version"], capture_output=True, text=True, env=env,
                         timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == f"gradflow {gf.__version__}"
    # --help builds the parser only: no JAX import (which takes seconds).
    code = "import sys, gradflow.cli as c; c._parser(); print('jax' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert out.stdout.strip() == "False", out.stderr


def test_ctrl_c_stops_at_once_and_says_how_to_resume(tmp_path):
    """SIGINT during a sweep of many chunks: the command exits within seconds with status
    130 and one line saying how many rows were kept and how to resume (resuming itself is
    tested in test_sweep.py)."""
    config = _sweep_config(tmp_path, sweep__chunk_size=1, quick__method__steps=200000)
    out = tmp_path / "out"
    # As `gradflow sweep ...`, with Python's Ctrl-C handler even if this process ignores SIGINT.
    main = ("import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
            "from gradflow.cli import main; sys.exit(main(sys.argv[1:]))")
    cmd = [sys.executable, "-c", main, "sweep", str(config), "--quick", "--out", str(out), "--no-plot", "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not list((out / "summary.parquet").glob("part-*")) and time.monotonic() < deadline:
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        sent = time.monotonic()
        _, err = proc.communicate(timeout=60)
        waited = time.monotonic() - sent
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert waited < 10, waited  # generous on a loaded machine; about a second when idle
    assert "of 25 rows are kept in" in err and "Rerun the same command to resume" in err
    assert "Traceback" not in err
    kept = int(sweep.done_rows(out, 25).sum())
    assert 0 < kept < 25
    assert json.loads((out / "run.json").read_text())["finished"] is None
