"""The `partial-credit` study: when should partially correct outputs be rewarded?

Over a grid of initial policies (success probability on a log scale, probability of each
partial satisfaction pattern), the time to success under partial credit and under binary
credit, for the exact gradient flow and for group-based estimators (RLOO, GRPO), with a
tabular and a log-linear policy (see `gradflow.design`). Every method is one `jax.jit`
of one `jax.vmap` over the whole grid (both parameterisations and both schemes; for the
sampled methods also over the seeds).

The tabular rows are run as the log-linear model with `mix = 0`, which *is* the tabular
model (its constraint features are zero; tested), so that both parameterisations share
one compiled batch.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from .._engine.names import GROUP_NAMES, METHODS, make_method
from .._engine.solve import SaveAt, Solution, solve
from .._engine.status import OK_CODE, status_code
from .._util import progress as _progress
from .._util.results import save_figure
from ..design import (
    ConstraintSatisfaction,
    loglinear_theta,
    no_signal_probability,
    no_update,
    time_ratio,
)
from ..policies import LogLinear
from ._base import (
    StudyConfig,
    all_of,
    distinct,
    increasing,
    key,
    nonempty,
    one_of,
    positive,
    probability,
)
from ._common import list_files, say, table, write_csv

NAME = "partial-credit"
SUMMARY = ("reward design: partial vs binary credit (phase diagram over initial success and partial-pattern "
           "probability; flow, RLOO, GRPO; tabular and log-linear)")

PARAMETERISATIONS = ("tabular", "log-linear")
PHASE_COLUMNS = ("parameterisation", "method", "p_success", "p_partial", "target", "time_binary",
                 "time_partial", "ratio")


def _mix_check(x) -> str | None:
    return None if 0 <= x < 1 else "a number in [0, 1) (1 cannot fit every initial policy exactly)"


def _samples_check(x) -> str | None:
    return None if x >= 2 else "at least 2 (a group)"


_grid = all_of(nonempty, probability, increasing)
_cells = all_of(nonempty, probability)


@dataclass(frozen=True, kw_only=True)
class Problem:
    num_constraints: int = key(positive)
    outputs_per_pattern: int = key(positive)
    partial_weights: tuple[float, ...] = key(all_of(nonempty, positive))
    mix: float = key(_mix_check)


@dataclass(frozen=True, kw_only=True)
class Grid:
    p_success: tuple[float, ...] = key(_grid)
    p_partial: tuple[float, ...] = key(_grid)


@dataclass(frozen=True, kw_only=True)
class Flow:
    t1: float = key(positive)
    rtol: float = key(positive)
    atol: float = key(positive)
    max_steps: int = key(positive)
    saves: int = key(positive)


@dataclass(frozen=True, kw_only=True)
class Sampled:
    names: tuple[str, ...] = key(all_of(one_of(*GROUP_NAMES), distinct))
    samples: int = key(_samples_check)
    learning_rate: float = key(positive)
    steps: int = key(positive)
    seeds: int = key(positive)
    seed: int = key(default=0)


@dataclass(frozen=True, kw_only=True)
class Analysis:
    targets: tuple[float, ...] = key(_grid)


@dataclass(frozen=True, kw_only=True)
class Trajectories:
    """The grid cells whose flow trajectories are drawn."""

    p_success: tuple[float, ...] = key(_cells)
    p_partial: tuple[float, ...] = key(_cells)


def _on_grid(name: str, x: float, grid) -> int:
    for i, g in enumerate(grid):
        if abs(g - x) <= 1e-9 * max(abs(g), 1e-300):
            return i
    raise ValueError(f"config key `{name}`: {x:g} is not on the grid {list(grid)}.")


@dataclass(frozen=True, kw_only=True)
class Config(StudyConfig):
    problem: Problem
    grid: Grid
    flow: Flow
    sampled: Sampled
    analysis: Analysis
    trajectories: Trajectories

    def __post_init__(self):
        m = self.problem.num_constraints
        if m < 2:
            raise ValueError("config key `problem.num_constraints`: expected at least 2 (with one constraint partial "
                             "credit is binary credit); got 1.")
        if m > 6:
            raise ValueError(f"config key `problem.num_constraints`: expected at most 6 for this study; got {m}.")
        if len(self.problem.partial_weights) != m:
            raise ValueError(f"config key `problem.partial_weights`: expected {m} weights (one per constraint); got "
                             f"{list(self.problem.partial_weights)}.")
        ps, pp = self.name("trajectories.p_success"), self.name("trajectories.p_partial")
        tr = self.trajectories
        if len(tr.p_success) != len(tr.p_partial):
            raise ValueError(f"config keys `{ps}` and `{pp}` must have the same length.")
        cells = [(_on_grid(ps, a, self.grid.p_success), _on_grid(pp, b, self.grid.p_partial))
                 for a, b in zip(tr.p_success, tr.p_partial, strict=True)]
        valid = self.valid()
        for i, j in cells:
            if not valid[i, j]:
                raise ValueError(f"config key `{pp}`: the cell ({self.grid.p_success[i]:g}, "
                                 f"{self.grid.p_partial[j]:g}) is invalid.")
        if not valid.any():
            raise ValueError("config: no grid cell has p_success + (2^m - 2) p_partial < 1.")

    def constraint_problem(self) -> ConstraintSatisfaction:
        """The model of `gradflow.design` that `[problem]` describes."""
        return ConstraintSatisfaction(self.problem.num_constraints, self.problem.outputs_per_pattern)

    def valid(self) -> np.ndarray:
        """`(p_success, p_partial)` grid: whether the cell is an initial policy
        (`p_success + (2^m - 2) p_partial < 1`)."""
        n_part = len(self.constraint_problem().partial_patterns)
        return np.array([[a + n_part * b < 1 for b in self.grid.p_partial] for a in self.grid.p_success])

    def trajectory_cells(self) -> list[tuple[int, int]]:
        """The `(i, j)` grid indices of the cells whose trajectories are drawn."""
        return [(_on_grid("", a, self.grid.p_success), _on_grid("", b, self.grid.p_partial))
                for a, b in zip(self.trajectories.p_success, self.trajectories.p_partial, strict=True)]


@dataclass(frozen=True)
class Tables:
    """`rows`: the phase table, one row per parameterisation x method x cell x target
    (`phase.csv`, columns `PHASE_COLUMNS`); `sampled_rows`: per sampled method, scheme and
    cell, the seeds' median time, reach and how often binary credit made no update
    (`sampled.csv`); `grids`: the ratio grid (p_success x p_partial, `nan` where invalid)
    of each `(method, parameterisation, target)`; `no_update`: the fraction of binary-credit
    seeds without any update, per `(method, parameterisation)`; `valid`: the valid cells;
    `cells`: the valid cells in batch order; `flow`: the batched flow solutions (for the
    trajectories figure); `failed`: failed runs per method; `timings`: seconds per method
    (compilation included); `seconds`: the whole computation's wall time."""

    rows: list[dict]
    sampled_rows: list[dict]
    grids: dict[tuple, np.ndarray]
    no_update: dict[tuple, np.ndarray]
    valid: np.ndarray
    cells: list[tuple[int, int]]
    flow: Solution
    failed: dict[str, int]
    timings: dict[str, float]
    seconds: float


