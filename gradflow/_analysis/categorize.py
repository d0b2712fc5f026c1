"""Error categorisation: is a proxy reward harmful, benign or beneficial?

`gradflow.categorize` trains the same initial policy with the same method on each proxy
and on the true reward, and compares the time to a true-reward target (and, when neither
gets there, the true reward at the horizon). Alongside it reports the *instantaneous*
prediction of the rate formula, `dV_G/dt` at `t = 0` under the proxy against under the
true reward, and which outputs gain probability at `t = 0` under each, so the two lenses
can be compared.
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from .. import sweep
from .._engine.methods import AbstractMethod
from .._engine.objective import (
    Problem,
    Regularization,
    as_reward,
    gradient,
    reward_range,
    true_reward_rate,
)
from .._engine.solve import SaveAt, solve
from .._engine.status import OK_CODE, status_code, status_name
from .._util import validate as v
from ..policies import AbstractPolicy

LABELS = ("harmful", "benign", "beneficial")


class Categorization(eqx.Module):
    """The result of [`gradflow.categorize`][] (NumPy arrays, one entry per proxy).

    **Fields:**

    - `label`: `"harmful"`, `"benign"`, `"beneficial"`, or `"failed"` when the proxy's run
      diverged or hit `max_steps` (such runs are left out of `counts` and `agreement`).
    - `time`: the proxy run's time (flow) or step (discrete) to the target; `inf` if never.
    - `time_ratio`: `time / reference_time` (below 1: the proxy is faster); `nan` when
      the ratio is undefined (both never reach the target, or both start above it).
    - `final_true_reward`: the true reward at the horizon.
    - `rate`: `dV_G/dt` at `t = 0` when training on the proxy (the exact flow's rate;
      the mean first step of the discrete and unbiased sampled methods points the same
      way).
    - `predicted`: the instantaneous prediction, the same three labels from `rate`
      against `reference_rate`.
    - `attracts`: `(proxies, prompts, outputs)`, whether each output's probability rises
      at `t = 0` under the proxy; `reference_attracts` the same under the true reward.
    - `reference_time`, `reference_final_true_reward`, `reference_rate`: the run trained
      on the true reward.
    - `tolerance`, `reward_tolerance`: the classification tolerances used.
    """

    label: np.ndarray
    time: np.ndarray
    time_ratio: np.ndarray
    final_true_reward: np.ndarray
    rate: np.ndarray
    predicted: np.ndarray
    attracts: np.ndarray
    reference_time: float
    reference_final_true_reward: float
    reference_rate: float
    reference_attracts: np.ndarray
    tolerance: float
    reward_tolerance: float

    @property
    def failed(self) -> int:
        """How many proxies' runs failed (excluded from `counts` and `agreement`)."""
        return int(np.sum(self.label == "failed"))

    def counts(self) -> dict[str, int]:
        """`{label: number of proxies}` over the three labels (failed runs excluded)."""
        return {name: int(np.sum(self.label == name)) for name in LABELS}

    @property
    def agreement(self) -> float:
        """The fraction of (non-failed) proxies whose instantaneous prediction matches the
        simulated label."""
        ok = self.label != "failed"
        return float(np.mean(self.predicted[ok] == self.label[ok])) if ok.any() else float("nan")


def classify_codes(time, reference_time, final, reference_final, tolerance, reward_tolerance):
    """The rule of [`gradflow.categorize`][] as codes `-1` (harmful), `0` (benign), `1`
    (beneficial), and the time ratios; `jax.numpy`, so it runs under `jit` and `vmap`.

    - Both reach the target: `ratio < 1 - tolerance` is beneficial, `ratio > 1 +
      tolerance` harmful, otherwise benign; when the reference starts at the target
      (`reference_time == 0`) there is nothing to speed up: benign.
    - Only the proxy run reaches it: beneficial; only the reference: harmful.
    - Neither: compare the true reward at the horizon, with `reward_tolerance`.
    """
    time, final = jnp.asarray(time), jnp.asarray(final)
    t0, f0 = jnp.asarray(reference_time, time.dtype), jnp.asarray(reference_final, final.dtype)
    reached, reached0 = jnp.isfinite(time), jnp.isfinite(t0)
    safe = jnp.where(reached0 & (t0 > 0), t0, 1.0)
    ratio = jnp.where(reached & reached0 & (t0 > 0), time / safe, jnp.nan)
    by_time = jnp.where(ratio < 1 - tolerance, 1, jnp.where(ratio > 1 + tolerance, -1, 0))
    by_time = jnp.where(t0 == 0, 0, by_time)
    by_reward = jnp.where(final > f0 + reward_tolerance, 1, jnp.where(final < f0 - reward_tolerance, -1, 0))
    code = jnp.where(reached & reached0, by_time,
                     jnp.where(reached, 1, jnp.where(reached0, -1, by_reward)))
    return code, ratio


