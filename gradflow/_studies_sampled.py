"""Studies of sampled and feature-based training: `reinforce-seeds`, `estimators`,
`feature-similarity` (registered in `gradflow._studies.STUDIES`)."""

from __future__ import annotations

import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from . import _config as C, _progress
from ._analysis import StallCriteria, time_to_reward
from ._dynamics import GradientAscent
from ._estimators import Reinforce
from ._results import save_figure
from ._seeds import SeedSummary, summarize_seeds
from ._solve import SaveAt, Solution, solve
from ._study_utils import fmt, list_files, make_method, say, stalling_probs, table, write_csv
from .policies import LogLinear, TabularSoftmax

_PROBLEM = {
    "true_reward": C.Field("floats", C.nonempty),
    "proxy_reward": C.Field("floats", C.nonempty),
    "p_mediocre": C.Field("float", C.probability),
}


def _rewards(prob: dict) -> tuple[np.ndarray, np.ndarray]:
    r_true, r_proxy = np.array(prob["true_reward"]), np.array(prob["proxy_reward"])
    if len(r_proxy) != len(r_true) or len(r_true) < 3:
        raise ValueError(
            "config: `problem.true_reward` and `problem.proxy_reward` must have the same length "
            f"(at least 3 outputs); got {len(r_true)} and {len(r_proxy)}."
        )
    return r_true, r_proxy


def _seed_solver(method, r_true, targets, every):
    """A jitted `(logits, reward, keys) -> batched Solution`: one compile per study."""

    @jax.jit
    def run(logits, reward, keys):
        def one(key):
            return solve(TabularSoftmax(logits), reward=reward, true_reward=r_true, method=method, key=key,
                         saveat=SaveAt(every=every), targets=targets, stall=StallCriteria(target=min(targets)))

        return jax.vmap(one)(keys)

    return run


def _exact_solver(lr, steps, r_true, targets, every):
    method = GradientAscent(optax.sgd(lr), steps)

    @jax.jit
    def run(logits, reward):
        return solve(TabularSoftmax(logits), reward=reward, true_reward=r_true, method=method,
                     saveat=SaveAt(every=every), targets=targets, stall=StallCriteria(target=min(targets)))

    return run


def _seed_row(summary: SeedSummary, exact: Solution, targets) -> dict:
    row: dict = {}
    for t in targets:
        row[f"exact_time_to_{t:g}"] = float(time_to_reward(exact, t))
    row.update(summary.row())
    half = float(summary.upper[-1] - summary.mean[-1])
    row.update(final_ci_halfwidth=half, exact_final=float(exact.final_true_reward))
    return row


def _shown(rows: list[dict], targets) -> list[dict]:
    out = []
    for r in rows:
        s = dict(r)
        for t in targets:
            s[f"exact_{t:g}"] = fmt(r[f"exact_time_to_{t:g}"])
            s[f"median_{t:g}"] = fmt(r[f"time_to_{t:g}_q0.5"])
            s[f"range_{t:g}"] = f"{fmt(r[f'time_to_{t:g}_q0.1'])}-{fmt(r[f'time_to_{t:g}_q0.9'])}"
            s[f"reached_{t:g}"] = f"{r[f'reached_{t:g}']:.1%}"
        s["stalled"] = f"{r['stalled']:.1%}"
        s["stall_duration_median"] = fmt(r["stall_duration_median"])
        s["final"] = f"{r['final_mean']:.3f} +- {r['final_ci_halfwidth']:.3f} (exact {r['exact_final']:.3f})"
        out.append(s)
    return out


def _columns(first: list[tuple[str, str]], targets) -> list[tuple[str, str]]:
    cols = list(first)
    for t in targets:
        cols += [(f"exact_{t:g}", f"to {t:g}\nexact"), (f"median_{t:g}", f"to {t:g}\nmedian"),
                 (f"range_{t:g}", f"to {t:g}\n10-90%"), (f"reached_{t:g}", f"to {t:g}\nreached")]
    return cols + [("stalled", "stalled"), ("stall_duration_median", "stall length\n(median)"),
                   ("final", "final true reward\n(mean, 95% CI)")]