def _case_index(pi: int, s: int, c: int, n_cells: int) -> int:
    """Where (parameterisation `pi`, scheme `s`, cell `c`) sits in the flat batch."""
    return (pi * 2 + s) * n_cells + c


def compute(config: Config) -> Tables:
    wall_start = time.perf_counter()
    pc, fc, sc = config.problem, config.flow, config.sampled
    m = pc.num_constraints
    weights = np.asarray(pc.partial_weights)
    problem = config.constraint_problem()
    equal = bool(np.all(weights == weights[0]))
    partial_reward = problem.reward("partial") if equal else problem.reward("weighted", weights=weights)
    binary_reward, true_reward = problem.reward("binary"), problem.true_reward()
    grid_ps, grid_pp = np.asarray(config.grid.p_success), np.asarray(config.grid.p_partial)
    names, steps, seeds = sc.names, sc.steps, sc.seeds
    targets = tuple(config.analysis.targets)
    valid = config.valid()
    cells = [(i, j) for i in range(len(grid_ps)) for j in range(len(grid_pp)) if valid[i, j]]
    mix = pc.mix

    # One flat batch: parameterisation x scheme x cell.
    cases = [(pi, s, c) for pi in range(2) for s in range(2) for c in range(len(cells))]
    logp = np.stack([np.log(np.asarray(problem.probs(grid_ps[i], grid_pp[j]))) for i, j in cells])
    LP = jnp.asarray(np.stack([logp[c] for _, _, c in cases]))
    MIX = jnp.asarray([(0.0, mix)[pi] for pi, _, _ in cases])
    R = jnp.stack([(binary_reward, partial_reward)[s] for _, s, _ in cases])
    n_cases = len(cases)

    def policy_of(lp, mx):
        return LogLinear(problem.features(mx), loglinear_theta(lp, mx, m))

    # ---------------------------------------------------------------- exact flow
    t1 = fc.t1
    ts = jnp.concatenate([jnp.zeros(1), jnp.minimum(jnp.geomspace(t1 * 1e-8, t1, fc.saves), t1)])
    flow = make_method("flow", rtol=fc.rtol, atol=fc.atol, max_steps=fc.max_steps)

    @jax.jit
    def run_flow(lp, mx, r):
        def one(lp, mx, r):
            return solve(policy_of(lp, mx), reward=r, true_reward=true_reward, method=flow, t1=t1,
                         saveat=SaveAt(ts=ts, probs=True), targets=targets)

        return jax.vmap(one)(lp, mx, r)

    timings = {}
    start = time.perf_counter()
    with _progress.phase(f"partial-credit: gradient flow, {n_cases} runs (compilation included)"):
        flow_sols = jax.block_until_ready(run_flow(LP, MIX, R))
    timings["flow"] = time.perf_counter() - start
    times = {"flow": np.asarray(flow_sols.target_times, dtype=float)[:, None, :]}  # (cases, 1, targets)
    status = {"flow": np.asarray(status_code(flow_sols.status))[:, None]}
    stuck: dict[str, np.ndarray] = {"flow": np.zeros((n_cases, 1), bool)}

    # ------------------------------------------------------------ sampled methods
    keys = jax.random.split(jax.random.key(sc.seed), seeds)
    for name in names:
        method = make_method(name, learning_rate=sc.learning_rate, steps=steps, samples=sc.samples)

        @jax.jit
        def run_sampled(lp, mx, r, keys, method=method):
            def one(lp, mx, r, key):
                policy = policy_of(lp, mx)
                sol = solve(policy, reward=r, true_reward=true_reward, method=method, key=key,
                            saveat=SaveAt(every=steps), targets=targets)
                return sol.target_times, status_code(sol.status), no_update(sol, policy)

            return jax.vmap(lambda a, b, c: jax.vmap(lambda k: one(a, b, c, k))(keys))(lp, mx, r)

        start = time.perf_counter()
        with _progress.phase(f"partial-credit: {METHODS[name].label}, {n_cases} x {seeds} seeds "
                             "(compilation included)"):
            tt, st, nu = jax.block_until_ready(run_sampled(LP, MIX, R, keys))
        timings[name] = time.perf_counter() - start
        times[name], status[name], stuck[name] = np.asarray(tt, dtype=float), np.asarray(st), np.asarray(nu)

    # ---------------------------------------------------------------- summaries
    methods = ["flow", *names]
    ok_all = {k: s == OK_CODE for k, s in status.items()}
    # median over the seeds that ran to the end ("inverted_cdf": an actual seed's time,
    # never an interpolation between a finite time and inf); a failed case is nan.
    median = {}
    for k in methods:
        t = np.where(ok_all[k][..., None], times[k], np.nan)
        med = np.full((n_cases, len(targets)), np.nan)
        for c in range(n_cases):
            good = ok_all[k][c]
            if good.any():
                med[c] = np.quantile(t[c][good], 0.5, axis=0, method="inverted_cdf")
        median[k] = med

    def case_index(pi, s, c):
        return _case_index(pi, s, c, len(cells))

    rows, sampled_rows = [], []
    grids = {}  # (method, param, target) -> ratio grid (p_success x p_partial), nan where invalid
    nosig = {}  # (method, param) -> fraction of binary seeds with no update (grid)
    for k in methods:
        for pi, pname in enumerate(PARAMETERISATIONS):
            ns = np.full(valid.shape, np.nan)
            for ti, tgt in enumerate(targets):
                g = np.full(valid.shape, np.nan)
                for c, (i, j) in enumerate(cells):
                    tb, tp = median[k][case_index(pi, 0, c), ti], median[k][case_index(pi, 1, c), ti]
                    ratio = float(time_ratio(tp, tb))
                    g[i, j] = ratio
                    rows.append({"parameterisation": pname, "method": k, "p_success": float(grid_ps[i]),
                                 "p_partial": float(grid_pp[j]), "target": tgt, "time_binary": float(tb),
                                 "time_partial": float(tp), "ratio": ratio})
                    if k != "flow":
                        for s, sname in enumerate(("binary", "partial")):
                            ci = case_index(pi, s, c)
                            good = ok_all[k][ci]
                            reached = np.isfinite(times[k][ci, :, ti])[good]
                            sampled_rows.append({
                                "parameterisation": pname, "method": k, "p_success": float(grid_ps[i]),
                                "p_partial": float(grid_pp[j]), "scheme": sname, "target": tgt,
                                "median_steps": float(median[k][ci, ti]),
                                "reached": float(reached.mean()) if reached.size else math.nan,
                                "no_update": float(stuck[k][ci].mean()),
                                "no_update_closed_form": no_signal_probability(grid_ps[i], sc.samples, steps)
                                if sname == "binary" else math.nan,
                                "seeds": int(good.sum()), "failed": int((~good).sum()),
                            })
                        ns[i, j] = float(stuck[k][case_index(pi, 0, c)].mean())
                grids[(k, pname, tgt)] = g
            nosig[(k, pname)] = ns
    failed = {k: int((~ok_all[k]).sum()) for k in methods}
    return Tables(rows, sampled_rows, grids, nosig, valid, cells, flow_sols, failed, timings,
                  time.perf_counter() - wall_start)


