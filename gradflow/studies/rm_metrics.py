"""The `rm-metrics` study: which reward-model metric predicts what policy gradient does?

A synthetic RLHF setting (documented with its results in `docs/rm-metrics.md`):

- `X` prompts with `K` candidate outputs each. In every prompt output 0 is the best
  (`r_G = best_reward`), outputs `1..m` are *mediocre* (good, not best:
  `r_G ~ U(mediocre_reward)`) and the others bad (`r_G ~ U(bad_reward)`).
- A log-linear policy `pi(y|x) = softmax_y <theta, phi(x, y)>` with one parameter vector
  `theta` shared by all prompts. The features are drawn once, per (prompt, output):
  `phi(x, y) = sigma z(x, y) + a r_G(x, y) e_0 + b 1[y mediocre] e_1`, `z ~ N(0, I_d)`,
  so the `d` feature dimensions mean the same thing in every prompt: a noisy *quality*
  direction `e_0`, a *style* direction `e_1` that the mediocre outputs share, and noise
  directions. An initial policy is `theta_0 = c e_1` (`policies.theta_style`): a large
  `c` piles the mass onto the mediocre outputs (peaked), a small one keeps it spread (flat).
- A population of proxy rewards in families whose errors differ in size (a per-proxy
  scale) and structure (`FAMILIES`); see `proxy_population`.
- Two preference sets per initial policy, both `M` distinct responses per prompt and all
  their pairs, ordered by `r_G`: *off-policy* (responses drawn uniformly) and
  *on-policy* (drawn from the initial policy without replacement). On both, the
  accuracy-type metrics of `gradflow.metrics` use the initial policy (pair weights
  `pi(y_w) pi(y_l)`, the exact mean proxy reward `V_P(x)` of the harm-aware variants); the
  teacher scores (reward variance, the instantaneous true-reward rate in its tabular form
  from log-probabilities and in its exact log-linear form) are taken under the set's
  sampling distribution: uniform (`theta = 0`) off-policy, the initial policy on-policy.
- Exact-gradient SGD and RLOO on every proxy for `max(budgets)` steps, recording the
  true-reward gain after each budget and the step at which the true reward first covers
  the fraction `target` of the way from its initial to its best value. Each method is one
  `jax.jit` of a `jax.vmap` over the population (plus the true reward as a reference run).
- The Pearson, Spearman and Kendall (tau-b) correlation of each metric with the gain
  across the population, with percentile-bootstrap confidence intervals. In
  `correlations.csv` the column `method` reads `<algorithm>/<initial policy>/<budget>`
  (e.g. `exact/peaked/150`): one row per metric x preference set x method.

The correlations and their bootstrap (by resample counts: every proxy's metrics and
outcomes share the resamples) are those of `gradflow._analysis.stats`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from .. import metrics as gm, perturb
from .._analysis.curves import true_reward_rate
from .._analysis.stats import (
    STATISTICS,
    Resampled,
    bootstrap_counts,
    correlate_resampled,
    kendall,
    spearman,
)
from .._engine.names import make_method
from .._engine.solve import SaveAt, solve
from .._engine.status import OK_CODE, status_code, status_name
from .._util import progress as _progress
from .._util.results import save_figure
from ..policies import LogLinear
from ._base import (
    StudyConfig,
    all_of,
    at_least,
    distinct,
    increasing,
    key,
    nonempty,
    one_of,
    positive,
    probability,
)
from ._common import list_files, say, table, write_csv

NAME = "rm-metrics"
SUMMARY = ("which reward-model metric (accuracy, harm-aware, weighted, one-vs-many, teacher scores) predicts "
           "the true-reward gain of policy gradient, over 896 proxy rewards")

FAMILIES = (
    "noise",             # r_G + s eps on every output
    "noise-likely",      # r_G + s eps on each prompt's most likely outputs (under the initial policy)
    "noise-unlikely",    # ... on its least likely outputs
    "promote-mediocre",  # r_G + s on the mediocre outputs of a random fraction of prompts
    "demote-mediocre",   # r_G - s on them
    "feature-bias",      # r_G + s <phi, u>, u a random unit direction (perturb.feature_bias)
    "monotone",          # a random increasing transform (perturb.monotone): accuracy 1
)
METRICS = (
    "acc", "acc_w", "hacc", "hacc_w",
    "ovm_acc", "ovm_acc_w", "ovm_hacc", "ovm_hacc_w",
    "reward_variance", "rate_tabular", "rate_loglinear",
)
PAIR_SETS = ("off-policy", "on-policy")
ALGORITHMS = {"exact": "sgd", "rloo": "rloo"}
"""The training algorithms: `{name in the tables: method name (`gradflow._engine.names`)}`."""
STATS = STATISTICS
CSV_COLUMNS = ("metric", "pairs", "method", "policy", "budget", *STATS, *(f"{s}_{b}" for s in STATS for b in ("lo", "hi")))


def _range_check(x) -> str | None:
    return None if len(x) == 2 and x[0] <= x[1] else "a range [low, high] with low <= high"


def _positive_range(x) -> str | None:
    return _range_check(x) or (None if x[0] > 0 else "a range [low, high] with 0 < low <= high")


def _fraction_range(x) -> str | None:
    return _positive_range(x) or (None if x[1] <= 1 else "a range within (0, 1]")




def _policy_names(x) -> str | None:
    return None if len(set(x)) == len(x) and all(n and "/" not in n for n in x) else "distinct names without '/'"


_families = all_of(nonempty, one_of(*FAMILIES), distinct)
_budgets = all_of(nonempty, positive, increasing)


@dataclass(frozen=True, kw_only=True)
class Problem:
    prompts: int = key(at_least(2))
    outputs: int = key(at_least(4))
    mediocre: int = key(positive)
    features: int = key(at_least(2, "quality and style"))
    feature_noise: float = key(positive)
    quality_weight: float = key(positive)
    style_weight: float = key(positive)
    best_reward: float = key()
    mediocre_reward: tuple[float, ...] = key(_range_check)
    bad_reward: tuple[float, ...] = key(_range_check)
    seed: int = key(default=0)


@dataclass(frozen=True, kw_only=True)
class Policies:
    names: tuple[str, ...] = key(all_of(nonempty, _policy_names))
    theta_style: tuple[float, ...] = key(nonempty)


@dataclass(frozen=True, kw_only=True)
class Proxies:
    families: tuple[str, ...] = key(_families)
    per_family: int = key(positive)
    noise_scale: tuple[float, ...] = key(_positive_range)
    focus_scale: tuple[float, ...] = key(_positive_range)
    focus_outputs: int = key(positive)
    promote_shift: tuple[float, ...] = key(_positive_range)
    demote_shift: tuple[float, ...] = key(_positive_range)
    prompt_fraction: tuple[float, ...] = key(_fraction_range)
    bias_scale: tuple[float, ...] = key(_positive_range)
    monotone_min_slope: tuple[float, ...] = key(_fraction_range)
    seed: int = key(default=1)


@dataclass(frozen=True, kw_only=True)
class PreferenceSets:
    responses: int = key(at_least(2))
    seed: int = key(default=2)


@dataclass(frozen=True, kw_only=True)
class Training:
    learning_rate: float = key(positive)
    budgets: tuple[int, ...] = key(_budgets)
    rloo_samples: int = key(at_least(2))
    target: float = key(probability)
    seed: int = key(default=3)


@dataclass(frozen=True, kw_only=True)
class Analysis:
    bootstrap: int = key(at_least(10))
    confidence: float = key(probability)
    predictive: float = key(probability)
    seed: int = key(default=4)


@dataclass(frozen=True, kw_only=True)
class Config(StudyConfig):
    problem: Problem
    policies: Policies
    proxies: Proxies
    preferences: PreferenceSets
    training: Training
    analysis: Analysis

    def __post_init__(self):
        pc, pol, px = self.problem, self.policies, self.proxies
        if pc.mediocre > pc.outputs - 2:
            raise ValueError(
                f"config key `problem.mediocre`: expected at most outputs - 2 = {pc.outputs - 2} (one best and "
                f"at least one bad output per prompt); got {pc.mediocre}."
            )
        (m_lo, m_hi), (_, b_hi) = pc.mediocre_reward, pc.bad_reward
        if not (b_hi <= m_lo and m_hi < pc.best_reward):
            raise ValueError(
                "config: the reward ranges must be ordered bad <= mediocre < best: `problem.bad_reward` "
                f"{list(pc.bad_reward)}, `problem.mediocre_reward` {list(pc.mediocre_reward)}, `problem.best_reward` "
                f"{pc.best_reward}."
            )
        if len(pol.theta_style) != len(pol.names):
            raise ValueError(
                f"config key `policies.theta_style`: expected one value per policy name ({len(pol.names)}); "
                f"got {len(pol.theta_style)}."
            )
        if not 2 * px.focus_outputs <= pc.outputs:
            raise ValueError(
                f"config key `proxies.focus_outputs`: expected at most half the outputs ({pc.outputs // 2}), so "
                f"that likely and unlikely outputs do not overlap; got {px.focus_outputs}."
            )
        if self.preferences.responses > pc.outputs:
            raise ValueError(
                f"config key `preferences.responses`: expected at most `problem.outputs` ({pc.outputs}); "
                f"got {self.preferences.responses}."
            )


# ----------------------------------------------------------------------------- setting


@dataclass(frozen=True)
class Setting:
    """The problem: true reward `(X, K)`, features `(X, K, d)`, the mediocre mask."""

    true_reward: np.ndarray
    features: np.ndarray
    mediocre: np.ndarray


def make_setting(pc: Problem, prompts: int) -> Setting:
    """The prompts, outputs, rewards and features of `[problem]` (see the module
    docstring), drawn from `numpy.random.default_rng(problem.seed)`."""
    x, k, m, d = prompts, pc.outputs, pc.mediocre, pc.features
    rng = np.random.default_rng(pc.seed)
    u = rng.random((x, k))
    idx = np.arange(k)[None, :]
    med = np.broadcast_to((idx >= 1) & (idx <= m), (x, k))
    (m_lo, m_hi), (b_lo, b_hi) = pc.mediocre_reward, pc.bad_reward
    r = np.where(idx == 0, pc.best_reward, np.where(med, m_lo + (m_hi - m_lo) * u, b_lo + (b_hi - b_lo) * u))
    phi = pc.feature_noise * rng.standard_normal((x, k, d))
    phi[..., 0] += pc.quality_weight * r
    phi[..., 1] += pc.style_weight * med
    return Setting(r.astype(np.float32), phi.astype(np.float32), np.array(med))


def initial_theta(pc: Problem, theta_style: float) -> np.ndarray:
    theta = np.zeros(pc.features, np.float32)
    theta[1] = theta_style
    return theta


def _log_probs(setting: Setting, theta: np.ndarray) -> np.ndarray:
    return np.asarray(LogLinear(setting.features, theta).log_probs())


@dataclass(frozen=True)
class Population:
    rewards: np.ndarray   # (B, X, K)
    family: np.ndarray    # (B,) family names
    size: np.ndarray      # (B,) the error scale (family-specific, see `proxy_population`)
    fraction: np.ndarray  # (B,) fraction of prompts touched (promote/demote), else 1


def _log_uniform(rng: np.random.Generator, n: int, lo: float, hi: float) -> np.ndarray:
    return lo * (hi / lo) ** rng.random(n)


def _focus_masks(logp: np.ndarray, q: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Each prompt's `q` most and `q` least likely outputs (ties broken at random)."""
    order = np.lexsort((rng.random(logp.shape), -logp), axis=-1)  # most likely first
    likely, unlikely = np.zeros(logp.shape, bool), np.zeros(logp.shape, bool)
    np.put_along_axis(likely, order[:, :q], True, axis=-1)
    np.put_along_axis(unlikely, order[:, -q:], True, axis=-1)
    return likely, unlikely


