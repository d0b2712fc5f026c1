"""Designing proxy rewards by differentiating through training: `gradflow.design_proxy`.

The designer's question: given the ground truth, the initial policy and the algorithm,
which proxy reward teaches fastest within a budget of deviation from the truth? The
objective (time to a true-reward target, true reward at the horizon, or the area under the
true-reward curve) is differentiated through the training run itself: reverse mode
through `diffrax.diffeqsolve` or the discrete loop, and for the time to a target the
implicit-function gradient of the crossing located inside the solve. An optax optimiser
then takes projected steps.

**Geometry.** The free variables are `u` of shape `(prompts, groups)`; the proxy is

    r(x, y) = r*(x, y) + u(x, g(y)) / sqrt(n_g),

with `g(y)` the group of output `y` (every output its own group by default) and `n_g`
the group's size, so that `||u||_2` is the L2 distance of the proxy from the truth over
outputs, and every constraint is a simple set in `u`:

- the budget: a box (`norm="inf"`) or a ball (`norm=2`), projected exactly with
  `optax.projections`;
- the mask: fixed entries of `u` are zero;
- order preservation: `r(y) - r(y') >= margin` whenever `r*(y) > r*(y')`, projected
  exactly (a weighted isotonic regression with ties, by the min-max formula);
- both: Dykstra's alternating projections, which converge to the exact projection onto
  the intersection, then a pull towards the truth (which satisfies everything) onto the
  boundary of the feasible set, so the returned proxy satisfies every constraint exactly.
"""

from __future__ import annotations

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

from .. import metrics
from .._engine.methods import AbstractMethod
from .._engine.objective import as_reward, expected, reward_range
from .._engine.solve import SaveAt, solve
from .._engine.status import OK_CODE, status_code
from .._util import validate as v
from ..policies import AbstractPolicy
from .categorize import classify_codes, summary_saveat

OBJECTIVES = ("time", "final", "area")
NORMS = ("inf", 2)
ACCURACIES = ("acc", "hacc")

#: Codes of `ProxyDesign.category` beyond the three labels of `gradflow.categorize`
#: (`-1` harmful, `0` benign, `1` beneficial).
UNCHANGED, FAILED = 2, 3
CATEGORY_NAMES = {-1: "harmful", 0: "benign", 1: "beneficial", UNCHANGED: "unchanged", FAILED: "failed"}

#: Points at which the flow's true reward is recorded for the area objective.
AREA_SAVES = 1001
#: `autodiff="auto"` differentiates with respect to up to this many proxy values in
#: forward mode, and to more in reverse mode.
FORWARD_MAX = 32


class ProxyDesign(eqx.Module):
    """What [`gradflow.design_proxy`][] found.

    **Fields:**

    - `reward`: the designed proxy, shaped like the `true_reward` passed in.
    - `change`: `reward - true_reward`.
    - `objective`, `reference_objective`: the objective under the designed proxy and
      under the truth (time to the target, true reward at the horizon, or the mean true
      reward over the horizon).
    - `history`: the objective at each iterate, shape `(steps + 1,)`; for the time
      objective, a run that does not reach the target within the horizon counts the
      smooth fallback `T (1 + (target - V_G(T)) / (target - V_G(0)))`.
    - `time`, `reference_time`: time (flow) or steps (discrete) to the target (`inf`:
      not reached within the horizon; `nan` when no target was given).
    - `final_true_reward`, `reference_final_true_reward`: the true reward at the horizon.
    - `accuracy`, `hacc`: the exact ranking accuracy (Acc) and harm-aware accuracy (HAcc,
      against the initial policy's mean proxy reward) of the designed proxy over every
      pair of outputs that the truth orders, as [`gradflow.metrics.acc`][] and
      [`gradflow.metrics.hacc`][] compute them.
    - `category`: per entry, the label [`gradflow.categorize`][] gives the truth with
      only that entry changed to its designed value, as codes: `-1` harmful, `0` benign,
      `1` beneficial, `2` unchanged, `3` failed run (see `labels`).
    - `status`: the [`gradflow.Status`][] code of the run on the designed proxy.
    - `objective_name`: `"time"`, `"final"` or `"area"`.
    """

    reward: Float[Array, "*prompts outputs"]
    change: Float[Array, "*prompts outputs"]
    objective: Float[Array, ""]
    reference_objective: Float[Array, ""]
    history: Float[Array, " steps"]
    time: Float[Array, ""]
    reference_time: Float[Array, ""]
    final_true_reward: Float[Array, ""]
    reference_final_true_reward: Float[Array, ""]
    accuracy: Float[Array, ""]
    hacc: Float[Array, ""]
    category: Int[Array, "*prompts outputs"]
    status: Int[Array, ""]
    objective_name: str = eqx.field(static=True)

    @property
    def speedup(self) -> Float[Array, " *batch"]:
        """`reference_time / time`: how many times sooner the designed proxy reaches the
        target than the truth (one per design of a vmapped batch)."""
        return self.reference_time / self.time

    @property
    def labels(self) -> np.ndarray:
        """`category` as strings (`"harmful"`, `"benign"`, `"beneficial"`,
        `"unchanged"`, `"failed"`)."""
        codes = np.asarray(self.category)
        return np.vectorize(CATEGORY_NAMES.__getitem__, otypes=[object])(codes).astype(str)