def regime_lines(tables: Tables, config: Config) -> list[str]:
    """For every method, parameterisation and target, where each regime occurs (partial
    credit faster, slower, about equal; the lines the summary prints)."""
    grid_ps, grid_pp = np.asarray(config.grid.p_success), np.asarray(config.grid.p_partial)
    return [_regime_line(k, pname, tgt, tables.grids[(k, pname, tgt)], tables.valid, grid_ps, grid_pp)
            for k in ("flow", *config.sampled.names) for pname in PARAMETERISATIONS
            for tgt in config.analysis.targets]


def report(tables: Tables, config: Config, out: Path) -> list[Path]:
    report_start = time.perf_counter()
    pc, sc = config.problem, config.sampled
    m, names, steps, seeds, mix = pc.num_constraints, sc.names, sc.steps, sc.seeds, pc.mix
    problem = config.constraint_problem()
    weights = np.asarray(pc.partial_weights)
    equal = bool(np.all(weights == weights[0]))
    scheme_text = "partial credit (fraction of constraints satisfied)" if equal else (
        f"weighted partial credit (weights {weights.tolist()})")
    grid_ps, grid_pp = np.asarray(config.grid.p_success), np.asarray(config.grid.p_partial)
    targets = tuple(config.analysis.targets)
    grids, nosig, valid = tables.grids, tables.no_update, tables.valid
    methods = ["flow", *names]

    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "phase.csv", tables.rows)
    if tables.sampled_rows:
        write_csv(out / "sampled.csv", tables.sampled_rows)

    unit = {"flow": "flow time", **{n: "steps" for n in names}}
    say(f"Partial credit vs binary credit: {m} constraints, {problem.num_patterns} satisfaction patterns "
        f"x {pc.outputs_per_pattern} outputs each ({problem.num_outputs} outputs); ground truth = all "
        f"constraints satisfied; partial scheme: {scheme_text}. Tabular policy and log-linear policy "
        f"(mix = {mix:g}). Exact flow to t = {config.flow.t1:g}; "
        + ", ".join(METHODS[n].label for n in names)
        + f" with {sc.samples} samples per prompt, SGD lr {sc.learning_rate:g}, {steps} steps, "
        f"median of {seeds} seeds{' (quick)' if config.quick else ''}.")
    say("Cells: ratio = time_partial / time_binary to success probability "
        f"{targets[-1]:g} (median over seeds for the sampled methods); < 1: partial credit faster. P: only "
        "partial credit gets there, B: only binary, -: neither; *: in some seeds binary credit made no update "
        "at all (no group ever sampled a success).")
    tgt = targets[-1]
    for k in methods:
        for pname in PARAMETERISATIONS:
            g = grids[(k, pname, tgt)]
            shown = []
            for i, a in enumerate(grid_ps):
                row = {"p_success": f"{a:g}"}
                for j in range(len(grid_pp)):
                    text = _cell_text(g[i, j]) if valid[i, j] else ""
                    if valid[i, j] and k != "flow" and nosig[(k, pname)][i, j] > 0:
                        text += "*"
                    row[f"c{j}"] = text
                shown.append(row)
            say(f"\n{_label(k)}, {pname} (time in {unit[k]}): ratio by p_success (rows) and p_partial "
                "(columns)")
            print(table(shown, [("p_success", "p_success")] + [(f"c{j}", f"{b:g}") for j, b in enumerate(grid_pp)]))

    print("\nWhere each regime occurs:")
    for line in regime_lines(tables, config):
        say(line)
    for k in names:
        same = np.array_equal(nosig[(k, "tabular")], nosig[(k, "log-linear")], equal_nan=True)
        for pname in (("both parameterisations",) if same else PARAMETERISATIONS):
            ns = nosig[(k, "tabular" if same else pname)]
            where = [(grid_ps[i], float(np.nanmax(ns[i]))) for i in range(len(grid_ps)) if np.nanmax(ns[i]) > 0]
            label = f"{_label(k)}, {pname}, binary credit"
            if where:
                parts = ", ".join(
                    f"{frac:.0%} of seeds at p_success = {a:g} (exact probability (1-p)^(k*steps) = "
                    f"{no_signal_probability(a, sc.samples, steps):.0%})" for a, frac in where)
                say(f"  {label}: no update at all (no group ever sampled a success, so the time is reported "
                    f"as never) in {parts}.")
            else:
                say(f"  {label}: every seed sampled a success at least once.")
    if any(tables.failed.values()):
        say(f"  Failed runs (excluded; nan): {tables.failed}.")

    _save_figure_data(out, tables, config, problem)
    with _progress.phase("partial-credit: figures"):
        figures = plot(out)
    elapsed = tables.seconds + time.perf_counter() - report_start
    n_cases = 4 * len(tables.cells)
    runs = n_cases + sum(n_cases * seeds for _ in names)
    say("\nTimings (one jit of one vmap over the whole grid per method; compilation included): "
        + ", ".join(f"{_label(k)} {tables.timings[k]:.1f} s" for k in methods)
        + f"; {runs} runs in all; wall time {elapsed:.1f} s.")
    list_files(out, [out / "phase.csv", *([out / "sampled.csv"] if tables.sampled_rows else []), *figures])
    return figures


