"""SimCLR on fetal ultrasound: the loop behind ``recipes/train_ssl.py``.

* Every random draw of a step comes from :func:`fusynth.core.loop.step_generator` and the
  data order from :func:`fusynth.core.loop.epoch_order`, so resuming from ``checkpoint-N``
  gives the same weights as an uninterrupted run.
* With several processes, each contrasts its own batch (negatives are not gathered across
  processes).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fusynth.core.errors import UserInputError
from fusynth.core.loop import (
    check_run_dir,
    check_run_settings,
    checkpoint_if_due,
    epoch_order,
    final_dir,
    finish_run,
    make_lr_scheduler,
    replace_outputs,
    resume_run,
    start_run,
    step_generator,
    write_config_json,
    write_run_config,
    write_train_log,
)
from fusynth.data.schema import with_default_split
from fusynth.data.views import ViewSet, load_view_set
from fusynth.embed.ssl import (
    ARCHITECTURE,
    ENCODER_FILE,
    FEATURE_DIM,
    NORMALIZATION,
    PREPROCESSING,
    SSL_CONFIG_FILE,
    normalize_pixels,
    source_tensor,
)
from fusynth.ssl.augment import AUGMENTATION, augment
from fusynth.ssl.card import render_ssl_card
from fusynth.ssl.model import SimClr, build_simclr, nt_xent, positive_top1

log = logging.getLogger(__name__)


@dataclass
class SslConfig:
    """Settings of ``recipes/train_ssl.py``; field names are the flags."""

    train: str | None = None
    extra: str | None = None
    resolution: int = 64
    temperature: float = 0.5
    projection_dim: int = 128
    train_batch_size: int = 32
    num_train_epochs: int = 20
    max_train_steps: int | None = None
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    lr_scheduler: str = "cosine"
    lr_warmup_steps: int = 0
    max_grad_norm: float = 1.0
    mixed_precision: str | None = None  # None: accelerate launch's, else "no"
    seed: int = 0
    checkpointing_steps: int = 500
    checkpoints_total_limit: int | None = None
    resume_from_checkpoint: str | None = None
    output_dir: str = "fusynth-ssl"
    overwrite_output_dir: bool = False
    report_to: str = "none"

    def __post_init__(self) -> None:
        check_run_settings(
            self,
            positive_fields=("temperature", "projection_dim", "learning_rate", "max_grad_norm"),
            non_negative_fields=("weight_decay",),
        )
        if self.resolution < 32:
            raise UserInputError(f"--resolution: at least 32 px, got {self.resolution}")


# ----------------------------------------------------------------------------- data


@dataclass
class SslData:
    """The training images (padded to square, at twice the resolution) and their origin."""

    images: torch.Tensor  # [N, 1, 2R, 2R] uint8
    source: dict[str, Any]


def load_training_images(config: SslConfig) -> SslData:
    """``--train`` (default: the phantom's train split) plus ``--extra`` when given."""
    if config.train is None:
        from fusynth.data.phantom_cohort import default_dataset

        train_spec = f"{default_dataset()}:train"
    else:
        train_spec = with_default_split(config.train, "train")
    sets = [load_view_set(train_spec, "--train")]
    if config.extra:
        sets.append(load_view_set(config.extra, "--extra"))
    images = [im for s in sets for im in s.images]
    if len(images) < 2:
        raise UserInputError(f"--train: SimCLR needs at least 2 images, got {len(images)}")
    source = {
        "train": train_spec,
        "num_train_images": len(sets[0]),
        "num_extra_images": len(sets[1]) if config.extra else 0,
        "num_images": len(images),
        "num_synthetic": sum(sum(s.synthetic) for s in sets),
        "view_counts": _view_counts(sets),
    }
    return SslData(source_tensor(images, 2 * config.resolution), source)


def _view_counts(sets: list[ViewSet]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for s in sets:
        for view, c in s.view_counts.items():
            counts[view] = counts.get(view, 0) + c
    return counts


# ----------------------------------------------------------------------------- the loop


@dataclass
class SslTrainResult:
    """What a run wrote and measured."""

    output_dir: Path
    global_step: int
    images_per_second: float
    losses: list[float]
    top1: list[float]


RESUME_KEYS = ("seed", "resolution", "temperature", "projection_dim", "train_batch_size")


def _save_model(folder: Path, model: SimClr) -> None:
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"))


def _load_model(folder: Path, model: SimClr) -> None:
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(folder / "model.safetensors")))


def _batch_plan(n: int, config: SslConfig, process: int, processes: int) -> tuple[int, int]:
    """``(per-process batch, batches per epoch)``; the last incomplete batch is dropped."""
    per_process = len(epoch_order(n, config.seed, 0, process, processes))
    if per_process < 2:
        raise UserInputError(
            f"--train: {n} images give {per_process} per process; SimCLR needs at least 2"
        )
    batch = min(config.train_batch_size, per_process)
    return batch, per_process // batch


