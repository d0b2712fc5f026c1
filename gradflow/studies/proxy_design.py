"""The `proxy-design` study: the fastest teacher within a budget.

(i) On the stalling problem, the proxy that reaches true reward `target` soonest under the
exact flow, designed by [`gradflow.design_proxy`][] for each L-inf budget (one vmapped
call over budgets), with and without the order-preserving constraint (ii); and, at one
budget, the time against ranking accuracy of random proxies in the budget's box, with the
designed proxy on it. (iii) On the partial-credit model of `gradflow.design`, the credit
per partial satisfaction pattern that the designer learns (success and failure fixed),
over a grid of initial success and partial probabilities (one vmapped call over the
grid), against what `gradflow.design.recommend` says.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from .. import metrics
from .._analysis.categorize import LABELS, Categorization, categorize
from .._analysis.proxy_design import ProxyDesign, _Pairs, design_proxy
from .._analysis.stats import spearman_finite
from .._engine.names import make_method
from .._util import progress as _progress
from .._util.results import save_figure
from ..design import ConstraintSatisfaction, recommend
from ..policies import TabularSoftmax
from ._base import StudyConfig, all_of, key, nonempty, one_of, positive, probability
from ._common import LABEL_COLORS, fmt, list_files, say, stalling_probs, table, write_csv

NAME = "proxy-design"
SUMMARY = ("the fastest teacher within a budget: proxy rewards designed by differentiating through training, "
           "against ranking accuracy, and the learned credit for partially correct outputs")


@dataclass(frozen=True, kw_only=True)
class Problem:
    true_reward: tuple[float, ...] = key(nonempty)
    p_best: float = key(probability)
    p_mediocre: float = key(probability)


@dataclass(frozen=True, kw_only=True)
class Design:
    target: float = key()
    t1: float = key(positive)
    budgets: tuple[float, ...] = key(all_of(nonempty, positive))
    steps: int = key(positive)
    accuracy_budget: float = key(positive)
    random_proxies: int = key(positive)
    seed: int = key()


@dataclass(frozen=True, kw_only=True)
class PartialCredit:
    num_constraints: int = key(positive)
    outputs_per_pattern: int = key(positive)
    p_success: tuple[float, ...] = key(all_of(nonempty, probability))
    p_partial: tuple[float, ...] = key(all_of(nonempty, probability))
    budget: float = key(positive)
    target: float = key(probability)
    parameterisation: str = key(one_of("tabular", "log-linear"))
    mix: float = key(probability)


@dataclass(frozen=True, kw_only=True)
class Config(StudyConfig):
    problem: Problem
    design: Design
    partial_credit: PartialCredit

    def __post_init__(self):
        prob, des, pc = self.problem, self.design, self.partial_credit
        r_true = np.asarray(prob.true_reward)
        if r_true.size < 3:
            raise ValueError(f"config: `problem.true_reward` needs at least 3 outputs; got {r_true.size}.")
        probs = stalling_probs(prob.p_best, prob.p_mediocre, r_true.size)
        if not r_true @ probs < des.target < r_true.max():
            raise ValueError(f"config key `design.target`: expected a level between the initial true reward "
                             f"({r_true @ probs:.4g}) and the best output's ({r_true.max():g}); got {des.target}.")
        if des.accuracy_budget not in des.budgets:
            raise ValueError(f"config key `design.accuracy_budget`: expected one of the budgets "
                             f"{list(des.budgets)}; got {des.accuracy_budget}.")
        n_partial = len(ConstraintSatisfaction(pc.num_constraints, pc.outputs_per_pattern).partial_patterns)
        if any(ps + pp * n_partial >= 1 for ps in pc.p_success for pp in pc.p_partial):
            raise ValueError("config: `partial_credit.p_success` + (number of partial patterns) x "
                             "`partial_credit.p_partial` must stay below 1 for every cell of the grid.")


@dataclass(frozen=True)
class Tables:
    """`front`: per budget, the designed proxies (unconstrained and order-preserving), their
    times, speedups, accuracies and reward variances (`front.csv`); `accuracy`: per random
    proxy in the box of `design.accuracy_budget`, its ranking accuracy, time and label
    (`accuracy.csv`); `partial_credit`: per grid cell, the designed credit of each partial
    pattern against binary credit and `recommend` (`partial_credit.csv`);
    `categorization`: the random proxies' [`gradflow.Categorization`][]; `designs`: the
    batched [`gradflow.ProxyDesign`][] of each constraint (`"any"`, `"order"`);
    `at_budget`: the unconstrained design at `design.accuracy_budget`; `variance_true`: the
    true reward's variance under the initial policy; `seconds`: the time it all took
    (compilation included)."""

    front: list[dict]
    accuracy: list[dict]
    partial_credit: list[dict]
    categorization: Categorization
    designs: dict[str, ProxyDesign]
    at_budget: ProxyDesign
    variance_true: float
    seconds: float


def compute(config: Config) -> Tables:
    prob, des, pc = config.problem, config.design, config.partial_credit
    r_true = np.asarray(prob.true_reward)
    probs = stalling_probs(prob.p_best, prob.p_mediocre, r_true.size)
    target, t1, steps = des.target, des.t1, des.steps
    budgets = np.asarray(des.budgets, float)
    n_random = des.random_proxies
    p_success, p_partial = pc.p_success, pc.p_partial
    problem = ConstraintSatisfaction(pc.num_constraints, pc.outputs_per_pattern)
    partial = np.array(problem.partial_patterns)
    grid = [(ps, pp) for ps in p_success for pp in p_partial]
    start = time.perf_counter()

    with jax.enable_x64(True):
        policy = TabularSoftmax.from_probs(jnp.asarray(probs))
        g = jnp.asarray(r_true)
        flow = make_method("flow")

        # (i), (ii): the front over budgets, unconstrained and order-preserving. The designs
        # are independent; lax.map traces one (vmap's batching of a differentiated flow's
        # nested loops took most of the quick run's time).
        def front(order):
            return jax.lax.map(lambda b: design_proxy(policy, g, method=flow, target=target, t1=t1, budget=b,
                                                      order_preserving=order, steps=steps), jnp.asarray(budgets))

        with _progress.phase(f"proxy-design: designed proxies for {budgets.size} budgets, unconstrained and "
                             "order-preserving (compilation included)"):
            designs = jax.block_until_ready({"any": front(False), "order": front(True)})
        var_true = float(metrics.reward_variance(policy.log_probs(), g[None]))
        rows = []
        for i, b in enumerate(budgets):
            row = {"budget": float(b), "reference_time": float(designs["any"].reference_time[i])}
            for name, d in designs.items():
                r = np.asarray(d.reward[i])
                row[f"time_{name}"] = float(d.time[i])
                row[f"speedup_{name}"] = float(d.speedup[i])
                row[f"accuracy_{name}"] = float(d.accuracy[i])
                row[f"variance_{name}"] = float(metrics.reward_variance(policy.log_probs(), jnp.asarray(r)[None]))
                row[f"reward_{name}"] = " ".join(f"{x:.3f}" for x in r)
            rows.append(row)

        # (i) against ranking accuracy: random proxies in the box of one budget.
        eps = des.accuracy_budget
        key_ = jax.random.key(des.seed)
        proxies = g[None, :] + eps * jax.random.uniform(key_, (n_random, g.size), g.dtype, -1.0, 1.0)
        with _progress.phase(f"proxy-design: {n_random} random proxies (compilation included)"):
            cat = categorize(policy, g, proxies, method=flow, target=target, t1=t1)
            pairs = _Pairs(g[None, :], policy.log_probs(), "acc")  # the pairs design_proxy scores
            acc = np.asarray(jax.vmap(lambda r: pairs.exact(r[None, :])[0])(proxies))
        at_eps = jax.tree.map(lambda x: x[int(np.flatnonzero(budgets == eps)[0])], designs["any"])
        accuracy_rows = [{"accuracy": float(a), "time": float(t), "label": str(lab)}
                         for a, t, lab in zip(acc, cat.time, cat.label, strict=True)]

        # (iii): one credit per partial pattern, success and failure fixed.
        free = np.zeros(problem.num_patterns, bool)
        free[partial] = True
        pols = [problem.policy(ps, pp, parameterisation=pc.parameterisation, mix=pc.mix) for ps, pp in grid]
        stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *pols)
        horizons = jnp.asarray([100.0 * problem.counts[-1] / ps for ps, _ in grid])
        with _progress.phase(f"proxy-design: partial credit designed on {len(grid)} cells (compilation included)"):
            credit = jax.block_until_ready(jax.lax.map(lambda args: design_proxy(
                args[0], problem.true_reward(), method=flow, target=pc.target, t1=args[1], budget=pc.budget,
                steps=steps, groups=problem.output_patterns(), mask=free), (stacked, horizons)))
        credit_rows = []
        for k, (ps, pp) in enumerate(_progress.each(grid, "proxy-design: recommendations", unit="cell")):
            rec = recommend(ps, pp, problem=problem, target=pc.target, t1=float(horizons[k]),
                            parameterisation=pc.parameterisation, mix=pc.mix)
            values = np.asarray(credit.reward[k])[np.searchsorted(problem.output_patterns(), partial)]
            credit_rows.append({
                "p_success": ps, "p_partial": pp,
                **{f"credit_{problem.pattern_name(int(q))}": float(x) for q, x in zip(partial, values, strict=True)},
                "designed_time": float(credit.time[k]), "binary_time": float(credit.reference_time[k]),
                "recommend": rec.scheme, "recommend_partial_time": rec.time_partial,
            })
    return Tables(rows, accuracy_rows, credit_rows, cat, designs, at_eps, var_true, time.perf_counter() - start)


def report(tables: Tables, config: Config, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "front.csv", tables.front)
    write_csv(out / "accuracy.csv", tables.accuracy)
    write_csv(out / "partial_credit.csv", tables.partial_credit)
    _save_figure_data(out, tables, config)
    with _progress.phase("proxy-design: figures"):
        figures = plot(out)
    _print(tables, config, out, figures)
    return figures


def _print(tables: Tables, config: Config, out: Path, figures: list[Path]) -> None:
    rows, cat, at_eps, credit_rows = tables.front, tables.categorization, tables.at_budget, tables.partial_credit
    acc = np.array([r["accuracy"] for r in tables.accuracy])
    target, t1, eps = config.design.target, config.design.t1, config.design.accuracy_budget
    shown = [{"budget": f"{r['budget']:g}", "t_any": fmt(r["time_any"]), "x_any": f"{r['speedup_any']:.1f}x",
              "acc_any": f"{r['accuracy_any']:.2f}", "t_ord": fmt(r["time_order"]),
              "x_ord": f"{r['speedup_order']:.1f}x", "var": f"{r['variance_order']:.3g}", "proxy": r["reward_any"]}
             for r in rows]
    say(f"Proxy design on the stalling problem: exact flow, time to true reward {target:g} "
        f"(truth: {fmt(rows[0]['reference_time'])}, horizon {t1:g}{', quick' if config.quick else ''}).")
    print(table(shown, [("budget", "L-inf\nbudget"), ("t_any", "designed\ntime"), ("x_any", "\nspeedup"),
                        ("acc_any", "\nAcc"), ("t_ord", "order-\npreserving"), ("x_ord", "\nspeedup"),
                        ("var", "reward\nvar"), ("proxy", "designed proxy\n(unconstrained)")]))
    print(f"Reward variance under the initial policy: truth {tables.variance_true:.3g}.")
    fastest_random = float(np.min(cat.time))
    say(f"{acc.size} random proxies within L-inf {eps:g} of the truth: the fastest reaches {target:g} at "
        f"{fmt(fastest_random)}; the designed one at {fmt(float(at_eps.time))} (Acc {float(at_eps.accuracy):.2f}). "
        f"Accuracy of the random proxies against their time: Spearman {spearman_finite(acc, cat.time):+.2f}.")
    cr = [{"p_s": f"{r['p_success']:g}", "p_p": f"{r['p_partial']:g}",
           **{k: f"{v:+.2f}" for k, v in r.items() if k.startswith("credit_")},
           "x": f"{r['binary_time'] / r['designed_time']:.2f}x", "rec": r["recommend"]} for r in credit_rows]
    cols = [("p_s", "p(success)"), ("p_p", "p(partial)")]
    cols += [(k, k.replace("credit_", "credit ")) for k in cr[0] if k.startswith("credit_")]
    cols += [("x", "vs binary"), ("rec", "recommend")]
    say(f"Partial credit on the {config.partial_credit.parameterisation} policy, designed per pattern (success 1 "
        "and failure 0 fixed; `vs binary`: how many times sooner than binary credit):")
    print(table(cr, cols, keys=2))
    print(f"Designed in {tables.seconds:.1f} s (compilation included).")
    list_files(out, ["front.csv", "accuracy.csv", "partial_credit.csv", *figures])


def _save_figure_data(out: Path, tables: Tables, config: Config) -> None:
    """Save what the figures show (`figures.npz`)."""
    from ..plotting import save_figure_data

    rows, cat, at_eps, credit_rows = tables.front, tables.categorization, tables.at_budget, tables.partial_credit
    p_success, p_partial = config.partial_credit.p_success, config.partial_credit.p_partial
    values = np.array([np.mean([v for k, v in r.items() if k.startswith("credit_")]) for r in credit_rows])
    save_figure_data(out, {
        "study": "proxy-design", "target": config.design.target, "eps": config.design.accuracy_budget,
        "budget": [r["budget"] for r in rows], "time_any": [r["time_any"] for r in rows],
        "time_order": [r["time_order"] for r in rows], "reference_time": rows[0]["reference_time"],
        "accuracy": np.array([r["accuracy"] for r in tables.accuracy]), "time": np.asarray(cat.time),
        "label": np.array([list(LABELS).index(str(x)) for x in np.asarray(cat.label)]),
        "random_reference_time": float(cat.reference_time),
        "designed": [float(at_eps.accuracy), float(at_eps.time)],
        "p_success": list(p_success), "p_partial": list(p_partial),
        "credit": values.reshape(len(p_success), len(p_partial)),
        "recommend": [str(r["recommend"]) for r in credit_rows],
    })


def plot(out: Path) -> list[Path]:
    """Draw the proxy-design figures from the data saved in `out`.

    **Arguments:**

    - `out`: the study's result folder (with `figures.npz`).

    **Returns:** the paths of the figures written (`proxy_design_front.png`,
    `proxy_design_credit.png`).
    """
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    from ..plotting import load_figure_data

    out = Path(out)
    d = load_figure_data(out)
    target, eps = d["target"], d["eps"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), layout="constrained")
    ax = axes[0]
    ax.plot(d["budget"], d["time_any"], "o-", color="C0", ms=11, mfc="none", label="designed proxy")
    ax.plot(d["budget"], d["time_order"], "x--", color="C1", ms=7, label="designed, order-preserving")
    ax.axhline(d["reference_time"], color="black", lw=1, ls=":", label="true reward")
    ax.set(xscale="log", yscale="log", xlabel="L-inf budget around the true reward",
           ylabel=f"flow time to true reward {target:g}", title="(i, ii) the fastest proxy within a budget")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(0.0, -0.16), ncol=3, borderaxespad=0)

    ax = axes[1]
    acc, time_, label = d["accuracy"], d["time"], d["label"]
    rng = np.random.default_rng(0)
    jitter = (rng.random(acc.size) - 0.5) * 0.02
    finite = np.isfinite(time_)
    for k, name in enumerate(LABELS):
        sel = (label == k) & finite
        ax.scatter(acc[sel] + jitter[sel], time_[sel], s=6, color=LABEL_COLORS[name], alpha=0.5, lw=0)
    ax.scatter([d["designed"][0]], [d["designed"][1]], marker="*", s=220, color="C0", edgecolor="black", zorder=3)
    ax.axhline(d["random_reference_time"], color="black", lw=1, ls=":")
    ax.set(yscale="log", xlabel="ranking accuracy (Acc) of the proxy", ylabel=f"flow time to true reward {target:g}",
           title=f"(i) time against accuracy: {acc.size} random proxies within L-inf {eps:g}")
    ax.grid(alpha=0.3)
    handles = [Line2D([], [], marker="o", ls="", color=LABEL_COLORS[n], label=f"random, {n}") for n in LABELS]
    handles += [Line2D([], [], marker="*", ls="", ms=12, color="C0", markeredgecolor="black", label="designed proxy"),
                Line2D([], [], color="black", lw=1, ls=":", label="true reward")]
    ax.legend(handles=handles, fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    front = out / "proxy_design_front.png"
    save_figure(fig, front, dpi=120)

    # (iii) the learned credit per partial pattern, averaged over the partial patterns.
    p_success, p_partial, values = np.atleast_1d(d["p_success"]), np.atleast_1d(d["p_partial"]), d["credit"]
    rec = np.array(d["recommend"]).reshape(values.shape)
    fig, ax = plt.subplots(figsize=(6.4, 4.8), layout="constrained")
    lim = max(1e-9, float(np.max(np.abs(values))))
    im = ax.imshow(values, cmap="RdBu", vmin=-lim, vmax=lim, origin="lower", aspect="auto")
    for i in range(len(p_success)):
        for j in range(len(p_partial)):
            ax.text(j, i, f"{values[i, j]:+.2f}\n{rec[i, j]}", ha="center", va="center", fontsize="small",
                    color="white" if abs(values[i, j]) > 0.6 * lim else "black")
    ax.set_xticks(range(len(p_partial)), [f"{x:g}" for x in p_partial])
    ax.set_yticks(range(len(p_success)), [f"{x:g}" for x in p_success])
    ax.set(xlabel="initial probability of each partial pattern", ylabel="initial success probability",
           title="(iii) designed credit for partially correct outputs\n(cell text: credit; recommend's choice)")
    fig.colorbar(im, ax=ax, label="designed credit per partial pattern (binary: 0)")
    credit = out / "proxy_design_credit.png"
    save_figure(fig, credit, dpi=120)
    return [front, credit]
