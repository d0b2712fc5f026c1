"""The `estimators` study: the sampled estimators (REINFORCE, RLOO, GRPO, PPO-clip) on the
stalling problem at equal sample budget, each over many seeds, against exact-gradient SGD
with the same learning rate and steps."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from .._analysis.seeds import SeedSummary, summarize_seeds
from .._engine.names import METHODS, SAMPLED_NAMES, make_method
from .._engine.solve import Solution
from .._util import progress as _progress
from .._util.results import save_figure
from ._base import StudyConfig, all_of, key, nonempty, one_of, positive, probability
from ._common import (
    SEED_COLUMNS_NOTE,
    check_stalling_problem,
    exact_solver,
    report_summary,
    say,
    seed_columns,
    seed_row,
    seed_shown,
    seed_solver,
    stalling_probs,
)

NAME = "estimators"
SUMMARY = "REINFORCE, RLOO, GRPO and PPO on the stalling problem at equal sample budget"


@dataclass(frozen=True, kw_only=True)
class Problem:
    true_reward: tuple[float, ...] = key(nonempty)
    proxy_reward: tuple[float, ...] = key(nonempty)
    p_mediocre: float = key(probability)
    p_best: float = key(probability)


@dataclass(frozen=True, kw_only=True)
class Estimators:
    names: tuple[str, ...] = key(all_of(nonempty, one_of(*SAMPLED_NAMES)))
    learning_rate: float = key(positive)
    samples: int = key(positive)
    steps: int = key(positive)
    seeds: int = key(positive)
    seed: int = key(default=0)
    record_every: int = key(positive)
    reinforce_baseline: str = key(one_of("none", "mean", "running"))
    grpo_normalize_std: bool = key()
    ppo_epochs: int = key(positive)
    ppo_clip: float = key(positive)


@dataclass(frozen=True, kw_only=True)
class Analysis:
    targets: tuple[float, ...] = key(nonempty)


@dataclass(frozen=True, kw_only=True)
class Config(StudyConfig):
    problem: Problem
    estimators: Estimators
    analysis: Analysis

    def __post_init__(self):
        check_stalling_problem(self.problem)


@dataclass(frozen=True)
class Tables:
    """`rows`: one per estimator x reward trained on (`summary.csv`); `summaries`: the seed
    summary of each `(name, "true" | "proxy")`; `exact`: the exact-gradient run trained on
    each reward; `seconds`: the time the runs took (compilation included)."""

    rows: list[dict]
    summaries: dict[tuple, SeedSummary]
    exact: dict[str, Solution]
    seconds: float


def compute(config: Config) -> Tables:
    prob, ec = config.problem, config.estimators
    r_true, r_proxy = np.array(prob.true_reward), np.array(prob.proxy_reward)
    targets = tuple(config.analysis.targets)
    steps, seeds = ec.steps, ec.seeds
    every = min(ec.record_every, steps)
    logits = jnp.log(jnp.asarray(stalling_probs(prob.p_best, prob.p_mediocre, len(r_true))))
    keys = jax.random.split(jax.random.key(ec.seed), seeds)
    exact = exact_solver(ec.learning_rate, steps, jnp.asarray(r_true), targets, every)

    start = time.perf_counter()
    rows, summaries, exacts = [], {}, {}
    bar = _progress.bar(2 * len(ec.names), f"estimators: {seeds} seeds per case (compilation included)",
                        unit="case")
    for name in ec.names:
        method = make_method(name, learning_rate=ec.learning_rate, steps=steps, samples=ec.samples,
                             reinforce_baseline=ec.reinforce_baseline, grpo_normalize_std=ec.grpo_normalize_std,
                             ppo_epochs=ec.ppo_epochs, ppo_clip=ec.ppo_clip)
        run = seed_solver(method, jnp.asarray(r_true), targets, every)
        for trained, r in (("true", r_true), ("proxy", r_proxy)):
            if bar is not None:
                bar.set_postfix_str(f"{name}, trained on {trained}")
            exacts[trained] = exacts.get(trained) or exact(logits, jnp.asarray(r))
            s = summarize_seeds(run(logits, jnp.asarray(r), keys), targets)
            summaries[(name, trained)] = s
            rows.append({"estimator": name, "trained_on": trained, **seed_row(s, exacts[trained], targets)})
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    return Tables(rows, summaries, exacts, time.perf_counter() - start)


def report(tables: Tables, config: Config, out: Path) -> list[Path]:
    from .. import plotting

    prob, ec = config.problem, config.estimators
    rows, summaries, exacts = tables.rows, tables.summaries, tables.exact
    targets = tuple(config.analysis.targets)
    k = ec.samples
    say(f"Estimators at equal sample budget: {k} samples per step x {ec.steps} steps = {k * ec.steps} draws "
        f"per seed, {ec.seeds} seeds, SGD lr {ec.learning_rate:g}, initial p(y*) = {prob.p_best:g}"
        f"{' (quick)' if config.quick else ''}. PPO makes {ec.ppo_epochs} updates per batch; the exact "
        "columns are exact-gradient SGD with the same learning rate and steps.")
    out.mkdir(parents=True, exist_ok=True)
    plotting.save_figure_data(out, {
        "study": "estimators", "names": list(ec.names), "targets": list(targets), "samples": k,
        "p_best": prob.p_best,
        "summaries": {n: {t: plotting.summary_to_data(summaries[(n, t)]) for t in ("true", "proxy")}
                      for n in ec.names},
        "exact": {t: plotting.Trajectory.of(exacts[t], probs=False).to_data() for t in ("true", "proxy")},
    })
    with _progress.phase("estimators: figures"):
        figures = plot(out)
    report_summary(out, rows, seed_shown(rows, targets),
                seed_columns([("estimator", "estimator"), ("trained_on", "trained on")], targets), figures,
                tables.seconds, len(rows) * ec.seeds + 2, keys=2, notes=[SEED_COLUMNS_NOTE])
    return figures


def plot(out: Path) -> list[Path]:
    """Draw the estimators figure from the data saved in `out`.

    **Arguments:**

    - `out`: the study's result folder (with `figures.npz`).

    **Returns:** the paths of the figures written (`estimators.png`).
    """
    import matplotlib.pyplot as plt

    from .. import plotting

    out = Path(out)
    d = plotting.load_figure_data(out)
    names, targets = list(d["names"]), [float(t) for t in d["targets"]]
    label = {name: METHODS[name].label for name in names}
    fig, axes = plt.subplots(2, 2, figsize=(11, 8.4), layout="constrained", squeeze=False)
    for j, trained in enumerate(("true", "proxy")):
        summaries = {label[n]: plotting.summary_from_data(d["summaries"][n][trained]) for n in names}
        plotting.plot_seed_band(
            summaries, exact={"exact-gradient SGD": plotting.Trajectory.from_data(d["exact"][trained])},
            targets=targets, colors={"exact-gradient SGD": "black"}, show_spread=False, ax=axes[0, j],
            title=f"trained on the {trained} reward", legend=False,
        )
        plotting.plot_time_to_reward_cdf(
            summaries, targets[0], ax=axes[1, j], legend=False,
            title=f"time to true reward {targets[0]:g},\ntrained on the {trained} reward",
        )
        axes[1, j].legend(fontsize="small", loc="upper left", bbox_to_anchor=(0.0, -0.16), ncol=2,
                          borderaxespad=0)
    fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="outside right upper", fontsize="small")
    fig.suptitle(f"{len(names)} estimators, {d['samples']} samples per step, initial p(y*) = {d['p_best']:g}")
    figures = [out / "estimators.png"]
    save_figure(fig, figures[0], dpi=120)
    return figures
