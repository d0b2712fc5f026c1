"""Evaluate reward models from a file of per-response records (`gradflow rm-eval`).

A *record* is one response of a language model to a prompt, with the model's
log-likelihood of it, its ground-truth reward and the reward each proxy reward model
gives it. [`load`][gradflow.rm_eval.load] reads and validates such a file (JSON Lines,
CSV or Parquet), [`evaluate`][gradflow.rm_eval.evaluate] scores every reward model with
every metric of [`gradflow.metrics`](metrics.md), and
[`write_csv`][gradflow.rm_eval.write_csv] / [`format_table`][gradflow.rm_eval.format_table]
write and print the table.

```python
from gradflow import rm_eval

data = rm_eval.load("records.jsonl")          # or .csv / .parquet; pairs="pairs.csv"
table = rm_eval.evaluate(data)                # one dict per reward model
print(rm_eval.format_table(table))
rm_eval.write_csv(table, "rm_eval.csv")
```

**The records file.** One row per response, with the columns

| column | meaning |
|---|---|
| `prompt_id` | the prompt (any string or integer) |
| `response_id` | the response, unique within its prompt |
| `logprob` | the policy's log-likelihood of the response (a sequence log-probability, `<= 0`) |
| `true_reward` | the ground-truth reward `r_G(x, y)` |
| any other column | one proxy reward model `r_P(x, y)`, named by the column |

Every prompt needs at least 2 responses; prompts may have different numbers of
responses. All values must be finite. Prompts keep the order of their first record,
responses the order of their records.

**The policy.** A language model's sequence log-likelihoods do not sum to 1 over the
few responses listed for a prompt (most of the mass is on responses not sampled). The
policy the metrics see is the model *conditioned on producing one of the listed
responses*: `pi(y | x) = exp(logprob(y)) / sum_{y' listed for x} exp(logprob(y'))`,
a log-softmax over each prompt's responses. Prompts are weighted uniformly.

**Preference pairs.** By default, every two responses of a prompt with different
ground-truth rewards form one pair, the one with the higher `true_reward` chosen; ties
are dropped. Explicit pairs come in a separate file (same formats) with columns
`prompt_id, chosen_id, rejected_id` (other columns are ignored); each unordered pair at
most once. The one-vs-many metrics always take the response with the highest
`true_reward` as chosen (the first listed on a tie) and every response with a strictly
lower `true_reward` as rejected.

**Outcomes.** With measured outcomes of training on each reward model (a win rate, a
benchmark score; [`load_outcomes`][gradflow.rm_eval.load_outcomes]),
[`correlate_outcomes`][gradflow.rm_eval.correlate_outcomes] correlates every metric with
every outcome across the reward models (Pearson, Spearman, Kendall, with bootstrap
intervals) and [`plot_correlations`][gradflow.rm_eval.plot_correlations] draws the scatter
grid: which metric predicted the outcome?
"""

from __future__ import annotations

import csv
import io
import json
import math
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import jax
import numpy as np

from . import metrics as _m
from ._analysis import stats as _stats
from ._util import results as _results

__all__ = [
    "RECORD_COLUMNS",
    "PAIR_COLUMNS",
    "METRICS",
    "TRUE_REWARD_ROW",
    "RewardData",
    "load",
    "from_records",
    "evaluate",
    "format_table",
    "write_csv",
    "summary",
    "example_path",
    "CORRELATION_COLUMNS",
    "Outcomes",
    "load_outcomes",
    "correlate_outcomes",
    "format_correlations",
    "write_correlations_csv",
    "plot_correlations",
    "outcomes_example_path",
    "run",
]

RECORD_COLUMNS: tuple[str, ...] = ("prompt_id", "response_id", "logprob", "true_reward")
"""The columns every records file must have (the rest are reward models)."""

PAIR_COLUMNS: tuple[str, ...] = ("prompt_id", "chosen_id", "rejected_id")
"""The columns of an explicit pairs file."""

METRICS: tuple[str, ...] = (
    "acc",
    "acc_w",
    "hacc",
    "hacc_w",
    "one_vs_many_acc",
    "one_vs_many_acc_w",
    "one_vs_many_hacc",
    "one_vs_many_hacc_w",
    "mean_reward",
    "reward_variance",
    "true_reward_rate",
)
"""The columns of the table [`evaluate`][gradflow.rm_eval.evaluate] returns, after
`model`, in order."""

TRUE_REWARD_ROW = "true_reward"
"""The name of the reference row: the ground truth scored as if it were a reward model."""

# Padding of ragged prompts: log-probability -1e4 is probability exactly 0 in float32 and
# float64 (exp underflows), yet finite, so the arrays go straight into gradflow.metrics.
_PAD_LOGP = -1.0e4

_FORMATS = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
}

_ACCURACIES = frozenset(METRICS[:8])


# ---------------------------------------------------------------------------------------
# The loaded data.
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class RewardData:
    """Validated per-response records, as padded arrays ready for
    [`gradflow.metrics`](metrics.md).

    `X` is the number of prompts, `K` the largest number of responses of a prompt and
    `P` the largest number of preference pairs of a prompt. Prompt `i`'s responses fill
    `[i, :n_i]` in file order; the rest is padding (`valid` False, log-probability
    `-1e4`, i.e. probability exactly 0, rewards 0).

    **Fields:**

    - `prompt_ids`: the prompts, in order of first appearance.
    - `response_ids`: each prompt's responses, in file order.
    - `logp`: `log pi(y | x)`, shape `(X, K)`: the file's `logprob`, renormalised with a
      log-softmax over each prompt's responses.
    - `valid`: shape `(X, K)`, True on real responses.
    - `true_reward`: `r_G`, shape `(X, K)`.
    - `rewards`: reward-model name -> `r_P`, shape `(X, K)`, in column order.
    - `chosen`, `rejected`: the responses of each preference pair, as column indices into
      the `(X, K)` arrays, shape `(X, P)`.
    - `pair_mask`: shape `(X, P)`, True on real pairs.
    - `pairs_source`: `"true_reward"` (pairs formed from the ground truth) or the name
      of the pairs file.
    - `ties_dropped`: how many response pairs with equal `true_reward` were dropped (0
      with explicit pairs).
    - `pairs_against_true_reward`: how many explicit pairs have
      `true_reward(chosen) <= true_reward(rejected)` (0 for pairs formed from the truth).
    - `source`: the records file's name.
    """

    prompt_ids: tuple[str, ...]
    response_ids: tuple[tuple[str, ...], ...]
    logp: np.ndarray
    valid: np.ndarray
    true_reward: np.ndarray
    rewards: dict[str, np.ndarray]
    chosen: np.ndarray
    rejected: np.ndarray
    pair_mask: np.ndarray
    pairs_source: str
    ties_dropped: int
    pairs_against_true_reward: int
    source: str

    @property
    def n_pairs(self) -> int:
        """The number of preference pairs."""
        return int(self.pair_mask.sum())

    @property
    def n_responses(self) -> int:
        """The number of responses (records)."""
        return int(self.valid.sum())


