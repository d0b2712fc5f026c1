"""`gradflow.rm_eval`: reading per-response records, forming pairs, validation, the
metrics table and the `rm-eval` subcommand."""

from __future__ import annotations

import csv
import importlib.util
import itertools
import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gradflow import cli, metrics as M, rm_eval

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "experiments" / "rm-eval-example.jsonl"
PACKAGED_EXAMPLE = ROOT / "gradflow" / "experiments" / "rm-eval-example.jsonl"

COLUMNS = ["prompt_id", "response_id", "logprob", "true_reward", "rm_a", "rm_b"]


def _records() -> list[dict]:
    """A small ragged data set: 3 prompts with 3, 2 and 4 responses, integer and string
    ids, sequence-like log-likelihoods, one tie in the true reward."""
    rows = [
        ("p1", 0, -12.5, 1.0, 0.9, 0.2),
        ("p1", 1, -10.0, 0.0, 0.5, 0.4),
        ("p1", 2, -11.25, 0.5, 0.7, 0.9),
        ("p2", "a", -3.0, 0.25, -1.0, 0.0),
        ("p2", "b", -0.5, 0.75, 2.0, 0.0),
        ("p3", 0, -40.0, 2.0, 1.0, 3.0),
        ("p3", 1, -41.5, 2.0, 1.5, -3.0),
        ("p3", 2, -39.0, -1.0, 0.0, 1.0),
        ("p3", 3, -45.125, 0.5, 0.25, 0.5),
    ]
    return [dict(zip(COLUMNS, r, strict=True)) for r in rows]


def _write(records: list[dict], path: Path) -> Path:
    """Write records as JSONL, CSV or Parquet, by the path's extension."""
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    elif path.suffix == ".csv":
        cols = list(records[0])
        with path.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(cols)
            for r in records:
                w.writerow(["" if r.get(c) is None else r.get(c) for c in cols])
    else:
        cols = list(records[0])
        data = {c: [r.get(c) for r in records] for c in cols}
        # Ids as strings (Parquet columns have one type), numbers as float64.
        table = pa.table(
            {c: pa.array([None if v is None else (str(v) if c.endswith("_id") else v)
                          for v in vals]) for c, vals in data.items()}
        )
        pq.write_table(table, path)
    return path


# ---------------------------------------------------------------------------------------
# Reading.
# ---------------------------------------------------------------------------------------


def test_formats_round_trip_to_the_same_table(tmp_path):
    records = _records()
    loaded = [rm_eval.from_records(records)]
    for suffix in (".jsonl", ".csv", ".parquet"):
        loaded.append(rm_eval.load(_write(records, tmp_path / f"data{suffix}")))
    ref = loaded[0]
    assert ref.prompt_ids == ("p1", "p2", "p3")
    assert ref.response_ids == (("0", "1", "2"), ("a", "b"), ("0", "1", "2", "3"))
    assert list(ref.rewards) == ["rm_a", "rm_b"]
    tables = [rm_eval.evaluate(d) for d in loaded]
    for d, t in zip(loaded[1:], tables[1:], strict=True):
        assert d.prompt_ids == ref.prompt_ids and d.response_ids == ref.response_ids
        for name in ("logp", "valid", "true_reward", "chosen", "rejected", "pair_mask"):
            np.testing.assert_array_equal(getattr(d, name), getattr(ref, name))
        for k in ref.rewards:
            np.testing.assert_array_equal(d.rewards[k], ref.rewards[k])
        assert t == tables[0]
    assert [row["model"] for row in tables[0]] == ["rm_a", "rm_b", "true_reward"]
    assert all(list(row) == ["model", *rm_eval.METRICS] for row in tables[0])


def test_logprobs_are_renormalised_per_prompt_and_ragged_prompts_padded():
    d = rm_eval.from_records(_records())
    lp = np.asarray([-12.5, -10.0, -11.25])
    np.testing.assert_allclose(d.logp[0, :3], lp - np.log(np.sum(np.exp(lp))), rtol=1e-14)
    np.testing.assert_allclose(np.sum(np.exp(d.logp), axis=1), 1.0, rtol=1e-12)
    np.testing.assert_array_equal(d.valid.sum(axis=1), [3, 2, 4])
    assert np.all(np.exp(d.logp[~d.valid]) == 0.0)
    # A shift of one prompt's log-likelihoods (mass on unlisted responses) changes nothing.
    shifted = [dict(r, logprob=r["logprob"] - 100.0) if r["prompt_id"] == "p2" else r
               for r in _records()]
    np.testing.assert_allclose(rm_eval.from_records(shifted).logp, d.logp, atol=1e-12)


