"""Studies beyond the flat softmax: `token-credit` (the stalling problem at the token
level, under three parameterisations of the same initial sequence distribution) and
`neural-policy` (an MLP over random features against the tabular policy). Registered in
`gradflow._studies.STUDIES`."""

from __future__ import annotations

import math
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from . import _config as C, _progress, perturb
from ._analysis import StallCriteria
from ._categorize import _predict, categorize, classify, initial_rate
from ._dynamics import GradientFlow
from ._objective import Regularization
from ._results import save_figure
from ._solve import SaveAt, Solution, solve
from ._status import OK_CODE, status_code
from ._study_utils import fmt, list_files, say, table, write_csv
from .policies import Autoregressive, NeuralPolicy, TabularSoftmax

LABEL_COLORS = {"harmful": "#d62728", "benign": "#bdbdbd", "beneficial": "#2ca02c", "failed": "black"}
PARAMETERISATIONS = ("flat", "prefix", "bigram")


def _label_code(labels: np.ndarray) -> np.ndarray:
    order = list(LABEL_COLORS)
    return np.vectorize(order.index)(labels)


TOLERANCE, REWARD_TOLERANCE = 0.05, 1e-3  # gf.categorize's defaults


@eqx.filter_jit
def _token_runs(policy, params, rewards, trues, ts, target):
    """The exact flow from each `params` on each reward, tracking its true reward (the
    trajectory on `ts`, the time to `target`, the longest stall), and the instantaneous
    rate `dV_G/dt` at `t = 0`."""

    def one(p, r, g):
        start = policy.with_params(p)
        sol = solve(start, reward=r, true_reward=g, method=GradientFlow(), t1=ts[-1], saveat=SaveAt(ts=ts),
                    targets=(target,), stall=StallCriteria(target=target))
        rate, _ = initial_rate(start, r[None], g[None], Regularization())
        return sol, rate

    return jax.vmap(one)(params, rewards, trues)


def _trajectory(policy, reward, true_reward, t1, target) -> Solution:
    ts = jnp.concatenate([jnp.zeros(1), jnp.geomspace(1e-2, t1, 300)])
    ts = ts.at[-1].set(t1)
    return solve(policy, reward=reward, true_reward=true_reward, method=GradientFlow(), t1=t1,
                 saveat=SaveAt(ts=ts), targets=(target,), stall=StallCriteria(target=target))


# ------------------------------------------------------------------------- token-credit

def _scenario_fields() -> dict[str, C.Field]:
    return {
        "mediocre": C.Field("ints", C.nonempty),
        "start": C.Field("floats", lambda x: C.nonempty(x) or C.probability(x)),
        "transition": C.Field("floats", lambda x: C.nonempty(x) or C.probability(x)),
    }


TOKEN_CREDIT_SCHEMA = {
    "problem": {
        "vocab": C.Field("int", C.positive),
        "length": C.Field("int", C.positive),
        "best": C.Field("ints", C.nonempty),
        "best_reward": C.Field("float"),
        "mediocre_reward": C.Field("float"),
        "other_reward": C.Field("float"),
    },
    "separate": _scenario_fields(),
    "shared": _scenario_fields(),
    "flow": {"t1": C.Field("float", C.positive)},
    "analysis": {
        "target": C.Field("float"),
        "error_shift": C.Field("float", C.positive),
        "map_points": C.Field("int", C.positive),
        "error_sequences": C.Field("int", C.positive),
    },
    "quick": {
        "t1": C.Field("float", C.positive),
        "map_points": C.Field("int", C.positive),
        "error_sequences": C.Field("int", C.positive),
    },
}

SCENARIOS = ("separate", "shared")


def _index(tokens: list[int], vocab: int) -> int:
    return int(sum(t * vocab ** (len(tokens) - 1 - i) for i, t in enumerate(tokens)))


def bigram_theta(start: np.ndarray, transition: np.ndarray) -> np.ndarray:
    """The bigram parameters (see `Autoregressive.builtin_features("bigram")`) of the
    Markov chain with first-token probabilities `start` and `transition[a, b] = P(b | a)`."""
    vocab = start.size
    theta = np.zeros((vocab + 1) * vocab)
    theta[: vocab * vocab] = np.log(transition).reshape(-1)
    theta[vocab * vocab :] = np.log(start)
    return theta