# ------------------------------------------------------------------------- the objective


class _Objective(eqx.Module):
    """The training run behind one objective value (everything but the proxy)."""

    policy: AbstractPolicy
    true_reward: Float[Array, "prompts outputs"]
    method: AbstractMethod
    t1: Float[Array, ""] | None
    v0: Float[Array, ""]
    name: str = eqx.field(static=True)
    target: float | None = eqx.field(static=True)

    def solve(self, reward, saveat: SaveAt, stop: bool = False):
        targets = () if self.target is None else (self.target,)
        return solve(self.policy, reward=reward, true_reward=self.true_reward, method=self.method, t1=self.t1,
                     saveat=saveat, targets=targets, stop_at_targets=stop)

    @property
    def horizon(self):
        return self.t1 if self.method.continuous else jnp.asarray(float(self.method.steps), self.v0.dtype)

    def value(self, reward, stop: bool = True) -> tuple[Float[Array, ""], Bool[Array, ""]]:
        """The objective of training on `reward`, and whether its run succeeded."""
        value, sol = self.run(reward, stop)
        return value, _ok(sol)

    def run(self, reward, stop: bool):
        """The objective and the run behind it; `stop`: a flow aiming at a target ends
        there (the time is the same, the rest of the run is not needed)."""
        flow, horizon = self.method.continuous, self.horizon
        if self.name == "final":
            sol = self.solve(reward, summary_saveat(self.method))
            return sol.final_true_reward, sol
        if self.name == "area":
            sol = self.solve(reward, SaveAt(n=AREA_SAVES) if flow else SaveAt(every=1))
            return jnp.trapezoid(sol.true_reward, sol.time) / horizon, sol
        gamma = self.target
        if flow:  # the crossing, located inside the solve; implicit-function gradient
            sol = self.solve(reward, SaveAt(n=2), stop=stop)
            t = sol.target_times[0]
        else:  # the crossing between two updates, by linear interpolation (differentiable)
            sol = self.solve(reward, SaveAt(every=1))
            series = sol.true_reward
            above = series >= gamma
            n = jnp.maximum(jnp.argmax(above), 1)
            lo, hi = series[n - 1], series[n]
            reached = jnp.any(above)
            t = jnp.where(reached, (n - 1) + (gamma - lo) / jnp.where(reached, hi - lo, 1.0), jnp.inf)
        fallback = horizon * (1 + (gamma - sol.final_true_reward) / (gamma - self.v0))
        return jnp.where(jnp.isfinite(t), t, fallback), sol


def _ok(sol) -> Bool[Array, ""]:
    return status_code(sol.status) == OK_CODE


def proxy_objective(
    policy: AbstractPolicy,
    true_reward,
    reward,
    *,
    method: AbstractMethod,
    objective: str = "time",
    target: float | None = None,
    t1=None,
) -> Float[Array, ""]:
    """The objective that [`gradflow.design_proxy`][] optimises, as a differentiable
    function of the proxy `reward`: `jax.grad` of it is the design gradient.

    **Arguments:** as in [`gradflow.design_proxy`][]; `reward` is the proxy trained on.

    **Returns:** the time to `target` (with the smooth fallback past the horizon), the
    true reward at the horizon, or the mean true reward over the horizon; `nan` when the
    run fails.
    """
    obj, _ = _setup(policy, true_reward, method, objective, target, t1)
    value, ok = obj.value(as_reward("reward", reward, policy))
    return jnp.where(ok, value, jnp.nan)