def _label(name: str) -> str:
    return METHODS[name].label


def _cell_text(ratio: float) -> str:
    if math.isnan(ratio):
        return "-"
    if ratio == 0:
        return "P"
    if math.isinf(ratio):
        return "B"
    return f"{ratio:.2g}"


def _describe(values, where) -> str:
    """`values[where]` as a compact range (or a list when not contiguous)."""
    idx = np.flatnonzero(where)
    if idx.size == 0:
        return "nowhere"
    if idx[-1] - idx[0] + 1 == idx.size:
        lo, hi = values[idx[0]], values[idx[-1]]
        return f"{lo:g}" if lo == hi else f"{lo:g}-{hi:g}"
    return ", ".join(f"{values[i]:g}" for i in idx)


EQUAL_BAND = 0.05  # ratios within 5% of 1 count as "about equal" in the regime summaries


def _regime_line(k, pname, tgt, g, valid, grid_ps, grid_pp) -> str:
    v = g[valid]
    faster = v < 1 - EQUAL_BAND  # includes 0: only partial credit gets there
    slower = v > 1 + EQUAL_BAND  # includes inf: only binary credit gets there
    finite = np.where(np.isfinite(g) & (g > 0) & valid, g, np.nan)
    notes = [f"{int((v == 0).sum())} where only partial credit gets there"] if (v == 0).any() else []
    if np.any(finite < 1 - EQUAL_BAND):
        i, j = np.unravel_index(np.nanargmin(finite), g.shape)
        notes.append(f"ratio down to {g[i, j]:.3g} at p_success={grid_ps[i]:g}, p_partial={grid_pp[j]:g}")
    head = (f"  {_label(k)}, {pname}, success {tgt:g}: partial credit faster in {int(faster.sum())} "
            f"of {v.size} cells" + (f" ({'; '.join(notes)})" if notes else ""))
    notes = [f"{int(np.isinf(v).sum())} where only binary credit gets there"] if np.isinf(v).any() else []
    if np.any(finite > 1 + EQUAL_BAND):
        i, j = np.unravel_index(np.nanargmax(finite), g.shape)
        notes.append(f"ratio up to {g[i, j]:.3g} at p_success={grid_ps[i]:g}, p_partial={grid_pp[j]:g}")
    head += f", slower in {int(slower.sum())}" + (f" ({'; '.join(notes)})" if notes else "")
    head += (f", within {EQUAL_BAND:.0%} of equal in {int((np.abs(v - 1) <= EQUAL_BAND).sum())}, neither "
             f"gets there in {int(np.isnan(v).sum())}.")
    better = (g < 1 - EQUAL_BAND) & valid
    parts = [f"{b:g}: {_describe(grid_ps, better[:, j])}" for j, b in enumerate(grid_pp)]
    return head + "\n    partial credit faster at p_success (by p_partial): " + "; ".join(parts)