def proxy_population(px: Proxies, setting: Setting, logp0: np.ndarray, per_family: int) -> Population:
    """`per_family` proxies of every family in `px.families`. Family `f` draws from
    `numpy.random.default_rng([proxies.seed, i_f])` (and `perturb.monotone` from
    `jax.random.key(proxies.seed)` folded with `i_f`), `i_f` its index in `FAMILIES`, so a
    family's proxies do not depend on which other families are listed. Only the
    `noise-likely` / `noise-unlikely` families depend on the initial policy (`logp0`).

    The `size` of a proxy: the noise standard deviation (noise families), the shift
    (promote / demote), the bias scale (feature-bias), `1 - min_slope` (monotone).
    """
    r = setting.true_reward
    n = per_family
    med = setting.mediocre.astype(np.float32)
    rewards, family, size, fraction = [], [], [], []
    for name in px.families:
        fi = FAMILIES.index(name)
        rng = np.random.default_rng([px.seed, fi])
        frac = np.ones(n)
        if name in ("noise", "noise-likely", "noise-unlikely"):
            lo, hi = px.noise_scale if name == "noise" else px.focus_scale
            s = _log_uniform(rng, n, lo, hi)
            eps = rng.standard_normal((n, *r.shape))
            likely, unlikely = _focus_masks(logp0, px.focus_outputs, rng)
            mask = {"noise": 1.0, "noise-likely": likely, "noise-unlikely": unlikely}[name]
            rp = r[None] + s[:, None, None] * eps * mask
        elif name in ("promote-mediocre", "demote-mediocre"):
            lo, hi = px.promote_shift if name == "promote-mediocre" else px.demote_shift
            s = _log_uniform(rng, n, lo, hi)
            f_lo, f_hi = px.prompt_fraction
            frac = f_lo + (f_hi - f_lo) * rng.random(n)
            picked = rng.random((n, r.shape[0])) < frac[:, None]
            sign = 1.0 if name == "promote-mediocre" else -1.0
            rp = r[None] + sign * s[:, None, None] * picked[:, :, None] * med[None]
        elif name == "feature-bias":
            s = _log_uniform(rng, n, *px.bias_scale)
            dirs = rng.standard_normal((n, setting.features.shape[-1]))
            dirs /= np.linalg.norm(dirs, axis=-1, keepdims=True)
            rp = np.stack([
                np.asarray(perturb.feature_bias(r, setting.features, dirs[i], s[i])[0]) for i in range(n)
            ])
        else:  # monotone
            slopes = _log_uniform(rng, n, *px.monotone_min_slope)
            s = 1.0 - slopes
            key = jax.random.fold_in(jax.random.key(px.seed), fi)
            rp = np.stack([
                np.asarray(perturb.monotone(jax.random.fold_in(key, i), r, 1, min_slope=float(slopes[i]))[0])
                for i in range(n)
            ])
        rewards.append(np.asarray(rp, np.float32))
        family += [name] * n
        size.append(s)
        fraction.append(frac)
    return Population(np.concatenate(rewards), np.array(family), np.concatenate(size), np.concatenate(fraction))


