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
import logging
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

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
    write_config_json,
    write_run_config,
    write_train_log,
)
from fusynth.diffusion.base import (
    BaseGeometry,
    BaseRef,
    SDComponents,
    base_geometry,
    load_components,
    resolve_base,
)
from fusynth.diffusion.config import TrainConfig
from fusynth.diffusion.dataset import (
    TrainingSet,
    cache_latents,
    encode_captions,
    load_training_set,
    text_embeddings,
    tokenize,
)

log = logging.getLogger(__name__)


# Settings that must match between a checkpoint and the run resuming from it.
RESUME_KEYS = (
    "seed",
    "train_batch_size",
    "gradient_accumulation_steps",
    "resolution",
    "random_flip",
    "prediction_type",
    "clip_skip",
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

    def check_base(self, geometry: BaseGeometry) -> None:
        """Refuse a base this method cannot train on, before any data is read.

        Raises:
            UserInputError: naming the flag.
        """

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

    def validation_captions(self, data: TrainingSet) -> list[str]:
        """One caption per validation image, in :meth:`validation_images`' order: the
        prompt and seed it was drawn with (see :func:`run_validation_pipeline`)."""
        c = self.config
        n = c.num_validation_images
        return [
            f'seed {c.seed + 1000 * p + i}\n"{prompt}"'
            for p, prompt in enumerate(c.validation_prompt)
            for i in range(n)
        ]

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
    # Configs only: an unsupported base (SDXL, ...) is refused before any data is read.
    geometry = base_geometry(ref)
    method.check_base(geometry)
    resolution = config.resolution or geometry.resolution
    if resolution % geometry.vae_scale_factor:
        raise UserInputError(
            f"--resolution: must be divisible by {geometry.vae_scale_factor} (the base's VAE "
            f"downsamples {geometry.vae_scale_factor}x), got {resolution}"
        )
    accelerator, output_dir, resume = start_run(
        config,
        method.weights_file,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
    )
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(
        accelerator.mixed_precision, torch.float32
    )
    if config.allow_tf32 and torch.cuda.is_available():
        # diffusers' --allow_tf32: faster fp32 matmuls on Ampere+ at ~fp16 mantissa
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    comps = load_components(ref)
    if config.prediction_type is not None:
        # as diffusers' examples do: the training target follows the noise scheduler
        comps.noise_scheduler.register_to_config(prediction_type=config.prediction_type)
    layers = comps.text_encoder.config.num_hidden_layers
    if config.clip_skip is not None and config.clip_skip >= layers:
        raise UserInputError(
            f"--clip_skip: the base's text encoder has {layers} layers; {config.clip_skip} "
            "would skip them all"
        )
    data = load_training_set(
        config, resolution, packing=method.packing, need_masks=method.needs_masks
    )
    for module in (comps.vae, comps.text_encoder, comps.unet):
        module.requires_grad_(False)
    comps.vae.to(accelerator.device, dtype=torch.float32)
    comps.text_encoder.to(accelerator.device, dtype=torch.float32)

    # The frozen encoders run once here, never inside the loop; latents go to disk.
    cache_dir = tempfile.TemporaryDirectory(prefix="fusynth-latents-")
    latents = cache_latents(
        comps.vae,
        data,
        flip=config.random_flip,
        folder=cache_dir.name,
        num_workers=config.dataloader_num_workers,
    )
    token_ids = tokenize(comps.tokenizer, data.captions)
    if accelerator.is_main_process:
        log.info(
            "training on %d images (%d subjects; views %s) from %s at %d px",
            len(data),
            data.n_subjects,
            ", ".join(data.views),
            data.source,
            resolution,
        )
    torch.manual_seed(config.seed)  # new weights (LoRA A, ...) come from the global RNG
    modules = method.attach(comps, data, weight_dtype)
    embeddings = None
    if "text_encoder" not in modules:
        embeddings = encode_captions(comps.text_encoder, token_ids, config.clip_skip)
    comps.unet.to(accelerator.device, dtype=weight_dtype)
    comps.text_encoder.to(dtype=weight_dtype)
    cast_training_params(list(modules.values()), dtype=torch.float32)  # trained weights stay fp32
    if config.gradient_checkpointing:
        for name, module in modules.items():
            if name == "text_encoder":
                module.gradient_checkpointing_enable()
            else:
                module.enable_gradient_checkpointing()
    optimizer = make_optimizer(config, method.param_groups(modules))

    processes, process = accelerator.num_processes, accelerator.process_index
    n = len(data)
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
    losses: list[float] = []  # the whole run's: a resume restores the checkpoint's
    global_step = resume_run(
        resume,
        resume_state,
        lambda f: method.load_weights(f, trained),
        optimizer,
        lr_scheduler,
        {"losses": losses},
    )
    run_config = _run_config(config, method, ref, resolution, data, processes)
    run_config["prediction_type"] = comps.noise_scheduler.config.prediction_type
    write_run_config(
        accelerator, run_config, output_dir, f"fusynth-{method.name}", config.report_to
    )

    scaling = comps.vae.config.scaling_factor
    shift = getattr(comps.vae.config, "shift_factor", None) or 0.0
    sched = comps.noise_scheduler
    prediction_type = sched.config.prediction_type
    unet = prepared.get("unet", comps.unet)
    device = accelerator.device
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
                cond = text_embeddings(
                    prepared["text_encoder"],
                    token_ids[data.caption_index[idx]].to(device),
                    config.clip_skip,
                )
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
            {"losses": losses},
        )
        if config.validation_prompt and (
            _validation_due(config, global_step, steps_per_epoch) or global_step == max_steps
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
    elapsed = finish_run(
        accelerator,
        bar,
        started,
        lambda: _save_final(output_dir, method, trained, run_config, ref, global_step, losses),
        output_dir,
    )
    del latents
    data.masks = None
    cache_dir.cleanup()
    return TrainResult(
        final_dir(output_dir), global_step, seen / elapsed if elapsed > 0 else 0.0, losses, ref
    )


def _validation_due(config: TrainConfig, global_step: int, steps_per_epoch: int) -> bool:
    """Every ``--validation_epochs`` epochs when given (diffusers' LoRA example), else
    every ``--validation_steps`` optimizer steps."""
    if config.validation_epochs is not None:
        if global_step % steps_per_epoch:
            return False
        return (global_step // steps_per_epoch) % config.validation_epochs == 0
    return global_step % config.validation_steps == 0


def make_optimizer(config: TrainConfig, groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    """AdamW, or bitsandbytes' AdamW8bit with ``--use_8bit_adam`` (FU-LoRA's optimizer:
    8-bit moment states, a quarter of AdamW's optimizer memory)."""
    cls: Any = torch.optim.AdamW
    if config.use_8bit_adam:
        from fusynth.diffusion.config import check_8bit_adam

        check_8bit_adam()
        import bitsandbytes as bnb

        cls = bnb.optim.AdamW8bit
    return cls(
        groups,
        betas=(config.adam_beta1, config.adam_beta2),
        weight_decay=config.adam_weight_decay,
        eps=config.adam_epsilon,
    )


def _validate(accelerator, method, comps, modules, data, resolution, output_dir, step) -> None:
    if accelerator.is_main_process:
        training = {k: m.training for k, m in modules.items()}
        for m in modules.values():
            m.eval()
        images = method.validation_images(comps, modules, data, resolution)
        for k, m in modules.items():
            m.train(training[k])
        write_validation_grid(
            output_dir / "validation" / f"step-{step:06d}.png",
            images,
            method.validation_captions(data),
            method.grid_columns,
            f"{method.name} validation samples at step {step}",
        )
        if method.config.report_to == "tensorboard":
            tracker = accelerator.get_tracker("tensorboard", unwrap=True)
            tracker.add_images("validation", np.stack(images), step, dataformats="NHWC")
    accelerator.wait_for_everyone()


def write_validation_grid(
    path: Path, images: list[np.ndarray], captions: list[str], cols: int, title: str
) -> list[str]:
    """The validation grid of one step: each image captioned with its prompt and seed.

    Returns:
        The figure's labels (see :func:`fusynth.core.gallery.image_grid`).
    """
    from fusynth.core.gallery import Tile, image_grid

    if len(captions) != len(images):  # a method whose captions do not line up: number them
        captions = [f"image {i + 1}" for i in range(len(images))]
    return image_grid(
        path,
        [Tile(im, cap) for im, cap in zip(images, captions, strict=True)],
        title,
        cols=cols,
        footnote="drawn with the weights being trained; fixed seeds, so steps compare",
    )


def run_validation_pipeline(
    pipe: Any, prompts: list[str], n: int, seed: int, resolution: int, steps: int, **kwargs: Any
) -> list[np.ndarray]:
    """``n`` images per prompt from ``pipe`` with fixed per-image seeds, as uint8 RGB."""
    from diffusers import DPMSolverMultistepScheduler

    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    clip_skip = kwargs.pop("clip_skip", None)
    out = []
    for p, prompt in enumerate(prompts):
        gens = [torch.Generator().manual_seed(seed + 1000 * p + i) for i in range(n)]
        text: dict[str, Any] = {"prompt": [prompt] * n}
        if clip_skip:
            from fusynth.diffusion.dataset import prompt_embeds_for

            text = {"prompt_embeds": prompt_embeds_for(pipe, [prompt] * n, clip_skip)}
        images = pipe(
            **text,
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
        num_train_images=len(data),
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
        write_train_log(tmp, step, {"losses": losses})
        (tmp / "README.md").write_text(method.render_card(run_config, step, sample))

    replace_outputs(output_dir, write)
