"""Reward-model metrics: hand-computed cases, invariances, log-space stability, the
teacher-quality rates against independent derivatives, jit/vmap, and bad input."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import tol

import gradflow as gf
from gradflow import metrics as gm

# ---------------------------------------------------------------------------------------
# The worked example of docs/metrics.md: one prompt, three outputs.
# pi = (0.2, 0.5, 0.3), r_G = (1, 0.5, 0), r_P = (0.3, 0.6, 0.4); V_P = 0.48.
# Ground-truth pairs (y1, y2), (y1, y3), (y2, y3): the first two are misranked by r_P;
# y2 (0.6) is above V_P (harmful), y3 (0.4) below it (benign).
# ---------------------------------------------------------------------------------------

_PI = (0.2, 0.5, 0.3)
_RG = (1.0, 0.5, 0.0)
_RP = (0.3, 0.6, 0.4)
_W, _L = np.array([0, 0, 1]), np.array([1, 2, 2])

# Test data is built and sliced with NumPy: eager JAX operations would each compile once
# per shape, and compilation dominates the run time of this file.


def _log_softmax(x, dtype=np.float32):
    x = np.asarray(x, np.float64)
    z = x - x.max(axis=-1, keepdims=True)
    return (z - np.log(np.exp(z).sum(axis=-1, keepdims=True))).astype(dtype)


def _example(dtype):
    dt = np.dtype(dtype)
    return np.log(np.asarray(_PI, dt)), np.asarray(_RP, dt), np.asarray(_RG, dt)


def test_worked_example_by_hand(dtype):
    logp, rp, rg = _example(dtype)
    t = tol(dtype, 1e-6, 1e-12)
    v_p = gm.mean_reward(logp, rp)
    assert v_p.shape == ()
    np.testing.assert_allclose(v_p, 0.48, rtol=t)
    rc, rr, lc, lr = rp[_W], rp[_L], logp[_W], logp[_L]
    # pi(y_w) pi(y_l) = 0.10, 0.06, 0.15 -> weights 10/31, 6/31, 15/31.
    np.testing.assert_allclose(gm.pair_weights(lc, lr), np.array([10, 6, 15]) / 31, rtol=t)
    assert gm.acc(rc, rr) == pytest.approx(1 / 3, rel=t)
    assert gm.hacc(rc, rr, v_p) == pytest.approx(2 / 3, rel=t)
    assert gm.acc_w(rc, rr, lc, lr) == pytest.approx(15 / 31, rel=t)
    assert gm.hacc_w(rc, rr, v_p, lc, lr) == pytest.approx(21 / 31, rel=t)
    # One vs many: y1 against {y2, y3}; y2 beats it and sits above the mean.
    assert gm.one_vs_many_acc(rp[0], rp[1:]) == 0.0
    assert gm.one_vs_many_hacc(rp[0], rp[1:], v_p) == 0.0
    assert gm.one_vs_many_acc_w(rp[0], rp[1:], logp[0], logp[1:]) == 0.0
    assert gm.one_vs_many_hacc_w(rp[0], rp[1:], v_p, logp[0], logp[1:]) == 0.0
    # Teacher quality.
    assert gm.reward_variance(logp, rp) == pytest.approx(0.0156, rel=tol(dtype, 1e-5, 1e-12))
    assert gm.reward_variance(logp, rg) == pytest.approx(0.1225, rel=tol(dtype, 1e-5, 1e-12))
    assert gm.true_reward_rate(logp, rp, rg) == pytest.approx(0.00078, rel=tol(dtype, 1e-4, 1e-10))
    assert gm.true_reward_rate(logp, rg, rg) == pytest.approx(0.03095, rel=tol(dtype, 1e-5, 1e-12))
    for out in (gm.acc(rc, rr), gm.acc_w(rc, rr, lc, lr), gm.one_vs_many_acc(rp[0], rp[1:])):
        assert out.shape == () and out.dtype == dtype


def test_misranked_pair_below_the_mean_is_harmless():
    # One misranked pair: r_P(y_l) = 0.5 > r_P(y_w) = 0.2, but the mean is 0.7.
    assert gm.acc([0.2], [0.5]) == 0.0
    assert gm.hacc([0.2], [0.5], 0.7) == 1.0
    assert gm.hacc_w([0.2], [0.5], 0.7, [-1.0], [-2.0]) == 1.0
    # The same error with the rejected output above the mean is harmful.
    assert gm.hacc([0.2], [0.5], 0.4) == 0.0
    # Correct pairs are fine whatever the mean.
    assert gm.hacc([0.5], [0.2], -5.0) == 1.0


def test_ties_count_as_wrong():
    assert gm.acc([1.0, 1.0], [1.0, 0.0]) == 0.5
    assert gm.acc_w([1.0, 1.0], [1.0, 0.0], [0.0, 0.0], [0.0, 0.0]) == 0.5
    # The harm-aware escape is strict too: a rejected output exactly at the mean counts.
    assert gm.hacc([1.0], [1.0], 1.0) == 0.0
    assert gm.hacc([0.0], [1.0], 1.0) == 0.0
    assert gm.one_vs_many_acc([1.0, 2.0], [[0.0, 1.0], [1.0, 0.0]]) == 0.5
    assert gm.one_vs_many_hacc([0.0], [[0.5, 1.0]], [1.0]) == 0.0


def test_one_vs_many_hacc_needs_every_rejected_below_the_mean():
    r_chosen = np.asarray([0.0, 0.0])
    r_rejected = np.asarray([[0.5, 0.6], [0.5, 0.9]])
    mean = np.asarray([0.7, 0.7])  # prompt 0: all below; prompt 1: 0.9 is above
    assert gm.one_vs_many_acc(r_chosen, r_rejected) == 0.0
    assert gm.one_vs_many_hacc(r_chosen, r_rejected, mean) == 0.5
    # Pairwise, three of the four pairs escape.
    rc = np.broadcast_to(r_chosen[:, None], (2, 2))
    assert gm.hacc(rc, r_rejected, mean) == 0.75


# ---------------------------------------------------------------------------------------
# Weights.
# ---------------------------------------------------------------------------------------


def _random_pairs(seed, prompts=4, pairs=5, dtype=np.float32):
    rng = np.random.default_rng(seed)
    rc = rng.normal(size=(prompts, pairs))
    rr = rng.normal(size=(prompts, pairs))
    lc = np.log(rng.uniform(0.01, 1.0, size=(prompts, pairs)))
    lr = np.log(rng.uniform(0.01, 1.0, size=(prompts, pairs)))
    mean = rng.normal(size=prompts) * 0.5
    mask = rng.uniform(size=(prompts, pairs)) < 0.7
    mask[:, 0] = True
    return tuple(np.asarray(a, dtype) for a in (rc, rr, lc, lr, mean)) + (mask,)


def test_pair_weights_are_normalised_products(dtype):
    _, _, lc, lr, _, mask = _random_pairs(0, dtype=np.dtype(dtype))
    t = tol(dtype, 1e-6, 1e-13)
    w = gm.pair_weights(lc, lr)
    prod = np.exp(np.asarray(lc, np.float64) + np.asarray(lr, np.float64))
    np.testing.assert_allclose(w, prod / prod.sum(), rtol=10 * t)
    assert float(np.sum(w)) == pytest.approx(1.0, abs=10 * t)
    wm = gm.pair_weights(lc, lr, mask)
    assert np.all(np.asarray(wm)[~np.asarray(mask)] == 0)
    pm = np.where(mask, prod, 0.0)
    np.testing.assert_allclose(wm, pm / pm.sum(), rtol=10 * t)


def test_one_vs_many_weights_are_normalised_products():
    dtype = jnp.float32
    rng = np.random.default_rng(1)
    lc = np.log(rng.uniform(0.05, 1, size=3))
    lr = np.log(rng.uniform(0.05, 1, size=(3, 4)))
    mask = np.array([[1, 1, 1, 1], [1, 0, 1, 0], [0, 0, 0, 1]], bool)
    lr_padded = np.where(mask, lr, np.nan)  # padding may hold anything
    w = gm.one_vs_many_weights(lc.astype(dtype), lr_padded.astype(dtype), mask)
    ref = np.exp(lc) * np.prod(np.where(mask, np.exp(lr), 1.0), axis=1)
    np.testing.assert_allclose(w, ref / ref.sum(), rtol=tol(dtype, 1e-5, 1e-12))


def _softmax64(s):
    s = np.asarray(s, np.float64)
    e = np.exp(s - s.max())
    return e / e.sum()


def test_log_space_weights_do_not_underflow():
    # log pi(y_w) + log pi(y_l) ~ -4000: the products underflow to 0 even in float64.
    rng = np.random.default_rng(2)
    lc = (-2000.0 + rng.normal(size=(3, 4)) * 3).astype(np.float32)
    lr = (-2000.0 + rng.normal(size=(3, 4)) * 3).astype(np.float32)
    lc64, lr64 = np.asarray(lc, np.float64), np.asarray(lr, np.float64)
    assert np.all(np.exp(lc64 + lr64) == 0)
    # The float64 reference, from the same (float32) inputs.
    ref = _softmax64(lc64 + lr64)
    w = gm.pair_weights(lc, lr)
    assert w.dtype == jnp.float32
    assert np.all(np.isfinite(w))
    assert float(np.sum(w)) == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(w, ref, rtol=1e-5, atol=1e-9)
    mask = rng.uniform(size=(3, 4)) < 0.6
    mask[0, 0] = True
    ref_m = _softmax64(np.where(mask, lc64 + lr64, -np.inf))
    np.testing.assert_allclose(gm.pair_weights(lc, lr, mask), ref_m, rtol=1e-5, atol=1e-9)
    rc, rr = rng.normal(size=(2, 3, 4)).astype(np.float32)
    a = gm.acc_w(rc, rr, lc, lr)
    assert float(a) == pytest.approx(float(np.sum(ref * (np.asarray(rc) > np.asarray(rr)))), abs=1e-6)
    # One vs many: log pi(y_w) + sum_j log pi(y_l,j) ~ -10000.
    wp = gm.one_vs_many_weights(lc[:, 0], lr)
    assert np.all(np.isfinite(wp)) and float(np.sum(wp)) == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(wp, _softmax64(lc64[:, 0] + lr64.sum(axis=1)), rtol=1e-5, atol=1e-9)
    # Ragged: a prompt with fewer rejected outputs has one factor pi(y) ~ e^-2000 fewer.
    mask = np.asarray([[True] * 4, [True] * 4, [True, True, True, False]])
    # Lower prompt 2's three factors so that their product is comparable with the others' 4.
    lr_shift = lr.copy()
    lr_shift[2] -= np.float32(2000.0 / 3)
    lr_shift64 = np.asarray(lr_shift, np.float64)
    ref_r = _softmax64(lc64[:, 0] + np.where(mask, lr_shift64, 0).sum(axis=1))
    assert 1e-3 < ref_r[2] < 1 - 1e-3
    np.testing.assert_allclose(gm.one_vs_many_weights(lc[:, 0], lr_shift, mask), ref_r,
                               rtol=2e-3, atol=1e-9)


def test_uniform_log_probs_give_unweighted_metrics():
    dtype = jnp.float32
    rc, rr, _, _, mean, mask = _random_pairs(3)
    flat = np.full(rc.shape, -1.7, dtype)
    t = tol(dtype, 1e-6, 1e-13)
    for m in (None, mask):
        assert gm.acc_w(rc, rr, flat, flat, m) == pytest.approx(float(gm.acc(rc, rr, m)), abs=t)
        assert gm.hacc_w(rc, rr, mean, flat, flat, m) == pytest.approx(
            float(gm.hacc(rc, rr, mean, m)), abs=t
        )
    assert gm.one_vs_many_acc_w(rc[:, 0], rr, flat[:, 0], flat) == pytest.approx(
        float(gm.one_vs_many_acc(rc[:, 0], rr)), abs=t
    )
    assert gm.one_vs_many_hacc_w(rc[:, 0], rr, mean, flat[:, 0], flat) == pytest.approx(
        float(gm.one_vs_many_hacc(rc[:, 0], rr, mean)), abs=t
    )


# ---------------------------------------------------------------------------------------
# Invariances and consistency between the variants.
# ---------------------------------------------------------------------------------------


def _all_metrics(rc, rr, lc, lr, mean, mask):
    """Every metric on one data set (one-vs-many: the first pair's chosen output of each
    prompt against all its rejected outputs)."""
    return dict(
        acc=gm.acc(rc, rr, mask),
        acc_w=gm.acc_w(rc, rr, lc, lr, mask),
        hacc=gm.hacc(rc, rr, mean, mask),
        hacc_w=gm.hacc_w(rc, rr, mean, lc, lr, mask),
        ovm_acc=gm.one_vs_many_acc(rc[:, 0], rr, mask),
        ovm_acc_w=gm.one_vs_many_acc_w(rc[:, 0], rr, lc[:, 0], lr, mask),
        ovm_hacc=gm.one_vs_many_hacc(rc[:, 0], rr, mean, mask),
        ovm_hacc_w=gm.one_vs_many_hacc_w(rc[:, 0], rr, mean, lc[:, 0], lr, mask),
    )


@pytest.mark.parametrize("seed", range(3))
def test_permuting_pairs_and_prompts_changes_nothing(seed):
    rc, rr, lc, lr, mean, mask = _random_pairs(seed)
    rng = np.random.default_rng(100 + seed)
    # Chosen outputs that beat some but not all rejected ones, so nothing is trivially 0/1.
    ref = _all_metrics(rc, rr, lc, lr, mean, mask)
    assert 0 < float(ref["acc"]) < 1 and float(ref["hacc"]) > float(ref["acc"])
    perm_pairs = rng.permutation(5)
    perm_prompts = rng.permutation(4)
    for rows, cols in ((np.arange(4), perm_pairs), (perm_prompts, np.arange(5)),
                       (perm_prompts, perm_pairs)):
        # The one-vs-many chosen output is column 0: keep it first when permuting pairs of
        # the rejected side only.
        def p(a, rows=rows, cols=cols):
            return a[rows][:, cols]

        rc_p, lc_p = p(rc), p(lc)
        rc_p[:, 0], lc_p[:, 0] = rc[rows, 0], lc[rows, 0]
        # Pairwise metrics need the chosen side permuted together with the rejected side.
        out = _all_metrics(p(rc), p(rr), p(lc), p(lr), mean[rows], p(mask))
        out_ovm = _all_metrics(rc_p, p(rr), lc_p, p(lr), mean[rows], p(mask))
        for k in ("acc", "acc_w", "hacc", "hacc_w"):
            assert float(out[k]) == pytest.approx(float(ref[k]), abs=1e-6), k
        for k in ("ovm_acc", "ovm_acc_w", "ovm_hacc", "ovm_hacc_w"):
            assert float(out_ovm[k]) == pytest.approx(float(ref[k]), abs=1e-6), k


def test_mask_equals_dropping_the_pairs():
    dtype = jnp.float32
    # Ragged data: prompt 0 has 3 pairs, prompt 1 has 1. Padding holds NaN.
    rc = [[0.5, 0.1, 0.9], [0.2, np.nan, np.nan]]
    rr = [[0.4, 0.3, 1.0], [0.6, np.nan, np.nan]]
    lc = [[-1.0, -0.5, -2.0], [-0.3, np.nan, np.nan]]
    lr = [[-1.5, -0.2, -1.0], [-0.7, np.nan, np.nan]]
    mask = np.asarray([[True, True, True], [True, False, False]])
    mean = [0.35, 0.1]
    rc, rr, lc, lr, mean = (np.asarray(a, np.float32) for a in (rc, rr, lc, lr, mean))
    flat = lambda a: a[mask]  # noqa: E731
    # The same pairs as one flat list (the pooled metrics do not see prompts, except
    # through each pair's mean reward).
    mean_flat = np.broadcast_to(mean[:, None], mask.shape)[mask]
    t = tol(dtype, 1e-6, 1e-13)
    assert gm.acc(rc, rr, mask) == pytest.approx(float(gm.acc(flat(rc), flat(rr))), abs=t)
    assert gm.acc(rc, rr, mask) == pytest.approx(1 / 4, abs=t)  # only (0.5, 0.4)
    assert gm.acc_w(rc, rr, lc, lr, mask) == pytest.approx(
        float(gm.acc_w(flat(rc), flat(rr), flat(lc), flat(lr))), abs=t
    )
    # hacc with a per-pair mean: each flat pair as its own prompt.
    hacc_flat = gm.hacc(flat(rc)[:, None], flat(rr)[:, None], mean_flat)
    assert gm.hacc(rc, rr, mean, mask) == pytest.approx(float(hacc_flat), abs=t)
    assert gm.hacc(rc, rr, mean, mask) == pytest.approx(2 / 4, abs=t)  # + (0.1, 0.3 < 0.35)
    hacc_w_flat = gm.hacc_w(flat(rc)[:, None], flat(rr)[:, None], mean_flat,
                            flat(lc)[:, None], flat(lr)[:, None])
    assert gm.hacc_w(rc, rr, mean, lc, lr, mask) == pytest.approx(float(hacc_w_flat), abs=t)
    for v in _all_metrics(rc, rr, lc, lr, mean, mask).values():
        assert np.isfinite(float(v))


def test_one_vs_many_with_one_rejected_is_pairwise():
    dtype = jnp.float32
    rc, rr, lc, lr, mean, _ = _random_pairs(4, prompts=7, pairs=1)
    t = tol(dtype, 1e-6, 1e-13)
    pairs = (
        (gm.one_vs_many_acc(rc[:, 0], rr), gm.acc(rc, rr)),
        (gm.one_vs_many_acc_w(rc[:, 0], rr, lc[:, 0], lr), gm.acc_w(rc, rr, lc, lr)),
        (gm.one_vs_many_hacc(rc[:, 0], rr, mean), gm.hacc(rc, rr, mean)),
        (gm.one_vs_many_hacc_w(rc[:, 0], rr, mean, lc[:, 0], lr), gm.hacc_w(rc, rr, mean, lc, lr)),
    )
    for ovm, pw in pairs:
        assert float(ovm) == pytest.approx(float(pw), abs=t)
    np.testing.assert_allclose(
        gm.one_vs_many_weights(lc[:, 0], lr), gm.pair_weights(lc, lr)[:, 0], rtol=10 * t
    )


def test_one_vs_many_compares_with_the_maximum():
    r_chosen = np.asarray([1.0, 1.0, 1.0])
    r_rejected = np.asarray([[0.0, 0.9, 0.5], [0.0, 1.1, 0.5], [2.0, 0.0, 0.0]])
    assert gm.one_vs_many_acc(r_chosen, r_rejected) == pytest.approx(1 / 3)
    # Masking out the only rejected output that wins makes the prompt correct.
    mask = np.asarray([[True] * 3, [True, False, True], [True] * 3])
    assert gm.one_vs_many_acc(r_chosen, r_rejected, mask) == pytest.approx(2 / 3)
    # Weighted: prompt weights exp(logp_c + sum logp_r).
    lc = np.log([0.5, 0.2, 0.4])
    lr = np.log([[0.1, 0.2, 0.2], [0.3, 0.2, 0.3], [0.2, 0.2, 0.2]])
    s = np.array([0.5 * 0.004, 0.2 * 0.018, 0.4 * 0.008])
    assert gm.one_vs_many_acc_w(r_chosen, r_rejected, lc, lr) == pytest.approx(s[0] / s.sum(), rel=1e-5)


def test_single_prompt_inputs_match_two_dimensional():
    rc, rr, lc, lr, mean, mask = _random_pairs(5, prompts=1)
    one_d = _all_metrics(rc, rr, lc, lr, mean, mask)
    assert all(value.shape == () for value in one_d.values())
    assert gm.acc(rc[0], rr[0], mask[0]) == one_d["acc"]
    assert gm.hacc(rc[0], rr[0], mean[0], mask[0]) == one_d["hacc"]
    assert gm.hacc_w(rc[0], rr[0], mean, lc[0], lr[0], mask[0]) == pytest.approx(
        float(one_d["hacc_w"]), abs=1e-7
    )
    assert gm.one_vs_many_hacc(rc[0, 0], rr[0], mean[0], mask[0]) == one_d["ovm_hacc"]
    assert gm.pair_weights(lc[0], lr[0]).shape == (5,)
    assert gm.one_vs_many_weights(lc[0, 0], lr[0]).shape == ()


# ---------------------------------------------------------------------------------------
# jit / vmap.
# ---------------------------------------------------------------------------------------


def test_jit_and_vmap_match_eager():
    rc, rr, lc, lr, mean, mask = _random_pairs(6)
    eager = _all_metrics(rc, rr, lc, lr, mean, mask)
    # A batch of proxies (rewards vary; log-probs, means and the mask are shared).
    rng = np.random.default_rng(7)
    rcs = rng.normal(size=(5,) + rc.shape).astype(np.float32)
    rrs = rng.normal(size=(5,) + rr.shape).astype(np.float32)

    @jax.jit  # one compilation for both
    def both(rc, rr, rcs, rrs):
        batch = jax.vmap(_all_metrics, in_axes=(0, 0, None, None, None, None))
        return _all_metrics(rc, rr, lc, lr, mean, mask), batch(rcs, rrs, lc, lr, mean, mask)

    jitted, batched = both(rc, rr, rcs, rrs)
    for k in eager:
        assert float(jitted[k]) == pytest.approx(float(eager[k]), abs=1e-6), k
    for i in range(5):
        one = _all_metrics(rcs[i], rrs[i], lc, lr, mean, mask)
        for k in one:
            assert float(batched[k][i]) == pytest.approx(float(one[k]), abs=1e-6), k
    # The teacher-quality functions too.
    logp = _log_softmax(rng.normal(size=(5, 3, 4)))
    rp = rng.normal(size=(5, 3, 4)).astype(np.float32)
    rg = rng.normal(size=(3, 4)).astype(np.float32)

    def teacher(lp, r):
        return (gm.mean_reward(lp, r), gm.reward_variance(lp, r), gm.true_reward_rate(lp, r, rg))

    out = jax.jit(jax.vmap(teacher))(logp, rp)
    for i in range(5):
        for got, want in zip(out, teacher(logp[i], rp[i]), strict=True):
            np.testing.assert_allclose(got[i], want, rtol=1e-5, atol=1e-7)


def test_traced_bad_input_raises_at_run_time():
    run = jax.jit(gm.acc)
    assert run(np.asarray([1.0, 0.0]), np.asarray([0.0, 1.0])) == 0.5
    with pytest.raises(Exception, match="`r_rejected` must be finite"):
        jax.block_until_ready(run(np.asarray([1.0, 0.0]), np.asarray([0.0, np.nan])))
    with pytest.raises(Exception, match="`mask` must keep at least one pair"):
        jax.block_until_ready(run(np.zeros(2), np.zeros(2), np.zeros(2, bool)))


# ---------------------------------------------------------------------------------------
# Mean reward, sampled mean reward, variance, rate of the ground truth.
# ---------------------------------------------------------------------------------------


def test_sampled_mean_reward_converges():
    rng = np.random.default_rng(8)
    logp = _log_softmax(rng.normal(size=(4, 6)) * 1.5)
    r = rng.normal(size=(4, 6)).astype(np.float32)
    exact = gm.mean_reward(logp, r)
    p = np.exp(np.asarray(logp, np.float64))
    np.testing.assert_allclose(exact, np.sum(p * np.asarray(r), axis=1), rtol=1e-5)
    var = np.sum(p * (np.asarray(r) - np.asarray(exact)[:, None]) ** 2, axis=1)
    n, n_keys = 2000, 20

    @jax.jit
    def draw(keys):
        many = jax.vmap(lambda k: gm.sampled_mean_reward(k, logp, r, n))(keys)
        return many, gm.sampled_mean_reward(keys[0], logp[0], r[0], n)

    # The estimator does not depend on the key's implementation; "rbg" keys compile in a
    # fraction of the time of the default threefry ones on CPU.
    keys = jax.random.split(jax.random.key(0, impl="rbg"), n_keys)
    est, one = draw(keys)
    assert est.shape == (n_keys, 4) and one.shape == ()  # one prompt (1-D): a scalar
    # Standardised errors: unbiased with standard error sqrt(Var / n). Each |z| < 5, and
    # the 80 of them have mean square ~1 (chi-square / 80: sd 0.16; bounds > 3 sd away).
    z = (np.asarray(est, np.float64) - np.asarray(exact, np.float64)[None]) / np.sqrt(var / n)
    assert np.all(np.abs(z) < 5)
    assert 0.5 < np.mean(z**2) < 1.6
    # Pooling the keys (n_keys * n samples per prompt) is correspondingly closer.
    assert np.all(np.abs(np.mean(z, axis=0)) * np.sqrt(n_keys) < 5)
    assert abs(float(one) - float(exact[0])) < 5 * np.sqrt(var[0] / n)
    # It really samples; the keys differ; the same keys give the same draws.
    assert np.all(np.asarray(est) != np.asarray(exact)[None])
    assert np.all(np.asarray(est[0]) != np.asarray(est[1]))
    np.testing.assert_array_equal(est, draw(keys)[0])


def _rate_problem(dtype):
    rng = np.random.default_rng(9)
    dt = np.dtype(dtype)
    theta, rp, rg = rng.normal(size=(3, 3, 4)).astype(dt)
    w = np.asarray([0.5, 0.3, 0.2], dt)
    return theta, rp, rg, w


@pytest.mark.parametrize("weighted", [False, True])
def test_true_reward_rate_is_the_derivative_along_the_flow(dtype, weighted):
    theta, rp, rg, w = _rate_problem(dtype)
    weights = w if weighted else None
    wx = w if weighted else np.full((3,), 1 / 3, np.dtype(dtype))
    logp = _log_softmax(theta, np.dtype(dtype))

    def value(th, r):  # sum_x w_x E_pi[r]
        return jnp.sum(wx * jnp.sum(jax.nn.softmax(th, axis=-1) * r, axis=-1))

    @jax.jit
    def oracle(th):
        # The tabular flow direction on the proxy, d theta = grad_theta V_P, and the
        # derivative of V_G along it.
        direction = jax.grad(value)(th, rp)
        return direction, jax.jvp(lambda t: value(t, rg), (th,), (direction,))[1]

    direction, jvp = oracle(theta)
    rate = gm.true_reward_rate(logp, rp, rg, weights)
    np.testing.assert_allclose(rate, jvp, rtol=tol(dtype, 1e-4, 1e-11))
    # An independent central finite difference in float64 NumPy.
    th64, d64 = np.asarray(theta, np.float64), np.asarray(direction, np.float64)

    def v_np(th):
        e = np.exp(th - th.max(axis=1, keepdims=True))
        p = e / e.sum(axis=1, keepdims=True)
        return np.sum(np.asarray(wx, np.float64) * np.sum(p * np.asarray(rg, np.float64), axis=1))

    h = 1e-5
    fd = (v_np(th64 + h * d64) - v_np(th64 - h * d64)) / (2 * h)
    np.testing.assert_allclose(rate, fd, rtol=tol(dtype, 1e-4, 1e-7))
    # And the library's policy-based version (automatic differentiation through the policy).
    policy = gf.TabularSoftmax(theta, weights=weights)
    np.testing.assert_allclose(rate, jax.jit(gf.true_reward_rate)(policy, rp, rg),
                               rtol=tol(dtype, 1e-4, 1e-11))


@pytest.mark.parametrize("weighted", [False, True])
def test_reward_variance_matches_the_definition(dtype, weighted):
    theta, rp, _, w = _rate_problem(dtype)
    weights = w if weighted else None
    logp = _log_softmax(theta, np.dtype(dtype))
    p = np.exp(np.asarray(logp, np.float64))
    r = np.asarray(rp, np.float64)
    wx = np.asarray(w, np.float64) if weighted else np.full(3, 1 / 3)
    mean = np.sum(p * r, axis=1, keepdims=True)
    ref = np.sum(wx * np.sum(p * (r - mean) ** 2, axis=1))
    got = gm.reward_variance(logp, rp, weights)
    np.testing.assert_allclose(got, ref, rtol=tol(dtype, 1e-5, 1e-12))
    policy = gf.TabularSoftmax(theta, weights=weights)
    np.testing.assert_allclose(got, jax.jit(gf.reward_variance)(policy, rp), rtol=tol(dtype, 1e-5, 1e-12))
    # A constant reward has no variance, and teaches nothing.
    assert float(gm.reward_variance(logp, np.ones_like(rp))) == pytest.approx(0.0, abs=1e-6)
    assert float(gm.true_reward_rate(logp, np.ones_like(rp), rp)) == pytest.approx(0.0, abs=1e-6)


# ---------------------------------------------------------------------------------------
# Bad input.
# ---------------------------------------------------------------------------------------

_R2 = [[0.1, 0.2], [0.3, 0.4]]
_LP = np.log([[0.5, 0.5], [0.25, 0.75]]).tolist()


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda: gm.acc([0.1, 0.2], [0.1, 0.2, 0.3]), "`r_rejected`"),
        (lambda: gm.acc([[[0.1]]], [[[0.2]]]), "`r_chosen`"),
        (lambda: gm.acc(0.1, 0.2), "`r_chosen`"),
        (lambda: gm.acc([], []), "`r_chosen`"),
        (lambda: gm.acc("ab", [0.1]), "`r_chosen`"),
        (lambda: gm.acc([0.1, np.nan], [0.1, 0.2]), "`r_chosen`"),
        (lambda: gm.acc([0.1, 0.2], [np.inf, 0.2]), "`r_rejected`"),
        (lambda: gm.acc(_R2, _R2, mask=[True, False]), "`mask`"),
        (lambda: gm.acc(_R2, _R2, mask=[[1, 0], [1, 1]]), "`mask`"),
        (lambda: gm.acc(_R2, _R2, mask=np.zeros((2, 2), bool)), "`mask`"),
        (lambda: gm.acc_w(_R2, _R2, _LP, [0.1, 0.2]), "`logp_rejected`"),
        (lambda: gm.acc_w(_R2, _R2, [[0.0, np.nan], [0.0, 0.0]], _LP), "`logp_chosen`"),
        (lambda: gm.pair_weights(_LP, [[0.0, 0.0]]), "`logp_rejected`"),
        (lambda: gm.hacc(_R2, _R2, [0.1, 0.2, 0.3]), "`mean_reward`"),
        (lambda: gm.hacc(_R2, _R2, 0.1), "`mean_reward`"),
        (lambda: gm.hacc(_R2, _R2, [np.nan, 0.1]), "`mean_reward`"),
        (lambda: gm.hacc([0.1, 0.2], [0.1, 0.2], [0.1, 0.2]), "`mean_reward`"),
        (lambda: gm.hacc_w(_R2, _R2, [0.1, 0.2], _LP, [[0.0]]), "`logp_rejected`"),
        (lambda: gm.one_vs_many_acc([0.1, 0.2, 0.3], _R2), "`r_chosen`"),
        (lambda: gm.one_vs_many_acc([[0.1, 0.2]], _R2), "`r_chosen`"),
        (lambda: gm.one_vs_many_acc([0.1, 0.2], [[], []]), "`r_rejected`"),
        (lambda: gm.one_vs_many_acc([0.1, np.nan], _R2), "`r_chosen`"),
        (lambda: gm.one_vs_many_acc([0.1, 0.2], _R2, mask=[[True, True], [False, False]]), "`mask`"),
        (lambda: gm.one_vs_many_acc_w([0.1, 0.2], _R2, [0.0], _LP), "`logp_chosen`"),
        (lambda: gm.one_vs_many_hacc([0.1, 0.2], _R2, [0.1]), "`mean_reward`"),
        (lambda: gm.one_vs_many_hacc_w([0.1, 0.2], _R2, [0.1, 0.2], [0.0, 0.0], [[0.0]]), "`logp_rejected`"),
        (lambda: gm.mean_reward(_LP, [0.1, 0.2]), "`reward`"),
        (lambda: gm.mean_reward([[0.0, 0.0]], [[0.1, 0.2]]), "`logp`"),  # not normalised
        (lambda: gm.mean_reward([0.0, -np.inf], [0.1, 0.2]), "`logp`"),
        (lambda: gm.mean_reward(_LP, [[0.1, np.nan], [0.0, 0.0]]), "`reward`"),
        (lambda: gm.sampled_mean_reward(jax.random.key(0), _LP, _R2, 0), "`samples`"),
        (lambda: gm.reward_variance(_LP, _R2, weights=[0.7, 0.7]), "`weights`"),
        (lambda: gm.reward_variance(_LP, _R2, weights=[1.0]), "`weights`"),
        (lambda: gm.true_reward_rate(_LP, _R2, [[0.1, 0.2]]), "`true_reward`"),
        (lambda: gm.true_reward_rate(_LP, [[np.nan, 0.1], [0.0, 0.0]], _R2), "`proxy_reward`"),
    ],
)
def test_bad_input_is_rejected(call, name):
    with pytest.raises(ValueError, match=name):
        call()


def test_non_integer_samples_are_rejected():
    # The library raises ValueError; under this suite's runtime type checking the
    # annotation (`samples: int`) fires first with a TypeError. Either way it is named.
    with pytest.raises((ValueError, TypeError), match="samples"):
        gm.sampled_mean_reward(jax.random.key(0), _LP, _R2, 2.5)