# ---------------------------------------------------------------------------------------
# Reading files: every reader returns (columns, [(location, row dict), ...]).
# ---------------------------------------------------------------------------------------

_Rows = list[tuple[str, dict]]


def _format_of(path: Path) -> str:
    fmt = _FORMATS.get(path.suffix.lower())
    if fmt is None:
        known = ", ".join(_FORMATS)
        raise ValueError(
            f"{path}: unknown file type {path.suffix!r}; expected one of {known} "
            "(JSON Lines, CSV or Parquet)."
        )
    return fmt


def _read_jsonl(path: Path) -> tuple[list[str], _Rows]:
    columns: list[str] | None = None
    rows: _Rows = []
    with path.open(encoding="utf-8-sig") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            loc = f"{path.name} line {n}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{loc}: not valid JSON ({e.msg}, column {e.colno}).") from None
            if not isinstance(obj, dict):
                raise ValueError(
                    f"{loc}: expected a JSON object (one record per line); got "
                    f"{type(obj).__name__}."
                )
            if columns is None:
                columns = list(obj)
            rows.append((loc, obj))
    return columns or [], rows


def _read_csv(path: Path) -> tuple[list[str], _Rows]:
    rows: _Rows = []
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            return [], rows
        seen: set[str] = set()
        for name in header:
            if name in seen:
                raise ValueError(f"{path.name} line 1: column {name!r} appears twice in the header.")
            seen.add(name)
        for fields in reader:
            loc = f"{path.name} line {reader.line_num}"
            if not fields:
                continue  # a blank line
            if len(fields) > len(header):
                raise ValueError(
                    f"{loc}: {len(fields)} fields, but the header names {len(header)} columns."
                )
            rows.append((loc, dict(zip(header, fields, strict=False))))
    return header, rows


def _read_parquet(path: Path) -> tuple[list[str], _Rows]:
    try:
        import pyarrow.parquet as pq
    except ImportError as e:  # pragma: no cover - pyarrow is a dependency
        raise ValueError("reading Parquet files needs pyarrow: `pip install pyarrow`.") from e
    try:
        table = pq.read_table(path)
    except Exception as e:  # noqa: BLE001 - pyarrow raises many types for a bad file
        raise ValueError(f"{path.name}: cannot read it as Parquet ({e}).") from None
    columns = list(table.column_names)
    data = {c: table.column(c).to_pylist() for c in columns}
    rows = [
        (f"{path.name} row {i + 1}", {c: data[c][i] for c in columns})
        for i in range(table.num_rows)
    ]
    return columns, rows


def _read(path: str | Path) -> tuple[list[str], _Rows, str]:
    path = Path(path)
    fmt = _format_of(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file.")
    reader = {"jsonl": _read_jsonl, "csv": _read_csv, "parquet": _read_parquet}[fmt]
    columns, rows = reader(path)
    if not rows:
        raise ValueError(f"{path.name}: no records.")
    return columns, rows, path.name


# ---------------------------------------------------------------------------------------
# Validating values.
# ---------------------------------------------------------------------------------------


#: The largest magnitude a number in a records file may have: its square (in a variance)
#: must stay finite in float64.
MAX_MAGNITUDE = 1e150


def _missing(value) -> bool:
    return value is None or (isinstance(value, str) and value.strip() == "")


def _ident(loc: str, col: str, value) -> str:
    """An id as a string (integral floats, e.g. from a Parquet float column, as integers)."""
    if _missing(value):
        raise ValueError(f"{loc}, column '{col}': missing value.")
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"{loc}, column '{col}': expected a string or integer id; got {value!r}.")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{loc}, column '{col}': expected an id; got {value!r}.")
        if value.is_integer():
            return str(int(value))
    return str(value)


def _number(loc: str, col: str, value) -> float:
    if _missing(value):
        raise ValueError(f"{loc}, column '{col}': missing value.")
    if isinstance(value, bool):
        raise ValueError(f"{loc}, column '{col}': expected a number; got {value!r}.")
    shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
    try:
        x = float(value)
    except OverflowError:
        raise ValueError(f"{loc}, column '{col}': the value {shown} overflows a float.") from None
    except (TypeError, ValueError):
        raise ValueError(f"{loc}, column '{col}': expected a number; got {shown}.") from None
    if not math.isfinite(x):
        raise ValueError(
            f"{loc}, column '{col}': the value {shown} is not finite (NaN and inf are not "
            "allowed)."
        )
    if abs(x) > MAX_MAGNITUDE:
        raise ValueError(
            f"{loc}, column '{col}': the value {shown} is too large: rewards and log-likelihoods "
            f"must be at most {MAX_MAGNITUDE:g} in magnitude, so that their variances are finite."
        )
    return x


def _check_columns(source: str, columns: Sequence[str], required: Sequence[str], what: str):
    missing = [c for c in required if c not in columns]
    if missing:
        names = ", ".join(repr(c) for c in missing)
        found = ", ".join(repr(c) for c in columns) or "none"
        raise ValueError(
            f"{source}: missing column{'s' if len(missing) > 1 else ''} {names}; {what} needs "
            f"{', '.join(required)} (found: {found})."
        )


