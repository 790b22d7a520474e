"""Samples an experiment adds to a training run, written as a prepared dataset.

The arms of ``experiment cls-augment`` and ``seg-augment`` that add classical copies or
a chosen subset of a cohort write those samples into the cell first (one ``train``
split in the prepared schema), so the training recipes read them like any other
folder. Each sample keeps its subject (a classical copy is still its patient, so a
leak into a test set stays visible) and its key in the provenance.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class AddedSamples:
    """Columns of the samples to write, one entry per sample."""

    images: list[np.ndarray] = field(default_factory=list)  # [H, W] uint8
    masks: list[np.ndarray | None] = field(default_factory=list)  # label maps or None
    views: list[str] = field(default_factory=list)
    subjects: list[str] = field(default_factory=list)
    centers: list[str | None] = field(default_factory=list)
    synthetic: list[bool] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    pixel_spacing_mm: list[float | None] = field(default_factory=list)
    head_circumference_mm: list[float | None] = field(default_factory=list)

    def add(
        self,
        image: np.ndarray,
        view: str,
        subject: str,
        synthetic: bool,
        key: str,
        mask: np.ndarray | None = None,
        center: str | None = None,
        pixel_spacing_mm: float | None = None,
        head_circumference_mm: float | None = None,
    ) -> None:
        """Append one sample."""
        self.images.append(image)
        self.masks.append(mask)
        self.views.append(view)
        self.subjects.append(subject)
        self.centers.append(center)
        self.synthetic.append(synthetic)
        self.keys.append(key)
        self.pixel_spacing_mm.append(pixel_spacing_mm)
        self.head_circumference_mm.append(head_circumference_mm)

    def __len__(self) -> int:
        return len(self.images)


def _png(arr: np.ndarray | None) -> dict | None:
    from fusynth.data.images import encode_png

    if arr is None:
        return None
    return {"bytes": encode_png(np.asarray(arr).astype(np.uint8)), "path": None}


def write_added(path: Path, samples: AddedSamples) -> str:
    """Write ``samples`` as a prepared dataset with one ``train`` split (replacing an
    earlier one atomically); returns ``DIR:train``.

    A real sample's cohort is ``augmented`` (a classical copy), a synthetic one's
    ``synthetic``.
    """
    import datasets

    from fusynth.core.io import atomic_dir
    from fusynth.data.schema import FEATURES, VIEWS, save_prepared

    n = len(samples)
    columns = {
        "image": [_png(im) for im in samples.images],
        "mask": [_png(m) for m in samples.masks],
        "view": [VIEWS.index(v) for v in samples.views],
        "subject_id": list(samples.subjects),
        "cohort": ["synthetic" if s else "augmented" for s in samples.synthetic],
        "center": list(samples.centers),
        "pixel_spacing_mm": list(samples.pixel_spacing_mm),
        "head_circumference_mm": list(samples.head_circumference_mm),
        "split": ["train"] * n,
        "synthetic": list(samples.synthetic),
        "provenance": [json.dumps({"source": k}) for k in samples.keys],
    }
    dsd = datasets.DatasetDict({"train": datasets.Dataset.from_dict(columns, features=FEATURES)})
    with atomic_dir(path, overwrite=True, kind="dataset") as tmp:
        save_prepared(dsd, tmp)
    return f"{path}:train"
