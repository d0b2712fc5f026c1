"""The objective policy gradient ascends, and the methods that ascend it.

Objective on a training reward `r` (per prompt `x`, weights `w_x`):

    J(theta) = sum_x w_x [ E_pi[r~(x,.)] + alpha H(pi(.|x)) - beta KL_x ]

with `r~ = r / std_pi(r)` when rewards are normalised (the std is treated as a
constant, as in GRPO), `KL_x = KL(pi || pi_ref)` (reverse) or `KL(pi_ref || pi)`
(forward), and `pi_ref` the initial or the uniform policy.
"""

from __future__ import annotations

import abc
from typing import Literal

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Float, PyTree

from . import _validate as v
from ._problem import AbstractPolicy, expected, softmax_outputs, sum_outputs


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

    def reference(self, policy: AbstractPolicy) -> Float[Array, "prompts outputs"]:
        """`log pi_ref`, fixed for the whole run."""
        if self.kl_reference == "uniform":
            return jnp.full(policy.shape, -jnp.log(policy.shape[1]))
        return jax.lax.stop_gradient(policy.log_probs())


class Diagnostics(eqx.Module):
    """What a run records at a point of its trajectory (one run, one time)."""

    proxy_reward: Float[Array, ""]
    true_reward: Float[Array, ""]
    reward_variance: Float[Array, ""]
    grad_norm: Float[Array, ""]
    probs: Float[Array, "prompts outputs"]


def objective(
    params: PyTree[Array],
    policy: AbstractPolicy,
    reward: Float[Array, "prompts outputs"],
    true_reward: Float[Array, "prompts outputs"],
    log_ref: Float[Array, "prompts outputs"],
    reg: Regularization,
) -> tuple[Float[Array, ""], tuple]:
    """`J(params)` and, as auxiliary output, `(probs, proxy, true, variance)`."""
    logp = policy.with_params(params).log_probs()
    p = jnp.exp(logp)
    mean = jnp.sum(p * reward, axis=-1, keepdims=True)
    var = jnp.sum(p * (reward - mean) ** 2, axis=-1)
    r = reward
    if reg.normalize:
        r = reward / (jax.lax.stop_gradient(jnp.sqrt(var))[:, None] + reg.normalize_eps)
    per_prompt = jnp.sum(p * r, axis=-1)
    if not (isinstance(reg.entropy, float) and reg.entropy == 0.0):
        per_prompt = per_prompt - reg.entropy * jnp.sum(p * logp, axis=-1)
    if not (isinstance(reg.kl, float) and reg.kl == 0.0):
        if reg.kl_direction == "reverse":
            kl = jnp.sum(p * (logp - log_ref), axis=-1)
        else:
            kl = jnp.sum(jnp.exp(log_ref) * (log_ref - logp), axis=-1)
        per_prompt = per_prompt - reg.kl * kl
    w = policy.weights
    aux = (p, jnp.sum(w * mean[:, 0]), expected(p, true_reward, w), jnp.sum(w * var))
    return jnp.sum(w * per_prompt), aux


def gradient(params, policy, reward, true_reward, log_ref, reg) -> tuple[PyTree[Array], Diagnostics]:
    """`grad J(params)` and the diagnostics at `params`.

    The gradient with respect to the scores `s = <theta, phi>/tau` is written in closed
    form (the covariance formula of the theory page), per prompt `x`:

        dJ/ds_y = w_x [ pi_y (r~_y - V~) - alpha pi_y (log pi_y + H)
                        - beta pi_y (log pi_y - log ref_y - KL)   (reverse KL)
                        - beta (pi_y - ref_y) ]                   (forward KL)

    and pulled back to the parameters with `jax.vjp` of the scores. `objective` is the
    same quantity for `jax.grad`; the tests check that both agree.
    """
    scores, pullback = jax.vjp(lambda th: policy.with_params(th).scores(), params)
    tau = policy.temperature
    p, logp = softmax_outputs(scores / tau)
    mean = sum_outputs(p * reward)
    centred = reward - mean
    var = sum_outputs(p * centred * centred)
    g = p * centred
    if reg.normalize:
        g = g / (jnp.sqrt(var) + reg.normalize_eps)
    if not (isinstance(reg.entropy, float) and reg.entropy == 0.0):
        neg_entropy = sum_outputs(p * logp)
        g = g - reg.entropy * p * (logp - neg_entropy)
    if not (isinstance(reg.kl, float) and reg.kl == 0.0):
        if reg.kl_direction == "reverse":
            log_ratio = logp - log_ref
            g = g - reg.kl * p * (log_ratio - sum_outputs(p * log_ratio))
        else:
            g = g - reg.kl * (p - jnp.exp(log_ref))
    w = policy.weights[:, None]
    (grad,) = pullback((w * g / tau).astype(scores.dtype))
    true = jnp.sum(w * sum_outputs(p * true_reward))
    diag = Diagnostics(
        proxy_reward=jnp.sum(w * mean),
        true_reward=true,
        reward_variance=jnp.sum(w * var),
        grad_norm=optax.tree.norm(grad),
        probs=p,
    )
    return grad, diag


def rms_norm(tree: PyTree[Array]) -> Float[Array, ""]:
    """Root-mean-square of all entries (diffrax's default error norm), with the sum over
    outputs written as flat vector ops so that a vmapped flow stays fast."""
    leaves = [jnp.atleast_1d(x) for x in jax.tree.leaves(tree)]
    mean = sum(jnp.sum(sum_outputs(x * x)) for x in leaves) / sum(x.size for x in leaves)
    positive = mean > 0  # double `where`: a zero (not infinite) derivative at 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, mean, 1.0)), 0.0)


