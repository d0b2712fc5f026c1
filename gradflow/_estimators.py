"""Sample-based policy-gradient methods: REINFORCE, RLOO, GRPO and PPO-clip.

Each step draws `k` outputs per prompt from the current policy, `y_1..y_k ~ pi(.|x)`,
scores them with the training reward and ascends the score-function estimate

    g_hat = sum_x w_x (1/k) sum_i A_i grad log pi(y_i | x)

with an optax optimiser. In score space (`s = <theta, phi>/tau`, before the pull-back to
the parameters) `grad_s log pi(y|x) = (e_y - pi(.|x)) / tau`, so the estimate is a
weighted count of the sampled outputs minus `pi` times the total weight; it is pulled back
with `jax.vjp` of the scores, exactly as the exact gradient is. The methods differ in the
advantages `A_i` (see the docs' *Estimators* page for what each one's mean is).

Regularisation (the same `gradflow.Regularization` as the exact methods):

- reverse KL and entropy enter through the sampled reward, `r'(y) = r(y) - beta (log pi(y)
  - log pi_ref(y)) - alpha log pi(y)` (the "k1" estimator, as in RLHF's KL-shaped reward);
  since `E_pi[grad log pi] = 0` the score-function estimate with `r'` is unbiased for the
  gradient of the regularised objective;
- forward KL, `KL(pi_ref || pi)`, is an expectation under the reference, not the policy: its
  gradient `-beta (pi - pi_ref) / tau` (score space) is known in closed form in the bandit
  setting and added exactly;
- `normalize` divides each prompt's reward by the policy's reward std on that prompt (exact).
"""

from __future__ import annotations

import abc
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Bool, Float, PRNGKeyArray, PyTree

from . import _validate as v
from ._dynamics import AbstractDiscreteMethod, Problem, Regularization, check_optimizer
from ._problem import UNROLL_MAX_OUTPUTS, AbstractPolicy, softmax_outputs, sum_outputs


def sample_onehot(
    key: PRNGKeyArray, probs: Float[Array, "prompts outputs"], k: int
) -> Float[Array, "prompts k outputs"]:
    """`k` independent draws per prompt from `probs`, as one-hot rows.

    Inverse-CDF sampling: one uniform `u` per draw selects the output `y` with
    `cdf(y-1) <= u < cdf(y)` (the last edge is taken as `+inf`, so rounding in the
    cumulative sum never leaves a draw without an output). Written with flat comparisons
    so that it stays fast under `vmap`.
    """
    n_out = probs.shape[-1]
    if n_out > UNROLL_MAX_OUTPUTS:
        cdf = jnp.cumsum(probs, axis=-1)
    else:
        parts = [probs[..., :1]]
        for j in range(1, n_out):
            parts.append(parts[-1] + probs[..., j : j + 1])
        cdf = jnp.concatenate(parts, axis=-1)
    upper = jnp.concatenate([cdf[..., :-1], jnp.full_like(cdf[..., :1], jnp.inf)], axis=-1)
    lower = jnp.concatenate([jnp.zeros_like(cdf[..., :1]), cdf[..., :-1]], axis=-1)
    u = jax.random.uniform(key, (probs.shape[0], k, 1), dtype=probs.dtype)
    return ((u >= lower[:, None, :]) & (u < upper[:, None, :])).astype(probs.dtype)


def sum_draws(x: Float[Array, "prompts k ..."]) -> Float[Array, "prompts 1 ..."]:
    """`x.sum(axis=1, keepdims=True)` over the draws, unrolled for small groups: XLA's CPU
    reductions over a short middle axis are several times slower under `vmap` than a
    chain of adds (as for `sum_outputs`)."""
    if x.shape[1] > UNROLL_MAX_OUTPUTS:
        return jnp.sum(x, axis=1, keepdims=True)
    acc = x[:, :1]
    for i in range(1, x.shape[1]):
        acc = acc + x[:, i : i + 1]
    return acc


class Batch(eqx.Module):
    """One step's samples and what the estimators need about them (per prompt)."""

    onehot: Float[Array, "prompts k outputs"]
    rewards: Float[Array, "prompts k 1"]  # the (shaped) training reward of each draw
    mean: Float[Array, "prompts 1"]  # the policy's exact mean of the shaped reward
    logp: Float[Array, "prompts k 1"]  # log pi(y_i) of each draw under the sampling policy


