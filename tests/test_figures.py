"""The figure layout checker (`figcheck`), on small figures made to have each problem and on
one that has none; the figure data files; and the dispatch of `gradflow plot DIR`.

The studies' own figures are checked in the tests that already run each study quickly
(`tests/test_studies.py` and others): `conftest.py` records the problems of every saved
figure and those tests assert there are none, and that a redraw from the folder gives the
same files."""

import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pytest
from figcheck import check

from gradflow import plotting, studies


def _clean():
    fig, ax = plt.subplots(figsize=(5, 3.5), layout="constrained")
    t = np.linspace(0, 1, 50)
    ax.plot(t, t**2, label="quadratic")
    ax.scatter([0.2, 0.4], [0.1, 0.2], label="points")
    ax.set(xlabel="time", ylabel="value", title="a clean figure")
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1))
    fig.suptitle("nothing wrong here")
    return fig


def test_clean_figure_has_no_problems():
    fig = _clean()
    assert check(fig) == []
    plt.close(fig)


def test_overlapping_tick_labels_are_reported():
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [0, 1])
    ax.set_xticks(np.linspace(0, 1, 11), [f"label {i:03d}" for i in range(11)])
    found = check(fig)
    assert any(p.startswith("overlap:") and "x tick label" in p for p in found), found
    plt.close(fig)


@pytest.mark.parametrize("rotation, overlaps", [(35, False), (0, True)])
def test_rotated_tick_labels_overlap_only_when_their_glyph_boxes_do(rotation, overlaps):
    fig, ax = plt.subplots(figsize=(4, 3), layout="constrained")
    ax.plot([0, 5], [0, 1])
    ax.set_xticks(range(6), [f"method/policy/{i}" for i in range(6)], rotation=rotation, ha="right")
    found = check(fig)
    assert any("x tick label" in p for p in found) == overlaps, found
    plt.close(fig)


def test_overlapping_texts_and_titles_are_reported():
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.plot([0, 1], [0, 1])
    ax.text(0.5, 0.5, "annotation one", transform=ax.transAxes)
    ax.text(0.52, 0.5, "annotation two", transform=ax.transAxes)
    found = check(fig)
    assert any("annotation one" in p and "annotation two" in p for p in found), found
    plt.close(fig)


def test_clipped_suptitle_is_reported():
    fig, ax = plt.subplots(figsize=(3, 2), layout="constrained")
    ax.plot([0, 1], [0, 1])
    fig.suptitle("a suptitle far too long to fit the width of this small figure at all")
    found = check(fig)
    assert any(p.startswith("clipped:") and "suptitle" in p for p in found), found
    plt.close(fig)


def test_legend_over_a_line_is_reported_even_between_vertices():
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.plot([0, 1], [0.95, 0.95], label="a line with two vertices only, under the legend")
    ax.set_ylim(0, 1)
    ax.legend(loc="upper center")
    found = check(fig)
    assert any(p.startswith("covers data:") and "legend" in p for p in found), found
    plt.close(fig)


@pytest.mark.parametrize("kind", ["scatter", "bar", "image", "mesh", "band"])
def test_legend_over_other_data_is_reported(kind):
    fig, ax = plt.subplots(figsize=(4, 3))
    if kind == "scatter":
        ax.scatter(*np.meshgrid(np.arange(8), np.arange(8)), label="s")
    elif kind == "bar":
        ax.bar([0, 1, 2], [1, 1, 1], label="b")
    elif kind == "image":
        ax.imshow(np.random.default_rng(0).random((4, 4)), label="i")
        ax.plot([], [], label="i")
    elif kind == "mesh":
        ax.pcolormesh(np.random.default_rng(0).random((4, 4)))
        ax.plot([], [], label="m")
    else:
        ax.fill_between([0, 0.5, 1], [0.9, 0.9, 0.9], [1, 1, 1], label="band")
        ax.set_ylim(0, 1.05)
    ax.legend(loc="upper left")
    found = check(fig)
    assert any(p.startswith("covers data:") for p in found), (kind, found)
    plt.close(fig)


def test_inset_over_data_is_reported_and_one_beside_the_data_is_not():
    fig, ax = plt.subplots(figsize=(4, 3))
    t = np.linspace(0, 1, 100)
    ax.plot(t, t)
    inset = ax.inset_axes([0.6, 0.6, 0.35, 0.35])
    inset.plot(t, t)
    found = check(fig)
    assert any(p.startswith("covers data:") and "inset" in p for p in found), found
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(4, 3))
    ax.plot(t, 0.2 * t)
    ax.set_ylim(0, 1)
    inset = ax.inset_axes([0.6, 0.6, 0.35, 0.35])
    inset.plot(t, t)
    assert check(fig) == []
    plt.close(fig)