def _setup(policy, true_reward, method, objective, target, t1) -> tuple[_Objective, Float[Array, "prompts outputs"]]:
    if not isinstance(policy, AbstractPolicy):
        raise ValueError(f"`policy` must be a gradflow policy; got {type(policy).__name__}.")
    if not isinstance(method, AbstractMethod) or method.needs_key:
        raise ValueError("`method` must be an exact method (gf.GradientFlow() or gf.GradientAscent(...)): the "
                         f"design differentiates a deterministic training run; got {method!r}.")
    if objective not in OBJECTIVES:
        raise ValueError(f"`objective` must be one of {', '.join(map(repr, OBJECTIVES))}; got {objective!r}.")
    g = as_reward("true_reward", true_reward, policy)
    g = g.astype(jnp.result_type(g, policy.log_probs()))  # the run's precision
    if method.continuous:
        if t1 is None:
            raise ValueError("`t1` (the flow's horizon) is required for gf.GradientFlow.")
        t1 = v.positive_scalar("t1", t1)
    elif t1 is not None:
        raise ValueError("`t1` is only for gf.GradientFlow; discrete methods run `method.steps` updates.")
    v0 = expected(policy.probs(), g, policy.weights)
    if objective == "time" and target is None:
        raise ValueError("`target` (a true-reward level) is required for objective='time'.")
    if target is not None:
        if isinstance(target, bool) or not isinstance(target, (int, float, np.number)) or not np.isfinite(target):
            raise ValueError(f"`target` must be a finite number (a true-reward level); got {target!r}.")
        target = float(target)
        vmax = reward_range(g, policy.weights)[1]
        # Both checks ride on `v0`, which the run uses: under `jit`/`vmap` they fire when it runs.
        v0 = v.check(v0, lambda _: target >= vmax,
                     f"`target` ({target:g}) must be below the maximal achievable true reward (the prompt-weighted "
                     "best output's true reward), which a softmax policy approaches but never reaches.")
        v0 = v.check(v0, lambda x: target <= x,
                     f"`target` ({target:g}) must exceed the initial policy's true reward: there is nothing to "
                     "speed up.")
    return _Objective(policy, g, method, t1, v0, objective, target), g


def sensitivity(
    policy: AbstractPolicy,
    reward,
    true_reward=None,
    *,
    method: AbstractMethod,
    t1=None,
    target: float | None = None,
    autodiff: str = "auto",
) -> Float[Array, "prompts outputs"]:
    """How the outcome of training on `reward` responds to each entry of `reward`, by
    differentiating through the solver (`diffrax.diffeqsolve` or the discrete loop).

    - `target=None`: the gradient of the true reward at the horizon (`t1` for the flow,
      after `steps` updates otherwise), `d V_G(T) / d r`. Positive: raising that proxy
      reward makes the final true reward higher.
    - `target` given (flow only): the gradient of the time to reach it. The crossing `t*`
      is located inside the solve by a root find on the solver's interpolant, whose
      implicit-function adjoint gives `d t*/d r = -(d V_G(t*)/d r) / (dV_G/dt)(t*)`.
      Negative: raising that proxy reward makes the target come sooner. `nan` everywhere
      if the target is never reached within `t1`.

    **Arguments:**

    - `policy`, `reward`, `true_reward` (default `reward`), `method`, `t1`: as in
      [`gradflow.solve`][]. Exact methods only.
    - `target`: a true-reward level, or `None`.
    - `autodiff`: `"forward"`, `"reverse"` or `"auto"`, as in [`gradflow.design_proxy`][].

    **Returns:** an array shaped like `reward` (as `(prompts, outputs)`).
    """
    autodiff = _autodiff_mode(autodiff, jnp.size(reward))
    if method.needs_key:
        raise ValueError("`method`: sensitivity needs an exact method (GradientFlow or GradientAscent).")
    r = as_reward("reward", reward, policy)
    g = r if true_reward is None else as_reward("true_reward", true_reward, policy)
    if target is not None and t1 is None:
        raise ValueError("`target`: time sensitivity needs the continuous flow (gf.GradientFlow with `t1`); "
                         "for discrete methods the step count is not differentiable: use target=None.")
    if target is not None:  # the forward run first: no reverse pass for a target never reached
        sol = solve(policy, reward=r, true_reward=g, method=method, t1=t1, targets=(float(target),),
                    saveat=summary_saveat(method), stop_at_targets=True)
        t_star = sol.target_times[0]
        if not bool(jnp.isfinite(t_star)) or float(t_star) == 0.0:
            return jnp.full(r.shape, jnp.nan)
    # The objective that gradflow.design_proxy optimises: one mechanism for both.
    objective = "final" if target is None else "time"
    method = method.differentiable(autodiff)
    fn = functools.partial(proxy_objective, policy, g, method=method, objective=objective, target=target, t1=t1)
    return (jax.jacfwd if autodiff == "forward" else jax.grad)(fn)(r)


