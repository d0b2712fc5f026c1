"""`gf.design_proxy`: gradients through training against finite differences, the closed-form
optimum of a two-output problem, constraints that hold exactly, and the stalling problem.

Compilation dominates: each test reuses a few static configurations (the two-output flow
design, the discrete design on the stalling problem), and what varies is data."""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.optimize
from figcheck import problems as figure_problems, redraw_differences
from helpers import check_recorded_tables, check_summary, printed

import gradflow as gf
from gradflow._analysis.proxy_design import _Geometry, _isotonic

PROJECT = eqx.filter_jit(lambda geometry, u: geometry.project(u))
FEASIBLE = eqx.filter_jit(lambda geometry, u: geometry.feasible(u))
ISOTONIC = jax.jit(_isotonic)

STALL_TRUE = jnp.array([1.0, 0.8, -1.0, -1.0, -1.0])
SGD = gf.GradientAscent(optax.sgd(0.1), steps=1500)  # the truth reaches 0.9 from p(y*) = 0.3


def stalling_policy(p_best=0.10, p_med=0.5):
    rest = (1 - p_best - p_med) / 3
    return gf.TabularSoftmax.from_probs(jnp.array([p_best, p_med, rest, rest, rest]))


# --------------------------------------------------------------------------- gradients


def _time_flow(policy, g, r, target, t1):
    sol = gf.solve(policy, reward=r, true_reward=g, method=FLOW64, t1=t1, targets=(target,), saveat=gf.SaveAt(n=2))
    return float(sol.target_times[0])


def _time_sgd(policy, g, r, target):
    """The crossing between two updates, interpolated linearly (NumPy, from the records)."""
    v = np.asarray(gf.solve(policy, reward=r, true_reward=g, method=SGD_SHORT).true_reward)
    n = int(np.argmax(v >= target))
    return n - 1 + (target - v[n - 1]) / (v[n] - v[n - 1])


def _final(policy, g, r, method, t1):
    return float(gf.solve(policy, reward=r, true_reward=g, method=method, t1=t1).final_true_reward)


def _area(policy, g, r, method, t1):
    sol = gf.solve(policy, reward=r, true_reward=g, method=method, t1=t1,
                   saveat=gf.SaveAt(n=1001) if t1 is not None else None)
    v, t = np.asarray(sol.true_reward), np.asarray(sol.time)
    return float(np.sum(np.diff(t) * (v[1:] + v[:-1]) / 2) / float(sol.horizon))


FLOW64 = gf.GradientFlow(rtol=1e-10, atol=1e-12)
SGD_SHORT = gf.GradientAscent(optax.sgd(0.5), steps=300)


@pytest.mark.parametrize(
    "objective, flow", [("area", True), ("time", False), ("final", False), ("area", False)],
    ids=["flow-area", "sgd-time", "sgd-final", "sgd-area"],
)
def test_gradients_match_finite_differences(objective, flow):
    """d objective / d r by reverse mode through the run against central differences of
    independent solves. (The flow's time and final objectives are `gf.sensitivity`,
    checked the same way in test_sensitivity.py.)"""
    with jax.enable_x64(True):
        policy = gf.TabularSoftmax.from_probs(jnp.array([0.2, 0.5, 0.3]))
        g = jnp.array([1.0, 0.6, -0.5])
        r = jnp.array([1.1, 0.3, -0.4])
        method, t1 = (FLOW64, 40.0) if flow else (SGD_SHORT, None)
        target = 0.8 if objective == "time" else None
        grad = jax.grad(lambda rr: gf.proxy_objective(policy, g, rr, method=method, objective=objective,
                                                      target=target, t1=t1))(r)

        def independent(rr):
            if objective == "time":
                return _time_flow(policy, g, rr, target, t1) if flow else _time_sgd(policy, g, rr, target)
            return (_final if objective == "final" else _area)(policy, g, rr, method, t1)

        h = 1e-5
        fd = np.array([(independent(r.at[i].add(h)) - independent(r.at[i].add(-h))) / (2 * h) for i in range(3)])
        assert np.all(np.isfinite(fd)) and np.max(np.abs(fd)) > 0
        np.testing.assert_allclose(np.asarray(grad), fd, rtol=1e-4, atol=1e-6 * np.max(np.abs(fd)))


# --------------------------------------------------------------------------- the two-output optimum


