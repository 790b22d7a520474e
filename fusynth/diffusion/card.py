"""The model card of a LoRA training run."""

from __future__ import annotations

from typing import Any

from fusynth.cards import render_card

# Hyper-parameters shown in the card, in this order.
CARD_HYPERPARAMETERS = (
    "resolution",
    "rank",
    "lora_alpha",
    "lora_dropout",
    "train_text_encoder",
    "learning_rate",
    "text_encoder_lr",
    "lr_scheduler",
    "lr_warmup_steps",
    "train_batch_size",
    "gradient_accumulation_steps",
    "max_train_steps",
    "num_train_epochs",
    "snr_gamma",
    "noise_offset",
    "mixed_precision",
    "random_flip",
    "center_crop",
    "seed",
)


def _common_card(config: dict[str, Any], kind: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Hub metadata and body fields every training card shares."""
    base = config["pretrained_model_name_or_path"]
    smoke = bool(config.get("smoke_base"))
    card_data = {
        "base_model": None if smoke else base,
        "library_name": "diffusers",
        "license": "other",
        "tags": [
            "fusynth",
            kind,
            "stable-diffusion",
            "diffusers",
            "ultrasound",
            "fetal-ultrasound",
            "medical-imaging",
        ],
        "pipeline_tag": "text-to-image",
    }
    fields = {
        "base_model": base,
        "smoke_base": smoke,
        "train_data": config["train_data"],
        "num_train_images": config["num_train_images"],
        "num_train_subjects": config["num_train_subjects"],
        "num_processes": config["num_processes"],
    }
    return card_data, fields


def render_controlnet_card(
    config: dict[str, Any], global_step: int, sample_grid: str | None
) -> str:
    """Render ``model_cards/controlnet.md`` from a run's resolved ``config.json``."""
    card_data, fields = _common_card(config, "controlnet")
    captions = config["captions_by_view"]
    keys = (
        "resolution",
        "conditioning",
        "conditioning_scale",
        "learning_rate",
        "lr_scheduler",
        "lr_warmup_steps",
        "train_batch_size",
        "gradient_accumulation_steps",
        "max_train_steps",
        "num_train_epochs",
        "snr_gamma",
        "noise_offset",
        "mixed_precision",
        "random_flip",
        "seed",
    )
    first = next(iter(captions.values()))
    return render_card(
        "controlnet",
        card_data,
        {
            **fields,
            "title": "fusynth ControlNet: fetal head from mask",
            "conditioning": config["conditioning"],
            "example_prompt": first[0] if isinstance(first, list) else first,
            "captions": captions,
            "hyperparameters": {k: config.get(k) for k in keys},
            "global_step": global_step,
            "sample_grid": sample_grid,
        },
    )


def render_lora_card(config: dict[str, Any], global_step: int, sample_grid: str | None) -> str:
    """Render ``model_cards/lora.md`` from a run's resolved ``config.json``."""
    base = config["pretrained_model_name_or_path"]
    smoke = bool(config.get("smoke_base"))
    tags = [
        "fusynth",
        "lora",
        "stable-diffusion",
        "text-to-image",
        "diffusers",
        "ultrasound",
        "fetal-ultrasound",
        "medical-imaging",
    ]
    card_data = {
        "base_model": None if smoke else base,
        "library_name": "diffusers",
        "license": "other",
        "tags": tags,
        "pipeline_tag": "text-to-image",
    }
    captions = config["captions_by_view"]
    return render_card(
        "lora",
        card_data,
        {
            "title": f"fusynth LoRA: fetal {', '.join(config['views'])}",
            "base_model": base,
            "smoke_base": smoke,
            "views": config["views"],
            "example_prompt": next(iter(captions.values())),
            "train_text_encoder": config["train_text_encoder"],
            "train_data": config["train_data"],
            "num_train_images": config["num_train_images"],
            "num_train_subjects": config["num_train_subjects"],
            "captions": captions,
            "hyperparameters": {k: config.get(k) for k in CARD_HYPERPARAMETERS},
            "global_step": global_step,
            "num_processes": config["num_processes"],
            "sample_grid": sample_grid,
            "validation_prompts": config.get("validation_prompt") or [],
        },
    )
