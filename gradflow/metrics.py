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

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, PRNGKeyArray

from . import _validate as v
from ._problem import _weights

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
# ---------------------------------------------------------------------------------------


def _convert(name: str, x, ndim: tuple[int, ...]) -> Array:
    """A floating JAX array of one of the ranks `ndim` (finiteness is checked later,
    only where the mask keeps entries)."""
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


def _finite(name: str, arr: Array, mask: Array | None) -> Array:
    """Reject non-finite entries (only those the mask keeps)."""
    if mask is None:
        bad = lambda a: ~jnp.isfinite(a)  # noqa: E731
    else:
        bad = lambda a: mask & ~jnp.isfinite(a)  # noqa: E731
    where = "" if mask is None else " where `mask` is True"
    return v.check(arr, bad, f"`{name}` must be finite (no NaN or inf){where}.")


def _mask(mask, shape: tuple[int, ...], like: str) -> Array | None:
    if mask is None:
        return None
    m = jnp.asarray(mask)
    if m.dtype != jnp.bool_:
        raise ValueError(f"`mask` must be a boolean array; got dtype {m.dtype}.")
    _same_shape("mask", m, shape, like)
    return m


def _prompt_values(name: str, x, n_prompts: int, single: bool) -> Float[Array, " prompts"]:
    """A per-prompt array: shape `(prompts,)`, or a scalar (or `(1,)`) for one prompt."""
    arr = _convert(name, x, (0, 1))
    ok = arr.shape == (n_prompts,) or (single and arr.ndim == 0)
    if not ok:
        want = "a scalar or shape (1,)" if single else f"shape ({n_prompts},)"
        raise ValueError(
            f"`{name}` must hold one value per prompt, {want}; got shape {tuple(arr.shape)}."
        )
    return v.as_float_array(name, jnp.reshape(arr, (n_prompts,)))


def _pair_inputs(arrays: dict, mask, *, mean=None):
    """Validate pairwise inputs: every array of `arrays` (name -> array-like, the first
    sets the shape) is `(prompts, pairs)` or `(pairs,)`, all of one shape. Returns them
    as 2-D arrays, the 2-D mask (or `None`) and the 1-D `mean_reward` (or `None`)."""
    names = list(arrays)
    first = _convert(names[0], arrays[names[0]], (1, 2))
    converted = [first]
    for name in names[1:]:
        arr = _convert(name, arrays[name], (1, 2))
        _same_shape(name, arr, first.shape, names[0])
        converted.append(arr)
    if first.shape[-1] == 0:
        raise ValueError(f"`{names[0]}` must hold at least one pair; got shape {tuple(first.shape)}.")
    m = _mask(mask, first.shape, names[0])
    if m is not None:
        m = v.check(m, lambda a: ~jnp.any(a), "`mask` must keep at least one pair.")
    converted = [_finite(n, a, m) for n, a in zip(names, converted, strict=True)]
    single = first.ndim == 1
    converted = [jnp.atleast_2d(a) for a in converted]
    m = None if m is None else jnp.atleast_2d(m)
    n_prompts = converted[0].shape[0]
    mu = None if mean is None else _prompt_values("mean_reward", mean, n_prompts, single)
    return converted, m, mu


