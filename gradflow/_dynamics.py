"""The methods: the continuous-time exact flow and the discrete algorithms.

A method says what it needs as data: `needs_key` (it samples, so `gradflow.solve` needs
a PRNG key) and `continuous` (it runs in flow time up to `t1`, not for a number of
steps); `integrate` runs it. Every method works through the policy interface only: the
objective's cotangent in log-probability space pulled back by the policy
(`gradflow._objective`).
"""

from __future__ import annotations

import abc
from typing import ClassVar

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Float, PyTree

from . import _validate as v
from ._integrate import Run, Tracking, integrate_discrete, integrate_flow
from ._objective import Problem, Regularization, gradient
from ._ops import sum_outputs


def rms_norm(tree: PyTree[Array]) -> Float[Array, ""]:
    """Root-mean-square of all entries (diffrax's default error norm), with the sum over
    outputs written as flat vector ops so that a vmapped flow stays fast."""
    leaves = [jnp.atleast_1d(x) for x in jax.tree.leaves(tree)]
    mean = sum(jnp.sum(sum_outputs(x * x)) for x in leaves) / sum(x.size for x in leaves)
    positive = mean > 0  # double `where`: a zero (not infinite) derivative at 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, mean, 1.0)), 0.0)


class AbstractMethod(eqx.Module):
    """A policy-gradient algorithm usable with [`gradflow.solve`][].

    Class-level data that [`gradflow.solve`][] reads: `needs_key` (the method samples
    and needs a PRNG key) and `continuous` (it runs in flow time up to `t1` rather than
    for `steps` updates). Concrete methods carry a `regularization` field.
    """

    needs_key: ClassVar[bool] = False
    continuous: ClassVar[bool] = False

    @abc.abstractmethod
    def integrate(self, problem: Problem, *, t1, key, saveat, tracking: Tracking) -> Run:
        """One validated run (called by [`gradflow.solve`][] inside its compiled region)."""


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
    continuous: ClassVar[bool] = True

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

    def integrate(self, problem, *, t1, key, saveat, tracking):
        return integrate_flow(self, problem, t1, saveat, tracking)


class AbstractDiscreteMethod(AbstractMethod):
    """A method that makes `steps` updates with an optax optimiser.

    Subclasses implement `update`, one step of the algorithm; [`gradflow.solve`][] runs
    the loop, records and tracks. Step `n` is the policy after `n` updates.
    """

    optimizer: eqx.AbstractVar[optax.GradientTransformation]
    steps: eqx.AbstractVar[int]
    regularization: eqx.AbstractVar[Regularization]

    def integrate(self, problem, *, t1, key, saveat, tracking):
        return integrate_discrete(self, problem, key, saveat, tracking)

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
        grad, d = gradient(params, problem)
        params, state = self._apply(grad, params, state)
        return params, state, d.true_reward