def _check_token_config(cfg: dict) -> tuple[int, int]:
    prob = cfg["problem"]
    vocab, length = prob["vocab"], prob["length"]
    if vocab < 2 or vocab**length > 4096:
        raise ValueError(f"config: `problem.vocab`**`problem.length` must be between 4 and 4096 sequences "
                         f"(vocab >= 2); got {vocab}^{length}.")
    seqs = {"problem.best": prob["best"]} | {f"{s}.mediocre": cfg[s]["mediocre"] for s in SCENARIOS}
    for key, seq in seqs.items():
        if len(seq) != length or not all(0 <= t < vocab for t in seq):
            raise ValueError(f"config key `{key}`: expected {length} tokens in [0, {vocab}); got {seq}.")
    for s in SCENARIOS:
        if cfg[s]["mediocre"] == prob["best"]:
            raise ValueError(f"config key `{s}.mediocre`: must differ from `problem.best`.")
        start, trans = np.array(cfg[s]["start"]), np.array(cfg[s]["transition"])
        if start.size != vocab or abs(start.sum() - 1) > 1e-6:
            raise ValueError(f"config key `{s}.start`: expected {vocab} probabilities summing to 1; got {start.tolist()}.")
        if trans.size != vocab * vocab or np.any(np.abs(trans.reshape(vocab, vocab).sum(1) - 1) > 1e-6):
            raise ValueError(f"config key `{s}.transition`: expected a {vocab}x{vocab} row-major matrix whose rows "
                             f"sum to 1; got {trans.tolist()}.")
    target = cfg["analysis"]["target"]
    lo, hi = min(prob["other_reward"], prob["mediocre_reward"]), prob["best_reward"]
    if not lo < target < hi:
        raise ValueError(f"config key `analysis.target`: expected a level in ({lo:g}, {hi:g}) (between the "
                         f"worst reward and the best); got {target}.")
    return vocab, length


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


