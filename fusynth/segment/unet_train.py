"""Training a U-Net head segmenter: the loop behind ``recipes/train_unet.py``.

It shares everything but the model with SAM fine-tuning: the data (real images chosen
by subject, synthetic pairs mixed in, a patient-disjoint validation set, all through
:func:`fusynth.segment.finetune.choose_training_data`), the loss
(:func:`fusynth.segment.finetune.segmentation_loss`) and the run control of
:mod:`fusynth.core.loop` (seeded order and per-step randomness, so resuming reproduces an
uninterrupted run exactly; ``checkpoint-N`` folders; tensorboard). There is no prompt:
the U-Net sees the whole image.

``--train_parts`` picks the fine-tuning strategy (whole model, encoder, decoder, the
head, the last K encoder stages with the decoder, or the last K decoder blocks); the
log, ``config.json`` and the card give the trainable parameter count and share.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fusynth.core.errors import UserInputError
from fusynth.core.loop import (
    check_run_dir,
    check_run_settings,
    choice,
    final_dir,
    make_lr_scheduler,
    positive,
    replace_outputs,
    resume_run,
    start_run,
    write_config_json,
    write_run_config,
)
from fusynth.segment.card import render_unet_card
from fusynth.segment.finetune import LOSSES, choose_training_data
from fusynth.segment.loop import Schedule, run_steps
from fusynth.segment.metrics import binary_dice
from fusynth.segment.model import segmentation_loss
from fusynth.segment.unet import (
    CONFIG_FILE,
    DEFAULT_ENCODER,
    WEIGHTS_FILE,
    build_unet,
    check_encoder,
    check_resolution,
    load_encoder_weights,
    load_unet,
    parse_train_parts,
    resolution_of,
    save_unet,
    set_train_parts,
    to_batch,
    train_mode,
)

log = logging.getLogger(__name__)

RANDOM_INIT_NOTE = (
    "U-Net ({encoder}) from random init (no --encoder_weights or --checkpoint): "
    "give --encoder_weights FILE (e.g. torchvision's ImageNet {encoder} state dict) to "
    "start the encoder from trained weights"
)


@dataclass
class UnetTrainConfig:
    """Settings of ``recipes/train_unet.py``; field names are the flags."""

    encoder: str | None = None
    encoder_weights: str | None = None
    checkpoint: str | None = None
    train_parts: str = "all"
    resolution: int = 256
    hflip: bool = True
    train: str | None = None
    synthetic: str | None = None
    n_real: int | None = None
    n_synthetic: int | None = None
    synthetic_ratio: float | None = None
    validation: str | None = None
    validation_epochs: int = 1
    loss: str = "dice+bce"
    train_batch_size: int = 4
    gradient_accumulation_steps: int = 1
    num_train_epochs: int = 20
    max_train_steps: int | None = None
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    max_grad_norm: float = 1.0
    mixed_precision: str = "no"
    checkpointing_steps: int = 500
    checkpoints_total_limit: int | None = None
    resume_from_checkpoint: str | None = None
    seed: int = 0
    output_dir: str = "fusynth-unet"
    overwrite_output_dir: bool = False
    report_to: str = "none"

    def __post_init__(self) -> None:
        if self.encoder is not None:
            check_encoder(self.encoder)
        parse_train_parts(self.train_parts)
        check_resolution(self.resolution)
        choice(self.loss, LOSSES, "--loss")
        check_run_settings(
            self,
            positive_fields=("gradient_accumulation_steps", "validation_epochs", "learning_rate"),
            non_negative_fields=("weight_decay",),
        )
        if self.n_real is not None:
            positive(self.n_real, "--n_real")
        if self.n_synthetic is not None:
            positive(self.n_synthetic, "--n_synthetic", allow_zero=True)
        if self.synthetic_ratio is not None:
            positive(self.synthetic_ratio, "--synthetic_ratio", allow_zero=True)
            if self.n_synthetic is not None:
                raise UserInputError("--synthetic_ratio: give it or --n_synthetic, not both")
        if (self.n_synthetic or self.synthetic_ratio) and not self.synthetic:
            raise UserInputError("--n_synthetic/--synthetic_ratio: need --synthetic COHORT")
        if self.encoder_weights and self.checkpoint:
            raise UserInputError(
                "--encoder_weights: a --checkpoint folder already holds the encoder's weights"
            )


@dataclass
class UnetTrainResult:
    """What a run wrote and measured."""

    output_dir: Path
    global_step: int
    images_per_second: float
    losses: list[float]
    validation_dice: list[float]
    params: dict[str, Any]


RESUME_KEYS = (
    "seed",
    "encoder",
    "train_parts",
    "resolution",
    "hflip",
    "train_batch_size",
    "gradient_accumulation_steps",
    "loss",
)


def initial_model(config: UnetTrainConfig) -> tuple[torch.nn.Module, str, dict[str, Any]]:
    """The U-Net to start from and where its weights came from.

    A ``--checkpoint`` U-Net folder gives the whole model (its encoder, unless
    ``--encoder`` names the same one, is refused); else a fixed random init (seed 0, so
    runs with other seeds differ only in data and order), with the encoder's weights from
    ``--encoder_weights`` when given.

    Raises:
        UserInputError: an unreadable folder or file, or weights that do not fit.
    """
    from fusynth.core.io import file_sha256, weights_sha256

    if config.checkpoint:
        model, cfg = load_unet(config.checkpoint, flag="--checkpoint")
        encoder = cfg["encoder_name"]
        if config.encoder is not None and config.encoder != encoder:
            raise UserInputError(
                f"--encoder: {config.encoder} differs from --checkpoint {config.checkpoint}'s "
                f"{encoder}; leave --encoder out to continue from it"
            )
        info = {
            "init": f"U-Net folder {config.checkpoint}",
            "checkpoint_sha256": weights_sha256(config.checkpoint),
            "checkpoint_resolution": resolution_of(cfg),
        }
        return model, encoder, info
    encoder = config.encoder or DEFAULT_ENCODER
    model = build_unet(encoder, seed=0)
    if config.encoder_weights:
        load_encoder_weights(model, encoder, config.encoder_weights)
        info = {
            "init": f"encoder weights from {config.encoder_weights}, decoder random",
            "encoder_weights_sha256": file_sha256(config.encoder_weights),
        }
        return model, encoder, info
    log.warning(RANDOM_INIT_NOTE.format(encoder=encoder))
    return model, encoder, {"init": "random"}


def _save_state(folder: Path, model: torch.nn.Module) -> None:
    # Buffers too: batch-norm running statistics change in the trained parts.
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "unet.safetensors"))


def _load_state(folder: Path, model: torch.nn.Module) -> None:
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(folder / "unet.safetensors")))


def _flip(x: torch.Tensor, y: torch.Tensor, inputs: list[Any], gen: torch.Generator):
    """Mirror each sample left-right with probability 1/2, within its unpadded width,
    so the black padding stays at the right."""
    x, y = x.clone(), y.clone()
    for i, inp in enumerate(inputs):
        if torch.rand((), generator=gen).item() < 0.5:
            w = inp.image.shape[1]
            x[i, :, :, :w] = x[i, :, :, :w].flip(-1)
            y[i, :, :, :w] = y[i, :, :, :w].flip(-1)
    return x, y


@torch.no_grad()
def validation_dice(model: torch.nn.Module, images: torch.Tensor, masks: torch.Tensor) -> float:
    """Mean Dice in the training frame (a training-time signal; the native-resolution
    metrics are ``fusynth evaluate segmentation``)."""
    if not len(images):
        return math.nan
    was = model.training
    model.eval()
    scores = []
    for i in range(len(images)):
        pred = model(images[i : i + 1]).float()[0, 0] > 0
        scores.append(binary_dice(pred, masks[i, 0] > 0.5))
    if was:
        train_mode(model)
    return float(np.mean(scores))


def train_unet(config: UnetTrainConfig) -> UnetTrainResult:
    """Train a U-Net on head masks; write weights, checkpoints, config and card.

    Raises:
        UserInputError: bad settings or inputs, naming the flag or file.
    """
    from accelerate.utils import DistributedDataParallelKwargs

    check_run_dir(config, WEIGHTS_FILE)  # before loading anything
    model, encoder, init = initial_model(config)
    size = config.resolution
    data = choose_training_data(config, size)
    accelerator, output_dir, resume = start_run(
        config,
        WEIGHTS_FILE,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        # EfficientNet keeps a conv head that its encoder never runs.
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )
    device = accelerator.device
    params_info = set_train_parts(model, config.train_parts)
    model.to(device)
    images = to_batch([x.image for x in data.inputs], size)
    masks = torch.from_numpy(np.stack([x.mask for x in data.inputs]))[:, None].float()
    val_images = to_batch([x.image for x in data.validation], size).to(device)
    val_masks = (
        torch.from_numpy(np.stack([x.mask for x in data.validation]))[:, None].float().to(device)
        if data.validation
        else torch.empty(0)
    )
    if accelerator.is_main_process:
        log.info(
            "training a U-Net (%s; %s) on %d real images (%d subjects) + %d synthetic at %d px; "
            "%d validation images; --train_parts %s: %s of %s parameters train (%.1f%%)",
            encoder,
            init["init"],
            data.source["num_real"],
            data.source["num_real_subjects"],
            data.source["num_synthetic"],
            size,
            data.source["num_validation"],
            config.train_parts,
            f"{params_info['trainable_params']:,}",
            f"{params_info['total_params']:,}",
            100 * params_info["trainable_share"],
        )

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    processes = accelerator.num_processes
    schedule = Schedule.of(config, len(data.inputs), accelerator.process_index, processes)
    max_steps = schedule.max_steps
    lr_scheduler = make_lr_scheduler(config, optimizer, max_steps)
    prepared, optimizer = accelerator.prepare(model, optimizer)
    resume_state = {k: getattr(config, k) for k in RESUME_KEYS} | {"encoder": encoder}
    # The whole run's log: a resume restores the checkpoint's, checkpoints carry it.
    train_log: dict[str, list] = {"losses": [], "validation": []}
    global_step = resume_run(
        resume, resume_state, lambda f: _load_state(f, model), optimizer, lr_scheduler, train_log
    )
    run_config = _run_config(config, encoder, init, params_info, data, processes, max_steps)
    write_run_config(accelerator, run_config, output_dir, "fusynth-unet", config.report_to)

    def step_loss(idx: np.ndarray, gen: torch.Generator) -> torch.Tensor:
        sel = torch.from_numpy(idx)
        x, target = images[sel], masks[sel]
        if config.hflip:
            x, target = _flip(x, target, [data.inputs[i] for i in idx], gen)
        # Stochastic layers (EfficientNet's drop-connect) draw from the global generator:
        # seed it from this step's generator so a resumed run draws the same.
        torch.manual_seed(int(torch.randint(0, 2**62, (), generator=gen)))
        with accelerator.autocast():
            logits = prepared(x.to(device))
        return segmentation_loss(logits.float(), target.to(device), config.loss)[0]

    train_mode(model)
    done = run_steps(
        accelerator,
        config,
        desc="train_unet",
        schedule=schedule,
        prepared=prepared,
        params=params,
        optimizer=optimizer,
        lr_scheduler=lr_scheduler,
        global_step=global_step,
        train_log=train_log,
        step_loss=step_loss,
        validate=(lambda: validation_dice(model, val_images, val_masks))
        if data.validation
        else None,
        output_dir=output_dir,
        resume_state=resume_state,
        save_state=lambda tmp: _save_state(tmp, model),
        save_final=lambda step: _save_final(
            output_dir, model, run_config, step, train_log["losses"], train_log["validation"]
        ),
    )
    return UnetTrainResult(
        final_dir(output_dir),
        done.global_step,
        done.seen / done.elapsed if done.elapsed > 0 else 0.0,
        train_log["losses"],
        [v["dice"] for v in train_log["validation"]],
        params_info,
    )


def _run_config(config, encoder, init, params_info, data, processes, max_steps) -> dict[str, Any]:
    from fusynth import __version__

    resolved = dataclasses.asdict(config)
    resolved.update(
        segmenter="unet",
        encoder=encoder,
        smoke_model=init["init"] == "random",
        max_train_steps=max_steps,
        num_processes=processes,
        fusynth_version=__version__,
        **init,
        **params_info,
        **data.source,
    )
    return resolved


def _save_final(output_dir, model, run_config, step, losses, val_history) -> None:
    """Write the U-Net (weights and smp config), the run's config, the loss log and the
    card; each replaces its old version only when all is written."""

    def write(tmp: Path) -> None:
        save_unet(tmp, model, run_config["resolution"])
        write_config_json(tmp, run_config)
        log_data = {"global_step": step, "losses": losses, "validation": val_history}
        (tmp / "train_log.json").write_text(json.dumps(log_data, indent=1))
        (tmp / "README.md").write_text(render_unet_card(run_config, step, val_history, CONFIG_FILE))

    replace_outputs(output_dir, write)
