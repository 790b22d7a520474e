"""Segmentation metrics against hand-computed cases (and torchmetrics where it has one)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fusynth.data.geometry import Ellipse, ellipse_mask, ramanujan_perimeter
from fusynth.segment.metrics import (
    dice_iou,
    hd95_assd,
    head_circumference,
    segmentation_metrics,
    surface_distances,
)


def _block(shape, top, left, h, w):
    m = np.zeros(shape, dtype=np.uint8)
    m[top : top + h, left : left + w] = 1
    return m


def test_single_pixels_apart_with_anisotropic_spacing():
    a = _block((5, 8), 2, 1, 1, 1)
    b = _block((5, 8), 2, 4, 1, 1)  # 3 columns to the right
    assert hd95_assd(a, b) == (3.0, 3.0)
    assert hd95_assd(a, b, spacing=(0.5, 2.0)) == (6.0, 6.0)  # columns are 2 mm wide


def test_concentric_squares_by_hand():
    inner = _block((20, 20), 5, 5, 10, 10)  # surface: 36 pixels
    outer = _block((20, 20), 4, 4, 12, 12)  # surface: 44 pixels, 1 px further out
    d_io, d_oi = surface_distances(inner, outer)
    # Every inner surface pixel has an outer surface pixel 1 px away; of the outer
    # surface, the 4 corners are sqrt(2) from the inner corners, the other 40 are 1 away.
    assert sorted(d_io) == [1.0] * 36
    assert sorted(d_oi) == [1.0] * 40 + [math.sqrt(2)] * 4
    hd95, assd = hd95_assd(inner, outer)
    # 95th percentile of the 44 outer distances, linear interpolation: position
    # 0.95 * 43 = 40.85 falls between the 41st and 42nd sorted values, both sqrt(2)
    # (the first 40 are 1); the inner side's 95th percentile is 1.
    assert hd95 == pytest.approx(math.sqrt(2))
    assert assd == pytest.approx((36 + 40 + 4 * math.sqrt(2)) / 80)
    dice, iou = dice_iou(inner, outer)
    assert dice == pytest.approx(2 * 100 / (100 + 144))
    assert iou == pytest.approx(100 / 144)


def test_identical_and_empty_masks():
    m = _block((10, 10), 2, 2, 5, 4)
    assert dice_iou(m, m) == (1.0, 1.0) and hd95_assd(m, m) == (0.0, 0.0)
    empty = np.zeros_like(m)
    assert dice_iou(empty, empty) == (1.0, 1.0) and hd95_assd(empty, empty) == (0.0, 0.0)
    assert dice_iou(m, empty)[0] == 0.0
    assert all(math.isnan(v) for v in hd95_assd(m, empty))


@pytest.mark.parametrize("shape", [(64, 64), (48, 64), (66, 50)])
def test_surface_distances_match_brute_force_on_any_frame_shape(shape):
    from scipy.spatial.distance import cdist

    from fusynth.data.geometry import mask_outline

    a = ellipse_mask(shape, Ellipse(30, 22, 18, 11, 0.4))
    b = ellipse_mask(shape, Ellipse(34, 25, 15, 12, 1.0))
    d = cdist(np.argwhere(mask_outline(a)), np.argwhere(mask_outline(b)))
    d_ab, d_ba = surface_distances(a, b)
    assert np.allclose(np.sort(d_ab), np.sort(d.min(axis=1)))
    assert np.allclose(np.sort(d_ba), np.sort(d.min(axis=0)))


def test_largest_surface_distance_matches_torchmetrics_hausdorff_on_square_frames():
    # torchmetrics 1.9's hausdorff_distance is wrong on non-square images (a larger value
    # when W > H, an IndexError when H > W), which is why the distances are computed here.
    from torchmetrics.functional.segmentation import hausdorff_distance

    a = ellipse_mask((64, 64), Ellipse(30, 22, 18, 11, 0.4)).astype(np.uint8)
    b = ellipse_mask((64, 64), Ellipse(34, 25, 15, 12, 1.0)).astype(np.uint8)
    d_ab, d_ba = surface_distances(a, b)
    theirs = hausdorff_distance(
        torch.from_numpy(a.astype(np.int64))[None],
        torch.from_numpy(b.astype(np.int64))[None],
        num_classes=2,
        input_format="index",
    )
    assert max(d_ab.max(), d_ba.max()) == pytest.approx(float(theirs.reshape(-1)[0]), rel=1e-5)


def test_head_circumference_and_error_in_mm():
    ell = Ellipse(64, 60, 40, 28, 0.3)
    mask = ellipse_mask((128, 128), ell).astype(np.uint8)
    assert head_circumference(mask) == pytest.approx(ramanujan_perimeter(40, 28), rel=0.01)
    smaller = ellipse_mask((128, 128), Ellipse(64, 60, 38, 27, 0.3)).astype(np.uint8)
    m = segmentation_metrics(
        smaller, mask, pixel_spacing_mm=0.2, true_hc_mm=ramanujan_perimeter(40, 28) * 0.2
    )
    expected = abs(ramanujan_perimeter(38, 27) - ramanujan_perimeter(40, 28)) * 0.2
    assert m["hc_abs_error_mm"] == pytest.approx(expected, rel=0.05)
    assert m["hd95_mm"] == pytest.approx(m["hd95_px"] * 0.2, rel=1e-6)
    assert segmentation_metrics(smaller, mask)["hd95_mm"] is None  # no spacing, no mm
