from __future__ import annotations

import math

import numpy as np
import pytest

from fusynth.data.geometry import (
    Ellipse,
    ellipse_mask,
    fit_ellipse,
    mask_outline,
    ramanujan_perimeter,
)


def test_ramanujan_circle_and_known_ellipse():
    assert ramanujan_perimeter(10, 10) == pytest.approx(2 * math.pi * 10, rel=1e-12)
    # Exact perimeter of a=2, b=1 (complete elliptic integral): 9.688448220547675
    assert ramanujan_perimeter(2, 1) == pytest.approx(9.688448220547675, rel=1e-9)
    assert ramanujan_perimeter(0, 0) == 0.0
    with pytest.raises(ValueError):
        ramanujan_perimeter(-1, 1)


@pytest.mark.parametrize("angle", [0.0, 0.7, 2.0])
def test_fit_ellipse_recovers_parameters(angle):
    true = Ellipse(cx=40.5, cy=31.0, a=20.0, b=12.0, angle=angle)
    t = np.linspace(0, 2 * math.pi, 200, endpoint=False)
    c, s = math.cos(angle), math.sin(angle)
    x = true.cx + true.a * np.cos(t) * c - true.b * np.sin(t) * s
    y = true.cy + true.a * np.cos(t) * s + true.b * np.sin(t) * c
    fit = fit_ellipse(np.stack([x, y], axis=1))
    assert fit.cx == pytest.approx(true.cx, abs=1e-6)
    assert fit.cy == pytest.approx(true.cy, abs=1e-6)
    assert fit.a == pytest.approx(true.a, abs=1e-6)
    assert fit.b == pytest.approx(true.b, abs=1e-6)
    assert fit.angle == pytest.approx(angle % math.pi, abs=1e-6)


def test_fit_ellipse_rejects_too_few_or_degenerate_points():
    with pytest.raises(ValueError, match="at least 5"):
        fit_ellipse(np.zeros((4, 2)))
    with pytest.raises(ValueError):
        fit_ellipse(np.stack([np.arange(10.0), np.arange(10.0)], axis=1))


def test_ellipse_mask_area_and_outline():
    ell = Ellipse(64, 64, 40, 25, 0.4)
    mask = ellipse_mask((128, 128), ell)
    assert mask.sum() == pytest.approx(ell.area, rel=0.01)
    ring = mask_outline(mask)
    assert ring.sum() == pytest.approx(ell.perimeter, rel=0.35)  # 4-connected staircase
    assert not (ring & ~mask).any()
