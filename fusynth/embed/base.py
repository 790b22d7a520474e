"""The embedder contract and the simplest embedder, raw pixels.

Every embedder maps a list of ``[H, W]`` uint8 images to a float32 ``[N, D]`` array;
:mod:`fusynth.embed.registry` builds one from a spec.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from fusynth.data.transforms import square_resize


@dataclass
class Embedder:
    """A named image embedder; ``fn`` maps images to ``[N, D]`` float32."""

    name: str
    fn: Callable[[Sequence[np.ndarray]], np.ndarray]
    dim: int

    def __call__(self, images: Sequence[np.ndarray]) -> np.ndarray:
        out = np.asarray(self.fn(images), dtype=np.float32)
        if out.shape != (len(images), self.dim):
            raise RuntimeError(
                f"{self.name} returned {out.shape}, expected ({len(images)}, {self.dim})"
            )
        return out


def pixel_embedder(size: int = 32) -> Embedder:
    """Images padded to square, resized to ``size``, flattened and scaled to [0, 1]."""

    def fn(images: Sequence[np.ndarray]) -> np.ndarray:
        return np.stack([square_resize(im, size).reshape(-1) / 255.0 for im in images])

    return Embedder("pixels", fn, size * size)
