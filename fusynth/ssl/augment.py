"""Augmentations for grayscale ultrasound, drawn from a generator so a resumed run repeats them.

A moderate random resized crop, a small rotation and a horizontal flip (one affine
resampling, black outside the frame as in a scan), brightness, contrast and gamma jitter,
Gaussian blur and speckle-like multiplicative noise. No hue or colour jitter: there is no
colour.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Augmentation:
    """The ranges of the SimCLR views (defaults chosen for B-mode ultrasound)."""

    crop_scale: tuple[float, float] = (0.35, 1.0)  # share of the image area kept
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)  # width / height of the crop
    max_rotation_deg: float = 15.0
    flip_p: float = 0.5
    brightness: float = 0.25  # gain in [1 - b, 1 + b]
    contrast: float = 0.25  # contrast factor in [1 - c, 1 + c]
    gamma: tuple[float, float] = (0.7, 1.4)  # log-uniform
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 1.5)  # output pixels
    speckle_p: float = 0.5
    speckle_sigma: tuple[float, float] = (0.05, 0.25)  # sd of the multiplicative noise

    def as_dict(self) -> dict[str, Any]:
        """The ranges, for ``config.json`` and the card."""
        return dataclasses.asdict(self)


AUGMENTATION = Augmentation()


# ----------------------------------------------------------------------------- augmentation


def _uniform(gen: torch.Generator, n: int, low: float, high: float) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=gen)


def _affine_params(n: int, gen: torch.Generator, aug: Augmentation) -> torch.Tensor:
    """``[n, 2, 3]`` affine matrices (output -> input, normalised coordinates) for a random
    resized crop, rotated and maybe flipped."""
    area = _uniform(gen, n, *aug.crop_scale)
    log_ratio = _uniform(gen, n, math.log(aug.crop_ratio[0]), math.log(aug.crop_ratio[1]))
    ratio = torch.exp(log_ratio)
    w = torch.sqrt(area * ratio).clamp(max=1.0)  # half-width in normalised units
    h = torch.sqrt(area / ratio).clamp(max=1.0)
    cx = (2 * torch.rand(n, generator=gen) - 1) * (1 - w)
    cy = (2 * torch.rand(n, generator=gen) - 1) * (1 - h)
    angle = _uniform(gen, n, -aug.max_rotation_deg, aug.max_rotation_deg) * math.pi / 180
    flip = torch.where(torch.rand(n, generator=gen) < aug.flip_p, -1.0, 1.0)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack(
        [
            torch.stack([cos * w * flip, -sin * h, cx], dim=1),
            torch.stack([sin * w * flip, cos * h, cy], dim=1),
        ],
        dim=1,
    )
    return theta


def _gaussian_kernels(sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """``[n, 2 * radius + 1]`` normalised 1-D Gaussians; sigma 0 gives the identity."""
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    safe = sigma.clamp(min=1e-6)[:, None]
    k = torch.exp(-(t[None] ** 2) / (2 * safe**2))
    k = torch.where(sigma[:, None] > 0, k, (t[None] == 0).float())
    return k / k.sum(dim=1, keepdim=True)


def _blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur of ``[n, 1, H, W]`` with one sigma per image."""
    n, _, hgt, wid = x.shape
    radius = max(1, math.ceil(3 * float(sigma.max()))) if len(sigma) else 1
    k = _gaussian_kernels(sigma, radius).to(x.device, x.dtype)
    y = x.reshape(1, n, hgt, wid)
    y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode="reflect"), k[:, None, None, :], groups=n)
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="reflect"), k[:, None, :, None], groups=n)
    return y.reshape(n, 1, hgt, wid)


def augment(
    images: torch.Tensor,
    size: int,
    gen: torch.Generator,
    aug: Augmentation = AUGMENTATION,
) -> torch.Tensor:
    """One random view of each image: geometry, then intensity, then blur and speckle.

    All parameters and noise are drawn on the CPU from ``gen`` in a fixed order, so the
    same generator state gives the same views.

    Args:
        images: ``[n, 1, S, S]`` float in [0, 1] (any device).
        size: the output side.
        gen: the step's generator.
        aug: the ranges.

    Returns:
        ``[n, 1, size, size]`` float in [0, 1], on the device of ``images``.
    """
    n, device = images.shape[0], images.device
    theta = _affine_params(n, gen, aug)
    gain = _uniform(gen, n, 1 - aug.brightness, 1 + aug.brightness)
    contrast = _uniform(gen, n, 1 - aug.contrast, 1 + aug.contrast)
    gamma = torch.exp(_uniform(gen, n, math.log(aug.gamma[0]), math.log(aug.gamma[1])))
    blur_on = torch.rand(n, generator=gen) < aug.blur_p
    sigma = torch.where(blur_on, _uniform(gen, n, *aug.blur_sigma), torch.zeros(n))
    speckle_on = torch.rand(n, generator=gen) < aug.speckle_p
    speckle = torch.where(speckle_on, _uniform(gen, n, *aug.speckle_sigma), torch.zeros(n))
    noise = torch.randn(n, 1, size, size, generator=gen)

    def per_image(v: torch.Tensor) -> torch.Tensor:
        return v.to(device)[:, None, None, None]

    grid = F.affine_grid(theta.to(device), [n, 1, size, size], align_corners=False)
    x = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    x = x * per_image(gain)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = ((x - mean) * per_image(contrast) + mean).clamp(0, 1)
    x = x ** per_image(gamma)
    x = _blur(x, sigma)
    x = x * (1 + per_image(speckle) * noise.to(device))
    return x.clamp(0, 1)
