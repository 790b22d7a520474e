"""LoRA fine-tuning of a Stable-Diffusion-family model on prepared ultrasound data.

The loop is one readable function, :func:`train_lora`; ``recipes/train_lora.py`` only
parses flags. What it does differently from a plain diffusers script:

* The VAE (and the text encoder, unless trained) are frozen, so every training image is
  encoded once, flipped and not, and every caption once; steps reuse the cached latent
  distributions and embeddings.
* All randomness of a step (noise, timesteps, flips, latent sampling, dropout) is drawn
  from a generator seeded by ``(seed, micro-step, process)``, and the data order of an
  epoch by ``(seed, epoch)``. Resuming from ``checkpoint-k`` therefore reproduces an
  uninterrupted run exactly.
* Checkpoints hold only the LoRA weights (a loadable adapter), the optimizer and the
  LR scheduler state, never the frozen base.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fusynth.data.images import save_png, tile_images
from fusynth.data.schema import VIEWS
from fusynth.diffusion.base import BaseRef, SDComponents, load_components, resolve_base
from fusynth.distributed import make_accelerator
from fusynth.errors import UserInputError, suggest

log = logging.getLogger(__name__)

LR_SCHEDULERS = (
    "constant",
    "constant_with_warmup",
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
)
MIXED_PRECISION = ("no", "fp16", "bf16")
REPORT_TO = ("none", "tensorboard")
UNET_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]
DEFAULT_CAPTION = "an ultrasound image of the fetal {view}"
LORA_WEIGHTS = "pytorch_lora_weights.safetensors"
STATE_FILE = "training_state.json"


def _choice(value: str, choices: tuple[str, ...], flag: str) -> str:
    if value not in choices:
        raise UserInputError(
            f"{flag}: {value!r} is not one of {', '.join(choices)}{suggest(value, choices)}"
        )
    return value


def _positive(value: Any, flag: str, allow_zero: bool = False) -> None:
    ok = value >= 0 if allow_zero else value > 0
    if not ok:
        raise UserInputError(f"{flag}: must be {'>= 0' if allow_zero else 'positive'}, got {value}")


@dataclass
class LoraTrainConfig:
    """Every setting of a LoRA run; field names are the recipe's flags (diffusers' names).

    ``__post_init__`` checks each field and names its flag on error.
    """

    pretrained_model_name_or_path: str | None = None
    revision: str | None = None
    variant: str | None = None
    train_data: str | None = None
    split: str = "train"
    views: list[str] | None = None
    caption_template: str = DEFAULT_CAPTION
    captions: str | None = None
    resolution: int | None = None
    center_crop: bool = False
    random_flip: bool = False
    train_batch_size: int = 4
    gradient_accumulation_steps: int = 1
    max_train_steps: int | None = None
    num_train_epochs: int = 10
    learning_rate: float = 1e-4
    text_encoder_lr: float | None = None
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1e-2
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    rank: int = 4
    lora_alpha: float | None = None
    lora_dropout: float = 0.0
    train_text_encoder: bool = False
    snr_gamma: float | None = None
    noise_offset: float = 0.0
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    checkpointing_steps: int = 500
    checkpoints_total_limit: int | None = None
    resume_from_checkpoint: str | None = None
    validation_prompt: list[str] = field(default_factory=list)
    validation_steps: int = 100
    num_validation_images: int = 4
    validation_inference_steps: int = 20
    seed: int = 0
    output_dir: str = "fusynth-lora"
    overwrite_output_dir: bool = False
    report_to: str = "none"

    def __post_init__(self) -> None:
        if isinstance(self.views, str):
            self.views = [v for v in self.views.split(",") if v.strip()]
        if self.views is not None:
            self.views = [v.strip() for v in self.views]
            for v in self.views:
                if v not in VIEWS:
                    raise UserInputError(
                        f"--views: unknown view {v!r}{suggest(v, VIEWS)}; choose from {', '.join(VIEWS)}"
                    )
        if isinstance(self.validation_prompt, str):
            self.validation_prompt = [self.validation_prompt]
        if "{view}" not in self.caption_template and self.captions is None:
            raise UserInputError(
                f"--caption_template: {self.caption_template!r} has no {{view}} placeholder"
            )
        if self.resolution is not None:
            _positive(self.resolution, "--resolution")
            if self.resolution % 8:
                raise UserInputError(
                    f"--resolution: must be divisible by 8 (the VAE downsamples 8x), got {self.resolution}"
                )
        for name in (
            "train_batch_size",
            "gradient_accumulation_steps",
            "num_train_epochs",
            "rank",
            "checkpointing_steps",
            "validation_steps",
            "num_validation_images",
            "validation_inference_steps",
        ):
            _positive(getattr(self, name), f"--{name}")
        if self.max_train_steps is not None:
            _positive(self.max_train_steps, "--max_train_steps")
        if self.checkpoints_total_limit is not None:
            _positive(self.checkpoints_total_limit, "--checkpoints_total_limit")
        _positive(self.learning_rate, "--learning_rate")
        if self.text_encoder_lr is not None:
            _positive(self.text_encoder_lr, "--text_encoder_lr")
        if self.lora_alpha is not None:
            _positive(self.lora_alpha, "--lora_alpha")
        if not 0 <= self.lora_dropout < 1:
            raise UserInputError(f"--lora_dropout: must be in [0, 1), got {self.lora_dropout}")
        if self.snr_gamma is not None:
            _positive(self.snr_gamma, "--snr_gamma")
        _positive(self.noise_offset, "--noise_offset", allow_zero=True)
        _positive(self.lr_warmup_steps, "--lr_warmup_steps", allow_zero=True)
        _choice(self.lr_scheduler, LR_SCHEDULERS, "--lr_scheduler")
        _choice(self.mixed_precision, MIXED_PRECISION, "--mixed_precision")
        _choice(self.report_to, REPORT_TO, "--report_to")

    @property
    def alpha(self) -> float:
        """LoRA alpha (defaults to the rank: scale 1)."""
        return float(self.lora_alpha if self.lora_alpha is not None else self.rank)


# ----------------------------------------------------------------------------- data


@dataclass
class TrainingSet:
    """Training images as model inputs, with their views and captions."""

    pixels: torch.Tensor  # [N, 3, R, R] float32 in [-1, 1]
    view_index: torch.Tensor  # [N] int64 index into ``captions``
    captions: list[str]  # one per selected view
    views: list[str]
    n_subjects: int
    source: str


def load_captions(views: list[str], template: str, captions_file: str | None) -> list[str]:
    """One caption per view, from a YAML file (``view: caption``) or the template."""
    if captions_file is None:
        return [template.format(view=v) for v in views]
    from fusynth.config import load_yaml_mapping

    table = load_yaml_mapping(captions_file, "--captions")
    out = []
    for v in views:
        if v not in table:
            raise UserInputError(
                f"{captions_file}: no caption for view {v!r} (found: {', '.join(map(str, table))})"
            )
        out.append(str(table[v]))
    return out


def load_training_set(config: LoraTrainConfig, resolution: int) -> TrainingSet:
    """Load and preprocess the training images (pad to square unless ``center_crop``)."""
    from fusynth.data.images import decode_image
    from fusynth.data.schema import load_split, parse_data_spec
    from fusynth.data.transforms import square_resize

    if config.train_data is None:
        from fusynth.data.phantom_cohort import default_dataset

        spec = f"{default_dataset()}:{config.split}"
        log.warning("no --train_data: training on the built-in phantom (smoke data)")
    else:
        path, split = parse_data_spec(config.train_data)
        spec = f"{path}:{split or config.split}"
    ds = load_split(spec)
    present = sorted({VIEWS[v] for v in ds["view"]}, key=VIEWS.index)
    views = config.views or present
    for v in views:
        if v not in present:
            raise UserInputError(
                f"--views: no {v!r} samples in {spec} (views present: {', '.join(present)})"
            )
    keep = [i for i, v in enumerate(ds["view"]) if VIEWS[v] in views]
    if not keep:
        raise UserInputError(f"--train_data: {spec} has no samples")
    ds = ds.select(keep)
    captions = load_captions(views, config.caption_template, config.captions)
    pixels = np.empty((len(ds), 3, resolution, resolution), dtype=np.float32)
    view_index = np.empty(len(ds), dtype=np.int64)
    for i, row in enumerate(ds):
        img = square_resize(decode_image(row["image"]), resolution, center_crop=config.center_crop)
        pixels[i] = (img.astype(np.float32) / 127.5 - 1.0)[None]
        view_index[i] = views.index(VIEWS[row["view"]])
    return TrainingSet(
        pixels=torch.from_numpy(pixels),
        view_index=torch.from_numpy(view_index),
        captions=captions,
        views=views,
        n_subjects=len(set(ds["subject_id"])),
        source=spec,
    )


@dataclass
class LatentCache:
    """Latent distributions of every training image (and its mirror image)."""

    mean: torch.Tensor  # [N, F, C, h, w]; F = 2 with random_flip, else 1
    std: torch.Tensor


@torch.no_grad()
def encode_images(vae: Any, pixels: torch.Tensor, flip: bool, batch: int = 8) -> LatentCache:
    """Run the frozen VAE encoder once per image (and once per mirrored image)."""
    means, stds = [], []
    dtype, device = vae.dtype, vae.device
    variants = [pixels, torch.flip(pixels, dims=[-1])] if flip else [pixels]
    for variant in variants:
        m, s = [], []
        for start in range(0, len(variant), batch):
            dist = vae.encode(variant[start : start + batch].to(device, dtype)).latent_dist
            m.append(dist.mean.float().cpu())
            s.append(dist.std.float().cpu())
        means.append(torch.cat(m))
        stds.append(torch.cat(s))
    return LatentCache(mean=torch.stack(means, dim=1), std=torch.stack(stds, dim=1))


def tokenize(tokenizer: Any, captions: list[str]) -> torch.Tensor:
    """``[N, 77]`` token ids, padded to the tokenizer's maximum length."""
    return tokenizer(
        captions,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids


@torch.no_grad()
def encode_captions(text_encoder: Any, ids: torch.Tensor) -> torch.Tensor:
    """Run the frozen text encoder once per caption: ``[V, 77, D]``."""
    return text_encoder(ids.to(text_encoder.device))[0].float().cpu()


# ----------------------------------------------------------------------------- randomness


def step_generator(seed: int, micro_step: int, process: int) -> torch.Generator:
    """The generator for one micro-batch: a pure function of its coordinates."""
    state = np.random.SeedSequence([seed, micro_step, process]).generate_state(2)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def epoch_order(n: int, seed: int, epoch: int, process: int, processes: int) -> np.ndarray:
    """This process's sample order for one epoch (same length on every process)."""
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    per_process = max(n // processes, 1)
    return perm[process::processes][:per_process] if n >= processes else perm[:1]


# ----------------------------------------------------------------------------- LoRA io


def lora_state_dicts(unet: Any, text_encoder: Any | None) -> tuple[dict, dict | None]:
    """Diffusers-format LoRA tensors of the UNet (and text encoder), fp32, on CPU."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    def grab(model: Any) -> dict:
        sd = convert_state_dict_to_diffusers(get_peft_model_state_dict(model))
        return {k: v.detach().float().cpu().contiguous() for k, v in sd.items()}

    return grab(unet), grab(text_encoder) if text_encoder is not None else None


def save_lora(folder: Path, unet: Any, text_encoder: Any | None, config: LoraTrainConfig) -> Path:
    """Write ``pytorch_lora_weights.safetensors`` with rank/alpha metadata."""
    from diffusers import StableDiffusionPipeline

    unet_sd, te_sd = lora_state_dicts(unet, text_encoder)
    StableDiffusionPipeline.save_lora_weights(
        str(folder),
        unet_lora_layers=unet_sd,
        text_encoder_lora_layers=te_sd,
        safe_serialization=True,
        unet_lora_adapter_metadata=unet.peft_config["default"].to_dict(),
        text_encoder_lora_adapter_metadata=(
            text_encoder.peft_config["default"].to_dict() if text_encoder is not None else None
        ),
    )
    return folder / LORA_WEIGHTS


def save_peft_adapter(folder: Path, model: Any, base_name: str) -> Path:
    """Write a peft adapter folder (``adapter_config.json``, ``adapter_model.safetensors``)
    that ``peft.PeftModel.from_pretrained(base_model, folder)`` loads."""
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    sd = get_peft_model_state_dict(model)
    # PeftModel keeps the wrapped model under base_model.model.
    tensors = {
        f"base_model.model.{k}": v.detach().float().cpu().contiguous() for k, v in sd.items()
    }
    save_file(tensors, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    cfg = model.peft_config["default"].to_dict()
    cfg["base_model_name_or_path"] = base_name
    for key, value in list(cfg.items()):
        if isinstance(value, set):
            cfg[key] = sorted(value)
    (folder / "adapter_config.json").write_text(
        json.dumps(cfg, indent=2, sort_keys=True, default=str)
    )
    return folder


def load_lora_into(folder: Path, unet: Any, text_encoder: Any | None) -> None:
    """Load a checkpoint's LoRA weights back into models that carry the adapter."""
    from diffusers.utils import convert_unet_state_dict_to_peft
    from peft.utils import set_peft_model_state_dict
    from safetensors.torch import load_file

    sd = load_file(str(folder / LORA_WEIGHTS))
    unet_sd = {k[len("unet.") :]: v for k, v in sd.items() if k.startswith("unet.")}
    result = set_peft_model_state_dict(
        unet, convert_unet_state_dict_to_peft(unet_sd), adapter_name="default"
    )
    if getattr(result, "unexpected_keys", None):
        raise UserInputError(
            f"{folder}: LoRA weights do not match the model ({result.unexpected_keys[0]})"
        )
    if text_encoder is not None:
        from diffusers.utils import convert_state_dict_to_peft

        te_sd = {
            k[len("text_encoder.") :]: v for k, v in sd.items() if k.startswith("text_encoder.")
        }
        set_peft_model_state_dict(
            text_encoder, convert_state_dict_to_peft(te_sd), adapter_name="default"
        )


# ----------------------------------------------------------------------------- checkpoints


def list_checkpoints(output_dir: Path) -> list[tuple[int, Path]]:
    """``(step, folder)`` of complete ``checkpoint-N`` folders, oldest first."""
    out = []
    if output_dir.is_dir():
        for p in output_dir.iterdir():
            m = re.fullmatch(r"checkpoint-(\d+)", p.name)
            if m and (p / STATE_FILE).is_file():
                out.append((int(m.group(1)), p))
    return sorted(out)


def find_resume_checkpoint(spec: str, output_dir: Path) -> Path:
    """Resolve ``--resume_from_checkpoint latest|PATH``."""
    if spec == "latest":
        found = list_checkpoints(output_dir)
        if not found:
            raise UserInputError(
                f"--resume_from_checkpoint latest: no checkpoint-N folder in {output_dir}"
            )
        return found[-1][1]
    path = Path(spec)
    if not path.is_absolute() and not path.exists():
        path = output_dir / spec
    if not (path / STATE_FILE).is_file():
        raise UserInputError(
            f"--resume_from_checkpoint: {spec} is not a checkpoint folder ({STATE_FILE} missing)"
        )
    return path


# Settings that must match between a checkpoint and the run resuming from it.
_RESUME_KEYS = (
    "rank",
    "lora_alpha",
    "train_text_encoder",
    "seed",
    "train_batch_size",
    "gradient_accumulation_steps",
    "resolution",
    "random_flip",
)


@dataclass
class _Trainables:
    """What a checkpoint saves and restores (models unwrapped from DDP)."""

    unet: Any
    text_encoder: Any | None
    optimizer: Any
    scheduler: Any


def _save_checkpoint(
    folder: Path, step: int, t: _Trainables, config: LoraTrainConfig, resolution: int
) -> None:
    output_dir = folder.parent
    if config.checkpoints_total_limit is not None:
        existing = list_checkpoints(output_dir)
        for _, old in existing[: max(len(existing) - config.checkpoints_total_limit + 1, 0)]:
            shutil.rmtree(old, ignore_errors=True)
    tmp = output_dir / f".{folder.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_lora(tmp, t.unet, t.text_encoder, config)
    torch.save(t.optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(t.scheduler.state_dict(), tmp / "scheduler.pt")
    state = {"global_step": step, **{k: getattr(config, k) for k in _RESUME_KEYS}}
    state["resolution"] = resolution
    (tmp / STATE_FILE).write_text(json.dumps(state, indent=2))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)


def _load_checkpoint(folder: Path, t: _Trainables, config: LoraTrainConfig, resolution: int) -> int:
    state = json.loads((folder / STATE_FILE).read_text())
    current = {k: getattr(config, k) for k in _RESUME_KEYS} | {"resolution": resolution}
    for key in _RESUME_KEYS:
        if state.get(key) != current[key]:
            raise UserInputError(
                f"--resume_from_checkpoint: {folder} was trained with --{key} {state.get(key)}, "
                f"this run has {current[key]}"
            )
    load_lora_into(folder, t.unet, t.text_encoder)
    t.optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True))
    t.scheduler.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=True))
    return int(state["global_step"])


