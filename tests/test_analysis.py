"""Time-to-reward, stalls, and the closed-form rates of the tabular theory."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import (
    N_SAVE,
    REF_PROXY,
    REF_TRUE,
    flow,
    random_problem,
    reference_probs,
    sgd,
    softmax,
    tol,
)
from scipy.integrate import solve_ivp

import gradflow as gf

# ---------------------------------------------------------------------------------------
# Time-to-reward, flow: against an independent high-accuracy ODE solve with an event.
# ---------------------------------------------------------------------------------------

_FRACS = (0.3, 0.45, 0.6, 0.9)  # normalised levels


def _scipy_crossings(theta0, r, levels, t1):
    """First t with E_pi(theta(t))[r] >= level for each level (`inf` if none before t1),
    for theta' = pi (r - V) (one prompt, tau = 1): DOP853 with event location."""

    def f(t, th):
        p = softmax(th)
        return p * (r - p @ r)

    def make_event(level):
        def event(t, th):
            return softmax(th) @ r - level

        event.direction = 1
        return event

    out = solve_ivp(f, (0.0, t1), theta0, method="DOP853", rtol=1e-10, atol=1e-12,
                    events=[make_event(level) for level in levels])
    return [te[0] if len(te) else np.inf for te in out.t_events]


@pytest.mark.parametrize("seed", range(3))
def test_flow_time_to_reward_matches_scipy_event(dtype, seed):
    policy, reward = random_problem(seed, 3, dtype)
    t1 = 60.0
    sol = flow(policy, reward, t1=t1, targets=_FRACS, normalized_targets=True)
    assert sol.status == gf.Status.ok
    theta0 = np.log(np.asarray(policy.probs()[0], np.float64))
    r = np.asarray(reward, np.float64)
    v0 = softmax(theta0) @ r
    rtol = tol(dtype, 1e-3, 1e-6)
    checked = 0
    levels = [v0 + frac * (r.max() - v0) for frac in _FRACS]
    expected = _scipy_crossings(theta0, r, levels, t1)
    for frac, expect in zip(_FRACS, expected, strict=True):
        got = gf.time_to_reward(sol, frac, normalized=True)
        if np.isinf(expect):
            assert np.isposinf(got)
            continue
        checked += 1
        np.testing.assert_allclose(got, expect, rtol=rtol)
    assert checked >= 3
    # A flow locates only the targets it tracked.
    with pytest.raises(ValueError, match="not tracked"):
        gf.time_to_reward(sol, float(r.max()))


@pytest.mark.parametrize("p0, delta", [(0.3, 0.8), (0.1, 2.0)])
def test_flow_time_to_reward_two_armed_closed_form(dtype, p0, delta):
    # With F as in test_solve.py, F(p) - F(p0) = 2 Delta t, so the reward level
    # r2 + p Delta is first reached at t = (F(p) - F(p0)) / (2 Delta).
    def F(p):
        return 2 * np.log(p / (1 - p)) - 1 / p + 1 / (1 - p)

    policy = gf.TabularSoftmax.from_probs(jnp.asarray([p0, 1 - p0]))
    # The targets as fractions of the way from V(0) = p0 Delta to Delta (the same static
    # tuple for every case: one compilation per dtype): p = p0 + x (1 - p0).
    xs = (0.25, 0.6, 0.9)
    sol = flow(policy, [delta, 0.0], t1=30.0, targets=xs, normalized_targets=True)
    for i, x in enumerate(xs):
        p = p0 + x * (1 - p0)
        expect = (F(p) - F(p0)) / (2 * delta)
        np.testing.assert_allclose(sol.target_times[i], expect, rtol=tol(dtype, 1e-3, 1e-8))


# ---------------------------------------------------------------------------------------
# Time-to-reward, discrete: a step index.
# ---------------------------------------------------------------------------------------

_D_REWARD = (1.0, 0.5, -1.0)
_D_TARGETS = (0.0, 0.5, 0.9, 1.0)  # 1.0 is the best reward: approached, never reached


