"""Families of proxy rewards built from a true reward.

Each function takes the true reward `r_G`, shape `(outputs,)` for one prompt or
`(prompts, outputs)`, and returns a *batch* of proxy rewards with a leading batch axis:
shape `(batch, outputs)` or `(batch, prompts, outputs)`. Feed the batch to a vmapped
solve (one run per proxy) or validate your own with [`gradflow.perturb.as_batch`][].

Conventions:

- Random families take an explicit JAX PRNG `key` (`jax.random.key(seed)`). Proxy `i` of
  a batch depends only on `key` and `i` (it is drawn with `jax.random.fold_in(key, i)`),
  so the same key gives bitwise the same proxies, and the first `m` proxies of a batch of
  `n` are the batch of `m`: chunking a sweep does not change its proxies.
- Parameters that set shapes (`n`, output indices, `pairs`, `prompt`) are Python
  integers; everything else (rewards, scales, values, accuracies) may be traced, so the
  functions work under `jax.jit` (mark `n` static) and `jax.vmap`.
- Output indices count from 0 and must lie in `[0, outputs)` (no negative indices). For a
  2-D true reward they address the outputs of every prompt, or of the one prompt named
  by `prompt` where a function takes it.
- Bad input raises a `ValueError` naming the argument (traced inputs are checked with
  `equinox.error_if` at run time).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ._util import validate as v

__all__ = [
    "as_batch",
    "demote",
    "feature_bias",
    "gaussian",
    "gaussian_on",
    "grid_2d",
    "grid_2d_points",
    "monotone",
    "shift_grid",
    "swaps",
    "with_accuracy",
]


# --------------------------------------------------------------------------- validation


def _true_reward(x, name: str = "true_reward") -> Float[Array, "*reward"]:
    r = v.as_float_array(name, x, ndim=(1, 2))
    if r.shape[-1] < 2 or r.shape[0] < 1:
        raise ValueError(
            f"`{name}` must have at least 2 outputs (and 1 prompt), shape (outputs,) or "
            f"(prompts, outputs); got {tuple(r.shape)}."
        )
    return r


def _key(key):
    dtype = getattr(key, "dtype", None)
    typed = dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)
    raw = dtype == jnp.uint32 and getattr(key, "ndim", None) == 1
    if not (typed and key.shape == ()) and not raw:
        raise ValueError(
            f"`key` must be one JAX PRNG key (`jax.random.key(seed)`, or a legacy uint32 "
            f"`jax.random.PRNGKey(seed)`); got {key!r}."
        )
    return key


def _index(name: str, i, n_outputs: int) -> int:
    if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
        raise ValueError(f"`{name}` must be a Python integer output index; got {i!r}.")
    if not 0 <= i < n_outputs:
        raise ValueError(
            f"`{name}` must be an output index in [0, {n_outputs}) for {n_outputs} outputs; got {i}."
        )
    return int(i)


def _indices(name: str, idx, n_outputs: int) -> tuple[int, ...]:
    if isinstance(idx, (int, np.integer)) and not isinstance(idx, bool):
        idx = (idx,)
    try:
        seq = tuple(idx)
    except TypeError as e:
        raise ValueError(f"`{name}` must be an output index or a sequence of them; got {idx!r}.") from e
    if not seq:
        raise ValueError(f"`{name}` must name at least one output.")
    out = tuple(_index(name, i, n_outputs) for i in seq)
    if len(set(out)) != len(out):
        raise ValueError(f"`{name}` must not repeat an output; got {out}.")
    return out


def _prompt(prompt, r) -> int | None:
    if prompt is None:
        return None
    if r.ndim != 2:
        raise ValueError("`prompt` is only for a 2-D true reward, shape (prompts, outputs).")
    if isinstance(prompt, bool) or not isinstance(prompt, (int, np.integer)):
        raise ValueError(f"`prompt` must be a Python integer prompt index or None; got {prompt!r}.")
    if not 0 <= prompt < r.shape[0]:
        raise ValueError(f"`prompt` must lie in [0, {r.shape[0]}) for {r.shape[0]} prompts; got {prompt}.")
    return int(prompt)


def _mask(shape: tuple[int, ...], outputs: tuple[int, ...], prompt: int | None) -> np.ndarray:
    """Boolean mask of `shape` selecting `outputs` (of `prompt`, or of every prompt)."""
    m = np.zeros(shape, dtype=bool)
    cols = list(outputs)
    if len(shape) == 1:
        m[cols] = True
    elif prompt is None:
        m[:, cols] = True
    else:
        m[prompt, cols] = True
    return m


def _values(name: str, x) -> Float[Array, " batch"]:
    a = jnp.atleast_1d(v.as_float_array(name, x, ndim=(0, 1)))
    if a.shape[0] < 1:
        raise ValueError(f"`{name}` must hold at least one value.")
    return a


def _scale(scale, r) -> Float[Array, ""]:
    return v.positive_scalar("scale", scale).astype(r.dtype)


def _lead(x: Array, ndim: int) -> Array:
    """A 1-D batch of scalars, shaped `(batch, 1, ..., 1)` to broadcast against a batch of
    `ndim`-D rewards without rank promotion."""
    return x.reshape(x.shape + (1,) * ndim)


def _per_sample(key, n: int, fn):
    """`stack([fn(fold_in(key, i)) for i in range(n)])`, vmapped."""
    keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, jnp.arange(n))
    return jax.vmap(fn)(keys)


def _draw(sampler, key, shape: tuple[int, ...], dtype):
    """`sampler(key, shape, dtype)`, drawn flat and reshaped: XLA compiles the flat draw
    several times faster than a multi-dimensional one."""
    return sampler(key, (math.prod(shape),), dtype).reshape(shape)


# The random families run as jitted kernels (compiled once per shape, dtype and `n`):
# validation happens before, outside, so that bad concrete input raises eagerly.


@functools.partial(jax.jit, static_argnames="n")
def _noise(key, r, scale, mask, n: int):
    def one(k):
        return jnp.where(mask, r + scale * _draw(jax.random.normal, k, r.shape, r.dtype), r)

    return _per_sample(key, n, one)


# --------------------------------------------------------------------------- noise


def gaussian(key, true_reward, scale, n) -> Float[Array, " batch *reward"]:
    """Additive Gaussian noise on every output: `r_P = r_G + scale * eps`,
    `eps ~ N(0, I)`, independently for each proxy, prompt and output.

    **Arguments:**

    - `key`: a JAX PRNG key.
    - `true_reward`: `r_G`, shape `(outputs,)` or `(prompts, outputs)`.
    - `scale`: the noise standard deviation, `> 0`.
    - `n`: how many proxies (a Python int `>= 1`).

    **Returns:** shape `(n,) + true_reward.shape`.
    """
    r = _true_reward(true_reward)
    key = _key(key)
    scale = _scale(scale, r)
    n = v.positive_int("n", n)
    return _noise(key, r, scale, jnp.ones(r.shape, bool), n)


def gaussian_on(key, true_reward, scale, n, outputs, prompt=None) -> Float[Array, " batch *reward"]:
    """Additive Gaussian noise on the chosen outputs only; the others keep their true
    reward exactly.

    The noise is drawn exactly as in [`gradflow.perturb.gaussian`][] and then kept only on
    `outputs`, so with every output chosen the two functions agree bit for bit.

    **Arguments:**

    - `key`: a JAX PRNG key.
    - `true_reward`: `r_G`, shape `(outputs,)` or `(prompts, outputs)`.
    - `scale`: the noise standard deviation, `> 0`.
    - `n`: how many proxies (a Python int `>= 1`).
    - `outputs`: an output index or a sequence of distinct ones.
    - `prompt`: for a 2-D true reward, perturb only this prompt (`None`: every prompt).

    **Returns:** shape `(n,) + true_reward.shape`.
    """
    r = _true_reward(true_reward)
    key = _key(key)
    scale = _scale(scale, r)
    n = v.positive_int("n", n)
    mask = _mask(r.shape, _indices("outputs", outputs, r.shape[-1]), _prompt(prompt, r))
    return _noise(key, r, scale, jnp.asarray(mask), n)


# --------------------------------------------------------------------------- grids


def _set_or_add(r, mask: np.ndarray, values, mode: str):
    vals = _lead(values.astype(r.dtype), r.ndim)
    new = vals if mode == "set" else r[None] + vals
    return jnp.where(mask[None], new, r[None])


def _mode(mode) -> str:
    if mode not in ("set", "add"):
        raise ValueError(f"`mode` must be 'set' or 'add'; got {mode!r}.")
    return mode


def shift_grid(true_reward, output, values, mode="set", prompt=None) -> Float[Array, " batch *reward"]:
    """One output's reward swept over a grid of values, every other output untouched.

    **Arguments:**

    - `true_reward`: `r_G`, shape `(outputs,)` or `(prompts, outputs)`.
    - `output`: the index of the output to move.
    - `values`: the grid, shape `(batch,)` (a scalar is a grid of one).
    - `mode`: `"set"` (proxy `b` has `r_P[output] = values[b]`) or `"add"`
      (`r_P[output] = r_G[output] + values[b]`).
    - `prompt`: for a 2-D true reward, change only this prompt (`None`: every prompt).

    **Returns:** shape `(batch,) + true_reward.shape`.
    """
    r = _true_reward(true_reward)
    i = _index("output", output, r.shape[-1])
    mask = _mask(r.shape, (i,), _prompt(prompt, r))
    return _set_or_add(r, mask, _values("values", values), _mode(mode))


def grid_2d(
    true_reward, outputs, values_i, values_j, mode="set", prompt=None
) -> Float[Array, " batch *reward"]:
    """Two outputs' rewards swept over the outer product of two grids.

    The batch is in row-major order: proxy `b = a * len(values_j) + c` gives output
    `outputs[0]` the value `values_i[a]` and output `outputs[1]` the value `values_j[c]`.
    So a per-proxy result `x` of shape `(len_i * len_j, ...)` becomes a map with
    `x.reshape(len(values_i), len(values_j), ...)` (rows indexed by `values_i`), and
    [`gradflow.perturb.grid_2d_points`][] lists the `(value_i, value_j)` pairs in the
    same order.

    **Arguments:**

    - `true_reward`: `r_G`, shape `(outputs,)` or `(prompts, outputs)`.
    - `outputs`: a pair `(i, j)` of distinct output indices.
    - `values_i`, `values_j`: the grids for outputs `i` and `j`, 1-D.
    - `mode`: `"set"` or `"add"`, as in [`gradflow.perturb.shift_grid`][].
    - `prompt`: for a 2-D true reward, change only this prompt (`None`: every prompt).

    **Returns:** shape `(len(values_i) * len(values_j),) + true_reward.shape`.
    """
    r = _true_reward(true_reward)
    try:
        pair = tuple(outputs)
    except TypeError as e:
        raise ValueError(f"`outputs` must be a pair (i, j) of output indices; got {outputs!r}.") from e
    if len(pair) != 2:
        raise ValueError(f"`outputs` must be a pair (i, j) of output indices; got {outputs!r}.")
    i, j = _indices("outputs", pair, r.shape[-1])
    prompt = _prompt(prompt, r)
    mode = _mode(mode)
    pts = grid_2d_points(values_i, values_j)
    out = _set_or_add(r, _mask(r.shape, (i,), prompt), pts[:, 0], mode)
    mask_j = _mask(r.shape, (j,), prompt)
    vals_j = _lead(pts[:, 1].astype(r.dtype), r.ndim)
    return jnp.where(mask_j[None], vals_j if mode == "set" else out + vals_j, out)


def grid_2d_points(values_i, values_j) -> Float[Array, "batch 2"]:
    """The `(value_i, value_j)` pairs of [`gradflow.perturb.grid_2d`][], in its batch
    order (row-major: `values_j` varies fastest).

    **Arguments:**

    - `values_i`, `values_j`: the two grids, 1-D.

    **Returns:** shape `(len(values_i) * len(values_j), 2)`.
    """
    vi = _values("values_i", values_i)
    vj = _values("values_j", values_j)
    dt = jnp.result_type(vi, vj)
    a, b = vi.shape[0], vj.shape[0]
    return jnp.stack([jnp.repeat(vi.astype(dt), b), jnp.tile(vj.astype(dt), a)], axis=-1)


def demote(true_reward, output, value, prompt=None) -> Float[Array, " batch *reward"]:
    """Lower one output's reward to `value` (one proxy per value).

    Like `shift_grid(true_reward, output, value, mode="set")`, but each value must not
    exceed the output's true reward (of every affected prompt): this family only
    demotes. Use [`gradflow.perturb.shift_grid`][] to raise an output.

    **Arguments:**

    - `true_reward`: `r_G`, shape `(outputs,)` or `(prompts, outputs)`.
    - `output`: the index of the output to demote.
    - `value`: the new reward, a scalar (a batch of one) or shape `(batch,)`.
    - `prompt`: for a 2-D true reward, demote it in this prompt only (`None`: every prompt).

    **Returns:** shape `(batch,) + true_reward.shape`.
    """
    r = _true_reward(true_reward)
    i = _index("output", output, r.shape[-1])
    prompt = _prompt(prompt, r)
    vals = _values("value", value)
    current = r[..., i] if prompt is None else r[prompt, i]
    lowest = jnp.min(current).astype(vals.dtype)
    vals = v.check(
        vals,
        lambda a: a > lowest,
        f"`value` must not exceed the true reward of output {i} (demote only lowers an "
        "output; use shift_grid to raise one).",
    )
    return _set_or_add(r, _mask(r.shape, (i,), prompt), vals, "set")


# --------------------------------------------------------------------------- swaps


def swaps(true_reward, pairs=None, prompt=None) -> Float[Array, " batch *reward"]:
    """Swap the rewards of two outputs, one proxy per pair.

    **Arguments:**

    - `true_reward`: `r_G`, shape `(outputs,)` or `(prompts, outputs)`.
    - `pairs`: a sequence of `(i, j)` pairs of distinct output indices; `None` means every
      pair `i < j`, in lexicographic order `(0, 1), (0, 2), ..., (1, 2), ...`.
    - `prompt`: for a 2-D true reward, swap in this prompt only (`None`: every prompt).

    **Returns:** shape `(len(pairs),) + true_reward.shape`; proxy `b` is `r_G` with the
    entries of `pairs[b]` exchanged.
    """
    r = _true_reward(true_reward)
    k = r.shape[-1]
    prompt = _prompt(prompt, r)
    if pairs is None:
        pairs = [(i, j) for i in range(k) for j in range(i + 1, k)]
    try:
        pairs = [tuple(p) for p in pairs]
    except TypeError as e:
        raise ValueError(f"`pairs` must be a sequence of (i, j) pairs of output indices; got {pairs!r}.") from e
    if not pairs:
        raise ValueError("`pairs` must hold at least one (i, j) pair.")
    idx = np.broadcast_to(np.arange(k), (len(pairs),) + r.shape).copy()
    rows = slice(None) if prompt is None else prompt
    for b, p in enumerate(pairs):
        if len(p) != 2:
            raise ValueError(f"`pairs` must hold (i, j) pairs of output indices; got {p!r}.")
        i, j = (_index("pairs", q, k) for q in p)
        if i == j:
            raise ValueError(f"`pairs` must pair two distinct outputs; got {p!r}.")
        if r.ndim == 1:
            idx[b, i], idx[b, j] = j, i
        else:
            idx[b, rows, i], idx[b, rows, j] = j, i
    batch = jnp.broadcast_to(r[None], idx.shape)
    return jnp.take_along_axis(batch, jnp.asarray(idx), axis=-1)


# --------------------------------------------------------------------------- monotone


def monotone(key, true_reward, n, *, knots=4, min_slope=0.1) -> Float[Array, " batch *reward"]:
    """Random strictly increasing transforms of the reward: every proxy ranks the
    outputs exactly as the true reward does (ties included), only the gaps change.

    With `lo, hi` the smallest and largest entries of `r_G` and `z = (r - lo) / (hi - lo)`
    in `[0, 1]`, each proxy is `r_P = lo + (hi - lo) * h(z)` with

        h(z) = min_slope * z + (1 - min_slope) * sum_k w_k S_k(z),

    where `S_k` is a logistic step rescaled to rise from 0 at `z = 0` to 1 at `z = 1`,
    with a random centre in `[0, 1]` and a random width (log-uniform in `[0.02, 0.5]`),
    and the weights `w_k >= 0` sum to 1 (uniform on the simplex). So `h(0) = 0`,
    `h(1) = 1` (the reward's range is kept, up to rounding) and `h' >= min_slope`: every
    gap between two rewards is at least `min_slope` times the true gap. The same
    transform is applied to every prompt, so orderings across prompts are kept too.

    Strict monotonicity holds in exact arithmetic; in floating point, rewards closer
    than the transform's rounding error (a few ulps of the range) could become tied.

    **Arguments:**

    - `key`: a JAX PRNG key.
    - `true_reward`: `r_G`, shape `(outputs,)` or `(prompts, outputs)`.
    - `n`: how many proxies (a Python int `>= 1`).
    - `knots`: how many logistic steps `S_k` (a Python int `>= 1`).
    - `min_slope`: in `(0, 1]`; `1` gives the identity, smaller values stronger
      distortions.

    **Returns:** shape `(n,) + true_reward.shape`.
    """
    r = _true_reward(true_reward)
    key = _key(key)
    n = v.positive_int("n", n)
    knots = v.positive_int("knots", knots)
    slope = v.as_float_array("min_slope", min_slope, ndim=(0,))
    slope = v.check(slope, lambda a: (a <= 0) | (a > 1), f"`min_slope` must lie in (0, 1]; got {min_slope}.")
    return _monotone(key, r, slope.astype(r.dtype), n, knots)


@functools.partial(jax.jit, static_argnames=("n", "knots"))
def _monotone(key, r, slope, n: int, knots: int):
    lo, hi = jnp.min(r), jnp.max(r)
    span = hi - lo
    safe = jnp.where(span > 0, span, jnp.ones_like(span))
    z = (r - lo) / safe
    kshape = (1,) * r.ndim + (knots,)

    def one(k):
        u = _draw(jax.random.uniform, k, (3,) + kshape, r.dtype)
        centre = u[0]
        width = jnp.exp(math.log(0.02) + (math.log(0.5) - math.log(0.02)) * u[1])
        w = -jnp.log1p(-u[2])  # Exp(1); normalised: uniform on the simplex
        total = jnp.sum(w, axis=-1, keepdims=True)
        w = jnp.where(total > 0, w / jnp.where(total > 0, total, 1), 1 / knots)
        s0 = jax.nn.sigmoid(-centre / width)
        s1 = jax.nn.sigmoid((1 - centre) / width)
        steps = (jax.nn.sigmoid((z[..., None] - centre) / width) - s0) / (s1 - s0)
        h = slope * z + (1 - slope) * jnp.sum(w * steps, axis=-1)
        return lo + span * h

    return _per_sample(key, n, one)


# --------------------------------------------------------------------------- accuracy

# Up to this many outputs, `with_accuracy` samples uniformly (via a table of Mahonian
# numbers, O(outputs^3) in size); above it, it still hits the accuracy exactly but picks
# among the feasible choices uniformly at each step (not uniform over proxies).
_UNIFORM_MAX_OUTPUTS = 64


@functools.cache
def _log_mahonian(k: int) -> np.ndarray:
    """`log M[m, d]`: the log of the number of permutations of `m` items with `d`
    inversions, for `m = 0..k`, `d = 0..k(k-1)/2` (`-inf` where there are none)."""
    top = k * (k - 1) // 2
    rows = [[1] + [0] * top]
    for m in range(1, k + 1):
        prev = rows[-1]
        prefix = [0]
        for x in prev:
            prefix.append(prefix[-1] + x)
        # M[m, d] = sum_{l=0}^{min(d, m-1)} M[m-1, d-l]
        rows.append([prefix[d + 1] - prefix[max(0, d - m + 1)] for d in range(top + 1)])
    return np.array([[math.log(x) if x > 0 else -np.inf for x in row] for row in rows])


def _one_accuracy(gumbel, r, acc, log_m):
    """One proxy for one prompt `r` (shape `(K,)`) with the nearest achievable accuracy.

    Builds the proxy ranking from the lowest proxy rank up. Placing an output creates one
    discordant pair with each not-yet-placed output of strictly lower true reward; an
    output is *feasible* when the discordant pairs left over can still be realised by the
    rest (every count from 0 to the number of distinct-value pairs left can, since the
    inversion counts of a multiset permutation have no gaps). Feasible outputs are
    weighted by the number of ways to complete the ranking (exact without ties), so
    without ties the ranking is uniform among those with the target accuracy.
    """
    k = r.shape[0]
    order = jnp.argsort(r, stable=True)
    s = r[order]
    neq = (s[:, None] != s[None, :]).astype(jnp.int32)
    less = (s[None, :] < s[:, None]).astype(jnp.int32)  # less[i, j]: s_j < s_i
    n_pairs = jnp.sum(neq) // 2
    correct = jnp.round(acc * n_pairs.astype(acc.dtype)).astype(jnp.int32)
    top = k * (k - 1) // 2

    def step(carry, x):
        avail, left = carry
        a, g = x
        av = avail.astype(jnp.int32)
        inv = less @ av  # discordant pairs created by placing each output now
        pairs_now = (av @ neq @ av) // 2
        max_after = pairs_now - neq @ av  # distinct-value pairs left after placing it
        rem = left - inv
        feasible = avail & (rem >= 0) & (rem <= max_after)
        if log_m is None:
            weight = jnp.zeros((k,), r.dtype)
        else:
            weight = log_m[k - 1 - a, jnp.clip(rem, 0, top)]
        choice = jnp.argmax(jnp.where(feasible, weight + g, -jnp.inf))  # Gumbel-max sampling
        return (avail.at[choice].set(False), left - inv[choice]), choice

    init = (jnp.ones((k,), bool), n_pairs - correct)
    _, chosen = jax.lax.scan(step, init, (jnp.arange(k), gumbel))
    # Proxy values by proxy rank: the sorted true values, made strictly increasing (pulled
    # 10% of the way to evenly spaced levels) when the true reward has ties.
    levels = s[0] + (s[-1] - s[0]) * jnp.arange(k, dtype=r.dtype) / (k - 1)
    has_ties = jnp.any(s[1:] == s[:-1])
    values = jnp.where(has_ties, 0.9 * s + 0.1 * levels, s)
    return jnp.zeros_like(r).at[order[chosen]].set(values)


def with_accuracy(key, true_reward, accuracy, n) -> Float[Array, " batch *reward"]:
    """Random proxies with a prescribed pairwise ranking accuracy, hit exactly.

    The accuracy of a proxy on a prompt is the fraction of its output pairs with distinct
    true rewards that the proxy orders the same way (strictly): with `N` such pairs, the
    achievable accuracies are `0, 1/N, ..., 1`. Every proxy has exactly the achievable
    accuracy nearest to `accuracy` (`round(accuracy * N) / N`, halves rounded to even), on
    every prompt separately (so a 2-D true reward gets it per prompt, not only pooled).

    Construction: a ranking of the outputs with the required number of discordant pairs
    (a Lehmer-code-style construction, relative to the true ranking), given the true
    reward's own values in sorted order (so without ties the proxy is a permutation of
    `r_G`; with ties the values are pulled 10% of the way towards evenly spaced levels
    between the true minimum and maximum, which makes them distinct). Without ties, for up
    to 64 outputs, the ranking is uniform over all rankings with that accuracy; with ties
    (or more outputs) every such ranking is possible but they are not equally likely.
    `accuracy = 1` gives `r_G` itself (without ties); `accuracy = 0` reverses its ranking.

    **Arguments:**

    - `key`: a JAX PRNG key.
    - `true_reward`: `r_G`, shape `(outputs,)` or `(prompts, outputs)`; every prompt needs
      at least two distinct values.
    - `accuracy`: in `[0, 1]` (may be traced, e.g. vmapped over).
    - `n`: how many proxies (a Python int `>= 1`).

    **Returns:** shape `(n,) + true_reward.shape`.
    """
    r = _true_reward(true_reward)
    key = _key(key)
    n = v.positive_int("n", n)
    acc = v.as_float_array("accuracy", accuracy, ndim=(0,))
    acc = v.check(acc, lambda a: (a < 0) | (a > 1), f"`accuracy` must lie in [0, 1]; got {accuracy}.")
    r = v.check(
        r,
        lambda a: jnp.all(a == a[..., :1], axis=-1),
        "`true_reward` needs at least two distinct values in every prompt (the ranking "
        "accuracy of a proxy is undefined otherwise).",
    )
    return _accuracy(key, r, acc.astype(r.dtype), n)


@functools.partial(jax.jit, static_argnames="n")
def _accuracy(key, r, acc, n: int):
    k = r.shape[-1]
    log_m = jnp.asarray(_log_mahonian(k), r.dtype) if k <= _UNIFORM_MAX_OUTPUTS else None
    rows = r.reshape(-1, k)

    def one(kk):
        gumbel = _draw(jax.random.gumbel, kk, rows.shape + (k,), r.dtype)  # (prompts, steps, outputs)
        out = jax.vmap(_one_accuracy, in_axes=(0, 0, None, None))(gumbel, rows, acc, log_m)
        return out.reshape(r.shape)

    return _per_sample(key, n, one)


# --------------------------------------------------------------------------- features


def feature_bias(true_reward, features, direction, scales) -> Float[Array, " batch *reward"]:
    """A bias along a feature direction: `r_P(y) = r_G(y) + s * <phi(y), d>`, one proxy
    per scale `s` (the log-linear case: a reward model that over-rewards a feature).

    With one-hot features (`features = eye(outputs)`) and `direction = e_i` this is
    `shift_grid(true_reward, i, scales, mode="add")`.

    **Arguments:**

    - `true_reward`: `r_G`, shape `(outputs,)` or `(prompts, outputs)`.
    - `features`: `phi`, shape `(outputs, dim)` (shared by every prompt) or
      `(prompts, outputs, dim)` (for a 2-D true reward).
    - `direction`: `d`, shape `(dim,)`.
    - `scales`: the bias strengths, shape `(batch,)` (a scalar is a batch of one).

    **Returns:** shape `(batch,) + true_reward.shape`.
    """
    r = _true_reward(true_reward)
    phi = v.as_float_array("features", features, ndim=(2, 3))
    if phi.shape[:-1] != r.shape[-(phi.ndim - 1) :] or phi.ndim - 1 > r.ndim:
        raise ValueError(
            f"`features` must have shape ({r.shape[-1]}, dim) or {r.shape + ('dim',)} to match "
            f"`true_reward` {tuple(r.shape)}; got {tuple(phi.shape)}."
        )
    d = v.as_float_array("direction", direction, ndim=(1,))
    if d.shape != phi.shape[-1:]:
        raise ValueError(
            f"`direction` must have shape ({phi.shape[-1]},), the feature dimension; got {tuple(d.shape)}."
        )
    s = _values("scales", scales)
    bias = jnp.broadcast_to((phi @ d).astype(r.dtype), r.shape)
    return r[None] + _lead(s.astype(r.dtype), r.ndim) * bias[None]


# --------------------------------------------------------------------------- user batches


def as_batch(rewards, like) -> Float[Array, " batch *reward"]:
    """Validate a batch of proxy rewards built by hand.

    **Arguments:**

    - `rewards`: shape `(batch,) + like.shape`, finite, `batch >= 1`.
    - `like`: the true reward the batch perturbs, shape `(outputs,)` or
      `(prompts, outputs)`.

    **Returns:** `rewards` as a floating JAX array.
    """
    ref = _true_reward(like, name="like")
    b = v.as_float_array("rewards", rewards)
    if b.ndim != ref.ndim + 1 or b.shape[1:] != ref.shape or b.shape[0] < 1:
        raise ValueError(
            f"`rewards` must have shape (batch,) + {tuple(ref.shape)} (a leading batch axis, "
            f"then the shape of `like`), batch >= 1; got {tuple(b.shape)}."
        )
    return b
