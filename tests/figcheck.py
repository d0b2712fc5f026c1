"""A layout checker for matplotlib figures: overlapping text, clipped text, and legends or
inset axes drawn over data.

[`check`][figcheck.check] draws the figure (at the dpi it will be saved with) and returns
one line per problem:

- **overlap**: two visible, non-empty text artists (tick labels, axis labels, titles, the
  suptitle, legend texts, colourbar labels, annotations and other texts) whose window
  extents intersect;
- **clipped**: a text that extends outside the figure;
- **covers data**: a legend or an inset axes whose window extent contains a plotted data
  point: a vertex of a line in data coordinates (and points along its segments, so a line
  that passes under a legend counts), a scatter offset, a vertex of a filled band, a bar,
  or any part of an image or mesh.

Reference lines spanning an axes (`axhline`, `axvline`, `axvspan`: not in data
coordinates in both directions) and grid lines are not counted as data. A legend or
inset placed outside every axes covers nothing.
"""

from __future__ import annotations

import numpy as np
from matplotlib.collections import PathCollection, PolyCollection, QuadMesh
from matplotlib.image import AxesImage
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from matplotlib.text import Text
from matplotlib.transforms import Bbox

TOLERANCE = 1.0  # pixels: extents touching within this distance do not count as overlapping


def _visible(t: Text) -> bool:
    return t.get_visible() and (t.axes is None or t.axes.get_visible())


def _is_text(t) -> bool:
    return isinstance(t, Text) and t.get_visible() and bool(t.get_text().strip())


def _axes_texts(ax) -> list[tuple[str, Text]]:
    out = []
    for name, t in (("title", ax.title), ("left title", ax._left_title), ("right title", ax._right_title),
                    ("x label", ax.xaxis.label), ("y label", ax.yaxis.label),
                    ("x offset", ax.xaxis.offsetText), ("y offset", ax.yaxis.offsetText)):
        out.append((name, t))
    for axis, which in ((ax.xaxis, "x"), (ax.yaxis, "y")):
        for tick in axis._update_ticks():  # the ticks actually drawn (inside the view limits)
            for lab in (tick.label1, tick.label2):
                out.append((f"{which} tick label", lab))
    out += [("text", t) for t in ax.texts]
    if ax.get_legend() is not None:
        out += _legend_texts(ax.get_legend())
    return out


def _legend_texts(leg) -> list[tuple[str, Text]]:
    return [("legend title", leg.get_title())] + [("legend text", t) for t in leg.get_texts()]


def texts(fig) -> list[tuple[str, Text]]:
    """Every visible, non-empty text artist of `fig`, each with a short description."""
    out = []
    for name in ("_suptitle", "_supxlabel", "_supylabel"):
        t = getattr(fig, name, None)
        if t is not None:
            out.append((name.strip("_"), t))
    out += [("figure text", t) for t in fig.texts]
    for leg in fig.legends:
        out += _legend_texts(leg)
    for ax in fig.axes:
        if ax.get_visible():
            where = ax.get_title() or ax.get_label() or "axes"
            out += [(f"{name} of {where!r}", t) for name, t in _axes_texts(ax)]
    seen, unique = set(), []
    for name, t in out:
        if id(t) not in seen and _is_text(t) and _visible(t):
            seen.add(id(t))
            unique.append((name, t))
    return unique


def _describe(name: str, t: Text) -> str:
    text = t.get_text().replace("\n", " ")
    return f"{name} {text[:40]!r}"


def _overlap(a: Bbox, b: Bbox, tol: float = TOLERANCE) -> bool:
    return (min(a.x1, b.x1) - max(a.x0, b.x0) > tol) and (min(a.y1, b.y1) - max(a.y0, b.y0) > tol)


