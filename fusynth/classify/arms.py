"""What each arm and protocol of ``experiment cls-augment`` trains on, as training stages.

As in segmentation (:mod:`fusynth.segment.arms`): the real-only arm and
``real+synthetic`` under ``mix`` read the real folder and the cohort directly; any other
arm first writes the images it adds (classical copies of the chosen real images, the
chosen synthetic images, or classical copies of those) as a prepared dataset inside the
cell. The real and synthetic images are those the training itself picks for the seed
(:func:`choose_per_view`, salts 17 and 23), so arms of one repeat share them.
Pretrain-finetune starts the real stage from the synthetic stage's weights (torchvision
backbones) at the learning rate of a run from scratch, so only the data differ between
arms.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fusynth.classify.backbones import parse_backbone
from fusynth.classify.data import choose_per_view
from fusynth.core.errors import UserInputError
from fusynth.core.protocols import Arm, arm_protocol
from fusynth.data.augment import CLASSICAL, copy_seed
from fusynth.data.schema import parse_data_spec
from fusynth.data.views import ViewSet, load_view_set


@dataclass
class ClsStage:
    """One training run of a cell."""

    name: str  # "model", or "pretrain" before the real stage
    train: str
    n_real_per_view: int | None
    synthetic: str | None
    n_synthetic_per_view: int | None
    validation: str | None  # None: the train folder's validation split
    max_train_steps: int | None
    weights: str | None
    learning_rate: float | None


def check_pretrain_backbones(backbones: list[str], protocol: str) -> None:
    """Pretrain-finetune hands weights over as a torchvision state dict."""
    if protocol != "pretrain-finetune":
        return
    for b in backbones:
        if parse_backbone(b, "--backbones")[0] != "torchvision":
            raise UserInputError(
                f"--backbones: {b} cannot be fine-tuned from a pretraining stage "
                "(pretrain-finetune supports torchvision backbones)"
            )


def classical_copies(vs: ViewSet, copies: int, seed: int) -> ViewSet:
    """``copies`` augmented copies of each image (same view, subject and centre)."""
    out = ViewSet(vs.source)
    for j in range(len(vs)):
        for c in range(copies):
            image, _ = CLASSICAL(vs.images[j], None, copy_seed(seed, j, c))
            out.images.append(image)
            out.views.append(vs.views[j])
            out.subjects.append(vs.subjects[j])  # still this patient: leaks stay visible
            out.centers.append(vs.centers[j])
            out.synthetic.append(vs.synthetic[j])
            out.keys.append(f"{vs.keys[j]}~classical{c}")
    return out


def write_views(path: Path, vs: ViewSet) -> str:
    """Write a ViewSet as a prepared dataset (one ``train`` split); returns ``DIR:train``."""
    from fusynth.data.added import AddedSamples, write_added

    added = AddedSamples()
    for j in range(len(vs)):
        added.add(vs.images[j], vs.views[j], vs.subjects[j], vs.synthetic[j], vs.keys[j],
                  center=vs.centers[j])  # fmt: skip
    return write_added(path, added)


def cell_stages(
    config: Any, folder: Path, backbone: str, arm: str, m: int, r: int, real_config: Any
) -> tuple[list[ClsStage], dict[str, Any]]:
    """The training stages of one cell and what it trained on (for its record).

    Args:
        config: the experiment's ``ClsAugmentConfig``.
        folder: the cell's folder (added images are written under ``data-*``).
        backbone, arm, m, r: the cell.
        real_config: the ``ClassifierTrainConfig`` of this repeat's real-only arm (its
            choice of real images and its learning rate are reused).
    """
    from fusynth.classify.data import choose_training_data

    a = Arm(arm)
    protocol = arm_protocol(arm, config.protocol)
    seed = config.seed + r
    real_train = f"{parse_data_spec(config.real)[0]}:train"
    copies = config.classical_copies if a.classical else 0
    total = config.max_train_steps
    info: dict[str, Any] = {"protocol": protocol, "arm": arm, "n_classical": 0}
    if not a.classical and protocol == "mix":
        stage = ClsStage("model", real_train, config.n_real_per_view,
                         config.synthetic if m else None, m or None, None, total, None,
                         config.learning_rate)  # fmt: skip
        return [stage], info

    real_data = choose_training_data(real_config) if a.classical else None
    real_copies = classical_copies(real_data.train, copies, seed) if real_data else None
    synth = None
    if a.synthetic:
        classes = (
            real_data.classes if real_data else choose_training_data(real_config, False).classes
        )
        cohort = load_view_set(config.synthetic, "--synthetic", classes)
        synth = cohort.subset(
            choose_per_view(cohort, classes, m, seed, 23, "--n_synthetic_per_view")
        )

    if protocol == "mix":
        added = real_copies.concat(synth) if synth is not None else real_copies
        info["n_classical"] = len(real_copies)
        spec = write_views(folder / "data-added", added)
        stage = ClsStage("model", real_train, config.n_real_per_view, spec, None, None, total,
                         None, config.learning_rate)  # fmt: skip
        return [stage], info

    synth_part = synth.concat(classical_copies(synth, copies, seed)) if copies else synth
    info["n_classical"] = len(synth_part) - len(synth)
    synth_spec = write_views(folder / "data-synthetic", synth_part)
    from fusynth.segment.data import default_validation

    real_val = default_validation(real_train) or "none"
    if protocol == "synthetic-only":
        stage = ClsStage("model", synth_spec, None, None, None, real_val, total, None,
                         config.learning_rate)  # fmt: skip
        return [stage], info
    pretrain = ClsStage("pretrain", synth_spec, None, None, None, real_val,
                        config.pretrain_steps, None, config.learning_rate)  # fmt: skip
    added = None
    if real_copies is not None:
        added = write_views(folder / "data-added", real_copies)
        info["n_classical"] += len(real_copies)
    finetune = ClsStage("model", real_train, config.n_real_per_view, added, None, None,
                        total - config.pretrain_steps,
                        str(folder / "pretrain" / "model.safetensors"),
                        real_config.lr)  # from scratch's rate: only the data differ  # fmt: skip
    return [pretrain, finetune], info
