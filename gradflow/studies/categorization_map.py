"""The `categorization-map` study, and reward sweeps from a TOML config in general
(`gradflow sweep CONFIG.toml --out DIR` runs any config of this form; the study runs
`experiments/categorization-map.toml`).

A sweep trains one initial policy with one method on every proxy reward of a family
(`gradflow.perturb`), writes one row per proxy incrementally to `DIR/summary.parquet/`
(resumable), and labels each proxy harmful / benign / beneficial against the run trained
on the true reward (`gradflow.categorize`'s rule). The categorisation map is the
`grid_2d` family over two outputs' proxy rewards.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from .. import perturb, sweep
from .._analysis.categorize import LABELS, _predict, classify, proxy_row
from .._engine.names import METHOD_NAMES, make_method
from .._engine.solve import SaveAt
from .._engine.status import OK_CODE, status_name, status_names
from .._util import progress as _progress
from .._util.results import save_figure, write_json
from ..policies import TabularSoftmax
from ._base import (
    StudyConfig,
    all_of,
    at_least,
    key,
    nonempty,
    one_of,
    positive,
    probability,
    to_dict,
)
from ._common import list_files, say

NAME = "categorization-map"
SUMMARY = "stalling problem, 201 x 201 grid over two proxy rewards: harmful / benign / beneficial regions"
COMPUTE_WRITES = True  # compute(config, out) writes the sweep's rows (resumable) under out

FAMILIES = ("grid_2d", "shift_grid", "demote", "gaussian", "with_accuracy", "swaps")


def _unit_interval(x) -> str | None:
    return None if 0 <= x <= 1 else "a value in [0, 1]"


@dataclass(frozen=True, kw_only=True)
class Problem:
    initial_probs: tuple[float, ...] = key(all_of(nonempty, probability))
    true_reward: tuple[float, ...] = key(nonempty)
    output_names: tuple[str, ...] = key(default=())


@dataclass(frozen=True, kw_only=True)
class Method:
    name: str = key(one_of(*METHOD_NAMES))
    learning_rate: float = key(positive, default=0.1)
    steps: int = key(positive, default=50000, quick=5000)
    t1: float = key(positive, default=5000.0, quick=500.0)
    samples: int = key(positive, default=4)
    seed: int = key(default=0)


@dataclass(frozen=True, kw_only=True)
class Proxies:
    family: str = key(one_of(*FAMILIES))
    outputs: tuple[int, ...] = key(default=())
    start: tuple[float, ...] = key(default=())
    stop: tuple[float, ...] = key(default=())
    num: tuple[int, ...] = key(default=())
    value: tuple[float, ...] = key(default=())
    scale: float = key(positive, default=0.1)
    accuracy: float = key(_unit_interval, default=1.0)
    n: int = key(positive, default=1000, quick=64)
    seed: int = key(default=0)


@dataclass(frozen=True, kw_only=True)
class Analysis:
    targets: tuple[float, ...] = key(nonempty)
    tolerance: float = key(positive, default=0.05)
    reward_tolerance: float = key(positive, default=1e-3)


@dataclass(frozen=True, kw_only=True)
class Sweep:
    chunk_size: int = key(positive, default=8192)
    trajectory_points: int = key(at_least(2), default=101)
    trajectory_probs: bool = key(default=False)


_NEEDS = {"grid_2d": (("outputs", "start", "stop", "num"), "grid_2d needs two of each"),
          "shift_grid": (("outputs", "start", "stop", "num"), "shift_grid needs one of each"),
          "demote": (("outputs", "value"), "demote needs an output and its value(s)")}


@dataclass(frozen=True, kw_only=True)
class Config(StudyConfig):
    problem: Problem
    method: Method
    proxies: Proxies
    analysis: Analysis
    sweep: Sweep

    def __post_init__(self):
        prob, pc = self.problem, self.proxies
        probs = np.array(prob.initial_probs)
        k = len(probs)
        if abs(probs.sum() - 1) > 1e-6:
            raise ValueError(f"config key `problem.initial_probs`: expected values summing to 1; got sum {probs.sum()}.")
        if len(prob.true_reward) != k:
            raise ValueError(
                f"config key `problem.true_reward`: expected {k} values (one per output of "
                f"`problem.initial_probs`); got {len(prob.true_reward)}."
            )
        if prob.output_names and len(prob.output_names) != k:
            raise ValueError(f"config key `problem.output_names`: expected {k} names; got {len(prob.output_names)}.")
        if any(not 0 <= o < k for o in pc.outputs):
            raise ValueError(f"config key `{self.name('proxies.outputs')}`: expected output indices in [0, {k}); "
                             f"got {list(pc.outputs)}.")
        keys, why = _NEEDS.get(pc.family, ((), ""))
        for name in keys:
            if getattr(pc, name) == ():
                raise ValueError(f"config: missing key `proxies.{name}` ({why}).")
        if pc.family == "grid_2d" and not (len(pc.outputs) == len(pc.start) == len(pc.stop) == len(pc.num) == 2):
            raise ValueError("config: grid_2d needs `proxies.outputs`, `start`, `stop` and `num` with two entries each.")


@dataclass(frozen=True)
class Tables:
    """What a sweep leaves: `table`, its table (one column per field, the rows done so far;
    the same as `gradflow.sweep.read(out)`); `reference`: the run trained on the true
    reward; `rows`: how many rows are done; `labels`: how many proxies got each label;
    `failed`: failed runs (left out of the counts); `prediction_agreement`: how often the
    instantaneous prediction agrees with the label; `proxies`: the rows of the sweep in
    all; `shard`: the share this call computed (`None`: all); `out`: the folder;
    `seconds`: the time this call took."""

    table: dict[str, np.ndarray]
    reference: dict[str, float | str]
    rows: int
    labels: dict[str, int]
    failed: int
    prediction_agreement: float
    proxies: int
    shard: tuple[int, int] | None
    out: str
    seconds: float

    def summary(self) -> dict:
        """The counts and the reference, without the table (what `gradflow sweep --json`
        prints)."""
        return {"rows": self.rows, "labels": self.labels, "failed": self.failed,
                "prediction_agreement": self.prediction_agreement, "reference": self.reference, "out": self.out}


def build(config: Config):
    """`(policy, true_reward, proxies, method, t1, key, grid)` of a config; `grid` is
    `(values_i, values_j)` for the `grid_2d` family, else `None`."""
    prob, mc, pc = config.problem, config.method, config.proxies
    probs = np.array(prob.initial_probs)
    r_true = jnp.asarray(prob.true_reward)
    policy = TabularSoftmax.from_probs(jnp.asarray(probs))
    method = make_method(mc.name, learning_rate=mc.learning_rate, steps=mc.steps, samples=mc.samples)
    key_ = jax.random.key(mc.seed) if method.needs_key else None

    fam, grid, num = pc.family, None, pc.num
    if fam == "grid_2d":
        grid = tuple(np.linspace(pc.start[i], pc.stop[i], num[i]) for i in range(2))
        proxies = perturb.grid_2d(r_true, tuple(pc.outputs), grid[0], grid[1])
    elif fam == "shift_grid":
        proxies = perturb.shift_grid(r_true, pc.outputs[0], np.linspace(pc.start[0], pc.stop[0], num[0]))
    elif fam == "demote":
        proxies = perturb.demote(r_true, pc.outputs[0], np.asarray(pc.value))
    elif fam == "gaussian":
        proxies = perturb.gaussian(jax.random.key(pc.seed), r_true, pc.scale, pc.n)
    elif fam == "with_accuracy":
        proxies = perturb.with_accuracy(jax.random.key(pc.seed), r_true, pc.accuracy, pc.n)
    else:  # swaps
        proxies = perturb.swaps(r_true)
    return policy, r_true, jnp.asarray(proxies), method, (mc.t1 if method.continuous else None), key_, grid


def trajectory_grid(method, t1, points: int, probs: bool = False) -> tuple[SaveAt, np.ndarray]:
    """What a sweep with trajectories records: `points` evenly spaced flow times on
    `[0, t1]`, or every `steps // (points - 1)` updates (and the last); and those times."""
    if method.continuous:
        times = jnp.linspace(0.0, t1, points, dtype=jnp.result_type(float))
        return SaveAt(ts=times, probs=probs), np.asarray(times)
    every = max(1, method.steps // (points - 1))
    return SaveAt(every=every, probs=probs), np.unique(np.r_[np.arange(0, method.steps + 1, every), method.steps])


def compute(config: Config, out: Path, *, force: bool = False, shard: tuple[int, int] | None = None,
            trajectories: bool = False) -> Tables:
    """Run (or resume) the sweep of `config` into `out`. This computation writes: the
    sweep's rows go to `out/summary.parquet/` as chunks finish, so that an interrupted
    sweep resumes where it stopped.

    Everything is checked before anything is written: the config, the reference run
    (trained on the true reward), and that `out` holds no other sweep (with `force`, its
    rows are deleted instead).

    **Arguments:**

    - `config`: the sweep's config.
    - `out`: the sweep folder.
    - `force`: replace another sweep's rows in `out`.
    - `shard`: `(i, n)`, compute only the `i`-th of `n` shares of the rows (several
      processes may sweep one `out` at once).
    - `trajectories`: also write every run's true and proxy reward (and, with
      `sweep.trajectory_probs`, its probabilities) at `sweep.trajectory_points` times to
      `out/trajectories.zarr`.

    **Returns:** the [`Tables`][gradflow.studies.categorization_map.Tables] of the rows done
    so far.
    """
    policy, r_true, proxies, method, t1, key_, grid = build(config)
    an, sc = config.analysis, config.sweep
    targets = tuple(an.targets)
    row = proxy_row(policy, r_true, method=method, targets=targets, t1=t1, key=key_)
    traj, series_row = None, row
    if trajectories:
        saveat, times = trajectory_grid(method, t1, sc.trajectory_points, sc.trajectory_probs)
        series_row = proxy_row(policy, r_true, method=method, targets=targets, t1=t1, key=key_, record=saveat)
        series = {"true_reward": (), "proxy_reward": (), **({"probs": ("prompt", "output")} if saveat.probs else {})}
        traj = sweep.Trajectories(times, series, input_dims={"reward": ("output",)})

    def with_reward(inputs):
        r = inputs["reward"]
        return {**series_row(r), **{f"reward_{j}": r[j] for j in range(r.shape[-1])}}

    out = Path(out)
    with _progress.phase("reference run: trained on the true reward (compilation included)"):
        # Through the same padded, vmapped path as the sweep's chunks: the same bits per row.
        ref = {k: float(v[0]) for k, v in sweep.run(row, r_true[None], progress=False,
                                                      devices=jax.local_devices()).items() if k != "row"}
    if int(ref["status"]) != OK_CODE:
        raise ValueError(f"the reference run (trained on the true reward) ended with status "
                         f"'{status_name(int(ref['status']))}'.")
    ref["status"] = "ok"
    first = f"time_to_{targets[0]:g}"

    def label(columns):
        lab, ratio = classify(columns[first], ref[first], columns["final_true_reward"], ref["final_true_reward"],
                              columns["status"] != OK_CODE, an.tolerance, an.reward_tolerance)
        pred = _predict(columns["rate"], ref["rate"], an.tolerance)
        # Tables on disk name the status (as the studies' CSVs do).
        return {**columns, "status": status_names(columns["status"]), "time_ratio": ratio, "label": lab,
                "predicted": pred}

    meta = {"config": to_dict(config), "quick": config.quick}
    inputs = {"reward": proxies}
    chunk = sc.chunk_size
    # Claim the folder (refusing another sweep's) before writing the reference beside it.
    sweep.claim(out, inputs, meta, replace=force, trajectories=traj, chunk_size=chunk)
    write_json(out / "reference.json", {"reference": ref, "grid": None if grid is None else [g.tolist() for g in grid]})
    start = time.perf_counter()
    table = sweep.run(with_reward, inputs, out, chunk_size=chunk, meta=meta, post=label, shard=shard,
                      trajectories=traj, progress=_progress.enabled())
    elapsed = time.perf_counter() - start
    n = int(proxies.shape[0])
    if not table:
        return Tables(table, ref, 0, {}, 0, math.nan, n, shard, str(out), elapsed)
    ok = table["status"] == "ok"
    counts = {name: int(np.sum(table["label"][ok] == name)) for name in LABELS}
    agree = float(np.mean(table["predicted"][ok] == table["label"][ok])) if ok.any() else math.nan
    return Tables(table, ref, len(table["row"]), counts, int((~ok).sum()), agree, n, shard, str(out), elapsed)


def print_summary(tables: Tables, config: Config) -> None:
    """Print what a sweep call did: rows done, the reference, the label counts."""
    out, shard = Path(tables.out), tables.shard
    which = "" if shard is None else f"shard {shard[0]}/{shard[1]} finished; "
    say(f"Sweep: {which}{tables.rows} of {tables.proxies} proxies done ({config.proxies.family}), method "
        f"{config.method.name}{' (quick)' if config.quick else ''}; {tables.seconds:.1f} s this call (finished "
        "chunks are not recomputed).")
    if not tables.rows:
        return
    first = f"time_to_{config.analysis.targets[0]:g}"
    ref, counts = tables.reference, tables.labels
    t0 = ref[first]
    say(f"  reference (trained on the true reward): {first.replace('_', ' ')} = "
        f"{'never' if math.isinf(t0) else f'{t0:g}'}, final true reward {ref['final_true_reward']:.4f}")
    total = max(1, tables.rows - tables.failed)
    say("  " + ", ".join(f"{k}: {c} ({c / total:.1%})" for k, c in counts.items())
        + f"; failed runs excluded: {tables.failed}")
    say(f"  the instantaneous prediction (rate at t = 0) agrees with the simulated label for "
        f"{tables.prediction_agreement:.1%}")
    say(f"Per-proxy results in {(out / 'summary.parquet').resolve()}/ (open with gradflow.sweep.read(DIR), "
        "pyarrow.parquet.read_table or pandas.read_parquet).")


def report(tables: Tables, config: Config, out: Path) -> list[Path]:
    print_summary(tables, config)
    with _progress.phase("categorization-map: figures"):
        figures = plot(out)
    list_files(out, ["summary.parquet/", *figures])
    return figures


def plot(out: str | Path, by: str | None = None) -> list[Path]:
    """Figures of a finished (or partial) sweep folder: the categorisation map for a
    `grid_2d` sweep, else label counts and the time-ratio histogram; and, for a sweep
    with trajectories, bands of the true reward over time (`trajectory_bands.png`).

    **Arguments:**

    - `out`: the sweep folder (with `sweep.json`, `reference.json` and `summary.parquet/`).
    - `by`: the column of the sweep's table whose values group the bands (default
      `label`); a column with more than 6 distinct values is cut at its quartiles.

    **Returns:** the paths of the figures written. Rows not yet computed (an interrupted
    sweep) are drawn as "not computed" (hatched) and the title says how many are done.
    """
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    out = Path(out)
    manifest, refpath = out / "sweep.json", out / "reference.json"
    if not manifest.exists() or not refpath.exists():
        raise ValueError(f"{out} is not a sweep folder (no sweep.json / reference.json); run `gradflow sweep` first.")
    man = json.loads(manifest.read_text())
    cfg = man["meta"]["config"]
    info = json.loads(refpath.read_text())
    table = sweep.read(out)
    if not table:
        raise ValueError(f"{out} holds no finished rows yet.")
    n_rows = int(man["rows"])
    n_done = int(sweep.done_rows(out, n_rows).sum())
    done_text = f"{n_done} of {n_rows} proxies done" if n_done < n_rows else f"{n_rows} proxies"
    names = cfg["problem"]["output_names"] or [f"output {j}" for j in range(len(cfg["problem"]["true_reward"]))]
    colors = {"harmful": "#d62728", "benign": "#bbbbbb", "beneficial": "#2ca02c", "failed": "black"}
    hatch = {"facecolor": "white", "hatch": "///", "edgecolor": "0.6"}
    not_computed = Patch(**hatch, label="not computed")
    target = cfg["analysis"]["targets"][0]
    first = f"time_to_{target:g}"
    paths = []
    if info["grid"] is not None:
        gi, gj = (np.asarray(g) for g in info["grid"])
        i, j = cfg["proxies"]["outputs"]
        codes = {"failed": -1, **{k: n for n, k in enumerate(LABELS)}}
        grid = np.full(gi.size * gj.size, np.nan)
        grid[table["row"]] = [codes[x] for x in table["label"]]
        grid = grid.reshape(gi.size, gj.size)
        t = np.full(gi.size * gj.size, np.nan)
        t[table["row"]] = table[first]
        t = t.reshape(gi.size, gj.size)
        never = np.where(np.isinf(t), 1.0, np.nan)  # computed, never reaches the target
        r_true = cfg["problem"]["true_reward"]
        # A zoom on the true reward (the benign region around it can be a few cells wide), in
        # its own panel, only where it magnifies: a window of 9 x 25 cells on a fine grid.
        ci, cj = np.abs(gi - r_true[i]).argmin(), np.abs(gj - r_true[j]).argmin()
        si, sj = slice(max(ci - 4, 0), ci + 5), slice(max(cj - 12, 0), cj + 13)
        zoom = min(gi.size / len(gi[si]), gj.size / len(gj[sj])) >= 3
        panels = 3 if zoom else 2
        fig, axes = plt.subplots(1, panels, figsize=(5.2 * panels + 1, 5.6), layout="constrained",
                                 width_ratios=[1, 1, 0.8][:panels])
        cmap = ListedColormap([colors[k] for k in ("failed", *LABELS)])
        for ax in axes:  # cells without a row yet: hatched
            ax.set_facecolor(hatch["facecolor"])
            ax.patch.set_hatch(hatch["hatch"])
            ax.patch.set_edgecolor(hatch["edgecolor"])
        label_axes = [axes[0], *([axes[2]] if zoom else [])]
        for ax, (rows, cols) in zip(label_axes, [(slice(None), slice(None)), (si, sj)], strict=False):
            ax.pcolormesh(gj[cols], gi[rows], grid[rows, cols], cmap=cmap, vmin=-1.5, vmax=2.5, shading="nearest")
        with np.errstate(divide="ignore", invalid="ignore"):
            logt = np.log10(np.maximum(np.where(np.isfinite(t), t, np.nan), 1))
        im = axes[1].pcolormesh(gj, gi, logt, cmap="viridis", shading="nearest")
        axes[1].pcolormesh(gj, gi, never, cmap=ListedColormap(["0.93"]), shading="nearest")
        fig.colorbar(im, ax=axes[1], label=f"log10(steps to true reward {target:g})")
        t_ref = float(info["reference"][first])  # "inf" (standard JSON) reads back as a float
        for ax in axes:
            ax.plot(r_true[j], r_true[i], marker="*", ms=16 if ax is not axes[-1] or not zoom else 12,
                    color="gold", mec="black", ls="none")
            ax.set_xlabel(f"proxy reward of {names[j]}")
            ax.set_ylabel(f"proxy reward of {names[i]}")
        axes[0].set_title(f"categorisation (time to true reward {target:g},\ntolerance "
                          f"{cfg['analysis']['tolerance']:g})")
        axes[1].set_title(f"time to {target:g} under the proxy\n(true reward: "
                          f"{'never' if not np.isfinite(t_ref) else f'{t_ref:g}'})")
        if zoom:
            axes[2].set_title("zoom on the true reward\n(box in the left panel)")
            y0, y1, x0, x1 = gi[si][0], gi[si][-1], gj[sj][0], gj[sj][-1]
            axes[0].plot([x0, x1, x1, x0, x0], [y0, y0, y1, y1, y0], color="black", lw=0.8)
        handles = [Line2D([], [], marker="*", ms=14, color="gold", mec="black", ls="none", label="the true reward")]
        handles += [Patch(color=colors[k], label=k) for k in LABELS]
        if np.any(table["status"] != "ok"):
            handles.append(Patch(color=colors["failed"], label="failed"))
        handles.append(Patch(color="0.93", label=f"never reaches {target:g} (time panel)"))
        if n_done < n_rows:
            handles.append(not_computed)
        fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize="small")
        fig.suptitle(f"{done_text}, method {cfg['method']['name']}; other outputs keep their true reward")
        paths.append(out / "categorization_map.png")
    else:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), layout="constrained")
        counts = [int(np.sum(table["label"] == k)) for k in LABELS]
        bars = list(LABELS)
        axes[0].bar(LABELS, counts, color=[colors[k] for k in LABELS])
        if n_done < n_rows:
            axes[0].bar(["not computed"], [n_rows - n_done], **hatch)
            bars.append("not computed")
        axes[0].set_ylabel("proxies")
        axes[0].set_xlabel("label")
        axes[0].set_title("categorisation")
        r = np.log10(table["time_ratio"][np.isfinite(table["time_ratio"])])
        axes[1].hist(r, bins=50, color="C0", label=f"{r.size} proxies that reach the target")
        axes[1].axvline(0, color="black", lw=1, label="same time as the true reward")
        axes[1].set_xlabel("log10(time ratio): proxy / true reward")
        axes[1].set_ylabel("proxies")
        axes[1].set_title(f"time to true reward {target:g}: proxy / true reward")
        fig.legend(*axes[1].get_legend_handles_labels(), loc="outside lower center", ncol=2, fontsize="small")
        fig.suptitle(f"{done_text}, method {cfg['method']['name']}")
        paths.append(out / "sweep_summary.png")
    save_figure(fig, paths[0], dpi=120)
    if (out / "trajectories.zarr").is_dir():
        paths.append(_plot_bands(out, table, by or "label", colors, done_text, cfg))
    elif by is not None:
        raise ValueError(f"`--by`: {out} has no trajectories (sweep it with --trajectories).")
    return paths


def _groups(table: dict, by: str) -> list[tuple[str, np.ndarray]]:
    """`(name, rows)` for each group of the table's rows by column `by`."""
    if by not in table:
        raise ValueError(f"`--by`: the sweep's table has no column {by!r}; its columns: {', '.join(table)}.")
    col = table[by]
    values = np.unique(col)
    if values.size <= 6 or col.dtype.kind not in "fiu":
        order = [v for v in LABELS + ("failed",) if v in values] if by == "label" else list(values)
        return [(f"{v}", table["row"][col == v]) for v in order]
    edges = np.quantile(col, [0, 0.25, 0.5, 0.75, 1])
    bins = np.clip(np.searchsorted(edges, col, side="right") - 1, 0, 3)
    return [(f"{by} in [{edges[q]:.3g}, {edges[q + 1]:.3g}]", table["row"][bins == q]) for q in range(4)
            if np.any(bins == q)]


