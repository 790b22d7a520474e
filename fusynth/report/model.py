"""What one section of the report holds, and how numbers are written in it.

Section builders (:mod:`fusynth.report.sections`) fill these plain dataclasses from a
run's own files; the Jinja templates only lay them out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Picture:
    """A picture inlined in the page.

    Attributes:
        uri: a ``data:`` URI.
        caption: what it shows (shown under it).
        width: its width in pixels, for the page to reserve space.
        height: its height in pixels.
        source: the file it came from, relative to the run (or ``drawn by the report``).
    """

    uri: str
    caption: str
    width: int
    height: int
    source: str = ""

    @property
    def small(self) -> bool:
        """Small pictures (a 256-px grid of 64-px tiles) are shown enlarged, sharp-edged."""
        return max(self.width, self.height) < 400

    @property
    def display_width(self) -> int:
        """Width on the page: small pictures enlarged by a whole factor (at least 2, and
        to about 200 px), never past 640 px; large ones capped at 900 px."""
        if self.small and self.width < 320:
            factor = max(2, -(-200 // max(self.width, 1)))
            return min(factor * self.width, 640)
        return min(self.width, 900)


@dataclass
class Table:
    """A table of numbers with a caption and optional note under it."""

    caption: str
    header: list[str]
    rows: list[list[str]]
    note: str = ""


@dataclass
class Tile:
    """One thumbnail: the picture, a short label under it, a longer text on hover."""

    uri: str
    label: str
    title: str


@dataclass
class ViewRow:
    """Real and synthetic thumbnails of one view, side by side."""

    view: str
    real: list[Tile]
    synthetic: list[Tile]
    n_real: int
    n_synthetic: int


@dataclass
class PairRow:
    """A memorization pair: a synthetic sample and its nearest training image."""

    synthetic: Tile | None
    training: Tile | None
    caption: str
    flagged: bool


@dataclass
class Section:
    """One run folder's part of the report.

    Attributes:
        anchor: the HTML id (unique in the page).
        title: heading.
        kind: the run's kind (see :data:`fusynth.report.detect.KINDS`).
        path: the folder as given.
        command: the command that wrote it.
        facts: what was done: ``(label, value)`` rows (inputs, hashes, key settings).
        numbers: the key results.
        pictures: the run's figures, and any the report drew from its logs.
        reading: plain-language lines on how to read the numbers and pictures.
        warnings: what makes the numbers meaningless or doubtful (smoke models, flags).
        browse: real and synthetic thumbnails per view.
        pairs: memorization pairs.
        settings: every setting the run recorded, shown folded.
        notes: the run's own notes (e.g. an audit's), shown as a list.
    """

    anchor: str
    title: str
    kind: str
    path: str
    command: str
    facts: list[tuple[str, str]] = field(default_factory=list)
    numbers: list[Table] = field(default_factory=list)
    pictures: list[Picture] = field(default_factory=list)
    reading: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    browse: list[ViewRow] = field(default_factory=list)
    browse_note: str = ""
    pairs: list[PairRow] = field(default_factory=list)
    settings: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    smoke: bool = False


# ----------------------------------------------------------------------------- formatting


def num(value: Any, digits: int = 3) -> str:
    """A number for a table: ``digits`` decimals, integers as they are, n/a for missing."""
    if value is None or isinstance(value, bool):
        return "n/a" if value is None else str(value)
    if isinstance(value, int):
        return str(value)
    try:
        x = float(value)
    except (TypeError, ValueError):
        return str(value)
    if not math.isfinite(x):
        return "n/a"
    if x != 0 and (abs(x) >= 1e5 or abs(x) < 10 ** (-digits)):
        return f"{x:.{digits}g}"
    return f"{x:.{digits}f}"


def share(value: Any) -> str:
    """A share in [0, 1] as a percentage with one decimal."""
    if value is None:
        return "n/a"
    return f"{100 * float(value):.1f}%"


def interval(entry: dict[str, Any] | None, digits: int = 3) -> str:
    """``value [low, high]`` of a metric entry with ``value``/``mean`` and ``ci_low``/``ci_high``."""
    if not entry:
        return "n/a"
    value = entry.get("value", entry.get("mean"))
    text = num(value, digits)
    low, high = entry.get("ci_low"), entry.get("ci_high")
    if low is not None and high is not None:
        text += f" [{num(low, digits)}, {num(high, digits)}]"
    return text


def setting(value: Any) -> str:
    """A setting's value as text: lists joined, dicts as ``k: v`` pairs, None as a dash."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return ", ".join(setting(v) for v in value) or "—"
    if isinstance(value, dict):
        return "; ".join(f"{k}: {setting(v)}" for k, v in value.items()) or "—"
    if isinstance(value, float):
        return num(value, 6).rstrip("0").rstrip(".") if "e" not in num(value, 6) else num(value)
    return str(value)


def short_hash(value: str | None) -> str:
    """The first 12 hex digits of a sha256 (the whole one is in the settings)."""
    return f"sha256 {value[:12]}…" if value else "no hash recorded"
