"""Policies (tabular, log-linear, from probabilities) and reward handling."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import flow, softmax, tol

import gradflow as gf
from gradflow._engine.objective import as_reward, expected, reward_range


def test_float64_mode_really_is_float64(dtype):
    policy = gf.TabularSoftmax.from_probs([0.2, 0.3, 0.5])
    for leaf in jax.tree.leaves(policy):
        assert leaf.dtype == dtype
    sol = flow(policy, [1.0, 0.0, 0.5], t1=1.0)
    for leaf in (sol.ts, sol.true_reward, sol.proxy_reward, sol.probs, sol.params):
        assert leaf.dtype == dtype
    # float64 resolves what float32 cannot.
    tiny = jnp.asarray(1.0) + jnp.asarray(1e-12)
    assert (tiny > 1.0) == (dtype == jnp.float64)


def test_tabular_from_probs_round_trip(dtype):
    rng = np.random.default_rng(0)
    probs = softmax(rng.normal(size=(3, 4)))
    for tau in (1.0, 0.3):
        policy = gf.TabularSoftmax.from_probs(probs, temperature=tau)
        assert policy.shape == (3, 4)
        np.testing.assert_allclose(policy.probs(), probs, rtol=tol(dtype, 1e-5, 1e-12))
        np.testing.assert_allclose(policy.logits, tau * np.log(probs), rtol=tol(dtype, 1e-5, 1e-12))
        np.testing.assert_allclose(jnp.exp(policy.log_probs()), probs, rtol=tol(dtype, 1e-5, 1e-12))
        np.testing.assert_allclose(policy.weights, np.full(3, 1 / 3), rtol=1e-6)
        assert float(policy.temperature) == pytest.approx(tau)
    # 1-D input is one prompt.
    single = gf.TabularSoftmax.from_probs(probs[0])
    assert single.shape == (1, 4) and single.weights.shape == (1,)
    np.testing.assert_allclose(single.probs()[0], probs[0], rtol=tol(dtype, 1e-5, 1e-12))


def test_tabular_softmax_is_shift_invariant_and_temperature_scaled():
    logits = jnp.asarray([[0.5, -1.0, 2.0]])
    a = gf.TabularSoftmax(logits, temperature=2.0)
    b = gf.TabularSoftmax(logits + 7.0, temperature=2.0)
    np.testing.assert_allclose(a.probs(), b.probs(), rtol=1e-5)
    np.testing.assert_allclose(a.probs(), softmax(np.asarray(logits) / 2.0), rtol=1e-6)
    new = a.with_params(jnp.zeros((1, 3)))
    np.testing.assert_allclose(new.probs(), 1 / 3, rtol=1e-6)
    np.testing.assert_array_equal(a.params, logits)  # unchanged (immutable)


def test_loglinear_scores_and_one_hot_equivalence(dtype):
    rng = np.random.default_rng(1)
    feats = rng.normal(size=(2, 4, 3))
    theta = rng.normal(size=3)
    policy = gf.LogLinear(feats, theta, temperature=0.5)
    np.testing.assert_allclose(policy.scores(), feats @ theta, rtol=tol(dtype, 1e-5, 1e-12))
    np.testing.assert_allclose(policy.probs(), softmax(feats @ theta / 0.5),
                               rtol=tol(dtype, 1e-5, 1e-12))
    logits = rng.normal(size=4)
    one_hot = gf.LogLinear(np.eye(4), logits)
    assert one_hot.shape == (1, 4)
    np.testing.assert_allclose(one_hot.probs(), gf.TabularSoftmax(logits).probs(),
                               rtol=tol(dtype, 1e-6, 1e-14))


def test_loglinear_from_probs_exact_features(dtype):
    rng = np.random.default_rng(2)
    # Random full-rank features (dim >= outputs - 1) represent any distribution.
    feats = rng.normal(size=(5, 4))
    probs = softmax(rng.normal(size=5))
    policy, residual = gf.LogLinear.from_probs(feats, probs, temperature=0.4,
                                               return_residual=True)
    np.testing.assert_allclose(policy.probs()[0], probs, rtol=tol(dtype, 1e-4, 1e-10))
    assert float(residual) < tol(dtype, 1e-5, 1e-12)
    assert float(policy.temperature) == pytest.approx(0.4)
    # The same fit inside jit (the residual is then returned, never warned about).
    fit = jax.jit(lambda f, p: gf.LogLinear.from_probs(f, p, return_residual=True))
    jitted, res = fit(feats, probs)
    np.testing.assert_allclose(jitted.probs()[0], probs, rtol=tol(dtype, 1e-4, 1e-10))
    assert float(res) < tol(dtype, 1e-5, 1e-12)
    # Several prompts sharing theta: block one-hot features are exact.
    probs2 = softmax(rng.normal(size=(2, 3)))
    blocks = np.zeros((2, 3, 6))
    blocks[0, :, :3] = np.eye(3)
    blocks[1, :, 3:] = np.eye(3)
    multi = gf.LogLinear.from_probs(blocks, probs2, weights=[0.4, 0.6])
    np.testing.assert_allclose(multi.probs(), probs2, rtol=tol(dtype, 1e-5, 1e-12))
    np.testing.assert_allclose(multi.weights, [0.4, 0.6], rtol=1e-6)


def test_loglinear_from_probs_inexact_features_warn_and_report_residual(dtype):
    feats = np.asarray([[0.0], [1.0], [2.0]])  # log p linear in y: cannot peak in the middle
    probs = np.asarray([0.2, 0.6, 0.2])
    with pytest.warns(gf.InexactFitWarning):
        policy, residual = gf.LogLinear.from_probs(feats, probs, return_residual=True)
    assert float(residual) > 0.1
    fitted = np.asarray(policy.probs()[0], np.float64)
    np.testing.assert_allclose(residual, 0.5 * np.abs(fitted - probs).sum(), rtol=1e-4)
    # The fit is the least-squares solution of the centred log-linear system.
    a = feats - feats.mean(0)
    b = np.log(probs) - np.log(probs).mean()
    theta, *_ = np.linalg.lstsq(a, b, rcond=None)
    np.testing.assert_allclose(policy.theta, theta, rtol=tol(dtype, 1e-5, 1e-10), atol=1e-7)
    # Without `return_residual`, just the policy (and still the warning).
    with pytest.warns(gf.InexactFitWarning, match="total-variation"):
        only = gf.LogLinear.from_probs(feats, probs)
    assert isinstance(only, gf.LogLinear)


def test_reward_shapes_and_expectations(dtype):
    probs = softmax(np.random.default_rng(3).normal(size=(2, 3)))
    policy = gf.TabularSoftmax.from_probs(probs, weights=[0.25, 0.75])
    shared = as_reward("reward", [1.0, 0.0, -1.0], policy)
    np.testing.assert_array_equal(shared, [[1.0, 0.0, -1.0], [1.0, 0.0, -1.0]])
    per_prompt = as_reward("reward", [[1.0, 0.0, -1.0], [0.0, 2.0, 0.0]], policy)
    assert per_prompt.shape == (2, 3) and per_prompt.dtype == dtype
    np.testing.assert_allclose(
        expected(policy.probs(), per_prompt, policy.weights),
        0.25 * probs[0] @ [1.0, 0.0, -1.0] + 0.75 * probs[1] @ [0.0, 2.0, 0.0],
        rtol=tol(dtype, 1e-5, 1e-12),
    )
    lo, hi = reward_range(per_prompt, policy.weights)
    assert float(lo) == pytest.approx(0.25 * -1.0 + 0.75 * 0.0)
    assert float(hi) == pytest.approx(0.25 * 1.0 + 0.75 * 2.0)


def test_policies_build_under_jit_and_vmap():
    probs = jax.nn.softmax(jax.random.normal(jax.random.key(0), (4, 3)), axis=-1)
    policies = jax.jit(jax.vmap(gf.TabularSoftmax.from_probs))(probs)
    assert policies.logits.shape == (4, 1, 3)
    np.testing.assert_allclose(jax.jit(jax.vmap(lambda p: p.probs()))(policies)[:, 0], probs,
                               rtol=1e-5)
    jitted = jax.jit(lambda p: gf.TabularSoftmax.from_probs(p, temperature=0.5).logits)
    np.testing.assert_allclose(jitted(probs[0])[0], 0.5 * np.log(probs[0]), rtol=1e-5)