def shaped_reward(
    p: Float[Array, "prompts outputs"],
    logp: Float[Array, "prompts outputs"],
    problem: Problem,
    reg: Regularization,
) -> Float[Array, "prompts outputs"]:
    """The per-output reward the sampled estimators see: normalised, with the sampled
    reverse-KL and entropy terms (see the module docstring)."""
    r = problem.reward
    if reg.normalize:
        centred = r - sum_outputs(p * r)
        r = r / (jnp.sqrt(sum_outputs(p * centred * centred)) + reg.normalize_eps)
    r = jax.lax.stop_gradient(r)
    if not (isinstance(reg.entropy, float) and reg.entropy == 0.0):
        r = r - reg.entropy * logp
    if not (isinstance(reg.kl, float) and reg.kl == 0.0) and reg.kl_direction == "reverse":
        r = r - reg.kl * (logp - problem.log_ref)
    return r


def score_estimate(
    batch: Batch,
    coef: Float[Array, "prompts k 1"],
    p: Float[Array, "prompts outputs"],
    problem: Problem,
    reg: Regularization,
) -> Float[Array, "prompts outputs"]:
    """`sum_x w_x (1/k) sum_i coef_i (e_{y_i} - pi) / tau` in score space, plus the exact
    forward-KL term when that regulariser is on."""
    k = batch.onehot.shape[1]
    counts = sum_draws(coef * batch.onehot)[:, 0]
    total = sum_draws(coef)[:, 0]
    g = (counts - p * total) / k
    if not (isinstance(reg.kl, float) and reg.kl == 0.0) and reg.kl_direction == "forward":
        g = g - reg.kl * (p - jnp.exp(problem.log_ref))
    policy = problem.policy
    return policy.weights[:, None] * g / policy.temperature


def _scores(params, policy: AbstractPolicy):
    """Scores, their pull-back, and `(pi, log pi)` at `params`."""
    scores, pullback = jax.vjp(lambda th: policy.with_params(th).scores(), params)
    p, logp = softmax_outputs(scores / policy.temperature)
    return scores, pullback, p, logp


def _pull(pullback, g, scores):
    (grad,) = pullback(g.astype(scores.dtype))
    return grad


class AbstractSampledMethod(AbstractDiscreteMethod):
    """A sample-based method: each of its `steps` draws `samples` outputs per prompt from
    the current policy (with the step's PRNG key) and makes an optimiser update from
    them. Its state is `(optimiser state, baseline state)`.

    Subclasses define `advantages` (and PPO its own `update`).
    """

    samples: eqx.AbstractVar[int]

    def init(self, params, problem):
        return self.optimizer.init(params), None

    @abc.abstractmethod
    def advantages(self, batch: Batch, baseline: PyTree) -> tuple[Float[Array, "prompts k 1"], PyTree]:
        """`(A_i, new baseline state)` for the draws of `batch`."""

    def draw(self, params, key, problem: Problem):
        """Sample a batch at `params`; also returns the scores, their pull-back, `pi`, and
        the exact true reward at `params`."""
        policy = problem.policy
        scores, pullback, p, logp = _scores(params, policy)
        r = shaped_reward(p, logp, problem, self.regularization)
        onehot = sample_onehot(key, jax.lax.stop_gradient(p), self.samples)
        batch = Batch(
            onehot=onehot,
            rewards=sum_outputs(onehot * r[:, None, :]),
            mean=sum_outputs(p * r),
            logp=sum_outputs(onehot * logp[:, None, :]),
        )
        value = jnp.sum(policy.weights[:, None] * sum_outputs(p * problem.true_reward))
        return batch, (scores, pullback, p), value

    def estimate(self, params, state, key, problem: Problem):
        """One gradient estimate at `params` (in parameter space), the new baseline state
        and the exact true reward at `params`."""
        batch, (scores, pullback, p), value = self.draw(params, key, problem)
        coef, baseline = self.advantages(batch, state[1])
        g = score_estimate(batch, coef, p, problem, self.regularization)
        return _pull(pullback, g, scores), baseline, value

    def update(self, params, state, key, problem):
        grad, baseline, value = self.estimate(params, state, key, problem)
        params, opt_state = self._apply(grad, params, state[0])
        return params, (opt_state, baseline), value


