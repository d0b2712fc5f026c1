"""Policies (tabular softmax and log-linear) and the reward arrays they are trained on.

Every policy has a leading *prompt* axis: `K` outputs for each of `X` prompts, prompt
weights `w_x` (uniform by default, summing to 1) and a temperature `tau > 0`:

    pi(y | x) = softmax_y(score(x, y) / tau).

A single-prompt problem is the case `X = 1`; 1-D inputs are promoted to it.
"""

from __future__ import annotations

import abc
import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PyTree

from . import _validate as v


class InexactFitWarning(UserWarning):
    """The features of a log-linear policy cannot represent the requested probabilities."""


def _weights(weights, n_prompts: int) -> Float[Array, " prompts"]:
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


class AbstractPolicy(eqx.Module):
    """A softmax policy over `K` outputs for each of `X` prompts.

    Subclasses say how the scores are computed from the trainable parameters
    (`params`); everything else (probabilities, expectations) is shared.
    """

    weights: eqx.AbstractVar[Float[Array, " prompts"]]
    temperature: eqx.AbstractVar[Float[Array, ""]]

    @property
    @abc.abstractmethod
    def params(self) -> PyTree[Array]:
        """The trainable parameters (what policy-gradient methods update)."""

    @abc.abstractmethod
    def with_params(self, params: PyTree[Array]) -> AbstractPolicy:
        """The same policy with new trainable parameters."""

    @abc.abstractmethod
    def scores(self) -> Float[Array, "prompts outputs"]:
        """Unnormalised scores `<theta, phi(x, y)>` (before dividing by the temperature)."""

    @property
    def shape(self) -> tuple[int, int]:
        """`(prompts, outputs)`."""
        return self.scores().shape

    def log_probs(self) -> Float[Array, "prompts outputs"]:
        """`log pi(y | x)`."""
        return jax.nn.log_softmax(self.scores() / self.temperature, axis=-1)

    def probs(self) -> Float[Array, "prompts outputs"]:
        """`pi(y | x)`; each row sums to 1."""
        return jax.nn.softmax(self.scores() / self.temperature, axis=-1)


class TabularSoftmax(AbstractPolicy):
    """Tabular softmax: one free logit per (prompt, output), `pi = softmax(logits / tau)`.

    **Arguments:**

    - `logits`: shape `(outputs,)` for one prompt or `(prompts, outputs)`.
    - `weights`: prompt weights `w_x`, shape `(prompts,)`, non-negative, summing to 1;
      uniform when `None`.
    - `temperature`: `tau > 0`.
    """

    logits: Float[Array, "prompts outputs"]
    weights: Float[Array, " prompts"]
    temperature: Float[Array, ""]

    def __init__(self, logits, weights=None, temperature=1.0):
        logits = v.as_float_array("logits", logits, ndim=(1, 2))
        self.logits = jnp.atleast_2d(logits)
        if self.logits.shape[-1] < 2:
            raise ValueError(f"`logits` needs at least 2 outputs; got shape {tuple(logits.shape)}.")
        self.weights = _weights(weights, self.logits.shape[0])
        self.temperature = v.positive_scalar("temperature", temperature)

    @classmethod
    def from_probs(cls, probs, weights=None, temperature=1.0) -> TabularSoftmax:
        """The tabular policy with the given probabilities.

        **Arguments:**

        - `probs`: shape `(outputs,)` or `(prompts, outputs)`; strictly positive, each
          row summing to 1.
        - `weights`, `temperature`: as in the constructor.

        **Returns:** a `TabularSoftmax` with `logits = temperature * log(probs)`.
        """
        p = v.probabilities("probs", probs)
        temperature = v.positive_scalar("temperature", temperature)
        return cls(temperature * jnp.log(p), weights=weights, temperature=temperature)

    @property
    def params(self):
        return self.logits

    def with_params(self, params):
        return eqx.tree_at(lambda p: p.logits, self, params)

    def scores(self):
        return self.logits


