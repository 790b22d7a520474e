"""Images with their view labels, for classification, clustering and audits.

One loader for every consumer that needs ``(image, view)`` samples: a prepared dataset
or a cohort, one split or all, optionally restricted to some views.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from fusynth.core.errors import UserInputError, suggest
from fusynth.data.images import decode_image
from fusynth.data.schema import VIEWS, load_split


@dataclass
class ViewSet:
    """Grayscale images (native size) with their view and where they come from.

    Loaded with ``images=False`` (:func:`load_view_set`) it holds the labels only and
    ``images`` is empty.
    """

    source: str
    images: list[np.ndarray] = field(default_factory=list)  # [H, W] uint8 each
    views: list[str] = field(default_factory=list)
    subjects: list[str] = field(default_factory=list)
    centers: list[str] = field(default_factory=list)
    synthetic: list[bool] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.views)

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
            [self.images[i] for i in idx] if self.images else [],
            [self.views[i] for i in idx],
            [self.subjects[i] for i in idx],
            [self.centers[i] for i in idx],
            [self.synthetic[i] for i in idx],
            [self.keys[i] for i in idx],
        )

    def concat(self, *others: ViewSet, source: str | None = None) -> ViewSet:
        """These samples followed by those of ``others``, named ``source`` (default: this
        set's)."""
        sets = (self, *others)
        return ViewSet(
            self.source if source is None else source,
            [x for s in sets for x in s.images],
            [x for s in sets for x in s.views],
            [x for s in sets for x in s.subjects],
            [x for s in sets for x in s.centers],
            [x for s in sets for x in s.synthetic],
            [x for s in sets for x in s.keys],
        )


def check_view_names(views: list[str], flag: str) -> list[str]:
    """Validate view names against the canonical vocabulary."""
    for v in views:
        if v not in VIEWS:
            raise UserInputError(
                f"{flag}: unknown view {v!r}{suggest(v, VIEWS)}; choose from {', '.join(VIEWS)}"
            )
    return views


def parse_view_list(value: str | Sequence[str] | None, flag: str) -> list[str] | None:
    """``head,femur`` (or a list) as known views in canonical order; None stays None.

    Raises:
        UserInputError: an unknown or no view.
    """
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else [str(v) for v in value]
    views = [v.strip() for v in items if v.strip()]
    if not views:
        raise UserInputError(f"{flag}: give at least one view, e.g. head,femur")
    check_view_names(views, flag)
    return [v for v in VIEWS if v in views]


#: The columns of a :class:`ViewSet` besides the image.
LABEL_COLUMNS = ("view", "subject_id", "center", "synthetic", "provenance")


def load_view_set(
    spec: str, flag: str, views: list[str] | None = None, images: bool = True
) -> ViewSet:
    """Load ``DIR[:split]`` as a :class:`ViewSet`, keeping only ``views`` when given.

    With ``images=False`` only the labels are read (no image is decoded) and the set's
    ``images`` is empty: enough to count views or compare subjects.

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
    rows = ds if images else ds.select_columns(list(LABEL_COLUMNS))
    for i, row in enumerate(rows):
        view = names[row["view"]]
        if views is not None and view not in views:
            continue
        try:
            source = json.loads(row.get("provenance") or "{}").get("source")
        except json.JSONDecodeError:
            source = None
        if images:
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
