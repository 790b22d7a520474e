"""An open_clip model as contrastive fine-tuning sees it: what trains in each mode (LiT,
LoRA, full), the loss, the state stock open_clip reads back, and the model card.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fusynth.core.errors import UserInputError

TRAIN_MODES = ("lit", "lora", "full")
CONTRASTIVE = ("views", "pairs")
#: The files stock open_clip reads from a ``local-dir:`` folder (or a Hub repo).
WEIGHTS_FILE = "open_clip_model.safetensors"
OPEN_CLIP_CONFIG = "open_clip_config.json"
#: LoRA targets: the two linear layers of every residual block's MLP in both towers
#: (open_clip's attention is ``nn.MultiheadAttention``, whose fused in-projection and
#: out-projection are used as raw weights, not called as modules, so a LoRA layer there
#: would never run).
LORA_TARGETS = r".*\.mlp\.(c_fc|c_proj)"


# ----------------------------------------------------------------------------- the loss


def contrastive_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """Symmetric InfoNCE of L2-normalised features ``[N, D]``.

    Args:
        image_features: ``[N, D]``, row i paired with ``text_features[i]``.
        text_features: ``[N, D]``.
        logit_scale: the inverse temperature (already exponentiated).
        labels: ``[N]`` int view ids: pairs of one view are all positives of each other
            (supervised contrastive; targets spread evenly over them). None: only the
            diagonal is positive (CLIP's loss).

    Returns:
        The mean of the image-to-text and text-to-image cross-entropies (a scalar).
    """
    logits = logit_scale * image_features @ text_features.T
    n = logits.shape[0]
    if labels is None:
        target = torch.eye(n, device=logits.device, dtype=logits.dtype)
    else:
        target = (labels[:, None] == labels[None, :]).to(logits.dtype)
    target = target / target.sum(dim=1, keepdim=True)
    i2t = -(target * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
    # The target is symmetric, so text-to-image uses its transpose as well.
    t2i = -(target.T * F.log_softmax(logits.T, dim=1)).sum(dim=1).mean()
    return (i2t + t2i) / 2


def _gather(x: torch.Tensor, processes: int) -> torch.Tensor:
    """``x`` of every process concatenated, the local part keeping its gradient."""
    if processes == 1:
        return x
    import warnings

    import torch.distributed.nn

    with warnings.catch_warnings():  # its successor is still private; open_clip uses it too
        warnings.simplefilter("ignore", FutureWarning)
        return torch.cat(torch.distributed.nn.all_gather(x), dim=0)


# ----------------------------------------------------------------------------- the model


def _model_config(name: str) -> dict[str, Any]:
    """The open_clip architecture config of ``name`` (a registered name or local-dir)."""
    import open_clip

    if name.startswith("local-dir:"):
        path = Path(name[len("local-dir:") :]) / OPEN_CLIP_CONFIG
        return json.loads(path.read_text())["model_cfg"]
    if name.startswith("hf-hub:"):
        from huggingface_hub import hf_hub_download

        path = hf_hub_download(name[len("hf-hub:") :], OPEN_CLIP_CONFIG)
        return json.loads(Path(path).read_text())["model_cfg"]
    cfg = open_clip.get_model_config(name)
    if cfg is None:
        raise UserInputError(f"--model: open_clip has no config for {name}")
    return cfg


def prepare_model(model: nn.Module, mode: str, rank: int) -> nn.Module:
    """Make the parameters of ``mode`` trainable (in place): LiT, LoRA or full.

    Returns:
        The model to train (for ``lora`` a peft wrapper whose weights are ``model``'s).
    """
    if mode == "full":
        model.requires_grad_(True)
        return model
    if mode == "lit":
        model.requires_grad_(True)
        model.lock_image_tower(unlocked_groups=0, freeze_bn_stats=True)
        return model
    from peft import LoraConfig, get_peft_model

    model.requires_grad_(False)
    config = LoraConfig(r=rank, lora_alpha=rank, target_modules=LORA_TARGETS, lora_dropout=0.0)
    try:
        wrapped = get_peft_model(model, config)
    except ValueError as exc:  # peft: no module matched (a tower of another architecture)
        raise UserInputError(
            "--train_mode lora: the model has no residual-block MLP layers (mlp.c_fc, "
            "mlp.c_proj) to adapt; use --train_mode lit or full"
        ) from exc
    model.logit_scale.requires_grad_(True)
    return wrapped


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The trainable parameters (what a checkpoint must hold besides the base weights)."""
    return {
        n: p.detach().cpu().clone().contiguous()
        for n, p in model.named_parameters()
        if p.requires_grad
    }


def stock_state(trained: nn.Module, mode: str) -> dict[str, torch.Tensor]:
    """open_clip's own state dict of the trained model (LoRA merged into the weights)."""
    import copy

    model = trained
    if mode == "lora":
        model = copy.deepcopy(trained).merge_and_unload()
    return {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}


def architecture_name(name: str) -> str | None:
    """The name ``OUT/<name>.json`` registers (None for ``local-dir:``/``hf-hub:`` bases,
    whose architecture is only in ``open_clip_config.json``)."""
    return None if name.startswith(("local-dir:", "hf-hub:")) else name.replace("/", "-")


_HYPERPARAMETERS = (
    "train_mode",
    "rank",
    "contrastive",
    "learning_rate",
    "weight_decay",
    "lr_scheduler",
    "lr_warmup_steps",
    "train_batch_size",
    "max_train_steps",
    "augment",
    "mixed_precision",
    "seed",
)


def render_clip_card(config: dict[str, Any], step: int) -> str:
    """The README.md of a ``train_clip`` output folder."""
    from fusynth.core.cards import render_card

    card_data = {
        "library_name": "open_clip",
        "license": "apache-2.0",
        "tags": ["fusynth", "clip", "zero-shot-image-classification", "ultrasound",
                 "fetal-ultrasound", "medical-imaging"],
        "pipeline_tag": "zero-shot-image-classification",
    }  # fmt: skip
    fields = {
        "title": f"fusynth fetal ultrasound CLIP ({config['model']}, {config['train_mode']})"
        + (" (smoke model)" if config["smoke_model"] else ""),
        "model": config["model"],
        "pretrained": config["pretrained"],
        "pretrained_sha256": config["pretrained_sha256"],
        "architecture": architecture_name(config["model"]),
        "smoke_model": bool(config["smoke_model"]),
        "image_size": config["image_size"],
        "classes": ", ".join(config["classes"]),
        "train": config["train"],
        "num_real": config["num_real"],
        "num_real_subjects": config["num_real_subjects"],
        "real_per_view": config["real_per_view"],
        "synthetic": config["synthetic"],
        "num_synthetic": config["num_synthetic"],
        "synthetic_per_view": config["synthetic_per_view"],
        "caption_templates": config["caption_templates"],
        "hyperparameters": {k: config.get(k) for k in _HYPERPARAMETERS},
        "trainable_parameters": config["trainable_parameters"],
        "global_step": step,
        "num_processes": config["num_processes"],
    }
    return render_card("clip", card_data, fields)


def tuned_from_random_init(name: str) -> bool:
    """True when ``name`` is a ``local-dir:`` ``train_clip`` output tuned from random
    weights (a smoke model, whatever its training)."""
    if not name.startswith("local-dir:"):
        return False
    config = Path(name[len("local-dir:") :]) / "config.json"
    try:
        return bool(json.loads(config.read_text()).get("random_init", False))
    except (OSError, json.JSONDecodeError, AttributeError):
        return False
