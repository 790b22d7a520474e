"""Single-file Stable Diffusion checkpoints (A1111/CompVis layout), offline.

``v1-5-pruned-emaonly.safetensors`` and friends hold the UNet, the VAE and the text encoder
in the original CompVis key layout (``model.diffusion_model.…``, ``first_stage_model.…``,
``cond_stage_model.…``) and no configs. diffusers' ``from_single_file`` converts them but
fetches the configs from the Hub unless it is given a local config folder. This module:

* ships the component configs of SD 1.x (SD 1.5's) and SD 2.x (SD 2.1's, v-prediction),
  materialised into a diffusers config folder under the fusynth cache (the tokenizer is
  built from the BPE file open-clip-torch ships, as the tiny base's is);
* tells the family from the keys (CLIP text encoder: SD 1.x; OpenCLIP: SD 2.x) and refuses
  what it cannot load (SDXL, inpainting, a UNet of another size without a config);
* takes a user's config instead: an LDM ``.yaml`` (``--original_config``, or A1111's
  ``<name>.yaml`` beside the checkpoint; its ``parameterization: "v"`` sets the prediction
  type) or a diffusers folder with the configs (``model_index.json``);
* converts the file once with ``StableDiffusionPipeline.from_single_file`` into a diffusers
  folder in the cache (keyed by the file's sha256 and the config), so training, generation,
  pairs and ControlNet load it exactly as they load any diffusers base;
* writes the single-file layout from a diffusers pipeline (:func:`to_single_file`): the
  mapping of diffusers' ``convert_diffusers_to_original_stable_diffusion`` script, for any
  number of UNet levels and layers per block, so the tiny base can stand in for a real
  checkpoint and a fusynth base can be used in A1111.

``.ckpt`` files are read with ``torch.load(weights_only=True)`` only: a pickle that needs
code to load is refused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from fusynth.core.errors import UserInputError

log = logging.getLogger(__name__)

#: File suffixes read as single-file checkpoints.
SUFFIXES = (".safetensors", ".ckpt")

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."  # SD 1.x: transformers' CLIPTextModel inside
OPEN_CLIP_PREFIX = "cond_stage_model.model."  # SD 2.x: OpenCLIP's text tower

_SCHEDULER = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
}
_VAE = {
    "_class_name": "AutoencoderKL",
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "scaling_factor": 0.18215,
}
_UNET = {
    "_class_name": "UNet2DConditionModel",
    "act_fn": "silu",
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "out_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
}
_TEXT = {
    "architectures": ["CLIPTextModel"],
    "model_type": "clip_text_model",
    "attention_dropout": 0.0,
    "dropout": 0.0,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": 77,
    "vocab_size": 49408,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "pad_token_id": 1,
}

#: The component configs of each family, as the Hub repos of SD 1.5 and SD 2.1 hold them.
FAMILIES: dict[str, dict[str, Any]] = {
    "sd1": {
        "description": "SD 1.x (SD 1.5's configs: 512 px, epsilon prediction)",
        "context_dim": 768,
        "unet": {**_UNET, "sample_size": 64, "attention_head_dim": 8, "cross_attention_dim": 768},
        "vae": {**_VAE, "sample_size": 512},
        "text_encoder": {
            **_TEXT,
            "hidden_act": "quick_gelu",
            "hidden_size": 768,
            "intermediate_size": 3072,
            "num_attention_heads": 12,
            "num_hidden_layers": 12,
            "projection_dim": 768,
        },
        "scheduler": {"_class_name": "PNDMScheduler", **_SCHEDULER, "skip_prk_steps": True},
        "pad_token": "<|endoftext|>",
    },
    "sd2": {
        "description": "SD 2.x (SD 2.1's configs: 768 px, v-prediction)",
        "context_dim": 1024,
        "unet": {
            **_UNET,
            "sample_size": 96,
            "attention_head_dim": [5, 10, 20, 20],
            "cross_attention_dim": 1024,
            "use_linear_projection": True,
            "upcast_attention": True,
        },
        "vae": {**_VAE, "sample_size": 768},
        "text_encoder": {
            **_TEXT,
            "hidden_act": "gelu",
            "hidden_size": 1024,
            "intermediate_size": 4096,
            "num_attention_heads": 16,
            # SD 2.x conditions on OpenCLIP's penultimate layer: the 24th is not used
            "num_hidden_layers": 23,
            "projection_dim": 512,
        },
        "scheduler": {
            "_class_name": "DDIMScheduler",
            **_SCHEDULER,
            "prediction_type": "v_prediction",
        },
        "pad_token": "!",
    },
}


def is_single_file(path: str | os.PathLike) -> bool:
    """True for an existing ``.safetensors``/``.ckpt`` file (not a folder)."""
    p = Path(path)
    return p.is_file() and p.suffix.lower() in SUFFIXES


# ----------------------------------------------------------------------------- reading


def read_checkpoint(path: str | os.PathLike, flag: str = "--pretrained_model_name_or_path"):
    """A single file's tensors (``.ckpt``: ``torch.load(weights_only=True)`` only).

    Returns:
        Key -> tensor, unwrapped from a ``state_dict`` entry as CompVis checkpoints have.

    Raises:
        UserInputError: unreadable, a pickle that needs code, or not a mapping of tensors.
    """
    path = Path(path)
    if path.suffix.lower() == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise UserInputError(
                f"{flag}: {path} is not a readable safetensors file ({exc})"
            ) from None
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a pickle with code, or a corrupt file
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserInputError(
                f"{flag}: {path} cannot be read as plain weights (torch.load weights_only: "
                f"{first}); convert it to .safetensors"
            ) from None
    while isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state:
        raise UserInputError(f"{flag}: {path} holds no state dict")
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def _shapes(path: Path, flag: str) -> dict[str, tuple[int, ...]]:
    """Key -> shape, without reading a safetensors file's tensors."""
    if path.suffix.lower() == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), "pt") as fh:
                return {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}  # noqa: SIM118
        except (SafetensorError, OSError, ValueError) as exc:
            raise UserInputError(
                f"{flag}: {path} is not a readable safetensors file ({exc})"
            ) from None
    return {k: tuple(v.shape) for k, v in read_checkpoint(path, flag).items()}


