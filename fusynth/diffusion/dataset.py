"""The diffusion training set: images read from a prepared dataset, captions, and the
caches of VAE latents and text embeddings every step reuses.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
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


class TrainingImages(torch.utils.data.Dataset):
    """The training pictures, decoded one at a time (memory flat in the dataset size).

    Item ``i`` is ``{"pixels": [3, R, R] float32 in [-1, 1], "mask": [R, R] uint8 0/1}``
    (an empty mask when masks are not needed). Picklable, so a ``DataLoader`` can decode
    in worker processes.
    """

    def __init__(
        self,
        ds: Any,
        resolution: int,
        center_crop: bool,
        packing: tuple[str, str, str] | None,
        need_masks: bool,
    ) -> None:
        self.ds = ds
        self.resolution = resolution
        self.center_crop = center_crop
        self.packing = packing
        self.need_masks = need_masks

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        from PIL import Image

        from fusynth.data.images import decode_image
        from fusynth.data.transforms import square_resize

        row = self.ds[int(i)]
        r = self.resolution
        img = square_resize(decode_image(row["image"]), r, center_crop=self.center_crop)
        channels = {"image": img}
        mask = np.zeros((0, 0), dtype=np.uint8)
        if self.need_masks:
            raw = decode_image(row["mask"])
            resized = square_resize(raw, r, self.center_crop, resample=Image.Resampling.NEAREST)
            mask = (resized > 0).astype(np.uint8)
            channels["mask"] = mask * 255
        stack = [channels[c] for c in self.packing] if self.packing else [img] * 3
        pixels = np.stack(stack).astype(np.float32) / 127.5 - 1.0
        return {"pixels": torch.from_numpy(pixels), "mask": torch.from_numpy(mask)}


@dataclass
class TrainingSet:
    """The training images (decoded on demand), with their views and captions."""

    images: TrainingImages
    caption_index: torch.Tensor  # [N] int64 index into ``captions``
    captions: list[str]  # distinct captions
    captions_by_view: dict[str, str | list[str]]
    views: list[str]
    n_subjects: int
    source: str
    #: ``[N, R, R]`` uint8 0/1 filled masks, when the method needs them: filled in by
    #: :func:`cache_latents` (on disk, like the latents).
    masks: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.images)

    @property
    def pixels(self) -> torch.Tensor:
        """Every picture at once, ``[N, 3, R, R]``: for comparisons with the streamed
        path (benchmarks); training never holds them all."""
        return torch.stack([self.images[i]["pixels"] for i in range(len(self.images))])


def caption_for(
    view: str,
    provenance: dict[str, Any],
    template: str,
    table: dict | None,
    where: str,
    row: dict[str, Any] | None = None,
) -> str:
    """A sample's caption: from ``--captions`` (``view: caption``) or the template, whose
    ``{view}`` and ``{trimester}`` come from the sample and any other field from its
    schema column in ``row`` with a format spec if wanted (clinical-report-style
    prompts: ``"fetal head, HC {head_circumference_mm:.0f} mm"``).

    Raises:
        UserInputError: a field that is no schema column, or a sample without its value.
    """
    import string

    if table is not None:
        if view not in table:
            raise UserInputError(
                f"{where}: no caption for view {view!r} (found: {', '.join(map(str, table))})"
            )
        template = str(table[view])
    fields: dict[str, Any] = {"view": view}
    if "{trimester" in template:
        trimester = provenance.get("trimester")
        if trimester is None:
            raise UserInputError(
                f"--caption_template: uses {{trimester}} but a {view!r} sample has no trimester in its provenance"
            )
        fields["trimester"] = _TRIMESTER_WORDS.get(int(trimester), f"trimester {trimester}")
    try:
        names = {f for _, f, _, _ in string.Formatter().parse(template) if f}
    except ValueError as exc:
        raise UserInputError(
            f"--caption_template: {template!r} is not a valid template ({exc})"
        ) from exc
    for name in sorted(names - set(fields)):
        usable = sorted(k for k in (row or {}) if k not in ("image", "mask", "provenance"))
        if row is None or name not in usable:
            raise UserInputError(
                f"--caption_template: {{{name}}} is not a schema column "
                f"(use view, trimester{''.join(', ' + k for k in usable if k != 'view')})"
            )
        if row[name] is None:
            raise UserInputError(
                f"--caption_template: uses {{{name}}} but a {view!r} sample "
                f"({row.get('subject_id')}) has no {name}"
            )
        fields[name] = row[name]
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
    from fusynth.core.config import load_yaml_mapping
    from fusynth.data.schema import load_split, parse_data_spec

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
    if need_masks:
        _check_masks(ds, spec, flag)
    table = load_yaml_mapping(config.captions, "--captions") if config.captions else None
    caption_index = np.empty(len(ds), dtype=np.int64)
    captions: list[str] = []
    by_view: dict[str, list[str]] = {}
    # Only the small columns (a caption template may name any): images are decoded
    # later, a batch at a time.
    small = ds.remove_columns([c for c in ("image", "mask") if c in ds.column_names])
    for i, row in enumerate(small):
        view = VIEWS[row["view"]]
        prov = json.loads(row["provenance"] or "{}")
        caption = caption_for(
            view, prov, config.caption_template, table, config.captions or "--captions", row
        )
        if caption not in captions:
            captions.append(caption)
        caption_index[i] = captions.index(caption)
        if caption not in by_view.setdefault(view, []):
            by_view[view].append(caption)
    return TrainingSet(
        images=TrainingImages(ds, resolution, config.center_crop, packing, need_masks),
        caption_index=torch.from_numpy(caption_index),
        captions=captions,
        captions_by_view={v: (c[0] if len(c) == 1 else c) for v, c in by_view.items()},
        views=views,
        n_subjects=len(set(ds["subject_id"])),
        source=spec,
    )


def _check_masks(ds: Any, spec: str, flag: str) -> None:
    """Every sample has a filled mask (one mask decoded at a time), before any model loads."""
    from fusynth.data.images import decode_image
    from fusynth.data.masks import is_outline

    rows = ds.select_columns(["mask", "subject_id"])
    for i, row in enumerate(rows):
        if row["mask"] is None:
            raise UserInputError(
                f"{flag}: {spec} sample {i} ({row['subject_id']}) has no mask; this training "
                "needs a dataset with masks (e.g. prepared from HC18)"
            )
        if is_outline(decode_image(row["mask"])):
            raise UserInputError(
                f"{flag}: {spec} sample {i} ({row['subject_id']}) has an outline, not a filled "
                "mask; prepare the data with --mask_kind outline so masks are filled"
            )


@dataclass
class LatentCache:
    """Latent distributions of every training image (and its mirror image); from
    :func:`cache_latents` the tensors are views of files on disk (``np.memmap``), so
    indexing a batch reads only that batch."""

    mean: torch.Tensor  # [N, F, C, h, w]; F = 2 with random_flip, else 1
    std: torch.Tensor


@torch.no_grad()
def cache_latents(
    vae: Any,
    data: TrainingSet,
    flip: bool,
    folder: str | Path,
    num_workers: int = 0,
    batch: int = 8,
) -> LatentCache:
    """Stream the training pictures through the frozen VAE encoder once (and once
    mirrored), writing latent means and stds (and the masks, when needed) to files in
    ``folder``; memory stays flat in the dataset size.

    Args:
        vae: the frozen ``AutoencoderKL`` (its device and dtype are used).
        data: the training set; its ``masks`` are set to the on-disk mask array.
        flip: also encode the mirror images (``--random_flip``).
        folder: an existing, empty folder for the cache files.
        num_workers: ``DataLoader`` processes decoding images (``--dataloader_num_workers``).
        batch: images per VAE call (the same batching as :func:`encode_images`, so the
            latents are bit-identical).
    """
    folder = Path(folder)
    n, variants = len(data), 2 if flip else 1
    loader = torch.utils.data.DataLoader(
        data.images, batch_size=batch, shuffle=False, num_workers=num_workers
    )
    mean = std = masks = None
    dtype, device = vae.dtype, vae.device
    start = 0
    for item in loader:
        pixels = item["pixels"]
        k = len(pixels)
        for f in range(variants):
            x = torch.flip(pixels, dims=[-1]) if f else pixels
            dist = vae.encode(x.to(device, dtype)).latent_dist
            m, s = dist.mean.float().cpu().numpy(), dist.std.float().cpu().numpy()
            if mean is None:
                shape = (n, variants, *m.shape[1:])
                mean = np.lib.format.open_memmap(folder / "mean.npy", "w+", np.float32, shape)
                std = np.lib.format.open_memmap(folder / "std.npy", "w+", np.float32, shape)
            mean[start : start + k, f] = m
            std[start : start + k, f] = s
        if data.images.need_masks:
            if masks is None:
                r = data.images.resolution
                masks = np.lib.format.open_memmap(folder / "masks.npy", "w+", np.uint8, (n, r, r))
            masks[start : start + k] = item["mask"].numpy()
        start += k
    for array in (mean, std, masks):
        if array is not None:
            array.flush()
    data.masks = masks
    return LatentCache(mean=torch.from_numpy(mean), std=torch.from_numpy(std))


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