def _check_sampled(method, min_samples: int) -> None:
    check_optimizer(method)
    v.positive_int("samples", method.samples)
    if method.samples < min_samples:
        raise ValueError(
            f"`samples` must be at least {min_samples} for {type(method).__name__} (its baseline "
            f"uses the other draws of the group); got {method.samples}."
        )


def _group_mean(x: Float[Array, "prompts k 1"]) -> Float[Array, "prompts 1 1"]:
    return sum_draws(x) / x.shape[1]


class Reinforce(AbstractSampledMethod):
    """REINFORCE: `A_i = r(y_i) - b`.

    **Arguments:**

    - `optimizer`: an `optax.GradientTransformation` (e.g. `optax.sgd(0.1)`).
    - `steps`: number of updates.
    - `samples`: draws per prompt per step (`k >= 1`).
    - `baseline`: `"none"` (`b = 0`), `"mean"` (the policy's exact mean reward on the
      prompt, available in the bandit setting) or `"running"` (an exponential moving
      average of the sampled rewards, `b <- decay b + (1 - decay) mean_i r(y_i)`, starting
      at 0 and updated after it is used, so that it never depends on the current draws).
    - `baseline_decay`: the moving average's decay in `[0, 1)`.
    - `regularization`: a [`gradflow.Regularization`][].

    With any of these baselines the estimate is unbiased: its mean is the exact gradient.
    """

    optimizer: optax.GradientTransformation
    steps: int = eqx.field(static=True)
    samples: int = eqx.field(default=1, static=True)
    baseline: Literal["none", "mean", "running"] = eqx.field(default="none", static=True)
    baseline_decay: float = eqx.field(default=0.99, static=True)
    regularization: Regularization = Regularization()

    def __check_init__(self):
        _check_sampled(self, 1)
        if self.baseline not in ("none", "mean", "running"):
            raise ValueError(f"`baseline` must be 'none', 'mean' or 'running'; got {self.baseline!r}.")
        if not 0 <= self.baseline_decay < 1:
            raise ValueError(f"`baseline_decay` must lie in [0, 1); got {self.baseline_decay}.")

    def init(self, params, problem):
        running = None
        if self.baseline == "running":
            running = jnp.zeros((problem.reward.shape[0], 1, 1), problem.reward.dtype)
        return self.optimizer.init(params), running

    def advantages(self, batch, baseline):
        if self.baseline == "none":
            return batch.rewards, baseline
        if self.baseline == "mean":
            return batch.rewards - batch.mean[:, None, :], baseline
        new = self.baseline_decay * baseline + (1 - self.baseline_decay) * _group_mean(batch.rewards)
        return batch.rewards - baseline, new


class RLOO(AbstractSampledMethod):
    """REINFORCE leave-one-out: `A_i = r(y_i) - mean_{j != i} r(y_j)
    = k/(k-1) (r(y_i) - mean_j r(y_j))`. Unbiased; needs `samples >= 2`.

    **Arguments:**

    - `optimizer`: an `optax.GradientTransformation`.
    - `steps`: number of updates.
    - `samples`: draws per prompt per step (`k >= 2`).
    - `regularization`: a [`gradflow.Regularization`][].
    """

    optimizer: optax.GradientTransformation
    steps: int = eqx.field(static=True)
    samples: int = eqx.field(default=4, static=True)
    regularization: Regularization = Regularization()

    def __check_init__(self):
        _check_sampled(self, 2)

    def advantages(self, batch, baseline):
        k = batch.rewards.shape[1]
        return k / (k - 1) * (batch.rewards - _group_mean(batch.rewards)), baseline