def _plot_bands(out: Path, table: dict, by: str, colors: dict, done_text: str, cfg: dict) -> Path:
    """The true reward over time of every run done: per group, the median and the
    25-75% and 5-95% bands."""
    import matplotlib.pyplot as plt

    store = sweep.read_trajectories(out)
    time_axis, series = store["time"], store["true_reward"]
    fig, ax = plt.subplots(figsize=(8, 4.8), layout="constrained")
    for k, (name, rows) in enumerate(_groups(table, by)):
        curves = series[rows]
        curves = curves[np.all(np.isfinite(curves), axis=1)]
        if not len(curves):
            continue
        color = colors.get(name, f"C{k}") if by == "label" else f"C{k}"
        if color == "#bbbbbb":
            color = "0.45"  # benign: a grey that stays visible as a line
        q = np.quantile(curves, [0.05, 0.25, 0.5, 0.75, 0.95], axis=0)
        ax.fill_between(time_axis, q[0], q[4], color=color, alpha=0.12, lw=0)
        ax.fill_between(time_axis, q[1], q[3], color=color, alpha=0.3, lw=0)
        ax.plot(time_axis, q[2], color=color, lw=1.8, label=f"{name} ({len(curves)} runs)")
    ax.set_xlabel("flow time" if cfg["method"]["name"] == "flow" else "update")
    ax.set_ylabel("expected true reward")
    ax.set_title(f"True reward over time by {by}: median, 25-75% and 5-95% bands\n({done_text})")
    fig.legend(loc="outside lower center", ncol=2, fontsize="small")
    path = out / "trajectory_bands.png"
    save_figure(fig, path, dpi=120)
    return path