def test_pairs_from_true_reward_with_ties_dropped():
    # Prompt A: true rewards (1, 0.5, 1, 0): the tie (0, 2) is dropped, 5 pairs remain.
    # Prompt B: all tied, no pair.
    g_a, r_a = [1.0, 0.5, 1.0, 0.0], [0.9, 0.1, 5.0, 0.0]
    recs = [dict(prompt_id="A", response_id=f"y{i}", logprob=-1.0, true_reward=g, rm=r)
            for i, (g, r) in enumerate(zip(g_a, r_a, strict=True))]
    recs += [dict(prompt_id="B", response_id=f"y{i}", logprob=-1.0, true_reward=2.0, rm=0.0)
             for i in range(2)]
    d = rm_eval.from_records(recs)
    pairs = {(int(w), int(lo)) for w, lo, k in
             zip(d.chosen[0], d.rejected[0], d.pair_mask[0], strict=True) if k}
    assert pairs == {(0, 1), (0, 3), (2, 1), (1, 3), (2, 3)}
    assert d.n_pairs == 5 and not d.pair_mask[1].any()
    assert d.ties_dropped == 2 and d.pairs_source == "true_reward"

    row = rm_eval.evaluate(d, include_true_reward=False)[0]
    # The proxy misranks (0, 2)? No such pair: ties are dropped. Of the 5 pairs it gets
    # (2, 1), (1, 3), (2, 3), (0, 1), (0, 3) all right.
    assert row["acc"] == 1.0
    # One vs many: y0 (first of the tied best) against the strictly worse y1, y3; the
    # co-best y2 (proxy 5.0) is not rejected, so the prompt is correct. B is left out.
    assert row["one_vs_many_acc"] == 1.0


def test_explicit_pairs_file(tmp_path):
    records = _records()
    path = _write(records, tmp_path / "data.jsonl")
    pairs = [
        {"prompt_id": "p1", "chosen_id": 0, "rejected_id": 1, "annotator": "x"},
        {"prompt_id": "p1", "chosen_id": 1, "rejected_id": 2, "annotator": "y"},  # against r_G
        {"prompt_id": "p3", "chosen_id": 3, "rejected_id": 2, "annotator": "x"},
    ]
    pfile = _write(pairs, tmp_path / "pairs.csv")
    d = rm_eval.load(path, pfile)
    assert d.pairs_source == "pairs.csv" and d.n_pairs == 3 and d.ties_dropped == 0
    assert d.pairs_against_true_reward == 1
    np.testing.assert_array_equal(d.pair_mask.sum(axis=1), [2, 0, 1])
    assert (d.chosen[0, 1], d.rejected[0, 1]) == (1, 2)
    row = rm_eval.evaluate(d)[0]  # rm_a: 0.9 > 0.5 yes, 0.5 > 0.7 no, 0.25 > 0.0 yes
    assert row["acc"] == pytest.approx(2 / 3)
    assert "1 of them do not prefer" in rm_eval.summary(d)
    argv = (
        ["rm-eval", str(path), "--pairs", str(pfile), "--out", str(tmp_path / "out")]
    )
    assert cli.main(argv) == 0
    with (tmp_path / "out" / "rm_eval.csv").open() as f:
        assert float(next(csv.DictReader(f))["acc"]) == row["acc"]


def test_reward_models_selects_and_orders_columns():
    recs = [dict(r, text="free text") for r in _records()]
    d = rm_eval.from_records(recs, reward_models=["rm_b", "rm_a"])
    assert list(d.rewards) == ["rm_b", "rm_a"]
    with pytest.raises(ValueError, match="column 'text': expected a number"):
        rm_eval.from_records(recs)  # by default every other column is a reward model


# ---------------------------------------------------------------------------------------
# Validation: every error names the file position and the column.
# ---------------------------------------------------------------------------------------


def _set(i, **kv):
    def edit(recs):
        recs[i].update(kv)
        return recs
    return edit


def _drop_key(key):
    def edit(recs):
        for r in recs:
            r.pop(key)
        return recs
    return edit


