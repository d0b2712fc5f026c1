"""gradflow.design (the constraint-satisfaction model, reward schemes, the recommendation
helper) and the partial-credit study."""

import csv
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from figcheck import problems as figure_problems, redraw_differences
from helpers import check_recorded_tables, check_summary, printed

import gradflow as gf
from gradflow import design as D
from gradflow.studies import load_config, partial_credit, run_study
from gradflow.studies._base import from_toml, packaged_config
from gradflow.studies.partial_credit import PHASE_COLUMNS

ROOT = Path(__file__).resolve().parents[1]

# K = 4 outputs for both small problems below, so their flows share one compilation.
TWO = D.ConstraintSatisfaction(2, 1)
ONE = D.ConstraintSatisfaction(1, 2)
RLOO = gf.RLOO(optax.sgd(1.0), 50, samples=4)


def test_patterns_rewards_and_initial_probs():
    prob = D.ConstraintSatisfaction(3, (1, 2, 1, 1, 2, 1, 1, 3))
    assert (prob.num_patterns, prob.num_outputs, prob.success_pattern) == (8, 12, 7)
    assert prob.partial_patterns == (1, 2, 3, 4, 5, 6)
    assert prob.pattern_name(0) == "none" and prob.pattern_name(5) == "c1+c3" and prob.pattern_name(7) == "all"
    pats = prob.output_patterns()
    np.testing.assert_array_equal(prob.true_reward(), (pats == 7).astype(float))
    np.testing.assert_allclose(prob.reward("partial"), np.array([0, 1, 1, 2, 1, 2, 2, 3])[pats] / 3)
    np.testing.assert_allclose(prob.reward("weighted", weights=[1.0, 0.0, 3.0]),
                               np.array([0, 1, 0, 1, 3, 4, 3, 4])[pats] / 4)
    np.testing.assert_allclose(prob.reward("user", values=np.arange(8.0)), pats)
    p_part = np.linspace(0.01, 0.06, 6)
    p = prob.probs(0.02, p_part)
    np.testing.assert_allclose(prob.pattern_mass(p), np.concatenate([[1 - 0.02 - p_part.sum()], p_part, [0.02]]),
                               rtol=1e-6)
    np.testing.assert_allclose(p[pats == 7], 0.02 / 3, rtol=1e-6)  # split equally within a pattern
    # The log-linear policy starts from exactly the same probabilities for any mix < 1,
    # and so does LogLinear.from_probs with the same features.
    for mix in (0.0, 0.5, 0.9):
        pol = prob.policy(0.02, p_part, parameterisation="log-linear", mix=mix)
        np.testing.assert_allclose(pol.probs()[0], p, rtol=1e-4)
        fitted = gf.LogLinear.from_probs(prob.features(mix), p)
        np.testing.assert_allclose(fitted.probs(), pol.probs(), rtol=1e-4)
    # the kernel: Phi Phi^T = mix C C^T + (1 - mix) I
    phi, c = prob.features(0.3), prob.satisfied()
    np.testing.assert_allclose(phi @ phi.T, 0.3 * c @ c.T + 0.7 * jnp.eye(12), atol=1e-6)


def test_one_constraint_partial_equals_binary():
    """With m = 1 the fraction satisfied is the success indicator: the schemes coincide."""
    for scheme, kw in (("partial", {}), ("weighted", {"weights": [2.0]})):
        np.testing.assert_array_equal(ONE.reward(scheme, **kw), ONE.reward("binary"))
    rec = D.recommend(0.05, problem=ONE, target=0.9)
    assert math.isfinite(rec.time_binary) and rec.time_binary > 0
    assert rec.time_partial == rec.time_binary and rec.ratio == 1.0
    assert rec.scheme == "either" and rec.factor == 1.0
    np.testing.assert_array_equal(rec.solutions["binary"].true_reward, rec.solutions["partial"].true_reward)


def test_all_mass_on_success_is_done_at_time_zero():
    rec = D.recommend(1.0, 0.0, problem=TWO, target=0.9)
    assert rec.time_binary == 0.0 and rec.time_partial == 0.0
    assert rec.ratio == 1.0 and rec.scheme == "either"