def detect_family(shapes: dict[str, tuple[int, ...]], path: Path, flag: str) -> str:
    """``sd1`` or ``sd2`` from a single file's keys.

    Raises:
        UserInputError: SDXL, inpainting, or not a Stable Diffusion checkpoint.
    """
    if any(k.startswith("conditioner.embedders.") for k in shapes):
        raise UserInputError(
            f"{flag}: {path} is an SDXL checkpoint; only SD 1.x and 2.x bases are supported"
        )
    conv_in = shapes.get(f"{UNET_PREFIX}input_blocks.0.0.weight")
    if conv_in is None or not any(k.startswith(VAE_PREFIX) for k in shapes):
        raise UserInputError(
            f"{flag}: {path} is not a Stable Diffusion checkpoint in the CompVis/A1111 layout "
            f"(no {UNET_PREFIX}… UNet and {VAE_PREFIX}… VAE keys)"
        )
    if conv_in[1] != 4:
        raise UserInputError(
            f"{flag}: {path} has a UNet with {conv_in[1]} input channels (an inpainting or "
            "depth model); only text-to-image SD 1.x/2.x checkpoints are supported"
        )
    if any(k.startswith(OPEN_CLIP_PREFIX) for k in shapes):
        return "sd2"
    if any(k.startswith(CLIP_PREFIX) for k in shapes):
        return "sd1"
    raise UserInputError(
        f"{flag}: {path} has no text encoder ({CLIP_PREFIX}… or {OPEN_CLIP_PREFIX}… keys)"
    )