def _edges(values: np.ndarray) -> np.ndarray:
    """Cell edges on a log scale around the grid values."""
    lv = np.log10(values)
    if lv.size == 1:
        return 10 ** np.array([lv[0] - 0.5, lv[0] + 0.5])
    mid = (lv[1:] + lv[:-1]) / 2
    return 10 ** np.concatenate([[lv[0] - (mid[0] - lv[0])], mid, [lv[-1] + (lv[-1] - mid[-1])]])


def _save_figure_data(out: Path, tables: Tables, config: Config, problem: ConstraintSatisfaction) -> None:
    """Save what the figures show (`figures.npz`): the ratio grids and, for the representative
    cells, the flow's probability of success and of the partial patterns over time."""
    from ..plotting import save_figure_data

    methods, targets = ["flow", *config.sampled.names], tuple(config.analysis.targets)
    grids, nosig, flow_sols, cells = tables.grids, tables.no_update, tables.flow, tables.cells
    ts_all = np.asarray(flow_sols.ts[0], dtype=float)
    succ, part_idx = problem.success_pattern, list(problem.partial_patterns)
    trajectories = {}
    for r, (i, j) in enumerate(config.trajectory_cells()):
        c = cells.index((i, j))
        entry = {"cell": [i, j]}
        for col, pname in enumerate(PARAMETERISATIONS):
            curves = {}
            for s, sname in enumerate(("binary", "partial")):
                ci = _case_index(col, s, c, len(cells))
                mass = np.asarray(problem.pattern_mass(flow_sols.probs[ci, :, 0, :]))
                curves[sname] = {"success": mass[:, succ], "partial": mass[:, part_idx].sum(axis=1),
                                 "hit": float(flow_sols.target_times[ci, -1])}
            entry[pname] = curves
        trajectories[f"{r}"] = entry
    save_figure_data(out, {
        "study": "partial-credit", "methods": list(methods), "targets": list(targets), "mix": config.problem.mix,
        "p_success": np.asarray(config.grid.p_success), "p_partial": np.asarray(config.grid.p_partial),
        "valid": np.asarray(tables.valid),
        "grids": {k: {p: {f"{ti}": grids[(k, p, t)] for ti, t in enumerate(targets)} for p in PARAMETERISATIONS}
                  for k in methods},
        "no_update": {k: {p: nosig[(k, p)] for p in PARAMETERISATIONS} for k in methods},
        "ts": ts_all, "trajectories": trajectories,
    })