class GRPO(AbstractSampledMethod):
    """Group-normalised advantages (GRPO): `A_i = (r(y_i) - mean_j r(y_j)) / (std_j r(y_j)
    + eps)`, with the group's sample standard deviation (`ddof = 1`, as `torch.std` in
    common implementations). Needs `samples >= 2`.

    On-policy with one update per batch, so the clipped ratio of the original is 1 and
    drops out (see [`gradflow.PPO`][] for clipping). The estimate is *biased*: dividing by
    the group std rescales each group's step, so its mean is not the exact gradient (the
    Estimators page gives the two-output closed form). Without the std (`normalize_std=False`)
    its mean is `(1 - 1/k)` times the exact gradient.

    **Arguments:**

    - `optimizer`: an `optax.GradientTransformation`.
    - `steps`: number of updates.
    - `samples`: draws per prompt per step, the group size (`k >= 2`).
    - `normalize_std`: divide by the group std (`True`, GRPO) or only centre (`False`).
    - `eps`: added to the std; a group whose draws all score the same gets zero advantage.
    - `regularization`: a [`gradflow.Regularization`][].
    """

    optimizer: optax.GradientTransformation
    steps: int = eqx.field(static=True)
    samples: int = eqx.field(default=4, static=True)
    normalize_std: bool = eqx.field(default=True, static=True)
    eps: float = eqx.field(default=1e-4, static=True)
    regularization: Regularization = Regularization()

    def __check_init__(self):
        _check_sampled(self, 2)
        if not self.eps > 0:
            raise ValueError(f"`eps` must be positive; got {self.eps}.")

    def advantages(self, batch, baseline):
        centred = batch.rewards - _group_mean(batch.rewards)
        if not self.normalize_std:
            return centred, baseline
        k = batch.rewards.shape[1]
        std = jnp.sqrt(sum_draws(centred * centred) / (k - 1))
        return centred / (std + self.eps), baseline


class PPO(AbstractSampledMethod):
    """PPO-clip in the bandit setting: each step draws a batch from the current policy
    `pi_old`, then makes `epochs` optimiser updates on the clipped surrogate

        L(theta) = sum_x w_x (1/k) sum_i min(rho_i A_i, clip(rho_i, 1 - eps, 1 + eps) A_i),
        rho_i = pi_theta(y_i) / pi_old(y_i),

    with `A_i = r(y_i) - V_old(x)`: the exact value of `pi_old` replaces the value network
    (in the bandit setting it is known). A step is one batch of samples (`steps * samples`
    draws per prompt in all), not one optimiser update. With `epochs = 1` the ratio is 1
    and PPO is REINFORCE with the mean baseline.

    **Arguments:**

    - `optimizer`: an `optax.GradientTransformation`.
    - `steps`: number of batches (each followed by `epochs` updates).
    - `samples`: draws per prompt per batch (`k >= 1`).
    - `epochs`: optimiser updates per batch.
    - `clip`: the clip range `eps > 0`.
    - `regularization`: a [`gradflow.Regularization`][] (the shaped reward is computed
      at `pi_old`, when the batch is drawn).
    """

    optimizer: optax.GradientTransformation
    steps: int = eqx.field(static=True)
    samples: int = eqx.field(default=4, static=True)
    epochs: int = eqx.field(default=4, static=True)
    clip: float = eqx.field(default=0.2, static=True)
    regularization: Regularization = Regularization()

    def __check_init__(self):
        _check_sampled(self, 1)
        v.positive_int("epochs", self.epochs)
        if not self.clip > 0:
            raise ValueError(f"`clip` (the clip range) must be positive; got {self.clip}.")

    def advantages(self, batch, baseline):
        return batch.rewards - batch.mean[:, None, :], baseline

    def surrogate_coef(
        self, batch: Batch, adv: Float[Array, "prompts k 1"], logp_new: Float[Array, "prompts k 1"]
    ) -> Float[Array, "prompts k 1"]:
        """The weight of `grad log pi_theta(y_i)` in the surrogate's gradient:
        `rho_i A_i` where the unclipped branch is active, 0 where the clip holds it."""
        ratio = jnp.exp(logp_new - batch.logp)
        active: Bool[Array, "prompts k 1"] = jnp.where(
            adv >= 0, ratio <= 1 + self.clip, ratio >= 1 - self.clip
        )
        return jnp.where(active, ratio * adv, 0.0)

    def update(self, params, state, key, problem):
        batch, _, value = self.draw(params, key, problem)
        batch = jax.lax.stop_gradient(batch)
        adv, _ = self.advantages(batch, None)

        def epoch(_, carry):
            params, opt_state = carry
            scores, pullback, p, logp = _scores(params, problem.policy)
            coef = self.surrogate_coef(batch, adv, sum_outputs(batch.onehot * logp[:, None, :]))
            g = score_estimate(batch, coef, p, problem, self.regularization)
            return self._apply(_pull(pullback, g, scores), params, opt_state)

        params, opt_state = jax.lax.fori_loop(0, self.epochs, epoch, (params, state[0]))
        return params, (opt_state, None), value