def _check_fits(shapes: dict[str, tuple[int, ...]], family: str, path: Path, flag: str) -> None:
    """Refuse a file whose UNet is not the size of the shipped configs."""
    spec = FAMILIES[family]
    channels = shapes[f"{UNET_PREFIX}input_blocks.0.0.weight"][0]
    context = [v[-1] for k, v in shapes.items() if k.endswith("attn2.to_k.weight")]
    want = spec["unet"]["block_out_channels"][0]
    if channels != want or (context and context[0] != spec["context_dim"]):
        raise UserInputError(
            f"{flag}: {path} is {family}-like but its UNet ({channels} channels, context "
            f"{context[0] if context else '?'}) is not {spec['description']}'s ({want}, "
            f"{spec['context_dim']}); give its configs with --original_config (an LDM .yaml "
            "or a diffusers config folder)"
        )


# ----------------------------------------------------------------------------- configs


def config_folder(family: str) -> Path:
    """The shipped configs of ``family`` as a diffusers folder (no weights), built once
    under the fusynth cache."""
    from fusynth.core.io import atomic_dir
    from fusynth.data.phantom_cohort import cache_root
    from fusynth.diffusion.tiny import build_clip_tokenizer

    spec = FAMILIES[family]
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
    folder = cache_root() / "sd-configs" / f"{family}-{key}"
    if (folder / "model_index.json").is_file():
        return folder
    with atomic_dir(folder, overwrite=True) as tmp:
        index = {
            "_class_name": "StableDiffusionPipeline",
            "feature_extractor": [None, None],
            "safety_checker": [None, None],
            "requires_safety_checker": False,
            "scheduler": ["diffusers", spec["scheduler"]["_class_name"]],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"],
            "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"],
        }
        (tmp / "model_index.json").write_text(json.dumps(index, indent=2))
        for name, file in (
            ("unet", "config.json"),
            ("vae", "config.json"),
            ("text_encoder", "config.json"),
            ("scheduler", "scheduler_config.json"),
        ):
            (tmp / name).mkdir()
            (tmp / name / file).write_text(json.dumps(spec[name], indent=2))
        tokenizer = build_clip_tokenizer()
        tokenizer.pad_token = spec["pad_token"]
        tokenizer.save_pretrained(str(tmp / "tokenizer"))
    return folder


def _yaml_settings(path: Path, flag: str) -> dict[str, Any]:
    """What fusynth reads from an LDM yaml itself: the text encoder's family and the
    prediction type (diffusers reads the UNet and VAE shapes)."""
    from fusynth.core.config import load_yaml_mapping

    data = load_yaml_mapping(path, flag)
    params = (data.get("model") or {}).get("params") or {}
    unet = (params.get("unet_config") or {}).get("params") or {}
    if not unet:
        raise UserInputError(
            f"{flag}: {path} is not a Stable Diffusion LDM config (no model.params.unet_config)"
        )
    target = str((params.get("cond_stage_config") or {}).get("target", ""))
    family = "sd2" if "OpenCLIP" in target or unet.get("context_dim") == 1024 else "sd1"
    prediction = "v_prediction" if params.get("parameterization") == "v" else "epsilon"
    return {"family": family, "prediction_type": prediction}