def run_token_credit(cfg: dict, out: Path, quick: bool) -> dict:
    prob, an = cfg["problem"], cfg["analysis"]
    vocab, length = _check_token_config(cfg)
    t1 = cfg["quick"]["t1"] if quick else cfg["flow"]["t1"]
    points = cfg["quick"]["map_points"] if quick else an["map_points"]
    n_err = cfg["quick"]["error_sequences"] if quick else an["error_sequences"]
    target, shift = an["target"], an["error_shift"]
    best = _index(prob["best"], vocab)
    n = vocab**length
    med_values = np.linspace(prob["other_reward"], prob["best_reward"] + 0.4, points)
    best_values = np.linspace(prob["mediocre_reward"] - 0.6, prob["best_reward"] + 1.0, points)

    start_clock = time.perf_counter()
    # Per scenario: the three policies and the rewards trained on: the true reward (the
    # reference), the demotion of y_med, the canonical errors (the reward of y*, y_med and
    # the most likely other sequences moved by -shift and +shift) and the map's grid.
    setups = {}
    for scen in _progress.each(SCENARIOS, "token-credit: policies and rewards of each scenario", unit="scenario"):
        sc = cfg[scen]
        med = _index(sc["mediocre"], vocab)
        r_true = np.full(n, prob["other_reward"])
        r_true[best], r_true[med] = prob["best_reward"], prob["mediocre_reward"]
        r_true = jnp.asarray(r_true, jnp.float32)
        policies = token_policies(vocab, length, sc["start"], sc["transition"])
        likely = np.argsort(-np.asarray(policies["flat"].probs()[0]), kind="stable")
        chosen = ([best, med] + [int(i) for i in likely if i not in (best, med)])[: max(2, min(n_err, n))]
        bump = jnp.zeros((len(chosen), n)).at[jnp.arange(len(chosen)), jnp.asarray(chosen)].set(shift)
        rewards = jnp.concatenate([
            r_true[None], r_true.at[med].set(prob["other_reward"])[None], r_true[None] - bump, r_true[None] + bump,
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
            label, _ = classify(t[1:], t[0], final[1:], final[0], np.asarray(status_code(sol.status))[1:] != OK_CODE, TOLERANCE,
                                REWARD_TOLERANCE)
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
    elapsed = time.perf_counter() - start_clock

    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "summary.csv", rows)
    write_csv(out / "map.csv", [
        {"scenario": scen, "parameterisation": name, "proxy_reward_mediocre": float(a),
         "proxy_reward_best": float(b), "label": str(labels[i, j])}
        for (scen, name), labels in maps.items()
        for i, a in enumerate(med_values) for j, b in enumerate(best_values)
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
    say(f"Token credit: vocab {vocab}, length {length} ({n} sequences); y* = {prob['best']} "
        f"(reward {prob['best_reward']:g}), y_med = {cfg['separate']['mediocre']} (separate) or "
        f"{cfg['shared']['mediocre']} (shared prefix) at {prob['mediocre_reward']:g}, others "
        f"{prob['other_reward']:g}; exact flow to t = {t1:g}{' (quick)' if quick else ''}.")
    say("The same initial sequence distribution under each parameterisation; canonical errors: the "
        f"reward of y*, y_med and the most likely sequences ({min(max(2, n_err), n)} in all) moved by "
        f"+-{shift:g}.")
    print(table(shown, columns, keys=2))
    say(f"Stall: on the true reward (n/a: none; column `stalls` in summary.csv). t({target:g}): time to true "
        f"reward {target:g}, trained on the true reward and on y_med demoted. harm/benign/benef.: how many "
        "canonical errors get each label; lens agrees: the fraction that the instantaneous lens (the rate at "
        "t = 0) labels alike.")
    from .plotting import save_figure_data

    save_figure_data(out, {
        "study": "token-credit", "target": target, "best_reward": prob["best_reward"],
        "mediocre_reward": prob["mediocre_reward"], "best_values": np.asarray(best_values),
        "med_values": np.asarray(med_values),
        "runs": {scen: {name: {kind: {"time": np.asarray(runs[(scen, name, kind)].ts),
                                      "true_reward": np.asarray(runs[(scen, name, kind)].true_reward)}
                               for kind in ("true", "proxy")} for name in PARAMETERISATIONS} for scen in SCENARIOS},
        "maps": {scen: {name: _label_code(maps[(scen, name)]) for name in PARAMETERISATIONS} for scen in SCENARIOS},
    })
    with _progress.phase("token-credit: figures"):
        figures = plot_token_credit(out)
    print(f"Solved {sum(len(setups[s][3]) for s in SCENARIOS) * len(PARAMETERISATIONS)} runs in {elapsed:.1f} s "
          "(compilation included).")
    list_files(out, [out / "summary.csv", out / "map.csv", *figures])
    return {"rows": rows, "figures": figures, "solutions": runs, "maps": maps}


def plot_token_credit(out: Path) -> list[Path]:
    """Draw the token-credit figures from the data saved in `out`.

    **Arguments:**

    - `out`: the study's result folder (with `figures.npz`).

    **Returns:** the paths of the figures written (`true_reward.png`, `categorization_map.png`).
    """
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    from .plotting import load_figure_data

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


# ------------------------------------------------------------------------ neural-policy

NEURAL_POLICY_SCHEMA = {
    "problem": {
        "initial_probs": C.Field("floats", lambda x: C.nonempty(x) or C.probability(x)),
        "true_reward": C.Field("floats", C.nonempty),
    },
    "model": {
        "feature_dim": C.Field("int", C.positive),
        "width": C.Field("int", C.positive),
        "depth": C.Field("int", C.positive),
        "activation": C.Field("str", C.one_of("tanh", "softplus", "gelu", "silu")),
        "seed": C.Field("int", default=0),
        "fit_steps": C.Field("int", C.positive),
    },
    "flow": {"t1": C.Field("float", C.positive)},
    "analysis": {"target": C.Field("float"), "error_shift": C.Field("float", C.positive)},
    "quick": {"t1": C.Field("float", C.positive)},
}

ACTIVATIONS = {"tanh": jnp.tanh, "softplus": jax.nn.softplus, "gelu": jax.nn.gelu, "silu": jax.nn.silu}


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


def run_neural_policy(cfg: dict, out: Path, quick: bool) -> dict:

    prob, mc, an = cfg["problem"], cfg["model"], cfg["analysis"]
    probs, r_true = np.array(prob["initial_probs"]), np.array(prob["true_reward"])
    k = probs.size
    if abs(probs.sum() - 1) > 1e-6 or r_true.size != k or k < 3:
        raise ValueError("config: `problem.initial_probs` must sum to 1 and match `problem.true_reward` in length "
                         f"(at least 3 outputs); got {probs.tolist()} and {r_true.size} rewards.")
    target, t1 = an["target"], cfg["quick"]["t1"] if quick else cfg["flow"]["t1"]
    if not r_true.min() < target < r_true.max():
        raise ValueError(f"config key `analysis.target`: expected a level in ({r_true.min():g}, {r_true.max():g}); "
                         f"got {target}.")
    best = int(np.argmax(r_true))
    mediocre = int(np.argsort(-r_true, kind="stable")[1])
    key_feat, key_model = jax.random.split(jax.random.key(mc["seed"]))
    features = jax.random.normal(key_feat, (k, mc["feature_dim"]))
    model = eqx.nn.MLP(mc["feature_dim"], "scalar", mc["width"], mc["depth"], activation=ACTIVATIONS[mc["activation"]],
                       key=key_model)

    start = time.perf_counter()
    with _progress.phase(f"neural-policy: fitting the MLP, {mc['fit_steps']} Adam steps (compilation included)"):
        neural, residual = fit_neural_policy(model, features, probs, mc["fit_steps"])
    policies = {"tabular": TabularSoftmax.from_probs(jnp.asarray(probs)), "neural": neural}
    errors = canonical_errors(r_true, an["error_shift"], best, mediocre)
    proxies = jnp.asarray(np.stack(list(errors.values())), jnp.float32)
    rt = jnp.asarray(r_true, jnp.float32)
    cats, runs = {}, {}
    for name, policy in policies.items():
        with _progress.phase(f"neural-policy: {name} policy, {len(errors) + 3} runs (compilation included)"):
            cats[name] = categorize(policy, rt, proxies, method=GradientFlow(), t1=t1, target=target)
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
    same = sum(r["same_label"] for r in rows)

    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "summary.csv", rows)
    shown = [{**r, "tabular_time_ratio": fmt(r["tabular_time_ratio"]), "neural_time_ratio": fmt(r["neural_time_ratio"]),
              "same_label": "yes" if r["same_label"] else "NO"} for r in rows]
    columns = [("error", "error"), ("tabular_label", "tabular"), ("tabular_time_ratio", "ratio"),
               ("neural_label", "neural"), ("neural_time_ratio", "ratio"), ("neural_predicted", "neural lens"),
               ("same_label", "same")]
    say(f"Neural policy: an MLP ({mc['depth']} x {mc['width']}, {mc['activation']}) over random "
        f"{mc['feature_dim']}-d features, fitted to the initial probabilities {probs.tolist()} (total variation "
        f"{residual:.1e}); exact flow to t = {t1:g}{' (quick)' if quick else ''}, time to true reward {target:g}.")
    print(table(shown, columns))
    ref = {name: cat.reference_time for name, cat in cats.items()}
    say(f"Trained on the true reward, time to {target:g}: tabular {fmt(ref['tabular'])}, neural {fmt(ref['neural'])}. "
        f"{same} of {len(rows)} canonical errors get the same label under both policies; the instantaneous lens "
        f"agrees with the neural policy's labels on {cats['neural'].agreement:.0%} of them.")

    from .plotting import save_figure_data

    save_figure_data(out, {
        "study": "neural-policy", "target": target, "policies": list(policies), "errors": [r["error"] for r in rows],
        "labels": np.stack([_label_code(np.array([r[f"{name}_label"] for r in rows])) for name in policies], axis=1),
        "runs": {name: {kind: {"time": np.asarray(runs[(name, kind)].ts),
                               "true_reward": np.asarray(runs[(name, kind)].true_reward)}
                        for kind in ("true", "demote")} for name in policies},
    })
    with _progress.phase("neural-policy: figures"):
        figures = plot_neural_policy(out)
    print(f"Solved {2 * (len(rows) + 3)} runs in {elapsed:.1f} s (compilation and the fit included).")
    list_files(out, [out / "summary.csv", *figures])
    return {"rows": rows, "figures": figures, "solutions": runs, "categorizations": cats, "fit_residual": residual}


def plot_neural_policy(out: Path) -> list[Path]:
    """Draw the neural-policy figure from the data saved in `out`.

    **Arguments:**

    - `out`: the study's result folder (with `figures.npz`).

    **Returns:** the paths of the figures written (`neural_policy.png`).
    """
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    from .plotting import load_figure_data

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