BAD = [
    # (edit of the good records, file suffix, message fragments)
    (_drop_key("true_reward"), ".csv", ["data.csv", "missing column 'true_reward'"]),
    (_drop_key("logprob"), ".parquet", ["data.parquet", "missing column 'logprob'"]),
    (lambda r: [{k: v for k, v in x.items() if not k.startswith("rm")} for x in r], ".jsonl",
     ["no reward-model column"]),
    (_set(4, response_id="a"), ".csv",
     ["data.csv line 6", "'prompt_id'/'response_id'", "duplicate response 'a' of prompt 'p2'",
      "first at data.csv line 5"]),
    (_set(3, response_id=0, prompt_id="p1"), ".jsonl",
     ["data.jsonl line 4", "duplicate response '0'", "first at data.jsonl line 1"]),
    (_set(2, rm_a=float("nan")), ".csv", ["data.csv line 4, column 'rm_a'", "not finite"]),
    (_set(2, rm_b=float("inf")), ".jsonl", ["data.jsonl line 3, column 'rm_b'", "not finite"]),
    (_set(2, true_reward=float("nan")), ".parquet",
     ["data.parquet row 3, column 'true_reward'", "not finite"]),
    (_set(1, logprob=0.5), ".csv", ["data.csv line 3, column 'logprob'", "positive"]),
    (_set(4, rm_a="high"), ".jsonl", ["data.jsonl line 5, column 'rm_a'", "expected a number"]),
    (_set(4, rm_a=True), ".jsonl", ["data.jsonl line 5, column 'rm_a'", "expected a number"]),
    (_set(6, rm_b=None), ".csv", ["data.csv line 8, column 'rm_b'", "missing value"]),
    (_set(6, prompt_id=None), ".jsonl", ["data.jsonl line 7, column 'prompt_id'", "missing"]),
    (_set(6, response_id=None), ".parquet",
     ["data.parquet row 7, column 'response_id'", "missing"]),
    (_set(3, prompt_id="lonely"), ".csv",
     ["data.csv line 5, column 'prompt_id'", "prompt 'lonely' has only 1 response"]),
    (lambda r: [dict(x, true_reward=1.0) for x in r], ".jsonl",
     ["column 'true_reward'", "no preference pair"]),
]


@pytest.mark.parametrize("edit, suffix, fragments", BAD)
def test_malformed_records_name_the_row_and_column(tmp_path, edit, suffix, fragments):
    path = _write(edit(_records()), tmp_path / f"data{suffix}")
    with pytest.raises(ValueError) as info:
        rm_eval.load(path)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_malformed_file_structure(tmp_path):
    good = "".join(json.dumps(r) + "\n" for r in _records())
    cases = {
        "broken.jsonl": (good[:200] + "{not json\n" + good[200:], ["broken.jsonl line", "not valid JSON"]),
        "list.jsonl": ("[1, 2]\n", ["list.jsonl line 1", "expected a JSON object"]),
        "extra.jsonl": (good + json.dumps(dict(_records()[0], response_id=9, rm_c=1.0)) + "\n",
                        ["extra.jsonl line 10", "unexpected column 'rm_c'"]),
        "short.jsonl": (good + json.dumps({k: v for k, v in _records()[0].items() if k != "rm_b"}
                                          | {"response_id": 9}) + "\n",
                        ["short.jsonl line 10, column 'rm_b'", "missing value"]),
        "wide.csv": (",".join(COLUMNS) + "\np1,0,-1,1,0,0\np1,1,-1,0,0,0,7\n",
                     ["wide.csv line 3", "7 fields", "6 columns"]),
        "dup.csv": ("prompt_id,response_id,logprob,true_reward,rm,rm\n",
                    ["dup.csv line 1", "'rm' appears twice"]),
        "empty.csv": ("", ["empty.csv: no records"]),
        "bad.parquet": ("not parquet", ["bad.parquet", "cannot read it as Parquet"]),
        "data.txt": ("", ["unknown file type '.txt'", ".jsonl"]),
    }
    for name, (text, fragments) in cases.items():
        path = tmp_path / name
        path.write_text(text)
        with pytest.raises(ValueError) as info:
            rm_eval.load(path)
        for fragment in fragments:
            assert fragment in str(info.value), (name, str(info.value))
    with pytest.raises(ValueError, match="no such file"):
        rm_eval.load(tmp_path / "missing.csv")
    with pytest.raises(ValueError, match=r"no column 'rm_z'"):
        rm_eval.from_records(_records(), reward_models=["rm_z"])
    with pytest.raises(ValueError, match=r"records\[1\], column 'logprob'"):
        rm_eval.from_records([_records()[0], dict(_records()[1], logprob=1.0)])


