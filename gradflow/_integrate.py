"""One run's compiled loop: the discrete update loop and the flow's `diffeqsolve`.

Discrete methods are a `lax.scan` over updates (nested: segments of `every` updates
between two records) with crossings and stalls tracked online, so a run stores only
what it records. The flow is one `diffrax.diffeqsolve`, saving the user's grid plus a
compact `(t, V_G, dV_G/dt)` record at every accepted solver step, from which crossings
are located between steps. Both return a `Run`.
"""

from __future__ import annotations

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int, PyTree

from ._analysis import Stall, crossings, stalls_along, tracker_finish, tracker_init, tracker_update
from ._objective import Diagnostics, Problem, gradient, true_reward_rate
from ._ops import sum_outputs


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


class Tracking(eqx.Module):
    """What the online tracker looks for: the absolute target levels and the resolved
    stall criteria (see [`gradflow.StallCriteria`][])."""

    targets: Float[Array, " targets"]
    stall_target: Float[Array, ""]
    max_rate: Float[Array, ""]
    min_duration: Float[Array, ""]

    def update(self, trk, t, value, rate, alive):
        return tracker_update(trk, t, value, rate, alive, self.targets, self.stall_target, self.max_rate,
                              self.min_duration)[0]


class Run(eqx.Module):
    """What one integration returns (before `gradflow.solve` wraps it in a `Solution`)."""

    records: Diagnostics
    steps: Int[Array, " saves"] | None
    ts: Float[Array, " saves"] | None
    status: Int[Array, ""]
    params: PyTree[Array]
    num_steps: Int[Array, ""]
    target_times: Float[Array, " targets"]
    stall: Stall
    num_stalls: Int[Array, ""]
    step_ts: Float[Array, " max_steps"] | None = None
    step_true_reward: Float[Array, " max_steps"] | None = None
    step_true_rate: Float[Array, " max_steps"] | None = None


def _tree_where(pred, a, b):
    return jax.tree.map(lambda x, y: jnp.where(pred, x, y), a, b)


def _all_finite(tree) -> jax.Array:
    """Whether every entry is finite, as one scalar: a sum is finite iff its terms are
    (written with `sum_outputs` so that it stays a flat vector op under `vmap`)."""
    total = sum(jnp.sum(sum_outputs(jnp.atleast_1d(x))) for x in jax.tree.leaves(tree))
    return jnp.isfinite(total)


def _record(d: Diagnostics, probs: bool) -> Diagnostics:
    return d if probs else eqx.tree_at(lambda x: x.probs, d, None)


def integrate_discrete(method, problem: Problem, key, saveat, tracking: Tracking) -> Run:
    """`method.steps` updates of a discrete method (`init`/`update`)."""

    def record(params):
        return _record(gradient(params, problem)[1], saveat.probs)

    def track(i, value, trk, prev, alive):
        i = i.astype(value.dtype)
        return tracking.update(trk, i, value, value - prev, alive)

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

    params0 = problem.policy.params
    first = record(params0)
    dtype = first.true_reward.dtype
    trk0 = tracker_init(tracking.targets.shape[0], dtype)
    carry = (params0, method.init(params0, problem), trk0, jnp.asarray(jnp.inf, dtype), jnp.asarray(False))

    n, k = method.steps, saveat.every
    segments, rest = divmod(n, k)
    stops = [k * s for s in range(1, segments + 1)] + ([n] if rest else [])

    def segment(carry, start):
        carry = run(carry, start, k)
        return carry, record(carry[0])

    carry, recs = jax.lax.scan(segment, carry, jnp.arange(segments) * k)
    if rest:
        carry = run(carry, jnp.asarray(segments * k), n - segments * k)
        recs = jax.tree.map(lambda a, b: jnp.concatenate([a, b[None]]), recs, record(carry[0]))
    recs = jax.tree.map(lambda a, b: jnp.concatenate([a[None], b]), first, recs)
    # The last policy (after n updates) has not been seen by the tracker yet.
    params, _, trk, prev, diverged = carry
    trk = track(jnp.asarray(n), record(params).true_reward, trk, prev, ~diverged)
    trk, _, _ = tracker_finish(trk, tracking.min_duration)
    return Run(
        records=recs, steps=jnp.asarray([0] + stops), ts=None,
        status=jnp.where(diverged, Status.DIVERGED, Status.OK), params=params, num_steps=jnp.asarray(n),
        target_times=trk.hit, stall=trk.best, num_stalls=trk.count,
    )


def integrate_flow(method, problem: Problem, t1, saveat, tracking: Tracking) -> Run:
    """The exact flow `d theta/dt = grad J(theta)` with diffrax, up to `t1`."""

    def vector_field(t, params, args):
        return gradient(params, problem)[0]

    def save_diag(t, params, args):
        return _record(gradient(params, problem)[1], saveat.probs)

    def save_step(t, params, args):
        flow, d = gradient(params, problem)
        rate, _ = true_reward_rate(params, flow, problem)
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
        y0=problem.policy.params,
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
    hit = crossings(step_ts, step_v, step_d, valid, tracking.targets, hermite=True)
    stalls = stalls_along(step_ts, step_v, step_d, valid, tracking.stall_target, tracking.max_rate,
                          tracking.min_duration, 1)
    final = jax.tree.map(lambda a: a[-1], final)
    # A failed solve leaves diffrax's +inf fill in the records after the failure: unknown
    # values, so make them nan (never a reward above every target).
    recs, final = jax.tree.map(lambda a: jnp.where(jnp.isfinite(a), a, jnp.nan), (recs, final))
    return Run(
        records=recs, steps=None, ts=ts, status=status, params=final,
        num_steps=sol.stats["num_accepted_steps"], target_times=hit, stall=stalls.longest(),
        num_stalls=stalls.count, step_ts=step_ts, step_true_reward=step_v, step_true_rate=step_d,
    )

