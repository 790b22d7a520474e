"""Report figures: PNGs that decode, with missing values tolerated."""

from __future__ import annotations

import math

import pytest
from PIL import Image

from fusynth.core.plots import box_plot, confusion_png, line_chart


def _decoded_size(path):
    with Image.open(path) as im:
        im.load()
        assert im.format == "PNG"
        return im.size


def test_box_plot(tmp_path):
    path = box_plot(
        tmp_path / "sub" / "box.png",
        {"0 px": [0.9, 0.85, math.nan, 0.8], "10 px": [0.7, None, 0.75], "20 px": []},
        "Dice by jitter",
        "Dice",
    )
    w, h = _decoded_size(path)
    assert 300 <= w <= 2000 and 200 <= h <= 2000
    assert [p.name for p in path.parent.iterdir()] == ["box.png"]  # no temp left


def test_line_chart(tmp_path):
    path = line_chart(
        tmp_path / "line.png",
        [50, 100, 200, 400],
        {
            "real": ([0.6, 0.7, math.nan, 0.8], [0.05, math.nan, 0.02, None]),
            "real + synthetic": ([0.65, 0.72, 0.78, 0.81], [0.04, 0.03, 0.02, 0.01]),
        },
        "Dice against real training images",
        "real training images",
        "Dice",
    )
    w, h = _decoded_size(path)
    assert 300 <= w <= 2000 and 200 <= h <= 2000


def test_empty_inputs_still_draw(tmp_path):
    _decoded_size(box_plot(tmp_path / "b.png", {}, "t", "y"))
    _decoded_size(line_chart(tmp_path / "l.png", [], {}, "t", "x", "y"))


def test_confusion_png_with_an_empty_true_class(tmp_path):
    matrix = [[3, 1, 0], [0, 0, 0], [2, 0, 5]]  # no image of the second class
    path = confusion_png(tmp_path / "c.png", matrix, ["head", "femur", "thorax"], "t")
    w, h = _decoded_size(path)
    assert w > h >= 300  # a square matrix with its colour bar beside
    assert [p.name for p in path.parent.iterdir()] == ["c.png"]


def test_line_chart_refuses_mismatched_lengths(tmp_path):
    with pytest.raises(ValueError, match="'a'"):
        line_chart(tmp_path / "l.png", [1, 2], {"a": ([1.0], [0.1])}, "t", "x", "y")
    assert not (tmp_path / "l.png").exists()


def test_figures_carry_their_labels(tmp_path):
    from fusynth.core.style import png_text

    matrix = [[3, 1], [2, 5]]
    text = png_text(confusion_png(tmp_path / "c.png", matrix, ["head", "femur"], "Views, test"))
    assert text["Title"] == "Views, test"
    for label in ("predicted view", "true view (images)", "share of the true view"):
        assert label in text["Description"].splitlines()
    chart = line_chart(
        tmp_path / "l.png",
        [2, 4],
        {"real only": ([0.5, 0.6], [0.1, 0.1]), "+4 synthetic": ([0.55, 0.7], [0.1, 0.1])},
        "Dice against real images",
        "real training images",
        "Dice",
        point_notes={"real only": ["", "2 empty"]},
        footnote="'N empty': predictions with no foreground",
    )
    lines = png_text(chart)["Description"].splitlines()
    assert {"real only", "+4 synthetic", "real training images", "Dice"} <= set(lines)
    assert "'N empty': predictions with no foreground" in lines


def test_line_chart_notes_must_match_x(tmp_path):
    with pytest.raises(ValueError, match="1 notes for 2 x values"):
        line_chart(tmp_path / "l.png", [1, 2], {"a": ([1, 2], [0, 0])}, "t", "x", "y", {"a": ["x"]})