def _check_row_keys(loc: str, row: Mapping, columns: Sequence[str], header: Sequence[str]):
    for c in columns:
        if c not in row:
            raise ValueError(f"{loc}, column '{c}': missing value (the record has no such key).")
    extra = [k for k in row if k not in header]
    if extra:
        raise ValueError(
            f"{loc}: unexpected column {extra[0]!r} (not among the columns of the first "
            "record or header)."
        )


# ---------------------------------------------------------------------------------------
# Building the data.
# ---------------------------------------------------------------------------------------


def _models(source: str, columns: Sequence[str], reward_models: Sequence[str] | None) -> list[str]:
    if reward_models is None:
        models = [c for c in columns if c not in RECORD_COLUMNS]
        if not models:
            raise ValueError(
                f"{source}: no reward-model column; add one column per proxy reward model "
                f"besides {', '.join(RECORD_COLUMNS)}."
            )
        return models
    models = list(reward_models)
    if not models:
        raise ValueError("`reward_models` must name at least one column.")
    for name in models:
        if not isinstance(name, str) or name in RECORD_COLUMNS:
            raise ValueError(
                f"`reward_models`: {name!r} is not a reward-model column (the columns "
                f"{', '.join(RECORD_COLUMNS)} are reserved)."
            )
        if name not in columns:
            found = ", ".join(repr(c) for c in columns)
            raise ValueError(f"{source}: no column {name!r} (found: {found}).")
        if models.count(name) > 1:
            raise ValueError(f"`reward_models`: {name!r} is named twice.")
    return models


def _log_softmax(x: np.ndarray) -> np.ndarray:
    top = np.max(x)
    return x - (top + np.log(np.sum(np.exp(x - top))))


def _pairs_from_truth(g: np.ndarray) -> tuple[list[tuple[int, int]], int]:
    pairs, ties = [], 0
    for a in range(len(g)):
        for b in range(a + 1, len(g)):
            if g[a] > g[b]:
                pairs.append((a, b))
            elif g[b] > g[a]:
                pairs.append((b, a))
            else:
                ties += 1
    return pairs, ties


def _explicit_pairs(
    pairs_file: str | Path,
    prompts: dict[str, int],
    responses: list[dict[str, int]],
    truth: list[np.ndarray],
    records_name: str,
) -> tuple[list[list[tuple[int, int]]], int, str]:
    header, rows, name = _read(pairs_file)
    _check_columns(name, header, PAIR_COLUMNS, "a pairs file")
    out: list[list[tuple[int, int]]] = [[] for _ in prompts]
    first: dict[tuple[int, frozenset], str] = {}
    against = 0
    for loc, row in rows:
        _check_row_keys(loc, row, PAIR_COLUMNS, header)
        pid = _ident(loc, "prompt_id", row["prompt_id"])
        if pid not in prompts:
            raise ValueError(
                f"{loc}, column 'prompt_id': unknown prompt {pid!r} (not in {records_name})."
            )
        i = prompts[pid]
        idx = []
        for col in ("chosen_id", "rejected_id"):
            rid = _ident(loc, col, row[col])
            if rid not in responses[i]:
                raise ValueError(
                    f"{loc}, column '{col}': prompt {pid!r} has no response {rid!r} in "
                    f"{records_name}."
                )
            idx.append(responses[i][rid])
        w, lo = idx
        if w == lo:
            raise ValueError(
                f"{loc}, columns 'chosen_id' and 'rejected_id': both are {row['chosen_id']!r}; "
                "a pair needs two different responses."
            )
        key = (i, frozenset(idx))
        if key in first:
            raise ValueError(
                f"{loc}: the responses {row['chosen_id']!r} and {row['rejected_id']!r} of prompt "
                f"{pid!r} already form a pair at {first[key]}; list each pair once."
            )
        first[key] = loc
        against += int(truth[i][w] <= truth[i][lo])
        out[i].append((w, lo))
    return out, against, name


def _build(
    header: Sequence[str],
    rows: _Rows,
    source: str,
    pairs: str | Path | None,
    reward_models: Sequence[str] | None,
) -> RewardData:
    _check_columns(source, header, RECORD_COLUMNS, "a records file")
    models = _models(source, header, reward_models)
    numeric = ["logprob", "true_reward", *models]
    needed = [*RECORD_COLUMNS, *models]

    prompts: dict[str, int] = {}
    first_loc: list[str] = []
    responses: list[dict[str, int]] = []
    values: list[list[list[float]]] = []  # prompt -> response -> [logprob, true, *models]
    where: dict[tuple[str, str], str] = {}
    for loc, row in rows:
        _check_row_keys(loc, row, needed, header)
        pid = _ident(loc, "prompt_id", row["prompt_id"])
        rid = _ident(loc, "response_id", row["response_id"])
        vals = [_number(loc, c, row[c]) for c in numeric]
        if vals[0] > 0:
            raise ValueError(
                f"{loc}, column 'logprob': {row['logprob']!r} is positive; a log-probability "
                "(sequence log-likelihood) must be <= 0."
            )
        if (pid, rid) in where:
            raise ValueError(
                f"{loc}, columns 'prompt_id'/'response_id': duplicate response {rid!r} of prompt "
                f"{pid!r} (first at {where[pid, rid]})."
            )
        where[pid, rid] = loc
        if pid not in prompts:
            prompts[pid] = len(prompts)
            first_loc.append(loc)
            responses.append({})
            values.append([])
        i = prompts[pid]
        responses[i][rid] = len(values[i])
        values[i].append(vals)

    for pid, i in prompts.items():
        if len(values[i]) < 2:
            raise ValueError(
                f"{first_loc[i]}, column 'prompt_id': prompt {pid!r} has only "
                f"{len(values[i])} response; every prompt needs at least 2."
            )

    n_prompts, width = len(prompts), max(len(v) for v in values)
    logp = np.full((n_prompts, width), _PAD_LOGP)
    valid = np.zeros((n_prompts, width), bool)
    cols = np.zeros((len(numeric) - 1, n_prompts, width))
    for i, vals in enumerate(values):
        a = np.asarray(vals, dtype=np.float64)
        k = a.shape[0]
        logp[i, :k] = _log_softmax(a[:, 0])
        valid[i, :k] = True
        cols[:, i, :k] = a[:, 1:].T
    truth = [cols[0, i, : len(v)] for i, v in enumerate(values)]

    if pairs is None:
        formed = [_pairs_from_truth(g) for g in truth]
        pair_lists = [p for p, _ in formed]
        ties, against, pairs_source = sum(t for _, t in formed), 0, "true_reward"
        if not any(pair_lists):
            raise ValueError(
                f"{source}, column 'true_reward': every prompt's responses have equal true "
                "rewards, so no preference pair can be formed (ties are dropped)."
            )
    else:
        pair_lists, against, pairs_source = _explicit_pairs(
            pairs, prompts, responses, truth, source
        )
        ties = 0
        if not any(pair_lists):
            raise ValueError(f"{pairs_source}: no pairs.")

    n_pairs = max(len(p) for p in pair_lists)
    chosen = np.zeros((n_prompts, n_pairs), np.int64)
    rejected = np.zeros((n_prompts, n_pairs), np.int64)
    pair_mask = np.zeros((n_prompts, n_pairs), bool)
    for i, plist in enumerate(pair_lists):
        if plist:
            arr = np.asarray(plist, dtype=np.int64)
            chosen[i, : len(plist)], rejected[i, : len(plist)] = arr[:, 0], arr[:, 1]
            pair_mask[i, : len(plist)] = True

    return RewardData(
        prompt_ids=tuple(prompts),
        response_ids=tuple(tuple(r) for r in responses),
        logp=logp,
        valid=valid,
        true_reward=cols[0],
        rewards={name: cols[j + 1] for j, name in enumerate(models)},
        chosen=chosen,
        rejected=rejected,
        pair_mask=pair_mask,
        pairs_source=pairs_source,
        ties_dropped=ties,
        pairs_against_true_reward=against,
        source=source,
    )