@pytest.mark.parametrize("seed", range(3))
def test_discrete_time_to_reward_is_first_step_at_or_above(dtype, seed):
    policy, _ = random_problem(seed, 3, dtype)
    policy = gf.TabularSoftmax(policy.logits[0] - 2 * jnp.asarray([1.0, 0.0, 0.0]))
    sol = sgd(policy, _D_REWARD, lr=0.3, steps=300, targets=_D_TARGETS)
    v = np.asarray(sol.true_reward)
    steps = np.asarray(sol.steps)
    for i, target in enumerate(_D_TARGETS):
        idx = np.flatnonzero(v >= target)
        expect = steps[idx[0]] if idx.size else np.inf
        assert sol.target_times[i] == expect
        assert gf.time_to_reward(sol, target) == expect  # tracked
        assert gf.time_to_reward(sol, jnp.asarray(target)) == expect  # untracked
    # Above the best reward: refused, with the range (by solve and by time_to_reward).
    with pytest.raises(ValueError, match=r"`target` 2 is outside the range .* \[-1, 1\]"):
        gf.time_to_reward(sol, 2.0)
    with pytest.raises(ValueError, match=r"`targets` \[0.5, 2.0\] is outside the range .* \[-1, 1\]"):
        gf.solve(policy, reward=_D_REWARD, method=gf.GradientAscent(optax.sgd(0.1), 10), targets=(0.5, 2.0))
    with pytest.raises(ValueError, match="`target` must be a number; got nan"):
        gf.time_to_reward(sol, float("nan"))
    tt = np.asarray(sol.target_times)
    assert np.any((tt > 0) & np.isfinite(tt))  # a genuine crossing, mid-run
    # Untracked level, recorded every step: found from the recording.
    level = float(0.5 * (v[0] + v.max()))
    idx = np.flatnonzero(v >= level)
    assert 0 < gf.time_to_reward(sol, level) == steps[idx[0]]


def test_discrete_time_to_reward_with_stride():
    policy = gf.TabularSoftmax.from_probs(jnp.asarray([0.05, 0.6, 0.35]))
    full = sgd(policy, _D_REWARD, lr=1.0, steps=300, targets=_D_TARGETS)
    strided = sgd(policy, _D_REWARD, lr=1.0, steps=300, every=7, targets=_D_TARGETS)
    # Tracked online: the exact step whatever the recording stride.
    np.testing.assert_array_equal(strided.target_times, full.target_times)
    assert gf.time_to_reward(strided, 0.9) == gf.time_to_reward(full, 0.9)
    assert int(gf.time_to_reward(strided, 0.9)) % 7 != 0  # not a recorded step
    # An untracked target cannot be located exactly from a strided recording.
    with pytest.raises(ValueError, match="not tracked"):
        gf.time_to_reward(strided, 0.7)


def test_time_to_reward_normalized():
    policy = gf.TabularSoftmax.from_probs(jnp.asarray([0.05, 0.6, 0.35]))
    sol = sgd(policy, _D_REWARD, lr=0.3, steps=300)
    v0 = float(sol.true_reward[0])
    vmax = max(_D_REWARD)
    for frac in (0.0, 0.25, 0.5, 0.9):
        level = v0 + frac * (vmax - v0)
        assert gf.time_to_reward(sol, frac, normalized=True) == gf.time_to_reward(
            sol, jnp.asarray(level, sol.true_reward.dtype))
    assert gf.time_to_reward(sol, 0.0, normalized=True) == 0
    assert np.isposinf(gf.time_to_reward(sol, 1.0, normalized=True))  # only asymptotically
    with pytest.raises(ValueError, match="target"):
        gf.time_to_reward(sol, 1.5, normalized=True)


# ---------------------------------------------------------------------------------------
# Stalls on the reference problem.
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("p_star", [0.10, 0.15])
def test_reference_problem_flow_stalls_on_true_reward_not_on_proxy(p_star):
    policy = gf.TabularSoftmax.from_probs(jnp.asarray(reference_probs(p_star)))
    on_true = flow(policy, REF_TRUE, REF_TRUE, t1=2000.0, targets=(0.9,))
    on_proxy = flow(policy, REF_PROXY, REF_TRUE, t1=2000.0, targets=(0.9,))
    assert on_true.status == on_proxy.status == gf.Status.ok

    # Trained on r_G: a stall near the mediocre reward 0.8.
    assert int(on_true.num_stalls) >= 1
    stall = on_true.stall
    assert abs(float(stall.level) - 0.8) < 0.05
    assert float(stall.duration) >= 0.01 * 2000  # the default minimal duration
    assert 0 <= float(stall.start) and float(stall.start + stall.duration) <= 2000 * (1 + 1e-6)
    # The reward really is flat there: the recorded curve inside the stall stays near its level.
    ts, v = np.asarray(on_true.ts), np.asarray(on_true.true_reward)
    inside = (ts >= float(stall.start)) & (ts <= float(stall.start + stall.duration))
    assert inside.sum() >= 2
    assert np.all(np.abs(v[inside] - float(stall.level)) < 0.05)

    # Offline, from the recorded grid (41 points): the same plateau, to the grid's resolution.
    offline = gf.find_stalls(on_true)
    spacing = 2000 / (N_SAVE - 1)
    assert int(offline.count) >= 1 or float(stall.duration) < 4 * spacing
    if int(offline.count):
        longest = offline.longest()
        assert abs(float(longest.level) - float(stall.level)) < 0.02
        assert abs(float(longest.start) - float(stall.start)) <= 2 * spacing
    assert np.all(np.isnan(np.asarray(offline.level)[int(offline.count):]))  # padding

    # Trained on the wrong proxy: no stall, and 0.9 is reached much sooner.
    assert int(on_proxy.num_stalls) == 0
    assert np.isnan(float(on_proxy.stall.level))
    assert int(gf.find_stalls(on_proxy).count) == 0
    t_true = gf.time_to_reward(on_true, 0.9)
    t_proxy = gf.time_to_reward(on_proxy, 0.9)
    assert t_proxy < 50 and t_true > 5 * t_proxy

    # With a stall target below the plateau, the plateau at 0.8 is no stall.
    assert int(gf.find_stalls(on_true, target=0.5).count) == 0