def classify(
    time, reference_time, final, reference_final, failed, tolerance: float, reward_tolerance: float
) -> tuple[np.ndarray, np.ndarray]:
    """Labels and time ratios from times to the target (NumPy, vectorised): the rule of
    `classify_codes`, with `"failed"` where `failed`."""
    time, final = np.asarray(time, float), np.asarray(final, float)
    with jax.enable_x64(True):  # the comparison in double precision, as the tables hold it
        code, _ = classify_codes(time, float(reference_time), final, float(reference_final),
                                 tolerance, reward_tolerance)
        code = np.asarray(code)
    t0 = float(reference_time)
    with np.errstate(divide="ignore", invalid="ignore"):  # the ratio exactly as NumPy divides
        ratio = np.where(np.isfinite(time) & np.isfinite(t0) & (t0 > 0), time / t0, np.nan)
    label = np.array(LABELS, dtype=object)[code + 1]
    label = np.where(np.asarray(failed), "failed", label).astype(str)
    return label, ratio


def initial_rate(
    policy: AbstractPolicy,
    reward: Float[Array, "prompts outputs"],
    true_reward: Float[Array, "prompts outputs"],
    reg: Regularization,
) -> tuple[Float[Array, ""], Float[Array, "prompts outputs"]]:
    """`dV_G/dt` and `d pi/dt` at `t = 0` along the exact gradient of the (regularised)
    objective on `reward`."""
    problem = Problem.make(policy, reward, true_reward, reg)
    g, _ = gradient(policy.params, problem)
    return true_reward_rate(policy.params, g, problem)


def categorize(
    policy: AbstractPolicy,
    true_reward,
    proxies,
    *,
    method: AbstractMethod,
    target: float,
    t1=None,
    key=None,
    normalized: bool = False,
    tolerance: float = 0.05,
    reward_tolerance: float = 1e-3,
    chunk_size: int = 65536,
) -> Categorization:
    """Categorise each proxy reward as harmful, benign or beneficial for `policy` trained
    with `method`, against training on `true_reward` itself.

    **Arguments:**

    - `policy`: the initial policy.
    - `true_reward`: the ground truth, shape `(outputs,)` or `(prompts, outputs)`.
    - `proxies`: a batch of proxy rewards, shape `(proxies,) + true_reward.shape` (see
      `gradflow.perturb` for families of them).
    - `method`: any gradflow method; `t1` as in [`gradflow.solve`][].
    - `target`: the true-reward level whose first crossing is compared (a fraction of the
      way from the initial to the maximal true reward when `normalized=True`).
    - `key`: for the sampled methods: every proxy and the reference run use the same key
      (common random numbers, so that differences come from the rewards, not the noise).
    - `tolerance`: relative tolerance on the time ratio: within `1 +- tolerance` is benign.
      The same relative tolerance separates the instantaneous prediction's three labels.
    - `reward_tolerance`: absolute tolerance on the true reward at the horizon, used when
      neither run reaches the target.

    - `chunk_size`: proxies per compiled call (see [`gradflow.sweep.run`][]).

    **Returns:** a [`gradflow.Categorization`][].

    The proxies run through [`gradflow.sweep.run`][] in memory; to write a large sweep to
    disk and resume it, use `gradflow.sweep.run` with [`gradflow.proxy_row`][] directly
    (or `gradflow sweep CONFIG.toml`).
    """
    if not isinstance(policy, AbstractPolicy):
        raise ValueError(f"`policy` must be a gradflow policy; got {type(policy).__name__}.")
    if not (tolerance > 0 and reward_tolerance > 0):
        raise ValueError(
            f"`tolerance` and `reward_tolerance` must be positive; got {tolerance}, {reward_tolerance}."
        )
    r_true = as_reward("true_reward", true_reward, policy)
    batch = v.as_float_array("proxies", proxies)
    if batch.shape[1:] != r_true.shape and batch.shape[1:] != jnp.shape(true_reward):
        raise ValueError(
            f"`proxies` must have shape (proxies,) + {tuple(jnp.shape(true_reward))} (a batch of rewards "
            f"shaped like `true_reward`); got {tuple(batch.shape)}."
        )
    if batch.shape[0] == 0:
        raise ValueError("`proxies` must hold at least one proxy reward.")
    row = proxy_row(policy, r_true, method=method, targets=(float(target),), t1=t1, key=key,
                    normalized=normalized, attracts=True)
    # The reference runs as row 0 of the same batch: the same compiled program, so the
    # true reward as a proxy compares bit for bit equal to it.
    both = jnp.concatenate([jnp.broadcast_to(r_true, (1,) + r_true.shape),
                            jnp.broadcast_to(batch.reshape((batch.shape[0], -1) + batch.shape[-1:]),
                                             (batch.shape[0],) + r_true.shape)])
    out = sweep.run(row, both, chunk_size=chunk_size, progress=False)
    ref, out = {k: val[0] for k, val in out.items()}, {k: val[1:] for k, val in out.items()}
    if int(ref["status"]) != OK_CODE:
        raise ValueError(
            f"categorize: the reference run (trained on `true_reward`) ended with status "
            f"'{status_name(ref['status'])}'; nothing to compare against (adjust the method's settings)."
        )
    name = f"time_to_{float(target):g}"
    t, final, status, rate = out[name], out["final_true_reward"], out["status"], out["rate"]
    t_ref, f_ref, rate_ref = ref[name], ref["final_true_reward"], ref["rate"]
    label, ratio = classify(t, t_ref, final, f_ref, status != OK_CODE, tolerance, reward_tolerance)
    predicted = _predict(rate, float(rate_ref), tolerance)
    return Categorization(
        label=label,
        time=t,
        time_ratio=ratio,
        final_true_reward=final,
        rate=rate,
        predicted=predicted,
        attracts=out["attracts"],
        reference_time=float(t_ref),
        reference_final_true_reward=float(f_ref),
        reference_rate=float(rate_ref),
        reference_attracts=np.asarray(ref["attracts"]),
        tolerance=float(tolerance),
        reward_tolerance=float(reward_tolerance),
    )