def _one_vs_many_inputs(chosen: dict, rejected: dict, mask, *, mean=None):
    """Validate one-vs-many inputs: `chosen` arrays (name -> array-like) of shape
    `(prompts,)` (or scalars), `rejected` arrays of shape `(prompts, rejected)` (or
    `(rejected,)`). Returns 1-D chosen, 2-D rejected arrays, the 2-D mask and the mean."""
    rnames, cnames = list(rejected), list(chosen)
    rej = [_convert(rnames[0], rejected[rnames[0]], (1, 2))]
    shape = rej[0].shape
    for name in rnames[1:]:
        arr = _convert(name, rejected[name], (1, 2))
        _same_shape(name, arr, shape, rnames[0])
        rej.append(arr)
    if shape[-1] == 0:
        raise ValueError(
            f"`{rnames[0]}` must hold at least one rejected output; got shape {tuple(shape)}."
        )
    cho = []
    for name in cnames:
        arr = _convert(name, chosen[name], (0, 1))
        if tuple(arr.shape) != tuple(shape[:-1]):
            raise ValueError(
                f"`{name}` must hold one chosen output per prompt, shape {tuple(shape[:-1])} "
                f"to match `{rnames[0]}` {tuple(shape)}; got {tuple(arr.shape)}."
            )
        cho.append(arr)
    m = _mask(mask, shape, rnames[0])
    if m is not None:
        m = v.check(
            m,
            lambda a: ~jnp.all(jnp.any(a, axis=-1)),
            "`mask` must keep at least one rejected output for every prompt.",
        )
    cho = [jnp.reshape(v.as_float_array(n, a), (-1,)) for n, a in zip(cnames, cho, strict=True)]
    rej = [jnp.atleast_2d(_finite(n, a, m)) for n, a in zip(rnames, rej, strict=True)]
    single = len(shape) == 1
    m = None if m is None else jnp.atleast_2d(m)
    mu = None if mean is None else _prompt_values("mean_reward", mean, rej[0].shape[0], single)
    return cho, rej, m, mu


def _policy_inputs(logp, rewards: dict):
    """Validate `logp` (normalised log-probabilities over the last axis, `(outputs,)` or
    `(prompts, outputs)`) and rewards of the same shape; returns them as 2-D arrays."""
    lp = _convert("logp", logp, (1, 2))
    if lp.shape[-1] == 0:
        raise ValueError(f"`logp` must hold at least one output; got shape {tuple(lp.shape)}.")
    out = []
    for name, r in rewards.items():
        arr = _convert(name, r, (1, 2))
        _same_shape(name, arr, lp.shape, "logp")
        out.append(jnp.atleast_2d(v.as_float_array(name, arr)))
    lp = v.as_float_array("logp", lp)
    lp = v.check(
        lp,
        lambda a: jnp.abs(jax.nn.logsumexp(a, axis=-1)) > _LOGP_ATOL,
        "`logp` must be normalised log-probabilities: `logsumexp(logp)` over the outputs "
        f"(last) axis must be 0 (tolerance {_LOGP_ATOL}); normalise with "
        "`jax.nn.log_softmax`.",
    )
    return jnp.atleast_2d(lp), out


# ---------------------------------------------------------------------------------------
# Kernels (validated, 2-D inputs).
# ---------------------------------------------------------------------------------------


def _keep(mask, like: Array) -> Bool[Array, "*shape"]:
    return jnp.ones(like.shape, bool) if mask is None else mask


def _softmax_all(
    s: Float[Array, "*shape"], keep: Bool[Array, "*shape"]
) -> Float[Array, "*shape"]:
    """`softmax` over all entries that `keep` keeps (the others get 0), max-shifted."""
    s = jnp.where(keep, s, -jnp.inf)
    e = jnp.exp(s - jnp.max(s))
    return e / jnp.sum(e)


def _fraction(
    ok: Bool[Array, "*shape"], keep: Bool[Array, "*shape"], dtype
) -> Float[Array, ""]:
    return jnp.sum(ok & keep, dtype=dtype) / jnp.sum(keep, dtype=dtype)


def _pair_correct(
    rc: Float[Array, "prompts pairs"], rr: Float[Array, "prompts pairs"]
) -> Bool[Array, "prompts pairs"]:
    return rc > rr


def _pair_fine(
    rc: Float[Array, "prompts pairs"],
    rr: Float[Array, "prompts pairs"],
    mu: Float[Array, " prompts"],
) -> Bool[Array, "prompts pairs"]:
    return (rc > rr) | (rr < mu[:, None])