SEED_COLUMNS_NOTE = ("Steps to each true-reward target: `exact` is exact-gradient SGD; `median`, `10-90%` (the "
                     "10% and 90% quantiles) and `reached` (the fraction of seeds that get there) are over the "
                     "seeds.")


def _report(out: Path, rows, shown, columns, figures, elapsed, runs, keys: int = 1, notes=()) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "summary.csv", rows)
    print(table(shown, columns, keys=keys))
    for note in notes:
        say(note)
    print(f"Solved {runs} runs in {elapsed:.1f} s (compilation included).")
    list_files(out, [out / "summary.csv", *figures])


# --------------------------------------------------------------------- reinforce-seeds

REINFORCE_SEEDS_SCHEMA = {
    "problem": {**_PROBLEM, "p_best": C.Field("floats", lambda x: C.nonempty(x) or C.probability(x))},
    "reinforce": {
        "learning_rate": C.Field("float", C.positive),
        "steps": C.Field("int", C.positive),
        "samples": C.Field("int", C.positive),
        "baseline": C.Field("str", C.one_of("none", "mean", "running")),
        "seeds": C.Field("int", C.positive),
        "seed": C.Field("int", default=0),
        "record_every": C.Field("int", C.positive),
    },
    "analysis": {"targets": C.Field("floats", C.nonempty)},
    "quick": {"steps": C.Field("int", C.positive), "seeds": C.Field("int", C.positive)},
}


def run_reinforce_seeds(cfg: dict, out: Path, quick: bool) -> dict:

    from . import plotting

    prob, rc = cfg["problem"], cfg["reinforce"]
    r_true, r_proxy = _rewards(prob)
    targets = tuple(cfg["analysis"]["targets"])
    steps = cfg["quick"]["steps"] if quick else rc["steps"]
    seeds = cfg["quick"]["seeds"] if quick else rc["seeds"]
    lr, every = rc["learning_rate"], min(rc["record_every"], steps)
    method = Reinforce(optax.sgd(lr), steps, samples=rc["samples"], baseline=rc["baseline"])
    sampled = _seed_solver(method, jnp.asarray(r_true), targets, every)
    exact = _exact_solver(lr, steps, jnp.asarray(r_true), targets, every)
    keys = jax.random.split(jax.random.key(rc["seed"]), seeds)

    start = time.perf_counter()
    rows, summaries, exacts = [], {}, {}
    cases = [(p, name, r) for p in prob["p_best"] for name, r in (("true", r_true), ("proxy", r_proxy))]
    for p, name, r in _progress.each(cases, f"reinforce-seeds: {seeds} seeds per case (compilation included)",
                                     unit="case"):
        logits = jnp.log(jnp.asarray(stalling_probs(p, prob["p_mediocre"], len(r_true))))
        s = summarize_seeds(sampled(logits, jnp.asarray(r), keys), targets)
        e = exact(logits, jnp.asarray(r))
        summaries[(p, name)], exacts[(p, name)] = s, e
        rows.append({"p_best": p, "trained_on": name, **_seed_row(s, e, targets)})
    elapsed = time.perf_counter() - start

    say(f"REINFORCE seeds: {seeds} seeds per case, {rc['samples']} sample(s) per step, baseline "
        f"{rc['baseline']!r}, SGD lr {lr:g}, {steps} steps{' (quick)' if quick else ''}; the exact "
        "columns are exact-gradient SGD with the same learning rate.")
    out.mkdir(parents=True, exist_ok=True)
    plotting.save_figure_data(out, {
        "study": "reinforce-seeds", "p_best": list(prob["p_best"]), "targets": list(targets), "seeds": seeds,
        "samples": rc["samples"], "lr": lr,
        "summaries": {f"{j}": {k: plotting.summary_to_data(summaries[(p, k)]) for k in ("true", "proxy")}
                      for j, p in enumerate(prob["p_best"])},
        "exact": {f"{j}": {k: plotting.Trajectory.of(exacts[(p, k)], probs=False).to_data()
                           for k in ("true", "proxy")} for j, p in enumerate(prob["p_best"])},
        "exact_times": {f"{j}": {k: float(time_to_reward(exacts[(p, k)], targets[0])) for k in ("true", "proxy")}
                        for j, p in enumerate(prob["p_best"])},
    })
    with _progress.phase("reinforce-seeds: figures"):
        figures = plot_reinforce_seeds(out)

    t0 = targets[0]
    notes = [SEED_COLUMNS_NOTE]
    for p in prob["p_best"]:
        tr, px = (next(r for r in rows if r["p_best"] == p and r["trained_on"] == k) for k in ("true", "proxy"))
        notes.append(f"  p(y*) = {p:g}: on the true reward {tr[f'reached_{t0:g}']:.0%} of seeds reach {t0:g} "
                     f"(exact run: {fmt(tr[f'exact_time_to_{t0:g}'], ' steps')}); on the proxy "
                     f"{px[f'reached_{t0:g}']:.0%} do, median {fmt(px[f'time_to_{t0:g}_q0.5'], ' steps')} "
                     f"(exact: {fmt(px[f'exact_time_to_{t0:g}'], ' steps')}).")
    _report(out, rows, _shown(rows, targets),
            _columns([("p_best", "p(y*)"), ("trained_on", "trained on")], targets), figures, elapsed,
            len(rows) * (seeds + 1), keys=2, notes=notes)
    return {"rows": rows, "figures": figures, "summaries": summaries, "exact": exacts}


