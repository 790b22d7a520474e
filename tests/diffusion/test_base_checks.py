"""Unsupported bases are refused at the start in one line; a base's own geometry (VAE
scale, native side) sizes the ControlNet and the default resolution."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
sys.path.insert(0, str(RECIPES))

import train_controlnet  # noqa: E402
import train_lora  # noqa: E402


@pytest.fixture(scope="module")
def tiny_sdxl(tmp_path_factory) -> Path:
    """A random-init SDXL pipeline at toy size, saved by diffusers as a user's folder is."""
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from fusynth.diffusion.tiny import build_clip_tokenizer

    torch.manual_seed(0)
    text = dict(
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        vocab_size=49408,
        projection_dim=32,
    )
    unet = UNet2DConditionModel(
        sample_size=8,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 1),
        projection_class_embeddings_input_dim=32 + 6 * 8,
        cross_attention_dim=64,
        norm_num_groups=8,
    )
    pipe = StableDiffusionXLPipeline(
        vae=AutoencoderKL(
            block_out_channels=(16, 32),
            down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2,
            latent_channels=4,
            norm_num_groups=8,
        ),
        text_encoder=CLIPTextModel(CLIPTextConfig(**text)),
        text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**text)),
        tokenizer=build_clip_tokenizer(),
        tokenizer_2=build_clip_tokenizer(),
        unet=unet,
        scheduler=EulerDiscreteScheduler(),
    )
    out = tmp_path_factory.mktemp("sdxl") / "tiny-sdxl"
    pipe.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def base_2x(tmp_path_factory) -> Path:
    """The tiny base's UNet and text encoder with a VAE that downsamples 2x, not 8x."""
    from diffusers import AutoencoderKL

    from fusynth.diffusion.tiny import build_tiny_pipeline

    pipe = build_tiny_pipeline()
    torch.manual_seed(0)
    pipe.vae = AutoencoderKL(
        block_out_channels=(16, 32),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=8,
    )
    out = tmp_path_factory.mktemp("base2x") / "vae-2x"
    pipe.save_pretrained(out)
    return out


def test_sdxl_folder_is_refused_before_any_data_is_read(tiny_sdxl, tmp_path, capsys):
    out = tmp_path / "run"
    # A dataset that does not exist: the base check must come first.
    rc = train_lora.main(
        [
            "--pretrained_model_name_or_path",
            str(tiny_sdxl),
            "--train_data",
            str(tmp_path / "no-such-data"),
            "--output_dir",
            str(out),
            "--max_train_steps",
            "1",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and "SDXL" in err[0] and "--pretrained_model_name_or_path" in err[0]
    assert not out.exists()


def test_sdxl_is_refused_for_generation_too(tiny_sdxl):
    from fusynth.core.errors import UserInputError
    from fusynth.diffusion.base import resolve_base

    with pytest.raises(UserInputError, match=r"--base: .* SDXL"):
        resolve_base(str(tiny_sdxl), flag="--base")


def test_controlnet_trains_on_a_base_whose_vae_downsamples_2x(base_2x, phantom_prepared, tmp_path):
    out = tmp_path / "cn"
    rc = train_controlnet.main(
        [
            "--pretrained_model_name_or_path",
            str(base_2x),
            "--train_data",
            str(phantom_prepared),
            "--views",
            "head",
            "--output_dir",
            str(out),
            "--train_batch_size",
            "2",
            "--max_train_steps",
            "1",
        ]
    )
    assert rc == 0
    config = json.loads((out / "config.json").read_text())
    # no --resolution: the base's own side, UNet sample_size 8 x VAE scale 2
    assert config["resolution"] == 16
    cn = json.loads((out / "controlnet" / "config.json").read_text())
    assert cn["conditioning_embedding_out_channels"] == [16, 32]


def test_a_given_controlnet_of_another_scale_is_refused(
    base_2x, tiny_controlnet, phantom_prepared, tmp_path, capsys
):
    rc = train_controlnet.main(
        [
            "--pretrained_model_name_or_path",
            str(base_2x),
            "--controlnet_model_name_or_path",
            str(tiny_controlnet / "controlnet"),
            "--train_data",
            str(phantom_prepared),
            "--output_dir",
            str(tmp_path / "cn"),
            "--max_train_steps",
            "1",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "downsamples its conditioning 8x" in err and "2x" in err


def test_default_resolution_comes_from_the_base(tiny_base):
    from fusynth.diffusion.base import base_geometry, resolve_base

    geometry = base_geometry(resolve_base(str(tiny_base)))
    assert (geometry.sample_size, geometry.vae_scale_factor, geometry.resolution) == (8, 8, 64)


def test_conditioning_embedding_matches_the_vae_scale():
    from fusynth.diffusion.controlnet import conditioning_embedding_channels

    assert conditioning_embedding_channels(8) == (16, 32, 96, 256)
    assert conditioning_embedding_channels(2) == (16, 32)
    assert conditioning_embedding_channels(16) == (16, 32, 96, 256, 256)
