"""The study runner, its configs and the command line."""

import dataclasses
import json
import math
import tomllib
from pathlib import Path

import numpy as np
import pytest
from figcheck import problems as figure_problems, redraw_differences
from helpers import check_recorded_tables, check_summary, printed

from gradflow import cli
from gradflow._engine import names as _methods
from gradflow.studies import (
    STUDIES,
    categorization_map,
    estimators,
    load_config,
    run_study,
    stalling,
)
from gradflow.studies._base import dumps, from_toml, packaged_config, sections, to_dict

ROOT = Path(__file__).resolve().parents[1]


def test_installed_configs_are_the_experiments_folder():
    """experiments/ is the one copy of the configs; gradflow/experiments links to it and
    packaging copies it, so an installed gradflow finds every config, unchanged."""
    packaged = sorted(p.name for p in packaged_config("stalling").parent.glob("*.toml"))
    source = sorted(p.name for p in (ROOT / "experiments").glob("*.toml"))
    assert packaged == source
    for name in packaged:
        assert (ROOT / "experiments" / name).read_bytes() == (
            packaged_config("stalling").parent / name
        ).read_bytes(), f"the installed {name} differs from experiments/{name}: reinstall gradflow"


def test_every_study_has_a_valid_packaged_config():
    for name, study in STUDIES.items():
        assert study.NAME == name and study.SUMMARY
        full, quick = load_config(name), load_config(name, quick=True)
        assert isinstance(full, study.Config) and not full.quick and quick.quick
        assert set(to_dict(full)) == set(sections(study.Config))
        # Every packaged config has a --quick overlay that changes something.
        assert quick.overridden and to_dict(quick) != to_dict(full)
        # The config writer (used to make edited copies) reads back to the same config.
        raw = tomllib.loads(packaged_config(name).read_text())
        assert tomllib.loads(dumps(raw)) == raw


def _raw():
    return tomllib.loads(packaged_config("stalling").read_text())


@pytest.mark.parametrize(
    "edit, key",
    [
        (lambda r: r["sgd"].update(learnin_rate=0.1), "sgd.learnin_rate"),
        (lambda r: r.update(extra={}), "extra"),
        (lambda r: r["sgd"].update(steps=1.5), "sgd.steps"),
        (lambda r: r["sgd"].update(learning_rate=-0.1), "sgd.learning_rate"),
        (lambda r: r["problem"].update(p_best=[0.05, 1.5]), "problem.p_best"),
        (lambda r: r["problem"].update(true_reward=[1.0, float("nan")]), "problem.true_reward"),
        (lambda r: r["flow"].pop("t1"), "flow.t1"),
        (lambda r: r["sgd"].update(record_every=True), "sgd.record_every"),
        (lambda r: r["problem"].update(proxy_reward=[1.0, -1.0]), "problem.proxy_reward"),
        (lambda r: r["problem"].update(p_mediocre=0.96), "problem.p_mediocre"),
        # the --quick overlay: its keys are checked like the others (in both modes)
        (lambda r: r["quick"]["sgd"].update(stepz=5), "quick.sgd.stepz"),
        (lambda r: r["quick"]["flow"].update(t1=-1.0), "quick.flow.t1"),
        (lambda r: r["quick"].update(extra={"a": 1}), "quick.extra"),
        (lambda r: r["quick"].update(steps=5000), "quick.steps"),  # the flat [quick] of old
    ],
)
@pytest.mark.parametrize("quick", [False, True])
def test_config_errors_name_the_key(edit, key, quick):
    raw = _raw()
    edit(raw)
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        from_toml(stalling.Config, raw, quick=quick)


def test_quick_overlay_is_applied_once_by_the_loader():
    raw = _raw()
    full, quick = from_toml(stalling.Config, raw), from_toml(stalling.Config, raw, quick=True)
    assert (full.flow.t1, full.sgd.steps) == (5000.0, 50000)
    assert (quick.flow.t1, quick.sgd.steps) == (500.0, 5000)
    assert quick.overridden == {"flow.t1", "sgd.steps"} and quick.name("sgd.steps") == "quick.sgd.steps"
    assert full.name("sgd.steps") == "sgd.steps"
    # Everything else is the full run's; types follow the declarations (tuples for lists).
    assert quick.problem == full.problem and quick.problem.p_best == (0.05, 0.1, 0.15)
    assert isinstance(quick.flow.t1, float) and isinstance(quick.sgd.steps, int)
    # A key may declare its --quick default: a sweep config without [quick] tables.
    sweep_raw = tomllib.loads(packaged_config("categorization-map").read_text())
    del sweep_raw["quick"]
    cfg = from_toml(categorization_map.Config, sweep_raw, quick=True)
    assert (cfg.method.steps, cfg.method.t1, cfg.proxies.n, cfg.proxies.num) == (5000, 500.0, 64, (201, 201))
    assert not cfg.overridden
    with pytest.raises(dataclasses.FrozenInstanceError):
        quick.flow.t1 = 1.0  # type: ignore[misc]


