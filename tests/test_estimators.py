"""The sample-based methods (`gradflow._engine.estimators`): unbiasedness of REINFORCE and RLOO,
GRPO's bias against its closed form, PPO's clipped surrogate, the sampler, PRNG keys,
seed-means against the exact run, bad input, and a long regularised run.

Statistical checks compare a Monte Carlo mean with its expectation within `Z = 5`
standard errors (the sample standard deviation over `sqrt(n)`), componentwise. Each key
is fixed, so a run is deterministic; with independent draws the chance that a correct
implementation fails a single such comparison is about 6e-7, so over the few hundred
comparisons of this file about 1e-4. Every statistical test also checks its own *power*:
the effect it is meant to detect (the gradient itself, the regulariser's share of it, the
gap between GRPO and the exact gradient, ...) is many standard errors wide, so a wrong
estimator would fail.

Compilation dominates the run time: methods are built once at module level, Monte Carlo
samples come from one `vmap` over `jax.random.split(key, n)`, and the 512-seed run is
shared by the statistical and the key tests.
"""

from __future__ import annotations

import functools
import itertools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import sgd, tol

import gradflow as gf
from gradflow._engine.estimators import Batch, score_gradient
from gradflow._engine.objective import Problem, gradient
from gradflow._engine.solve import _as_key

Z = 5.0  # standard errors allowed between a Monte Carlo mean and its expectation


def _f64(x):
    return np.asarray(x, np.float64)


def _mc_check(samples, expect, *, atol=1e-5, name=""):
    """`mean(samples) == expect` componentwise within `Z` standard errors (sample std /
    sqrt(n), computed in float64), plus `atol` for components whose standard error is ~0
    (float32 rounding of the estimates and of the exact value is ~1e-7 relative).
    Returns the standard errors."""
    samples = _f64(samples)
    n = samples.shape[0]
    mean = samples.mean(axis=0)
    se = samples.std(axis=0, ddof=1) / np.sqrt(n)
    err = np.abs(mean - _f64(expect))
    bound = Z * se + atol
    assert np.all(err <= bound), (
        f"{name}: Monte Carlo mean off by {np.max(err / (se + 1e-30)):.2f} standard errors\n"
        f"mean={mean}\nexpect={_f64(expect)}\nse={se}"
    )
    return se


@eqx.filter_jit
def _estimates(method, params, state, key, problem, n):
    """`n` independent `method.estimate`s at `params` (parameter space)."""
    keys = jax.random.split(key, n)
    return jax.vmap(lambda k: method.estimate(params, state, k, problem)[0])(keys)


@eqx.filter_jit
def _exact(params, problem, reg):
    """The exact gradient (`gradflow._engine.objective.gradient`) at `params`, under the
    regularisation `reg` (with the problem's `log pi_ref`)."""
    p = problem
    return gradient(params, Problem(p.policy, p.reward, p.true_reward, p.log_ref, reg))[0]


# ---------------------------------------------------------------------------------------
# 1. REINFORCE (every baseline) and RLOO are unbiased for the regularised gradient.
#
# The problems: a 3-prompt tabular policy with non-uniform prompt weights and temperature
# 0.7, and a 2-prompt log-linear policy (3 shared parameters, temperature 1.3). The
# gradient is taken at parameters *away* from the initial policy, so that a KL to the
# initial policy has a non-zero gradient.
# ---------------------------------------------------------------------------------------

_RNG = np.random.default_rng(7)
_TAB = gf.TabularSoftmax(
    jnp.asarray(_RNG.normal(size=(3, 4)), jnp.float32),
    weights=jnp.asarray([0.5, 0.3, 0.2], jnp.float32),
    temperature=0.7,
)
_TAB_R = jnp.asarray(_RNG.normal(size=(3, 4)), jnp.float32)
_TAB_AT = _TAB.params + 0.5 * jnp.asarray(_RNG.normal(size=(3, 4)), jnp.float32)
_LL = gf.LogLinear(
    jnp.asarray(_RNG.normal(size=(2, 5, 3)), jnp.float32),
    jnp.asarray(_RNG.normal(size=3), jnp.float32),
    weights=jnp.asarray([0.7, 0.3], jnp.float32),
    temperature=1.3,
)
_LL_R = jnp.asarray(_RNG.normal(size=(2, 5)), jnp.float32)
_LL_AT = _LL.params + 1.0 * jnp.asarray(_RNG.normal(size=3), jnp.float32)
_PROBLEMS = {"tabular": (_TAB, _TAB_R, _TAB_AT), "loglinear": (_LL, _LL_R, _LL_AT)}

