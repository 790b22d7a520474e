"""What a classifier trains and validates on: real images per view chosen by subject, a
synthetic cohort likewise, a patient-disjoint real validation set, and the per-batch
augmentation (small rotation, scale and shift, horizontal flip, brightness as a gain and
contrast as a gamma, so the black background stays black).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from fusynth.classify.backbones import (
    ClassifierSpec,
)
from fusynth.classify.config import GAIN, GAMMA, ROTATION_DEG, SCALE, SHIFT, ClassifierTrainConfig
from fusynth.core.errors import UserInputError
from fusynth.core.traps import emit, missing_views, small_validation
from fusynth.data.schema import VIEWS, with_default_split
from fusynth.data.splits import check_disjoint_subjects, pick_by_subject
from fusynth.data.views import ViewSet, load_view_set
from fusynth.embed.clip import normalize_batch

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- data


@dataclass
class ClassifierData:
    """The chosen training images (real then synthetic), the validation set, and counts."""

    classes: list[str]
    train: ViewSet
    validation: ViewSet | None
    source: dict[str, Any]


def choose_per_view(
    vs: ViewSet, views: list[str], k: int | None, seed: int, salt: int, flag: str
) -> list[int]:
    """Indices of ``k`` images of each view, taken subject by subject in a seeded order.

    Per view, the subjects are shuffled with ``(seed, salt, view)`` and taken whole until
    ``k`` images are reached (the last one may be cut), so for one seed a smaller ``k``
    gives a subset of a larger one. ``k`` None takes every image; a view without images
    is skipped.

    Raises:
        UserInputError: a view has fewer than ``k`` images (naming it and the count).
    """
    chosen: list[int] = []
    for view in views:
        idx = [i for i, v in enumerate(vs.views) if v == view]
        if k is None or not idx:
            chosen += idx
            continue
        if k > len(idx):
            raise UserInputError(
                f"{flag}: asks for {k} images of view {view!r} but {vs.source} has {len(idx)}"
            )
        subjects = [vs.subjects[i] for i in idx]
        chosen += [idx[j] for j in pick_by_subject(subjects, k, [seed, salt, VIEWS.index(view)])]
    return chosen


def check_validation(train: ViewSet, validation: ViewSet, spec: str) -> None:
    """Refuse a validation set that is synthetic in part or shares a real subject.

    Raises:
        UserInputError: naming the validation set and one offending subject or image.
    """
    synthetic = [k for k, s in zip(validation.keys, validation.synthetic, strict=True) if s]
    if synthetic:
        raise UserInputError(
            f"--validation: {spec} holds {len(synthetic)} synthetic image(s) (e.g. "
            f"{synthetic[0]}); validation must be real"
        )
    check_disjoint_subjects(
        (s for s, syn in zip(train.subjects, train.synthetic, strict=True) if not syn),
        validation.subjects,
        f"--validation: {spec}",
        "the training images",
        "use a patient-disjoint split such as DIR:validation and train on DIR:train",
    )


def _train_spec(config: ClassifierTrainConfig) -> str:
    if config.train is not None:
        return with_default_split(config.train, "train")
    from fusynth.data.phantom_cohort import default_dataset

    log.info("no --train: using the built-in phantom (head, abdomen, femur, thorax)")
    return f"{default_dataset()}:train"


def _counts(vs: ViewSet, idx: list[int], classes: list[str]) -> dict[str, int]:
    views = [vs.views[i] for i in idx]
    return {v: views.count(v) for v in classes}


def _choose_synthetic(
    config: ClassifierTrainConfig, classes: list[str], images: bool
) -> tuple[ViewSet | None, dict[str, int]]:
    """The synthetic images of ``classes`` chosen per view, and their counts."""
    counts = dict.fromkeys(classes, 0)
    if not config.synthetic:
        return None, counts
    cohort = load_view_set(config.synthetic, "--synthetic", classes, images)
    lacking = [v for v in classes if v not in cohort.view_counts]
    if lacking and config.n_synthetic_per_view != 0:
        log.warning("--synthetic: %s has no image of %s", config.synthetic, ", ".join(lacking))
    idx = choose_per_view(
        cohort, classes, config.n_synthetic_per_view, config.seed, 23, "--n_synthetic_per_view"
    )
    return cohort.subset(idx), _counts(cohort, idx, classes)


def _load_validation(
    config: ClassifierTrainConfig,
    train_spec: str,
    train: ViewSet,
    classes: list[str],
    images: bool,
) -> tuple[ViewSet | None, str | None]:
    """The validation images of ``classes`` (checked real and patient-disjoint), or None."""
    from fusynth.segment.data import default_validation

    spec = config.validation if config.validation is not None else default_validation(train_spec)
    if not spec or spec == "none":
        log.warning(
            "no validation set: the output model is the last step's (give --validation DIR:split)"
        )
        return None, None
    validation = load_view_set(spec, "--validation", classes, images)
    check_validation(train, validation, spec)
    return validation, spec


def choose_training_data(config: ClassifierTrainConfig, images: bool = True) -> ClassifierData:
    """Real images chosen per view (plus synthetic ones) and the validation set.

    With ``images=False`` only the labels are read (see
    :func:`fusynth.data.views.load_view_set`): the same choice and checks, no image
    decoded.

    Raises:
        UserInputError: unreadable data, fewer than two views, too few images of a view,
            or a validation set that is not real and patient-disjoint.
    """
    train_spec = _train_spec(config)
    real_all = load_view_set(train_spec, "--train", config.views, images)
    classes = [v for v in VIEWS if v in real_all.view_counts]
    absent = [v for v in config.views or () if v not in classes]
    if absent:
        raise UserInputError(f"--views: {train_spec} has no image of view {absent[0]!r}")
    if len(classes) < 2:
        raise UserInputError(
            f"--train: {train_spec} has only view {classes[0]}; a classifier needs two or more"
        )
    real_idx = choose_per_view(
        real_all, classes, config.n_real_per_view, config.seed, 17, "--n_real_per_view"
    )
    train = real_all.subset(real_idx)
    synthetic, synth_counts = _choose_synthetic(config, classes, images)
    if synthetic is not None:
        train = train.concat(synthetic)
    validation, val_spec = _load_validation(config, train_spec, train, classes, images)
    source = {
        "train": train_spec,
        "synthetic": config.synthetic,
        "validation": val_spec,
        "classes": classes,
        "num_real": len(real_idx),
        "num_real_subjects": len({real_all.subjects[i] for i in real_idx}),
        "real_per_view": _counts(real_all, real_idx, classes),
        "num_synthetic": sum(synth_counts.values()),
        "synthetic_per_view": synth_counts,
        "num_validation": len(validation) if validation is not None else 0,
        "validation_per_view": validation.view_counts if validation is not None else {},
    }
    if validation is not None:
        source["warnings"] = emit(
            log,
            [
                missing_views(classes, validation.view_counts, val_spec),
                small_validation(
                    len(validation),
                    val_spec,
                    f"the saved model is the step with the best validation {config.best_metric}",
                ),
            ],
        )
    else:
        source["warnings"] = []
    return ClassifierData(classes, train, validation, source)


# ----------------------------------------------------------------------------- augmentation


def augment_batch(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random affine (rotation, scale, shift, horizontal flip) and intensity changes.

    Args:
        x: ``[B, 1, H, W]`` values in [0, 1].
        gen: the (CPU) generator every parameter is drawn from.

    Returns:
        The augmented batch, same shape, values in [0, 1]; outside the image is black.
    """
    b = x.shape[0]

    def uniform(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=gen) * 2 - 1

    angle = uniform(b) * math.radians(ROTATION_DEG)
    scale = 1 + uniform(b) * SCALE
    shift = uniform(b, 2) * SHIFT * 2  # grid coordinates span [-1, 1]
    flip = torch.where(torch.rand(b, generator=gen) < 0.5, -1.0, 1.0)
    gain = 1 + uniform(b) * GAIN
    gamma = torch.exp(uniform(b) * GAMMA)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [
            torch.stack([cos * flip, -sin, shift[:, 0]], dim=1),
            torch.stack([sin * flip, cos, shift[:, 1]], dim=1),
        ],
        dim=1,
    ).to(x.device, x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    out = out.clamp(0, 1) ** gamma.to(x.device, x.dtype).view(b, 1, 1, 1)
    return (out * gain.to(x.device, x.dtype).view(b, 1, 1, 1)).clamp(0, 1)


def model_inputs(
    x: torch.Tensor, spec: ClassifierSpec, device: torch.device, gen: torch.Generator | None
) -> torch.Tensor:
    """uint8 ``[B, R, R]`` squares to normalised ``[B, 3, R, R]`` inputs, augmented when
    ``gen`` is given."""
    batch = x.to(device).float().div(255.0)[:, None]
    if gen is not None:
        batch = augment_batch(batch, gen)
    return normalize_batch(batch, spec.mean, spec.std)
