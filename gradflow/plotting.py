"""Figures of policy-gradient runs (matplotlib only; every function returns a Figure).

The functions take [`gradflow.Solution`][]s (or arrays) and never call `plt.show()`;
save with `fig.savefig(...)`. Time axes are logarithmic by default, since the dynamics
of interest (rise, stall, escape) span several orders of magnitude of time.

Studies draw their figures from data saved in their result folder (`figures.npz`, see
[`gradflow.plotting.save_figure_data`][]), so `gradflow plot DIR` redraws them without
rerunning anything. A [`gradflow.plotting.Trajectory`][] is the part of a `Solution` the
time plots use, and can stand in for one.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from ._analysis.seeds import SeedSummary
from ._engine.solve import Solution

FIGURE_DATA = "figures.npz"
_META = "__meta__"

# ------------------------------------------------------------------ figure data on disk


def save_figure_data(out: str | Path, data: Mapping[str, Any]) -> Path:
    """Save the data a study's figures are drawn from as `out/figures.npz` (atomically).

    **Arguments:**

    - `out`: the result folder.
    - `data`: a nested mapping with string keys (not containing `/`). Leaves that are
      numbers, arrays or lists of numbers are stored as arrays; strings, booleans, `None`
      and lists of strings as JSON.

    **Returns:** the path written. [`gradflow.plotting.load_figure_data`][] reads it back.
    """
    from ._util.results import write_bytes

    arrays: dict[str, np.ndarray] = {}
    meta: dict[str, Any] = {}

    def walk(prefix: str, x) -> None:
        if isinstance(x, Mapping):
            for k, v in x.items():
                if not isinstance(k, str) or "/" in k:
                    raise ValueError(f"figure data keys must be strings without '/'; got {k!r}.")
                walk(f"{prefix}/{k}" if prefix else k, v)
        elif x is None or isinstance(x, (str, bool)) or (
                isinstance(x, (list, tuple)) and all(isinstance(v, str) for v in x) and len(x)):
            meta[prefix] = x
        else:
            arrays[prefix] = np.asarray(x)

    walk("", data)
    buf = io.BytesIO()
    np.savez(buf, **arrays, **{_META: np.array(json.dumps(meta))})
    return write_bytes(Path(out) / FIGURE_DATA, buf.getvalue())


def load_figure_data(out: str | Path) -> dict[str, Any]:
    """The nested mapping saved by [`gradflow.plotting.save_figure_data`][] in `out` (0-d
    arrays come back as Python numbers, lists of numbers as arrays)."""
    path = Path(out) / FIGURE_DATA
    if not path.is_file():
        raise ValueError(f"{Path(out)} holds no figure data ({FIGURE_DATA}); rerun the study to draw its figures.")
    with np.load(path, allow_pickle=False) as z:
        flat: dict[str, Any] = {k: (z[k].item() if z[k].ndim == 0 else z[k]) for k in z.files if k != _META}
        flat.update(json.loads(str(z[_META])))
    data: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, last = key.split("/")
        node = data
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return data


@dataclass(frozen=True)
class StallSpan:
    """The longest stall of a run: `start`, `duration`, `level` (`nan` when none)."""

    start: float
    duration: float
    level: float


@dataclass(frozen=True)
class Trajectory:
    """What the time plots use of a [`gradflow.Solution`][]: `time` (flow time or steps),
    `true_reward`, `probs` (or `None`) and the longest `stall`. It can be passed wherever
    the plotting functions take a solution."""

    time: np.ndarray
    true_reward: np.ndarray
    probs: np.ndarray | None
    stall: StallSpan

    @classmethod
    def of(cls, sol: Solution, probs: bool = True) -> Trajectory:
        """The trajectory of one (unbatched) solution; `probs=False` drops the probabilities."""
        return cls(
            time=np.asarray(sol.time), true_reward=np.asarray(sol.true_reward),
            probs=np.asarray(sol.probs) if probs and sol.probs is not None else None,
            stall=StallSpan(float(sol.stall.start), float(sol.stall.duration), float(sol.stall.level)),
        )

    def to_data(self) -> dict[str, Any]:
        """A mapping for [`gradflow.plotting.save_figure_data`][]."""
        d = {"time": self.time, "true_reward": self.true_reward,
             "stall": [self.stall.start, self.stall.duration, self.stall.level]}
        return d | ({"probs": self.probs} if self.probs is not None else {})

    @classmethod
    def from_data(cls, d: Mapping[str, Any]) -> Trajectory:
        start, duration, level = (float(v) for v in d["stall"])
        return cls(np.asarray(d["time"]), np.asarray(d["true_reward"]), d.get("probs"),
                   StallSpan(start, duration, level))


def summary_to_data(s: SeedSummary) -> dict[str, Any]:
    """A [`gradflow.SeedSummary`][] as a mapping for [`gradflow.plotting.save_figure_data`][]."""
    import dataclasses

    return {f.name: np.asarray(getattr(s, f.name)) for f in dataclasses.fields(s)}


def summary_from_data(d: Mapping[str, Any]) -> SeedSummary:
    """The [`gradflow.SeedSummary`][] saved by [`gradflow.plotting.summary_to_data`][]."""
    ints, floats, tuples = ("seeds", "excluded"), ("stalled", "stall_duration", "stall_level", "level"), (
        "targets", "quantiles")
    kw = {k: np.asarray(v) for k, v in d.items()}
    kw.update({k: int(d[k]) for k in ints} | {k: float(d[k]) for k in floats}
              | {k: tuple(float(v) for v in np.atleast_1d(d[k])) for k in tuples})
    return SeedSummary(**kw)



def _time(sol: Solution | Trajectory, time_scale: float) -> np.ndarray:
    return np.asarray(sol.time, dtype=float) * time_scale


def _positive(t: np.ndarray, *ys: np.ndarray):
    """Drop `t <= 0` (not representable on a log axis)."""
    keep = t > 0
    return (t[keep], *(y[keep] for y in ys))


def _whole_decades(ax) -> None:
    """Widen a logarithmic x axis that holds fewer than two powers of ten to whole decades:
    otherwise matplotlib labels every minor tick (2x10^2, 3x10^2, ...), and in a narrow
    panel those labels overlap."""
    lo, hi = ax.get_xlim()
    if not (lo > 0 and np.isfinite(hi) and hi > lo):
        return
    if np.floor(np.log10(hi)) - np.ceil(np.log10(lo)) < 1:  # first widen to the decade below
        lo = 10 ** np.floor(np.log10(lo))
        if np.floor(np.log10(hi)) - np.log10(lo) < 1:
            hi = 10 ** np.ceil(np.log10(hi))
        ax.set_xlim(lo, hi)


def _finish(ax, *, xlabel: str, ylabel: str, title: str | None, legend: bool, logx: bool) -> None:
    """The common finish of every time plot: axis scale and labels, title, legend, grid."""
    if logx:
        ax.set_xscale("log")
        _whole_decades(ax)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    if legend:
        ax.legend(fontsize="small")
    ax.grid(alpha=0.3)


def plot_true_reward(
    solutions: Mapping[str, Solution | Trajectory],
    *,
    time_scales: Mapping[str, float] | None = None,
    targets: Sequence[float] = (),
    styles: Mapping[str, dict] | None = None,
    shade_stalls: bool = False,
    ax=None,
    logx: bool = True,
    title: str | None = None,
    legend: bool = True,
) -> Figure:
    """Expected true reward against time, one line per labelled run.

    **Arguments:**

    - `solutions`: `{label: solution}`.
    - `time_scales`: per label, a factor converting the run's time unit to flow time
      (e.g. the learning rate for SGD, so `steps * lr` is comparable with the flow).
    - `targets`: horizontal reference lines.
    - `styles`: per label, matplotlib line keyword arguments (colour, line style, ...).
    - `shade_stalls`: shade each run's longest stall (`sol.stall`, tracked online).
    - `ax`: draw into this axes instead of a new figure.
    - `logx`: logarithmic time axis.
    - `title`: axes title.
    - `legend`: draw a legend.

    **Returns:** the figure.
    """
    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 4), layout="constrained")
    fig = ax.figure
    time_scales = dict(time_scales or {})
    styles = dict(styles or {})
    for label, sol in solutions.items():
        scale = time_scales.get(label, 1.0)
        t, v = _positive(_time(sol, scale), np.asarray(sol.true_reward))
        (line,) = ax.plot(t, v, label=label, **styles.get(label, {}))
        start, length = float(sol.stall.start) * scale, float(sol.stall.duration) * scale
        if shade_stalls and np.isfinite(length):
            ax.axvspan(max(start, t[0]), start + length, color=line.get_color(), alpha=0.08,
                       label=f"stall of {label}")
    for level in targets:
        ax.axhline(level, color="grey", lw=0.8, ls=":", label=f"target {level:g}")
    _finish(ax, xlabel="time (flow time; SGD: learning rate x steps)",
            ylabel="expected true reward", title=title, legend=legend, logx=logx)
    return fig


def plot_probs(
    solutions: Mapping[str, Solution | Trajectory],
    outputs: Mapping[int, str],
    *,
    prompt: int = 0,
    time_scales: Mapping[str, float] | None = None,
    styles: Mapping[str, dict] | None = None,
    ax=None,
    logx: bool = True,
    title: str | None = None,
    legend: bool = True,
) -> Figure:
    """Probabilities of chosen outputs against time (runs recorded with
    `SaveAt(probs=True)`).

    **Arguments:**

    - `solutions`: `{label: solution}`; line styles distinguish runs, colours outputs.
    - `outputs`: `{output index: name}`, e.g. `{0: "y*", 1: "y_med"}`.
    - `prompt`: which prompt's probabilities to show.
    - `styles`: per label, matplotlib line keyword arguments (the colour is the output's);
      default: one line style per run.
    - `time_scales`, `ax`, `logx`, `title`, `legend`: as in
      [`gradflow.plotting.plot_true_reward`][].

    **Returns:** the figure.
    """
    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 4), layout="constrained")
    fig = ax.figure
    time_scales = dict(time_scales or {})
    line_styles = ["-", "--", "-.", ":"]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    run_styles = dict(styles or {})
    for j, (label, sol) in enumerate(solutions.items()):
        if sol.probs is None:
            raise ValueError(f"solution {label!r} has no probabilities: solve with SaveAt(probs=True).")
        t = _time(sol, time_scales.get(label, 1.0))
        style = run_styles.get(label, {"ls": line_styles[j % len(line_styles)]})
        for c, (k, name) in enumerate(outputs.items()):
            tt, p = _positive(t, np.asarray(sol.probs[:, prompt, k]))
            ax.plot(tt, p, color=colors[c % len(colors)], label=f"p({name}), {label}", **style)
    ax.set_ylim(0, 1)
    _finish(ax, xlabel="time (flow time; SGD: learning rate x steps)",
            ylabel="probability", title=title, legend=legend, logx=logx)
    return fig


def plot_seed_band(
    summaries: Mapping[str, SeedSummary],
    *,
    exact: Mapping[str, Solution | Trajectory] | None = None,
    time_scales: Mapping[str, float] | None = None,
    targets: Sequence[float] = (),
    colors: Mapping[str, str] | None = None,
    show_spread: bool = True,
    ax=None,
    logx: bool = True,
    title: str | None = None,
    legend: bool = True,
) -> Figure:
    """Seed-mean expected true reward with its confidence band (and, lighter, the
    spread of single seeds), against exact runs drawn as dashed lines.

    **Arguments:**

    - `summaries`: `{label: summary}` from [`gradflow.summarize_seeds`][].
    - `exact`: `{label: solution}` of exact runs to compare with (e.g. the exact-gradient
      run with the same learning rate); a label shared with `summaries` shares its colour.
    - `time_scales`: per label, a factor applied to the time axis (as in
      [`gradflow.plotting.plot_true_reward`][]).
    - `targets`: horizontal reference lines.
    - `colors`: per label, a matplotlib colour.
    - `show_spread`: also shade the per-seed spread (`spread_lower`..`spread_upper`).
    - `ax`, `logx`, `title`, `legend`: as in [`gradflow.plotting.plot_true_reward`][].

    **Returns:** the figure.
    """
    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 4), layout="constrained")
    fig = ax.figure
    scales = dict(time_scales or {})
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    labels = list(summaries) + [k for k in (exact or {}) if k not in summaries]
    colors = {k: cycle[i % len(cycle)] for i, k in enumerate(labels)} | dict(colors or {})
    for label, s in summaries.items():
        t = np.asarray(s.time, dtype=float) * scales.get(label, 1.0)
        t, mean, lo, hi, slo, shi = _positive(t, s.mean, s.lower, s.upper, s.spread_lower, s.spread_upper)
        c = colors[label]
        ax.plot(t, mean, color=c, lw=1.6, label=f"{label}: mean of {s.seeds} seeds")
        ax.fill_between(t, lo, hi, color=c, alpha=0.35, lw=0, label=f"{s.level:.0%} band of the mean")
        if show_spread:
            ax.fill_between(t, slo, shi, color=c, alpha=0.12, lw=0, label="10-90% of seeds")
    for label, sol in (exact or {}).items():
        t, v = _positive(_time(sol, scales.get(label, 1.0)), np.asarray(sol.true_reward))
        name = f"{label}: exact gradient" if label in summaries else label
        ax.plot(t, v, color=colors[label], ls="--", lw=1.4, label=name)
    for level in targets:
        ax.axhline(level, color="grey", lw=0.8, ls=":", label=f"target {level:g}")
    _finish(ax, xlabel="step" if not scales else "time (flow time; SGD: learning rate x steps)",
            ylabel="expected true reward", title=title, legend=legend, logx=logx)
    return fig


def plot_time_to_reward_cdf(
    summaries: Mapping[str, SeedSummary],
    target: float,
    *,
    colors: Mapping[str, str] | None = None,
    exact_times: Mapping[str, float] | None = None,
    ax=None,
    logx: bool = True,
    title: str | None = None,
    legend: bool = True,
) -> Figure:
    """The distribution of time-to-reward across seeds: the fraction of seeds that have
    reached `target` by each step (an empirical CDF; it levels off below 1 when some
    seeds never get there).

    **Arguments:**

    - `summaries`: `{label: summary}` from [`gradflow.summarize_seeds`][]; `target` must
      be one of their targets.
    - `target`: the true-reward level.
    - `colors`: per label, a matplotlib colour.
    - `exact_times`: per label, the exact run's time-to-reward, drawn as a dashed vertical
      line (skipped when infinite).
    - `ax`, `logx`, `title`, `legend`: as in [`gradflow.plotting.plot_true_reward`][].

    **Returns:** the figure.
    """
    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 4), layout="constrained")
    fig = ax.figure
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colors = {k: cycle[i % len(cycle)] for i, k in enumerate(summaries)} | dict(colors or {})
    horizon = max(float(np.max(s.time)) for s in summaries.values())
    for label, s in summaries.items():
        if float(target) not in s.targets:
            raise ValueError(f"target {target} is not among the targets of summary {label!r}: {s.targets}.")
        t = np.sort(s.times[s.targets.index(float(target))])
        t = t[np.isfinite(t)]
        frac = np.arange(1, t.size + 1) / s.times.shape[1]
        t, frac = np.append(t, horizon), np.append(frac, frac[-1] if frac.size else 0.0)
        ax.step(t, frac, where="post", color=colors[label], lw=1.6,
                label=f"{label} ({s.reached[s.targets.index(float(target))]:.0%} reached)")
        x = (exact_times or {}).get(label)
        if x is not None and np.isfinite(x):
            ax.axvline(x, color=colors[label], ls="--", lw=1.0, label=f"{label}: exact gradient")
    ax.set_ylim(0, 1.02)
    _finish(ax, xlabel="step",
            ylabel=f"fraction of seeds with true reward >= {target:g}", title=title, legend=legend, logx=logx)
    return fig


def plot_sensitivity(
    sensitivity,
    *,
    output_names: Sequence[str] | None = None,
    prompt: int = 0,
    kind: str = "time",
    ax=None,
    title: str | None = None,
) -> Figure:
    """Per output, whether raising its proxy reward speeds or slows learning: a bar chart
    of [`gradflow.sensitivity`][].

    **Arguments:**

    - `sensitivity`: the array from [`gradflow.sensitivity`][], `(prompts, outputs)` or
      `(outputs,)`.
    - `output_names`: a label per output.
    - `prompt`: which prompt's row to show.
    - `kind`: `"time"` for `d t*/d r` (negative = raising the reward speeds learning up,
      green), `"reward"` for `d V_G(T)/d r` (positive = raises the final true reward, green).
    - `ax`, `title`: as in [`gradflow.plotting.plot_true_reward`][].

    **Returns:** the figure.
    """
    if kind not in ("time", "reward"):
        raise ValueError(f"`kind` must be 'time' or 'reward'; got {kind!r}.")
    s = np.atleast_2d(np.asarray(sensitivity, dtype=float))[prompt]
    names = list(output_names) if output_names is not None else [f"output {j}" for j in range(s.size)]
    if len(names) != s.size:
        raise ValueError(f"`output_names` must have {s.size} entries; got {len(names)}.")
    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 4), layout="constrained")
    fig = ax.figure
    helps = s < 0 if kind == "time" else s > 0
    colors = np.where(helps, "#2ca02c", "#d62728")
    ax.bar(names, s, color=colors)
    ax.axhline(0, color="black", lw=0.8)
    ax.plot([], [], "s", color="#2ca02c", label="raising it speeds learning" if kind == "time"
            else "raising it raises the final true reward")
    ax.plot([], [], "s", color="#d62728", label="raising it slows learning" if kind == "time"
            else "raising it lowers the final true reward")
    ax.set_xlabel("output whose proxy reward is raised")
    ax.set_ylabel("d(time to target) / d(proxy reward)" if kind == "time"
                  else "d(final true reward) / d(proxy reward)")
    if title:
        ax.set_title(title)
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3, axis="y")
    return fig
