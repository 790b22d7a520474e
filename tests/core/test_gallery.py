"""Labelled image grids: the building block of every sample picture fusynth writes."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from fusynth.core.gallery import MIN_TILE_PX, Tile, image_grid
from fusynth.core.style import png_text


def _tiles(n: int, size: int = 64) -> list[Tile]:
    rng = np.random.default_rng(0)
    return [
        Tile(rng.integers(0, 255, (size, size), dtype=np.uint8), f"tile {i}\nseed {i}")
        for i in range(n)
    ]


def test_small_tiles_are_enlarged_and_everything_is_labelled(tmp_path):
    path = tmp_path / "g.png"
    labels = image_grid(
        path,
        _tiles(6),
        "Six samples",
        cols=3,
        legend=[("ground truth", "#00ff00"), ("prediction", "#ff0000")],
        legend_kind="line",
        footnote="caption: tile, seed",
    )
    with Image.open(path) as im:
        assert im.width >= 3 * MIN_TILE_PX and im.height >= 2 * MIN_TILE_PX  # not 3 x 64
    text = png_text(path)
    assert text["Title"] == "Six samples" == labels[0]
    assert text["Description"].splitlines() == labels
    assert {"tile 0 seed 0", "tile 5 seed 5", "ground truth", "prediction"} <= set(labels)
    assert "caption: tile, seed" in labels


def test_rgb_tiles_frames_and_empty_places(tmp_path):
    rgb = np.zeros((32, 32, 3), np.uint8)
    rgb[..., 0] = 200
    tiles = [Tile(rgb, "red", frame="#0000ff"), Tile(None), Tile(rgb, "second row")]
    image_grid(tmp_path / "g.png", tiles, "Frames", cols=2, legend=[("frame: brain", "#0000ff")])
    with Image.open(tmp_path / "g.png") as im:
        px = np.asarray(im.convert("RGB")).reshape(-1, 3)
    assert ((px[:, 2] > 200) & (px[:, 0] < 60)).any()  # the blue frame is drawn
    assert ((px[:, 0] > 180) & (px[:, 1] < 40)).any()  # the red image is shown in colour
    assert "second row" in png_text(tmp_path / "g.png")["Description"]


def test_nothing_to_draw_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no tile"):
        image_grid(tmp_path / "g.png", [Tile(None)], "Empty")
    assert not (tmp_path / "g.png").exists()
