"""The objective that policy gradient ascends, and its regularisers.

Objective on a training reward `r` (per prompt `x`, weights `w_x`):

    J(theta) = sum_x w_x [ E_pi[r~(x,.)] - sum_t c_t R_t(pi(.|x)) ]

with `r~ = r / std_pi(r)` when rewards are normalised (the std is treated as a constant,
as in GRPO) and the regularisers `R_t` with coefficients `c_t >= 0`: the reverse KL
`KL(pi || pi_ref)`, the forward KL `KL(pi_ref || pi)` and the negative entropy `-H(pi)`
(an entropy bonus), with `pi_ref` the initial or the uniform policy.

Every method works with the gradient in *log-probability space*: the cotangent
`dJ/d log pi` pulled back to the parameters by the policy
([`gradflow.AbstractPolicy.linearize`][]). Since `sum_y pi grad log pi = 0`, a multiple of
`pi` can be added to the cotangent freely; the closed forms below are centred (they sum
to zero over the outputs). Each regulariser is written once, as a term with its value,
its closed-form cotangent and the reward shaping the sampled estimators use.
"""

from __future__ import annotations

import abc
from typing import ClassVar, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Float, PyTree

from .._util import validate as v
from ..policies import AbstractPolicy
from .ops import sum_outputs

# -- regulariser terms ---------------------------------------------------------------------


class AbstractTerm(eqx.Module):
    """A regulariser `R(pi(.|x))`, subtracted from the objective with its coefficient.

    - `penalty`: `R` per prompt.
    - `cotangent`: its centred derivative in log-probability space, `dR/d log pi`.
    - `shaping` (when `shaped`): for the sampled estimators, the per-output value whose
      expectation under `pi` is `R` and whose score-function estimate is unbiased for
      `grad R` (subtracted from each draw's reward). A term that is not an expectation
      under `pi` has `shaped = False`, and the estimators add its exact `cotangent`.
    """

    coef: Float[Array, ""] | float
    shaped: ClassVar[bool] = True

    @abc.abstractmethod
    def penalty(self, p, logp, log_ref) -> Float[Array, " prompts"]: ...

    @abc.abstractmethod
    def cotangent(self, p, logp, log_ref) -> Float[Array, "prompts outputs"]: ...

    def shaping(self, logp, log_ref) -> Float[Array, "prompts outputs"]:
        raise NotImplementedError(f"{type(self).__name__} is added exactly, not by shaping.")


class ReverseKL(AbstractTerm):
    """`KL(pi || pi_ref) = sum_y pi (log pi - log pi_ref)`; cotangent `pi (log pi - log
    pi_ref - KL)`; sampled as the "k1" shaping `log pi(y) - log pi_ref(y)`."""

    def penalty(self, p, logp, log_ref):
        return sum_outputs(p * (logp - log_ref))[..., 0]

    def cotangent(self, p, logp, log_ref):
        log_ratio = logp - log_ref
        return p * (log_ratio - sum_outputs(p * log_ratio))

    def shaping(self, logp, log_ref):
        return logp - log_ref


class ForwardKL(AbstractTerm):
    """`KL(pi_ref || pi) = sum_y pi_ref (log pi_ref - log pi)`; cotangent `pi - pi_ref`.
    An expectation under the reference, so the sampled estimators add it exactly."""

    shaped: ClassVar[bool] = False

    def penalty(self, p, logp, log_ref):
        return sum_outputs(jnp.exp(log_ref) * (log_ref - logp))[..., 0]

    def cotangent(self, p, logp, log_ref):
        return p - jnp.exp(log_ref)


class NegativeEntropy(AbstractTerm):
    """`-H(pi) = sum_y pi log pi` (so a positive coefficient is an entropy bonus);
    cotangent `pi (log pi + H)`; sampled as the shaping `log pi(y)`."""

    def penalty(self, p, logp, log_ref):
        return sum_outputs(p * logp)[..., 0]

    def cotangent(self, p, logp, log_ref):
        return p * (logp - sum_outputs(p * logp))

    def shaping(self, logp, log_ref):
        return logp


def _active(coef) -> bool:
    """A coefficient that is the literal 0.0 switches its term off at trace time."""
    return not (isinstance(coef, float) and coef == 0.0)