@pytest.mark.parametrize(
    "pair, fragments",
    [
        ({"prompt_id": "p9", "chosen_id": 0, "rejected_id": 1},
         ["pairs.csv line 3, column 'prompt_id'", "unknown prompt 'p9'"]),
        ({"prompt_id": "p1", "chosen_id": 7, "rejected_id": 1},
         ["pairs.csv line 3, column 'chosen_id'", "no response '7'"]),
        ({"prompt_id": "p1", "chosen_id": 0, "rejected_id": 8},
         ["pairs.csv line 3, column 'rejected_id'", "no response '8'"]),
        ({"prompt_id": "p1", "chosen_id": 2, "rejected_id": 2},
         ["pairs.csv line 3, columns 'chosen_id' and 'rejected_id'", "two different"]),
        ({"prompt_id": "p1", "chosen_id": 1, "rejected_id": 0},
         ["pairs.csv line 3", "already form a pair at pairs.csv line 2"]),
    ],
)
def test_malformed_pairs_name_the_row_and_column(tmp_path, pair, fragments):
    path = _write(_records(), tmp_path / "data.jsonl")
    pfile = _write([{"prompt_id": "p1", "chosen_id": 0, "rejected_id": 1}, pair],
                   tmp_path / "pairs.csv")
    with pytest.raises(ValueError) as info:
        rm_eval.load(path, pfile)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_pairs_file_missing_column(tmp_path):
    path = _write(_records(), tmp_path / "data.jsonl")
    pfile = _write([{"prompt_id": "p1", "winner": 0, "rejected_id": 1}], tmp_path / "p.jsonl")
    with pytest.raises(ValueError, match="p.jsonl: missing column 'chosen_id'"):
        rm_eval.load(path, pfile)


# ---------------------------------------------------------------------------------------
# The table equals direct calls of gradflow.metrics.
# ---------------------------------------------------------------------------------------


def test_metrics_equal_direct_calls_of_gradflow_metrics():
    rng = np.random.default_rng(0)
    X, K = 5, 4
    logprob = -rng.uniform(10, 60, (X, K))
    g = rng.normal(size=(X, K))
    proxies = {"rm_a": g + rng.normal(size=(X, K)), "rm_b": -g + 0.1 * rng.normal(size=(X, K))}
    recs = [
        {"prompt_id": f"x{x}", "response_id": f"y{y}", "logprob": logprob[x, y],
         "true_reward": g[x, y], **{k: v[x, y] for k, v in proxies.items()}}
        for x in range(X) for y in range(K)
    ]
    table = rm_eval.evaluate(rm_eval.from_records(recs))
    with jax.enable_x64(True):
        logp = jax.nn.log_softmax(jnp.asarray(logprob), axis=-1)
        ij = [(i, j) for i, j in itertools.combinations(range(K), 2)]
        w = np.asarray([[i if g[x, i] > g[x, j] else j for i, j in ij] for x in range(X)])
        lo = np.asarray([[j if g[x, i] > g[x, j] else i for i, j in ij] for x in range(X)])
        best = np.argmax(g, axis=1)
        rest = np.asarray([[y for y in range(K) if y != best[x]] for x in range(X)])
        rows = np.arange(X)[:, None]
        for name, r in [*proxies.items(), ("true_reward", g)]:
            row = next(t for t in table if t["model"] == name)
            r = jnp.asarray(r)
            V = M.mean_reward(logp, r)
            pc, pr, lc, lr = r[rows, w], r[rows, lo], logp[rows, w], logp[rows, lo]
            oc, orr = r[np.arange(X), best], r[rows, rest]
            olc, olr = logp[np.arange(X), best], logp[rows, rest]
            expected = {
                "acc": M.acc(pc, pr),
                "acc_w": M.acc_w(pc, pr, lc, lr),
                "hacc": M.hacc(pc, pr, V),
                "hacc_w": M.hacc_w(pc, pr, V, lc, lr),
                "one_vs_many_acc": M.one_vs_many_acc(oc, orr),
                "one_vs_many_acc_w": M.one_vs_many_acc_w(oc, orr, olc, olr),
                "one_vs_many_hacc": M.one_vs_many_hacc(oc, orr, V),
                "one_vs_many_hacc_w": M.one_vs_many_hacc_w(oc, orr, V, olc, olr),
                "mean_reward": jnp.mean(V),
                "reward_variance": M.reward_variance(logp, r),
                "true_reward_rate": M.true_reward_rate(logp, r, jnp.asarray(g)),
            }
            for k, v in expected.items():
                assert row[k] == pytest.approx(float(v), rel=1e-10, abs=1e-12), (name, k)
    by = {t["model"]: t for t in table}
    assert by["true_reward"]["acc"] == 1.0 and by["rm_b"]["acc"] < 0.5


