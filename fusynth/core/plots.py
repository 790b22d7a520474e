"""Report figures as PNG files: box plots, mean +/- sd line charts and confusion matrices.

Figures are built in the shared style (:mod:`fusynth.core.style`) on the Agg canvas, so
no pyplot state or display is involved, and written atomically with their labels as PNG
metadata. Missing values (None, NaN) are left out of a box and leave a gap in a line.
"""

from __future__ import annotations

import math
import os
import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fusynth.core.stats import finite_values
from fusynth.core.style import DPI, new_figure, style, write_figure

__all__ = ["DPI", "box_plot", "confusion_png", "line_chart"]


def _figure(width: float = 6.4, height: float = 4.0):
    return new_figure(width, height)


def _save(fig, path: str | os.PathLike) -> Path:
    return write_figure(fig, path)


def _float(v: float | None) -> float:
    return math.nan if v is None else float(v)


def box_plot(
    path: str | os.PathLike,
    groups: dict[str, list[float]],
    title: str,
    ylabel: str,
    xlabel: str | None = None,
) -> Path:
    """One box per group (e.g. Dice per box-jitter setting), with its count below.

    Args:
        path: the PNG to write.
        groups: label -> values; None and NaN values are dropped.
        title: the figure's title.
        ylabel: the y axis label.
        xlabel: the x axis label (what the groups are).

    Returns:
        ``path`` as a Path.
    """
    data = [finite_values(v) for v in groups.values()]
    labels = [f"{name}\n(n={len(d)})" for name, d in zip(groups, data, strict=True)]
    with style():
        width = max(6.4, 1.2 * len(data) + 2)
        fig, ax = _figure(width)
        if data:
            ax.boxplot(data, tick_labels=labels, showmeans=True)
        ax.set_title(textwrap.fill(title, int(9 * width)))
        ax.set_ylabel(ylabel)
        if xlabel:
            ax.set_xlabel(xlabel)
        ax.grid(axis="x", visible=False)
        return _save(fig, path)


def line_chart(
    path: str | os.PathLike,
    x: list[float],
    series: dict[str, tuple[list[float], list[float]]],
    title: str,
    xlabel: str,
    ylabel: str,
    point_notes: dict[str, list[str]] | None = None,
    footnote: str | None = None,
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
        point_notes: series name -> one short text per x (empty: none), written beside
            the point (e.g. "2 empty" predictions).
        footnote: a line under the axes saying how to read the figure.

    Returns:
        ``path`` as a Path.

    Raises:
        ValueError: a series whose means, sds or notes differ in length from ``x``.
    """
    xs = [_float(v) for v in x]
    point_notes = point_notes or {}
    with style():
        fig, ax = _figure(6.4, 4.4 if footnote else 4.0)
        for name, (means, sds) in series.items():
            notes = point_notes.get(name, [""] * len(xs))
            if len(means) != len(xs) or len(sds) != len(xs) or len(notes) != len(xs):
                raise ValueError(
                    f"series {name!r} has {len(means)} means, {len(sds)} sds and {len(notes)} "
                    f"notes for {len(xs)} x values"
                )
            ys = [_float(v) for v in means]
            err = [0.0 if math.isnan(_float(s)) else _float(s) for s in sds]
            line = ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=name)
            colour = line.lines[0].get_color()
            for xv, yv, note in zip(xs, ys, notes, strict=True):
                if note and math.isfinite(xv) and math.isfinite(yv):
                    ax.annotate(
                        note,
                        (xv, yv),
                        xytext=(6, -4),
                        textcoords="offset points",
                        fontsize=9,
                        color=colour,
                    )
        ticks = sorted({v for v in xs if math.isfinite(v)})
        if ticks:
            ax.set_xticks(ticks)
        ax.set_title(title, wrap=True)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if series:
            ax.legend()
        if footnote:
            fig.text(0.01, 0.005, footnote, fontsize=9, ha="left", va="bottom", wrap=True)
            fig.get_layout_engine().set(rect=(0, 0.06, 1, 0.94))
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
    with style():
        fig, ax = _figure(side + 1.0, side)
        image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
        ax.grid(False)
        fig.colorbar(image, ax=ax, label="share of the true view")
        for i in range(n):
            for j in range(n):
                color = "white" if share[i, j] > 0.6 else "black"
                ax.text(j, i, str(int(matrix[i, j])), ha="center", va="center", color=color)
        ax.set_xticks(range(n), labels=list(classes), rotation=45, ha="right")
        ax.set_yticks(
            range(n),
            labels=[f"{c} (n={int(r)})" for c, r in zip(classes, rows[:, 0], strict=True)],
        )
        ax.set_xlabel("predicted view")
        ax.set_ylabel("true view (images)")
        ax.set_title(title)
        return _save(fig, path)
