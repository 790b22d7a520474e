"""``fusynth report``: one self-contained HTML page for a set of run folders.

The page holds everything it shows (pictures as ``data:`` URIs, its CSS inline, no
script, no link to anything outside it), so it opens from a USB stick or an e-mail.
"""

from __future__ import annotations

import html
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from markupsafe import Markup

from fusynth import __version__
from fusynth.core.errors import UserInputError
from fusynth.core.io import atomic_write_bytes
from fusynth.report.detect import KINDS, Run, find_runs
from fusynth.report.model import Section
from fusynth.report.sections import build_sections


@dataclass
class ReportResult:
    """What :func:`write_report` wrote."""

    out: Path
    runs: list[Run]
    sections: list[Section]
    size: int


def _code(text: str) -> Markup:
    """Escape text and show ```code``` spans as ``<code>``."""
    escaped = html.escape(str(text), quote=False)
    return Markup(re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped))


def environment():
    """The Jinja environment over the package's templates (autoescaped)."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("fusynth.report", "templates"),
        autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["code"] = _code
    return env


def render(sections: Sequence[Section], title: str = "fusynth report") -> str:
    """The HTML page of some sections.

    Args:
        sections: built by :func:`fusynth.report.sections.build_sections`.
        title: the page title.

    Returns:
        The page as text.
    """
    smoke = [s for s in sections if s.smoke]
    return (
        environment()
        .get_template("report.html.j2")
        .render(
            title=title,
            sections=sections,
            smoke=smoke,
            version=__version__,
            kinds=KINDS,
        )
    )


def write_report(
    runs: Sequence[str | os.PathLike], out: str | os.PathLike, title: str | None = None
) -> ReportResult:
    """Find the runs in ``runs``, build their sections and write one HTML file.

    Args:
        runs: run folders and/or folders holding runs (e.g. ``demo_out``).
        out: the HTML file to write (atomically).
        title: the page title (default: "fusynth report: " and the folders' names).

    Returns:
        What was written.

    Raises:
        UserInputError: a missing folder, a folder with no run, or an ``out`` that is a
            folder or not ``.html``.
    """
    out = Path(out)
    if out.is_dir():
        raise UserInputError(f"--out: {out} is a folder; give a file name such as report.html")
    if out.suffix.lower() not in (".html", ".htm"):
        raise UserInputError(f"--out: {out} should end in .html")
    if not runs:
        raise UserInputError("RUN: give at least one fusynth output folder")
    found = find_runs(runs)
    sections = build_sections(found)
    title = title or "fusynth report: " + ", ".join(Path(r).name or str(r) for r in runs)
    page = render(sections, title).encode("utf-8")
    atomic_write_bytes(out, page)
    return ReportResult(out, found, sections, len(page))