def _autodiff_mode(autodiff: str, size: int) -> str:
    """`"forward"` or `"reverse"`: the mode asked for, or by the number of values
    differentiated (`"auto"`)."""
    if autodiff not in ("auto", "forward", "reverse"):
        raise ValueError(f"`autodiff` must be 'auto', 'forward' or 'reverse'; got {autodiff!r}.")
    if autodiff == "auto":
        return "forward" if size <= FORWARD_MAX else "reverse"
    return autodiff


# ------------------------------------------------------------------------- the geometry


def _isotonic(x, w, block, margin):
    """Projection of `x` (one prompt) onto `{x_g - x_h >= margin whenever block_g >
    block_h}` in the norm weighted by `w`: the primary approach to ties (sort each block
    by value, then regress on the chain) with the min-max formula
    `fit_i = max_{j <= i} min_{k >= i} mean_w(y_j..y_k)`."""
    y = x - margin * block
    order = jnp.lexsort((y, block))
    ys, ws = y[order], w[order]
    zero = jnp.zeros(1, y.dtype)
    cw, cwy = jnp.concatenate([zero, jnp.cumsum(ws)]), jnp.concatenate([zero, jnp.cumsum(ws * ys)])
    j, k = jnp.arange(y.size)[:, None], jnp.arange(y.size)[None, :]
    upper = j <= k
    means = jnp.where(upper, (cwy[1:][None, :] - cwy[:-1][:, None]) / jnp.where(upper, cw[1:][None, :] - cw[:-1][:, None], 1.0),
                      jnp.inf)
    inner = jax.lax.cummin(means, axis=1, reverse=True)  # min over k >= i
    fit = jnp.max(jnp.where(upper, inner, -jnp.inf), axis=0)  # max over j <= i
    return jnp.zeros_like(y).at[order].set(fit) + margin * block


class _Geometry(eqx.Module):
    """Where the proxy may go: `r = truth + (u / sqrt(counts))[..., groups]` (see the
    module's docstring)."""

    truth: Float[Array, "prompts groups"]
    counts: Float[Array, " groups"]
    groups: Int[Array, " outputs"]
    free: Bool[Array, "prompts groups"]
    budget: Float[Array, ""]
    margin: Float[Array, ""]
    norm: str | int = eqx.field(static=True)
    order: Bool[Array, ""]  # data, not structure: one compilation serves both settings
    iterations: int = eqx.field(static=True)

    @property
    def _root(self) -> Float[Array, "1 groups"]:
        return jnp.sqrt(self.counts)[None, :]

    def values(self, u) -> Float[Array, "prompts groups"]:
        """The proxy's value on each group."""
        return self.truth + u / self._root

    def reward(self, u) -> Float[Array, "prompts outputs"]:
        return self.values(u)[:, self.groups]

    def _budget(self, u):
        u = jnp.where(self.free, u, 0.0)
        if self.norm == "inf":
            bound = jnp.broadcast_to(self.budget * self._root, u.shape)
            return optax.projections.projection_box(u, -bound, bound)
        return optax.projections.projection_l2_ball(u, self.budget)

    def _blocks(self):
        """Per prompt, the rank of each group's truth among the distinct truth values."""
        t = self.truth
        less = (t[:, None, :] < t[:, :, None]).astype(t.dtype)  # [x, g, h]: t_h < t_g
        copies = jnp.sum(t[:, :, None] == t[:, None, :], axis=-1).astype(t.dtype)  # of t_h
        return jnp.round(jnp.sum(less / copies[:, None, :], axis=-1))

    def _order(self, u):
        x = self.values(u)
        w = jnp.broadcast_to(self.counts[None, :], x.shape)
        fit = jax.vmap(_isotonic, in_axes=(0, 0, 0, None))(x, w, self._blocks(), self.margin)
        return (fit - self.truth) * self._root

    def project(self, u):
        """The exact projection onto the feasible set (to Dykstra's convergence when the
        order is kept too; the result is feasible either way)."""

        def ordered(u):
            def dykstra(_, state):
                x, p, q = state
                y = self._order(x + p).astype(x.dtype)
                p = x + p - y
                x2 = self._budget(y + q).astype(x.dtype)
                return x2, p, y + q - x2

            zero = jnp.zeros_like(u)
            x, _, _ = jax.lax.fori_loop(0, self.iterations, dykstra, (u, zero, zero))
            return self._pull_in(x)

        return jax.lax.cond(self.order, ordered, lambda u: self._budget(u), u)

    def _pull_in(self, u):
        """`s u` with the largest `s` in `[0, 1]` that keeps the order (the budget and the
        mask hold for every such `s`: `u` satisfies them and they contain 0)."""
        t, d = self.truth, u / self._root
        ordered = t[:, :, None] > t[:, None, :]  # [x, g, h]: g above h in the truth
        slack = t[:, :, None] - t[:, None, :] - self.margin
        closing = d[:, None, :] - d[:, :, None]  # how fast the gap g - h shrinks
        limit = jnp.where(ordered & (closing > 0), slack / jnp.where(closing > 0, closing, 1.0), jnp.inf)
        s = jnp.clip(jnp.min(limit), 0.0, 1.0)
        return s * u

    def feasible(self, u) -> Bool[Array, ""]:
        """Every constraint holds exactly (a check, used by the tests)."""
        r = self.values(u)
        mask_ok = jnp.all(jnp.where(self.free, True, u == 0))
        if self.norm == "inf":
            budget_ok = jnp.all(jnp.abs(u) <= self.budget * self._root * (1 + 1e-6))
        else:
            budget_ok = jnp.linalg.norm(u) <= self.budget * (1 + 1e-6)
        ordered = self.truth[:, :, None] > self.truth[:, None, :]
        gap = r[:, :, None] - r[:, None, :]
        order_ok = jnp.all(jnp.where(ordered, gap >= self.margin * (1 - 1e-6), True))
        return mask_ok & budget_ok & (order_ok | ~self.order)


