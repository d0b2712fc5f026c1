"""Families of proxy rewards (`gradflow.perturb`): batch layout, reproducibility, the
defining property of each family (checked against NumPy oracles), jit/vmap == eager, and
bad input.

Compilation dominates this file's run time: the random families compile once per
(shape, dtype, key type, batch size `n`), so the tests share three true rewards and three
batch sizes (`N`, `M`, `BIG`).
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gradflow import perturb as P

REF = jnp.asarray([1.0, 0.8, -1.0, -1.0, -1.0])  # the reference problem (with ties): 7 pairs
DISTINCT = jnp.asarray([0.3, 1.0, -0.2, 0.8, -1.0])  # 5 distinct values: 10 pairs
TWO_D = jnp.stack([REF, DISTINCT])  # (prompts, outputs)
KEY = jax.random.key(0)
N, M, BIG = 8, 64, 2048


def signs(x) -> np.ndarray:
    """`sign(x_i - x_j)` for all pairs along the last axis."""
    x = np.asarray(x, dtype=float)
    return np.sign(x[..., :, None] - x[..., None, :])


def accuracy_np(proxies, true) -> np.ndarray:
    """Oracle, per proxy: the fraction of pairs (i < j) with distinct true rewards that
    the proxy orders the same way, strictly. `proxies` has shape `(batch, outputs)`."""
    t = signs(true)
    counted = np.triu(t != 0, 1)
    same = signs(proxies) == t
    return np.sum(same & counted, axis=(-2, -1)) / np.sum(counted)


# Every family, as `build(true_reward) -> batch`, with its batch size.
FAMILIES = {
    "gaussian": (lambda r: P.gaussian(KEY, r, 0.1, N), N),
    "gaussian_on": (lambda r: P.gaussian_on(KEY, r, 0.1, N, (0, 2)), N),
    "shift_grid": (lambda r: P.shift_grid(r, 1, jnp.linspace(-1.0, 1.0, 4)), 4),
    "grid_2d": (lambda r: P.grid_2d(r, (0, 1), [0.0, 1.0], [0.0, 0.5, 1.0]), 6),
    "swaps": (lambda r: P.swaps(r), 10),
    "monotone": (lambda r: P.monotone(KEY, r, N), N),
    "demote": (lambda r: P.demote(r, 0, [-2.0, -1.5]), 2),
    "with_accuracy": (lambda r: P.with_accuracy(KEY, r, 0.5, N), N),
    "feature_bias": (lambda r: P.feature_bias(r, jnp.eye(5), jnp.arange(5.0), [0.0, 1.0]), 2),
}


@pytest.mark.parametrize("name", sorted(FAMILIES))
@pytest.mark.parametrize("true", [DISTINCT, TWO_D], ids=["1d", "2d"])
def test_batch_layout(name, true):
    build, batch = FAMILIES[name]
    out = build(true)
    assert out.shape == (batch,) + true.shape
    assert out.dtype == true.dtype
    assert np.all(np.isfinite(out))


def test_float32_and_float64(dtype):
    """The batch has the true reward's dtype, and the defining properties hold in it."""
    r = jnp.asarray(DISTINCT, dtype)
    assert P.gaussian(KEY, r, 0.1, N).dtype == dtype
    assert P.shift_grid(r, 0, [0.0]).dtype == dtype
    acc = P.with_accuracy(KEY, r, 0.3, N)
    assert acc.dtype == dtype
    np.testing.assert_array_equal(accuracy_np(acc, r), 0.3)


# ---------------------------------------------------------------------------------------
# Reproducibility.
# ---------------------------------------------------------------------------------------

