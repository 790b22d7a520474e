"""The model card of a fine-tuned SAM."""

from __future__ import annotations

from typing import Any

from fusynth.core.cards import render_card

_HYPERPARAMETERS = (
    "train_parts",
    "encoder_lora_rank",
    "loss",
    "box_jitter",
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


def render_sam_card(config: dict[str, Any], step: int, validation: list[dict[str, float]]) -> str:
    """The README.md of a ``finetune_sam`` output folder."""
    smoke = bool(config["smoke_model"])
    card_data = {
        "library_name": "segment-anything",
        "license": "apache-2.0",
        "tags": [
            "fusynth",
            "segment-anything",
            "image-segmentation",
            "ultrasound",
            "fetal-ultrasound",
            "medical-imaging",
        ],
        "pipeline_tag": "image-segmentation",
    }
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
        "train": config["train"],
        "num_real": config["num_real"],
        "num_real_subjects": config["num_real_subjects"],
        "seed": config["seed"],
        "num_synthetic": config["num_synthetic"],
        "synthetic": config["synthetic"],
        "num_validation": config["num_validation"],
        "validation": config["validation"],
        "hyperparameters": {k: config.get(k) for k in _HYPERPARAMETERS},
        "global_step": step,
        "num_processes": config["num_processes"],
        "validation_dice": round(validation[-1]["dice"], 4) if validation else None,
    }
    return render_card("sam", card_data, fields)
