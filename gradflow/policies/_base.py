"""The policy interface that every method relies on, and nothing else.

A policy gives `pi(y | x)` over `K` outputs for each of `X` prompts (a leading *prompt*
axis; a single-prompt problem is `X = 1`), with prompt weights `w_x`.

- Exact methods (the flow, exact ascent, exact baselines and the online tracking of the
  expected reward) need [`gradflow.AbstractPolicy.log_probs`][] over the enumerable
  output set, and pull cotangents back to the parameters with
  [`gradflow.AbstractPolicy.linearize`][]. The default is `jax.vjp` of `log_probs`;
  policies override it when a closed form is cheaper (softmax-of-scores policies do).
- Sampled methods need [`gradflow.AbstractPolicy.sample`][] and
  [`gradflow.AbstractPolicy.log_prob`][]; the defaults go through the enumerated
  probabilities, and token-level policies override them to work token by token.
"""

from __future__ import annotations

import abc
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray, PyTree

from .._engine.ops import inverse_cdf, softmax_outputs, sum_draws, sum_outputs, take_outputs
from .._util import validate as v


def prompt_weights(weights, n_prompts: int) -> Float[Array, " prompts"]:
    """Validated prompt weights `w_x` (uniform when `None`)."""
    if weights is None:
        return jnp.full((n_prompts,), 1.0 / n_prompts)
    w = v.as_float_array("weights", weights, ndim=(1,))
    if w.shape != (n_prompts,):
        raise ValueError(
            f"`weights` must have one entry per prompt, shape ({n_prompts},); got {tuple(w.shape)}."
        )
    w = v.check(w, lambda a: a < 0, "`weights` must be non-negative.")
    return v.check(
        w, lambda a: jnp.abs(jnp.sum(a) - 1) > 1e-5, "`weights` must sum to 1 (they weight the prompts)."
    )


def output_features(features) -> Float[Array, "prompts outputs dim"]:
    """Validated features of the outputs, shape `(outputs, dim)` (one prompt) or
    `(prompts, outputs, dim)`, promoted to the latter."""
    arr = v.as_float_array("features", features, ndim=(2, 3))
    if arr.shape[-2] < 2:
        raise ValueError(
            f"`features` needs at least 2 outputs, shape (outputs, dim) or (prompts, outputs, dim); "
            f"got shape {tuple(arr.shape)}."
        )
    return arr[None] if arr.ndim == 2 else arr


class Linearization(eqx.Module):
    """A policy's log-probabilities at its parameters, with their pull-back.

    - `log_probs`, `probs`: `log pi(y | x)` and `pi(y | x)`, shape `(prompts, outputs)`.
    - `pullback`: maps a cotangent `c` on `log_probs` (same shape) to the gradient
      `sum_{x,y} c_{x,y} grad_theta log pi(y | x)`, a pytree like the parameters.

    The cotangents the engine pulls back are *centred*, `sum_y c_{x,y} = 0` for every
    prompt (the closed forms of `gradflow._engine.objective` are). Since `sum_y pi grad log pi
    = 0`, adding a multiple of `pi` to a cotangent does not change its gradient, so a
    pull-back may assume centring; the closed form of softmax-of-scores policies does.
    """

    log_probs: Float[Array, "prompts outputs"]
    probs: Float[Array, "prompts outputs"]
    pullback: Callable[[Float[Array, "prompts outputs"]], PyTree[Array]]