# ------------------------------------------------------------------------- preferences


@dataclass(frozen=True)
class Preferences:
    """A preference set: all pairs among each prompt's responses (ordered by the true
    reward, pairs of equal true reward masked), and one-vs-many groups (each prompt's best
    response against the others; prompts where no response is strictly worse are left
    out, `ovm_prompts` lists the others)."""

    chosen: np.ndarray     # (X, P) output index
    rejected: np.ndarray   # (X, P)
    mask: np.ndarray       # (X, P) bool
    ovm_prompts: np.ndarray    # (X1,) prompt index
    ovm_chosen: np.ndarray     # (X1,)
    ovm_rejected: np.ndarray   # (X1, M - 1)
    ovm_mask: np.ndarray       # (X1, M - 1) bool


def preference_set(responses: np.ndarray, true_reward: np.ndarray) -> Preferences:
    """Build the pairs and one-vs-many groups from `responses` `(X, M)` output indices."""
    x, m = responses.shape
    rows = np.arange(x)[:, None]
    r = true_reward[rows, responses]
    i, j = np.triu_indices(m, k=1)
    a, b = responses[:, i], responses[:, j]
    ra, rb = r[:, i], r[:, j]
    chosen, rejected = np.where(ra > rb, a, b), np.where(ra > rb, b, a)
    mask = ra != rb
    best = np.argmax(r, axis=1)
    others = np.array([[c for c in range(m) if c != bi] for bi in best])
    o_idx = np.take_along_axis(responses, others, axis=1)
    o_mask = np.take_along_axis(r, others, axis=1) < r[np.arange(x), best][:, None]
    keep = np.flatnonzero(o_mask.any(axis=1))
    return Preferences(
        chosen, rejected, mask, keep, responses[np.arange(x), best][keep], o_idx[keep], o_mask[keep],
    )