RANDOM = {
    "gaussian": lambda k, n: P.gaussian(k, TWO_D, 0.1, n),
    "gaussian_on": lambda k, n: P.gaussian_on(k, TWO_D, 0.1, n, (0, 2)),
    "monotone": lambda k, n: P.monotone(k, TWO_D, n),
    "with_accuracy": lambda k, n: P.with_accuracy(k, TWO_D, 0.5, n),
}
# For the chunking test: (family, the larger batch size another test compiles anyway).
RANDOM_1D = {
    "gaussian": (lambda k, n: P.gaussian(k, DISTINCT, 0.3, n), 20_000),
    "gaussian_on": (lambda k, n: P.gaussian_on(k, DISTINCT, 0.3, n, 1), 20_000),
    "monotone": (lambda k, n: P.monotone(k, DISTINCT, n), M),
    "with_accuracy": (lambda k, n: P.with_accuracy(k, DISTINCT, 0.9, n), BIG),
}


@pytest.mark.parametrize("name", sorted(RANDOM))
def test_same_key_same_bits_other_key_differs(name):
    build = RANDOM[name]
    a = np.asarray(build(KEY, N))
    np.testing.assert_array_equal(a, build(KEY, N))
    assert not np.array_equal(a, build(jax.random.key(1), N))
    # Proxies within a batch differ from each other.
    assert len({row.tobytes() for row in a.reshape(N, -1)}) > 1


@pytest.mark.parametrize("name", sorted(RANDOM_1D))
def test_prefix_stable_under_chunking(name):
    """Proxy i depends only on (key, i): a batch of N is the first N of a larger batch."""
    build, big = RANDOM_1D[name]
    np.testing.assert_array_equal(build(KEY, big)[:N], build(KEY, N))


def test_legacy_raw_keys():
    raw = jax.random.PRNGKey(3)
    np.testing.assert_array_equal(P.gaussian(raw, DISTINCT, 0.1, N), P.gaussian(raw, DISTINCT, 0.1, N))
    assert not np.array_equal(P.gaussian(raw, DISTINCT, 0.1, N), P.gaussian(KEY, DISTINCT, 0.1, N))


# ---------------------------------------------------------------------------------------
# Gaussian noise.
# ---------------------------------------------------------------------------------------


def test_gaussian_moments():
    """Sample mean, std and cross-output correlation of the noise, each within 5
    standard errors: mean SE = scale / sqrt(n), std SE ~= scale / sqrt(2 n),
    correlation SE ~= 1 / sqrt(n)."""
    n, scale = 20_000, 0.3
    noise = np.asarray(P.gaussian(KEY, DISTINCT, scale, n), dtype=float) - np.asarray(DISTINCT, dtype=float)
    np.testing.assert_allclose(noise.mean(axis=0), 0.0, atol=5 * scale / np.sqrt(n))
    np.testing.assert_allclose(noise.std(axis=0), scale, atol=5 * scale / np.sqrt(2 * n))
    corr = np.corrcoef(noise.T)[np.triu_indices(5, 1)]
    np.testing.assert_allclose(corr, 0.0, atol=5 / np.sqrt(n))
    # The scale multiplies the same standard normals: twice the scale, twice the noise.
    noise2 = np.asarray(P.gaussian(KEY, DISTINCT, 2 * scale, n), dtype=float) - np.asarray(DISTINCT, dtype=float)
    np.testing.assert_allclose(noise2, 2 * noise, rtol=1e-4, atol=1e-6)


def test_gaussian_on_leaves_other_outputs_untouched():
    r = np.asarray(DISTINCT)
    out = np.asarray(P.gaussian_on(KEY, DISTINCT, 0.5, N, [1, 3]))
    np.testing.assert_array_equal(out[:, [0, 2, 4]], np.broadcast_to(r[[0, 2, 4]], (N, 3)))
    assert np.all(out[:, [1, 3]] != r[[1, 3]])
    # One output chosen: a single int works.
    single = np.asarray(P.gaussian_on(KEY, DISTINCT, 0.5, N, 2))
    np.testing.assert_array_equal(np.delete(single, 2, axis=1), np.broadcast_to(np.delete(r, 2), (N, 4)))
    assert np.all(single[:, 2] != r[2])
    # All outputs chosen: bitwise the same as `gaussian`.
    np.testing.assert_array_equal(
        P.gaussian_on(KEY, DISTINCT, 0.5, N, range(5)), P.gaussian(KEY, DISTINCT, 0.5, N)
    )


