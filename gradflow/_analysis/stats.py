"""Statistics: correlations between two variables with bootstrap confidence intervals.

The one module of statistics: [`correlate`][gradflow._analysis.stats.correlate] for
`gradflow rm-eval --outcomes`, and the bootstrap by resample counts of the `rm-metrics`
study ([`correlate_counts`][gradflow._analysis.stats.correlate_counts], at the end of the module;
many variables over one population). For `correlate`, the point estimates are
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
the resamples on which it is defined, and [`correlate`][gradflow._analysis.stats.correlate] reports
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

__all__ = ["STATISTICS", "Resampled", "average_ranks", "bootstrap_counts", "correlate", "correlate_counts",
           "correlate_resampled", "kendall", "pearson", "spearman", "spearman_finite"]

STATISTICS: tuple[str, ...] = ("pearson", "spearman", "kendall")
"""The correlations [`correlate`][gradflow._analysis.stats.correlate] computes, in order."""

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


# ---------------------------------------------------------------------------------------
# The bootstrap by resample counts (the `rm-metrics` study).
# ---------------------------------------------------------------------------------------
#
# A population of hundreds of observations, dozens of variables correlated pairwise, and
# every pair needs its own intervals: instead of resampling the data, a resample is a row
# of multinomial *counts* (how often each observation is drawn), shared by every pair,
# and all the resamples of one pair are scored at once with matrix products. Copies of
# one observation in a resample are ties (as `scipy.stats` treats the resampled data);
# `test_rm_metrics.py` checks each statistic against scipy on the explicitly resampled
# data. The point estimates equal `scipy.stats.pearsonr`, `spearmanr` and `kendalltau`
# (tau-b) to rounding.


def _as_counts(counts, n: int) -> np.ndarray:
    c = np.ones((1, n)) if counts is None else np.atleast_2d(np.asarray(counts, float))
    if c.shape[-1] != n:
        raise ValueError(f"`counts` must have {n} columns (one per observation); got shape {c.shape}.")
    return c


def _pearson_rows(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Weighted Pearson correlation per row: `a`, `b` of shape `(n,)` or `(B, n)`,
    weights (counts) `c` of shape `(B, n)`; `nan` where a variance vanishes."""
    total = c.sum(-1, keepdims=True)
    da = a - (c * a).sum(-1, keepdims=True) / total
    db = b - (c * b).sum(-1, keepdims=True) / total
    cov = (c * da * db).sum(-1)
    va, vb = (c * da * da).sum(-1), (c * db * db).sum(-1)
    # Relative tolerance: a variance that is rounding error of the mean is zero.
    scale_a = (c * a * a).sum(-1) * 1e-12
    scale_b = (c * b * b).sum(-1) * 1e-12
    ok = (va > scale_a) & (vb > scale_b)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = cov / np.sqrt(va * vb)
    return np.where(ok, np.clip(r, -1.0, 1.0), np.nan)


def _rank_matrix(x: np.ndarray) -> np.ndarray:
    """`L[a, j] = 1[x_j < x_a] + 0.5 1[x_j = x_a]`: with counts `c`, the average rank of
    observation `a` within the resample is `(c @ L.T)[a] + 0.5` (1-based, ties averaged)."""
    less = (x[None, :] < x[:, None]).astype(np.float32)
    equal = (x[None, :] == x[:, None]).astype(np.float32)
    return less + 0.5 * equal


def _sign_matrix(x: np.ndarray) -> np.ndarray:
    return np.sign(x[:, None] - x[None, :]).astype(np.float32)


def pearson(x, y, counts=None) -> np.ndarray | float:
    """Pearson's correlation of `x` and `y` (1-D, length `n`). With `counts` of shape
    `(B, n)` (how often each observation is in each of `B` bootstrap resamples) it is
    computed on every resample at once; returns shape `(B,)`, else a scalar."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    c = _as_counts(counts, len(x))
    r = _pearson_rows(x, y, c)
    return r if counts is not None else r[0]


def average_ranks(x) -> np.ndarray:
    """1-based ranks of `x`, ties given their average rank (as `scipy.stats.rankdata`)."""
    x = np.asarray(x, float)
    order = np.argsort(x, kind="stable")
    xs = x[order]
    start = np.r_[True, xs[1:] != xs[:-1]]
    group = np.cumsum(start) - 1
    first = np.flatnonzero(start)
    last = np.r_[first[1:], len(x)] - 1
    ranks = np.empty(len(x))
    ranks[order] = (first[group] + last[group]) / 2 + 1
    return ranks


def spearman(x, y, counts=None) -> np.ndarray | float:
    """Spearman's rank correlation (Pearson's on average ranks, ties averaged, as
    `scipy.stats.spearmanr`); `counts` as in [`pearson`][gradflow._analysis.stats.pearson]."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if counts is None:
        return _pearson_rows(average_ranks(x), average_ranks(y), np.ones((1, len(x))))[0]
    c = _as_counts(counts, len(x))
    lx, ly = _rank_matrix(x), _rank_matrix(y)
    c32 = c.astype(np.float32)  # counts and half-integer ranks are exact in float32
    rx = (c32 @ lx.T).astype(float) + 0.5
    ry = (c32 @ ly.T).astype(float) + 0.5
    return _pearson_rows(rx, ry, c)


