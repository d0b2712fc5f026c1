"""What several studies share: text tables and summaries, the initial policy of the
stalling problem, the colours of the error labels, and the table of the seed studies
(`reinforce-seeds`, `estimators`)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .._util.results import write_csv as write_csv

# ---------------------------------------------------------------------------- text


def fmt(x: float, unit: str = "") -> str:
    if math.isnan(x):
        return "n/a"
    if math.isinf(x):
        return "never"
    return f"{x:.0f}{unit}" if abs(x) >= 1000 else f"{x:.4g}{unit}"


WIDTH = 100
"""The widest line a study prints (tables are split, prose wrapped to it)."""


def table(rows: list[dict], columns: list[tuple[str, str]], *, keys: int = 1, width: int = WIDTH) -> str:
    """Fixed-width text table; `columns` are `(key, header)`, and a header may span several
    lines (`"time to\\n0.9"`). A table wider than `width` is split into blocks stacked one
    under the other (a blank line between), each repeating the first `keys` columns (those
    that identify a row)."""
    heads = [header.split("\n") for _, header in columns]
    body = [[str(r[k]) for k, _ in columns] for r in rows]
    widths = [max([len(h) for h in head] + [len(row[i]) for row in body]) for i, head in enumerate(heads)]
    keys = max(0, min(keys, len(columns) - 1))

    def span(idx: list[int]) -> int:
        return sum(widths[i] for i in idx) + 2 * (len(idx) - 1)

    blocks, block = [], list(range(keys))
    for i in range(keys, len(columns)):
        if len(block) > keys and span([*block, i]) > width:
            blocks.append(block)
            block = list(range(keys))
        block.append(i)
    blocks.append(block)

    def render(idx: list[int]) -> str:
        depth = max(len(heads[i]) for i in idx)
        lines = [
            "  ".join((([""] * (depth - len(heads[i])) + heads[i])[d]).rjust(widths[i]) for i in idx)
            for d in range(depth)
        ]
        lines.append("  ".join("-" * widths[i] for i in idx))
        lines += ["  ".join(row[i].rjust(widths[i]) for i in idx) for row in body]
        return "\n".join(line.rstrip() for line in lines)

    return "\n\n".join(render(b) for b in blocks)


def wrap(text: str, width: int = WIDTH) -> str:
    """`text` with every line wrapped to `width` columns; continuation lines take the line's own
    indent plus two spaces. Words (numbers, paths) are never broken, nor short bracketed groups
    such as a confidence interval `[+0.12, +0.34]` or a short list."""
    import re
    import textwrap

    def glue(m: re.Match) -> str:
        return m.group(0).replace(" ", "\0") if len(m.group(0)) <= 40 else m.group(0)

    out = []
    for line in text.split("\n"):
        if len(line) <= width:
            out.append(line)
            continue
        indent = line[: len(line) - len(line.lstrip(" "))]
        body = re.sub(r"\[[^\[\]]*\]", glue, line.strip())
        out.append(textwrap.fill(body, width, initial_indent=indent, subsequent_indent=indent + "  ",
                                 break_long_words=False, break_on_hyphens=False).replace("\0", " "))
    return "\n".join(out)


def say(text: str = "") -> None:
    """Print `text` wrapped to the study width (see `wrap`)."""
    print(wrap(text))


def list_files(out: Path, names: list) -> None:
    """Print where the results are and the files written there (`names`: names or paths)."""
    folder = f"{Path(out).resolve()}/"
    if len(f"Results in {folder}:") <= WIDTH:
        print(f"Results in {folder}:")
    else:
        print(f"Results in\n  {folder}")
    for name in names:
        print(f"  {name.name if isinstance(name, Path) else name}")


# ------------------------------------------------------------------ stalling problem


def stalling_probs(p_best: float, p_mediocre: float, n_outputs: int) -> np.ndarray:
    """Initial policy of the stalling problem: y* (index 0) gets `p_best`, y_med
    (index 1) `p_mediocre`, the other outputs share the rest equally."""
    rest = 1.0 - p_best - p_mediocre
    if not rest > 0:
        raise ValueError(
            f"config: `problem.p_best` ({p_best}) + `problem.p_mediocre` ({p_mediocre}) must be "
            "below 1, leaving mass for the other outputs."
        )
    return np.array([p_best, p_mediocre] + [rest / (n_outputs - 2)] * (n_outputs - 2))


def check_rewards(true_reward, proxy_reward) -> None:
    """The true and proxy reward of the stalling problem have the same length, at least 3."""
    if len(proxy_reward) != len(true_reward) or len(true_reward) < 3:
        raise ValueError(
            "config: `problem.true_reward` and `problem.proxy_reward` must have the same length "
            f"(at least 3 outputs); got {len(true_reward)} and {len(proxy_reward)}."
        )


def check_stalling_problem(problem) -> None:
    """A `[problem]` section of the stalling problem (`true_reward`, `proxy_reward`,
    `p_mediocre` and one `p_best` or several): the rewards as in `check_rewards`, and
    every initial policy as in `stalling_probs`."""
    check_rewards(problem.true_reward, problem.proxy_reward)
    p_best = problem.p_best if isinstance(problem.p_best, tuple) else (problem.p_best,)
    for p in p_best:
        stalling_probs(p, problem.p_mediocre, len(problem.true_reward))


def check_initial_probs(initial_probs, true_reward) -> None:
    """A `[problem]` section's `initial_probs` sum to 1 and have one entry per output of
    `true_reward` (at least 3)."""
    probs, n = np.array(initial_probs), len(initial_probs)
    if abs(probs.sum() - 1) > 1e-6 or len(true_reward) != n or n < 3:
        raise ValueError(
            "config: `problem.initial_probs` must sum to 1 and match `problem.true_reward` in length "
            f"(at least 3 outputs); got {probs.tolist()} and {len(true_reward)} rewards."
        )


# --------------------------------------------------------------------- error labels

LABEL_COLORS = {"harmful": "#d62728", "benign": "#bdbdbd", "beneficial": "#2ca02c", "failed": "black"}
"""The colour of each label of an error (and of a failed run) in the studies' figures."""