# ------------------------------------------------------------------------- accuracy


class _Pairs(eqx.Module):
    """Every pair of outputs of a prompt that the truth orders, for Acc and HAcc."""

    truth: Float[Array, "prompts outputs"]
    logp: Float[Array, "prompts outputs"]  # the initial policy's log-probabilities
    metric: str = eqx.field(static=True)

    def _split(self, r):
        n = r.shape[-1]
        chosen = jnp.broadcast_to(r[:, :, None], r.shape + (n,)).reshape(r.shape[0], -1)
        rejected = jnp.broadcast_to(r[:, None, :], r.shape + (n,)).reshape(r.shape[0], -1)
        keep = (self.truth[:, :, None] > self.truth[:, None, :]).reshape(r.shape[0], -1)
        return chosen, rejected, keep

    def exact(self, r) -> tuple[Float[Array, ""], Float[Array, ""]]:
        """`(Acc, HAcc)` of proxy `r`."""
        c, rj, keep = self._split(r)
        mean = metrics.mean_reward(self.logp, r)
        return metrics.acc(c, rj, keep), metrics.hacc(c, rj, mean, keep)

    def smooth(self, r, temperature) -> Float[Array, ""]:
        """A sigmoid surrogate of the chosen metric."""
        c, rj, keep = self._split(r)
        right = jax.nn.sigmoid((c - rj) / temperature)
        if self.metric == "hacc":
            mean = jnp.sum(jnp.exp(self.logp) * r, axis=-1, keepdims=True)
            right = 1 - (1 - right) * (1 - jax.nn.sigmoid((mean - rj) / temperature))
        return jnp.sum(jnp.where(keep, right, 0.0)) / jnp.sum(keep)

    def value(self, r) -> Float[Array, ""]:
        acc, hacc = self.exact(r)
        return hacc if self.metric == "hacc" else acc


# ------------------------------------------------------------------------- the design


