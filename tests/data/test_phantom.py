"""Tests for the procedural ultrasound phantom."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from fusynth.data.geometry import Ellipse, ellipse_mask, mask_outline, ramanujan_perimeter
from fusynth.data.phantom import (
    DEFAULT_PHANTOM_VIEWS,
    PHANTOM_VIEWS,
    PhantomFrame,
    _build_scene,
    default_pixel_spacing,
    draw_frame,
)

HEAD_VIEWS = ("head", "brain")
OTHER_VIEWS = tuple(v for v in PHANTOM_VIEWS if v not in HEAD_VIEWS)


def _frame(view: str, size: int, seed: int, spacing: float | None = None) -> PhantomFrame:
    return draw_frame(view, size, np.random.default_rng(seed), spacing)


def _fan_mask(view: str, size: int, seed: int) -> np.ndarray:
    """The sector of the frame drawn with ``seed`` (the scene is built first from the rng)."""
    scene = _build_scene(view, size, np.random.default_rng(seed), default_pixel_spacing(size))
    fan = scene.fan
    return (scene.r >= fan.r0) & (scene.r <= fan.r1) & (np.abs(scene.theta) <= fan.half_angle)


def test_view_lists() -> None:
    assert PHANTOM_VIEWS == ("head", "brain", "abdomen", "femur", "thorax")
    assert set(DEFAULT_PHANTOM_VIEWS) <= set(PHANTOM_VIEWS)
    assert "brain" not in DEFAULT_PHANTOM_VIEWS


def test_default_pixel_spacing() -> None:
    assert default_pixel_spacing(128) == pytest.approx(1.25)
    assert default_pixel_spacing(160) == pytest.approx(1.0)


@pytest.mark.parametrize("size", [64, 128])
@pytest.mark.parametrize("view", PHANTOM_VIEWS)
def test_shape_dtype_and_range(view: str, size: int) -> None:
    frame = _frame(view, size, seed=3)
    assert frame.view == view
    assert frame.image.shape == (size, size)
    assert frame.image.dtype == np.uint8
    assert frame.pixel_spacing_mm == pytest.approx(default_pixel_spacing(size))
    fan = _fan_mask(view, size, seed=3)
    # Uses a good part of the 8-bit range: bright echoes and dark fluid/shadows.
    assert frame.image.max() >= 200
    assert 25 <= frame.image[fan].mean() <= 130


@pytest.mark.parametrize("view", PHANTOM_VIEWS)
def test_fan_interior_mean_is_mid_grey_on_average(view: str) -> None:
    means = [_frame(view, 96, seed).image[_fan_mask(view, 96, seed)].mean() for seed in range(6)]
    assert 40 <= float(np.mean(means)) <= 110


@pytest.mark.parametrize("view", PHANTOM_VIEWS)
def test_deterministic_given_seed(view: str) -> None:
    a, b = _frame(view, 64, seed=11), _frame(view, 64, seed=11)
    assert np.array_equal(a.image, b.image)
    assert a.image.tobytes() == b.image.tobytes()
    if a.mask is not None:
        assert b.mask is not None and np.array_equal(a.mask, b.mask)
        assert a.ellipse == b.ellipse
    assert not np.array_equal(a.image, _frame(view, 64, seed=12).image)


def test_rng_is_advanced() -> None:
    rng = np.random.default_rng(0)
    first = draw_frame("head", 64, rng)
    second = draw_frame("head", 64, rng)
    assert not np.array_equal(first.image, second.image)


@pytest.mark.parametrize("view", PHANTOM_VIEWS)
def test_outside_fan_is_black(view: str) -> None:
    for seed in range(4):
        frame = _frame(view, 128, seed)
        img = frame.image
        for corner in (img[:6, :6], img[:6, -6:], img[-4:, :4], img[-4:, -4:]):
            assert not corner.any()
        fan = _fan_mask(view, 128, seed)
        assert not img[~fan].any()
        assert fan[64, 64] and fan[10, 64]


@pytest.mark.parametrize("view", HEAD_VIEWS)
def test_head_mask_semantics(view: str) -> None:
    size = 128
    for seed in range(20):
        frame = _frame(view, size, seed)
        assert frame.mask is not None and frame.ellipse is not None
        mask = frame.mask
        assert mask.shape == (size, size) and mask.dtype == np.uint8
        assert set(np.unique(mask)) == {0, 1}
        # Entirely inside the frame: no label on the border.
        assert not (mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())
        e = frame.ellipse
        assert np.array_equal(mask, ellipse_mask((size, size), e).astype(np.uint8))
        assert abs(mask.sum() - e.area) <= 0.02 * e.area
        assert 0.72 - 1e-9 <= e.b / e.a <= 0.9 + 1e-9
        hc = ramanujan_perimeter(e.a, e.b) * frame.pixel_spacing_mm
        assert frame.head_circumference_mm == pytest.approx(hc, rel=1e-12)
        assert 100.0 <= frame.head_circumference_mm <= 340.0
        # The head lies inside the sector, not on its black surround.
        fan = _fan_mask(view, size, seed)
        assert fan[mask.astype(bool)].all()


def test_head_circumference_spans_its_range() -> None:
    hcs = [_frame("head", 128, seed).head_circumference_mm for seed in range(40)]
    assert min(hcs) < 170 and max(hcs) > 260


def test_head_fits_with_custom_spacing() -> None:
    # 0.2 mm/px at 128 px cannot hold a 120-320 mm head: it is shrunk to fit, still valid.
    frame = _frame("head", 128, seed=5, spacing=0.2)
    assert frame.pixel_spacing_mm == 0.2
    assert frame.mask is not None and frame.ellipse is not None
    assert frame.mask[[0, -1]].sum() == 0 and frame.mask[:, [0, -1]].sum() == 0
    e = frame.ellipse
    assert frame.head_circumference_mm == pytest.approx(ramanujan_perimeter(e.a, e.b) * 0.2)
    assert frame.head_circumference_mm < 120


@pytest.mark.parametrize("view", OTHER_VIEWS)
def test_non_head_views_have_no_labels(view: str) -> None:
    frame = _frame(view, 64, seed=1)
    assert frame.mask is None
    assert frame.head_circumference_mm is None
    assert frame.ellipse is None


@pytest.mark.parametrize("view", HEAD_VIEWS)
def test_skull_ring_brighter_than_brain(view: str) -> None:
    size = 128
    for seed in range(8):
        frame = _frame(view, size, seed)
        assert frame.mask is not None
        head = frame.mask.astype(bool)
        outline = mask_outline(head)
        ring = ndimage.binary_dilation(outline, iterations=1) & head
        interior = ndimage.binary_erosion(head, iterations=max(4, size // 20))
        assert interior.sum() > 50
        img = frame.image.astype(np.float64)
        assert img[ring].mean() > img[interior].mean() + 40


def test_brain_view_differs_from_head_view_inside_the_skull() -> None:
    # Same seed, same scene around the head; the brain view adds dark ventricles/CSP.
    head, brain = _frame("head", 128, 4), _frame("brain", 128, 4)
    assert head.ellipse == brain.ellipse
    assert head.mask is not None
    interior = ndimage.binary_erosion(head.mask.astype(bool), iterations=8)
    diff = np.abs(head.image.astype(int) - brain.image.astype(int))[interior]
    assert diff.mean() > 5


def test_femur_bar_brighter_than_surrounding_fan() -> None:
    size = 128
    for seed in range(8):
        frame = _frame("femur", size, seed)
        scene = _build_scene("femur", size, np.random.default_rng(seed), frame.pixel_spacing_mm)
        bar = scene.regions["femur"]
        assert bar.sum() > 20
        # The bar is straight-ish and elongated.
        ys, xs = np.nonzero(bar)
        evals = np.linalg.eigvalsh(np.cov(np.stack([xs, ys])))
        assert math.sqrt(evals[1] / evals[0]) > 3
        fan = _fan_mask("femur", size, seed)
        around = fan & ~ndimage.binary_dilation(bar, iterations=2)
        img = frame.image.astype(np.float64)
        assert img[bar].mean() > img[around].mean() + 60


def test_femur_casts_acoustic_shadow() -> None:
    size = 128
    darker = 0
    for seed in range(6):
        frame = _frame("femur", size, seed)
        scene = _build_scene("femur", size, np.random.default_rng(seed), frame.pixel_spacing_mm)
        bar, fan = scene.regions["femur"], scene.fan
        fan_mask = (
            (scene.r >= fan.r0) & (scene.r <= fan.r1) & (np.abs(scene.theta) <= fan.half_angle)
        )
        # Pixels on the same beams as the bar but deeper.
        th = scene.theta[bar]
        beam = (scene.theta >= th.min()) & (scene.theta <= th.max())
        below = beam & (scene.r > scene.r[bar].max() + 3) & fan_mask
        beside = ~beam & fan_mask & (scene.r > scene.r[bar].max() + 3)
        if below.sum() > 30 and beside.sum() > 30:
            darker += frame.image[below].mean() < frame.image[beside].mean()
    assert darker >= 4


def test_structures_present_in_body_views() -> None:
    for view in ("abdomen", "thorax"):
        scene = _build_scene(view, 128, np.random.default_rng(2), 1.25)
        assert scene.regions["body"].sum() > 0.02 * 128 * 128


def test_invalid_view_raises() -> None:
    with pytest.raises(ValueError, match="kidney") as info:
        draw_frame("kidney", 64, np.random.default_rng(0))
    for view in PHANTOM_VIEWS:
        assert view in str(info.value)


@pytest.mark.parametrize("size", [0, 16, 31])
def test_too_small_size_raises(size: int) -> None:
    with pytest.raises(ValueError, match=str(size)):
        draw_frame("head", size, np.random.default_rng(0))


def test_bad_spacing_raises() -> None:
    with pytest.raises(ValueError, match="pixel_spacing_mm"):
        draw_frame("head", 64, np.random.default_rng(0), pixel_spacing_mm=0.0)


def test_minimum_size_works() -> None:
    for view in PHANTOM_VIEWS:
        frame = _frame(view, 32, seed=0)
        assert frame.image.shape == (32, 32)
        if frame.mask is not None:
            assert frame.mask.sum() > 0


def test_head_ellipse_type() -> None:
    frame = _frame("head", 64, seed=0)
    assert isinstance(frame.ellipse, Ellipse)