_OPT = optax.sgd(0.1)  # unused by `estimate`, but part of the method
_REGS = {
    "none": gf.Regularization(),
    "kl": gf.Regularization(kl=0.3),
    "kl_forward": gf.Regularization(kl=0.3, kl_direction="forward"),
    "entropy": gf.Regularization(entropy=0.2),
    "kl_uniform": gf.Regularization(kl=0.2, kl_reference="uniform"),
    "normalize": gf.Regularization(normalize=True),
}
# A fast-moving running baseline (decay 0.5): had the baseline been updated *before* it
# is used, the advantage with k = 1 would be 0.5 (r - b), a bias of half the gradient.
_DECAY = 0.5


@functools.cache
def _method(name, reg):
    reg = _REGS[reg]
    if name == "rloo2":
        return gf.RLOO(_OPT, 1, samples=2, regularization=reg)
    if name == "rloo4":
        return gf.RLOO(_OPT, 1, samples=4, regularization=reg)
    baseline = name.removeprefix("reinforce_")
    return gf.Reinforce(_OPT, 1, samples=1, baseline=baseline, baseline_decay=_DECAY,
                        regularization=reg)


_UNBIASED_CASES = [
    ("reinforce_none", "tabular", "none"),
    ("reinforce_mean", "tabular", "none"),
    ("reinforce_running", "tabular", "none"),
    ("rloo2", "tabular", "none"),
    ("rloo4", "loglinear", "none"),
    ("reinforce_none", "loglinear", "kl"),
    ("rloo4", "tabular", "kl"),
    ("reinforce_mean", "tabular", "kl_forward"),
    ("rloo2", "tabular", "entropy"),
    ("reinforce_running", "loglinear", "kl_uniform"),
    ("rloo4", "tabular", "normalize"),
]
_N_UNBIASED = 20_000
_RUNNING_B = {"tabular": (0.7, -0.4, 0.2), "loglinear": (0.7, -0.4)}  # a fixed baseline state


def _unbiased_case(method, params, state, key, problem):
    """`n` estimates, the exact gradient with and without the method's regulariser, and one
    estimate's new baseline state with the rewards of its draws."""
    samples = _estimates(method, params, state, key, problem, _N_UNBIASED)
    exact = _exact(params, problem, method.regularization)
    plain = _exact(params, problem, gf.Regularization())
    one_key = jax.random.fold_in(key, _N_UNBIASED)
    _, new_state, _ = method.estimate(params, state, one_key, problem)
    batch, _ = method.draw(params, one_key, problem)
    return samples, exact, plain, new_state, batch.rewards


@functools.cache
def _unbiased_results():
    """Every case in ONE compiled call (compiling them one by one costs about twice as
    much); each case then checks its own part. Returns `{case: (state, outputs)}`."""
    args = []
    for name, problem_name, reg_name in _UNBIASED_CASES:
        policy, reward, params = _PROBLEMS[problem_name]
        method = _method(name, reg_name)
        problem = Problem.make(policy, reward, reward, method.regularization)
        state = method.init(params, problem)
        if name == "reinforce_running":
            assert state[1].shape == (reward.shape[0], 1)
            np.testing.assert_array_equal(state[1], 0.0)  # the moving average starts at 0
            state = (state[0], jnp.asarray(_RUNNING_B[problem_name], jnp.float32)[:, None])
        args.append((method, params, state, jax.random.key(len(args)), problem))
    outs = eqx.filter_jit(lambda args: [_unbiased_case(*a) for a in args])(args)
    return {case: (a[2], out) for case, a, out in zip(_UNBIASED_CASES, args, outs, strict=True)}


@pytest.mark.parametrize("case", _UNBIASED_CASES, ids=["-".join(c) for c in _UNBIASED_CASES])
def test_unbiased_estimators_match_exact_gradient(case):
    state, (samples, exact, plain, new_state, rewards) = _unbiased_results()[case]
    name, _, reg_name = case
    assert samples.shape == (_N_UNBIASED, *exact.shape)
    se = _mc_check(samples, exact, name="/".join(case))
    # Power: the gradient is resolved (the band is much narrower than the gradient) and,
    # with a regulariser, so is the regulariser's share of it: an estimator that dropped
    # the term (or got its sign or scale wrong) would miss by more than twice the band.
    band = Z * np.max(se)
    assert band < 0.2 * np.max(np.abs(_f64(exact)))
    if reg_name != "none":
        assert np.max(np.abs(_f64(exact) - _f64(plain))) > 2 * band
    if name == "reinforce_running":
        # The returned state is the moving average *after* the draws, decay b +
        # (1 - decay) mean_i r'(y_i), with the draws of that estimate.
        expect = _DECAY * _f64(state[1]) + (1 - _DECAY) * _f64(rewards).mean(axis=1, keepdims=True)
        np.testing.assert_allclose(new_state, expect, rtol=1e-6, atol=1e-6)
    else:
        assert new_state is None


