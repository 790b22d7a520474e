"""Summaries and montages of a prepared dataset, and the subject-leak check."""

from __future__ import annotations

import io
import json
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from PIL import Image

from fusynth.data.geometry import mask_outline
from fusynth.data.images import decode_image
from fusynth.data.schema import VIEWS, load_prepared
from fusynth.data.splits import subjects_in_several_splits

log = logging.getLogger(__name__)


@dataclass
class Summary:
    """Counts and checks of a prepared dataset (all JSON-serialisable)."""

    path: str
    n_samples: int
    splits: dict[str, int]
    views: dict[str, dict[str, int]]
    cohorts: dict[str, int]
    centers: dict[str, int]
    synthetic: int
    subjects: dict[str, int]
    image_sizes: dict[str, int]
    masks: dict[str, Any]
    pixel_spacing_known: int
    head_circumference_known: int
    leaks: dict[str, list[str]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no subject appears in two splits."""
        return not self.leaks

    def to_json(self) -> str:
        """The summary as indented JSON."""
        d = dict(self.__dict__)
        d["ok"] = self.ok
        return json.dumps(d, indent=2, sort_keys=False)

    def to_text(self) -> str:
        """A human-readable report."""
        lines = [f"{self.path}: {self.n_samples} samples, {self.synthetic} synthetic"]
        lines.append("splits:   " + _fmt(self.splits))
        lines.append("subjects: " + _fmt(self.subjects))
        for split, views in self.views.items():
            lines.append(f"views [{split}]: " + _fmt(views))
        lines.append("cohorts:  " + _fmt(self.cohorts))
        lines.append("centers:  " + _fmt(self.centers))
        lines.append("image sizes (WxH): " + _fmt(self.image_sizes))
        m = self.masks
        lines.append(
            f"masks:    {m['with_mask']}/{self.n_samples} samples have one; "
            f"foreground {m['coverage_mean']:.1%} of the image on average "
            f"(min {m['coverage_min']:.1%}, max {m['coverage_max']:.1%}); labels {m['labels']}"
        )
        lines.append(
            f"pixel spacing known for {self.pixel_spacing_known}, head circumference for "
            f"{self.head_circumference_known}"
        )
        if self.leaks:
            shown = list(self.leaks.items())[:10]
            lines.append(
                f"LEAK: {len(self.leaks)} subject(s) in more than one split: "
                + "; ".join(f"{s} in {', '.join(v)}" for s, v in shown)
            )
        else:
            lines.append("no subject appears in two splits")
        lines += [f"WARNING: {w}" for w in self.warnings]
        return "\n".join(lines)


def _fmt(counts: dict[str, int]) -> str:
    return ", ".join(f"{k}={v}" for k, v in counts.items()) if counts else "none"


def summarize(dsd: datasets.DatasetDict, path: str | os.PathLike = "") -> Summary:
    """Count samples, views, cohorts, sizes and mask coverage; find subject leaks.

    Args:
        dsd: a prepared dataset.
        path: its folder, for the report.

    Returns:
        The summary.
    """
    splits, views, subjects = {}, {}, {}
    cohorts, centers, sizes = Counter(), Counter(), Counter()
    all_subjects, all_splits = [], []
    coverage: list[float] = []
    labels: set[int] = set()
    synthetic = spacing = hc = n_mask = real_total = per_file = 0
    for split, ds in dsd.items():
        splits[split] = len(ds)
        meta = ds.select_columns(
            [
                "view",
                "subject_id",
                "cohort",
                "center",
                "synthetic",
                "pixel_spacing_mm",
                "head_circumference_mm",
                "provenance",
            ]
        ).to_dict()
        views[split] = dict(sorted(Counter(VIEWS[v] for v in meta["view"]).items()))
        subjects[split] = len(set(meta["subject_id"]))
        cohorts.update(meta["cohort"])
        centers.update(c or "unknown" for c in meta["center"])
        synthetic += sum(meta["synthetic"])
        spacing += sum(v is not None for v in meta["pixel_spacing_mm"])
        hc += sum(v is not None for v in meta["head_circumference_mm"])
        all_subjects += meta["subject_id"]
        all_splits += [split] * len(ds)
        for sid, syn, prov in zip(
            meta["subject_id"], meta["synthetic"], meta["provenance"], strict=True
        ):
            if not syn:
                real_total += 1
                per_file += _source_stem(prov) == sid
        undecoded = ds.cast_column("image", datasets.Image(decode=False)).cast_column(
            "mask", datasets.Image(decode=False)
        )
        for row in undecoded.select_columns(["image", "mask"]):
            with Image.open(io.BytesIO(row["image"]["bytes"])) as im:
                sizes[f"{im.width}x{im.height}"] += 1
            if row["mask"] is not None:
                mask = decode_image(row["mask"])
                n_mask += 1
                coverage.append(float((mask > 0).mean()))
                labels.update(int(v) for v in np.unique(mask))
    n = sum(splits.values())
    return Summary(
        path=str(path),
        n_samples=n,
        splits=splits,
        views=views,
        cohorts=dict(cohorts.most_common()),
        centers=dict(centers.most_common()),
        synthetic=synthetic,
        subjects=subjects,
        image_sizes=dict(sizes.most_common(8)),
        masks={
            "with_mask": n_mask,
            "coverage_mean": float(np.mean(coverage)) if coverage else 0.0,
            "coverage_min": float(np.min(coverage)) if coverage else 0.0,
            "coverage_max": float(np.max(coverage)) if coverage else 0.0,
            "labels": sorted(labels),
        },
        pixel_spacing_known=spacing,
        head_circumference_known=hc,
        leaks=dict(subjects_in_several_splits(all_subjects, all_splits)),
        warnings=[w for w in [per_file_subjects(real_total, per_file)] if w],
    )


def _source_stem(provenance: str | None) -> str | None:
    """The file name (no suffix) a real sample was read from, when its provenance says."""
    try:
        source = json.loads(provenance or "{}").get("source")
    except (ValueError, AttributeError):
        return None
    return Path(source).stem if isinstance(source, str) and source else None


def per_file_subjects(n_real: int, n_per_file: int) -> str | None:
    """The warning for a dataset whose every real image is its own subject (its
    ``subject_id`` is its file name): prepared without ``--subject_regex``."""
    if n_real < 2 or n_per_file < n_real:
        return None
    return (
        f"each of the {n_real} real images is its own subject (subject_id = file name): "
        "if a patient has several images, they may sit in different splits and scores "
        "will be optimistic; re-prepare with --subject_regex to group files by patient"
    )


def overlay(image: np.ndarray, mask: np.ndarray | None, size: int) -> Image.Image:
    """An RGB thumbnail of ``image`` (``[H, W]`` uint8), padded to square, with the mask
    filled in translucent red and its outline in yellow."""
    rgb = np.repeat(image[..., None], 3, axis=2).astype(np.float32)
    if mask is not None:
        fg = mask > 0
        rgb[fg] = 0.6 * rgb[fg] + 0.4 * np.array([255, 0, 0], dtype=np.float32)
        rgb[mask_outline(fg)] = (255, 255, 0)
    im = Image.fromarray(rgb.astype(np.uint8), mode="RGB")
    h, w = image.shape
    side = max(h, w)
    canvas = Image.new("RGB", (side, side))
    canvas.paste(im, ((side - w) // 2, (side - h) // 2))
    return canvas.resize((size, size), Image.Resampling.BILINEAR)


#: What the colours of :func:`overlay` mean, for a figure's legend.
MASK_LEGEND = (("mask (filled, translucent red)", "#ff0000"), ("mask outline", "#ffff00"))


def montage(
    dsd: datasets.DatasetDict,
    out: str | os.PathLike,
    per_view: int = 4,
    thumb: int = 180,
    name: str = "dataset",
) -> Path:
    """Write a labelled PNG grid: one row per view, ``per_view`` samples each, with mask
    overlays; each tile captioned with its view, split and subject.

    Samples are taken evenly across splits in stored order, so the picture is
    deterministic.

    Args:
        dsd: a prepared dataset.
        out: the PNG path (written atomically).
        per_view: samples per row.
        thumb: tile side in pixels.
        name: the dataset's name, in the title.

    Returns:
        ``out`` as a Path.
    """
    from fusynth.core.gallery import Tile, image_grid

    picks: dict[int, list[tuple[str, int]]] = {}
    for split, ds in dsd.items():
        for i, v in enumerate(ds["view"]):
            picks.setdefault(v, []).append((split, i))
    tiles: list[Tile] = []
    any_mask = False
    for view in sorted(picks):
        items = picks[view]
        step = max(1, len(items) // per_view)
        chosen = items[::step][:per_view]
        for split, i in chosen:
            row = dsd[split][i]
            image = decode_image(row["image"])
            mask = decode_image(row["mask"]) if row["mask"] is not None else None
            any_mask = any_mask or mask is not None
            h, w = image.shape
            caption = f"{VIEWS[view]} · {split}\n{row['subject_id']} ({w}x{h})"
            tiles.append(Tile(np.asarray(overlay(image, mask, thumb)), caption))
        # pad the row so every view starts a new row
        tiles += [Tile(None)] * (per_view - len(chosen))
    n = sum(len(v) for v in picks.values())
    if not tiles:
        raise ValueError("montage: the dataset has no sample")
    image_grid(
        out,
        _drop_blank_tail(tiles),
        f"{name}: up to {per_view} of {n} samples per view, one row per view",
        cols=per_view,
        legend=MASK_LEGEND if any_mask else (),
        footnote="caption: view · split, subject id (image size in pixels)",
        tile_px=thumb,
    )
    return Path(out)


def _drop_blank_tail(tiles: list[Any]) -> list[Any]:
    while tiles and tiles[-1].image is None:
        tiles = tiles[:-1]
    return tiles


def inspect_dataset(
    path: str | os.PathLike, montage_path: str | os.PathLike | None = None
) -> tuple[Summary, Path]:
    """Load, summarise and draw a prepared dataset.

    Args:
        path: the prepared dataset folder.
        montage_path: where to write the montage (default: ``PATH/montage.png``).

    Returns:
        The summary and the montage path.
    """
    dsd = load_prepared(path)
    summary = summarize(dsd, path)
    for warning in summary.warnings:
        log.warning(warning)
    target = Path(montage_path) if montage_path else Path(path) / "montage.png"
    return summary, montage(dsd, target, name=Path(path).resolve().name)
