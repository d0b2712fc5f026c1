"""Helpers shared by the test modules (imported as `helpers`: pytest puts `tests/` on
`sys.path` because the folder has no `__init__.py`).

Compilation dominates the cost of this suite (a flow compiles in seconds, then runs in
milliseconds), so tests go through a few *canonical* calls whose static configuration is
fixed: `flow(...)` and `sgd(...)`. Everything that varies between tests (policies, rewards,
`t1`, learning rates, temperature, prompt weights) is passed as arrays, so each
(policy type, shape, dtype) compiles once for the whole suite.
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

import gradflow as gf

# ONE jitted `gf.solve` for the whole suite.
JSOLVE = eqx.filter_jit(gf.solve)

FLOW_F32 = gf.GradientFlow()
FLOW_F64 = gf.GradientFlow(rtol=1e-10, atol=1e-12)

N_SAVE = 41

REF_TRUE = (1.0, 0.8, -1.0, -1.0, -1.0)
REF_PROXY = (1.0, -1.0, -1.0, -1.0, -1.0)


def dtype_of(policy):
    return policy.weights.dtype


def tol(dtype, f32: float, f64: float) -> float:
    """The tolerance for the given dtype."""
    return f64 if dtype == jnp.float64 else f32


def flow_method(dtype) -> gf.GradientFlow:
    """The exact flow with tolerances fit for the dtype (tight ones in float64)."""
    return FLOW_F64 if dtype == jnp.float64 else FLOW_F32


def flow(policy, reward, true_reward=None, *, t1, method=None, ts=None, targets=(),
         normalized_targets=False):
    """The canonical flow: records (with probabilities) at `N_SAVE` evenly spaced times,
    or at the `ts` given (length `N_SAVE`). `targets` are static (a new tuple compiles)."""
    dt = dtype_of(policy)
    reward = jnp.asarray(reward, dt)
    true_reward = reward if true_reward is None else jnp.asarray(true_reward, dt)
    ts = jnp.linspace(0.0, t1, N_SAVE, dtype=dt) if ts is None else jnp.asarray(ts, dt)
    saveat = gf.SaveAt(ts=ts, probs=True)
    return JSOLVE(
        policy, reward=reward, true_reward=true_reward,
        method=flow_method(dt) if method is None else method, t1=jnp.asarray(t1, dt),
        saveat=saveat, targets=tuple(targets), normalized_targets=normalized_targets,
    )


@functools.partial(jax.jit, static_argnames=("steps", "every", "targets"))
def _sgd(policy, reward, true_reward, lr, reg, steps, every, targets):
    reg = gf.Regularization() if reg is None else reg
    method = gf.GradientAscent(optax.sgd(lr), steps, regularization=reg)
    return gf.solve(
        policy, reward=reward, true_reward=true_reward, method=method,
        saveat=gf.SaveAt(every=every, probs=True), targets=targets,
    )


def sgd(policy, reward, true_reward=None, *, lr, steps, every=1, targets=(), reg=None):
    """The canonical discrete run: `optax.sgd(lr)` (traced `lr`) for `steps` updates,
    recording probabilities every `every` updates; `reg` a `gf.Regularization` or `None`."""
    dt = dtype_of(policy)
    reward = jnp.asarray(reward, dt)
    true_reward = reward if true_reward is None else jnp.asarray(true_reward, dt)
    lr = jnp.asarray(lr, dt)
    return _sgd(policy, reward, true_reward, lr, reg, steps, every, tuple(targets))


@contextlib.contextmanager
def count_compiles():
    """Count XLA compilations inside the block: `with count_compiles() as n: ...; n[0]`."""
    count = [0]

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            count[0] += 1

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield count
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


def softmax(x):
    """A NumPy softmax over the last axis (an oracle independent of JAX)."""
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def reference_probs(p_star: float = 0.10):
    """The reference ("stalling") problem of DESIGN.md: y* gets `p_star`, the mediocre
    output 0.5, the three bad outputs share the rest equally."""
    rest = (0.5 - p_star) / 3
    return (p_star, 0.5, rest, rest, rest)


def random_problem(seed, k, dtype):
    """A tabular policy with random logits and a random reward."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=k) * 1.5
    reward = rng.normal(size=k)
    return gf.TabularSoftmax(jnp.asarray(logits, dtype)), jnp.asarray(reward, dtype)


