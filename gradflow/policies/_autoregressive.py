"""Token-level autoregressive policies: a sequence's probability is a product of
per-token softmaxes, `pi(y_1..y_L | x) = prod_l softmax_v(s(x, y_<l, v) / tau)[y_l]`.

The outputs are all `V^L` token sequences in lexicographic order (output `i` spells `i`
in base `V`, most significant token first). The prefixes of length `l` are the *nodes*
of level `l` of the prefix tree, numbered `offset(l) + prefix` with `offset(l) = (V^l -
1)/(V - 1)` (the nodes of the shorter levels come first), so a node table holds `(V^L -
1)/(V - 1)` rows of `V` next-token scores. Where the scores come from is a *head*:

- [`gradflow.TokenTable`][]: one free score per (prefix, next token), per prompt; the
  "tabular per prefix" parameterisation.
- [`gradflow.TokenFeatures`][]: shared parameters, `s(h, v) = <theta, phi(h, v)>` for
  features of the prefix and token, e.g. the built-in "bigram" (the score depends on the
  previous token only) or "position" (on the position only).
"""

from __future__ import annotations

import abc
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int, PyTree

from .. import _validate as v
from .._ops import inverse_cdf, softmax_outputs, take_outputs
from ._base import AbstractPolicy, prompt_weights

MAX_SEQUENCES = 2**20
"""The most sequences (`V^L`) per prompt an [`gradflow.Autoregressive`][] policy may
have: exact methods enumerate them, and every run of a vmapped batch holds a few arrays
of `prompts * V^L` floats."""

BUILTIN_FEATURES = ("bigram", "position")


def num_nodes(vocab: int, length: int) -> int:
    """Prefixes of length `0 .. length - 1`: `(V^L - 1) / (V - 1)`."""
    return (vocab**length - 1) // (vocab - 1)


def _offset(vocab: int, level: int) -> int:
    return num_nodes(vocab, level) if level > 0 else 0


class AbstractTokenHead(eqx.Module):
    """Next-token scores at the nodes of the prefix tree (see the module docstring for
    the numbering), for each prompt."""

    @property
    @abc.abstractmethod
    def params(self) -> PyTree[Array]:
        """The trainable parameters."""

    @abc.abstractmethod
    def with_params(self, params: PyTree[Array]) -> AbstractTokenHead:
        """The same head with new parameters."""

    @property
    @abc.abstractmethod
    def table_shape(self) -> tuple[int, int, int]:
        """`(prompts, nodes, vocab)`."""

    @abc.abstractmethod
    def block(self, start: int, count: int) -> Float[Array, "prompts count vocab"]:
        """Scores at the consecutive nodes `start .. start + count - 1` (static)."""

    @abc.abstractmethod
    def at(self, nodes: Int[Array, "prompts ..."]) -> Float[Array, "prompts ... vocab"]:
        """Scores at the given nodes, per prompt."""


class TokenTable(AbstractTokenHead):
    """One free next-token score per (prompt, prefix node, token).

    **Arguments:**

    - `table`: shape `(nodes, vocab)` (one prompt) or `(prompts, nodes, vocab)`.
    """

    table: Float[Array, "prompts nodes vocab"]

    def __init__(self, table):
        table = v.as_float_array("table", table, ndim=(2, 3))
        self.table = table[None] if table.ndim == 2 else table

    @property
    def params(self):
        return self.table

    def with_params(self, params):
        return eqx.tree_at(lambda h: h.table, self, params)

    @property
    def table_shape(self):
        return tuple(self.table.shape)

    def block(self, start, count):
        return self.table[:, start : start + count]

    def at(self, nodes):
        return jax.vmap(lambda t, n: t[n])(self.table, nodes)


