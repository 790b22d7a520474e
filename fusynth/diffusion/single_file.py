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
import re
from pathlib import Path
from typing import Any

import torch

from fusynth.errors import UserInputError

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
    from fusynth.data.phantom_cohort import cache_root
    from fusynth.diffusion.tiny import build_clip_tokenizer
    from fusynth.io import atomic_dir

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
    from fusynth.config import load_yaml_mapping

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
    from fusynth.data.phantom_cohort import cache_root
    from fusynth.io import atomic_dir, file_sha256

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


# ----------------------------------------------------------------------------- writing


def _unet_map(keys: list[str]) -> dict[str, str]:
    """diffusers UNet key -> CompVis key, for any number of levels and layers per block."""
    levels = 1 + max(int(k.split(".")[1]) for k in keys if k.startswith("down_blocks."))
    per_block = 1 + max(
        int(k.split(".")[3]) for k in keys if k.startswith("down_blocks.0.resnets.")
    )
    down_attn = [any(k.startswith(f"down_blocks.{i}.attentions.") for k in keys) for i in range(levels)]  # fmt: skip
    up_attn = [any(k.startswith(f"up_blocks.{i}.attentions.") for k in keys) for i in range(levels)]  # fmt: skip
    stride = per_block + 1
    layer: list[tuple[str, str]] = []  # (compvis prefix, diffusers prefix)
    for i in range(levels):
        for j in range(per_block):
            layer.append((f"input_blocks.{stride * i + j + 1}.0.", f"down_blocks.{i}.resnets.{j}."))
            if down_attn[i]:
                layer.append(
                    (f"input_blocks.{stride * i + j + 1}.1.", f"down_blocks.{i}.attentions.{j}.")
                )
        for j in range(per_block + 1):
            layer.append((f"output_blocks.{stride * i + j}.0.", f"up_blocks.{i}.resnets.{j}."))
            if up_attn[i]:
                layer.append(
                    (f"output_blocks.{stride * i + j}.1.", f"up_blocks.{i}.attentions.{j}.")
                )
        if i < levels - 1:
            layer.append(
                (f"input_blocks.{stride * (i + 1)}.0.op.", f"down_blocks.{i}.downsamplers.0.conv.")
            )
            layer.append(
                (
                    f"output_blocks.{stride * i + per_block}.{2 if up_attn[i] else 1}.",
                    f"up_blocks.{i}.upsamplers.0.",
                )
            )
    layer.append(("middle_block.1.", "mid_block.attentions.0."))
    for j in range(2):
        layer.append((f"middle_block.{2 * j}.", f"mid_block.resnets.{j}."))
    resnet = [
        ("in_layers.0", "norm1"),
        ("in_layers.2", "conv1"),
        ("out_layers.0", "norm2"),
        ("out_layers.3", "conv2"),
        ("emb_layers.1", "time_emb_proj"),
        ("skip_connection", "conv_shortcut"),
    ]
    exact = {
        "time_embedding.linear_1.weight": "time_embed.0.weight",
        "time_embedding.linear_1.bias": "time_embed.0.bias",
        "time_embedding.linear_2.weight": "time_embed.2.weight",
        "time_embedding.linear_2.bias": "time_embed.2.bias",
        "conv_in.weight": "input_blocks.0.0.weight",
        "conv_in.bias": "input_blocks.0.0.bias",
        "conv_norm_out.weight": "out.0.weight",
        "conv_norm_out.bias": "out.0.bias",
        "conv_out.weight": "out.2.weight",
        "conv_out.bias": "out.2.bias",
    }
    out = {}
    for k in keys:
        if k in exact:
            out[k] = exact[k]
            continue
        v = k
        if "resnets" in k:
            for sd, hf in resnet:
                v = v.replace(hf, sd)
        for sd, hf in layer:
            v = v.replace(hf, sd)
        out[k] = v
    return out


def _vae_map(keys: list[str]) -> dict[str, str]:
    levels = 1 + max(int(k.split(".")[2]) for k in keys if k.startswith("encoder.down_blocks."))
    per_block = 1 + max(
        int(k.split(".")[4]) for k in keys if k.startswith("encoder.down_blocks.0.resnets.")
    )
    pairs = [("nin_shortcut", "conv_shortcut"), ("norm_out", "conv_norm_out")]
    pairs.append(("mid.attn_1.", "mid_block.attentions.0."))
    for i in range(levels):
        for j in range(per_block):
            pairs.append((f"encoder.down.{i}.block.{j}.", f"encoder.down_blocks.{i}.resnets.{j}."))
        if i < levels - 1:
            pairs.append((f"down.{i}.downsample.", f"down_blocks.{i}.downsamplers.0."))
            pairs.append((f"up.{levels - 1 - i}.upsample.", f"up_blocks.{i}.upsamplers.0."))
        for j in range(per_block + 1):
            pairs.append(
                (f"decoder.up.{levels - 1 - i}.block.{j}.", f"decoder.up_blocks.{i}.resnets.{j}.")
            )
    for i in range(2):
        pairs.append((f"mid.block_{i + 1}.", f"mid_block.resnets.{i}."))
    attn = [
        ("norm.", "group_norm."),
        ("q.", "to_q."),
        ("k.", "to_k."),
        ("v.", "to_v."),
        ("proj_out.", "to_out.0."),
    ]
    out = {}
    for k in keys:
        v = k
        for sd, hf in pairs:
            v = v.replace(hf, sd)
        if "attentions" in k:
            for sd, hf in attn:
                v = v.replace(hf, sd)
        out[k] = v
    return out


