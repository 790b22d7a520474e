"""SimCLR on fetal ultrasound: the loop behind ``recipes/train_ssl.py``, and its encoder
as an image embedder (``ssl:DIR``).

* The encoder is torchvision's ResNet-18 built from random init (no weights are ever
  downloaded), with a one-channel first convolution; a two-layer MLP projects its 512-d
  features for the NT-Xent loss and is dropped when the encoder is saved.
* Augmentations suit grayscale ultrasound: a moderate random resized crop, a small
  rotation and a horizontal flip (one affine resampling, black outside the frame as in a
  scan), brightness, contrast and gamma jitter, Gaussian blur and speckle-like
  multiplicative noise. No hue or colour jitter: there is no colour.
* Every random draw of a step comes from :func:`fusynth.loop.step_generator` and the data
  order from :func:`fusynth.loop.epoch_order`, so resuming from ``checkpoint-N`` gives the
  same weights as an uninterrupted run.
* With several processes, each contrasts its own batch (negatives are not gathered
  across processes).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fusynth.data.transforms import square_resize
from fusynth.data.views import ViewSet, load_view_set
from fusynth.embed import Embedder
from fusynth.errors import UserInputError
from fusynth.loop import (
    check_run_dir,
    check_run_settings,
    checkpoint_if_due,
    epoch_order,
    make_lr_scheduler,
    replace_outputs,
    resume_run,
    start_run,
    step_generator,
    write_config_json,
    write_run_config,
)

log = logging.getLogger(__name__)

ENCODER_FILE = "encoder.safetensors"
SSL_CONFIG_FILE = "ssl_config.json"
ARCHITECTURE = "resnet18"
FEATURE_DIM = 512
#: Pixel values in [0, 1] are mapped to ``(x - mean) / std`` before the encoder.
NORMALIZATION = {"mean": [0.5], "std": [0.5]}
PREPROCESSING = "grayscale, padded to square with black, bicubic resize to resolution, / 255"


@dataclass(frozen=True)
class Augmentation:
    """The ranges of the SimCLR views (defaults chosen for B-mode ultrasound)."""

    crop_scale: tuple[float, float] = (0.35, 1.0)  # share of the image area kept
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)  # width / height of the crop
    max_rotation_deg: float = 15.0
    flip_p: float = 0.5
    brightness: float = 0.25  # gain in [1 - b, 1 + b]
    contrast: float = 0.25  # contrast factor in [1 - c, 1 + c]
    gamma: tuple[float, float] = (0.7, 1.4)  # log-uniform
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 1.5)  # output pixels
    speckle_p: float = 0.5
    speckle_sigma: tuple[float, float] = (0.05, 0.25)  # sd of the multiplicative noise

    def as_dict(self) -> dict[str, Any]:
        """The ranges, for ``config.json`` and the card."""
        return dataclasses.asdict(self)


AUGMENTATION = Augmentation()


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


# ----------------------------------------------------------------------------- model


def build_encoder() -> nn.Module:
    """ResNet-18 (torchvision, random init) taking one channel, returning 512-d features."""
    from torchvision.models import resnet18

    net = resnet18(weights=None)
    net.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
    net.fc = nn.Identity()
    return net


class SimClr(nn.Module):
    """The encoder and the MLP projection head (512 -> 512 -> ``projection_dim``)."""

    def __init__(self, projection_dim: int) -> None:
        super().__init__()
        self.encoder = build_encoder()
        self.projector = nn.Sequential(
            nn.Linear(FEATURE_DIM, FEATURE_DIM),
            nn.ReLU(inplace=True),
            nn.Linear(FEATURE_DIM, projection_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.encoder(x))


def build_simclr(projection_dim: int, seed: int) -> SimClr:
    """A SimCLR model whose random init depends on ``seed`` only (global RNG untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return SimClr(projection_dim)


# ----------------------------------------------------------------------------- loss


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent (SimCLR's normalised temperature-scaled cross-entropy), mean over 2B anchors.

    Row ``i`` of ``z1`` and row ``i`` of ``z2`` are two views of one image; every other
    row of either is a negative.

    Args:
        z1: ``[B, D]`` projections of the first views.
        z2: ``[B, D]`` projections of the second views.
        temperature: the softmax temperature.

    Returns:
        The scalar loss.
    """
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    n = z1.shape[0]
    sim = (z @ z.T) / temperature
    self_mask = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    sim = sim.masked_fill(self_mask, float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, targets)


@torch.no_grad()
def positive_top1(z1: torch.Tensor, z2: torch.Tensor) -> float:
    """Share of anchors whose most similar other sample is their own second view."""
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    n = z1.shape[0]
    sim = (z @ z.T).fill_diagonal_(-math.inf)
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return float((sim.argmax(dim=1) == targets).float().mean())


# ----------------------------------------------------------------------------- augmentation


def _uniform(gen: torch.Generator, n: int, low: float, high: float) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=gen)


def _affine_params(n: int, gen: torch.Generator, aug: Augmentation) -> torch.Tensor:
    """``[n, 2, 3]`` affine matrices (output -> input, normalised coordinates) for a random
    resized crop, rotated and maybe flipped."""
    area = _uniform(gen, n, *aug.crop_scale)
    log_ratio = _uniform(gen, n, math.log(aug.crop_ratio[0]), math.log(aug.crop_ratio[1]))
    ratio = torch.exp(log_ratio)
    w = torch.sqrt(area * ratio).clamp(max=1.0)  # half-width in normalised units
    h = torch.sqrt(area / ratio).clamp(max=1.0)
    cx = (2 * torch.rand(n, generator=gen) - 1) * (1 - w)
    cy = (2 * torch.rand(n, generator=gen) - 1) * (1 - h)
    angle = _uniform(gen, n, -aug.max_rotation_deg, aug.max_rotation_deg) * math.pi / 180
    flip = torch.where(torch.rand(n, generator=gen) < aug.flip_p, -1.0, 1.0)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack(
        [
            torch.stack([cos * w * flip, -sin * h, cx], dim=1),
            torch.stack([sin * w * flip, cos * h, cy], dim=1),
        ],
        dim=1,
    )
    return theta


def _gaussian_kernels(sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """``[n, 2 * radius + 1]`` normalised 1-D Gaussians; sigma 0 gives the identity."""
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    safe = sigma.clamp(min=1e-6)[:, None]
    k = torch.exp(-(t[None] ** 2) / (2 * safe**2))
    k = torch.where(sigma[:, None] > 0, k, (t[None] == 0).float())
    return k / k.sum(dim=1, keepdim=True)


def _blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur of ``[n, 1, H, W]`` with one sigma per image."""
    n, _, hgt, wid = x.shape
    radius = max(1, math.ceil(3 * float(sigma.max()))) if len(sigma) else 1
    k = _gaussian_kernels(sigma, radius).to(x.device, x.dtype)
    y = x.reshape(1, n, hgt, wid)
    y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode="reflect"), k[:, None, None, :], groups=n)
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="reflect"), k[:, None, :, None], groups=n)
    return y.reshape(n, 1, hgt, wid)