def test_one_table_of_method_names():
    """The subsets are derived from the table; configs take their names from it."""
    assert _methods.METHOD_NAMES == ("sgd", "flow", "reinforce", "rloo", "grpo", "ppo")
    assert _methods.EXACT_NAMES == ("sgd", "flow")
    assert _methods.SAMPLED_NAMES == ("reinforce", "rloo", "grpo", "ppo")
    assert _methods.GROUP_NAMES == ("rloo", "grpo")
    for name, entry in _methods.METHODS.items():
        method = _methods.make_method(name, learning_rate=0.2, steps=7, samples=3)
        assert type(method) is entry.cls and method.needs_key == entry.sampled
        assert getattr(method, "steps", 7) == 7 and getattr(method, "samples", 3) == 3
    assert _methods.make_method("flow", rtol=1e-6, atol=1e-8, max_steps=99).max_steps == 99
    with pytest.raises(ValueError, match="unknown method 'adam'"):
        _methods.make_method("adam")


@pytest.fixture(scope="module")
def quick_stalling(tmp_path_factory):
    out = tmp_path_factory.mktemp("stalling")
    result, text = printed(run_study, "stalling", out=out, quick=True)
    return out, result, text


def test_stalling_study_quick_writes_table_and_figures(quick_stalling):
    out, result, _ = quick_stalling
    for name in ("summary.csv", "true_reward.png", "probs.png"):
        assert (out / name).stat().st_size > 0
    lines = (out / "summary.csv").read_text().splitlines()
    assert len(lines) == 1 + len(result["rows"]) == 1 + 12
    # The folder says what made it: the study, the mode, its config and the versions.
    record = json.loads((out / "run.json").read_text())
    assert (record["kind"], record["name"], record["mode"]) == ("study", "stalling", "quick")
    assert record["config"]["problem"]["p_best"] == [0.05, 0.1, 0.15] and record["versions"]["gradflow"]
    assert record["finished"] is not None
    check_recorded_tables(out, "stalling")  # the same numbers as before the studies became modules


def test_stalling_study_figures_are_clean_and_redraw(quick_stalling):
    out, result, _ = quick_stalling
    assert figure_problems(result["figures"]) == {}
    assert redraw_differences(out, result["figures"]) == []


def test_stalling_study_shows_the_claim(quick_stalling):
    """Proxy reaches 0.9 >= 5x sooner for p(y*) = 0.05; the true-reward run stalls near 0.8."""
    _, result, _ = quick_stalling
    rows = {(r["p_best"], r["trained_on"], r["method"]): r for r in result["rows"]}
    for method in ("flow", "SGD"):
        t_true = rows[(0.05, "true", method)]["time_to_0.9"]
        t_proxy = rows[(0.05, "proxy", method)]["time_to_0.9"]
        assert math.isfinite(t_proxy) and t_true >= 5 * t_proxy
        assert abs(rows[(0.05, "true", method)]["stall_level"] - 0.8) < 0.05
        assert math.isnan(rows[(0.05, "proxy", method)]["stall_level"])
        assert all(r["status"] == "ok" for r in result["rows"])


def test_stalling_study_prints_a_summary_that_fits(quick_stalling):
    _, result, text = quick_stalling
    check_summary(text, "Stalling study:", "time to", "stall", "final true", "flow time", "steps",
                  "only the proxy gets there", "the proxy is", "Results in", "summary.csv", "true_reward.png")
    assert len([line for line in text.splitlines() if line.lstrip().startswith(("0.05 ", "0.1 ", "0.15 "))]) == 12


