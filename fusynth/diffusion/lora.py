"""LoRA fine-tuning of a Stable-Diffusion-family model on prepared ultrasound data.

:func:`train_lora` runs the shared loop of :mod:`fusynth.diffusion.training` with
:class:`LoraMethod`: peft LoRA on the UNet attention projections (and optionally the
text encoder's), saved in diffusers' format with its rank/alpha metadata and as peft
adapter folders. ``--packing image,image,mask`` trains on pictures that carry the image
and its head mask in the RGB channels (the seed method of mask-guided pairs).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fusynth.core.artifacts import LORA_WEIGHTS
from fusynth.core.errors import UserInputError
from fusynth.core.loop import choice, positive
from fusynth.diffusion.base import BaseRef, SDComponents
from fusynth.diffusion.config import TrainConfig
from fusynth.diffusion.dataset import (
    TrainingSet,
    encode_captions,
    encode_images,
    parse_packing,
    tokenize,
)
from fusynth.diffusion.training import TrainMethod, TrainResult, run_validation_pipeline, train

__all__ = [
    "LoraMethod",
    "LoraTrainConfig",
    "encode_captions",
    "encode_images",
    "tokenize",
    "train_lora",
]

UNET_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]
#: The rest of each UNet transformer block: its input/output projections (1x1 convs in
#: SD 1.x, linear in SD 2.x) and the GEGLU feed-forward; what kohya's LoRA also covers.
UNET_FF_TARGETS = ["proj_in", "proj_out", "ff.net.0.proj", "ff.net.2"]
#: The text encoder's MLP (``--lora_targets all`` with ``--train_text_encoder``).
TEXT_MLP_TARGETS = ["fc1", "fc2"]
LORA_TARGETS = ("attn", "attn+ff", "all")


def lora_target_modules(targets: str, text_encoder: bool) -> list[str]:
    """peft ``target_modules`` for ``--lora_targets`` (UNet, or the text encoder)."""
    if text_encoder:
        return TEXT_TARGETS + (TEXT_MLP_TARGETS if targets == "all" else [])
    return UNET_TARGETS + (UNET_FF_TARGETS if targets in ("attn+ff", "all") else [])


@dataclass
class LoraTrainConfig(TrainConfig):
    """A LoRA run: the shared settings plus the LoRA ones."""

    output_dir: str = "fusynth-lora"
    packing: str | None = None
    text_encoder_lr: float | None = None
    rank: int = 4
    lora_alpha: float | None = None
    lora_dropout: float = 0.0
    train_text_encoder: bool = False
    lora_targets: str = "attn"

    def __post_init__(self) -> None:
        super().__post_init__()
        choice(self.lora_targets, LORA_TARGETS, "--lora_targets")
        parse_packing(self.packing)
        positive(self.rank, "--rank")
        if self.text_encoder_lr is not None:
            positive(self.text_encoder_lr, "--text_encoder_lr")
        if self.lora_alpha is not None:
            positive(self.lora_alpha, "--lora_alpha")
        if not 0 <= self.lora_dropout < 1:
            raise UserInputError(f"--lora_dropout: must be in [0, 1), got {self.lora_dropout}")

    @property
    def alpha(self) -> float:
        """LoRA alpha (defaults to the rank: scale 1)."""
        return float(self.lora_alpha if self.lora_alpha is not None else self.rank)


# ----------------------------------------------------------------------------- LoRA io


def lora_state_dicts(unet: Any, text_encoder: Any | None) -> tuple[dict, dict | None]:
    """Diffusers-format LoRA tensors of the UNet (and text encoder), fp32, on CPU."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    def grab(model: Any) -> dict:
        sd = convert_state_dict_to_diffusers(get_peft_model_state_dict(model))
        return {k: v.detach().float().cpu().contiguous() for k, v in sd.items()}

    return grab(unet), grab(text_encoder) if text_encoder is not None else None


def save_lora(folder: Path, unet: Any, text_encoder: Any | None) -> Path:
    """Write ``pytorch_lora_weights.safetensors`` with rank/alpha metadata."""
    from diffusers import StableDiffusionPipeline

    unet_sd, te_sd = lora_state_dicts(unet, text_encoder)
    StableDiffusionPipeline.save_lora_weights(
        str(folder),
        unet_lora_layers=unet_sd,
        text_encoder_lora_layers=te_sd,
        safe_serialization=True,
        unet_lora_adapter_metadata=unet.peft_config["default"].to_dict(),
        text_encoder_lora_adapter_metadata=(
            text_encoder.peft_config["default"].to_dict() if text_encoder is not None else None
        ),
    )
    return folder / LORA_WEIGHTS