def plot_reinforce_seeds(out: Path) -> list[Path]:
    """Draw the reinforce-seeds figure from the data saved in `out`.

    **Arguments:**

    - `out`: the study's result folder (with `figures.npz`).

    **Returns:** the paths of the figures written (`reinforce_seeds.png`).
    """
    import matplotlib.pyplot as plt

    from . import plotting

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


# --------------------------------------------------------------------------- estimators

ESTIMATOR_NAMES = ("reinforce", "rloo", "grpo", "ppo")

ESTIMATORS_SCHEMA = {
    "problem": {**_PROBLEM, "p_best": C.Field("float", C.probability)},
    "estimators": {
        "names": C.Field("strs", lambda x: C.nonempty(x) or C.one_of(*ESTIMATOR_NAMES)(x)),
        "learning_rate": C.Field("float", C.positive),
        "samples": C.Field("int", C.positive),
        "steps": C.Field("int", C.positive),
        "seeds": C.Field("int", C.positive),
        "seed": C.Field("int", default=0),
        "record_every": C.Field("int", C.positive),
        "reinforce_baseline": C.Field("str", C.one_of("none", "mean", "running")),
        "grpo_normalize_std": C.Field("bool"),
        "ppo_epochs": C.Field("int", C.positive),
        "ppo_clip": C.Field("float", C.positive),
    },
    "analysis": {"targets": C.Field("floats", C.nonempty)},
    "quick": {"steps": C.Field("int", C.positive), "seeds": C.Field("int", C.positive)},
}


