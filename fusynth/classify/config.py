"""The settings of a classifier training run, checked as a whole, and the augmentation's ranges."""

from __future__ import annotations

from dataclasses import dataclass

from fusynth.classify.backbones import (
    check_resolution,
    default_resolution,
    parse_backbone,
)
from fusynth.core.errors import UserInputError
from fusynth.core.loop import (
    check_run_settings,
    choice,
    positive,
)
from fusynth.data.views import parse_view_list

OPTIMIZERS = ("sgd", "adamw")
BEST_METRICS = ("macro_f1", "accuracy")
VALIDATION_BATCH = 64

#: Augmentation ranges: rotation (degrees), scale, shift (fraction of the side), gain, gamma.
ROTATION_DEG = 10.0
SCALE = 0.1
SHIFT = 0.05
GAIN = 0.15
GAMMA = 0.2


@dataclass
class ClassifierTrainConfig:
    """Settings of ``recipes/train_classifier.py``; field names are the flags."""

    backbone: str = "resnet18"
    weights: str | None = None
    train: str | None = None
    validation: str | None = None
    synthetic: str | None = None
    n_real_per_view: int | None = None
    n_synthetic_per_view: int | None = None
    views: str | list[str] | None = None
    resolution: int | None = None
    augment: bool = True
    optimizer: str = "adamw"
    learning_rate: float | None = None
    momentum: float = 0.9
    weight_decay: float = 0.0
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    train_batch_size: int = 16
    gradient_accumulation_steps: int = 1
    num_train_epochs: int = 10
    max_train_steps: int | None = None
    validation_epochs: int = 1
    best_metric: str = "macro_f1"
    mixed_precision: str | None = None  # None: accelerate launch's, else "no"
    checkpointing_steps: int = 500
    checkpoints_total_limit: int | None = None
    resume_from_checkpoint: str | None = None
    seed: int = 0
    output_dir: str = "fusynth-classifier"
    overwrite_output_dir: bool = False
    report_to: str = "none"

    def __post_init__(self) -> None:
        parse_backbone(self.backbone, "--backbone")
        choice(self.optimizer, OPTIMIZERS, "--optimizer")
        choice(self.best_metric, BEST_METRICS, "--best_metric")
        check_run_settings(
            self,
            positive_fields=("gradient_accumulation_steps", "validation_epochs"),
            non_negative_fields=("weight_decay", "momentum"),
        )
        if self.n_real_per_view is not None:
            positive(self.n_real_per_view, "--n_real_per_view")
        if self.learning_rate is not None:
            positive(self.learning_rate, "--learning_rate")
        if self.n_synthetic_per_view is not None:
            positive(self.n_synthetic_per_view, "--n_synthetic_per_view", allow_zero=True)
            if not self.synthetic:
                raise UserInputError("--n_synthetic_per_view: needs --synthetic COHORT")
        self.views = parse_view_list(self.views, "--views")
        if self.views is not None and len(self.views) < 2:
            raise UserInputError(
                f"--views: a classifier needs two views or more, got {self.views[0]}"
            )
        if self.resolution is None:
            self.resolution = default_resolution(self.backbone)
        check_resolution(self.backbone, self.resolution)

    @property
    def lr(self) -> float:
        """The learning rate: as given, else 1e-3 (SGD, or AdamW from random init) or
        1e-4 (AdamW from ``--weights``)."""
        if self.learning_rate is not None:
            return self.learning_rate
        return 1e-4 if self.optimizer == "adamw" and self.weights else 1e-3
