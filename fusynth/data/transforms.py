"""Geometric transforms shared by every model input path."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import torch


def pad_to_square(image: np.ndarray, fill: int = 0) -> np.ndarray:
    """Pad ``[H, W]`` or ``[H, W, C]`` to a centred square without distorting it.

    Ultrasound frames have a black background, so black padding adds no structure.
    """
    h, w = image.shape[:2]
    side = max(h, w)
    top, left = (side - h) // 2, (side - w) // 2
    pad = [(top, side - h - top), (left, side - w - left)] + [(0, 0)] * (image.ndim - 2)
    return np.pad(image, pad, mode="constant", constant_values=fill)


def center_crop_square(image: np.ndarray) -> np.ndarray:
    """Crop the largest centred square."""
    h, w = image.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return image[top : top + side, left : left + side]


def square_resize(
    image: np.ndarray,
    size: int,
    center_crop: bool = False,
    resample: int = Image.Resampling.BICUBIC,
) -> np.ndarray:
    """Make ``image`` (``[H, W]`` uint8) square (pad, or crop) and resize to ``size``.

    Returns:
        ``[size, size]`` uint8.
    """
    square = center_crop_square(image) if center_crop else pad_to_square(image)
    return np.asarray(Image.fromarray(square).resize((size, size), resample))


def square_batch(images: Sequence[np.ndarray], size: int) -> torch.Tensor:
    """Grayscale ``[H, W]`` uint8 images padded to square and resized:
    ``[N, size, size]`` uint8."""
    import torch

    return torch.from_numpy(np.stack([square_resize(im, size) for im in images]))