class TokenFeatures(AbstractTokenHead):
    """Shared parameters: `s(x, h, v) = <theta, phi(x, h, v)>`.

    **Arguments:**

    - `features`: `phi`, shape `(nodes, vocab, dim)` (the same for every prompt) or
      `(prompts, nodes, vocab, dim)`; see [`gradflow.Autoregressive.builtin_features`][].
    - `theta`: shape `(dim,)`, shared by every prefix and prompt.
    """

    features: Float[Array, "prompts nodes vocab dim"]
    theta: Float[Array, " dim"]

    def __init__(self, features, theta):
        features = v.as_float_array("features", features, ndim=(3, 4))
        self.features = features[None] if features.ndim == 3 else features
        self.theta = v.as_float_array("theta", theta, ndim=(1,))
        if self.theta.shape[0] != self.features.shape[-1]:
            raise ValueError(
                f"`theta` must have shape ({self.features.shape[-1]},) to match the feature "
                f"dimension of `features` {tuple(features.shape)}; got {tuple(self.theta.shape)}."
            )

    @property
    def params(self):
        return self.theta

    def with_params(self, params):
        return eqx.tree_at(lambda h: h.theta, self, params)

    @property
    def table_shape(self):
        return tuple(self.features.shape[:3])

    def block(self, start, count):
        return self.features[:, start : start + count] @ self.theta

    def at(self, nodes):
        return jax.vmap(lambda f, n: f[n])(self.features, nodes) @ self.theta


