"""The `feature-similarity` study: a log-linear policy on the stalling problem, where the
similarity of y_med's feature to y*'s decides whether the true reward stalls on y_med.

y* (index 0) has feature `best_norm * e1`; y_med (index 1) a unit vector at the given
cosine with `e1`, in the `(e1, e2)` plane; the bad outputs have `e3, e4, ...`. The initial
policy is fitted exactly to `initial_probs`, then trained on the true reward with
exact-gradient SGD; the tabular policy is run as a reference.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from .._analysis.curves import time_to_reward
from .._engine.names import make_method
from .._engine.solve import SaveAt, Solution, solve
from .._engine.tracking import StallCriteria
from .._util import progress as _progress
from .._util.results import save_figure
from ..policies import LogLinear, TabularSoftmax
from ._base import StudyConfig, all_of, key, nonempty, positive, probability
from ._common import check_initial_probs, fmt, report_summary, say

NAME = "feature-similarity"
SUMMARY = "log-linear policy: how the feature similarity of y* and y_med decides the stall"


def _cosines(x) -> str | None:
    return None if all(-1 <= c <= 1 for c in x) else "values in [-1, 1]"


@dataclass(frozen=True, kw_only=True)
class Problem:
    initial_probs: tuple[float, ...] = key(all_of(nonempty, probability))
    true_reward: tuple[float, ...] = key(nonempty)
    best_norm: float = key(positive)
    mediocre_cosines: tuple[float, ...] = key(all_of(nonempty, _cosines))


@dataclass(frozen=True, kw_only=True)
class SGD:
    learning_rate: float = key(positive)
    steps: int = key(positive)
    record_every: int = key(positive)


@dataclass(frozen=True, kw_only=True)
class Analysis:
    targets: tuple[float, ...] = key(nonempty)


@dataclass(frozen=True, kw_only=True)
class Config(StudyConfig):
    problem: Problem
    sgd: SGD
    analysis: Analysis

    def __post_init__(self):
        check_initial_probs(self.problem.initial_probs, self.problem.true_reward)


@dataclass(frozen=True)
class Tables:
    """`rows`: one per cosine, and the tabular reference (`summary.csv`); `solutions`: the
    run of each (`"cos = +0.35"`, ..., `"tabular"`); `seconds`: the time the runs took
    (compilation included)."""

    rows: list[dict]
    solutions: dict[str, Solution]
    seconds: float


def similarity_features(n_outputs: int, best_norm: float, cosine: float) -> np.ndarray:
    """Features of the feature-similarity problem, shape `(outputs, outputs)`: y* (index
    0) is `best_norm * e1`, y_med (index 1) the unit vector at `cosine` with `e1` in the
    `(e1, e2)` plane, and output `j >= 2` is `e_{j+1}`."""
    phi = np.zeros((n_outputs, n_outputs))
    phi[0, 0] = best_norm
    phi[1, :2] = (cosine, math.sqrt(max(0.0, 1.0 - cosine**2)))
    for j in range(2, n_outputs):
        phi[j, j] = 1.0
    return phi


def _row(sol: Solution, targets) -> dict:
    row = {f"time_to_{t:g}": float(time_to_reward(sol, t)) for t in targets}
    row.update(stall_level=float(sol.stall.level), stall_start=float(sol.stall.start),
               stall_duration=float(sol.stall.duration), final_true_reward=float(sol.final_true_reward))
    return row


def compute(config: Config) -> Tables:
    prob, sc = config.problem, config.sgd
    probs = np.array(prob.initial_probs)
    r_true = jnp.asarray(prob.true_reward)
    n = len(probs)
    targets = tuple(config.analysis.targets)
    every = min(sc.record_every, sc.steps)
    method = make_method("sgd", learning_rate=sc.learning_rate, steps=sc.steps)
    stall = StallCriteria(target=min(targets))

    @jax.jit
    def run(policy):
        return solve(policy, reward=r_true, method=method, saveat=SaveAt(every=every, probs=True),
                     targets=targets, stall=stall)

    start = time.perf_counter()
    runs: dict[str, Solution] = {}
    rows = []
    for c in _progress.each(prob.mediocre_cosines, "feature-similarity: cosines (compilation included)",
                            unit="run"):
        phi = similarity_features(n, prob.best_norm, c)
        policy = LogLinear.from_probs(jnp.asarray(phi), jnp.asarray(probs))
        label = f"cos = {c:+.2f}"
        runs[label] = sol = run(policy)
        rows.append({"parameterisation": "log-linear", "cosine": c, "inner_product": float(phi[0] @ phi[1]),
                     **_row(sol, targets)})
    runs["tabular"] = sol = run(TabularSoftmax.from_probs(jnp.asarray(probs)))
    rows.append({"parameterisation": "tabular", "cosine": math.nan, "inner_product": math.nan,
                 **_row(sol, targets)})
    return Tables(rows, runs, time.perf_counter() - start)


def report(tables: Tables, config: Config, out: Path) -> list[Path]:
    from .. import plotting

    prob, sc, rows = config.problem, config.sgd, tables.rows
    probs = np.array(prob.initial_probs)
    targets = tuple(config.analysis.targets)
    say(f"Feature similarity: log-linear policy, y* feature {prob.best_norm:g} e1, y_med a unit "
        f"vector at the given cosine with e1; initial probs {probs.tolist()}, trained on the true reward "
        f"{list(prob.true_reward)} with exact-gradient SGD (lr {sc.learning_rate:g}, {sc.steps} steps"
        f"{', quick' if config.quick else ''}).")
    shown = [{**r, "cosine": "n/a" if math.isnan(r["cosine"]) else f"{r['cosine']:+.3f}",
              "inner_product": "n/a" if math.isnan(r["inner_product"]) else f"{r['inner_product']:+.3f}",
              **{f"time_to_{t:g}": fmt(r[f"time_to_{t:g}"]) for t in targets},
              **{k: fmt(r[k]) for k in ("stall_level", "stall_start", "stall_duration")},
              "final_true_reward": f"{r['final_true_reward']:.4f}"} for r in rows]
    columns = [("parameterisation", "policy"), ("cosine", "cos(y*,\ny_med)"), ("inner_product", "<phi*,\nphi_med>")]
    columns += [(f"time_to_{t:g}", f"steps to\n{t:g}") for t in targets]
    columns += [("stall_level", "stall\nlevel"), ("stall_start", "stall\nstart"), ("stall_duration", "stall\nlength"),
                ("final_true_reward", "final true\nreward")]

    out.mkdir(parents=True, exist_ok=True)
    plotting.save_figure_data(out, {
        "study": "feature-similarity", "cosines": list(prob.mediocre_cosines), "targets": list(targets),
        "runs": {f"{j}": plotting.Trajectory.of(sol).to_data() for j, sol in enumerate(tables.solutions.values())},
    })
    with _progress.phase("feature-similarity: figures"):
        figures = plot(out)
    report_summary(out, rows, shown, columns, figures, tables.seconds, len(rows), keys=2)
    return figures


def plot(out: Path) -> list[Path]:
    """Draw the feature-similarity figure from the data saved in `out`.

    **Arguments:**

    - `out`: the study's result folder (with `figures.npz`).

    **Returns:** the paths of the figures written (`feature_similarity.png`).
    """
    import matplotlib.pyplot as plt

    from .. import plotting

    out = Path(out)
    d = plotting.load_figure_data(out)
    cos = [float(c) for c in np.atleast_1d(d["cosines"])]
    labels = [f"cos = {c:+.2f}" for c in cos] + ["tabular"]
    runs = {label: plotting.Trajectory.from_data(d["runs"][f"{j}"]) for j, label in enumerate(labels)}
    # Distinct hues (ordered along the cosine) and line styles: curves that coincide (those
    # that stall like the tabular policy) stay distinguishable.
    palette = ["#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#1f78b4"]
    dashes = ["-", (0, (6, 2)), (0, (2, 1.5)), (0, (6, 2, 2, 2)), (0, (1, 1))]
    styles = {f"cos = {c:+.2f}": {"color": palette[i % len(palette)], "ls": dashes[i % len(dashes)], "lw": 2.0}
              for i, c in enumerate(cos)}
    styles["tabular"] = {"color": "black", "ls": (0, (3, 3)), "lw": 1.2, "zorder": 3}
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), layout="constrained")
    plotting.plot_true_reward(runs, targets=[float(t) for t in np.atleast_1d(d["targets"])], styles=styles,
                              ax=axes[0], title="true reward (trained on it)", legend=False)
    axes[0].set_xlabel("step")
    for label, sol in runs.items():
        steps_axis = np.asarray(sol.time, dtype=float)
        keep = steps_axis > 0
        axes[1].plot(steps_axis[keep], np.asarray(sol.probs[:, 0, 0])[keep], label=label, **styles[label])
    axes[1].set(xscale="log", ylim=(0, 1), xlabel="step", ylabel="probability of y*", title="probability of y*")
    axes[1].grid(alpha=0.3)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside right upper", fontsize="small",
               title="cos(y*, y_med) features")
    fig.suptitle("Similarity of y_med's feature to y*'s decides whether the true reward stalls on y_med")
    figures = [out / "feature_similarity.png"]
    save_figure(fig, figures[0], dpi=120)
    return figures