def save_peft_adapter(folder: Path, model: Any, base_name: str) -> Path:
    """Write a peft adapter folder (``adapter_config.json``, ``adapter_model.safetensors``)
    that ``peft.PeftModel.from_pretrained(base_model, folder)`` loads."""
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    sd = get_peft_model_state_dict(model)
    # PeftModel keeps the wrapped model under base_model.model.
    tensors = {
        f"base_model.model.{k}": v.detach().float().cpu().contiguous() for k, v in sd.items()
    }
    save_file(tensors, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    cfg = model.peft_config["default"].to_dict()
    cfg["base_model_name_or_path"] = base_name
    for key, value in list(cfg.items()):
        if isinstance(value, set):
            cfg[key] = sorted(value)
    (folder / "adapter_config.json").write_text(
        json.dumps(cfg, indent=2, sort_keys=True, default=str)
    )
    return folder


def load_lora_into(folder: Path, unet: Any, text_encoder: Any | None) -> None:
    """Load a checkpoint's LoRA weights back into models that carry the adapter."""
    from diffusers.utils import convert_unet_state_dict_to_peft
    from peft.utils import set_peft_model_state_dict
    from safetensors.torch import load_file

    sd = load_file(str(folder / LORA_WEIGHTS))
    unet_sd = {k[len("unet.") :]: v for k, v in sd.items() if k.startswith("unet.")}
    result = set_peft_model_state_dict(
        unet, convert_unet_state_dict_to_peft(unet_sd), adapter_name="default"
    )
    if getattr(result, "unexpected_keys", None):
        raise UserInputError(
            f"{folder}: LoRA weights do not match the model ({result.unexpected_keys[0]})"
        )
    if text_encoder is not None:
        from diffusers.utils import convert_state_dict_to_peft

        te_sd = {
            k[len("text_encoder.") :]: v for k, v in sd.items() if k.startswith("text_encoder.")
        }
        set_peft_model_state_dict(
            text_encoder, convert_state_dict_to_peft(te_sd), adapter_name="default"
        )


# ----------------------------------------------------------------------------- the method


class LoraMethod(TrainMethod):
    """LoRA adapters on the UNet (and optionally the text encoder)."""

    name = "lora"
    weights_file = LORA_WEIGHTS
    resume_keys = ("rank", "lora_alpha", "train_text_encoder", "packing", "lora_targets")
    config: LoraTrainConfig

    def __init__(self, config: LoraTrainConfig) -> None:
        super().__init__(config)
        self.packing = config.packing

    def _lora(self, targets: list[str]):
        from peft import LoraConfig

        c = self.config
        return LoraConfig(
            r=c.rank,
            lora_alpha=c.alpha,
            lora_dropout=c.lora_dropout,
            init_lora_weights="gaussian",
            target_modules=targets,
        )

    def attach(
        self, comps: SDComponents, data: TrainingSet, weight_dtype: torch.dtype
    ) -> dict[str, Any]:
        targets = self.config.lora_targets
        comps.unet.add_adapter(self._lora(lora_target_modules(targets, text_encoder=False)))
        modules = {"unet": comps.unet}
        if self.config.train_text_encoder:
            comps.text_encoder.add_adapter(
                self._lora(lora_target_modules(targets, text_encoder=True))
            )
            modules["text_encoder"] = comps.text_encoder
        return modules

    def param_groups(self, modules: dict[str, Any]) -> list[dict[str, Any]]:
        c = self.config
        groups = [
            {
                "params": [p for p in modules["unet"].parameters() if p.requires_grad],
                "lr": c.learning_rate,
            }
        ]
        if "text_encoder" in modules:
            groups.append(
                {
                    "params": [p for p in modules["text_encoder"].parameters() if p.requires_grad],
                    "lr": c.text_encoder_lr or c.learning_rate,
                }
            )
        return groups

    def save_weights(self, folder: Path, modules: dict[str, Any]) -> None:
        save_lora(folder, modules["unet"], modules.get("text_encoder"))

    def load_weights(self, folder: Path, modules: dict[str, Any]) -> None:
        load_lora_into(folder, modules["unet"], modules.get("text_encoder"))

    def save_extras(self, folder: Path, modules: dict[str, Any], ref: BaseRef) -> None:
        save_peft_adapter(folder / "unet_peft", modules["unet"], f"{ref.source}/unet")
        if "text_encoder" in modules:
            save_peft_adapter(
                folder / "text_encoder_peft",
                modules["text_encoder"],
                f"{ref.source}/text_encoder",
            )

    @torch.no_grad()
    def validation_images(
        self, comps: SDComponents, modules: dict[str, Any], data: TrainingSet, resolution: int
    ) -> list[np.ndarray]:
        from diffusers import StableDiffusionPipeline

        c = self.config
        pipe = StableDiffusionPipeline(
            vae=comps.vae,
            text_encoder=modules.get("text_encoder", comps.text_encoder),
            tokenizer=comps.tokenizer,
            unet=modules["unet"],
            scheduler=comps.noise_scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        return run_validation_pipeline(
            pipe,
            c.validation_prompt,
            c.num_validation_images,
            c.seed,
            resolution,
            c.validation_inference_steps,
            clip_skip=c.clip_skip,
        )

    def resolved(self) -> dict[str, Any]:
        c = self.config
        return {
            "lora_alpha": c.alpha,
            "text_encoder_lr": (c.text_encoder_lr or c.learning_rate)
            if c.train_text_encoder
            else None,
        }

    def render_card(self, config: dict[str, Any], global_step: int, sample: str | None) -> str:
        from fusynth.diffusion.card import render_lora_card

        return render_lora_card(config, global_step, sample)


def train_lora(config: LoraTrainConfig) -> TrainResult:
    """Train a LoRA adapter; see :func:`fusynth.diffusion.training.train`."""
    return train(config, LoraMethod(config))