def train_ssl(config: SslConfig) -> SslTrainResult:
    """Train SimCLR; write the encoder, its preprocessing, checkpoints, config and card.

    Raises:
        UserInputError: bad settings or inputs, naming the flag or file.
    """
    from tqdm.auto import tqdm

    check_run_dir(config, ENCODER_FILE)  # before loading anything
    data = load_training_images(config)
    accelerator, output_dir, resume = start_run(config, ENCODER_FILE)
    device = accelerator.device
    model = build_simclr(config.projection_dim, config.seed).to(device)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    processes, process = accelerator.num_processes, accelerator.process_index
    n = len(data.images)
    batch, batches_per_epoch = _batch_plan(n, config, process, processes)
    max_steps = config.max_train_steps or config.num_train_epochs * batches_per_epoch
    lr_scheduler = make_lr_scheduler(config, optimizer, max_steps)
    prepared, optimizer = accelerator.prepare(model, optimizer)
    resume_state = {k: getattr(config, k) for k in RESUME_KEYS}
    # The whole run's log: a resume restores the checkpoint's, checkpoints carry it.
    losses: list[float] = []
    top1: list[float] = []
    train_log = {"losses": losses, "positive_top1": top1}
    global_step = resume_run(
        resume, resume_state, lambda f: _load_model(f, model), optimizer, lr_scheduler, train_log
    )
    run_config = _run_config(config, data, batch, processes, max_steps)
    if accelerator.is_main_process:
        log.info(
            "SimCLR (random-init ResNet-18) on %d images at %d px, batch %d per process, %d steps",
            n,
            config.resolution,
            batch,
            max_steps,
        )
    write_run_config(accelerator, run_config, output_dir, "fusynth-ssl", config.report_to)

    seen, started = 0, time.perf_counter()
    bar = tqdm(
        total=max_steps,
        initial=global_step,
        desc="train_ssl",
        disable=not accelerator.is_local_main_process,
    )
    prepared.train()
    while global_step < max_steps:
        epoch, b = divmod(global_step, batches_per_epoch)
        order = epoch_order(n, config.seed, epoch, process, processes)
        idx = torch.from_numpy(order[b * batch : (b + 1) * batch])
        gen = step_generator(config.seed, global_step, process)
        pixels = data.images[idx].to(device).float() / 255.0
        views = torch.cat(
            [augment(pixels, config.resolution, gen), augment(pixels, config.resolution, gen)]
        )
        with accelerator.autocast():
            z = prepared(normalize_pixels(views))
        loss = nt_xent(z[: len(idx)], z[len(idx) :], config.temperature)
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad()
        lr_scheduler.step()
        global_step += 1
        seen += len(idx) * processes
        value = accelerator.reduce(loss.detach(), reduction="mean").item()
        acc = positive_top1(z[: len(idx)].detach(), z[len(idx) :].detach())
        losses.append(value)
        top1.append(acc)
        bar.update(1)
        bar.set_postfix(loss=f"{value:.4f}")
        if config.report_to != "none":
            accelerator.log(
                {"loss": value, "positive_top1": acc, "lr": lr_scheduler.get_last_lr()[0]},
                step=global_step,
            )
        checkpoint_if_due(
            accelerator,
            config,
            output_dir,
            global_step,
            max_steps,
            resume_state,
            lambda tmp: _save_model(tmp, model),
            optimizer,
            lr_scheduler,
            train_log,
        )
    elapsed = finish_run(
        accelerator,
        bar,
        started,
        lambda: _save_final(output_dir, model, run_config, global_step, losses, top1),
        output_dir,
    )
    return SslTrainResult(
        final_dir(output_dir), global_step, seen / elapsed if elapsed > 0 else 0.0, losses, top1
    )


def _run_config(
    config: SslConfig, data: SslData, batch: int, processes: int, max_steps: int
) -> dict[str, Any]:
    from fusynth import __version__

    resolved = dataclasses.asdict(config)
    resolved.update(
        architecture=ARCHITECTURE,
        random_init=True,
        per_process_batch_size=batch,
        max_train_steps=max_steps,
        num_processes=processes,
        augmentation=AUGMENTATION.as_dict(),
        fusynth_version=__version__,
        **data.source,
    )
    return resolved


def ssl_config(run_config: dict[str, Any]) -> dict[str, Any]:
    """What a user of the encoder needs: architecture, input size and normalisation."""
    return {
        "architecture": ARCHITECTURE,
        "in_channels": 1,
        "feature_dim": FEATURE_DIM,
        "resolution": run_config["resolution"],
        "preprocessing": PREPROCESSING,
        "normalization": NORMALIZATION,
        "projection_dim": run_config["projection_dim"],
        "temperature": run_config["temperature"],
        "fusynth_version": run_config["fusynth_version"],
    }


def _save_final(output_dir, model, run_config, step, losses, top1) -> None:
    """Write the encoder (without the projection head), its config, the run's config,
    the loss log and the card; each replaces its old version only when all is written."""
    from safetensors.torch import save_file

    def write(tmp: Path) -> None:
        state = {k: v.detach().cpu().contiguous() for k, v in model.encoder.state_dict().items()}
        save_file(state, str(tmp / ENCODER_FILE))
        (tmp / SSL_CONFIG_FILE).write_text(json.dumps(ssl_config(run_config), indent=2) + "\n")
        write_config_json(tmp, run_config)
        write_train_log(tmp, step, {"losses": losses, "positive_top1": top1})
        (tmp / "README.md").write_text(render_ssl_card(run_config, step, losses))

    replace_outputs(output_dir, write)
