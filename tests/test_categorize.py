"""`gf.categorize` and `classify`: the acceptance example of issue 4 (stalling problem,
p(y*) = 0.10, target 0.9: demoting y_med is beneficial, lifting a bad output above y* is
harmful, a 0.01 nudge is benign, while the instantaneous lens calls the demotion harmful),
the decision rule on hand-made times, the t = 0 rate and attracting outputs against the
tabular closed forms, failed runs, common random numbers for sampled methods, and bad
input.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import count_compiles, tol

import gradflow as gf
from gradflow._analysis.categorize import classify

PROBS = (0.10, 0.5, 0.4 / 3, 0.4 / 3, 0.4 / 3)
TRUE = (1.0, 0.8, -1.0, -1.0, -1.0)
HUGE = 3e38  # `r - V` overflows float32: the run diverges

_SGD_LONG = gf.GradientAscent(optax.sgd(0.1), 50_000)
_SGD_SHORT = gf.GradientAscent(optax.sgd(0.1), 3)
_RLOO = gf.RLOO(optax.sgd(1.0), steps=200, samples=4)


def _stalling():
    return gf.TabularSoftmax.from_probs(jnp.asarray(PROBS)), jnp.asarray(TRUE)


def _acceptance_proxies(true):
    return {
        "demote y_med to -1": gf.perturb.demote(true, 1, -1.0)[0],
        "bad output to 1.5": true.at[3].set(1.5),
        "bad output +0.01": true.at[3].add(0.01),
        "bad output -0.01": true.at[2].add(-0.01),
        "the true reward": true,
        "diverges": true.at[2].set(HUGE).at[3].set(-HUGE),
    }


# ---------------------------------------------------------------------------------------
# 1. Acceptance (issue 4).
# ---------------------------------------------------------------------------------------


def test_acceptance_sgd():
    policy, true = _stalling()
    named = _acceptance_proxies(true)
    c = gf.categorize(policy, true, jnp.stack(list(named.values())), method=_SGD_LONG, target=0.9)
    label = dict(zip(named, c.label, strict=True))
    assert label == {
        "demote y_med to -1": "beneficial",
        "bad output to 1.5": "harmful",
        "bad output +0.01": "benign",
        "bad output -0.01": "benign",
        "the true reward": "benign",
        "diverges": "failed",
    }, label

    # The reference stalls near y_med's 0.8 and crosses 0.9 late (a step index), but within
    # the horizon; the demotion crosses it two orders of magnitude sooner.
    t_ref = c.reference_time
    assert np.isfinite(t_ref) and t_ref == int(t_ref) and 1_000 < t_ref < 50_000
    assert c.time[0] < 0.05 * t_ref and c.time[0] == int(c.time[0])
    np.testing.assert_array_equal(c.time_ratio[[0, 2, 3]], c.time[[0, 2, 3]].astype(float) / t_ref)
    # Lifting a bad output above y*: never reaches the target, ends near -1.
    assert c.time[1] == np.inf and np.isnan(c.time_ratio[1])
    assert c.final_true_reward[1] < -0.9 < c.reference_final_true_reward
    # The true reward as a proxy: exactly the reference run (batched == unbatched).
    assert c.time[4] == t_ref and c.time_ratio[4] == 1.0
    assert c.final_true_reward[4] == c.reference_final_true_reward
    assert c.rate[4] == c.reference_rate

    # The instantaneous lens disagrees on the demotion: at t = 0 it slows the true reward
    # (y_med's mass, which carries most of V_G's rise, starts to fall).
    assert c.rate[0] < c.reference_rate and c.predicted[0] == "harmful"
    assert c.predicted[1] == "harmful" and c.predicted[2] == "benign" and c.predicted[4] == "benign"
    assert c.reference_attracts.tolist() == [[False, True, False, False, False]]
    assert c.attracts[0].tolist() == [[True, False, True, True, True]]

    # The diverged run is data: flagged, counted, left out of `counts` and `agreement`.
    assert c.failed == 1
    assert c.counts() == {"harmful": 1, "benign": 3, "beneficial": 1}
    ok = c.label != "failed"
    assert c.agreement == pytest.approx(np.mean(c.predicted[ok] == c.label[ok])) == pytest.approx(4 / 5)
    assert c.tolerance == 0.05 and c.reward_tolerance == 1e-3


def test_acceptance_flow():
    """The same three verdicts for the exact gradient flow (continuous time)."""
    policy, true = _stalling()
    named = {k: v for k, v in _acceptance_proxies(true).items() if k != "diverges"}
    c = gf.categorize(policy, true, jnp.stack(list(named.values())), method=gf.GradientFlow(),
                      target=0.9, t1=2000.0)
    label = dict(zip(named, c.label, strict=True))
    assert label == {
        "demote y_med to -1": "beneficial",
        "bad output to 1.5": "harmful",
        "bad output +0.01": "benign",
        "bad output -0.01": "benign",
        "the true reward": "benign",
    }, label
    assert 500 < c.reference_time < 2000 and c.time[0] < 0.05 * c.reference_time
    # Not bitwise 1 here: the flow's rows depend (by float32 ulps, amplified along the
    # plateau) on their position in the vmapped batch; see test_sweep's flow chunk test.
    assert c.time_ratio[4] == pytest.approx(1.0, abs=1e-4) and c.failed == 0
    # The flow's rate at t = 0 is the same formula, so the same (wrong) prediction.
    assert c.predicted[0] == "harmful" and c.agreement == pytest.approx(4 / 5)


# ---------------------------------------------------------------------------------------
# 2. The decision rule on hand-made times.
# ---------------------------------------------------------------------------------------


def _classify(time, t_ref, final=None, f_ref=0.0, failed=None, tolerance=0.25, reward_tolerance=0.25):
    time = np.asarray(time, float)
    final = np.zeros_like(time) if final is None else np.asarray(final, float)
    failed = np.zeros(time.shape, bool) if failed is None else np.asarray(failed)
    return classify(time, t_ref, final, f_ref, failed, tolerance, reward_tolerance)


def test_classify_both_reach():
    # tolerance 0.25 and reference 4: the ratios 0.75 and 1.25 are exact in binary.
    time = [1.0, 2.99, 3.0, 4.0, 5.0, 5.01, 40.0]
    label, ratio = _classify(time, 4.0)
    assert label.tolist() == ["beneficial", "beneficial", "benign", "benign", "benign", "harmful", "harmful"]
    np.testing.assert_array_equal(ratio, np.asarray(time) / 4.0)
    assert label.dtype.kind == "U"


def test_classify_one_or_neither_reaches():
    inf = np.inf
    # Neither reaches: by the reward at the horizon, with the absolute reward tolerance
    # (0.25: the boundary values 0.25 and 0.75 around 0.5 are exact).
    label, ratio = _classify([inf] * 5, inf, final=[0.0, 0.25, 0.5, 0.75, 1.0], f_ref=0.5)
    assert label.tolist() == ["harmful", "benign", "benign", "benign", "beneficial"]
    assert np.all(np.isnan(ratio))
    # Only the reference reaches: harmful, whatever the proxy's final reward.
    label, ratio = _classify([inf, inf], 10.0, final=[5.0, -5.0])
    assert label.tolist() == ["harmful", "harmful"] and np.all(np.isnan(ratio))
    # Only the proxy reaches: beneficial, whatever its final reward.
    label, _ = _classify([10.0], inf, final=[-5.0], f_ref=5.0)
    assert label.tolist() == ["beneficial"]


def test_classify_mixed_batch_against_a_reference_that_never_reaches():
    # Entry by entry: the proxy that never reaches falls back to the final reward (tied:
    # benign); the one that reaches is beneficial although its final reward is lower.
    label, _ = _classify([np.inf, 7.0], np.inf, final=[0.0, -1.0], f_ref=0.0)
    assert label.tolist() == ["benign", "beneficial"]


def test_classify_failed_and_reference_at_target():
    label, _ = _classify([1.0, np.nan, np.inf, 9.0], 4.0, failed=[True, True, True, False])
    assert label.tolist() == ["failed", "failed", "failed", "harmful"]
    # The reference starts at the target (time 0): nothing to speed up, all benign.
    label, ratio = _classify([0.0, 0.0], 0.0, failed=[False, True])
    assert label.tolist() == ["benign", "failed"] and np.all(np.isnan(ratio))


# ---------------------------------------------------------------------------------------
# 3. The t = 0 rate and attracting outputs against the tabular closed forms.
# ---------------------------------------------------------------------------------------


def _closed_form(probs, weights, proxy, true):
    """NumPy float64: `dV_G/dt = sum_x w_x^2 sum_y pi^2 (r_P - V_P)(r_G - V_G)` and
    `d pi_y/dt = pi_y (ds_y - sum_y' pi_y' ds_y')`, `ds_y = w pi_y (r_P,y - V_P)`."""
    pi, w = np.asarray(probs, np.float64), np.asarray(weights, np.float64)[:, None]
    rp, rg = np.asarray(proxy, np.float64), np.asarray(true, np.float64)
    ap = rp - np.sum(pi * rp, axis=-1, keepdims=True)
    ag = rg - np.sum(pi * rg, axis=-1, keepdims=True)
    rate = np.sum(w**2 * pi**2 * ap * ag, axis=(-2, -1))
    ds = w * pi * ap
    dpi = pi * (ds - np.sum(pi * ds, axis=-1, keepdims=True))
    return rate, dpi


def test_rate_and_attracts_match_closed_forms(dtype):
    rng = np.random.default_rng(3)
    probs = jnp.asarray([[0.1, 0.2, 0.3, 0.4], [0.5, 0.25, 0.15, 0.1]], dtype)
    weights = jnp.asarray([0.7, 0.3], dtype)
    policy = gf.TabularSoftmax.from_probs(probs, weights=weights)
    true = jnp.asarray(rng.normal(size=(2, 4)), dtype)
    noisy = gf.perturb.gaussian(jax.random.key(1), true, 0.7, 23)
    proxies = jnp.concatenate([noisy, -true[None]])  # the last one: a bad teacher
    assert proxies.dtype == dtype
    v0 = float(jnp.sum(weights * jnp.sum(probs * true, axis=-1)))
    # A target below the initial true reward: every run is there at t = 0.
    c = gf.categorize(policy, true, proxies, method=_SGD_SHORT, target=v0 - 1.0)
    assert c.rate.dtype == dtype

    rate, dpi = _closed_form(policy.probs(), weights, proxies, true[None])
    rtol, atol = tol(dtype, 1e-4, 1e-10), tol(dtype, 1e-6, 1e-13)
    np.testing.assert_allclose(c.rate, rate, rtol=rtol, atol=atol)
    by_policy = jax.jit(jax.vmap(lambda r: gf.true_reward_rate(policy, r, true)))(proxies)
    np.testing.assert_allclose(c.rate, by_policy, rtol=rtol, atol=atol)
    logp = jnp.log(policy.probs())
    by_metrics = jax.jit(jax.vmap(lambda r: gf.metrics.true_reward_rate(logp, r, true, weights)))(proxies)
    np.testing.assert_allclose(c.rate, by_metrics, rtol=rtol, atol=atol)
    ref_rate, ref_dpi = _closed_form(policy.probs(), weights, true, true)
    np.testing.assert_allclose(c.reference_rate, ref_rate, rtol=rtol, atol=atol)
    assert ref_rate > 0 and rate[-1] == pytest.approx(-ref_rate)  # -r_G: the worst teacher

    assert c.attracts.shape == (24, 2, 4) and c.attracts.dtype == bool
    clear = np.abs(dpi) > 1e3 * atol  # leave out derivatives within rounding of 0
    assert clear.mean() > 0.95
    np.testing.assert_array_equal(c.attracts[clear], (dpi > 0)[clear])
    np.testing.assert_array_equal(c.reference_attracts, ref_dpi > 0)
    assert 0 < c.attracts.mean() < 1

    # The instantaneous labels follow the rate against the reference, with the same
    # relative tolerance.
    band = c.tolerance * abs(c.reference_rate)
    want = np.where(c.rate > c.reference_rate + band, "beneficial",
                    np.where(c.rate < c.reference_rate - band, "harmful", "benign"))
    np.testing.assert_array_equal(c.predicted, want)
    # Everything starts at the target: all benign, time 0, undefined ratio.
    assert c.reference_time == 0 and np.all(c.time == 0)
    assert np.all(c.label == "benign") and np.all(np.isnan(c.time_ratio))


# ---------------------------------------------------------------------------------------
# 4. Bad input.
# ---------------------------------------------------------------------------------------


def test_bad_input_is_rejected():
    policy, true = _stalling()
    ok = true[None]
    bad = [
        ("proxies", dict(proxies=jnp.zeros((2, 4)))),  # wrong number of outputs
        ("proxies", dict(proxies=true)),  # no batch axis
        ("proxies", dict(proxies=jnp.zeros((2, 3, 5)))),  # 3 prompts for a 1-prompt policy
        ("proxies", dict(proxies=ok.at[0, 1].set(jnp.nan))),
        ("proxies", dict(proxies=ok.at[0, 1].set(jnp.inf))),
        ("tolerance", dict(proxies=ok, tolerance=0.0)),
        ("tolerance", dict(proxies=ok, tolerance=-0.1)),
        ("tolerance", dict(proxies=ok, tolerance=float("nan"))),
        ("reward_tolerance", dict(proxies=ok, reward_tolerance=0.0)),
        ("key", dict(proxies=ok, key=jax.random.key(0))),  # an exact method takes no key
        ("true_reward", dict(proxies=ok, true_reward=true[:4])),
        ("targets?", dict(proxies=ok, target=float("nan"))),
    ]
    for name, kw in bad:
        kw = {"true_reward": true, "method": _SGD_SHORT, "target": 0.9, **kw}
        with pytest.raises(ValueError, match=f"`{name}`"):
            gf.categorize(policy, **kw)
    with pytest.raises(ValueError, match="`key`"):  # a sampled method needs one
        gf.categorize(policy, true, ok, method=_RLOO, target=0.9)
    with pytest.raises((ValueError, TypeError), match="policy"):
        gf.categorize(np.asarray(PROBS), true, ok, method=_SGD_SHORT, target=0.9)


def test_empty_proxies_are_rejected_by_name():
    policy, true = _stalling()
    with pytest.raises(ValueError, match="`proxies`"):
        gf.categorize(policy, true, jnp.zeros((0, 5)), method=_SGD_SHORT, target=0.9)


def test_one_dimensional_true_reward_for_several_prompts():
    """A `(outputs,)` true reward is the same for every prompt (as in `gf.solve`); its
    proxies `(n, outputs)` then categorise like the tiled `(n, prompts, outputs)` ones."""
    policy = gf.TabularSoftmax.from_probs(jnp.asarray([[0.1, 0.5, 0.4], [0.3, 0.3, 0.4]]))
    true = jnp.asarray([1.0, 0.8, -1.0])
    proxies = jnp.stack([true, true.at[1].set(-1.0)])
    flat = gf.categorize(policy, true, proxies, method=_SGD_SHORT, target=0.2)
    tiled = gf.categorize(policy, jnp.tile(true, (2, 1)), jnp.tile(proxies[:, None], (1, 2, 1)),
                          method=_SGD_SHORT, target=0.2)
    np.testing.assert_array_equal(flat.label, tiled.label)
    np.testing.assert_array_equal(flat.rate, tiled.rate)


# ---------------------------------------------------------------------------------------
# 5. Sampled methods: common random numbers.
# ---------------------------------------------------------------------------------------


def test_sampled_method_uses_common_random_numbers():
    policy, true = _stalling()
    proxies = jnp.stack([true, gf.perturb.demote(true, 1, -1.0)[0], true.at[3].set(1.5)])
    key = jax.random.key(0)
    c = gf.categorize(policy, true, proxies, method=_RLOO, target=0.7, key=key)
    # The true reward as a proxy replays the reference run draw for draw.
    assert np.isfinite(c.reference_time)
    assert c.time[0] == c.reference_time and c.time_ratio[0] == 1.0 and c.label[0] == "benign"
    assert c.final_true_reward[0] == c.reference_final_true_reward
    assert c.label[2] == "harmful"
    # ... which it would not with other draws: the run depends on its key.
    run = jax.jit(lambda k: gf.solve(policy, reward=true, method=_RLOO, key=k, targets=(0.7,),
                                     saveat=gf.SaveAt(every=_RLOO.steps)).final_true_reward)
    assert float(run(key)) == c.reference_final_true_reward
    assert float(run(jax.random.key(1))) != c.reference_final_true_reward


def test_second_categorize_of_the_same_structure_does_not_recompile():
    # The row function is a pytree: a new true reward and new proxies of the same shapes
    # reuse the compiled sweep (a notebook's second call is instant).
    policy = gf.TabularSoftmax.from_probs(jnp.asarray([0.1, 0.5, 0.2, 0.2]))
    method = gf.GradientAscent(optax.sgd(0.5), 40)
    r1, r2 = jnp.asarray([1.0, 0.8, -1.0, -1.0]), jnp.asarray([1.0, 0.5, -0.5, -1.0])
    first = gf.categorize(policy, r1, jnp.stack([r1, r2]), method=method, target=0.5)
    with count_compiles() as n:
        second = gf.categorize(policy, r2, jnp.stack([r2, r1]), method=method, target=0.5)
    assert n[0] == 0
    # ... and the results are those of the new inputs (not the cached first call's).
    assert first.label[0] == second.label[0] == "benign"
    direct = gf.solve(policy, reward=r2, method=method, targets=(0.5,), saveat=gf.SaveAt(every=40))
    np.testing.assert_allclose(second.reference_time, direct.target_times[0])
    assert second.reference_time != first.reference_time