def _ratio_boundary(ax, g: np.ndarray, valid: np.ndarray, x_edges: np.ndarray, y_edges: np.ndarray) -> bool:
    """Draw the ratio-1 boundary along cell edges: between neighbouring cells where partial
    credit is faster (ratio < 1, or only partial credit gets there) on one side and not on
    the other (cells where neither gets there, or off the valid grid, have no side).
    Returns whether any edge was drawn."""
    side = np.where(valid & ~np.isnan(g), np.where(g < 1, 1.0, 0.0), np.nan)
    segments = []
    for i in range(side.shape[0]):
        for j in range(side.shape[1]):
            if np.isnan(side[i, j]):
                continue
            if i + 1 < side.shape[0] and not np.isnan(side[i + 1, j]) and side[i + 1, j] != side[i, j]:
                segments.append(([x_edges[j], x_edges[j + 1]], [y_edges[i + 1]] * 2))
            if j + 1 < side.shape[1] and not np.isnan(side[i, j + 1]) and side[i, j + 1] != side[i, j]:
                segments.append(([x_edges[j + 1]] * 2, [y_edges[i], y_edges[i + 1]]))
    for xs, ys in segments:
        ax.plot(xs, ys, color="black", lw=2.2, solid_capstyle="projecting")
    return bool(segments)


