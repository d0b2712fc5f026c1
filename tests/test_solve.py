"""`gf.solve`: closed forms of the flow, invariants along runs, discrete ascent as the
Euler discretisation of the flow, multi-prompt time scaling, batching, recompilation and
determinism."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import flow_method, tol
from scipy.optimize import brentq

import gradflow as gf

SGD_05 = gf.GradientAscent(optax.sgd(0.5), 200)  # module level: one compile per shape/dtype


# ---------------------------------------------------------------------------------------
# 1. Two-armed tabular flow vs its closed form.
#
# K = 2, p = pi(y1), Delta = r1 - r2, V = p r1 + (1-p) r2, so r1 - V = (1-p) Delta and
# r2 - V = -p Delta. The flow d theta_y/dt = pi_y (r_y - V) gives
#   d(theta1 - theta2)/dt = p (1-p) Delta + (1-p) p Delta = 2 p (1-p) Delta,
# and p = sigmoid(theta1 - theta2), so dp/dt = p (1-p) d(theta1 - theta2)/dt
#   = 2 p^2 (1-p)^2 Delta.
# Separating variables, 1 / (p^2 (1-p)^2) = 1/p^2 + 2/p + 2/(1-p) + 1/(1-p)^2, whose
# antiderivative is F(p) = 2 log(p / (1-p)) - 1/p + 1/(1-p); hence
#   F(p(t)) - F(p0) = 2 Delta t.
# ---------------------------------------------------------------------------------------


def _F(p):
    return 2 * np.log(p / (1 - p)) - 1 / p + 1 / (1 - p)


def _dF(p):
    return 1 / (p**2 * (1 - p) ** 2)


@pytest.mark.parametrize(
    "p0, r1, r2",
    [(0.3, 1.0, 0.2), (0.8, -0.5, 0.5), (0.05, 2.0, 1.0), (0.5, 0.0, 0.25)],
)
def test_two_armed_flow_closed_form(dtype, jsolve, p0, r1, r2):
    t1 = 4.0
    policy = gf.TabularSoftmax.from_probs(jnp.asarray([p0, 1 - p0]))
    sol = jsolve(
        policy, reward=jnp.asarray([r1, r2]), method=flow_method(dtype), t1=t1,
        saveat=gf.SaveAt(n=17, probs=True),
    )
    assert sol.status == gf.Status.OK
    assert sol.probs.dtype == dtype and sol.ts.dtype == dtype
    ts = np.asarray(sol.ts, np.float64)
    p = np.asarray(sol.probs[:, 0, 0], np.float64)
    delta = r1 - r2
    # The first integral, with the tolerance on p propagated through F'(p).
    ptol = tol(dtype, 3e-6, 1e-10)
    resid = _F(p) - _F(p0) - 2 * delta * ts
    np.testing.assert_array_less(np.abs(resid), ptol * _dF(p) + 10 * ptol)
    # And p(t) itself, by inverting F with a root finder.
    expect = np.array(
        [brentq(lambda q, t=t: _F(q) - _F(p0) - 2 * delta * t, 1e-12, 1 - 1e-12, xtol=1e-15)
         for t in ts]
    )
    np.testing.assert_allclose(p, expect, rtol=0, atol=ptol)
    # The expected reward recorded along the run is p r1 + (1 - p) r2.
    np.testing.assert_allclose(
        sol.true_reward, expect * r1 + (1 - expect) * r2, rtol=0, atol=ptol * (abs(delta) + 1)
    )
    np.testing.assert_allclose(sol.proxy_reward, sol.true_reward, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------
# 2. Invariants: the simplex, and monotone true reward under the exact flow on it.
# ---------------------------------------------------------------------------------------


def _random_problem(seed, k=4, dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=k) * 1.5
    reward = rng.normal(size=k)
    return gf.TabularSoftmax(jnp.asarray(logits, dtype)), jnp.asarray(reward, dtype)


@pytest.mark.parametrize("seed", range(4))
def test_flow_stays_on_simplex_and_true_reward_is_monotone(dtype, jsolve, seed):
    policy, reward = _random_problem(seed, dtype=dtype)
    sol = jsolve(policy, reward=reward, method=flow_method(dtype), t1=30.0,
                 saveat=gf.SaveAt(n=61, probs=True))
    assert sol.status == gf.Status.OK
    p = sol.probs
    assert bool(jnp.all((p > 0) & (p < 1)))
    np.testing.assert_allclose(p.sum(-1), 1.0, atol=tol(dtype, 1e-6, 1e-13))
    # Training on the true reward is gradient ascent on it: V_G never decreases.
    dv = np.diff(np.asarray(sol.true_reward))
    assert np.all(dv >= -tol(dtype, 2e-6, 1e-12)), dv.min()
    # ... and it ends close to the best achievable value with the right output on top.
    best = int(jnp.argmax(reward))
    assert int(jnp.argmax(p[-1, 0])) == best
    assert float(sol.true_reward[-1]) > float(sol.true_reward[0])
    # Recorded rewards are the expectations under the recorded probabilities.
    np.testing.assert_allclose(
        sol.true_reward, jnp.sum(p[:, 0] * reward[None], -1), atol=tol(dtype, 1e-5, 1e-12)
    )


@pytest.mark.parametrize("seed", range(4))
def test_sgd_stays_on_simplex(dtype, jsolve, seed):
    policy, reward = _random_problem(seed, dtype=dtype)
    proxy = jnp.roll(reward, 1)  # train on a wrong reward, track the true one
    sol = jsolve(policy, reward=proxy, true_reward=reward, method=SGD_05,
                 saveat=gf.SaveAt(probs=True))
    assert sol.status == gf.Status.OK
    assert sol.probs.shape == (201, 1, 4)
    np.testing.assert_array_equal(sol.steps, np.arange(201))
    p = sol.probs
    assert bool(jnp.all((p > 0) & (p < 1)))
    np.testing.assert_allclose(p.sum(-1), 1.0, atol=tol(dtype, 1e-6, 1e-13))
    np.testing.assert_allclose(
        sol.true_reward, jnp.sum(p[:, 0] * reward[None], -1), atol=tol(dtype, 1e-5, 1e-12)
    )
    np.testing.assert_allclose(
        sol.proxy_reward, jnp.sum(p[:, 0] * proxy[None], -1), atol=tol(dtype, 1e-5, 1e-12)
    )
    # The proxy (what SGD climbs) increases overall, and the final parameters are returned.
    assert float(sol.proxy_reward[-1]) > float(sol.proxy_reward[0])
    np.testing.assert_allclose(
        jax.nn.softmax(sol.params[0]), p[-1, 0], atol=tol(dtype, 1e-6, 1e-13)
    )


# ---------------------------------------------------------------------------------------
# 3. SGD(eta) for n steps -> flow at time eta * n, with first-order (Euler) error.
# ---------------------------------------------------------------------------------------

_T, _N_MAX = 4.0, 160


@jax.jit
def _sgd_probs(policy, reward, lr):
    method = gf.GradientAscent(optax.sgd(lr), _N_MAX)
    return gf.solve(policy, reward=reward, method=method, saveat=gf.SaveAt(probs=True)).probs


def test_sgd_converges_to_flow_at_first_order(dtype, jsolve):
    policy = gf.TabularSoftmax.from_probs(jnp.asarray([0.2, 0.5, 0.3]))
    reward = jnp.asarray([1.0, 0.3, -0.5])
    flow = jsolve(policy, reward=reward, method=flow_method(dtype), t1=_T,
                  saveat=gf.SaveAt(ts=jnp.asarray([_T]), probs=True))
    target = flow.probs[-1]
    errors = []
    for eta in (0.1, 0.05, 0.025):
        n = round(_T / eta)
        probs = _sgd_probs(policy, reward, jnp.asarray(eta))
        errors.append(float(jnp.max(jnp.abs(probs[n] - target))))
    assert errors[0] < 0.05
    ratios = [errors[0] / errors[1], errors[1] / errors[2]]
    for ratio in ratios:
        assert 1.6 < ratio < 2.4, (errors, ratios)


# ---------------------------------------------------------------------------------------
# 4. Log-linear with one-hot features is the tabular policy, along whole runs.
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["flow", "sgd"])
def test_loglinear_one_hot_matches_tabular(dtype, jsolve, kind):
    logits = jnp.asarray([0.3, -1.0, 0.8, 0.0])
    reward = jnp.asarray([0.2, 1.0, -0.3, 0.5])
    tab = gf.TabularSoftmax(logits, temperature=0.7)
    loglin = gf.LogLinear(jnp.eye(4), logits, temperature=0.7)
    if kind == "flow":
        kw = dict(method=flow_method(dtype), t1=10.0, saveat=gf.SaveAt(n=21, probs=True))
    else:
        kw = dict(method=SGD_05, saveat=gf.SaveAt(probs=True))
    a = jsolve(tab, reward=reward, **kw)
    b = jsolve(loglin, reward=reward, **kw)
    assert a.status == b.status == gf.Status.OK
    t = tol(dtype, 2e-5, 1e-10)
    np.testing.assert_allclose(a.probs, b.probs, rtol=0, atol=t)
    np.testing.assert_allclose(a.true_reward, b.true_reward, rtol=0, atol=t)
    np.testing.assert_allclose(a.params, b.params[None], rtol=0, atol=100 * t)
    # and the policy did move
    assert float(jnp.max(jnp.abs(a.probs[-1] - a.probs[0]))) > 0.1


# ---------------------------------------------------------------------------------------
# 5. Multi-prompt: d theta_x/dt = w_x pi (r - V), so each prompt follows the single-prompt
# flow at time w_x t, and the recorded reward is the weighted sum.
# ---------------------------------------------------------------------------------------


def test_multi_prompt_flow_is_time_scaled_single_prompt_flow(dtype, jsolve):
    w = 0.3
    probs = jnp.asarray([[0.2, 0.5, 0.3], [0.6, 0.3, 0.1]])
    reward = jnp.asarray([[1.0, 0.0, 0.5], [-1.0, 0.2, 1.0]])
    true = jnp.asarray([[0.0, 1.0, 0.5], [0.3, -0.2, 1.0]])
    t1 = 8.0
    ts = jnp.linspace(0.0, t1, 9)
    method = flow_method(dtype)
    policy = gf.TabularSoftmax.from_probs(probs, weights=jnp.asarray([w, 1 - w]))
    sol = jsolve(policy, reward=reward, true_reward=true, method=method, t1=jnp.asarray(t1),
                 saveat=gf.SaveAt(ts=ts, probs=True))
    assert sol.status == gf.Status.OK
    t = tol(dtype, 2e-5, 1e-9)
    singles = []
    for x, wx in enumerate((w, 1 - w)):
        single = jsolve(
            gf.TabularSoftmax.from_probs(probs[x]), reward=reward[x], true_reward=true[x],
            method=method, t1=jnp.asarray(wx * t1), saveat=gf.SaveAt(ts=wx * ts, probs=True),
        )
        np.testing.assert_allclose(sol.probs[:, x], single.probs[:, 0], rtol=0, atol=t)
        singles.append(single)
    np.testing.assert_allclose(
        sol.true_reward, w * singles[0].true_reward + (1 - w) * singles[1].true_reward,
        rtol=0, atol=t,
    )
    np.testing.assert_allclose(
        sol.proxy_reward, w * singles[0].proxy_reward + (1 - w) * singles[1].proxy_reward,
        rtol=0, atol=t,
    )
    # A reward of shape (outputs,) means the same reward for every prompt.
    shared = jsolve(policy, reward=reward[0], true_reward=true, method=method,
                    t1=jnp.asarray(t1), saveat=gf.SaveAt(ts=ts, probs=True))
    tiled = jsolve(policy, reward=jnp.stack([reward[0], reward[0]]), true_reward=true,
                   method=method, t1=jnp.asarray(t1), saveat=gf.SaveAt(ts=ts, probs=True))
    np.testing.assert_array_equal(shared.probs, tiled.probs)


# ---------------------------------------------------------------------------------------
# 6. Batching: vmap == separate solves; no retracing for new values.
# ---------------------------------------------------------------------------------------

_B_POLICY_PROBS = (0.2, 0.3, 0.5)
_B_FLOW = gf.GradientFlow()
_B_SGD = gf.GradientAscent(optax.sgd(0.5), 100)


def _b_flow_run(reward):
    policy = gf.TabularSoftmax.from_probs(jnp.asarray(_B_POLICY_PROBS))
    sol = gf.solve(policy, reward=reward, method=_B_FLOW, t1=10.0, saveat=gf.SaveAt(n=11),
                   targets=(0.5,))
    return sol.true_reward, gf.time_to_reward(sol, 0.9), gf.time_to_reward(sol, 0.5)


def _b_sgd_run(reward):
    policy = gf.TabularSoftmax.from_probs(jnp.asarray(_B_POLICY_PROBS))
    sol = gf.solve(policy, reward=reward, method=_B_SGD, targets=(0.5,))
    return sol.true_reward, gf.time_to_reward(sol, 0.9), gf.time_to_reward(sol, 0.5)


@pytest.mark.parametrize("run", [_b_flow_run, _b_sgd_run], ids=["flow", "sgd"])
def test_vmap_matches_separate_solves(dtype, run):
    rewards = jax.random.normal(jax.random.key(0), (64, 3), dtype)
    batched = jax.jit(jax.vmap(run))(rewards)
    single = jax.jit(run)
    separate = [single(r) for r in rewards]
    separate = jax.tree.map(lambda *xs: jnp.stack(xs), *separate)
    rtol = tol(dtype, 1e-4, 1e-9)
    for b, s in zip(batched, separate, strict=True):
        assert b.shape[0] == 64
        np.testing.assert_array_equal(np.isinf(b), np.isinf(s))
        np.testing.assert_allclose(b, s, rtol=rtol, atol=rtol)
    # Some runs reach 0.9, some never do (+inf): the test covers both branches.
    ttr = np.asarray(batched[1])
    assert np.any(np.isinf(ttr)) and np.any(np.isfinite(ttr))


def test_jitted_vmapped_time_to_reward_public_recipe(jsolve):
    policy = gf.TabularSoftmax.from_probs(jnp.asarray([0.2, 0.3, 0.5]))
    method = gf.GradientFlow()
    f = jax.jit(jax.vmap(
        lambda r: gf.time_to_reward(gf.solve(policy, reward=r, method=method, t1=10.0), 0.9)
    ))
    rewards = jnp.asarray([[1.0, 0.0, 0.0], [0.0, 0.0, 0.5], [0.0, 1.0, 0.95]])
    out = np.asarray(f(rewards))
    assert out.shape == (3,)
    assert np.isfinite(out[0]) and out[0] > 0
    assert np.isposinf(out[1])  # max reward 0.5 < 0.9: never reached
    assert np.isfinite(out[2])
    one = gf.time_to_reward(jsolve(policy, reward=rewards[0], method=method, t1=10.0), 0.9)
    np.testing.assert_allclose(out[0], one, rtol=1e-4)


def test_vmap_over_initial_policy_and_learning_rate():
    probs = jax.nn.softmax(jax.random.normal(jax.random.key(1), (8, 3)), axis=-1)
    lrs = jnp.linspace(0.1, 1.0, 8)
    reward = jnp.asarray([1.0, 0.0, 0.3])

    def run(p, lr):
        policy = gf.TabularSoftmax.from_probs(p)
        method = gf.GradientAscent(optax.sgd(lr), 50)
        return gf.solve(policy, reward=reward, method=method).true_reward

    batched = jax.jit(jax.vmap(run))(probs, lrs)
    single = jax.jit(run)
    for i in range(8):
        np.testing.assert_allclose(batched[i], single(probs[i], lrs[i]), rtol=1e-5, atol=1e-6)


def test_second_call_does_not_retrace():
    policy = gf.TabularSoftmax.from_probs(jnp.asarray([0.2, 0.3, 0.5]))

    @jax.jit
    @eqx.debug.assert_max_traces(max_traces=1)
    def run(reward, true_reward, lr):
        flow = gf.solve(policy, reward=reward, true_reward=true_reward, method=_B_FLOW, t1=5.0,
                        saveat=gf.SaveAt(n=5), targets=(0.5,))
        sgd = gf.solve(policy, reward=reward, true_reward=true_reward,
                       method=gf.GradientAscent(optax.sgd(lr), 20))
        return gf.time_to_reward(flow, 0.5), sgd.true_reward[-1]

    a = run(jnp.asarray([1.0, 0.0, 0.0]), jnp.asarray([1.0, 0.0, 0.0]), 0.5)
    b = run(jnp.asarray([0.0, 1.0, 0.0]), jnp.asarray([0.0, 0.5, 1.0]), 0.1)  # no retrace
    assert not np.allclose(a[1], b[1])

    @jax.jit
    @eqx.debug.assert_max_traces(max_traces=1)
    def batch(rewards):
        return jax.vmap(lambda r: run(r, r, 0.5))(rewards)

    batch(jnp.zeros((4, 3)).at[:, 0].set(1.0))
    batch(jax.random.normal(jax.random.key(3), (4, 3)))  # new batch, same shape: no retrace


# ---------------------------------------------------------------------------------------
# 12. Determinism.
# ---------------------------------------------------------------------------------------


def _leaves(sol):
    return [np.asarray(x) for x in jax.tree.leaves(sol)]


@pytest.mark.parametrize("kind", ["flow", "sgd"])
def test_same_inputs_bitwise_same_and_jit_matches_eager(jsolve, kind):
    policy = gf.TabularSoftmax.from_probs(jnp.asarray([0.2, 0.5, 0.3]))
    reward = jnp.asarray([1.0, 0.4, -0.5])
    true = jnp.asarray([1.0, -0.4, 0.5])
    if kind == "flow":
        kw = dict(method=_B_FLOW, t1=10.0, saveat=gf.SaveAt(n=11, probs=True), targets=(0.6,))
    else:
        kw = dict(method=_B_SGD, saveat=gf.SaveAt(every=10, probs=True), targets=(0.6,))
    a = jsolve(policy, reward=reward, true_reward=true, **kw)
    b = jsolve(policy, reward=reward, true_reward=true, **kw)
    for x, y in zip(_leaves(a), _leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)
    eager = gf.solve(policy, reward=reward, true_reward=true, **kw)
    for x, y in zip(_leaves(a), _leaves(eager), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-6)