def test_reference_problem_sgd_stalls_on_true_reward_not_on_proxy():
    policy = gf.TabularSoftmax.from_probs(jnp.asarray(reference_probs(0.10)))
    kw = dict(lr=0.1, steps=20000, every=100, targets=(0.9,))
    on_true = sgd(policy, REF_TRUE, REF_TRUE, **kw)
    on_proxy = sgd(policy, REF_PROXY, REF_TRUE, **kw)
    assert on_true.status == on_proxy.status == gf.Status.ok
    assert int(on_true.num_stalls) >= 1
    assert abs(float(on_true.stall.level) - 0.8) < 0.05
    assert float(on_true.stall.duration) >= 200
    offline = gf.find_stalls(on_true)  # from the every-100 recording
    assert int(offline.count) >= 1
    assert abs(float(offline.longest().level) - 0.8) < 0.05
    assert int(on_proxy.num_stalls) == 0 and int(gf.find_stalls(on_proxy).count) == 0
    t_true, t_proxy = gf.time_to_reward(on_true, 0.9), gf.time_to_reward(on_proxy, 0.9)
    assert t_proxy < 1000 and t_true > 5 * t_proxy
    # Flow time ~ eta * steps: the SGD crossing is near the flow's (Euler, eta = 0.1).
    fl = flow(policy, REF_PROXY, REF_TRUE, t1=2000.0, targets=(0.9,))
    np.testing.assert_allclose(0.1 * t_proxy, gf.time_to_reward(fl, 0.9), rtol=0.1)


# ---------------------------------------------------------------------------------------
# Rates and variance.
# ---------------------------------------------------------------------------------------


def _tabular_rate(probs, w, r_p, r_g, tau=1.0):
    p = np.asarray(probs, np.float64)
    vp = np.sum(p * r_p, -1, keepdims=True)
    vg = np.sum(p * r_g, -1, keepdims=True)
    return np.sum(np.asarray(w) ** 2 * np.sum(p**2 * (r_p - vp) * (r_g - vg), -1)) / tau**2


def test_true_reward_rate_closed_form(dtype):
    rng = np.random.default_rng(0)
    for tau in (1.0, 0.6):
        probs = softmax(rng.normal(size=(2, 4)))
        w = np.asarray([0.3, 0.7])
        r_p, r_g = rng.normal(size=(2, 4)), rng.normal(size=(2, 4))
        policy = gf.TabularSoftmax.from_probs(jnp.asarray(probs), weights=jnp.asarray(w),
                                              temperature=tau)
        got = gf.true_reward_rate(policy, jnp.asarray(r_p), jnp.asarray(r_g))
        np.testing.assert_allclose(got, _tabular_rate(probs, w, r_p, r_g, tau),
                                   rtol=tol(dtype, 1e-5, 1e-12))
        # Training on the true reward: the rate is the squared gradient norm (>= 0).
        same = gf.true_reward_rate(policy, jnp.asarray(r_g), jnp.asarray(r_g))
        np.testing.assert_allclose(same, _tabular_rate(probs, w, r_g, r_g, tau),
                                   rtol=tol(dtype, 1e-5, 1e-12))
        assert same > 0


