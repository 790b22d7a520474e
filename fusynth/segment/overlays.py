"""The overlay figures of a segmentation evaluation: the worst and best predictions drawn
over their images (ground truth green, prediction red, box yellow), with a legend.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

TILE = 256
GREEN, RED, YELLOW = (0, 255, 0), (255, 0, 0), (255, 255, 0)


# ----------------------------------------------------------------------------- overlays


#: What the colours of :func:`overlay_tile` mean, for the overlay figures' legend.
OVERLAY_LEGEND = (
    ("ground truth", "#00ff00"),
    ("prediction", "#ff0000"),
    ("box prompt", "#ffff00"),
)


class _Examples:
    """The ``k`` lowest- and highest-Dice predictions seen, for the overlay figures.

    Best and worst are drawn from different images whenever there are at least two:
    with fewer than ``2 k`` images each figure shows half of them.
    """

    def __init__(self, k: int, jitter: int = 0):
        self.k = k
        self.jitter = jitter
        self.n = 0
        self.worst: list[tuple[float, Any]] = []
        self.best: list[tuple[float, Any]] = []

    def offer(self, dice: float, pred: Any) -> None:
        """Keep ``pred`` if it is among the ``k`` worst or ``2 k`` best so far (the
        extra best ones replace any that are also among the worst)."""
        if self.k == 0:
            return
        self.n += 1
        dice = dice if math.isfinite(dice) else -1.0  # no Dice (empty truth) sorts worst
        self.worst = sorted([*self.worst, (dice, pred)], key=lambda t: (t[0], t[1].index))
        del self.worst[self.k :]
        self.best = sorted([*self.best, (dice, pred)], key=lambda t: (-t[0], t[1].index))
        del self.best[2 * self.k :]

    def chosen(self) -> tuple[list[tuple[float, Any]], list[tuple[float, Any]]]:
        """``(worst, best)``: as many as ``k`` each, no image in both (unless only one
        image was offered)."""
        m = min(self.k, self.n // 2) if self.n >= 2 else self.n
        worst = self.worst[:m]
        ids = {p.index for _, p in worst}
        best = [t for t in self.best if t[1].index not in ids][:m] if self.n >= 2 else worst
        return worst, best

    def write(self, folder: Path) -> None:
        """Write ``worst.png`` and ``best.png`` (nothing when ``k`` is 0)."""
        from fusynth.core.gallery import Tile, image_grid

        worst, best = self.chosen()
        for name, chosen, what in (
            ("worst", worst, "Lowest"),
            ("best", best, "Highest"),
        ):
            if not chosen:
                continue
            tiles = [
                Tile(
                    overlay_tile(p),
                    f"{p.sample.key}\nDice {d:.3f}" if d >= 0 else f"{p.sample.key}\nno Dice",
                )
                for d, p in chosen
            ]
            image_grid(
                folder / f"{name}.png",
                tiles,
                f"{what} Dice: {len(chosen)} of {self.n} images, box prompt jittered by "
                f"{self.jitter} px",
                cols=min(4, len(tiles)),
                legend=OVERLAY_LEGEND,
                legend_kind="line",
                footnote="outlines of the ground-truth and predicted masks; caption: image, Dice",
                tile_px=TILE,
            )


def overlay_tile(pred: Any, dice: float | None = None, size: int = TILE) -> np.ndarray:
    """The image fitted into a ``size`` square with the ground-truth outline (green), the
    predicted outline (red) and the box (yellow); the Dice in the corner when given
    (the overlay figures caption it instead, see :data:`OVERLAY_LEGEND`).

    Returns:
        ``[size, size, 3]`` uint8.
    """
    from PIL import Image, ImageDraw

    from fusynth.data.geometry import mask_outline

    s = pred.sample
    h, w = s.image.shape
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    top, left = (size - nh) // 2, (size - nw) // 2

    def fit(arr: np.ndarray, resample: int) -> np.ndarray:
        canvas = np.zeros((size, size), dtype=np.uint8)
        canvas[top : top + nh, left : left + nw] = np.asarray(
            Image.fromarray(arr).resize((nw, nh), resample)
        )
        return canvas

    gray = fit(s.image, Image.BILINEAR)
    gt = fit(s.mask.astype(np.uint8) * 255, Image.NEAREST) > 0
    pr = fit(pred.mask.astype(np.uint8) * 255, Image.NEAREST) > 0
    tile = Image.fromarray(np.repeat(gray[..., None], 3, axis=2))
    draw = ImageDraw.Draw(tile)
    if len(pred.box):  # a U-Net's prediction has no box
        x0, y0, x1, y1 = (float(v) for v in pred.box)
        draw.rectangle(
            [left + x0 * scale, top + y0 * scale, left + x1 * scale, top + y1 * scale],
            outline=YELLOW,
        )
    rgb = np.asarray(tile).copy()
    rgb[mask_outline(gt)] = GREEN
    rgb[mask_outline(pr)] = RED
    tile = Image.fromarray(rgb)
    if dice is not None:
        ImageDraw.Draw(tile).text((3, 2), f"Dice {dice:.3f}", fill=(255, 255, 255))
    return np.asarray(tile)
