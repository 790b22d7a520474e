"""The confusion-matrix figure of a classification report."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fusynth.io import atomic_write_bytes

DPI = 100


def confusion_png(
    path: str | os.PathLike, matrix: np.ndarray, classes: Sequence[str], title: str
) -> Path:
    """Draw a confusion matrix: counts in the cells, colour = share of the true class.

    Args:
        path: the PNG to write (atomically).
        matrix: ``[C, C]`` counts, rows true classes and columns predicted ones.
        classes: the class names, in matrix order.
        title: the figure's title.

    Returns:
        ``path`` as a Path.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    matrix = np.asarray(matrix)
    n = len(classes)
    rows = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, rows, out=np.zeros(matrix.shape, dtype=float), where=rows > 0)
    side = max(4.0, 0.9 * n + 2.5)
    fig = Figure(figsize=(side + 1.0, side), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, label="share of the true view")
    for i in range(n):
        for j in range(n):
            color = "white" if share[i, j] > 0.6 else "black"
            ax.text(j, i, str(int(matrix[i, j])), ha="center", va="center", color=color)
    ax.set_xticks(range(n), labels=list(classes), rotation=45, ha="right")
    ax.set_yticks(
        range(n), labels=[f"{c} (n={int(r)})" for c, r in zip(classes, rows[:, 0], strict=True)]
    )
    ax.set_xlabel("predicted view")
    ax.set_ylabel("true view")
    ax.set_title(title)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return atomic_write_bytes(path, buf.getvalue())
