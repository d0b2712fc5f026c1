"""The objective and its gradient (`gradflow._engine.methods`), regularisation, temperature and
optimisers."""

from __future__ import annotations

import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import N_SAVE, flow, flow_method, sgd, softmax, tol

import gradflow as gf
from gradflow._engine.objective import Problem, gradient, objective

_NO_REG = gf.Regularization()


@eqx.filter_jit  # one compilation per shape instead of dozens of eager ops
def _grad(policy, reward, true_reward=None, reg=_NO_REG):
    reward = jnp.asarray(reward)
    true_reward = reward if true_reward is None else jnp.asarray(true_reward)
    reward = jnp.broadcast_to(reward, policy.shape)
    true_reward = jnp.broadcast_to(true_reward, policy.shape)
    return gradient(policy.params, Problem.make(policy, reward, true_reward, reg))


def test_gradient_emits_no_deprecation_warning():
    policy = gf.TabularSoftmax.from_probs(jnp.asarray([0.2, 0.8]))
    reward = jnp.asarray([[1.0, 0.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # Eager (not `_grad`, whose jit cache could skip the trace that warns).
        gradient(policy.params, Problem.make(policy, reward, reward, _NO_REG))


def test_tabular_gradient_closed_form(dtype):
    # d J / d theta_{x,y} = w_x pi(y|x) (r(x,y) - V(x)) / tau.
    rng = np.random.default_rng(0)
    probs = softmax(rng.normal(size=(2, 4)))
    w = np.asarray([0.25, 0.75])
    r, g = rng.normal(size=(2, 4)), rng.normal(size=(2, 4))
    for tau in (1.0, 0.5):
        policy = gf.TabularSoftmax.from_probs(jnp.asarray(probs), weights=jnp.asarray(w),
                                              temperature=tau)
        grad, d = _grad(policy, r, g)
        v = np.sum(probs * r, -1, keepdims=True)
        expect = w[:, None] * probs * (r - v) / tau
        t = tol(dtype, 1e-5, 1e-12)
        np.testing.assert_allclose(grad, expect, rtol=t, atol=t)
        assert grad.dtype == dtype
        np.testing.assert_allclose(d.probs, probs, rtol=t)
        np.testing.assert_allclose(d.proxy_reward, np.sum(w * v[:, 0]), rtol=t)
        np.testing.assert_allclose(d.true_reward, np.sum(w * np.sum(probs * g, -1)), rtol=t)
        np.testing.assert_allclose(
            d.reward_variance, np.sum(w * np.sum(probs * (r - v) ** 2, -1)), rtol=t)
        np.testing.assert_allclose(d.grad_norm, np.linalg.norm(expect), rtol=t)


def test_loglinear_gradient_is_weighted_covariance(dtype):
    # grad J = sum_x w_x Cov_pi(r(x,.), phi(x,.)) / tau.
    rng = np.random.default_rng(1)
    feats = rng.normal(size=(3, 4, 2))
    theta = rng.normal(size=2)
    w = np.asarray([0.5, 0.2, 0.3])
    r = rng.normal(size=(3, 4))
    tau = 1.7
    policy = gf.LogLinear(jnp.asarray(feats), jnp.asarray(theta), weights=jnp.asarray(w),
                          temperature=tau)
    p = softmax(feats @ theta / tau)
    centred_r = r - np.sum(p * r, -1, keepdims=True)
    cov = np.einsum("xy,xyd->xd", p * centred_r, feats)
    grad, _ = _grad(policy, r)
    np.testing.assert_allclose(grad, np.sum(w[:, None] * cov, 0) / tau,
                               rtol=tol(dtype, 1e-5, 1e-12), atol=tol(dtype, 1e-6, 1e-14))


def test_log_prob_rate_formula(dtype):
    # Tabular, tau = 1: d log pi(y)/dt = w [pi(y)(r(y) - V) - sum_y' pi(y')^2 (r(y') - V)].
    rng = np.random.default_rng(2)
    probs = softmax(rng.normal(size=(2, 5)))
    w = np.asarray([0.4, 0.6])
    r = rng.normal(size=(2, 5))
    policy = gf.TabularSoftmax.from_probs(jnp.asarray(probs), weights=jnp.asarray(w))
    grad, _ = _grad(policy, r)
    _, rate = jax.jvp(lambda th: policy.with_params(th).log_probs(), (policy.params,), (grad,))
    a = probs * (r - np.sum(probs * r, -1, keepdims=True))
    expect = w[:, None] * (a - np.sum(probs * a, -1, keepdims=True))
    np.testing.assert_allclose(rate, expect, rtol=tol(dtype, 1e-4, 1e-11),
                               atol=tol(dtype, 1e-6, 1e-14))


def test_temperature_rescales_flow_time(dtype):
    # pi = softmax(theta / tau) and d theta/dt = pi (r - V) / tau give
    # d (theta / tau)/dt = pi (r - V) / tau^2: at temperature tau the probabilities at time t
    # are those at temperature 1 at time t / tau^2.
    probs = jnp.asarray([0.2, 0.5, 0.3])
    reward = jnp.asarray([1.0, 0.3, -0.5])
    tau = 0.5
    ts = np.linspace(0.0, 4.0, N_SAVE)
    cold = flow(gf.TabularSoftmax.from_probs(probs, temperature=tau), reward, t1=4.0 * tau**2,
                ts=ts * tau**2)
    unit = flow(gf.TabularSoftmax.from_probs(probs), reward, t1=4.0, ts=ts)
    np.testing.assert_allclose(cold.probs, unit.probs, rtol=0, atol=tol(dtype, 2e-5, 1e-9))
    assert float(jnp.max(jnp.abs(unit.probs[-1] - unit.probs[0]))) > 0.1


# ---------------------------------------------------------------------------------------
# Regularisation.
# ---------------------------------------------------------------------------------------

_R = (1.0, 0.5, 0.0)
_P0 = (0.1, 0.3, 0.6)


def _reg_flow(reg, t1, dtype):
    method = gf.GradientFlow(rtol=flow_method(dtype).rtol, atol=flow_method(dtype).atol,
                             regularization=reg)
    return flow(gf.TabularSoftmax.from_probs(_P0), _R, t1=t1, method=method)


@pytest.mark.parametrize("alpha, beta", [(0.5, 0.0), (0.0, 0.4), (0.3, 0.2)])
def test_entropy_and_reverse_kl_to_uniform_converge_to_softmax(dtype, alpha, beta):
    # J = E[r] + alpha H(pi) - beta KL(pi || u) = E[r] + (alpha + beta) H(pi) - beta log K,
    # maximised by pi = softmax(r / (alpha + beta)). Coefficients are arrays: one compile.
    reg = gf.Regularization(entropy=jnp.asarray(alpha), kl=jnp.asarray(beta),
                            kl_reference="uniform")
    sol = _reg_flow(reg, 2000.0, dtype)
    assert sol.status == gf.Status.ok
    expect = softmax(np.asarray(_R) / (alpha + beta))
    np.testing.assert_allclose(sol.probs[-1, 0], expect, atol=tol(dtype, 1e-5, 1e-8))
    assert float(sol.grad_norm[-1]) < tol(dtype, 1e-5, 1e-8)


def test_forward_kl_to_uniform_stationary_point(dtype):
    beta = 0.3
    reg = gf.Regularization(kl=jnp.asarray(beta), kl_direction="forward", kl_reference="uniform")
    sol = sgd(gf.TabularSoftmax.from_probs(_P0), _R, lr=1.0, steps=3000, every=1000, reg=reg)
    assert sol.status == gf.Status.ok
    p = np.asarray(sol.probs[-1, 0], np.float64)
    r = np.asarray(_R, np.float64)
    u = np.full(3, 1 / 3)
    stationarity = p * (r - p @ r) + beta * (u - p)
    np.testing.assert_allclose(stationarity, 0.0, atol=tol(dtype, 1e-6, 1e-12))
    assert np.max(np.abs(p - u)) > 0.05 and np.max(np.abs(p - softmax(r / beta))) > 0.05


def test_reverse_kl_to_initial_policy(dtype):
    # max E[r] - beta KL(pi || pi0)  =>  pi ∝ pi0 exp(r / beta): close to pi0 for large beta.
    reg = gf.Regularization(kl=jnp.asarray(5.0))
    policy = gf.TabularSoftmax.from_probs(_P0)
    # (lr * beta must stay well below 2 / max p: larger steps oscillate around the optimum.)
    sol = sgd(policy, _R, lr=0.1, steps=3000, every=1000, reg=reg)
    assert sol.status == gf.Status.ok
    p0 = np.asarray(_P0, np.float64)
    expect = p0 * np.exp(np.asarray(_R) / 5.0)
    expect /= expect.sum()
    np.testing.assert_allclose(sol.probs[-1, 0], expect, atol=tol(dtype, 1e-6, 1e-12))
    assert 0.5 * np.abs(np.asarray(sol.probs[-1, 0]) - p0).sum() < 0.06
    free = sgd(policy, _R, lr=0.1, steps=3000, every=1000)  # unregularised, same optimiser
    assert 0.5 * np.abs(np.asarray(free.probs[-1, 0]) - p0).sum() > 0.5


def test_normalize_divides_gradient_by_reward_std(dtype):
    rng = np.random.default_rng(3)
    probs = softmax(rng.normal(size=(2, 4)))
    w = np.asarray([0.3, 0.7])
    r = 5.0 * rng.normal(size=(2, 4))
    policy = gf.TabularSoftmax.from_probs(jnp.asarray(probs), weights=jnp.asarray(w))
    plain, _ = _grad(policy, r)
    reg = gf.Regularization(normalize=True)
    normed, _ = _grad(policy, r, reg=reg)
    std = np.sqrt(np.sum(probs * (r - np.sum(probs * r, -1, keepdims=True)) ** 2, -1))
    np.testing.assert_allclose(normed, np.asarray(plain) / (std[:, None] + reg.normalize_eps),
                               rtol=tol(dtype, 1e-5, 1e-12), atol=tol(dtype, 1e-7, 1e-15))
    # Scale invariance: normalising makes the gradient (almost) independent of reward scale.
    scaled, _ = _grad(policy, 100.0 * r, reg=reg)
    np.testing.assert_allclose(scaled, normed, rtol=tol(dtype, 1e-4, 1e-6))


def test_adam_runs_and_increases_true_reward():
    method = gf.GradientAscent(optax.adam(0.05), 200)
    policy = gf.TabularSoftmax.from_probs(_P0)
    sol = jax.jit(lambda r: gf.solve(policy, reward=r, method=method))(jnp.asarray(_R))
    assert sol.status == gf.Status.ok
    assert float(sol.true_reward[-1]) > 0.95
    assert float(sol.true_reward[-1]) > float(sol.true_reward[0]) + 0.5
    # Adam is not SGD: its first update moves every logit by about the learning rate.
    sgd_run = sgd(policy, _R, lr=0.05, steps=200)
    assert not np.allclose(sol.true_reward, sgd_run.true_reward, atol=1e-3)


@pytest.mark.parametrize(
    "reg",
    [
        gf.Regularization(),
        gf.Regularization(entropy=0.3),
        gf.Regularization(kl=0.7, kl_direction="reverse", kl_reference="initial"),
        gf.Regularization(kl=0.7, kl_direction="forward", kl_reference="uniform"),
        gf.Regularization(kl=0.2, entropy=0.1, kl_direction="reverse", kl_reference="uniform"),
    ],
)
@pytest.mark.parametrize("kind", ["tabular", "loglinear"])
def test_closed_form_gradient_matches_autodiff_of_objective(dtype, reg, kind):
    """The hot path's closed-form score gradient == jax.grad of the objective J."""
    key = jax.random.key(3)
    k1, k2, k3, k4 = jax.random.split(key, 4)
    if kind == "tabular":
        policy = gf.TabularSoftmax(jax.random.normal(k1, (3, 6)), weights=jnp.array([0.2, 0.3, 0.5]),
                                   temperature=0.7)
    else:
        policy = gf.LogLinear(jax.random.normal(k1, (3, 6, 4)), jax.random.normal(k2, (4,)),
                              temperature=1.3)
    reward = jax.random.normal(k3, (3, 6))
    true_reward = jax.random.normal(k4, (3, 6))
    start = policy.with_params(jax.tree.map(lambda x: 0.5 * x, policy.params))
    log_ref = reg.reference(start)
    problem = Problem(policy, reward, true_reward, log_ref, reg)
    closed, diag = gradient(policy.params, problem)
    auto, (p, proxy, true, var) = jax.grad(objective, has_aux=True)(policy.params, problem)
    rtol = 1e-10 if dtype == jnp.float64 else 1e-4
    np.testing.assert_allclose(closed, auto, rtol=rtol, atol=rtol)
    np.testing.assert_allclose(diag.probs, p, rtol=rtol, atol=rtol)
    np.testing.assert_allclose([diag.proxy_reward, diag.true_reward, diag.reward_variance],
                               [proxy, true, var], rtol=rtol, atol=rtol)