# ------------------------------------------------------------------ what a study prints

SUMMARY_WIDTH = 100  # the widest line a study may print (gradflow.studies._common.WIDTH)


def printed(fn, *args, **kwargs):
    """Call `fn(*args, **kwargs)` and return `(its result, what it printed on stdout)`
    (module-scoped fixtures cannot use `capsys`)."""
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        result = fn(*args, **kwargs)
    return result, buf.getvalue()


def check_summary(text: str, *expected: str) -> None:
    """A study's printed summary: not empty, every line at most `SUMMARY_WIDTH` columns, and
    each of `expected` in it."""
    assert text.strip(), "the study printed nothing"
    wide = [f"{len(line)}: {line}" for line in text.splitlines() if len(line) > SUMMARY_WIDTH]
    assert not wide, "lines wider than 100 columns:\n" + "\n".join(wide)
    missing = [e for e in expected if e not in text]
    assert not missing, f"missing from the printed summary: {missing}\n{text}"


# ------------------------------------------------- the studies' --quick tables, recorded

QUICK_TABLES = Path(__file__).resolve().parent / "data" / "quick_tables"
"""Where the `--quick` tables of every study are recorded (one JSON file per table)."""

RTOL, ATOL = 1e-6, 1e-12
"""Float tolerances of `check_recorded_tables` (see there)."""

_CELLS = 240  # values kept per table: every row of a small table, a sample of a large one


def _table_columns(path: Path) -> dict[str, list[str]]:
    """The columns of a result table as text: a CSV file, or the Parquet folder of a sweep
    (`summary.parquet/`, its rows in row order; floats written as Python writes them, as
    in the CSVs)."""
    if path.suffix == ".csv":
        import csv

        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            names = list(reader.fieldnames or [])
        return {c: [r[c] for r in rows] for c in names}
    from gradflow import sweep

    table = sweep.read(path.parent)
    order = np.argsort(table["row"], kind="stable")
    return {c: [str(v) for v in np.asarray(col)[order].tolist()] for c, col in table.items()}


def _is_float_column(values: list[str]) -> bool:
    import re

    if all(re.fullmatch(r"-?\d+", v) for v in values):
        return False  # integers: compared exactly
    try:
        [float(v) for v in values]
    except ValueError:
        return False  # strings, booleans: compared exactly
    return True


def _digest(values) -> str:
    import hashlib

    return hashlib.sha256("\x1f".join(values).encode()).hexdigest()[:24]


