"""The one sample schema every stage reads and writes.

A *prepared dataset* is a :class:`datasets.DatasetDict` saved with ``save_to_disk``
whose splits all have exactly :data:`FEATURES`. Real data, phantom data and synthetic
cohorts share it, so mixing them is a concatenation.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import datasets

from fusynth.core.errors import UserInputError, suggest

#: Canonical fetal views. The order fixes the ClassLabel ids: never reorder, only append.
VIEWS: tuple[str, ...] = ("abdomen", "brain", "femur", "thorax", "cervix", "other", "head")

#: Split names. ``unlabeled`` holds held-out images whose labels the publisher withholds
#: (HC18's ``test_set``); it is never used for training or for metrics.
SPLITS: tuple[str, ...] = ("train", "validation", "test", "unlabeled")

#: The schema. ``mask`` is a filled label map (0 background, 1 head, ...), or None.
FEATURES = datasets.Features(
    {
        "image": datasets.Image(),
        "mask": datasets.Image(),
        "view": datasets.ClassLabel(names=list(VIEWS)),
        "subject_id": datasets.Value("string"),
        "cohort": datasets.Value("string"),
        "center": datasets.Value("string"),
        "pixel_spacing_mm": datasets.Value("float32"),
        "head_circumference_mm": datasets.Value("float32"),
        "split": datasets.Value("string"),
        "synthetic": datasets.Value("bool"),
        "provenance": datasets.Value("string"),
    }
)

# Names publishers and users give to planes, normalised (lower case, single spaces).
_VIEW_ALIASES: dict[str, str] = {
    "fetal abdomen": "abdomen",
    "fetal brain": "brain",
    "fetal femur": "femur",
    "fetal thorax": "thorax",
    "maternal cervix": "cervix",
    "fetal head": "head",
    "head circumference": "head",
    "hc": "head",
    "other": "other",
}


def canonical_view(name: str, where: str = "view") -> str:
    """Map a plane name to the canonical vocabulary.

    Accepts canonical names and publishers' plane names (``Fetal brain`` -> ``brain``,
    ``Maternal cervix`` -> ``cervix``), in any case and spacing.

    Args:
        name: the plane name as found in the source.
        where: where it was found (file and row), for the error message.

    Returns:
        One of :data:`VIEWS`.

    Raises:
        UserInputError: the name is not a known plane.
    """
    key = re.sub(r"[\s_]+", " ", str(name)).strip().lower()
    if key in VIEWS:
        return key
    if key in _VIEW_ALIASES:
        return _VIEW_ALIASES[key]
    known = sorted(set(VIEWS) | {k.title() for k in _VIEW_ALIASES})
    raise UserInputError(
        f"{where}: unknown plane name {name!r}{suggest(name, known)}; known: "
        + ", ".join(VIEWS)
        + " and the publishers' names (Fetal brain, Maternal cervix, ...)"
    )


def check_features(features: datasets.Features, where: str) -> None:
    """Check that ``features`` is exactly the fusynth schema, column by column.

    Args:
        features: the features of a dataset or split.
        where: the folder and split, for the message.

    Raises:
        UserInputError: naming the first column that is missing, extra or of the
            wrong type.
    """
    missing = [c for c in FEATURES if c not in features]
    if missing:
        raise UserInputError(
            f"{where}: missing column {missing[0]!r} of the fusynth schema "
            f"(found: {', '.join(features)})"
        )
    extra = [c for c in features if c not in FEATURES]
    if extra:
        raise UserInputError(f"{where}: column {extra[0]!r} is not in the fusynth schema")
    for name, expected in FEATURES.items():
        got = features[name]
        if got != expected:
            raise UserInputError(
                f"{where}: column {name!r} is {_describe(got)}, the fusynth schema needs "
                f"{_describe(expected)}"
            )


def _describe(feature: Any) -> str:
    if isinstance(feature, datasets.ClassLabel):
        return f"ClassLabel({feature.names})"
    if isinstance(feature, datasets.Value):
        return f"Value({feature.dtype!r})"
    return type(feature).__name__ + "()"


def save_prepared(dsd: datasets.DatasetDict, out: str | os.PathLike) -> None:
    """Save a prepared dataset after checking its schema.

    Args:
        dsd: one Dataset per split, each with :data:`FEATURES`.
        out: an empty or missing folder (use :func:`fusynth.core.io.atomic_dir`).
    """
    for split, ds in dsd.items():
        check_features(ds.features, f"split {split!r}")
    dsd.save_to_disk(str(out))


def load_prepared(path: str | os.PathLike) -> datasets.DatasetDict:
    """Load a prepared dataset and validate its schema.

    Args:
        path: a folder written by ``fusynth data prepare`` (or a cohort).

    Returns:
        The DatasetDict.

    Raises:
        UserInputError: the folder is missing, is not a saved DatasetDict, or a split
            does not have the fusynth schema (the message names the column).
    """
    path = Path(path)
    if not path.exists():
        head, sep, tail = str(path).rpartition(":")
        if sep and head and (Path(head) / "dataset_dict.json").is_file():
            # DIR:name with a name that is not a split: say so, not "no such folder"
            splits = json.loads((Path(head) / "dataset_dict.json").read_text()).get("splits", [])
            raise UserInputError(
                f"{head}: no split {tail!r} (splits: {', '.join(splits) or 'none'})"
                f"{suggest(tail, splits)}"
            )
        raise UserInputError(f"{path}: no such folder")
    if not (path / "dataset_dict.json").is_file():
        hint = (
            " (it holds one split: give its parent folder)"
            if (path / "dataset_info.json").is_file()
            else ""
        )
        raise UserInputError(
            f"{path}: not a prepared dataset (no dataset_dict.json){hint}; "
            "make one with 'fusynth data prepare'"
        )
    try:
        dsd = datasets.load_from_disk(str(path))
    except Exception as exc:  # corrupt arrow files, wrong json: say which folder
        raise UserInputError(f"{path}: cannot be read as a dataset: {exc}") from exc
    if not isinstance(dsd, datasets.DatasetDict):
        raise UserInputError(f"{path}: is a single Dataset, not a DatasetDict of splits")
    for split, ds in dsd.items():
        check_features(ds.features, f"{path} split {split!r}")
    return dsd


#: ``DIR:all``: every split of a dataset, concatenated.
ALL_SPLITS = "all"


def parse_data_spec(spec: str) -> tuple[Path, str | None]:
    """Split ``DIR[:split]`` into the folder and the optional split name (a split of
    :data:`SPLITS`, or :data:`ALL_SPLITS`)."""
    head, sep, tail = str(spec).rpartition(":")
    if sep and (tail in SPLITS or tail == ALL_SPLITS) and head:
        return Path(head), tail
    return Path(spec), None


def with_default_split(spec: str, split: str) -> str:
    """``DIR`` as ``DIR:split``; a spec that names its split is kept.

    The one rule of every command taking ``DIR[:split]``: training reads ``train``,
    validation ``validation`` and evaluation ``test`` unless the spec names a split.
    """
    path, named = parse_data_spec(spec)
    return f"{path}:{named or split}"


def spec_label(spec: str, split: str = "test") -> str:
    """A short label of a data spec, ``folder:split`` (``split`` when none is named)."""
    path, named = parse_data_spec(with_default_split(spec, split))
    return f"{Path(path).name}:{named}"


def load_split(spec: str) -> datasets.Dataset:
    """Load ``DIR[:split]``: one split, or all splits concatenated for ``DIR:all`` (and,
    here, when none is named: commands apply :func:`with_default_split` first).

    Raises:
        UserInputError: unknown or empty split.
    """
    path, split = parse_data_spec(spec)
    dsd = load_prepared(path)
    if split is None or split == ALL_SPLITS:
        return datasets.concatenate_datasets([dsd[s] for s in dsd])
    if split not in dsd:
        raise UserInputError(f"{path}: has no split {split!r} (splits: {', '.join(dsd) or 'none'})")
    return dsd[split]


def provenance_json(info: Mapping[str, Any]) -> str:
    """Serialise provenance deterministically (sorted keys, no spaces)."""
    return json.dumps(dict(info), sort_keys=True, separators=(",", ":"))
