"""Classical augmentation of an image and its mask: the baseline a synthetic cohort must beat.

One pipeline, defined here once and recorded in every experiment that uses it
(:meth:`ClassicalAugment.describe`): horizontal flip, affine jitter (rotation, scale,
translation), elastic deformation, gamma and multiplicative speckle noise. The geometric
steps are composed into one sampling grid that resamples the image (bilinear) and the
mask (nearest) together, so a mask always stays on its anatomy (MONAI's rule: an image
and its mask get the same geometric transform). Intensity steps touch the image only.
Every draw comes from ``numpy.random.default_rng(seed)``: a seed gives the same copy on
every machine, independent of torch's global generator.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from fusynth.core.errors import UserInputError


@dataclass(frozen=True)
class ClassicalAugment:
    """Settings of the classical pipeline (defaults: moderate, ultrasound-safe).

    A vertical flip is off by default: it moves the probe to the bottom of a sector
    scan, which no real frame shows.
    """

    hflip: float = 0.5  # probability
    vflip: float = 0.0
    degrees: float = 15.0  # rotation drawn in [-degrees, degrees]
    scale: tuple[float, float] = (0.9, 1.1)
    translate: float = 0.08  # shift drawn in [-translate, translate] x side
    elastic_alpha: float = 0.03  # displacement amplitude as a fraction of the short side
    elastic_sigma: float = 0.08  # smoothness of the displacement field, same unit
    gamma: tuple[float, float] = (0.7, 1.4)
    speckle: float = 0.15  # sd of the multiplicative noise I * (1 + speckle * N(0, 1))

    def __post_init__(self) -> None:
        for name in ("hflip", "vflip"):
            if not 0 <= getattr(self, name) <= 1:
                raise UserInputError(f"classical augmentation: {name} must be in [0, 1]")
        if not 0 < self.scale[0] <= self.scale[1]:
            raise UserInputError(f"classical augmentation: bad scale range {self.scale}")
        if not 0 < self.gamma[0] <= self.gamma[1]:
            raise UserInputError(f"classical augmentation: bad gamma range {self.gamma}")
        for name in ("degrees", "translate", "elastic_alpha", "elastic_sigma", "speckle"):
            if getattr(self, name) < 0:
                raise UserInputError(f"classical augmentation: {name} must be >= 0")

    def describe(self) -> dict[str, Any]:
        """The pipeline as recorded in an experiment's request and results."""
        return {"pipeline": "fusynth.data.augment.ClassicalAugment", **asdict(self)}

    def __call__(
        self, image: np.ndarray, mask: np.ndarray | None, seed: int | list[int]
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """One augmented copy.

        Args:
            image: ``[H, W]`` uint8 grayscale frame.
            mask: ``[H, W]`` label map (bool or integer) or None.
            seed: seed (or seed sequence) of this copy.

        Returns:
            ``(image, mask)``: uint8 ``[H, W]`` and a mask of the input's dtype (None
            stays None).
        """
        from scipy.ndimage import gaussian_filter, map_coordinates

        if image.ndim != 2:
            raise ValueError(f"image must be [H, W], got shape {image.shape}")
        if mask is not None and mask.shape != image.shape:
            raise ValueError(f"mask {mask.shape} and image {image.shape} differ in shape")
        rng = np.random.default_rng(seed)
        h, w = image.shape
        short = min(h, w)
        # Output pixel -> input pixel: inverse of flip, rotate/scale about the centre, shift.
        yy, xx = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64),
                             indexing="ij")  # fmt: skip
        cy, cx = (h - 1) / 2, (w - 1) / 2
        angle = math.radians(rng.uniform(-self.degrees, self.degrees))
        s = rng.uniform(*self.scale)
        ty, tx = rng.uniform(-self.translate, self.translate, size=2) * np.array([h, w])
        y0, x0 = yy - cy - ty, xx - cx - tx
        cos, sin = math.cos(angle) / s, math.sin(angle) / s
        src_y = cos * y0 - sin * x0 + cy
        src_x = sin * y0 + cos * x0 + cx
        if self.elastic_alpha > 0:
            sigma = max(1.0, self.elastic_sigma * short)
            for grid in (src_y, src_x):
                field = gaussian_filter(rng.standard_normal((h, w)), sigma, mode="reflect")
                field /= max(np.abs(field).max(), 1e-12)
                grid += self.elastic_alpha * short * field
        if rng.random() < self.hflip:
            src_x = (w - 1) - src_x
        if rng.random() < self.vflip:
            src_y = (h - 1) - src_y
        coords = np.stack([src_y, src_x])
        out = map_coordinates(image.astype(np.float64), coords, order=1, mode="constant")
        out_mask = None
        if mask is not None:
            warped = map_coordinates(mask.astype(np.uint8), coords, order=0, mode="constant")
            out_mask = warped.astype(mask.dtype)
        # Intensity, image only: gamma, then speckle (multiplicative, like the real thing).
        x = np.clip(out / 255.0, 0, 1) ** rng.uniform(*self.gamma)
        if self.speckle > 0:
            x = x * (1 + self.speckle * rng.standard_normal((h, w)))
        return np.clip(np.rint(x * 255), 0, 255).astype(np.uint8), out_mask


#: The pipeline experiments use (``--arms ...+classical``).
CLASSICAL = ClassicalAugment()


def copy_seed(seed: int, index: int, copy: int) -> list[int]:
    """The seed of copy ``copy`` of sample ``index`` in a run seeded with ``seed``."""
    return [seed, 31, index, copy]