def load(
    path: str | Path,
    pairs: str | Path | None = None,
    *,
    reward_models: Sequence[str] | None = None,
) -> RewardData:
    """Read and validate a records file (and optionally a pairs file).

    The format follows the file's extension: `.jsonl`/`.ndjson` (one JSON object per
    line), `.csv` (a header line, then one record per line) or `.parquet`/`.pq`. Columns:
    `prompt_id`, `response_id`, `logprob`, `true_reward`, and one column per proxy reward
    model (see the [tutorial](../rm-eval.md)).

    Bad input raises a `ValueError` whose message names the file, the line (JSONL, CSV;
    the header is line 1) or row (Parquet, counted from 1) and the column: a missing
    column or value, a value that is not a number or not finite, a positive `logprob`, a
    duplicate `(prompt_id, response_id)`, a prompt with fewer than 2 responses, and in a
    pairs file an unknown prompt or response, a pair of a response with itself or a pair
    listed twice.

    **Arguments:**

    - `path`: the records file.
    - `pairs`: optional file of explicit preference pairs with columns `prompt_id`,
      `chosen_id`, `rejected_id`. Without it, every two responses of a prompt with
      different `true_reward` form a pair (ties are dropped).
    - `reward_models`: the reward-model columns to evaluate, in this order (default:
      every column other than the four required ones; with a list, other columns are
      ignored).

    **Returns:** a [`RewardData`][gradflow.rm_eval.RewardData].
    """
    header, rows, source = _read(path)
    return _build(header, rows, source, pairs, reward_models)


def from_records(
    records: Iterable[Mapping],
    pairs: str | Path | None = None,
    *,
    reward_models: Sequence[str] | None = None,
) -> RewardData:
    """Like [`load`][gradflow.rm_eval.load], from records already in memory (e.g. a
    list of dicts, or `pandas.DataFrame.to_dict("records")`). Error messages name
    `records[i]`.

    **Arguments:**

    - `records`: an iterable of mappings, each with the columns of a records file.
    - `pairs`, `reward_models`: as for [`load`][gradflow.rm_eval.load].

    **Returns:** a [`RewardData`][gradflow.rm_eval.RewardData].
    """
    rows: _Rows = []
    for i, rec in enumerate(records):
        if not isinstance(rec, Mapping):
            raise ValueError(f"records[{i}]: expected a mapping of column -> value; got {rec!r}.")
        rows.append((f"records[{i}]", dict(rec)))
    if not rows:
        raise ValueError("records: no records.")
    header = list(rows[0][1])
    return _build(header, rows, "records", pairs, reward_models)


# ---------------------------------------------------------------------------------------
# Scoring.
# ---------------------------------------------------------------------------------------


def _enable_x64():
    """A context in which JAX computes in float64 (the table should not carry float32
    rounding such as an accuracy of 1.0000001)."""
    enable = getattr(jax, "enable_x64", None)
    if enable is None:  # pragma: no cover - older JAX
        from jax.experimental import enable_x64 as enable
    return enable(True)


def _scores(data: RewardData, r: np.ndarray) -> dict[str, float]:
    logp, g, mask = data.logp, data.true_reward, data.pair_mask
    take = np.take_along_axis
    rc, rr = take(r, data.chosen, axis=1), take(r, data.rejected, axis=1)
    lc, lr = take(logp, data.chosen, axis=1), take(logp, data.rejected, axis=1)
    mean = _m.mean_reward(logp, r)

    # One vs many: the best true reward against every strictly worse response.
    best = np.argmax(np.where(data.valid, g, -np.inf), axis=1)
    rows = np.arange(g.shape[0])
    worse = data.valid & (g < g[rows, best][:, None])
    keep = worse.any(axis=1)  # prompts whose responses all tie have no rejected output
    b = best[keep]
    kr = rows[keep]
    ovm_args = (r[kr, b], r[keep])
    ovm_logp = (logp[kr, b], logp[keep])
    ovm_mean = np.asarray(mean)[keep]
    ovm_mask = worse[keep]

    out = {
        "acc": _m.acc(rc, rr, mask),
        "acc_w": _m.acc_w(rc, rr, lc, lr, mask),
        "hacc": _m.hacc(rc, rr, mean, mask),
        "hacc_w": _m.hacc_w(rc, rr, mean, lc, lr, mask),
        "one_vs_many_acc": _m.one_vs_many_acc(*ovm_args, ovm_mask),
        "one_vs_many_acc_w": _m.one_vs_many_acc_w(*ovm_args, *ovm_logp, ovm_mask),
        "one_vs_many_hacc": _m.one_vs_many_hacc(*ovm_args, ovm_mean, ovm_mask),
        "one_vs_many_hacc_w": _m.one_vs_many_hacc_w(*ovm_args, ovm_mean, *ovm_logp, ovm_mask),
        "mean_reward": np.mean(np.asarray(mean)),
        "reward_variance": _m.reward_variance(logp, r),
        "true_reward_rate": _m.true_reward_rate(logp, r, g),
    }
    return {k: float(v) for k, v in out.items()}


