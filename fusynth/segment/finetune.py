"""Fine-tuning segment-anything on head masks, with box prompts.

:func:`finetune_sam` is the loop behind ``recipes/finetune_sam.py``. What it does
beyond a plain loop:

* Images are brought into the encoder's frame as segment-anything does it (longest side
  to the encoder size, pad; masks nearest-neighbour; box from the resized mask).
* While the image encoder is frozen (the default), its embeddings are computed once per
  image and cached on disk under a key of the encoder's weights and the resized image, so
  later epochs and later runs (other seeds, other mixes of the same images) skip it.
* Randomness (box jitter, data order) comes from :mod:`fusynth.core.loop`, so resuming from a
  checkpoint reproduces an uninterrupted run.
* The mask decoder is trained on its single-mask output with Dice + (B)CE, and its IoU
  head on the IoU of that mask (as SAM itself was trained), so every trained parameter
  gets a gradient.
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
import torch.nn.functional as F

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
    write_train_log,
)
from fusynth.core.traps import emit, small_validation
from fusynth.data.schema import with_default_split
from fusynth.segment.cache import EmbeddingCache, default_cache_root
from fusynth.segment.data import (
    SamInput,
    SegSample,
    check_disjoint,
    choose_by_subject,
    choose_synthetic,
    default_validation,
    load_seg_set,
    sam_input,
)
from fusynth.segment.loop import Schedule, run_steps
from fusynth.segment.metrics import binary_dice
from fusynth.segment.model import (
    BoxPromptedSam,
    add_encoder_lora,
    jittered_boxes,
    merge_encoder_lora,
    segmentation_loss,
)
from fusynth.segment.sam import CONFIG_FILE, SAM_CONFIGS, WEIGHTS_FILE, build_sam, load_sam
from fusynth.segment.sam_formats import PREPROCESS, apply_preprocess, medsam_sample, preprocess_of

log = logging.getLogger(__name__)

TRAIN_PARTS = ("decoder", "decoder+prompt", "all")
LOSSES = ("dice+bce", "dice+ce")
SMOKE_NOTE = (
    "using a random-init {size} SAM (no --checkpoint): it exercises fine-tuning offline "
    "and its masks mean nothing until trained; give --checkpoint sam_vit_b_01ec64.pth "
    "(or a MedSAM .pth) for real weights"
)


@dataclass
class SamFinetuneConfig:
    """Settings of ``recipes/finetune_sam.py``; field names are the flags."""

    model_type: str | None = None  # None: read from --checkpoint's weights, else tiny
    checkpoint: str | None = None
    preprocess: str | None = None  # None: the checkpoint's (medsam for MedSAM), else sam
    train: str | None = None
    synthetic: str | None = None
    n_real: int | None = None
    n_synthetic: int | None = None
    synthetic_ratio: float | None = None
    validation: str | None = None
    train_parts: str = "decoder"
    encoder_lora_rank: int = 0
    gradient_checkpointing: bool = False  # of the encoder blocks, when the encoder trains
    validation_epochs: int = 1
    box_jitter: int = 10
    loss: str = "dice+bce"
    train_batch_size: int = 4
    gradient_accumulation_steps: int = 1
    num_train_epochs: int = 20
    max_train_steps: int | None = None
    learning_rate: float | None = None
    weight_decay: float = 0.0
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    max_grad_norm: float = 1.0
    mixed_precision: str | None = None  # None: accelerate launch's, else "no"
    checkpointing_steps: int = 500
    checkpoints_total_limit: int | None = None
    resume_from_checkpoint: str | None = None
    embedding_cache: str | None = None
    no_embedding_cache: bool = False
    seed: int = 0
    output_dir: str = "fusynth-sam"
    overwrite_output_dir: bool = False
    report_to: str = "none"

    def __post_init__(self) -> None:
        if self.model_type is not None and self.model_type not in SAM_CONFIGS:
            choice(self.model_type, tuple(SAM_CONFIGS), "--model_type")
        if self.preprocess is not None:
            choice(self.preprocess, PREPROCESS, "--preprocess")
        choice(self.train_parts, TRAIN_PARTS, "--train_parts")
        choice(self.loss, LOSSES, "--loss")
        check_run_settings(
            self,
            positive_fields=("gradient_accumulation_steps", "validation_epochs"),
            non_negative_fields=("box_jitter", "encoder_lora_rank", "weight_decay"),
        )
        for name in ("n_real", "learning_rate"):
            if getattr(self, name) is not None:
                positive(getattr(self, name), f"--{name}")
        if self.n_synthetic is not None:
            positive(self.n_synthetic, "--n_synthetic", allow_zero=True)
        if self.synthetic_ratio is not None:
            positive(self.synthetic_ratio, "--synthetic_ratio", allow_zero=True)
            if self.n_synthetic is not None:
                raise UserInputError("--synthetic_ratio: give it or --n_synthetic, not both")
        if (self.n_synthetic or self.synthetic_ratio) and not self.synthetic:
            raise UserInputError("--n_synthetic/--synthetic_ratio: need --synthetic COHORT")
        if self.encoder_lora_rank and self.train_parts == "all":
            raise UserInputError(
                "--encoder_lora_rank: LoRA on the encoder and --train_parts all exclude each other"
            )

    @property
    def lr(self) -> float:
        """The learning rate: as given, else 1e-4 from released weights and 1e-3 from a
        random init (a smoke model learns nothing useful at 1e-4 in a short run)."""
        if self.learning_rate is not None:
            return self.learning_rate
        return 1e-4 if self.checkpoint else 1e-3

    @property
    def encoder_frozen(self) -> bool:
        """True when the image encoder's weights do not change (embeddings can be cached)."""
        return self.train_parts != "all" and not self.encoder_lora_rank