class Regularization(eqx.Module):
    """Terms added to the expected reward; shared by every method.

    **Arguments:**

    - `kl`: KL coefficient `beta >= 0` (0 disables the term).
    - `kl_direction`: `"reverse"` for `KL(pi || pi_ref)`, `"forward"` for `KL(pi_ref || pi)`.
    - `kl_reference`: `"initial"` (the policy the run starts from) or `"uniform"`.
    - `entropy`: entropy bonus coefficient `alpha >= 0`.
    - `normalize`: divide each prompt's reward by the policy's reward standard deviation
      on that prompt (held constant when differentiating), plus `normalize_eps`.
    """

    kl: Float[Array, ""] | float = 0.0
    kl_direction: Literal["reverse", "forward"] = eqx.field(default="reverse", static=True)
    kl_reference: Literal["initial", "uniform"] = eqx.field(default="initial", static=True)
    entropy: Float[Array, ""] | float = 0.0
    normalize: bool = eqx.field(default=False, static=True)
    normalize_eps: float = eqx.field(default=1e-6, static=True)

    def __check_init__(self):
        if self.kl_direction not in ("reverse", "forward"):
            raise ValueError(f"`kl_direction` must be 'reverse' or 'forward'; got {self.kl_direction!r}.")
        if self.kl_reference not in ("initial", "uniform"):
            raise ValueError(f"`kl_reference` must be 'initial' or 'uniform'; got {self.kl_reference!r}.")
        v.positive_scalar("kl", self.kl, allow_zero=True)
        v.positive_scalar("entropy", self.entropy, allow_zero=True)
        if not self.normalize_eps > 0:
            raise ValueError(f"`normalize_eps` must be positive; got {self.normalize_eps}.")

    def terms(self) -> tuple[AbstractTerm, ...]:
        """The active regulariser terms."""
        terms = []
        if _active(self.kl):
            terms.append((ReverseKL if self.kl_direction == "reverse" else ForwardKL)(self.kl))
        if _active(self.entropy):
            terms.append(NegativeEntropy(self.entropy))
        return tuple(terms)

    def reference(self, policy: AbstractPolicy) -> Float[Array, "prompts outputs"]:
        """`log pi_ref`, fixed for the whole run."""
        if self.kl_reference == "uniform":
            return jnp.full(policy.shape, -jnp.log(policy.shape[1]))
        return jax.lax.stop_gradient(policy.log_probs())

    def training_reward(self, p, reward) -> Float[Array, "prompts outputs"]:
        """The reward the objective takes the expectation of: `r`, or `r / (std_pi(r) +
        eps)` per prompt when `normalize` (the std held constant)."""
        if not self.normalize:
            return reward
        centred = reward - sum_outputs(p * reward)
        std = jnp.sqrt(sum_outputs(p * centred * centred))
        return reward / (jax.lax.stop_gradient(std) + self.normalize_eps)


# -- one run's problem and the exact gradient -----------------------------------------------


class Problem(eqx.Module):
    """What a method needs besides the parameters: the initial policy (its structure),
    the training and true rewards, `log pi_ref` and the regularisation."""

    policy: AbstractPolicy
    reward: Float[Array, "prompts outputs"]
    true_reward: Float[Array, "prompts outputs"]
    log_ref: Float[Array, "prompts outputs"]
    regularization: Regularization

    @classmethod
    def make(cls, policy, reward, true_reward, regularization: Regularization) -> Problem:
        return cls(policy, reward, true_reward, regularization.reference(policy), regularization)

    def at(self, params: PyTree[Array]) -> AbstractPolicy:
        """The policy with parameters `params`."""
        return self.policy.with_params(params)

    def true_value(self, params: PyTree[Array]) -> Float[Array, ""]:
        """`V_G` at `params`: the expected true reward, prompt-weighted."""
        return expected(self.at(params).probs(), self.true_reward, self.policy.weights)


class Diagnostics(eqx.Module):
    """What a run records at a point of its trajectory (one run, one time)."""

    proxy_reward: Float[Array, ""]
    true_reward: Float[Array, ""]
    reward_variance: Float[Array, ""]
    grad_norm: Float[Array, ""]
    probs: Float[Array, "prompts outputs"] | None


def objective(params: PyTree[Array], problem: Problem) -> tuple[Float[Array, ""], tuple]:
    """`J(params)` by plain autodiff-able code, and as auxiliary output `(probs, proxy,
    true, variance)`: the reference that `gradient` is tested against."""
    policy = problem.at(params)
    logp = policy.log_probs()
    p = jnp.exp(logp)
    reward = problem.reward
    mean = jnp.sum(p * reward, axis=-1, keepdims=True)
    var = jnp.sum(p * (reward - mean) ** 2, axis=-1)
    reg = problem.regularization
    per_prompt = jnp.sum(p * reg.training_reward(p, reward), axis=-1)
    for term in reg.terms():
        per_prompt = per_prompt - term.coef * term.penalty(p, logp, problem.log_ref)
    w = policy.weights
    aux = (p, jnp.sum(w * mean[:, 0]), expected(p, problem.true_reward, w), jnp.sum(w * var))
    return jnp.sum(w * per_prompt), aux


