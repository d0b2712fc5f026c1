"""Reward-model metrics: accuracy, harm-aware accuracy, and teacher quality.

Evaluate a proxy reward `r_P` (a reward model) on preference data ordered by the
ground truth `r_G`: in a pair `(y_w, y_l)` the *chosen* output `y_w` is the one the ground
truth prefers, `r_G(y_w) > r_G(y_l)`, and the *rejected* one is `y_l`.

- [`acc`][gradflow.metrics.acc]: the fraction of pairs with `r_P(y_w) > r_P(y_l)`.
- [`hacc`][gradflow.metrics.hacc] (harm-aware): a misranked pair is also fine when
  `r_P(y_l)` is below the policy's mean proxy reward on its prompt, since under policy
  gradient `y_l` then loses probability anyway.
- `*_w` variants weight each pair by `pi(y_w) pi(y_l)`, normalised over all pairs
  (computed in log space).
- `one_vs_many_*` variants compare one chosen output with all rejected ones of a prompt.
- [`mean_reward`][gradflow.metrics.mean_reward],
  [`reward_variance`][gradflow.metrics.reward_variance] and
  [`true_reward_rate`][gradflow.metrics.true_reward_rate] describe the proxy as a
  *teacher* for a given policy, from its log-probabilities.

Every function is pure JAX (usable under `jax.jit` and `jax.vmap`) and returns JAX
arrays. Pairwise inputs have shape `(prompts, pairs)`, or `(pairs,)` for a single prompt;
an optional boolean `mask` of the same shape handles ragged numbers of pairs per prompt
(masked-out entries are ignored, may hold any value, and get zero weight). Bad input
raises a `ValueError` naming the argument (at run time, via `equinox.error_if`, when the
input is traced).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, PRNGKeyArray

from ._util import validate as v
from .policies._base import prompt_weights as _weights

__all__ = [
    "pair_weights",
    "acc",
    "acc_w",
    "hacc",
    "hacc_w",
    "one_vs_many_weights",
    "one_vs_many_acc",
    "one_vs_many_acc_w",
    "one_vs_many_hacc",
    "one_vs_many_hacc_w",
    "mean_reward",
    "sampled_mean_reward",
    "reward_variance",
    "true_reward_rate",
]

# How far `logsumexp(logp)` may be from 0 for `logp` to count as normalised.
_LOGP_ATOL = 1e-4


# ---------------------------------------------------------------------------------------
# Input validation.
#
# Shapes are checked in Python; values by small jitted predicates (through
# `_validate.check`, so traced inputs are checked at run time). Inputs keep their shapes
# (reshaping happens inside the jitted kernels) and absent optional inputs are NumPy
# placeholders: an eager call then compiles one kernel per shape and dtype, rather than
# one XLA computation per operation.
# ---------------------------------------------------------------------------------------


def _convert(name: str, x, ndim: tuple[int, ...]) -> Array:
    """A floating JAX array of one of the ranks `ndim` (values are checked later)."""
    try:
        arr = jnp.asarray(x)
    except TypeError as e:
        raise ValueError(f"`{name}` must be an array of numbers; got {x!r}.") from e
    if not jnp.issubdtype(arr.dtype, jnp.floating):
        if not (jnp.issubdtype(arr.dtype, jnp.integer) or arr.dtype == jnp.bool_):
            raise ValueError(f"`{name}` must be an array of numbers; got dtype {arr.dtype}.")
        arr = arr.astype(jnp.result_type(float))
    if arr.ndim not in ndim:
        want = " or ".join(f"{d}-D" for d in ndim)
        raise ValueError(f"`{name}` must be {want}; got an array of shape {tuple(arr.shape)}.")
    return arr


def _same_shape(name: str, arr: Array, shape: tuple[int, ...], like: str) -> None:
    if tuple(arr.shape) != tuple(shape):
        raise ValueError(
            f"`{name}` must have the shape of `{like}`, {tuple(shape)}; got {tuple(arr.shape)}."
        )


@jax.jit
def _any_nonfinite(a: Array, keep: Array) -> Bool[Array, ""]:
    return jnp.any(keep & ~jnp.isfinite(a))


@jax.jit
def _none_kept(m: Array) -> Bool[Array, ""]:
    return ~jnp.any(m)


@jax.jit
def _some_row_empty(m: Array) -> Bool[Array, ""]:
    return ~jnp.all(jnp.any(m, axis=-1))


@jax.jit
def _unnormalised(lp: Array) -> Bool[Array, ""]:
    return jnp.any(jnp.abs(jax.nn.logsumexp(lp, axis=-1)) > _LOGP_ATOL)


def _finite(name: str, arr: Array, keep=None, masked: bool = False) -> Array:
    """Reject non-finite entries (only those that `keep` keeps)."""
    keep = np.ones(arr.shape, bool) if keep is None else keep
    where = " where `mask` is True" if masked else ""
    return v.check(
        arr, lambda a: _any_nonfinite(a, keep), f"`{name}` must be finite (no NaN or inf){where}."
    )


def _mask(mask, shape: tuple[int, ...], like: str, bad, message: str):
    """The boolean mask (all-`True` NumPy placeholder when `None`) and whether one was given."""
    if mask is None:
        return np.ones(shape, bool), False
    m = jnp.asarray(mask)
    if m.dtype != jnp.bool_:
        raise ValueError(f"`mask` must be a boolean array; got dtype {m.dtype}.")
    _same_shape("mask", m, shape, like)
    return v.check(m, bad, message), True


def _prompt_values(name: str, x, n_prompts: int, single: bool) -> Array:
    """A per-prompt array: shape `(prompts,)`, or a scalar (or `(1,)`) for one prompt."""
    arr = _convert(name, x, (0, 1))
    if not (arr.shape == (n_prompts,) or (single and arr.ndim == 0)):
        want = "a scalar or shape (1,)" if single else f"shape ({n_prompts},)"
        raise ValueError(
            f"`{name}` must hold one value per prompt, {want}; got shape {tuple(arr.shape)}."
        )
    return _finite(name, arr)


def _pair_inputs(
    r_chosen, r_rejected, mask, *, mean=None, logp=None, names=("r_chosen", "r_rejected")
):
    """Validate pairwise inputs, all of one shape `(prompts, pairs)` or `(pairs,)`.
    Returns `(r_chosen, r_rejected, mean, logp_chosen, logp_rejected, keep)` with
    placeholders (zero means and log-probabilities, an all-`True` mask) for absent ones.
    `names` are the names of the first two arguments in error messages."""
    first, second = names
    rc = _convert(first, r_chosen, (1, 2))
    named = {second: r_rejected}
    if logp is not None:
        named.update(logp_chosen=logp[0], logp_rejected=logp[1])
    arrays = {first: rc}
    for name, x in named.items():
        arrays[name] = _convert(name, x, (1, 2))
        _same_shape(name, arrays[name], rc.shape, first)
    if rc.shape[-1] == 0:
        raise ValueError(f"`{first}` must hold at least one pair; got shape {tuple(rc.shape)}.")
    keep, masked = _mask(mask, rc.shape, first, _none_kept, "`mask` must keep at least one pair.")
    arrays = list(_finite(n, a, keep, masked) for n, a in arrays.items())
    n_prompts = 1 if rc.ndim == 1 else rc.shape[0]
    if mean is None:
        mu = np.zeros((n_prompts,), rc.dtype)
    else:
        mu = _prompt_values("mean_reward", mean, n_prompts, rc.ndim == 1)
    if logp is None:
        arrays += [np.zeros(rc.shape, rc.dtype)] * 2
    return arrays[0], arrays[1], mu, arrays[2], arrays[3], keep


def _one_vs_many_inputs(
    r_chosen, r_rejected, mask, *, mean=None, logp=None, names=("r_chosen", "r_rejected")
):
    """Validate one-vs-many inputs: chosen arrays of shape `(prompts,)` (or scalars),
    rejected arrays of shape `(prompts, rejected)` (or `(rejected,)`). Returns
    `(r_chosen, r_rejected, mean, logp_chosen, logp_rejected, keep)` with placeholders.
    `names` are the names of the first two arguments in error messages."""
    first, second = names
    rr = _convert(second, r_rejected, (1, 2))
    shape = rr.shape
    if shape[-1] == 0:
        raise ValueError(
            f"`{second}` must hold at least one rejected output; got shape {tuple(shape)}."
        )
    rejected = {second: rr}
    chosen = {first: r_chosen}
    if logp is not None:
        chosen["logp_chosen"] = logp[0]
        rejected["logp_rejected"] = _convert("logp_rejected", logp[1], (1, 2))
        _same_shape("logp_rejected", rejected["logp_rejected"], shape, second)
    for name, x in chosen.items():
        chosen[name] = arr = _convert(name, x, (0, 1))
        if tuple(arr.shape) != tuple(shape[:-1]):
            raise ValueError(
                f"`{name}` must hold one chosen output per prompt, shape {tuple(shape[:-1])} "
                f"to match `{second}` {tuple(shape)}; got {tuple(arr.shape)}."
            )
    keep, masked = _mask(
        mask, shape, second, _some_row_empty,
        "`mask` must keep at least one rejected output for every prompt.",
    )
    cho = [_finite(n, a) for n, a in chosen.items()]
    rej = [_finite(n, a, keep, masked) for n, a in rejected.items()]
    n_prompts = 1 if rr.ndim == 1 else shape[0]
    if mean is None:
        mu = np.zeros((n_prompts,), rr.dtype)
    else:
        mu = _prompt_values("mean_reward", mean, n_prompts, rr.ndim == 1)
    if logp is None:
        cho.append(np.zeros(shape[:-1], rr.dtype))
        rej.append(np.zeros(shape, rr.dtype))
    return cho[0], rej[0], mu, cho[1], rej[1], keep


def _policy_inputs(logp, rewards: dict):
    """Validate `logp` (normalised log-probabilities over the last axis, `(outputs,)` or
    `(prompts, outputs)`) and rewards of the same shape."""
    lp = _convert("logp", logp, (1, 2))
    if lp.shape[-1] == 0:
        raise ValueError(f"`logp` must hold at least one output; got shape {tuple(lp.shape)}.")
    out = []
    for name, r in rewards.items():
        arr = _convert(name, r, (1, 2))
        _same_shape(name, arr, lp.shape, "logp")
        out.append(_finite(name, arr))
    lp = _finite("logp", lp)
    lp = v.check(
        lp,
        _unnormalised,
        "`logp` must be normalised log-probabilities: `logsumexp(logp)` over the outputs "
        f"(last) axis must be 0 (tolerance {_LOGP_ATOL}); normalise with "
        "`jax.nn.log_softmax`.",
    )
    return lp, out


# ---------------------------------------------------------------------------------------
# Kernels.
# ---------------------------------------------------------------------------------------


def _softmax_all(
    s: Float[Array, "*shape"], keep: Bool[Array, "*shape"]
) -> Float[Array, "*shape"]:
    """`softmax` over all entries that `keep` keeps (the others get 0), max-shifted."""
    s = jnp.where(keep, s, -jnp.inf)
    e = jnp.exp(s - jnp.max(s))
    return e / jnp.sum(e)


def _kept_max(x: Float[Array, "*shape"], keep: Bool[Array, "*shape"], axis=None):
    """The largest kept entry (along `axis`), 0 where nothing is kept."""
    top = jnp.max(jnp.where(keep, x, -jnp.inf), axis=axis)
    return jnp.where(jnp.isfinite(top), top, 0.0)


def _fraction(ok: Bool[Array, "*shape"], keep: Bool[Array, "*shape"], dtype) -> Float[Array, ""]:
    return jnp.sum(ok & keep, dtype=dtype) / jnp.sum(keep, dtype=dtype)


def _pair_weights_2d(
    lc: Float[Array, "prompts pairs"],
    lr: Float[Array, "prompts pairs"],
    keep: Bool[Array, "prompts pairs"],
) -> Float[Array, "prompts pairs"]:
    # Shift each log-probability by its own maximum before adding: near -2000 a float32
    # sum `lc + lr` would round to ~2e-4, the differences are exact (Sterbenz).
    s = (lc - _kept_max(lc, keep)) + (lr - _kept_max(lr, keep))
    return _softmax_all(jnp.where(keep, s, 0.0), keep)


def _prompt_weights_1d(
    lc: Float[Array, " prompts"],
    lr: Float[Array, "prompts rejected"],
    keep: Bool[Array, "prompts rejected"],
) -> Float[Array, " prompts"]:
    # s_x = log pi(y_w|x) + sum_j log pi(y_l,j|x), assembled from small, exactly computed
    # differences (as in `_pair_weights_2d`): shift the chosen log-probabilities by their
    # maximum and each rejected column j by its maximum c_j; the shifts add up to
    # K_x = sum_{kept j} c_j, which is the same number for prompts with the same kept
    # columns and then cancels exactly in K_x - max K.
    col = _kept_max(lr, keep, axis=0)
    small = (lc - jnp.max(lc)) + jnp.sum(jnp.where(keep, lr - col[None, :], 0.0), axis=-1)
    shift = jnp.sum(jnp.where(keep, col[None, :], 0.0), axis=-1)
    s = small + (shift - jnp.max(shift))
    return _softmax_all(s, jnp.ones(s.shape, bool))


@jax.jit
def _pair_weights(lc, lr, keep):
    shape = lc.shape
    lc, lr, keep = jnp.atleast_2d(lc, lr, keep)
    return jnp.reshape(_pair_weights_2d(lc, lr, keep), shape)


@jax.jit
def _prompt_weights(lc, lr, keep):
    shape = lc.shape
    lc = jnp.reshape(lc, (-1,))
    lr, keep = jnp.atleast_2d(lr, keep)
    return jnp.reshape(_prompt_weights_1d(lc, lr, keep), shape)


@jax.jit
def _pair_metrics(rc, rr, mu, lc, lr, keep):
    """`(acc, hacc, acc_w, hacc_w)`: all four from one compiled kernel (under an outer
    `jit` the unused ones are dead code)."""
    rc, rr, lc, lr, keep = jnp.atleast_2d(rc, rr, lc, lr, keep)
    correct = rc > rr  # strictly: ties are errors
    fine = correct | (rr < jnp.reshape(mu, (-1,))[:, None])
    w = _pair_weights_2d(lc, lr, keep)
    return (
        _fraction(correct, keep, rc.dtype),
        _fraction(fine, keep, rc.dtype),
        jnp.sum(jnp.where(correct, w, 0.0)),
        jnp.sum(jnp.where(fine, w, 0.0)),
    )


@jax.jit
def _one_vs_many_metrics(rc, rr, mu, lc, lr, keep):
    """`(acc, hacc, acc_w, hacc_w)` one vs many."""
    rc, lc, mu = (jnp.reshape(a, (-1,)) for a in (rc, lc, mu))
    rr, lr, keep = jnp.atleast_2d(rr, lr, keep)
    top = jnp.max(jnp.where(keep, rr, -jnp.inf), axis=-1)
    correct = rc > top
    fine = correct | (top < mu)
    w = _prompt_weights_1d(lc, lr, keep)
    return (
        jnp.mean(correct, dtype=rc.dtype),
        jnp.mean(fine, dtype=rc.dtype),
        jnp.sum(jnp.where(correct, w, 0.0)),
        jnp.sum(jnp.where(fine, w, 0.0)),
    )


@jax.jit
def _mean(lp, r):
    return jnp.sum(jnp.exp(lp) * r, axis=-1)


@functools.partial(jax.jit, static_argnames="n")
def _sampled_mean(key, lp, r, n):
    lp2, r2 = jnp.atleast_2d(lp, r)
    idx = jax.random.categorical(key, lp2, axis=-1, shape=(n, lp2.shape[0]))
    rows = jnp.arange(lp2.shape[0])[None, :]
    return jnp.reshape(jnp.mean(r2[rows, idx], axis=0), lp.shape[:-1])


@jax.jit
def _variance(lp, r, w):
    lp, r = jnp.atleast_2d(lp, r)
    p = jnp.exp(lp)
    mu = jnp.sum(p * r, axis=-1, keepdims=True)
    return jnp.sum(w * jnp.sum(p * (r - mu) ** 2, axis=-1))


@jax.jit
def _rate(lp, rp, rg, w):
    lp, rp, rg = jnp.atleast_2d(lp, rp, rg)
    p = jnp.exp(lp)
    ap = rp - jnp.sum(p * rp, axis=-1, keepdims=True)
    ag = rg - jnp.sum(p * rg, axis=-1, keepdims=True)
    return jnp.sum(w**2 * jnp.sum(p**2 * ap * ag, axis=-1))


# ---------------------------------------------------------------------------------------
# Pairwise metrics.
# ---------------------------------------------------------------------------------------


def pair_weights(logp_chosen, logp_rejected, mask=None) -> Float[Array, "*prompts pairs"]:
    r"""The weight of each preference pair in the weighted metrics: proportional to
    `pi(y_w) pi(y_l)` and normalised over *all* pairs of all prompts,

    `omega_i = exp(s_i - max_j s_j) / sum_k exp(s_k - max_j s_j)`,
    `s_i = log pi(y_w,i) + log pi(y_l,i)`.

    Computed in log space (each log-probability shifted by its own maximum, then the
    sum max-shifted), so the weights stay finite, sum to 1 and keep float32 accuracy even
    for log-probabilities of order `-2000`, where `pi(y_w) pi(y_l)` itself underflows
    to 0.

    **Arguments:**

    - `logp_chosen`: `log pi(y_w | x)`, shape `(prompts, pairs)` or `(pairs,)`.
    - `logp_rejected`: `log pi(y_l | x)`, the same shape.
    - `mask`: optional boolean array of the same shape; `False` marks padding (weight 0).

    **Returns:** non-negative weights of the input shape, summing to 1.
    """
    lc, lr, _, _, _, keep = _pair_inputs(
        logp_chosen, logp_rejected, mask, names=("logp_chosen", "logp_rejected")
    )
    return _pair_weights(lc, lr, keep)


def acc(r_chosen, r_rejected, mask=None) -> Float[Array, ""]:
    r"""Ranking accuracy: the fraction of preference pairs that the proxy orders like the
    ground truth,

    `Acc = (1 / N) sum_i 1[r_P(y_w,i) > r_P(y_l,i)]`

    over all `N` pairs of all prompts. Ties count as errors.

    **Arguments:**

    - `r_chosen`: proxy reward `r_P(y_w)` of the chosen (ground-truth preferred) outputs,
      shape `(prompts, pairs)` or `(pairs,)`.
    - `r_rejected`: proxy reward `r_P(y_l)` of the rejected outputs, the same shape.
    - `mask`: optional boolean array of the same shape; `False` marks padding.

    **Returns:** a float scalar in `[0, 1]`.
    """
    return _pair_metrics(*_pair_inputs(r_chosen, r_rejected, mask))[0]


def acc_w(r_chosen, r_rejected, logp_chosen, logp_rejected, mask=None) -> Float[Array, ""]:
    r"""Probability-weighted ranking accuracy,

    `Acc-W = sum_i omega_i 1[r_P(y_w,i) > r_P(y_l,i)]`,
    `omega_i = pi(y_w,i) pi(y_l,i) / sum_k pi(y_w,k) pi(y_l,k)` over all pairs
    (see [`gradflow.metrics.pair_weights`][]).

    Errors on pairs the policy is unlikely to produce count little. With equal
    log-probabilities everywhere this is [`gradflow.metrics.acc`][].

    **Arguments:**

    - `r_chosen`, `r_rejected`: proxy rewards, shape `(prompts, pairs)` or `(pairs,)`.
    - `logp_chosen`, `logp_rejected`: `log pi(y_w | x)` and `log pi(y_l | x)`, the same shape.
    - `mask`: optional boolean array of the same shape; `False` marks padding.

    **Returns:** a float scalar in `[0, 1]`.
    """
    inputs = _pair_inputs(r_chosen, r_rejected, mask, logp=(logp_chosen, logp_rejected))
    return _pair_metrics(*inputs)[2]


def hacc(r_chosen, r_rejected, mean_reward, mask=None) -> Float[Array, ""]:
    r"""Harm-aware accuracy: a pair counts as fine when the proxy orders it correctly *or*
    when the rejected output's proxy reward is strictly below the policy's mean proxy
    reward `V_P(x)` on its prompt,

    `HAcc = (1 / N) sum_i 1[r_P(y_w,i) > r_P(y_l,i)  or  r_P(y_l,i) < V_P(x_i)]`.

    Under the tabular gradient flow `d theta_y / dt = pi(y) (r_P(y) - V_P)`, an output whose
    proxy reward is below the mean loses probability, so misranking it against a better
    output cannot attract probability to it: the error is not harmful.

    **Arguments:**

    - `r_chosen`, `r_rejected`: proxy rewards, shape `(prompts, pairs)` or `(pairs,)`.
    - `mean_reward`: `V_P(x) = E_pi[r_P(x, .)]`, shape `(prompts,)` (a scalar for 1-D
      inputs), broadcast over the prompt's pairs; see
      [`gradflow.metrics.mean_reward`][].
    - `mask`: optional boolean array of the pairs' shape; `False` marks padding.

    **Returns:** a float scalar in `[0, 1]`, at least [`gradflow.metrics.acc`][].
    """
    return _pair_metrics(*_pair_inputs(r_chosen, r_rejected, mask, mean=mean_reward))[1]


def hacc_w(
    r_chosen, r_rejected, mean_reward, logp_chosen, logp_rejected, mask=None
) -> Float[Array, ""]:
    r"""Probability-weighted harm-aware accuracy,

    `HAcc-W = sum_i omega_i 1[r_P(y_w,i) > r_P(y_l,i)  or  r_P(y_l,i) < V_P(x_i)]`,

    with the weights `omega_i = pi(y_w,i) pi(y_l,i) / sum_k pi(y_w,k) pi(y_l,k)` of
    [`gradflow.metrics.pair_weights`][].

    **Arguments:**

    - `r_chosen`, `r_rejected`: proxy rewards, shape `(prompts, pairs)` or `(pairs,)`.
    - `mean_reward`: `V_P(x)`, shape `(prompts,)` (a scalar for 1-D inputs).
    - `logp_chosen`, `logp_rejected`: `log pi(y_w | x)` and `log pi(y_l | x)`, the pairs'
      shape.
    - `mask`: optional boolean array of the pairs' shape; `False` marks padding.

    **Returns:** a float scalar in `[0, 1]`.
    """
    inputs = _pair_inputs(
        r_chosen, r_rejected, mask, mean=mean_reward, logp=(logp_chosen, logp_rejected)
    )
    return _pair_metrics(*inputs)[3]


def one_vs_many_weights(logp_chosen, logp_rejected, mask=None) -> Float[Array, " *prompts"]:
    r"""The weight of each prompt in the weighted one-vs-many metrics: proportional to
    `pi(y_w) prod_j pi(y_l,j)`, normalised over prompts,

    `omega_x = softmax_x( log pi(y_w | x) + sum_j log pi(y_l,j | x) )` (max-shifted).

    **Arguments:**

    - `logp_chosen`: `log pi(y_w | x)`, shape `(prompts,)` (a scalar for one prompt).
    - `logp_rejected`: `log pi(y_l,j | x)`, shape `(prompts, rejected)` (or `(rejected,)`).
    - `mask`: optional boolean array of `logp_rejected`'s shape; `False` marks padding
      (left out of the product).

    **Returns:** non-negative weights of shape `(prompts,)` (a scalar 1 for one prompt),
    summing to 1.
    """
    lc, lr, _, _, _, keep = _one_vs_many_inputs(
        logp_chosen, logp_rejected, mask, names=("logp_chosen", "logp_rejected")
    )
    return _prompt_weights(lc, lr, keep)


def one_vs_many_acc(r_chosen, r_rejected, mask=None) -> Float[Array, ""]:
    r"""One-vs-many accuracy: a prompt is correct iff its chosen output beats *every*
    rejected one under the proxy; averaged uniformly over prompts,

    `Acc_1vM = (1 / X) sum_x 1[r_P(y_w | x) > max_j r_P(y_l,j | x)]`.

    With one rejected output per prompt this is pairwise [`gradflow.metrics.acc`][].

    **Arguments:**

    - `r_chosen`: `r_P(y_w)`, shape `(prompts,)` (a scalar for one prompt).
    - `r_rejected`: `r_P(y_l,j)`, shape `(prompts, rejected)` (or `(rejected,)`).
    - `mask`: optional boolean array of `r_rejected`'s shape; `False` marks padding. Each
      prompt must keep at least one rejected output.

    **Returns:** a float scalar in `[0, 1]`.
    """
    return _one_vs_many_metrics(*_one_vs_many_inputs(r_chosen, r_rejected, mask))[0]


def one_vs_many_acc_w(
    r_chosen, r_rejected, logp_chosen, logp_rejected, mask=None
) -> Float[Array, ""]:
    r"""Probability-weighted one-vs-many accuracy,

    `Acc-W_1vM = sum_x omega_x 1[r_P(y_w | x) > max_j r_P(y_l,j | x)]`,
    `omega_x` proportional to `pi(y_w | x) prod_j pi(y_l,j | x)`, normalised over prompts
    (see [`gradflow.metrics.one_vs_many_weights`][]).

    **Arguments:**

    - `r_chosen`, `logp_chosen`: shape `(prompts,)` (scalars for one prompt).
    - `r_rejected`, `logp_rejected`: shape `(prompts, rejected)` (or `(rejected,)`).
    - `mask`: optional boolean array of `r_rejected`'s shape; `False` marks padding.

    **Returns:** a float scalar in `[0, 1]`.
    """
    inputs = _one_vs_many_inputs(r_chosen, r_rejected, mask, logp=(logp_chosen, logp_rejected))
    return _one_vs_many_metrics(*inputs)[2]


def one_vs_many_hacc(r_chosen, r_rejected, mean_reward, mask=None) -> Float[Array, ""]:
    r"""Harm-aware one-vs-many accuracy: a prompt is fine when its chosen output beats
    every rejected one, *or* when every rejected output is strictly below the policy's
    mean proxy reward (then none of them can attract probability),

    `HAcc_1vM = (1 / X) sum_x 1[r_P(y_w) > m_x  or  m_x < V_P(x)]`,
    `m_x = max_j r_P(y_l,j | x)`.

    **Arguments:**

    - `r_chosen`: shape `(prompts,)` (a scalar for one prompt).
    - `r_rejected`: shape `(prompts, rejected)` (or `(rejected,)`).
    - `mean_reward`: `V_P(x)`, shape `(prompts,)` (a scalar for one prompt).
    - `mask`: optional boolean array of `r_rejected`'s shape; `False` marks padding.

    **Returns:** a float scalar in `[0, 1]`.
    """
    inputs = _one_vs_many_inputs(r_chosen, r_rejected, mask, mean=mean_reward)
    return _one_vs_many_metrics(*inputs)[1]


def one_vs_many_hacc_w(
    r_chosen, r_rejected, mean_reward, logp_chosen, logp_rejected, mask=None
) -> Float[Array, ""]:
    r"""Probability-weighted harm-aware one-vs-many accuracy,

    `HAcc-W_1vM = sum_x omega_x 1[r_P(y_w) > m_x  or  m_x < V_P(x)]`,
    `m_x = max_j r_P(y_l,j | x)`, and `omega_x`
    the weights of [`gradflow.metrics.one_vs_many_weights`][].

    **Arguments:**

    - `r_chosen`, `logp_chosen`: shape `(prompts,)` (scalars for one prompt).
    - `r_rejected`, `logp_rejected`: shape `(prompts, rejected)` (or `(rejected,)`).
    - `mean_reward`: `V_P(x)`, shape `(prompts,)` (a scalar for one prompt).
    - `mask`: optional boolean array of `r_rejected`'s shape; `False` marks padding.

    **Returns:** a float scalar in `[0, 1]`.
    """
    inputs = _one_vs_many_inputs(
        r_chosen, r_rejected, mask, mean=mean_reward, logp=(logp_chosen, logp_rejected)
    )
    return _one_vs_many_metrics(*inputs)[3]


def mean_reward(logp, reward) -> Float[Array, " *prompts"]:
    r"""The policy's mean reward on each prompt, exactly:

    `V(x) = sum_y pi(y | x) r(x, y) = sum_y exp(log pi(y | x)) r(x, y)`.

    This is the `mean_reward` that the harm-aware metrics take (with `reward = r_P`).

    **Arguments:**

    - `logp`: `log pi(y | x)`, shape `(prompts, outputs)` or `(outputs,)`; normalised over
      the outputs (last) axis.
    - `reward`: `r(x, y)`, the same shape.

    **Returns:** shape `(prompts,)`, or a scalar for 1-D inputs.
    """
    lp, (r,) = _policy_inputs(logp, {"reward": reward})
    return _mean(lp, r)


def sampled_mean_reward(key: PRNGKeyArray, logp, reward, samples: int) -> Float[Array, " *prompts"]:
    r"""A Monte Carlo estimate of [`gradflow.metrics.mean_reward`][] from on-policy
    samples: for each prompt, draw `y_1, ..., y_n ~ pi(. | x)` (`n = samples`, with
    `jax.random.categorical`) and average,

    `V_hat(x) = (1 / n) sum_i r(x, y_i)`,

    an unbiased estimate with standard error `sqrt(Var_pi[r(x, .)] / n)`.

    **Arguments:**

    - `key`: a JAX PRNG key.
    - `logp`: `log pi(y | x)`, shape `(prompts, outputs)` or `(outputs,)`; normalised over
      the last axis.
    - `reward`: `r(x, y)`, the same shape.
    - `samples`: `n >= 1`, a Python integer (static under `jax.jit`).

    **Returns:** shape `(prompts,)`, or a scalar for 1-D inputs.
    """
    n = v.positive_int("samples", samples)
    lp, (r,) = _policy_inputs(logp, {"reward": reward})
    return _sampled_mean(key, lp, r, n)


def reward_variance(logp, reward, weights=None) -> Float[Array, ""]:
    r"""The reward's variance under the policy, averaged over prompts:

    `sum_x w_x Var_pi(.|x)[r(x, .)] = sum_x w_x sum_y pi(y | x) (r(x, y) - V(x))^2`,

    with uniform prompt weights `w_x = 1 / prompts` by default. It bounds the size of the
    policy gradient: a reward with little variance under the policy is a slow teacher,
    however accurate. (The same quantity as [`gradflow.reward_variance`][], from
    log-probabilities instead of a policy object.)

    **Arguments:**

    - `logp`: `log pi(y | x)`, shape `(prompts, outputs)` or `(outputs,)`; normalised.
    - `reward`: `r(x, y)`, the same shape.
    - `weights`: optional prompt weights `w_x`, shape `(prompts,)`, non-negative, summing
      to 1.

    **Returns:** a non-negative float scalar.
    """
    lp, (r,) = _policy_inputs(logp, {"reward": reward})
    w = _weights(weights, 1 if lp.ndim == 1 else lp.shape[0])
    return _variance(lp, r, w.astype(lp.dtype))


def true_reward_rate(logp, proxy_reward, true_reward, weights=None) -> Float[Array, ""]:
    r"""The instantaneous rate of the expected ground-truth reward when a tabular softmax
    policy (temperature 1) follows the gradient flow of the proxy reward:

    `dV_G/dt = <grad V_G, grad V_P>
             = sum_x w_x^2 sum_y pi(y|x)^2 (r_P(x,y) - V_P(x)) (r_G(x,y) - V_G(x))`,

    with uniform prompt weights `w_x = 1 / prompts` by default. It follows from the
    tabular flow `d theta_{x,y}/dt = w_x pi(y|x) (r_P(x,y) - V_P(x))` and
    `dV_G/d theta_{x,y} = w_x pi(y|x) (r_G(x,y) - V_G(x))`. Training on `r_P = r_G` gives
    `sum_x w_x^2 sum_y pi^2 (r_G - V_G)^2 >= 0`; a proxy that lowers this rate is a worse
    teacher at this policy, one that raises it a better one. (The tabular case of
    [`gradflow.true_reward_rate`][], from log-probabilities.)

    **Arguments:**

    - `logp`: `log pi(y | x)`, shape `(prompts, outputs)` or `(outputs,)`; normalised.
    - `proxy_reward`: `r_P(x, y)`, the same shape.
    - `true_reward`: `r_G(x, y)`, the same shape.
    - `weights`: optional prompt weights `w_x`, shape `(prompts,)`, non-negative, summing
      to 1.

    **Returns:** a float scalar.
    """
    lp, (rp, rg) = _policy_inputs(logp, {"proxy_reward": proxy_reward, "true_reward": true_reward})
    w = _weights(weights, 1 if lp.ndim == 1 else lp.shape[0])
    return _rate(lp, rp, rg, w.astype(lp.dtype))
