"""The `neural-policy` study: an MLP policy over random features on the stalling problem.

The MLP (depth x width, smooth activation) maps random feature vectors of the outputs to
scores; it is first fitted (Adam on KL) so that it starts from `initial_probs`, the same
distribution as the tabular policy. Both are trained by the exact flow on the true reward
and on canonical proxy errors, and each error is categorised (time to target against
training on the true reward).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from .._analysis.categorize import Categorization, categorize
from .._engine.names import make_method
from .._engine.solve import SaveAt, Solution, solve
from .._engine.tracking import StallCriteria
from .._util import progress as _progress
from .._util.results import save_figure
from ..policies import NeuralPolicy, TabularSoftmax
from ._base import StudyConfig, all_of, key, nonempty, one_of, positive, probability
from ._common import (
    LABEL_COLORS,
    check_initial_probs,
    fmt,
    label_code,
    list_files,
    say,
    table,
    write_csv,
)

NAME = "neural-policy"
SUMMARY = ("an MLP policy over random features on the stalling problem: are the canonical errors categorised as "
           "under the tabular policy?")

ACTIVATIONS = {"tanh": jnp.tanh, "softplus": jax.nn.softplus, "gelu": jax.nn.gelu, "silu": jax.nn.silu}


@dataclass(frozen=True, kw_only=True)
class Problem:
    initial_probs: tuple[float, ...] = key(all_of(nonempty, probability))
    true_reward: tuple[float, ...] = key(nonempty)


@dataclass(frozen=True, kw_only=True)
class Model:
    feature_dim: int = key(positive)
    width: int = key(positive)
    depth: int = key(positive)
    activation: str = key(one_of(*ACTIVATIONS))
    seed: int = key(default=0)
    fit_steps: int = key(positive)


@dataclass(frozen=True, kw_only=True)
class Flow:
    t1: float = key(positive)


@dataclass(frozen=True, kw_only=True)
class Analysis:
    target: float = key()
    error_shift: float = key(positive)


@dataclass(frozen=True, kw_only=True)
class Config(StudyConfig):
    problem: Problem
    model: Model
    flow: Flow
    analysis: Analysis

    def __post_init__(self):
        check_initial_probs(self.problem.initial_probs, self.problem.true_reward)
        r_true = np.array(self.problem.true_reward)
        target = self.analysis.target
        if not r_true.min() < target < r_true.max():
            raise ValueError(f"config key `analysis.target`: expected a level in ({r_true.min():g}, "
                             f"{r_true.max():g}); got {target}.")


@dataclass(frozen=True)
class Tables:
    """`rows`: one per canonical error, its label under each policy (`summary.csv`);
    `categorizations`: the [`gradflow.Categorization`][] of each policy (`"tabular"`,
    `"neural"`); `solutions`: the runs trained on the true reward and on the proxy that
    demotes y_med, per `(policy, "true" | "demote")`; `fit_residual`: the total-variation
    distance of the fitted MLP policy from `initial_probs`; `seconds`: the time the fit
    and the runs took (compilation included)."""

    rows: list[dict]
    categorizations: dict[str, Categorization]
    solutions: dict[tuple, Solution]
    fit_residual: float
    seconds: float


def fit_neural_policy(model, features, probs, steps: int) -> tuple[NeuralPolicy, float]:
    """Train `model` (Adam on `KL(probs || pi)`) so that the neural policy starts from
    `probs`; returns the policy and its total-variation distance from `probs`."""
    policy = NeuralPolicy(model, features)
    target = jnp.asarray(probs)[None]
    opt = optax.adam(1e-2)

    def loss(params):
        logp = policy.with_params(params).log_probs()
        return jnp.sum(target * (jnp.log(target) - logp))

    @jax.jit
    def fit(params):
        def step(carry, _):
            params, state = carry
            updates, state = opt.update(jax.grad(loss)(params), state, params)
            return (optax.apply_updates(params, updates), state), None

        return jax.lax.scan(step, (params, opt.init(params)), None, length=steps)[0][0]

    fitted = policy.with_params(fit(policy.params))
    return fitted, float(0.5 * jnp.sum(jnp.abs(fitted.probs() - target)))


def canonical_errors(r_true: np.ndarray, shift: float, best: int, mediocre: int) -> dict[str, np.ndarray]:
    """Named proxy rewards of the stalling problem: the classic errors and every output's
    reward moved by `-shift` and `+shift`."""
    k = r_true.size
    lowest = float(r_true.min())
    errors = {
        "demote y_med": r_true.copy(),
        "swap y* and y_med": r_true.copy(),
        "demote y*": r_true.copy(),
        "promote a bad output": r_true.copy(),
    }
    errors["demote y_med"][mediocre] = lowest
    errors["swap y* and y_med"][[best, mediocre]] = r_true[[mediocre, best]]
    errors["demote y*"][best] = r_true[mediocre] - shift
    bad = next(i for i in range(k) if i not in (best, mediocre))
    errors["promote a bad output"][bad] = r_true[mediocre]
    for i in range(k):
        for sign in (-1, 1):
            r = r_true.copy()
            r[i] += sign * shift
            errors[f"output {i} {'+' if sign > 0 else '-'}{shift:g}"] = r
    return errors


def _trajectory(policy, reward, true_reward, t1, target) -> Solution:
    ts = jnp.concatenate([jnp.zeros(1), jnp.geomspace(1e-2, t1, 300)])
    ts = ts.at[-1].set(t1)
    return solve(policy, reward=reward, true_reward=true_reward, method=make_method("flow"), t1=t1,
                 saveat=SaveAt(ts=ts), targets=(target,), stall=StallCriteria(target=target))


def compute(config: Config) -> Tables:
    prob, mc, an = config.problem, config.model, config.analysis
    probs, r_true = np.array(prob.initial_probs), np.array(prob.true_reward)
    k = probs.size
    target, t1 = an.target, config.flow.t1
    best = int(np.argmax(r_true))
    mediocre = int(np.argsort(-r_true, kind="stable")[1])
    key_feat, key_model = jax.random.split(jax.random.key(mc.seed))
    features = jax.random.normal(key_feat, (k, mc.feature_dim))
    model = eqx.nn.MLP(mc.feature_dim, "scalar", mc.width, mc.depth, activation=ACTIVATIONS[mc.activation],
                       key=key_model)

    start = time.perf_counter()
    with _progress.phase(f"neural-policy: fitting the MLP, {mc.fit_steps} Adam steps (compilation included)"):
        neural, residual = fit_neural_policy(model, features, probs, mc.fit_steps)
    policies = {"tabular": TabularSoftmax.from_probs(jnp.asarray(probs)), "neural": neural}
    errors = canonical_errors(r_true, an.error_shift, best, mediocre)
    proxies = jnp.asarray(np.stack(list(errors.values())), jnp.float32)
    rt = jnp.asarray(r_true, jnp.float32)
    cats, runs = {}, {}
    for name, policy in policies.items():
        with _progress.phase(f"neural-policy: {name} policy, {len(errors) + 3} runs (compilation included)"):
            cats[name] = categorize(policy, rt, proxies, method=make_method("flow"), t1=t1, target=target)
            runs[(name, "true")] = _trajectory(policy, rt, rt, t1, target)
            runs[(name, "demote")] = jax.block_until_ready(_trajectory(policy, proxies[0], rt, t1, target))
    elapsed = time.perf_counter() - start

    rows = []
    for i, err in enumerate(errors):
        row = {"error": err}
        for name, cat in cats.items():
            row[f"{name}_label"] = str(cat.label[i])
            row[f"{name}_time_ratio"] = float(cat.time_ratio[i])
            row[f"{name}_predicted"] = str(cat.predicted[i])
        row["same_label"] = row["tabular_label"] == row["neural_label"]
        rows.append(row)
    return Tables(rows, cats, runs, residual, elapsed)


def report(tables: Tables, config: Config, out: Path) -> list[Path]:
    from ..plotting import save_figure_data

    mc, rows, cats, runs = config.model, tables.rows, tables.categorizations, tables.solutions
    probs, target = np.array(config.problem.initial_probs), config.analysis.target
    same = sum(r["same_label"] for r in rows)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "summary.csv", rows)
    shown = [{**r, "tabular_time_ratio": fmt(r["tabular_time_ratio"]), "neural_time_ratio": fmt(r["neural_time_ratio"]),
              "same_label": "yes" if r["same_label"] else "NO"} for r in rows]
    columns = [("error", "error"), ("tabular_label", "tabular"), ("tabular_time_ratio", "ratio"),
               ("neural_label", "neural"), ("neural_time_ratio", "ratio"), ("neural_predicted", "neural lens"),
               ("same_label", "same")]
    say(f"Neural policy: an MLP ({mc.depth} x {mc.width}, {mc.activation}) over random "
        f"{mc.feature_dim}-d features, fitted to the initial probabilities {probs.tolist()} (total variation "
        f"{tables.fit_residual:.1e}); exact flow to t = {config.flow.t1:g}{' (quick)' if config.quick else ''}, "
        f"time to true reward {target:g}.")
    print(table(shown, columns))
    ref = {name: cat.reference_time for name, cat in cats.items()}
    say(f"Trained on the true reward, time to {target:g}: tabular {fmt(ref['tabular'])}, neural {fmt(ref['neural'])}. "
        f"{same} of {len(rows)} canonical errors get the same label under both policies; the instantaneous lens "
        f"agrees with the neural policy's labels on {cats['neural'].agreement:.0%} of them.")

    save_figure_data(out, {
        "study": "neural-policy", "target": target, "policies": list(cats), "errors": [r["error"] for r in rows],
        "labels": np.stack([label_code(np.array([r[f"{name}_label"] for r in rows])) for name in cats], axis=1),
        "runs": {name: {kind: {"time": np.asarray(runs[(name, kind)].ts),
                               "true_reward": np.asarray(runs[(name, kind)].true_reward)}
                        for kind in ("true", "demote")} for name in cats},
    })
    with _progress.phase("neural-policy: figures"):
        figures = plot(out)
    print(f"Solved {2 * (len(rows) + 3)} runs in {tables.seconds:.1f} s (compilation and the fit included).")
    list_files(out, [out / "summary.csv", *figures])
    return figures


def plot(out: Path) -> list[Path]:
    """Draw the neural-policy figure from the data saved in `out`.

    **Arguments:**

    - `out`: the study's result folder (with `figures.npz`).

    **Returns:** the paths of the figures written (`neural_policy.png`).
    """
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    from ..plotting import load_figure_data

    out = Path(out)
    d = load_figure_data(out)
    target, policies, errors, grid = d["target"], list(d["policies"]), list(d["errors"]), d["labels"]
    same = int(np.sum(np.all(grid == grid[:, :1], axis=1)))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), layout="constrained")
    for name in policies:
        for kind in ("true", "demote"):
            run = d["runs"][name][kind]
            keep = run["time"] > 0
            axes[0].plot(run["time"][keep], run["true_reward"][keep], color="C0" if name == "tabular" else "C1",
                         ls="-" if kind == "true" else "--", lw=1.6,
                         label=f"{name}, trained on {'true reward' if kind == 'true' else 'proxy demoting y_med'}")
    axes[0].axhline(target, color="grey", lw=0.8, ls=":", label=f"target {target:g}")
    axes[0].set(xscale="log", xlabel="flow time", ylabel="expected true reward", title="true reward vs time")
    axes[0].grid(alpha=0.3)
    axes[0].legend(fontsize="small", loc="upper left", bbox_to_anchor=(0.0, -0.14), ncol=2, borderaxespad=0)
    axes[1].imshow(grid, cmap=ListedColormap(list(LABEL_COLORS.values())), vmin=-0.5,
                   vmax=len(LABEL_COLORS) - 0.5, aspect="auto")
    axes[1].set_xticks(range(len(policies)), [f"{name} policy" for name in policies])
    axes[1].set_yticks(range(len(errors)), errors, fontsize="small")
    axes[1].set_xlabel("policy")
    axes[1].set_ylabel("canonical reward error")
    axes[1].set_title(f"label of each error ({same} of {len(errors)} the same)")
    axes[1].legend(handles=[Patch(color=c, label=k) for k, c in LABEL_COLORS.items()], fontsize="small",
                   loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    fig.suptitle("Does an MLP policy categorise reward errors as the tabular policy does?")
    figures = [out / "neural_policy.png"]
    save_figure(fig, figures[0], dpi=120)
    return figures