TWO_TRUE = jnp.array([1.0, 0.0])
TWO_POLICY = gf.TabularSoftmax.from_probs(jnp.array([0.3, 0.7]))
TWO_SGD = gf.GradientAscent(optax.sgd(0.5), steps=300)  # exact ascent (the flow designs in the study test)


@functools.cache
def two_output_batch():
    """Four designs in one compiled call (vmap over budgets and starting keys): budgets
    0.1, 0.3, 0.3, 0.3 from random feasible starts, keys 0, 3, 3, 4."""
    budgets = jnp.array([0.1, 0.3, 0.3, 0.3])
    keys = jnp.stack([jax.random.key(k) for k in (0, 3, 3, 4)])
    return jax.vmap(lambda b, k: gf.design_proxy(TWO_POLICY, TWO_TRUE, method=TWO_SGD, target=0.9, budget=b,
                                                 key=k))(budgets, keys), budgets


def test_two_outputs_fastest_proxy_is_the_budget_corner():
    """With an L-inf budget `eps`, the fastest proxy for two outputs is `r* + eps` for the
    best output and `r - eps` for the other (a larger gap is a faster ascent)."""
    batch, eps = two_output_batch()
    want = jnp.stack([TWO_TRUE[0] + eps, TWO_TRUE[1] - eps], axis=1)
    np.testing.assert_allclose(np.asarray(batch.reward), np.asarray(want), atol=1e-4)
    assert np.all(np.asarray(batch.time) < np.asarray(batch.reference_time))
    assert np.all(np.asarray(batch.accuracy) == 1.0)
    assert (batch.labels == "beneficial").all()
    # The returned proxy is the best iterate: its (interpolated) crossing is the history's
    # minimum, and the reported step is the first update at or past the target.
    np.testing.assert_array_equal(np.ceil(np.asarray(batch.history.min(axis=1))), np.asarray(batch.time))


def test_same_key_same_bits_and_random_starts_agree():
    batch, _ = two_output_batch()
    for leaf in jax.tree.leaves(batch):
        np.testing.assert_array_equal(np.asarray(leaf[1]), np.asarray(leaf[2]))  # key 3 twice
    assert not np.array_equal(np.asarray(batch.history[2]), np.asarray(batch.history[3]))  # a different start
    np.testing.assert_allclose(np.asarray(batch.reward[3]), np.asarray(batch.reward[2]), atol=1e-4)  # same optimum


def test_forward_and_reverse_mode_designs_agree():
    """`autodiff="forward"` (jacfwd through the run) and `"reverse"` (grad) are two
    independent ways to the same design gradient: the whole optimisation agrees."""
    with jax.enable_x64(True):
        g = jnp.array([1.0, 0.6, -0.5])
        policy = gf.TabularSoftmax.from_probs(jnp.array([0.2, 0.5, 0.3]))
        designs = [gf.design_proxy(policy, g, method=SGD_SHORT, target=0.8, budget=0.3, steps=20, autodiff=mode)
                   for mode in ("forward", "reverse")]
        np.testing.assert_allclose(np.asarray(designs[0].history), np.asarray(designs[1].history), rtol=1e-10)
        np.testing.assert_allclose(np.asarray(designs[0].reward), np.asarray(designs[1].reward), rtol=1e-10)
        assert float(designs[0].time) < float(designs[0].reference_time)


# --------------------------------------------------------------------------- constraints


def _geometry(truth, *, budget, norm, order, free=None, counts=None, margin=0.01):
    truth = jnp.atleast_2d(jnp.asarray(truth))
    counts = jnp.ones(truth.shape[-1]) if counts is None else jnp.asarray(counts, float)
    free = jnp.ones(truth.shape, bool) if free is None else jnp.atleast_2d(jnp.asarray(free))
    return _Geometry(truth, counts, jnp.arange(truth.shape[-1]), free, jnp.asarray(budget), jnp.asarray(margin),
                     norm, jnp.asarray(order), 200)


def test_isotonic_projection_matches_a_quadratic_program():
    """The weighted isotonic regression with ties and a margin against SLSQP on the same
    quadratic program."""
    rng = np.random.default_rng(0)
    for _ in range(5):
        block = rng.integers(0, 3, 6).astype(float)
        x, w, m = rng.normal(size=6), rng.uniform(0.5, 3.0, 6), 0.1
        got = np.asarray(ISOTONIC(jnp.asarray(x), jnp.asarray(w), jnp.asarray(block), m))
        cons = [{"type": "ineq", "fun": lambda z, i=i, j=j: z[i] - z[j] - m}
                for i in range(6) for j in range(6) if block[i] > block[j]]
        ref = scipy.optimize.minimize(lambda z: np.sum(w * (z - x) ** 2), x, constraints=cons, method="SLSQP",
                                      options={"ftol": 1e-14, "maxiter": 500}).x
        np.testing.assert_allclose(got, ref, atol=1e-6)