def test_true_reward_rate_loglinear_is_inner_product_of_covariances(dtype):
    # grad V = sum_x w_x Cov_pi(r, phi) / tau for a log-linear policy.
    rng = np.random.default_rng(1)
    feats = rng.normal(size=(2, 4, 3))
    theta = rng.normal(size=3)
    w = np.asarray([0.6, 0.4])
    tau = 0.8
    r_p, r_g = rng.normal(size=(2, 4)), rng.normal(size=(2, 4))
    policy = gf.LogLinear(jnp.asarray(feats), jnp.asarray(theta), weights=jnp.asarray(w),
                          temperature=tau)
    p = softmax(feats @ theta / tau)

    def grad(r):
        cov = np.einsum("xy,xyd->xd", p * (r - np.sum(p * r, -1, keepdims=True)), feats)
        return np.sum(w[:, None] * cov, 0) / tau

    got = gf.true_reward_rate(policy, jnp.asarray(r_p), jnp.asarray(r_g))
    np.testing.assert_allclose(got, grad(r_p) @ grad(r_g), rtol=tol(dtype, 1e-5, 1e-12))


def test_true_reward_rate_is_derivative_along_the_flow(dtype):
    w = 0.3
    probs = jnp.asarray([[0.2, 0.5, 0.3], [0.6, 0.3, 0.1]])
    reward = jnp.asarray([[1.0, 0.0, 0.5], [-1.0, 0.2, 1.0]])
    true = jnp.asarray([[0.0, 1.0, 0.5], [0.3, -0.2, 1.0]])
    weights = jnp.asarray([w, 1 - w])
    t1 = 2.0
    policy = gf.TabularSoftmax.from_probs(probs, weights=weights)
    sol = flow(policy, reward, true, t1=t1, ts=np.linspace(0.0, t1, N_SAVE))
    h = t1 / (N_SAVE - 1)
    v = np.asarray(sol.true_reward, np.float64)
    fd = (v[2:] - v[:-2]) / (2 * h)  # central differences, O(h^2)
    rates = np.asarray(jax.jit(jax.vmap(
        lambda p: gf.true_reward_rate(gf.TabularSoftmax.from_probs(p, weights=weights), reward, true)
    ))(sol.probs[1:-1]))
    scale = np.max(np.abs(rates))
    assert scale > 0.01
    np.testing.assert_allclose(fd, rates, rtol=0, atol=tol(dtype, 2e-3, 1e-4) * scale)
    # And the closed form at each recorded point.
    np.testing.assert_allclose(
        rates,
        [_tabular_rate(p, np.asarray(weights), np.asarray(reward), np.asarray(true))
         for p in np.asarray(sol.probs[1:-1])],
        rtol=tol(dtype, 1e-4, 1e-9), atol=tol(dtype, 1e-6, 1e-12),
    )


def test_reward_variance_direct(dtype):
    rng = np.random.default_rng(2)
    probs = softmax(rng.normal(size=(3, 5)))
    w = np.asarray([0.2, 0.5, 0.3])
    r = rng.normal(size=(3, 5))
    policy = gf.TabularSoftmax.from_probs(jnp.asarray(probs), weights=jnp.asarray(w))
    mean = np.sum(probs * r, -1, keepdims=True)
    expect = np.sum(w * np.sum(probs * (r - mean) ** 2, -1))
    np.testing.assert_allclose(gf.reward_variance(policy, jnp.asarray(r)), expect,
                               rtol=tol(dtype, 1e-5, 1e-12))
    # A reward of shape (outputs,) is the same reward for every prompt.
    shared = np.sum(w * np.sum(probs * (r[0] - np.sum(probs * r[0], -1, keepdims=True)) ** 2, -1))
    np.testing.assert_allclose(gf.reward_variance(policy, jnp.asarray(r[0])), shared,
                               rtol=tol(dtype, 1e-5, 1e-12))
    # A constant reward has no variance.
    assert abs(float(gf.reward_variance(policy, jnp.ones(5)))) < 1e-6


def test_recorded_reward_variance_and_grad_norm(dtype):
    policy, reward = random_problem(3, 5, dtype)
    sol = flow(policy, reward, t1=10.0)

    @jax.jit
    @jax.vmap
    def at(probs):
        p = gf.TabularSoftmax.from_probs(probs)
        return gf.reward_variance(p, reward), gf.true_reward_rate(p, reward, reward)

    variance, rate = at(sol.probs)
    np.testing.assert_allclose(sol.reward_variance, variance, rtol=tol(dtype, 1e-4, 1e-9),
                               atol=1e-7)
    # On the true reward, |grad J|^2 = dV/dt (the rate of training on itself).
    np.testing.assert_allclose(sol.grad_norm**2, rate, rtol=tol(dtype, 1e-4, 1e-9), atol=1e-8)
    assert float(rate[0]) > 1e-3
