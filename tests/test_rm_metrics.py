"""The `rm-metrics` study: its bootstrap by resample counts (`gradflow._analysis.stats`, against
SciPy and against explicit resampling), the proxy population, the preference sets, the
config and the quick run."""

import csv
import math
import tomllib
from pathlib import Path

import numpy as np
import pytest
from figcheck import problems as figure_problems, redraw_differences
from helpers import check_recorded_tables, check_summary, printed
from scipy import stats

from gradflow._analysis import stats as S
from gradflow.studies import STUDIES, load_config, rm_metrics as R, run_study
from gradflow.studies._base import from_toml, packaged_config

ROOT = Path(__file__).resolve().parents[1]


def _cfg(quick=False):
    return load_config("rm-metrics", quick=quick)


# ------------------------------------------------------------------------ correlations


def _tied_data(seed, n=60):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 8, n).astype(float)  # many ties
    y = x + rng.integers(-4, 5, n)           # correlated, with ties of its own
    return x, y


@pytest.mark.parametrize("seed", range(5))
def test_numpy_correlations_agree_with_scipy(seed):
    x, y = _tied_data(seed)
    assert S.pearson(x, y) == pytest.approx(stats.pearsonr(x, y).statistic, abs=1e-12)
    assert S.spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
    assert S.kendall(x, y) == pytest.approx(stats.kendalltau(x, y).statistic, abs=1e-12)  # tau-b
    np.testing.assert_allclose(S.average_ranks(x), stats.rankdata(x))
    # Continuous data, negative association.
    rng = np.random.default_rng(100 + seed)
    u = rng.normal(size=80)
    v = -u + rng.normal(size=80)
    assert S.kendall(u, v) == pytest.approx(stats.kendalltau(u, v).statistic, abs=1e-12)
    assert S.spearman(u, v) == pytest.approx(stats.spearmanr(u, v).statistic, abs=1e-12)


def test_bootstrap_counts_equal_explicit_resampling():
    """The count form (every resample at once, copies of one observation tied) equals
    computing the statistic on the explicitly resampled data."""
    x, y = _tied_data(7, n=40)
    counts = S.bootstrap_counts(len(x), 25, seed=3)
    assert counts.shape == (25, 40) and np.all(counts.sum(axis=1) == 40)
    boot = {f.__name__: f(x, y, counts) for f in (S.pearson, S.spearman, S.kendall)}
    for b, c in enumerate(counts):
        idx = np.repeat(np.arange(len(x)), c.astype(int))
        xs, ys = x[idx], y[idx]
        assert boot["pearson"][b] == pytest.approx(stats.pearsonr(xs, ys).statistic, abs=1e-9)
        assert boot["spearman"][b] == pytest.approx(stats.spearmanr(xs, ys).statistic, abs=1e-9)
        assert boot["kendall"][b] == pytest.approx(stats.kendalltau(xs, ys).statistic, abs=1e-9)


def test_correlate_intervals_and_degenerate_input():
    x, y = _tied_data(11, n=100)
    row = S.correlate_counts(x, y, S.bootstrap_counts(100, 400, seed=0), 0.95)
    for s in R.STATS:
        assert -1 <= row[f"{s}_lo"] <= row[s] <= row[f"{s}_hi"] <= 1
    # Perfect monotone association, and a constant variable (undefined: nan, not an error).
    z = np.arange(10.0)
    assert S.pearson(z, 2 * z + 1) == pytest.approx(1.0)
    assert S.spearman(z, np.exp(z)) == pytest.approx(1.0) and S.kendall(z, -(z**3)) == pytest.approx(-1.0)
    for f in (S.pearson, S.spearman, S.kendall):
        assert math.isnan(f(z, np.ones(10)))


# ------------------------------------------------------------------- setting, proxies


