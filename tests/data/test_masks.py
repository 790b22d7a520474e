"""Mask extraction (packed method), outline detection, conditioning pictures, and the
head ellipse prior."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fusynth.core.errors import UserInputError
from fusynth.data.ellipse_prior import EllipsePrior, fit_ellipse_prior, mask_ellipse
from fusynth.data.geometry import Ellipse, ellipse_mask, mask_outline
from fusynth.data.masks import conditioning_image, extract_head_mask, is_outline, signed_distance


def _channel(ell: Ellipse, shape=(64, 64), noise=0, seed=0):
    rng = np.random.default_rng(seed)
    ch = ellipse_mask(shape, ell).astype(np.float64) * 230 + rng.normal(0, noise, shape)
    return np.clip(ch, 0, 255).astype(np.uint8)


def test_extractor_recovers_a_noisy_ellipse():
    ell = Ellipse(32, 30, 20, 14, 0.6)
    out = extract_head_mask(_channel(ell, noise=25))
    assert out.accepted and out.residual < 0.05
    truth = ellipse_mask((64, 64), ell)
    iou = (truth & (out.mask > 0)).sum() / (truth | (out.mask > 0)).sum()
    assert iou > 0.95
    assert out.ellipse.a == pytest.approx(20, abs=1.5) and out.ellipse.b == pytest.approx(
        14, abs=1.5
    )


def test_extractor_keeps_the_largest_component_and_fills_holes():
    ch = _channel(Ellipse(30, 30, 18, 12, 0.0))
    ch[5:9, 55:60] = 255  # a speck elsewhere
    ch[28:32, 28:32] = 0  # a hole inside
    out = extract_head_mask(ch)
    assert out.accepted and out.mask[6, 57] == 0 and out.mask[30, 30] == 1


def test_extractor_rejects_what_is_not_an_ellipse_and_says_why():
    square = np.zeros((64, 64), np.uint8)
    square[10:30, 10:50] = 255
    square[30:50, 10:20] = 255  # an L shape
    out = extract_head_mask(square)
    assert not out.accepted and out.residual > 0.15 and "residual" in out.reason
    empty = extract_head_mask(np.zeros((64, 64), np.uint8))
    assert not empty.accepted and empty.mask is None and "threshold" in empty.reason
    tiny = extract_head_mask(_channel(Ellipse(32, 32, 3, 2, 0)))
    assert not tiny.accepted


def test_outline_detection():
    filled = ellipse_mask((64, 64), Ellipse(32, 32, 20, 15, 0.3))
    assert not is_outline(filled)
    assert is_outline(mask_outline(filled))


def test_conditioning_pictures():
    mask = ellipse_mask((64, 64), Ellipse(32, 32, 20, 15, 0.3)).astype(np.uint8)
    filled = conditioning_image(mask, "filled")
    assert set(np.unique(filled)) == {0, 255}
    dist = conditioning_image(mask, "distance")
    assert dist[32, 32] > 200 and dist[0, 0] < 60
    sd = signed_distance(mask)
    assert sd[32, 32] > 0 > sd[0, 0] and np.abs(sd).max() <= 1
    with pytest.raises(ValueError, match="unknown conditioning"):
        conditioning_image(mask, "edges")


def test_ellipse_prior_fits_and_samples_like_the_data():
    rng = np.random.default_rng(0)
    masks = []
    for i in range(30):
        a = rng.uniform(20, 30)
        ell = Ellipse(
            rng.uniform(50, 70),
            rng.uniform(40, 60),
            a,
            a * rng.uniform(0.7, 0.9),
            rng.uniform(0, 0.5),
        )
        masks.append((ellipse_mask((100, 120), ell).astype(np.uint8), "1" if i < 15 else "2"))
    prior = fit_ellipse_prior(masks)
    assert set(prior.groups) == {"all", "1", "2"} and prior.groups["all"].n == 30
    real_area = np.mean([m.mean() for m, _ in masks])
    drawn = [prior.sample(np.random.default_rng(k), (100, 120)) for k in range(40)]
    assert np.mean([m.mean() for m, _ in drawn]) == pytest.approx(real_area, rel=0.15)
    for mask, ell in drawn[:5]:
        assert mask.shape == (100, 120) and mask.max() == 1
        assert mask_ellipse(mask).a == pytest.approx(ell.a, rel=0.1)
    # Same seed, same mask; serialisation round trip keeps the distribution.
    again = EllipsePrior.from_json(prior.to_json())
    a, _ = prior.sample(np.random.default_rng(3), (100, 120), "2")
    b, _ = again.sample(np.random.default_rng(3), (100, 120), "2")
    assert np.array_equal(a, b)
    with pytest.raises(UserInputError, match="no ellipse prior for '3'"):
        prior.sample(np.random.default_rng(0), (100, 120), "3")


def test_ellipse_prior_needs_masks():
    m = ellipse_mask((40, 40), Ellipse(20, 20, 10, 8, math.pi / 4)).astype(np.uint8)
    with pytest.raises(UserInputError, match="at least 3 masks"):
        fit_ellipse_prior([(m, None)])