class LogLinear(AbstractPolicy):
    """Log-linear policy `pi(y | x) = softmax_y(<theta, phi(x, y)> / tau)`.

    **Arguments:**

    - `features`: `phi`, shape `(outputs, dim)` for one prompt or
      `(prompts, outputs, dim)`.
    - `theta`: parameters, shape `(dim,)`, shared by all prompts.
    - `weights`, `temperature`: as for [`gradflow.TabularSoftmax`][].

    With one-hot features (`features = eye(K)`) this is the tabular policy.
    """

    features: Float[Array, "prompts outputs dim"]
    theta: Float[Array, " dim"]
    weights: Float[Array, " prompts"]
    temperature: Float[Array, ""]

    def __init__(self, features, theta, weights=None, temperature=1.0):
        features = v.as_float_array("features", features, ndim=(2, 3))
        self.features = features[None] if features.ndim == 2 else features
        self.theta = v.as_float_array("theta", theta, ndim=(1,))
        if self.theta.shape[0] != self.features.shape[-1]:
            raise ValueError(
                f"`theta` must have shape ({self.features.shape[-1]},) to match the feature "
                f"dimension of `features` {tuple(features.shape)}; got {tuple(self.theta.shape)}."
            )
        if self.features.shape[1] < 2:
            raise ValueError(f"`features` needs at least 2 outputs; got shape {tuple(features.shape)}.")
        self.weights = _weights(weights, self.features.shape[0])
        self.temperature = v.positive_scalar("temperature", temperature)

    @classmethod
    def from_probs(
        cls, features, probs, weights=None, temperature=1.0, *, return_residual: bool = False,
        tol: float = 1e-4,
    ):
        """Fit `theta` so that the policy's probabilities match `probs` (least squares).

        Softmax is invariant to a per-prompt shift, so this solves
        `min_{theta, c} sum_{x,y} (<theta, phi(x,y)>/tau + c_x - log p(y|x))^2`
        by centring scores and log-probabilities within each prompt.

        **Arguments:**

        - `features`: as in the constructor.
        - `probs`: shape `(outputs,)` or `(prompts, outputs)`, matching `features`.
        - `weights`, `temperature`: as in the constructor.
        - `return_residual`: also return the residual.
        - `tol`: if the residual exceeds this, an `InexactFitWarning` says so.

        **Returns:** the policy, or `(policy, residual)` with `residual` the total-variation
        distance between the fitted and the requested probabilities (0 when the features
        represent them exactly).
        """
        feats = v.as_float_array("features", features, ndim=(2, 3))
        feats = feats[None] if feats.ndim == 2 else feats
        p = jnp.atleast_2d(v.probabilities("probs", probs))
        if p.shape != feats.shape[:2]:
            raise ValueError(
                f"`probs` has shape {tuple(p.shape)} but `features` describes "
                f"{feats.shape[0]} prompt(s) x {feats.shape[1]} outputs."
            )
        temperature = v.positive_scalar("temperature", temperature)
        logp = jnp.log(p)
        a = feats - feats.mean(axis=1, keepdims=True)
        b = logp - logp.mean(axis=1, keepdims=True)
        sol, *_ = jnp.linalg.lstsq(a.reshape(-1, a.shape[-1]), b.reshape(-1))
        policy = cls(feats, temperature * sol, weights=weights, temperature=temperature)
        residual = 0.5 * jnp.max(jnp.sum(jnp.abs(policy.probs() - p), axis=-1))
        if v.is_concrete(residual) and float(residual) > tol:
            warnings.warn(
                f"The features cannot represent `probs` exactly: the fitted policy is at "
                f"total-variation distance {float(residual):.3g} from it.",
                InexactFitWarning,
                stacklevel=2,
            )
        return (policy, residual) if return_residual else policy

    @property
    def params(self):
        return self.theta

    def with_params(self, params):
        return eqx.tree_at(lambda p: p.theta, self, params)

    def scores(self):
        return self.features @ self.theta


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


# Below this many outputs, sums and maxima over the outputs axis are written as a chain
# of elementwise operations. Under `jax.vmap` that keeps the whole update one fused,
# batch-wide vector loop; XLA's reductions over a short minor axis are ~20x slower (see
# bench/bench_core.py). Above it, the usual reduction is the better choice.
UNROLL_MAX_OUTPUTS = 16


def sum_outputs(x: Float[Array, "... outputs"]) -> Float[Array, "... 1"]:
    """`x.sum(axis=-1, keepdims=True)`, unrolled for few outputs."""
    if x.shape[-1] > UNROLL_MAX_OUTPUTS:
        return jnp.sum(x, axis=-1, keepdims=True)
    acc = x[..., :1]
    for k in range(1, x.shape[-1]):
        acc = acc + x[..., k : k + 1]
    return acc


def max_outputs(x: Float[Array, "... outputs"]) -> Float[Array, "... 1"]:
    """`x.max(axis=-1, keepdims=True)`, unrolled for few outputs."""
    if x.shape[-1] > UNROLL_MAX_OUTPUTS:
        return jnp.max(x, axis=-1, keepdims=True)
    acc = x[..., :1]
    for k in range(1, x.shape[-1]):
        acc = jnp.maximum(acc, x[..., k : k + 1])
    return acc


def softmax_outputs(s: Float[Array, "... outputs"]):
    """`(softmax(s), log_softmax(s))` over the last axis, max-shifted for stability."""
    z = s - max_outputs(s)
    e = jnp.exp(z)
    total = sum_outputs(e)
    return e / total, z - jnp.log(total)


def expected(probs, reward, weights) -> Float[Array, ""]:
    """`sum_x w_x E_{pi(.|x)}[r(x, .)]`."""
    return jnp.sum(weights * jnp.sum(probs * reward, axis=-1))


def reward_range(reward, weights) -> tuple[Float[Array, ""], Float[Array, ""]]:
    """The smallest and largest achievable expected reward, `sum_x w_x min/max_y r(x, y)`."""
    return jnp.sum(weights * reward.min(axis=-1)), jnp.sum(weights * reward.max(axis=-1))

