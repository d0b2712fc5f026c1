"""Time-to-reward, stalls and the closed-form rates of the tabular theory.

The same small state machine (`Tracker`) finds target crossings and plateaus in three
places: online inside a discrete run (one update per step), over the solver steps of a
flow, and offline over a recorded trajectory in [`gradflow.find_stalls`][].
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from .._engine.objective import as_reward, expected
from .._engine.status import Status
from .._engine.tracking import (
    StallCriteria,
    Stalls,
    tracker_finish,
    tracker_init,
    tracker_update,
)
from .._util import validate as v
from ..policies import AbstractPolicy


def crossings(ts, values, valid, targets) -> Float[Array, " targets"]:
    """First recorded point at or above each target (`+inf` if none)."""
    targets = jnp.asarray(targets, values.dtype)
    above = valid[None, :] & (values[None, :] >= targets[:, None])
    i = jnp.argmax(above, axis=1)
    return jnp.where(jnp.any(above, axis=1), ts[i], jnp.inf)


def stalls_along(ts, values, rates, valid, stall_target, max_rate, min_dur, max_stalls: int) -> Stalls:
    """All stalls of a recorded curve, found by the same state machine as online."""

    def body(trk, x):
        t, val, rate, ok = x
        trk, stall, closed = tracker_update(
            trk, t, val, rate, ok, jnp.zeros((0,), val.dtype), stall_target, max_rate, min_dur
        )
        return trk, (stall, closed)

    trk, (stalls, closed) = jax.lax.scan(body, tracker_init(0, values.dtype), (ts, values, rates, valid))
    trk, last, last_ok = tracker_finish(trk, min_dur)
    stalls = jax.tree.map(lambda a, b: jnp.concatenate([a, b[None]]), stalls, last)
    closed = jnp.concatenate([closed, last_ok[None]])
    (idx,) = jnp.nonzero(closed, size=max_stalls, fill_value=closed.shape[0])

    def pad(a):
        return jnp.concatenate([a, jnp.full((1,), jnp.nan, a.dtype)])[idx]

    return Stalls(pad(stalls.level), pad(stalls.start), pad(stalls.duration), trk.count)


def difference_rates(ts, values):
    """Backward differences `(v_i - v_{i-1}) / (t_i - t_{i-1})`; `inf` at the first point."""
    d = jnp.diff(values) / jnp.diff(ts)
    return jnp.concatenate([jnp.full((1,), jnp.inf, values.dtype), d])


def _absolute_target(sol, target, normalized: bool):
    target = jnp.asarray(target, sol.true_reward.dtype)
    if normalized:
        v0 = sol.initial_true_reward
        return v0 + target * (sol.max_true_reward - v0)
    return target


def time_to_reward(sol, target, normalized: bool = False) -> Float[Array, ""]:
    """First time the expected true reward reaches `target`.

    Reads back a target tracked by [`gradflow.solve`][] (`targets=...`). For the flow the
    crossing was located inside the solve, by a root find on the solver's dense
    interpolant of the state, so it is accurate to the solver's tolerance. For discrete
    methods it is the step index `n` (the policy after `n` updates; 0 is the initial
    policy); a run recorded at every step also answers untracked targets.

    **Arguments:**

    - `sol`: a [`gradflow.Solution`][] from [`gradflow.solve`][].
    - `target`: the level `gamma` (absolute), or the fraction of the way from the initial
      to the maximal achievable true reward when `normalized=True`.
    - `normalized`: interpret `target` as a fraction in `[0, 1]`.

    **Returns:** a float scalar: the time (flow) or step (discrete); `+inf` if the run
    ended without reaching the target; `nan` if the run failed (diverged or hit
    `max_steps`) before reaching it. A target that was not tracked (flow, or a discrete
    run recorded less often than every step) is a `ValueError` that says how to track it.
    """
    if isinstance(target, (int, float)) and math.isnan(target):
        raise ValueError("`target` must be a number; got nan.")
    if normalized and isinstance(target, (int, float)) and not 0 <= target <= 1:
        raise ValueError(f"`target` must be in [0, 1] when `normalized=True`; got {target}.")
    if not normalized and isinstance(target, (int, float)):
        v.targets_in_range("target", (float(target),), sol.min_true_reward, sol.max_true_reward)
    tracked = (
        isinstance(target, (int, float))
        and float(target) in sol.targets
        and normalized == sol.normalized_targets
    )
    if tracked:
        t = sol.target_times[sol.targets.index(float(target))]
    elif sol.record_every == 1:
        level = _absolute_target(sol, target, normalized)
        ts = sol.steps.astype(sol.true_reward.dtype)
        t = crossings(ts, sol.true_reward, jnp.isfinite(sol.true_reward), level[None])[0]
    else:
        where = ("the flow locates crossings inside the solve, to the solver's tolerance"
                 if sol.record_every is None else f"the run was recorded only every {sol.record_every} steps")
        raise ValueError(
            f"time_to_reward: target {target!r} was not tracked: pass `targets=({target!r},)` to "
            f"gf.solve (with the same `normalized_targets`) and read it back here ({where})."
        )
    return jnp.where(jnp.isinf(t) & (sol.status != Status.ok), jnp.nan, t)


def find_stalls(
    sol,
    target=None,
    max_rate=None,
    min_duration=None,
    *,
    max_stalls: int = 8,
) -> Stalls:
    """Plateaus of the expected true reward below a target (see
    [`gradflow.StallCriteria`][] for the definition and the scale-aware defaults).

    Works on the recorded trajectory, with finite-difference rates between recorded
    points, so its resolution is the recording grid (`SaveAt.ts`/`n` for the flow, the
    stride for discrete methods). The longest stall is also tracked online during the
    solve, as `sol.stall`; for the flow its start and end are located to the solver's
    tolerance.

    **Arguments:**

    - `sol`: a [`gradflow.Solution`][].
    - `target`, `max_rate`, `min_duration`: as in [`gradflow.StallCriteria`][].
    - `max_stalls`: the length the result is padded to.

    **Returns:** a [`gradflow.Stalls`][].
    """
    crit = StallCriteria(target, max_rate, min_duration)
    stall_target, max_rate, min_dur = crit.resolve(sol.min_true_reward, sol.max_true_reward, sol.horizon)
    ts, vals = sol.time, sol.true_reward
    rates = difference_rates(ts, vals)
    valid = jnp.isfinite(ts) & jnp.isfinite(vals)
    return stalls_along(ts, vals, rates, valid, stall_target, max_rate, min_dur, max_stalls)


def reward_variance(policy: AbstractPolicy, reward) -> Float[Array, ""]:
    """`sum_x w_x Var_{pi(.|x)}[r(x, .)]`: the reward variance under the policy, which
    bounds the size of the policy gradient (low variance means a flat objective)."""
    r = as_reward("reward", reward, policy)
    p = policy.probs()
    mean = jnp.sum(p * r, axis=-1, keepdims=True)
    return jnp.sum(policy.weights * jnp.sum(p * (r - mean) ** 2, axis=-1))


def true_reward_rate(policy: AbstractPolicy, reward, true_reward) -> Float[Array, ""]:
    """`dV_G/dt = <grad V_G, grad J_P>` at the policy, for the exact flow trained on
    `reward` (no regularisation). For a tabular policy at temperature 1 this is
    `sum_x w_x^2 sum_y pi(y|x)^2 (r_P - V_P)(r_G - V_G)`."""
    r = as_reward("reward", reward, policy)
    g = as_reward("true_reward", true_reward, policy)

    def value(params, rr):
        return expected(policy.with_params(params).probs(), rr, policy.weights)

    grad_p = jax.grad(value)(policy.params, r)
    grad_g = jax.grad(value)(policy.params, g)
    return sum(jnp.vdot(a, b) for a, b in zip(jax.tree.leaves(grad_g), jax.tree.leaves(grad_p), strict=True))