def test_full_population_has_every_structure_at_least_60_times():
    cfg = _cfg()
    pc, px = cfg.problem, cfg.proxies
    assert pc.prompts >= 200 and pc.outputs >= 16
    assert set(px.families) == set(R.FAMILIES) and len(cfg.policies.names) >= 2
    setting = R.make_setting(pc, pc.prompts)
    r = setting.true_reward
    assert r.shape == (pc.prompts, pc.outputs) and setting.features.shape == r.shape + (pc.features,)
    # One best output per prompt, `mediocre` mediocre ones (good, not best), the rest bad.
    assert np.all(np.argmax(r, axis=1) == 0)
    med = setting.mediocre
    assert np.all(med.sum(axis=1) == pc.mediocre)
    bad = ~med
    bad[:, 0] = False
    assert r[:, 0].min() > r[med].max() and r[med].min() >= r[bad].max()
    logp0 = R._log_probs(setting, R.initial_theta(pc, cfg.policies.theta_style[0]))
    pop = R.proxy_population(px, setting, logp0, px.per_family)
    names, counts = np.unique(pop.family, return_counts=True)
    assert set(names) == set(R.FAMILIES) and counts.min() >= 60
    assert pop.rewards.shape == (len(pop.family),) + r.shape and np.all(np.isfinite(pop.rewards))
    diff = pop.rewards - r[None]
    for fam in R.FAMILIES:
        sel = pop.family == fam
        assert len(np.unique(np.round(pop.size[sel], 12))) == sel.sum(), fam  # sizes differ
        assert np.all(np.abs(diff[sel]).max(axis=(1, 2)) > 0), fam  # every proxy has errors
    # Structure: errors only where the family puts them, with the family's sign.
    top = np.argsort(-logp0, axis=1)[:, : px.focus_outputs]
    is_top = np.zeros(r.shape, bool)
    np.put_along_axis(is_top, top, True, axis=1)
    assert np.all(diff[pop.family == "noise-likely"][:, ~is_top] == 0)
    assert np.all(diff[pop.family == "noise-unlikely"][:, is_top] == 0)
    for fam, sign in (("promote-mediocre", 1), ("demote-mediocre", -1)):
        d = diff[pop.family == fam]
        assert np.all(d[:, ~med] == 0) and np.all(sign * d >= 0)
    # Monotone proxies rank every prompt's outputs exactly like the true reward.
    mono = pop.rewards[pop.family == "monotone"]
    assert np.all(np.argsort(mono, axis=-1) == np.argsort(r, axis=-1)[None])


def test_preference_sets():
    cfg = _cfg()
    setting = R.make_setting(cfg.problem, 30)
    r = setting.true_reward
    logp0 = R._log_probs(setting, R.initial_theta(cfg.problem, 2.0))
    rng = np.random.default_rng(0)
    for logp in (np.full(r.shape, -math.log(r.shape[1])), logp0):
        resp = R.sample_responses(rng, logp, 4)
        assert resp.shape == (30, 4) and all(len(set(row)) == 4 for row in resp)  # distinct responses
        prefs = R.preference_set(resp, r)
        rows = np.arange(30)[:, None]
        assert prefs.chosen.shape == (30, 6) and prefs.mask.all()
        assert np.all(r[rows, prefs.chosen] > r[rows, prefs.rejected])
        assert np.all(r[prefs.ovm_prompts, prefs.ovm_chosen] == r[rows, resp].max(axis=1)[prefs.ovm_prompts])
        assert prefs.ovm_rejected.shape == (len(prefs.ovm_prompts), 3)
    # On-policy responses from the peaked policy are mostly its likely (mediocre) outputs.
    resp = R.sample_responses(np.random.default_rng(1), logp0, 1)
    assert setting.mediocre[np.arange(30), resp[:, 0]].mean() > 0.6


@pytest.mark.parametrize(
    "edit, key",
    [
        (lambda r: r["policies"].update(theta_style=[1.0]), "policies.theta_style"),
        (lambda r: r["proxies"].update(families=["noise", "nosie"]), "proxies.families"),
        (lambda r: r["training"].update(budgets=[50, 10]), "training.budgets"),
        (lambda r: r["proxies"].update(noise_scale=[1.0, 0.5]), "proxies.noise_scale"),
        (lambda r: r["problem"].update(mediocre=15), "problem.mediocre"),
    ],
)
def test_config_errors_name_the_key(edit, key):
    raw = tomllib.loads(packaged_config("rm-metrics").read_text())
    edit(raw)
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        from_toml(R.Config, raw, quick=True)


