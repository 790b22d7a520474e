"""One plotting style for every figure fusynth draws: result charts, labelled image
grids and the report's own figures.

Figures are built with ``matplotlib.figure.Figure`` on the Agg canvas (no pyplot state,
no display) inside :func:`style`, so every chart shares one font size, one palette and
one grid, and reads at the width a page shows it (about 640 px). Saved PNGs carry their
title and every visible label in their text chunks (``Title``, ``Description``), so a
script, a test or an image viewer's "properties" can tell what a picture shows without
looking at it.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

#: Dots per inch of the PNGs: a 6.4 x 3.6 inch figure is 640 x 360 px, shown 1:1.
DPI = 100

#: Colours in the order series use them (colour-blind safe: Okabe and Ito).
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442")

#: matplotlib settings shared by every figure.
RC: dict[str, Any] = {
    "font.size": 11,
    "axes.titlesize": 12,
    "axes.titleweight": "bold",
    "axes.labelsize": 11,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "legend.fontsize": 10,
    "legend.frameon": False,
    "lines.linewidth": 1.8,
    "lines.markersize": 5,
    "figure.facecolor": "white",
    "figure.titlesize": 13,
    "figure.titleweight": "bold",
    "savefig.facecolor": "white",
}


@contextlib.contextmanager
def style() -> Iterator[None]:
    """Apply :data:`RC` and :data:`PALETTE` while a figure is built and saved."""
    from cycler import cycler
    from matplotlib import rc_context

    with rc_context({**RC, "axes.prop_cycle": cycler(color=list(PALETTE))}):
        yield


def blank_figure(width: float, height: float):
    """A figure on the Agg canvas with no axes yet; build it inside :func:`style`."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def new_figure(width: float = 6.4, height: float = 3.6):
    """A figure and one axes on the Agg canvas; build it inside :func:`style`.

    Args:
        width: inches (100 px each).
        height: inches.

    Returns:
        ``(figure, axes)``.
    """
    fig = blank_figure(width, height)
    return fig, fig.add_subplot()


def figure_text(fig) -> list[str]:
    """Every label a reader sees, in drawing order: the figure's title, then per axes its
    title, axis labels, legend entries and colour-bar label, then figure legends.

    Tick labels and cell annotations are left out: they are numbers, not explanations.
    Each label is one line (wrapping undone).
    """
    out: list[str] = []

    def add(text: str | None) -> None:
        text = " ".join((text or "").split())  # wrapped lines read as one
        if text and text not in out:
            out.append(text)

    if fig._suptitle is not None:
        add(fig._suptitle.get_text())
    for ax in fig.axes:
        for loc in ("left", "center", "right"):
            add(ax.get_title(loc))
        add(ax.get_xlabel())
        add(ax.get_ylabel())
        legend = ax.get_legend()
        if legend is not None:
            add(legend.get_title().get_text())
            for t in legend.get_texts():
                add(t.get_text())
    if getattr(fig, "_supxlabel", None) is not None:
        add(fig._supxlabel.get_text())
    for legend in fig.legends:
        add(legend.get_title().get_text())
        for t in legend.get_texts():
            add(t.get_text())
    for t in fig.texts:
        add(t.get_text())
    return out


def png_bytes(fig, metadata: bool = True) -> bytes:
    """The figure as PNG bytes; with ``metadata`` its title and labels go in the PNG's
    ``Title`` and ``Description`` text chunks (see :func:`figure_text`)."""
    meta = None
    if metadata:
        text = figure_text(fig)
        meta = {"Title": text[0] if text else "", "Description": "\n".join(text)}
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata=meta)
    return buf.getvalue()


def write_figure(fig, path: str | os.PathLike) -> Path:
    """Write ``fig`` as a PNG atomically (with its labels as metadata)."""
    from fusynth.core.io import atomic_write_bytes

    return atomic_write_bytes(path, png_bytes(fig))


def png_text(path: str | os.PathLike) -> dict[str, str]:
    """The text chunks of a PNG fusynth wrote (``Title``, ``Description``): what the
    picture is labelled with, readable without looking at it."""
    from PIL import Image

    with Image.open(path) as im:
        return dict(getattr(im, "text", {}) or {})
