"""Labelled image grids: every sample picture fusynth writes (previews, validation
grids, cluster montages, overlays, closest pairs, dataset montages).

A grid has a title, a caption over each tile (what it is: view, prompt, seed, score),
optional coloured frames and a legend saying what each colour means, drawn in the
shared style (:mod:`fusynth.core.style`) so that a picture explains itself without the
source code. Tiles are shown at least :data:`MIN_TILE_PX` pixels wide, so 64-px samples
are enlarged (nearest neighbour: no invented detail) rather than shown postage-stamp size.
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fusynth.core.style import DPI, blank_figure, figure_text, style, write_figure

#: Smallest side of a tile in the saved PNG, in pixels.
MIN_TILE_PX = 180
#: Characters per caption line (at 9 pt over a 180-px tile; longer words overflow).
CAPTION_WIDTH = 28


@dataclass
class Tile:
    """One picture of a grid.

    Attributes:
        image: ``[H, W]`` grayscale or ``[H, W, 3]`` RGB, uint8; None leaves the place
            empty (to start a new row).
        caption: one or more lines over the tile (long lines are wrapped).
        frame: a colour drawn around the tile (its meaning given in the legend).
        caption_color: the caption's colour (default black).
    """

    image: np.ndarray | None
    caption: str = ""
    frame: str | tuple[float, float, float] | None = None
    caption_color: str | None = None


def _wrap(caption: str, width: int) -> str:
    lines = []
    for line in caption.splitlines() or [""]:
        lines += textwrap.wrap(line, width, max_lines=3, placeholder=" …") or [""]
    return "\n".join(lines)


def _title_chars(width: float) -> int:
    """Characters of a bold 13-pt title line that fit ``width`` inches."""
    return max(20, int(8.5 * width))


def image_grid(
    path: str | os.PathLike,
    tiles: Sequence[Tile],
    title: str,
    cols: int = 4,
    legend: Sequence[tuple[str, str | tuple[float, float, float]]] = (),
    legend_kind: str = "patch",
    footnote: str | None = None,
    tile_px: int = MIN_TILE_PX,
) -> list[str]:
    """Draw ``tiles`` in a grid with a title, captions and a colour legend; write a PNG.

    Args:
        path: the PNG to write (atomically).
        tiles: the pictures, row by row.
        title: what the whole figure shows (e.g. "brain: 8 of 40 synthetic samples").
        cols: tiles per row (fewer when there are fewer tiles).
        legend: ``(label, colour)`` pairs, one per colour that means something.
        legend_kind: ``patch`` (filled squares: fills and frames) or ``line`` (outlines).
        footnote: a line under the grid saying how to read it.
        tile_px: side of each tile in pixels.

    Returns:
        The figure's labels (title, captions, legend entries), as stored in the PNG's
        metadata (:func:`fusynth.core.style.figure_text`).

    Raises:
        ValueError: no tile.
    """
    if not any(t.image is not None for t in tiles):
        raise ValueError("image_grid: no tile to draw")
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    cols = max(1, min(cols, len(tiles)))
    rows = (len(tiles) + cols - 1) // cols
    n_lines = max(_wrap(t.caption, CAPTION_WIDTH).count("\n") + 1 for t in tiles)
    side = tile_px / DPI
    caption_h = 0.17 * n_lines + 0.08
    legend_rows = -(-len(legend) // max(1, int(max(cols * (side + 0.3), 4.5) // 2.2)))
    legend_h = 0.22 * legend_rows + 0.1 if legend else 0.0
    foot_h = 0.22 if footnote else 0.0
    width = max(cols * (side + 0.3), 4.5)
    title_h = 0.25 * (textwrap.fill(title, _title_chars(width)).count("\n") + 1)
    height = rows * (side + caption_h) + title_h + legend_h + foot_h + 0.15
    with style():
        fig = blank_figure(width, height)
        axes = fig.subplots(rows, cols, squeeze=False)
        for i, ax in enumerate(axes.flat):
            ax.grid(False)
            ax.set_xticks([])
            ax.set_yticks([])
            if i >= len(tiles) or tiles[i].image is None:
                ax.set_axis_off()
                continue
            tile = tiles[i]
            image = np.asarray(tile.image)
            if image.ndim == 2:
                ax.imshow(image, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            else:
                ax.imshow(image, interpolation="nearest")
            ax.set_title(
                _wrap(tile.caption, CAPTION_WIDTH),
                fontsize=8.5,
                fontweight="normal",
                color=tile.caption_color or "black",
                pad=3,
            )
            for spine in ax.spines.values():
                spine.set_visible(tile.frame is not None)
                if tile.frame is not None:
                    spine.set_color(tile.frame)
                    spine.set_linewidth(4)
        fig.suptitle(textwrap.fill(title, _title_chars(width)))
        note = textwrap.fill(footnote, int(14 * width)) if footnote else None
        if legend:
            if legend_kind == "line":
                handles = [Line2D([], [], color=c, linewidth=3, label=lab) for lab, c in legend]
            else:
                handles = [Patch(facecolor=c, edgecolor=c, label=lab) for lab, c in legend]
            # The footnote heads the legend, so the two never overlap.
            fig.legend(
                handles=handles,
                loc="outside lower center",
                ncols=min(len(handles), max(1, int(width // 2.2))),
                fontsize=9,
                title=note,
                title_fontsize=9,
            )
        elif note:
            fig.supxlabel(note, fontsize=9)
        write_figure(fig, path)
        return figure_text(fig)


def write_image_grid(path: str | os.PathLike, *args, **kwargs) -> Path:
    """:func:`image_grid`, returning the path written."""
    image_grid(path, *args, **kwargs)
    return Path(path)
