"""The model card of a view classifier folder."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    pass

# ----------------------------------------------------------------------------- card


_HYPERPARAMETERS = (
    "optimizer",
    "learning_rate",
    "momentum",
    "weight_decay",
    "lr_scheduler",
    "lr_warmup_steps",
    "train_batch_size",
    "gradient_accumulation_steps",
    "num_train_epochs",
    "max_train_steps",
    "augment",
    "mixed_precision",
    "best_metric",
    "seed",
)


def render_classifier_card(
    config: dict[str, Any], step: int, best_value: float | None, best_step: int | None
) -> str:
    """The README.md of a ``train_classifier`` output folder."""
    from fusynth.core.cards import render_card

    smoke = bool(config["smoke_model"])
    card_data = {
        "library_name": "pytorch",
        "license": "apache-2.0",
        "tags": [
            "fusynth",
            "image-classification",
            "ultrasound",
            "fetal-ultrasound",
            "medical-imaging",
        ],
        "pipeline_tag": "image-classification",
    }
    best = None
    if best_value is not None:
        best = f"{best_value:.4f} at step {best_step}"
    fields = {
        "title": f"fusynth fetal view classifier ({config['backbone']})"
        + (" (smoke model)" if smoke else ""),
        "backbone": config["backbone"],
        "classes": ", ".join(config["classes"]),
        "resolution": config["resolution"],
        "smoke_model": smoke,
        "weights": config["weights"],
        "weights_sha256": config["weights_sha256"],
        "train": config["train"],
        "num_real": config["num_real"],
        "num_real_subjects": config["num_real_subjects"],
        "real_per_view": config["real_per_view"],
        "seed": config["seed"],
        "synthetic": config["synthetic"],
        "num_synthetic": config["num_synthetic"],
        "synthetic_per_view": config["synthetic_per_view"],
        "validation": config["validation"],
        "num_validation": config["num_validation"],
        "best_metric": config["best_metric"],
        "best": best,
        "hyperparameters": {k: config.get(k) for k in _HYPERPARAMETERS},
        "global_step": step,
        "num_processes": config["num_processes"],
    }
    return render_card("classifier", card_data, fields)
