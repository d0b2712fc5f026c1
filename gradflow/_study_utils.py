"""Shared pieces of the studies: the `Study` record, text tables, CSV output, and the
initial policies of the stalling problem."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optax

from . import _config as C
from ._results import write_csv as write_csv


@dataclass(frozen=True)
class Study:
    """A registered study: its `name`, one-line `summary`, config `schema`, `run(config, out,
    quick) -> dict`, and `plot(out) -> list[Path]`, which redraws its figures from the data
    saved in its result folder (what `gradflow plot DIR` calls)."""

    name: str
    summary: str
    schema: dict[str, dict[str, C.Field]]
    run: Callable[[dict, Path, bool], dict]
    plot: Callable[[Path], list[Path]] | None = None


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


METHOD_NAMES = ("sgd", "flow", "reinforce", "rloo", "grpo", "ppo")


def make_method(
    name: str,
    *,
    learning_rate: float = 0.1,
    steps: int = 50000,
    samples: int = 4,
    reinforce_baseline: str = "none",
    grpo_normalize_std: bool = True,
    ppo_epochs: int = 4,
    ppo_clip: float = 0.2,
):
    """The method a config calls `name` (`sgd` is exact-gradient SGD, `flow` the
    adaptive gradient flow; the others are the sampled estimators, with SGD)."""
    from ._dynamics import GradientAscent, GradientFlow
    from ._estimators import GRPO, PPO, RLOO, Reinforce

    opt = optax.sgd(learning_rate)
    builders = {
        "sgd": lambda: GradientAscent(opt, steps),
        "flow": lambda: GradientFlow(),
        "reinforce": lambda: Reinforce(opt, steps, samples=samples, baseline=reinforce_baseline),
        "rloo": lambda: RLOO(opt, steps, samples=samples),
        "grpo": lambda: GRPO(opt, steps, samples=samples, normalize_std=grpo_normalize_std),
        "ppo": lambda: PPO(opt, steps, samples=samples, epochs=ppo_epochs, clip=ppo_clip),
    }
    if name not in builders:
        raise ValueError(f"unknown method {name!r}; expected one of {list(builders)}.")
    return builders[name]()