# ---------------------------------------------------------------------------------------
# 2. GRPO is biased; its mean is known.
# ---------------------------------------------------------------------------------------

_GRPO2 = gf.GRPO(_OPT, 1, samples=2)


def test_grpo_two_outputs_closed_form():
    # Two outputs a, b, group of k = 2, one prompt, tau = w = 1. Groups (a, a) and (b, b)
    # have zero centred rewards, hence zero advantage. A mixed group (probability
    # 2 p_a p_b) has centred rewards +-d/2 and sample std (ddof = 1) sqrt(2 (d/2)^2) =
    # d/sqrt2, so A_a = -A_b = sign(r_a - r_b) (d/2) / (d/sqrt2 + eps), and its estimate is
    # (1/2) [A_a (e_a - p) + A_b (e_b - p)] = (A_a/2) (e_a - e_b). Hence
    #   E[g] = p_a p_b A_a (e_a - e_b),   while the exact gradient is
    #   p_a p_b (r_a - r_b) (e_a - e_b):  equal only when d/2 / (d/sqrt2 + eps) = d.
    pa = 0.3
    ra, rb = 1.0, -1.0  # d = 2: GRPO's mean is ~ 1/(2 sqrt2) = 0.35 of the exact gradient
    policy = gf.TabularSoftmax.from_probs(jnp.asarray([pa, 1 - pa]))
    reward = jnp.asarray([[ra, rb]])
    problem = Problem.make(policy, reward, reward, _GRPO2.regularization)
    d = abs(ra - rb)
    adv = np.sign(ra - rb) * (d / 2) / (d / np.sqrt(2) + _GRPO2.eps)
    e = np.asarray([[1.0, -1.0]])
    closed = pa * (1 - pa) * adv * e
    exact = pa * (1 - pa) * (ra - rb) * e
    np.testing.assert_allclose(_exact(policy.params, problem, _REGS["none"]), exact, rtol=1e-6)

    samples = _estimates(_GRPO2, policy.params, _GRPO2.init(policy.params, problem),
                         jax.random.key(5), problem, 20_000)
    se = _mc_check(samples, closed, name="grpo k=2")
    # Each estimate is 0 or (A_a / 2)(e_a - e_b): check the support too.
    s = _f64(samples)[:, 0, 0]
    assert np.all(np.isclose(s, 0.0, atol=1e-7) | np.isclose(s, adv / 2, rtol=1e-6))
    # ... and the exact gradient is many standard errors away.
    assert np.min(np.abs(closed - exact)[0] / se[0]) > 20


_ENUM_P = (0.2, 0.3, 0.5)
_ENUM_R = (1.0, 0.3, -0.6)
_ENUM_TAU = 0.8
_GRPO3 = gf.GRPO(_OPT, 1, samples=3)
_GRPO3_CENTRED = gf.GRPO(_OPT, 1, samples=3, normalize_std=False)
_GRPO3_CENTRED_ENT = gf.GRPO(_OPT, 1, samples=3, normalize_std=False,
                             regularization=_REGS["entropy"])


def _enum_problem(method, dtype=jnp.float32):
    policy = gf.TabularSoftmax.from_probs(jnp.asarray(_ENUM_P, dtype), temperature=_ENUM_TAU)
    reward = jnp.asarray([_ENUM_R], dtype)
    return policy, Problem.make(policy, reward, reward, method.regularization)


@eqx.filter_jit
def _enumerated_mean(method, problem):
    """The exact expectation of `method`'s gradient estimate (`score_gradient`, parameter
    space) at the problem's policy: all K^k ordered groups, built as `Batch`es by hand,
    weighted by their probability."""
    policy = problem.policy
    (n_prompts, n_out), k = policy.shape, method.samples
    p = policy.probs()
    logp = policy.log_probs()
    # The shaped reward the batch would carry (here only the entropy term can shape it).
    r = problem.reward - method.regularization.entropy * logp
    groups = jnp.asarray(list(itertools.product(range(n_out), repeat=k)), jnp.int32)  # (K^k, k)
    # Every prompt draws the same group: its probability is the product over prompts and draws.
    weight = jnp.prod(p[:, groups], axis=(0, 2))  # (K^k,)

    def one(group):
        samples = jnp.broadcast_to(group, (n_prompts, k))
        batch = Batch(
            samples=samples,
            rewards=jnp.take_along_axis(r, samples, axis=-1),
            mean=jnp.sum(p * r, axis=-1, keepdims=True),
            logp=jnp.take_along_axis(logp, samples, axis=-1),
        )
        coef, _ = method.advantages(batch, None)
        return score_gradient(policy.params, problem, batch, coef)

    g = jax.vmap(one)(groups)
    return jnp.sum(weight[:, None, None] * g, axis=0), jnp.sum(weight)