def run_estimators(cfg: dict, out: Path, quick: bool) -> dict:

    from . import plotting

    prob, ec = cfg["problem"], cfg["estimators"]
    r_true, r_proxy = _rewards(prob)
    targets = tuple(cfg["analysis"]["targets"])
    steps = cfg["quick"]["steps"] if quick else ec["steps"]
    seeds = cfg["quick"]["seeds"] if quick else ec["seeds"]
    every = min(ec["record_every"], steps)
    logits = jnp.log(jnp.asarray(stalling_probs(prob["p_best"], prob["p_mediocre"], len(r_true))))
    keys = jax.random.split(jax.random.key(ec["seed"]), seeds)
    exact = _exact_solver(ec["learning_rate"], steps, jnp.asarray(r_true), targets, every)

    start = time.perf_counter()
    rows, summaries, exacts = [], {}, {}
    bar = _progress.bar(2 * len(ec["names"]), f"estimators: {seeds} seeds per case (compilation included)",
                        unit="case")
    for name in ec["names"]:
        method = make_method(name, learning_rate=ec["learning_rate"], steps=steps, samples=ec["samples"],
                             reinforce_baseline=ec["reinforce_baseline"],
                             grpo_normalize_std=ec["grpo_normalize_std"], ppo_epochs=ec["ppo_epochs"],
                             ppo_clip=ec["ppo_clip"])
        run = _seed_solver(method, jnp.asarray(r_true), targets, every)
        for trained, r in (("true", r_true), ("proxy", r_proxy)):
            if bar is not None:
                bar.set_postfix_str(f"{name}, trained on {trained}")
            exacts[trained] = exacts.get(trained) or exact(logits, jnp.asarray(r))
            s = summarize_seeds(run(logits, jnp.asarray(r), keys), targets)
            summaries[(name, trained)] = s
            rows.append({"estimator": name, "trained_on": trained, **_seed_row(s, exacts[trained], targets)})
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    elapsed = time.perf_counter() - start

    k = ec["samples"]
    say(f"Estimators at equal sample budget: {k} samples per step x {steps} steps = {k * steps} draws "
        f"per seed, {seeds} seeds, SGD lr {ec['learning_rate']:g}, initial p(y*) = {prob['p_best']:g}"
        f"{' (quick)' if quick else ''}. PPO makes {ec['ppo_epochs']} updates per batch; the exact "
        "columns are exact-gradient SGD with the same learning rate and steps.")
    out.mkdir(parents=True, exist_ok=True)
    plotting.save_figure_data(out, {
        "study": "estimators", "names": list(ec["names"]), "targets": list(targets), "samples": k,
        "p_best": prob["p_best"],
        "summaries": {n: {t: plotting.summary_to_data(summaries[(n, t)]) for t in ("true", "proxy")}
                      for n in ec["names"]},
        "exact": {t: plotting.Trajectory.of(exacts[t], probs=False).to_data() for t in ("true", "proxy")},
    })
    with _progress.phase("estimators: figures"):
        figures = plot_estimators(out)
    _report(out, rows, _shown(rows, targets),
            _columns([("estimator", "estimator"), ("trained_on", "trained on")], targets), figures, elapsed,
            len(rows) * seeds + 2, keys=2, notes=[SEED_COLUMNS_NOTE])
    return {"rows": rows, "figures": figures, "summaries": summaries, "exact": exacts}


def plot_estimators(out: Path) -> list[Path]:
    """Draw the estimators figure from the data saved in `out`.

    **Arguments:**

    - `out`: the study's result folder (with `figures.npz`).

    **Returns:** the paths of the figures written (`estimators.png`).
    """
    import matplotlib.pyplot as plt

    from . import plotting

    out = Path(out)
    d = plotting.load_figure_data(out)
    names, targets = list(d["names"]), [float(t) for t in d["targets"]]
    label = {name: name.upper() if name != "reinforce" else "REINFORCE" for name in names}
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


# ------------------------------------------------------------------- feature-similarity

FEATURE_SIMILARITY_SCHEMA = {
    "problem": {
        "initial_probs": C.Field("floats", lambda x: C.nonempty(x) or C.probability(x)),
        "true_reward": C.Field("floats", C.nonempty),
        "best_norm": C.Field("float", C.positive),
        "mediocre_cosines": C.Field(
            "floats", lambda x: C.nonempty(x) or (None if all(-1 <= c <= 1 for c in x) else "values in [-1, 1]")
        ),
    },
    "sgd": {
        "learning_rate": C.Field("float", C.positive),
        "steps": C.Field("int", C.positive),
        "record_every": C.Field("int", C.positive),
    },
    "analysis": {"targets": C.Field("floats", C.nonempty)},
    "quick": {"steps": C.Field("int", C.positive)},
}


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


