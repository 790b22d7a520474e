"""Training view classifiers on real images, optionally with a synthetic cohort.

:func:`train_classifier` is the loop behind ``recipes/train_classifier.py``:

* Real images are chosen per view, subject by subject in a seeded order
  (``--n_real_per_view``), synthetic ones likewise from ``--synthetic``
  (``--n_synthetic_per_view``); for one seed a smaller count gives a subset of a larger
  one.
* Validation is a real, patient-disjoint set (by default the ``validation`` split of
  the ``--train`` folder), never a sample of the training images: a validation set with
  a synthetic image or a subject of the training images is refused. The output model is
  the checkpoint with the best validation macro-F1 (or accuracy).
* Images are padded to square and resized once; augmentation (small rotation, scale and
  shift, horizontal flip, brightness as a gain and contrast as a gamma, so the black
  background stays black) is drawn per batch from :mod:`fusynth.loop`'s seeded
  generators, so resuming from a checkpoint reproduces an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fusynth.classify.backbones import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    ClassifierSpec,
    build_classifier,
    check_resolution,
    default_resolution,
    parse_backbone,
    predict_proba,
    read_state_dict,
    rebuild_classifier,
)
from fusynth.clip import normalize_batch
from fusynth.data.schema import VIEWS
from fusynth.data.splits import check_disjoint_subjects, pick_by_subject
from fusynth.data.transforms import square_batch
from fusynth.data.views import ViewSet, load_view_set, parse_view_list
from fusynth.errors import UserInputError
from fusynth.loop import (
    check_run_dir,
    check_run_settings,
    checkpoint_if_due,
    choice,
    epoch_order,
    make_lr_scheduler,
    positive,
    replace_outputs,
    resume_run,
    start_run,
    step_generator,
    write_run_config,
)

log = logging.getLogger(__name__)

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
        return config.train
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


# ----------------------------------------------------------------------------- progress


@dataclass
class Progress:
    """What a run has seen so far: losses, validation scores, and the best weights."""

    losses: list[float] = field(default_factory=list)
    validation: list[dict[str, float]] = field(default_factory=list)
    best_step: int | None = None
    best_value: float | None = None
    best_state: dict[str, torch.Tensor] | None = None

    def record(self, step: int, scores: dict[str, float], metric: str, model: nn.Module) -> None:
        """Add a validation; keep the weights when ``metric`` improved (ties: the earlier)."""
        self.validation.append({"step": step, **scores})
        value = scores[metric]
        if self.best_value is None or value > self.best_value:
            self.best_step, self.best_value = step, value
            self.best_state = _cpu_state(model)

    def to_json(self) -> str:
        """Everything but the weights."""
        return json.dumps(
            {
                "losses": self.losses,
                "validation": self.validation,
                "best_step": self.best_step,
                "best_value": self.best_value,
            }
        )


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}


def _save_trained(folder: Path, model: nn.Module, progress: Progress) -> None:
    from safetensors.torch import save_file

    save_file(_cpu_state(model), str(folder / "trained.safetensors"))
    if progress.best_state is not None:
        save_file(progress.best_state, str(folder / "best.safetensors"))
    (folder / "progress.json").write_text(progress.to_json())


def _load_trained(folder: Path, model: nn.Module, progress: Progress) -> None:
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(folder / "trained.safetensors")))
    data = json.loads((folder / "progress.json").read_text())
    progress.losses = data["losses"]
    progress.validation = data["validation"]
    progress.best_step, progress.best_value = data["best_step"], data["best_value"]
    best = folder / "best.safetensors"
    progress.best_state = load_file(str(best)) if best.is_file() else None


# ----------------------------------------------------------------------------- validation


@torch.no_grad()
def validation_scores(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, spec: ClassifierSpec, device
) -> dict[str, float]:
    """Accuracy, macro-F1 and cross-entropy of the (unaugmented) validation images."""
    from torchmetrics.functional.classification import multiclass_accuracy, multiclass_f1_score

    was = model.training
    model.eval()
    logits = torch.cat(
        [
            model(model_inputs(x[i : i + VALIDATION_BATCH], spec, device, None)).float().cpu()
            for i in range(0, len(x), VALIDATION_BATCH)
        ]
    )
    model.train(was)
    pred = logits.argmax(dim=1)
    c = len(spec.classes)
    return {
        "accuracy": float(multiclass_accuracy(pred, y, c, average="micro")),
        "macro_f1": float(multiclass_f1_score(pred, y, c, average="macro")),
        "loss": float(F.cross_entropy(logits, y)),
    }


# ----------------------------------------------------------------------------- the loop


@dataclass
class ClassifierTrainResult:
    """What a run wrote and measured."""

    output_dir: Path
    global_step: int
    images_per_second: float
    losses: list[float]
    validation: list[dict[str, float]]
    best_step: int | None
    best_value: float | None


RESUME_KEYS = (
    "seed",
    "backbone",
    "weights",
    "resolution",
    "views",
    "train",
    "synthetic",
    "n_real_per_view",
    "n_synthetic_per_view",
    "augment",
    "optimizer",
    "train_batch_size",
    "gradient_accumulation_steps",
)


def _optimizer(config: ClassifierTrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


def _step_seed(gen: torch.Generator) -> int:
    """A seed for torch's global generator (dropout, stochastic depth) from the step's."""
    return int(torch.randint(0, 2**62, (1,), generator=gen))


@dataclass
class _Tensors:
    """Training and validation images as uint8 squares ``[N, R, R]``, with class indices."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor | None
    y_val: torch.Tensor | None