def exact_cotangent(p, logp, problem: Problem) -> Float[Array, "prompts outputs"]:
    """`dJ/d log pi` in closed form (centred), per prompt weighted by `w_x`:

        w_x [ pi (r~ - V~) - sum_t c_t dR_t/d log pi ]
    """
    r = problem.regularization.training_reward(p, problem.reward)
    g = p * (r - sum_outputs(p * r))
    return terms_cotangent(g, p, logp, problem, problem.regularization.terms())


def terms_cotangent(g, p, logp, problem: Problem, terms) -> Float[Array, "prompts outputs"]:
    """`w_x [ g - sum_t c_t dR_t/d log pi ]` over the given regulariser `terms`."""
    for term in terms:
        g = g - term.coef * term.cotangent(p, logp, problem.log_ref)
    return problem.policy.weights[:, None] * g


def gradient(params: PyTree[Array], problem: Problem) -> tuple[PyTree[Array], Diagnostics]:
    """`grad J(params)` and the diagnostics at `params`: the closed-form cotangent of
    `exact_cotangent` pulled back by the policy's `linearize`. `objective` is the same
    quantity for `jax.grad`; the tests check that both agree."""
    lin = problem.at(params).linearize()
    p = lin.probs
    grad = lin.pullback(exact_cotangent(p, lin.log_probs, problem))
    return grad, diagnostics(p, problem, optax.tree.norm(grad))


def diagnostics(p, problem: Problem, grad_norm) -> Diagnostics:
    """The recorded quantities at probabilities `p`."""
    w = problem.policy.weights[:, None]
    mean = sum_outputs(p * problem.reward)
    centred = problem.reward - mean
    return Diagnostics(
        proxy_reward=jnp.sum(w * mean),
        true_reward=jnp.sum(w * sum_outputs(p * problem.true_reward)),
        reward_variance=jnp.sum(w * sum_outputs(p * centred * centred)),
        grad_norm=grad_norm,
        probs=p,
    )


def true_reward_rate(params: PyTree[Array], direction: PyTree[Array], problem: Problem):
    """`(dV_G/dt, d pi/dt)` when the parameters move along `direction`: `dV_G/dt =
    sum_x w_x sum_y pi (r_G - V_G(x)) d log pi/dt`, with `d log pi/dt` by `jax.jvp` of
    the policy's `log_probs`."""
    logp, dlogp = jax.jvp(lambda th: problem.at(th).log_probs(), (params,), (direction,))
    p = jnp.exp(logp)
    g = problem.true_reward
    centred = g - sum_outputs(p * g)
    rate = jnp.sum(problem.policy.weights[:, None] * sum_outputs(p * centred * dlogp))
    return rate, p * dlogp


# -- rewards ---------------------------------------------------------------------------------


def as_reward(name: str, reward, policy: AbstractPolicy) -> Float[Array, "prompts outputs"]:
    """Validate a reward against a policy: shape `(outputs,)` (the same for every
    prompt) or `(prompts, outputs)`, finite."""
    r = v.as_float_array(name, reward, ndim=(1, 2))
    n_prompts, n_outputs = policy.shape
    if r.shape[-1] != n_outputs or (r.ndim == 2 and r.shape[0] != n_prompts):
        raise ValueError(
            f"`{name}` must have shape ({n_outputs},) or ({n_prompts}, {n_outputs}) to match "
            f"the policy ({n_prompts} prompt(s) x {n_outputs} outputs); got {tuple(r.shape)}."
        )
    return jnp.broadcast_to(r, (n_prompts, n_outputs)) if r.ndim == 2 else jnp.tile(r, (n_prompts, 1))


def expected(probs, reward, weights) -> Float[Array, ""]:
    """`sum_x w_x E_{pi(.|x)}[r(x, .)]`."""
    return jnp.sum(weights * sum_outputs(probs * reward)[..., 0])


def reward_range(reward, weights) -> tuple[Float[Array, ""], Float[Array, ""]]:
    """The smallest and largest achievable expected reward, `sum_x w_x min/max_y r(x, y)`."""
    return jnp.sum(weights * reward.min(axis=-1)), jnp.sum(weights * reward.max(axis=-1))
