"""What each arm and protocol of ``experiment seg-augment`` trains on, as training stages.

A cell of the experiment is one or two fine-tuning runs (:class:`Stage`). The real-only
arm and ``real+synthetic`` under ``mix`` read the real folder and the cohort directly;
any other arm first writes the samples it adds (classical copies of the chosen real
images, the chosen synthetic pairs, or classical copies of those) into a prepared
dataset inside the cell, so every stage is an ordinary ``finetune_sam`` run on
``DIR:split`` sources. The real images and synthetic pairs of a cell are the ones the
fine-tuning itself chooses for its seed (:func:`choose_by_subject`,
:func:`choose_synthetic`), so arms of one repeat share them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fusynth.core.protocols import Arm, arm_protocol
from fusynth.data.augment import CLASSICAL, copy_seed
from fusynth.data.schema import parse_data_spec
from fusynth.segment.data import (
    SegSample,
    choose_by_subject,
    choose_synthetic,
    default_validation,
    load_seg_set,
)


@dataclass
class Stage:
    """One fine-tuning run of a cell."""

    name: str  # "model", or "pretrain" before the fine-tuning stage
    train: str
    n_real: int
    synthetic: str | None
    n_synthetic: int | None
    validation: str | None  # None: the train folder's validation split
    max_train_steps: int | None
    init: str | None  # a SAM folder to start from (the pretrain stage's), else the base


def classical_copies(samples: list[SegSample], copies: int, seed: int) -> list[SegSample]:
    """``copies`` augmented copies of each sample (image and mask share the geometry)."""
    out = []
    for j, s in enumerate(samples):
        for c in range(copies):
            image, mask = CLASSICAL(s.image, s.mask, copy_seed(seed, j, c))
            if not mask.any():  # pushed out of the frame: keep the original geometry
                image, mask = CLASSICAL(s.image, s.mask, copy_seed(seed, j, c + copies))
            out.append(
                SegSample(
                    key=f"{s.key}~classical{c}",
                    image=image,
                    mask=mask,
                    subject_id=s.subject_id,  # still this patient: test leaks stay visible
                    synthetic=s.synthetic,
                    pixel_spacing_mm=s.pixel_spacing_mm,
                    head_circumference_mm=None,  # the deformation changed the head
                )
            )
    return out


def write_samples(path: Path, samples: list[SegSample]) -> str:
    """Write samples as a prepared dataset (one ``train`` split); returns ``DIR:train``."""
    import datasets

    from fusynth.core.io import atomic_dir
    from fusynth.data.images import encode_png
    from fusynth.data.schema import FEATURES, VIEWS, save_prepared

    columns: dict[str, list[Any]] = {k: [] for k in FEATURES}
    for s in samples:
        row = {
            "image": {"bytes": encode_png(s.image), "path": None},
            "mask": {"bytes": encode_png(s.mask.astype("uint8")), "path": None},
            "view": VIEWS.index("head"),
            "subject_id": s.subject_id,
            "cohort": "synthetic" if s.synthetic else "augmented",
            "center": "",
            "pixel_spacing_mm": s.pixel_spacing_mm,
            "head_circumference_mm": s.head_circumference_mm,
            "split": "train",
            "synthetic": s.synthetic,
            "provenance": json.dumps({"source": s.key}),
        }
        for k in FEATURES:
            columns[k].append(row[k])
    dsd = datasets.DatasetDict({"train": datasets.Dataset.from_dict(columns, features=FEATURES)})
    with atomic_dir(path, overwrite=True, kind="dataset") as tmp:
        save_prepared(dsd, tmp)
    return f"{path}:train"


def cell_stages(
    config: Any, folder: Path, arm: str, k: int, m: int, r: int
) -> tuple[list[Stage], dict[str, Any]]:
    """The training stages of one cell and what it trained on (for its record).

    Args:
        config: the experiment's ``SegAugmentConfig``.
        folder: the cell's folder (added samples are written under ``data-*``).
        arm, k, m, r: the cell: arm, real images, synthetic pairs and repeat.
    """
    a = Arm(arm)
    protocol = arm_protocol(arm, config.protocol)
    seed = config.seed + r
    real_train = f"{parse_data_spec(config.real)[0]}:train"
    real_val = default_validation(real_train) or "none"
    copies = config.classical_copies if a.classical else 0
    total = config.max_train_steps
    info = {"protocol": protocol, "arm": arm, "n_classical": 0}

    real_extra: list[SegSample] = []
    if a.classical:
        real = choose_by_subject(load_seg_set(real_train, "--real").samples, k, seed, "--n_real")
        real_extra = classical_copies(real, copies, seed)
    synth: list[SegSample] = []
    if a.synthetic and (a.classical or protocol != "mix"):
        cohort = load_seg_set(config.synthetic, "--synthetic").samples
        synth = choose_synthetic(cohort, m, seed, "--n_synthetic")

    if protocol == "mix":
        if not a.classical:  # the cohort as it is (the fine-tuning picks the same pairs)
            stage = Stage("model", real_train, k, config.synthetic if m else None, m or None,
                          None, total, None)  # fmt: skip
            return [stage], info
        extra = real_extra + synth
        info["n_classical"] = len(real_extra)
        spec = write_samples(folder / "data-added", extra)
        return [Stage("model", real_train, k, spec, len(extra), None, total, None)], info

    # The synthetic part, with classical copies of it in a classical arm.
    synth_part = synth + classical_copies(synth, copies, seed)
    info["n_classical"] = len(synth_part) - len(synth)
    synth_spec = write_samples(folder / "data-synthetic", synth_part)
    if protocol == "synthetic-only":
        only = Stage("model", synth_spec, len(synth_part), None, None, real_val, total, None)
        return [only], info
    pretrain = Stage("pretrain", synth_spec, len(synth_part), None, None, real_val,
                     config.pretrain_steps, None)  # fmt: skip
    added = None
    if real_extra:
        added = write_samples(folder / "data-added", real_extra)
        info["n_classical"] += len(real_extra)
    finetune = Stage("model", real_train, k, added, len(real_extra) or None, None,
                     total - config.pretrain_steps, str(folder / "pretrain"))  # fmt: skip
    return [pretrain, finetune], info
