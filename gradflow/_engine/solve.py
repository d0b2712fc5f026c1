"""One run of a policy-gradient method: `gradflow.solve`, its `SaveAt` and `Solution`."""

from __future__ import annotations

from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int, PRNGKeyArray, PyTree

from .._util import validate as v
from ..policies import AbstractPolicy
from .integrate import Tracking
from .methods import AbstractMethod
from .objective import Problem, as_reward, expected, reward_range
from .status import Status
from .tracking import Stall, StallCriteria


class SaveAt(eqx.Module):
    """What to record along a run.

    **Arguments:**

    - `ts`: flow only: the times to record at (within `[0, t1]`, increasing).
    - `n`: flow only: when `ts` is `None`, record at `n` evenly spaced times on `[0, t1]`.
    - `every`: discrete only: record every `every` updates (steps `0, every, 2 every, ...`
      and always the last step).
    - `probs`: also record the output probabilities, shape `(saves, prompts, outputs)`.
    """

    ts: Float[Array, " times"] | None = None
    n: int = eqx.field(default=1001, static=True)
    every: int = eqx.field(default=1, static=True)
    probs: bool = eqx.field(default=False, static=True)

    def __check_init__(self):
        v.positive_int("n", self.n)
        v.positive_int("every", self.every)


class Solution(eqx.Module):
    """The result of [`gradflow.solve`][] for one run.

    Recorded series (length `saves`): `ts` (flow time) or `steps` (update count),
    `proxy_reward` and `true_reward` (expected rewards, prompt-weighted, exact even for
    the sampled methods), `reward_variance` (of the training reward), `grad_norm` (of the
    exact gradient of the full objective),
    `probs` (when asked, `(saves, prompts, outputs)`).

    Summaries: `status` (a [`gradflow.Status`][] item; `gf.status_code(sol.status)` is
    its integer code), `params` (final parameters), `num_steps` (accepted solver steps,
    or updates), `num_rejected_steps` (rejected solver steps; 0 for discrete methods),
    `num_jump_steps` (flow steps accepted across a jump of the vector field, first-order
    accurate; see `GradientFlow`'s `jump_floor`; 0 for a smooth flow), `targets` /
    `target_times` (crossings tracked online; `inf` if not reached, `nan` if the run
    failed first), `stall` (longest stall, tracked online) and `num_stalls`.

    Context for the analysis functions: `initial_true_reward`, `min_true_reward` /
    `max_true_reward` (achievable range), `horizon` (`t1` or `steps`), `record_every`
    (discrete recording stride).
    """

    ts: Float[Array, " saves"] | None
    steps: Int[Array, " saves"] | None
    proxy_reward: Float[Array, " saves"]
    true_reward: Float[Array, " saves"]
    reward_variance: Float[Array, " saves"]
    grad_norm: Float[Array, " saves"]
    probs: Float[Array, "saves prompts outputs"] | None
    status: Status
    params: PyTree[Array]
    num_steps: Int[Array, ""]
    num_rejected_steps: Int[Array, ""]
    num_jump_steps: Int[Array, ""]
    target_times: Float[Array, " targets"]
    stall: Stall
    num_stalls: Int[Array, ""]
    initial_true_reward: Float[Array, ""]
    min_true_reward: Float[Array, ""]
    max_true_reward: Float[Array, ""]
    horizon: Float[Array, ""]
    targets: tuple[float, ...] = eqx.field(static=True)
    normalized_targets: bool = eqx.field(static=True)
    record_every: int | None = eqx.field(static=True)

    @property
    def time(self) -> Float[Array, " saves"]:
        """`ts` for the flow, `steps` (as floats) for discrete methods."""
        return self.ts if self.ts is not None else self.steps.astype(self.true_reward.dtype)

    @property
    def final_true_reward(self) -> Float[Array, ""]:
        """The expected true reward at the end of the run."""
        return self.true_reward[..., -1]


