"""Sections of ``fusynth publish --dry-run`` folders."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fusynth.report.detect import Run
from fusynth.report.model import (
    Section,
    Table,
    setting,
)
from fusynth.report.sections.common import (
    SMOKE_LINE,
    Context,
    pictures,
    read_json,
)


def _card_metadata(path: Path) -> tuple[dict[str, Any], str]:
    """A card's YAML metadata and its body."""
    import yaml

    text = path.read_text(encoding="utf-8")
    if not text.startswith("---"):
        return {}, text
    _, meta, body = text.split("---", 2)
    try:
        data = yaml.safe_load(meta) or {}
    except yaml.YAMLError:
        data = {}
    return (data if isinstance(data, dict) else {}), body


def published(run: Run, ctx: Context, sec: Section) -> None:
    """A ``fusynth publish --dry-run`` folder: the card's metadata, the files that would be
    uploaded with their sizes, and the card's own pictures."""
    meta, body = _card_metadata(run.path / "README.md")
    title = next(
        (line.lstrip("# ").strip() for line in body.splitlines() if line.startswith("# ")), ""
    )
    if title:
        sec.facts.append(("card title", title))
    for key in ("license", "library_name", "base_model", "datasets", "tags", "pipeline_tag"):
        if meta.get(key):
            sec.facts.append((key.replace("_", " "), setting(meta[key])))
    files = sorted(p for p in run.path.rglob("*") if p.is_file())
    sec.numbers.append(
        Table(
            f"Files that would be uploaded ({len(files)})",
            ["file", "size"],
            [[p.relative_to(run.path).as_posix(), _size(p.stat().st_size)] for p in files[:40]],
            "" if len(files) <= 40 else f"first 40 of {len(files)} shown",
        )
    )
    sec.pictures += pictures(
        run, "validation/*.png", lambda p: f"Sample grid in the card ({p.name})", 2
    )
    sec.pictures += pictures(
        run, "eval/*/*.png", lambda p: f"Evaluation figure in the card: {p.parent.name}/{p.name}", 4
    )
    if "Not for clinical use" in body:
        sec.notes.append("The card states: not for clinical use.")
    config = read_json(run.path / "config.json")
    sam_config = read_json(run.path / "sam_config.json")
    request = read_json(run.path / "provenance" / "request.json")
    if (
        config.get("smoke_base")
        or request.get("smoke_base")
        or "tiny" in (config.get("model_type"), sam_config.get("model_type"))
        or "smoke model" in title.lower()
    ):
        sec.warnings.append(SMOKE_LINE)
        sec.smoke = True
    sec.reading.append(
        "This is what `fusynth publish` would upload (nothing was uploaded with --dry-run). "
        "Local paths are redacted to <local> in every text file."
    )


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)
