"""The methods: the continuous-time exact flow and the discrete algorithms.

A method says what it needs as data: `needs_key` (it samples, so `gradflow.solve` needs
a PRNG key) and `continuous` (it runs in flow time up to `t1`, not for a number of
steps); `integrate` runs it. Every method works through the policy interface only: the
objective's cotangent in log-probability space pulled back by the policy
(`gradflow._engine.objective`).
"""

from __future__ import annotations

import abc
import functools
from typing import ClassVar

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Float, PyTree

from .._util import validate as v
from .controller import JumpController
from .integrate import Run, Tracking, integrate_discrete, integrate_flow
from .objective import Problem, Regularization, gradient
from .ops import max_outputs


def max_norm(tree: PyTree[Array]) -> Float[Array, ""]:
    """The largest absolute entry: every parameter's scaled error must be within
    tolerance, however many parameters there are (an RMS would let a few entries that
    decide a crossing carry errors `sqrt(size)` times larger). Written with `max_outputs`
    so that a vmapped flow stays fast."""
    return functools.reduce(jnp.maximum, [jnp.max(max_outputs(jnp.abs(jnp.atleast_1d(x))))
                                          for x in jax.tree.leaves(tree)])


class AbstractMethod(eqx.Module):
    """A policy-gradient algorithm usable with [`gradflow.solve`][].

    Class-level data that [`gradflow.solve`][] reads: `needs_key` (the method samples
    and needs a PRNG key) and `continuous` (it runs in flow time up to `t1` rather than
    for `steps` updates). Concrete methods carry a `regularization` field.
    """

    needs_key: ClassVar[bool] = False
    continuous: ClassVar[bool] = False

    @abc.abstractmethod
    def integrate(self, problem: Problem, *, t1, key, saveat, tracking: Tracking, stop_at_targets: bool = False) -> Run:
        """One validated run (called by [`gradflow.solve`][] inside its compiled region).
        `stop_at_targets` (continuous methods only) ends the run at its last target."""

    def differentiable(self, mode: str) -> AbstractMethod:
        """This method, set up to be differentiated through in `mode` (`"forward"`:
        `jax.jvp`/`jax.jacfwd`, or `"reverse"`: `jax.grad`). Loops of updates support
        both as they are."""
        del mode
        return self


#: Solvers `GradientFlow(solver=...)` accepts by name.
SOLVERS = {
    "tsit5": diffrax.Tsit5,
    "dopri5": diffrax.Dopri5,
    "dopri8": diffrax.Dopri8,
    "kvaerno5": diffrax.Kvaerno5,
}

#: Default `(rtol, atol)` of the flow by the parameters' dtype.
DEFAULT_TOLERANCES = {"float64": (1e-7, 1e-9), "float32": (1e-5, 1e-7)}


