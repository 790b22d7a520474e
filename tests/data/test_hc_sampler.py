"""Heads drawn for an HC asked in mm: the measured HC is the one asked for."""

from __future__ import annotations

import numpy as np
import pytest

from fusynth.core.errors import UserInputError
from fusynth.data.ellipse_prior import fit_ellipse_prior
from fusynth.data.geometry import Ellipse, boundary_points, ellipse_mask, fit_ellipse


@pytest.fixture(scope="module")
def prior():
    masks = [
        ellipse_mask(
            (120, 160), Ellipse(cx=80 + 3 * i, cy=60, a=30 + 2 * i, b=22 + i, angle=0.2 * i)
        )
        for i in range(6)
    ]
    return fit_ellipse_prior([(m, None) for m in masks])


@pytest.mark.parametrize(("hc_mm", "spacing"), [(100.0, 0.5), (180.0, 0.5), (300.0, 1.0)])
def test_measured_hc_matches_the_request(prior, hc_mm, spacing):
    rng = np.random.default_rng(0)
    for _ in range(3):
        mask, ell = prior.sample_hc(rng, (120, 160), hc_mm, spacing)
        assert ell.perimeter * spacing == pytest.approx(hc_mm, rel=1e-9)
        # What segmentation metrics measure (fit to the mask's boundary) agrees to ~3%.
        measured = fit_ellipse(boundary_points(mask > 0)).perimeter * spacing
        assert measured == pytest.approx(hc_mm, rel=0.03)
        ys, xs = np.nonzero(mask)
        assert ys.min() > 0 and xs.min() > 0 and ys.max() < 119 and xs.max() < 159  # inside


def test_a_head_too_big_for_the_frame_is_refused(prior):
    with pytest.raises(UserInputError, match="does not fit a 160x120 frame"):
        prior.sample_hc(np.random.default_rng(0), (120, 160), 1000.0, 1.0)
    with pytest.raises(UserInputError, match="must be positive"):
        prior.sample_hc(np.random.default_rng(0), (120, 160), 100.0, 0.0)
