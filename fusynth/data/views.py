"""Images with their view labels, for classification, clustering and audits.

One loader for every consumer that needs ``(image, view)`` samples: a prepared dataset
or a cohort, one split or all, optionally restricted to some views.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from fusynth.data.images import decode_image
from fusynth.data.schema import VIEWS, load_split
from fusynth.errors import UserInputError, suggest


@dataclass
class ViewSet:
    """Grayscale images (native size) with their view and where they come from."""

    source: str
    images: list[np.ndarray] = field(default_factory=list)  # [H, W] uint8 each
    views: list[str] = field(default_factory=list)
    subjects: list[str] = field(default_factory=list)
    centers: list[str] = field(default_factory=list)
    synthetic: list[bool] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def view_counts(self) -> dict[str, int]:
        """Samples per view, in canonical view order."""
        counts = Counter(self.views)
        return {v: counts[v] for v in VIEWS if counts[v]}

    def subset(self, indices) -> ViewSet:
        """The samples at ``indices``, in that order."""
        idx = list(indices)
        return ViewSet(
            self.source,
            [self.images[i] for i in idx],
            [self.views[i] for i in idx],
            [self.subjects[i] for i in idx],
            [self.centers[i] for i in idx],
            [self.synthetic[i] for i in idx],
            [self.keys[i] for i in idx],
        )


def check_view_names(views: list[str], flag: str) -> list[str]:
    """Validate view names against the canonical vocabulary."""
    for v in views:
        if v not in VIEWS:
            raise UserInputError(
                f"{flag}: unknown view {v!r}{suggest(v, VIEWS)}; choose from {', '.join(VIEWS)}"
            )
    return views


def load_view_set(spec: str, flag: str, views: list[str] | None = None) -> ViewSet:
    """Load ``DIR[:split]`` as a :class:`ViewSet`, keeping only ``views`` when given.

    Raises:
        UserInputError: not a prepared dataset, unknown split or view, or nothing left.
    """
    try:
        ds = load_split(spec)
    except UserInputError as exc:
        raise UserInputError(f"{flag}: {exc}") from exc
    if views is not None:
        check_view_names(views, flag)
    names = ds.features["view"].names
    out = ViewSet(str(spec))
    for i, row in enumerate(ds):
        view = names[row["view"]]
        if views is not None and view not in views:
            continue
        try:
            source = json.loads(row.get("provenance") or "{}").get("source")
        except json.JSONDecodeError:
            source = None
        out.images.append(decode_image(row["image"]))
        out.views.append(view)
        out.subjects.append(row["subject_id"])
        out.centers.append(row["center"] or "")
        out.synthetic.append(bool(row["synthetic"]))
        out.keys.append(str(source) if source else f"{row['subject_id']}#{i}")
    if not len(out):
        which = f" with views {', '.join(views)}" if views else ""
        raise UserInputError(f"{flag}: {spec} has no samples{which}")
    return out
