"""The `token-credit` study: stalling at the token level.

Sequences of `length` tokens from a vocabulary of `vocab`: one best sequence y*, one
mediocre sequence y_med, every other sequence bad. The initial sequence distribution is a
bigram Markov chain, so that three parameterisations start from the same distribution: a
flat softmax over the sequences, a per-prefix table and shared bigram parameters. Two
scenarios (y_med apart from y*, y_med sharing y*'s first token) are trained by the exact
flow on the true reward and on the proxy that demotes y_med; the canonical errors are
categorised and a map over the proxy rewards of y_med and y* is drawn.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .. import perturb
from .._analysis.categorize import _predict, classify, initial_rate
from .._engine.names import make_method
from .._engine.objective import Regularization
from .._engine.solve import SaveAt, Solution, solve
from .._engine.status import OK_CODE, status_code
from .._engine.tracking import StallCriteria
from .._util import progress as _progress
from .._util.results import save_figure
from ..policies import Autoregressive, TabularSoftmax
from ._base import StudyConfig, all_of, key, nonempty, positive, probability
from ._common import LABEL_COLORS, fmt, label_code, list_files, say, table, write_csv

NAME = "token-credit"
SUMMARY = ("stalling at the token level: flat softmax vs per-prefix table vs shared bigram parameters from the "
           "same initial sequence distribution")

PARAMETERISATIONS = ("flat", "prefix", "bigram")
SCENARIOS = ("separate", "shared")
TOLERANCE, REWARD_TOLERANCE = 0.05, 1e-3  # gf.categorize's defaults


@dataclass(frozen=True, kw_only=True)
class Problem:
    vocab: int = key(positive)
    length: int = key(positive)
    best: tuple[int, ...] = key(nonempty)
    best_reward: float = key()
    mediocre_reward: float = key()
    other_reward: float = key()


@dataclass(frozen=True, kw_only=True)
class Scenario:
    """Where y_med is, and the bigram chain of the initial distribution: first-token
    probabilities `start` and the row-major `transition[a, b] = P(b | a)`."""

    mediocre: tuple[int, ...] = key(nonempty)
    start: tuple[float, ...] = key(all_of(nonempty, probability))
    transition: tuple[float, ...] = key(all_of(nonempty, probability))


@dataclass(frozen=True, kw_only=True)
class Flow:
    t1: float = key(positive)


@dataclass(frozen=True, kw_only=True)
class Analysis:
    target: float = key()
    error_shift: float = key(positive)
    map_points: int = key(positive)
    error_sequences: int = key(positive)


@dataclass(frozen=True, kw_only=True)
class Config(StudyConfig):
    problem: Problem
    separate: Scenario
    shared: Scenario
    flow: Flow
    analysis: Analysis

    def __post_init__(self):
        prob = self.problem
        vocab, length = prob.vocab, prob.length
        if vocab < 2 or vocab**length > 4096:
            raise ValueError(f"config: `problem.vocab`**`problem.length` must be between 4 and 4096 sequences "
                             f"(vocab >= 2); got {vocab}^{length}.")
        seqs = {"problem.best": prob.best} | {f"{s}.mediocre": getattr(self, s).mediocre for s in SCENARIOS}
        for name, seq in seqs.items():
            if len(seq) != length or not all(0 <= t < vocab for t in seq):
                raise ValueError(f"config key `{name}`: expected {length} tokens in [0, {vocab}); got {list(seq)}.")
        for s in SCENARIOS:
            sc = getattr(self, s)
            if sc.mediocre == prob.best:
                raise ValueError(f"config key `{s}.mediocre`: must differ from `problem.best`.")
            start, trans = np.array(sc.start), np.array(sc.transition)
            if start.size != vocab or abs(start.sum() - 1) > 1e-6:
                raise ValueError(f"config key `{s}.start`: expected {vocab} probabilities summing to 1; got "
                                 f"{start.tolist()}.")
            if trans.size != vocab * vocab or np.any(np.abs(trans.reshape(vocab, vocab).sum(1) - 1) > 1e-6):
                raise ValueError(f"config key `{s}.transition`: expected a {vocab}x{vocab} row-major matrix whose "
                                 f"rows sum to 1; got {trans.tolist()}.")
        target = self.analysis.target
        lo, hi = min(prob.other_reward, prob.mediocre_reward), prob.best_reward
        if not lo < target < hi:
            raise ValueError(f"config key `analysis.target`: expected a level in ({lo:g}, {hi:g}) (between the "
                             f"worst reward and the best); got {target}.")


@dataclass(frozen=True)
class Tables:
    """`rows`: one per scenario x parameterisation (`summary.csv`); `maps`: the label of
    every proxy of the map, per `(scenario, parameterisation)`, shape `(map_points,
    map_points)` (`map.csv`); `solutions`: the runs trained on the true reward and on the
    demoting proxy, per `(scenario, parameterisation, "true" | "proxy")`; `med_values`,
    `best_values`: the map's axes; `runs`: how many runs were solved; `seconds`: the time
    they took (compilation included)."""

    rows: list[dict]
    maps: dict[tuple, np.ndarray]
    solutions: dict[tuple, Solution]
    med_values: np.ndarray
    best_values: np.ndarray
    runs: int
    seconds: float


@eqx.filter_jit
def _token_runs(policy, params, rewards, trues, ts, target):
    """The exact flow from each `params` on each reward, tracking its true reward (the
    trajectory on `ts`, the time to `target`, the longest stall), and the instantaneous
    rate `dV_G/dt` at `t = 0`."""

    def one(p, r, g):
        start = policy.with_params(p)
        sol = solve(start, reward=r, true_reward=g, method=make_method("flow"), t1=ts[-1], saveat=SaveAt(ts=ts),
                    targets=(target,), stall=StallCriteria(target=target))
        rate, _ = initial_rate(start, r[None], g[None], Regularization())
        return sol, rate

    return jax.vmap(one)(params, rewards, trues)


def _index(tokens, vocab: int) -> int:
    return int(sum(t * vocab ** (len(tokens) - 1 - i) for i, t in enumerate(tokens)))


def bigram_theta(start: np.ndarray, transition: np.ndarray) -> np.ndarray:
    """The bigram parameters (see `Autoregressive.builtin_features("bigram")`) of the
    Markov chain with first-token probabilities `start` and `transition[a, b] = P(b | a)`."""
    vocab = start.size
    theta = np.zeros((vocab + 1) * vocab)
    theta[: vocab * vocab] = np.log(transition).reshape(-1)
    theta[vocab * vocab :] = np.log(start)
    return theta


def token_policies(vocab: int, length: int, start, transition) -> dict[str, object]:
    """The same initial sequence distribution (a bigram Markov chain) under the three
    parameterisations: `flat` (a softmax over the sequences), `prefix` (a table per
    prefix) and `bigram` (shared bigram parameters)."""
    theta = bigram_theta(np.asarray(start), np.asarray(transition).reshape(vocab, vocab))
    bigram = Autoregressive.shared(vocab, length, "bigram", jnp.asarray(theta, jnp.float32))
    probs = bigram.probs()[0]
    return {
        "flat": TabularSoftmax.from_probs(probs),
        "prefix": Autoregressive.from_sequence_probs(probs, vocab=vocab, length=length),
        "bigram": bigram,
    }


def compute(config: Config) -> Tables:
    prob, an = config.problem, config.analysis
    vocab, length = prob.vocab, prob.length
    t1, points, n_err = config.flow.t1, an.map_points, an.error_sequences
    target, shift = an.target, an.error_shift
    best = _index(prob.best, vocab)
    n = vocab**length
    med_values = np.linspace(prob.other_reward, prob.best_reward + 0.4, points)
    best_values = np.linspace(prob.mediocre_reward - 0.6, prob.best_reward + 1.0, points)

    start_clock = time.perf_counter()
    # Per scenario: the three policies and the rewards trained on: the true reward (the
    # reference), the demotion of y_med, the canonical errors (the reward of y*, y_med and
    # the most likely other sequences moved by -shift and +shift) and the map's grid.
    setups = {}
    for scen in _progress.each(SCENARIOS, "token-credit: policies and rewards of each scenario", unit="scenario"):
        sc = getattr(config, scen)
        med = _index(sc.mediocre, vocab)
        r_true = np.full(n, prob.other_reward)
        r_true[best], r_true[med] = prob.best_reward, prob.mediocre_reward
        r_true = jnp.asarray(r_true, jnp.float32)
        policies = token_policies(vocab, length, sc.start, sc.transition)
        likely = np.argsort(-np.asarray(policies["flat"].probs()[0]), kind="stable")
        chosen = ([best, med] + [int(i) for i in likely if i not in (best, med)])[: max(2, min(n_err, n))]
        bump = jnp.zeros((len(chosen), n)).at[jnp.arange(len(chosen)), jnp.asarray(chosen)].set(shift)
        rewards = jnp.concatenate([
            r_true[None], r_true.at[med].set(prob.other_reward)[None], r_true[None] - bump, r_true[None] + bump,
            perturb.grid_2d(r_true, (med, best), med_values, best_values),
        ])
        setups[scen] = (med, r_true, policies, rewards, 2 * len(chosen))
    ts = jnp.concatenate([jnp.zeros(1), jnp.geomspace(1e-2, t1, 300)]).at[-1].set(t1)

    rows, runs, maps = [], {}, {}
    for name in PARAMETERISATIONS:
        # One compiled, vmapped call per parameterisation for both scenarios and every reward.
        params = jax.tree.map(lambda *x: jnp.concatenate(x), *[
            jax.tree.map(lambda a, k=setups[s][3].shape[0]: jnp.broadcast_to(a, (k,) + a.shape),
                         setups[s][2][name].params) for s in SCENARIOS])
        rewards = jnp.concatenate([setups[s][3] for s in SCENARIOS])
        trues = jnp.concatenate([jnp.broadcast_to(setups[s][1], setups[s][3].shape) for s in SCENARIOS])
        with _progress.phase(f"token-credit: {name}, {rewards.shape[0]} runs (compilation included)"):
            sols, rates = jax.block_until_ready(
                _token_runs(setups[SCENARIOS[0]][2][name], params, rewards, trues, ts, target))
        first = 0
        for scen in SCENARIOS:
            med, _, policies, rewards_s, n_canon = setups[scen]
            block = jax.tree.map(lambda a, lo=first, hi=first + rewards_s.shape[0]: np.asarray(a[lo:hi]), (sols, rates))
            first += rewards_s.shape[0]
            sol, rate = block
            t, final = sol.target_times[:, 0], sol.true_reward[:, -1]
            label, _ = classify(t[1:], t[0], final[1:], final[0], np.asarray(status_code(sol.status))[1:] != OK_CODE,
                                TOLERANCE, REWARD_TOLERANCE)
            predicted = _predict(rate[1:], float(rate[0]), TOLERANCE)
            runs[(scen, name, "true")], runs[(scen, name, "proxy")] = (
                jax.tree.map(lambda a, i=i: a[i], sol) for i in (0, 1))
            canon = slice(1, 1 + n_canon)
            labels, ok = label[canon], label[canon] != "failed"
            p0 = np.asarray(policies[name].probs()[0])
            rows.append({
                "scenario": scen,
                "parameterisation": name,
                "p_best_initial": float(p0[best]),
                "p_mediocre_initial": float(p0[med]),
                "stalls": bool(np.isfinite(sol.stall.duration[0])),
                "stall_level": float(sol.stall.level[0]),
                "stall_start": float(sol.stall.start[0]),
                "stall_duration": float(sol.stall.duration[0]),
                f"time_to_{target:g}_true": float(t[0]),
                f"time_to_{target:g}_demote": float(t[1]),
                "demote_label": str(label[0]),
                "harmful": int(np.sum(labels == "harmful")),
                "benign": int(np.sum(labels == "benign")),
                "beneficial": int(np.sum(labels == "beneficial")),
                "failed": int(np.sum(~ok)),
                "agreement": float(np.mean(predicted[canon][ok] == labels[ok])) if ok.any() else math.nan,
            })
            maps[(scen, name)] = label[1 + n_canon:].reshape(points, points)
    rows.sort(key=lambda r: SCENARIOS.index(r["scenario"]))  # stable: parameterisations in order
    n_runs = sum(len(setups[s][3]) for s in SCENARIOS) * len(PARAMETERISATIONS)
    return Tables(rows, maps, runs, med_values, best_values, n_runs, time.perf_counter() - start_clock)


def report(tables: Tables, config: Config, out: Path) -> list[Path]:
    from ..plotting import save_figure_data

    prob, an, rows, maps, runs = config.problem, config.analysis, tables.rows, tables.maps, tables.solutions
    vocab, length = prob.vocab, prob.length
    n, target, shift, n_err = vocab**length, an.target, an.error_shift, an.error_sequences
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "summary.csv", rows)
    write_csv(out / "map.csv", [
        {"scenario": scen, "parameterisation": name, "proxy_reward_mediocre": float(a),
         "proxy_reward_best": float(b), "label": str(labels[i, j])}
        for (scen, name), labels in maps.items()
        for i, a in enumerate(tables.med_values) for j, b in enumerate(tables.best_values)
    ])
    tt, td = f"time_to_{target:g}_true", f"time_to_{target:g}_demote"
    shown = [{**r, "stalls": "yes" if r["stalls"] else "no", "stall_level": fmt(r["stall_level"]),
              "stall_duration": fmt(r["stall_duration"]), tt: fmt(r[tt]), td: fmt(r[td]),
              "p_best_initial": f"{r['p_best_initial']:.3f}", "p_mediocre_initial": f"{r['p_mediocre_initial']:.3f}",
              "agreement": f"{r['agreement']:.2f}",
              "counts": f"{r['harmful']}/{r['benign']}/{r['beneficial']}"} for r in rows]
    columns = [("scenario", "scenario"), ("parameterisation", "param."), ("p_best_initial", "p(y*)"),
               ("p_mediocre_initial", "p(y_med)"), ("stall_level", "stall\nlevel"),
               ("stall_duration", "stall\nlength"), (tt, f"t({target:g})\ntrue"), (td, f"t({target:g})\ndemote"),
               ("demote_label", "demotion\nis"), ("counts", "harm/\nbenign/\nbenef."), ("agreement", "lens\nagrees")]
    say(f"Token credit: vocab {vocab}, length {length} ({n} sequences); y* = {list(prob.best)} "
        f"(reward {prob.best_reward:g}), y_med = {list(config.separate.mediocre)} (separate) or "
        f"{list(config.shared.mediocre)} (shared prefix) at {prob.mediocre_reward:g}, others "
        f"{prob.other_reward:g}; exact flow to t = {config.flow.t1:g}{' (quick)' if config.quick else ''}.")
    say("The same initial sequence distribution under each parameterisation; canonical errors: the "
        f"reward of y*, y_med and the most likely sequences ({min(max(2, n_err), n)} in all) moved by "
        f"+-{shift:g}.")
    print(table(shown, columns, keys=2))
    say(f"Stall: on the true reward (n/a: none; column `stalls` in summary.csv). t({target:g}): time to true "
        f"reward {target:g}, trained on the true reward and on y_med demoted. harm/benign/benef.: how many "
        "canonical errors get each label; lens agrees: the fraction that the instantaneous lens (the rate at "
        "t = 0) labels alike.")

    save_figure_data(out, {
        "study": "token-credit", "target": target, "best_reward": prob.best_reward,
        "mediocre_reward": prob.mediocre_reward, "best_values": np.asarray(tables.best_values),
        "med_values": np.asarray(tables.med_values),
        "runs": {scen: {name: {kind: {"time": np.asarray(runs[(scen, name, kind)].ts),
                                      "true_reward": np.asarray(runs[(scen, name, kind)].true_reward)}
                               for kind in ("true", "proxy")} for name in PARAMETERISATIONS} for scen in SCENARIOS},
        "maps": {scen: {name: label_code(maps[(scen, name)]) for name in PARAMETERISATIONS} for scen in SCENARIOS},
    })
    with _progress.phase("token-credit: figures"):
        figures = plot(out)
    print(f"Solved {tables.runs} runs in {tables.seconds:.1f} s (compilation included).")
    list_files(out, [out / "summary.csv", out / "map.csv", *figures])
    return figures


def plot(out: Path) -> list[Path]:
    """Draw the token-credit figures from the data saved in `out`.

    **Arguments:**

    - `out`: the study's result folder (with `figures.npz`).

    **Returns:** the paths of the figures written (`true_reward.png`, `categorization_map.png`).
    """
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    from ..plotting import load_figure_data

    out = Path(out)
    d = load_figure_data(out)
    target = d["target"]
    colors = {"flat": "C0", "prefix": "C1", "bigram": "C2"}
    # The three parameterisations can coincide: wide pale lines under narrower ones.
    widths = {"flat": 3.6, "prefix": 2.2, "bigram": 1.2}
    fig, axes = plt.subplots(1, len(SCENARIOS), figsize=(12, 4.8), layout="constrained", sharey=True)
    for ax, scen in zip(axes, SCENARIOS, strict=True):
        for name in PARAMETERISATIONS:
            for kind, ls in (("true", "-"), ("proxy", "--")):
                run = d["runs"][scen][name][kind]
                t, vals = run["time"], run["true_reward"]
                keep = t > 0
                label = f"{name}, trained on {'true reward' if kind == 'true' else 'demoting proxy'}"
                ax.plot(t[keep], vals[keep], ls=ls, color=colors[name], lw=widths[name],
                        alpha=0.85 if name != "bigram" else 1.0, label=label)
        ax.axhline(target, color="grey", lw=0.8, ls=":", label=f"target {target:g}")
        ax.set(xscale="log", xlabel="flow time",
               title=f"y_med {'shares a prefix with' if scen == 'shared' else 'apart from'} y*")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("expected true reward")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncol=4, fontsize="small")
    fig.suptitle("Token-level stalling: true reward vs time under three parameterisations")
    paths = [out / "true_reward.png"]
    save_figure(fig, paths[0], dpi=120)

    cmap = ListedColormap(list(LABEL_COLORS.values()))
    fig, axes = plt.subplots(len(SCENARIOS), 3, figsize=(12, 7.5), layout="constrained", sharex=True, sharey=True)
    for i, scen in enumerate(SCENARIOS):
        for j, name in enumerate(PARAMETERISATIONS):
            ax = axes[i, j]
            ax.pcolormesh(d["best_values"], d["med_values"], d["maps"][scen][name], cmap=cmap, vmin=-0.5,
                          vmax=len(LABEL_COLORS) - 0.5, shading="nearest")
            ax.plot(d["best_reward"], d["mediocre_reward"], marker="*", color="gold", mec="black", ms=14, ls="none")
            ax.set_title(f"{name}, y_med {'shared prefix' if scen == 'shared' else 'apart'}", fontsize="medium")
            if i == len(SCENARIOS) - 1:
                ax.set_xlabel("proxy reward of y*")
            if j == 0:
                ax.set_ylabel("proxy reward of y_med")
    handles = [Patch(color=c, label=k) for k, c in LABEL_COLORS.items()]
    handles.append(plt.Line2D([], [], marker="*", color="gold", mec="black", ls="none", ms=14, label="the true reward"))
    fig.legend(handles=handles, loc="outside lower center", ncol=5, fontsize="small")
    fig.suptitle(f"Categorisation of proxy rewards (time to true reward {target:g}, exact flow)")
    paths.append(out / "categorization_map.png")
    save_figure(fig, paths[1], dpi=120)
    return paths
