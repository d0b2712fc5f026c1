"""Time-to-reward, stalls and the closed-form rates of the tabular theory.

The same small state machine (`Tracker`) finds target crossings and plateaus in three
places: online inside a discrete run (one update per step), over the solver steps of a
flow, and offline over a recorded trajectory in [`gradflow.find_stalls`][].
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int, PyTree

from . import _validate as v
from ._objective import as_reward, expected
from ._status import Status
from .policies import AbstractPolicy


class Stall(eqx.Module):
    """One plateau of the true reward: its `level` (the mean of the reward at its two ends),
    `start` time and `duration`. All `nan` when there is none."""

    level: Float[Array, ""]
    start: Float[Array, ""]
    duration: Float[Array, ""]


class Stalls(eqx.Module):
    """Plateaus of the true reward, in order of start, padded with `nan` to a fixed
    length so the result can be vmapped; `count` is how many were found (it may exceed
    the padded length)."""

    level: Float[Array, " max_stalls"]
    start: Float[Array, " max_stalls"]
    duration: Float[Array, " max_stalls"]
    count: Int[Array, ""]

    def longest(self) -> Stall:
        """The longest stall (`nan` fields when there is none)."""
        d = jnp.where(jnp.isnan(self.duration), -jnp.inf, self.duration)
        i = jnp.argmax(d)
        return Stall(self.level[i], self.start[i], self.duration[i])


class StallCriteria(eqx.Module):
    """What counts as a stall: a maximal stretch of time in which the expected true
    reward is below `target` and changes slower than `max_rate` (in absolute value),
    lasting at least `min_duration`. Its `level` is the mean of the reward at the two
    ends of the stretch.

    Rates are per unit of the run's time: flow time for the flow (exact, from the rate
    formula), updates for discrete methods (the change over one update).

    **Arguments** (each `None` means the scale-aware default):

    - `target`: the level a stall must be below; default: the maximal achievable true
      reward minus 2% of its range.
    - `min_duration`: default `0.01 * horizon` (`t1` for the flow, `steps` for discrete
      methods).
    - `max_rate`: default `0.02 * range / min_duration`, where `range` is the spread
      `max - min` of the achievable true reward: a stall is where the reward would need
      longer than `min_duration` to move by 2% of its range.
    """

    target: float | None = None
    max_rate: float | None = None
    min_duration: float | None = None

    def resolve(self, vmin, vmax, horizon):
        """`(target, max_rate, min_duration)` as arrays, defaults filled in."""
        min_dur = 0.01 * horizon if self.min_duration is None else jnp.asarray(self.min_duration, float)
        if self.target is not None:
            target = jnp.asarray(self.target, float)
        else:
            target = vmax - 0.02 * (vmax - vmin)
        max_rate = 0.02 * (vmax - vmin) / min_dur if self.max_rate is None else jnp.asarray(self.max_rate, float)
        return target, max_rate, min_dur


class Tracker(eqx.Module):
    """Online state: first crossing of each target and the current plateau.

    A caller that can refine event times (the flow) passes the piece of the curve that
    ends at each point (`here`, any pytree: for the flow the solver step's dense
    interpolant); the tracker keeps the piece in which each event happened, so that the
    caller can locate it afterwards. Discrete methods pass `None`.
    """

    hit: Float[Array, " targets"]
    in_win: Bool[Array, ""]
    win_start: Float[Array, ""]
    win_end: Float[Array, ""]
    win_v0: Float[Array, ""]
    win_v1: Float[Array, ""]
    best: Stall
    count: Int[Array, ""]
    hit_at: PyTree = None  # per target: the piece in which it was first reached
    win_at: PyTree = None  # the piece in which the current plateau began
    best_at: PyTree = None  # the pieces in which the longest stall began and ended


def tree_where(pred, a, b):
    """`where(pred, a, b)` leaf by leaf, `pred` aligned with the leading axes."""

    def one(x, y):
        extra = max(jnp.ndim(x), jnp.ndim(y)) - pred.ndim
        return jnp.where(jnp.reshape(pred, pred.shape + (1,) * extra), x, y)

    return jax.tree.map(one, a, b)


def tracker_init(n_targets: int, dtype=float, here: PyTree = None) -> Tracker:
    nan = jnp.asarray(jnp.nan, dtype)
    z = jnp.asarray(0.0, dtype)
    return Tracker(
        hit=jnp.full((n_targets,), jnp.inf, dtype),
        in_win=jnp.asarray(False), win_start=z, win_end=z, win_v0=z, win_v1=z,
        best=Stall(nan, nan, nan), count=jnp.asarray(0),
        hit_at=jax.tree.map(lambda x: jnp.broadcast_to(x, (n_targets,) + jnp.shape(x)), here),
        win_at=here, best_at=(here, here),
    )


def _close(trk: Tracker, min_dur, here) -> tuple[Tracker, Stall, Bool[Array, ""]]:
    """The plateau in progress as a `Stall`, whether it qualifies, and the state with
    it counted (the caller decides whether to keep that state)."""
    dur = trk.win_end - trk.win_start
    ok = trk.in_win & (dur >= min_dur)
    stall = Stall(0.5 * (trk.win_v0 + trk.win_v1), trk.win_start, dur)
    longer = ok & ~(dur <= trk.best.duration)  # best.duration may be nan
    best = tree_where(longer, stall, trk.best)
    best_at = tree_where(longer, (trk.win_at, here), trk.best_at)
    return eqx.tree_at(lambda t: (t.best, t.count, t.best_at), trk, (best, trk.count + ok, best_at),
                       is_leaf=lambda x: x is None), stall, ok


def tracker_update(
    trk: Tracker, t, value, rate, alive, targets, stall_target, max_rate, min_dur, here: PyTree = None
) -> tuple[Tracker, Stall, Bool[Array, ""]]:
    """Feed one point `(t, value, rate)` of the true-reward curve (and the piece of the
    curve that ends there, `here`).

    Returns the new state, and the plateau that ended at this point with a flag saying
    whether it was a stall. Points with `alive=False` are ignored.
    """
    reached = value >= jnp.asarray(targets, value.dtype)
    first = alive & reached & jnp.isinf(trk.hit)
    flat = (value < stall_target) & (jnp.abs(rate) <= max_rate)
    closed, stall, ok = _close(trk, min_dur, here)
    ending = trk.in_win & ~flat & alive
    new = tree_where(ending, closed, trk)
    new = Tracker(
        hit=jnp.where(first, t, trk.hit),
        in_win=flat,
        win_start=jnp.where(trk.in_win, trk.win_start, t),
        win_end=t,
        win_v0=jnp.where(trk.in_win, trk.win_v0, value),
        win_v1=value,
        best=new.best,
        count=new.count,
        hit_at=tree_where(first, here, trk.hit_at),
        win_at=tree_where(trk.in_win, trk.win_at, here),
        best_at=new.best_at,
    )
    new = tree_where(alive, new, trk)
    return new, stall, ok & ending


def tracker_finish(trk: Tracker, min_dur, here: PyTree = None) -> tuple[Tracker, Stall, Bool[Array, ""]]:
    """Close the plateau still open at the end of the run (`here`: the piece that ends
    at the last point, for a caller that refines)."""
    return _close(trk, min_dur, here)


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
