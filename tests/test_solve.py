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
from helpers import FLOW_F32, N_SAVE, count_compiles, flow, random_problem, sgd, tol
from scipy.optimize import brentq

import gradflow as gf

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
    "p0, r1, r2, t1",
    [(0.3, 1.0, 0.2, 4.0), (0.8, -0.5, 0.5, 3.0), (0.05, 2.0, 1.0, 40.0), (0.5, 0.0, 0.25, 10.0)],
)
def test_two_armed_flow_closed_form(dtype, p0, r1, r2, t1):
    policy = gf.TabularSoftmax.from_probs(jnp.asarray([p0, 1 - p0]))
    sol = flow(policy, [r1, r2], t1=t1)
    assert sol.status == gf.Status.ok
    assert sol.probs.dtype == dtype and sol.ts.dtype == dtype
    ts = np.asarray(sol.ts, np.float64)
    p = np.asarray(sol.probs[:, 0, 0], np.float64)
    delta = r1 - r2
    # The first integral, with the tolerance on p propagated through F'(p).
    ptol = tol(dtype, 3e-5, 1e-9)  # float32: the default rtol is 1e-5
    resid = _F(p) - _F(p0) - 2 * delta * ts
    np.testing.assert_array_less(np.abs(resid), ptol * _dF(p) + 10 * ptol)
    # And p(t) itself, by inverting F with a root finder.
    expect = np.array(
        [brentq(lambda q, t=t: _F(q) - _F(p0) - 2 * delta * t, 1e-12, 1 - 1e-12, xtol=1e-15)
         for t in ts]
    )
    np.testing.assert_allclose(p, expect, rtol=0, atol=ptol)
    assert abs(expect[-1] - p0) > 0.1  # the runs do go somewhere
    # The expected reward recorded along the run is p r1 + (1 - p) r2.
    np.testing.assert_allclose(
        sol.true_reward, expect * r1 + (1 - expect) * r2, rtol=0, atol=ptol * (abs(delta) + 1)
    )
    np.testing.assert_array_equal(sol.proxy_reward, sol.true_reward)


# ---------------------------------------------------------------------------------------
# 2. Invariants: the simplex, and monotone true reward under the exact flow on it.
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
def test_flow_stays_on_simplex_and_true_reward_is_monotone(dtype, seed):
    policy, reward = random_problem(seed, 5, dtype)
    sol = flow(policy, reward, t1=30.0)
    assert sol.status == gf.Status.ok
    p = sol.probs
    assert p.shape == (N_SAVE, 1, 5)
    assert bool(jnp.all((p > 0) & (p < 1)))
    np.testing.assert_allclose(p.sum(-1), 1.0, atol=tol(dtype, 1e-6, 1e-13))
    # Training on the true reward is gradient ascent on it: V_G never decreases.
    dv = np.diff(np.asarray(sol.true_reward))
    assert np.all(dv >= -tol(dtype, 2e-6, 1e-12)), dv.min()
    assert float(sol.true_reward[-1]) > float(sol.true_reward[0]) + 0.05
    # Recorded rewards are the expectations under the recorded probabilities.
    np.testing.assert_allclose(
        sol.true_reward, jnp.sum(p[:, 0] * reward[None], -1), atol=tol(dtype, 1e-5, 1e-12)
    )
    # The final parameters are those of the last record.
    np.testing.assert_allclose(
        jax.nn.softmax(sol.params[0]), p[-1, 0], atol=tol(dtype, 1e-6, 1e-12)
    )


@pytest.mark.parametrize("seed", range(4))
def test_sgd_stays_on_simplex(dtype, seed):
    policy, reward = random_problem(seed, 5, dtype)
    proxy = jnp.roll(reward, 1)  # train on a wrong reward, track the true one
    sol = sgd(policy, proxy, reward, lr=0.5, steps=200)
    assert sol.status == gf.Status.ok
    assert sol.probs.shape == (201, 1, 5)
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
    # The proxy (what SGD climbs) increases, and the final parameters are returned.
    assert float(sol.proxy_reward[-1]) > float(sol.proxy_reward[0])
    np.testing.assert_allclose(
        jax.nn.softmax(sol.params[0]), p[-1, 0], atol=tol(dtype, 1e-6, 1e-13)
    )


def test_sgd_records_every_and_last_step():
    policy, reward = random_problem(0, 5, jnp.float32)
    full = sgd(policy, reward, lr=0.5, steps=23)
    sparse = sgd(policy, reward, lr=0.5, steps=23, every=5)
    np.testing.assert_array_equal(sparse.steps, [0, 5, 10, 15, 20, 23])
    np.testing.assert_allclose(sparse.true_reward, full.true_reward[sparse.steps], rtol=1e-6)
    np.testing.assert_allclose(sparse.probs, full.probs[sparse.steps], rtol=1e-6)
    np.testing.assert_allclose(sparse.params, full.params, rtol=1e-6)
    assert int(sparse.num_steps) == 23