# ----------------------------------------------------------------------------- data


@dataclass
class SamTrainingData:
    """The chosen samples in the encoder frame, and where they came from."""

    inputs: list[SamInput]
    samples: list[SegSample]
    validation: list[SamInput]
    source: dict[str, Any]


def choose_training_data(config: SamFinetuneConfig, size: int) -> SamTrainingData:
    """Real (chosen by subject) plus synthetic samples, and a patient-disjoint validation set."""
    if config.train is None:
        from fusynth.data.phantom_cohort import default_dataset

        train_spec = f"{default_dataset()}:train"
    else:
        train_spec = with_default_split(config.train, "train")
    real_set = load_seg_set(train_spec, "--train")
    k = config.n_real if config.n_real is not None else len(real_set.samples)
    real = choose_by_subject(real_set.samples, k, config.seed, "--n_real")
    synthetic: list[SegSample] = []
    if config.synthetic:
        synth_set = load_seg_set(config.synthetic, "--synthetic")
        if config.n_synthetic is not None:
            m = config.n_synthetic
        elif config.synthetic_ratio is not None:
            m = round(config.synthetic_ratio * len(real))
        else:
            m = len(synth_set.samples)
        synthetic = choose_synthetic(synth_set.samples, m, config.seed, "--n_synthetic")
    val_spec = config.validation
    if val_spec is None:
        val_spec = default_validation(train_spec)
    validation: list[SegSample] = []
    if val_spec and val_spec != "none":
        validation = load_seg_set(val_spec, "--validation").samples
        check_disjoint(real, validation, f"--validation {val_spec}")
    samples = real + synthetic
    source = {
        "train": train_spec,
        "synthetic": config.synthetic,
        "validation": val_spec if validation else None,
        "num_real": len(real),
        "num_real_subjects": len({s.subject_id for s in real}),
        "num_synthetic": len(synthetic),
        "num_validation": len(validation),
        "skipped_empty_masks": real_set.skipped_empty,
        "warnings": emit(
            log,
            [
                small_validation(
                    len(validation),
                    val_spec,
                    "its Dice is the one the card reports and runs are compared on",
                )
            ],
        ),
    }
    return SamTrainingData(
        inputs=[sam_input(_frame(s, config, size), size) for s in samples],
        samples=samples,
        validation=[sam_input(_frame(s, config, size), size) for s in validation],
        source=source,
    )


