"""Reward design with verifiable rewards: when should partially correct outputs be rewarded?

A task has `m` verifiable constraints (`m = 2` by default). Every output satisfies some
subset of them, its *satisfaction pattern*; several outputs share each pattern (they are
different texts that happen to satisfy the same constraints). The ground truth is
success: all `m` constraints satisfied. The reward schemes a designer can train on:

- `"binary"`: 1 for success, 0 otherwise (all or nothing);
- `"partial"`: the fraction of constraints satisfied;
- `"weighted"`: the weighted fraction `sum_j w_j c_j / sum_j w_j` (per-constraint weights);
- `"user"`: any value per pattern.

Patterns are numbered by bitmask: pattern `b` satisfies constraint `j` (0-based) iff bit
`j` of `b` is set, so pattern 0 satisfies nothing and pattern `2^m - 1` is success. The
outputs are ordered by pattern.

**Two parameterisations with the same initial probabilities.** The *tabular* policy has
one free logit per output: rewarding a partially correct output lifts that output only.
The *log-linear* policy has features

    phi(y) = [sqrt(mix) * c(y), sqrt(1 - mix) * e_y]       (dimension m + K),

where `c(y)` in `{0, 1}^m` says which constraints `y` satisfies and `e_y` is one-hot: the
constraint block shares learning between all outputs that satisfy a constraint (rewarding
constraint 1 also lifts the successful outputs, which satisfy it too). The square roots
make the *score-space kernel* a convex combination,

    Phi Phi^T = mix * C C^T + (1 - mix) * I,

because the flow moves the scores as `ds/dt = Phi Phi^T g(s)` (and SGD as
`s <- s + eta Phi Phi^T g_hat`): `mix` interpolates linearly between the tabular kernel
`I` (`mix = 0`, where the constraint columns are zero, their parameters never move and the
model *is* the tabular one) and the pure constraint kernel (`mix = 1`). For `mix < 1` the
one-hot block has full rank, so every strictly positive initial distribution is fitted
exactly (as `LogLinear.from_probs` would); we use the closed-form fit
`theta0 = [0, tau * log p / sqrt(1 - mix)]`, which also works under `jax.vmap`. Since the
dynamics of the probabilities depend on the parameters only through the scores (for the
flow and for SGD-type updates), every exact fit gives the same trajectories. At `mix = 1`
only distributions that are uniform within each pattern and log-affine in `c` can be
represented; [`gradflow.LogLinear.from_probs`][] then fits the rest by least squares and
warns.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, PRNGKeyArray

from ._analysis.seeds import summarize_seeds
from ._engine.methods import AbstractMethod, GradientFlow
from ._engine.solve import SaveAt, Solution, solve
from ._engine.status import Status
from ._util import validate as v
from .policies import AbstractPolicy, LogLinear, TabularSoftmax

__all__ = [
    "ConstraintSatisfaction",
    "Recommendation",
    "no_signal_probability",
    "no_update",
    "recommend",
    "time_ratio",
]

MAX_CONSTRAINTS = 10
PROB_TOL = 1e-6


def _is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


class ConstraintSatisfaction(eqx.Module):
    """The constraint-satisfaction model: `m` constraints, `2^m` satisfaction patterns,
    several outputs per pattern, ground truth = every constraint satisfied.

    **Arguments:**

    - `num_constraints`: `m`, a positive integer (at most 10; `2^m` patterns).
    - `outputs_per_pattern`: how many outputs share each pattern: one positive integer
      for every pattern, or a sequence of `2^m` of them (indexed by pattern bitmask).

    Outputs are ordered by pattern: the first `outputs_per_pattern[0]` satisfy nothing,
    the last ones satisfy everything. Example: `ConstraintSatisfaction(2, 4)` has 16
    outputs, four each for "none", "c1", "c2" and "c1+c2" (success).
    """

    num_constraints: int = eqx.field(static=True)
    counts: tuple[int, ...] = eqx.field(static=True)

    def __init__(self, num_constraints: int = 2, outputs_per_pattern: int | Sequence[int] = 4):
        m = v.positive_int("num_constraints", num_constraints)
        if m > MAX_CONSTRAINTS:
            raise ValueError(
                f"`num_constraints` must be at most {MAX_CONSTRAINTS} (the model has 2^m patterns); got {m}."
            )
        n_pat = 2**m
        if _is_int(outputs_per_pattern):
            counts = (v.positive_int("outputs_per_pattern", outputs_per_pattern),) * n_pat
        else:
            try:
                counts = tuple(outputs_per_pattern)  # type: ignore[arg-type]
            except TypeError as e:
                raise ValueError(
                    f"`outputs_per_pattern` must be a positive integer or a sequence of {n_pat}; "
                    f"got {outputs_per_pattern!r}."
                ) from e
            if len(counts) != n_pat or not all(_is_int(c) and c >= 1 for c in counts):
                raise ValueError(
                    f"`outputs_per_pattern` must be a positive integer or a sequence of {n_pat} "
                    f"positive integers (one per pattern, m = {m}); got {outputs_per_pattern!r}."
                )
            counts = tuple(int(c) for c in counts)
        self.num_constraints = m
        self.counts = counts

    # ------------------------------------------------------------------ structure

    @property
    def num_patterns(self) -> int:
        """`2^m`."""
        return 2**self.num_constraints

    @property
    def num_outputs(self) -> int:
        """`K`, the total number of outputs."""
        return sum(self.counts)

    @property
    def success_pattern(self) -> int:
        """The pattern that satisfies every constraint, `2^m - 1`."""
        return self.num_patterns - 1

    @property
    def partial_patterns(self) -> tuple[int, ...]:
        """The patterns that satisfy some but not all constraints, `1 .. 2^m - 2`."""
        return tuple(range(1, self.num_patterns - 1))

    def pattern_table(self) -> np.ndarray:
        """Which constraints each pattern satisfies: a 0/1 array of shape `(2^m, m)`."""
        b = np.arange(self.num_patterns)[:, None]
        return (b >> np.arange(self.num_constraints)[None, :]) & 1

    def output_patterns(self) -> np.ndarray:
        """The pattern of each output, shape `(K,)`."""
        return np.repeat(np.arange(self.num_patterns), self.counts)

    def pattern_name(self, pattern: int) -> str:
        """`"none"`, `"all"` or the satisfied constraints, e.g. `"c1+c3"` (1-based)."""
        if not _is_int(pattern) or not 0 <= pattern < self.num_patterns:
            raise ValueError(f"`pattern` must be an integer in [0, {self.num_patterns}); got {pattern!r}.")
        if pattern == 0:
            return "none"
        if pattern == self.success_pattern:
            return "all"
        return "+".join(f"c{j + 1}" for j in range(self.num_constraints) if pattern >> j & 1)

    def satisfied(self) -> Float[Array, "outputs constraints"]:
        """`c(y)`: which constraints each output satisfies, shape `(K, m)` (0/1 floats)."""
        return jnp.asarray(self.pattern_table()[self.output_patterns()], dtype=float)

    def per_output(self, values) -> Float[Array, " outputs"]:
        """Expand one value per pattern (shape `(2^m,)`) to one value per output."""
        vals = v.as_float_array("values", values, ndim=(1,))
        if vals.shape != (self.num_patterns,):
            raise ValueError(
                f"`values` must have one entry per pattern, shape ({self.num_patterns},); got {tuple(vals.shape)}."
            )
        return vals[jnp.asarray(self.output_patterns())]

    def pattern_mass(self, probs: Float[Array, "*batch outputs"]) -> Float[Array, "*batch patterns"]:
        """The probability of each pattern: sums `probs` over the outputs of each pattern
        (any leading axes, e.g. `sol.probs` of shape `(saves, prompts, K)`)."""
        onehot = np.eye(self.num_patterns)[self.output_patterns()]  # (K, P)
        probs = jnp.asarray(probs)
        if probs.shape[-1] != self.num_outputs:
            raise ValueError(f"`probs` must have {self.num_outputs} outputs on its last axis; got {tuple(probs.shape)}.")
        return probs @ jnp.asarray(onehot, probs.dtype)

    # -------------------------------------------------------------------- rewards

    def true_reward(self) -> Float[Array, " outputs"]:
        """The ground truth: 1 if every constraint is satisfied, else 0 (the same as
        `reward("binary")`); its expectation is the success probability."""
        return self.reward("binary")

    def reward(self, scheme: str = "binary", *, weights=None, values=None) -> Float[Array, " outputs"]:
        """A reward scheme, one value per output, shape `(K,)`.

        **Arguments:**

        - `scheme`: `"binary"` (1 for success, else 0), `"partial"` (fraction of the
          constraints satisfied), `"weighted"` (`sum_j w_j c_j / sum_j w_j`), or
          `"user"` (the given `values`).
        - `weights`: for `"weighted"`: `m` non-negative weights, not all zero.
        - `values`: for `"user"`: one reward per pattern, shape `(2^m,)`, indexed by
          pattern bitmask.

        **Returns:** the reward of each output. With `m = 1`, `"partial"` and
        `"weighted"` coincide with `"binary"`.
        """
        table = self.pattern_table().astype(float)
        if scheme == "binary":
            per = (np.arange(self.num_patterns) == self.success_pattern).astype(float)
        elif scheme == "partial":
            per = table.mean(axis=1)
        elif scheme == "weighted":
            if weights is None:
                raise ValueError("`weights` is required for scheme='weighted' (one weight per constraint).")
            w = np.asarray(v.as_float_array("weights", weights, ndim=(1,)), dtype=float)
            if w.shape != (self.num_constraints,) or (w < 0).any() or not w.sum() > 0:
                raise ValueError(
                    f"`weights` must be {self.num_constraints} non-negative numbers, not all zero "
                    f"(one per constraint); got {np.asarray(weights).tolist()}."
                )
            per = table @ w / w.sum()
        elif scheme == "user":
            if values is None:
                raise ValueError(f"`values` is required for scheme='user' (one reward per pattern, {self.num_patterns}).")
            return self.per_output(values)
        else:
            raise ValueError(f"`scheme` must be 'binary', 'partial', 'weighted' or 'user'; got {scheme!r}.")
        if scheme != "weighted" and weights is not None:
            raise ValueError(f"`weights` is only for scheme='weighted'; got scheme={scheme!r}.")
        if values is not None:
            raise ValueError(f"`values` is only for scheme='user'; got scheme={scheme!r}.")
        return jnp.asarray(per[self.output_patterns()], dtype=float)

    # ----------------------------------------------------------- initial policies

    def pattern_probs(self, p_success, p_partial=0.0) -> np.ndarray:
        """Initial probability of each pattern (NumPy, shape `(2^m,)`): `p_success` for
        success, `p_partial` for each partial pattern, the rest for "none".

        **Arguments:**

        - `p_success`: the probability of success, in `[0, 1]`.
        - `p_partial`: the probability of *each* partial pattern (a number), or one per
          partial pattern (shape `(2^m - 2,)`, patterns `1 .. 2^m - 2`); non-negative.

        The masses must sum to at most 1; "none" gets the remainder.
        """
        ps = _scalar("p_success", p_success)
        if not 0 <= ps <= 1:
            raise ValueError(f"`p_success` must lie in [0, 1]; got {ps}.")
        n_part = self.num_patterns - 2
        pp = np.asarray(v.as_float_array("p_partial", p_partial, ndim=(0, 1)), dtype=float)
        if n_part == 0 and np.any(pp != 0):
            raise ValueError("`p_partial` must be 0 with a single constraint: there are no partial patterns.")
        if pp.ndim == 0:
            pp = np.full(n_part, float(pp))
        elif pp.shape != (n_part,):
            raise ValueError(
                f"`p_partial` must be a number or have one entry per partial pattern, shape ({n_part},); "
                f"got shape {pp.shape}."
            )
        if (pp < 0).any():
            raise ValueError(f"`p_partial` must be non-negative; got {pp.tolist()}.")
        rest = 1.0 - ps - pp.sum()
        if rest < -PROB_TOL:
            raise ValueError(
                f"`p_success` + the partial-pattern probabilities must be at most 1; got {ps} + {pp.sum():g}."
            )
        return np.concatenate([[max(rest, 0.0)], pp, [ps]])

    def probs(self, p_success, p_partial=0.0, *, floor=1e-12) -> Float[Array, " outputs"]:
        """The initial output probabilities: each pattern's mass (see `pattern_probs`)
        split equally among its outputs.

        **Arguments:**

        - `p_success`, `p_partial`: as in `pattern_probs`.
        - `floor`: a pattern given zero mass gets this much instead (a softmax policy
          cannot put zero mass on an output); the masses are then renormalised.

        **Returns:** strictly positive probabilities summing to 1, shape `(K,)`.
        """
        if not 0 < floor < 1e-3:
            raise ValueError(f"`floor` must lie in (0, 1e-3); got {floor}.")
        mass = np.maximum(self.pattern_probs(p_success, p_partial), floor)
        mass = mass / mass.sum()
        return jnp.asarray((mass / np.asarray(self.counts))[self.output_patterns()], dtype=float)

    def features(self, mix) -> Float[Array, "outputs dim"]:
        """Log-linear features `[sqrt(mix) c(y), sqrt(1 - mix) e_y]`, shape `(K, m + K)`.

        **Arguments:**

        - `mix`: in `[0, 1]`; 0 is the tabular model, 1 pure constraint features (the
          module docstring says why the square roots).
        """
        mix = _mix(mix)
        c = self.satisfied().astype(mix.dtype)
        return jnp.concatenate([jnp.sqrt(mix) * c, jnp.sqrt(1 - mix) * jnp.eye(self.num_outputs, dtype=mix.dtype)], axis=1)

    def policy(
        self,
        p_success,
        p_partial=0.0,
        *,
        parameterisation: str = "tabular",
        mix=0.5,
        temperature=1.0,
    ) -> AbstractPolicy:
        """The initial policy with the given success and partial-pattern probabilities.

        **Arguments:**

        - `p_success`, `p_partial`: as in `pattern_probs`.
        - `parameterisation`: `"tabular"` (a [`gradflow.TabularSoftmax`][]) or
          `"log-linear"` (a [`gradflow.LogLinear`][] with `features(mix)`).
        - `mix`: the knob of the log-linear model, in `[0, 1]` (ignored when tabular).
        - `temperature`: `tau > 0`.

        **Returns:** the policy; both parameterisations start from exactly `probs(...)`
        (for `mix = 1`, as closely as the features allow).
        """
        p = self.probs(p_success, p_partial)
        if parameterisation == "tabular":
            return TabularSoftmax.from_probs(p, temperature=temperature)
        if parameterisation != "log-linear":
            raise ValueError(f"`parameterisation` must be 'tabular' or 'log-linear'; got {parameterisation!r}.")
        mix_arr = _mix(mix)
        if v.is_concrete(mix_arr) and float(mix_arr) == 1.0:
            return LogLinear.from_probs(self.features(mix_arr), p, temperature=temperature)
        tau = v.positive_scalar("temperature", temperature)
        return LogLinear(self.features(mix_arr), loglinear_theta(jnp.log(p), mix_arr, self.num_constraints, tau),
                         temperature=tau)


def loglinear_theta(log_probs: Float[Array, " outputs"], mix, num_constraints: int, temperature=1.0) -> Float[Array, " dim"]:
    """The closed-form exact fit of the log-linear model for `mix < 1`:
    `[0_m, tau * log p / sqrt(1 - mix)]` (works under `jit`/`vmap`)."""
    mix = jnp.asarray(mix, log_probs.dtype)
    zeros = jnp.zeros((num_constraints,), log_probs.dtype)
    return jnp.concatenate([zeros, temperature * log_probs / jnp.sqrt(1 - mix)])


def _scalar(name: str, x) -> float:
    arr = v.as_float_array(name, x, ndim=(0,))
    return float(arr)


def _mix(mix) -> Float[Array, ""]:
    arr = v.as_float_array("mix", mix, ndim=(0,))
    return v.check(arr, lambda a: (a < 0) | (a > 1), f"`mix` must lie in [0, 1]; got {mix}.")


# ------------------------------------------------------------------- measurement


def time_ratio(time_partial, time_binary) -> np.ndarray:
    """`time_partial / time_binary`, elementwise, with the edge cases made explicit.

    - both finite: the quotient; both 0 (already at the target at the start): 1;
    - only partial credit gets there (`time_binary = inf`): 0;
    - only binary credit gets there (`time_partial = inf`): `inf`;
    - neither gets there (both `inf`), or either run failed (`nan`): `nan`.

    **Arguments:**

    - `time_partial`, `time_binary`: times to the target (`inf`: never reached).

    **Returns:** a NumPy array (a 0-d array for scalar inputs).
    """
    tp = np.asarray(time_partial, dtype=float)
    tb = np.asarray(time_binary, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = tp / tb
    r = np.where((tp == 0) & (tb == 0), 1.0, r)
    r = np.where(np.isinf(tb) & np.isfinite(tp), 0.0, r)
    r = np.where(np.isinf(tp) & np.isfinite(tb), np.inf, r)
    r = np.where((np.isinf(tp) & np.isinf(tb)) | np.isnan(tp) | np.isnan(tb), np.nan, r)
    return r


def no_update(sol: Solution, policy: AbstractPolicy) -> Bool[Array, "*batch"]:
    """Whether a run never changed the parameters: its final parameters are bitwise
    those of `policy`.

    For binary credit and a group-based estimator ([`gradflow.RLOO`][],
    [`gradflow.GRPO`][], or [`gradflow.Reinforce`][] without a baseline) this is exactly
    the event "no group ever sampled a success": a group with no success scores every
    draw 0, so every advantage is 0 and the update is exactly zero. Such a run's time
    to success is `inf` because there was *no signal*, not because learning was slow.

    **Arguments:**

    - `sol`: a [`gradflow.Solution`][], possibly batched (e.g. vmapped over seeds).
    - `policy`: the initial policy of the run (unbatched).

    **Returns:** a boolean array with the batch shape of `sol` (a scalar for one run).
    """
    out = None
    for final, init in zip(jax.tree.leaves(sol.params), jax.tree.leaves(policy.params), strict=True):
        batch = final.shape[: final.ndim - init.ndim]
        same = jnp.all((final == jnp.broadcast_to(init, final.shape)).reshape(batch + (-1,)), axis=-1)
        out = same if out is None else out & same
    assert out is not None
    return out


def no_signal_probability(p_success, samples: int, steps: int, prompts: int = 1) -> float:
    """The probability that binary credit makes no update at all in `steps` steps of a
    group-based estimator with `samples` draws per prompt: `(1 - p)^(samples * steps *
    prompts)`. Exact, because the policy cannot move before the first success is drawn,
    so every draw until then comes from the initial policy.

    **Arguments:**

    - `p_success`: the initial success probability, in `[0, 1]`.
    - `samples`, `steps`, `prompts`: positive integers.

    **Returns:** a probability.
    """
    p = _scalar("p_success", p_success)
    if not 0 <= p <= 1:
        raise ValueError(f"`p_success` must lie in [0, 1]; got {p}.")
    n = v.positive_int("samples", samples) * v.positive_int("steps", steps) * v.positive_int("prompts", prompts)
    return float(math.exp(n * math.log1p(-p))) if p < 1 else 0.0


# --------------------------------------------------------------- recommendation


@eqx.filter_jit
def _seed_runs(policy, reward, true_reward, method, keys, saveat, targets):
    """One compiled batch of seeds (cached across calls with the same structure)."""

    def one(key):
        return solve(policy, reward=reward, true_reward=true_reward, method=method, key=key, saveat=saveat,
                     targets=targets)

    return jax.vmap(one)(keys)


class Recommendation(eqx.Module):
    """What [`gradflow.design.recommend`][] found.

    **Fields:**

    - `scheme`: `"partial"` or `"binary"` (the faster one), `"either"` (same time, e.g.
      both already at the target) or `"neither"` (neither gets there in the horizon).
    - `factor`: how many times faster the recommended scheme is (`>= 1`; `inf` when only
      it gets there; 1 for `"either"`; `nan` for `"neither"`).
    - `ratio`: `time_partial / time_binary` (see [`gradflow.design.time_ratio`][]).
    - `time_binary`, `time_partial`: time to the target (flow time or steps; for sampled
      methods the median over seeds); `inf`: not reached within the horizon.
    - `reached_binary`, `reached_partial`: fraction of seeds that reach the target (0 or
      1 for exact methods).
    - `no_update_binary`, `no_update_partial`: fraction of seeds whose parameters never
      changed (for binary credit: no group ever sampled a success).
    - `target`, `unit` (`"flow time"` or `"steps"`), `horizon`, `seeds`.
    - `solutions`: `{"binary": Solution, "partial": Solution}`, the simulation behind it
      (batched over seeds for sampled methods).
    """

    scheme: str = eqx.field(static=True)
    factor: float
    ratio: float
    time_binary: float
    time_partial: float
    reached_binary: float
    reached_partial: float
    no_update_binary: float
    no_update_partial: float
    target: float
    unit: str = eqx.field(static=True)
    horizon: float
    seeds: int
    solutions: dict

    def summary(self) -> str:
        """A sentence or two saying which scheme to use and why."""
        unit, tgt = self.unit, f"{self.target:g}"
        horizon = f"{self.horizon:.4g} {unit}"
        med = f" (median of {self.seeds} seeds)" if self.seeds > 1 else ""

        def t(x: float) -> str:
            return f"{x:.4g} {unit}"

        if self.scheme == "neither":
            text = f"Neither scheme reaches success probability {tgt} within {horizon}{med}."
        elif self.scheme == "either":
            text = f"Both schemes reach success probability {tgt} at the same time, {t(self.time_binary)}{med}."
        else:
            other = "binary" if self.scheme == "partial" else "partial"
            fast, slow = (self.time_partial, self.time_binary) if self.scheme == "partial" else (
                self.time_binary, self.time_partial)
            text = f"Use {self.scheme} credit: it reaches success probability {tgt} in {t(fast)}{med}; "
            if math.isinf(slow):
                text += f"{other} credit does not get there within {horizon}."
            else:
                text += f"{other} credit takes {t(slow)}, {self.factor:.3g}x longer."
        if self.seeds > 1:
            text += (f" Seeds that get there: binary {self.reached_binary:.0%}, partial "
                     f"{self.reached_partial:.0%}.")
        if self.no_update_binary > 0:
            n = round(self.no_update_binary * self.seeds)
            text += (f" Binary credit gave no signal in {n} of {self.seeds} seeds: no group ever "
                     "sampled a success, so it made no update at all.")
        return text

    def __str__(self) -> str:
        return self.summary()


def recommend(
    p_success,
    p_partial=0.0,
    *,
    problem: ConstraintSatisfaction | None = None,
    method: AbstractMethod | None = None,
    parameterisation: str = "tabular",
    mix=0.5,
    partial: str = "partial",
    weights=None,
    values=None,
    target=0.9,
    t1=None,
    seeds: int = 16,
    key: PRNGKeyArray | None = None,
) -> Recommendation:
    """Should partially correct outputs be rewarded? Simulate both schemes from the
    measured initial rates and compare the time to success.

    **Arguments:**

    - `p_success`: the measured success probability of the initial policy, in `(0, 1]`.
    - `p_partial`: the probability of each partial pattern (a number), or one per
      partial pattern (see [`gradflow.design.ConstraintSatisfaction.pattern_probs`][]).
    - `problem`: a [`gradflow.design.ConstraintSatisfaction`][] (default: 2 constraints,
      4 outputs per pattern).
    - `method`: [`gradflow.GradientFlow`][] (default), [`gradflow.GradientAscent`][] or a
      sample-based method such as [`gradflow.RLOO`][] or [`gradflow.GRPO`][].
    - `parameterisation`, `mix`: the policy model and its knob (see
      [`gradflow.design.ConstraintSatisfaction.policy`][]).
    - `partial`, `weights`, `values`: the partial-credit scheme compared with binary
      credit (`"partial"`, `"weighted"` with `weights`, or `"user"` with `values`).
    - `target`: the success probability to reach, in `(0, 1)`.
    - `t1`: the flow's horizon; default `100 n / p_success` with `n` the number of
      successful outputs (binary credit on a tabular policy takes about `n / p_success`).
    - `seeds`: runs of a sampled method (vmapped over keys); the times are medians.
    - `key`: the PRNG key of the sampled runs (default `jax.random.key(0)`).

    **Returns:** a [`gradflow.design.Recommendation`][]; `print(rec)` says what to do.
    """
    problem = ConstraintSatisfaction() if problem is None else problem
    v.positive_int("seeds", seeds)
    if not isinstance(problem, ConstraintSatisfaction):
        raise ValueError(f"`problem` must be a gradflow.design.ConstraintSatisfaction; got {problem!r}.")
    ps = _scalar("p_success", p_success)
    if not 0 < ps <= 1:
        raise ValueError(f"`p_success` must lie in (0, 1] (a measured success rate); got {ps}.")
    target = _scalar("target", target)
    if not 0 < target < 1:
        raise ValueError(f"`target` must lie in (0, 1) (a success probability); got {target}.")
    if partial == "binary":
        raise ValueError("`partial` must be a partial-credit scheme ('partial', 'weighted' or 'user'); got 'binary'.")
    method = GradientFlow() if method is None else method
    if not isinstance(method, AbstractMethod):
        raise ValueError(f"`method` must be a gradflow method (e.g. gf.GradientFlow(), gf.RLOO(...)); got {method!r}.")
    policy = problem.policy(p_success, p_partial, parameterisation=parameterisation, mix=mix)
    rewards = {"binary": problem.reward("binary"), "partial": problem.reward(partial, weights=weights, values=values)}
    true = problem.true_reward()
    sampled = method.needs_key
    flow = method.continuous
    if flow:
        horizon = 100.0 * problem.counts[-1] / ps if t1 is None else float(v.positive_scalar("t1", t1))
        ts = jnp.minimum(jnp.geomspace(horizon * 1e-6, horizon, 400), horizon)  # float32 rounding of the end
        saveat = SaveAt(ts=jnp.concatenate([jnp.zeros(1), ts]))
    else:
        if t1 is not None:
            raise ValueError("`t1` is only for gf.GradientFlow; discrete methods run `method.steps` updates.")
        horizon = float(method.steps)
        saveat = SaveAt(every=max(1, method.steps // 400))
    n_seeds = v.positive_int("seeds", seeds) if sampled else 1
    if sampled:
        key = jax.random.key(0) if key is None else key
        keys = jax.random.split(key, n_seeds)

    sols: dict[str, Solution] = {}
    times, reached, stuck = {}, {}, {}
    for name, r in rewards.items():
        if sampled:
            sol = _seed_runs(policy, r, true, method, keys, saveat, (target,))
            s = summarize_seeds(sol, (target,))
            times[name], reached[name] = s.median_time(target), float(s.reached[0])
        else:
            sol = solve(policy, reward=r, true_reward=true, method=method, t1=horizon if flow else None,
                        saveat=saveat, targets=(target,))
            if not bool(sol.status == Status.ok):
                raise ValueError(
                    f"recommend: the {name}-credit run failed ({Status[sol.status]}); "
                    "pass a method with a larger `max_steps` or a smaller `t1`."
                )
            times[name] = float(sol.target_times[0])
            reached[name] = float(np.isfinite(times[name]))
        stuck[name] = float(np.mean(np.asarray(no_update(sol, policy))))
        sols[name] = sol

    tb, tp = times["binary"], times["partial"]
    ratio = float(time_ratio(tp, tb))
    if math.isnan(ratio):
        scheme, factor = "neither", math.nan
    elif ratio == 1.0:
        scheme, factor = "either", 1.0
    elif ratio < 1:
        scheme, factor = "partial", (math.inf if ratio == 0 else 1.0 / ratio)
    else:
        scheme, factor = "binary", ratio
    return Recommendation(
        scheme=scheme, factor=factor, ratio=ratio, time_binary=tb, time_partial=tp,
        reached_binary=reached["binary"], reached_partial=reached["partial"],
        no_update_binary=stuck["binary"], no_update_partial=stuck["partial"], target=target,
        unit="flow time" if flow else "steps", horizon=horizon, seeds=n_seeds, solutions=sols,
    )