def augment(
    images: torch.Tensor,
    size: int,
    gen: torch.Generator,
    aug: Augmentation = AUGMENTATION,
) -> torch.Tensor:
    """One random view of each image: geometry, then intensity, then blur and speckle.

    All parameters and noise are drawn on the CPU from ``gen`` in a fixed order, so the
    same generator state gives the same views.

    Args:
        images: ``[n, 1, S, S]`` float in [0, 1] (any device).
        size: the output side.
        gen: the step's generator.
        aug: the ranges.

    Returns:
        ``[n, 1, size, size]`` float in [0, 1], on the device of ``images``.
    """
    n, device = images.shape[0], images.device
    theta = _affine_params(n, gen, aug)
    gain = _uniform(gen, n, 1 - aug.brightness, 1 + aug.brightness)
    contrast = _uniform(gen, n, 1 - aug.contrast, 1 + aug.contrast)
    gamma = torch.exp(_uniform(gen, n, math.log(aug.gamma[0]), math.log(aug.gamma[1])))
    blur_on = torch.rand(n, generator=gen) < aug.blur_p
    sigma = torch.where(blur_on, _uniform(gen, n, *aug.blur_sigma), torch.zeros(n))
    speckle_on = torch.rand(n, generator=gen) < aug.speckle_p
    speckle = torch.where(speckle_on, _uniform(gen, n, *aug.speckle_sigma), torch.zeros(n))
    noise = torch.randn(n, 1, size, size, generator=gen)

    def per_image(v: torch.Tensor) -> torch.Tensor:
        return v.to(device)[:, None, None, None]

    grid = F.affine_grid(theta.to(device), [n, 1, size, size], align_corners=False)
    x = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    x = x * per_image(gain)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = ((x - mean) * per_image(contrast) + mean).clamp(0, 1)
    x = x ** per_image(gamma)
    x = _blur(x, sigma)
    x = x * (1 + per_image(speckle) * noise.to(device))
    return x.clamp(0, 1)


def normalize_pixels(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] pixels to the encoder's input range (:data:`NORMALIZATION`)."""
    return (x - NORMALIZATION["mean"][0]) / NORMALIZATION["std"][0]


