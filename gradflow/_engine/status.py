"""How a run ended: `Status`, an `equinox.Enumeration` with a message per outcome.

`Solution.status` is a `Status` item. Arrays (`gradflow.proxy_row`, `gradflow.categorize`)
hold its integer code, `status_code(status)`; tables written to disk (sweep Parquet files,
study CSVs) hold its short name, `status_name(code)` (`"ok"`, `"diverged"`, ...).
"""

from __future__ import annotations

import functools

import diffrax
import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Int


class Status(eqx.Enumeration):
    ok = "ok: the run reached its horizon (or, with `stop_at_targets=True`, its last target)."
    diverged = (
        "diverged: the parameters or rewards became non-finite (a discrete method keeps the last "
        "finite state). Lower the learning rate, or bound the reward."
    )
    max_steps = (
        "max steps hit: the flow needed more than `max_steps` solver steps (accepted plus rejected) "
        "before `t1`. Raise `max_steps`, shorten `t1`, or loosen `rtol`/`atol`; for a strongly "
        "regularised (stiff) flow use `GradientFlow(solver=\"kvaerno5\")`, in float64."
    )
    nonlinear_solve = (
        "nonlinear solve failed: the implicit solver's Newton iteration did not converge. Tighten "
        "`rtol`/`atol` or use an explicit solver."
    )
    linear_solve = "linear solve failed: the implicit solver met a singular or ill-conditioned system."
    step_size = "step size too small: the adaptive solver could not keep the error within tolerance."
    solver_failed = "solver failed: diffrax reported an internal error."
    saturated = (
        "saturated: a probability underflowed below the smallest normal float, so the policy's "
        "parameters are beyond the range where a float softmax still changes (typically a learning "
        "rate far too large, e.g. optax.sgd(1e6)); the run stopped for reasons of rounding. Lower the "
        "learning rate or the reward scale."
    )


# In code order: each item's name and the short name that `status_name` gives.
_ORDER = (("ok", "ok"), ("diverged", "diverged"), ("max_steps", "max steps hit"),
          ("nonlinear_solve", "nonlinear solve failed"), ("linear_solve", "linear solve failed"),
          ("step_size", "step size too small"), ("solver_failed", "solver failed"),
          ("saturated", "saturated"))
#: The items in code order: `STATUSES[code]`.
STATUSES: tuple = tuple(getattr(Status, item) for item, _ in _ORDER)


def status_code(status: Status) -> Int[Array, " *batch"]:
    """The integer code of a `Status` item (any batch shape): the order in which
    [`gradflow.Status`][] lists its outcomes, `ok` = 0, `diverged` = 1, `max_steps` = 2, ..."""
    return jnp.select([status == s for s in STATUSES], [jnp.int32(i) for i in range(len(STATUSES))], 0)


#: The code of `Status.ok` in tables.
OK_CODE = 0


def status_name(status) -> str:
    """A short name (`"ok"`, `"diverged"`, `"max steps hit"`, ...) for a `Status` item or
    an integer code."""
    code = status_code(status) if isinstance(status, Status) else status
    return _ORDER[int(code)][1]


def status_names(codes) -> np.ndarray:
    """`status_name` of every entry of an integer array of codes (tables store these)."""
    return np.asarray([name for _, name in _ORDER])[np.asarray(codes, int)]


# diffrax's outcomes, each kept under its own reason.
_FROM_DIFFRAX = (
    ("successful", "ok"),
    ("event_occurred", "ok"),
    ("max_steps_reached", "max_steps"),
    ("max_steps_rejected", "max_steps"),
    ("nonlinear_max_steps_reached", "nonlinear_solve"),
    ("nonlinear_divergence", "nonlinear_solve"),
    ("singular", "linear_solve"),
    ("breakdown", "linear_solve"),
    ("stagnation", "linear_solve"),
    ("conlim", "linear_solve"),
    ("nonfinite_input", "diverged"),
    ("nonfinite", "diverged"),
    ("dt_min_reached", "step_size"),
)


def from_diffrax(result: diffrax.RESULTS) -> Status:
    """The `Status` of a diffrax result (`solver_failed` for any reason not listed)."""
    known = [(getattr(diffrax.RESULTS, theirs), getattr(Status, ours))
             for theirs, ours in _FROM_DIFFRAX if hasattr(diffrax.RESULTS, theirs)]
    return functools.reduce(lambda acc, pair: Status.where(result == pair[0], pair[1], acc), known,
                            Status.solver_failed)
