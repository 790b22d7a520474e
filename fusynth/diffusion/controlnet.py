"""ControlNet training: a head mask in, an ultrasound image drawn for it out.

The ControlNet starts as a copy of the base UNet's encoder (``ControlNetModel.from_unet``)
and learns to steer the frozen UNet from a conditioning picture made from the mask:
the filled mask, or its signed distance map (``--conditioning``). Generation then takes a
mask and returns an image drawn for it, so every pair is right by construction. The
loop is the shared one of :mod:`fusynth.diffusion.training`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fusynth.core.errors import UserInputError
from fusynth.core.loop import choice, positive
from fusynth.data.masks import conditioning_image
from fusynth.diffusion.base import BaseGeometry, SDComponents
from fusynth.diffusion.config import TrainConfig
from fusynth.diffusion.dataset import TrainingSet
from fusynth.diffusion.training import TrainMethod, TrainResult, run_validation_pipeline, train

CONDITIONING = ("filled", "distance")
CONTROLNET_DIR = "controlnet"
CONTROLNET_WEIGHTS = f"{CONTROLNET_DIR}/diffusion_pytorch_model.safetensors"


@dataclass
class ControlNetTrainConfig(TrainConfig):
    """A ControlNet run: the shared settings plus the conditioning ones."""

    output_dir: str = "fusynth-controlnet"
    learning_rate: float = 1e-5
    conditioning: str = "filled"
    conditioning_scale: float = 1.0
    controlnet_model_name_or_path: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        choice(self.conditioning, CONDITIONING, "--conditioning")
        positive(self.conditioning_scale, "--conditioning_scale", allow_zero=True)


#: diffusers' ControlNet conditioning embedding: one stride-2 stage per step after the first.
_EMBEDDING_CHANNELS = (16, 32, 96, 256)


def conditioning_embedding_channels(vae_scale_factor: int) -> tuple[int, ...]:
    """Channels of a ControlNet conditioning embedding that downsamples the conditioning
    picture exactly as the base's VAE downsamples images (diffusers' default is 8x).

    Raises:
        UserInputError: a scale factor that is not a power of two.
    """
    f = int(vae_scale_factor)
    if f < 1 or f & (f - 1):
        raise UserInputError(
            f"--pretrained_model_name_or_path: the base's VAE downsamples {f}x; a ControlNet "
            "needs a power of two"
        )
    n = f.bit_length()  # 1x -> 1 stage, 2x -> 2, 8x -> 4
    return _EMBEDDING_CHANNELS[:n] + (_EMBEDDING_CHANNELS[-1],) * max(
        0, n - len(_EMBEDDING_CHANNELS)
    )


def conditioning_tensor(masks: np.ndarray, kind: str) -> torch.Tensor:
    """``[N, 3, R, R]`` float32 in ``[0, 1]``: the conditioning picture of each mask."""
    pics = np.stack([conditioning_image(m, kind) for m in masks]).astype(np.float32) / 255.0
    return torch.from_numpy(np.repeat(pics[:, None], 3, axis=1))


class ControlNetMethod(TrainMethod):
    """A ControlNet on filled masks or signed distance maps; the UNet stays frozen."""

    name = "controlnet"
    weights_file = CONTROLNET_WEIGHTS
    resume_keys = ("conditioning",)
    needs_masks = True
    config: ControlNetTrainConfig

    def check_base(self, geometry: BaseGeometry) -> None:
        """Size the conditioning embedding from the base's VAE; a given ControlNet must
        already downsample by that factor."""
        self.embedding_channels = conditioning_embedding_channels(geometry.vae_scale_factor)
        path = self.config.controlnet_model_name_or_path
        if path:
            from diffusers import ControlNetModel

            try:
                cfg = ControlNetModel.load_config(path)
            except (OSError, ValueError) as exc:
                raise UserInputError(
                    f"--controlnet_model_name_or_path: cannot read the config of {path} ({exc})"
                ) from exc
            have = len(cfg.get("conditioning_embedding_out_channels") or _EMBEDDING_CHANNELS)
            if 2 ** (have - 1) != geometry.vae_scale_factor:
                raise UserInputError(
                    f"--controlnet_model_name_or_path: {path} downsamples its conditioning "
                    f"{2 ** (have - 1)}x but the base's VAE downsamples "
                    f"{geometry.vae_scale_factor}x"
                )

    def attach(
        self, comps: SDComponents, data: TrainingSet, weight_dtype: torch.dtype
    ) -> dict[str, Any]:
        from diffusers import ControlNetModel

        c = self.config
        if c.controlnet_model_name_or_path:
            try:
                controlnet = ControlNetModel.from_pretrained(c.controlnet_model_name_or_path)
            except (OSError, ValueError) as exc:
                raise UserInputError(
                    f"--controlnet_model_name_or_path: cannot load {c.controlnet_model_name_or_path} ({exc})"
                ) from exc
        else:
            channels = getattr(self, "embedding_channels", None) or _EMBEDDING_CHANNELS
            controlnet = ControlNetModel.from_unet(
                comps.unet, conditioning_embedding_out_channels=channels
            )
        controlnet.to(comps.vae.device, dtype=torch.float32)
        # Conditioning pictures are made per batch from the cached masks (on disk):
        # a few ms each, and no [N, 3, R, R] float copy of the data set in memory.
        self.masks = data.masks
        return {"controlnet": controlnet}

    def param_groups(self, modules: dict[str, Any]) -> list[dict[str, Any]]:
        return [
            {
                "params": [p for p in modules["controlnet"].parameters() if p.requires_grad],
                "lr": self.config.learning_rate,
            }
        ]

    def unet_kwargs(self, modules, noisy, timesteps, cond, idx, variant) -> dict[str, Any]:
        cond_pics = conditioning_tensor(self.masks[idx.numpy()], self.config.conditioning)
        flipped = variant.bool()
        cond_pics[flipped] = torch.flip(cond_pics[flipped], dims=[-1])
        image = cond_pics.to(noisy.device, noisy.dtype)
        down, mid = modules["controlnet"](
            noisy, timesteps, encoder_hidden_states=cond, controlnet_cond=image, return_dict=False
        )
        return {
            "down_block_additional_residuals": [d.to(noisy.dtype) for d in down],
            "mid_block_additional_residual": mid.to(noisy.dtype),
        }

    def save_weights(self, folder: Path, modules: dict[str, Any]) -> None:
        modules["controlnet"].save_pretrained(str(folder / CONTROLNET_DIR), safe_serialization=True)

    def load_weights(self, folder: Path, modules: dict[str, Any]) -> None:
        from safetensors.torch import load_file

        state = load_file(str(folder / CONTROLNET_WEIGHTS))
        modules["controlnet"].load_state_dict(state)

    @torch.no_grad()
    def validation_images(
        self, comps: SDComponents, modules: dict[str, Any], data: TrainingSet, resolution: int
    ) -> list[np.ndarray]:
        """For the first training masks: the conditioning picture, then the image drawn."""
        from diffusers import StableDiffusionControlNetPipeline
        from PIL import Image

        c = self.config
        pipe = StableDiffusionControlNetPipeline(
            vae=comps.vae,
            text_encoder=comps.text_encoder,
            tokenizer=comps.tokenizer,
            unet=comps.unet,
            controlnet=modules["controlnet"],
            scheduler=comps.noise_scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        out = []
        k = min(c.num_validation_images, len(data.masks))
        for i in range(k):
            pic = conditioning_image(data.masks[i], c.conditioning)
            rgb = np.repeat(pic[..., None], 3, axis=2)
            generated = run_validation_pipeline(
                pipe,
                c.validation_prompt[:1],
                1,
                c.seed + i,
                resolution,
                c.validation_inference_steps,
                image=Image.fromarray(rgb),
                controlnet_conditioning_scale=c.conditioning_scale,
            )
            out += [rgb, generated[0]]
        return out

    def resolved(self) -> dict[str, Any]:
        return {"conditioning": self.config.conditioning}

    def validation_captions(self, data: TrainingSet) -> list[str]:
        """Per training mask: its conditioning picture, then the image drawn from it."""
        c = self.config
        k = min(c.num_validation_images, len(data.masks))
        out = []
        for i in range(k):
            out += [
                f"conditioning: training mask {i + 1}\n({c.conditioning})",
                f'seed {c.seed + i}\n"{c.validation_prompt[0]}"',
            ]
        return out

    @property
    def grid_columns(self) -> int:
        return 2  # conditioning picture | generated image

    def render_card(self, config: dict[str, Any], global_step: int, sample: str | None) -> str:
        from fusynth.diffusion.card import render_controlnet_card

        return render_controlnet_card(config, global_step, sample)


def train_controlnet(config: ControlNetTrainConfig) -> TrainResult:
    """Train a mask-conditioned ControlNet; see :func:`fusynth.diffusion.training.train`."""
    return train(config, ControlNetMethod(config))