def _open_clip_state(text_sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers' CLIPTextModel keys -> OpenCLIP's text tower (SD 2.x), q/k/v fused."""
    sd = {k.removeprefix("text_model."): v for k, v in text_sd.items()}
    out = {
        "token_embedding.weight": sd.pop("embeddings.token_embedding.weight"),
        "positional_embedding": sd.pop("embeddings.position_embedding.weight"),
        "ln_final.weight": sd.pop("final_layer_norm.weight"),
        "ln_final.bias": sd.pop("final_layer_norm.bias"),
    }
    hidden = out["token_embedding.weight"].shape[1]
    # SD 2.x files carry OpenCLIP's projection; the UNet never uses it
    out["text_projection"] = torch.eye(hidden)
    layers = {int(k.split(".")[2]) for k in sd if k.startswith("encoder.layers.")}
    names = {
        "self_attn.out_proj": "attn.out_proj",
        "layer_norm1": "ln_1",
        "layer_norm2": "ln_2",
        "mlp.fc1": "mlp.c_fc",
        "mlp.fc2": "mlp.c_proj",
    }
    for i in sorted(layers):
        src, dst = f"encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for part in ("weight", "bias"):
            out[f"{dst}attn.in_proj_{part}"] = torch.cat(
                [sd.pop(f"{src}self_attn.{p}_proj.{part}") for p in "qkv"]
            )
            for hf, oc in names.items():
                out[f"{dst}{oc}.{part}"] = sd.pop(f"{src}{hf}.{part}")
    sd.pop("embeddings.position_ids", None)
    if sd:
        raise ValueError(f"text encoder keys left unconverted: {sorted(sd)[:3]}")
    return out


def to_single_file(pipe: Any, family: str | None = None) -> dict[str, torch.Tensor]:
    """A diffusers SD pipeline's weights in the CompVis/A1111 single-file layout.

    Args:
        pipe: a ``StableDiffusionPipeline`` (or anything with ``unet``, ``vae`` and
            ``text_encoder``).
        family: ``sd1`` (CLIP text encoder under ``cond_stage_model.transformer.``) or
            ``sd2`` (OpenCLIP layout under ``cond_stage_model.model.``); by default ``sd2``
            when the UNet uses linear projections, as SD 2.x does.

    Returns:
        Key -> tensor (contiguous), ready for ``safetensors.torch.save_file``.
    """
    unet = {k: v.detach() for k, v in pipe.unet.state_dict().items()}
    if family is None:
        family = "sd2" if pipe.unet.config.get("use_linear_projection") else "sd1"
    out = {UNET_PREFIX + v: unet[k] for k, v in _unet_map(list(unet)).items()}
    vae = {k: v.detach() for k, v in pipe.vae.state_dict().items()}
    for k, v in _vae_map(list(vae)).items():
        t = vae[k]
        if re.search(r"mid\.attn_1\.(q|k|v|proj_out)\.weight$", v) and t.ndim == 2:
            t = t.reshape(*t.shape, 1, 1)  # CompVis' VAE attention uses 1x1 convolutions
        out[VAE_PREFIX + v] = t
    text = {k: v.detach() for k, v in pipe.text_encoder.state_dict().items()}
    if family == "sd2":
        out.update({OPEN_CLIP_PREFIX + k: v for k, v in _open_clip_state(text).items()})
    else:
        for k, v in text.items():
            if k.endswith("position_ids"):
                continue
            key = k if k.startswith("text_model.") else f"text_model.{k}"
            out[CLIP_PREFIX + key] = v
    return {k: v.contiguous() for k, v in out.items()}


def save_single_file(pipe: Any, path: str | os.PathLike, family: str | None = None) -> Path:
    """Write :func:`to_single_file` as ``.safetensors`` or ``.ckpt`` (a plain
    ``{"state_dict": …}`` that ``torch.load(weights_only=True)`` reads), atomically."""
    import io

    from fusynth.io import atomic_write_bytes

    path = Path(path)
    state = to_single_file(pipe, family)
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import save

        return atomic_write_bytes(path, save(state, {"format": "pt"}))
    buf = io.BytesIO()
    torch.save({"state_dict": state, "global_step": 0}, buf)
    return atomic_write_bytes(path, buf.getvalue())