def evaluate(data: RewardData, *, include_true_reward: bool = True) -> list[dict[str, str | float]]:
    """Score every reward model of `data` with every metric of
    [`gradflow.metrics`](metrics.md), under the policy `data.logp` (uniform prompt
    weights).

    Columns (besides `model`), see [`METRICS`][gradflow.rm_eval.METRICS]:

    - `acc`, `acc_w`, `hacc`, `hacc_w`: over the preference pairs
      ([`gradflow.metrics.acc`][] and friends); the harm-aware ones with the exact mean
      proxy reward `V_P(x)` of the policy over the prompt's responses.
    - `one_vs_many_acc`, `_acc_w`, `_hacc`, `_hacc_w`: per prompt, the response with the
      highest `true_reward` (the first listed on a tie) against every response with a
      strictly lower one; prompts whose responses all tie are left out.
    - `mean_reward`: the policy's expected proxy reward, `(1/X) sum_x V_P(x)`.
    - `reward_variance`: [`gradflow.metrics.reward_variance`][], `(1/X) sum_x Var_pi[r_P]`.
    - `true_reward_rate`: [`gradflow.metrics.true_reward_rate`][], `dV_G/dt` when the
      policy (as a tabular softmax over the listed responses) follows the gradient flow
      of the proxy.

    **Arguments:**

    - `data`: from [`load`][gradflow.rm_eval.load] or
      [`from_records`][gradflow.rm_eval.from_records].
    - `include_true_reward`: append a reference row named `true_reward` that scores the
      ground truth itself (its `true_reward_rate` is the rate of training on the truth).

    Computed in float64 whatever JAX's default precision (inside `jax.enable_x64`).

    **Returns:** a list of dicts, one per reward model (in column order), each with the
    key `model` (the column name) and one float per metric.
    """
    models = list(data.rewards.items())
    if include_true_reward:
        models.append((TRUE_REWARD_ROW, data.true_reward))
    with _enable_x64():
        return [{"model": name, **_scores(data, r)} for name, r in models]


# ---------------------------------------------------------------------------------------
# Output.
# ---------------------------------------------------------------------------------------


def _fmt(metric: str, x: float) -> str:
    return f"{x:.4f}" if metric in _ACCURACIES else f"{x:.5g}"


def format_table(table: Sequence[Mapping[str, str | float]]) -> str:
    """The table as aligned text: one column per reward model and one row per metric
    (one row per reward model when there are more than 6).

    **Arguments:**

    - `table`: from [`evaluate`][gradflow.rm_eval.evaluate].

    **Returns:** a string (no trailing newline).
    """
    names = [str(row["model"]) for row in table]
    if len(table) > 6:
        head = ["model", *METRICS]
        body = [[str(row["model"]), *(_fmt(k, float(row[k])) for k in METRICS)] for row in table]
    else:
        head = ["metric", *names]
        body = [[k, *(_fmt(k, float(row[k])) for row in table)] for k in METRICS]
    widths = [max(len(r[j]) for r in [head, *body]) for j in range(len(head))]

    def line(cells: Sequence[str]) -> str:
        first = cells[0].ljust(widths[0])
        return "  ".join([first, *(c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))])

    return "\n".join([line(head), line(["-" * w for w in widths]), *(line(r) for r in body)])