# ---------------------------------------------------------------------------------------
# 3. SGD(eta) for n steps -> flow at time eta * n, with first-order (Euler) error.
# ---------------------------------------------------------------------------------------


def test_sgd_converges_to_flow_at_first_order(dtype):
    policy = gf.TabularSoftmax.from_probs(jnp.asarray([0.2, 0.5, 0.3]))
    reward = jnp.asarray([1.0, 0.3, -0.5])
    T = 4.0
    target = flow(policy, reward, t1=T).probs[-1]
    errors = []
    for eta in (0.1, 0.05, 0.025):
        n = round(T / eta)
        probs = sgd(policy, reward, lr=eta, steps=160).probs
        errors.append(float(jnp.max(jnp.abs(probs[n] - target))))
    assert errors[0] < 0.05
    ratios = [errors[0] / errors[1], errors[1] / errors[2]]
    for ratio in ratios:
        assert 1.6 < ratio < 2.4, (errors, ratios)


# ---------------------------------------------------------------------------------------
# 4. Log-linear with one-hot features is the tabular policy, along whole runs.
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["flow", "sgd"])
def test_loglinear_one_hot_matches_tabular(kind):
    logits = jnp.asarray([0.3, -1.0, 0.8])
    reward = jnp.asarray([0.2, 1.0, -0.3])
    tab = gf.TabularSoftmax(logits, temperature=0.7)
    loglin = gf.LogLinear(jnp.eye(3), logits, temperature=0.7)
    if kind == "flow":
        a, b = flow(tab, reward, t1=10.0), flow(loglin, reward, t1=10.0)
    else:
        a, b = sgd(tab, reward, lr=0.5, steps=200), sgd(loglin, reward, lr=0.5, steps=200)
    assert a.status == b.status == gf.Status.ok
    np.testing.assert_allclose(a.probs, b.probs, rtol=0, atol=2e-5)
    np.testing.assert_allclose(a.true_reward, b.true_reward, rtol=0, atol=2e-5)
    np.testing.assert_allclose(a.params[0], b.params, rtol=0, atol=1e-3)
    assert float(jnp.max(jnp.abs(a.probs[-1] - a.probs[0]))) > 0.1  # the policy did move


# ---------------------------------------------------------------------------------------
# 5. Multi-prompt: d theta_x/dt = w_x pi (r - V), so each prompt follows the single-prompt
# flow at time w_x t, and the recorded reward is the weighted sum.
# ---------------------------------------------------------------------------------------


def test_multi_prompt_flow_is_time_scaled_single_prompt_flow(dtype):
    w = 0.3
    probs = jnp.asarray([[0.2, 0.5, 0.3], [0.6, 0.3, 0.1]])
    reward = jnp.asarray([[1.0, 0.0, 0.5], [-1.0, 0.2, 1.0]])
    true = jnp.asarray([[0.0, 1.0, 0.5], [0.3, -0.2, 1.0]])
    t1 = 8.0
    ts = np.linspace(0.0, t1, N_SAVE)
    policy = gf.TabularSoftmax.from_probs(probs, weights=jnp.asarray([w, 1 - w]))
    sol = flow(policy, reward, true, t1=t1, ts=ts)
    assert sol.status == gf.Status.ok
    t = tol(dtype, 2e-5, 1e-9)
    singles = []
    for x, wx in enumerate((w, 1 - w)):
        single = flow(gf.TabularSoftmax.from_probs(probs[x]), reward[x], true[x],
                      t1=wx * t1, ts=ts * wx)
        np.testing.assert_allclose(sol.probs[:, x], single.probs[:, 0], rtol=0, atol=t)
        singles.append(single)
    assert float(jnp.max(jnp.abs(sol.probs[-1] - sol.probs[0]))) > 0.1
    for field in ("true_reward", "proxy_reward"):
        a, b = getattr(singles[0], field), getattr(singles[1], field)
        np.testing.assert_allclose(getattr(sol, field), w * a + (1 - w) * b, rtol=0, atol=t)


# ---------------------------------------------------------------------------------------
# 6. Batching: vmap == separate solves; no retracing for new values.
# ---------------------------------------------------------------------------------------

_B_FLOW = gf.GradientFlow()
_B_SGD = gf.GradientAscent(optax.sgd(0.5), 100)


def _b_policy():
    return gf.TabularSoftmax.from_probs(jnp.asarray([0.2, 0.3, 0.5]))


def _b_flow_run(reward):
    # The public recipe: jax.jit(jax.vmap(lambda r: gf.time_to_reward(gf.solve(...), 0.9))).
    # A flow locates the targets it tracks, inside the solve.
    sol = gf.solve(_b_policy(), reward=reward, method=_B_FLOW, t1=10.0, targets=(0.5, 0.9))
    return (sol.true_reward, gf.time_to_reward(sol, 0.9), gf.time_to_reward(sol, 0.5), sol.target_times[0])


def _b_sgd_run(reward):
    sol = gf.solve(_b_policy(), reward=reward, method=_B_SGD, targets=(0.5,))
    return (sol.true_reward, gf.time_to_reward(sol, 0.9), gf.time_to_reward(sol, 0.5),
            gf.time_to_reward(sol, jnp.asarray(0.5)))