def _predict(rate: np.ndarray, rate_ref: float, tolerance: float) -> np.ndarray:
    """Instantaneous labels: the proxy's rate against the reference rate, with the same
    relative tolerance (scaled by `|rate_ref|`)."""
    band = tolerance * abs(rate_ref)
    code = np.where(rate > rate_ref + band, 1, np.where(rate < rate_ref - band, -1, 0))
    return np.array(LABELS)[code + 1]


def proxy_row(
    policy: AbstractPolicy,
    true_reward,
    *,
    method: AbstractMethod,
    targets=(),
    t1=None,
    key=None,
    normalized: bool = False,
    attracts: bool = False,
    record: SaveAt | None = None,
) -> Callable[[Float[Array, "prompts outputs"]], dict]:
    """The per-proxy summary that [`gradflow.categorize`][] and reward sweeps record:
    a function `reward -> {column: scalar}` to vmap or pass to [`gradflow.sweep.run`][].

    Columns: `time_to_<target>` for each target (`inf` never reached, `nan` failed first),
    `final_true_reward`, `status` ([`gradflow.Status`][] code), `stall_level` and
    `stall_duration` (longest stall, `nan` if none), `rate` (`dV_G/dt` at `t = 0` under
    the reward) and, with `attracts=True`, `attracts`, the `(prompts, outputs)` mask of
    outputs whose probability rises at `t = 0`. With `record` (a [`gradflow.SaveAt`][]),
    also the series `true_reward` and `proxy_reward` (and `probs` if `record.probs`)
    recorded as it says: the trajectories of [`gradflow.sweep.Trajectories`][].

    **Arguments:** as in [`gradflow.categorize`][]; `targets` is a sequence of levels.
    For the sampled methods every row uses the same `key` (common random numbers); to give
    each row its own noise, build the row function inside a function of the key.
    """
    r_true = as_reward("true_reward", true_reward, policy)
    if key is not None and not method.needs_key:
        raise ValueError("`key` is only used by the sample-based methods.")
    if not normalized:  # checked here, while the true reward is concrete
        v.targets_in_range("targets", tuple(float(t) for t in targets), *reward_range(r_true, policy.weights))
    spec = _RowSpec(policy, r_true, method, t1, key, tuple(float(t) for t in targets), normalized, attracts,
                    record)
    # A `jax.tree_util.Partial` of a module-level function is a pytree (its arrays are leaves) and
    # still hashable for `jax.jit`: sweeps of the same structure (a new true reward, new policy
    # parameters) reuse one compilation.
    return jax.tree_util.Partial(_row, spec)


class _RowSpec(eqx.Module):
    """What [`gradflow.proxy_row`][]'s row function needs besides the reward."""

    policy: AbstractPolicy
    true_reward: Float[Array, "prompts outputs"]
    method: AbstractMethod
    t1: Float[Array, ""] | float | None
    key: PRNGKeyArray | None
    targets: tuple[float, ...] = eqx.field(static=True)
    normalized: bool = eqx.field(static=True)
    attracts: bool = eqx.field(static=True)
    record: SaveAt | None = None



def _row(spec: _RowSpec, reward) -> dict:
    r_true = spec.true_reward
    r = jnp.broadcast_to(reward, r_true.shape)  # a 1-D reward is shared by every prompt
    kw = {} if spec.key is None else {"key": spec.key}
    sol = solve(spec.policy, reward=r, true_reward=r_true, method=spec.method, t1=spec.t1, targets=spec.targets,
                normalized_targets=spec.normalized,
                saveat=summary_saveat(spec.method) if spec.record is None else spec.record, **kw)
    rate, dprobs = initial_rate(spec.policy, r, r_true, spec.method.regularization)
    out = {f"time_to_{t:g}": sol.target_times[i] for i, t in enumerate(spec.targets)}
    out.update(final_true_reward=sol.final_true_reward, status=status_code(sol.status), stall_level=sol.stall.level,
               stall_duration=sol.stall.duration, rate=rate)
    if spec.attracts:
        out["attracts"] = dprobs > 0
    if spec.record is not None:
        out.update(true_reward=sol.true_reward, proxy_reward=sol.proxy_reward)
        if spec.record.probs:
            out["probs"] = sol.probs
    return out


def summary_saveat(method) -> SaveAt:
    """Record as little as possible, the start and the end: crossings are tracked online."""
    return SaveAt(n=2) if method.continuous else SaveAt(every=method.steps)
