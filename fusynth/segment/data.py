"""Segmentation samples: loading image/mask pairs, choosing them by subject, mixing real
and synthetic, and segment-anything's preprocessing.

Preprocessing follows ``segment_anything.utils.transforms.ResizeLongestSide``: the
longest side goes to the encoder size with the aspect ratio kept, then the image is
padded at the bottom and right (``Sam.preprocess``). Masks are resized with nearest
neighbour to the same shape, and the box prompt is computed from the resized mask, after
every geometric transform.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from fusynth.core.errors import UserInputError
from fusynth.data.images import decode_image
from fusynth.data.schema import load_split, parse_data_spec

log = logging.getLogger(__name__)


@dataclass
class SegSample:
    """One image with its filled head mask, at native resolution."""

    key: str
    image: np.ndarray  # [H, W] uint8
    mask: np.ndarray  # [H, W] bool
    subject_id: str
    synthetic: bool
    pixel_spacing_mm: float | None
    head_circumference_mm: float | None


@dataclass
class SegSet:
    """The samples of one ``DIR[:split]`` and what was skipped."""

    source: str
    samples: list[SegSample]
    skipped_empty: int
    skipped_unlabeled: int

    @property
    def subjects(self) -> set[str]:
        """The subject ids present."""
        return {s.subject_id for s in self.samples}


def _key(row: dict, index: int) -> str:
    try:
        source = json.loads(row.get("provenance") or "{}").get("source")
    except json.JSONDecodeError:
        source = None
    return str(source) if source else f"{row['subject_id']}#{index}"


def load_seg_set(spec: str, flag: str) -> SegSet:
    """Load the samples of ``DIR[:split]`` that have a non-empty mask.

    Samples without a mask (an unlabeled split) and with an empty mask are skipped, with
    a warning that counts them.

    Raises:
        UserInputError: the folder is not a prepared dataset, or no sample has a mask.
    """
    path, _ = parse_data_spec(spec)
    try:
        ds = load_split(spec)
    except UserInputError as exc:
        raise UserInputError(f"{flag}: {exc}") from exc
    samples, empty, unlabeled = [], 0, 0
    for i, row in enumerate(ds):
        if row["mask"] is None:
            unlabeled += 1
            continue
        mask = decode_image(row["mask"]) > 0
        if not mask.any():
            empty += 1
            continue
        image = decode_image(row["image"])
        if image.shape != mask.shape:
            raise UserInputError(
                f"{flag}: {path} sample {i} has an image of {image.shape} and a mask of {mask.shape}"
            )
        samples.append(
            SegSample(
                key=_key(row, i),
                image=image,
                mask=mask,
                subject_id=row["subject_id"],
                synthetic=bool(row["synthetic"]),
                pixel_spacing_mm=row["pixel_spacing_mm"],
                head_circumference_mm=row["head_circumference_mm"],
            )
        )
    if not samples:
        raise UserInputError(
            f"{flag}: {spec} has no image with a mask ({len(ds)} samples, {empty} with an empty "
            "mask); segmentation needs masks"
        )
    if empty:
        log.warning("%s: skipped %d sample(s) with an empty mask", spec, empty)
    if unlabeled:
        log.warning("%s: skipped %d sample(s) without a mask", spec, unlabeled)
    return SegSet(str(spec), samples, empty, unlabeled)


def choose_by_subject(samples: list[SegSample], k: int, seed: int, flag: str) -> list[SegSample]:
    """``k`` samples drawn subject by subject in a seeded order.

    Subjects are shuffled with ``seed`` and taken whole (all their images) until ``k``
    images are reached; the last subject may be cut. For one seed, a smaller ``k`` gives
    a subset of a larger one, so the cells of an experiment are nested.

    Raises:
        UserInputError: ``k`` is larger than the number of samples.
    """
    from fusynth.data.splits import pick_by_subject

    if k > len(samples):
        raise UserInputError(
            f"{flag}: asks for {k} images but the data has {len(samples)} with masks"
        )
    picked = pick_by_subject([s.subject_id for s in samples], k, [seed, 17])
    return [samples[i] for i in picked]


def choose_synthetic(samples: list[SegSample], m: int, seed: int, flag: str) -> list[SegSample]:
    """The first ``m`` samples of a seeded permutation (nested in ``m`` for one seed)."""
    if m > len(samples):
        raise UserInputError(
            f"{flag}: asks for {m} synthetic pairs but the cohort has {len(samples)}"
        )
    order = np.random.default_rng([seed, 23]).permutation(len(samples))
    return [samples[i] for i in order[:m]]


def check_disjoint(train: list[SegSample], other: list[SegSample], what: str) -> None:
    """Refuse a validation or test set that shares a (real) subject with training."""
    shared = {s.subject_id for s in train if not s.synthetic} & {
        s.subject_id for s in other if not s.synthetic
    }
    if shared:
        raise UserInputError(
            f"{what}: shares {len(shared)} subject(s) with the training data "
            f"(e.g. {sorted(shared)[0]}); use a patient-disjoint split"
        )


def default_validation(train_spec: str) -> str | None:
    """``DIR:validation`` of the training folder, when that split exists."""
    path, _ = parse_data_spec(train_spec)
    if (Path(path) / "validation").is_dir():
        return f"{path}:validation"
    return None


# ----------------------------------------------------------------------------- SAM inputs


def resized_shape(h: int, w: int, size: int) -> tuple[int, int]:
    """segment-anything's ``ResizeLongestSide.get_preprocess_shape``."""
    scale = size / max(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


@dataclass
class SamInput:
    """One sample in the encoder's frame: resized (not padded) image, padded mask, box."""

    image: np.ndarray  # [h, w, 3] uint8, longest side = size
    mask: np.ndarray  # [size, size] bool, zero in the padding
    box: np.ndarray  # [4] float32 x0, y0, x1, y1 in the encoder frame
    scale: float  # encoder pixels per native pixel


def sam_input(sample: SegSample, size: int) -> SamInput:
    """Resize the longest side to ``size`` (bilinear image, nearest mask), pad the mask,
    and take the box of the resized mask."""
    from segment_anything.utils.transforms import ResizeLongestSide

    h, w = sample.image.shape
    nh, nw = resized_shape(h, w, size)
    rgb = np.repeat(sample.image[..., None], 3, axis=2)
    image = ResizeLongestSide(size).apply_image(rgb)
    assert image.shape[:2] == (nh, nw)
    small = Image.fromarray(sample.mask.astype(np.uint8) * 255).resize((nw, nh), Image.NEAREST)
    small_mask = np.asarray(small) > 0
    if not small_mask.any():  # a sliver that nearest-neighbour lost: keep its centre pixel
        ys, xs = np.nonzero(sample.mask)
        small_mask[min(int(ys.mean() * nh / h), nh - 1), min(int(xs.mean() * nw / w), nw - 1)] = (
            True
        )
    mask = np.zeros((size, size), dtype=bool)
    mask[:nh, :nw] = small_mask
    ys, xs = np.nonzero(mask)
    box = np.array([xs.min(), ys.min(), xs.max(), ys.max()], dtype=np.float32)
    return SamInput(image=image, mask=mask, box=box, scale=nh / h)