def test_loglinear_with_mix_zero_is_the_tabular_model():
    tab = TWO.policy(0.01, 0.2)
    lin = TWO.policy(0.01, 0.2, parameterisation="log-linear", mix=0.0)
    assert isinstance(tab, gf.TabularSoftmax) and isinstance(lin, gf.LogLinear)
    # The exact flow: the same trajectory of the success probability, the same times.
    flows = [D.recommend(0.01, 0.2, problem=TWO, parameterisation=p, mix=0.0) for p in ("tabular", "log-linear")]
    for scheme in ("binary", "partial"):
        a, b = (f.solutions[scheme] for f in flows)
        np.testing.assert_allclose(a.true_reward, b.true_reward, atol=2e-5)
        np.testing.assert_allclose(a.target_times, b.target_times, rtol=1e-3)
    assert math.isfinite(flows[0].time_partial) and flows[0].ratio == pytest.approx(flows[1].ratio, rel=1e-3)
    # Sampled RLOO: same key, same draws, same updates, step by step.
    runs = [D.recommend(0.01, 0.2, problem=TWO, method=RLOO, parameterisation=p, mix=0.0, seeds=8,
                        key=jax.random.key(3)) for p in ("tabular", "log-linear")]
    for scheme in ("binary", "partial"):
        a, b = (r.solutions[scheme] for r in runs)
        np.testing.assert_allclose(a.true_reward, b.true_reward, atol=1e-6)
        np.testing.assert_allclose(b.params[:, 2:], a.params[:, 0, :], rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(b.params[:, :2], 0.0)  # the (zero) constraint features never move
    assert not np.allclose(runs[0].solutions["partial"].params, tab.params)  # it did learn


def test_binary_credit_without_a_success_makes_no_update():
    """RLOO, binary reward, no success in any group: every advantage is 0, the parameters
    stay bitwise the same, and the tool says so instead of reporting a time."""
    p_s = 1e-9  # P(any success in 8 seeds x 50 steps x 4 draws) ~ 2e-6; key 0 draws none
    rec = D.recommend(p_s, 0.2, problem=TWO, method=RLOO, seeds=8, key=jax.random.key(0))
    policy = TWO.policy(p_s, 0.2)
    sol = rec.solutions["binary"]
    for i in range(8):
        assert jnp.array_equal(sol.params[i], policy.params)  # bitwise
    assert bool(jnp.all(D.no_update(sol, policy)))
    assert rec.no_update_binary == 1.0 and rec.reached_binary == 0.0 and math.isinf(rec.time_binary)
    assert rec.no_update_partial == 0.0  # partial credit does see signal
    assert "no group ever sampled a success" in rec.summary() and "8 of 8 seeds" in rec.summary()
    assert D.no_signal_probability(p_s, 4, 50) > 0.99999
    np.testing.assert_allclose(D.no_signal_probability(0.01, 8, 100), 0.99**800, rtol=1e-6)


def test_time_ratio_edge_cases():
    inf, nan = math.inf, math.nan
    got = D.time_ratio([1.0, 4.0, 5.0, inf, inf, 0.0, nan], [2.0, 2.0, inf, 3.0, inf, 0.0, 1.0])
    np.testing.assert_array_equal(got, [0.5, 2.0, 0.0, inf, nan, 1.0, nan])


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda: D.ConstraintSatisfaction(0), "num_constraints"),
        (lambda: D.ConstraintSatisfaction(11), "num_constraints"),
        (lambda: D.ConstraintSatisfaction(2, (1, 2, 3)), "outputs_per_pattern"),
        (lambda: D.ConstraintSatisfaction(2, 0), "outputs_per_pattern"),
        (lambda: TWO.probs(1.5), "p_success"),
        (lambda: TWO.probs(0.5, 0.3), "p_success"),
        (lambda: TWO.probs(0.1, -0.1), "p_partial"),
        (lambda: TWO.probs(0.1, [0.1, 0.1, 0.1]), "p_partial"),
        (lambda: ONE.probs(0.1, 0.1), "p_partial"),
        (lambda: TWO.reward("bogus"), "scheme"),
        (lambda: TWO.reward("weighted"), "weights"),
        (lambda: TWO.reward("weighted", weights=[1.0]), "weights"),
        (lambda: TWO.reward("weighted", weights=[-1.0, 2.0]), "weights"),
        (lambda: TWO.reward("user", values=[1.0, 2.0]), "values"),
        (lambda: TWO.features(1.5), "mix"),
        (lambda: TWO.policy(0.1, parameterisation="cnn"), "parameterisation"),
        (lambda: TWO.policy(0.1, parameterisation="log-linear", mix=-0.1), "mix"),
        (lambda: D.recommend(0.0, problem=TWO), "p_success"),
        (lambda: D.recommend(0.1, problem=TWO, target=1.0), "target"),
        (lambda: D.recommend(0.1, problem=TWO, partial="binary"), "partial"),
        (lambda: D.recommend(0.1, problem=TWO, seeds=0), "seeds"),
        (lambda: D.recommend(0.1, problem=TWO, method=RLOO, t1=10.0), "t1"),
        (lambda: D.no_signal_probability(1.5, 4, 10), "p_success"),
        (lambda: D.no_signal_probability(0.1, 0, 10), "samples"),
    ],
)
def test_bad_input_names_the_argument(call, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        call()


# ------------------------------------------------------------------------ the study


def test_partial_credit_configs_are_identical():
    assert (ROOT / "experiments" / "partial-credit.toml").read_bytes() == (
        packaged_config("partial-credit").read_bytes()
    )


def test_partial_credit_config_errors_name_the_key(tmp_path):
    import tomllib

    raw = tomllib.loads(packaged_config("partial-credit").read_text())
    raw["problem"]["mix"] = 1.0
    with pytest.raises(ValueError, match=r"problem\.mix"):
        from_toml(partial_credit.Config, raw)
    raw["problem"]["mix"] = 0.5
    raw["sampled"]["names"] = ["rloo", "ppo"]  # the group estimators only
    with pytest.raises(ValueError, match=r"sampled\.names.*\['rloo', 'grpo'\]"):
        from_toml(partial_credit.Config, raw)
    raw["sampled"]["names"] = ["rloo"]
    # Keys checked together name the one the user wrote: with --quick, its [quick.*] entry.
    raw["quick"]["trajectories"]["p_success"] = [0.05]
    raw["quick"]["trajectories"]["p_partial"] = [0.002, 0.2]
    from_toml(partial_credit.Config, raw)  # not used in a full run
    with pytest.raises(ValueError, match=r"`quick\.trajectories\.p_success` and `quick\.trajectories\.p_partial`"):
        from_toml(partial_credit.Config, raw, quick=True)


def test_partial_credit_quick_study(tmp_path):
    cfg = load_config("partial-credit", quick=True)
    result, text = printed(run_study, "partial-credit", out=tmp_path, quick=True)
    regimes = partial_credit.regime_lines(partial_credit.Tables(**{k: v for k, v in result.items() if k != "figures"}),
                                          cfg)
    check_summary(text, "Partial credit vs binary credit", "ratio by p_success", "Where each regime occurs",
                  "partial credit faster at p_success", "Timings", "phase.csv", "sampled.csv", "trajectories.png",
                  *(line.strip().split(":")[0] for line in regimes))
    check_recorded_tables(tmp_path, "partial-credit")
    with (tmp_path / "phase.csv").open() as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == PHASE_COLUMNS
        rows = list(reader)
    n_cells = len(cfg.grid.p_success) * len(cfg.grid.p_partial)
    assert len(rows) == n_cells * 2 * len(cfg.analysis.targets) * (1 + len(cfg.sampled.names))
    assert {r["method"] for r in rows} == {"flow", *cfg.sampled.names}
    ratios = np.array([float(r["ratio"]) for r in rows])
    finite = ratios[np.isfinite(ratios)]
    assert (finite < 1).any() and (finite > 1).any()  # both regimes
    flow_tab = [r for r in rows if r["method"] == "flow" and r["parameterisation"] == "tabular"]
    assert any(float(r["ratio"]) < 1 for r in flow_tab) and any(float(r["ratio"]) > 1 for r in flow_tab)
    for r in rows:  # the ratio column is time_partial / time_binary with the documented edge cases
        assert np.array_equal(D.time_ratio(float(r["time_partial"]), float(r["time_binary"])), float(r["ratio"]),
                              equal_nan=True)
    for path in result["figures"]:
        assert path.stat().st_size > 0
    assert {p.name for p in result["figures"]} == {"phase_0.5.png", "phase_0.9.png", "trajectories.png"}
    assert figure_problems(result["figures"]) == {}
    assert redraw_differences(tmp_path, result["figures"]) == []
    assert (tmp_path / "sampled.csv").stat().st_size > 0
