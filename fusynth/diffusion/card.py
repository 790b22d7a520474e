"""The model cards of training runs (LoRA and ControlNet)."""

from __future__ import annotations

from typing import Any

from fusynth.core.cards import render_card

# Hyper-parameters shown in every card, in this order; each method adds its own.
_SHARED = (
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
    "center_crop",
    "seed",
)
_LORA = (
    "resolution",
    "rank",
    "lora_alpha",
    "lora_dropout",
    "train_text_encoder",
    "text_encoder_lr",
    "packing",
)
_CONTROLNET = ("resolution", "conditioning", "conditioning_scale")


def _first_caption(captions: dict[str, Any]) -> str:
    first = next(iter(captions.values()))
    return first[0] if isinstance(first, list) else first


def _render(
    name: str,
    config: dict[str, Any],
    own: tuple[str, ...],
    step: int,
    sample: str | None,
    **fields: Any,
) -> str:
    """Hub metadata and the fields every training card shares, plus ``fields``."""
    base = config["pretrained_model_name_or_path"]
    smoke = bool(config.get("smoke_base"))
    card_data = {
        "base_model": None if smoke else base,
        "library_name": "diffusers",
        "license": "other",
        "tags": [
            "fusynth",
            name,
            "stable-diffusion",
            "diffusers",
            "ultrasound",
            "fetal-ultrasound",
            "medical-imaging",
        ],
        "pipeline_tag": "text-to-image",
    }
    shared = {
        "base_model": base,
        "smoke_base": smoke,
        "train_data": config["train_data"],
        "num_train_images": config["num_train_images"],
        "num_train_subjects": config["num_train_subjects"],
        "num_processes": config["num_processes"],
        "captions": config["captions_by_view"],
        "example_prompt": _first_caption(config["captions_by_view"]),
        "hyperparameters": {k: config.get(k) for k in (*own, *_SHARED)},
        "global_step": step,
        "sample_grid": sample,
    }
    return render_card(name, card_data, {**shared, **fields})


def render_lora_card(config: dict[str, Any], global_step: int, sample_grid: str | None) -> str:
    """Render ``model_cards/lora.md`` from a run's resolved ``config.json``."""
    return _render(
        "lora",
        config,
        _LORA,
        global_step,
        sample_grid,
        title=f"fusynth LoRA: fetal {', '.join(config['views'])}",
        views=config["views"],
        train_text_encoder=config["train_text_encoder"],
        validation_prompts=config.get("validation_prompt") or [],
    )


def render_controlnet_card(
    config: dict[str, Any], global_step: int, sample_grid: str | None
) -> str:
    """Render ``model_cards/controlnet.md`` from a run's resolved ``config.json``."""
    return _render(
        "controlnet",
        config,
        _CONTROLNET,
        global_step,
        sample_grid,
        title="fusynth ControlNet: fetal head from mask",
        conditioning=config["conditioning"],
    )