def sample_responses(rng: np.random.Generator, logp: np.ndarray, m: int) -> np.ndarray:
    """`m` distinct responses per prompt, drawn without replacement with probabilities
    `exp(logp)` (Gumbel-top-`m`: the first is a draw from the policy, the next a draw
    from the rest, ...); uniform `logp` gives `m` distinct outputs drawn uniformly."""
    g = rng.gumbel(size=logp.shape)
    return np.argsort(-(logp + g), axis=-1, kind="stable")[:, :m]


# ----------------------------------------------------------------------------- metrics


@jax.jit
def _metrics(rewards, r_true, phi, logp_pol, theta_ref, logp_ref, pairs, ovm):
    """Every metric for each proxy of `rewards` `(B, X, K)`: the accuracy-type metrics
    use the initial policy (`logp_pol`: weights, mean proxy reward); the teacher scores
    use the reference policy of the preference set (`theta_ref`, `logp_ref`)."""
    chosen, rejected, mask = pairs
    prompts, o_chosen, o_rejected, o_mask = ovm
    lc = jnp.take_along_axis(logp_pol, chosen, axis=-1)
    lr = jnp.take_along_axis(logp_pol, rejected, axis=-1)
    lp_o = logp_pol[prompts]
    olc = jnp.take_along_axis(lp_o, o_chosen[:, None], axis=-1)[:, 0]
    olr = jnp.take_along_axis(lp_o, o_rejected, axis=-1)
    ref_policy = LogLinear(phi, theta_ref)

    def one(rp):
        v = gm.mean_reward(logp_pol, rp)
        rc = jnp.take_along_axis(rp, chosen, axis=-1)
        rr = jnp.take_along_axis(rp, rejected, axis=-1)
        rp_o, v_o = rp[prompts], v[prompts]
        orc = jnp.take_along_axis(rp_o, o_chosen[:, None], axis=-1)[:, 0]
        orr = jnp.take_along_axis(rp_o, o_rejected, axis=-1)
        return {
            "acc": gm.acc(rc, rr, mask),
            "acc_w": gm.acc_w(rc, rr, lc, lr, mask),
            "hacc": gm.hacc(rc, rr, v, mask),
            "hacc_w": gm.hacc_w(rc, rr, v, lc, lr, mask),
            "ovm_acc": gm.one_vs_many_acc(orc, orr, o_mask),
            "ovm_acc_w": gm.one_vs_many_acc_w(orc, orr, olc, olr, o_mask),
            "ovm_hacc": gm.one_vs_many_hacc(orc, orr, v_o, o_mask),
            "ovm_hacc_w": gm.one_vs_many_hacc_w(orc, orr, v_o, olc, olr, o_mask),
            "reward_variance": gm.reward_variance(logp_ref, rp),
            "rate_tabular": gm.true_reward_rate(logp_ref, rp, r_true),
            "rate_loglinear": true_reward_rate(ref_policy, rp, r_true),
        }

    return jax.vmap(one)(rewards)


def _metric_values(pop: Population, setting: Setting, logp_pol, theta_ref, prefs: Preferences) -> dict:
    logp_ref = _log_probs(setting, theta_ref)
    pairs = tuple(jnp.asarray(a) for a in (prefs.chosen, prefs.rejected, prefs.mask))
    ovm = tuple(jnp.asarray(a) for a in (prefs.ovm_prompts, prefs.ovm_chosen, prefs.ovm_rejected, prefs.ovm_mask))
    out = _metrics(jnp.asarray(pop.rewards), jnp.asarray(setting.true_reward), jnp.asarray(setting.features),
                   jnp.asarray(logp_pol), jnp.asarray(theta_ref), jnp.asarray(logp_ref), pairs, ovm)
    return {k: np.asarray(v, float) for k, v in out.items()}


# ---------------------------------------------------------------------------- training


def _trainer(algorithm: str, tc: Training, steps: int, every: int):
    """A jitted `(theta0, phi, r_true, rewards, keys) -> (true reward at the records,
    time to the target, status)`, vmapped over the proxies (one compile per method)."""
    method = make_method(ALGORITHMS[algorithm], learning_rate=tc.learning_rate, steps=steps, samples=tc.rloo_samples)
    target = (tc.target,)

    @jax.jit
    def run(theta0, phi, r_true, rewards, keys):
        def one(rp, key):
            sol = solve(LogLinear(phi, theta0), reward=rp, true_reward=r_true, method=method,
                        key=key if method.needs_key else None, saveat=SaveAt(every=every),
                        targets=target, normalized_targets=True)
            return sol.true_reward, sol.target_times[0], status_code(sol.status)

        return jax.vmap(one)(rewards, keys)

    return run


# ------------------------------------------------------------------------------ report


def _label(algorithm: str, policy: str, budget: int) -> str:
    return f"{algorithm}/{policy}/{budget}"


def _setting(row: dict) -> str:
    """The label `<algorithm>/<initial policy>/<budget>` of a correlation row (whose CSV keeps
    the three in the separate columns `method`, `policy`, `budget`)."""
    return _label(row["method"], row["policy"], row["budget"])


def _fmt_ci(row: dict, stat: str) -> str:
    return f"{row[stat]:+.2f} [{row[stat + '_lo']:+.2f}, {row[stat + '_hi']:+.2f}]"


@dataclass(frozen=True)
class Tables:
    """`rows`: the correlation of every metric, preference set and setting with the
    true-reward gain, with bootstrap intervals (`correlations.csv`, columns `CSV_COLUMNS`);
    `by_family`: the same within each proxy family, point estimates (`correlations_by_family.csv`);
    `proxies`: one row per proxy and initial policy, its metrics and outcomes (`proxies.csv`);
    `per_policy`: per initial policy, the population, metric values, outcomes and runs;
    `info`: per initial policy, what the summary says of it; `setting`: the problem;
    `sim_seconds`, `corr_seconds`: the time the runs and the correlations took."""

    rows: list[dict]
    by_family: list[dict]
    proxies: list[dict]
    per_policy: dict[str, dict]
    info: dict[str, dict]
    setting: Setting
    sim_seconds: float
    corr_seconds: float


