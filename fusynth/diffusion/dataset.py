"""The diffusion training set: images read from a prepared dataset, captions, and the
caches of VAE latents and text embeddings every step reuses.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fusynth.core.errors import UserInputError
from fusynth.data.schema import VIEWS
from fusynth.diffusion.config import TrainConfig

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- data


PACKING_CHANNELS = ("image", "mask")


def parse_packing(spec: str | None) -> tuple[str, str, str] | None:
    """``"image,image,mask"`` -> the source of each RGB channel (None: plain images)."""
    if spec is None:
        return None
    parts = tuple(p.strip() for p in str(spec).split(","))
    if (
        len(parts) != 3
        or any(p not in PACKING_CHANNELS for p in parts)
        or "mask" not in parts
        or "image" not in parts
    ):
        raise UserInputError(
            f"--packing: {spec!r} must name the source of each of the 3 channels, with at least one "
            "image and one mask, e.g. image,image,mask"
        )
    return parts  # type: ignore[return-value]


@dataclass
class TrainingSet:
    """Training images as model inputs, with their views and captions."""

    pixels: torch.Tensor  # [N, 3, R, R] float32 in [-1, 1]
    masks: np.ndarray | None  # [N, R, R] uint8 0/1 filled masks, when the method needs them
    caption_index: torch.Tensor  # [N] int64 index into ``captions``
    captions: list[str]  # distinct captions
    captions_by_view: dict[str, str | list[str]]
    views: list[str]
    n_subjects: int
    source: str


def caption_for(
    view: str, provenance: dict[str, Any], template: str, table: dict | None, where: str
) -> str:
    """A sample's caption: from ``--captions`` (``view: caption``) or the template, whose
    ``{view}`` and ``{trimester}`` come from the sample."""
    if table is not None:
        if view not in table:
            raise UserInputError(
                f"{where}: no caption for view {view!r} (found: {', '.join(map(str, table))})"
            )
        template = str(table[view])
    fields = {"view": view}
    if "{trimester}" in template:
        trimester = provenance.get("trimester")
        if trimester is None:
            raise UserInputError(
                f"--caption_template: uses {{trimester}} but a {view!r} sample has no trimester in its provenance"
            )
        fields["trimester"] = _TRIMESTER_WORDS.get(int(trimester), f"trimester {trimester}")
    return template.format(**fields)


_TRIMESTER_WORDS = {1: "first trimester", 2: "second trimester", 3: "third trimester"}


def load_training_set(
    config: TrainConfig, resolution: int, packing: str | None = None, need_masks: bool = False
) -> TrainingSet:
    """Load and preprocess the training images (pad to square unless ``center_crop``).

    Args:
        config: the run's settings (data, views, captions, crop).
        resolution: side of the square model input.
        packing: pack the image and its filled mask into the RGB channels, e.g.
            ``image,image,mask`` (the mask resized with nearest neighbour, 0 or 255).
        need_masks: every sample must have a filled mask (returned in ``masks``).

    Raises:
        UserInputError: missing data, views, masks, or masks that are outlines.
    """
    from PIL import Image

    from fusynth.core.config import load_yaml_mapping
    from fusynth.data.images import decode_image
    from fusynth.data.masks import is_outline
    from fusynth.data.schema import load_split, parse_data_spec
    from fusynth.data.transforms import square_resize

    if config.train_data is None:
        from fusynth.data.phantom_cohort import default_dataset

        spec = f"{default_dataset()}:{config.split}"
        log.warning("no --train_data: training on the built-in phantom (smoke data)")
    else:
        path, split = parse_data_spec(config.train_data)
        spec = f"{path}:{split or config.split}"
    ds = load_split(spec)
    present = sorted({VIEWS[v] for v in ds["view"]}, key=VIEWS.index)
    views = config.views or present
    for v in views:
        if v not in present:
            raise UserInputError(
                f"--views: no {v!r} samples in {spec} (views present: {', '.join(present)})"
            )
    keep = [i for i, v in enumerate(ds["view"]) if VIEWS[v] in views]
    if not keep:
        raise UserInputError(f"--train_data: {spec} has no samples")
    ds = ds.select(keep)
    packing = parse_packing(packing)
    need_masks = need_masks or packing is not None
    flag = "--packing" if packing is not None else "--train_data"
    masks = np.zeros((len(ds), resolution, resolution), dtype=np.uint8) if need_masks else None
    table = load_yaml_mapping(config.captions, "--captions") if config.captions else None
    pixels = np.empty((len(ds), 3, resolution, resolution), dtype=np.float32)
    caption_index = np.empty(len(ds), dtype=np.int64)
    captions: list[str] = []
    by_view: dict[str, list[str]] = {}
    for i, row in enumerate(ds):
        view = VIEWS[row["view"]]
        prov = json.loads(row["provenance"] or "{}")
        img = square_resize(decode_image(row["image"]), resolution, center_crop=config.center_crop)
        channels = {"image": img}
        if masks is not None:
            if row["mask"] is None:
                raise UserInputError(
                    f"{flag}: {spec} sample {i} ({row['subject_id']}) has no mask; this training "
                    "needs a dataset with masks (e.g. prepared from HC18)"
                )
            raw = decode_image(row["mask"])
            if is_outline(raw):
                raise UserInputError(
                    f"{flag}: {spec} sample {i} ({row['subject_id']}) has an outline, not a filled "
                    "mask; prepare the data with --mask_kind outline so masks are filled"
                )
            mask = square_resize(
                raw, resolution, config.center_crop, resample=Image.Resampling.NEAREST
            )
            masks[i] = mask > 0
            channels["mask"] = masks[i] * 255
        stack = [channels[c] for c in packing] if packing else [img] * 3
        pixels[i] = np.stack(stack).astype(np.float32) / 127.5 - 1.0
        caption = caption_for(
            view, prov, config.caption_template, table, config.captions or "--captions"
        )
        if caption not in captions:
            captions.append(caption)
        caption_index[i] = captions.index(caption)
        if caption not in by_view.setdefault(view, []):
            by_view[view].append(caption)
    return TrainingSet(
        pixels=torch.from_numpy(pixels),
        masks=masks,
        caption_index=torch.from_numpy(caption_index),
        captions=captions,
        captions_by_view={v: (c[0] if len(c) == 1 else c) for v, c in by_view.items()},
        views=views,
        n_subjects=len(set(ds["subject_id"])),
        source=spec,
    )


@dataclass
class LatentCache:
    """Latent distributions of every training image (and its mirror image)."""

    mean: torch.Tensor  # [N, F, C, h, w]; F = 2 with random_flip, else 1
    std: torch.Tensor


@torch.no_grad()
def encode_images(vae: Any, pixels: torch.Tensor, flip: bool, batch: int = 8) -> LatentCache:
    """Run the frozen VAE encoder once per image (and once per mirrored image)."""
    means, stds = [], []
    dtype, device = vae.dtype, vae.device
    variants = [pixels, torch.flip(pixels, dims=[-1])] if flip else [pixels]
    for variant in variants:
        m, s = [], []
        for start in range(0, len(variant), batch):
            dist = vae.encode(variant[start : start + batch].to(device, dtype)).latent_dist
            m.append(dist.mean.float().cpu())
            s.append(dist.std.float().cpu())
        means.append(torch.cat(m))
        stds.append(torch.cat(s))
    return LatentCache(mean=torch.stack(means, dim=1), std=torch.stack(stds, dim=1))


def tokenize(tokenizer: Any, captions: list[str]) -> torch.Tensor:
    """``[N, 77]`` token ids, padded to the tokenizer's maximum length."""
    return tokenizer(
        captions,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids


def text_embeddings(
    text_encoder: Any, ids: torch.Tensor, clip_skip: int | None = None
) -> torch.Tensor:
    """The UNet's text conditioning, as diffusers' pipelines compute it: the last hidden
    state, or with ``clip_skip`` the output of ``clip_skip`` layers before the last,
    passed through the final layer norm (A1111's "clip skip 2" is ``clip_skip=1``).

    ``text_encoder`` may be wrapped (DDP): its forward is what runs, so gradients sync.
    """
    if not clip_skip:
        return text_encoder(ids)[0]
    hidden = text_encoder(ids, output_hidden_states=True).hidden_states[-(clip_skip + 1)]
    inner = getattr(text_encoder, "module", text_encoder)
    # transformers 5 dropped CLIPTextModel.text_model (where diffusers' pipelines look)
    return getattr(inner, "text_model", inner).final_layer_norm(hidden)


@torch.no_grad()
def prompt_embeds_for(pipe: Any, prompts: list[str], clip_skip: int) -> torch.Tensor:
    """A pipeline's ``prompt_embeds`` for ``prompts`` with ``clip_skip``, computed here
    rather than by the pipeline's own ``clip_skip`` (which reads ``text_model``, gone in
    transformers 5). As in diffusers, negative prompts keep the last layer."""
    ids = tokenize(pipe.tokenizer, prompts).to(pipe.text_encoder.device)
    return text_embeddings(pipe.text_encoder, ids, clip_skip).to(pipe.unet.dtype)


@torch.no_grad()
def encode_captions(
    text_encoder: Any, ids: torch.Tensor, clip_skip: int | None = None
) -> torch.Tensor:
    """Run the frozen text encoder once per caption: ``[V, 77, D]``."""
    return text_embeddings(text_encoder, ids.to(text_encoder.device), clip_skip).float().cpu()
