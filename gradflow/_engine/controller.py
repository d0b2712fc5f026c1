"""The flow's step-size controller: diffrax's PID controller, plus steps across jumps.

A ReLU network's gradient jumps wherever a unit switches on or off, so the flow's vector
field is discontinuous there, and the flow can slide along such a surface (a unit held at
zero from both sides: a Filippov sliding mode). Any step that contains a jump has a local
error proportional to its length `h`, not to `h^5`; to meet a tolerance of `1e-5` an
adaptive solver then takes steps of about `1e-5` times the jump, and a sliding run takes
millions of them. `JumpController` recognises such a step by how its error falls when the
step is retried shorter: at most in proportion to `h` (observed order below 2), where a
smooth step's falls like `h^5`. Such a step is accepted once it is no longer than
`jump_floor * t`, and counted. Runs whose steps never meet a jump are stepped exactly as
by `diffrax.PIDController` (an error estimate that is rounding noise, at a tolerance below
the float type's resolution, does not fall with `h` either: such steps are accepted at the
floor too).
"""

from __future__ import annotations

from collections.abc import Callable

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int, PyTree

#: A retried step whose scaled error fell by less than `(h_before / h_after) ** JUMP_ORDER`
#: contains a jump in the vector field (a smooth step's error falls like `h^5`).
JUMP_ORDER = 2.0

#: The PID controller's step-size rule, handed the scaled error itself (a scalar: the
#: error is computed once per step, by `JumpController`).
_SCALED_PID = diffrax.PIDController(rtol=0.0, atol=1.0, norm=jnp.abs)


class _JumpState(eqx.Module):
    pid: PyTree  # the PID controller's own state
    retry_t0: Float[Array, ""]  # t0 of the last rejected step (-inf after an accepted one)
    h: Float[Array, ""]  # the last step's length
    error: Float[Array, ""]  # and its scaled error
    slope: Float[Array, ""]  # error / h of the last accepted step if it was across a jump, else 0
    num_jumps: Int[Array, ""]  # steps accepted across a jump


class JumpController(diffrax.AbstractAdaptiveStepSizeController):
    """`diffrax.PIDController(rtol, atol, norm)` that accepts a step across a jump of the
    vector field once the step is no longer than `jump_floor * t` (see the module
    docstring); its state's `num_jumps` counts those steps. `jump_floor = 0` never
    accepts a step across a jump: the PID controller itself."""

    rtol: float
    atol: float
    norm: Callable[[PyTree], Float[Array, ""]]
    jump_floor: float

    def wrap(self, direction):
        return self

    def init(self, terms, t0, t1, y0, dt0, args, func, error_order):
        # The first step is picked from the state itself, with the tolerances.
        next_t1, pid = diffrax.PIDController(rtol=self.rtol, atol=self.atol, norm=self.norm).init(
            terms, t0, t1, y0, dt0, args, func, error_order)
        zero = jnp.zeros((), jnp.result_type(t0, t1, next_t1))
        return next_t1, _JumpState(pid, zero - jnp.inf, zero, zero, zero, jnp.asarray(0))

    def adapt_step_size(self, t0, t1, y0, y1_candidate, args, y_error, error_order, state):
        def scale(y0, y1, e):  # as diffrax.PIDController scales it
            y1 = jnp.where(jnp.isnan(y1).any(), y0, y1)
            return e / (self.atol + self.rtol * jnp.maximum(jnp.abs(y0), jnp.abs(y1)))

        error = self.norm(jax.tree.map(scale, y0, y1_candidate, y_error))
        zero = jnp.zeros((), error.dtype)
        keep, next_t0, next_t1, made_jump, pid, result = _SCALED_PID.adapt_step_size(
            t0, t1, zero, zero, args, error, error_order, state.pid)
        h = t1 - t0
        # A jump inside the step: retried shorter, its error fell at most linearly; or the
        # previous step was across a jump and this one's error per unit length is no larger
        # (the flow slides along a kink).
        retried = (state.retry_t0 == t0) & (state.h > h)
        order = jnp.log(state.error / error) / jnp.log(state.h / h)
        sliding = (state.slope > 0) & (error <= 2 * state.slope * h)
        at_floor = h <= 1.001 * self.jump_floor * t0
        across = ~keep & at_floor & ((retried & (order < JUMP_ORDER)) | sliding) & jnp.isfinite(error)
        # Accepted across a jump: go on from t1, with the step the PID proposed (never
        # shorter than the floor there).
        next_t0 = jnp.where(across, t1, next_t0)
        next_t1 = jnp.where(across, t1 + jnp.maximum(next_t1 - t0, self.jump_floor * t1), next_t1)
        keep = keep | across
        dtype = state.h.dtype
        slope = jnp.where(across, error / h, jnp.where(keep, 0, state.slope)).astype(dtype)
        state = _JumpState(pid, jnp.where(keep, -jnp.inf, t0).astype(dtype), h.astype(dtype),
                           error.astype(dtype), slope, state.num_jumps + across)
        return keep, next_t0, next_t1, made_jump, state, result
