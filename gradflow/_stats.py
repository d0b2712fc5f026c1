"""Statistics: correlations between two variables with bootstrap confidence intervals.

The one module of statistics of `gradflow rm-eval --outcomes`. The point estimates are
`scipy.stats.pearsonr`, `scipy.stats.spearmanr` and `scipy.stats.kendalltau` (tau-b); the
intervals are `scipy.stats.bootstrap` with `paired=True` (the pairs `(x_i, y_i)` are
resampled together) and the *percentile* method, from `numpy.random.default_rng(seed)`, so
the same inputs and seed give the same bits.

**Why the percentile method, not BCa.** BCa corrects the percentile interval with an
acceleration estimated by the jackknife. With a handful of observations (a dozen reward
models) the jackknife is often degenerate: for a perfect rank correlation every
leave-one-out statistic is the same, the acceleration is `0/0`, and BCa gives no interval
at all. The percentile interval is always defined, stays inside `[-1, 1]`, and is unchanged
by monotone transformations of the statistic (such as Fisher's `z`).

**Degenerate resamples.** A resample that draws only observations with one value of `x`
(or of `y`) has no defined correlation (`nan`; scipy would warn with
`ConstantInputWarning`, and `bootstrap` with `DegenerateDataWarning` then returns `nan`
bounds). Such resamples are left out: the bounds are the percentiles of the statistic over
the resamples on which it is defined, and [`correlate`][gradflow._stats.correlate] reports
how many were left out. With `n` distinct values this happens to a fraction `n^(1-n)` of
the resamples (1/9 for 3 observations, under 0.2% for 5, nothing measurable from 8 on).
When the statistic is undefined on the data itself (`x` or `y` constant), the estimate and
both bounds are `nan`. Both warnings are suppressed deliberately, for exactly these cases;
scipy's other warnings (such as `NearConstantInputWarning`, a loss of precision) are not.

Every resample is scored with a vectorised statistic (one NumPy expression for all the
resamples) that equals scipy's function on each of them: Pearson's `r` of the resample,
Spearman's `rho` as Pearson's `r` of the average ranks (`scipy.stats.rankdata`, ties
averaged, as `spearmanr`), Kendall's tau-b by counting pairs, `(P - Q) /
sqrt((n0 - n1)(n0 - n2))` (as `kendalltau`, where copies of one observation are tied
pairs).
"""

from __future__ import annotations

import inspect
import math
import numbers
import warnings
from collections.abc import Callable

import numpy as np
import scipy.stats

__all__ = ["STATISTICS", "correlate"]

STATISTICS: tuple[str, ...] = ("pearson", "spearman", "kendall")
"""The correlations [`correlate`][gradflow._stats.correlate] computes, in order."""

#: The number of `(resample, pair)` entries the vectorised Kendall statistic holds at once.
_KENDALL_BLOCK = 1 << 22

# scipy >= 1.15 takes the generator as `rng`; before, as `random_state` (the same draws).
_RNG_KEYWORD = "rng" if "rng" in inspect.signature(scipy.stats.bootstrap).parameters else "random_state"

_QUIET = (scipy.stats.ConstantInputWarning, scipy.stats.DegenerateDataWarning)


# ---------------------------------------------------------------------------------------
# The statistics, on the last axis of arrays of shape (..., n).
# ---------------------------------------------------------------------------------------


def _constant(a: np.ndarray) -> np.ndarray:
    """True where every value along the last axis equals the first (exactly, as scipy
    tests it)."""
    return np.all(a == a[..., :1], axis=-1)