def design_proxy(
    policy: AbstractPolicy,
    true_reward,
    *,
    method: AbstractMethod,
    objective: str = "time",
    target: float | None = None,
    t1=None,
    budget,
    norm: str | int = "inf",
    order_preserving: bool = False,
    min_accuracy=None,
    accuracy: str = "acc",
    mask=None,
    groups=None,
    margin=None,
    optimizer: optax.GradientTransformation | None = None,
    steps: int = 200,
    key: PRNGKeyArray | None = None,
    temperature=None,
    penalty: float = 100.0,
    projection_iterations: int = 100,
    tolerance: float = 0.05,
    reward_tolerance: float = 1e-3,
    autodiff: str = "auto",
) -> ProxyDesign:
    """Design the proxy reward that teaches fastest: optimise it by gradients through the
    training run, within a budget of deviation from the truth.

    **Arguments:**

    - `policy`: the initial policy (any [`gradflow.AbstractPolicy`][]).
    - `true_reward`: the ground truth, shape `(outputs,)` or `(prompts, outputs)`.
    - `method`: [`gradflow.GradientFlow`][] (with `t1`) or [`gradflow.GradientAscent`][].
    - `objective`:
        - `"time"` (default): minimise the time (flow) or steps (discrete) until the
          expected true reward first reaches `target`. The flow's crossing is located
          inside the solve and differentiated by the implicit-function theorem; a
          discrete crossing is interpolated linearly between the two updates around
          it. A run that does not get there within the horizon `T` counts
          `T (1 + (target - V_G(T)) / (target - V_G(0)))`, which is continuous at the
          boundary and rewards progress.
        - `"final"`: maximise the true reward at the horizon.
        - `"area"`: maximise the mean true reward over the horizon (the flow's curve at
          1001 evenly spaced times, the trapezoid rule; every update for discrete methods).
    - `target`: the true-reward level of the time objective; above the initial policy's
      true reward and below the largest achievable. With the other objectives it only
      sets how `category` and `time` are measured.
    - `t1`: the flow's horizon.
    - `budget`: the largest allowed distance of the proxy from the truth, over all
      entries, in the `norm`: `"inf"` (every entry within `budget` of its true value)
      or `2` (Euclidean).
    - `order_preserving`: keep ranking accuracy exactly 1: every pair of outputs that the
      truth orders keeps its order, by at least `margin`.
    - `min_accuracy`: a floor on `accuracy` (`"acc"`, ranking accuracy, or `"hacc"`,
      harm-aware accuracy against the initial policy), in `[0, 1]`. It is enforced
      through a smooth surrogate (sigmoids at `temperature`, default `budget / 10`, with
      a quadratic `penalty`); the returned proxy is the best iterate whose exact value
      meets the floor.
    - `mask`: boolean, shaped like `true_reward` (or like `(prompts, groups)` with
      `groups`): which entries may change.
    - `groups`: an integer array `(outputs,)` tying outputs together: one proxy value per
      group and prompt (the truth must be constant on each group). For the
      constraint-satisfaction model of `gradflow.design`, one credit per satisfaction
      pattern is `groups=problem.output_patterns()`.
    - `margin`: the order-preserving gap; default `1e-3` times the smallest gap between
      distinct true rewards of a prompt.
    - `optimizer`: an optax optimiser; default Adam (`b2 = 0.9`) with a learning rate
      decayed from `10 budget / steps` to 0 on a cosine schedule (up to `5 budget` of
      travel in all).
    - `steps`: optimiser steps.
    - `key`: `None` starts at the truth; a PRNG key starts at a random feasible proxy
      (for multi-start under `jax.vmap` over keys). The same key gives the same result.
    - `projection_iterations`: Dykstra iterations when the order and the budget are
      combined.
    - `tolerance`, `reward_tolerance`: as in [`gradflow.categorize`][], for `category`.
    - `autodiff`: how the design gradient is taken through the training run:
      `"forward"` (`jax.jacfwd`: one tangent per free proxy value, carried along the
      run), `"reverse"` (`jax.grad`: one backward pass through the checkpointed run), or
      `"auto"` (default): forward up to 32 proxy values (prompts times groups),
      reverse beyond. Both give the same gradient; forward mode compiles in about half
      the time.

    **Returns:** a [`gradflow.ProxyDesign`][]; `.reward` is the designed proxy, the best
    iterate by the exact objective among those that meet every constraint.

    Works under `jax.vmap` over initial policies (their parameters), budgets and keys.
    Bad input raises a `ValueError` naming the argument.
    """
    obj, g = _setup(policy, true_reward, method, objective, target, t1)
    if norm not in NORMS:
        raise ValueError(f"`norm` must be 'inf' or 2; got {norm!r}.")
    budget = v.positive_scalar("budget", budget)
    if accuracy not in ACCURACIES:
        raise ValueError(f"`accuracy` must be 'acc' or 'hacc'; got {accuracy!r}.")
    floor = None
    if min_accuracy is not None:
        floor = v.as_float_array("min_accuracy", min_accuracy, ndim=(0,))
        floor = v.check(floor, lambda a: (a < 0) | (a > 1),
                        f"`min_accuracy` must lie in [0, 1] (a fraction of pairs); got {min_accuracy}: no proxy "
                        "can meet it.")
    steps = v.positive_int("steps", steps)
    iterations = v.positive_int("projection_iterations", projection_iterations)
    if not isinstance(order_preserving, bool):
        raise ValueError(f"`order_preserving` must be True or False; got {order_preserving!r}.")
    if not (tolerance > 0 and reward_tolerance > 0 and penalty > 0):
        raise ValueError("`tolerance`, `reward_tolerance` and `penalty` must be positive.")

    index, counts = _groups(groups, g.shape[-1])
    truth = _group_truth(g, index, counts.size)
    free = _mask(mask, truth.shape, g.shape, groups is not None)
    gaps = truth[:, :, None] - truth[:, None, :]
    smallest = jnp.min(jnp.where(gaps > 0, gaps, jnp.inf))
    if margin is None:
        margin = 1e-3 * jnp.where(jnp.isfinite(smallest), smallest, 1.0)
    else:
        margin = v.positive_scalar("margin", margin)
        margin = v.check(margin, lambda m: m > smallest,
                         "`margin` must not exceed the smallest gap between distinct true rewards (the truth "
                         "itself must keep the order).")
    geometry = _Geometry(truth, counts, index, free, budget, margin, norm, jnp.asarray(order_preserving), iterations)
    pairs = _Pairs(g, policy.log_probs(), accuracy)
    temperature = budget / 10 if temperature is None else v.positive_scalar("temperature", temperature)
    if optimizer is not None and not (hasattr(optimizer, "init") and hasattr(optimizer, "update")):
        raise ValueError(f"`optimizer` must be an optax.GradientTransformation; got {optimizer!r}.")
    if key is None:
        u0 = jnp.zeros(truth.shape, g.dtype)
    else:
        scale = budget if norm == "inf" else budget / np.sqrt(truth.size)
        u0 = geometry.project(scale * jax.random.uniform(key, truth.shape, g.dtype, -1.0, 1.0))
    settings = _Settings(temperature, jnp.asarray(penalty, g.dtype), floor, tolerance, reward_tolerance)
    autodiff = _autodiff_mode(autodiff, truth.size)
    obj = eqx.tree_at(lambda o: o.method, obj, obj.method.differentiable(autodiff))
    return _design(obj, geometry, pairs, optimizer, settings, u0, steps, jnp.ndim(jnp.asarray(true_reward)),
                   autodiff)