def test_grpo_enumerated_mean_matches_monte_carlo():
    # K = 3 outputs, groups of k = 3: the 27 ordered groups, enumerated, give GRPO's exact
    # mean; the Monte Carlo mean of `estimate` must agree within Z standard errors, and
    # both must be far (many standard errors) from the exact gradient.
    policy, problem = _enum_problem(_GRPO3)
    mean, total = _enumerated_mean(_GRPO3, problem)
    np.testing.assert_allclose(total, 1.0, rtol=1e-6)
    # The same expectation from the definition, in NumPy (independent of `advantages`).
    p, r, k = np.asarray(_ENUM_P), np.asarray(_ENUM_R), _GRPO3.samples
    expect = np.zeros(3)
    for group in itertools.product(range(3), repeat=k):
        rs = r[list(group)]
        adv = (rs - rs.mean()) / (rs.std(ddof=1) + _GRPO3.eps)
        g = sum(a * (np.eye(3)[y] - p) for a, y in zip(adv, group, strict=True)) / k / _ENUM_TAU
        expect += np.prod(p[list(group)]) * g
    np.testing.assert_allclose(mean[0], expect, rtol=1e-5, atol=1e-7)
    samples = _estimates(_GRPO3, policy.params, _GRPO3.init(policy.params, problem),
                         jax.random.key(9), problem, 20_000)
    se = _mc_check(samples, mean, name="grpo enumeration")  # tabular: the pull-back is 1
    exact = _f64(_exact(policy.params, problem, _REGS["none"]))
    assert np.max(np.abs(_f64(mean) - exact) / se) > 20


@pytest.mark.parametrize("method", [_GRPO3_CENTRED, _GRPO3_CENTRED_ENT], ids=["plain", "entropy"])
def test_grpo_without_std_is_scaled_exact_gradient(dtype, method):
    # A_i = r_i - mean_j r_j: E[A_i (e_i - p)] = (1 - 1/k) Cov(r, e) since the other draws
    # are independent of y_i and E[e_i - p] = 0. Exact algebra: a tight tolerance.
    policy, problem = _enum_problem(method, dtype)
    mean, total = _enumerated_mean(method, problem)
    assert mean.dtype == dtype
    exact = _exact(policy.params, problem, method.regularization)
    k = method.samples
    t = tol(dtype, 2e-6, 1e-13)
    np.testing.assert_allclose(total, 1.0, rtol=t)
    np.testing.assert_allclose(mean, (1 - 1 / k) * exact, rtol=0, atol=t)
    assert np.max(np.abs(_f64(exact))) > 0.05


# ---------------------------------------------------------------------------------------
# 3. PPO-clip.
# ---------------------------------------------------------------------------------------

_STALL_P = (0.05, 0.5, 0.15, 0.15, 0.15)
_STALL_R = (1.0, 0.8, -1.0, -1.0, -1.0)
_STALL = gf.TabularSoftmax.from_probs(jnp.asarray(_STALL_P))

_PPO1 = gf.PPO(optax.sgd(0.3), 60, samples=3, epochs=1)
_REINFORCE_MEAN = gf.Reinforce(optax.sgd(0.3), 60, samples=3, baseline="mean")
_PPO_CLIP = gf.PPO(optax.sgd(0.5), 60, samples=4, epochs=4, clip=0.2)
_PPO_NOCLIP = gf.PPO(optax.sgd(0.5), 60, samples=4, epochs=4, clip=1e6)


@eqx.filter_jit  # two runs per compiled call: about half the cost of two compilations
def _two_runs(policy, reward, key, method_a, method_b):
    return tuple(gf.solve(policy, reward=reward, method=m, key=key) for m in (method_a, method_b))