def test_reference_lines_are_not_data():
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.plot([0, 1], [0, 0.2], label="data")
    ax.axhline(0.95, color="grey", label="target")
    ax.set_ylim(0, 1)
    ax.legend(loc="upper right")
    assert check(fig) == []
    plt.close(fig)


def test_figure_data_round_trip(tmp_path):
    data = {"targets": [0.5, 0.9], "names": ["a", "b"], "title": "t", "flag": True, "none": None,
            "n": 3, "x": 0.25, "runs": {"0": {"time": np.arange(3.0), "m": np.ones((2, 2), np.float32)}}}
    plotting.save_figure_data(tmp_path, data)
    back = plotting.load_figure_data(tmp_path)
    assert back["names"] == ["a", "b"] and back["title"] == "t" and back["flag"] is True and back["none"] is None
    assert back["n"] == 3 and back["x"] == 0.25
    np.testing.assert_array_equal(back["targets"], [0.5, 0.9])
    assert back["runs"]["0"]["m"].dtype == np.float32
    with pytest.raises(ValueError, match="figure data"):
        plotting.load_figure_data(tmp_path / "missing")


def test_redraw_refuses_a_folder_without_results(tmp_path):
    with pytest.raises(ValueError, match=str(tmp_path)):
        studies.redraw(tmp_path)
    (tmp_path / "run.json").write_text(json.dumps({"kind": "study", "name": "no-such-study"}))
    with pytest.raises(ValueError, match="no-such-study"):
        studies.redraw(tmp_path)


def _synthetic_sweep(out, n: int, done: int):
    """A `grid_2d` sweep folder of `n x n` proxies of which the first `done` rows are
    written, with labels and times made up (no runs): for the sweep figures only."""
    from gradflow import sweep

    cfg = {"problem": {"output_names": ["y*", "y_med", "bad 1"], "true_reward": [1.0, 0.8, -1.0]},
           "proxies": {"outputs": [1, 2]}, "analysis": {"targets": [0.9], "tolerance": 0.05},
           "method": {"name": "sgd"}}
    gi, gj = np.linspace(-1, 1, n), np.linspace(-2, 2, n)
    out.mkdir()
    (out / "sweep.json").write_text(json.dumps({"rows": n * n, "fingerprint": "synthetic",
                                                "meta": {"config": cfg, "quick": True}}))
    (out / "reference.json").write_text(json.dumps({"reference": {"time_to_0.9": 1000.0},
                                                    "grid": [gi.tolist(), gj.tolist()]}))
    a, b = np.meshgrid(gi, gj, indexing="ij")
    label = np.where(b > 1, "harmful", np.where(a > 0.75, "benign", "beneficial")).ravel()[:done]
    t = np.where(b > 1.5, np.inf, 100 + 50 * (a + 1)).ravel()[:done]
    sweep._write(out, 0, done, {"label": label.astype(object), "status": np.zeros(done, np.int32),
                                "time_to_0.9": t, "time_ratio": t / 1000.0})


@pytest.mark.parametrize("n, done, zoom", [(21, 200, False), (101, 101 * 101, True)])
def test_sweep_map_marks_unfinished_cells_and_zooms_only_when_it_magnifies(tmp_path, n, done, zoom):
    import figcheck

    from gradflow.studies.categorization_map import plot as plot_dir

    out = tmp_path / "sweep"
    _synthetic_sweep(out, n, done)
    fig_titles = {}

    def hook(fig, path):
        fig_titles["suptitle"] = fig._suptitle.get_text()
        fig_titles["legend"] = [t.get_text() for leg in fig.legends for t in leg.get_texts()]
        fig_titles["axes"] = [ax.get_title() for ax in fig.axes]

    from gradflow._util import results as _results

    _results.FIGURE_HOOKS.append(hook)
    try:
        paths = plot_dir(out)
    finally:
        _results.FIGURE_HOOKS.remove(hook)
    assert figcheck.problems(paths) == {}
    if done < n * n:
        assert f"{done} of {n * n} proxies done" in fig_titles["suptitle"]
        assert "not computed" in fig_titles["legend"]
    else:
        assert "done" not in fig_titles["suptitle"] and "not computed" not in fig_titles["legend"]
    assert any("zoom on the true reward" in t for t in fig_titles["axes"]) == zoom
