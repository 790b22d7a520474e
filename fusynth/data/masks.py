"""Head masks: recovering them from generated pictures, checking them, and turning them
into conditioning images.

The packed method generates a mask as one colour channel of an RGB picture; the seed
work cut that channel at 180 and corrected the result by hand. :func:`extract_head_mask`
replaces the hand: threshold, largest connected component, ellipse fit, fill, and a
residual that says how far the component was from an ellipse, so poor samples are
rejected with a number attached.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from fusynth.data.geometry import Ellipse, boundary_points, ellipse_mask, fit_ellipse


@dataclass(frozen=True)
class Extraction:
    """Result of :func:`extract_head_mask`.

    Attributes:
        mask: ``[H, W]`` uint8 0/1 filled ellipse, or None when nothing was found.
        ellipse: the fitted ellipse, or None.
        residual: ``1 - IoU`` between the thresholded component (holes filled) and the
            fitted ellipse; 1.0 when nothing was found.
        accepted: ``residual <= max_residual`` and the area is in range.
        reason: why a sample was rejected ("" when accepted).
    """

    mask: np.ndarray | None
    ellipse: Ellipse | None
    residual: float
    accepted: bool
    reason: str = ""


def extract_head_mask(
    channel: np.ndarray,
    threshold: int = 180,
    max_residual: float = 0.15,
    min_area: float = 0.005,
    max_area: float = 0.9,
) -> Extraction:
    """Recover a filled head mask from a generated mask channel.

    Args:
        channel: ``[H, W]`` uint8, the channel that carries the mask.
        threshold: pixels ``>= threshold`` are foreground (the seed work used 180).
        max_residual: largest accepted ``1 - IoU`` between component and ellipse.
        min_area: smallest accepted mask area, as a share of the image.
        max_area: largest accepted mask area, as a share of the image.

    Returns:
        The extraction (see :class:`Extraction`).
    """
    fg = np.asarray(channel) >= threshold
    labels, n = ndi.label(fg)
    if n == 0:
        return Extraction(None, None, 1.0, False, "no pixel above the threshold")
    sizes = ndi.sum(fg, labels, index=np.arange(1, n + 1))
    component = ndi.binary_fill_holes(labels == (int(np.argmax(sizes)) + 1))
    points = boundary_points(component)
    if len(points) < 10:
        return Extraction(None, None, 1.0, False, "component too small to fit")
    try:
        ellipse = fit_ellipse(points)
    except ValueError:
        return Extraction(None, None, 1.0, False, "no ellipse fits the component")
    filled = ellipse_mask(component.shape, ellipse)
    union = (filled | component).sum()
    residual = float(1.0 - (filled & component).sum() / union) if union else 1.0
    area = float(filled.mean())
    reason = ""
    if residual > max_residual:
        reason = f"residual {residual:.3f} > {max_residual}"
    elif not min_area <= area <= max_area:
        reason = f"area {area:.3f} outside [{min_area}, {max_area}]"
    return Extraction(filled.astype(np.uint8), ellipse, residual, not reason, reason)


def is_outline(mask: np.ndarray) -> bool:
    """True when a mask looks like a curve rather than a filled region: filling its
    holes more than doubles its area."""
    fg = np.asarray(mask) > 0
    if not fg.any():
        return False
    return ndi.binary_fill_holes(fg).sum() > 2 * fg.sum()


def signed_distance(mask: np.ndarray, scale: float | None = None) -> np.ndarray:
    """Signed distance to the mask boundary, positive inside, squashed to ``[-1, 1]``.

    Args:
        mask: ``[H, W]`` label map (foreground > 0).
        scale: distance in pixels that maps to 1 (default: a tenth of the image side).

    Returns:
        ``[H, W]`` float32 in ``[-1, 1]``.
    """
    fg = np.asarray(mask) > 0
    scale = scale or max(fg.shape) / 10.0
    inside = ndi.distance_transform_edt(fg)
    outside = ndi.distance_transform_edt(~fg)
    return np.tanh((inside - outside) / scale).astype(np.float32)


def conditioning_image(mask: np.ndarray, kind: str) -> np.ndarray:
    """The ControlNet conditioning picture of a mask, ``[H, W]`` uint8.

    ``filled``: 255 inside, 0 outside. ``distance``: the signed distance map scaled to
    0..255 (128 on the boundary).
    """
    if kind == "filled":
        return (np.asarray(mask) > 0).astype(np.uint8) * 255
    if kind == "distance":
        return np.clip(np.rint((signed_distance(mask) + 1.0) * 127.5), 0, 255).astype(np.uint8)
    raise ValueError(f"unknown conditioning {kind!r}: choose filled or distance")