# ----------------------------------------------------------------------------- validation


@torch.no_grad()
def validation_images(
    comps: SDComponents,
    unet: Any,
    text_encoder: Any,
    prompts: list[str],
    n: int,
    seed: int,
    resolution: int,
    steps: int,
) -> list[np.ndarray]:
    """Generate ``n`` images per prompt with the models being trained (no second copy)."""
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        vae=comps.vae,
        text_encoder=text_encoder,
        tokenizer=comps.tokenizer,
        unet=unet,
        scheduler=DPMSolverMultistepScheduler.from_config(comps.noise_scheduler.config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    out = []
    for p, prompt in enumerate(prompts):
        gens = [torch.Generator().manual_seed(seed + 1000 * p + i) for i in range(n)]
        images = pipe(
            [prompt] * n,
            num_inference_steps=steps,
            height=resolution,
            width=resolution,
            generator=gens,
            output_type="np",
        ).images
        out.extend(list((images * 255).round().astype(np.uint8)))
    return out


# ----------------------------------------------------------------------------- the loop


@dataclass
class TrainResult:
    """What a run wrote and measured."""

    output_dir: Path
    global_step: int
    images_per_second: float
    losses: list[float]
    base: BaseRef


def _check_output_dir(config: LoraTrainConfig) -> Path:
    out = Path(config.output_dir)
    if out.exists() and not out.is_dir():
        raise UserInputError(f"--output_dir: {out} exists and is not a folder")
    fresh = config.resume_from_checkpoint is None and not config.overwrite_output_dir
    if fresh and out.is_dir() and ((out / LORA_WEIGHTS).exists() or list_checkpoints(out)):
        raise UserInputError(
            f"--output_dir: {out} already holds a run; resume it with "
            "--resume_from_checkpoint latest or pass --overwrite_output_dir"
        )
    return out


def train_lora(config: LoraTrainConfig) -> TrainResult:
    """Train a LoRA adapter and write it, with checkpoints, validation grids and a card.

    Args:
        config: the run's settings.

    Returns:
        Where it wrote, the final step, throughput and the loss per optimizer step.

    Raises:
        UserInputError: bad settings or inputs, naming the flag or file.
    """
    import time

    from accelerate.utils import ProjectConfiguration
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import cast_training_params, compute_snr
    from peft import LoraConfig

    output_dir = _check_output_dir(config)
    if config.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise UserInputError("--mixed_precision fp16 needs a CUDA GPU; use bf16 or no on a CPU")
    ref = resolve_base(config.pretrained_model_name_or_path, config.revision, config.variant)
    resolution = config.resolution or (64 if ref.smoke else 512)
    resume = None
    if config.resume_from_checkpoint is not None:
        resume = find_resume_checkpoint(config.resume_from_checkpoint, output_dir)

    accelerator = make_accelerator(
        mixed_precision=config.mixed_precision,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        log_with=None if config.report_to == "none" else config.report_to,
        project_config=ProjectConfiguration(
            project_dir=str(output_dir), logging_dir=str(output_dir / "logs")
        ),
    )
    if (
        config.overwrite_output_dir
        and resume is None
        and accelerator.is_main_process
        and output_dir.is_dir()
    ):
        shutil.rmtree(output_dir)  # start over: no stale checkpoints to resume from by mistake
    accelerator.wait_for_everyone()
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(
        accelerator.mixed_precision, torch.float32
    )
    comps = load_components(ref)
    data = load_training_set(config, resolution)
    for module in (comps.vae, comps.text_encoder, comps.unet):
        module.requires_grad_(False)
    comps.vae.to(accelerator.device, dtype=torch.float32)
    comps.text_encoder.to(accelerator.device, dtype=torch.float32)
    comps.unet.to(accelerator.device, dtype=weight_dtype)

    # The frozen encoders run once here, never inside the loop.
    latents = encode_images(comps.vae, data.pixels, flip=config.random_flip)
    token_ids = tokenize(comps.tokenizer, data.captions)
    embeddings = (
        None if config.train_text_encoder else encode_captions(comps.text_encoder, token_ids)
    )
    comps.text_encoder.to(dtype=weight_dtype)
    if accelerator.is_main_process:
        log.info(
            "training on %d images (%d subjects; views %s) from %s at %d px",
            len(data.pixels),
            data.n_subjects,
            ", ".join(data.views),
            data.source,
            resolution,
        )

    unet_lora = LoraConfig(
        r=config.rank,
        lora_alpha=config.alpha,
        lora_dropout=config.lora_dropout,
        init_lora_weights="gaussian",
        target_modules=UNET_TARGETS,
    )
    torch.manual_seed(config.seed)  # LoRA A matrices are initialised from the global RNG
    comps.unet.add_adapter(unet_lora)
    text_encoder = None
    if config.train_text_encoder:
        comps.text_encoder.add_adapter(
            LoraConfig(
                r=config.rank,
                lora_alpha=config.alpha,
                lora_dropout=config.lora_dropout,
                init_lora_weights="gaussian",
                target_modules=TEXT_TARGETS,
            )
        )
        text_encoder = comps.text_encoder
    models = [comps.unet] + ([text_encoder] if text_encoder is not None else [])
    cast_training_params(models, dtype=torch.float32)  # LoRA stays fp32 under mixed precision
    if config.gradient_checkpointing:
        comps.unet.enable_gradient_checkpointing()
        if text_encoder is not None:
            text_encoder.gradient_checkpointing_enable()

    groups = [
        {
            "params": [p for p in comps.unet.parameters() if p.requires_grad],
            "lr": config.learning_rate,
        }
    ]
    if text_encoder is not None:
        groups.append(
            {
                "params": [p for p in text_encoder.parameters() if p.requires_grad],
                "lr": config.text_encoder_lr or config.learning_rate,
            }
        )
    optimizer = torch.optim.AdamW(
        groups,
        betas=(config.adam_beta1, config.adam_beta2),
        weight_decay=config.adam_weight_decay,
        eps=config.adam_epsilon,
    )

    processes, process = accelerator.num_processes, accelerator.process_index
    n = len(data.pixels)
    per_process = len(epoch_order(n, config.seed, 0, process, processes))
    batches_per_epoch = math.ceil(per_process / config.train_batch_size)
    steps_per_epoch = math.ceil(batches_per_epoch / config.gradient_accumulation_steps)
    max_steps = config.max_train_steps or config.num_train_epochs * steps_per_epoch
    # Stepped by hand once per optimizer step, so warm-up counts optimizer steps whatever
    # the number of processes.
    lr_scheduler = get_scheduler(
        config.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=config.lr_warmup_steps,
        num_training_steps=max_steps,
    )
    prepared = accelerator.prepare(*models, optimizer)
    unet = prepared[0]
    te_model = prepared[1] if text_encoder is not None else None
    optimizer = prepared[-1]
    # The same objects, unwrapped from DDP: what checkpoints and the final save see.
    trainables = _Trainables(
        unet=accelerator.unwrap_model(unet),
        text_encoder=accelerator.unwrap_model(te_model) if te_model is not None else None,
        optimizer=optimizer,
        scheduler=lr_scheduler,
    )

    global_step = 0
    if resume is not None:
        global_step = _load_checkpoint(resume, trainables, config, resolution)
        log.info("resumed from %s at step %d", resume, global_step)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "config.json").write_text(
            _run_config_json(config, ref, resolution, data, processes)
        )
        if config.report_to != "none":
            accelerator.init_trackers("fusynth-lora", config=_tracker_config(config, resolution))

    scaling = comps.vae.config.scaling_factor
    shift = getattr(comps.vae.config, "shift_factor", None) or 0.0
    sched = comps.noise_scheduler
    prediction_type = sched.config.prediction_type
    losses: list[float] = []
    micro = global_step * config.gradient_accumulation_steps
    seen, started = 0, time.perf_counter()
    from tqdm.auto import tqdm

    bar = tqdm(
        total=max_steps,
        initial=global_step,
        desc="train_lora",
        disable=not accelerator.is_local_main_process,
    )
    unet.train()
    if te_model is not None:
        te_model.train()
    running = 0.0
    while global_step < max_steps:
        epoch, b = divmod(micro, batches_per_epoch)
        order = epoch_order(n, config.seed, epoch, process, processes)
        idx = torch.from_numpy(
            order[b * config.train_batch_size : (b + 1) * config.train_batch_size]
        )
        gen = step_generator(config.seed, micro, process)
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))  # dropout
        bsz = len(idx)
        variant = (
            torch.randint(0, 2, (bsz,), generator=gen)
            if config.random_flip
            else torch.zeros(bsz, dtype=torch.long)
        )
        mean = latents.mean[idx, variant]
        std = latents.std[idx, variant]
        x0 = (mean + std * torch.randn(mean.shape, generator=gen) - shift) * scaling
        noise = torch.randn(x0.shape, generator=gen)
        if config.noise_offset:
            noise = noise + config.noise_offset * torch.randn(
                (bsz, x0.shape[1], 1, 1), generator=gen
            )
        timesteps = torch.randint(0, sched.config.num_train_timesteps, (bsz,), generator=gen)
        noisy = sched.add_noise(x0, noise, timesteps)
        target = noise if prediction_type == "epsilon" else sched.get_velocity(x0, noise, timesteps)
        device = accelerator.device
        with accelerator.accumulate(*[m for m in (unet, te_model) if m is not None]):
            if te_model is not None:
                cond = te_model(token_ids[data.view_index[idx]].to(device))[0]
            else:
                cond = embeddings[data.view_index[idx]].to(device, weight_dtype)
            with accelerator.autocast():
                pred = unet(noisy.to(device, weight_dtype), timesteps.to(device), cond).sample
            target = target.to(device)
            if config.snr_gamma is None:
                loss = F.mse_loss(pred.float(), target.float())
            else:
                snr = compute_snr(sched, timesteps).to(device)
                weight = torch.clamp(snr, max=config.snr_gamma) / (
                    snr if prediction_type == "epsilon" else snr + 1
                )
                per = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
                loss = (per * weight).mean()
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                params = [p for g in optimizer.param_groups for p in g["params"]]
                accelerator.clip_grad_norm_(params, config.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad()
        # Mean over processes, so the logged loss is the whole batch's.
        running += (
            accelerator.reduce(loss.detach(), reduction="mean").item()
            / config.gradient_accumulation_steps
        )
        micro += 1
        seen += bsz * processes
        if accelerator.sync_gradients:
            lr_scheduler.step()
            global_step += 1
            losses.append(running)
            bar.update(1)
            bar.set_postfix(loss=f"{running:.4f}")
            if config.report_to != "none":
                accelerator.log(
                    {"loss": running, "lr": lr_scheduler.get_last_lr()[0]}, step=global_step
                )
            running = 0.0
            if global_step % config.checkpointing_steps == 0 or global_step == max_steps:
                if accelerator.is_main_process:
                    _save_checkpoint(
                        output_dir / f"checkpoint-{global_step}",
                        global_step,
                        trainables,
                        config,
                        resolution,
                    )
                accelerator.wait_for_everyone()
            if config.validation_prompt and (
                global_step % config.validation_steps == 0 or global_step == max_steps
            ):
                _validate(
                    accelerator, comps, unet, te_model, config, resolution, output_dir, global_step
                )
    bar.close()
    elapsed = time.perf_counter() - started
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        _save_final(
            output_dir,
            trainables.unet,
            trainables.text_encoder,
            config,
            ref,
            resolution,
            data,
            global_step,
            losses,
            processes,
        )
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return TrainResult(output_dir, global_step, seen / elapsed if elapsed > 0 else 0.0, losses, ref)


def _validate(accelerator, comps, unet, te_model, config, resolution, output_dir, step) -> None:
    if accelerator.is_main_process:
        raw_unet = accelerator.unwrap_model(unet)
        te = (
            accelerator.unwrap_model(te_model) if te_model is not None else comps.text_encoder
        )  # frozen one
        was_training = raw_unet.training
        raw_unet.eval()
        images = validation_images(
            comps,
            raw_unet,
            te,
            config.validation_prompt,
            config.num_validation_images,
            config.seed,
            resolution,
            config.validation_inference_steps,
        )
        if was_training:
            raw_unet.train()
        grid = tile_images(images, cols=config.num_validation_images)
        save_png(output_dir / "validation" / f"step-{step:06d}.png", grid)
        if config.report_to == "tensorboard":
            tracker = accelerator.get_tracker("tensorboard", unwrap=True)
            tracker.add_images("validation", np.stack(images), step, dataformats="NHWC")
    accelerator.wait_for_everyone()


def _run_config_json(
    config, ref: BaseRef, resolution: int, data: TrainingSet, processes: int
) -> str:
    from fusynth import __version__

    resolved = dataclasses.asdict(config)
    resolved.update(
        resolution=resolution,
        lora_alpha=config.alpha,
        text_encoder_lr=(config.text_encoder_lr or config.learning_rate)
        if config.train_text_encoder
        else None,
        pretrained_model_name_or_path=ref.name_or_path,
        smoke_base=ref.smoke,
        views=data.views,
        captions_by_view=dict(zip(data.views, data.captions, strict=True)),
        train_data=data.source,
        num_train_images=len(data.pixels),
        num_train_subjects=data.n_subjects,
        num_processes=processes,
        fusynth_version=__version__,
    )
    return json.dumps(resolved, indent=2, sort_keys=True, default=str) + "\n"


def _tracker_config(config: LoraTrainConfig, resolution: int) -> dict[str, Any]:
    flat = {}
    for k, v in dataclasses.asdict(config).items():
        flat[k] = v if isinstance(v, int | float | str | bool) else str(v)
    flat["resolution"] = resolution
    return flat


def _save_final(
    output_dir, unet, text_encoder, config, ref, resolution, data, step, losses, processes
) -> None:
    """Write the adapter in both formats, the resolved config and the card; files
    replace their old versions only when complete."""
    from fusynth.diffusion.card import render_lora_card

    tmp = output_dir / ".final.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_lora(tmp, unet, text_encoder, config)
    save_peft_adapter(tmp / "unet_peft", unet, f"{ref.name_or_path}/unet")
    if text_encoder is not None:
        save_peft_adapter(
            tmp / "text_encoder_peft", text_encoder, f"{ref.name_or_path}/text_encoder"
        )
    (tmp / "config.json").write_text(_run_config_json(config, ref, resolution, data, processes))
    (tmp / "train_log.json").write_text(
        json.dumps({"global_step": step, "losses": losses}, indent=1)
    )
    grids = (
        sorted((output_dir / "validation").glob("step-*.png"))
        if (output_dir / "validation").is_dir()
        else []
    )
    sample = grids[-1].relative_to(output_dir).as_posix() if grids else None
    (tmp / "README.md").write_text(
        render_lora_card(json.loads((tmp / "config.json").read_text()), step, sample)
    )
    for item in tmp.iterdir():
        target = output_dir / item.name
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(item, target)
    tmp.rmdir()