def _configs_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(folder.rglob("*.json")):
        if f.name.endswith("index.json") and f.name != "model_index.json":
            continue  # weight-shard indexes are not configs
        h.update(str(f.relative_to(folder)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


# ----------------------------------------------------------------------------- converting


def convert_single_file(
    path: str | os.PathLike,
    original_config: str | os.PathLike | None = None,
    flag: str = "--pretrained_model_name_or_path",
) -> Path:
    """The diffusers folder of a single-file checkpoint, converted once into the cache.

    Args:
        path: the ``.safetensors``/``.ckpt`` file.
        original_config: an LDM ``.yaml`` or a diffusers config folder; by default A1111's
            ``<name>.yaml`` beside the file, else the shipped configs of the detected family.
        flag: the flag named in errors.

    Returns:
        A diffusers folder (``model_index.json``, weights in safetensors, float32).

    Raises:
        UserInputError: an unreadable or unsupported file, or configs that do not fit it.
    """
    from fusynth.core.io import atomic_dir, file_sha256
    from fusynth.data.phantom_cohort import cache_root

    path = Path(path)
    shapes = _shapes(path, flag)
    family = detect_family(shapes, path, flag)
    sidecar = path.with_suffix(".yaml")
    if original_config is None and sidecar.is_file():
        log.info("using %s beside the checkpoint as its config", sidecar.name)
        original_config = sidecar
    yaml_file = config_dir = None
    prediction = None
    if original_config is not None:
        original_config = Path(original_config)
        if original_config.is_dir():
            if not (original_config / "model_index.json").is_file():
                raise UserInputError(
                    f"--original_config: {original_config} is not a diffusers config folder "
                    "(no model_index.json)"
                )
            config_dir = original_config
        elif original_config.suffix.lower() in (".yaml", ".yml"):
            settings = _yaml_settings(original_config, "--original_config")
            yaml_file, prediction = original_config, settings["prediction_type"]
            config_dir = config_folder(settings["family"])
        else:
            raise UserInputError(
                f"--original_config: {original_config} is neither an LDM .yaml nor a "
                "diffusers config folder"
            )
        config_id = (
            hashlib.sha256(yaml_file.read_bytes()).hexdigest()
            if yaml_file
            else _configs_digest(config_dir)
        )
    else:
        _check_fits(shapes, family, path, flag)
        if family == "sd2":  # the weights do not say which SD 2 objective they were trained on
            log.warning(
                "%s: using SD 2.1's configs (768 px, v-prediction); for a 512-px epsilon "
                "SD 2 base give --original_config v2-inference.yaml",
                path.name,
            )
        config_dir = config_folder(family)
        config_id = _configs_digest(config_dir)
    digest = file_sha256(path)
    out = cache_root() / "single-file" / f"{path.stem}-{digest[:16]}-{config_id[:12]}"
    if (out / "model_index.json").is_file():
        return out
    log.info("converting %s (%s) into a diffusers folder in %s", path.name, family, out)
    pipe = _from_single_file(path, config_dir, yaml_file, flag)
    if prediction is not None:
        pipe.scheduler.register_to_config(prediction_type=prediction)
    with atomic_dir(out, overwrite=True) as tmp:
        pipe.save_pretrained(str(tmp), safe_serialization=True)
        (tmp / "fusynth_single_file.json").write_text(
            json.dumps(
                {
                    "source": str(path.resolve()),
                    "source_sha256": digest,
                    "family": family,
                    "config": str(original_config) if original_config else f"fusynth:{family}",
                },
                indent=2,
            )
        )
    return out


def _from_single_file(path: Path, config_dir: Path, yaml_file: Path | None, flag: str) -> Any:
    from diffusers import StableDiffusionPipeline

    kwargs: dict[str, Any] = {
        "config": str(config_dir),
        "local_files_only": True,
        "safety_checker": None,
        "feature_extractor": None,
        "requires_safety_checker": False,
        "torch_dtype": torch.float32,
    }
    if yaml_file is not None:
        kwargs["original_config"] = str(yaml_file)
    try:
        pipe = StableDiffusionPipeline.from_single_file(str(path), **kwargs)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserInputError(
            f"{flag}: cannot convert {path} with the configs of {yaml_file or config_dir} ({first})"
        ) from exc
    # Weights the configs did not cover stay on the meta device: a wrong config, refused.
    for name in ("unet", "vae", "text_encoder"):
        meta = [n for n, p in getattr(pipe, name).named_parameters() if p.is_meta]
        if meta:
            raise UserInputError(
                f"{flag}: {path} has no weights for {name}.{meta[0]} under the configs of "
                f"{yaml_file or config_dir} ({len(meta)} missing); is --original_config right?"
            )
    return pipe
