"""Write a diffusers pipeline as an A1111/CompVis single-file checkpoint.

The inverse of :mod:`fusynth.diffusion.single_file`: it maps diffusers' key names back to
the original LDM layout (``model.diffusion_model.``, ``first_stage_model.``,
``cond_stage_model.``), so stand-ins of the files users bring are built in their exact
format from any (tiny) pipeline.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch

from fusynth.diffusion.single_file import CLIP_PREFIX, OPEN_CLIP_PREFIX, UNET_PREFIX, VAE_PREFIX

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

    from fusynth.core.io import atomic_write_bytes

    path = Path(path)
    state = to_single_file(pipe, family)
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import save

        return atomic_write_bytes(path, save(state, {"format": "pt"}))
    buf = io.BytesIO()
    torch.save({"state_dict": state, "global_step": 0}, buf)
    return atomic_write_bytes(path, buf.getvalue())
