"""Softmax-of-scores policies over a fixed list of outputs: tabular and log-linear."""

from __future__ import annotations

import warnings

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

from .._util import validate as v
from ._base import AbstractScorePolicy, output_features, prompt_weights


class InexactFitWarning(UserWarning):
    """The features of a log-linear policy cannot represent the requested probabilities."""


class TabularSoftmax(AbstractScorePolicy):
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
        self.weights = prompt_weights(weights, self.logits.shape[0])
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


class LogLinear(AbstractScorePolicy):
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
        self.features = output_features(features)
        self.theta = v.as_float_array("theta", theta, ndim=(1,))
        if self.theta.shape[0] != self.features.shape[-1]:
            raise ValueError(
                f"`theta` must have shape ({self.features.shape[-1]},) to match the feature "
                f"dimension of `features` {tuple(jnp.shape(features))}; got {tuple(self.theta.shape)}."
            )
        self.weights = prompt_weights(weights, self.features.shape[0])
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
