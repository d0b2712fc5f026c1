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


def table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """Fixed-width text table; `columns` are `(key, header)`."""
    cells = [[header for _, header in columns]] + [[str(r[k]) for k, _ in columns] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(columns))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)



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
