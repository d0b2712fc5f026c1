"""The policy interface beyond the flat softmax: `gf.Autoregressive` (per-prefix table and
shared features), `gf.NeuralPolicy`, and the engine's use of the interface only."""

from __future__ import annotations

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.stats
from helpers import JSOLVE, flow_method, sgd, tol

import gradflow as gf
from gradflow._engine.objective import Problem, gradient, objective

V, L = 3, 3  # 27 sequences


def _seq_probs(seed, n=V**L, prompts=None):
    rng = np.random.default_rng(seed)
    shape = (n,) if prompts is None else (prompts, n)
    return rng.dirichlet(np.ones(n), size=None if prompts is None else prompts).reshape(shape)


@functools.cache
def _policies(dtype, prompts=2):
    """One policy per parameterisation, random parameters, 2 prompts, tau != 1 (built once
    per dtype)."""
    key = jax.random.key(0)
    k1, k2, k3, k4 = jax.random.split(key, 4)
    w = jnp.asarray([0.3, 0.7], dtype)
    prefix = gf.Autoregressive.from_sequence_probs(jnp.asarray(_seq_probs(1, prompts=prompts), dtype),
                                                   vocab=V, length=L, weights=w, temperature=0.8)
    bigram = gf.Autoregressive.shared(V, L, "bigram", jax.random.normal(k1, ((V + 1) * V,), dtype),
                                      prompts=prompts, weights=w, temperature=1.3)
    feats = jax.random.normal(k2, (prompts, V**L, 4), dtype)
    mlp = eqx.nn.MLP(4, "scalar", 8, 2, activation=jnp.tanh, key=k3, dtype=dtype)
    neural = gf.NeuralPolicy(mlp, feats, weights=w, temperature=0.9)
    own = gf.Autoregressive(gf.TokenFeatures(jax.random.normal(k4, (prompts, V, (V**L - 1) // (V - 1), 5), dtype),
                                             jnp.ones(5, dtype)), V, L, weights=w)
    return {"prefix": prefix, "bigram": bigram, "neural": neural, "features": own}


@eqx.filter_jit  # one compilation per policy structure instead of dozens of eager ops
def _probs(policies):
    return {name: (p.probs(), p.log_probs()) for name, p in policies.items()}


@eqx.filter_jit
def _gradients(policies, reward, reg):
    """For every policy: the closed-form gradient and `jax.grad` of the objective, with the
    KL reference at half the parameters (so that the KL terms do not vanish)."""
    out = {}
    for name, policy in policies.items():
        start = policy.with_params(jax.tree.map(lambda x: 0.5 * x, policy.params))
        problem = Problem(policy, reward, reward, reg.reference(start), reg)
        out[name] = (gradient(policy.params, problem)[0],
                     jax.grad(objective, has_aux=True)(policy.params, problem)[0])
    return out


def test_sequences_lexicographic_and_probs_normalised(dtype):
    seqs = np.asarray(gf.Autoregressive.uniform(V, L).sequences())
    assert seqs.shape == (V**L, L) and seqs.dtype == np.int32
    # Output i spells i in base V, most significant token first.
    np.testing.assert_array_equal(seqs @ V ** np.arange(L - 1, -1, -1), np.arange(V**L))
    for name, (p, logp) in _probs(_policies(dtype)).items():
        assert p.shape == (2, V**L) and p.dtype == dtype, name
        np.testing.assert_allclose(p.sum(-1), 1.0, rtol=tol(dtype, 1e-5, 1e-13))
        np.testing.assert_allclose(jnp.exp(logp), p, rtol=tol(dtype, 1e-5, 1e-12))
    np.testing.assert_allclose(gf.Autoregressive.uniform(V, L).probs(), V**-L, rtol=1e-6)


def test_probs_are_products_of_token_softmaxes():
    # Independent oracle: pi(y) = prod_l softmax(table[node(y_<l)] / tau)[y_l], in NumPy.
    policy = _policies(jnp.float32)["bigram"]
    table = gf.Autoregressive.builtin_features("bigram", V, L) @ np.asarray(policy.head.theta)
    table = table / float(policy.temperature)  # (nodes, V), lexicographic nodes
    np.testing.assert_allclose(policy.node_scores()[0], table * float(policy.temperature), rtol=1e-5, atol=1e-6)
    offsets = [(V**lvl - 1) // (V - 1) for lvl in range(L)]
    expect = []
    for seq in np.asarray(policy.sequences()):
        logp, prefix = 0.0, 0
        for lvl, tok in enumerate(seq):
            row = table[offsets[lvl] + prefix]
            logp += row[tok] - np.log(np.exp(row).sum())
            prefix = prefix * V + tok
        expect.append(logp)
    np.testing.assert_allclose(policy.log_probs()[0], expect, rtol=1e-5, atol=1e-6)


def test_from_sequence_probs_reproduces_its_input(dtype):
    probs = _seq_probs(2, prompts=3)
    policy = gf.Autoregressive.from_sequence_probs(jnp.asarray(probs, dtype), vocab=V, length=L)
    np.testing.assert_allclose(policy.probs(), probs, rtol=tol(dtype, 2e-5, 1e-12), atol=1e-12)
    one = gf.Autoregressive.from_sequence_probs(jnp.asarray(probs[0], dtype), vocab=V, length=L,
                                                temperature=2.0)
    np.testing.assert_allclose(one.probs()[0], probs[0], rtol=tol(dtype, 2e-5, 1e-12))


def test_token_table_round_trip_and_layout():
    # from_nodes takes the lexicographic node table; node_scores gives it back; the
    # internal layout is token-major with digit-reversed nodes inside each level.
    table = np.random.default_rng(4).normal(size=((V**L - 1) // (V - 1), V))
    policy = gf.Autoregressive(gf.TokenTable.from_nodes(table), V, L)
    np.testing.assert_allclose(policy.node_scores()[0], table, rtol=1e-6)
    internal = np.asarray(policy.head.table[0])  # (V, nodes)
    # Level 2 prefix (y_1, y_2) = (1, 2): lexicographic node 1 + V + (1 V + 2), internal
    # node 1 + V + (1 + 2 V).
    np.testing.assert_allclose(internal[:, 1 + V + 1 + 2 * V], table[1 + V + V + 2], rtol=1e-6)


def test_bigram_features_make_the_score_depend_on_the_previous_token_only():
    feats = gf.Autoregressive.builtin_features("bigram", V, L)
    theta = np.random.default_rng(0).normal(size=feats.shape[-1])
    s = feats @ theta  # (nodes, V)
    # Level 1 nodes 0..V-1 and level 2 nodes: prefix p -> previous token p % V.
    level2 = s[1 + V:]
    for prefix in range(V**2):
        np.testing.assert_allclose(level2[prefix], s[1 + prefix % V])
    pos = gf.Autoregressive.builtin_features("position", V, L)
    assert pos.shape == ((V**L - 1) // (V - 1), V, L * V)


@pytest.mark.parametrize(
    "reg",
    [
        gf.Regularization(),
        gf.Regularization(entropy=0.3),
        gf.Regularization(kl=0.7, kl_direction="reverse", kl_reference="initial"),
        gf.Regularization(kl=0.7, kl_direction="forward", kl_reference="uniform"),
        gf.Regularization(kl=0.2, entropy=0.1, normalize=True),
    ],
    ids=["none", "entropy", "reverse-kl", "forward-kl", "all"],
)
def test_pulled_back_gradient_equals_autodiff_of_objective(dtype, reg):
    """The closed-form log-probability cotangent pulled back by `linearize` == jax.grad of
    J, for every parameterisation (and the default vjp == the score-policy override)."""
    rng = np.random.default_rng(5)
    reward = jnp.asarray(rng.normal(size=(2, V**L)), dtype)
    rtol = tol(dtype, 2e-4, 1e-10)
    for name, (closed, auto) in _gradients(_policies(dtype), reward, reg).items():
        for a, b in zip(jax.tree.leaves(closed), jax.tree.leaves(auto), strict=True):
            assert a.dtype == dtype
            scale = max(float(jnp.max(jnp.abs(b))), 1e-3)
            np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * scale, err_msg=name)


def test_score_policy_fast_path_equals_default_vjp(dtype):
    rng = np.random.default_rng(6)
    policy = gf.LogLinear(jnp.asarray(rng.normal(size=(2, 7, 3)), dtype), jnp.asarray(rng.normal(size=3), dtype),
                          temperature=0.6)
    c = jnp.asarray(rng.normal(size=(2, 7)), dtype)
    c = c - policy.probs() * c.sum(-1, keepdims=True)  # centred, as the engine's cotangents
    fast = policy.linearize().pullback(c)
    default = gf.AbstractPolicy.linearize(policy).pullback(c)
    np.testing.assert_allclose(fast, default, rtol=tol(dtype, 1e-5, 1e-12), atol=tol(dtype, 1e-6, 1e-14))


def test_length_one_is_the_tabular_softmax():
    dtype = jnp.float32
    p0 = jnp.asarray([0.05, 0.5, 0.15, 0.15, 0.15], dtype)
    r = jnp.asarray([1.0, 0.8, -1.0, -1.0, -1.0], dtype)
    flat = gf.TabularSoftmax.from_probs(p0)
    seq = gf.Autoregressive.from_sequence_probs(p0, vocab=5, length=1)
    t = tol(dtype, 2e-5, 1e-11)
    a = JSOLVE(flat, reward=r, method=flow_method(dtype), t1=jnp.asarray(50.0, dtype), saveat=gf.SaveAt(n=11))
    b = JSOLVE(seq, reward=r, method=flow_method(dtype), t1=jnp.asarray(50.0, dtype), saveat=gf.SaveAt(n=11))
    np.testing.assert_allclose(a.true_reward, b.true_reward, rtol=t, atol=t)
    a, b = sgd(flat, r, lr=0.5, steps=200, every=20), sgd(seq, r, lr=0.5, steps=200, every=20)
    np.testing.assert_allclose(a.probs, b.probs, rtol=t, atol=t)


def test_flow_on_true_reward_never_decreases_it():
    dtype = jnp.float32  # float64 is covered by the closed-form and gradient tests
    rng = np.random.default_rng(7)
    reward = jnp.asarray(rng.normal(size=(2, V**L)), dtype)
    for name, policy in _policies(dtype).items():
        if name == "features":
            continue  # the same head as "bigram"; it would only add a compilation
        sol = JSOLVE(policy, reward=reward, method=flow_method(dtype), t1=jnp.asarray(20.0, dtype),
                     saveat=gf.SaveAt(n=41))
        assert sol.status == gf.Status.ok, name
        v = np.asarray(sol.true_reward, np.float64)
        assert np.all(np.diff(v) >= -tol(dtype, 1e-6, 1e-12)), name
        assert v[-1] - v[0] > 0.05, name  # it moved


def test_token_by_token_sampling_matches_pi():
    # Chi-square goodness of fit of 50,000 token-by-token draws against pi over the 27
    # sequences (df = 26), at level 1e-3. Power: against the same policy with one token's
    # conditional at the root moved by 0.02 (e.g. 0.30 -> 0.32), the noncentral
    # chi-square gives power > 0.99 (computed below), so a sampler wrong by that much fails.
    policy = _policies(jnp.float32)["prefix"]
    n = 50_000
    draws = np.asarray(eqx.filter_jit(lambda pol, key: pol.sample(key, n))(policy, jax.random.key(3)))
    assert draws.shape == (2, n) and draws.min() >= 0 and draws.max() < V**L
    p = np.asarray(policy.probs(), np.float64)
    crit = scipy.stats.chi2.ppf(1 - 1e-3, V**L - 1)
    for x in range(2):
        counts = np.bincount(draws[x], minlength=V**L)
        stat = np.sum((counts - n * p[x]) ** 2 / (n * p[x]))
        assert stat < crit, (x, stat, crit)
        first = np.asarray(policy.sequences())[:, 0]
        q = p[x].copy()
        q[first == 0] *= (p[x][first == 0].sum() + 0.02) / p[x][first == 0].sum()
        q[first == 1] *= (p[x][first == 1].sum() - 0.02) / p[x][first == 1].sum()
        lam = n * np.sum((q - p[x]) ** 2 / p[x])
        assert scipy.stats.ncx2.sf(crit, V**L - 1, lam) > 0.99
    # log_prob (token by token) == the enumerated log-probabilities at the draws.
    lp = np.asarray(policy.log_prob(jnp.asarray(draws[:, :200])))
    np.testing.assert_allclose(lp, np.take_along_axis(np.asarray(policy.log_probs()), draws[:, :200], -1),
                               rtol=1e-5, atol=1e-6)


_LR, _STEPS, _EVERY, _SEEDS = 0.1, 300, 20, 512
_TOKEN_REINFORCE = gf.Reinforce(optax.sgd(_LR), _STEPS, samples=2, baseline="mean")


@eqx.filter_jit
def _token_seeds(policy, reward, keys):
    return jax.vmap(lambda k: gf.solve(policy, reward=reward, method=_TOKEN_REINFORCE, key=k,
                                       saveat=gf.SaveAt(every=_EVERY)))(keys)


def test_reinforce_seed_mean_tracks_exact_run_on_tokens():
    policy = gf.Autoregressive.shared(2, 3, "bigram", jnp.zeros(6))
    reward = gf.sequence_reward(lambda s: jnp.where(jnp.all(s == 1), 1.0, 0.3 * s[0]), vocab=2, length=3)
    runs = _token_seeds(policy, reward, jax.random.split(jax.random.key(1), _SEEDS))
    assert np.all(runs.status == gf.Status.ok)
    tr = np.asarray(runs.true_reward, np.float64)
    mean, half = tr.mean(0), 4 * tr.std(0, ddof=1) / np.sqrt(_SEEDS)
    exact = np.asarray(sgd(policy, reward, lr=_LR, steps=_STEPS, every=_EVERY).true_reward, np.float64)
    np.testing.assert_array_less(np.abs(mean - exact), half + 1e-6)
    assert exact[-1] - exact[0] > 0.3 and np.max(half) < 0.05 * (exact[-1] - exact[0])
    off = np.asarray(sgd(policy, reward, lr=1.2 * _LR, steps=_STEPS, every=_EVERY).true_reward, np.float64)
    assert np.any(np.abs(mean - off) > half)  # the band rejects a 20% different step size


def test_vmap_over_64_rewards_equals_separate_solves():
    policy = _policies(jnp.float32)["prefix"]
    rewards = jnp.asarray(np.random.default_rng(8).normal(size=(64, 2, V**L)), jnp.float32)
    method = gf.GradientAscent(optax.sgd(0.3), 50)

    @jax.jit
    def one(r):
        return gf.solve(policy, reward=r, method=method, saveat=gf.SaveAt(every=10), targets=(0.5,))

    batched = jax.jit(jax.vmap(one))(rewards)
    for i in range(0, 64, 9):
        single = one(rewards[i])
        np.testing.assert_array_equal(batched.true_reward[i], single.true_reward)
        np.testing.assert_array_equal(batched.params[i], single.params)
        np.testing.assert_array_equal(batched.target_times[i], single.target_times)


def test_two_to_the_sixteen_sequences_run_exactly():
    policy = gf.Autoregressive.uniform(2, 16)
    assert policy.shape == (1, 2**16)
    reward = gf.sequence_reward(lambda s: jnp.mean(s.astype(jnp.float32)), vocab=2, length=16)
    sol = gf.solve(policy, reward=reward, method=gf.GradientAscent(optax.sgd(1.0), 5), saveat=gf.SaveAt(every=5))
    # Each token is 1 with probability q: E[reward] = q; the uniform start has q = 1/2,
    # and each step raises every token's logit (the per-token gradient is q(1-q)/L times
    # the prefix probability summed over prefixes: q rises on every step).
    assert float(sol.true_reward[0]) == pytest.approx(0.5, abs=1e-6)
    assert float(sol.true_reward[-1]) > 0.5


def test_per_token_rewards_sum_to_the_sequence_reward():
    r = gf.sequence_reward(lambda s: jnp.where(s == 1, 1.0, -0.5), vocab=2, length=3, per_token=True)
    np.testing.assert_allclose(r, [-1.5, 0.0, 0.0, 1.5, 0.0, 1.5, 1.5, 3.0])


def test_downstream_tools_take_token_policies():
    policy = gf.Autoregressive.from_sequence_probs(jnp.asarray(_seq_probs(9)), vocab=V, length=L)
    true = gf.sequence_reward(lambda s: jnp.where(jnp.all(s == 0), 1.0, jnp.where(s[0] == 0, 0.5, -1.0)),
                              vocab=V, length=L)
    proxies = jnp.stack([true, true.at[1].set(-1.0), true + 0.0 * true])
    cat = gf.categorize(policy, true, proxies, method=gf.GradientFlow(), t1=200.0, target=0.9)
    assert cat.label[0] == "benign" and cat.label[2] == "benign"  # the truth itself
    assert cat.attracts.shape == (3, 1, V**L)
    sens = gf.sensitivity(policy, true, method=gf.GradientAscent(optax.sgd(0.5), 20))
    assert sens.shape == (1, V**L) and np.all(np.isfinite(sens))
    # d V_G(T)/d r_G(y*) > 0: raising the best sequence's reward helps.
    assert float(sens[0, 0]) > 0


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="`vocab`"):
        gf.Autoregressive.uniform(1, 3)
    with pytest.raises(ValueError, match="`length`"):
        gf.Autoregressive.uniform(3, 0)
    with pytest.raises(ValueError, match="exceeds the limit"):
        gf.Autoregressive.uniform(4, 11)  # 4^11 > 2^20
    with pytest.raises(ValueError, match="`probs`"):
        gf.Autoregressive.from_sequence_probs(jnp.full(26, 1 / 26), vocab=3, length=3)
    with pytest.raises(ValueError, match="`probs`"):
        gf.Autoregressive.from_sequence_probs(jnp.full(27, 0.5), vocab=3, length=3)
    with pytest.raises(ValueError, match="`features`"):
        gf.Autoregressive.shared(3, 3, "trigram")
    with pytest.raises(ValueError, match="`head`"):
        gf.Autoregressive(gf.TokenTable(jnp.zeros((5, 3))), 3, 3)
    mlp = eqx.nn.MLP(4, "scalar", 8, 1, key=jax.random.key(0))
    with pytest.raises(ValueError, match="`features`"):
        gf.NeuralPolicy(mlp, jnp.zeros(4))
    with pytest.raises(ValueError, match="`model`"):
        gf.NeuralPolicy(mlp, jnp.zeros((5, 3)))  # wrong feature dimension for the model
    with pytest.raises(ValueError, match="`model`.*scalar"):
        gf.NeuralPolicy(eqx.nn.MLP(4, 2, 8, 1, key=jax.random.key(0)), jnp.zeros((5, 4)))