def _tensors(data: ClassifierData, spec: ClassifierSpec) -> _Tensors:
    index = {c: i for i, c in enumerate(data.classes)}

    def labels(vs: ViewSet) -> torch.Tensor:
        return torch.tensor([index[v] for v in vs.views])

    val = data.validation
    return _Tensors(
        square_batch(data.train.images, spec.resolution),
        labels(data.train),
        square_batch(val.images, spec.resolution) if val is not None else None,
        labels(val) if val is not None else None,
    )


@dataclass
class _Schedule:
    """How one process walks through the data: batches per epoch and optimizer steps."""

    n: int
    batches_per_epoch: int
    steps_per_epoch: int
    max_steps: int

    def batch(self, config: ClassifierTrainConfig, micro: int, process: int, processes: int):
        """The sample indices of micro-batch ``micro`` on this process."""
        epoch, b = divmod(micro, self.batches_per_epoch)
        order = epoch_order(self.n, config.seed, epoch, process, processes)
        size = config.train_batch_size
        return torch.from_numpy(order[b * size : (b + 1) * size])


def _schedule(config: ClassifierTrainConfig, n: int, process: int, processes: int) -> _Schedule:
    per_process = len(epoch_order(n, config.seed, 0, process, processes))
    batches = math.ceil(per_process / config.train_batch_size)
    steps = math.ceil(batches / config.gradient_accumulation_steps)
    return _Schedule(n, batches, steps, config.max_train_steps or config.num_train_epochs * steps)


def _announce(config: ClassifierTrainConfig, data: ClassifierData, spec: ClassifierSpec) -> None:
    log.info(
        "training %s on %d real (%d subjects) + %d synthetic images of %s at %d px; "
        "%d validation images",
        config.backbone,
        data.source["num_real"],
        data.source["num_real_subjects"],
        data.source["num_synthetic"],
        ", ".join(data.classes),
        spec.resolution,
        data.source["num_validation"],
    )


@dataclass
class _Run:
    """What the loop of one run works with."""

    config: ClassifierTrainConfig
    accelerator: Any
    model: nn.Module  # unwrapped: its weights are those of ``prepared``
    prepared: nn.Module
    spec: ClassifierSpec
    tensors: _Tensors
    sched: _Schedule
    optimizer: Any
    lr_scheduler: Any
    progress: Progress
    output_dir: Path
    resume_state: dict[str, Any]
    resume: Path | None

    def micro_step(self, micro: int) -> tuple[float, int]:
        """Forward and backward one micro-batch (the optimizer steps when the accumulation
        is complete); returns its mean loss over processes and its size."""
        acc, config, t = self.accelerator, self.config, self.tensors
        idx = self.sched.batch(config, micro, acc.process_index, acc.num_processes)
        gen = step_generator(config.seed, micro, acc.process_index)
        inputs = model_inputs(
            t.x_train[idx], self.spec, acc.device, gen if config.augment else None
        )
        torch.manual_seed(_step_seed(gen))
        with acc.accumulate(self.prepared):
            with acc.autocast():
                logits = self.prepared(inputs)
            loss = F.cross_entropy(logits.float(), t.y_train[idx].to(acc.device))
            acc.backward(loss)
            self.optimizer.step()
            self.optimizer.zero_grad()
        return acc.reduce(loss.detach(), reduction="mean").item(), len(idx)

    def after_step(self, step: int, loss: float) -> None:
        """Log, validate (main process) and checkpoint after optimizer step ``step``."""
        acc, config, t = self.accelerator, self.config, self.tensors
        self.progress.losses.append(loss)
        logs = {"loss": loss, "lr": self.lr_scheduler.get_last_lr()[0]}
        last = step == self.sched.max_steps
        epoch_end = step % (self.sched.steps_per_epoch * config.validation_epochs) == 0
        if (epoch_end or last) and t.x_val is not None:
            if acc.is_main_process:
                scores = validation_scores(self.model, t.x_val, t.y_val, self.spec, acc.device)
                self.progress.record(step, scores, config.best_metric, self.model)
                logs.update({f"val_{k}": v for k, v in scores.items()})
            acc.wait_for_everyone()
        if config.report_to != "none":
            acc.log(logs, step=step)
        checkpoint_if_due(
            acc,
            config,
            self.output_dir,
            step,
            last,
            self.resume_state,
            lambda tmp: _save_trained(tmp, self.model, self.progress),
            self.optimizer,
            self.lr_scheduler,
        )


