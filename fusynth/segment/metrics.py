"""Segmentation metrics at native resolution, in pixels and in millimetres, and head
biometry from a predicted mask.

Dice and IoU come from torchmetrics. torchmetrics has no 95th-percentile Hausdorff
distance or average symmetric surface distance, and its Hausdorff distance (1.9) is
wrong on non-square images, which native-resolution ultrasound frames are; so surface
distances are computed here (scipy's exact Euclidean distance transform, with the pixel
spacing as sampling) and tested against hand-computed cases and brute force.
Conventions follow MONAI:

* the surface of a mask is its inner boundary (4-connectivity);
* HD95 is the larger of the two directed 95th percentiles (``numpy.percentile``,
  linear interpolation) of surface-to-surface distances;
* ASSD is the mean of all surface distances in both directions;
* when exactly one mask is empty the distances are undefined (NaN) and Dice is 0;
  when both are empty, Dice and IoU are 1 and the distances 0.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from scipy import ndimage as ndi

from fusynth.data.geometry import boundary_points, fit_ellipse, mask_outline


def _as_bool(mask: np.ndarray) -> np.ndarray:
    return np.asarray(mask) > 0


def binary_dice(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Dice of two boolean masks on any device, 1.0 when both are empty: the cheap
    validation score of the training loops (reports use :func:`dice_iou`)."""
    denom = pred.sum() + target.sum()
    return float(2 * (pred & target).sum() / denom) if denom else 1.0


def dice_iou(pred: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    """Foreground Dice and IoU of two ``[H, W]`` masks (torchmetrics)."""
    from torchmetrics.functional.segmentation import dice_score, mean_iou

    p, t = _as_bool(pred), _as_bool(target)
    if not p.any() and not t.any():
        return 1.0, 1.0
    pt = torch.from_numpy(p.astype(np.int64))[None]
    tt = torch.from_numpy(t.astype(np.int64))[None]
    dice = dice_score(pt, tt, num_classes=2, include_background=False, input_format="index")
    iou = mean_iou(pt, tt, num_classes=2, include_background=False, input_format="index")
    return float(dice.reshape(-1)[0]), float(iou.reshape(-1)[0])


def surface_distances(
    pred: np.ndarray, target: np.ndarray, spacing: tuple[float, float] = (1.0, 1.0)
) -> tuple[np.ndarray, np.ndarray]:
    """Directed distances from each surface pixel of one mask to the other's surface.

    Args:
        pred: ``[H, W]`` mask.
        target: ``[H, W]`` mask of the same shape.
        spacing: ``(row, column)`` size of a pixel (1 for pixels, mm for millimetres).

    Returns:
        ``(pred -> target, target -> pred)`` distance arrays.
    """
    p, t = _as_bool(pred), _as_bool(target)
    if p.shape != t.shape:
        raise ValueError(f"masks differ in shape: {p.shape} and {t.shape}")
    sp, st = mask_outline(p), mask_outline(t)
    to_t = ndi.distance_transform_edt(~st, sampling=spacing)
    to_p = ndi.distance_transform_edt(~sp, sampling=spacing)
    return to_t[sp], to_p[st]


def hd95_assd(
    pred: np.ndarray, target: np.ndarray, spacing: tuple[float, float] = (1.0, 1.0)
) -> tuple[float, float]:
    """95th-percentile Hausdorff distance and average symmetric surface distance."""
    p, t = _as_bool(pred), _as_bool(target)
    if not p.any() and not t.any():
        return 0.0, 0.0
    if not p.any() or not t.any():
        return math.nan, math.nan
    d_pt, d_tp = surface_distances(p, t, spacing)
    hd95 = max(float(np.percentile(d_pt, 95)), float(np.percentile(d_tp, 95)))
    assd = float((d_pt.sum() + d_tp.sum()) / (len(d_pt) + len(d_tp)))
    return hd95, assd


def head_circumference(mask: np.ndarray) -> float | None:
    """Head circumference in pixels: Ramanujan's perimeter of the ellipse fitted to the
    mask's edge (None when no ellipse fits)."""
    fg = _as_bool(mask)
    if fg.sum() < 5:
        return None
    try:
        return fit_ellipse(boundary_points(fg)).perimeter
    except ValueError:
        return None


def segmentation_metrics(
    pred: np.ndarray,
    target: np.ndarray,
    pixel_spacing_mm: float | None = None,
    true_hc_mm: float | None = None,
) -> dict[str, Any]:
    """Every per-image metric, in pixels and (when the spacing is known) in mm.

    Args:
        pred: ``[H, W]`` predicted mask at native resolution.
        target: ``[H, W]`` ground-truth mask.
        pixel_spacing_mm: isotropic pixel size, if known.
        true_hc_mm: ground-truth head circumference (e.g. HC18's CSV); when absent and
            the spacing is known, the circumference of the target mask's ellipse is used.

    Returns:
        ``dice, iou, hd95_px, assd_px, hd95_mm, assd_mm, hc_px, hc_mm, hc_true_mm,
        hc_abs_error_mm`` (None where not computable).
    """
    dice, iou = dice_iou(pred, target)
    hd95_px, assd_px = hd95_assd(pred, target)
    out: dict[str, Any] = {
        "dice": dice,
        "iou": iou,
        "hd95_px": hd95_px,
        "assd_px": assd_px,
        "hd95_mm": None,
        "assd_mm": None,
    }
    hc_px = head_circumference(pred)
    out["hc_px"] = hc_px
    out["hc_mm"] = out["hc_true_mm"] = out["hc_abs_error_mm"] = None
    if pixel_spacing_mm:
        s = float(pixel_spacing_mm)
        out["hd95_mm"], out["assd_mm"] = hd95_assd(pred, target, (s, s))
        out["hc_mm"] = hc_px * s if hc_px is not None else None
        truth = true_hc_mm
        if truth is None:
            target_hc = head_circumference(target)
            truth = target_hc * s if target_hc is not None else None
        out["hc_true_mm"] = truth
        if truth is not None and out["hc_mm"] is not None:
            out["hc_abs_error_mm"] = abs(out["hc_mm"] - truth)
    return out