class _Settings(eqx.Module):
    temperature: Float[Array, ""]
    penalty: Float[Array, ""]
    floor: Float[Array, ""] | None
    tolerance: float = eqx.field(static=True)
    reward_tolerance: float = eqx.field(static=True)


def _groups(groups, n_outputs):
    if groups is None:
        return jnp.arange(n_outputs), jnp.ones(n_outputs)
    idx = np.asarray(groups)
    if idx.shape != (n_outputs,) or not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(f"`groups` must be an integer array with one group index per output, shape "
                         f"({n_outputs},); got {groups!r}.")
    count = np.bincount(idx, minlength=int(idx.max()) + 1) if idx.min() >= 0 else None
    if count is None or np.any(count == 0):
        raise ValueError("`groups` must number the groups 0, 1, ..., G - 1, each with at least one output.")
    return jnp.asarray(idx), jnp.asarray(count, float)


def _group_truth(g, index, n_groups):
    """The truth per group (it must be constant on each)."""
    first = jnp.zeros(n_groups, int).at[index[::-1]].set(jnp.arange(index.size)[::-1])
    return v.check(g[:, first], lambda t: g != t[:, index],
                   "`true_reward` must be constant on each group of `groups` (one proxy value per group).")


def _mask(mask, shape, reward_shape, grouped):
    if mask is None:
        return jnp.ones(shape, bool)
    m = np.asarray(mask)
    want = shape if grouped else reward_shape
    if m.dtype != bool or m.shape not in (want, want[1:]):
        what = "(prompts, groups) or (groups,)" if grouped else "`true_reward`"
        raise ValueError(f"`mask` must be a boolean array shaped like {what}, {want[1:]} or {want}; got "
                         f"{mask!r}.")
    if not m.any():
        raise ValueError("`mask` frees nothing: at least one entry must be allowed to change.")
    return jnp.broadcast_to(jnp.asarray(m), shape)