def test_ppo_with_one_epoch_is_reinforce_with_mean_baseline():
    # One epoch: the ratio is exp(0) = 1, so no clip binds and the surrogate's gradient is
    # the mean-baseline REINFORCE estimate on the same draws (same key, same samples).
    a, b = _two_runs(_STALL, jnp.asarray(_STALL_R), jax.random.key(21), _PPO1, _REINFORCE_MEAN)
    np.testing.assert_allclose(a.params, b.params, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(a.true_reward, b.true_reward, rtol=1e-6, atol=1e-6)
    assert float(a.true_reward[-1] - a.true_reward[0]) > 0.1  # the run moved


_PPO_SURR = gf.PPO(_OPT, 1, samples=4, clip=0.2)


@eqx.filter_jit
def _surrogate_check(old, theta, batch, problem):
    """The library's surrogate gradient (as in `PPO.update`: the drawn outputs'
    log-probabilities by `policy.log_prob`, the coefficients, the pull-back of `w coef / k`
    by `jax.vjp`), the same through `score_gradient`, and `jax.grad` of the clipped
    surrogate written out independently."""
    eps = _PPO_SURR.clip
    adv, _ = _PPO_SURR.advantages(batch, None)
    k = batch.samples.shape[1]

    def logp_draws(th):
        logp = old.with_params(th).log_probs()
        return jnp.take_along_axis(logp, batch.samples, axis=-1)

    def surrogate(th):
        rho = jnp.exp(logp_draws(th) - batch.logp)
        per = jnp.minimum(rho * adv, jnp.clip(rho, 1 - eps, 1 + eps) * adv)
        return jnp.sum(old.weights * jnp.mean(per, axis=1))

    logp_new, pullback = jax.vjp(lambda th: old.with_params(th).log_prob(batch.samples), theta)
    coef = _PPO_SURR.surrogate_coef(batch, adv, logp_new)
    (grad,) = pullback(old.weights[:, None] * coef / k)
    via_score = score_gradient(theta, problem, batch, coef)
    rho = jnp.exp(logp_draws(theta) - batch.logp)
    return rho, adv, coef, grad, via_score, jax.grad(surrogate)(theta)


def test_ppo_surrogate_gradient_matches_autodiff():
    # A log-linear policy (6 features, 2 prompts x 3 outputs, weights and tau != 1) fitted
    # exactly to pi_old and pi_new, chosen so that the ratios pi_new / pi_old are
    # (1.65, 0.4, 1.1) on both prompts; the rewards make the advantages of the first two
    # outputs positive on prompt 0 and negative on prompt 1, so all four cases occur:
    # clipped (rho > 1+eps, A > 0), (rho < 1-eps, A < 0); unclipped (rho > 1+eps, A < 0),
    # (rho < 1-eps, A > 0); and rho inside the range. No ratio is near 1 +- eps.
    eps = _PPO_SURR.clip
    feats = jnp.asarray(np.random.default_rng(3).normal(size=(2, 3, 6)), jnp.float32)
    p_old = np.asarray([[0.2, 0.3, 0.5], [0.2, 0.3, 0.5]])
    p_new = np.asarray([[0.33, 0.12, 0.55], [0.33, 0.12, 0.55]])
    kw = dict(weights=jnp.asarray([0.6, 0.4]), temperature=0.7)
    old = gf.LogLinear.from_probs(feats, jnp.asarray(p_old, jnp.float32), **kw)
    new = gf.LogLinear.from_probs(feats, jnp.asarray(p_new, jnp.float32), **kw)
    reward = jnp.asarray([[1.0, -1.0, 0.2], [-1.0, 1.0, 0.3]], jnp.float32)
    problem = Problem.make(old, reward, reward, _PPO_SURR.regularization)
    # The batch drawn at pi_old: every output once, output 2 twice (k = 4).
    draws = np.asarray([0, 1, 2, 2])
    r, q, logq = _f64(reward), _f64(old.probs()), _f64(old.log_probs())

    def f32(x):
        return jnp.asarray(x, jnp.float32)

    batch = Batch(
        samples=jnp.asarray(np.broadcast_to(draws, (2, 4)), jnp.int32),
        rewards=f32(r[:, draws]),
        mean=f32(np.sum(q * r, axis=-1, keepdims=True)),
        logp=f32(logq[:, draws]),
    )
    rho, adv, coef, grad, via_score, expect = _surrogate_check(old, new.params, batch, problem)
    rho, a = _f64(rho), _f64(adv)
    np.testing.assert_allclose(rho, np.broadcast_to([1.65, 0.4, 1.1, 1.1], (2, 4)), rtol=1e-4)
    clipped = ((a > 0) & (rho > 1 + eps)) | ((a < 0) & (rho < 1 - eps))
    outside = (rho > 1 + eps) | (rho < 1 - eps)
    assert clipped.sum() == 2 and (outside & ~clipped).sum() == 2 and (~outside).sum() == 4
    assert np.min(np.abs(np.abs(rho - 1) - eps)) > 0.05  # no ties at the clip edges
    np.testing.assert_array_equal(_f64(coef)[clipped], 0.0)
    np.testing.assert_allclose(_f64(coef)[~clipped], (rho * a)[~clipped], rtol=1e-5)
    np.testing.assert_allclose(grad, expect, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(via_score, expect, rtol=1e-5, atol=1e-6)
    assert np.max(np.abs(_f64(expect))) > 0.05


def test_ppo_clip_matters_and_ppo_learns():
    clipped, free = _two_runs(_STALL, jnp.asarray(_STALL_R), jax.random.key(4), _PPO_CLIP,
                              _PPO_NOCLIP)
    assert bool(clipped.status == gf.Status.ok) and bool(free.status == gf.Status.ok)
    # Same draws at the first step; with 4 epochs per batch the ratios leave [0.8, 1.2] and
    # the clip changes the updates.
    assert np.max(np.abs(_f64(clipped.params) - _f64(free.params))) > 0.1
    # The clipped run climbs from V = 0 towards the good outputs (0.8 and above).
    assert abs(float(clipped.true_reward[0])) < 1e-6
    assert float(clipped.true_reward[-1]) > 0.6


# ---------------------------------------------------------------------------------------
# 4. The sampler.
# ---------------------------------------------------------------------------------------


@eqx.filter_jit  # one compilation per (dtype, outputs, n), not one per op
def _sample(policy, key, n):
    return policy.sample(key, n)


@pytest.mark.parametrize("n_out", [5, 20])  # 20 > UNROLL_MAX_OUTPUTS: the jnp.cumsum path
def test_sample_frequencies(dtype, n_out):
    # `TabularSoftmax.sample` is the default `AbstractPolicy.sample`: one uniform per draw
    # (in the policy's dtype) mapped to an output by `gradflow._engine.ops.inverse_cdf`.
    n = 100_000
    rng = np.random.default_rng(n_out)
    rows = rng.dirichlet(np.ones(n_out), size=2)
    rows[:, 0] = 1e-3  # a tiny probability
    rows[:, 1:] *= (1 - 1e-3) / rows[:, 1:].sum(axis=1, keepdims=True)
    probs = np.concatenate([rows, rows[:1]])  # prompt 2 repeats prompt 0 (independence)
    policy = gf.TabularSoftmax.from_probs(jnp.asarray(probs, dtype))
    assert policy.probs().dtype == dtype
    draws = _sample(policy, jax.random.key(n_out), n)
    assert draws.shape == (3, n) and jnp.issubdtype(draws.dtype, jnp.integer)
    d = np.asarray(draws)
    assert np.all((d >= 0) & (d < n_out))  # every draw is an output
    onehot = (d[..., None] == np.arange(n_out)).astype(np.float64)  # (3, n, n_out)
    # Frequencies: each is a mean of n Bernoulli(p) draws, se = sqrt(p (1 - p) / n).
    freq = onehot.mean(axis=1)
    se = np.sqrt(probs * (1 - probs) / n)
    np.testing.assert_array_less(np.abs(freq - probs), Z * se)
    assert np.all(onehot[:, :, 0].sum(axis=1) > 0)  # the 1e-3 output is drawn (~100 times)
    # Independence: prompts 0 and 2 have the same probabilities but their own uniforms,
    # and successive draws are independent: both agree with probability sum_y p_y^2 (a
    # shared uniform would make them agree always).
    q = float(np.sum(probs[0] ** 2))
    same_prompt = np.mean(d[0] == d[2])
    same_draw = np.mean(d[0, 1:] == d[0, :-1])
    se = np.sqrt(q * (1 - q) / n)
    assert abs(same_prompt - q) < Z * se  # n independent pairs
    # Successive pairs overlap (1-dependent indicators): their mean's variance is at most
    # 3 times the independent one, hence sqrt(3) se.
    assert abs(same_draw - q) < Z * np.sqrt(3) * se


# ---------------------------------------------------------------------------------------
# 5 and 6. Keys, and the seed-mean of REINFORCE against the exact run.
#
# REINFORCE (k = 1, no baseline) with sgd(lr) makes unbiased steps: its seed-mean follows
# the exact `GradientAscent(sgd(lr))` run up to second-order effects of the noise,
# O(lr^2) per step (noise lowers the mean: the seed-mean lags). At lr = 0.05 over 400
# steps that lag reached 2.5 standard errors of the 512-seed mean; at lr = 0.025 over 800
# steps (the same flow time, 20) the seen z-scores lie in [-1.3, 1.0]; the band is +- 4 se.
# ---------------------------------------------------------------------------------------

_LR, _STEPS, _EVERY, _SEEDS = 0.025, 800, 20, 512
_REINFORCE = gf.Reinforce(optax.sgd(_LR), _STEPS)
_SAVE = gf.SaveAt(every=_EVERY)
_KEYS = jax.random.split(jax.random.key(2024), _SEEDS)


def _solve_stall(policy, reward, key):
    return gf.solve(policy, reward=reward, method=_REINFORCE, saveat=_SAVE, key=key)


# The policy and reward are arguments, not closed-over constants: with constants XLA
# folds the step-0 diagnostics at compile time, which can differ from the run-time
# arithmetic in the last bit (seen: true_reward[0] = -2.98e-8 vs 5.96e-8).
@eqx.filter_jit
def _solve_pair(policy, reward, key_a, key_b):
    """Two single-key runs in one compiled call: a typed key and a legacy uint32[2] key."""
    return _solve_stall(policy, reward, key_a), _solve_stall(policy, reward, key_b)


@functools.cache
def _seed_runs():
    run = eqx.filter_jit(jax.vmap(_solve_stall, in_axes=(None, None, 0)))
    return jax.tree.map(np.asarray, run(_STALL, jnp.asarray(_STALL_R), _KEYS))


def _pair(key):
    """The run for `key`, given once as a typed key and once as its legacy raw data."""
    return _solve_pair(_STALL, jnp.asarray(_STALL_R), key, jax.random.key_data(key))


def _leaves_equal(a, b):
    la, ta = jax.tree.flatten(a)
    lb, tb = jax.tree.flatten(b)
    assert ta == tb
    return all(np.array_equal(np.asarray(x), np.asarray(y), equal_nan=True)
               for x, y in zip(la, lb, strict=True))


def test_same_key_same_run_other_key_other_run():
    a, legacy = _pair(jax.random.key(0))
    again, _ = _pair(jax.random.key(0))
    assert _leaves_equal(a, again)
    # A legacy uint32[2] key is accepted; `jax.random.PRNGKey(0)` holds the bits of
    # `jax.random.key(0)`, so it gives the same run.
    np.testing.assert_array_equal(jax.random.key_data(jax.random.key(0)), jax.random.PRNGKey(0))
    assert _leaves_equal(a, legacy)
    c, _ = _pair(jax.random.key(1))
    assert not np.array_equal(a.params, c.params)
    assert not np.array_equal(a.true_reward, c.true_reward)


def test_vmap_over_keys_equals_separate_runs():
    # Bitwise: the update is written with flat elementwise ops (sums over outputs
    # unrolled), so batching does not reorder any floating-point reduction.
    batched = _seed_runs()
    for i in range(8):
        one, _ = _pair(_KEYS[i])
        assert _leaves_equal(one, jax.tree.map(lambda x, i=i: x[i], batched)), i
    assert len({float(batched.true_reward[i, -1]) for i in range(8)}) == 8  # seeds differ


def test_reinforce_seed_mean_follows_exact_run():
    runs = _seed_runs()
    assert np.all(runs.status == gf.Status.ok)
    tr = _f64(runs.true_reward)  # (seeds, saves)
    mean = tr.mean(axis=0)
    half = 4 * tr.std(axis=0, ddof=1) / np.sqrt(_SEEDS)
    exact = sgd(_STALL, _STALL_R, lr=_LR, steps=_STEPS, every=_EVERY)
    ex = _f64(exact.true_reward)
    np.testing.assert_array_equal(exact.steps, runs.steps[0])
    # Step 0 is the same policy for every seed (se = 0): float32 rounding only.
    np.testing.assert_array_less(np.abs(mean - ex), half + 1e-6)
    # The band is narrow: its half-width is < 2% of the change of the true reward.
    change = ex[-1] - ex[0]
    assert change > 0.5
    assert np.max(half) < 0.02 * change
    # ... narrow enough to reject the exact run at a 10% larger learning rate (what an
    # estimator 10% too large would follow).
    off = _f64(sgd(_STALL, _STALL_R, lr=1.1 * _LR, steps=_STEPS, every=_EVERY).true_reward)
    assert np.any(np.abs(mean - off) > half)


# ---------------------------------------------------------------------------------------
# 7. Bad input.
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "build, name",
    [
        (lambda: gf.Reinforce(_OPT, 5, samples=0), "`samples`"),
        (lambda: gf.Reinforce(_OPT, 5, samples=-2), "`samples`"),
        (lambda: gf.RLOO(_OPT, 5, samples=0), "`samples`"),
        (lambda: gf.RLOO(_OPT, 5, samples=-1), "`samples`"),
        (lambda: gf.RLOO(_OPT, 5, samples=1), "`samples`"),
        (lambda: gf.GRPO(_OPT, 5, samples=0), "`samples`"),
        (lambda: gf.GRPO(_OPT, 5, samples=1), "`samples`"),
        (lambda: gf.PPO(_OPT, 5, samples=0), "`samples`"),
        (lambda: gf.PPO(_OPT, 5, samples=-3), "`samples`"),
        (lambda: gf.PPO(_OPT, 5, clip=0.0), "`clip`"),
        (lambda: gf.PPO(_OPT, 5, clip=-0.2), "`clip`"),
        (lambda: gf.PPO(_OPT, 5, epochs=0), "`epochs`"),
        (lambda: gf.Reinforce(_OPT, 0), "`steps`"),
        (lambda: gf.Reinforce(_OPT, 5, baseline_decay=1.0), "`baseline_decay`"),
        (lambda: gf.GRPO(_OPT, 5, eps=0.0), "`eps`"),
    ],
)
def test_bad_method_arguments(build, name):
    with pytest.raises(ValueError, match=name):
        build()


def test_unknown_baseline():
    # `baseline` is annotated with a Literal: under this suite's runtime type checking the
    # annotation check fires first (TypeError); without it the library's ValueError does.
    with pytest.raises((ValueError, TypeError), match="baseline"):
        gf.Reinforce(_OPT, 5, baseline="median")


_RLOO_SMALL = gf.RLOO(_OPT, 3, samples=2)


def _small(**kw):
    return gf.solve(gf.TabularSoftmax.from_probs(jnp.asarray([0.2, 0.8])), reward=[1.0, 0.0], **kw)


def test_bad_keys():
    with pytest.raises(ValueError, match="`key` is required"):
        _small(method=_RLOO_SMALL)
    with pytest.raises(ValueError, match="`key`"):
        _small(method=gf.GradientAscent(_OPT, 3), key=jax.random.key(0))
    # Not one key: the annotation check (TypeError) or the library (ValueError) names it.
    for bad in (3, jnp.zeros(2), jax.random.split(jax.random.key(0), 4)):
        with pytest.raises((ValueError, TypeError), match="key"):
            _small(method=_RLOO_SMALL, key=bad)
    # The library's own check, behind the annotation.
    for bad in (3, jnp.zeros(2), jnp.zeros(3, jnp.uint32), jax.random.split(jax.random.key(0), 4)):
        with pytest.raises(ValueError, match="`key` must be one JAX PRNG key"):
            _as_key(bad, _RLOO_SMALL)
    assert _as_key(jax.random.PRNGKey(0), _RLOO_SMALL).shape == (2,)


# ---------------------------------------------------------------------------------------
# 8. A long regularised run reaches the KL-regularised optimum.
#
# With a reverse KL to the uniform reference the optimum is pi* ∝ exp(r / beta). There the
# shaped reward r - beta (log pi* - log u) = beta log Z + const is the same for every
# output, so RLOO's advantages, and its estimate, are exactly 0: the noise vanishes at the
# optimum and SGD converges to it (not to a noisy neighbourhood), up to float32 rounding.
# ---------------------------------------------------------------------------------------

_BETA = 0.5
_KL_R = (1.0, 0.5, 0.0)
_RLOO_KL = gf.RLOO(optax.sgd(0.2), 1000, samples=4,
                   regularization=gf.Regularization(kl=_BETA, kl_reference="uniform"))


def test_rloo_with_kl_converges_to_regularised_optimum():
    policy = gf.TabularSoftmax.from_probs(jnp.asarray([0.1, 0.3, 0.6]))
    save = gf.SaveAt(every=100, probs=True)
    run = eqx.filter_jit(jax.vmap(lambda k: gf.solve(
        policy, reward=jnp.asarray(_KL_R), method=_RLOO_KL, saveat=save, key=k)))
    sols = run(jax.random.split(jax.random.key(8), 8))
    p_star = np.exp(np.asarray(_KL_R) / _BETA)
    p_star /= p_star.sum()
    p = _f64(sols.probs[:, :, 0])  # (seeds, saves, outputs)
    assert np.max(np.abs(p[:, 0] - p_star)) > 0.3  # it starts far away
    assert np.max(p[:, 1].std(axis=0)) > 1e-3  # the seeds are noisy on the way (step 100)
    # By step ~700 every seed is within 1e-5 (at step 1000 within ~1e-6).
    np.testing.assert_allclose(p[:, -1], np.broadcast_to(p_star, p[:, -1].shape), atol=1e-5)