def embedding_cache_root(config: SamFinetuneConfig) -> str | None:
    """Where a run's image embeddings are cached: None when the encoder is trained (its
    embeddings change every step, and a cache of them would never be read again) or
    caching is off, else ``--embedding_cache`` or the default under the fusynth cache."""
    if not config.encoder_frozen or config.no_embedding_cache:
        return None
    return config.embedding_cache or str(default_cache_root())


# ----------------------------------------------------------------------------- model


def trainable_names(config: SamFinetuneConfig) -> tuple[str, ...]:
    """Top-level SAM parts whose weights train."""
    return {
        "decoder": ("mask_decoder",),
        "decoder+prompt": ("mask_decoder", "prompt_encoder"),
        "all": ("mask_decoder", "prompt_encoder", "image_encoder"),
    }[config.train_parts]


# ----------------------------------------------------------------------------- the loop


@dataclass
class SamTrainResult:
    """What a run wrote and measured."""

    output_dir: Path
    global_step: int
    images_per_second: float
    losses: list[float]
    validation_dice: list[float]
    cache_hits: int
    cache_misses: int


RESUME_KEYS = (
    "seed",
    "model_type",
    "train_parts",
    "encoder_lora_rank",
    "train_batch_size",
    "gradient_accumulation_steps",
    "box_jitter",
    "loss",
)


def _frame(sample: Any, config: SamFinetuneConfig, size: int) -> Any:
    """A sample as the model's preprocessing sees it (MedSAM: a stretched square; a U-Net
    config has no preprocessing)."""
    return (
        medsam_sample(sample, size) if getattr(config, "preprocess", None) == "medsam" else sample
    )


def _load_model(config: SamFinetuneConfig) -> tuple[Any, str, dict[str, Any]]:
    if config.checkpoint:
        sam, model_type = load_sam(
            config.checkpoint, config.model_type, flag="--checkpoint", preprocess=config.preprocess
        )
        from fusynth.core.io import weights_sha256

        # A file's own digest; a fusynth SAM folder's model.safetensors (which load_sam
        # requires): the digest evaluation reports give the same weights.
        path = Path(config.checkpoint)
        return sam, model_type, {"checkpoint": str(path), "checkpoint_sha256": weights_sha256(path)}
    model_type = config.model_type or "tiny"
    log.warning(SMOKE_NOTE.format(size=model_type))
    # A fixed init, like released weights: runs with other seeds differ in data and
    # jitter only, and share the embedding cache.
    sam = apply_preprocess(build_sam(model_type, seed=0), config.preprocess or "sam")
    return sam, model_type, {"checkpoint": None}


def _trained_state(sam: Any) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().clone() for n, p in sam.named_parameters() if p.requires_grad}


def _save_trained(folder: Path, sam: Any) -> None:
    from safetensors.torch import save_file

    save_file(
        {k: v.contiguous() for k, v in _trained_state(sam).items()},
        str(folder / "trained.safetensors"),
    )


def _load_trained(folder: Path, sam: Any) -> None:
    from safetensors.torch import load_file

    state = load_file(str(folder / "trained.safetensors"))
    params = dict(sam.named_parameters())
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)


@torch.no_grad()
def validation_dice(
    model: BoxPromptedSam, inputs: list[SamInput], embeddings: torch.Tensor | None, device
) -> float:
    """Mean Dice in the encoder frame with exact boxes (a training-time signal; the
    native-resolution metrics are ``fusynth evaluate segmentation``)."""
    if not inputs:
        return math.nan
    was = model.training
    model.eval()
    scores = []
    for i, x in enumerate(inputs):
        box = torch.from_numpy(x.box[None]).to(device)
        if embeddings is not None:
            low, _ = model(box, embeddings=embeddings[i : i + 1].to(device))
        else:
            low, _ = model(
                box, images=[torch.as_tensor(x.image, device=device).permute(2, 0, 1).float()]
            )
        size = x.mask.shape[0]
        pred = F.interpolate(low, (size, size), mode="bilinear", align_corners=False)[0, 0] > 0
        scores.append(binary_dice(pred, torch.from_numpy(x.mask).to(device) > 0))
    model.train(was)
    return float(np.mean(scores))


