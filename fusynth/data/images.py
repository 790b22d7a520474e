"""Reading images and masks from publishers' files, with errors that name the file."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from scipy import ndimage as ndi

from fusynth.core.errors import UserInputError

MASK_KINDS = ("filled", "outline")


def read_grayscale(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as 8-bit grayscale.

    RGB(A) and palette images are converted with ITU-R 601 luma; 16-bit images are
    rescaled by their maximum. The whole file is decoded, so truncation is caught.

    Args:
        path: the image file.

    Returns:
        ``[H, W]`` uint8 array.

    Raises:
        UserInputError: missing, unreadable or truncated file (the message names it).
    """
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"{path}: image file not found")
    try:
        with Image.open(path) as im:
            im.load()
            return to_grayscale(im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise UserInputError(f"{path}: cannot read image ({exc})") from exc


def to_grayscale(im: Image.Image) -> np.ndarray:
    """Convert a decoded PIL image of any mode to ``[H, W]`` uint8."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        top = arr.max()
        arr = arr / top * 255.0 if top > 0 else arr
        return np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA").convert("RGB")
    return np.asarray(im.convert("L"), dtype=np.uint8).copy()


def encode_png(arr: np.ndarray) -> bytes:
    """Encode a ``[H, W]`` uint8 array as a grayscale PNG (deterministic bytes)."""
    arr = np.asarray(arr)
    if arr.ndim != 2 or arr.dtype != np.uint8:
        raise ValueError(f"expected a [H, W] uint8 array, got {arr.shape} {arr.dtype}")
    buf = io.BytesIO()
    Image.fromarray(arr, mode="L").save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def decode_image(value: object) -> np.ndarray:
    """Decode a dataset ``Image`` cell (PIL image or ``{"bytes", "path"}``) to uint8."""
    if isinstance(value, Image.Image):
        return to_grayscale(value)
    if isinstance(value, dict):
        if value.get("bytes") is not None:
            with Image.open(io.BytesIO(value["bytes"])) as im:
                im.load()
                return to_grayscale(im)
        if value.get("path"):
            return read_grayscale(value["path"])
    raise ValueError(f"cannot decode image cell of type {type(value).__name__}")


def read_mask(
    path: str | os.PathLike,
    kind: str = "filled",
    shape: tuple[int, int] | None = None,
) -> np.ndarray:
    """Read a segmentation mask as a filled label map.

    Args:
        path: the mask file.
        kind: ``filled`` (a label map or a 0/255 mask) or ``outline`` (a closed curve
            to be filled, as HC18 ships its head annotations).
        shape: ``(H, W)`` of the image the mask belongs to; a different size is an error.

    Returns:
        ``[H, W]`` uint8 label map (0 background, 1 head, ...), never empty.

    Raises:
        UserInputError: unreadable file, size mismatch, an outline that does not close,
            or an empty mask; the message names the file.
    """
    if kind not in MASK_KINDS:
        raise UserInputError(f"--mask_kind: {kind!r} is not one of {', '.join(MASK_KINDS)}")
    path = Path(path)
    raw = read_grayscale(path)
    if shape is not None and raw.shape != tuple(shape):
        raise UserInputError(
            f"{path}: mask is {raw.shape[1]}x{raw.shape[0]} but its image is "
            f"{shape[1]}x{shape[0]} (width x height)"
        )
    if kind == "outline":
        try:
            label = fill_outline(raw > 127).astype(np.uint8)
        except ValueError as exc:
            raise UserInputError(f"{path}: {exc}") from exc
    else:
        label = label_map(raw)
    if not label.any():
        raise UserInputError(f"{path}: mask is empty (no foreground pixel)")
    return label


def label_map(raw: np.ndarray) -> np.ndarray:
    """Turn a stored mask into a label map.

    Small integer values (at most 31, e.g. 0/1/2) are kept as labels; anything else
    (0/255 masks, anti-aliased edges) is thresholded at 128 to a binary mask.
    """
    raw = np.asarray(raw, dtype=np.uint8)
    if int(raw.max(initial=0)) <= 31:
        return raw.copy()
    return (raw >= 128).astype(np.uint8)


def fill_outline(outline: np.ndarray) -> np.ndarray:
    """Fill the inside of a closed curve.

    The curve may be 8-connected and 1-2 px wide. A curve clipped by the image border
    (a head partly outside the frame, as in some HC18 images) is closed along the
    shorter stretch of border between the two places where it leaves the image.

    Args:
        outline: ``[H, W]`` bool, True on the curve.

    Returns:
        ``[H, W]`` bool: the curve and its inside.

    Raises:
        ValueError: the curve is empty, does not close, or leaves the image more than
            once.
    """
    outline = np.asarray(outline, dtype=bool)
    if not outline.any():
        raise ValueError("outline is empty (no curve pixel)")
    # Background is flooded with 4-connectivity, so an 8-connected curve is closed.
    filled = ndi.binary_fill_holes(outline)
    if filled.sum() > outline.sum():
        return filled
    ring = _border_ring(outline.shape)
    on_ring = outline[ring[:, 0], ring[:, 1]]
    runs = _cyclic_runs(on_ring)
    if len(runs) < 2:
        raise ValueError("outline does not close (fill the gap or use --mask_kind filled)")
    if len(runs) > 2:
        raise ValueError(f"outline leaves the image {len(runs)} times; cannot tell its inside")
    best = None
    n = len(ring)
    (s0, e0), (s1, e1) = runs
    for start, stop in ((e0, s1), (e1, s0)):
        # Border stretch strictly between two runs, walking forward around the ring.
        idx = np.arange(start + 1, stop if stop > start else stop + n) % n
        closed = outline.copy()
        closed[ring[idx, 0], ring[idx, 1]] = True
        cand = ndi.binary_fill_holes(closed)
        inside = cand.sum() - closed.sum()
        if inside > 0 and (best is None or cand.sum() < best.sum()):
            best = cand
    if best is None:
        raise ValueError("outline does not close (fill the gap or use --mask_kind filled)")
    return best


def _border_ring(shape: tuple[int, int]) -> np.ndarray:
    """``[N, 2]`` (y, x) of the border pixels in clockwise order from the top-left."""
    h, w = shape
    top = [(0, x) for x in range(w)]
    right = [(y, w - 1) for y in range(1, h)]
    bottom = [(h - 1, x) for x in range(w - 2, -1, -1)]
    left = [(y, 0) for y in range(h - 2, 0, -1)]
    return np.array(top + right + bottom + left, dtype=np.int64)


def _cyclic_runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """``(first, last)`` index of each run of True in a cyclic boolean sequence."""
    n = len(flags)
    if flags.all():
        return [(0, n - 1)]
    if not flags.any():
        return []
    # Rotate so the sequence starts on a False: no run wraps around.
    shift = int(np.argmin(flags))
    rolled = np.roll(flags, -shift)
    runs, i = [], 0
    while i < n:
        if rolled[i]:
            j = i
            while j + 1 < n and rolled[j + 1]:
                j += 1
            runs.append(((i + shift) % n, (j + shift) % n))
            i = j + 1
        else:
            i += 1
    return runs


def tile_images(images: list[np.ndarray], cols: int) -> np.ndarray:
    """Tile equally-sized ``[H, W]`` or ``[H, W, C]`` uint8 images, row by row."""
    cols = max(1, min(cols, len(images)))
    rows = (len(images) + cols - 1) // cols
    h, w = images[0].shape[:2]
    grid = np.zeros((rows * h, cols * w, *images[0].shape[2:]), dtype=np.uint8)
    for i, im in enumerate(images):
        r, c = divmod(i, cols)
        grid[r * h : (r + 1) * h, c * w : (c + 1) * w] = im
    return grid


def save_png(path: str | os.PathLike, array: np.ndarray) -> Path:
    """Write a uint8 ``[H, W]`` or ``[H, W, 3]`` array as PNG, atomically."""
    from fusynth.core.io import atomic_write_bytes

    buf = io.BytesIO()
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(buf, format="PNG")
    return atomic_write_bytes(path, buf.getvalue())