def solve(
    policy: AbstractPolicy,
    *,
    reward,
    true_reward=None,
    method: AbstractMethod,
    t1=None,
    saveat: SaveAt | None = None,
    targets: Sequence[float] = (),
    normalized_targets: bool = False,
    stall: StallCriteria | None = None,
    key: PRNGKeyArray | None = None,
    stop_at_targets: bool = False,
    throw: bool = False,
) -> Solution:
    """Train `policy` on `reward` with `method`, tracking `true_reward`.

    **Arguments:**

    - `policy`: the initial policy: any [`gradflow.AbstractPolicy`][] ([`gradflow.TabularSoftmax`][],
      [`gradflow.LogLinear`][], [`gradflow.NeuralPolicy`][], [`gradflow.Autoregressive`][], ...).
    - `reward`: the training (proxy) reward, shape `(outputs,)` or `(prompts, outputs)`.
    - `true_reward`: the ground-truth reward tracked along the run (same shapes);
      defaults to `reward`.
    - `method`: [`gradflow.GradientFlow`][], [`gradflow.GradientAscent`][] or a
      sample-based method.
    - `t1`: the flow's final time (required for the flow, not allowed otherwise; discrete
      methods run their `steps`).
    - `saveat`: a [`gradflow.SaveAt`][]; default: 1001 evenly spaced times (flow) or every
      step (discrete).
    - `targets`: true-reward levels whose first crossing is tracked online
      (`sol.target_times`).
    - `normalized_targets`: `targets` are fractions of the way from the initial to the
      maximal achievable true reward.
    - `stall`: [`gradflow.StallCriteria`][] for the online stall tracking.
    - `key`: a JAX PRNG key (`jax.random.key(seed)`), required by the sample-based
      methods ([`gradflow.Reinforce`][], [`gradflow.RLOO`][], [`gradflow.GRPO`][],
      [`gradflow.PPO`][]) and rejected by the exact ones. The same key gives bitwise the
      same run; `jax.vmap` over a batch of keys runs many seeds in one compiled call.
    - `stop_at_targets`: flow only: end the run when its highest target is reached (by
      continuity every lower one has been reached by then), for callers that need only
      the times to targets. The records after the stop are `nan`; under `jax.vmap` the
      batch ends when its slowest run does.
    - `throw`: raise an error with the reason (a [`gradflow.Status`][] message) when the
      run fails, instead of returning the failure as data. For single runs; under
      `jax.jit` it raises when the computation runs.

    **Returns:** a [`gradflow.Solution`][].

    Works under `jax.jit` and `jax.vmap` (over rewards, initial parameters, learning
    rates, `t1`); concrete inputs are validated eagerly with `ValueError`s, traced ones
    with `equinox.error_if`.
    """
    if not isinstance(policy, AbstractPolicy):
        raise ValueError(f"`policy` must be a gradflow policy; got {type(policy).__name__}.")
    if not isinstance(method, AbstractMethod):
        raise ValueError(f"`method` must be a gradflow method (e.g. gf.GradientFlow()); got {method!r}.")
    saveat = SaveAt() if saveat is None else saveat
    stall = StallCriteria() if stall is None else stall
    reward = as_reward("reward", reward, policy)
    true_reward = reward if true_reward is None else as_reward("true_reward", true_reward, policy)
    targets = tuple(float(x) for x in targets)
    if any(not np.isfinite(x) for x in targets):
        raise ValueError(f"`targets` must be finite numbers; got {targets}.")
    if normalized_targets and any(not 0 <= x <= 1 for x in targets):
        raise ValueError(f"`targets` must lie in [0, 1] when `normalized_targets=True`; got {targets}.")
    if not normalized_targets:
        v.targets_in_range("targets", targets, *reward_range(true_reward, policy.weights))

    if method.needs_key:
        key = _as_key(key, method)
    elif key is not None:
        raise ValueError(
            f"`key` is only used by the sample-based methods; {type(method).__name__} is exact "
            "and deterministic (drop `key`)."
        )
    if stop_at_targets and not method.continuous:
        raise ValueError("`stop_at_targets` is for gf.GradientFlow; discrete methods run `method.steps` updates.")
    if stop_at_targets and not targets:
        raise ValueError("`stop_at_targets=True` needs `targets` to stop at.")
    if method.continuous:
        if t1 is None:
            raise ValueError("`t1` (the final flow time) is required for gf.GradientFlow.")
        t1 = v.positive_scalar("t1", t1)
        if saveat.every != 1:
            raise ValueError("`saveat.every` is for discrete methods; use `saveat.ts` or `saveat.n` for the flow.")
        if saveat.ts is not None:
            ts = v.as_float_array("saveat.ts", saveat.ts, ndim=(1,))
            ts = v.check(ts, lambda a: (a < 0) | (a > t1), "`saveat.ts` must lie within [0, t1].")
            ts = v.check(ts, lambda a: jnp.diff(a) <= 0, "`saveat.ts` must be strictly increasing.")
            saveat = eqx.tree_at(lambda s: s.ts, saveat, ts)
    else:
        if t1 is not None:
            raise ValueError("`t1` is only for gf.GradientFlow; discrete methods run `method.steps` updates.")
        if saveat.ts is not None:
            raise ValueError("`saveat.ts` is for the flow; use `saveat.every` for discrete methods.")
        if saveat.every > method.steps:
            raise ValueError(f"`saveat.every` ({saveat.every}) exceeds `steps` ({method.steps}).")
    sol = _solve(method, policy, reward, true_reward, t1, key, saveat, targets, normalized_targets, stall,
                 stop_at_targets)
    if throw:
        failed = sol.status != Status.ok
        if v.is_concrete(failed):
            if bool(jnp.any(failed)):
                raise RuntimeError(f"gradflow.solve: {Status[sol.status]}")
        else:
            sol = sol.status.error_if(sol, failed)
    return sol