def plot(out: Path) -> list[Path]:
    """Draw the partial-credit figures from the data saved in `out`.

    **Arguments:**

    - `out`: the study's result folder (with `figures.npz`).

    **Returns:** the paths of the figures written (`phase_<target>.png` per target,
    `trajectories.png`).
    """
    import matplotlib.pyplot as plt
    from matplotlib.colors import TwoSlopeNorm
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    from ..plotting import load_figure_data

    out = Path(out)
    d = load_figure_data(out)
    methods, targets, mix = list(d["methods"]), [float(t) for t in d["targets"]], d["mix"]
    grid_ps, grid_pp, valid = np.atleast_1d(d["p_success"]), np.atleast_1d(d["p_partial"]), d["valid"]
    cap = 2.0  # colour range: ratio in [1/100, 100]
    paths = []
    x_edges, y_edges = _edges(grid_pp), _edges(grid_ps)
    for ti, tgt in enumerate(targets):
        fig, axes = plt.subplots(len(methods), 2, figsize=(13, 3.9 * len(methods) + 1.6), layout="constrained",
                                 squeeze=False)
        mesh = None
        for r, k in enumerate(methods):
            for c, pname in enumerate(PARAMETERISATIONS):
                ax = axes[r, c]
                g = d["grids"][k][pname][f"{ti}"]
                with np.errstate(divide="ignore"):
                    z = np.clip(np.log10(g), -cap, cap)
                z = np.ma.masked_invalid(np.where(valid, z, np.nan))
                mesh = ax.pcolormesh(x_edges, y_edges, z, cmap="coolwarm", norm=TwoSlopeNorm(0.0, -cap, cap),
                                     shading="flat")
                ax.set_facecolor("white")  # nan (neither gets there) and invalid cells: hatched white
                ax.patch.set_hatch("///")
                ax.patch.set_edgecolor("0.75")
                ax.set(xscale="log", yscale="log", xlabel="initial probability of each partial pattern",
                       ylabel="initial success probability",
                       title=f"{_label(k)}, {pname}{f' (mix {mix:g})' if pname == 'log-linear' else ''}")
                _ratio_boundary(ax, g, valid, x_edges, y_edges)
                for i, a in enumerate(grid_ps):
                    for j, b in enumerate(grid_pp):
                        if valid[i, j]:
                            ax.text(b, a, _cell_text(g[i, j]), ha="center", va="center", fontsize=8)
                    frac = np.nanmax(d["no_update"][k][pname][i]) if k != "flow" else 0.0
                    if frac > 0:  # depends on p_success only: one label per row, right of the panel
                        ax.annotate(f"∅ {frac:.0%}", (1.0, a), xycoords=("axes fraction", "data"),
                                    xytext=(3, 0), textcoords="offset points", va="center", fontsize=8,
                                    color="C2")
        assert mesh is not None
        cb = fig.colorbar(mesh, ax=axes, shrink=0.5, label="log10(time_partial / time_binary)")
        cb.set_ticks([-2, -1, 0, 1, 2])
        handles = [Line2D([], [], color="black", lw=2.2, label="ratio 1 (between cells)"),
                   Patch(facecolor="white", hatch="///", edgecolor="0.75", label="-: neither gets there"),
                   Line2D([], [], ls="none", marker="$P$", color="black", label="P: only partial credit gets there"),
                   Line2D([], [], ls="none", marker="$B$", color="black", label="B: only binary credit gets there")]
        if any(k != "flow" for k in methods):
            handles.append(Line2D([], [], ls="none", marker="$∅$", color="C2",
                                  label="∅ x%: seeds in which binary credit never updated (no group sampled a success)"))
        fig.legend(handles=handles, loc="outside lower center", ncol=3, fontsize="small")
        fig.suptitle(f"Time to success probability {tgt:g}: partial credit / binary credit\n(cell text: the ratio; "
                     "blue: partial credit faster, red: slower)")
        path = out / f"phase_{tgt:g}.png"
        save_figure(fig, path, dpi=110)
        paths.append(path)

    # Representative trajectories (exact flow), from the grid run.
    traj = d["trajectories"]
    ts_all = d["ts"]
    fig, axes = plt.subplots(len(traj), 2, figsize=(12, 3.6 * len(traj) + 1.4), layout="constrained",
                             squeeze=False)
    colors = {"binary": "C0", "partial": "C3"}
    for r in range(len(traj)):
        entry = traj[f"{r}"]
        i, j = (int(v) for v in entry["cell"])
        for col, pname in enumerate(PARAMETERISATIONS):
            ax = axes[r, col]
            g = d["grids"]["flow"][pname][f"{len(targets) - 1}"][i, j]
            curves = entry[pname]
            hits = [float(curves[s]["hit"]) for s in ("binary", "partial")]
            finite = [h for h in hits if math.isfinite(h) and h > 0]
            t_max = 3 * max(finite) if finite else ts_all[-1]
            keep = (ts_all > 1e-5 * t_max) & (ts_all <= t_max)
            for s, sname in enumerate(("binary", "partial")):
                color = colors[sname]
                ps, pp = curves[sname]["success"], curves[sname]["partial"]
                ax.plot(ts_all[keep], ps[keep], color=color, lw=1.8)
                ax.plot(ts_all[keep], pp[keep], color=color, lw=1.2, ls="--")
                if math.isfinite(hits[s]) and hits[s] > 0:
                    ax.axvline(hits[s], color=color, lw=0.9, ls=":")
                stall = (pp > 0.5) & (ps < 0.1) & keep
                if s == 1 and g > 1 and stall.any():  # partial credit hurts: shade its stall
                    idx = np.flatnonzero(stall)
                    ax.axvspan(ts_all[idx[0]], ts_all[idx[-1]], color=color, alpha=0.08)
            ax.set(xscale="log", yscale="log", ylim=(1e-5, 1.5), xlabel="flow time", ylabel="probability",
                   title=f"{pname}: p_success = {grid_ps[i]:g}, p_partial = {grid_pp[j]:g} each "
                         f"(ratio {_cell_text(g)})")
            ax.grid(alpha=0.3)
    handles = [Line2D([], [], color="C0", lw=1.8, label="binary credit"),
               Line2D([], [], color="C3", lw=1.8, label="partial credit"),
               Line2D([], [], color="0.3", lw=1.8, label="p(success)"),
               Line2D([], [], color="0.3", lw=1.2, ls="--", label="p(partial patterns)"),
               Line2D([], [], color="0.3", lw=0.9, ls=":", label=f"time to success {targets[-1]:g}"),
               Patch(color="C3", alpha=0.15, label="stall on partial outputs (partial credit)")]
    fig.legend(handles=handles, loc="outside lower center", ncol=6, fontsize="small")
    fig.suptitle("Exact flow: probability of success and of the partial patterns,\nunder binary and partial credit")
    path = out / "trajectories.png"
    save_figure(fig, path, dpi=110)
    paths.append(path)
    return paths