def _kept_max(x: Float[Array, "*shape"], keep: Bool[Array, "*shape"], axis=None):
    """The largest kept entry (along `axis`), 0 where nothing is kept."""
    top = jnp.max(jnp.where(keep, x, -jnp.inf), axis=axis)
    return jnp.where(jnp.isfinite(top), top, 0.0)


def _pair_weights(
    lc: Float[Array, "prompts pairs"], lr: Float[Array, "prompts pairs"], keep
) -> Float[Array, "prompts pairs"]:
    # Shift each log-probability by its own maximum before adding: near -2000 a float32
    # sum `lc + lr` would round to ~2e-4, the differences are exact (Sterbenz).
    s = (lc - _kept_max(lc, keep)) + (lr - _kept_max(lr, keep))
    return _softmax_all(jnp.where(keep, s, 0.0), keep)


def _max_rejected(
    rr: Float[Array, "prompts rejected"], keep: Bool[Array, "prompts rejected"]
) -> Float[Array, " prompts"]:
    return jnp.max(jnp.where(keep, rr, -jnp.inf), axis=-1)


def _prompt_weights(
    lc: Float[Array, " prompts"], lr: Float[Array, "prompts rejected"], keep
) -> Float[Array, " prompts"]:
    # s_x = log pi(y_w|x) + sum_j log pi(y_l,j|x), assembled from small, exactly computed
    # differences (as in `_pair_weights`): shift the chosen log-probabilities by their
    # maximum and each rejected column j by its maximum c_j; the shifts add up to
    # K_x = sum_{kept j} c_j, which is the same number for prompts with the same kept
    # columns and then cancels exactly in K_x - max K.
    col = _kept_max(lr, keep, axis=0)
    small = (lc - jnp.max(lc)) + jnp.sum(jnp.where(keep, lr - col[None, :], 0.0), axis=-1)
    shift = jnp.sum(jnp.where(keep, col[None, :], 0.0), axis=-1)
    s = small + (shift - jnp.max(shift))
    return _softmax_all(s, jnp.ones(s.shape, bool))


# ---------------------------------------------------------------------------------------
# Pairwise metrics.
# ---------------------------------------------------------------------------------------


def pair_weights(logp_chosen, logp_rejected, mask=None) -> Float[Array, "*prompts pairs"]:
    r"""The weight of each preference pair in the weighted metrics: proportional to
    `pi(y_w) pi(y_l)` and normalised over *all* pairs of all prompts,

    `omega_i = exp(s_i - max_j s_j) / sum_k exp(s_k - max_j s_j)`,
    `s_i = log pi(y_w,i) + log pi(y_l,i)`.

    The max-shift keeps this exact in float32 even for log-probabilities of order
    `-2000` (where `pi(y_w) pi(y_l)` itself underflows to 0).

    **Arguments:**

    - `logp_chosen`: `log pi(y_w | x)`, shape `(prompts, pairs)` or `(pairs,)`.
    - `logp_rejected`: `log pi(y_l | x)`, the same shape.
    - `mask`: optional boolean array of the same shape; `False` marks padding (weight 0).

    **Returns:** non-negative weights of the input shape, summing to 1.
    """
    (lc, lr), m, _ = _pair_inputs({"logp_chosen": logp_chosen, "logp_rejected": logp_rejected}, mask)
    w = _pair_weights(lc, lr, _keep(m, lc))
    return jnp.reshape(w, jnp.shape(logp_chosen))


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
    (rc, rr), m, _ = _pair_inputs({"r_chosen": r_chosen, "r_rejected": r_rejected}, mask)
    return _fraction(_pair_correct(rc, rr), _keep(m, rc), rc.dtype)


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
    (rc, rr, lc, lr), m, _ = _pair_inputs(
        {"r_chosen": r_chosen, "r_rejected": r_rejected,
         "logp_chosen": logp_chosen, "logp_rejected": logp_rejected},
        mask,
    )
    w = _pair_weights(lc, lr, _keep(m, rc))
    return jnp.sum(jnp.where(_pair_correct(rc, rr), w, 0.0))


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
    (rc, rr), m, mu = _pair_inputs(
        {"r_chosen": r_chosen, "r_rejected": r_rejected}, mask, mean=mean_reward
    )
    return _fraction(_pair_fine(rc, rr, mu), _keep(m, rc), rc.dtype)


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
    (rc, rr, lc, lr), m, mu = _pair_inputs(
        {"r_chosen": r_chosen, "r_rejected": r_rejected,
         "logp_chosen": logp_chosen, "logp_rejected": logp_rejected},
        mask,
        mean=mean_reward,
    )
    w = _pair_weights(lc, lr, _keep(m, rc))
    return jnp.sum(jnp.where(_pair_fine(rc, rr, mu), w, 0.0))


