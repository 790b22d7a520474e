from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from fusynth.core.errors import UserInputError
from fusynth.data.geometry import Ellipse, ellipse_mask, mask_outline
from fusynth.data.images import fill_outline, label_map, read_grayscale, read_mask


def test_fill_outline_closed_curve_matches_ellipse():
    ell = Ellipse(50, 40, 30, 20, 0.5)
    full = ellipse_mask((80, 100), ell)
    filled = fill_outline(mask_outline(full))
    assert (filled == full).all()


def test_fill_outline_8_connected_curve_is_closed():
    # A diamond drawn with diagonal steps only: closed for an 8-connected curve.
    ring = np.zeros((21, 21), bool)
    for i in range(11):
        ring[i, 10 + i] = ring[i, 10 - i] = ring[20 - i, 10 + i] = ring[20 - i, 10 - i] = True
    filled = fill_outline(ring)
    assert filled[10, 10] and filled.sum() > ring.sum()


def test_fill_outline_clipped_by_border_closes_along_the_short_side():
    ell = Ellipse(50, 10, 30, 20, 0.0)  # top of the ellipse is outside the frame
    full = ellipse_mask((80, 100), ell)
    outline = mask_outline(full)
    # Like HC18's clipped annotations: the curve reaches the border at its two ends only.
    xs = np.nonzero(full[0])[0]
    outline[0, :] = False
    outline[0, [xs[0], xs[-1]]] = True
    filled = fill_outline(outline)
    iou = (filled & full).sum() / (filled | full).sum()
    assert iou > 0.97
    assert not filled[79, 50]  # the outside was not filled


def test_fill_outline_with_gap_raises():
    outline = mask_outline(ellipse_mask((80, 100), Ellipse(50, 40, 30, 20, 0.0)))
    outline[35:46, 70:] = False  # cut the right side open
    with pytest.raises(ValueError, match="does not close"):
        fill_outline(outline)


def test_read_grayscale_converts_rgb_and_16_bit(tmp_path):
    rgb = np.zeros((5, 6, 3), np.uint8)
    rgb[..., 0] = 255
    Image.fromarray(rgb, "RGB").save(tmp_path / "rgb.png")
    out = read_grayscale(tmp_path / "rgb.png")
    assert out.shape == (5, 6) and out.dtype == np.uint8
    assert int(out[0, 0]) == 76  # ITU-R 601 luma of pure red
    deep = np.arange(30, dtype=np.uint16).reshape(5, 6) * 1000
    Image.fromarray(deep).save(tmp_path / "deep.png")
    out16 = read_grayscale(tmp_path / "deep.png")
    assert out16.max() == 255 and out16.min() == 0


def test_truncated_image_is_named(tmp_path):
    Image.fromarray(np.full((64, 64), 7, np.uint8)).save(tmp_path / "x.png")
    data = (tmp_path / "x.png").read_bytes()
    (tmp_path / "x.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserInputError, match="x.png"):
        read_grayscale(tmp_path / "x.png")


def test_read_mask_errors_name_the_file(tmp_path):
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "empty.png")
    with pytest.raises(UserInputError, match="empty.png: mask is empty"):
        read_mask(tmp_path / "empty.png")
    Image.fromarray(np.full((10, 12), 255, np.uint8)).save(tmp_path / "big.png")
    with pytest.raises(UserInputError, match=r"big.png: mask is 12x10 but its image is 11x10"):
        read_mask(tmp_path / "big.png", shape=(10, 11))


def test_label_map_keeps_small_labels_and_binarises_255():
    assert label_map(np.array([[0, 1, 2]], np.uint8)).tolist() == [[0, 1, 2]]
    assert label_map(np.array([[0, 200, 255, 100]], np.uint8)).tolist() == [[0, 1, 1, 0]]