def write_csv(table: Sequence[Mapping[str, str | float]], path: str | Path) -> Path:
    """Write the table as CSV: a header `model, acc, ..., true_reward_rate`, then one row
    per reward model, numbers at full precision. Creates missing parent folders.

    **Arguments:**

    - `table`: from [`evaluate`][gradflow.rm_eval.evaluate].
    - `path`: the CSV file to write.

    **Returns:** the path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO(newline="")
    writer = csv.writer(buf)
    writer.writerow(["model", *METRICS])
    for row in table:
        writer.writerow([row["model"], *(repr(float(row[k])) for k in METRICS)])
    return _results.write_text(path, buf.getvalue())


def summary(data: RewardData) -> str:
    """A one-paragraph description of the loaded data: sizes, where the pairs come from,
    and the normalisation of the policy."""
    n_models = len(data.rewards)
    text = (
        f"{data.source}: {len(data.prompt_ids)} prompts, {data.n_responses} responses, "
        f"{n_models} reward model{'s' if n_models != 1 else ''}; {data.n_pairs} preference pairs"
    )
    if data.pairs_source == "true_reward":
        text += f" formed from true_reward ({data.ties_dropped} tied pairs dropped)"
    else:
        text += f" from {data.pairs_source}"
        if data.pairs_against_true_reward:
            text += (
                f" ({data.pairs_against_true_reward} of them do not prefer the response with "
                "the higher true_reward)"
            )
    return (
        text + ".\npolicy: logprob renormalised over each prompt's listed responses "
        "(log-softmax); prompts weighted uniformly."
    )


def example_path() -> Path:
    """The path of the example records file shipped with the package
    (`experiments/rm-eval-example.jsonl` in the repository; synthetic, made by
    `experiments/make_rm_eval_example.py`)."""
    return Path(str(resources.files("gradflow") / "experiments" / "rm-eval-example.jsonl"))


# ---------------------------------------------------------------------------------------
# Outcomes: which metric predicted what training on each reward model achieved?
# ---------------------------------------------------------------------------------------

OUTCOMES_MODEL_COLUMN = "model"
"""The column of an outcomes file that names the reward model of each row."""

MIN_MODELS = 3
"""The fewest reward models a correlation across reward models is computed from."""

CORRELATION_COLUMNS: tuple[str, ...] = (
    "metric", "outcome",
    "pearson", "pearson_lo", "pearson_hi",
    "spearman", "spearman_lo", "spearman_hi",
    "kendall", "kendall_lo", "kendall_hi",
    "n_models",
)
"""The columns of `correlations.csv`, in order (see
[`correlate_outcomes`][gradflow.rm_eval.correlate_outcomes])."""


@dataclass(frozen=True, eq=False)
class Outcomes:
    """Validated outcomes of training on each reward model, from
    [`load_outcomes`][gradflow.rm_eval.load_outcomes].

    **Fields:**

    - `models`: the reward models, in file order (each once).
    - `columns`: the outcome columns, in file order.
    - `values`: shape `(len(models), len(columns))`, finite floats.
    - `source`: the outcomes file's name.
    """

    models: tuple[str, ...]
    columns: tuple[str, ...]
    values: np.ndarray
    source: str


def _names(names: Sequence[str]) -> str:
    return ", ".join(repr(n) for n in names)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def load_outcomes(path: str | Path) -> Outcomes:
    """Read and validate an outcomes file: one row per reward model, a column `model`
    naming it (as in `rm_eval.csv`) and one or more numeric outcome columns (a win rate, a
    benchmark score, ...). CSV, JSON Lines or Parquet, by extension, as for
    [`load`][gradflow.rm_eval.load].

    Bad input raises a `ValueError` naming the file, and the line (or Parquet row),
    column and model at fault: no `model` column, no outcome column, a column without a
    name, a missing or non-numeric or non-finite value, a model listed twice, a row for
    the reference `true_reward`, fewer than 3 reward models.

    **Arguments:**

    - `path`: the outcomes file.

    **Returns:** an [`Outcomes`][gradflow.rm_eval.Outcomes].
    """
    header, rows, source = _read(path)
    key = OUTCOMES_MODEL_COLUMN
    for j, name in enumerate(header):
        if not str(name).strip():
            raise ValueError(f"{source}: column {j + 1} of the header has no name; name every column.")
    if key not in header:
        found = _names(header) or "none"
        raise ValueError(
            f"{source}: no column '{key}'; an outcomes file needs a column '{key}' naming the "
            f"reward model of each row (as in rm_eval.csv) and one or more numeric outcome "
            f"columns (found: {found})."
        )
    columns = [c for c in header if c != key]
    if not columns:
        raise ValueError(
            f"{source}: no outcome column; besides '{key}', give one numeric column per "
            "outcome (a win rate, a benchmark score, ...)."
        )
    models: list[str] = []
    values: list[list[float]] = []
    first: dict[str, str] = {}
    for loc, row in rows:
        _check_row_keys(loc, row, header, header)
        model = _ident(loc, key, row[key])
        if model in first:
            raise ValueError(
                f"{loc}, column '{key}': the model {model!r} has a second row (the first at "
                f"{first[model]}); give one row per reward model."
            )
        if model == TRUE_REWARD_ROW:
            raise ValueError(
                f"{loc}, column '{key}': {TRUE_REWARD_ROW!r} is the reference row of "
                "rm_eval.csv (the ground truth scored as a reward model), not a reward model; "
                "its metrics are perfect by construction, so it is left out of the "
                "correlations. Remove this row."
            )
        first[model] = loc
        values.append([_number(f"{loc} (model {model!r})", c, row[c]) for c in columns])
        models.append(model)
    if len(models) < MIN_MODELS:
        raise ValueError(
            f"{source}: {_plural(len(models), 'reward model')} ({_names(models)}); a "
            f"correlation across reward models needs at least {MIN_MODELS}."
        )
    return Outcomes(models=tuple(models), columns=tuple(columns),
                    values=np.asarray(values, dtype=np.float64), source=source)


def _matched(outcomes: Outcomes, models: Sequence[str], where: str) -> np.ndarray:
    """The outcomes of `models`, in that order, shape `(len(models), outcomes)`; refuses
    a model on one side only, and fewer than `MIN_MODELS` models."""
    unknown = [m for m in outcomes.models if m not in models]
    if unknown:
        raise ValueError(
            f"{outcomes.source}, column '{OUTCOMES_MODEL_COLUMN}': "
            f"{_plural(len(unknown), 'model')} not among the reward models evaluated from "
            f"{where}: {_names(unknown)} (evaluated: {_names(models) or 'none'})."
        )
    missing = [m for m in models if m not in outcomes.models]
    if missing:
        raise ValueError(
            f"{outcomes.source}: no row for {_plural(len(missing), 'reward model')} of "
            f"{where}: {_names(missing)}; give every evaluated reward model its outcomes, or "
            "evaluate only the models of the outcomes file (--models, or reward_models=)."
        )
    if len(models) < MIN_MODELS:
        raise ValueError(
            f"{outcomes.source}: {_plural(len(models), 'reward model')} in common with "
            f"{where} ({_names(models)}); a correlation across reward models needs at least "
            f"{MIN_MODELS}."
        )
    return outcomes.values[[outcomes.models.index(m) for m in models]]


def _reward_model_rows(table: Sequence[Mapping[str, str | float]]) -> list[Mapping[str, str | float]]:
    return [row for row in table if str(row["model"]) != TRUE_REWARD_ROW]


def correlate_outcomes(
    table: Sequence[Mapping[str, str | float]],
    outcomes: str | Path | Outcomes,
    *,
    confidence: float = 0.95,
    resamples: int = 9999,
    seed: int = 0,
) -> list[dict[str, str | float | int]]:
    """Correlate every metric of `table` with every outcome, across the reward models:
    Pearson's `r`, Spearman's `rho` and Kendall's tau-b with paired percentile-bootstrap
    intervals (resampling reward models), computed by `gradflow._analysis.stats.correlate` with
    `scipy.stats`.

    The reference row `true_reward` of the table is left out. The reward models of the
    table and of the outcomes file must be the same (in any order), at least 3 of them.
    Every (metric, outcome) uses the same seed, hence the same resamples of the models.
    Resamples in which every drawn model has the same metric value (or the same outcome)
    have no correlation and are left out of the intervals; a metric that is the same for
    every model has no correlation at all: its estimates and bounds are `nan`.

    **Arguments:**

    - `table`: from [`evaluate`][gradflow.rm_eval.evaluate] (or rows read back from
      `rm_eval.csv`, with float values).
    - `outcomes`: an outcomes file (see [`load_outcomes`][gradflow.rm_eval.load_outcomes])
      or an [`Outcomes`][gradflow.rm_eval.Outcomes].
    - `confidence`: the level of the two-sided intervals.
    - `resamples`: the number of bootstrap resamples.
    - `seed`: the seed of the resampling (the same seed gives the same bits).

    **Returns:** one dict per (metric, outcome), metrics in the order of
    [`METRICS`][gradflow.rm_eval.METRICS] and outcomes in file order within each metric,
    with the keys of [`CORRELATION_COLUMNS`][gradflow.rm_eval.CORRELATION_COLUMNS]
    (`n_models` is the number of reward models) and `degenerate` (how many resamples
    were left out).
    """
    if not isinstance(outcomes, Outcomes):
        outcomes = load_outcomes(outcomes)
    rows = _reward_model_rows(table)
    models = [str(row["model"]) for row in rows]
    y = _matched(outcomes, models, "the table")
    out: list[dict[str, str | float | int]] = []
    for metric in METRICS:
        x = np.asarray([float(row[metric]) for row in rows])
        for j, name in enumerate(outcomes.columns):
            if np.all(np.isfinite(x)):
                c = _stats.correlate(x, y[:, j], confidence=confidence, resamples=resamples, seed=seed)
            else:  # a metric undefined for some model (cannot happen with evaluate's table)
                c = {"n": len(models), "degenerate": resamples,
                     **{f"{s}{e}": math.nan for s in _stats.STATISTICS for e in ("", "_lo", "_hi")}}
            out.append({"metric": metric, "outcome": name,
                        **{k: c[k] for k in CORRELATION_COLUMNS[2:-1]},
                        "n_models": int(c["n"]), "degenerate": int(c["degenerate"])})
    return out


def _signed(x: float) -> str:
    return "nan" if math.isnan(x) else f"{x:+.2f}"


def format_correlations(
    rows: Sequence[Mapping[str, str | float | int]],
    *,
    confidence: float = 0.95,
    resamples: int = 9999,
) -> str:
    """The correlations as aligned text: one block per outcome, one line per metric, each
    correlation with its interval `[lo, hi]`; notes on left-out resamples and undefined
    correlations follow when there are any.

    **Arguments:**

    - `rows`: from [`correlate_outcomes`][gradflow.rm_eval.correlate_outcomes].
    - `confidence`, `resamples`: those the rows were computed with (for the header).

    **Returns:** a string (no trailing newline).
    """
    if not rows:
        return "no correlations."
    level = f"{100 * confidence:g}%"
    outcomes = list(dict.fromkeys(str(r["outcome"]) for r in rows))
    n = int(rows[0]["n_models"])
    lines = [textwrap.fill(f"Correlation of each metric with each outcome across {n} reward models "
                           f"({level} percentile-bootstrap intervals, {resamples} resamples of the "
                           "models):", width=100)]
    for outcome in outcomes:
        block = [r for r in rows if r["outcome"] == outcome]
        head = [f"outcome {outcome}", *(f"{s} [{level} CI]" for s in _stats.STATISTICS)]
        body = [[str(r["metric"]), *(f"{_signed(float(r[s]))} [{_signed(float(r[s + '_lo']))}, "
                                     f"{_signed(float(r[s + '_hi']))}]" for s in _stats.STATISTICS)]
                for r in block]
        widths = [max(len(line[j]) for line in [head, *body]) for j in range(len(head))]

        def line(cells: Sequence[str], widths: list[int] = widths) -> str:
            return "  ".join([cells[0].ljust(widths[0]),
                              *(c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))])

        lines += ["", line(head), line(["-" * w for w in widths]), *(line(b) for b in body)]
    notes = []
    # Rows without a correlation leave out every resample; they have their own note.
    left_out = max((int(r.get("degenerate", 0)) for r in rows if not math.isnan(float(r["pearson"]))),
                   default=0)
    if left_out:
        notes.append(f"Resamples in which every drawn model has the same metric value or the same "
                     f"outcome have no correlation; they are left out of the intervals (up to "
                     f"{left_out} of {resamples} here).")
    if any(math.isnan(float(r["pearson"])) for r in rows):
        notes.append("nan: the metric or the outcome is the same for every reward model, so the "
                     "correlation is undefined.")
    if n < 8:
        notes.append(f"With only {n} reward models the intervals say little: a resample holds at "
                     f"most {n} distinct models, so many resampled correlations are +1 or -1, and "
                     "where the ranks agree perfectly every resample agrees perfectly too (an "
                     "interval of width 0 is no certainty). Read them as an illustration, not as "
                     "evidence.")
    return "\n".join(lines + ([""] + [textwrap.fill(t, width=100) for t in notes] if notes else []))


def write_correlations_csv(rows: Sequence[Mapping[str, str | float | int]], path: str | Path) -> Path:
    """Write the correlations as CSV with exactly the columns
    [`CORRELATION_COLUMNS`][gradflow.rm_eval.CORRELATION_COLUMNS], one row per (metric,
    outcome), numbers at full precision (`nan` where undefined). Creates missing parent
    folders; the file is written atomically.

    **Arguments:**

    - `rows`: from [`correlate_outcomes`][gradflow.rm_eval.correlate_outcomes].
    - `path`: the CSV file to write.

    **Returns:** the path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO(newline="")
    writer = csv.writer(buf)
    writer.writerow(CORRELATION_COLUMNS)
    for row in rows:
        writer.writerow([row["metric"], row["outcome"],
                         *(repr(float(row[k])) for k in CORRELATION_COLUMNS[2:-1]),
                         int(row["n_models"])])
    return _results.write_text(path, buf.getvalue())