class Autoregressive(AbstractPolicy):
    """A token-level autoregressive policy over the `V^L` sequences of `length` tokens
    from a vocabulary of `vocab` tokens: `pi(y | x) = prod_l softmax(s(x, y_<l, .) /
    tau)[y_l]`, with the next-token scores `s` from a head.

    **Arguments:**

    - `head`: a [`gradflow.TokenTable`][] (tabular per prefix) or
      [`gradflow.TokenFeatures`][] (shared parameters), with one row per prefix node.
    - `vocab`: `V >= 2`; `length`: `L >= 1`; `V^L` at most `MAX_SEQUENCES` (2^20).
    - `weights`: prompt weights (uniform when `None`); `temperature`: `tau > 0`, applied
      to every token's softmax.

    Usually built with [`gradflow.Autoregressive.uniform`][],
    [`gradflow.Autoregressive.from_sequence_probs`][] or
    [`gradflow.Autoregressive.shared`][]. With `length = 1` this is
    [`gradflow.TabularSoftmax`][] over the `V` tokens.
    """

    head: AbstractTokenHead
    vocab: int = eqx.field(static=True)
    length: int = eqx.field(static=True)
    weights: Float[Array, " prompts"]
    temperature: Float[Array, ""]

    def __init__(self, head: AbstractTokenHead, vocab: int, length: int, weights=None, temperature=1.0):
        vocab, length = _check_size(vocab, length)
        if not isinstance(head, AbstractTokenHead):
            raise ValueError(f"`head` must be a gf.TokenTable or gf.TokenFeatures; got {type(head).__name__}.")
        want = (num_nodes(vocab, length), vocab)
        if tuple(head.table_shape[1:]) != want:
            raise ValueError(
                f"`head` must score {want[0]} prefix nodes x {vocab} tokens for vocab={vocab}, "
                f"length={length}; got {tuple(head.table_shape[1:])}."
            )
        self.head, self.vocab, self.length = head, vocab, length
        self.weights = prompt_weights(weights, head.table_shape[0])
        self.temperature = v.positive_scalar("temperature", temperature)

    # -- constructors ----------------------------------------------------------------

    @classmethod
    def uniform(cls, vocab: int, length: int, *, prompts: int = 1, weights=None, temperature=1.0):
        """The uniform per-prefix tabular policy (every sequence has probability `V^-L`).

        **Arguments:** `vocab`, `length`, `weights`, `temperature` as in the constructor;
        `prompts`: the number of prompts.

        **Returns:** an `Autoregressive` with a [`gradflow.TokenTable`][] of zeros.
        """
        vocab, length = _check_size(vocab, length)
        prompts = v.positive_int("prompts", prompts)
        table = jnp.zeros((prompts, num_nodes(vocab, length), vocab))
        return cls(TokenTable(table), vocab, length, weights=weights, temperature=temperature)

    @classmethod
    def from_sequence_probs(cls, probs, *, vocab: int, length: int, weights=None, temperature=1.0):
        """The per-prefix tabular policy whose sequence distribution is exactly `probs`.

        Each prefix `h` gets the conditional `pi(v | h) = P(h v) / P(h)`, with `P` the
        total probability of the sequences that start with the prefix.

        **Arguments:**

        - `probs`: shape `(V^L,)` or `(prompts, V^L)`, over the sequences in
          lexicographic order; strictly positive, each row summing to 1.
        - `vocab`, `length`, `weights`, `temperature`: as in the constructor.

        **Returns:** an `Autoregressive` with a [`gradflow.TokenTable`][].
        """
        vocab, length = _check_size(vocab, length)
        p = jnp.atleast_2d(v.probabilities("probs", probs))
        if p.shape[-1] != vocab**length:
            raise ValueError(
                f"`probs` must have V^L = {vocab**length} entries per prompt (vocab={vocab}, "
                f"length={length}); got shape {tuple(jnp.shape(probs))}."
            )
        tau = v.positive_scalar("temperature", temperature)
        levels = []
        for level in range(length):
            prefix = p.reshape(p.shape[0], vocab ** (level + 1), -1).sum(-1)  # P(h v)
            cond = prefix.reshape(p.shape[0], vocab**level, vocab)
            levels.append(jnp.log(cond) - jnp.log(cond.sum(-1, keepdims=True)))
        table = tau * jnp.concatenate(levels, axis=1)
        return cls(TokenTable(table), vocab, length, weights=weights, temperature=tau)

    @classmethod
    def shared(cls, vocab: int, length: int, features="bigram", theta=None, *, prompts: int = 1,
               weights=None, temperature=1.0):
        """A policy with shared parameters: `s(h, v) = <theta, phi(h, v)>`.

        **Arguments:**

        - `vocab`, `length`, `weights`, `temperature`: as in the constructor.
        - `features`: `"bigram"`, `"position"` (see
          [`gradflow.Autoregressive.builtin_features`][]) or an array of shape
          `(nodes, vocab, dim)` or `(prompts, nodes, vocab, dim)`.
        - `theta`: shape `(dim,)`; zeros (the uniform policy) when `None`.
        - `prompts`: the number of prompts when `features` has no prompt axis.

        **Returns:** an `Autoregressive` with a [`gradflow.TokenFeatures`][] head.
        """
        vocab, length = _check_size(vocab, length)
        if isinstance(features, str):
            features = cls.builtin_features(features, vocab, length)
        feats = v.as_float_array("features", features, ndim=(3, 4))
        prompts = v.positive_int("prompts", prompts)
        if feats.ndim == 3:
            feats = jnp.broadcast_to(feats, (prompts,) + feats.shape)
        theta = jnp.zeros(feats.shape[-1], feats.dtype) if theta is None else theta
        return cls(TokenFeatures(feats, theta), vocab, length, weights=weights, temperature=temperature)

    @staticmethod
    def builtin_features(name: str, vocab: int, length: int) -> np.ndarray:
        """Built-in token features, shape `(nodes, vocab, dim)`, one-hot:

        - `"bigram"`: `dim = (V + 1) V`, the pair (previous token, token), with a start
          symbol before the first token: the score of `v` depends on the previous token.
        - `"position"`: `dim = L V`, the pair (position, token).
        """
        vocab, length = _check_size(vocab, length)
        prev, pos = [], []
        for level in range(length):
            ids = np.arange(vocab**level)
            prev.append(ids % vocab if level > 0 else np.full(1, vocab))
            pos.append(np.full(vocab**level, level))
        tok = np.arange(vocab)
        if name == "bigram":
            index, dim = np.concatenate(prev)[:, None] * vocab + tok, (vocab + 1) * vocab
        elif name == "position":
            index, dim = np.concatenate(pos)[:, None] * vocab + tok, length * vocab
        else:
            raise ValueError(f"`features` must be one of {BUILTIN_FEATURES} or an array; got {name!r}.")
        return np.eye(dim, dtype=np.float32)[index]

    # -- the policy interface ----------------------------------------------------------

    @property
    def params(self):
        return self.head.params

    def with_params(self, params):
        return eqx.tree_at(lambda p: p.head, self, self.head.with_params(params))

    @property
    def shape(self):
        return (self.head.table_shape[0], self.vocab**self.length)

    def sequences(self) -> Int[Array, "sequences length"]:
        """Every sequence, shape `(V^L, L)`, in the order of the outputs."""
        return sequences(self.vocab, self.length)

    def log_probs(self):
        """`log pi` of every sequence: the per-token log-softmaxes, accumulated level by
        level down the prefix tree."""
        prompts = self.head.table_shape[0]
        acc = jnp.zeros((prompts, 1), self.temperature.dtype)
        for level in range(self.length):
            count = self.vocab**level
            s = self.head.block(_offset(self.vocab, level), count) / self.temperature
            _, lp = softmax_outputs(s)
            acc = (acc[:, :, None] + lp).reshape(prompts, count * self.vocab)
        return acc

    def sample(self, key, n):
        """Token by token (a `lax.scan` over positions); never touches all `V^L`
        sequences. Position `l` draws from `fold_in(key, l)`."""
        prompts, vocab = self.head.table_shape[0], self.vocab
        offsets = jnp.asarray([_offset(vocab, level) for level in range(self.length)], jnp.int32)

        def step(prefix, level):
            s = self.head.at(offsets[level] + prefix) / self.temperature
            p, _ = softmax_outputs(jax.lax.stop_gradient(s))
            u = jax.random.uniform(jax.random.fold_in(key, level), prefix.shape + (1,), dtype=p.dtype)
            return prefix * vocab + inverse_cdf(p, u)[..., 0], None

        prefix, _ = jax.lax.scan(step, jnp.zeros((prompts, n), jnp.int32), jnp.arange(self.length))
        return prefix

    def log_prob(self, samples):
        """The sum of the drawn tokens' log-probabilities (no enumeration)."""
        vocab, length = self.vocab, self.length
        lead = (1,) * samples.ndim
        offsets = np.array([_offset(vocab, level) for level in range(length)]).reshape(lead + (length,))
        shift = (vocab ** np.arange(length, 0, -1)).reshape(lead + (length,))  # prefix l: index // V^(L-l)
        idx = samples[..., None]
        nodes = jnp.asarray(offsets, jnp.int32) + idx // jnp.asarray(shift, jnp.int32)
        tokens = (idx // jnp.asarray(shift // vocab, jnp.int32)) % vocab
        _, lp = softmax_outputs(self.head.at(nodes) / self.temperature)
        return jnp.sum(take_outputs(lp, tokens[..., None])[..., 0], axis=-1)


def sequences(vocab: int, length: int) -> Int[Array, "sequences length"]:
    """All `vocab^length` token sequences in lexicographic order, shape `(V^L, L)`."""
    vocab, length = _check_size(vocab, length)
    index = np.arange(vocab**length)[:, None]
    return jnp.asarray((index // vocab ** np.arange(length - 1, -1, -1)) % vocab, jnp.int32)


def sequence_reward(
    fn: Callable[[Int[Array, " length"]], Float[Array, ""] | Float[Array, " length"]],
    *,
    vocab: int,
    length: int,
    per_token: bool = False,
) -> Float[Array, " sequences"]:
    """A reward over the `V^L` sequences from a function of the tokens.

    **Arguments:**

    - `fn`: maps one sequence (int array `(L,)`) to its reward (a scalar), or with
      `per_token=True` to per-token (process) rewards, shape `(L,)`.
    - `vocab`, `length`: as for [`gradflow.Autoregressive`][].
    - `per_token`: the sequence reward is then the sum of the per-token rewards (its
      return), which is what the bandit-style methods ascend.

    **Returns:** shape `(V^L,)`, in the order of [`gradflow.Autoregressive.sequences`][].
    """
    seqs = sequences(vocab, length)
    out = jax.vmap(fn)(seqs)
    want = (seqs.shape[0], length) if per_token else (seqs.shape[0],)
    if out.shape != want:
        raise ValueError(
            f"`fn` must return {'per-token rewards of shape (length,)' if per_token else 'a scalar'} "
            f"for one sequence; got shape {tuple(out.shape[1:])}."
        )
    out = out.sum(-1) if per_token else out
    return v.as_float_array("reward", out)


def _check_size(vocab, length) -> tuple[int, int]:
    vocab = v.positive_int("vocab", vocab)
    length = v.positive_int("length", length)
    if vocab < 2:
        raise ValueError(f"`vocab` must be at least 2 tokens; got {vocab}.")
    if vocab**length > MAX_SEQUENCES:
        raise ValueError(
            f"`vocab`**`length` = {vocab}^{length} = {vocab**length} sequences exceeds the limit of "
            f"{MAX_SEQUENCES} (2^20) that exact methods enumerate; use a smaller vocabulary or length."
        )
    return vocab, length
