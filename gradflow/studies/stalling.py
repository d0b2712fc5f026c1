"""The `stalling` study (what `gradflow demo` runs): trained on the true reward, the
policy stalls on a likely mediocre output; trained on a wrong proxy that demotes it, the
policy reaches high true reward far sooner.

Each initial policy (`problem.p_best`) is trained on the true reward and on the proxy,
with the exact gradient flow and with SGD, in one compiled, vmapped call per method.
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
from .._engine.status import status_name
from .._engine.tracking import StallCriteria
from .._util import progress as _progress
from .._util.results import save_figure
from ..policies import TabularSoftmax
from ._base import StudyConfig, all_of, key, nonempty, positive, probability
from ._common import check_stalling_problem, fmt, list_files, say, stalling_probs, table, write_csv

NAME = "stalling"
SUMMARY = ("training on the true reward stalls on a mediocre output; a wrong proxy escapes (what `gradflow demo` "
           "runs)")


@dataclass(frozen=True, kw_only=True)
class Problem:
    """The stalling problem: y* (index 0), y_med (index 1), the other outputs bad."""

    true_reward: tuple[float, ...] = key(nonempty)
    proxy_reward: tuple[float, ...] = key(nonempty)
    p_best: tuple[float, ...] = key(all_of(nonempty, probability))
    p_mediocre: float = key(probability)


@dataclass(frozen=True, kw_only=True)
class Flow:
    t1: float = key(positive)
    rtol: float = key(positive)
    atol: float = key(positive)


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
    flow: Flow
    sgd: SGD
    analysis: Analysis

    def __post_init__(self):
        check_stalling_problem(self.problem)


@dataclass(frozen=True)
class Tables:
    """`rows`: one per initial policy x reward trained on x method (`summary.csv`);
    `solutions`: the run of each `(p_best, "true" | "proxy", "flow" | "SGD")`;
    `seconds`: the time the runs took (compilation included)."""

    rows: list[dict]
    solutions: dict[tuple, Solution]
    seconds: float


def compute(config: Config) -> Tables:
    prob, flow_cfg, sgd_cfg = config.problem, config.flow, config.sgd
    r_true, r_proxy = np.array(prob.true_reward), np.array(prob.proxy_reward)
    k = len(r_true)
    targets = tuple(config.analysis.targets)
    t1, steps = flow_cfg.t1, sgd_cfg.steps
    every = min(sgd_cfg.record_every, steps)

    cases = [(p, name, r) for p in prob.p_best for name, r in (("true", r_true), ("proxy", r_proxy))]
    logits = jnp.asarray(np.stack([np.log(stalling_probs(p, prob.p_mediocre, k)) for p, _, _ in cases]))
    rewards = jnp.asarray(np.stack([r for _, _, r in cases]))
    flow = make_method("flow", rtol=flow_cfg.rtol, atol=flow_cfg.atol)
    sgd = make_method("sgd", learning_rate=sgd_cfg.learning_rate, steps=steps)
    ts = jnp.concatenate([jnp.zeros(1), jnp.geomspace(1e-2, t1, 600)[:-1], jnp.full(1, t1)])

    def run(method, saveat, t1):
        def one(logit, reward):
            policy = TabularSoftmax(logit)
            return solve(policy, reward=reward, true_reward=r_true, method=method, t1=t1,
                         saveat=saveat, targets=targets,
                         stall=StallCriteria(target=min(targets)))
        return jax.jit(jax.vmap(one))(logits, rewards)

    start = time.perf_counter()
    sols = {}
    with _progress.phase(f"stalling: gradient flow, {len(cases)} runs (compilation included)"):
        sols["flow"] = jax.block_until_ready(run(flow, SaveAt(ts=ts, probs=True), t1))
    with _progress.phase(f"stalling: SGD, {len(cases)} runs of {steps} steps (compilation included)"):
        sols["SGD"] = jax.block_until_ready(run(sgd, SaveAt(every=every, probs=True), None))
    elapsed = time.perf_counter() - start

    def pick(sol: Solution, i: int) -> Solution:
        return jax.tree.map(lambda a: a[i], sol)

    rows, runs = [], {}
    for m, sol in sols.items():
        for i, (p, name, _) in enumerate(cases):
            s = pick(sol, i)
            runs[(p, name, m)] = s
            row = {
                "p_best": p,
                "trained_on": name,
                "method": m,
                "time_unit": "flow time" if m == "flow" else "steps",
            }
            for tgt in targets:
                row[f"time_to_{tgt:g}"] = float(time_to_reward(s, tgt))
            row.update(
                stall_level=float(s.stall.level),
                stall_start=float(s.stall.start),
                stall_duration=float(s.stall.duration),
                final_true_reward=float(s.final_true_reward),
                status=status_name(s.status),
            )
            rows.append(row)
    return Tables(rows, runs, elapsed)


def report(tables: Tables, config: Config, out: Path) -> list[Path]:
    from .. import plotting

    prob, rows, runs = config.problem, tables.rows, tables.solutions
    r_true, r_proxy = np.array(prob.true_reward), np.array(prob.proxy_reward)
    targets = tuple(config.analysis.targets)
    lr, steps, t1 = config.sgd.learning_rate, config.sgd.steps, config.flow.t1
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "summary.csv", rows)
    shown = [
        {
            **r,
            **{f"time_to_{t:g}": fmt(r[f"time_to_{t:g}"]) for t in targets},
            "stall_level": fmt(r["stall_level"]),
            "stall_start": fmt(r["stall_start"]),
            "stall_duration": fmt(r["stall_duration"]),
            "final_true_reward": f"{r['final_true_reward']:.4f}",
        }
        for r in rows
    ]
    columns = [("p_best", "p(y*)"), ("trained_on", "trained on"), ("method", "method"),
               ("time_unit", "unit")]
    columns += [(f"time_to_{t:g}", f"time to\n{t:g}") for t in targets]
    columns += [("stall_level", "stall\nlevel"), ("stall_start", "stall\nstart"),
                ("stall_duration", "stall\nlength"), ("final_true_reward", "final true\nreward"),
                ("status", "status")]
    say(f"Stalling study: true reward {r_true.tolist()}, proxy {r_proxy.tolist()}, "
        f"p(y_med) = {prob.p_mediocre}; flow to t = {t1:g}, SGD lr {lr:g} for {steps} steps"
        f"{' (quick)' if config.quick else ''}.")
    print(table(shown, columns, keys=4))
    first = f"time_to_{targets[0]:g}"
    by_case = {(r["p_best"], r["trained_on"], r["method"]): r for r in rows}
    for p in prob.p_best:
        for m, unit in (("flow", ""), ("SGD", " steps")):
            t_true, t_proxy = by_case[(p, "true", m)][first], by_case[(p, "proxy", m)][first]
            ratio = t_true / t_proxy if t_proxy > 0 else math.nan
            verdict = (
                f"the proxy is {ratio:.3g}x faster" if math.isfinite(ratio)
                else "only the proxy gets there within the horizon" if math.isinf(t_true) and math.isfinite(t_proxy)
                else "n/a"
            )
            say(f"  p(y*) = {p:g}, {m}: time to {targets[0]:g}: true reward {fmt(t_true, unit)}, "
                f"proxy {fmt(t_proxy, unit)} -> {verdict}")

    methods = ("flow", "SGD")
    plotting.save_figure_data(out, {
        "study": "stalling", "p_best": list(prob.p_best), "targets": list(targets), "lr": lr,
        "runs": {f"{j}": {f"{name}": {m: plotting.Trajectory.of(runs[(p, name, m)]).to_data() for m in methods}
                          for name in ("true", "proxy")} for j, p in enumerate(prob.p_best)},
    })
    with _progress.phase("stalling: figures"):
        figures = plot(out)
    print(f"Solved {len(rows)} runs in {tables.seconds:.1f} s (compilation included).")
    list_files(out, [out / "summary.csv", *figures])
    return figures


def plot(out: Path) -> list[Path]:
    """Draw the stalling study's figures from the data saved in `out`.

    **Arguments:**

    - `out`: the study's result folder (with `figures.npz`).

    **Returns:** the paths of the figures written (`true_reward.png`, `probs.png`).
    """
    import matplotlib.pyplot as plt

    from .. import plotting

    out = Path(out)
    d = plotting.load_figure_data(out)
    p_best, targets, lr = [float(p) for p in d["p_best"]], [float(t) for t in d["targets"]], d["lr"]
    runs = {(p, name, m): plotting.Trajectory.from_data(d["runs"][f"{j}"][name][m])
            for j, p in enumerate(p_best) for name in ("true", "proxy") for m in ("flow", "SGD")}
    n = len(p_best)
    scales = {"SGD": lr}
    # The flow is drawn wide and pale, SGD (the Euler steps of the same flow) thin, dashed and
    # on top, so that where they agree both stay visible.
    method_style = {"flow": {"ls": "-", "lw": 3.2, "alpha": 0.45, "zorder": 2},
                    "SGD": {"ls": (0, (4, 2)), "lw": 1.5, "zorder": 3}}
    styles = {
        f"{m}, trained on {name} reward": {"color": color, **style}
        for name, color in (("true", "C0"), ("proxy", "C3"))
        for m, style in method_style.items()
    }
    fig, axes = plt.subplots(1, n, figsize=(4.6 * n, 4.2), layout="constrained", sharey=True, squeeze=False)
    for ax, p in zip(axes[0], p_best, strict=True):
        sols = {label: runs[(p, label.split(" ")[3], label.split(",")[0])] for label in styles}
        plotting.plot_true_reward(
            sols, time_scales={k: scales.get(k.split(",")[0], 1.0) for k in sols},
            targets=targets, styles=styles, ax=ax, title=f"initial p(y*) = {p:g}", legend=False,
        )
        stall = runs[(p, "true", "flow")].stall
        if np.isfinite(stall.duration):
            ax.axvspan(stall.start, stall.start + stall.duration, color="C0", alpha=0.1,
                       label="stall (flow, true reward)")
    for ax in axes[0, 1:]:
        ax.set_ylabel("")
    fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="outside lower center", ncol=4, fontsize="small")
    fig.suptitle("True reward vs time: training on the true reward stalls near y_med's 0.8")
    paths = [out / "true_reward.png"]
    save_figure(fig, paths[0], dpi=120)

    fig, axes = plt.subplots(2, n, figsize=(4.6 * n, 7.5), layout="constrained", sharey=True, squeeze=False)
    for j, p in enumerate(p_best):
        for i, name in enumerate(("true", "proxy")):
            sols = {m: runs[(p, name, m)] for m in ("flow", "SGD")}
            plotting.plot_probs(
                sols, {0: "y*", 1: "y_med"}, time_scales={"SGD": lr}, ax=axes[i, j],
                title=f"p(y*) = {p:g} at start, trained on {name} reward", legend=False,
                styles={m: {k: v for k, v in st.items() if k != "color"} for m, st in method_style.items()},
            )
            if j:
                axes[i, j].set_ylabel("")
    fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="outside lower center", ncol=4, fontsize="small")
    fig.suptitle("Probabilities of the best (y*) and the mediocre (y_med) output")
    paths.append(out / "probs.png")
    save_figure(fig, paths[1], dpi=120)
    return paths
