"""One run's compiled loop: the discrete update loop and the flow's `diffeqsolve`.

Both track crossings and stalls online, so a run stores only what it records. Discrete
methods are a `lax.scan` over updates (nested: segments of `every` updates between two
records). The flow is one `diffrax.diffeqsolve` whose solver carries the tracker in its
state (`_Tracked`); the steps in which events happened are kept as their dense
interpolants, and each event is then located inside its step by a root find on that
interpolant. Both return a `Run`.
"""

from __future__ import annotations

import math

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import optimistix as optx
from jaxtyping import Array, Float, Int, PyTree

from .objective import Diagnostics, Problem, gradient
from .ops import sum_outputs
from .status import Status, from_diffrax
from .tracking import Stall, tracker_finish, tracker_init, tracker_update, tree_where


class Tracking(eqx.Module):
    """What the online tracker looks for: the absolute target levels and the resolved
    stall criteria (see [`gradflow.StallCriteria`][])."""

    targets: Float[Array, " targets"]
    stall_target: Float[Array, ""]
    max_rate: Float[Array, ""]
    min_duration: Float[Array, ""]

    def update(self, trk, t, value, rate, alive, here=None):
        return tracker_update(trk, t, value, rate, alive, self.targets, self.stall_target, self.max_rate,
                              self.min_duration, here)[0]


class Run(eqx.Module):
    """What one integration returns (before `gradflow.solve` wraps it in a `Solution`)."""

    records: Diagnostics
    steps: Int[Array, " saves"] | None
    ts: Float[Array, " saves"] | None
    status: Status
    params: PyTree[Array]
    num_steps: Int[Array, ""]
    num_rejected_steps: Int[Array, ""]
    num_jump_steps: Int[Array, ""]
    target_times: Float[Array, " targets"]
    stall: Stall
    num_stalls: Int[Array, ""]


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
        params, state = tree_where(diverged, (params, state), (new_params, new_state))
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
        status=Status.where(diverged, Status.diverged, Status.ok), params=params, num_steps=jnp.asarray(n),
        num_rejected_steps=jnp.asarray(0),
        num_jump_steps=jnp.asarray(0),
        target_times=trk.hit, stall=trk.best, num_stalls=trk.count,
    )


class _Tracked(diffrax.AbstractAdaptiveSolver, diffrax.AbstractWrappedSolver):
    """The flow's solver, with the online tracker riding in its state.

    Every step of the wrapped solver also evaluates `V_G` and its rate at the step's end
    on the step's dense interpolant and feeds them to the tracker, together with the
    interpolant itself (so an event can be located inside its step afterwards). diffrax
    keeps a solver state only when it accepts the step, so the tracker sees exactly the
    accepted steps, and carries no per-step buffer.
    """

    solver: diffrax.AbstractSolver
    problem: Problem
    tracking: Tracking

    @property
    def term_structure(self):
        return self.solver.term_structure

    @property
    def interpolation_cls(self):  # pyright: ignore
        return self.solver.interpolation_cls

    @property
    def term_compatible_contr_kwargs(self):
        return self.solver.term_compatible_contr_kwargs

    @property
    def scan_kind(self):  # read by diffrax's ForwardMode (GradientFlow.make_solver sets it)
        return getattr(self.solver, "scan_kind", "lax")

    @property
    def root_finder(self):  # read by diffeqsolve when the wrapped solver is implicit
        return self.solver.root_finder

    def order(self, terms):
        return self.solver.order(terms)

    def strong_order(self, terms):
        return self.solver.strong_order(terms)

    def error_order(self, terms):
        return self.solver.error_order(terms)

    def func(self, terms, t0, y0, args):
        return self.solver.func(terms, t0, y0, args)

    def init(self, terms, t0, t1, y0, args):
        state = self.solver.init(terms, t0, t1, y0, args)
        # The start is a point, not a piece of curve: a zero-length interpolant at t0.
        dense = jax.eval_shape(lambda: self.solver.step(terms, t0, t1, y0, args, state, False)[2])
        dense = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), dense)
        here = self.solver.interpolation_cls(t0=t0, t1=t0, **dense)
        value, rate = jax.jvp(self.problem.true_value, (y0,), (self.solver.func(terms, t0, y0, args),))
        trk = tracker_init(self.tracking.targets.shape[0], value.dtype, here)
        return state, self.tracking.update(trk, t0, value, rate, jnp.asarray(True), here)

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        state, trk = solver_state
        y1, y_error, dense, state, result = self.solver.step(terms, t0, t1, y0, args, state, made_jump)
        piece = self.solver.interpolation_cls(t0=t0, t1=t1, **dense)
        value, rate = _value_rate(self.problem, piece, t1)
        trk = self.tracking.update(trk, t1, value, rate, jnp.isfinite(value), piece)
        return y1, y_error, dense, (state, trk), result


def _value_rate(problem: Problem, piece, t):
    """`V_G` on a step's interpolant at `t`, and its time derivative along it."""
    return jax.jvp(lambda s: problem.true_value(piece.evaluate(s)), (t,), (jnp.ones_like(t),))