def test_gaussian_on_one_prompt():
    r = np.asarray(TWO_D)
    out = np.asarray(P.gaussian_on(KEY, TWO_D, 0.5, N, [0, 4], prompt=1))
    np.testing.assert_array_equal(out[:, 0], np.broadcast_to(r[0], (N, 5)))
    np.testing.assert_array_equal(out[:, 1, 1:4], np.broadcast_to(r[1, 1:4], (N, 3)))
    assert np.all(out[:, 1, [0, 4]] != r[1, [0, 4]])


# ---------------------------------------------------------------------------------------
# Grids, demotion, swaps, feature bias.
# ---------------------------------------------------------------------------------------


def test_shift_grid_set_and_add():
    vals = np.asarray([-2.0, 0.0, 3.0], dtype=np.float32)
    r = np.asarray(REF)
    want_set = np.broadcast_to(r, (3, 5)).copy()
    want_set[:, 1] = vals
    np.testing.assert_array_equal(P.shift_grid(REF, 1, vals), want_set)
    want_add = np.broadcast_to(r, (3, 5)).copy()
    want_add[:, 1] = r[1] + vals
    np.testing.assert_array_equal(P.shift_grid(REF, 1, vals, mode="add"), want_add)
    # A scalar is a batch of one.
    np.testing.assert_array_equal(P.shift_grid(REF, 1, 3.0), want_set[2:])


def test_shift_grid_2d_every_prompt_or_one():
    r = np.asarray(TWO_D)
    out = np.asarray(P.shift_grid(TWO_D, 2, [5.0, 6.0]))
    np.testing.assert_array_equal(out[:, :, 2], [[5.0, 5.0], [6.0, 6.0]])
    np.testing.assert_array_equal(np.delete(out, 2, axis=2), np.broadcast_to(np.delete(r, 2, axis=1), (2, 2, 4)))
    one = np.asarray(P.shift_grid(TWO_D, 2, [5.0, 6.0], prompt=0))
    np.testing.assert_array_equal(one[:, 0, 2], [5.0, 6.0])
    np.testing.assert_array_equal(one[:, 1], np.broadcast_to(r[1], (2, 5)))


def test_grid_2d_row_major_order():
    vi, vj = np.asarray([10.0, 20.0], np.float32), np.asarray([1.0, 2.0, 3.0], np.float32)
    r = np.asarray(REF)
    out = np.asarray(P.grid_2d(REF, (3, 1), vi, vj))
    assert out.shape == (6, 5)
    for a, c in itertools.product(range(2), range(3)):
        want = r.copy()
        want[3], want[1] = vi[a], vj[c]
        np.testing.assert_array_equal(out[a * 3 + c], want)
    # The reshape recovers the map; the points helper lists the same order.
    grid = out.reshape(2, 3, 5)
    np.testing.assert_array_equal(grid[:, :, 3], np.broadcast_to(vi[:, None], (2, 3)))
    np.testing.assert_array_equal(grid[:, :, 1], np.broadcast_to(vj[None, :], (2, 3)))
    np.testing.assert_array_equal(P.grid_2d_points(vi, vj), out[:, [3, 1]])
    # Each row of the map is the 1-D sweep of the second output.
    np.testing.assert_array_equal(grid[1], P.shift_grid(P.shift_grid(REF, 3, 20.0)[0], 1, vj))
    added = np.asarray(P.grid_2d(REF, (3, 1), vi, vj, mode="add"))
    np.testing.assert_array_equal(added[:, [3, 1]], r[[3, 1]] + out[:, [3, 1]])
    np.testing.assert_array_equal(added[:, [0, 2, 4]], out[:, [0, 2, 4]])


