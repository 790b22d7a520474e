"""Thumbnails of dataset and cohort samples, and finding a sample by an audit's key.

Only label columns are read to choose samples; images are decoded for the few that
become thumbnails, so a report on a 12,000-image dataset stays quick and small.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from fusynth.report.images import overlay, thumbnail_uri
from fusynth.report.model import Tile, short_hash

#: Thumbnails per view and side (real or synthetic) in the cohort browser.
THUMBS_PER_VIEW = 5


def load_splits(path: str | os.PathLike) -> dict[str, Any]:
    """The splits of a prepared dataset or cohort folder (``datasets.load_from_disk``)."""
    import datasets

    dsd = datasets.load_from_disk(str(path))
    if isinstance(dsd, datasets.Dataset):
        return {"train": dsd}
    return dict(dsd)


def _provenance(text: str | None) -> dict[str, Any]:
    try:
        value = json.loads(text or "{}")
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def _view_names(ds: Any) -> list[str]:
    return list(ds.features["view"].names)


def pick_by_view(ds: Any, per_view: int = THUMBS_PER_VIEW) -> dict[str, list[int]]:
    """The first ``per_view`` row indices of each view, in row order (labels only)."""
    names = _view_names(ds)
    chosen: dict[str, list[int]] = {}
    for i, v in enumerate(ds["view"]):
        rows = chosen.setdefault(names[v], [])
        if len(rows) < per_view:
            rows.append(i)
    return chosen


def view_counts(ds: Any) -> dict[str, int]:
    """Rows per view (labels only)."""
    names = _view_names(ds)
    counts: dict[str, int] = {}
    for v in ds["view"]:
        counts[names[v]] = counts.get(names[v], 0) + 1
    return counts


def _decode(cell: Any):
    from fusynth.data.images import decode_image

    return None if cell is None else decode_image(cell)


def hover_text(row: dict[str, Any], adapter: str | None = None) -> str:
    """What a thumbnail's hover says: provenance of a synthetic sample (prompt, seed,
    adapter and its hash, steps, scheduler), subject and split of a real one."""
    prov = _provenance(row.get("provenance"))
    if not row.get("synthetic"):
        source = prov.get("source")
        lines = [f"subject {row.get('subject_id')}", f"split {row.get('split')}"]
        return "\n".join(lines + ([f"file {source}"] if source else []))
    lines = []
    if prov.get("prompt"):
        lines.append(f"prompt: {prov['prompt']}")
    if prov.get("seed") is not None:
        lines.append(f"seed: {prov['seed']}")
    where = adapter or prov.get("adapter") or "adapter"
    if prov.get("adapter_sha256"):
        lines.append(f"adapter: {where} ({short_hash(prov['adapter_sha256'])})")
    for key in ("method", "mask_source", "scheduler", "steps", "guidance", "lora_scale"):
        if prov.get(key) is not None:
            lines.append(f"{key}: {prov[key]}")
    return "\n".join(lines) or "synthetic (no provenance recorded)"


def tile(row: dict[str, Any], label: str, adapter: str | None = None) -> Tile:
    """A thumbnail of a sample (mask overlaid when it has one), with its hover text."""
    image = _decode(row["image"])
    mask = _decode(row.get("mask"))
    return Tile(thumbnail_uri(overlay(image, mask)), label, hover_text(row, adapter))


def tiles(ds: Any, rows: Iterable[int], adapter: str | None = None) -> list[Tile]:
    """Thumbnails of ``rows`` of ``ds``, labelled by subject (real) or cohort index
    (synthetic)."""
    out = []
    for i in rows:
        row = ds[int(i)]
        if row.get("synthetic"):
            # seeds are 64-bit: the hover shows the whole one
            label = f"sample {_provenance(row.get('provenance')).get('index', i)}"
        else:
            label = str(row.get("subject_id", f"#{i}")).split(":")[-1]
        out.append(tile(row, label, adapter))
    return out


def find_key(splits: dict[str, Any], key: str, split: str | None = None) -> dict[str, Any] | None:
    """The row an audit names by ``key`` (see ``fusynth.data.views``): the provenance
    ``source`` of a prepared sample, else ``subject_id#index`` within the audited split.

    Args:
        splits: the dataset's splits.
        key: the key from ``cohort_audit.json`` / ``memorization.csv``.
        split: the split the audit read (None: all splits, concatenated in order).

    Returns:
        The row, or None when no row has that key.
    """
    names = [split] if split in splits else list(splits)
    subject, sep, index = key.rpartition("#")
    if sep and index.isdigit():
        offset = 0
        for name in names:
            ds = splits[name]
            i = int(index) - offset
            if 0 <= i < len(ds) and ds[i]["subject_id"] == subject:
                return ds[i]
            offset += len(ds)
    for name in names:
        ds = splits[name]
        for i, text in enumerate(ds["provenance"]):
            if _provenance(text).get("source") == key:
                return ds[i]
    return None


def same_folder(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths name the same folder (resolved; else the same last two parts)."""
    pa, pb = Path(a), Path(b)
    if pa.exists() and pb.exists():
        return pa.resolve() == pb.resolve()
    return pa.parts[-2:] == pb.parts[-2:]
