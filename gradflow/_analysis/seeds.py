"""Summaries of many seeds of one sampled run: `gradflow.summarize_seeds`.

Run the seeds with `jax.vmap` over a batch of keys (one compiled call), then summarise
the batched [`gradflow.Solution`][] here. Seeds whose run failed (diverged) are excluded
from every statistic and counted in `excluded`.
"""

from __future__ import annotations

from collections.abc import Sequence

import equinox as eqx
import jax
import numpy as np
from jax.scipy.stats import norm

from .._engine.solve import Solution
from .._engine.status import Status
from .curves import time_to_reward


class SeedSummary(eqx.Module):
    """Statistics of the expected true reward across seeds (NumPy arrays).

    **Fields:**

    - `time`: the recorded steps (or flow times), shape `(saves,)`.
    - `mean`: the seed-mean of the expected true reward at each recorded time.
    - `lower`, `upper`: the `level` confidence band of that mean (normal approximation,
      `mean +- z sd / sqrt(n)`).
    - `spread_lower`, `spread_upper`: the `spread` quantiles across seeds (where single
      seeds lie, as opposed to where their mean lies).
    - `targets`, `time_quantiles` (shape `(targets, len(quantiles))`), `quantiles`: the
      quantiles of the time-to-reward distribution; a seed that never reaches the target
      counts as `+inf`, so e.g. the median is `inf` when fewer than half get there.
    - `times`: the time-to-reward of every summarised seed, shape `(targets, seeds)`
      (`inf`: not reached).
    - `reached`: per target, the fraction of seeds that reach it.
    - `stalled`: the fraction of seeds with a stall (`sol.stall`); `stall_duration` and
      `stall_level` are the medians over the stalled seeds (`nan` if none stalled).
    - `seeds`: seeds summarised; `excluded`: seeds left out because their run failed.
    - `level`: the confidence level of `lower`/`upper`.
    """

    time: np.ndarray
    mean: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    spread_lower: np.ndarray
    spread_upper: np.ndarray
    time_quantiles: np.ndarray
    times: np.ndarray
    reached: np.ndarray
    stalled: float
    stall_duration: float
    stall_level: float
    seeds: int
    excluded: int
    targets: tuple[float, ...] = eqx.field(static=True)
    quantiles: tuple[float, ...] = eqx.field(static=True)
    level: float = eqx.field(static=True)

    def median_time(self, target: float) -> float:
        """The median time-to-reward for one of `targets` (`inf` if most never get there)."""
        return float(self.time_quantiles[self.targets.index(float(target)), self.quantiles.index(0.5)])

    def row(self) -> dict[str, float]:
        """A flat `{column: value}` record for tables: per target the time quantiles and
        the fraction reached, then the stall statistics and the seed counts."""
        out: dict[str, float] = {}
        for i, t in enumerate(self.targets):
            for j, q in enumerate(self.quantiles):
                out[f"time_to_{t:g}_q{q:g}"] = float(self.time_quantiles[i, j])
            out[f"reached_{t:g}"] = float(self.reached[i])
        out.update(
            stalled=self.stalled,
            stall_duration_median=self.stall_duration,
            stall_level_median=self.stall_level,
            final_mean=float(self.mean[-1]),
            seeds=self.seeds,
            excluded=self.excluded,
        )
        return out


def summarize_seeds(
    sols: Solution,
    targets: Sequence[float] | None = None,
    *,
    level: float = 0.95,
    quantiles: Sequence[float] = (0.1, 0.5, 0.9),
    spread: tuple[float, float] = (0.1, 0.9),
) -> SeedSummary:
    """Summarise a batch of runs that differ only in their seed.

    **Arguments:**

    - `sols`: a [`gradflow.Solution`][] with a leading seed axis, e.g.
      `jax.vmap(lambda k: gf.solve(..., key=k))(jax.random.split(key, 1000))`.
    - `targets`: true-reward levels for the time-to-reward statistics; default: the
      targets tracked online by the solve (`sols.targets`).
    - `level`: confidence level of the band around the mean, in `(0, 1)`.
    - `quantiles`: quantiles of the time-to-reward distribution to report (must include
      0.5 for `median_time`).
    - `spread`: lower and upper quantiles of the per-seed true reward.

    **Returns:** a [`gradflow.SeedSummary`][].
    """
    if sols.true_reward.ndim != 2:
        raise ValueError(
            "`sols` must be a batch of runs with a leading seed axis (true_reward of shape "
            f"(seeds, saves)); got true_reward of shape {tuple(sols.true_reward.shape)}."
        )
    if not 0 < level < 1:
        raise ValueError(f"`level` must lie in (0, 1); got {level}.")
    for name, qs in (("quantiles", quantiles), ("spread", spread)):
        if not all(0 <= q <= 1 for q in qs):
            raise ValueError(f"`{name}` must lie in [0, 1]; got {tuple(qs)}.")
    targets = tuple(float(t) for t in (sols.targets if targets is None else targets))

    ok = np.asarray(sols.status == Status.ok)
    n = int(ok.sum())
    if n == 0:
        raise ValueError(f"summarize_seeds: every one of the {ok.size} runs failed; nothing to summarise.")
    values = np.asarray(sols.true_reward, dtype=float)[ok]
    mean = values.mean(axis=0)
    se = values.std(axis=0, ddof=1) / np.sqrt(n) if n > 1 else np.full_like(mean, np.nan)
    z = float(norm.ppf(0.5 + level / 2))
    time = np.asarray(sols.ts if sols.ts is not None else sols.steps, dtype=float)[0]  # batched: no .time

    times = np.stack(
        [np.asarray(jax.vmap(lambda s, t=t: time_to_reward(s, t))(sols), dtype=float)[ok] for t in targets]
    ).reshape(len(targets), n)
    # "inverted_cdf" returns actual seed values: no interpolation between a finite time and inf.
    tq = np.quantile(times, list(quantiles), axis=1, method="inverted_cdf").T if targets else np.zeros((0, len(quantiles)))
    durations = np.asarray(sols.stall.duration, dtype=float)[ok]
    has_stall = np.isfinite(durations) & (durations > 0)
    levels = np.asarray(sols.stall.level, dtype=float)[ok]
    return SeedSummary(
        time=time,
        mean=mean,
        lower=mean - z * se,
        upper=mean + z * se,
        spread_lower=np.quantile(values, spread[0], axis=0),
        spread_upper=np.quantile(values, spread[1], axis=0),
        time_quantiles=tq,
        times=times,
        reached=np.isfinite(times).mean(axis=1),
        stalled=float(has_stall.mean()),
        stall_duration=float(np.median(durations[has_stall])) if has_stall.any() else float("nan"),
        stall_level=float(np.median(levels[has_stall])) if has_stall.any() else float("nan"),
        seeds=n,
        excluded=int(ok.size - n),
        targets=targets,
        quantiles=tuple(float(q) for q in quantiles),
        level=float(level),
    )
