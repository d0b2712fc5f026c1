"""Small array operations over the outputs axis, written for speed under `jax.vmap`.

Below `UNROLL_MAX_OUTPUTS` outputs, sums, maxima and lookups over the outputs axis are
written as a chain of elementwise operations. Under `jax.vmap` that keeps a whole update
one fused, batch-wide vector loop; XLA's reductions over a short minor axis are ~20x
slower (see bench/bench_core.py). Above it, the usual reduction is the better choice.
The unrolling is tuned for XLA's CPU code: on other backends (GPU, TPU), whose compilers
fuse short reductions well, the usual reductions are used (`bench/bench_backend.py`
times both on whatever backend is present). The choice depends on static shapes and the
default backend only, so it is made once per compilation.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

UNROLL_MAX_OUTPUTS = 16


def unrolled(n: int) -> bool:
    """Whether a sum over an axis of length `n` is written out: `n <= UNROLL_MAX_OUTPUTS`
    on the CPU backend, never elsewhere."""
    return n <= UNROLL_MAX_OUTPUTS and jax.default_backend() == "cpu"


def sum_outputs(x: Float[Array, "... outputs"]) -> Float[Array, "... 1"]:
    """`x.sum(axis=-1, keepdims=True)`, unrolled for few outputs."""
    if not unrolled(x.shape[-1]):
        return jnp.sum(x, axis=-1, keepdims=True)
    acc = x[..., :1]
    for k in range(1, x.shape[-1]):
        acc = acc + x[..., k : k + 1]
    return acc


def max_outputs(x: Float[Array, "... outputs"]) -> Float[Array, "... 1"]:
    """`x.max(axis=-1, keepdims=True)`, unrolled for few outputs."""
    if not unrolled(x.shape[-1]):
        return jnp.max(x, axis=-1, keepdims=True)
    acc = x[..., :1]
    for k in range(1, x.shape[-1]):
        acc = jnp.maximum(acc, x[..., k : k + 1])
    return acc


def softmax_outputs(s: Float[Array, "... outputs"]):
    """`(softmax(s), log_softmax(s))` over the last axis, max-shifted for stability (the
    shift is held constant under differentiation: its derivative cancels exactly)."""
    z = s - jax.lax.stop_gradient(max_outputs(s))
    e = jnp.exp(z)
    total = sum_outputs(e)
    return e / total, z - jnp.log(total)


def sum_draws(x: Float[Array, "prompts k ..."]) -> Float[Array, "prompts 1 ..."]:
    """`x.sum(axis=1, keepdims=True)` over the draws, unrolled for small groups (as for
    `sum_outputs`, XLA's CPU reductions over a short middle axis are slow under `vmap`)."""
    if not unrolled(x.shape[1]):
        return jnp.sum(x, axis=1, keepdims=True)
    acc = x[:, :1]
    for i in range(1, x.shape[1]):
        acc = acc + x[:, i : i + 1]
    return acc


def cumsum_outputs(x: Float[Array, "... outputs"]) -> Float[Array, "... outputs"]:
    """`jnp.cumsum(x, axis=-1)`, unrolled for few outputs."""
    if not unrolled(x.shape[-1]):
        return jnp.cumsum(x, axis=-1)
    parts = [x[..., :1]]
    for j in range(1, x.shape[-1]):
        parts.append(parts[-1] + x[..., j : j + 1])
    return jnp.concatenate(parts, axis=-1)


def take_outputs(table: Float[Array, "... outputs"], index: Int[Array, "... k"]) -> Float[Array, "... k"]:
    """`table[..., index]` along the outputs axis (leading axes shared): `out[..., i] =
    table[..., index[..., i]]`. For few outputs a masked sum (differentiates to a masked
    broadcast, no scatter); otherwise a gather."""
    n = table.shape[-1]
    if not unrolled(n):
        return jnp.take_along_axis(table, index, axis=-1)
    t = table[..., None, :]
    onehot = index[..., None] == jnp.arange(n).reshape((1,) * index.ndim + (n,))
    return sum_outputs(jnp.where(onehot, t, jnp.zeros((), table.dtype)))[..., 0]


def inverse_cdf(
    probs: Float[Array, "... outputs"], u: Float[Array, "... k"]
) -> Int[Array, "... k"]:
    """Inverse-CDF sampling: for each uniform `u`, the output `y` with `cdf(y-1) <= u <
    cdf(y)`. The last edge counts as `+inf`, so rounding in the cumulative sum never
    leaves a draw without an output."""
    edges = cumsum_outputs(probs)[..., None, :-1]  # (..., 1, outputs - 1)
    below = (u[..., None] >= edges).astype(probs.dtype)  # counted exactly in floats
    return sum_outputs(below)[..., 0].astype(jnp.int32)