@pytest.mark.parametrize("norm", ["inf", 2])
def test_projection_is_feasible_and_exact(norm):
    """Every projected point satisfies budget, order and mask; a feasible point is left
    alone; and the projection onto budget + order matches SLSQP (Dykstra converged)."""
    rng = np.random.default_rng(1)
    truth = jnp.array([[1.0, 0.8, -1.0, -1.0, 0.2], [0.0, 0.5, 0.5, -0.3, 0.1]])
    free = jnp.array([[True, True, True, False, True], [True, True, True, True, True]])
    geo = _geometry(truth, budget=0.7, norm=norm, order=True, free=free)
    for _ in range(5):
        u = jnp.asarray(rng.normal(size=truth.shape) * 2)
        p = PROJECT(geo, u)
        assert bool(FEASIBLE(geo, p))
        np.testing.assert_allclose(np.asarray(PROJECT(geo, p)), np.asarray(p), atol=1e-6)
    # Exactness against a generic solver, on the one prompt.
    geo1 = _geometry(truth[1], budget=0.7, norm=norm, order=True)
    u = rng.normal(size=5) * 2
    t = np.asarray(truth[1])
    cons = [{"type": "ineq", "fun": lambda z, i=i, j=j: (t[i] + z[i]) - (t[j] + z[j]) - 0.01}
            for i in range(5) for j in range(5) if t[i] > t[j]]
    if norm == "inf":
        bounds = [(-0.7, 0.7)] * 5
    else:
        bounds = None
        cons.append({"type": "ineq", "fun": lambda z: 0.49 - np.sum(z**2)})
    ref = scipy.optimize.minimize(lambda z: np.sum((z - u) ** 2), np.zeros(5), bounds=bounds, constraints=cons,
                                  method="SLSQP", options={"ftol": 1e-14, "maxiter": 1000}).x
    np.testing.assert_allclose(np.asarray(PROJECT(geo1, jnp.asarray(u)[None]))[0], ref, atol=1e-4)


def test_designed_proxy_respects_every_constraint():
    """Order, mask and an L2 budget on the stalling problem (exact discrete ascent):
    nothing is violated, and masked entries are bit-for-bit the truth."""
    with jax.enable_x64(True):
        mask = jnp.array([False, True, True, True, True])
        d = gf.design_proxy(stalling_policy(0.3), STALL_TRUE, method=SGD, target=0.9, budget=1.5, norm=2,
                            order_preserving=True, mask=mask, steps=60)
        r, g = np.asarray(d.reward), np.asarray(STALL_TRUE)
        assert r[0] == g[0] and np.linalg.norm(r - g) <= 1.5 * (1 + 1e-9)
        assert r[1] > r[2:].max() and float(d.accuracy) == 1.0
        assert d.labels[0] == "unchanged" and float(d.time) < float(d.reference_time)


def test_accuracy_floor_holds_exactly():
    """A floor on ranking accuracy: the returned proxy's exact Acc meets it."""
    with jax.enable_x64(True):
        d = gf.design_proxy(stalling_policy(0.3), STALL_TRUE, method=SGD, target=0.9, budget=1.5, norm=2,
                            min_accuracy=1.0, steps=60)
        assert float(d.accuracy) == 1.0
        want = float(gf.metrics.acc(*_ordered_pairs(np.asarray(d.reward), np.asarray(STALL_TRUE))))
        assert float(d.accuracy) == want


def _ordered_pairs(r, g):
    pairs = [(i, j) for i in range(g.size) for j in range(g.size) if g[i] > g[j]]
    return np.array([r[i] for i, _ in pairs]), np.array([r[j] for _, j in pairs])


