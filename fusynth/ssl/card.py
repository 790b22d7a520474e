"""The model card of an SSL encoder folder."""

from __future__ import annotations

from typing import Any

from fusynth.embed.ssl import NORMALIZATION

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
    from fusynth.core.cards import render_card

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