@eqx.filter_jit
def _design(obj: _Objective, geometry: _Geometry, pairs: _Pairs, optimizer, settings: _Settings, u0, steps: int,
            ndim: int, autodiff: str) -> ProxyDesign:
    if optimizer is None:  # built here, so that budgets are data and do not recompile
        # Adam moves up to one learning rate per step: the cosine schedule travels up to
        # `5 budget` in all, enough to cross the budget's box from any start. The gradient
        # shrinks by orders of magnitude as the proxy improves; a short second-moment
        # memory (`b2 = 0.9`) keeps the steps at the learning rate.
        optimizer = optax.adam(optax.cosine_decay_schedule(10 * geometry.budget / steps, steps), b2=0.9)
    lo, hi = reward_range(obj.true_reward, obj.policy.weights)

    def loss(u):
        """Scale-free: log time (its gradient spans orders of magnitude otherwise, which
        stalls Adam), or the reward over the truth's range."""
        r = geometry.reward(u)
        value, ok = obj.value(r, stop=True)
        total = jnp.log(value) if obj.name == "time" else -value / (hi - lo)
        if settings.floor is not None:  # pushes back only while the exact value misses the floor
            short = jax.nn.relu(settings.floor - pairs.smooth(r, settings.temperature))
            missed = jax.lax.stop_gradient(pairs.value(r) < settings.floor)
            total = total + jnp.where(missed, settings.penalty * short**2, 0.0)
        return total, (value, ok)

    def score(u, value, ok):
        """The exact objective to minimise (`inf` when the run fails or misses the floor)."""
        good = ok & jnp.isfinite(value)
        if settings.floor is not None:
            good = good & (pairs.value(geometry.reward(u)) >= settings.floor)
        return jnp.where(good, value if obj.name == "time" else -value, jnp.inf)

    def step(carry, _):
        u, state, best_u, best = carry
        if autodiff == "forward":
            grad, (value, ok) = jax.jacfwd(loss, has_aux=True)(u)
        else:
            (_, (value, ok)), grad = jax.value_and_grad(loss, has_aux=True)(u)
        grad = jnp.where(ok & jnp.all(jnp.isfinite(grad)), grad, 0.0)
        here = score(u, value, ok)
        best_u, best = jnp.where(here < best, u, best_u), jnp.minimum(here, best).astype(best.dtype)
        updates, state = optimizer.update(grad, state, u)
        return (geometry.project(optax.apply_updates(u, updates)).astype(u.dtype), state, best_u, best), value

    # `steps` updates, then the last iterate is scored too (its update is discarded).
    truth = jnp.zeros_like(u0)  # it meets every constraint: the answer if nothing else does
    start = (u0, optimizer.init(u0), truth, jnp.asarray(jnp.inf, u0.dtype))
    (_, _, best_u, _), history = jax.lax.scan(step, start, None, length=steps + 1)
    return _report(obj, geometry, pairs, settings, best_u, history, ndim)


def _report(obj, geometry, pairs, settings, u, history, ndim) -> ProxyDesign:
    """The exact metrics of the designed proxy, from one batch of runs: the proxy, the
    truth, and the truth with each single entry at its designed value."""
    r, g = geometry.reward(u), obj.true_reward
    n = g.size
    single = jnp.where(jnp.eye(n, dtype=bool).reshape((n,) + g.shape), r[None], g[None])
    value, time, final, status = eqx.filter_vmap(lambda rr: _summary(obj, rr))(
        jnp.concatenate([r[None], g[None], single]))
    acc, hacc = pairs.exact(r)
    code, _ = classify_codes(time[2:], time[1], final[2:], final[1], settings.tolerance, settings.reward_tolerance)
    code = jnp.where(status[2:] != OK_CODE, FAILED, code)
    code = jnp.where((r != g).reshape(-1), code, UNCHANGED).reshape(g.shape)

    def shaped(a):
        return a[0] if ndim == 1 else a

    return ProxyDesign(
        reward=shaped(r), change=shaped(r - g), objective=value[0], reference_objective=value[1],
        history=history, time=time[0], reference_time=time[1], final_true_reward=final[0],
        reference_final_true_reward=final[1], accuracy=acc, hacc=hacc, category=shaped(code),
        status=status[0], objective_name=obj.name,
    )


def _summary(obj: _Objective, reward):
    """Objective, time to the target, final true reward and status of one run."""
    value, sol = obj.run(reward, stop=False)
    time = sol.target_times[0] if obj.target is not None else jnp.asarray(jnp.nan, value.dtype)
    return jnp.where(_ok(sol), value, jnp.nan), time, sol.final_true_reward, status_code(sol.status)