class AbstractPolicy(eqx.Module):
    """A policy `pi(y | x)` over `K` outputs for each of `X` prompts.

    Subclasses implement `params`, `with_params` and `log_probs`; the other methods
    have defaults in terms of these, which subclasses override when they have a cheaper
    route (as diffrax's `AbstractTerm.vf_prod` does).
    """

    weights: eqx.AbstractVar[Float[Array, " prompts"]]

    @property
    @abc.abstractmethod
    def params(self) -> PyTree[Array]:
        """The trainable parameters (what policy-gradient methods update)."""

    @abc.abstractmethod
    def with_params(self, params: PyTree[Array]) -> AbstractPolicy:
        """The same policy with new trainable parameters."""

    @abc.abstractmethod
    def log_probs(self) -> Float[Array, "prompts outputs"]:
        """`log pi(y | x)` over every output, shape `(prompts, outputs)`."""

    @property
    def shape(self) -> tuple[int, int]:
        """`(prompts, outputs)`."""
        return tuple(jax.eval_shape(self.log_probs).shape)

    def probs(self) -> Float[Array, "prompts outputs"]:
        """`pi(y | x)`; each row sums to 1."""
        return jnp.exp(self.log_probs())

    def saturated(self) -> Bool[Array, ""]:
        """Whether some probability has underflowed below the smallest normal float: the
        parameters have left the range where a float softmax still resolves them, and
        training stops changing them for reasons of rounding, not of the dynamics
        (default: from `log_probs`; a product of per-token softmaxes checks each factor)."""
        logp = self.log_probs()
        return jnp.any(logp < jnp.log(jnp.finfo(logp.dtype).tiny))

    def linearize(self) -> Linearization:
        """`log pi`, `pi` and the pull-back of cotangents on `log pi` to the parameters
        (default: `jax.vjp` of `log_probs`)."""
        logp, pullback = jax.vjp(lambda th: self.with_params(th).log_probs(), self.params)
        return Linearization(logp, jnp.exp(logp), lambda c: pullback(c.astype(logp.dtype))[0])

    def sample(self, key: PRNGKeyArray, n: int) -> Int[Array, "prompts n"]:
        """`n` independent draws per prompt, as output indices (default: inverse-CDF
        sampling from `probs()`)."""
        p = jax.lax.stop_gradient(self.probs())
        u = jax.random.uniform(key, (p.shape[0], n), dtype=p.dtype)
        return inverse_cdf(p, u)

    def log_prob(self, samples: Int[Array, "prompts n"]) -> Float[Array, "prompts n"]:
        """`log pi(y_i | x)` of drawn outputs (indices as returned by `sample`)."""
        return take_outputs(self.log_probs(), samples)

    def linearize_draws(self, samples: Int[Array, "prompts n"]):
        """`log_prob(samples)` and its pull-back, as `jax.vjp` returns them: a cotangent
        `a` on the draws maps to `sum_{x,i} a_{x,i} grad_theta log pi(y_i | x)`. The sampled
        methods' gradient is this pull-back (default: `jax.vjp` of `log_prob`)."""
        logp, pullback = jax.vjp(lambda th: self.with_params(th).log_prob(samples), self.params)
        return logp, lambda a: pullback(a.astype(logp.dtype))[0]


class AbstractScorePolicy(AbstractPolicy):
    """A softmax over scores: `pi(y | x) = softmax_y(score(x, y) / tau)`.

    Subclasses implement `scores` (and `params`, `with_params`). The pull-back of a
    centred cotangent has the closed form `grad = J_s^T c / tau`, with `J_s^T` the
    `jax.vjp` of the scores (`d log pi_y / d s_z = (delta_yz - pi_z) / tau`, and the
    `pi_z` part vanishes against a centred `c`): no differentiation through the softmax.
    """

    temperature: eqx.AbstractVar[Float[Array, ""]]

    @abc.abstractmethod
    def scores(self) -> Float[Array, "prompts outputs"]:
        """Unnormalised scores (before dividing by the temperature)."""

    def log_probs(self):
        return softmax_outputs(self.scores() / self.temperature)[1]

    def probs(self):
        return softmax_outputs(self.scores() / self.temperature)[0]

    def linearize(self) -> Linearization:
        scores, pullback = jax.vjp(lambda th: self.with_params(th).scores(), self.params)
        tau = self.temperature
        p, logp = softmax_outputs(scores / tau)

        return Linearization(logp, p, lambda c: pullback((c / tau).astype(scores.dtype))[0])

    def linearize_draws(self, samples):
        """Closed form: `d log pi(y_i) / d s = (e_{y_i} - pi) / tau`, so a cotangent `a` on
        the draws pulls back as `J_s^T (counts - pi total) / tau`, with `counts` the
        `a`-weighted count of each output among the draws and `total = sum_i a_i`."""
        scores, pullback = jax.vjp(lambda th: self.with_params(th).scores(), self.params)
        tau = self.temperature
        p, logp = softmax_outputs(scores / tau)
        n_out = scores.shape[-1]
        onehot = (samples[..., None] == jnp.arange(n_out).reshape((1, 1, n_out))).astype(p.dtype)
        drawn = sum_outputs(onehot * logp[:, None, :])[..., 0]

        def pull(a):
            a = a.astype(p.dtype)[..., None]
            counts, total = sum_draws(a * onehot)[:, 0], sum_draws(a)[:, 0]
            return pullback(((counts - p * total) / tau).astype(scores.dtype))[0]

        return drawn, pull