# ---------------------------------------------------------------------------------------
# Command line, output and the example file.
# ---------------------------------------------------------------------------------------


def test_cli_prints_the_table_and_writes_the_csv(tmp_path, capsys):
    out = tmp_path / "out"
    argv = (["rm-eval", str(EXAMPLE), "--out", str(out)])
    assert cli.main(argv) == 0
    stdout = capsys.readouterr().out
    for word in ["20 prompts", "160 responses", "560 preference pairs", *rm_eval.METRICS,
                 "rm_noisy", "rm_length_bias", "rm_unlikely_errors", "true_reward"]:
        assert word in stdout
    assert f"wrote {out / 'rm_eval.csv'}" in stdout
    with (out / "rm_eval.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["model"] for r in rows] == ["rm_noisy", "rm_length_bias", "rm_unlikely_errors",
                                         "true_reward"]
    expected = rm_eval.evaluate(rm_eval.load(EXAMPLE))
    for r, e in zip(rows, expected, strict=True):
        assert list(r) == ["model", *rm_eval.METRICS]
        assert all(float(r[k]) == e[k] for k in rm_eval.METRICS)  # full precision


def test_cli_default_out_and_models(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = (["rm-eval", str(EXAMPLE), "--models", "rm_noisy"])
    assert cli.main(argv) == 0
    assert "rm_length_bias" not in capsys.readouterr().out
    with (tmp_path / "gradflow-results" / "rm-eval" / "rm_eval.csv").open() as f:
        assert [r["model"] for r in csv.DictReader(f)] == ["rm_noisy", "true_reward"]


def test_cli_malformed_file_returns_2_with_a_message(tmp_path, capsys):
    bad = _write(_set(2, rm_a=float("nan"))(_records()), tmp_path / "bad.csv")
    argv = (["rm-eval", str(bad), "--out", str(tmp_path / "out")])
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("gradflow: error: bad.csv line 4, column 'rm_a'")
    assert captured.out == ""
    assert not (tmp_path / "out").exists()
    argv = (["rm-eval", str(tmp_path / "nope.jsonl")])
    assert cli.main(argv) == 2
    assert "no such file" in capsys.readouterr().err


def test_cli_help(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["rm-eval", "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for word in ["prompt_id, response_id, logprob, true_reward", "--pairs", "--out",
                 "--models", "log-softmax", "ties"]:
        assert word in text


def test_format_table_switches_to_one_row_per_model():
    row = {"model": "m", **dict.fromkeys(rm_eval.METRICS, 0.5)}
    wide = rm_eval.format_table([dict(row, model=f"m{i}") for i in range(8)])
    assert wide.splitlines()[0].split()[:2] == ["model", "acc"]
    assert len(wide.splitlines()) == 10
    tall = rm_eval.format_table([row])
    assert tall.splitlines()[0].split() == ["metric", "m"]
    assert len(tall.splitlines()) == 2 + len(rm_eval.METRICS)


def test_example_is_packaged_and_reproducible():
    assert EXAMPLE.read_bytes() == PACKAGED_EXAMPLE.read_bytes(), (
        "the installed rm-eval-example.jsonl differs from experiments/: reinstall gradflow"
    )
    assert rm_eval.example_path().read_bytes() == EXAMPLE.read_bytes()
    spec = importlib.util.spec_from_file_location(
        "make_rm_eval_example", ROOT / "experiments" / "make_rm_eval_example.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.to_jsonl(module.make_records()) == EXAMPLE.read_text()
    d = rm_eval.load(EXAMPLE)
    assert len(d.prompt_ids) == 20 and d.valid.all() and d.valid.shape == (20, 8)
    assert math.isclose(float(np.exp(d.logp).sum()), 20.0)