def _as_key(key, method) -> PRNGKeyArray:
    name = type(method).__name__
    if key is None:
        raise ValueError(
            f"`key` is required: {name} samples outputs; pass e.g. `key=jax.random.key(0)` "
            "(vmap over `jax.random.split(key, n)` for n seeds)."
        )
    dtype = getattr(key, "dtype", None)
    typed = dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)
    raw = dtype == jnp.uint32 and getattr(key, "shape", None) == (2,)
    if not (typed and key.shape == ()) and not raw:
        raise ValueError(
            f"`key` must be one JAX PRNG key (`jax.random.key(seed)`, or a legacy uint32[2] "
            f"`jax.random.PRNGKey`); got {key!r}. To run many seeds, vmap over a batch of keys."
        )
    return key


@eqx.filter_jit
def _solve(method, policy, reward, true_reward, t1, key, saveat, targets, normalized_targets, stall, stop_at_targets):
    """The validated run, compiled once per structure: rewards, initial parameters and
    `t1` are arguments, so new values do not recompile."""
    vmin, vmax = reward_range(true_reward, policy.weights)
    v0 = expected(policy.probs(), true_reward, policy.weights)
    abs_targets = jnp.asarray(targets, v0.dtype)
    if normalized_targets:
        abs_targets = v0 + abs_targets * (vmax - v0)
    horizon = t1 if method.continuous else jnp.asarray(float(method.steps), v0.dtype)
    tracking = Tracking(abs_targets, *stall.resolve(vmin, vmax, horizon))
    problem = Problem.make(policy, reward, true_reward, method.regularization)
    run = method.integrate(problem, t1=t1, key=key, saveat=saveat, tracking=tracking, stop_at_targets=stop_at_targets)
    status = run.status
    status = Status.where((status == Status.ok) & policy.with_params(run.params).saturated(), Status.saturated,
                          status)
    hit = run.target_times
    hit = jnp.where(jnp.isinf(hit) & (status != Status.ok), jnp.nan, hit)  # unknown, not "never"
    recs = run.records
    return Solution(
        ts=run.ts,
        steps=run.steps,
        proxy_reward=recs.proxy_reward,
        true_reward=recs.true_reward,
        reward_variance=recs.reward_variance,
        grad_norm=recs.grad_norm,
        probs=recs.probs,
        status=status,
        params=run.params,
        num_steps=run.num_steps,
        num_rejected_steps=run.num_rejected_steps,
        num_jump_steps=run.num_jump_steps,
        target_times=hit,
        stall=run.stall,
        num_stalls=run.num_stalls,
        initial_true_reward=v0,
        min_true_reward=vmin,
        max_true_reward=vmax,
        horizon=horizon,
        targets=targets,
        normalized_targets=normalized_targets,
        record_every=saveat.every if run.ts is None else None,
    )

