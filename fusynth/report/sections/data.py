"""Sections of data: phantom source frames and prepared datasets."""

from __future__ import annotations

from typing import Any

from fusynth.report.detect import Run
from fusynth.report.model import (
    Section,
    Table,
    setting,
    share,
)
from fusynth.report.samples import (
    view_counts,
)
from fusynth.report.sections.common import (
    PHANTOM_LINE,
    Context,
    flat_settings,
    picture,
    read_csv,
    read_json,
    views_text,
)


def phantom_source(run: Run, ctx: Context, sec: Section) -> None:
    """``fusynth data phantom``: the settings it recorded in ``phantom.json``."""
    settings = read_json(run.path / "phantom.json")
    rows = read_csv(run.path / "metadata.csv")
    sec.facts += [
        ("frames", f"{settings.get('n', len(rows))} at {settings.get('size')} px"),
        ("views", setting(settings.get("views"))),
        ("seed", setting(settings.get("seed"))),
        ("pixel spacing", f"{setting(settings.get('pixel_spacing_mm'))} mm"),
        ("frames per subject", setting(settings.get("frames_per_subject"))),
    ]
    sec.settings = flat_settings(settings)
    sec.reading.append(
        "Raw phantom frames in the layout a publisher would ship (PNG images, masks and "
        "metadata.csv); `fusynth data prepare --format metadata` turns them into a dataset."
    )
    sec.warnings.append(PHANTOM_LINE)
    sec.smoke = True


def _summary_for(run: Run) -> dict[str, Any]:
    """An inspect summary written next to a dataset (``NAME_summary.json``) or inside it."""
    for path in (run.path.parent / f"{run.path.name}_summary.json", run.path / "summary.json"):
        data = read_json(path)
        if data.get("n_samples") is not None:
            return data
    return {}


def dataset(run: Run, ctx: Context, sec: Section) -> None:
    """A prepared dataset: counts per split and view, subjects, masks, the montage."""
    splits = ctx.splits(run.path)
    summary = _summary_for(run)
    cohorts: dict[str, int] = {}
    for ds in splits.values():
        for c in ds["cohort"]:
            cohorts[c] = cohorts.get(c, 0) + 1
    sec.facts += [
        ("samples", str(sum(len(ds) for ds in splits.values()))),
        ("splits", ", ".join(f"{s} {len(ds)}" for s, ds in splits.items())),
        ("source cohorts", views_text(cohorts)),
    ]
    views: list[str] = []
    per_split = {s: view_counts(ds) for s, ds in splits.items()}
    for counts in per_split.values():
        views += [v for v in counts if v not in views]
    subjects = summary.get("subjects", {})
    header = ["split", *views, "total", "subjects"]
    rows = [
        [
            s,
            *(str(c.get(v, 0)) for v in views),
            str(sum(c.values())),
            str(subjects.get(s, len(set(splits[s]["subject_id"])))),
        ]
        for s, c in per_split.items()
    ]
    sec.numbers.append(Table("Frames per split and view", header, rows))
    if summary:
        masks = summary.get("masks", {})
        leaks = summary.get("leaks") or {}
        sec.facts += [
            (
                "with a mask",
                f"{masks.get('with_mask', 0)} (mean coverage {share(masks.get('coverage_mean'))})",
            ),
            ("image sizes", views_text(summary.get("image_sizes", {}))),
            ("split check", "no subject in two splits" if not leaks else f"LEAK: {setting(leaks)}"),
        ]
        if leaks:
            sec.warnings.append(
                "A subject appears in more than one split: test figures are optimistic."
            )
    pic = picture(
        run, "montage.png", "Samples per view and split; head masks tinted red, outlined yellow"
    )
    if pic:
        sec.pictures.append(pic)
    sec.reading.append(
        "Splits are drawn by subject: all frames of one patient (or exam) fall in one split, so "
        "test figures are measured on patients the models never saw."
    )
    if "phantom" in cohorts:
        sec.warnings.append(PHANTOM_LINE)
        sec.smoke = True
