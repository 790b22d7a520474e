"""Pictures inlined into the report as ``data:`` URIs, so the page needs no other file.

A run's own PNGs are embedded byte for byte when they are small enough; larger ones are
re-encoded at a smaller size, so that one report of a whole demo stays a few megabytes.
Dataset samples become small thumbnails.
"""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path

import numpy as np
from PIL import Image

#: Largest PNG embedded unchanged; bigger ones are shrunk (a whole report stays small).
MAX_EMBED_BYTES = 400_000
#: Longest side of a shrunk picture, in pixels.
MAX_SIDE = 1024
#: Longest side of a dataset thumbnail, in pixels.
THUMB_SIDE = 96


def data_uri(data: bytes, mime: str = "image/png") -> str:
    """``data:MIME;base64,...`` of some bytes."""
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def file_uri(path: str | os.PathLike) -> tuple[str, tuple[int, int]]:
    """A picture file as a data URI, shrunk when it is too large to embed as it is.

    Args:
        path: a PNG or JPEG file.

    Returns:
        ``(uri, (width, height))`` of what was embedded.
    """
    path = Path(path)
    raw = path.read_bytes()
    with Image.open(io.BytesIO(raw)) as im:
        size = im.size
        if len(raw) <= MAX_EMBED_BYTES and im.format in ("PNG", "JPEG"):
            return data_uri(raw, f"image/{im.format.lower()}"), size
        im = im.convert("RGB")
        im.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=85)
        return data_uri(buf.getvalue(), "image/jpeg"), im.size


def thumbnail_uri(image: Image.Image | np.ndarray, side: int = THUMB_SIDE) -> str:
    """A small PNG thumbnail (longest side ``side``) of an image or ``[H, W]`` array."""
    im = Image.fromarray(np.asarray(image)) if not isinstance(image, Image.Image) else image
    if im.mode not in ("L", "RGB"):
        im = im.convert("RGB")
    im = im.copy()
    im.thumbnail((side, side), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=True)
    return data_uri(buf.getvalue())


def overlay(image: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """``[H, W, 3]`` uint8: a grayscale frame with its mask tinted red and outlined in
    yellow, the colours of ``fusynth data inspect``'s montage; the frame alone without one.

    Args:
        image: ``[H, W]`` uint8 frame.
        mask: ``[H, W]`` label map (0 background) of the same size, or None.
    """
    rgb = np.repeat(np.asarray(image, dtype=np.uint8)[..., None], 3, axis=2)
    if mask is None:
        return rgb
    m = np.asarray(mask) > 0
    if m.shape != rgb.shape[:2] or not m.any():
        return rgb
    out = rgb.astype(np.float32)
    out[m] = 0.6 * out[m] + 0.4 * np.array([220.0, 40.0, 40.0])
    inner = m.copy()
    inner[1:, :] &= m[:-1, :]
    inner[:-1, :] &= m[1:, :]
    inner[:, 1:] &= m[:, :-1]
    inner[:, :-1] &= m[:, 1:]
    out[m & ~inner] = (255.0, 230.0, 60.0)
    return out.round().astype(np.uint8)