def _prepare_run(config: ClassifierTrainConfig) -> tuple[_Run, ClassifierData, str | None]:
    """Data, model, accelerator, optimizer and schedule of a run (not yet resumed)."""
    check_run_dir(config, WEIGHTS_FILE)  # before loading anything
    data = choose_training_data(config)
    built = build_classifier(
        config.backbone, data.classes, config.resolution, config.weights, seed=config.seed
    )
    tensors = _tensors(data, built.spec)
    accelerator, output_dir, resume = start_run(
        config, WEIGHTS_FILE, gradient_accumulation_steps=config.gradient_accumulation_steps
    )
    built.model.to(accelerator.device)
    if accelerator.is_main_process:
        _announce(config, data, built.spec)
    optimizer = _optimizer(config, built.model)
    sched = _schedule(
        config, len(tensors.x_train), accelerator.process_index, accelerator.num_processes
    )
    lr_scheduler = make_lr_scheduler(config, optimizer, sched.max_steps)
    prepared, optimizer = accelerator.prepare(built.model, optimizer)
    run = _Run(
        config,
        accelerator,
        built.model,
        prepared,
        built.spec,
        tensors,
        sched,
        optimizer,
        lr_scheduler,
        Progress(),
        output_dir,
        {k: getattr(config, k) for k in RESUME_KEYS},
        resume,
    )
    return run, data, built.weights


def train_classifier(config: ClassifierTrainConfig) -> ClassifierTrainResult:
    """Train a view classifier; write the best model, checkpoints, config, log and card.

    Raises:
        UserInputError: bad settings or inputs, naming the flag or file.
    """
    from tqdm.auto import tqdm

    run, data, weights = _prepare_run(config)
    acc, progress = run.accelerator, run.progress
    global_step = resume_run(
        run.resume,
        run.resume_state,
        lambda f: _load_trained(f, run.model, progress),
        run.optimizer,
        run.lr_scheduler,
    )
    run_config = _run_config(
        config, run.spec, weights, data, acc.num_processes, run.sched.max_steps
    )
    write_run_config(acc, run_config, run.output_dir, "fusynth-classifier", config.report_to)

    micro = global_step * config.gradient_accumulation_steps
    seen, started, running = 0, time.perf_counter(), 0.0
    bar = tqdm(
        total=run.sched.max_steps,
        initial=global_step,
        desc="train_classifier",
        disable=not acc.is_local_main_process,
    )
    run.prepared.train()
    while global_step < run.sched.max_steps:
        loss, size = run.micro_step(micro)
        running += loss / config.gradient_accumulation_steps
        micro += 1
        seen += size * acc.num_processes
        if not acc.sync_gradients:
            continue
        run.lr_scheduler.step()
        global_step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{running:.4f}")
        run.after_step(global_step, running)
        running = 0.0
    bar.close()
    elapsed = time.perf_counter() - started
    acc.wait_for_everyone()
    if acc.is_main_process:
        final = progress.best_state if progress.best_state is not None else _cpu_state(run.model)
        _save_final(run.output_dir, final, run.spec, run_config, global_step, progress)
    acc.wait_for_everyone()
    acc.end_training()
    return ClassifierTrainResult(
        run.output_dir,
        global_step,
        seen / elapsed if elapsed > 0 else 0.0,
        progress.losses,
        progress.validation,
        progress.best_step,
        progress.best_value,
    )


def _run_config(config, spec, weights, data, processes, max_steps) -> dict[str, Any]:
    from fusynth import __version__

    resolved = dataclasses.asdict(config)
    weights_sha256 = None
    if weights is not None and Path(weights).is_file():
        from fusynth.io import file_sha256

        weights_sha256 = file_sha256(weights)
    resolved.update(
        learning_rate=config.lr,
        max_train_steps=max_steps,
        num_processes=processes,
        random_init=weights is None,
        smoke_model=config.train is None,
        weights_sha256=weights_sha256,
        mean=spec.mean,
        std=spec.std,
        fusynth_version=__version__,
        **data.source,
    )
    return resolved


