"""Ellipse geometry shared by the phantom, the mask readers and head biometry.

Conventions: images are ``[H, W]`` arrays indexed ``[y, x]``; an ellipse is
``(cx, cy, a, b, angle)`` in pixels, ``a >= b`` the semi-axes, ``angle`` in radians,
measured from the x axis (pointing right) towards the y axis (pointing down).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np


class Ellipse(NamedTuple):
    """An ellipse in pixel coordinates (see module docstring for conventions)."""

    cx: float
    cy: float
    a: float
    b: float
    angle: float

    @property
    def area(self) -> float:
        """Area ``pi * a * b`` in square pixels."""
        return math.pi * self.a * self.b

    @property
    def perimeter(self) -> float:
        """Perimeter in pixels by Ramanujan's second approximation."""
        return ramanujan_perimeter(self.a, self.b)


def ramanujan_perimeter(a: float, b: float) -> float:
    """Perimeter of an ellipse with semi-axes ``a`` and ``b`` (Ramanujan II).

    This is the formula the HC18 challenge uses for head circumference; its relative
    error is below 1e-9 for the axis ratios of a fetal skull.
    """
    if a < 0 or b < 0:
        raise ValueError(f"semi-axes must be non-negative, got a={a}, b={b}")
    if a + b == 0:
        return 0.0
    h = ((a - b) / (a + b)) ** 2
    return math.pi * (a + b) * (1 + 3 * h / (10 + math.sqrt(4 - 3 * h)))


def ellipse_mask(shape: tuple[int, int], ellipse: Ellipse) -> np.ndarray:
    """Rasterise a filled ellipse.

    Args:
        shape: ``(H, W)`` of the output.
        ellipse: the ellipse; pixel ``(y, x)`` is inside when its centre is.

    Returns:
        ``[H, W]`` bool array, True inside the ellipse.
    """
    return ellipse_radius(shape, ellipse) <= 1.0


def ellipse_radius(shape: tuple[int, int], ellipse: Ellipse) -> np.ndarray:
    """Normalised elliptical radius of every pixel centre (1.0 on the ellipse).

    Args:
        shape: ``(H, W)`` of the output.
        ellipse: the ellipse.

    Returns:
        ``[H, W]`` float64 array; ``< 1`` inside, ``> 1`` outside.
    """
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    dx, dy = xx - ellipse.cx, yy - ellipse.cy
    c, s = math.cos(ellipse.angle), math.sin(ellipse.angle)
    u = dx * c + dy * s
    v = -dx * s + dy * c
    a = max(ellipse.a, 1e-9)
    b = max(ellipse.b, 1e-9)
    return np.sqrt((u / a) ** 2 + (v / b) ** 2)


def fit_ellipse(points: np.ndarray) -> Ellipse:
    """Least-squares ellipse through 2-D points (Fitzgibbon's direct method).

    Args:
        points: ``[N, 2]`` array of ``(x, y)``; ``N >= 5``.

    Returns:
        The fitted ellipse, ``a >= b``, angle in ``[0, pi)``.

    Raises:
        ValueError: fewer than 5 points, or the points admit no ellipse.
    """
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) < 5:
        raise ValueError(f"need at least 5 (x, y) points to fit an ellipse, got {pts.shape}")
    # Centre and scale for numerical stability.
    mean = pts.mean(axis=0)
    scale = np.sqrt(((pts - mean) ** 2).sum(axis=1).mean()) or 1.0
    x = (pts[:, 0] - mean[0]) / scale
    y = (pts[:, 1] - mean[1]) / scale
    d1 = np.stack([x * x, x * y, y * y], axis=1)
    d2 = np.stack([x, y, np.ones_like(x)], axis=1)
    s1, s2, s3 = d1.T @ d1, d1.T @ d2, d2.T @ d2
    try:
        t = -np.linalg.solve(s3, s2.T)
    except np.linalg.LinAlgError as exc:
        raise ValueError("points are degenerate (collinear?): no ellipse fits") from exc
    m = s1 + s2 @ t
    m = np.array([m[2] / 2, -m[1], m[0] / 2])
    evals, evecs = np.linalg.eig(m)
    evecs = np.real(evecs)
    cond = 4 * evecs[0] * evecs[2] - evecs[1] ** 2
    idx = np.where(cond > 0)[0]
    if len(idx) == 0:
        raise ValueError("points admit no ellipse (the best conic is not an ellipse)")
    a1 = evecs[:, idx[0]]
    coeffs = np.concatenate([a1, t @ a1])
    return _conic_to_ellipse(coeffs, mean, scale)


def _conic_to_ellipse(coeffs: np.ndarray, mean: np.ndarray, scale: float) -> Ellipse:
    a, b, c, d, e, f = coeffs
    # Conic: a x^2 + b xy + c y^2 + d x + e y + f = 0 in normalised coordinates.
    den = b * b - 4 * a * c
    if den >= 0:
        raise ValueError("the fitted conic is not an ellipse")
    x0 = (2 * c * d - b * e) / den
    y0 = (2 * a * e - b * d) / den
    # Value of the conic at the centre gives the scale of the axes.
    f0 = a * x0 * x0 + b * x0 * y0 + c * y0 * y0 + d * x0 + e * y0 + f
    mat = np.array([[a, b / 2], [b / 2, c]])
    evals, evecs = np.linalg.eigh(mat)
    axes_sq = -f0 / evals
    if np.any(axes_sq <= 0):
        raise ValueError("the fitted conic is not a real ellipse")
    # The conic's overall sign is arbitrary: pick the major axis by length.
    major = int(np.argmax(axes_sq))
    axes = np.sqrt(axes_sq[[major, 1 - major]]) * scale
    major_vec = evecs[:, major]
    angle = math.atan2(major_vec[1], major_vec[0]) % math.pi
    return Ellipse(
        cx=float(x0 * scale + mean[0]),
        cy=float(y0 * scale + mean[1]),
        a=float(axes[0]),
        b=float(axes[1]),
        angle=float(angle),
    )


def mask_outline(mask: np.ndarray) -> np.ndarray:
    """Inner boundary pixels (4-connectivity) of a boolean mask, as ``[H, W]`` bool."""
    m = np.asarray(mask, dtype=bool)
    padded = np.pad(m, 1, constant_values=False)
    interior = (
        padded[1:-1, 1:-1]
        & padded[:-2, 1:-1]
        & padded[2:, 1:-1]
        & padded[1:-1, :-2]
        & padded[1:-1, 2:]
    )
    return m & ~interior


def boundary_points(mask: np.ndarray) -> np.ndarray:
    """``[N, 2]`` (x, y) of the pixels on both sides of a mask's edge.

    Fitting an ellipse to the inner boundary alone puts it half a pixel inside the
    true edge (several percent of area for a small head); the pixels just inside and
    just outside straddle the edge, so their fit lies on it.
    """
    m = np.asarray(mask, dtype=bool)
    inner = mask_outline(m)
    outer = mask_outline(~m) & ~_touches_border(m.shape)
    ys, xs = np.nonzero(inner | outer)
    return np.stack([xs, ys], axis=1).astype(np.float64)


def _touches_border(shape: tuple[int, int]) -> np.ndarray:
    border = np.zeros(shape, dtype=bool)
    border[0, :] = border[-1, :] = border[:, 0] = border[:, -1] = True
    return border
