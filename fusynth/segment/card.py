"""The model cards of the segmenters: a fine-tuned SAM and a U-Net."""

from __future__ import annotations

from typing import Any

from fusynth.core.cards import render_card

#: Settings both segmenters' cards list, then each its own.
_COMMON_HYPERPARAMETERS = (
    "loss",
    "learning_rate",
    "weight_decay",
    "lr_scheduler",
    "lr_warmup_steps",
    "train_batch_size",
    "gradient_accumulation_steps",
    "max_train_steps",
    "num_train_epochs",
    "mixed_precision",
    "seed",
)
_SAM_HYPERPARAMETERS = ("train_parts", "encoder_lora_rank", "box_jitter", *_COMMON_HYPERPARAMETERS)
_UNET_HYPERPARAMETERS = ("train_parts", "resolution", "hflip", *_COMMON_HYPERPARAMETERS)


def _card_data(library: str, *tags: str) -> dict[str, Any]:
    """The metadata of a segmenter's card (the Hub reads it)."""
    return {
        "library_name": library,
        "license": "apache-2.0",
        "tags": [
            "fusynth",
            library,
            *tags,
            "image-segmentation",
            "ultrasound",
            "fetal-ultrasound",
            "medical-imaging",
        ],
        "pipeline_tag": "image-segmentation",
    }


def _training_fields(
    config: dict[str, Any],
    step: int,
    validation: list[dict[str, float]],
    hyperparameters: tuple[str, ...],
) -> dict[str, Any]:
    """What both cards say of the training: the data chosen, the settings, the result."""
    return {
        "train": config["train"],
        "num_real": config["num_real"],
        "num_real_subjects": config["num_real_subjects"],
        "seed": config["seed"],
        "num_synthetic": config["num_synthetic"],
        "synthetic": config["synthetic"],
        "num_validation": config["num_validation"],
        "validation": config["validation"],
        "hyperparameters": {k: config.get(k) for k in hyperparameters},
        "global_step": step,
        "num_processes": config["num_processes"],
        "validation_dice": round(validation[-1]["dice"], 4) if validation else None,
    }


def render_sam_card(config: dict[str, Any], step: int, validation: list[dict[str, float]]) -> str:
    """The README.md of a ``finetune_sam`` output folder."""
    smoke = bool(config["smoke_model"])
    fields = {
        "title": f"fusynth SAM ({config['model_type']}) for the fetal head"
        + (" (smoke model)" if smoke else ""),
        "model_type": config["model_type"],
        "registry_type": None if config["model_type"] == "tiny" else config["model_type"],
        "image_size": config["image_size"],
        "train_parts": config["train_parts"],
        "smoke_model": smoke,
        "checkpoint": config.get("checkpoint"),
        "checkpoint_sha256": config.get("checkpoint_sha256"),
        **_training_fields(config, step, validation, _SAM_HYPERPARAMETERS),
    }
    return render_card("sam", _card_data("segment-anything"), fields)


def render_unet_card(
    config: dict[str, Any], step: int, validation: list[dict[str, float]], config_file: str
) -> str:
    """The README.md of a ``train_unet`` output folder (``config_file``: the name of its
    smp configuration file)."""
    smoke = bool(config["smoke_model"])
    fields = {
        "title": f"fusynth U-Net ({config['encoder']}) for the fetal head"
        + (" (smoke model)" if smoke else ""),
        "encoder": config["encoder"],
        "resolution": config["resolution"],
        "train_parts": config["train_parts"],
        "trainable_params": f"{config['trainable_params']:,}",
        "total_params": f"{config['total_params']:,}",
        "trainable_percent": f"{100 * config['trainable_share']:.1f}",
        "smoke_model": smoke,
        "init": config["init"],
        "init_sha256": config.get("encoder_weights_sha256") or config.get("checkpoint_sha256"),
        "config_file": config_file,
        **_training_fields(config, step, validation, _UNET_HYPERPARAMETERS),
    }
    return render_card("unet", _card_data("segmentation-models-pytorch", "unet"), fields)