def label_code(labels: np.ndarray) -> np.ndarray:
    """The index of each label in `LABEL_COLORS` (what a figure's colour map takes)."""
    order = list(LABEL_COLORS)
    return np.vectorize(order.index)(labels)


# ------------------------------------------------------------------- seed studies

SEED_COLUMNS_NOTE = ("Steps to each true-reward target: `exact` is exact-gradient SGD; `median`, `10-90%` (the "
                     "10% and 90% quantiles) and `reached` (the fraction of seeds that get there) are over the "
                     "seeds.")


def seed_row(summary, exact, targets) -> dict:
    """One row of a seed study's table: the exact run's times to `targets`, the seed
    summary's columns (`gradflow.SeedSummary.row`), the half-width of the final true
    reward's 95% interval and the exact run's final true reward."""
    from .._analysis.curves import time_to_reward

    row: dict = {}
    for t in targets:
        row[f"exact_time_to_{t:g}"] = float(time_to_reward(exact, t))
    row.update(summary.row())
    half = float(summary.upper[-1] - summary.mean[-1])
    row.update(final_ci_halfwidth=half, exact_final=float(exact.final_true_reward))
    return row


def seed_shown(rows: list[dict], targets) -> list[dict]:
    """The rows of `seed_row` as printed."""
    out = []
    for r in rows:
        s = dict(r)
        for t in targets:
            s[f"exact_{t:g}"] = fmt(r[f"exact_time_to_{t:g}"])
            s[f"median_{t:g}"] = fmt(r[f"time_to_{t:g}_q0.5"])
            s[f"range_{t:g}"] = f"{fmt(r[f'time_to_{t:g}_q0.1'])}-{fmt(r[f'time_to_{t:g}_q0.9'])}"
            s[f"reached_{t:g}"] = f"{r[f'reached_{t:g}']:.1%}"
        s["stalled"] = f"{r['stalled']:.1%}"
        s["stall_duration_median"] = fmt(r["stall_duration_median"])
        s["final"] = f"{r['final_mean']:.3f} +- {r['final_ci_halfwidth']:.3f} (exact {r['exact_final']:.3f})"
        out.append(s)
    return out


def seed_columns(first: list[tuple[str, str]], targets) -> list[tuple[str, str]]:
    """The printed columns of a seed study's table, after the identifying `first` ones."""
    cols = list(first)
    for t in targets:
        cols += [(f"exact_{t:g}", f"to {t:g}\nexact"), (f"median_{t:g}", f"to {t:g}\nmedian"),
                 (f"range_{t:g}", f"to {t:g}\n10-90%"), (f"reached_{t:g}", f"to {t:g}\nreached")]
    return cols + [("stalled", "stalled"), ("stall_duration_median", "stall length\n(median)"),
                   ("final", "final true reward\n(mean, 95% CI)")]


def seed_solver(method, r_true, targets, every):
    """A jitted `(logits, reward, keys) -> batched Solution`: `method` from the tabular
    policy `logits`, once per key (vmapped; one compile per study), recording every `every`
    steps, tracking `targets` and the stall below the lowest one."""
    import jax

    from .._engine.solve import SaveAt, solve
    from .._engine.tracking import StallCriteria
    from ..policies import TabularSoftmax

    @jax.jit
    def run(logits, reward, keys):
        def one(key):
            return solve(TabularSoftmax(logits), reward=reward, true_reward=r_true, method=method, key=key,
                         saveat=SaveAt(every=every), targets=targets, stall=StallCriteria(target=min(targets)))

        return jax.vmap(one)(keys)

    return run


def exact_solver(lr: float, steps: int, r_true, targets, every):
    """A jitted `(logits, reward) -> Solution`: exact-gradient SGD (`lr`, `steps`), the
    reference of the seed studies, recorded and tracked as in `seed_solver`."""
    import jax

    from .._engine.names import make_method
    from .._engine.solve import SaveAt, solve
    from .._engine.tracking import StallCriteria
    from ..policies import TabularSoftmax

    method = make_method("sgd", learning_rate=lr, steps=steps)

    @jax.jit
    def run(logits, reward):
        return solve(TabularSoftmax(logits), reward=reward, true_reward=r_true, method=method,
                     saveat=SaveAt(every=every), targets=targets, stall=StallCriteria(target=min(targets)))

    return run


def report_summary(out: Path, rows, shown, columns, figures, elapsed, runs, keys: int = 1, notes=()) -> None:
    """Write `rows` to `summary.csv`, print them (`shown`, `columns`: see `table`) with the
    `notes`, how many runs took how long, and list the files."""
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "summary.csv", rows)
    print(table(shown, columns, keys=keys))
    for note in notes:
        say(note)
    print(f"Solved {runs} runs in {elapsed:.1f} s (compilation included).")
    list_files(out, [out / "summary.csv", *figures])
