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

from .._engine.ops import inverse_cdf, softmax_outputs, take_outputs
from .._util import validate as v
from ._base import AbstractPolicy, Linearization, prompt_weights

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


def _level_order(vocab: int, level: int) -> np.ndarray:
    """For the prefixes of length `level`: internal index `r` (digit-reversed, the first
    token least significant) -> lexicographic index `h` (the first token most significant)."""
    r = np.arange(vocab**level)
    digits = (r[:, None] // vocab ** np.arange(level)) % vocab  # digit j = token j
    return (digits * vocab ** np.arange(level - 1, -1, -1)).sum(1).astype(np.int64)


def node_order(vocab: int, length: int) -> np.ndarray:
    """Internal node `j` -> lexicographic node `order[j]` (levels in order, each
    digit-reversed inside; see `AbstractTokenHead`)."""
    return np.concatenate([_offset(vocab, lvl) + _level_order(vocab, lvl) for lvl in range(length)])


def _length_of(vocab: int, nodes: int, name: str) -> int:
    length = 1
    while num_nodes(vocab, length) < nodes:
        length += 1
    if num_nodes(vocab, length) != nodes:
        raise ValueError(f"`{name}` must have (V^L - 1) / (V - 1) prefix nodes for some length L (vocab "
                         f"V = {vocab}); got {nodes}.")
    return length


class AbstractTokenHead(eqx.Module):
    """Next-token scores at the nodes of the prefix tree, per prompt.

    Internally a head lays its scores out *token-major*, shape `(prompts, vocab, nodes)`,
    with the nodes level by level and, inside level `l`, in *digit-reversed* order (the
    prefix `(y_1, ..., y_l)` at index `sum_j y_j V^(j-1)`). Then every per-token operation
    of a level is elementwise on contiguous vectors and extending the prefixes by one token
    is a concatenation, which is what makes the exact methods fast (`Autoregressive`
    reorders to lexicographic order at its interface). `node_order` maps internal nodes to
    lexicographic ones.
    """

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
    def scores(self) -> Float[Array, "prompts vocab nodes"]:
        """Scores at every node, in the internal layout."""

    @abc.abstractmethod
    def at(self, nodes: Int[Array, "prompts ..."]) -> Float[Array, "prompts ... vocab"]:
        """Scores at the given (internal) nodes, per prompt."""


class TokenTable(AbstractTokenHead):
    """One free next-token score per (prompt, prefix node, token).

    **Arguments:**

    - `table`: in the internal layout (see [`gradflow.AbstractTokenHead`][]), shape
      `(vocab, nodes)` (one prompt) or `(prompts, vocab, nodes)`. To give the scores with
      the nodes in lexicographic order, use [`gradflow.TokenTable.from_nodes`][].
    """

    table: Float[Array, "prompts vocab nodes"]

    def __init__(self, table):
        table = v.as_float_array("table", table, ndim=(2, 3))
        self.table = table[None] if table.ndim == 2 else table

    @classmethod
    def from_nodes(cls, table) -> TokenTable:
        """The head with the given scores, shape `(nodes, vocab)` or `(prompts, nodes,
        vocab)`, the nodes level by level and lexicographic inside each level."""
        table = v.as_float_array("table", table, ndim=(2, 3))
        table = table[None] if table.ndim == 2 else table
        order = node_order(table.shape[-1], _length_of(table.shape[-1], table.shape[1], "table"))
        return cls(jnp.swapaxes(table[:, order], 1, 2))

    @property
    def params(self):
        return self.table

    def with_params(self, params):
        return eqx.tree_at(lambda h: h.table, self, params)

    @property
    def table_shape(self):
        return (self.table.shape[0], self.table.shape[2], self.table.shape[1])

    def scores(self):
        return self.table

    def at(self, nodes):
        return jax.vmap(lambda t, n: jnp.moveaxis(t[:, n], 0, -1))(self.table, nodes)


class TokenFeatures(AbstractTokenHead):
    """Shared parameters: `s(x, h, v) = <theta, phi(x, h, v)>`.

    **Arguments:**

    - `features`: `phi` in the internal layout (see [`gradflow.AbstractTokenHead`][]),
      shape `(vocab, nodes, dim)` (the same for every prompt) or `(prompts, vocab, nodes,
      dim)`; [`gradflow.Autoregressive.shared`][] takes them in lexicographic order.
    - `theta`: shape `(dim,)`, shared by every prefix and prompt.
    """

    features: Float[Array, "prompts vocab nodes dim"]
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
        x, vocab, nodes, _ = self.features.shape
        return (x, nodes, vocab)

    def scores(self):
        return self.features @ self.theta

    def at(self, nodes):
        return jax.vmap(lambda f, n: jnp.moveaxis(f[:, n] @ self.theta, 0, -1))(self.features, nodes)


def _token_softmax(s: Float[Array, "prompts vocab n"]):
    """Per token `v`: `(softmax, log_softmax)` over the vocabulary axis, as lists of
    contiguous `(prompts, n)` slices (elementwise, no short-axis reduction)."""
    rows = [s[:, i] for i in range(s.shape[1])]
    top = rows[0]
    for row in rows[1:]:
        top = jnp.maximum(top, row)
    top = jax.lax.stop_gradient(top)
    z = [row - top for row in rows]
    e = [jnp.exp(x) for x in z]
    total = e[0]
    for x in e[1:]:
        total = total + x
    log_total = jnp.log(total)
    return [x / total for x in e], [x - log_total for x in z]


class Autoregressive(AbstractPolicy):
    """A token-level autoregressive policy over the `V^L` sequences of `length` tokens
    from a vocabulary of `vocab` tokens: `pi(y | x) = prod_l softmax(s(x, y_<l, .) /
    tau)[y_l]`, with the next-token scores `s` from a head.

    **Arguments:**

    - `head`: a [`gradflow.TokenTable`][] (tabular per prefix) or
      [`gradflow.TokenFeatures`][] (shared parameters), with one score per prefix node
      and token.
    - `vocab`: `V >= 2`; `length`: `L >= 1`; `V^L` at most `MAX_SEQUENCES` (2^20).
    - `weights`: prompt weights (uniform when `None`); `temperature`: `tau > 0`, applied
      to every token's softmax.

    Usually built with [`gradflow.Autoregressive.uniform`][],
    [`gradflow.Autoregressive.from_sequence_probs`][] or
    [`gradflow.Autoregressive.shared`][]. With `length = 1` this is
    [`gradflow.TabularSoftmax`][] over the `V` tokens.

    The exact gradient has a closed-form pull-back (`linearize`): for a cotangent `c` on
    the sequences' log-probabilities, the score of token `v` after prefix `h` gets
    `(C(h v) - pi(v | h) C(h)) / tau`, with `C(h)` the sum of `c` over the sequences that
    start with `h`, accumulated up the prefix tree level by level.
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
        table = jnp.zeros((prompts, vocab, num_nodes(vocab, length)))
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
        return cls(TokenTable.from_nodes(table), vocab, length, weights=weights, temperature=tau)

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
        if feats.shape[1:3] != (num_nodes(vocab, length), vocab):
            raise ValueError(
                f"`features` must have shape (nodes, vocab, dim) or (prompts, nodes, vocab, dim) with "
                f"nodes = {num_nodes(vocab, length)}, vocab = {vocab}; got {tuple(jnp.shape(features))}."
            )
        theta = jnp.zeros(feats.shape[-1], feats.dtype) if theta is None else theta
        internal = jnp.swapaxes(feats[:, node_order(vocab, length)], 1, 2)
        return cls(TokenFeatures(internal, theta), vocab, length, weights=weights, temperature=temperature)

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

    def node_scores(self) -> Float[Array, "prompts nodes vocab"]:
        """The next-token scores at every prefix node, levels in order and lexicographic
        inside each level (the layout of [`gradflow.TokenTable.from_nodes`][])."""
        order = np.argsort(node_order(self.vocab, self.length))
        return jnp.swapaxes(self.head.scores(), 1, 2)[:, order]

    def _lexicographic(self, x: Float[Array, "prompts sequences"]) -> Float[Array, "prompts sequences"]:
        """Digit-reversed sequence order <-> lexicographic order (an involution: reversing
        the token axes)."""
        prompts, length = x.shape[0], self.length
        axes = (0,) + tuple(range(length, 0, -1))
        return x.reshape((prompts,) + (self.vocab,) * length).transpose(axes).reshape(x.shape)

    def _forward(self, scores):
        """Level by level down the prefix tree, in the internal order: the sequences'
        log-probabilities and probabilities, and each level's next-token probabilities."""
        prompts, vocab = scores.shape[0], self.vocab
        logp = jnp.zeros((prompts, 1), scores.dtype)
        p = jnp.ones((prompts, 1), scores.dtype)
        levels = []
        for level in range(self.length):
            start = _offset(vocab, level)
            pi, lp = _token_softmax(scores[:, :, start : start + vocab**level] / self.temperature)
            logp = jnp.concatenate([logp + x for x in lp], axis=1)  # prefix + token v at v * V^l
            p = jnp.concatenate([p * x for x in pi], axis=1)
            levels.append(pi)
        return logp, p, levels

    def log_probs(self):
        return self._lexicographic(self._forward(self.head.scores())[0])

    def saturated(self):
        # Per token: a long sequence's probability may legitimately be below float range.
        logp = jax.nn.log_softmax(self.head.scores() / self.temperature, axis=1)
        return jnp.any(logp < jnp.log(jnp.finfo(logp.dtype).tiny))

    def probs(self):
        return self._lexicographic(self._forward(self.head.scores())[1])

    def linearize(self) -> Linearization:
        scores, head_pullback = jax.vjp(lambda hp: self.head.with_params(hp).scores(), self.head.params)
        logp, p, levels = self._forward(scores)
        vocab = self.vocab

        def pullback(c):
            acc = self._lexicographic(c.astype(scores.dtype))  # C(h v) at the deepest level
            grads = []
            for level in reversed(range(self.length)):
                n = vocab**level
                blocks = [acc[:, i * n : (i + 1) * n] for i in range(vocab)]  # C(h v), per v
                acc = blocks[0]
                for block in blocks[1:]:
                    acc = acc + block  # C(h)
                pi = levels[level]
                grads.append(jnp.stack([b - q * acc for b, q in zip(blocks, pi, strict=True)], axis=1))
            g = jnp.concatenate(grads[::-1], axis=2) / self.temperature
            return head_pullback(g)[0]

        return Linearization(self._lexicographic(logp), self._lexicographic(p), pullback)

    def sample(self, key, n):
        """Token by token (a `lax.scan` over positions); never touches all `V^L`
        sequences. Position `l` draws from `fold_in(key, l)`."""
        prompts, vocab = self.head.table_shape[0], self.vocab
        offsets = jnp.asarray([_offset(vocab, level) for level in range(self.length)], jnp.int32)
        powers = jnp.asarray([vocab**level for level in range(self.length)], jnp.int32)

        def step(carry, level):
            internal, index = carry  # the prefix's internal node index and its lexicographic index
            s = self.head.at(offsets[level] + internal) / self.temperature
            p, _ = softmax_outputs(jax.lax.stop_gradient(s))
            u = jax.random.uniform(jax.random.fold_in(key, level), internal.shape + (1,), dtype=p.dtype)
            token = inverse_cdf(p, u)[..., 0]
            return (internal + token * powers[level], index * vocab + token), None

        zeros = jnp.zeros((prompts, n), jnp.int32)
        (_, index), _ = jax.lax.scan(step, (zeros, zeros), jnp.arange(self.length))
        return index

    def log_prob(self, samples):
        """The sum of the drawn tokens' log-probabilities (no enumeration)."""
        vocab, length = self.vocab, self.length
        lead = (1,) * samples.ndim
        shift = (vocab ** np.arange(length - 1, -1, -1)).reshape(lead + (length,))
        tokens = (samples[..., None] // jnp.asarray(shift, jnp.int32)) % vocab  # token l
        weight = jnp.asarray((vocab ** np.arange(length)).reshape(lead + (length,)), jnp.int32)
        internal = jnp.cumsum(tokens * weight, axis=-1) - tokens * weight  # prefix before token l
        offsets = np.array([_offset(vocab, level) for level in range(length)]).reshape(lead + (length,))
        _, lp = softmax_outputs(self.head.at(jnp.asarray(offsets, jnp.int32) + internal) / self.temperature)
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
