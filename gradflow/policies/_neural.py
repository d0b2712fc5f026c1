"""A neural policy: any equinox model scores each (prompt, output) pair."""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
from jaxtyping import Array, Float, PyTree

from .._util import validate as v
from ._base import AbstractScorePolicy, output_features, prompt_weights


class NeuralPolicy(AbstractScorePolicy):
    """`pi(y | x) = softmax_y(f(phi(x, y)) / tau)` for any equinox model `f` that maps a
    feature vector to a scalar score, e.g. `eqx.nn.MLP(dim, "scalar", width, depth,
    key=key)`. The trainable parameters are the model's floating-point arrays.

    **Arguments:**

    - `model`: a callable `equinox.Module`, `features[x, y] -> score` with output shape
      `()` (or `(1,)`).
    - `features`: `phi`, shape `(outputs, dim)` for one prompt or `(prompts, outputs, dim)`.
    - `weights`, `temperature`: as for [`gradflow.TabularSoftmax`][].

    With a linear model (`eqx.nn.Linear(dim, "scalar", use_bias=False)`) this is
    [`gradflow.LogLinear`][].
    """

    model: Callable[[Float[Array, " dim"]], Float[Array, ""]]
    features: Float[Array, "prompts outputs dim"]
    weights: Float[Array, " prompts"]
    temperature: Float[Array, ""]

    def __init__(self, model, features, weights=None, temperature=1.0):
        self.features = output_features(features)
        if not callable(model):
            raise ValueError(f"`model` must be a callable equinox Module (features -> score); got {model!r}.")
        try:
            out = jax.eval_shape(model, self.features[0, 0])
        except Exception as e:  # the model cannot take one feature vector
            raise ValueError(
                f"`model` must map one feature vector of shape ({self.features.shape[-1]},) to a "
                f"scalar score; calling it failed: {e}"
            ) from e
        if not (hasattr(out, "shape") and tuple(out.shape) in ((), (1,))):
            raise ValueError(
                f"`model` must return a scalar score (shape () or (1,)) for one feature vector; "
                f"it returned {getattr(out, 'shape', out)}."
            )
        if not jax.tree.leaves(eqx.filter(model, eqx.is_inexact_array)):
            raise ValueError("`model` has no floating-point arrays to train (its parameters).")
        self.model = model
        self.weights = prompt_weights(weights, self.features.shape[0])
        self.temperature = v.positive_scalar("temperature", temperature)

    @property
    def params(self) -> PyTree[Array]:
        return eqx.filter(self.model, eqx.is_inexact_array)

    def with_params(self, params):
        static = eqx.filter(self.model, eqx.is_inexact_array, inverse=True)
        return eqx.tree_at(lambda p: p.model, self, eqx.combine(params, static))

    def scores(self):
        score = jax.vmap(jax.vmap(self.model))(self.features)
        return score.reshape(self.features.shape[:2])