class GradientFlow(AbstractMethod):
    """Continuous-time exact policy-gradient flow `d theta/dt = grad J(theta)`,
    integrated with diffrax.

    **Arguments:**

    - `solver`: `"tsit5"` (default; explicit 5th order), `"dopri5"`, `"dopri8"`,
      `"kvaerno5"` (implicit, for stiff flows), or any diffrax solver instance.
      Use `"kvaerno5"` when a run spends a long time near a stable rest point with fast
      directions, typically a strongly regularised flow (KL or entropy, `beta` of order
      1 or more) over a long horizon: an explicit solver's steps are then bounded by
      stability, not accuracy, and a run ends with status `max_steps`.
    - `rtol`, `atol`: tolerances of the adaptive step-size controller (and of the
      implicit solver's Newton iteration). `None` (default) picks them by the
      parameters' dtype: `rtol = 1e-7, atol = 1e-9` in float64, `rtol = 1e-5,
      atol = 1e-7` in float32 (tighter than that, float32 rounding makes the controller
      reject steps it cannot improve).
    - `dt0`: initial step; `None` lets diffrax choose (adaptive only).
    - `adaptive`: `False` integrates with a constant step `dt0` instead.
    - `max_steps`: the most solver steps (accepted plus rejected) a run may take; a run
      that needs more ends with status `max_steps`. It sets no buffer size: a run
      stores only what it records.
    - `jump_floor`: how the flow steps across jumps of its vector field (a ReLU
      network's gradient jumps wherever a unit switches, and the flow can slide along
      such a kink). A step that contains a jump has an error proportional to its length,
      so meeting `rtol` there takes steps of about `rtol` times the jump, millions of
      them when the flow slides. A rejected step whose error fell at most linearly when
      it was retried shorter (a jump, where a smooth step's error falls like `h^5`) is
      accepted once it is no longer than `jump_floor * t`: such steps are first-order
      accurate, and `Solution.num_jump_steps` counts them. Default `0.01`: a sliding run
      takes about 100 steps per e-fold of time. `0` never accepts a step above
      tolerance. A flow whose vector field is smooth (every built-in policy, and a
      network with a smooth activation) meets no jump, and is stepped the same either
      way, unless `rtol` is below what the float type resolves (float32 at `rtol=1e-7`):
      an error that is rounding noise does not fall with `h` either, and such a step is
      accepted at the floor too.
    - `regularization`: a [`gradflow.Regularization`][].

    Crossings of `targets` and the ends of the longest stall are located inside the
    solver step in which they happen, by a root find on the solver's dense interpolant,
    so they are as accurate as the solution itself.
    """

    solver: diffrax.AbstractSolver | str = "tsit5"
    rtol: float | None = eqx.field(default=None, static=True)
    atol: float | None = eqx.field(default=None, static=True)
    dt0: float | None = eqx.field(default=None, static=True)
    adaptive: bool = eqx.field(default=True, static=True)
    max_steps: int = eqx.field(default=4096, static=True)
    jump_floor: float = eqx.field(default=0.01, static=True)
    regularization: Regularization = Regularization()
    adjoint: diffrax.AbstractAdjoint = diffrax.RecursiveCheckpointAdjoint()
    continuous: ClassVar[bool] = True

    def __check_init__(self):
        if not (self.solver in SOLVERS if isinstance(self.solver, str)
                else isinstance(self.solver, diffrax.AbstractSolver)):
            raise ValueError(f"`solver` must be one of {sorted(SOLVERS)} or a diffrax solver; got {self.solver!r}.")
        for name in ("rtol", "atol"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and value > 0):
                raise ValueError(f"`{name}` must be a positive number (or None for the dtype's default); "
                                 f"got {value!r}.")
        if not self.adaptive and (self.dt0 is None or not self.dt0 > 0):
            raise ValueError(f"`dt0` must be a positive step size when `adaptive=False`; got {self.dt0}.")
        if self.dt0 is not None and not self.dt0 > 0:
            raise ValueError(f"`dt0` must be positive; got {self.dt0}.")
        v.positive_int("max_steps", self.max_steps)
        if not (isinstance(self.jump_floor, (int, float)) and 0 <= self.jump_floor < 1):
            raise ValueError(f"`jump_floor` must be a number in [0, 1); got {self.jump_floor!r}.")

    def tolerances(self, dtype) -> tuple[float, float]:
        """`(rtol, atol)` for parameters of `dtype`, defaults filled in."""
        rtol, atol = DEFAULT_TOLERANCES["float64" if jnp.dtype(dtype) == jnp.float64 else "float32"]
        return (rtol if self.rtol is None else self.rtol), (atol if self.atol is None else self.atol)

    def make_solver(self, dtype) -> diffrax.AbstractSolver:
        """The diffrax solver (an implicit one gets the controller's tolerances)."""
        solver = self.solver
        if isinstance(solver, str):
            cls = SOLVERS[solver]
            if issubclass(cls, diffrax.AbstractImplicitSolver):
                rtol, atol = self.tolerances(dtype)
                solver = cls(root_finder=diffrax.VeryChord(rtol=rtol, atol=atol, norm=max_norm))
            else:
                solver = cls()
        if isinstance(self.adjoint, diffrax.ForwardMode) and getattr(solver, "scan_kind", "lax") is None:
            # What diffrax's ForwardMode does to the solvers it sees (a Runge-Kutta
            # method's stages must be a plain scan for `jax.jvp`); this one it sees
            # wrapped in the flow's tracker.
            solver = eqx.tree_at(lambda s: s.scan_kind, solver, "lax", is_leaf=lambda x: x is None)
        return solver

    def controller(self, dtype) -> diffrax.AbstractStepSizeController:
        if self.adaptive:
            rtol, atol = self.tolerances(dtype)
            return JumpController(rtol=rtol, atol=atol, norm=max_norm, jump_floor=self.jump_floor)
        return diffrax.ConstantStepSize()

    def integrate(self, problem, *, t1, key, saveat, tracking, stop_at_targets=False):
        return integrate_flow(self, problem, t1, saveat, tracking, stop_at_targets)

    def differentiable(self, mode: str) -> GradientFlow:
        if mode == "forward":
            return eqx.tree_at(lambda m: m.adjoint, self, diffrax.ForwardMode())
        return self


class AbstractDiscreteMethod(AbstractMethod):
    """A method that makes `steps` updates with an optax optimiser.

    Subclasses implement `update`, one step of the algorithm; [`gradflow.solve`][] runs
    the loop, records and tracks. Step `n` is the policy after `n` updates.
    """

    optimizer: eqx.AbstractVar[optax.GradientTransformation]
    steps: eqx.AbstractVar[int]
    regularization: eqx.AbstractVar[Regularization]

    def integrate(self, problem, *, t1, key, saveat, tracking, stop_at_targets=False):
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
    opt = method.optimizer
    if not (hasattr(opt, "init") and hasattr(opt, "update")):
        raise ValueError(f"`optimizer` must be an optax.GradientTransformation; got {opt!r}.")
    # Probe the first update on a one-parameter problem whose ascent direction is +1: an
    # optimiser that steps the other way (optax.sgd(-0.1)) would quietly minimise the reward.
    try:
        with jax.ensure_compile_time_eval():
            x = jnp.zeros(1)
            step = opt.update(-jnp.ones(1), opt.init(x), x)[0]
            descends = jnp.any(step < 0) if isinstance(step, jax.Array) else jnp.asarray(False)
    except Exception:  # noqa: BLE001 - an optimiser for a specific parameter structure: not probed
        return
    if v.is_concrete(descends) and bool(descends):
        raise ValueError(
            "`optimizer` steps against the gradient (a negative learning rate?), so it would "
            "minimise the reward. To train towards low reward, negate the reward instead."
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