def record_tables(out: Path) -> dict[str, dict]:
    """The record of every result table (`*.csv`, `summary.parquet/`) of the study folder
    `out`: `{file name: record}` (see `check_recorded_tables` for what a record holds)."""
    out = Path(out)
    paths = sorted(out.glob("*.csv")) + ([out / "summary.parquet"] if (out / "summary.parquet").is_dir() else [])
    records = {}
    for path in paths:
        cols = _table_columns(path)
        n = len(next(iter(cols.values()))) if cols else 0
        step = max(1, -(-n * len(cols) // _CELLS))  # ceil: rows kept x columns <= _CELLS
        sample = sorted(set(range(0, n, step)) | ({n - 1} if n else set()))
        rec: dict = {"rows": n, "columns": list(cols), "sample": sample, "exact": {}, "floats": {}}
        for name, values in cols.items():
            if _is_float_column(values):
                x = np.array([float(v) for v in values])
                finite = np.isfinite(x)
                rec["floats"][name] = {
                    "sample": [values[i] for i in sample],
                    "nonfinite": _digest([v if not f else "" for v, f in zip(values, finite, strict=True)]),
                    "sum": repr(float(np.sum(x[finite]))), "abs_sum": repr(float(np.sum(np.abs(x[finite])))),
                }
            else:
                rec["exact"][name] = values if n * len(cols) <= _CELLS else _digest(values)
        records[path.name] = rec
    return records


def _environment() -> dict[str, str]:
    """What the recorded numbers depend on besides gradflow: the numerical libraries and
    the CPU architecture (XLA's generated code, hence the last bits, follow them)."""
    import platform

    import jaxlib
    import scipy

    return {"jax": jax.__version__, "jaxlib": jaxlib.__version__, "numpy": np.__version__,
            "scipy": scipy.__version__, "machine": platform.machine()}


def write_recorded_tables(out: Path, study: str, note: str = "") -> None:
    """Record the tables of the study folder `out` under `QUICK_TABLES/<study>/`, and the
    environment they were computed in (`QUICK_TABLES/environment.json`, with `note`)."""
    import json

    folder = QUICK_TABLES / study
    folder.mkdir(parents=True, exist_ok=True)
    for name, rec in record_tables(out).items():
        (folder / f"{name}.json").write_text(json.dumps(rec, indent=1) + "\n")
    env = {**_environment(), **({"note": note} if note else {})}
    (QUICK_TABLES / "environment.json").write_text(json.dumps(env, indent=1) + "\n")


def check_recorded_tables(out: Path, study: str) -> None:
    """The result tables of the study folder `out` equal those recorded for `study` (from
    a `--quick` run at the commit before the studies became modules, under this suite's
    XLA flags).

    Per table: the same file names, columns (in order) and number of rows, exactly.
    Integer, string and boolean columns: equal exactly (every value, or a SHA-256 digest of
    the column for a large table). Float columns: the same positions of `nan` / `inf`
    (exactly); on the recorded rows (all of a small table, an evenly spaced sample of at
    most 240 cells of a large one) every value within `rtol = 1e-6` (`atol = 1e-12` for
    values at zero); over all rows, the sum within `1e-6` of the sum of absolute values.

    The recording holds to these tolerances for the versions of jax, jaxlib, NumPy and
    SciPy and the CPU architecture it was made with (`QUICK_TABLES/environment.json`): a
    different XLA generates different code, whose last bits differ (an XLA optimisation
    level alone moves a stall level by 0.6%). Elsewhere the check is skipped, saying why;
    re-record there with `write_recorded_tables` from a run of the commit before the move.
    """
    import json

    import pytest

    recorded_env = json.loads((QUICK_TABLES / "environment.json").read_text())
    here = _environment()
    if any(recorded_env.get(k) != v for k, v in here.items()):
        pytest.skip(f"the --quick tables were recorded with {recorded_env}; this run has {here}")
    folder = QUICK_TABLES / study
    recorded = {p.name[: -len(".json")]: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))}
    assert recorded, f"nothing recorded for {study} in {folder}"
    now = record_tables(out)
    assert sorted(now) == sorted(recorded), f"{study}: tables {sorted(now)}, recorded {sorted(recorded)}"
    problems = []
    for name, rec in recorded.items():
        new = now[name]
        if (new["columns"], new["rows"]) != (rec["columns"], rec["rows"]):
            problems.append(f"{name}: columns/rows {new['columns']} x {new['rows']}, recorded {rec['columns']} "
                            f"x {rec['rows']}")
            continue
        for col, want in rec["exact"].items():
            if new["exact"].get(col) != want:
                problems.append(f"{name}: column {col} differs: {new['exact'].get(col)} != {want}")
        for col, want in rec["floats"].items():
            got = new["floats"].get(col)
            if got is None:
                problems.append(f"{name}: column {col} is no longer numeric")
                continue
            if got["nonfinite"] != want["nonfinite"]:
                problems.append(f"{name}: column {col}: nan/inf at other rows")
            a = np.array([float(v) for v in got["sample"]])
            b = np.array([float(v) for v in want["sample"]])
            if not np.allclose(a, b, rtol=RTOL, atol=ATOL, equal_nan=True):
                bad = np.flatnonzero(~np.isclose(a, b, rtol=RTOL, atol=ATOL, equal_nan=True))
                problems.append(f"{name}: column {col}, rows {[rec['sample'][i] for i in bad[:5]]}: "
                                f"{a[bad[:5]].tolist()} != recorded {b[bad[:5]].tolist()}")
            s, s0, scale = float(got["sum"]), float(want["sum"]), float(want["abs_sum"])
            if abs(s - s0) > RTOL * scale + ATOL:
                problems.append(f"{name}: column {col}: sum {s!r} != recorded {s0!r}")
    assert not problems, f"{study}: the --quick tables differ from those recorded:\n" + "\n".join(problems)
