"""The diffusion training loop shared by every adapter type (LoRA, ControlNet).

One readable function, :func:`train`, runs it; what differs between adapter types
(which modules train, what conditions the UNet, how weights are saved) is a
:class:`TrainMethod`. Recipes in ``recipes/`` only parse flags. What the loop does
differently from a plain diffusers script:

* The VAE (and the text encoder, unless trained) are frozen, so every training image is
  encoded once, flipped and not, and every caption once; steps reuse the cached latent
  distributions and embeddings.
* All randomness of a step (noise, timesteps, flips, latent sampling, dropout) is drawn
  from a generator seeded by ``(seed, micro-step, process)``, and the data order of an
  epoch by ``(seed, epoch)``. Resuming from ``checkpoint-k`` therefore reproduces an
  uninterrupted run exactly.
* Checkpoints hold only the trained weights, the optimizer and the LR scheduler state,
  never the frozen base.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fusynth.data.images import save_png, tile_images
from fusynth.data.schema import VIEWS
from fusynth.diffusion.base import BaseRef, SDComponents, load_components, resolve_base
from fusynth.errors import UserInputError, suggest
from fusynth.loop import LR_SCHEDULERS as LOOP_LR_SCHEDULERS
from fusynth.loop import (
    MIXED_PRECISION,
    check_run_dir,
    check_run_settings,
    checkpoint_if_due,
    epoch_order,
    make_lr_scheduler,
    positive,
    replace_outputs,
    resume_run,
    start_run,
    step_generator,
    write_config_json,
    write_run_config,
)

log = logging.getLogger(__name__)

#: fusynth.loop's schedulers plus two more of diffusers'.
LR_SCHEDULERS = (*LOOP_LR_SCHEDULERS, "cosine_with_restarts", "polynomial")
DEFAULT_CAPTION = "an ultrasound image of the fetal {view}"


@dataclass
class TrainConfig:
    """Settings every training recipe shares; field names are the flags (diffusers' names).

    ``__post_init__`` checks each field and names its flag on error.
    """

    pretrained_model_name_or_path: str | None = None
    original_config: str | None = None  # configs of a single-file checkpoint
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
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1e-2
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    snr_gamma: float | None = None
    noise_offset: float = 0.0
    mixed_precision: str | None = None  # None: accelerate launch's, else "no"
    gradient_checkpointing: bool = False
    checkpointing_steps: int = 500
    checkpoints_total_limit: int | None = None
    resume_from_checkpoint: str | None = None
    validation_prompt: list[str] = field(default_factory=list)
    validation_steps: int = 100
    num_validation_images: int = 4
    validation_inference_steps: int = 20
    seed: int = 0
    output_dir: str = "fusynth-run"
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
        if self.resolution is not None:
            positive(self.resolution, "--resolution")
            if self.resolution % 8:
                raise UserInputError(
                    f"--resolution: must be divisible by 8 (the VAE downsamples 8x), got {self.resolution}"
                )
        check_run_settings(
            self,
            positive_fields=(
                "gradient_accumulation_steps",
                "validation_steps",
                "num_validation_images",
                "validation_inference_steps",
                "learning_rate",
            ),
            non_negative_fields=("noise_offset",),
            lr_schedulers=LR_SCHEDULERS,
        )
        if self.snr_gamma is not None:
            positive(self.snr_gamma, "--snr_gamma")


# ----------------------------------------------------------------------------- data


PACKING_CHANNELS = ("image", "mask")


def parse_packing(spec: str | None) -> tuple[str, str, str] | None:
    """``"image,image,mask"`` -> the source of each RGB channel (None: plain images)."""
    if spec is None:
        return None
    parts = tuple(p.strip() for p in str(spec).split(","))
    if (
        len(parts) != 3
        or any(p not in PACKING_CHANNELS for p in parts)
        or "mask" not in parts
        or "image" not in parts
    ):
        raise UserInputError(
            f"--packing: {spec!r} must name the source of each of the 3 channels, with at least one "
            "image and one mask, e.g. image,image,mask"
        )
    return parts  # type: ignore[return-value]


@dataclass
class TrainingSet:
    """Training images as model inputs, with their views and captions."""

    pixels: torch.Tensor  # [N, 3, R, R] float32 in [-1, 1]
    masks: np.ndarray | None  # [N, R, R] uint8 0/1 filled masks, when the method needs them
    caption_index: torch.Tensor  # [N] int64 index into ``captions``
    captions: list[str]  # distinct captions
    captions_by_view: dict[str, str | list[str]]
    views: list[str]
    n_subjects: int
    source: str


def caption_for(
    view: str, provenance: dict[str, Any], template: str, table: dict | None, where: str
) -> str:
    """A sample's caption: from ``--captions`` (``view: caption``) or the template, whose
    ``{view}`` and ``{trimester}`` come from the sample."""
    if table is not None:
        if view not in table:
            raise UserInputError(
                f"{where}: no caption for view {view!r} (found: {', '.join(map(str, table))})"
            )
        template = str(table[view])
    fields = {"view": view}
    if "{trimester}" in template:
        trimester = provenance.get("trimester")
        if trimester is None:
            raise UserInputError(
                f"--caption_template: uses {{trimester}} but a {view!r} sample has no trimester in its provenance"
            )
        fields["trimester"] = _TRIMESTER_WORDS.get(int(trimester), f"trimester {trimester}")
    return template.format(**fields)


_TRIMESTER_WORDS = {1: "first trimester", 2: "second trimester", 3: "third trimester"}


def load_training_set(
    config: TrainConfig, resolution: int, packing: str | None = None, need_masks: bool = False
) -> TrainingSet:
    """Load and preprocess the training images (pad to square unless ``center_crop``).

    Args:
        config: the run's settings (data, views, captions, crop).
        resolution: side of the square model input.
        packing: pack the image and its filled mask into the RGB channels, e.g.
            ``image,image,mask`` (the mask resized with nearest neighbour, 0 or 255).
        need_masks: every sample must have a filled mask (returned in ``masks``).

    Raises:
        UserInputError: missing data, views, masks, or masks that are outlines.
    """
    from PIL import Image

    from fusynth.config import load_yaml_mapping
    from fusynth.data.images import decode_image
    from fusynth.data.masks import is_outline
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
    packing = parse_packing(packing)
    need_masks = need_masks or packing is not None
    flag = "--packing" if packing is not None else "--train_data"
    masks = np.zeros((len(ds), resolution, resolution), dtype=np.uint8) if need_masks else None
    table = load_yaml_mapping(config.captions, "--captions") if config.captions else None
    pixels = np.empty((len(ds), 3, resolution, resolution), dtype=np.float32)
    caption_index = np.empty(len(ds), dtype=np.int64)
    captions: list[str] = []
    by_view: dict[str, list[str]] = {}
    for i, row in enumerate(ds):
        view = VIEWS[row["view"]]
        prov = json.loads(row["provenance"] or "{}")
        img = square_resize(decode_image(row["image"]), resolution, center_crop=config.center_crop)
        channels = {"image": img}
        if masks is not None:
            if row["mask"] is None:
                raise UserInputError(
                    f"{flag}: {spec} sample {i} ({row['subject_id']}) has no mask; this training "
                    "needs a dataset with masks (e.g. prepared from HC18)"
                )
            raw = decode_image(row["mask"])
            if is_outline(raw):
                raise UserInputError(
                    f"{flag}: {spec} sample {i} ({row['subject_id']}) has an outline, not a filled "
                    "mask; prepare the data with --mask-kind outline so masks are filled"
                )
            mask = square_resize(
                raw, resolution, config.center_crop, resample=Image.Resampling.NEAREST
            )
            masks[i] = mask > 0
            channels["mask"] = masks[i] * 255
        stack = [channels[c] for c in packing] if packing else [img] * 3
        pixels[i] = np.stack(stack).astype(np.float32) / 127.5 - 1.0
        caption = caption_for(
            view, prov, config.caption_template, table, config.captions or "--captions"
        )
        if caption not in captions:
            captions.append(caption)
        caption_index[i] = captions.index(caption)
        if caption not in by_view.setdefault(view, []):
            by_view[view].append(caption)
    return TrainingSet(
        pixels=torch.from_numpy(pixels),
        masks=masks,
        caption_index=torch.from_numpy(caption_index),
        captions=captions,
        captions_by_view={v: (c[0] if len(c) == 1 else c) for v, c in by_view.items()},
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


# Settings that must match between a checkpoint and the run resuming from it.
RESUME_KEYS = (
    "seed",
    "train_batch_size",
    "gradient_accumulation_steps",
    "resolution",
    "random_flip",
)


# ----------------------------------------------------------------------------- methods


class TrainMethod:
    """What one adapter type adds to the shared loop. Subclasses fill in the hooks.

    Attributes:
        name: short name (progress bar, tracker, card).
        weights_file: path, relative to the output folder, whose presence marks a
            finished run.
        resume_keys: config fields (beyond :data:`RESUME_KEYS`) a resume must match.
        packing: channel packing of the training pictures (None: plain images).
        needs_masks: the method trains on filled masks.
    """

    name = "adapter"
    weights_file = ""
    resume_keys: tuple[str, ...] = ()
    packing: str | None = None
    needs_masks = False

    def __init__(self, config: TrainConfig) -> None:
        self.config = config

    def attach(
        self, comps: SDComponents, data: TrainingSet, weight_dtype: torch.dtype
    ) -> dict[str, Any]:
        """Create or wrap the modules to train; returns ``{"unet"|"text_encoder"|..: module}``.

        A ``text_encoder`` entry means the text encoder trains (captions are not cached).
        """
        raise NotImplementedError

    def param_groups(self, modules: dict[str, Any]) -> list[dict[str, Any]]:
        """Optimizer parameter groups."""
        raise NotImplementedError

    def unet_kwargs(
        self,
        modules: dict[str, Any],
        noisy: torch.Tensor,
        timesteps: torch.Tensor,
        cond: torch.Tensor,
        idx: torch.Tensor,
        variant: torch.Tensor,
    ) -> dict[str, Any]:
        """Extra UNet inputs for a batch (e.g. ControlNet residuals)."""
        return {}

    def save_weights(self, folder: Path, modules: dict[str, Any]) -> None:
        """Write the trained weights (checkpoints and the final output)."""
        raise NotImplementedError

    def load_weights(self, folder: Path, modules: dict[str, Any]) -> None:
        """Load weights written by :meth:`save_weights`."""
        raise NotImplementedError

    def save_extras(self, folder: Path, modules: dict[str, Any], ref: BaseRef) -> None:
        """Extra final files (e.g. peft adapter folders)."""

    def validation_images(
        self, comps: SDComponents, modules: dict[str, Any], data: TrainingSet, resolution: int
    ) -> list[np.ndarray]:
        """Images generated with the models being trained (no second copy)."""
        raise NotImplementedError

    def resolved(self) -> dict[str, Any]:
        """Entries the resolved ``config.json`` adds or overrides."""
        return {}

    @property
    def grid_columns(self) -> int:
        """Columns of the validation grid."""
        return self.config.num_validation_images

    def render_card(self, config: dict[str, Any], global_step: int, sample: str | None) -> str:
        """The output folder's README.md."""
        raise NotImplementedError


@dataclass
class TrainResult:
    """What a run wrote and measured."""

    output_dir: Path
    global_step: int
    images_per_second: float
    losses: list[float]
    base: BaseRef


def _resume_state(config: TrainConfig, method: TrainMethod, resolution: int) -> dict[str, Any]:
    """The settings a checkpoint must have been trained with to be resumed."""
    state = {k: getattr(config, k) for k in (*RESUME_KEYS, *method.resume_keys)}
    state["resolution"] = resolution
    return state


# ----------------------------------------------------------------------------- the loop


def train(config: TrainConfig, method: TrainMethod) -> TrainResult:
    """Train ``method``'s modules on ``config``'s data; write weights, checkpoints,
    validation grids, the resolved config and a card to ``config.output_dir``.

    Returns:
        Where it wrote, the final step, throughput and the loss per optimizer step.

    Raises:
        UserInputError: bad settings or inputs, naming the flag or file.
    """
    from diffusers.training_utils import cast_training_params, compute_snr
    from tqdm.auto import tqdm

    check_run_dir(config, method.weights_file)  # before loading anything
    ref = resolve_base(
        config.pretrained_model_name_or_path,
        config.revision,
        config.variant,
        original_config=config.original_config,
    )
    resolution = config.resolution or (64 if ref.smoke else 512)
    accelerator, output_dir, resume = start_run(
        config,
        method.weights_file,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
    )
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(
        accelerator.mixed_precision, torch.float32
    )
    comps = load_components(ref)
    data = load_training_set(
        config, resolution, packing=method.packing, need_masks=method.needs_masks
    )
    for module in (comps.vae, comps.text_encoder, comps.unet):
        module.requires_grad_(False)
    comps.vae.to(accelerator.device, dtype=torch.float32)
    comps.text_encoder.to(accelerator.device, dtype=torch.float32)

    # The frozen encoders run once here, never inside the loop.
    latents = encode_images(comps.vae, data.pixels, flip=config.random_flip)
    token_ids = tokenize(comps.tokenizer, data.captions)
    if accelerator.is_main_process:
        log.info(
            "training on %d images (%d subjects; views %s) from %s at %d px",
            len(data.pixels),
            data.n_subjects,
            ", ".join(data.views),
            data.source,
            resolution,
        )
    torch.manual_seed(config.seed)  # new weights (LoRA A, ...) come from the global RNG
    modules = method.attach(comps, data, weight_dtype)
    embeddings = None
    if "text_encoder" not in modules:
        embeddings = encode_captions(comps.text_encoder, token_ids)
    comps.unet.to(accelerator.device, dtype=weight_dtype)
    comps.text_encoder.to(dtype=weight_dtype)
    cast_training_params(list(modules.values()), dtype=torch.float32)  # trained weights stay fp32
    if config.gradient_checkpointing:
        for name, module in modules.items():
            if name == "text_encoder":
                module.gradient_checkpointing_enable()
            else:
                module.enable_gradient_checkpointing()
    optimizer = torch.optim.AdamW(
        method.param_groups(modules),
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
    lr_scheduler = make_lr_scheduler(config, optimizer, max_steps)
    names = list(modules)
    *prepared_list, optimizer = accelerator.prepare(*modules.values(), optimizer)
    prepared = dict(zip(names, prepared_list, strict=True))
    # The same objects, unwrapped from DDP: what checkpoints, validation and saving see.
    trained = {k: accelerator.unwrap_model(v) for k, v in prepared.items()}

    resume_state = _resume_state(config, method, resolution)  # what a checkpoint must match
    global_step = resume_run(
        resume, resume_state, lambda f: method.load_weights(f, trained), optimizer, lr_scheduler
    )
    run_config = _run_config(config, method, ref, resolution, data, processes)
    write_run_config(
        accelerator, run_config, output_dir, f"fusynth-{method.name}", config.report_to
    )

    scaling = comps.vae.config.scaling_factor
    shift = getattr(comps.vae.config, "shift_factor", None) or 0.0
    sched = comps.noise_scheduler
    prediction_type = sched.config.prediction_type
    unet = prepared.get("unet", comps.unet)
    device = accelerator.device
    losses: list[float] = []
    micro = global_step * config.gradient_accumulation_steps
    seen, started = 0, time.perf_counter()
    bar = tqdm(
        total=max_steps,
        initial=global_step,
        desc=f"train_{method.name}",
        disable=not accelerator.is_local_main_process,
    )
    for module in prepared.values():
        module.train()
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
        with accelerator.accumulate(*prepared.values()):
            if "text_encoder" in prepared:
                cond = prepared["text_encoder"](token_ids[data.caption_index[idx]].to(device))[0]
            else:
                cond = embeddings[data.caption_index[idx]].to(device, weight_dtype)
            noisy_in, t_in = noisy.to(device, weight_dtype), timesteps.to(device)
            with accelerator.autocast():
                extra = method.unet_kwargs(prepared, noisy_in, t_in, cond, idx, variant)
                pred = unet(noisy_in, t_in, cond, **extra).sample
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
        if not accelerator.sync_gradients:
            continue
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
        checkpoint_if_due(
            accelerator,
            config,
            output_dir,
            global_step,
            max_steps,
            resume_state,
            lambda tmp: method.save_weights(tmp, trained),
            optimizer,
            lr_scheduler,
        )
        if config.validation_prompt and (
            global_step % config.validation_steps == 0 or global_step == max_steps
        ):
            _validate(
                accelerator,
                method,
                comps,
                trained,
                data,
                resolution,
                output_dir,
                global_step,
            )
    bar.close()
    elapsed = time.perf_counter() - started
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        _save_final(output_dir, method, trained, run_config, ref, global_step, losses)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return TrainResult(output_dir, global_step, seen / elapsed if elapsed > 0 else 0.0, losses, ref)


def _validate(accelerator, method, comps, modules, data, resolution, output_dir, step) -> None:
    if accelerator.is_main_process:
        training = {k: m.training for k, m in modules.items()}
        for m in modules.values():
            m.eval()
        images = method.validation_images(comps, modules, data, resolution)
        for k, m in modules.items():
            m.train(training[k])
        grid = tile_images(images, cols=method.grid_columns)
        save_png(output_dir / "validation" / f"step-{step:06d}.png", grid)
        if method.config.report_to == "tensorboard":
            tracker = accelerator.get_tracker("tensorboard", unwrap=True)
            tracker.add_images("validation", np.stack(images), step, dataformats="NHWC")
    accelerator.wait_for_everyone()


def run_validation_pipeline(
    pipe: Any, prompts: list[str], n: int, seed: int, resolution: int, steps: int, **kwargs: Any
) -> list[np.ndarray]:
    """``n`` images per prompt from ``pipe`` with fixed per-image seeds, as uint8 RGB."""
    from diffusers import DPMSolverMultistepScheduler

    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
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
            **kwargs,
        ).images
        out.extend(list((images * 255).round().astype(np.uint8)))
    return out


def _run_config(
    config, method, ref: BaseRef, resolution: int, data: TrainingSet, processes: int
) -> dict:
    from fusynth import __version__

    resolved = dataclasses.asdict(config)
    resolved.update(
        method=method.name,
        resolution=resolution,
        pretrained_model_name_or_path=ref.source,
        smoke_base=ref.smoke,
        views=data.views,
        captions_by_view=data.captions_by_view,
        train_data=data.source,
        num_train_images=len(data.pixels),
        num_train_subjects=data.n_subjects,
        num_processes=processes,
        fusynth_version=__version__,
        **method.resolved(),
    )
    return resolved


def _save_final(output_dir, method, modules, run_config, ref, step, losses) -> None:
    """Write the weights, extras, resolved config, loss log and card; each replaces its
    old version only when everything is complete."""
    grids = (
        sorted((output_dir / "validation").glob("step-*.png"))
        if (output_dir / "validation").is_dir()
        else []
    )
    sample = grids[-1].relative_to(output_dir).as_posix() if grids else None

    def write(tmp: Path) -> None:
        method.save_weights(tmp, modules)
        method.save_extras(tmp, modules, ref)
        write_config_json(tmp, run_config)
        (tmp / "train_log.json").write_text(
            json.dumps({"global_step": step, "losses": losses}, indent=1)
        )
        (tmp / "README.md").write_text(method.render_card(run_config, step, sample))

    replace_outputs(output_dir, write)


# ----------------------------------------------------------------------------- flags


def add_common_flags(
    p: Any, default_lr: str = "1e-4", default_output: str = "fusynth-lora"
) -> None:
    """The flags every training recipe shares (argparse with SUPPRESS defaults; the
    defaults themselves live in :class:`TrainConfig`)."""
    from fusynth.recipes import add_run_flags

    p.add_argument("--config", help="YAML file of flag values; flags given here override it")
    g = p.add_argument_group("base model")
    g.add_argument(
        "--pretrained_model_name_or_path",
        help="hub id, local diffusers folder or single-file .safetensors/.ckpt "
        "(default: tiny smoke base)",
    )
    g.add_argument(
        "--original_config",
        help="configs of a single-file base: LDM .yaml or diffusers config folder "
        "(default: <file>.yaml beside it, else fusynth's SD 1.x/2.x configs)",
    )
    g.add_argument("--revision", help="hub revision")
    g.add_argument("--variant", help="weight variant, e.g. fp16")
    g = p.add_argument_group("data")
    g.add_argument("--train_data", help="prepared dataset DIR[:split] (default: the phantom)")
    g.add_argument("--split", help="split to train on (train)")
    g.add_argument("--views", help="comma-separated views to train on (default: all present)")
    g.add_argument(
        "--caption_template",
        help="caption with {view} and optionally {trimester} (an ultrasound image of the fetal {view})",
    )
    g.add_argument("--captions", help="YAML file of view: caption, instead of the template")
    g.add_argument(
        "--resolution",
        type=int,
        help="training resolution, divisible by 8 (512; 64 for the smoke base)",
    )
    g.add_argument("--center_crop", action="store_true", help="crop to square instead of padding")
    g.add_argument("--random_flip", action="store_true", help="random horizontal flips")
    g = p.add_argument_group("optimisation")
    g.add_argument("--train_batch_size", type=int, help="per-process batch size (4)")
    g.add_argument(
        "--gradient_accumulation_steps", type=int, help="micro-batches per optimizer step (1)"
    )
    g.add_argument("--max_train_steps", type=int, help="optimizer steps (overrides epochs)")
    g.add_argument(
        "--num_train_epochs", type=int, help="epochs when --max_train_steps is not given (10)"
    )
    g.add_argument("--learning_rate", type=float, help=f"learning rate ({default_lr})")
    g.add_argument("--lr_scheduler", choices=LR_SCHEDULERS, help="(constant)")
    g.add_argument("--lr_warmup_steps", type=int, help="(0)")
    g.add_argument("--adam_beta1", type=float, help="(0.9)")
    g.add_argument("--adam_beta2", type=float, help="(0.999)")
    g.add_argument("--adam_weight_decay", type=float, help="(1e-2)")
    g.add_argument("--adam_epsilon", type=float, help="(1e-8)")
    g.add_argument("--max_grad_norm", type=float, help="gradient clipping (1.0)")
    g.add_argument("--snr_gamma", type=float, help="min-SNR loss weighting gamma (off)")
    g.add_argument("--noise_offset", type=float, help="(0.0)")
    g.add_argument(
        "--mixed_precision",
        choices=MIXED_PRECISION,
        help="(accelerate launch's --mixed_precision or config, else no)",
    )
    g.add_argument("--gradient_checkpointing", action="store_true")
    g.add_argument("--seed", type=int, help="(0)")
    g = p.add_argument_group("checkpoints, validation, output")
    add_run_flags(g, default_output)
    g.add_argument("--validation_prompt", action="append", help="repeatable")
    g.add_argument("--validation_steps", type=int, help="(100)")
    g.add_argument("--num_validation_images", type=int, help="per prompt (4)")
    g.add_argument(
        "--validation_inference_steps", type=int, help="sampler steps for validation (20)"
    )
    p.add_argument("--debug", action="store_true", help="tracebacks on errors")