class AbstractMethod(eqx.Module):
    """A policy-gradient algorithm usable with [`gradflow.solve`][]; concrete methods
    carry a `regularization` field."""


class GradientFlow(AbstractMethod):
    """Continuous-time exact policy-gradient flow `d theta/dt = grad J(theta)`,
    integrated with diffrax.

    **Arguments:**

    - `solver`: a diffrax solver (default `diffrax.Tsit5()`).
    - `rtol`, `atol`: tolerances of the adaptive step-size controller.
    - `dt0`: initial step; `None` lets diffrax choose (adaptive only).
    - `adaptive`: `False` integrates with a constant step `dt0` instead.
    - `max_steps`: the most solver steps a run may take; a run that needs more ends with
      status `MAX_STEPS`. Keep it as small as the problem allows (it sets buffer sizes).
    - `regularization`: a [`gradflow.Regularization`][].
    """

    solver: diffrax.AbstractSolver = diffrax.Tsit5()
    rtol: float = eqx.field(default=1e-7, static=True)
    atol: float = eqx.field(default=1e-9, static=True)
    dt0: float | None = eqx.field(default=None, static=True)
    adaptive: bool = eqx.field(default=True, static=True)
    max_steps: int = eqx.field(default=4096, static=True)
    regularization: Regularization = Regularization()

    def __check_init__(self):
        if self.adaptive:
            if not (self.rtol > 0 and self.atol > 0):
                raise ValueError(f"`rtol` and `atol` must be positive; got {self.rtol}, {self.atol}.")
        elif self.dt0 is None or not self.dt0 > 0:
            raise ValueError(f"`dt0` must be a positive step size when `adaptive=False`; got {self.dt0}.")
        if self.dt0 is not None and not self.dt0 > 0:
            raise ValueError(f"`dt0` must be positive; got {self.dt0}.")
        v.positive_int("max_steps", self.max_steps)

    def controller(self) -> diffrax.AbstractStepSizeController:
        if self.adaptive:
            return diffrax.PIDController(rtol=self.rtol, atol=self.atol, norm=rms_norm)
        return diffrax.ConstantStepSize()


class Problem(eqx.Module):
    """What one update of a discrete method needs besides the parameters: the initial
    policy (its structure), the training and true rewards, and `log pi_ref`."""

    policy: AbstractPolicy
    reward: Float[Array, "prompts outputs"]
    true_reward: Float[Array, "prompts outputs"]
    log_ref: Float[Array, "prompts outputs"]


class AbstractDiscreteMethod(AbstractMethod):
    """A method that makes `steps` updates with an optax optimiser.

    Subclasses implement `update`, one step of the algorithm; [`gradflow.solve`][] runs
    the loop, records and tracks. Step `n` is the policy after `n` updates.
    """

    optimizer: eqx.AbstractVar[optax.GradientTransformation]
    steps: eqx.AbstractVar[int]
    regularization: eqx.AbstractVar[Regularization]

    def init(self, params: PyTree[Array], problem: Problem) -> PyTree:
        """The algorithm's state at the start (by default the optimiser's)."""
        return self.optimizer.init(params)

    @abc.abstractmethod
    def update(self, params: PyTree[Array], state: PyTree, key, problem: Problem) -> tuple[PyTree[Array], PyTree, Float[Array, ""]]:
        """One step: `(params, state) -> (new_params, new_state)`, plus the exact expected
        true reward at `params` (before the update), which the online tracker uses.
        `key` is this step's PRNG key (`None` for exact methods)."""

    def _apply(self, grad, params, opt_state):
        """An optimiser step that ascends along `grad`."""
        updates, opt_state = self.optimizer.update(jax.tree.map(jnp.negative, grad), opt_state, params)
        return optax.apply_updates(params, updates), opt_state


def check_optimizer(method) -> None:
    v.positive_int("steps", method.steps)
    if not (hasattr(method.optimizer, "init") and hasattr(method.optimizer, "update")):
        raise ValueError(
            f"`optimizer` must be an optax.GradientTransformation; got {method.optimizer!r}."
        )


class GradientAscent(AbstractDiscreteMethod):
    """Discrete exact-gradient ascent: `steps` updates of an optax optimiser on `-J`.

    With `optax.sgd(eta)` this is the Euler discretisation of the flow: `n` steps
    approximate flow time `eta * n`.

    **Arguments:**

    - `optimizer`: any `optax.GradientTransformation` (e.g. `optax.sgd(0.1)`,
      `optax.adam(1e-2)`). To vmap over a learning rate, build the optimiser inside the
      vmapped function or use `optax.inject_hyperparams`.
    - `steps`: number of updates (positive integer).
    - `regularization`: a [`gradflow.Regularization`][].
    """

    optimizer: optax.GradientTransformation
    steps: int = eqx.field(static=True)
    regularization: Regularization = Regularization()

    def __check_init__(self):
        check_optimizer(self)

    def update(self, params, state, key, problem):
        grad, d = gradient(
            params, problem.policy, problem.reward, problem.true_reward, problem.log_ref, self.regularization
        )
        params, state = self._apply(grad, params, state)
        return params, state, d.true_reward
