"""Burned-in overlay removal: the scan sector, text, calipers and colour marks.

Scanner screenshots and DICOM frames carry what the machine drew on top of the echo:
the banner and settings text outside the scan sector, calipers, dotted measurement
lines and labels inside it, sometimes in colour. A generative model trained on them
learns to draw calipers. :func:`clean_image` removes them in four steps:

1. **sector**: the largest bright region after a morphological opening (thin text and
   tick marks do not survive it), its convex hull taken as the scan sector; everything
   outside is set to black and the image is cropped to the sector's bounding box;
2. **colour marks**: pixels whose chroma departs from the image's own tint (grey
   ultrasound has none; a sepia map has one uniform tint) by more than
   ``saturation``;
3. **grey text and calipers**: bright, thin structures found by shape: a white top-hat
   with a small kernel (strokes thinner than the kernel stand out from the local
   background), kept as a mark only when the connected component is small (a glyph, a
   caliper cross, a dot of a dotted line) and thin (its stroke half-width, from the
   distance transform, is at most ``max_stroke`` px); bone and skull echoes are thicker;
4. **user mask**: an optional mask of extra pixels to remove (a fixed logo position).

Marks inside the sector are inpainted with OpenCV (Telea or Navier-Stokes). The
overlay mask (255 inpainted, 128 outside the sector) is returned at the input's size so
a user can check it. :func:`mark_mask` alone is the detector that the cohort audit
reuses to count synthetic images showing calipers or text.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from fusynth.core.errors import UserInputError

INPAINT_METHODS = ("telea", "ns")
#: Mask values written per sample.
MASK_MARK, MASK_OUTSIDE = 255, 128
CLEAN_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def _cv2() -> Any:
    try:
        import cv2
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise UserInputError(
            "overlay removal needs OpenCV: pip install opencv-python-headless"
        ) from exc
    return cv2


@dataclass
class CleanOptions:
    """Settings of the overlay detector and inpainting.

    Attributes:
        method: ``telea`` or ``ns`` (OpenCV's inpainting algorithms).
        radius: inpainting radius in px.
        sector: find the scan sector, black out and crop away what is outside it.
        saturation: chroma distance (0-255) from the image's tint that marks a colour
            pixel.
        bright: lowest grey level of a text or caliper pixel.
        tophat: lowest white top-hat response (contrast to the local background).
        max_mark: largest side, in px, of one text or caliper component.
        max_stroke: largest stroke half-width, in px, of a text or caliper component.
        contrast: a mark is at least this many grey levels above its surround.
        flat: share of a mark's pixels within 3 grey levels of its median (drawn marks
            have one colour; echoes vary along their length).
        min_mark_pixels: mark pixels an image needs to count as "marks found".
        user_mask: optional path of a mask (nonzero = remove), resized to each image.
    """

    method: str = "telea"
    radius: int = 3
    sector: bool = True
    saturation: float = 40.0
    bright: int = 120
    tophat: int = 60
    max_mark: int = 40
    max_stroke: float = 3.0
    contrast: int = 90
    flat: float = 0.6
    min_mark_pixels: int = 12
    user_mask: str | None = None

    def __post_init__(self) -> None:
        if self.method not in INPAINT_METHODS:
            raise UserInputError(
                f"--method: {self.method!r} is not one of {', '.join(INPAINT_METHODS)}"
            )
        for name in ("radius", "max_mark", "min_mark_pixels"):
            if int(getattr(self, name)) <= 0:
                raise UserInputError(f"--{name.replace('_', '-')}: must be positive")
        if not 0 < self.saturation <= 255:
            raise UserInputError("--saturation: must be in (0, 255]")
        if not 0 <= self.bright <= 255 or not 0 < self.tophat <= 255:
            raise UserInputError("--bright and --tophat: must be grey levels in 0..255")
        if self.max_stroke <= 0:
            raise UserInputError("--max-stroke: must be positive")
        if not 0 < self.flat <= 1:
            raise UserInputError("--flat: must be in (0, 1]")
        if not 0 < self.contrast <= 255:
            raise UserInputError("--contrast: must be a grey level in 1..255")
        if self.user_mask is not None and not Path(self.user_mask).is_file():
            raise UserInputError(f"--user_mask: {self.user_mask} not found")


@dataclass
class CleanResult:
    """What :func:`clean_image` made of one image."""

    image: np.ndarray  #: ``[h, w]`` uint8 cleaned (and cropped) image
    mask: np.ndarray  #: ``[H, W]`` uint8 at the input's size: 255 mark, 128 outside sector
    crop: tuple[int, int, int, int]  #: x0, y0, x1, y1 (exclusive) of the sector box
    mark_pixels: int  #: pixels inpainted inside the sector
    outside_pixels: int  #: non-black pixels blacked out or cropped away
    changed_pixels: int  #: pixels whose value changed, over the input's area
    marks_found: bool  #: at least ``min_mark_pixels`` mark pixels inside the sector


def _split(image: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """``(gray, rgb or None)`` of a ``[H, W]`` or ``[H, W, 3|4]`` uint8 image."""
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise ValueError(f"expected uint8 pixels, got {arr.dtype}")
    if arr.ndim == 2:
        return arr, None
    if arr.ndim == 3 and arr.shape[2] in (3, 4):
        rgb = arr[..., :3]
        gray = np.rint(rgb @ np.array([0.299, 0.587, 0.114])).clip(0, 255).astype(np.uint8)
        return gray, rgb
    raise ValueError(f"expected a [H, W] or [H, W, 3] image, got shape {arr.shape}")


def sector_mask(gray: np.ndarray, grow: bool = True) -> np.ndarray:
    """The scan sector: convex hull of the largest bright region after an opening.

    Args:
        gray: ``[H, W]`` uint8.
        grow: give back the few px of the sector's edge that the opening ate (the mask
            used for cropping); without it, the hull hugs the echo (the edge test of
            :func:`grey_marks`).

    Returns:
        ``[H, W]`` bool; all True when no sector stands out (an image already cropped).
    """
    cv2 = _cv2()
    h, w = gray.shape
    k = max(5, int(round(min(h, w) * 0.03)) | 1)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
    # Blur first so speckle and dark fluid inside the sector join into one region.
    blurred = cv2.GaussianBlur(gray, (0, 0), 2.0)
    binary = (blurred > 12).astype(np.uint8)
    binary = cv2.morphologyEx(binary, cv2.MORPH_OPEN, kernel)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    if n <= 1:
        return np.ones_like(gray, dtype=bool)
    areas = stats[1:, cv2.CC_STAT_AREA]
    if areas.max() < 0.05 * h * w:
        return np.ones_like(gray, dtype=bool)
    # Pieces of one fan split by a dark band (fluid, shadow) belong to it too.
    keep = [i + 1 for i, a in enumerate(areas) if a >= 0.2 * areas.max()]
    points = np.column_stack(np.nonzero(np.isin(labels, keep)))[:, ::-1].astype(np.int32)
    hull = cv2.convexHull(points)
    out = np.zeros((h, w), np.uint8)
    cv2.fillConvexPoly(out, hull, 1)
    # The opening ate up to k/2 px of the sector's own edge: give it back.
    if grow:
        out = cv2.dilate(out, kernel)
    return out.astype(bool)


def colour_marks(rgb: np.ndarray, threshold: float) -> np.ndarray:
    """Pixels whose chroma departs from the image's median tint by more than
    ``threshold`` (0-255); grey and uniformly tinted images give none."""
    rgb = rgb.astype(np.float32)
    chroma = np.stack([rgb[..., 0] - rgb[..., 1], rgb[..., 1] - rgb[..., 2]], axis=-1)
    tint = np.median(chroma.reshape(-1, 2), axis=0)
    return np.linalg.norm(chroma - tint, axis=-1) > threshold


def grey_marks(gray: np.ndarray, options: CleanOptions) -> np.ndarray:
    """Text, calipers and dotted lines by shape: small, thin, bright, isolated components.

    Echo texture also has bright thin pieces (speckle, membranes); what sets a drawn mark
    apart is that it is drawn in one grey (``flat``: most of its pixels within 3 levels
    of its median) and sits on a much darker surround: the ring of pixels around the
    component has a mean at least ``contrast`` grey levels below the component's median.
    """
    cv2 = _cv2()
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (9, 9))
    tophat = cv2.morphologyEx(gray, cv2.MORPH_TOPHAT, kernel)
    # Contrast to the median of a wider neighbourhood keeps bright tissue next to dark
    # fluid (high top-hat, modest contrast to its own surround) out of the candidates.
    background = cv2.medianBlur(gray, 15).astype(np.int16)
    candidate = (
        (tophat >= options.tophat)
        & (gray >= options.bright)
        & (gray.astype(np.int16) - background >= options.contrast)
    ).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(candidate, connectivity=8)
    out = np.zeros_like(gray, dtype=bool)
    if n <= 1:
        return out
    dist = cv2.distanceTransform(candidate, cv2.DIST_L2, 3)
    # Per-component largest half-width: a stroke 1-5 px wide has 0.5-3 here (a crossing of two 3 px strokes: 2.7).
    stroke = np.zeros(n, np.float32)
    np.maximum.at(stroke, labels.ravel(), dist.ravel())
    sides = np.maximum(stats[:, cv2.CC_STAT_WIDTH], stats[:, cv2.CC_STAT_HEIGHT])
    ring_kernel = np.ones((5, 5), np.uint8)
    hull = sector_mask(gray, grow=False)
    h, w = gray.shape
    for i in np.nonzero((sides <= options.max_mark) & (stroke <= options.max_stroke))[0]:
        if i == 0:
            continue
        x, y, bw, bh = stats[i, :4]
        x0, y0, x1, y1 = max(x - 3, 0), max(y - 3, 0), min(x + bw + 3, w), min(y + bh + 3, h)
        own = labels[y0:y1, x0:x1] == i
        # The ring is measured against every candidate, so a glyph's neighbour letters
        # do not count as its surround.
        ring = cv2.dilate(own.astype(np.uint8), ring_kernel).astype(bool) & ~(
            candidate[y0:y1, x0:x1].astype(bool)
        )
        patch = gray[y0:y1, x0:x1]
        if not ring.any():
            continue
        # Bright echo at the sector's edge stands out against the black outside it:
        # a component inside the sector whose surround leaves it is the edge, not a mark.
        edge = hull[y0:y1, x0:x1]
        if edge[own].any() and not edge[ring].all():
            continue
        values = patch[own].astype(np.int16)
        level = np.median(values)
        # The scanner draws a mark in one grey; an echo varies along its length. Tiny
        # components (dots of a dotted line) are too small to judge: only saturated ones.
        if np.mean(np.abs(values - level) <= 3) < options.flat:
            continue
        if values.size < 4 and level < 250:
            continue
        if level - patch[ring].mean() >= options.contrast:
            out[y0:y1, x0:x1] |= own
    return out


def mark_mask(image: np.ndarray, options: CleanOptions | None = None) -> np.ndarray:
    """The detector alone: colour and grey marks, ``[H, W]`` bool, no sector step."""
    options = options or CleanOptions()
    gray, rgb = _split(image)
    marks = grey_marks(gray, options)
    if rgb is not None:
        marks |= colour_marks(rgb, options.saturation)
    return marks


def _user_mask(path: str, shape: tuple[int, int]) -> np.ndarray:
    try:
        with Image.open(path) as im:
            im = im.convert("L").resize((shape[1], shape[0]), Image.NEAREST)
            return np.asarray(im) > 0
    except OSError as exc:
        raise UserInputError(f"--user_mask: cannot read {path} ({exc})") from exc


def clean_image(image: np.ndarray, options: CleanOptions | None = None) -> CleanResult:
    """Crop to the sector and inpaint burned-in marks inside it.

    Args:
        image: ``[H, W]`` or ``[H, W, 3]`` uint8 (colour lets colour marks be found).
        options: detector and inpainting settings.

    Returns:
        The cleaned grayscale image (cropped to the sector box), the overlay mask at the
        input's size and pixel counts.
    """
    cv2 = _cv2()
    options = options or CleanOptions()
    gray, _ = _split(image)
    h, w = gray.shape
    inside = sector_mask(gray) if options.sector else np.ones((h, w), bool)
    marks = mark_mask(image, options) & inside
    if options.user_mask:
        marks |= _user_mask(options.user_mask, (h, w)) & inside
    # Anti-aliased glyph edges lie just outside the detected stroke.
    marks = cv2.dilate(marks.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool) & inside
    flag = cv2.INPAINT_TELEA if options.method == "telea" else cv2.INPAINT_NS
    cleaned = gray.copy()
    if marks.any():
        cleaned = cv2.inpaint(gray, marks.astype(np.uint8), options.radius, flag)
    outside = ~inside
    cleaned[outside] = 0
    ys, xs = np.nonzero(inside)
    x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
    mask = np.zeros((h, w), np.uint8)
    mask[outside] = MASK_OUTSIDE
    mask[marks] = MASK_MARK
    changed = int((cleaned != gray).sum())
    outside_pixels = int((gray[outside] > 0).sum())
    result = CleanResult(
        image=np.ascontiguousarray(cleaned[y0:y1, x0:x1]),
        mask=mask,
        crop=(x0, y0, x1, y1),
        mark_pixels=int(marks.sum()),
        outside_pixels=outside_pixels,
        changed_pixels=changed,
        marks_found=int(marks.sum()) >= options.min_mark_pixels,
    )
    return result


# ----------------------------------------------------------------------------- folders


def _read_any(path: Path) -> np.ndarray:
    """An image file as uint8 ``[H, W]`` (grey) or ``[H, W, 3]`` (colour kept)."""
    from fusynth.data.images import to_grayscale

    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("RGB", "RGBA", "P", "CMYK", "YCbCr"):
                return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
            return to_grayscale(im)
    except (OSError, SyntaxError, ValueError) as exc:
        raise UserInputError(f"{path}: cannot read image ({exc})") from exc


def list_images(src: Path) -> list[Path]:
    """Image files under ``src`` (recursively, hidden files skipped), sorted."""
    return sorted(
        p
        for p in src.rglob("*")
        if p.is_file()
        and p.suffix.lower() in CLEAN_IMAGE_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(src).parts)
    )


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def write_montage(
    path: Path, pairs: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]], tile: int = 192
) -> list[str]:
    """Before / mask / after, one row per image, each tile captioned, with a legend for
    the mask's colours.

    Args:
        path: the PNG to write.
        pairs: ``(name, before gray, mask, after)`` per row (at least one).
        tile: tile side in px.

    Returns:
        The figure's labels (see :func:`fusynth.core.gallery.image_grid`).
    """
    from fusynth.core.gallery import Tile, image_grid

    def square(arr: np.ndarray) -> np.ndarray:
        im = Image.fromarray(arr)
        im.thumbnail((tile, tile))
        canvas = Image.new(im.mode, (tile, tile))
        canvas.paste(im, ((tile - im.width) // 2, (tile - im.height) // 2))
        return np.asarray(canvas)

    tiles = []
    for name, before, mask, after in pairs:
        overlay = np.stack([before] * 3, axis=-1).copy()
        overlay[mask == MASK_OUTSIDE] = (overlay[mask == MASK_OUTSIDE] * 0.4).astype(np.uint8)
        overlay[mask == MASK_MARK] = (255, 0, 0)
        n_marks = int((mask == MASK_MARK).sum())
        tiles += [
            Tile(square(before), f"{name}\nbefore"),
            Tile(square(overlay), f"mask: {n_marks} px inpainted"),
            Tile(square(after), "after (cleaned, cropped)"),
        ]
    return image_grid(
        path,
        tiles,
        f"Overlay removal: the {len(pairs)} image(s) with the most marked pixels",
        cols=3,
        legend=[("inpainted (calipers, text)", "#ff0000"), ("outside the sector", "#333333")],
        footnote="one row per image: before | what was found | after",
        tile_px=tile,
    )


def clean_folder(
    src: str | os.PathLike,
    out: str | os.PathLike,
    options: CleanOptions | None = None,
    *,
    n_montage: int = 8,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Clean every image under ``src`` into ``out``.

    ``out`` gets ``images/<same relative path>.png`` (cleaned, grayscale, cropped),
    ``masks/<same>.png`` (255 inpainted, 128 outside the sector, at the input's size),
    ``montage.png`` (before / mask / after of the images with the most marks) and
    ``clean_summary.json`` (counts and shares). ``out`` appears only when complete.

    Returns:
        The summary written to ``clean_summary.json``.

    Raises:
        UserInputError: missing or empty ``src``, an unreadable image, ``out`` exists.
    """
    from fusynth.core.io import atomic_dir, check_output_dir

    src = Path(src)
    options = options or CleanOptions()
    if not src.is_dir():
        raise UserInputError(f"{src}: source folder not found")
    check_output_dir(out, overwrite)
    if Path(out).resolve().is_relative_to(src.resolve()):
        raise UserInputError(f"{out}: must not be inside SRC {src}")
    files = list_images(src)
    if not files:
        raise UserInputError(f"{src}: no images ({', '.join(CLEAN_IMAGE_SUFFIXES)}) found")
    rows = []
    shown: list[tuple[int, str, np.ndarray, np.ndarray, np.ndarray]] = []
    with atomic_dir(out, overwrite=overwrite, kind="cleaned-images") as tmp:
        for path in files:
            rel = path.relative_to(src).with_suffix(".png")
            image = _read_any(path)
            result = clean_image(image, options)
            for sub, arr in (("images", result.image), ("masks", result.mask)):
                target = tmp / sub / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(_png(arr))
            area = result.mask.size
            rows.append(
                {
                    "file": rel.as_posix(),
                    "marks_found": result.marks_found,
                    "mark_pixels": result.mark_pixels,
                    "outside_pixels": result.outside_pixels,
                    "changed_pixels": result.changed_pixels,
                    "changed_fraction": round(result.changed_pixels / area, 6),
                    "crop": list(result.crop),
                }
            )
            gray, _ = _split(image)
            after = np.zeros_like(gray)
            x0, y0, x1, y1 = result.crop
            after[y0:y1, x0:x1] = result.image
            shown.append((result.mark_pixels, rel.as_posix(), gray, result.mask, after))
            shown = sorted(shown, key=lambda s: -s[0])[:n_montage]
        summary = _summary(rows, options)
        if shown:
            write_montage(tmp / "montage.png", [s[1:] for s in shown])
        (tmp / "clean_summary.json").write_text(
            json.dumps({**summary, "images": rows}, indent=2) + "\n"
        )
    return summary


