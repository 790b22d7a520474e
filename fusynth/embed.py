"""Image embedders named by a spec, shared by clustering and cohort audits.

``pixels`` (the image itself, padded to square and downsampled), ``clip:NAME[@PRETRAINED]``
(an open_clip image tower, see :mod:`fusynth.clip`) and ``ssl:DIR`` (a SimCLR encoder
trained with ``recipes/train_ssl.py``, see :mod:`fusynth.ssl`). Every embedder maps a
list of ``[H, W]`` uint8 images to a float32 ``[N, D]`` array.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from fusynth.data.transforms import square_resize
from fusynth.errors import UserInputError

KINDS = ("pixels", "clip", "ssl")


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


def embedder_from_spec(spec: str, flag: str) -> Embedder:
    """Build the embedder a spec names.

    Raises:
        UserInputError: an unknown kind, or a model that cannot be loaded (naming it).
    """
    kind, _, arg = spec.partition(":")
    if kind == "pixels" and not arg:
        return pixel_embedder()
    if kind == "clip" and arg:
        from fusynth.clip import clip_embedder

        name, _, pretrained = arg.partition("@")
        return clip_embedder(name, pretrained or None, flag)
    if kind == "ssl" and arg:
        from fusynth.ssl import ssl_embedder

        return ssl_embedder(arg, flag)
    raise UserInputError(
        f"{flag}: {spec!r} is not an embedder; use pixels, clip:NAME[@PRETRAINED] or ssl:DIR"
    )