def test_cli_list_and_errors(capsys, tmp_path):
    assert cli.main(["study", "--list"]) == 0
    assert "stalling" in capsys.readouterr().out
    assert cli.main(["study", "no-such-study", "--out", str(tmp_path)]) == 2
    assert "unknown study 'no-such-study'" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text(packaged_config("stalling").read_text().replace("steps = 50000", "stepz = 50000"))
    assert cli.main(["study", "stalling", "--config", str(bad), "--out", str(tmp_path)]) == 2
    assert "sgd.stepz" in capsys.readouterr().err


# ------------------------------------------------------------------ sampled studies


@pytest.fixture(scope="module")
def quick_reinforce_seeds(tmp_path_factory):
    out = tmp_path_factory.mktemp("reinforce-seeds")
    result, text = printed(run_study, "reinforce-seeds", out=out, quick=True)
    return out, result, text


def test_reinforce_seeds_quick_writes_table_and_figure(quick_reinforce_seeds):
    out, result, _ = quick_reinforce_seeds
    for name in ("summary.csv", "reinforce_seeds.png"):
        assert (out / name).stat().st_size > 0
    assert len((out / "summary.csv").read_text().splitlines()) == 1 + len(result["rows"]) == 1 + 6
    assert all(r["seeds"] == 64 and r["excluded"] == 0 for r in result["rows"])
    check_recorded_tables(out, "reinforce-seeds")


def test_reinforce_seeds_figures_are_clean_and_redraw(quick_reinforce_seeds):
    out, result, _ = quick_reinforce_seeds
    assert figure_problems(result["figures"]) == {}
    assert redraw_differences(out, result["figures"]) == []


def test_reinforce_seeds_quick_shows_the_claim(quick_reinforce_seeds):
    """On the proxy every seed reaches 0.9 near the exact run's step; on the true reward
    (p(y*) = 0.05) the exact run never does and most seeds stall."""
    _, result, _ = quick_reinforce_seeds
    rows = {(r["p_best"], r["trained_on"]): r for r in result["rows"]}
    for p in (0.05, 0.10, 0.15):
        proxy = rows[(p, "proxy")]
        assert proxy["reached_0.9"] == 1.0
        assert abs(proxy["time_to_0.9_q0.5"] - proxy["exact_time_to_0.9"]) <= 0.2 * proxy["exact_time_to_0.9"]
    true = rows[(0.05, "true")]
    assert math.isinf(true["exact_time_to_0.9"])
    assert true["reached_0.9"] < 0.5 and true["stalled"] > 0.5


def test_reinforce_seeds_prints_a_summary_that_fits(quick_reinforce_seeds):
    """The wide table is split into blocks that each repeat p(y*) and `trained on`."""
    _, _, text = quick_reinforce_seeds
    check_summary(text, "REINFORCE seeds:", "to 0.9", "to 0.95", "10-90%", "reached", "stalled",
                  "(mean, 95% CI)", "(exact 0.", "of seeds reach 0.9", "summary.csv", "reinforce_seeds.png")
    assert text.count("trained on") >= 2


@pytest.fixture(scope="module")
def quick_estimators(tmp_path_factory):
    out = tmp_path_factory.mktemp("estimators")
    result, text = printed(run_study, "estimators", out=out, quick=True)
    return out, result, text


def test_estimators_quick(quick_estimators):
    """Unbiased estimators track the exact run on the proxy; GRPO's std normalisation
    escapes the stall on the true reward where RLOO does not."""
    out, result, text = quick_estimators
    assert (out / "estimators.png").stat().st_size > 0
    check_recorded_tables(out, "estimators")
    rows = {(r["estimator"], r["trained_on"]): r for r in result["rows"]}
    assert len(rows) == 8
    for name in ("reinforce", "rloo"):
        r = rows[(name, "proxy")]
        assert abs(r["time_to_0.9_q0.5"] - r["exact_time_to_0.9"]) <= 0.2 * r["exact_time_to_0.9"]
    assert rows[("grpo", "true")]["reached_0.9"] > rows[("rloo", "true")]["reached_0.9"] + 0.5
    assert figure_problems(result["figures"]) == {}
    assert redraw_differences(out, result["figures"]) == []
    check_summary(text, "Estimators at equal sample budget", "reinforce", "rloo", "grpo", "ppo", "to 0.9",
                  "(mean, 95% CI)", "estimators.png")