def _summary(rows: list[dict[str, Any]], options: CleanOptions) -> dict[str, Any]:
    n = len(rows)
    with_marks = sum(r["marks_found"] for r in rows)
    fractions = np.array([r["changed_fraction"] for r in rows])
    marks = np.array([r["mark_pixels"] for r in rows])
    return {
        "n_images": n,
        "images_with_marks": with_marks,
        "share_with_marks": round(with_marks / n, 4),
        "mean_mark_pixels": round(float(marks.mean()), 1),
        "mean_changed_fraction": round(float(fractions.mean()), 4),
        "median_changed_fraction": round(float(np.median(fractions)), 4),
        "options": asdict(options),
    }


def overlay_share(
    images: list[np.ndarray],
    views: list[str],
    keys: list[str] | None = None,
    options: CleanOptions | None = None,
) -> dict[str, Any]:
    """Share of images in which the mark detector finds text or calipers.

    The cohort audit's ``--overlays``: a generator trained on annotated screenshots
    learns to draw calipers and text, and this counts the images that show them. The
    whole frame is searched (banner text outside the sector counts too).

    Args:
        images: ``[H, W]`` (or ``[H, W, 3]``) uint8 images.
        views: the view of each image.
        keys: an id of each image, listed for the flagged ones.
        options: detector settings; an image counts when it has at least
            ``min_mark_pixels`` mark pixels.

    Returns:
        ``n``, ``with_marks``, ``share``, ``mean_mark_pixels``, ``by_view`` (the same per
        view) and ``flagged`` (keys of the images with marks, at most 50).
    """
    options = options or CleanOptions()
    counts = [int(mark_mask(image, options).sum()) for image in images]
    found = [c >= options.min_mark_pixels for c in counts]

    def stats(idx: list[int]) -> dict[str, Any]:
        n = len(idx)
        hits = sum(found[i] for i in idx)
        return {
            "n": n,
            "with_marks": hits,
            "share": round(hits / n, 4) if n else None,
            "mean_mark_pixels": round(float(np.mean([counts[i] for i in idx])), 1) if n else None,
        }

    out = stats(list(range(len(images))))
    by_view: dict[str, list[int]] = {}
    for i, view in enumerate(views):
        by_view.setdefault(view, []).append(i)
    out["by_view"] = {v: stats(idx) for v, idx in by_view.items()}
    keys = keys if keys is not None else [str(i) for i in range(len(images))]
    out["flagged"] = [keys[i] for i, f in enumerate(found) if f][:50]
    out["min_mark_pixels"] = options.min_mark_pixels
    return out