def _pearson_last(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    undefined = _constant(x) | _constant(y)
    xm = x - x.mean(axis=-1, keepdims=True)
    ym = y - y.mean(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        xm = xm / np.linalg.norm(xm, axis=-1, keepdims=True)
        ym = ym / np.linalg.norm(ym, axis=-1, keepdims=True)
        r = np.sum(xm * ym, axis=-1)
    return np.where(undefined, np.nan, np.clip(r, -1.0, 1.0))


def _spearman_last(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    rx = scipy.stats.rankdata(x, axis=-1)
    ry = scipy.stats.rankdata(y, axis=-1)
    return _pearson_last(rx, ry)


def _kendall_last(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    n = x.shape[-1]
    lead = x.shape[:-1]
    x2, y2 = x.reshape(-1, n), y.reshape(-1, n)
    out = np.empty(x2.shape[0])
    step = max(1, _KENDALL_BLOCK // (n * n))
    for start in range(0, x2.shape[0], step):
        a, b = x2[start:start + step], y2[start:start + step]
        sx = np.sign(a[:, :, None] - a[:, None, :])
        sy = np.sign(b[:, :, None] - b[:, None, :])
        # Sums over ordered pairs count each unordered pair twice, in the numerator and in
        # both factors of the denominator alike.
        num = np.sum(sx * sy, axis=(1, 2))
        untied_x = np.sum(sx * sx, axis=(1, 2))
        untied_y = np.sum(sy * sy, axis=(1, 2))
        with np.errstate(invalid="ignore", divide="ignore"):
            tau = num / np.sqrt(untied_x * untied_y)
        out[start:start + step] = np.where((untied_x > 0) & (untied_y > 0),
                                           np.clip(tau, -1.0, 1.0), np.nan)
    return out.reshape(lead)


def _along(f: Callable[[np.ndarray, np.ndarray], np.ndarray]):
    """`f` on the last axis, as a `scipy.stats.bootstrap` statistic with an `axis`."""

    def statistic(x, y, axis=-1):
        return f(np.moveaxis(np.asarray(x, float), axis, -1), np.moveaxis(np.asarray(y, float), axis, -1))

    return statistic


_RESAMPLED: dict[str, Callable] = {
    "pearson": _along(_pearson_last),
    "spearman": _along(_spearman_last),
    "kendall": _along(_kendall_last),
}


def _point(name: str, x: np.ndarray, y: np.ndarray) -> float:
    """scipy's estimate on the data; `nan` (without a warning) when undefined."""
    f = {"pearson": scipy.stats.pearsonr, "spearman": scipy.stats.spearmanr,
         "kendall": scipy.stats.kendalltau}[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", scipy.stats.ConstantInputWarning)
        return float(f(x, y).statistic)


# ---------------------------------------------------------------------------------------
# The public function.
# ---------------------------------------------------------------------------------------


def _vector(name: str, v) -> np.ndarray:
    try:
        a = np.asarray(v, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"`{name}` must be a 1-D sequence of numbers; got {v!r}.") from None
    if a.ndim != 1:
        raise ValueError(f"`{name}` must be 1-D; got shape {a.shape}.")
    bad = np.flatnonzero(~np.isfinite(a))
    if bad.size:
        raise ValueError(f"`{name}`: entry {int(bad[0])} is {a[bad[0]]!r}; every value must be finite.")
    return a


def correlate(
    x,
    y,
    *,
    confidence: float = 0.95,
    resamples: int = 9999,
    seed: int = 0,
) -> dict[str, float | int]:
    """Pearson's, Spearman's and Kendall's (tau-b) correlation of `x` and `y`, with paired
    percentile-bootstrap confidence intervals (see the module's notes on the method and on
    degenerate resamples).

    The three intervals come from the same resamples (the generator is seeded with `seed`
    for each), so a call with the same arguments gives the same bits.

    **Arguments:**

    - `x`, `y`: 1-D sequences of finite numbers of the same length `n >= 3` (observation
      `i` is the pair `(x[i], y[i])`).
    - `confidence`: the confidence level of the two-sided intervals, in `(0, 1)`.
    - `resamples`: the number of bootstrap resamples (at least 1).
    - `seed`: the seed of `numpy.random.default_rng` (an integer `>= 0`).

    **Returns:** a dict with the keys `n` (the number of observations), `pearson`,
    `pearson_lo`, `pearson_hi`, `spearman`, `spearman_lo`, `spearman_hi`, `kendall`,
    `kendall_lo`, `kendall_hi` (floats; `nan` where undefined) and `degenerate` (how many
    resamples were left out because `x` or `y` was constant in them; the same for the
    three statistics).
    """
    xa, ya = _vector("x", x), _vector("y", y)
    if xa.shape != ya.shape:
        raise ValueError(f"`x` and `y` must have the same length; got {xa.size} and {ya.size}.")
    if xa.size < 3:
        raise ValueError(f"`x`, `y`: a correlation with a confidence interval needs at least 3 "
                         f"observations; got {xa.size}.")
    if isinstance(confidence, bool) or not isinstance(confidence, numbers.Real) or not 0 < confidence < 1:
        raise ValueError(f"`confidence` must be a number in (0, 1); got {confidence!r}.")
    if isinstance(resamples, bool) or not isinstance(resamples, numbers.Integral) or resamples < 1:
        raise ValueError(f"`resamples` must be an integer >= 1; got {resamples!r}.")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"`seed` must be an integer >= 0; got {seed!r}.")

    out: dict[str, float | int] = {"n": int(xa.size)}
    degenerate = int(resamples)
    alpha = (1 - float(confidence)) / 2
    for name in STATISTICS:
        estimate = _point(name, xa, ya)
        lo = hi = math.nan
        if not math.isnan(estimate):
            with warnings.catch_warnings():
                for category in _QUIET:
                    warnings.simplefilter("ignore", category)
                res = scipy.stats.bootstrap(
                    (xa, ya), _RESAMPLED[name], paired=True, vectorized=True,
                    n_resamples=int(resamples), confidence_level=float(confidence),
                    method="percentile", **{_RNG_KEYWORD: np.random.default_rng(int(seed))},
                )
            dist = np.asarray(res.bootstrap_distribution, dtype=np.float64)
            defined = ~np.isnan(dist)
            degenerate = int(dist.size - defined.sum())
            if degenerate == 0:
                lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
            elif degenerate < dist.size:
                lo, hi = (float(q) for q in np.quantile(dist[defined], [alpha, 1 - alpha]))
        out[name], out[f"{name}_lo"], out[f"{name}_hi"] = estimate, lo, hi
    out["degenerate"] = degenerate
    return out