def _outline(t: Text, box: Bbox) -> np.ndarray:
    """The corners of the text's own (rotated) rectangle, from its axis-aligned window
    extent (which has the same centre) and its angle; the extent itself for angles that
    are multiples of 90 degrees (or too close to 45 to invert)."""
    corners = np.array([[box.x0, box.y0], [box.x1, box.y0], [box.x1, box.y1], [box.x0, box.y1]])
    theta = np.deg2rad(t.get_rotation())
    c, s = np.cos(theta), np.sin(theta)
    ac, as_ = abs(c), abs(s)
    det = ac**2 - as_**2
    if min(ac, as_) < 1e-6 or abs(det) < 0.2:
        return corners
    w = (ac * box.width - as_ * box.height) / det
    h = (ac * box.height - as_ * box.width) / det
    if w <= 0 or h <= 0:
        return corners
    half = np.array([[-w, -h], [w, -h], [w, h], [-w, h]]) / 2
    rot = np.array([[c, -s], [s, c]])
    return np.array([(box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2]) + half @ rot.T


def _polygons_overlap(p: np.ndarray, q: np.ndarray, tol: float = TOLERANCE) -> bool:
    """Separating-axis test for two convex polygons, overlapping by more than `tol` pixels."""
    for poly in (p, q):
        edges = np.roll(poly, -1, axis=0) - poly
        for e in edges:
            n = np.array([-e[1], e[0]])
            norm = np.hypot(*n)
            if norm == 0:
                continue
            n = n / norm
            a, b = p @ n, q @ n
            if min(a.max(), b.max()) - max(a.min(), b.min()) <= tol:
                return False
    return True


def _texts_overlap(ta: Text, ba: Bbox, tb: Text, bb: Bbox) -> bool:
    if not _overlap(ba, bb):
        return False
    if ta.get_rotation() % 90 == 0 and tb.get_rotation() % 90 == 0:
        return True
    return _polygons_overlap(_outline(ta, ba), _outline(tb, bb))


def _segments(xy: np.ndarray, step: float = 2.0) -> np.ndarray:
    """Points along a polyline in display space, at most `step` pixels apart (vertices
    included; segments touching a non-finite vertex are dropped)."""
    xy = xy[np.all(np.isfinite(xy), axis=1)] if len(xy) else xy
    if len(xy) < 2:
        return xy
    pts = [xy]
    d = np.diff(xy, axis=0)
    n = np.minimum(np.ceil(np.hypot(d[:, 0], d[:, 1]) / step).astype(int), 2000)
    for i in np.flatnonzero(n > 1):
        f = np.linspace(0, 1, n[i] + 1)[1:-1, None]
        pts.append(xy[i] + f * d[i])
    return np.concatenate(pts)


def data_regions(ax) -> tuple[np.ndarray, list[Bbox]]:
    """The display coordinates of the data drawn in `ax`: points (lines, scatter, bands) and
    boxes (bars, images, meshes), both clipped to the axes' box."""
    box = ax.bbox
    points, boxes = [], []
    for line in ax.lines:
        if not isinstance(line, Line2D) or not line.get_visible() or line.get_transform() != ax.transData:
            continue
        xy = line.get_transform().transform(np.asarray(line.get_xydata(), dtype=float))
        pts = _segments(xy) if line.get_linestyle() not in ("None", "none", "", " ") else xy
        points.append(pts)
    for coll in ax.collections:
        if not coll.get_visible():
            continue
        if isinstance(coll, QuadMesh):
            boxes.append(coll.get_window_extent())
        elif isinstance(coll, PathCollection) and len(coll.get_offsets()):
            points.append(coll.get_offset_transform().transform(np.asarray(coll.get_offsets(), dtype=float)))
        elif isinstance(coll, PolyCollection) and coll.get_transform() == ax.transData:
            for path in coll.get_paths():
                points.append(_segments(ax.transData.transform(path.vertices)))
    for patch in ax.patches:
        if isinstance(patch, Rectangle) and patch.get_visible() and patch.get_data_transform() == ax.transData:
            if patch.get_width() and patch.get_height():
                boxes.append(patch.get_window_extent())
    for im in ax.images:
        if isinstance(im, AxesImage) and im.get_visible():
            boxes.append(im.get_window_extent())
    pts = np.concatenate(points) if points else np.zeros((0, 2))
    pts = pts[np.all(np.isfinite(pts), axis=1)]
    inside = ((pts[:, 0] >= box.x0 - 0.5) & (pts[:, 0] <= box.x1 + 0.5)
              & (pts[:, 1] >= box.y0 - 0.5) & (pts[:, 1] <= box.y1 + 0.5))
    clipped = [Bbox.intersection(b, box) for b in boxes]
    return pts[inside], [b for b in clipped if b is not None and b.width > 0 and b.height > 0]


def _covers(cover: Bbox, pts: np.ndarray, boxes: list[Bbox], tol: float = TOLERANCE) -> int:
    """How many data points (and boxes) lie inside `cover`, shrunk by `tol` pixels."""
    x0, y0, x1, y1 = cover.x0 + tol, cover.y0 + tol, cover.x1 - tol, cover.y1 - tol
    n = int(np.sum((pts[:, 0] > x0) & (pts[:, 0] < x1) & (pts[:, 1] > y0) & (pts[:, 1] < y1)))
    return n + sum(_overlap(cover, b, tol) for b in boxes)


def _insets(fig) -> list[tuple[object, object]]:
    """`(inset, parent)` pairs: axes made with `ax.inset_axes`, and axes lying inside
    another (non-colourbar) axes."""
    pairs = [(child, ax) for ax in fig.axes for child in ax.child_axes]
    for a in fig.axes:
        for b in fig.axes:
            if a is b or (a, b) in pairs or not a.get_visible():
                continue
            if hasattr(b, "_colorbar") or hasattr(a, "_colorbar"):
                continue
            ba, bb = a.get_window_extent(), b.get_window_extent()
            if ba.width * ba.height < bb.width * bb.height and _overlap(ba, bb):
                pairs.append((a, b))
    return pairs


def check(fig, dpi: float | None = None) -> list[str]:
    """The layout problems of `fig`, one line each (empty: none found).

    **Arguments:**

    - `fig`: a matplotlib figure.
    - `dpi`: the resolution it will be saved at (default: the figure's own); text sizes
      in pixels, and so overlaps, depend on it.

    **Returns:** a list of problem descriptions.
    """
    if dpi is not None:
        fig.set_dpi(dpi)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    problems = []
    found = texts(fig)
    extents = [(name, t, t.get_window_extent(renderer)) for name, t in found]
    figbox = fig.bbox
    for i, (na, ta, ba) in enumerate(extents):
        if ba.x0 < figbox.x0 - TOLERANCE or ba.y0 < figbox.y0 - TOLERANCE or ba.x1 > figbox.x1 + TOLERANCE \
                or ba.y1 > figbox.y1 + TOLERANCE:
            problems.append(f"clipped: {_describe(na, ta)} extends outside the figure")
        for nb, tb, bb in extents[i + 1:]:
            if _texts_overlap(ta, ba, tb, bb):
                problems.append(f"overlap: {_describe(na, ta)} and {_describe(nb, tb)}")

    axes = [ax for ax in fig.axes if ax.get_visible() and not hasattr(ax, "_colorbar")]
    data = {ax: data_regions(ax) for ax in axes}
    legends = [(leg, "figure legend") for leg in fig.legends]
    legends += [(ax.get_legend(), f"legend of {ax.get_title()!r}") for ax in axes if ax.get_legend()]
    for leg, name in legends:
        if not leg.get_visible():
            continue
        box = leg.get_window_extent(renderer)
        for ax in axes:
            n = _covers(box, *data[ax])
            if n:
                problems.append(f"covers data: {name} covers {n} data points of axes {ax.get_title()!r}")
    for inset, parent in _insets(fig):
        box = inset.get_window_extent(renderer)
        n = _covers(box, *data.get(parent, (np.zeros((0, 2)), [])))
        if n:
            problems.append(f"covers data: inset axes {inset.get_title()!r} covers {n} data points of axes "
                            f"{parent.get_title()!r}")
    return problems


#: Problems found in each saved figure, by path (filled by [`record`][figcheck.record]).
RECORDED: dict = {}


def record(fig, path) -> None:
    """A `gradflow._util.results.FIGURE_HOOKS` hook: check `fig` before it is saved to `path`."""
    from pathlib import Path

    RECORDED[Path(path).resolve()] = check(fig)


def problems(paths) -> dict:
    """`{file name: problems}` for the given saved figures that have problems; a figure that
    was never checked is a problem too."""
    from pathlib import Path

    out = {}
    for p in paths:
        found = RECORDED.get(Path(p).resolve())
        if found is None:
            out[Path(p).name] = ["not checked: saved without gradflow._util.results.save_figure"]
        elif found:
            out[Path(p).name] = found
    return out


def redraw_differences(out, figures) -> list[str]:
    """Redraw the result folder `out` (`gradflow.studies.redraw`) and compare with the
    `figures` its run wrote: the same files, byte for byte. Returns the differences."""
    from pathlib import Path

    from gradflow.studies import redraw

    before = {Path(p).name: Path(p).read_bytes() for p in figures}
    again = redraw(out)
    diffs = []
    if [Path(p).name for p in again] != [Path(p).name for p in figures]:
        diffs.append(f"redraw wrote {[Path(p).name for p in again]}, the run {[Path(p).name for p in figures]}")
    for p in again:
        if Path(p).name in before and Path(p).read_bytes() != before[Path(p).name]:
            diffs.append(f"{Path(p).name} differs after the redraw")
    return diffs