def test_grid_2d_one_prompt():
    out = np.asarray(P.grid_2d(TWO_D, (0, 4), [7.0], [8.0, 9.0], prompt=1))
    np.testing.assert_array_equal(out[:, 0], np.broadcast_to(TWO_D[0], (2, 5)))
    np.testing.assert_array_equal(out[:, 1, [0, 4]], [[7.0, 8.0], [7.0, 9.0]])
    np.testing.assert_array_equal(out[:, 1, 1:4], np.broadcast_to(TWO_D[1, 1:4], (2, 3)))


def test_demote():
    r = np.asarray(REF)
    out = np.asarray(P.demote(REF, 1, jnp.asarray([0.0, -1.0, -3.0])))
    np.testing.assert_array_equal(out[:, 1], [0.0, -1.0, -3.0])
    np.testing.assert_array_equal(np.delete(out, 1, axis=1), np.broadcast_to(np.delete(r, 1), (3, 4)))
    want = r.copy()
    want[0] = -1.0
    np.testing.assert_array_equal(P.demote(REF, 0, -1.0), want[None])  # a scalar: batch of 1
    # Lowering to the current value is allowed; raising is not.
    np.testing.assert_array_equal(P.demote(REF, 1, r[1]), r[None])
    with pytest.raises(ValueError, match="`value`"):
        P.demote(REF, 1, [0.5, 0.9])
    # 2-D: the value must not exceed the output's reward in any affected prompt.
    with pytest.raises(ValueError, match="`value`"):
        P.demote(TWO_D, 0, 0.5)  # prompt 1 has 0.3 there
    low = np.asarray(P.demote(TWO_D, 0, 0.5, prompt=0))[0]
    assert low[0, 0] == 0.5
    np.testing.assert_array_equal(low[0, 1:], TWO_D[0, 1:])
    np.testing.assert_array_equal(low[1], TWO_D[1])


def test_swaps_default_pairs_are_all_pairs_in_order():
    out = np.asarray(P.swaps(DISTINCT))
    pairs = list(itertools.combinations(range(5), 2))
    assert out.shape == (len(pairs), 5)
    for b, (i, j) in enumerate(pairs):
        want = np.asarray(DISTINCT).copy()
        want[[i, j]] = want[[j, i]]
        np.testing.assert_array_equal(out[b], want)


def test_swaps_are_involutions_touching_only_the_pair():
    r = np.asarray(DISTINCT)
    pairs = [(0, 1), (4, 2), (1, 3)]
    out = np.asarray(P.swaps(DISTINCT, pairs))
    for b, (i, j) in enumerate(pairs):
        np.testing.assert_array_equal(P.swaps(out[b], [(i, j)])[0], r)
        others = [k for k in range(5) if k not in (i, j)]
        np.testing.assert_array_equal(out[b, others], r[others])
        assert out[b, i] == r[j] and out[b, j] == r[i]
    # 2-D: every prompt, or only one.
    r2 = np.asarray(TWO_D)
    both = np.asarray(P.swaps(TWO_D, [(0, 1)]))[0]
    np.testing.assert_array_equal(both[:, [1, 0, 2, 3, 4]], r2)
    one = np.asarray(P.swaps(TWO_D, [(0, 1)], prompt=1))[0]
    np.testing.assert_array_equal(one[0], r2[0])
    np.testing.assert_array_equal(one[1, [1, 0, 2, 3, 4]], r2[1])


def test_feature_bias_one_hot_is_a_shift_of_one_output():
    scales = jnp.asarray([-1.0, 0.5, 2.0])
    out = P.feature_bias(REF, jnp.eye(5), jnp.eye(5)[3], scales)
    np.testing.assert_array_equal(out, P.shift_grid(REF, 3, scales, mode="add"))