def test_feature_similarity_quick(tmp_path):
    """y_med's feature pointing towards y* ends the stall; pointing away keeps it."""
    result, text = printed(run_study, "feature-similarity", out=tmp_path, quick=True)
    assert (tmp_path / "feature_similarity.png").stat().st_size > 0
    check_recorded_tables(tmp_path, "feature-similarity")
    rows = {r["cosine"]: r for r in result["rows"] if r["parameterisation"] == "log-linear"}
    towards, away = rows[0.7071], rows[-0.7071]
    assert math.isfinite(towards["time_to_0.9"]) and math.isinf(away["time_to_0.9"])
    assert abs(away["stall_level"] - 0.8) < 0.05
    # On the short quick horizon the slow final approach of `towards` can count as a short
    # stall; it is an order of magnitude shorter than the stall of `away`.
    assert not towards["stall_duration"] > 0.1 * away["stall_duration"]
    times = [rows[c]["time_to_0.9"] for c in sorted(rows)]
    assert times == sorted(times, reverse=True)  # more similar => sooner (inf first)
    assert figure_problems(result["figures"]) == {}
    assert redraw_differences(tmp_path, result["figures"]) == []
    check_summary(text, "Feature similarity:", "cos(y*,", "steps to", "tabular", "+0.707", "final true",
                  "feature_similarity.png")


def test_unknown_estimator_name_is_rejected():
    raw = tomllib.loads(packaged_config("estimators").read_text())
    raw["estimators"]["names"] = ["rloo", "reinforc"]
    with pytest.raises(ValueError, match=r"estimators\.names.*\['reinforce', 'rloo', 'grpo', 'ppo'\]"):
        from_toml(estimators.Config, raw)
    raw["estimators"]["names"] = ["rloo", "sgd"]  # an exact method is no estimator
    with pytest.raises(ValueError, match=r"estimators\.names"):
        from_toml(estimators.Config, raw)


# ------------------------------------------------------------------ sweeps from configs


def test_categorization_map_quick_shows_all_three_regions(tmp_path):
    result, text = printed(run_study, "categorization-map", out=tmp_path, quick=True)
    labels = set(result["table"]["label"].tolist())
    assert labels == {"harmful", "benign", "beneficial"}
    assert (tmp_path / "categorization_map.png").stat().st_size > 0
    check_recorded_tables(tmp_path, "categorization-map")
    # The true reward's own grid point is in the sweep and is benign (ratio undefined or 1).
    t = result["table"]
    at_truth = np.isclose(t["reward_1"], 0.8, atol=1e-6) & np.isclose(t["reward_2"], -1.0, atol=1e-6)
    assert at_truth.sum() == 1 and t["label"][at_truth][0] == "benign"
    assert figure_problems(result["figures"]) == {}
    assert redraw_differences(tmp_path, result["figures"]) == []
    check_summary(text, "harmful", "benign", "beneficial", "categorization_map.png")


def test_cli_sweep_resumes_and_plots(tmp_path, capsys):
    cfg = packaged_config("categorization-map")
    out = tmp_path / "map"
    assert cli.main(["sweep", str(cfg), "--quick", "--out", str(out), "--no-plot"]) == 0
    parts = sorted((out / "summary.parquet").glob("part-*.parquet"))
    stamps = [p.stat().st_mtime_ns for p in parts]
    assert parts and "harmful" in capsys.readouterr().out
    # Same command again: nothing recomputed, the same table.
    assert cli.main(["sweep", str(cfg), "--quick", "--out", str(out), "--no-plot"]) == 0
    assert [p.stat().st_mtime_ns for p in sorted((out / "summary.parquet").glob("part-*.parquet"))] == stamps
    assert cli.main(["plot", str(out)]) == 0
    assert (out / "categorization_map.png").stat().st_size > 0


def test_cli_sweep_rejects_bad_configs(tmp_path, capsys):
    raw = tomllib.loads(packaged_config("categorization-map").read_text())
    for edit, key in [
        (lambda r: r["method"].update(name="adam"), "method.name"),
        (lambda r: r["proxies"].update(famliy="grid_2d"), "proxies.famliy"),
        (lambda r: r["analysis"].update(tolerance=-0.1), "analysis.tolerance"),
        (lambda r: r["sweep"].update(chunk_size="big"), "sweep.chunk_size"),
    ]:
        bad = tomllib.loads(packaged_config("categorization-map").read_text())
        edit(bad)
        with pytest.raises(ValueError, match=key.replace(".", r"\.")):
            from_toml(categorization_map.Config, bad)
    # Out-of-range output index, through the CLI: exit code 2 and the key's name.
    raw["proxies"]["outputs"] = [1, 7]
    path = tmp_path / "bad.toml"
    path.write_text(dumps(raw))
    assert cli.main(["sweep", str(path), "--quick", "--out", str(tmp_path / "o"), "--no-plot"]) == 2
    assert "proxies.outputs" in capsys.readouterr().err


