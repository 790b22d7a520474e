"""A tiny Stable-Diffusion-style base, built from config, for offline smoke runs.

It has SD 1.x's layout (UNet2DConditionModel with cross-attention, an AutoencoderKL with
8x downsampling and 4 latent channels, a CLIP text encoder and the real CLIP BPE
tokenizer) at a few million parameters and random weights. It is saved as an ordinary
diffusers folder and loaded by the same code as real weights. It generates noise-like
images: it is a smoke model, for testing the pipeline, not for results.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from functools import lru_cache
from pathlib import Path

import torch

from fusynth import __version__
from fusynth.core.io import atomic_dir

#: Description that every log and card uses for the tiny base.
SMOKE_NOTE = (
    "tiny random-init smoke base (fusynth.diffusion.tiny): it exercises the pipeline "
    "offline and generates noise-like images; give --pretrained_model_name_or_path for a "
    "real model"
)

TINY_CONFIG = {
    "unet": {
        # 8 latents x the VAE's 8x: the smoke base's native (and default) side is 64 px
        "sample_size": 8,
        "in_channels": 4,
        "out_channels": 4,
        "block_out_channels": (32, 64),
        "layers_per_block": 1,
        "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
        "cross_attention_dim": 64,
        "attention_head_dim": 8,
        "norm_num_groups": 8,
    },
    "vae": {
        "in_channels": 3,
        "out_channels": 3,
        "latent_channels": 4,
        "block_out_channels": (16, 32, 32, 32),
        "down_block_types": ("DownEncoderBlock2D",) * 4,
        "up_block_types": ("UpDecoderBlock2D",) * 4,
        "layers_per_block": 1,
        "norm_num_groups": 8,
        "sample_size": 128,
    },
    "text_encoder": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": 77,
        "vocab_size": 49408,
        "projection_dim": 64,
    },
}


#: Stable Diffusion 1.5's architecture (random weights): for benchmarks that need a
#: model of the real size where the weights cannot be downloaded.
SD15_CONFIG = {
    "unet": {
        "sample_size": 64,
        "in_channels": 4,
        "out_channels": 4,
        "block_out_channels": (320, 640, 1280, 1280),
        "layers_per_block": 2,
        "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        "cross_attention_dim": 768,
        "attention_head_dim": 8,
    },
    "vae": {
        "in_channels": 3,
        "out_channels": 3,
        "latent_channels": 4,
        "block_out_channels": (128, 256, 512, 512),
        "down_block_types": ("DownEncoderBlock2D",) * 4,
        "up_block_types": ("UpDecoderBlock2D",) * 4,
        "layers_per_block": 2,
        "sample_size": 512,
    },
    "text_encoder": {
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "max_position_embeddings": 77,
        "vocab_size": 49408,
        "projection_dim": 768,
        "hidden_act": "quick_gelu",
    },
}
CONFIGS = {"tiny": TINY_CONFIG, "sd15": SD15_CONFIG}


@lru_cache(maxsize=1)
def clip_bpe_files() -> tuple[dict[str, int], list[str]]:
    """CLIP's vocabulary and merges, rebuilt from the BPE file open-clip-torch ships.

    This is how CLIP's own tokenizer derives them: 256 byte tokens, the same with the
    end-of-word mark, one token per merge, then the two special tokens (49,408 in all).

    Returns:
        ``(vocab, merges)`` as ``transformers.CLIPTokenizer`` files want them.
    """
    import open_clip

    path = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        lines = fh.read().split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]
    byte_chars = list(_bytes_to_unicode().values())
    tokens = byte_chars + [c + "</w>" for c in byte_chars]
    tokens += ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, merges


def _bytes_to_unicode() -> dict[int, str]:
    # GPT-2/CLIP byte-level mapping: printable bytes map to themselves, the rest to
    # code points from 256 upwards, so every byte has a visible, non-space character.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


def build_clip_tokenizer():
    """CLIP's tokenizer (``transformers.CLIPTokenizer``), built offline.

    Token ids match OpenAI CLIP's: ``"a photo"`` -> ``[49406, 320, 1125, 49407]``.
    """
    from transformers import CLIPTokenizer

    vocab, merges = clip_bpe_files()
    return CLIPTokenizer(
        vocab=dict(vocab), merges=[tuple(m.split()) for m in merges], model_max_length=77
    )


def build_tiny_pipeline(seed: int = 0, size: str = "tiny"):
    """Build a random-init SD-style ``StableDiffusionPipeline``.

    Args:
        seed: weight initialisation seed.
        size: ``tiny`` (the smoke base) or ``sd15`` (SD 1.5's architecture).

    Returns:
        The pipeline (no safety checker: there is nothing to check in a smoke model).
    """
    from diffusers import (
        AutoencoderKL,
        DDPMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CONFIGS[size]
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**config["unet"])
    vae = AutoencoderKL(**config["vae"])
    text_encoder = CLIPTextModel(CLIPTextConfig(**config["text_encoder"]))
    tokenizer = build_clip_tokenizer()
    scheduler = DDPMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        steps_offset=1,
        clip_sample=False,
    )
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def save_tiny_base(
    out: str | os.PathLike, seed: int = 0, overwrite: bool = False, size: str = "tiny"
) -> Path:
    """Build a random-init base (``tiny`` or ``sd15``) and save it as a diffusers folder
    (atomically), marked as a smoke model."""
    with atomic_dir(out, overwrite=overwrite, kind="tiny-base") as tmp:
        build_tiny_pipeline(seed, size).save_pretrained(tmp, safe_serialization=True)
        (Path(tmp) / "fusynth_smoke_model.json").write_text(
            json.dumps(
                {"note": SMOKE_NOTE, "size": size, "seed": seed, "fusynth_version": __version__},
                indent=2,
            )
        )
    return Path(out)


def default_base() -> Path:
    """The tiny base's folder, built once under the fusynth cache."""
    from fusynth.data.phantom_cohort import cache_root

    key = hashlib.sha256(json.dumps([__version__, TINY_CONFIG], default=list).encode()).hexdigest()[
        :12
    ]
    path = cache_root() / f"tiny-sd-{key}"
    if not (path / "model_index.json").is_file():
        save_tiny_base(path, overwrite=True)
    return path


def is_smoke_model(path: str | os.PathLike) -> bool:
    """True when ``path`` is a tiny smoke base saved by :func:`save_tiny_base`."""
    return (Path(path) / "fusynth_smoke_model.json").is_file()
