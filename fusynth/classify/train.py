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
  background stays black) is drawn per batch from :mod:`fusynth.core.loop`'s seeded
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
    predict_proba,
    read_state_dict,
    rebuild_classifier,
)
from fusynth.classify.card import render_classifier_card
from fusynth.classify.config import VALIDATION_BATCH, ClassifierTrainConfig
from fusynth.classify.data import ClassifierData, choose_training_data, model_inputs
from fusynth.core.errors import UserInputError
from fusynth.core.loop import (
    check_run_dir,
    checkpoint_if_due,
    epoch_order,
    final_dir,
    finish_run,
    make_lr_scheduler,
    replace_outputs,
    resume_run,
    start_run,
    step_generator,
    write_run_config,
)
from fusynth.data.transforms import square_batch
from fusynth.data.views import ViewSet

log = logging.getLogger(__name__)


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

    def save_final() -> None:
        final = progress.best_state if progress.best_state is not None else _cpu_state(run.model)
        _save_final(run.output_dir, final, run.spec, run_config, global_step, progress)

    elapsed = finish_run(acc, bar, started, save_final, run.output_dir)
    return ClassifierTrainResult(
        final_dir(run.output_dir),
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
        from fusynth.core.io import file_sha256

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
        from fusynth.core.loop import write_config_json

        write_config_json(tmp, run_config)
        (tmp / "train_log.json").write_text(json.dumps(log_data, indent=1) + "\n")
        (tmp / "README.md").write_text(
            render_classifier_card(run_config, step, progress.best_value, progress.best_step)
        )

    replace_outputs(output_dir, write)


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