@pytest.fixture(scope="module")
def quick_token_credit(tmp_path_factory):
    out = tmp_path_factory.mktemp("token-credit")
    result, text = printed(run_study, "token-credit", out=out, quick=True)
    return out, result, text


def test_token_credit_quick_shows_stalling_at_the_token_level(quick_token_credit):
    """Every parameterisation starts from the same sequence distribution; on the true
    reward each stalls near y_med's 0.8 within the quick horizon, and the proxy that
    demotes y_med reaches 0.9 (beneficial)."""
    out, result, text = quick_token_credit
    for name in ("summary.csv", "map.csv", "true_reward.png", "categorization_map.png"):
        assert (out / name).stat().st_size > 0
    assert len((out / "map.csv").read_text().splitlines()) == 1 + 6 * 3 * 3
    check_recorded_tables(out, "token-credit")
    rows = result["rows"]
    assert sorted({r["parameterisation"] for r in rows}) == ["bigram", "flat", "prefix"]
    header = (out / "summary.csv").read_text().splitlines()[0].split(",")
    assert "parameterisation" in header
    for scen in ("separate", "shared"):
        same = [r for r in rows if r["scenario"] == scen]
        assert len(same) == 3
        # The same initial distribution under the three parameterisations.
        np.testing.assert_allclose([r["p_best_initial"] for r in same], same[0]["p_best_initial"], rtol=1e-4)
        np.testing.assert_allclose([r["p_mediocre_initial"] for r in same], same[0]["p_mediocre_initial"], rtol=1e-4)
    for r in rows:
        assert r["stalls"] and abs(r["stall_level"] - 0.8) < 0.08, r
        assert math.isinf(r["time_to_0.9_true"]) and math.isfinite(r["time_to_0.9_demote"]), r
        assert r["demote_label"] == "beneficial"
        assert r["failed"] == 0 and 0 <= r["agreement"] <= 1
    for labels in result["maps"].values():
        assert labels.shape == (3, 3) and set(np.unique(labels)) <= {"harmful", "benign", "beneficial"}
    assert figure_problems(result["figures"]) == {}
    assert redraw_differences(out, result["figures"]) == []
    check_summary(text, "Token credit:", "separate", "shared", "flat", "prefix", "bigram", "demotion",
                  "beneficial", "lens", "map.csv", "categorization_map.png")


def test_neural_policy_quick_categorises_errors(tmp_path):
    result, text = printed(run_study, "neural-policy", out=tmp_path, quick=True)
    assert (tmp_path / "summary.csv").stat().st_size > 0 and (tmp_path / "neural_policy.png").stat().st_size > 0
    check_recorded_tables(tmp_path, "neural-policy")
    assert result["fit_residual"] < 1e-3  # the MLP starts from the tabular policy's distribution
    rows = {r["error"]: r for r in result["rows"]}
    # Demoting the likely mediocre output speeds both policies up: beneficial under both.
    assert rows["demote y_med"]["tabular_label"] == rows["demote y_med"]["neural_label"] == "beneficial"
    assert all(r["neural_label"] != "failed" and r["tabular_label"] != "failed" for r in rows.values())
    assert figure_problems(result["figures"]) == {}
    assert redraw_differences(tmp_path, result["figures"]) == []
    check_summary(text, "Neural policy:", "demote y_med", "swap y* and y_med", "neural", "canonical errors",
                  "neural_policy.png")



def test_print_config_writes_the_packaged_config_to_edit(capsys, tmp_path):
    assert cli.main(["study", "stalling", "--print-config"]) == 0
    text = capsys.readouterr().out
    assert text == packaged_config("stalling").read_text(encoding="utf-8")
    edited = tmp_path / "mine.toml"
    edited.write_text(text)
    assert load_config("stalling", edited) == load_config("stalling")
    assert cli.main(["study", "nope", "--print-config"]) == 2
    assert "unknown study 'nope'" in capsys.readouterr().err
    assert not any(tmp_path.glob("gradflow-results"))
