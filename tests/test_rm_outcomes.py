"""`gradflow rm-eval --outcomes`: correlations of the reward-model metrics with measured
outcomes across reward models (`gradflow._analysis.stats`), against `scipy.stats` called
independently here; the end-to-end command on the shipped example; and every bad outcomes
file refused with exit status 2, a message naming the file, column or model, and nothing
left on disk."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import inspect
import io
import json
import math
import warnings
from pathlib import Path

import figcheck
import numpy as np
import pytest
import scipy.stats

from gradflow import cli, rm_eval
from gradflow._analysis import stats as _stats

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "experiments" / "rm-eval-example.jsonl"
OUTCOMES = ROOT / "experiments" / "rm-eval-outcomes-example.csv"
PACKAGED_OUTCOMES = ROOT / "gradflow" / "experiments" / "rm-eval-outcomes-example.csv"
MODELS = ["rm_noisy", "rm_length_bias", "rm_unlikely_errors"]

CONTRACT = ["metric", "outcome", "pearson", "pearson_lo", "pearson_hi", "spearman", "spearman_lo",
            "spearman_hi", "kendall", "kendall_lo", "kendall_hi", "n_models"]

SCIPY = {"pearson": scipy.stats.pearsonr, "spearman": scipy.stats.spearmanr,
         "kendall": scipy.stats.kendalltau}
RNG_KEYWORD = "rng" if "rng" in inspect.signature(scipy.stats.bootstrap).parameters else "random_state"


def _data(n: int = 13, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Correlated pairs with ties in both variables (rounded), as metrics and outcomes of
    `n` reward models might be."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n).round(1)
    y = (0.7 * x + 0.5 * rng.normal(size=n)).round(1)
    return x, y


def _scipy_bootstrap(x, y, name: str, *, resamples: int, seed: int, confidence: float = 0.95):
    """`scipy.stats.bootstrap` with scipy's own correlation function, one resample at a
    time (`vectorized=False`), warnings of undefined resamples silenced."""

    def statistic(a, b):
        return SCIPY[name](a, b).statistic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", scipy.stats.ConstantInputWarning)
        warnings.simplefilter("ignore", scipy.stats.DegenerateDataWarning)
        return scipy.stats.bootstrap((x, y), statistic, paired=True, vectorized=False,
                                     n_resamples=resamples, confidence_level=confidence,
                                     method="percentile", **{RNG_KEYWORD: np.random.default_rng(seed)})


# ---------------------------------------------------------------------------------------
# gradflow._analysis.stats.correlate against scipy.
# ---------------------------------------------------------------------------------------


def test_estimates_equal_scipy():
    x, y = _data()
    got = _stats.correlate(x, y, resamples=50)
    assert got["n"] == 13
    for name, f in SCIPY.items():
        assert abs(got[name] - f(x, y).statistic) <= 1e-12, name


def test_resample_statistics_equal_scipy_on_every_resample():
    """The vectorised statistics scored on resamples with many ties and constant rows equal
    scipy's functions row by row, `nan` exactly where scipy's is."""
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=6).round(0), rng.normal(size=6).round(0)
    idx = rng.integers(0, 6, (400, 6))
    xs, ys = x[idx], y[idx]
    for name, f in SCIPY.items():
        mine = _stats._RESAMPLED[name](xs, ys, axis=-1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", scipy.stats.ConstantInputWarning)
            ref = np.array([f(a, b).statistic for a, b in zip(xs, ys, strict=True)])
        assert np.array_equal(np.isnan(mine), np.isnan(ref)), name
        assert np.isnan(ref).any(), "the check should include undefined resamples"
        assert np.nanmax(np.abs(mine - ref)) <= 1e-12, name


def test_bootstrap_matches_scipy_and_is_reproducible():
    x, y = _data()
    got = _stats.correlate(x, y, resamples=1000, seed=7, confidence=0.9)
    again = _stats.correlate(x, y, resamples=1000, seed=7, confidence=0.9)
    assert {k: float(v).hex() for k, v in got.items()} == {k: float(v).hex() for k, v in again.items()}
    other = _stats.correlate(x, y, resamples=1000, seed=8, confidence=0.9)
    assert any(other[f"{s}_lo"] != got[f"{s}_lo"] for s in _stats.STATISTICS)
    assert got["degenerate"] == 0
    for name in _stats.STATISTICS:
        ref = _scipy_bootstrap(x, y, name, resamples=1000, seed=7, confidence=0.9)
        assert abs(got[f"{name}_lo"] - ref.confidence_interval.low) <= 1e-12, name
        assert abs(got[f"{name}_hi"] - ref.confidence_interval.high) <= 1e-12, name
        # The percentile interval brackets the estimate here (up to rounding: a resample
        # that permutes the data sums in another order).
        assert got[f"{name}_lo"] - 1e-12 <= got[name] <= got[f"{name}_hi"] + 1e-12, name
        assert got[f"{name}_lo"] < got[f"{name}_hi"], name


def test_degenerate_resamples_are_left_out():
    """With 3 observations a ninth of the resamples draw one observation only: scipy's
    interval is then nan (with a warning), ours the percentiles over the other resamples."""
    x, y = np.array([0.1, 0.5, 0.3]), np.array([1.0, 3.0, 2.5])
    got = _stats.correlate(x, y, resamples=2000, seed=1)
    for name in _stats.STATISTICS:
        ref = _scipy_bootstrap(x, y, name, resamples=2000, seed=1)
        assert math.isnan(ref.confidence_interval.low)
        dist = np.asarray(ref.bootstrap_distribution)
        defined = dist[~np.isnan(dist)]
        assert got["degenerate"] == dist.size - defined.size
        lo, hi = np.quantile(defined, [0.025, 0.975])
        assert abs(got[f"{name}_lo"] - lo) <= 1e-12 and abs(got[f"{name}_hi"] - hi) <= 1e-12, name
    assert abs(got["degenerate"] / 2000 - 1 / 9) < 0.02


def test_constant_input_gives_nan_without_a_warning():
    x, y = np.full(5, 0.5), np.arange(5.0)
    got = _stats.correlate(x, y, resamples=100)  # a warning would fail the test
    assert all(math.isnan(got[f"{s}{e}"]) for s in _stats.STATISTICS for e in ("", "_lo", "_hi"))
    assert got["degenerate"] == 100 and got["n"] == 5


@pytest.mark.parametrize("kwargs, fragment", [
    ({"x": [1, 2], "y": [1, 2]}, "at least 3"),
    ({"x": [1, 2, 3], "y": [1, 2]}, "same length"),
    ({"x": [[1, 2, 3]], "y": [1, 2, 3]}, "`x` must be 1-D"),
    ({"x": [1, 2, 3], "y": [1, float("nan"), 3]}, "`y`: entry 1"),
    ({"x": [1, 2, 3], "y": [1, 2, 3], "confidence": 1.0}, "`confidence`"),
    ({"x": [1, 2, 3], "y": [1, 2, 3], "resamples": 0}, "`resamples`"),
    ({"x": [1, 2, 3], "y": [1, 2, 3], "seed": -1}, "`seed`"),
])
def test_correlate_refuses_bad_arguments(kwargs, fragment):
    x, y = kwargs.pop("x"), kwargs.pop("y")
    with pytest.raises(ValueError, match=fragment.replace("[", r"\[")):
        _stats.correlate(x, y, **kwargs)


# ---------------------------------------------------------------------------------------
# rm_eval.correlate_outcomes on a table in memory (no evaluation needed).
# ---------------------------------------------------------------------------------------


def _table(models: list[str], seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = [{"model": m, **{k: float(rng.uniform()) for k in rm_eval.METRICS}} for m in models]
    return rows + [{"model": rm_eval.TRUE_REWARD_ROW, **dict.fromkeys(rm_eval.METRICS, 1.0)}]


def test_correlate_outcomes_matches_models_by_name(tmp_path):
    models = [f"rm_{c}" for c in "abcdef"]
    table = _table(models)
    table[0]["acc"] = table[1]["acc"] = table[2]["acc"] = 0.5  # ties
    for row in table[:6]:
        row["mean_reward"] = 0.25  # the same for every model: no correlation
    rng = np.random.default_rng(1)
    outcome = {m: float(rng.normal()) for m in models}
    path = tmp_path / "outcomes.csv"
    order = [models[i] for i in (3, 0, 5, 1, 4, 2)]  # another order than the table's
    path.write_text("model,score,win\n" + "".join(f"{m},{outcome[m]!r},{i}\n" for i, m in enumerate(order)))
    rows = rm_eval.correlate_outcomes(table, path, resamples=500, seed=3)
    assert [(r["metric"], r["outcome"]) for r in rows] == [(k, o) for k in rm_eval.METRICS
                                                           for o in ("score", "win")]
    y = np.array([outcome[m] for m in models])
    for r in rows:
        assert list(r)[:len(CONTRACT)] == CONTRACT and r["n_models"] == 6
        if r["outcome"] != "score":
            continue
        x = np.array([row[r["metric"]] for row in table[:6]])
        if r["metric"] == "mean_reward":
            assert math.isnan(r["pearson"]) and math.isnan(r["kendall_hi"])
            continue
        ref = _stats.correlate(x, y, resamples=500, seed=3)
        assert all(r[k] == ref[k] for k in CONTRACT[2:-1]), r["metric"]
    text = rm_eval.format_correlations(rows, resamples=500)
    assert "outcome score" in text and "outcome win" in text and "6 reward models" in text
    assert "nan: the metric or the outcome is the same" in text
    assert max(len(line) for line in text.splitlines()) <= 100


# ---------------------------------------------------------------------------------------
# The command on the shipped example.
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def example_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("rm-outcomes") / "out"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = cli.main(["rm-eval", str(EXAMPLE), "--outcomes", str(OUTCOMES), "--out", str(out), "--quiet"])
    return code, out, buf.getvalue()


def test_cli_writes_the_correlations_on_the_example(example_run):
    code, out, stdout = example_run
    assert code == 0
    with (out / "correlations.csv").open(newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        body = list(reader)
    assert header == CONTRACT
    assert [(r[0], r[1]) for r in body] == [(k, o) for k in rm_eval.METRICS
                                           for o in ("win_rate", "benchmark_score")]
    assert all(r[-1] == "3" for r in body)
    # The numbers are those of the Python API, at full precision.
    table = rm_eval.evaluate(rm_eval.load(EXAMPLE))
    expected = rm_eval.correlate_outcomes(table, OUTCOMES)
    for r, e in zip(body, expected, strict=True):
        for k, v in zip(CONTRACT[2:-1], r[2:-1], strict=True):
            assert float(v) == e[k] or (math.isnan(float(v)) and math.isnan(e[k])), (r[:2], k)
    png = out / "correlations.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert figcheck.problems([png]) == {}
    for word in ["outcome win_rate", "outcome benchmark_score", "across 3 reward models",
                 f"wrote {out / 'correlations.csv'}", f"wrote {png}", "say little"]:
        assert word in stdout, word
    record = json.loads((out / "run.json").read_text())
    assert record["config"]["outcomes"] == str(OUTCOMES.resolve())
    assert record["finished"] is not None


def test_python_run_and_the_packaged_example(tmp_path, capsys):
    assert rm_eval.outcomes_example_path().read_bytes() == OUTCOMES.read_bytes()
    assert PACKAGED_OUTCOMES.read_bytes() == OUTCOMES.read_bytes()
    outcomes = rm_eval.load_outcomes(OUTCOMES)
    assert sorted(outcomes.models) == sorted(MODELS)
    assert outcomes.columns == ("win_rate", "benchmark_score")
    result = rm_eval.run(EXAMPLE, tmp_path, outcomes=OUTCOMES)
    capsys.readouterr()
    assert len(result["correlations"]) == 2 * len(rm_eval.METRICS)
    assert result["correlations_csv"] == tmp_path / "correlations.csv"
    assert result["correlations_png"].is_file()


def test_cli_help_names_the_flag(capsys):
    with pytest.raises(SystemExit):
        cli.main(["rm-eval", "--help"])
    text = capsys.readouterr().out
    assert "--outcomes" in text and "correlations.csv" in text


# ---------------------------------------------------------------------------------------
# Bad outcomes files: refused before the evaluation, nothing written.
# ---------------------------------------------------------------------------------------


def _records4(path: Path) -> Path:
    """A small records file with four reward models (for a model missing from the outcomes
    file while 3 are present)."""
    lines = []
    for p in range(2):
        for r in range(3):
            rec = {"prompt_id": p, "response_id": r, "logprob": -1.0 - r, "true_reward": float(r)}
            rec.update({f"rm_{c}": float((r * (i + 2)) % 3) for i, c in enumerate("abcd")})
            lines.append(json.dumps(rec))
    path.write_text("\n".join(lines) + "\n")
    return path


def _snapshot(folder: Path) -> dict[str, str]:
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


GOOD = "model,win_rate\nrm_noisy,0.58\nrm_length_bias,0.47\nrm_unlikely_errors,0.61\n"


@pytest.mark.parametrize("text, extra, fragments", [
    ("name,win_rate\nrm_noisy,0.5\n", [], ["outcomes.csv", "no column 'model'", "'name'"]),
    ("model\nrm_noisy\nrm_length_bias\nrm_unlikely_errors\n", [], ["outcomes.csv", "no outcome column"]),
    (GOOD.replace("0.47", "high"), [],
     ["outcomes.csv line 3 (model 'rm_length_bias'), column 'win_rate'", "expected a number", "'high'"]),
    (GOOD.replace("0.47", ""), [],
     ["outcomes.csv line 3 (model 'rm_length_bias'), column 'win_rate'", "missing value"]),
    (GOOD.replace("0.47", "nan"), [], ["outcomes.csv line 3 (model 'rm_length_bias')", "not finite"]),
    (GOOD + "rm_noisy,0.6\n", [], ["outcomes.csv line 5, column 'model'", "'rm_noisy'", "second row",
                                   "line 2"]),
    ("model,win_rate\nrm_noisy,0.58\nrm_length_bias,0.47\n", [],
     ["outcomes.csv", "2 reward models", "at least 3"]),
    (GOOD + "true_reward,0.7\n", [], ["outcomes.csv line 5", "'true_reward'", "reference row"]),
    (GOOD + "rm_mystery,0.5\n", [],
     ["outcomes.csv, column 'model'", "1 model not among the reward models", "rm-eval-example.jsonl",
      "'rm_mystery'"]),
    (GOOD, ["--models", "rm_noisy,rm_length_bias"],
     ["outcomes.csv", "not among the reward models", "'rm_unlikely_errors'"]),
    ("model,win_rate\nrm_a,0.1\nrm_b,0.2\nrm_c,0.3\n", ["RECORDS4"],
     ["outcomes.csv: no row for 1 reward model of records4.jsonl", "'rm_d'"]),
    ("model,win_rate,\nrm_noisy,0.58,\n", [], ["outcomes.csv", "column 3 of the header has no name"]),
    (None, [], ["missing.csv", "no such file"]),
])
def test_bad_outcomes_exit_2_before_any_work(tmp_path, capsys, monkeypatch, text, extra, fragments):
    def no_evaluation(*args, **kwargs):
        raise AssertionError("the evaluation ran before the outcomes were checked")

    monkeypatch.setattr(rm_eval, "evaluate", no_evaluation)
    outcomes = tmp_path / ("missing.csv" if text is None else "outcomes.csv")
    if text is not None:
        outcomes.write_text(text)
    records = EXAMPLE
    if extra == ["RECORDS4"]:
        records, extra = _records4(tmp_path / "records4.jsonl"), []
    out = tmp_path / "deep" / "out"
    argv = ["rm-eval", str(records), "--outcomes", str(outcomes), "--out", str(out), "--quiet", *extra]
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("gradflow: error: ")
    for fragment in fragments:
        assert fragment in captured.err, (fragment, captured.err)
    assert captured.out == ""
    assert not (tmp_path / "deep").exists()


def test_refused_outcomes_leave_an_existing_folder_as_it_was(tmp_path, capsys, example_run):
    """A mismatch found after the folder is claimed (it needs the records' models) puts
    the folder back as it was, even with --force."""
    _, done, _ = example_run
    before = _snapshot(done)
    bad = tmp_path / "outcomes.csv"
    bad.write_text(GOOD + "rm_mystery,0.5\n")
    argv = ["rm-eval", str(EXAMPLE), "--outcomes", str(bad), "--out", str(done), "--quiet", "--force"]
    assert cli.main(argv) == 2
    assert "'rm_mystery'" in capsys.readouterr().err
    assert _snapshot(done) == before
