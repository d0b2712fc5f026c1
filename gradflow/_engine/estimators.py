"""Sample-based policy-gradient methods: REINFORCE, RLOO, GRPO and PPO-clip.

Each step draws `k` outputs per prompt from the current policy, `y_1..y_k ~ pi(.|x)`
(`policy.sample`), scores them with the training reward and ascends the score-function
estimate

    g_hat = sum_x w_x (1/k) sum_i A_i grad log pi(y_i | x)

with an optax optimiser: the cotangent `w_x A_i / k` on the drawn outputs'
log-probabilities pulled back by the policy (`policy.linearize_draws`: `jax.vjp` of
`log_prob`, or a closed form), whatever the parameterisation. The methods differ in the advantages `A_i` (see the docs' *Estimators*
page for what each one's mean is).

Regularisation (the same `gradflow.Regularization` as the exact methods, term by term as
in `gradflow._engine.objective`):

- reverse KL and entropy enter through the sampled reward, `r'(y) = r(y) - beta (log pi(y)
  - log pi_ref(y)) - alpha log pi(y)` (the "k1" estimator, as in RLHF's KL-shaped reward);
  since `E_pi[grad log pi] = 0` the score-function estimate with `r'` is unbiased for the
  gradient of the regularised objective;
- forward KL, `KL(pi_ref || pi)`, is an expectation under the reference, not the policy: its
  gradient is known in closed form in the bandit setting and added exactly;
- `normalize` divides each prompt's reward by the policy's reward std on that prompt (exact).

The exact baselines (`"mean"`, PPO's value), the normalisation and the tracked true reward
use the policy's enumerated probabilities; drawing never does for policies that sample
token by token.
"""

from __future__ import annotations

import abc
from typing import ClassVar, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Bool, Float, Int, PyTree

from .._util import validate as v
from .methods import AbstractDiscreteMethod, check_optimizer
from .objective import Problem, Regularization, terms_cotangent
from .ops import sum_draws, sum_outputs, take_outputs


class Batch(eqx.Module):
    """One step's draws and what the estimators need about them (per prompt)."""

    samples: Int[Array, "prompts k"]  # the drawn outputs
    rewards: Float[Array, "prompts k"]  # the (shaped) training reward of each draw
    mean: Float[Array, "prompts 1"]  # the policy's exact mean of the shaped reward
    logp: Float[Array, "prompts k"]  # log pi(y_i) of each draw under the sampling policy


def shaped_reward(p, logp, problem: Problem) -> Float[Array, "prompts outputs"]:
    """The per-output reward the sampled estimators see: normalised, with the shaping of
    the regulariser terms that have one (see the module docstring)."""
    reg = problem.regularization
    r = jax.lax.stop_gradient(reg.training_reward(p, problem.reward))
    for term in reg.terms():
        if term.shaped:
            r = r - term.coef * term.shaping(logp, problem.log_ref)
    return r


def score_gradient(params, problem: Problem, batch: Batch, coef: Float[Array, "prompts k"]) -> PyTree[Array]:
    """`sum_x w_x (1/k) sum_i coef_i grad log pi(y_i | x)` by `jax.vjp` of the policy's
    `log_prob` at the draws, plus the exact gradient of the regulariser terms without a
    shaping (forward KL)."""
    k = batch.samples.shape[1]
    w = problem.policy.weights[:, None]
    _, pullback = problem.at(params).linearize_draws(batch.samples)
    return with_unshaped(pullback(w * coef / k), params, problem)


def with_unshaped(grad: PyTree[Array], params, problem: Problem) -> PyTree[Array]:
    """`grad` plus the exact gradient of the regulariser terms that are not sampled by
    shaping (forward KL), when there are any."""
    unshaped = [term for term in problem.regularization.terms() if not term.shaped]
    if not unshaped:
        return grad
    lin = problem.at(params).linearize()
    cot = terms_cotangent(jnp.zeros_like(lin.probs), lin.probs, lin.log_probs, problem, unshaped)
    return jax.tree.map(jnp.add, grad, lin.pullback(cot))


class AbstractSampledMethod(AbstractDiscreteMethod):
    """A sample-based method: each of its `steps` draws `samples` outputs per prompt from
    the current policy (with the step's PRNG key) and makes an optimiser update from
    them. Its state is `(optimiser state, baseline state)`.

    Subclasses define `advantages` (and PPO its own `update`).
    """

    samples: eqx.AbstractVar[int]
    needs_key: ClassVar[bool] = True

    def init(self, params, problem):
        return self.optimizer.init(params), None

    @abc.abstractmethod
    def advantages(self, batch: Batch, baseline: PyTree) -> tuple[Float[Array, "prompts k"], PyTree]:
        """`(A_i, new baseline state)` for the draws of `batch`."""

    def draw(self, params, key, problem: Problem) -> tuple[Batch, Float[Array, ""]]:
        """Sample a batch at `params`; also returns the exact true reward at `params`."""
        policy = problem.at(params)
        logp = policy.log_probs()
        p = policy.probs()
        r = shaped_reward(p, logp, problem)
        samples = policy.sample(key, self.samples)
        batch = Batch(
            samples=samples,
            rewards=take_outputs(r, samples),
            mean=sum_outputs(p * r),
            logp=take_outputs(logp, samples),
        )
        value = jnp.sum(policy.weights[:, None] * sum_outputs(p * problem.true_reward))
        return jax.lax.stop_gradient(batch), value

    def estimate(self, params, state, key, problem: Problem):
        """One gradient estimate at `params` (in parameter space), the new baseline state
        and the exact true reward at `params`."""
        batch, value = self.draw(params, key, problem)
        coef, baseline = self.advantages(batch, state[1])
        return score_gradient(params, problem, batch, coef), baseline, value

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


def _group_mean(x: Float[Array, "prompts k"]) -> Float[Array, "prompts 1"]:
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
            running = jnp.zeros((problem.reward.shape[0], 1), problem.reward.dtype)
        return self.optimizer.init(params), running

    def advantages(self, batch, baseline):
        if self.baseline == "none":
            return batch.rewards, baseline
        if self.baseline == "mean":
            return batch.rewards - batch.mean, baseline
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
        return batch.rewards - batch.mean, baseline

    def surrogate_coef(
        self, batch: Batch, adv: Float[Array, "prompts k"], logp_new: Float[Array, "prompts k"]
    ) -> Float[Array, "prompts k"]:
        """The weight of `grad log pi_theta(y_i)` in the surrogate's gradient:
        `rho_i A_i` where the unclipped branch is active, 0 where the clip holds it."""
        ratio = jnp.exp(logp_new - batch.logp)
        active: Bool[Array, "prompts k"] = jnp.where(
            adv >= 0, ratio <= 1 + self.clip, ratio >= 1 - self.clip
        )
        return jnp.where(active, ratio * adv, 0.0)

    def update(self, params, state, key, problem):
        batch, value = self.draw(params, key, problem)
        adv, _ = self.advantages(batch, None)
        w = problem.policy.weights[:, None]
        k = batch.samples.shape[1]

        def epoch(_, carry):
            params, opt_state = carry
            logp_new, pullback = problem.at(params).linearize_draws(batch.samples)
            coef = self.surrogate_coef(batch, adv, logp_new)
            return self._apply(with_unshaped(pullback(w * coef / k), params, problem), params, opt_state)

        params, opt_state = jax.lax.fori_loop(0, self.epochs, epoch, (params, state[0]))
        return params, (opt_state, None), value