_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p")


def plot_correlations(
    table: Sequence[Mapping[str, str | float]],
    outcomes: str | Path | Outcomes,
    rows: Sequence[Mapping[str, str | float | int]],
):
    """The scatter grid of metrics against outcomes: one row of panels per outcome, one
    column per metric; in each panel one point per reward model (metric on x, outcome on
    y, the same colour and marker for a model everywhere, named in the legend below the
    panels) and the Spearman correlation in the title. Drawn with matplotlib's Agg
    canvas (no display needed).

    **Arguments:**

    - `table`: from [`evaluate`][gradflow.rm_eval.evaluate].
    - `outcomes`: the outcomes file or [`Outcomes`][gradflow.rm_eval.Outcomes].
    - `rows`: from [`correlate_outcomes`][gradflow.rm_eval.correlate_outcomes] (for the
      titles).

    **Returns:** a `matplotlib.figure.Figure`.
    """
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    if not isinstance(outcomes, Outcomes):
        outcomes = load_outcomes(outcomes)
    models_rows = _reward_model_rows(table)
    models = [str(row["model"]) for row in models_rows]
    y = _matched(outcomes, models, "the table")
    rho = {(str(r["metric"]), str(r["outcome"])): float(r["spearman"]) for r in rows}
    n_out, n_met = len(outcomes.columns), len(METRICS)
    fig = Figure(figsize=(2.4 * n_met, 2.3 * n_out + 1.2), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(n_out, n_met, squeeze=False, sharey="row")
    cmap = colormaps["tab10" if len(models) <= 10 else "tab20"]
    handles = []
    for i, outcome in enumerate(outcomes.columns):
        for j, metric in enumerate(METRICS):
            ax = axes[i, j]
            x = [float(row[metric]) for row in models_rows]
            for k, model in enumerate(models):
                h = ax.scatter([x[k]], [y[k, i]], s=36, color=cmap(k % cmap.N),
                               marker=_MARKERS[k % len(_MARKERS)], label=model, zorder=3)
                if i == 0 and j == 0:
                    handles.append(h)
            value = rho.get((metric, outcome), math.nan)
            ax.set_title("Spearman undefined" if math.isnan(value) else f"Spearman {value:+.2f}",
                         fontsize=9)
            ax.set_xlabel(metric, fontsize=9)
            if j == 0:
                ax.set_ylabel(outcome, fontsize=9)
            ax.xaxis.set_major_locator(MaxNLocator(nbins=3))
            ax.ticklabel_format(axis="both", useOffset=False)
            ax.tick_params(labelsize=8)
            ax.margins(0.12)
            ax.grid(alpha=0.3)
    fig.suptitle(f"Reward-model metrics (x) against outcomes (y) across {len(models)} reward "
                 f"models; outcomes from {outcomes.source}", fontsize=11)
    fig.legend(handles, models, loc="outside lower center", ncols=min(len(models), 7),
               fontsize=9, frameon=False)
    return fig


def outcomes_example_path() -> Path:
    """The path of the example outcomes file shipped with the package
    (`experiments/rm-eval-outcomes-example.csv` in the repository): made-up outcomes for
    the three reward models of [`example_path`][gradflow.rm_eval.example_path], to show
    the format. **Synthetic**: the numbers were written by hand, nothing was trained."""
    return Path(str(resources.files("gradflow") / "experiments" / "rm-eval-outcomes-example.csv"))


def run(file: str | Path, out: str | Path, *, pairs: str | Path | None = None,
        reward_models: Sequence[str] | None = None,
        outcomes: str | Path | Outcomes | None = None) -> dict:
    """What `gradflow rm-eval` does: load and evaluate `file`, print the summary and the
    table, write `out/rm_eval.csv`; with `outcomes`, also correlate every metric with
    every outcome ([`correlate_outcomes`][gradflow.rm_eval.correlate_outcomes], default
    settings: 95% intervals, 9999 resamples, seed 0), print the correlations and write
    `out/correlations.csv` and `out/correlations.png`.

    The outcomes file, and its models against those evaluated, are checked before the
    evaluation: a bad outcomes file raises a `ValueError` before any file is written.

    **Arguments:**

    - `file`, `pairs`, `reward_models`: as for [`load`][gradflow.rm_eval.load].
    - `out`: the folder to write into.
    - `outcomes`: an outcomes file (see [`load_outcomes`][gradflow.rm_eval.load_outcomes])
      or an [`Outcomes`][gradflow.rm_eval.Outcomes]; its models must be exactly the
      evaluated reward models (the reference `true_reward` row aside).

    **Returns:** `{"summary": text, "table": rows, "csv": path}`, with `outcomes` also
    `"correlations": rows, "correlations_csv": path, "correlations_png": path`.
    """
    if outcomes is not None and not isinstance(outcomes, Outcomes):
        outcomes = load_outcomes(outcomes)
    data = load(file, pairs, reward_models=reward_models)
    if outcomes is not None:
        _matched(outcomes, list(data.rewards), data.source)
    table = evaluate(data)
    text = summary(data)
    print(text)
    print()
    print(format_table(table))
    print()
    path = write_csv(table, Path(out) / "rm_eval.csv")
    print(f"wrote {path}")
    result: dict = {"summary": text, "table": table, "csv": path}
    if outcomes is None:
        return result
    rows = correlate_outcomes(table, outcomes)
    print()
    print(format_correlations(rows))
    print()
    csv_path = write_correlations_csv(rows, Path(out) / "correlations.csv")
    print(f"wrote {csv_path}")
    png = _results.save_figure(plot_correlations(table, outcomes, rows), Path(out) / "correlations.png")
    print(f"wrote {png}")
    result.update(correlations=rows, correlations_csv=csv_path, correlations_png=png)
    return result
