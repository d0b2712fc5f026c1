"""One run of a policy-gradient method: `gradflow.solve`.

Discrete methods are a `lax.scan` over updates (nested: segments of `every` updates
between two records) with crossings and stalls tracked online, so a run stores only
what it records. The flow is one `diffrax.diffeqsolve`, saving the user's grid plus a
compact `(t, V_G, dV_G/dt)` record at every accepted solver step, from which crossings
are located between steps.
"""

from __future__ import annotations

from collections.abc import Sequence

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int, PRNGKeyArray, PyTree

from . import _validate as v
from ._analysis import (
    Stall,
    StallCriteria,
    crossings,
    stalls_along,
    tracker_finish,
    tracker_init,
    tracker_update,
)
from ._dynamics import (
    AbstractDiscreteMethod,
    AbstractMethod,
    Diagnostics,
    GradientFlow,
    Problem,
    gradient,
)
from ._estimators import AbstractSampledMethod
from ._problem import AbstractPolicy, as_reward, expected, reward_range, sum_outputs


class Status:
    """Codes of `Solution.status`: `OK` (0) the run reached its horizon; `DIVERGED` (1)
    its parameters or rewards became non-finite (the state is frozen at the last finite
    point); `MAX_STEPS` (2) the flow needed more than `max_steps` solver steps.
    `Status.name(code)` gives the text."""

    OK = 0
    DIVERGED = 1
    MAX_STEPS = 2
    names = ("ok", "diverged", "max steps hit")

    @classmethod
    def name(cls, code) -> str:
        return cls.names[int(code)]


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

    Summaries: `status` (see [`gradflow.Status`][]), `params` (final parameters),
    `num_steps` (solver steps or updates taken), `targets` / `target_times` (crossings
    tracked online; `inf` if not reached, `nan` if the run failed first), `stall` (longest
    stall, tracked online) and `num_stalls`.

    Context for the analysis functions: `initial_true_reward`, `min_true_reward` /
    `max_true_reward` (achievable range), `horizon` (`t1` or `steps`), `record_every`
    (discrete recording stride); for the flow, `step_ts`, `step_true_reward` and
    `step_true_rate` hold `(t, V_G, dV_G/dt)` at every accepted solver step (padded with
    `inf` up to `max_steps`), from which crossings are located between steps.
    """

    ts: Float[Array, " saves"] | None
    steps: Int[Array, " saves"] | None
    proxy_reward: Float[Array, " saves"]
    true_reward: Float[Array, " saves"]
    reward_variance: Float[Array, " saves"]
    grad_norm: Float[Array, " saves"]
    probs: Float[Array, "saves prompts outputs"] | None
    status: Int[Array, ""]
    params: PyTree[Array]
    num_steps: Int[Array, ""]
    target_times: Float[Array, " targets"]
    stall: Stall
    num_stalls: Int[Array, ""]
    initial_true_reward: Float[Array, ""]
    min_true_reward: Float[Array, ""]
    max_true_reward: Float[Array, ""]
    horizon: Float[Array, ""]
    step_ts: Float[Array, " max_steps"] | None
    step_true_reward: Float[Array, " max_steps"] | None
    step_true_rate: Float[Array, " max_steps"] | None
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


def _tree_where(pred, a, b):
    return jax.tree.map(lambda x, y: jnp.where(pred, x, y), a, b)


def _all_finite(tree) -> jax.Array:
    """Whether every entry is finite, as one scalar: a sum is finite iff its terms are
    (written with `sum_outputs` so that it stays a flat vector op under `vmap`)."""
    total = sum(jnp.sum(sum_outputs(jnp.atleast_1d(x))) for x in jax.tree.leaves(tree))
    return jnp.isfinite(total)


def _record(d: Diagnostics, probs: bool):
    return d if probs else eqx.tree_at(lambda x: x.probs, d, None)


def _solve_discrete(method: AbstractDiscreteMethod, policy, reward, true_reward, key, saveat, setup):
    targets, stall_target, max_rate, min_dur = setup
    reg = method.regularization
    problem = Problem(policy, reward, true_reward, reg.reference(policy))

    def diagnostics(params):
        d = gradient(params, policy, reward, true_reward, problem.log_ref, reg)[1]
        return _record(d, saveat.probs)

    def track(i, value, trk, prev, alive):
        i = i.astype(value.dtype)
        return tracker_update(trk, i, value, value - prev, alive, targets, stall_target, max_rate, min_dur)[0]

    # The hot loop carries only what the next update and the online tracker need; the
    # full diagnostics are computed at the recorded steps only. Step `i` draws its
    # randomness from `fold_in(key, i)`, so the bits do not depend on how the loop is cut.
    def step(i, carry):
        params, state, trk, prev, diverged = carry
        step_key = None if key is None else jax.random.fold_in(key, i)
        new_params, new_state, value = method.update(params, state, step_key, problem)
        trk = track(i, value, trk, prev, ~diverged)
        diverged = diverged | ~_all_finite(new_params)
        params, state = _tree_where(diverged, (params, state), (new_params, new_state))
        return params, state, trk, value, diverged

    def run(carry, start, count: int):
        # Static trip count: lowers to a scan, so reverse-mode differentiation works.
        return jax.lax.fori_loop(0, count, lambda j, c: step(start + j, c), carry)

    params0 = policy.params
    dtype = jax.eval_shape(lambda p: diagnostics(p).true_reward, params0).dtype
    trk0 = tracker_init(len(targets), dtype)
    carry = (params0, method.init(params0, problem), trk0, jnp.asarray(jnp.inf, dtype), jnp.asarray(False))

    n, k = method.steps, saveat.every
    segments, rest = divmod(n, k)
    stops = [k * s for s in range(1, segments + 1)] + ([n] if rest else [])

    def segment(carry, start):
        carry = run(carry, start, k)
        return carry, diagnostics(carry[0])

    first = diagnostics(params0)
    carry, recs = jax.lax.scan(segment, carry, jnp.arange(segments) * k)
    if rest:
        carry = run(carry, jnp.asarray(segments * k), n - segments * k)
        recs = jax.tree.map(lambda a, b: jnp.concatenate([a, b[None]]), recs, diagnostics(carry[0]))
    recs = jax.tree.map(lambda a, b: jnp.concatenate([a[None], b]), first, recs)
    # The last policy (after n updates) has not been seen by the tracker yet.
    params, _, trk, prev, diverged = carry
    trk = track(jnp.asarray(n), diagnostics(params).true_reward, trk, prev, ~diverged)
    trk, _, _ = tracker_finish(trk, min_dur)
    status = jnp.where(diverged, Status.DIVERGED, Status.OK)
    return recs, jnp.asarray([0] + stops), None, status, params, jnp.asarray(n), trk.hit, trk.best, trk.count, None


def _solve_flow(method: GradientFlow, policy, reward, true_reward, t1, saveat, setup):
    targets, stall_target, max_rate, min_dur = setup
    reg = method.regularization
    log_ref = reg.reference(policy)

    def grad_at(params):
        return gradient(params, policy, reward, true_reward, log_ref, reg)

    def vector_field(t, params, args):
        return grad_at(params)[0]

    def save_diag(t, params, args):
        return _record(grad_at(params)[1], saveat.probs)

    def save_step(t, params, args):
        # (V_G, dV_G/dt) with dV_G/dt = sum_x w_x sum_y pi (r_G - V_G(x)) ds_y/dt / tau.
        flow, d = grad_at(params)
        _, score_rate = jax.jvp(lambda th: policy.with_params(th).scores(), (params,), (flow,))
        p = d.probs
        centred = true_reward - sum_outputs(p * true_reward)
        rate = jnp.sum(policy.weights[:, None] * sum_outputs(p * centred * score_rate)) / policy.temperature
        return d.true_reward, rate

    ts = jnp.linspace(0.0, t1, saveat.n) if saveat.ts is None else saveat.ts
    subs = [
        diffrax.SubSaveAt(ts=ts, fn=save_diag),
        diffrax.SubSaveAt(t0=True, steps=True, fn=save_step),
        diffrax.SubSaveAt(t1=True),
    ]
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(vector_field),
        method.solver,
        t0=0.0,
        t1=t1,
        dt0=method.dt0,
        y0=policy.params,
        saveat=diffrax.SaveAt(subs=subs),
        stepsize_controller=method.controller(),
        max_steps=method.max_steps,
        throw=False,
    )
    recs, (step_v, step_d), final = sol.ys
    step_ts = sol.ts[1]
    status = jnp.where(
        sol.result == diffrax.RESULTS.successful,
        Status.OK,
        jnp.where(sol.result == diffrax.RESULTS.max_steps_reached, Status.MAX_STEPS, Status.DIVERGED),
    )
    valid = jnp.isfinite(step_ts) & jnp.isfinite(step_v) & jnp.isfinite(step_d)
    hit = crossings(step_ts, step_v, step_d, valid, targets, hermite=True)
    stalls = stalls_along(step_ts, step_v, step_d, valid, stall_target, max_rate, min_dur, 1)
    best = stalls.longest()
    final = jax.tree.map(lambda a: a[-1], final)
    # A failed solve leaves diffrax's +inf fill in the records after the failure: unknown
    # values, so make them nan (never a reward above every target).
    recs, final = jax.tree.map(lambda a: jnp.where(jnp.isfinite(a), a, jnp.nan), (recs, final))
    steps_taken = sol.stats["num_accepted_steps"]
    return recs, None, ts, status, final, steps_taken, hit, best, stalls.count, (step_ts, step_v, step_d)


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
) -> Solution:
    """Train `policy` on `reward` with `method`, tracking `true_reward`.

    **Arguments:**

    - `policy`: the initial policy ([`gradflow.TabularSoftmax`][], [`gradflow.LogLinear`][]).
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

    if isinstance(method, AbstractSampledMethod):
        key = _as_key(key, method)
    elif key is not None:
        raise ValueError(
            f"`key` is only used by the sample-based methods; {type(method).__name__} is exact "
            "and deterministic (drop `key`)."
        )
    if isinstance(method, GradientFlow):
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
    return _solve(method, policy, reward, true_reward, t1, key, saveat, targets, normalized_targets, stall)


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
def _solve(method, policy, reward, true_reward, t1, key, saveat, targets, normalized_targets, stall):
    """The validated run, compiled once per structure: rewards, initial parameters and
    `t1` are arguments, so new values do not recompile."""
    vmin, vmax = reward_range(true_reward, policy.weights)
    v0 = expected(policy.probs(), true_reward, policy.weights)
    abs_targets = jnp.asarray(targets, v0.dtype)
    if normalized_targets:
        abs_targets = v0 + abs_targets * (vmax - v0)
    if isinstance(method, GradientFlow):
        horizon = t1
        setup = (abs_targets, *stall.resolve(vmin, vmax, horizon))
        out = _solve_flow(method, policy, reward, true_reward, t1, saveat, setup)
    else:
        horizon = jnp.asarray(float(method.steps), v0.dtype)
        setup = (abs_targets, *stall.resolve(vmin, vmax, horizon))
        out = _solve_discrete(method, policy, reward, true_reward, key, saveat, setup)
    recs, steps, ts, status, params, nsteps, hit, best, count, step_rec = out
    hit = jnp.where(jnp.isinf(hit) & (status != Status.OK), jnp.nan, hit)  # unknown, not "never"
    step_rec = (None, None, None) if step_rec is None else step_rec
    return Solution(
        ts=ts,
        steps=steps,
        proxy_reward=recs.proxy_reward,
        true_reward=recs.true_reward,
        reward_variance=recs.reward_variance,
        grad_norm=recs.grad_norm,
        probs=recs.probs,
        status=status,
        params=params,
        num_steps=nsteps,
        target_times=hit,
        stall=best,
        num_stalls=count,
        initial_true_reward=v0,
        min_true_reward=vmin,
        max_true_reward=vmax,
        horizon=horizon,
        step_ts=step_rec[0],
        step_true_reward=step_rec[1],
        step_true_rate=step_rec[2],
        targets=targets,
        normalized_targets=normalized_targets,
        record_every=saveat.every if ts is None else None,
    )