def finetune_sam(config: SamFinetuneConfig) -> SamTrainResult:
    """Fine-tune SAM with box prompts; write weights, checkpoints, config and card.

    Raises:
        UserInputError: bad settings or inputs, naming the flag or file.
    """
    from accelerate.utils import DistributedDataParallelKwargs

    check_run_dir(config, WEIGHTS_FILE)  # before loading anything
    sam, model_type, base_info = _load_model(config)
    # resolved: the data follow them, resume compares them, config.json says them
    config.model_type, config.preprocess = model_type, preprocess_of(sam)
    size = sam.image_encoder.img_size
    data = choose_training_data(config, size)
    accelerator, output_dir, resume = start_run(
        config,
        WEIGHTS_FILE,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )
    device = accelerator.device
    sam.to(device)
    sam.requires_grad_(False)
    for part in trainable_names(config):
        getattr(sam, part).requires_grad_(True)
    if config.encoder_lora_rank:
        torch.manual_seed(config.seed)
        add_encoder_lora(sam, config.encoder_lora_rank)  # marks only LoRA weights trainable
        sam.image_encoder.to(device)
    if config.gradient_checkpointing:
        if config.encoder_frozen:
            log.info(
                "--gradient_checkpointing: the encoder is frozen (embeddings cached); no effect"
            )
        else:
            from fusynth.segment.checkpointing import checkpoint_encoder_blocks

            checkpoint_encoder_blocks(sam.image_encoder)

    # Frozen encoder: embeddings once, from the disk cache when there; the main process
    # fills the cache first so the others only read it.
    embeddings = val_embeddings = None
    cache = None
    if config.encoder_frozen:
        cache = EmbeddingCache(embedding_cache_root(config), sam, model_type)
        if accelerator.is_main_process:
            embeddings = cache.embed(sam, [x.image for x in data.inputs])
            val_embeddings = cache.embed(sam, [x.image for x in data.validation])
        accelerator.wait_for_everyone()
        if not accelerator.is_main_process:
            embeddings = cache.embed(sam, [x.image for x in data.inputs], write=False)
            val_embeddings = cache.embed(sam, [x.image for x in data.validation], write=False)
        sam.image_encoder.to("cpu")  # not needed in the loop: free its device memory
        if accelerator.is_main_process:
            log.info(
                "image embeddings: %d read from the cache, %d computed (%s)",
                cache.hits,
                cache.misses,
                cache.folder or "cache off",
            )
    if accelerator.is_main_process:
        log.info(
            "fine-tuning %s SAM (%s) on %d real images (%d subjects) + %d synthetic at %d px; "
            "%d validation images",
            model_type,
            config.train_parts
            + (f" + encoder LoRA r={config.encoder_lora_rank}" if config.encoder_lora_rank else ""),
            data.source["num_real"],
            data.source["num_real_subjects"],
            data.source["num_synthetic"],
            size,
            data.source["num_validation"],
        )

    model = BoxPromptedSam(sam, train_prompt_encoder="prompt_encoder" in trainable_names(config))
    params = [p for p in sam.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    processes = accelerator.num_processes
    schedule = Schedule.of(config, len(data.inputs), accelerator.process_index, processes)
    lr_scheduler = make_lr_scheduler(config, optimizer, schedule.max_steps)
    prepared, optimizer = accelerator.prepare(model, optimizer)
    resume_state = {k: getattr(config, k) for k in RESUME_KEYS}
    # The whole run's log: a resume restores the checkpoint's, checkpoints carry it.
    train_log: dict[str, list] = {"losses": [], "validation": []}
    global_step = resume_run(
        resume, resume_state, lambda f: _load_trained(f, sam), optimizer, lr_scheduler, train_log
    )
    max_steps = schedule.max_steps
    run_config = _run_config(config, model_type, size, base_info, data, processes, max_steps)
    write_run_config(accelerator, run_config, output_dir, "fusynth-sam", config.report_to)

    def step_loss(idx: np.ndarray, gen: torch.Generator) -> torch.Tensor:
        batch = [data.inputs[i] for i in idx]
        boxes = jittered_boxes(batch, config.box_jitter, size, gen).to(device)
        target = torch.from_numpy(np.stack([x.mask for x in batch]))[:, None].to(device)
        with accelerator.autocast():
            if embeddings is not None:
                low, iou_pred = prepared(
                    boxes, embeddings=embeddings[torch.from_numpy(idx)].to(device)
                )
            else:
                images = [
                    torch.as_tensor(x.image, device=device).permute(2, 0, 1).float() for x in batch
                ]
                low, iou_pred = prepared(boxes, images=images)
        logits = F.interpolate(low.float(), (size, size), mode="bilinear", align_corners=False)
        loss, iou = segmentation_loss(logits, target, config.loss)
        return loss + F.mse_loss(iou_pred.float()[:, 0], iou)

    prepared.train()
    done = run_steps(
        accelerator,
        config,
        desc="finetune_sam",
        schedule=schedule,
        prepared=prepared,
        params=params,
        optimizer=optimizer,
        lr_scheduler=lr_scheduler,
        global_step=global_step,
        train_log=train_log,
        step_loss=step_loss,
        validate=(lambda: validation_dice(model, data.validation, val_embeddings, device))
        if data.validation
        else None,
        output_dir=output_dir,
        resume_state=resume_state,
        save_state=lambda tmp: _save_trained(tmp, sam),
        save_final=lambda step: _save_final(
            output_dir,
            sam,
            model_type,
            run_config,
            step,
            train_log["losses"],
            train_log["validation"],
        ),  # fmt: skip
    )
    return SamTrainResult(
        final_dir(output_dir),
        done.global_step,
        done.seen / done.elapsed if done.elapsed > 0 else 0.0,
        train_log["losses"],
        [v["dice"] for v in train_log["validation"]],
        cache.hits if cache else 0,
        cache.misses if cache else 0,
    )


def _run_config(config, model_type, size, base_info, data, processes, max_steps) -> dict[str, Any]:
    from fusynth import __version__

    resolved = dataclasses.asdict(config)
    resolved.update(
        model_type=model_type,
        learning_rate=config.lr,
        image_size=size,
        smoke_model=base_info["checkpoint"] is None,
        max_train_steps=max_steps,
        num_processes=processes,
        fusynth_version=__version__,
        **base_info,
        **data.source,
    )
    return resolved


def _save_final(output_dir, sam, model_type, run_config, step, losses, val_history) -> None:
    """Write the whole SAM (encoder LoRA merged) as safetensors, its config, the run's
    config, the loss log and the card; each replaces its old version only when all is
    written."""
    import copy

    from safetensors.torch import save_file

    from fusynth.segment.card import render_sam_card

    final = copy.deepcopy(sam).cpu()
    merge_encoder_lora(final)

    def write(tmp: Path) -> None:
        state = {k: v.contiguous() for k, v in final.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS_FILE))
        sam_config = {
            "model_type": model_type,
            "trained_parts": run_config["train_parts"],
            "preprocess": preprocess_of(sam),
        }
        (tmp / CONFIG_FILE).write_text(json.dumps(sam_config, indent=2))
        write_config_json(tmp, run_config)
        write_train_log(tmp, step, {"losses": losses, "validation": val_history})
        (tmp / "README.md").write_text(render_sam_card(run_config, step, val_history))

    replace_outputs(output_dir, write)