def kendall(x, y, counts=None) -> np.ndarray | float:
    """Kendall's tau-b (as `scipy.stats.kendalltau`), by counting pairs:
    `tau_b = (P - Q) / sqrt((n0 - n1)(n0 - n2))`, with `P - Q` the concordant minus
    discordant pairs and `n0 - n1`, `n0 - n2` the pairs not tied in `x`, in `y`. With
    `counts`, copies of one observation form tied pairs; `counts` as in [`pearson`][gradflow._analysis.stats.pearson]."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    sx, sy = _sign_matrix(x), _sign_matrix(y)
    if counts is None:  # sums over all ordered pairs count each pair twice
        num, nx, ny = (np.sum(m, dtype=float) / 2 for m in (sx * sy, np.abs(sx), np.abs(sy)))
    else:
        c = _as_counts(counts, len(x)).astype(np.float32)

        def quad(m):  # sum_{a<b} c_a c_b m[a, b] for symmetric m with zero diagonal
            return ((c @ m) * c).sum(-1).astype(float) / 2

        num, nx, ny = quad(sx * sy), quad(np.abs(sx)), quad(np.abs(sy))
    with np.errstate(invalid="ignore", divide="ignore"):
        tau = num / np.sqrt(nx * ny)
    return np.where((nx > 0) & (ny > 0), np.clip(tau, -1.0, 1.0), np.nan)


def bootstrap_counts(n: int, resamples: int, seed: int) -> np.ndarray:
    """`(resamples, n)` multinomial counts: resample `b` draws observation `a`
    `counts[b, a]` times (n draws with replacement), from `numpy.random.default_rng(seed)`."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n, np.full(n, 1.0 / n), size=resamples).astype(np.float32)


class Resampled:
    """What the bootstrap needs of one variable `x`, computed once and shared by every
    correlation it enters: its pair signs and, for every resample (row of `counts`), its
    average ranks and number of untied pairs."""

    def __init__(self, x, counts: np.ndarray):
        self.x = np.asarray(x, float)
        self.signs = _sign_matrix(self.x)
        self.ranks = (counts @ _rank_matrix(self.x).T).astype(float) + 0.5
        self.untied = ((counts @ np.abs(self.signs)) * counts).sum(-1).astype(float) / 2


def correlate_resampled(a: Resampled, b: Resampled, counts: np.ndarray, confidence: float) -> dict:
    lo_q, hi_q = 50 * (1 - confidence), 50 * (1 + confidence)
    x, y = a.x, b.x
    row = {"pearson": float(pearson(x, y)), "spearman": float(spearman(x, y)), "kendall": float(kendall(x, y))}
    num = ((counts @ (a.signs * b.signs)) * counts).sum(-1).astype(float) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        tau = num / np.sqrt(a.untied * b.untied)
    boot = {
        "pearson": _pearson_rows(x, y, counts),
        "spearman": _pearson_rows(a.ranks, b.ranks, counts),
        "kendall": np.where((a.untied > 0) & (b.untied > 0), np.clip(tau, -1.0, 1.0), np.nan),
    }
    for s in STATISTICS:
        v = boot[s][np.isfinite(boot[s])]
        lo, hi = (np.percentile(v, [lo_q, hi_q]) if len(v) else (math.nan, math.nan))
        row[f"{s}_lo"], row[f"{s}_hi"] = float(lo), float(hi)
    return row


def correlate_counts(x, y, counts: np.ndarray, confidence: float) -> dict:
    """The three correlations of `x` and `y` (keys `pearson`, `spearman`, `kendall`) with
    percentile-bootstrap intervals at level `confidence` (keys `<stat>_lo`, `<stat>_hi`);
    the bootstrap resamples are the rows of `counts` (see [`bootstrap_counts`][gradflow._analysis.stats.bootstrap_counts])."""
    counts = _as_counts(counts, len(np.asarray(x))).astype(np.float32)
    return correlate_resampled(Resampled(x, counts), Resampled(y, counts), counts, confidence)


def spearman_finite(x, y) -> float:
    """`scipy.stats.spearmanr` of `x` and `y` over the pairs where `y` is finite (an
    observation never reached, `inf`, has no rank to compare); `nan` with fewer than 3
    such pairs or when `x` is constant on them."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    finite = np.isfinite(y)
    if finite.sum() < 3 or np.ptp(x[finite]) == 0:
        return math.nan
    return float(scipy.stats.spearmanr(x[finite], y[finite]).statistic)