def source_tensor(images: Sequence[np.ndarray], side: int) -> torch.Tensor:
    """Images padded to square and resized to ``side``: ``[n, 1, side, side]`` uint8."""
    return torch.from_numpy(np.stack([square_resize(im, side) for im in images]))[:, None]


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
        train_spec = config.train
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
    global_step = resume_run(
        resume, resume_state, lambda f: _load_model(f, model), optimizer, lr_scheduler
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

    losses: list[float] = []
    top1: list[float] = []
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
        )
    bar.close()
    elapsed = time.perf_counter() - started
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        _save_final(output_dir, model, run_config, global_step, losses, top1)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return SslTrainResult(
        output_dir, global_step, seen / elapsed if elapsed > 0 else 0.0, losses, top1
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
        log = {"global_step": step, "losses": losses, "positive_top1": top1}
        (tmp / "train_log.json").write_text(json.dumps(log, indent=1))
        (tmp / "README.md").write_text(render_ssl_card(run_config, step, losses))

    replace_outputs(output_dir, write)


_HYPERPARAMETERS = (
    "resolution",
    "temperature",
    "projection_dim",
    "train_batch_size",
    "per_process_batch_size",
    "learning_rate",
    "weight_decay",
    "lr_scheduler",
    "lr_warmup_steps",
    "max_grad_norm",
    "max_train_steps",
    "num_train_epochs",
    "mixed_precision",
    "seed",
)


def render_ssl_card(config: dict[str, Any], step: int, losses: list[float]) -> str:
    """The README.md of a ``train_ssl`` output folder."""
    from fusynth.cards import render_card

    card_data = {
        "library_name": "pytorch",
        "license": "apache-2.0",
        "tags": [
            "fusynth",
            "simclr",
            "self-supervised",
            "image-feature-extraction",
            "ultrasound",
            "fetal-ultrasound",
            "medical-imaging",
        ],
        "pipeline_tag": "image-feature-extraction",
    }
    fields = {
        "title": "fusynth SimCLR ResNet-18 encoder for fetal ultrasound",
        "resolution": config["resolution"],
        "normalization": NORMALIZATION,
        "train": config["train"],
        "extra": config["extra"],
        "num_images": config["num_images"],
        "num_synthetic": config["num_synthetic"],
        "view_counts": config["view_counts"],
        "hyperparameters": {k: config.get(k) for k in _HYPERPARAMETERS},
        "augmentation": config["augmentation"],
        "global_step": step,
        "num_processes": config["num_processes"],
        "final_loss": round(losses[-1], 4) if losses else None,
    }
    return render_card("ssl", card_data, fields)


# ----------------------------------------------------------------------------- loading


def load_ssl_encoder(path: str | os.PathLike, flag: str) -> tuple[nn.Module, dict[str, Any]]:
    """The encoder of a ``train_ssl`` output folder (eval mode, CPU) and its ssl_config.

    Raises:
        UserInputError: not a folder, a file missing, or weights that do not fit (naming
            ``flag`` and the file).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(path)
    if not folder.is_dir():
        raise UserInputError(f"{flag}: {folder} is not a folder")
    for name in (SSL_CONFIG_FILE, ENCODER_FILE):
        if not (folder / name).is_file():
            raise UserInputError(
                f"{flag}: {folder} is not an SSL encoder folder ({name} missing); "
                "train one with recipes/train_ssl.py"
            )
    try:
        cfg = json.loads((folder / SSL_CONFIG_FILE).read_text())
    except json.JSONDecodeError as exc:
        raise UserInputError(f"{flag}: {folder / SSL_CONFIG_FILE} is not valid JSON") from exc
    if not isinstance(cfg, dict) or cfg.get("architecture") != ARCHITECTURE:
        got = cfg.get("architecture") if isinstance(cfg, dict) else None
        raise UserInputError(
            f"{flag}: {folder / SSL_CONFIG_FILE}: architecture {got!r}, expected {ARCHITECTURE!r}"
        )
    if not isinstance(cfg.get("resolution"), int) or cfg["resolution"] < 32:
        raise UserInputError(f"{flag}: {folder / SSL_CONFIG_FILE}: no valid 'resolution'")
    try:
        state = load_file(str(folder / ENCODER_FILE))
    except (SafetensorError, OSError) as exc:
        raise UserInputError(f"{flag}: {folder / ENCODER_FILE} cannot be read ({exc})") from exc
    encoder = build_encoder()
    try:
        encoder.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else str(exc)
        raise UserInputError(
            f"{flag}: {folder / ENCODER_FILE} is not a ResNet-18 encoder ({first})"
        ) from exc
    return encoder.eval(), cfg


def ssl_embedder(path: str | os.PathLike, flag: str, batch_size: int = 64) -> Embedder:
    """The ``ssl:DIR`` embedder: L2-normalised 512-d encoder features.

    Images are preprocessed as in training (padded to square, resized to the encoder's
    resolution) without augmentation.

    Raises:
        UserInputError: ``path`` is not a ``train_ssl`` output (naming the missing file).
    """
    encoder, cfg = load_ssl_encoder(path, flag)
    resolution = cfg["resolution"]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    encoder.to(device)

    @torch.no_grad()
    def fn(images: Sequence[np.ndarray]) -> np.ndarray:
        out = []
        for start in range(0, len(images), batch_size):
            x = source_tensor(images[start : start + batch_size], resolution)
            x = normalize_pixels(x.to(device).float() / 255.0)
            out.append(F.normalize(encoder(x).float(), dim=1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, FEATURE_DIM), np.float32)

    return Embedder(f"ssl:{path}", fn, FEATURE_DIM)