def test_feature_bias_general_and_per_prompt_features():
    phi = np.random.default_rng(5).normal(size=(5, 3))
    d = np.asarray([1.0, -2.0, 0.5])
    r = np.asarray(TWO_D, dtype=float)
    out = P.feature_bias(TWO_D, phi, d, [0.0, 2.0])
    want = r[None] + np.asarray([0.0, 2.0])[:, None, None] * (phi @ d)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
    out3 = np.asarray(P.feature_bias(TWO_D, np.stack([phi, -phi]), d, 1.0))[0]  # per prompt
    np.testing.assert_allclose(out3 - r, np.stack([phi @ d, -(phi @ d)]), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------
# Monotone transforms.
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("true, n", [(REF, M), (DISTINCT, M), (TWO_D, N)], ids=["ties", "distinct", "2d"])
def test_monotone_preserves_every_order_exactly(true, n):
    out = np.asarray(P.monotone(KEY, true, n))
    flat_true = np.asarray(true).reshape(-1)  # the same transform on every prompt
    flat = out.reshape(n, -1)
    want = signs(flat_true)  # includes ties: tied rewards stay tied
    np.testing.assert_array_equal(signs(flat), np.broadcast_to(want, (n,) + want.shape))
    # Not the identity, and a different transform for each proxy.
    assert np.max(np.abs(flat - flat_true)) > 0.05
    assert len({row.tobytes() for row in flat}) == n


def test_monotone_keeps_range_and_bounds_gap_shrinkage():
    """h(0) = 0, h(1) = 1 and h' >= min_slope: the range is kept and every gap is at
    least min_slope times the true gap."""
    r = jnp.asarray([-1.0, -0.9, 0.5, 0.6, 2.0])
    for slope in (0.1, 0.5):
        out = np.asarray(P.monotone(KEY, r, M, min_slope=slope), dtype=float)
        np.testing.assert_allclose(out[:, 0], -1.0, atol=1e-5)
        np.testing.assert_allclose(out[:, -1], 2.0, atol=1e-5)
        gaps, true_gaps = np.diff(out, axis=1), np.diff(np.asarray(r, dtype=float))
        assert np.all(gaps >= slope * true_gaps - 1e-5)
        if slope == 0.1:  # and the small gaps really can grow: the transforms are not affine
            assert np.max(gaps[:, 0] / true_gaps[0]) > 2.0
    # min_slope = 1 is the identity (up to rounding).
    np.testing.assert_allclose(P.monotone(KEY, r, M, min_slope=1.0), np.broadcast_to(r, (M, 5)), atol=1e-5)
    # A constant reward stays constant.
    np.testing.assert_array_equal(P.monotone(KEY, jnp.ones(5), N), jnp.ones((N, 5)))


# ---------------------------------------------------------------------------------------
# Prescribed ranking accuracy.
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("acc", [k / 10 for k in range(11)])
def test_with_accuracy_hits_the_grid_exactly(acc):
    out = np.asarray(P.with_accuracy(KEY, DISTINCT, acc, BIG))
    np.testing.assert_allclose(accuracy_np(out, DISTINCT), acc, atol=1e-12)
    # Without ties every proxy is a permutation of the true reward.
    np.testing.assert_array_equal(np.sort(out, axis=1), np.broadcast_to(np.sort(DISTINCT), (BIG, 5)))
    # Random: where several rankings qualify, several occur.
    n_rankings = len({tuple(np.argsort(p)) for p in out})
    assert n_rankings == 1 if acc in (0.0, 1.0) else n_rankings > 1


def test_with_accuracy_one_keeps_the_reward_zero_reverses_it():
    np.testing.assert_array_equal(P.with_accuracy(KEY, DISTINCT, 1.0, N), np.broadcast_to(DISTINCT, (N, 5)))
    rev = np.asarray(P.with_accuracy(KEY, DISTINCT, 0.0, N))
    order = np.argsort(np.asarray(DISTINCT))
    for proxy in rev:
        np.testing.assert_array_equal(np.argsort(proxy), order[::-1])


def test_with_accuracy_nearest_achievable():
    # 10 pairs: 0.33 -> 3/10, 0.37 -> 4/10, 0.25 -> 2/10 (half to even), 0.35 -> 4/10 ...
    for acc, want in [(0.33, 0.3), (0.37, 0.4), (0.25, 0.2), (0.35, 0.4), (0.04, 0.0), (0.96, 1.0)]:
        np.testing.assert_allclose(accuracy_np(P.with_accuracy(KEY, DISTINCT, acc, N), DISTINCT), want)


def test_with_accuracy_with_ties():
    """The reference reward has 7 pairs with distinct values; the proxies have no ties
    (so no counted pair is tied in the proxy) and accuracy round(7 acc) / 7."""
    for acc in np.linspace(0.0, 1.0, 8):
        out = np.asarray(P.with_accuracy(KEY, REF, acc, N))
        np.testing.assert_allclose(accuracy_np(out, REF), np.round(7 * acc) / 7, atol=1e-12)
        assert all(len(np.unique(p)) == 5 for p in out)
        np.testing.assert_allclose(out.min(axis=1), -1.0)
        np.testing.assert_allclose(out.max(axis=1), 1.0)


def test_with_accuracy_per_prompt():
    out = np.asarray(P.with_accuracy(KEY, TWO_D, 0.6, N))
    np.testing.assert_allclose(accuracy_np(out[:, 0], REF), 4 / 7)  # round(0.6 * 7) = 4
    np.testing.assert_allclose(accuracy_np(out[:, 1], DISTINCT), 0.6)


def test_with_accuracy_is_uniform_without_ties():
    """One discordant pair out of 10 (accuracy 0.9): exactly 4 rankings qualify (one
    adjacent swap in the true order each) and each should have frequency 1/4.
    Tolerance: 5 binomial standard errors, 5 sqrt((1/4)(3/4) / n)."""
    out = np.asarray(P.with_accuracy(KEY, DISTINCT, 0.9, BIG))
    order = np.argsort(np.asarray(DISTINCT)).tolist()  # outputs from worst to best
    swapped = [tuple(order[:a] + [order[a + 1], order[a]] + order[a + 2 :]) for a in range(4)]
    rankings = [tuple(np.argsort(p).tolist()) for p in out]
    freq = {k: rankings.count(k) / BIG for k in set(rankings)}
    assert set(freq) == set(swapped)
    np.testing.assert_allclose(list(freq.values()), 1 / 4, atol=5 * np.sqrt(3 / 16 / BIG))


def test_with_accuracy_many_outputs():
    """Above the size of the uniform-sampling table the accuracy is still exact."""
    r = np.random.default_rng(2).normal(size=70).astype(np.float32)
    n_pairs = 70 * 69 // 2
    out = np.asarray(P.with_accuracy(KEY, r, 0.8, 1))
    np.testing.assert_allclose(accuracy_np(out, r), round(0.8 * n_pairs) / n_pairs)


# ---------------------------------------------------------------------------------------
# jit / vmap == eager.
# ---------------------------------------------------------------------------------------


def test_jit_equals_eager_and_traced_bad_input_raises_at_run_time():
    noisy = jax.jit(lambda r: P.gaussian(KEY, r, 0.2, N))
    np.testing.assert_allclose(noisy(TWO_D), P.gaussian(KEY, TWO_D, 0.2, N), rtol=1e-6, atol=1e-6)
    with pytest.raises(Exception, match="`true_reward` must be finite"):
        jax.block_until_ready(noisy(TWO_D.at[0, 1].set(jnp.nan)))
    run = jax.jit(lambda acc: P.with_accuracy(KEY, TWO_D, acc, N))
    np.testing.assert_array_equal(run(0.4), P.with_accuracy(KEY, TWO_D, 0.4, N))
    with pytest.raises(Exception, match="`accuracy` must lie in"):
        jax.block_until_ready(run(1.5))
    shift = jax.jit(lambda r, vals: P.shift_grid(r, 1, vals, mode="add"))
    np.testing.assert_array_equal(shift(REF, jnp.arange(3.0)), P.shift_grid(REF, 1, jnp.arange(3.0), mode="add"))
    swap = jax.jit(lambda r: P.swaps(r, [(0, 4)]))
    np.testing.assert_array_equal(swap(TWO_D), P.swaps(TWO_D, [(0, 4)]))


def test_vmap_equals_eager():
    keys = jax.random.split(KEY, 3)
    by_key = jax.vmap(lambda k: P.gaussian_on(k, DISTINCT, 0.2, N, [0]))(keys)
    for i in range(3):
        np.testing.assert_allclose(by_key[i], P.gaussian_on(keys[i], DISTINCT, 0.2, N, [0]), rtol=1e-6, atol=1e-6)
    accs = jnp.asarray([0.0, 0.3, 0.7, 1.0])
    by_acc = jax.vmap(lambda acc: P.with_accuracy(KEY, DISTINCT, acc, N))(accs)
    for i, acc in enumerate(accs):
        np.testing.assert_array_equal(by_acc[i], P.with_accuracy(KEY, DISTINCT, acc, N))
    # jit(vmap(...)) of the deterministic families: one compilation instead of one per op.
    rewards = jnp.stack([REF, DISTINCT])
    by_reward = jax.jit(jax.vmap(lambda r: P.demote(r, 4, [-2.0])))(rewards)
    for i in range(2):
        np.testing.assert_array_equal(by_reward[i], P.demote(rewards[i], 4, [-2.0]))
    grids = jnp.stack([jnp.arange(3.0), -jnp.arange(3.0)])
    by_values = jax.jit(jax.vmap(lambda vals: P.grid_2d(REF, (0, 1), vals, vals)))(grids)
    for i in range(2):
        np.testing.assert_array_equal(by_values[i], P.grid_2d(REF, (0, 1), grids[i], grids[i]))


# ---------------------------------------------------------------------------------------
# User-supplied batches.
# ---------------------------------------------------------------------------------------


def test_as_batch():
    out = P.as_batch([[1, 0, 0, 0, 0], [0, 1, 0, 0, 0]], like=REF)
    assert isinstance(out, jax.Array) and jnp.issubdtype(out.dtype, jnp.floating)
    np.testing.assert_array_equal(out, np.eye(5)[:2])
    assert P.as_batch(np.zeros((3, 2, 5)), like=TWO_D).shape == (3, 2, 5)


# ---------------------------------------------------------------------------------------
# Bad input.
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "build, name",
    [
        (lambda: P.gaussian(KEY, [1.0, np.nan], 0.1, 2), "`true_reward`"),
        (lambda: P.gaussian(KEY, [1.0, np.inf], 0.1, 2), "`true_reward`"),
        (lambda: P.gaussian(KEY, [1.0], 0.1, 2), "`true_reward`"),
        (lambda: P.gaussian(KEY, np.zeros((1, 2, 3)), 0.1, 2), "`true_reward`"),
        (lambda: P.gaussian(KEY, "abc", 0.1, 2), "`true_reward`"),
        (lambda: P.gaussian(KEY, REF, 0.0, 2), "`scale`"),
        (lambda: P.gaussian(KEY, REF, -1.0, 2), "`scale`"),
        (lambda: P.gaussian(KEY, REF, [0.1, 0.2], 2), "`scale`"),
        (lambda: P.gaussian(KEY, REF, 0.1, 0), "`n`"),
        (lambda: P.gaussian(KEY, REF, 0.1, 2.0), "`n`"),
        (lambda: P.gaussian(0, REF, 0.1, 2), "`key`"),
        (lambda: P.gaussian(jax.random.split(KEY, 2), REF, 0.1, 2), "`key`"),
        (lambda: P.gaussian_on(KEY, REF, 0.1, 2, [5]), "`outputs`"),
        (lambda: P.gaussian_on(KEY, REF, 0.1, 2, [-1]), "`outputs`"),
        (lambda: P.gaussian_on(KEY, REF, 0.1, 2, []), "`outputs`"),
        (lambda: P.gaussian_on(KEY, REF, 0.1, 2, [1, 1]), "`outputs`"),
        (lambda: P.gaussian_on(KEY, REF, 0.1, 2, [1.5]), "`outputs`"),
        (lambda: P.gaussian_on(KEY, REF, 0.1, 2, [1], prompt=0), "`prompt`"),  # 1-D reward
        (lambda: P.gaussian_on(KEY, TWO_D, 0.1, 2, [1], prompt=2), "`prompt`"),
        (lambda: P.shift_grid(REF, 5, [0.0]), "`output`"),
        (lambda: P.shift_grid(REF, True, [0.0]), "`output`"),
        (lambda: P.shift_grid(REF, 0, [np.nan]), "`values`"),
        (lambda: P.shift_grid(REF, 0, []), "`values`"),
        (lambda: P.shift_grid(REF, 0, [[0.0]]), "`values`"),
        (lambda: P.shift_grid(REF, 0, [0.0], mode="mul"), "`mode`"),
        (lambda: P.grid_2d(REF, (0, 0), [0.0], [0.0]), "`outputs`"),
        (lambda: P.grid_2d(REF, (0, 1, 2), [0.0], [0.0]), "`outputs`"),
        (lambda: P.grid_2d(REF, (0, 9), [0.0], [0.0]), "`outputs`"),
        (lambda: P.grid_2d(REF, (0, 1), [np.inf], [0.0]), "`values_i`"),
        (lambda: P.grid_2d(REF, (0, 1), [0.0], []), "`values_j`"),
        (lambda: P.swaps(REF, [(0, 0)]), "`pairs`"),
        (lambda: P.swaps(REF, [(0, 5)]), "`pairs`"),
        (lambda: P.swaps(REF, [(0, 1, 2)]), "`pairs`"),
        (lambda: P.swaps(REF, []), "`pairs`"),
        (lambda: P.demote(REF, 7, -1.0), "`output`"),
        (lambda: P.demote(REF, 2, 0.0), "`value`"),
        (lambda: P.monotone(KEY, REF, 0), "`n`"),
        (lambda: P.monotone(KEY, REF, 2, knots=0), "`knots`"),
        (lambda: P.monotone(KEY, REF, 2, min_slope=0.0), "`min_slope`"),
        (lambda: P.monotone(KEY, REF, 2, min_slope=1.5), "`min_slope`"),
        (lambda: P.with_accuracy(KEY, REF, 1.1, 2), "`accuracy`"),
        (lambda: P.with_accuracy(KEY, REF, -0.1, 2), "`accuracy`"),
        (lambda: P.with_accuracy(KEY, REF, np.nan, 2), "`accuracy`"),
        (lambda: P.with_accuracy(KEY, REF, 0.5, -3), "`n`"),
        (lambda: P.with_accuracy(KEY, jnp.ones(4), 0.5, 2), "`true_reward`"),  # no distinct pair
        (lambda: P.with_accuracy(KEY, jnp.stack([REF, jnp.ones(5)]), 0.5, 2), "`true_reward`"),
        (lambda: P.feature_bias(REF, np.eye(4), np.ones(4), [1.0]), "`features`"),
        (lambda: P.feature_bias(REF, np.ones((2, 5, 3)), np.ones(3), [1.0]), "`features`"),
        (lambda: P.feature_bias(TWO_D, np.ones((3, 5, 3)), np.ones(3), [1.0]), "`features`"),
        (lambda: P.feature_bias(REF, np.eye(5), np.ones(4), [1.0]), "`direction`"),
        (lambda: P.feature_bias(REF, np.eye(5), np.ones(5), [np.nan]), "`scales`"),
        (lambda: P.as_batch(np.zeros(5), like=REF), "`rewards`"),
        (lambda: P.as_batch(np.zeros((2, 4)), like=REF), "`rewards`"),
        (lambda: P.as_batch(np.zeros((0, 5)), like=REF), "`rewards`"),
        (lambda: P.as_batch(np.full((1, 5), np.nan), like=REF), "`rewards`"),
        (lambda: P.as_batch(np.zeros((1, 5)), like=[np.nan] * 5), "`like`"),
    ],
)
def test_bad_input_names_the_argument(build, name):
    with pytest.raises(ValueError, match=name):
        build()