@pytest.mark.parametrize("run", [_b_flow_run, _b_sgd_run], ids=["flow", "sgd"])
def test_vmap_matches_separate_solves_without_retracing(run):
    rewards = 2 * jax.random.normal(jax.random.key(0), (64, 3))
    # Known cases: reached; the best reward 0.5 < 0.9 (never); above 0.9 from the start.
    known = jnp.asarray([[3.0, 0.0, 0.0], [0.0, 0.0, 0.5], [0.95, 0.95, 1.0]])
    rewards = rewards.at[:3].set(known)
    # One trace each: calling the jitted single run with 64 different rewards, or the
    # vmapped one with a second batch of the same shape, must not retrace.
    batched = jax.jit(jax.vmap(eqx.debug.assert_max_traces(run, max_traces=1)))
    single = jax.jit(eqx.debug.assert_max_traces(run, max_traces=1))
    out = batched(rewards)
    batched(rewards[::-1])
    separate = [single(r) for r in rewards]
    separate = jax.tree.map(lambda *xs: jnp.stack(xs), *separate)
    for b, s in zip(out, separate, strict=True):
        assert b.shape[0] == 64
        np.testing.assert_array_equal(np.isinf(b), np.isinf(s))
        np.testing.assert_allclose(b, s, rtol=1e-4, atol=1e-5)
    # Some runs reach 0.9, some never do (+inf): both branches are covered.
    ttr = np.asarray(out[1])
    assert 0 < ttr[0] < np.inf and np.isposinf(ttr[1]) and ttr[2] == 0
    assert np.any(np.isposinf(ttr[3:])) and np.any(np.isfinite(ttr[3:]) & (ttr[3:] > 0))
    # Time-to-reward of a run is where its recorded reward curve crosses.
    # Tracked online and searched offline: the same crossing.
    np.testing.assert_allclose(out[2], out[3], rtol=1e-5)
    assert np.any(np.isfinite(out[2]) & (out[2] > 0))
    tr = np.asarray(out[0])
    never = np.max(tr, axis=1) < 0.9 - 1e-3
    np.testing.assert_array_equal(np.isposinf(ttr[never]), True)


def test_vmap_over_initial_policy_and_learning_rate():
    probs = jax.nn.softmax(jax.random.normal(jax.random.key(1), (8, 3)), axis=-1)
    lrs = jnp.linspace(0.1, 1.0, 8)
    reward = jnp.asarray([1.0, 0.0, 0.3])

    def run(p, lr):
        return sgd(gf.TabularSoftmax.from_probs(p), reward, lr=lr, steps=50).true_reward

    batched = jax.jit(jax.vmap(run))(probs, lrs)
    for i in range(8):
        np.testing.assert_allclose(batched[i], run(probs[i], lrs[i]), rtol=1e-5, atol=1e-6)
    assert not np.allclose(batched[0], batched[1])


# ---------------------------------------------------------------------------------------
# 12. Determinism.
# ---------------------------------------------------------------------------------------


def _leaves(sol):
    return [np.asarray(x) for x in jax.tree.leaves(sol)]


@pytest.mark.parametrize("kind", ["flow", "sgd"])
def test_same_inputs_bitwise_same_and_jit_matches_eager(kind):
    policy = _b_policy()
    reward = jnp.asarray([1.0, 0.4, -0.5])
    true = jnp.asarray([1.0, -0.4, 0.5])
    if kind == "flow":
        a, b = flow(policy, reward, true, t1=10.0), flow(policy, reward, true, t1=10.0)
        kw = dict(method=FLOW_F32, t1=jnp.asarray(10.0),
                  saveat=gf.SaveAt(ts=jnp.linspace(0.0, 10.0, N_SAVE), probs=True))
    else:
        a, b = (sgd(policy, reward, true, lr=0.5, steps=200) for _ in range(2))
        kw = dict(method=gf.GradientAscent(optax.sgd(0.5), 200), saveat=gf.SaveAt(probs=True))
    for x, y in zip(_leaves(a), _leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)
    eager = gf.solve(policy, reward=reward, true_reward=true, **kw)
    assert jax.tree.structure(eager) == jax.tree.structure(a)
    for x, y in zip(_leaves(a), _leaves(eager), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-6)


def test_eager_solve_does_not_recompile_for_new_reward_values():
    # The flow has the same problem (diffeqsolve recompiles, ~2 s a call); only the cheap
    # discrete case is exercised here.
    policy = _b_policy()
    gf.solve(policy, reward=jnp.asarray([1.0, 0.0, 0.0]), method=_B_SGD)  # warm-up
    with count_compiles() as n:
        sol = gf.solve(policy, reward=jnp.asarray([0.0, 1.0, 0.0]), method=_B_SGD)
    assert float(sol.true_reward[-1]) > float(sol.true_reward[0])
    assert n[0] == 0, f"{n[0]} XLA compilations for a second eager call with new values"
