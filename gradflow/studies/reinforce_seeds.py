"""The `reinforce-seeds` study: the stalling study with REINFORCE instead of the exact
gradient. Each case runs `reinforce.seeds` independent seeds in one compiled, vmapped
call, compared with exact-gradient SGD at the same learning rate."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from .._analysis.curves import time_to_reward
from .._analysis.seeds import SeedSummary, summarize_seeds
from .._engine.names import make_method
from .._engine.solve import Solution
from .._util import progress as _progress
from .._util.results import save_figure
from ._base import StudyConfig, all_of, key, nonempty, one_of, positive, probability
from ._common import (
    SEED_COLUMNS_NOTE,
    check_stalling_problem,
    exact_solver,
    fmt,
    report_summary,
    say,
    seed_columns,
    seed_row,
    seed_shown,
    seed_solver,
    stalling_probs,
)

NAME = "reinforce-seeds"
SUMMARY = "the stalling study with REINFORCE over many seeds: seed bands against the exact gradient"


@dataclass(frozen=True, kw_only=True)
class Problem:
    true_reward: tuple[float, ...] = key(nonempty)
    proxy_reward: tuple[float, ...] = key(nonempty)
    p_mediocre: float = key(probability)
    p_best: tuple[float, ...] = key(all_of(nonempty, probability))


@dataclass(frozen=True, kw_only=True)
class Reinforce:
    learning_rate: float = key(positive)
    steps: int = key(positive)
    samples: int = key(positive)
    baseline: str = key(one_of("none", "mean", "running"))
    seeds: int = key(positive)
    seed: int = key(default=0)
    record_every: int = key(positive)


@dataclass(frozen=True, kw_only=True)
class Analysis:
    targets: tuple[float, ...] = key(nonempty)


@dataclass(frozen=True, kw_only=True)
class Config(StudyConfig):
    problem: Problem
    reinforce: Reinforce
    analysis: Analysis

    def __post_init__(self):
        check_stalling_problem(self.problem)


@dataclass(frozen=True)
class Tables:
    """`rows`: one per initial policy x reward trained on (`summary.csv`); `summaries`:
    the seed summary of each `(p_best, "true" | "proxy")`; `exact`: the exact-gradient
    run of each; `seconds`: the time the runs took (compilation included)."""

    rows: list[dict]
    summaries: dict[tuple, SeedSummary]
    exact: dict[tuple, Solution]
    seconds: float


def compute(config: Config) -> Tables:
    prob, rc = config.problem, config.reinforce
    r_true, r_proxy = np.array(prob.true_reward), np.array(prob.proxy_reward)
    targets = tuple(config.analysis.targets)
    steps, seeds = rc.steps, rc.seeds
    lr, every = rc.learning_rate, min(rc.record_every, steps)
    method = make_method("reinforce", learning_rate=lr, steps=steps, samples=rc.samples,
                         reinforce_baseline=rc.baseline)
    sampled = seed_solver(method, jnp.asarray(r_true), targets, every)
    exact = exact_solver(lr, steps, jnp.asarray(r_true), targets, every)
    keys = jax.random.split(jax.random.key(rc.seed), seeds)

    start = time.perf_counter()
    rows, summaries, exacts = [], {}, {}
    cases = [(p, name, r) for p in prob.p_best for name, r in (("true", r_true), ("proxy", r_proxy))]
    for p, name, r in _progress.each(cases, f"reinforce-seeds: {seeds} seeds per case (compilation included)",
                                     unit="case"):
        logits = jnp.log(jnp.asarray(stalling_probs(p, prob.p_mediocre, len(r_true))))
        s = summarize_seeds(sampled(logits, jnp.asarray(r), keys), targets)
        e = exact(logits, jnp.asarray(r))
        summaries[(p, name)], exacts[(p, name)] = s, e
        rows.append({"p_best": p, "trained_on": name, **seed_row(s, e, targets)})
    return Tables(rows, summaries, exacts, time.perf_counter() - start)


def report(tables: Tables, config: Config, out: Path) -> list[Path]:
    from .. import plotting

    prob, rc = config.problem, config.reinforce
    rows, summaries, exacts = tables.rows, tables.summaries, tables.exact
    targets = tuple(config.analysis.targets)
    seeds, lr = rc.seeds, rc.learning_rate
    say(f"REINFORCE seeds: {seeds} seeds per case, {rc.samples} sample(s) per step, baseline "
        f"{rc.baseline!r}, SGD lr {lr:g}, {rc.steps} steps{' (quick)' if config.quick else ''}; the exact "
        "columns are exact-gradient SGD with the same learning rate.")
    out.mkdir(parents=True, exist_ok=True)
    plotting.save_figure_data(out, {
        "study": "reinforce-seeds", "p_best": list(prob.p_best), "targets": list(targets), "seeds": seeds,
        "samples": rc.samples, "lr": lr,
        "summaries": {f"{j}": {k: plotting.summary_to_data(summaries[(p, k)]) for k in ("true", "proxy")}
                      for j, p in enumerate(prob.p_best)},
        "exact": {f"{j}": {k: plotting.Trajectory.of(exacts[(p, k)], probs=False).to_data()
                           for k in ("true", "proxy")} for j, p in enumerate(prob.p_best)},
        "exact_times": {f"{j}": {k: float(time_to_reward(exacts[(p, k)], targets[0])) for k in ("true", "proxy")}
                        for j, p in enumerate(prob.p_best)},
    })
    with _progress.phase("reinforce-seeds: figures"):
        figures = plot(out)

    t0 = targets[0]
    notes = [SEED_COLUMNS_NOTE]
    for p in prob.p_best:
        tr, px = (next(r for r in rows if r["p_best"] == p and r["trained_on"] == k) for k in ("true", "proxy"))
        notes.append(f"  p(y*) = {p:g}: on the true reward {tr[f'reached_{t0:g}']:.0%} of seeds reach {t0:g} "
                     f"(exact run: {fmt(tr[f'exact_time_to_{t0:g}'], ' steps')}); on the proxy "
                     f"{px[f'reached_{t0:g}']:.0%} do, median {fmt(px[f'time_to_{t0:g}_q0.5'], ' steps')} "
                     f"(exact: {fmt(px[f'exact_time_to_{t0:g}'], ' steps')}).")
    report_summary(out, rows, seed_shown(rows, targets),
                seed_columns([("p_best", "p(y*)"), ("trained_on", "trained on")], targets), figures,
                tables.seconds, len(rows) * (seeds + 1), keys=2, notes=notes)
    return figures


def plot(out: Path) -> list[Path]:
    """Draw the reinforce-seeds figure from the data saved in `out`.

    **Arguments:**

    - `out`: the study's result folder (with `figures.npz`).

    **Returns:** the paths of the figures written (`reinforce_seeds.png`).
    """
    import matplotlib.pyplot as plt

    from .. import plotting

    out = Path(out)
    d = plotting.load_figure_data(out)
    p_best, targets = [float(p) for p in d["p_best"]], [float(t) for t in d["targets"]]
    n = len(p_best)
    colors = {"true": "C0", "proxy": "C3"}
    label = {name: f"trained on {name} reward" for name in colors}
    fig, axes = plt.subplots(2, n, figsize=(4.8 * n, 8.4), layout="constrained", squeeze=False)
    for j, p in enumerate(p_best):
        summaries = {label[k]: plotting.summary_from_data(d["summaries"][f"{j}"][k]) for k in colors}
        exacts = {label[k]: plotting.Trajectory.from_data(d["exact"][f"{j}"][k]) for k in colors}
        plotting.plot_seed_band(
            summaries, exact=exacts, targets=targets, colors={label[k]: c for k, c in colors.items()},
            ax=axes[0, j], title=f"initial p(y*) = {p:g}", legend=False,
        )
        plotting.plot_time_to_reward_cdf(
            summaries, targets[0], colors={label[k]: c for k, c in colors.items()},
            exact_times={label[k]: d["exact_times"][f"{j}"][k] for k in colors},
            ax=axes[1, j], title=f"time to true reward {targets[0]:g},\ninitial p(y*) = {p:g}", legend=False,
        )
        axes[1, j].legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(0.0, -0.16), ncol=1,
                          borderaxespad=0)
    fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="outside right upper", fontsize="small")
    fig.suptitle(f"REINFORCE ({d['seeds']} seeds, {d['samples']} sample/step, lr {d['lr']:g}) vs the exact gradient")
    figures = [out / "reinforce_seeds.png"]
    save_figure(fig, figures[0], dpi=120)
    return figures