def test_config_copies_agree_and_registration():
    assert (ROOT / "experiments" / "rm-metrics.toml").read_bytes() == packaged_config("rm-metrics").read_bytes()
    assert STUDIES["rm-metrics"] is R


# -------------------------------------------------------------------------- quick run


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("rm-metrics")
    result, text = printed(run_study, "rm-metrics", out=out, quick=True)
    return out, result, _cfg(quick=True), text


def test_quick_writes_correlations_with_the_required_columns(quick):
    out, result, cfg, text = quick
    check_recorded_tables(out, "rm-metrics")  # the same numbers as before the studies became modules
    with (out / "correlations.csv").open() as f:
        reader = csv.DictReader(f)
        header, rows = reader.fieldnames, list(reader)
    # method, initial policy and budget in separate columns (the budget an integer), never packed
    assert header[:8] == ["metric", "pairs", "method", "policy", "budget", "pearson", "spearman", "kendall"]
    assert set(header[8:]) == {f"{s}_{b}" for s in R.STATS for b in ("lo", "hi")}
    settings = {(a, p, str(b)) for a in R.ALGORITHMS for p in cfg.policies.names for b in cfg.training.budgets}
    keys = [(r["metric"], r["pairs"], r["method"], r["policy"], r["budget"]) for r in rows]
    assert len(keys) == len(set(keys)) == len(R.METRICS) * len(R.PAIR_SETS) * len(settings)
    assert set(keys) == {(m, s, *st) for m in R.METRICS for s in R.PAIR_SETS for st in settings}
    for r in rows:
        for s in R.STATS:
            est, lo, hi = float(r[s]), float(r[f"{s}_lo"]), float(r[f"{s}_hi"])
            assert -1 <= lo <= est <= hi <= 1, (r["metric"], r["pairs"], r["method"], r["policy"], r["budget"], s)
    with (out / "correlations_by_family.csv").open() as f:
        assert csv.DictReader(f).fieldnames[:6] == ["metric", "pairs", "method", "policy", "budget", "family"]
    scatters = [f"scatter_{nm}_{s}.png" for nm in cfg.policies.names for s in R.PAIR_SETS]
    for name in ("proxies.csv", "correlations_by_family.csv", "correlation_heatmap.png", *scatters,
                 "correlation_vs_budget.png"):
        assert (out / name).stat().st_size > 0
    assert figure_problems(result["figures"]) == {}
    assert redraw_differences(out, result["figures"]) == []
    n = len(cfg.policies.names) * len(cfg.proxies.families) * cfg.proxies.per_family
    assert len(result["proxies"]) == n
    # the printed summary: 100 columns at most, every setting and metric still named
    settings = [f"{a}/{p}/{b}" for a in R.ALGORITHMS for p in cfg.policies.names for b in cfg.training.budgets]
    check_summary(text, "RM metrics vs policy-gradient outcome", "Spearman", "Best predictor per setting",
                  "Within one family", "correlations.csv", "correlation_heatmap.png", "acc_w", "hacc_w",
                  *settings, *(f"{s}: best " for s in settings))


def test_quick_run_is_sane(quick):
    """Accuracy-type metrics lie in [0, 1] (up to float32 rounding); every run finished; the exact and RLOO gains
    agree closely at the last budget (200 prompts' worth of averaging: small noise); on
    the short budget the exact instantaneous rate (log-linear) predicts the gain of the
    exact gradient from the peaked policy."""
    _, result, cfg, _ = quick
    for row in result["proxies"]:
        for s in R.PAIR_SETS:
            for m in R.METRICS[:8]:
                assert -1e-6 <= row[f"{m}@{s}"] <= 1 + 1e-6  # float32 weights
        assert row["status_exact"] == row["status_rloo"] == "ok"
    b = cfg.training.budgets
    gains = np.array([[r[f"gain_{a}_{b[-1]}"] for a in R.ALGORITHMS] for r in result["proxies"]])
    assert stats.spearmanr(gains[:, 0], gains[:, 1]).statistic > 0.9
    rows = {(r["metric"], r["pairs"], r["method"], r["policy"], r["budget"]): r for r in result["rows"]}
    assert rows[("rate_loglinear", "on-policy", "exact", "peaked", b[0])]["spearman"] > 0.5
