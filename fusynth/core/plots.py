"""Report figures as PNG files: box plots, mean +/- sd line charts and confusion matrices.

Figures are built with ``matplotlib.figure.Figure`` and the Agg canvas directly, so no
pyplot state or display is involved, and written atomically. Missing values (None, NaN)
are left out of a box and leave a gap in a line.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fusynth.core.io import atomic_write_bytes
from fusynth.core.stats import finite_values

DPI = 100


def _figure(width: float = 6.4, height: float = 4.0):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _save(fig, path: str | os.PathLike) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return atomic_write_bytes(path, buf.getvalue())


def _float(v: float | None) -> float:
    return math.nan if v is None else float(v)


def box_plot(
    path: str | os.PathLike, groups: dict[str, list[float]], title: str, ylabel: str
) -> Path:
    """One box per group (e.g. Dice per box-jitter setting), with its count below.

    Args:
        path: the PNG to write.
        groups: label -> values; None and NaN values are dropped.
        title: the figure's title.
        ylabel: the y axis label.

    Returns:
        ``path`` as a Path.
    """
    data = [finite_values(v) for v in groups.values()]
    labels = [f"{name}\n(n={len(d)})" for name, d in zip(groups, data, strict=True)]
    fig, ax = _figure(max(4.0, 1.2 * len(data) + 2))
    if data:
        ax.boxplot(data, tick_labels=labels, showmeans=True)
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def line_chart(
    path: str | os.PathLike,
    x: list[float],
    series: dict[str, tuple[list[float], list[float]]],
    title: str,
    xlabel: str,
    ylabel: str,
) -> Path:
    """A mean line with +/- sd error bars per series (e.g. Dice against the number of
    real training images, with and without synthetic pairs).

    Args:
        path: the PNG to write.
        x: the x positions shared by all series.
        series: name -> ``(means, sds)``, each as long as ``x``; None/NaN means leave a
            gap and None/NaN sds draw no bar.
        title: the figure's title.
        xlabel: the x axis label.
        ylabel: the y axis label.

    Returns:
        ``path`` as a Path.

    Raises:
        ValueError: a series whose means or sds differ in length from ``x``.
    """
    xs = [_float(v) for v in x]
    fig, ax = _figure()
    for name, (means, sds) in series.items():
        if len(means) != len(xs) or len(sds) != len(xs):
            raise ValueError(
                f"series {name!r} has {len(means)} means and {len(sds)} sds for {len(xs)} x values"
            )
        ys = [_float(v) for v in means]
        err = [0.0 if math.isnan(_float(s)) else _float(s) for s in sds]
        ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=name)
    ticks = sorted({v for v in xs if math.isfinite(v)})
    if ticks:
        ax.set_xticks(ticks)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if series:
        ax.legend()
    return _save(fig, path)


def confusion_png(
    path: str | os.PathLike, matrix: np.ndarray, classes: Sequence[str], title: str
) -> Path:
    """Draw a confusion matrix: counts in the cells, colour = share of the true class.

    Args:
        path: the PNG to write.
        matrix: ``[C, C]`` counts, rows true classes and columns predicted ones.
        classes: the class names, in matrix order.
        title: the figure's title.

    Returns:
        ``path`` as a Path.
    """
    matrix = np.asarray(matrix)
    n = len(classes)
    rows = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, rows, out=np.zeros(matrix.shape, dtype=float), where=rows > 0)
    side = max(4.0, 0.9 * n + 2.5)
    fig, ax = _figure(side + 1.0, side)
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
    return _save(fig, path)