def _locate(fn, piece, halvings: int, adjoint: optx.AbstractAdjoint):
    """Where `fn(piece, t)` rises through zero (from negative to non-negative) within
    the piece's `[t0, t1]`: exactly `halvings` bisection steps on the solver's dense
    interpolant (optimistix, run to its step limit). With `optx.ImplicitAdjoint` the
    located time is differentiable (implicit function theorem). A zero-length piece is a
    point: its `t0`."""
    point = ~(piece.t1 > piece.t0)
    lower, upper = piece.t0, jnp.where(point, piece.t0 + 1, piece.t1)  # a finite dummy for points
    piece = eqx.tree_at(lambda p: p.t1, piece, upper)
    root = optx.root_find(
        lambda t, _: fn(piece, t), optx.Bisection(rtol=0.0, atol=0.0, flip=False), 0.5 * (lower + upper),
        options=dict(lower=lower, upper=upper), max_steps=halvings, throw=False, adjoint=adjoint,
    ).value
    return jnp.where(point, piece.t0, jnp.clip(root, lower, upper))


def _refine(trk, problem: Problem, tracking: Tracking, rtol: float):
    """Target crossings and the longest stall's ends, located inside their steps to
    1% of the solver's relative tolerance of the step's width."""
    halvings = math.ceil(math.log2(100 / rtol))

    def level_gap(level):
        return lambda piece, t: problem.true_value(piece.evaluate(t)) - level

    def flatness(sign):  # <= 0 where the curve is flat (the exact rate dV_G/dt at the state)
        fixed = jax.tree.map(lambda x: jax.lax.stop_gradient(x) if eqx.is_array(x) else x, problem)

        def fn(piece, t):
            params = piece.evaluate(t)
            value, rate = jax.jvp(fixed.true_value, (params,), (gradient(params, fixed)[0],))
            return sign * jnp.maximum(value - tracking.stall_target, jnp.abs(rate) - tracking.max_rate)

        return fn

    hit = jax.vmap(lambda piece, level: _locate(level_gap(level), piece, halvings, optx.ImplicitAdjoint()))(
        trk.hit_at, tracking.targets)
    hit = jnp.where(jnp.isfinite(trk.hit), hit, trk.hit)
    found = jnp.isfinite(trk.best.duration)

    def ends(best_at):  # both ends in one vmapped search; skipped (outside vmap) when there is no stall
        pieces = jax.lax.stop_gradient(jax.tree.map(lambda a, b: jnp.stack([a, b]), *best_at))
        signs = jnp.asarray([-1.0, 1.0], trk.hit.dtype)  # flat from the start, not flat after the end
        # Stall ends are descriptive, not differentiated (constants to autodiff, in
        # either mode): the cheaper-to-compile adjoint.
        start, end = jax.vmap(lambda piece, sign: _locate(flatness(sign), piece, halvings,
                                                          optx.RecursiveCheckpointAdjoint()))(pieces, signs)
        began, ended = best_at
        return (jnp.where(began.t1 > began.t0, start, trk.best.start),
                jnp.where(ended.t1 > ended.t0, end, trk.best.start + trk.best.duration))

    start, end = jax.lax.cond(found, ends, lambda _: (trk.best.start, trk.best.start + trk.best.duration),
                              trk.best_at)
    return hit, Stall(trk.best.level, start, end - start)


def integrate_flow(method, problem: Problem, t1, saveat, tracking: Tracking, stop_at_targets: bool = False) -> Run:
    """The exact flow `d theta/dt = grad J(theta)` with diffrax, up to `t1` (or, with
    `stop_at_targets`, until the highest target is reached: by continuity every lower
    one has been reached by then)."""

    def vector_field(t, params, args):
        return gradient(params, problem)[0]

    def save_diag(t, params, args):
        return _record(gradient(params, problem)[1], saveat.probs)

    dtype = jnp.result_type(*jax.tree.leaves(problem.policy.params))
    ts = jnp.linspace(0.0, t1, saveat.n, dtype=dtype) if saveat.ts is None else saveat.ts
    subs = [diffrax.SubSaveAt(ts=ts, fn=save_diag), diffrax.SubSaveAt(t1=True)]
    event = None
    if stop_at_targets and tracking.targets.shape[0]:
        top = jnp.max(tracking.targets)
        event = diffrax.Event(lambda t, y, args, **kw: problem.true_value(y) >= top)
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(vector_field),
        _Tracked(method.make_solver(dtype), problem, tracking),
        t0=jnp.zeros((), dtype),
        t1=t1,
        dt0=method.dt0,
        y0=problem.policy.params,
        saveat=diffrax.SaveAt(subs=subs, solver_state=True, controller_state=True),
        stepsize_controller=method.controller(dtype),
        max_steps=method.max_steps,
        adjoint=method.adjoint,
        event=event,
        throw=False,
    )
    recs, final = sol.ys
    final = jax.tree.map(lambda a: a[-1], final)
    _, trk = sol.solver_state
    t_end = sol.ts[1][-1]
    end_point = eqx.tree_at(lambda p: (p.t0, p.t1), trk.win_at, (t_end, t_end))
    trk, _, _ = tracker_finish(trk, tracking.min_duration, end_point)
    hit, stall = _refine(trk, problem, tracking, method.tolerances(dtype)[0])
    status = Status.where(_all_finite(final), from_diffrax(sol.result), Status.diverged)
    # Records after a failure (or after the stop) are diffrax's +inf fill: unknown values,
    # so make them nan (never a reward above every target).
    recs, final = jax.tree.map(lambda a: jnp.where(jnp.isfinite(a), a, jnp.nan), (recs, final))
    return Run(
        records=recs, steps=None, ts=ts, status=status, params=final,
        num_steps=sol.stats["num_accepted_steps"], num_rejected_steps=sol.stats["num_rejected_steps"],
        # Steps accepted across a jump of the vector field (`JumpController`; a constant
        # step size keeps no state).
        num_jump_steps=jnp.asarray(0) if sol.controller_state is None else sol.controller_state.num_jumps,
        target_times=hit, stall=stall, num_stalls=trk.count,
    )
