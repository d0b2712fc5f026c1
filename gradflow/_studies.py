"""Studies: each scientific claim is one command, `gradflow study <name>`.

A study is a function `run(config, out, quick) -> dict` plus the schema of its TOML
config (shipped in `gradflow/experiments/<name>.toml`, mirrored in the repository's
`experiments/`). Register new studies in `STUDIES`.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from . import (
    _config as C,
    _progress,
    _studies_design as SD,
    _studies_policies as SP,
    _studies_proxy as SX,
    _studies_rm as RM,
    _studies_sampled as S,
)
from ._analysis import StallCriteria, time_to_reward
from ._dynamics import GradientAscent, GradientFlow
from ._results import save_figure
from ._solve import SaveAt, Solution, solve
from ._status import status_name
from ._study_utils import Study, fmt, list_files, say, stalling_probs, table, write_csv
from ._sweeps import SWEEP_SCHEMA, plot_dir, run_sweep
from .policies import TabularSoftmax

# --------------------------------------------------------------------------- stalling

STALLING_SCHEMA = {
    "problem": {
        "true_reward": C.Field("floats", C.nonempty),
        "proxy_reward": C.Field("floats", C.nonempty),
        "p_best": C.Field("floats", lambda x: C.nonempty(x) or C.probability(x)),
        "p_mediocre": C.Field("float", C.probability),
    },
    "flow": {
        "t1": C.Field("float", C.positive),
        "rtol": C.Field("float", C.positive),
        "atol": C.Field("float", C.positive),
    },
    "sgd": {
        "learning_rate": C.Field("float", C.positive),
        "steps": C.Field("int", C.positive),
        "record_every": C.Field("int", C.positive),
    },
    "analysis": {"targets": C.Field("floats", C.nonempty)},
    "quick": {
        "t1": C.Field("float", C.positive),
        "steps": C.Field("int", C.positive),
    },
}


def run_stalling(cfg: dict, out: Path, quick: bool) -> dict:
    from . import plotting  # matplotlib is only needed here

    prob, flow_cfg, sgd_cfg = cfg["problem"], cfg["flow"], cfg["sgd"]
    r_true, r_proxy = np.array(prob["true_reward"]), np.array(prob["proxy_reward"])
    k = len(r_true)
    if len(r_proxy) != k or k < 3:
        raise ValueError(
            "config: `problem.true_reward` and `problem.proxy_reward` must have the same length "
            f"(at least 3 outputs); got {len(r_true)} and {len(r_proxy)}."
        )
    targets = tuple(cfg["analysis"]["targets"])
    t1 = cfg["quick"]["t1"] if quick else flow_cfg["t1"]
    steps = cfg["quick"]["steps"] if quick else sgd_cfg["steps"]
    lr, every = sgd_cfg["learning_rate"], min(sgd_cfg["record_every"], steps)

    cases = [(p, name, r) for p in prob["p_best"] for name, r in (("true", r_true), ("proxy", r_proxy))]
    logits = jnp.asarray(np.stack([np.log(stalling_probs(p, prob["p_mediocre"], k)) for p, _, _ in cases]))
    rewards = jnp.asarray(np.stack([r for _, _, r in cases]))
    flow = GradientFlow(rtol=flow_cfg["rtol"], atol=flow_cfg["atol"])
    sgd = GradientAscent(optax.sgd(lr), steps)
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
        f"p(y_med) = {prob['p_mediocre']}; flow to t = {t1:g}, SGD lr {lr:g} for {steps} steps"
        f"{' (quick)' if quick else ''}.")
    print(table(shown, columns, keys=4))
    first = f"time_to_{targets[0]:g}"
    by_case = {(r["p_best"], r["trained_on"], r["method"]): r for r in rows}
    for p in prob["p_best"]:
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

    plotting.save_figure_data(out, {
        "study": "stalling", "p_best": list(prob["p_best"]), "targets": list(targets), "lr": lr,
        "runs": {f"{j}": {f"{name}": {m: plotting.Trajectory.of(runs[(p, name, m)]).to_data() for m in sols}
                          for name in ("true", "proxy")} for j, p in enumerate(prob["p_best"])},
    })
    with _progress.phase("stalling: figures"):
        figures = plot_stalling(out)
    print(f"Solved {len(rows)} runs in {elapsed:.1f} s (compilation included).")
    list_files(out, [out / "summary.csv", *figures])
    return {"rows": rows, "figures": figures, "solutions": runs}


def plot_stalling(out: Path) -> list[Path]:
    """Draw the stalling study's figures from the data saved in `out`.

    **Arguments:**

    - `out`: the study's result folder (with `figures.npz`).

    **Returns:** the paths of the figures written (`true_reward.png`, `probs.png`).
    """
    import matplotlib.pyplot as plt

    from . import plotting

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


def run_categorization_map(cfg: dict, out: Path, quick: bool) -> dict:
    """The categorisation map: a `gradflow sweep` of its config, then the figure."""
    summary = run_sweep(cfg, out, quick)
    with _progress.phase("categorization-map: figures"):
        figures = plot_dir(out)
    list_files(out, ["summary.parquet/", *figures])
    return {**summary, "figures": figures}


STUDIES: dict[str, Study] = {
    "stalling": Study(
        "stalling",
        "training on the true reward stalls on a mediocre output; a wrong proxy escapes (what `gradflow demo` runs)",
        STALLING_SCHEMA,
        run_stalling,
        plot_stalling,
    ),
    "reinforce-seeds": Study(
        "reinforce-seeds",
        "the stalling study with REINFORCE over many seeds: seed bands against the exact gradient",
        S.REINFORCE_SEEDS_SCHEMA,
        S.run_reinforce_seeds,
        S.plot_reinforce_seeds,
    ),
    "estimators": Study(
        "estimators",
        "REINFORCE, RLOO, GRPO and PPO on the stalling problem at equal sample budget",
        S.ESTIMATORS_SCHEMA,
        S.run_estimators,
        S.plot_estimators,
    ),
    "categorization-map": Study(
        "categorization-map",
        "stalling problem, 201 x 201 grid over two proxy rewards: harmful / benign / beneficial regions",
        SWEEP_SCHEMA,
        run_categorization_map,
        plot_dir,
    ),
    "partial-credit": Study(
        "partial-credit",
        "reward design: partial vs binary credit (phase diagram over initial success and partial-pattern "
        "probability; flow, RLOO, GRPO; tabular and log-linear)",
        SD.PARTIAL_CREDIT_SCHEMA,
        SD.run_partial_credit,
        SD.plot_partial_credit,
    ),
    "rm-metrics": Study(
        "rm-metrics",
        "which reward-model metric (accuracy, harm-aware, weighted, one-vs-many, teacher scores) predicts "
        "the true-reward gain of policy gradient, over 896 proxy rewards",
        RM.RM_METRICS_SCHEMA,
        RM.run_rm_metrics,
        RM.plot_rm_metrics,
    ),
    "feature-similarity": Study(
        "feature-similarity",
        "log-linear policy: how the feature similarity of y* and y_med decides the stall",
        S.FEATURE_SIMILARITY_SCHEMA,
        S.run_feature_similarity,
        S.plot_feature_similarity,
    ),
    "token-credit": Study(
        "token-credit",
        "stalling at the token level: flat softmax vs per-prefix table vs shared bigram parameters from the "
        "same initial sequence distribution",
        SP.TOKEN_CREDIT_SCHEMA,
        SP.run_token_credit,
        SP.plot_token_credit,
    ),
    "neural-policy": Study(
        "neural-policy",
        "an MLP policy over random features on the stalling problem: are the canonical errors categorised as "
        "under the tabular policy?",
        SP.NEURAL_POLICY_SCHEMA,
        SP.run_neural_policy,
        SP.plot_neural_policy,
    ),
    "proxy-design": Study(
        "proxy-design",
        "the fastest teacher within a budget: proxy rewards designed by differentiating through training, "
        "against ranking accuracy, and the learned credit for partially correct outputs",
        SX.PROXY_DESIGN_SCHEMA,
        SX.run_proxy_design,
        SX.plot_proxy_design,
    ),
}


def redraw(folder: str | Path, by: str | None = None) -> list[Path]:
    """Redraw the figures of a result folder from the data saved in it (`gradflow plot DIR`).

    **Arguments:**

    - `folder`: a study's result folder (its `run.json` says which study; a folder without
      one is recognised by the study named in its `figures.npz`) or a sweep folder (with
      `sweep.json`).
    - `by`: a sweep with trajectories: the column that groups its bands of true reward.

    **Returns:** the paths of the figures written.

    **Raises:** `ValueError` when the folder holds neither.
    """
    from ._results import read_record
    from .plotting import FIGURE_DATA, load_figure_data

    folder = Path(folder)
    record = read_record(folder) or {}
    name = record.get("name") if record.get("kind") == "study" else None
    if name is None and record.get("kind") != "sweep" and not (folder / "sweep.json").is_file() \
            and (folder / FIGURE_DATA).is_file():
        name = load_figure_data(folder).get("study")
    if name is not None:
        if by is not None:
            raise ValueError(f"`--by` is for sweeps with trajectories; {folder} holds study {name!r}.")
        study = STUDIES.get(name)
        if study is None or study.plot is None:
            raise ValueError(f"{folder} holds the results of study {name!r}, which has no figures to redraw; "
                             f"known studies: {', '.join(sorted(STUDIES))}.")
        return study.plot(folder)
    if (folder / "sweep.json").is_file():
        return plot_dir(folder, by=by)
    raise ValueError(f"{folder} holds neither a study's results (run.json) nor a sweep (sweep.json); "
                     "nothing to redraw.")


def run_study(
    name: str, out: Path | None = None, quick: bool = False, config: Path | None = None, force: bool = False
) -> dict:
    """Run study `name` from its packaged config (or `config`), writing under `out`
    (default `gradflow-results/<name>/`, or `<name>-quick/` with `quick`).

    The config is validated and `out` claimed (see `gradflow._results.result_folder`) before
    any work; the folder records the run's provenance in `run.json`.
    """
    from ._results import default_out, result_folder

    if name not in STUDIES:
        raise ValueError(f"unknown study {name!r}; available: {', '.join(sorted(STUDIES))}.")
    study = STUDIES[name]
    cfg = C.load(config if config is not None else C.packaged_config(name), study.schema)
    out = default_out(name, quick) if out is None else Path(out)
    with result_folder(out, kind="study", name=name, config=cfg, quick=quick, force=force):
        return study.run(cfg, out, quick)
