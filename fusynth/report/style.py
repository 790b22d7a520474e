"""One plotting style for every figure the report draws.

Figures are built with ``matplotlib.figure.Figure`` on the Agg canvas (no pyplot state,
no display) inside :func:`style`, so every chart in a report shares one font size, one
palette and one grid, and reads at the width the page shows it (about 640 px).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from typing import Any

#: Dots per inch of the PNGs: a 6.4 x 3.6 inch figure is 640 x 360 px, shown 1:1.
DPI = 100

#: Colours in the order series use them (colour-blind safe: Okabe and Ito).
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442")

#: matplotlib settings shared by every report figure.
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
    "savefig.facecolor": "white",
}


@contextlib.contextmanager
def style() -> Iterator[None]:
    """Apply :data:`RC` and :data:`PALETTE` while a figure is built and saved."""
    from cycler import cycler
    from matplotlib import rc_context

    with rc_context({**RC, "axes.prop_cycle": cycler(color=list(PALETTE))}):
        yield


def new_figure(width: float = 6.4, height: float = 3.6):
    """A figure and one axes on the Agg canvas; build it inside :func:`style`.

    Args:
        width: inches (100 px each).
        height: inches.

    Returns:
        ``(figure, axes)``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def png_bytes(fig) -> bytes:
    """The figure as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()