def _save_final(
    output_dir: Path,
    state: dict[str, torch.Tensor],
    spec: ClassifierSpec,
    run_config: dict[str, Any],
    step: int,
    progress: Progress,
) -> None:
    """Write the weights, their spec, the run's config, the log and the card; each file
    replaces its old version only when all are written."""
    from safetensors.torch import save_file

    log_data = {
        "global_step": step,
        "losses": progress.losses,
        "validation": progress.validation,
        "best": {
            "metric": run_config["best_metric"],
            "step": progress.best_step,
            "value": progress.best_value,
        },
    }

    def write(tmp: Path) -> None:
        save_file(state, str(tmp / WEIGHTS_FILE))
        (tmp / CONFIG_FILE).write_text(spec.to_json() + "\n")
        from fusynth.loop import write_config_json

        write_config_json(tmp, run_config)
        (tmp / "train_log.json").write_text(json.dumps(log_data, indent=1) + "\n")
        (tmp / "README.md").write_text(render_classifier_card(run_config, step, progress))

    replace_outputs(output_dir, write)


# ----------------------------------------------------------------------------- card


_HYPERPARAMETERS = (
    "optimizer",
    "learning_rate",
    "momentum",
    "weight_decay",
    "lr_scheduler",
    "lr_warmup_steps",
    "train_batch_size",
    "gradient_accumulation_steps",
    "num_train_epochs",
    "max_train_steps",
    "augment",
    "mixed_precision",
    "best_metric",
    "seed",
)


def render_classifier_card(config: dict[str, Any], step: int, progress: Progress) -> str:
    """The README.md of a ``train_classifier`` output folder."""
    from fusynth.cards import render_card

    smoke = bool(config["smoke_model"])
    card_data = {
        "library_name": "pytorch",
        "license": "apache-2.0",
        "tags": [
            "fusynth",
            "image-classification",
            "ultrasound",
            "fetal-ultrasound",
            "medical-imaging",
        ],
        "pipeline_tag": "image-classification",
    }
    best = None
    if progress.best_value is not None:
        best = f"{progress.best_value:.4f} at step {progress.best_step}"
    fields = {
        "title": f"fusynth fetal view classifier ({config['backbone']})"
        + (" (smoke model)" if smoke else ""),
        "backbone": config["backbone"],
        "classes": ", ".join(config["classes"]),
        "resolution": config["resolution"],
        "smoke_model": smoke,
        "weights": config["weights"],
        "weights_sha256": config["weights_sha256"],
        "train": config["train"],
        "num_real": config["num_real"],
        "num_real_subjects": config["num_real_subjects"],
        "real_per_view": config["real_per_view"],
        "seed": config["seed"],
        "synthetic": config["synthetic"],
        "num_synthetic": config["num_synthetic"],
        "synthetic_per_view": config["synthetic_per_view"],
        "validation": config["validation"],
        "num_validation": config["num_validation"],
        "best_metric": config["best_metric"],
        "best": best,
        "hyperparameters": {k: config.get(k) for k in _HYPERPARAMETERS},
        "global_step": step,
        "num_processes": config["num_processes"],
    }
    return render_card("classifier", card_data, fields)


# ----------------------------------------------------------------------------- loading


@dataclass
class LoadedClassifier:
    """A trained classifier (eval mode, CPU) with its spec."""

    model: nn.Module
    spec: ClassifierSpec

    def predict_proba(self, images, batch_size: int = 32, device=None) -> np.ndarray:
        """Class probabilities ``[N, C]`` of grayscale images (see ``spec.classes``)."""
        return predict_proba(self.model, self.spec, images, batch_size, device)


def load_classifier(path: str | os.PathLike, flag: str = "--model") -> LoadedClassifier:
    """Load a ``recipes/train_classifier.py`` output folder.

    Raises:
        UserInputError: not such a folder, or weights that do not fit its config.
    """
    folder = Path(path)
    config = folder / CONFIG_FILE
    if not config.is_file():
        what = "no such folder" if not folder.exists() else f"no {CONFIG_FILE}"
        raise UserInputError(
            f"{flag}: {folder} is not a classifier folder ({what}); train one with "
            "recipes/train_classifier.py"
        )
    spec = ClassifierSpec.from_file(config, flag)
    model = rebuild_classifier(spec, flag)
    state = read_state_dict(folder / WEIGHTS_FILE, flag)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise UserInputError(
            f"{flag}: {folder / WEIGHTS_FILE} does not fit {spec.backbone} with "
            f"{len(spec.classes)} classes: {first}"
        ) from exc
    return LoadedClassifier(model.eval(), spec)
