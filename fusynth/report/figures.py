"""The few figures the report draws itself, from numbers a run logged.

Each is drawn in the shared style (:mod:`fusynth.report.style`) and returned as a
:class:`~fusynth.report.model.Picture`. Nothing is measured here: a loss curve plots
``train_log.json``'s losses, an interval chart the audit's own values.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from fusynth.report.images import data_uri
from fusynth.report.model import Picture
from fusynth.report.style import DPI, PALETTE, new_figure, png_bytes, style


def _picture(fig, caption: str) -> Picture:
    width, height = (int(round(v * DPI)) for v in fig.get_size_inches())
    return Picture(data_uri(png_bytes(fig)), caption, width, height, "drawn by the report")


def loss_curve(
    losses: Sequence[float],
    title: str,
    validation: Sequence[tuple[int, float]] = (),
    validation_label: str = "validation Dice",
) -> Picture:
    """Training loss per step (thin) with a running mean over 10 steps (thick); logged
    validation values on a second axis when there are some.

    Args:
        losses: one loss per optimizer step, as ``train_log.json`` holds them.
        title: the figure's title.
        validation: ``(step, value)`` pairs logged during training.
        validation_label: the second axis' label.
    """
    y = np.asarray([math.nan if v is None else float(v) for v in losses], dtype=float)
    steps = np.arange(1, len(y) + 1)
    with style():
        fig, ax = new_figure(6.4, 3.2)
        if len(y) >= 10:
            ax.plot(steps, y, color=PALETTE[0], alpha=0.35, linewidth=1, label="loss per step")
        else:  # a few steps: each one visible
            ax.plot(steps, y, "o-", color=PALETTE[0], label="loss per step")
        if len(y) >= 10:
            kernel = np.ones(10) / 10
            smooth = np.convolve(y, kernel, mode="valid")
            ax.plot(steps[9:], smooth, color=PALETTE[0], label="mean of the last 10 steps")
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("training loss")
        ax.set_title(title)
        handles, labels = ax.get_legend_handles_labels()
        if validation:
            ax2 = ax.twinx()
            vx, vy = zip(*validation, strict=True)
            ax2.plot(vx, vy, "o-", color=PALETTE[1], label=validation_label)
            ax2.set_ylabel(validation_label)
            ax2.grid(False)
            ax2.spines["right"].set_visible(True)
            h2, l2 = ax2.get_legend_handles_labels()
            handles, labels = handles + h2, labels + l2
        ax.legend(handles, labels, loc="upper right")
        return _picture(fig, f"{title}: {len(y)} steps, from train_log.json")


def interval_chart(
    rows: Sequence[tuple[str, float | None, float | None, float | None]],
    title: str,
    xlabel: str,
    caption: str,
) -> Picture:
    """One dot per row with its interval as a horizontal bar (e.g. KID per view with
    its ± sd over subsets). Rows with no value are listed with "n/a".

    Args:
        rows: ``(label, value, low, high)``; low/high may be None for no bar.
        title: the figure's title.
        xlabel: the value axis' label.
        caption: the caption shown under the picture.
    """
    with style():
        fig, ax = new_figure(6.4, max(1.6, 0.45 * len(rows) + 1.1))
        labels = []
        for i, (label, value, low, high) in enumerate(rows):
            labels.append(label if value is not None else f"{label} (n/a)")
            if value is None:
                continue
            if low is not None and high is not None:
                ax.plot([low, high], [i, i], color=PALETTE[0], linewidth=3, alpha=0.5)
            ax.plot([value], [i], "o", color=PALETTE[0])
        ax.set_yticks(range(len(rows)), labels=labels)
        ax.invert_yaxis()
        ax.set_xlabel(xlabel)
        ax.set_title(title)
        ax.grid(axis="y", visible=False)
        return _picture(fig, caption)