def run_feature_similarity(cfg: dict, out: Path, quick: bool) -> dict:

    from . import plotting

    prob, sc = cfg["problem"], cfg["sgd"]
    probs = np.array(prob["initial_probs"])
    r_true = jnp.asarray(prob["true_reward"])
    n = len(probs)
    if abs(probs.sum() - 1) > 1e-6 or len(r_true) != n or n < 3:
        raise ValueError(
            "config: `problem.initial_probs` must sum to 1 and match `problem.true_reward` in length "
            f"(at least 3 outputs); got {probs.tolist()} and {len(r_true)} rewards."
        )
    targets = tuple(cfg["analysis"]["targets"])
    steps = cfg["quick"]["steps"] if quick else sc["steps"]
    every = min(sc["record_every"], steps)
    method = GradientAscent(optax.sgd(sc["learning_rate"]), steps)
    stall = StallCriteria(target=min(targets))

    @jax.jit
    def run(policy):
        return solve(policy, reward=r_true, method=method, saveat=SaveAt(every=every, probs=True),
                     targets=targets, stall=stall)

    start = time.perf_counter()
    runs: dict[str, Solution] = {}
    rows = []
    for c in _progress.each(prob["mediocre_cosines"], "feature-similarity: cosines (compilation included)",
                            unit="run"):
        phi = similarity_features(n, prob["best_norm"], c)
        policy = LogLinear.from_probs(jnp.asarray(phi), jnp.asarray(probs))
        label = f"cos = {c:+.2f}"
        runs[label] = sol = run(policy)
        rows.append({"parameterisation": "log-linear", "cosine": c, "inner_product": float(phi[0] @ phi[1]),
                     **_feature_row(sol, targets)})
    runs["tabular"] = sol = run(TabularSoftmax.from_probs(jnp.asarray(probs)))
    rows.append({"parameterisation": "tabular", "cosine": math.nan, "inner_product": math.nan,
                 **_feature_row(sol, targets)})
    elapsed = time.perf_counter() - start

    say(f"Feature similarity: log-linear policy, y* feature {prob['best_norm']:g} e1, y_med a unit "
        f"vector at the given cosine with e1; initial probs {probs.tolist()}, trained on the true reward "
        f"{prob['true_reward']} with exact-gradient SGD (lr {sc['learning_rate']:g}, {steps} steps"
        f"{', quick' if quick else ''}).")
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
        "study": "feature-similarity", "cosines": list(prob["mediocre_cosines"]), "targets": list(targets),
        "runs": {f"{j}": plotting.Trajectory.of(sol).to_data() for j, sol in enumerate(runs.values())},
    })
    with _progress.phase("feature-similarity: figures"):
        figures = plot_feature_similarity(out)
    _report(out, rows, shown, columns, figures, elapsed, len(rows), keys=2)
    return {"rows": rows, "figures": figures, "solutions": runs}


def plot_feature_similarity(out: Path) -> list[Path]:
    """Draw the feature-similarity figure from the data saved in `out`.

    **Arguments:**

    - `out`: the study's result folder (with `figures.npz`).

    **Returns:** the paths of the figures written (`feature_similarity.png`).
    """
    import matplotlib.pyplot as plt

    from . import plotting

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


def _feature_row(sol: Solution, targets) -> dict:
    row = {f"time_to_{t:g}": float(time_to_reward(sol, t)) for t in targets}
    row.update(stall_level=float(sol.stall.level), stall_start=float(sol.stall.start),
               stall_duration=float(sol.stall.duration), final_true_reward=float(sol.final_true_reward))
    return row