# ---------------------------------------------------------------------------------------
# One-vs-many metrics.
# ---------------------------------------------------------------------------------------


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
    (lc,), (lr,), m, _ = _one_vs_many_inputs(
        {"logp_chosen": logp_chosen}, {"logp_rejected": logp_rejected}, mask
    )
    w = _prompt_weights(lc, lr, _keep(m, lr))
    return jnp.reshape(w, jnp.shape(logp_chosen))


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
    (rc,), (rr,), m, _ = _one_vs_many_inputs({"r_chosen": r_chosen}, {"r_rejected": r_rejected}, mask)
    ok = rc > _max_rejected(rr, _keep(m, rr))
    return jnp.mean(ok, dtype=rc.dtype)


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
    (rc, lc), (rr, lr), m, _ = _one_vs_many_inputs(
        {"r_chosen": r_chosen, "logp_chosen": logp_chosen},
        {"r_rejected": r_rejected, "logp_rejected": logp_rejected},
        mask,
    )
    keep = _keep(m, rr)
    w = _prompt_weights(lc, lr, keep)
    return jnp.sum(jnp.where(rc > _max_rejected(rr, keep), w, 0.0))


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
    (rc,), (rr,), m, mu = _one_vs_many_inputs(
        {"r_chosen": r_chosen}, {"r_rejected": r_rejected}, mask, mean=mean_reward
    )
    top = _max_rejected(rr, _keep(m, rr))
    return jnp.mean((rc > top) | (top < mu), dtype=rc.dtype)


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
    (rc, lc), (rr, lr), m, mu = _one_vs_many_inputs(
        {"r_chosen": r_chosen, "logp_chosen": logp_chosen},
        {"r_rejected": r_rejected, "logp_rejected": logp_rejected},
        mask,
        mean=mean_reward,
    )
    keep = _keep(m, rr)
    top = _max_rejected(rr, keep)
    w = _prompt_weights(lc, lr, keep)
    return jnp.sum(jnp.where((rc > top) | (top < mu), w, 0.0))


# ---------------------------------------------------------------------------------------
# The policy's view of a reward: mean, variance, rate of the ground truth.
# ---------------------------------------------------------------------------------------


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
    out = jnp.sum(jnp.exp(lp) * r, axis=-1)
    return out[0] if jnp.ndim(logp) == 1 else out


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
    idx = jax.random.categorical(key, lp, axis=-1, shape=(n, lp.shape[0]))
    rows = jnp.arange(lp.shape[0])[None, :]
    out = jnp.mean(r[rows, idx], axis=0)
    return out[0] if jnp.ndim(logp) == 1 else out


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
    w = _weights(weights, lp.shape[0])
    p = jnp.exp(lp)
    mu = jnp.sum(p * r, axis=-1, keepdims=True)
    return jnp.sum(w * jnp.sum(p * (r - mu) ** 2, axis=-1))


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
    w = _weights(weights, lp.shape[0])
    p = jnp.exp(lp)
    ap = rp - jnp.sum(p * rp, axis=-1, keepdims=True)
    ag = rg - jnp.sum(p * rg, axis=-1, keepdims=True)
    return jnp.sum(w**2 * jnp.sum(p**2 * ap * ag, axis=-1))
