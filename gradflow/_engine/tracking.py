"""The online tracker: first crossings of target levels and stalls (plateaus of the
true reward), fed one point of the curve at a time by every method's loop."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int, PyTree


class Stall(eqx.Module):
    """One plateau of the true reward: its `level` (the mean of the reward at its two ends),
    `start` time and `duration`. All `nan` when there is none."""

    level: Float[Array, ""]
    start: Float[Array, ""]
    duration: Float[Array, ""]


class Stalls(eqx.Module):
    """Plateaus of the true reward, in order of start, padded with `nan` to a fixed
    length so the result can be vmapped; `count` is how many were found (it may exceed
    the padded length)."""

    level: Float[Array, " max_stalls"]
    start: Float[Array, " max_stalls"]
    duration: Float[Array, " max_stalls"]
    count: Int[Array, ""]

    def longest(self) -> Stall:
        """The longest stall (`nan` fields when there is none)."""
        d = jnp.where(jnp.isnan(self.duration), -jnp.inf, self.duration)
        i = jnp.argmax(d)
        return Stall(self.level[i], self.start[i], self.duration[i])


class StallCriteria(eqx.Module):
    """What counts as a stall: a maximal stretch of time in which the expected true
    reward is below `target` and changes slower than `max_rate` (in absolute value),
    lasting at least `min_duration`. Its `level` is the mean of the reward at the two
    ends of the stretch.

    Rates are per unit of the run's time: flow time for the flow (exact, from the rate
    formula), updates for discrete methods (the change over one update).

    **Arguments** (each `None` means the scale-aware default):

    - `target`: the level a stall must be below; default: the maximal achievable true
      reward minus 2% of its range.
    - `min_duration`: default `0.01 * horizon` (`t1` for the flow, `steps` for discrete
      methods).
    - `max_rate`: default `0.02 * range / min_duration`, where `range` is the spread
      `max - min` of the achievable true reward: a stall is where the reward would need
      longer than `min_duration` to move by 2% of its range.
    """

    target: float | None = None
    max_rate: float | None = None
    min_duration: float | None = None

    def resolve(self, vmin, vmax, horizon):
        """`(target, max_rate, min_duration)` as arrays, defaults filled in."""
        min_dur = 0.01 * horizon if self.min_duration is None else jnp.asarray(self.min_duration, float)
        if self.target is not None:
            target = jnp.asarray(self.target, float)
        else:
            target = vmax - 0.02 * (vmax - vmin)
        max_rate = 0.02 * (vmax - vmin) / min_dur if self.max_rate is None else jnp.asarray(self.max_rate, float)
        return target, max_rate, min_dur


class Tracker(eqx.Module):
    """Online state: first crossing of each target and the current plateau.

    A caller that can refine event times (the flow) passes the piece of the curve that
    ends at each point (`here`, any pytree: for the flow the solver step's dense
    interpolant); the tracker keeps the piece in which each event happened, so that the
    caller can locate it afterwards. Discrete methods pass `None`.
    """

    hit: Float[Array, " targets"]
    in_win: Bool[Array, ""]
    win_start: Float[Array, ""]
    win_end: Float[Array, ""]
    win_v0: Float[Array, ""]
    win_v1: Float[Array, ""]
    best: Stall
    count: Int[Array, ""]
    hit_at: PyTree = None  # per target: the piece in which it was first reached
    win_at: PyTree = None  # the piece in which the current plateau began
    best_at: PyTree = None  # the pieces in which the longest stall began and ended


def tree_where(pred, a, b):
    """`where(pred, a, b)` leaf by leaf, `pred` aligned with the leading axes."""

    def one(x, y):
        extra = max(jnp.ndim(x), jnp.ndim(y)) - pred.ndim
        return jnp.where(jnp.reshape(pred, pred.shape + (1,) * extra), x, y)

    return jax.tree.map(one, a, b)


def tracker_init(n_targets: int, dtype=float, here: PyTree = None) -> Tracker:
    nan = jnp.asarray(jnp.nan, dtype)
    z = jnp.asarray(0.0, dtype)
    return Tracker(
        hit=jnp.full((n_targets,), jnp.inf, dtype),
        in_win=jnp.asarray(False), win_start=z, win_end=z, win_v0=z, win_v1=z,
        best=Stall(nan, nan, nan), count=jnp.asarray(0),
        hit_at=jax.tree.map(lambda x: jnp.broadcast_to(x, (n_targets,) + jnp.shape(x)), here),
        win_at=here, best_at=(here, here),
    )


def _close(trk: Tracker, min_dur, here) -> tuple[Tracker, Stall, Bool[Array, ""]]:
    """The plateau in progress as a `Stall`, whether it qualifies, and the state with
    it counted (the caller decides whether to keep that state)."""
    dur = trk.win_end - trk.win_start
    ok = trk.in_win & (dur >= min_dur)
    stall = Stall(0.5 * (trk.win_v0 + trk.win_v1), trk.win_start, dur)
    longer = ok & ~(dur <= trk.best.duration)  # best.duration may be nan
    best = tree_where(longer, stall, trk.best)
    best_at = tree_where(longer, (trk.win_at, here), trk.best_at)
    return eqx.tree_at(lambda t: (t.best, t.count, t.best_at), trk, (best, trk.count + ok, best_at),
                       is_leaf=lambda x: x is None), stall, ok


def tracker_update(
    trk: Tracker, t, value, rate, alive, targets, stall_target, max_rate, min_dur, here: PyTree = None
) -> tuple[Tracker, Stall, Bool[Array, ""]]:
    """Feed one point `(t, value, rate)` of the true-reward curve (and the piece of the
    curve that ends there, `here`).

    Returns the new state, and the plateau that ended at this point with a flag saying
    whether it was a stall. Points with `alive=False` are ignored.
    """
    reached = value >= jnp.asarray(targets, value.dtype)
    first = alive & reached & jnp.isinf(trk.hit)
    flat = (value < stall_target) & (jnp.abs(rate) <= max_rate)
    closed, stall, ok = _close(trk, min_dur, here)
    ending = trk.in_win & ~flat & alive
    new = tree_where(ending, closed, trk)
    new = Tracker(
        hit=jnp.where(first, t, trk.hit),
        in_win=flat,
        win_start=jnp.where(trk.in_win, trk.win_start, t),
        win_end=t,
        win_v0=jnp.where(trk.in_win, trk.win_v0, value),
        win_v1=value,
        best=new.best,
        count=new.count,
        hit_at=tree_where(first, here, trk.hit_at),
        win_at=tree_where(trk.in_win, trk.win_at, here),
        best_at=new.best_at,
    )
    new = tree_where(alive, new, trk)
    return new, stall, ok & ending


def tracker_finish(trk: Tracker, min_dur, here: PyTree = None) -> tuple[Tracker, Stall, Bool[Array, ""]]:
    """Close the plateau still open at the end of the run (`here`: the piece that ends
    at the last point, for a caller that refines)."""
    return _close(trk, min_dur, here)
