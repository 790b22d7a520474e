"""The classical augmentation pipeline: one geometry for image and mask, seeded."""

from __future__ import annotations

import numpy as np
import pytest

from fusynth.core.errors import UserInputError
from fusynth.data.augment import CLASSICAL, ClassicalAugment
from fusynth.data.geometry import Ellipse, ellipse_mask


def _pair(h=64, w=80):
    mask = ellipse_mask((h, w), Ellipse(cx=30, cy=28, a=18, b=11, angle=0.4))
    return (mask * 200).astype(np.uint8), mask


def test_image_and_mask_share_the_geometry():
    image, mask = _pair()
    geometric = ClassicalAugment(gamma=(1.0, 1.0), speckle=0.0, hflip=0.5)
    for seed in range(6):
        out, out_mask = geometric(image, mask, seed)
        assert out_mask.dtype == bool and out.dtype == np.uint8 and out.shape == image.shape
        # The bright head moved exactly where the mask went (bilinear edges aside).
        assert np.mean((out > 100) == out_mask) > 0.98
        assert not np.array_equal(out_mask, mask)  # something moved


def test_a_flip_alone_is_exact_and_seeds_are_reproducible():
    image, mask = _pair()
    flip = ClassicalAugment(hflip=1.0, degrees=0, scale=(1, 1), translate=0, elastic_alpha=0,
                            gamma=(1, 1), speckle=0)  # fmt: skip
    out, out_mask = flip(image, mask, 0)
    assert np.array_equal(out, image[:, ::-1]) and np.array_equal(out_mask, mask[:, ::-1])
    a = CLASSICAL(image, mask, [1, 2])
    b = CLASSICAL(image, mask, [1, 2])
    c = CLASSICAL(image, mask, [1, 3])
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_intensity_steps_leave_the_mask_and_label_values_alone():
    image, mask = _pair()
    labels = mask.astype(np.uint8) * 2  # a label map, not just bool
    bright = ClassicalAugment(hflip=0, degrees=0, scale=(1, 1), translate=0, elastic_alpha=0)
    out, out_labels = bright(image, labels, 5)
    assert np.array_equal(out_labels, labels) and out_labels.dtype == np.uint8
    assert not np.array_equal(out, image)  # gamma and speckle changed the pixels
    assert CLASSICAL.describe()["pipeline"].endswith("ClassicalAugment")
    with pytest.raises(UserInputError, match="hflip"):
        ClassicalAugment(hflip=2)
