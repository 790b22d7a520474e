"""``closest_pairs.png``: the synthetic samples nearest a training image, side by side.

Each row is one pair, "synthetic | nearest training image", captioned with both keys
and the pair's SSIM and cosine similarity; flagged pairs are framed and captioned in red,
with a legend giving the thresholds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fusynth.data.transforms import square_resize
from fusynth.data.views import ViewSet


def write_montage(
    path: Path,
    pairs: list[dict[str, Any]],
    cohort: ViewSet,
    training: ViewSet,
    cosine_threshold: float,
    ssim_threshold: float,
    thumb: int = 180,
) -> list[str]:
    """Write ``closest_pairs.png``: one row per pair, "synthetic | nearest training
    image", each captioned with its key, view and scores; flagged pairs framed red.

    Returns:
        The figure's labels (see :func:`fusynth.core.gallery.image_grid`).
    """
    from fusynth.core.gallery import Tile, image_grid

    flagged_colour, clear_colour = "#d62728", "#7f7f7f"
    tiles = []
    for r, row in enumerate(pairs):
        colour = flagged_colour if row["flagged"] else clear_colour
        scores = f"SSIM {row['ssim']:.3f} · cosine {row['_ssim_pair_cosine']:.3f}"
        tiles.append(
            Tile(
                square_resize(cohort.images[row["index"]], thumb),
                f"{r + 1}. synthetic {row['synthetic']} ({row['view']})\n{scores}",
                frame=colour,
                caption_color=flagged_colour if row["flagged"] else None,
            )
        )
        tiles.append(
            Tile(
                square_resize(training.images[row["_ssim_index"]], thumb),
                f"nearest training image\n{row['nearest_ssim']} ({row['nearest_ssim_view']})",
                frame=colour,
            )
        )
    return image_grid(
        path,
        tiles,
        f"The {len(pairs)} synthetic samples closest to a training image (by SSIM): "
        "synthetic | nearest training image",
        cols=2,
        legend=[
            (f"flagged: SSIM >= {ssim_threshold} or cosine >= {cosine_threshold}", flagged_colour),
            ("not flagged", clear_colour),
        ],
        legend_kind="line",
        footnote="near-copies of training images mean the generator memorised them",
        tile_px=thumb,
    )
