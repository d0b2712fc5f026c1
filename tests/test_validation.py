"""Bad input is rejected up front with a `ValueError` naming the argument; failed runs are
data (a status flag), never a silent number."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import flow, sgd

import gradflow as gf

_P = (0.2, 0.3, 0.5)
_SGD = gf.GradientAscent(optax.sgd(0.1), 5)


def _policy(**kw):
    return gf.TabularSoftmax.from_probs(jnp.asarray(_P), **kw)


def _solve(**kw):
    args = dict(reward=[1.0, 0.0, 0.0], method=_SGD)
    args.update(kw)
    return gf.solve(args.pop("policy", _policy()), **args)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(reward=[1.0, 0.0]), "`reward`"),
        (dict(reward=[1.0, 0.0, 0.0, 0.0]), "`reward`"),
        (dict(reward=[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]), "`reward`"),  # 2 prompts, policy 1
        (dict(reward=[[[1.0, 0.0, 0.0]]]), "`reward`"),
        (dict(reward=[1.0, np.nan, 0.0]), "`reward`"),
        (dict(reward=[1.0, np.inf, 0.0]), "`reward`"),
        (dict(reward="abc"), "`reward`"),
        (dict(true_reward=[1.0, 0.0]), "`true_reward`"),
        (dict(true_reward=[-np.inf, 0.0, 0.0]), "`true_reward`"),
        (dict(t1=1.0), "`t1`"),  # discrete methods take no t1
        (dict(method=gf.GradientFlow()), "`t1`"),  # the flow needs one
        (dict(method=gf.GradientFlow(), t1=0.0), "`t1`"),
        (dict(method=gf.GradientFlow(), t1=-1.0), "`t1`"),
        (dict(method=gf.GradientFlow(), t1=np.nan), "`t1`"),
        (dict(targets=(np.nan,)), "`targets`"),
        (dict(targets=(1.5,), normalized_targets=True), "`targets`"),
        (dict(saveat=gf.SaveAt(every=10)), "`saveat.every`"),  # more than the 5 steps
        (dict(saveat=gf.SaveAt(ts=jnp.asarray([0.0, 1.0]))), "`saveat.ts`"),  # flow only
        (dict(method=gf.GradientFlow(), t1=1.0, saveat=gf.SaveAt(every=2)), "`saveat.every`"),
        (dict(method=gf.GradientFlow(), t1=1.0, saveat=gf.SaveAt(ts=jnp.asarray([0.0, 2.0]))),
         "`saveat.ts`"),
        (dict(method=gf.GradientFlow(), t1=1.0, saveat=gf.SaveAt(ts=jnp.asarray([0.5, 0.2]))),
         "`saveat.ts`"),
    ],
)
def test_solve_rejects_bad_input(kwargs, name):
    with pytest.raises(ValueError, match=name):
        _solve(**kwargs)


@pytest.mark.parametrize(
    "build, name",
    [
        (lambda: gf.TabularSoftmax.from_probs([0.5, -0.1, 0.6]), "`probs`"),  # negative
        (lambda: gf.TabularSoftmax.from_probs([0.5, 0.0, 0.5]), "`probs`"),  # zero
        (lambda: gf.TabularSoftmax.from_probs([0.5, 0.3, 0.3]), "`probs`"),  # sums to 1.1
        (lambda: gf.TabularSoftmax.from_probs([[0.5, 0.5], [0.2, 0.2]]), "`probs`"),
        (lambda: gf.TabularSoftmax.from_probs([np.nan, 0.5, 0.5]), "`probs`"),
        (lambda: gf.TabularSoftmax.from_probs([1.0]), "`logits`"),  # one output only
        (lambda: gf.TabularSoftmax.from_probs(_P, temperature=0.0), "`temperature`"),
        (lambda: gf.TabularSoftmax.from_probs(_P, temperature=-1.0), "`temperature`"),
        (lambda: gf.TabularSoftmax([0.0, 1.0], temperature=0.0), "`temperature`"),
        (lambda: gf.TabularSoftmax([0.0, 1.0], temperature=[1.0, 2.0]), "`temperature`"),
        (lambda: gf.TabularSoftmax([[0.0, 1.0], [1.0, 0.0]], weights=[0.7, 0.7]), "`weights`"),
        (lambda: gf.TabularSoftmax([[0.0, 1.0], [1.0, 0.0]], weights=[1.2, -0.2]), "`weights`"),
        (lambda: gf.TabularSoftmax([[0.0, 1.0], [1.0, 0.0]], weights=[1.0]), "`weights`"),
        (lambda: gf.TabularSoftmax([[[0.0, 1.0]]]), "`logits`"),
        (lambda: gf.LogLinear(np.eye(3), np.zeros(2)), "`theta`"),
        (lambda: gf.LogLinear(np.eye(3), np.zeros(3), temperature=0.0), "`temperature`"),
        (lambda: gf.LogLinear(np.ones(3), np.zeros(3)), "`features`"),
        (lambda: gf.LogLinear.from_probs(np.eye(3), [0.5, 0.5]), "`probs`"),
        (lambda: gf.GradientAscent(optax.sgd(0.1), 0), "`steps`"),
        (lambda: gf.GradientAscent(optax.sgd(0.1), -3), "`steps`"),
        (lambda: gf.GradientFlow(adaptive=False), "`dt0`"),
        (lambda: gf.GradientFlow(max_steps=0), "`max_steps`"),
        (lambda: gf.GradientFlow(rtol=0.0), "`rtol`"),
        (lambda: gf.GradientFlow(atol=-1e-9), "`atol`"),
        (lambda: gf.GradientFlow(rtol=-1e-3), "`rtol`"),
        (lambda: gf.GradientFlow(jump_floor=-0.1), "`jump_floor`"),
        (lambda: gf.GradientFlow(jump_floor=1.0), "`jump_floor`"),
        (lambda: gf.GradientFlow(solver="rk4"), "`solver`"),
        (lambda: gf.SaveAt(every=0), "`every`"),
        (lambda: gf.SaveAt(n=0), "`n`"),
        (lambda: gf.Regularization(kl=-1.0), "`kl`"),
        (lambda: gf.Regularization(entropy=-0.5), "`entropy`"),
    ],
)
def test_constructors_reject_bad_input(build, name):
    with pytest.raises(ValueError, match=name):
        build()


@pytest.mark.parametrize(
    "build, name",
    [
        (lambda: _solve(method="sgd"), "method"),
        (lambda: _solve(policy=np.asarray(_P)), "policy"),
        (lambda: gf.GradientAscent(lambda g: g, 10), "optimizer"),
        (lambda: gf.Regularization(kl_direction="sideways"), "kl_direction"),
        (lambda: gf.Regularization(kl_reference="previous"), "kl_reference"),
    ],
)
def test_wrong_types_are_rejected(build, name):
    # The library raises ValueError; under this suite's runtime type checking
    # (--jaxtyping-packages) the annotation check fires first with a TypeError. Either way
    # the argument is named.
    with pytest.raises((ValueError, TypeError), match=name):
        build()


def test_time_to_reward_rejects_bad_normalized_target():
    sol = sgd(_policy(), [1.0, 0.0, 0.0], lr=0.1, steps=5)
    with pytest.raises(ValueError, match="`target`"):
        gf.time_to_reward(sol, 1.5, normalized=True)
    with pytest.raises(ValueError, match="`target`"):
        gf.time_to_reward(sol, -0.1, normalized=True)


def test_traced_bad_input_raises_at_run_time():
    policy = _policy()
    run = jax.jit(lambda r: gf.solve(policy, reward=r, method=_SGD).true_reward)
    assert np.all(np.isfinite(run(jnp.asarray([1.0, 0.0, 0.0]))))
    with pytest.raises(Exception, match="`reward` must be finite"):
        jax.block_until_ready(run(jnp.asarray([1.0, jnp.nan, 0.0])))


# ---------------------------------------------------------------------------------------
# Failed runs are data.
# ---------------------------------------------------------------------------------------


def test_diverging_sgd_is_flagged_and_frozen(dtype):
    policy = _policy()
    huge = float(jnp.finfo(dtype).max)  # one update overflows the logits
    sol = sgd(policy, [10.0, 0.0, 0.0], lr=huge, steps=10, targets=(1.0, 9.0))
    assert sol.status == gf.Status.diverged
    assert gf.status_name(sol.status) == "diverged"
    # Recorded values stay finite: the state is frozen at the last finite point.
    for leaf in (sol.true_reward, sol.proxy_reward, sol.reward_variance, sol.grad_norm,
                 sol.probs, sol.params):
        assert bool(jnp.all(jnp.isfinite(leaf)))
    np.testing.assert_allclose(sol.probs[-1, 0], _P, rtol=1e-5)
    # A target reached before the failure keeps its time; one not reached is unknown (nan),
    # not "never" (+inf) and not a number.
    assert gf.time_to_reward(sol, 1.0) == 0.0
    assert np.isnan(gf.time_to_reward(sol, 9.0))
    assert np.isnan(gf.time_to_reward(sol, jnp.asarray(9.0)))  # untracked path too
    assert np.isnan(sol.target_times[1]) and sol.target_times[0] == 0.0
    # The same problem with a sane learning rate is fine.
    ok = sgd(policy, [10.0, 0.0, 0.0], lr=0.1, steps=10, targets=(1.0, 9.0))
    assert ok.status == gf.Status.ok


_FLOW_FEW_STEPS = gf.GradientFlow(max_steps=4)


def _failed_flow(targets=()):
    return flow(_policy(), [10.0, 0.0, 0.0], t1=100.0, method=_FLOW_FEW_STEPS, targets=targets)


def test_flow_running_out_of_steps_is_flagged():
    sol = _failed_flow(targets=(9.9, 1.0))
    assert sol.status == gf.Status.max_steps
    assert gf.status_name(sol.status) == "max steps hit"
    assert "max_steps" in gf.Status[sol.status]  # the message says what to change
    # max_steps counts every step: accepted plus rejected.
    assert int(sol.num_steps) + int(sol.num_rejected_steps) == 4
    assert np.isnan(gf.time_to_reward(sol, 9.9))  # not reached before the failure: unknown
    assert gf.time_to_reward(sol, 1.0) == 0.0  # reached at t = 0
    with pytest.raises(ValueError, match="not tracked"):
        gf.time_to_reward(sol, 0.99, normalized=True)


def test_failed_flow_records_are_not_plus_inf():
    sol = _failed_flow()
    assert sol.status == gf.Status.max_steps
    for leaf in (sol.true_reward, sol.proxy_reward, sol.reward_variance, sol.grad_norm,
                 sol.probs, sol.final_true_reward):
        assert not bool(jnp.any(jnp.isposinf(leaf)))


def test_mixed_precision_inputs_solve():
    logits32 = jnp.asarray([0.1, 0.2, 0.3], jnp.float32)
    with jax.enable_x64(True):
        policy = gf.TabularSoftmax(logits32)
        sol = gf.solve(policy, reward=[1.0, 0.0, 0.0], method=gf.GradientAscent(optax.sgd(0.1), 3))
        assert sol.status == gf.Status.ok