def compute(config: Config) -> Tables:
    pc, pol, px, pref, tc, ac = (config.problem, config.policies, config.proxies, config.preferences,
                                 config.training, config.analysis)
    budgets = list(tc.budgets)
    n_boot = ac.bootstrap
    steps = budgets[-1]
    every = math.gcd(*budgets)

    start = time.perf_counter()
    setting = make_setting(pc, pc.prompts)
    x, k = setting.true_reward.shape
    uniform = np.full((x, k), -math.log(k))
    off_prefs = preference_set(sample_responses(np.random.default_rng([pref.seed, 0]), uniform,
                                                pref.responses), setting.true_reward)
    trainers = {a: _trainer(a, tc, steps, every) for a in ALGORITHMS}
    phi, r_true = jnp.asarray(setting.features), jnp.asarray(setting.true_reward)

    per_policy, proxy_rows, info = {}, [], {}
    bar = _progress.bar(len(pol.names) * len(ALGORITHMS),
                        "rm-metrics: proxy populations (compilation included)", unit="run")
    for pi_idx, (name, c) in enumerate(zip(pol.names, pol.theta_style, strict=True)):
        theta0 = initial_theta(pc, c)
        logp0 = _log_probs(setting, theta0)
        p0 = np.exp(logp0)
        on_prefs = preference_set(
            sample_responses(np.random.default_rng([pref.seed, pi_idx + 1]), logp0, pref.responses),
            setting.true_reward)
        pop = proxy_population(px, setting, logp0, px.per_family)
        n = len(pop.family)
        metric_vals = {
            "off-policy": _metric_values(pop, setting, logp0, np.zeros_like(theta0), off_prefs),
            "on-policy": _metric_values(pop, setting, logp0, theta0, on_prefs),
        }
        # The true reward itself runs as one more member of the batch (a reference, not
        # part of the population), so that nothing recompiles.
        batch = jnp.asarray(np.concatenate([pop.rewards, setting.true_reward[None]]))
        keys = jax.random.split(jax.random.fold_in(jax.random.key(tc.seed), pi_idx), n + 1)
        runs, ref = {}, {}
        for a in ALGORITHMS:
            if bar is not None:
                bar.set_postfix_str(f"policy {name}, {a}, {n} proxies")
            traj, t_hit, status = (np.asarray(v) for v in trainers[a](jnp.asarray(theta0), phi, r_true, batch, keys))
            if bar is not None:
                bar.update(1)
            runs[a] = (traj[:n].astype(float), t_hit[:n].astype(float), status[:n])
            ref[a] = (traj[n:].astype(float), t_hit[n:].astype(float))
        v0 = float(np.sum(p0 * setting.true_reward, axis=-1).mean())
        info[name] = {
            "p_best": float(p0[:, 0].mean()), "p_mediocre": float((p0 * setting.mediocre).sum(-1).mean()),
            "v0": v0, "on_pairs": int(on_prefs.mask.sum()), "on_ovm_prompts": len(on_prefs.ovm_prompts),
            "reference": {a: (ref[a][0][0], float(ref[a][1][0])) for a in ALGORITHMS},
        }
        outcomes = {}
        for a, (traj, _, status) in runs.items():
            ok = status == OK_CODE
            for b in budgets:
                outcomes[(a, b)] = np.where(ok, traj[:, b // every] - traj[:, 0], np.nan)
        per_policy[name] = {"pop": pop, "metrics": metric_vals, "outcomes": outcomes, "runs": runs}
        for i in range(n):
            row = {"policy": name, "proxy": i, "family": pop.family[i], "size": float(pop.size[i]),
                   "prompt_fraction": float(pop.fraction[i]),
                   "rms_error": float(np.sqrt(np.mean((pop.rewards[i] - setting.true_reward) ** 2)))}
            for s in PAIR_SETS:
                for mname in METRICS:
                    row[f"{mname}@{s}"] = metric_vals[s][mname][i]
            for a, (_, t_hit, status) in runs.items():
                for b in budgets:
                    row[f"gain_{a}_{b}"] = float(outcomes[(a, b)][i])
                row[f"time_to_target_{a}"] = float(t_hit[i])
                row[f"status_{a}"] = status_name(status[i])
            proxy_rows.append(row)
    if bar is not None:
        bar.close()
    sim_time = time.perf_counter() - start

    # Correlations across the population, with bootstrap intervals.
    t_corr = time.perf_counter()
    rows, by_family = [], []
    for pi_idx, name in enumerate(_progress.each(pol.names, f"rm-metrics: correlations ({n_boot} bootstrap "
                                                 "resamples)", unit="policy")):
        d = per_policy[name]
        family = d["pop"].family
        valid = np.all([np.isfinite(y) for y in d["outcomes"].values()], axis=0)
        valid &= np.all([np.isfinite(v) for m in d["metrics"].values() for v in m.values()], axis=0)
        d["excluded"] = int((~valid).sum())  # failed runs are reported, never correlated
        counts = bootstrap_counts(int(valid.sum()), n_boot, ac.seed + pi_idx)
        xs = {(s, m): Resampled(d["metrics"][s][m][valid], counts) for s in PAIR_SETS for m in METRICS}
        for a in ALGORITHMS:
            for b in budgets:
                y = d["outcomes"][(a, b)]
                ys = Resampled(y[valid], counts)
                for s in PAIR_SETS:
                    for mname in METRICS:
                        row = {"metric": mname, "pairs": s, "method": a, "policy": name, "budget": b}
                        row.update(correlate_resampled(xs[(s, mname)], ys, counts, ac.confidence))
                        rows.append({c: row[c] for c in CSV_COLUMNS})
                        xv = d["metrics"][s][mname]
                        for fam in px.families:
                            sel = valid & (family == fam)
                            by_family.append({"metric": mname, "pairs": s, "method": a, "policy": name,
                                              "budget": b, "family": fam,
                                              "spearman": float(spearman(xv[sel], y[sel])),
                                              "kendall": float(kendall(xv[sel], y[sel]))})
    corr_time = time.perf_counter() - t_corr
    return Tables(rows, by_family, proxy_rows, per_policy, info, setting, sim_time, corr_time)


def report(tables: Tables, config: Config, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "correlations.csv", tables.rows)
    write_csv(out / "correlations_by_family.csv", tables.by_family)
    write_csv(out / "proxies.csv", tables.proxies)
    _save_figure_data(out, tables.per_policy, tables.rows, config.policies.names, list(config.training.budgets),
                      config.proxies.families)
    with _progress.phase("rm-metrics: figures"):
        figures = plot(out)
    _print_report(tables, config)
    list_files(out, ["correlations.csv", "correlations_by_family.csv", "proxies.csv", *figures])
    return figures


def _settings(names, budgets):
    return [(a, name, b) for name in names for a in ALGORITHMS for b in budgets]


def _print_report(tables: Tables, config: Config) -> None:
    pc, tc, ac, px = config.problem, config.training, config.analysis, config.proxies
    setting, info, per_policy, rows, by_family = (tables.setting, tables.info, tables.per_policy, tables.rows,
                                                  tables.by_family)
    budgets, n_boot, quick = list(tc.budgets), ac.bootstrap, config.quick
    x, k = setting.true_reward.shape
    names = config.policies.names
    n_total = sum(len(per_policy[nm]["pop"].family) for nm in names)
    per_family = len(per_policy[names[0]]["pop"].family) // len(px.families)
    say(f"RM metrics vs policy-gradient outcome{' (quick)' if quick else ''}: {x} prompts x {k} outputs "
        f"(1 best, {pc.mediocre} mediocre), log-linear policy with {pc.features} shared features; "
        f"{per_family} proxies in each of {len(px.families)} families ({', '.join(px.families)}), "
        f"{len(names)} initial policies; SGD (exact gradient) and RLOO ({tc.rloo_samples} samples per prompt) "
        f"at lr {tc.learning_rate:g} for {budgets[-1]} steps; outcome = true-reward gain after "
        f"{', '.join(str(b) for b in budgets[:-1])}{' and ' if len(budgets) > 1 else ''}{budgets[-1]} steps. "
        f"Preference sets: {config.preferences.responses} responses per prompt, all pairs (off-policy: "
        "uniform; on-policy: from the initial policy).")
    for nm in names:
        inf, d = info[nm], per_policy[nm]
        say(f"\nInitial policy {nm!r}: p(y*) = {inf['p_best']:.3f}, p(mediocre) = {inf['p_mediocre']:.3f}, "
            f"V_G(0) = {inf['v0']:.3f}; on-policy set: {inf['on_pairs']} pairs, {inf['on_ovm_prompts']} "
            f"one-vs-many prompts."
            + (f" {d['excluded']} proxies left out of the correlations (a failed run or a non-finite metric)."
               if d["excluded"] else ""))
        every = math.gcd(*budgets)
        shown, reach = [], []
        for a in ALGORITHMS:
            traj, t_ref = inf["reference"][a]
            _, t_hit, status = d["runs"][a]
            for b in budgets:
                g, rg = d["outcomes"][(a, b)], traj[b // every] - traj[0]
                shown.append({"method": a, "budget": b, "true": f"{rg:+.3f}",
                              "range": f"{np.nanmin(g):+.3f} .. {np.nanmax(g):+.3f}",
                              "median": f"{np.nanmedian(g):+.3f}", "beat": f"{np.mean(g > rg):.0%}",
                              "agree": f"{spearman(g, d['outcomes'][('exact', b)]):+.3f}" if a != "exact" else ""})
            reached = np.isfinite(t_hit)
            t_txt = f"median step {np.median(t_hit[reached]):.0f}" if reached.any() else "never"
            t_true = "never" if math.isinf(t_ref) else f"step {t_ref:.0f}"
            failed = int((status != OK_CODE).sum())
            reach.append(f"  {a}: {reached.mean():.0%} of proxies, {t_txt} (true reward: {t_true})"
                         + (f"; {failed} runs failed (left out)" if failed else ""))
        print(table(shown, [("method", "method"), ("budget", "steps"), ("true", "gain\non r_G"),
                            ("range", "gain on proxies:\nrange"), ("median", "\nmedian"),
                            ("beat", "beat\nr_G"), ("agree", "Spearman\nwith exact")], keys=2))
        say(f"Reach {tc.target:g} of the way to the best true reward within {budgets[-1]} steps:")
        for line in reach:
            say(line)

    settings = _settings(names, budgets)
    lookup = {(r["metric"], r["pairs"], _setting(r)): r for r in rows}
    header = {"reward_variance": "reward\nvar", "rate_tabular": "rate\ntab", "rate_loglinear": "rate\nll",
              **{m: m.replace("ovm_", "ovm\n") for m in METRICS if m.startswith("ovm_")}}
    for s in PAIR_SETS:
        say(f"\nSpearman correlation with the true-reward gain across the population, metrics on the {s} "
            f"preference set (rows: method/initial policy/budget in steps; 95% CIs from {n_boot} bootstrap "
            "resamples in correlations.csv):")
        shown = []
        for a, nm, b in settings:
            label = _label(a, nm, b)
            shown.append({"setting": label, **{m: f"{lookup[(m, s, label)]['spearman']:+.2f}" for m in METRICS}})
        print(table(shown, [("setting", "setting"), *((m, header.get(m, m)) for m in METRICS)]))

    thr = ac.predictive
    say(f"\nBest predictor per setting (by Spearman; a metric 'predicts' when its CI lower bound exceeds {thr:g}):")
    failing = []
    for a, nm, b in settings:
        label = _label(a, nm, b)
        cand = [lookup[(m, s, label)] for s in PAIR_SETS for m in METRICS]
        cand = [r for r in cand if np.isfinite(r["spearman"])]
        cand.sort(key=lambda r: -r["spearman"])
        best = cand[0]
        acc_rows = [r for r in cand if r["metric"] in METRICS[:8]]
        best_acc = acc_rows[0] if acc_rows else None
        plain = lookup[("acc", "off-policy", label)]
        good = [r for r in cand if r["spearman_lo"] > thr]
        misleading = [r for r in cand if r["spearman_hi"] < -thr]
        if not good:
            failing.append(label)
        say(f"  {label}: best {best['metric']} ({best['pairs']}) Spearman {_fmt_ci(best, 'spearman')}, "
            f"Kendall {_fmt_ci(best, 'kendall')}, Pearson {_fmt_ci(best, 'pearson')}"
            + (f"; best accuracy-type {best_acc['metric']} ({best_acc['pairs']}) {_fmt_ci(best_acc, 'spearman')}"
               if best_acc is not None and best_acc is not best else "")
            + f"; plain acc (off-policy) {_fmt_ci(plain, 'spearman')}; {len(good)} of {len(cand)} predict"
            + (f", {len(misleading)} mislead (CI below {-thr:g}: "
               + ", ".join(f"{r['metric']} ({r['pairs']}) {r['spearman']:+.2f}" for r in misleading) + ")"
               if misleading else "") + ".")
    if failing:
        say(f"  No metric predicts (CI lower bound > {thr:g}) in: {', '.join(failing)}.")
    else:
        say(f"  In every setting at least one metric predicts (CI lower bound > {thr:g}).")

    say(f"\nWithin one family (Spearman, point estimates; correlations_by_family.csv): families where no metric "
        f"reaches {thr:g}:")
    fam_lookup: dict = {}
    for r in by_family:
        fam_lookup.setdefault((_setting(r), r["family"]), []).append(r)
    for a, nm, b in settings:
        label = _label(a, nm, b)
        bad = []
        for fam in px.families:
            vals = [r["spearman"] for r in fam_lookup[(label, fam)] if np.isfinite(r["spearman"])]
            best = max(vals) if vals else math.nan
            if not best >= thr:
                bad.append(f"{fam} (best {best:+.2f})")
        say(f"  {label}: " + (", ".join(bad) if bad else "none"))
    say(f"\nSimulated {n_total} proxies x {len(ALGORITHMS)} methods in {tables.sim_seconds:.1f} s, correlations "
        f"in {tables.corr_seconds:.1f} s (compilation included).")


# ----------------------------------------------------------------------------- figures


SHOWN_VS_BUDGET = ("acc", "hacc_w", "ovm_hacc", "reward_variance", "rate_tabular", "rate_loglinear")


def _save_figure_data(out: Path, per_policy: dict, rows: list[dict], names, budgets, families) -> None:
    """Save what the figures show (`figures.npz`): the correlation table, the correlation of
    each shown metric at every recorded budget, and the metric values and gains behind the
    scatter plots."""
    from ..plotting import save_figure_data

    lookup = {(r["metric"], r["pairs"], _setting(r)): r for r in rows}
    labels = [_label(*s) for s in _settings(names, budgets)]
    every = math.gcd(*budgets)
    b = budgets[-1]
    data: dict = {
        "study": "rm-metrics", "names": list(names), "budgets": list(budgets), "families": list(families),
        "settings": labels,
        "spearman": np.array([[lookup[(m, s, lab)]["spearman"] for lab in labels] for s in PAIR_SETS for m in METRICS]),
        "policies": {},
    }
    for nm in names:
        d = per_policy[nm]
        traj = d["runs"]["exact"][0]
        fam = np.asarray(d["pop"].family)
        entry = {
            "steps": np.arange(1, traj.shape[1]) * every,
            "gain": np.asarray(d["outcomes"][("exact", b)]),
            "family": np.array([list(families).index(f) for f in fam]),
        }
        for s in PAIR_SETS:
            entry[s] = {
                "vs_budget": {m: np.array([spearman(d["metrics"][s][m], traj[:, t] - traj[:, 0])
                                           for t in range(1, traj.shape[1])]) for m in SHOWN_VS_BUDGET},
                "metric": {m: np.asarray(d["metrics"][s][m]) for m in METRICS},
                "spearman": np.array([lookup[(m, s, _label("exact", nm, b))]["spearman"] for m in METRICS]),
                "kendall": np.array([lookup[(m, s, _label("exact", nm, b))]["kendall"] for m in METRICS]),
            }
        data["policies"][nm] = entry
    save_figure_data(out, data)


def plot(out: Path) -> list[Path]:
    """Draw the rm-metrics figures from the data saved in `out`.

    **Arguments:**

    - `out`: the study's result folder (with `figures.npz`).

    **Returns:** the paths of the figures written: `correlation_heatmap.png`,
    `correlation_vs_budget.png`, and one `scatter_<initial policy>_<pair set>.png` per
    initial policy and preference set.
    """
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    from ..plotting import load_figure_data

    out = Path(out)
    d = load_figure_data(out)
    names, budgets, families = list(d["names"]), [int(b) for b in np.atleast_1d(d["budgets"])], list(d["families"])
    labels = list(d["settings"])
    paths = []

    # Heat map of Spearman correlations: metric x pair set (rows) by setting (columns).
    mat = d["spearman"]
    fig, ax = plt.subplots(figsize=(0.7 * len(labels) + 4.6, 0.3 * mat.shape[0] + 2.4), layout="constrained")
    im = ax.imshow(mat, cmap="RdBu", vmin=-1, vmax=1, aspect="auto")
    for (i, j), v in np.ndenumerate(mat):
        ax.text(j, i, "n/a" if not np.isfinite(v) else f"{v:+.2f}", ha="center", va="center", fontsize=8,
                color="white" if np.isfinite(v) and abs(v) > 0.6 else "black")
    ax.set_xticks(range(len(labels)), labels, rotation=35, ha="right", fontsize=8)
    ax.set_yticks(range(mat.shape[0]), [f"{m} ({s})" for s in PAIR_SETS for m in METRICS], fontsize=8)
    ax.axhline(len(METRICS) - 0.5, color="black", lw=1)
    ax.set_xlabel("PG method / initial policy / budget (steps)")
    ax.set_ylabel("metric (preference set)")
    fig.colorbar(im, ax=ax, label="Spearman correlation of the metric\nwith the true-reward gain", fraction=0.04,
                 pad=0.01)
    ax.set_title("Which metric predicts the true-reward gain of policy gradient on the proxy?\n(cell text and "
                 "colour: Spearman rank correlation across the proxy reward models)", fontsize=10)
    paths.append(out / "correlation_heatmap.png")
    save_figure(fig, paths[-1], dpi=110)

    # Correlation against the budget, at every recorded step (point estimates).
    fig, axes = plt.subplots(len(PAIR_SETS), len(names), figsize=(5.2 * len(names), 3.4 * len(PAIR_SETS) + 1.0),
                             sharex=True, sharey=True, squeeze=False, layout="constrained")
    for j, nm in enumerate(names):
        pol = d["policies"][nm]
        for i, s in enumerate(PAIR_SETS):
            ax = axes[i, j]
            for k, m in enumerate(SHOWN_VS_BUDGET):
                ax.plot(pol["steps"], pol[s]["vs_budget"][m], color=f"C{k}", lw=1.5, label=m)
            ax.axhline(0, color="black", lw=0.6)
            for b in budgets:
                ax.axvline(b, color="grey", lw=0.6, ls=":")
            ax.set_xscale("log")
            ax.set_ylim(-1, 1)
            ax.set_title(f"initial policy {nm!r}, metrics on the {s} set", fontsize=9)
            if i == len(PAIR_SETS) - 1:
                ax.set_xlabel("budget (SGD steps, exact gradient)")
            if j == 0:
                ax.set_ylabel("Spearman(metric, gain)")
            ax.grid(alpha=0.3)
    handles, labs = axes[0, 0].get_legend_handles_labels()
    handles.append(Line2D([], [], color="grey", lw=0.6, ls=":"))
    labs.append("budgets in the tables")
    fig.legend(handles, labs, loc="outside lower center", ncol=len(labs), fontsize=8, frameon=False)
    fig.suptitle("How well each metric predicts the true-reward gain, as a function of the training budget",
                 fontsize=10)
    paths.append(out / "correlation_vs_budget.png")
    save_figure(fig, paths[-1], dpi=110)

    # Scatter plots, one figure per (initial policy, preference set), one panel per metric;
    # the outcome is the exact-gradient gain at the last budget.
    colors = {f: f"C{i}" for i, f in enumerate(families)}
    b = budgets[-1]
    ncol = 4
    nrow = math.ceil(len(METRICS) / ncol)
    for nm in names:
        pol = d["policies"][nm]
        y, fam = pol["gain"], pol["family"]
        for s in PAIR_SETS:
            fig, axes = plt.subplots(nrow, ncol, figsize=(3.3 * ncol, 2.7 * nrow + 1.2), sharey=True,
                                     squeeze=False, layout="constrained")
            for j, m in enumerate(METRICS):
                ax = axes.flat[j]
                xv = pol[s]["metric"][m]
                for fi, f in enumerate(families):
                    sel = fam == fi
                    ax.plot(xv[sel], y[sel], ".", ms=3.5, alpha=0.6, color=colors[f])
                ax.set_title(f"Spearman {pol[s]['spearman'][j]:+.2f}, Kendall {pol[s]['kendall'][j]:+.2f}",
                             fontsize=9)
                ax.set_xlabel(m, fontsize=9)
                ax.xaxis.set_major_locator(MaxNLocator(4))
                ax.yaxis.set_major_locator(MaxNLocator(5))
                ax.tick_params(labelsize=8)
                if j % ncol == 0:
                    ax.set_ylabel(f"true-reward gain after {b} steps", fontsize=9)
                ax.grid(alpha=0.3)
            for ax in axes.flat[len(METRICS):]:
                ax.set_visible(False)
            handles = [Line2D([], [], ls="", marker="o", color=colors[f], label=f) for f in families]
            fig.legend(handles=handles, loc="outside lower center", ncol=len(families), fontsize=9, frameon=False,
                       title="proxy family", title_fontsize=9)
            fig.suptitle(f"Initial policy {nm!r}, metrics on the {s} preference set: metric (x) vs true-reward "
                         f"gain of exact-gradient SGD after {b} steps (y),\none point per proxy reward model",
                         fontsize=10)
            paths.append(out / f"scatter_{nm}_{s}.png")
            save_figure(fig, paths[-1], dpi=100)
    return paths
