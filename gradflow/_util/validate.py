"""Input validation that works both eagerly and under `jax.jit`/`jax.vmap`.

Concrete inputs are checked with NumPy and rejected with a `ValueError` naming the
argument. Traced inputs (inside `jit`/`vmap`) cannot raise a Python error; they are
checked with `equinox.error_if`, which raises at run time with the same message.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

#: The largest count (steps, sizes) the engine takes: its loop counters are 32-bit.
MAX_INT = 2**31 - 1


def is_concrete(x) -> bool:
    """`True` when `x` holds actual values (not a tracer inside `jit`/`vmap`)."""
    return not any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(x))


def check(x, bad, message: str):
    """Reject `x` when the boolean array `bad(x)` has any `True` entry.

    Eager: raises `ValueError(message)`. Traced: returns `x` wrapped in
    `equinox.error_if`, so the check fires when the computation runs.
    """
    with jax.ensure_compile_time_eval():  # evaluate now when possible, even inside a jit
        flagged = jnp.any(bad(x))
    if is_concrete(flagged):
        if bool(flagged):
            raise ValueError(message)
        return x
    # The value a traced message would show is a tracer's repr: say what was wrong instead.
    head = message.split("; got ")[0].rstrip(".")
    return eqx.error_if(x, flagged, f"{head} (a value traced under jit/vmap was not)." if head != message else message)


def as_float_array(name: str, x, ndim: tuple[int, ...] | None = None) -> jax.Array:
    """Convert to a floating JAX array, checking its rank and that it is finite."""
    try:
        arr = jnp.asarray(x)
    except TypeError as e:
        raise ValueError(f"`{name}` must be an array of numbers; got {x!r}.") from e
    if not jnp.issubdtype(arr.dtype, jnp.floating):
        arr = arr.astype(jnp.result_type(float))
    if ndim is not None and arr.ndim not in ndim:
        want = " or ".join(f"{d}-D" for d in ndim)
        raise ValueError(
            f"`{name}` must be {want}; got an array of shape {tuple(arr.shape)}."
        )
    return check(arr, lambda a: ~jnp.isfinite(a), f"`{name}` must be finite (no NaN or inf).")


def positive_scalar(name: str, x, *, allow_zero: bool = False) -> jax.Array:
    """A finite scalar that is `> 0` (or `>= 0` with `allow_zero`)."""
    arr = as_float_array(name, x, ndim=(0,))
    word = "non-negative" if allow_zero else "positive"
    return check(arr, (lambda a: a < 0) if allow_zero else (lambda a: a <= 0), f"`{name}` must be {word}; got {x}.")


def positive_int(name: str, x) -> int:
    """A Python integer `>= 1` (used for static sizes such as step counts)."""
    if isinstance(x, bool) or not isinstance(x, (int, np.integer)):
        raise ValueError(f"`{name}` must be a positive integer; got {x!r}.")
    if x < 1:
        raise ValueError(f"`{name}` must be a positive integer; got {x}.")
    if x > MAX_INT:
        raise ValueError(f"`{name}` must be at most {MAX_INT} (a 32-bit count); got {x}.")
    return int(x)


def probabilities(name: str, p, *, atol: float = 1e-5) -> jax.Array:
    """Strictly positive probabilities along the last axis, each row summing to 1."""
    arr = as_float_array(name, p, ndim=(1, 2))
    arr = check(
        arr,
        lambda a: a <= 0,
        f"`{name}` must be strictly positive (a softmax policy cannot put zero or "
        "negative mass on an output).",
    )
    return check(
        arr,
        lambda a: jnp.abs(jnp.sum(a, axis=-1) - 1) > atol,
        f"`{name}` must sum to 1 along its last (outputs) axis (tolerance {atol}).",
    )


def targets_in_range(name: str, targets: tuple[float, ...], vmin, vmax) -> None:
    """Refuse targets outside `[vmin, vmax]`, the range the expected true reward can reach
    (up to rounding): such a target is a typo, not a question, and would be reported as
    "never" (or "at once"). Checked when the range is concrete (a true reward given as data,
    also under `jit`); a true reward traced per run (vmapped) is not checked, and a run
    whose range excludes the target reports `inf`."""
    if not targets:
        return
    lo, hi = min(targets), max(targets)
    tol = 1e-6 * (1.0 + max(abs(lo), abs(hi)))
    with jax.ensure_compile_time_eval():
        vmin, vmax = jnp.max(jnp.asarray(vmin)), jnp.min(jnp.asarray(vmax))
        bad = (vmin > lo + tol) | (vmax < hi - tol)
    if is_concrete(bad) and bool(bad):
        given = f"{lo:g}" if len(targets) == 1 else str(list(targets))
        raise ValueError(
            f"`{name}` {given} is outside the range the expected true reward can reach, "
            f"[{float(vmin):.6g}, {float(vmax):.6g}]; pass levels within it (or fractions of the way "
            "from the start to the maximum, with normalized targets)."
        )