def test_groups_one_credit_per_pattern():
    """Outputs tied in a group move together: one proxy value per satisfaction pattern."""
    with jax.enable_x64(True):
        problem = gf.design.ConstraintSatisfaction(num_constraints=2, outputs_per_pattern=2)
        policy = problem.policy(0.05, 0.3)
        truth = problem.true_reward()
        d = gf.design_proxy(policy, truth, method=SGD, target=0.5, budget=0.5, steps=60,
                            groups=problem.output_patterns())
        r = np.asarray(d.reward).reshape(problem.num_patterns, 2)
        np.testing.assert_array_equal(r[:, 0], r[:, 1])
        assert float(d.time) < float(d.reference_time)


# --------------------------------------------------------------------------- the stalling problem


def test_stalling_problem_ten_times_sooner_with_sgd():
    """p(y*) = 0.10, SGD at learning rate 0.1, L-inf budget 1: the designed proxy reaches
    true reward 0.9 at least 10x sooner than the truth (10,690 steps), and sooner than
    the hand-made fix of moving only y_med to 0 (166 steps)."""
    with jax.enable_x64(True):
        policy = stalling_policy()
        sgd = gf.GradientAscent(optax.sgd(0.1), steps=11_000)
        d = gf.design_proxy(policy, STALL_TRUE, method=sgd, target=0.9, budget=1.0, steps=30,
                            optimizer=optax.adam(0.1))
        hand = gf.solve(policy, reward=STALL_TRUE.at[1].set(0.0), true_reward=STALL_TRUE, method=sgd,
                        targets=(0.9,), saveat=gf.SaveAt(every=11_000))
        assert float(d.reference_time) == 10_690 and float(hand.target_times[0]) == 166
        assert float(d.time) * 10 <= 10_690 and float(d.time) <= 166
        assert np.max(np.abs(np.asarray(d.change))) <= 1.0
        # The time in steps is the first update at or past the target: the interpolated
        # crossing that the optimiser saw, rounded up.
        assert float(d.time) == np.ceil(float(d.objective))


# --------------------------------------------------------------------------- the study
def test_proxy_design_quick_shows_the_fastest_teacher(tmp_path):
    """The designed proxy beats the truth by far more than 10x within L-inf 1, beats every
    random proxy in the same box, keeps the ranking; the order-preserving design is no
    slower; the designed partial credit stays in its budget and never loses to binary."""
    result, text = printed(gf.studies.run_study, "proxy-design", out=tmp_path, quick=True)
    check_recorded_tables(tmp_path, "proxy-design")
    check_summary(text, "Proxy design", "L-inf", "order-", "designed proxy", "random proxies", "Partial credit",
                  "vs binary", "recommend", "partial_credit.csv", "proxy_design_front.png")
    for name in ["front.csv", "accuracy.csv", "partial_credit.csv", "proxy_design_front.png",
                 "proxy_design_credit.png"]:
        assert (tmp_path / name).exists(), name
    assert figure_problems(result["figures"]) == {}
    assert redraw_differences(tmp_path, result["figures"]) == []
    (row,) = result["front"]
    assert row["budget"] == 1.0 and row["speedup_any"] > 10 and row["accuracy_any"] == 1.0
    assert row["time_any"] <= float(np.min(result["categorization"].time))
    assert row["accuracy_order"] == 1.0 and row["time_order"] <= row["time_any"] * 1.01
    for r in result["partial_credit"]:
        credits = [v for k, v in r.items() if k.startswith("credit_")]
        assert all(abs(c) <= 1.0 + 1e-9 for c in credits)
        assert r["designed_time"] <= r["binary_time"] * (1 + 1e-6)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(budget=-1.0), "budget"),
        (dict(min_accuracy=1.5), "min_accuracy"),
        (dict(mask=jnp.zeros(2, bool)), "mask"),
        (dict(objective="speed"), "objective"),
        (dict(norm=1), "norm"),
        (dict(target=1.0), "target"),
        (dict(target=0.1), "target"),
        (dict(accuracy="auc"), "accuracy"),
        (dict(method=gf.RLOO(optax.sgd(0.1), steps=10)), "method"),
        (dict(t1=None), "t1"),
        (dict(groups=np.array([0, 2])), "groups"),
        (dict(steps=0), "steps"),
        (dict(autodiff="backward"), "autodiff"),
    ],
)
def test_bad_input_names_the_argument(kwargs, name):
    base = dict(method=gf.GradientFlow(), target=0.9, t1=10.0, budget=0.5)
    with pytest.raises(ValueError, match=f"`{name}`"):
        gf.design_proxy(TWO_POLICY, TWO_TRUE, **{**base, **kwargs})
