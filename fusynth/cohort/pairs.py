"""Head image/mask pairs: the packed method and the ControlNet method behind one request.

* ``packed`` (the seed method): a LoRA trained on pictures packing ``[image, image,
  mask]`` generates such pictures; the image is the mean of the image channels and the
  mask comes out of the mask channel through :func:`fusynth.data.masks.extract_head_mask`
  (threshold, largest component, ellipse fit, fill). A sample whose fit is poor is
  redrawn with a new seed, up to ``max_attempts`` times; samples that never pass are
  left out and counted. With ``--masks_from`` the packed picture starts from the given
  mask (img2img at ``strength``), which steers the head's shape and size.
* ``controlnet``: a ControlNet draws an image for a given mask, so the pair is right by
  construction; masks come from a dataset (``--masks_from DIR[:split]``) or from head
  ellipses sampled from a distribution fitted to the training masks (``ellipse``).

Both write through :class:`fusynth.cohort.writer.CohortWriter`, so sharding, per-sample
seeds, resume and multi-process behaviour are those of text-to-image cohorts.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from fusynth import __version__
from fusynth.cohort.request import SamplingRequest
from fusynth.cohort.text2img import write_previews
from fusynth.cohort.writer import CohortResult, iter_batches, open_cohort, write_cohort
from fusynth.core.errors import UserInputError, suggest
from fusynth.data.images import encode_png
from fusynth.data.schema import provenance_json
from fusynth.diffusion.config import TrainedAdapter

log = logging.getLogger(__name__)

METHODS = ("packed", "controlnet")
ELLIPSE = "ellipse"
#: ``--hc_mm real``: each head's HC (and spacing) drawn from a real training head.
REAL_HC = "real"
DEFAULT_PAIR_PROMPT = "an ultrasound image of the fetal head"


def attempt_seed(cohort_seed: int, index: int, attempt: int) -> int:
    """Seed of attempt ``attempt`` at sample ``index``."""
    state = np.random.SeedSequence([cohort_seed, index, attempt]).generate_state(2)
    return int(state[0]) << 32 | int(state[1])


@dataclass(kw_only=True)
class PairsRequest(SamplingRequest):
    """Everything ``fusynth generate pairs`` takes."""

    method: str
    adapter: str
    n: int
    masks_from: str | None = None
    prompt: str | None = None
    scheduler: str = "unipc"
    steps: int = 30
    lora_scale: float = 0.9
    conditioning: str | None = None
    conditioning_scale: float = 1.0
    packing: str | None = None
    strength: float = 0.75
    threshold: int = 180
    max_residual: float = 0.15
    max_attempts: int = 4
    group: str | None = None
    # "LO,HI" (uniform), one value, or "real" (drawn from the adapter's training heads):
    # ellipse heads of that HC
    hc_mm: str | None = None
    hc_pixel_spacing_mm: float | None = None  # mm per pixel of the generated frames
    positive_fields: ClassVar[tuple[str, ...]] = ("max_attempts",)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise UserInputError(
                f"--method: {self.method!r} is not one of {', '.join(METHODS)}{suggest(self.method, METHODS)}"
            )
        if self.n <= 0:
            raise UserInputError(f"--n: a cohort needs at least one pair, got {self.n}")
        super().__post_init__()
        if self.method == "controlnet" and self.masks_from is None:
            raise UserInputError(
                "--masks_from: --method controlnet needs masks: a prepared DIR[:split] or 'ellipse'"
            )
        if not 0 < self.strength <= 1:
            raise UserInputError(f"--strength: must be in (0, 1], got {self.strength}")
        if self.method == "packed" and self.masks_from and int(self.steps * self.strength) < 1:
            raise UserInputError(
                f"--strength: {self.strength} of --steps {self.steps} runs no denoising step; raise either"
            )
        if not 0 < self.threshold < 256:
            raise UserInputError(f"--threshold: must be in 1..255, got {self.threshold}")
        if self.hc_mm is not None:
            self.hc_range()
            if self.masks_from != ELLIPSE:
                raise UserInputError("--hc_mm: draws ellipse heads; give --masks_from ellipse")
            spacing = self.hc_pixel_spacing_mm
            if spacing is not None and not spacing > 0:
                raise UserInputError(f"--hc_pixel_spacing_mm: must be positive, got {spacing}")
            if spacing is None and self.hc_mm != REAL_HC:
                raise UserInputError(
                    "--hc_pixel_spacing_mm: --hc_mm needs the mm per pixel of the generated frames"
                )
        elif self.hc_pixel_spacing_mm is not None:
            raise UserInputError("--hc_pixel_spacing_mm: only with --hc_mm")

    def hc_range(self) -> tuple[float, float] | str | None:
        """``--hc_mm`` as ``(low, high)`` in mm (equal for one value), ``"real"``, or None."""
        if self.hc_mm is None or self.hc_mm == REAL_HC:
            return self.hc_mm
        try:
            parts = [float(x) for x in str(self.hc_mm).split(",")]
        except ValueError:
            parts = []
        if len(parts) not in (1, 2) or min(parts) <= 0 or parts[0] > parts[-1]:
            raise UserInputError(f"--hc_mm: give MM, LOW,HIGH in mm or 'real', got {self.hc_mm!r}")
        return parts[0], parts[-1]


def adapter_config(req: PairsRequest) -> TrainedAdapter:
    """The adapter's training config, checked against the requested method.

    Raises:
        UserInputError: not a fusynth training output, or trained for another method,
            packing or conditioning than requested.
    """
    folder = Path(req.adapter)
    cfg = TrainedAdapter.read(folder, "--adapter", required=True)
    trained = cfg.method
    if req.method == "packed":
        if trained != "lora" or not cfg.packing:
            raise UserInputError(
                f"--adapter: {folder} was trained as {trained} with packing {cfg.packing}; "
                "--method packed needs a LoRA trained with --packing"
            )
        if req.packing and req.packing != cfg.packing:
            raise UserInputError(
                f"--packing: {folder} was trained with packing {cfg.packing}, not {req.packing}"
            )
        if "mask" not in cfg.packing.split(","):
            raise UserInputError(f"--adapter: {folder} packs no mask channel ({cfg.packing})")
    else:
        if trained != "controlnet":
            raise UserInputError(
                f"--adapter: {folder} is a {trained} output; --method controlnet needs a ControlNet"
            )
        if req.conditioning and req.conditioning != cfg.conditioning:
            raise UserInputError(
                f"--conditioning: {folder} was trained with conditioning {cfg.conditioning}, not {req.conditioning}"
            )
    return cfg


class MaskSource:
    """Masks for the samples of a cohort: a dataset's (cycled) or sampled ellipses."""

    def __init__(
        self,
        spec: str,
        resolution: int,
        cohort_seed: int,
        group: str | None,
        train_data: str | None,
        hc_range: tuple[float, float] | str | None = None,
        hc_spacing: float | None = None,
    ):
        from fusynth.data.ellipse_prior import fit_ellipse_prior

        self.resolution = resolution
        self.cohort_seed = cohort_seed
        self.spec = spec
        self.group = group
        self.hc_range, self.hc_spacing = hc_range, hc_spacing
        if spec == ELLIPSE:
            if not train_data:
                raise UserInputError(
                    "--masks_from ellipse: the adapter's config.json names no training data"
                )
            masks, groups, spacing, hcs = _dataset_masks(
                train_data, "--masks_from ellipse (the adapter's training data)"
            )
            self.prior = fit_ellipse_prior(zip(masks, groups, strict=True))
            names = [g for g in self.prior.groups if g != "all"]
            if group is not None and group not in self.prior.groups:
                raise UserInputError(
                    f"--group: no masks of group {group!r} in {train_data} (groups: {', '.join(names) or 'none'})"
                )
            # Without --group, draw groups in the proportions of the training data.
            self.weights = (
                {g: self.prior.groups[g].n for g in names} if group is None and names else {}
            )
            self.fingerprint = {
                "masks_from": ELLIPSE,
                "ellipse_prior": json.loads(self.prior.to_json()),
            }
            if hc_range == REAL_HC:
                self.hc_pool = _hc_pool(masks, groups, spacing, hcs, resolution, hc_spacing)
                self.hc_pool = [h for h in self.hc_pool if group is None or h[2] == group]
                if not self.hc_pool:
                    raise UserInputError(
                        f"--hc_mm real: {train_data} (the adapter's training data) has no "
                        f"head{f' of group {group}' if group else ''} with a head "
                        "circumference and a pixel spacing to draw from"
                    )
                data = json.dumps(self.hc_pool, separators=(",", ":")).encode()
                self.fingerprint.update(
                    hc_mm=REAL_HC,
                    hc_pixel_spacing_mm=hc_spacing,
                    hc_pool_sha256=hashlib.sha256(data).hexdigest(),
                )
            elif hc_range is not None:
                self.fingerprint.update(hc_mm=list(hc_range), hc_pixel_spacing_mm=hc_spacing)
        else:
            self.masks, _, self.spacing, _ = _dataset_masks(spec, "--masks_from")
            self.fingerprint = {"masks_from": spec, "n_source_masks": len(self.masks)}

    def mask(self, index: int) -> tuple[np.ndarray, dict[str, Any], float | None]:
        """``([R, R] uint8 0/1 mask, provenance, mm per pixel or None)`` of sample ``index``."""
        from fusynth.data.transforms import square_resize

        if self.spec == ELLIPSE:
            rng = np.random.default_rng([self.cohort_seed, index, 7919])
            group = self.group
            if group is None and self.weights:
                names = sorted(self.weights)
                p = np.array([self.weights[g] for g in names], dtype=float)
                group = names[rng.choice(len(names), p=p / p.sum())]
            shape = (self.resolution, self.resolution)
            spacing = self.hc_spacing
            if self.hc_range == REAL_HC:  # a real head's HC, spacing and group, jointly
                hc, spacing, row_group = self.hc_pool[int(rng.integers(len(self.hc_pool)))]
                group = row_group if row_group in self.prior.groups else group
            elif self.hc_range is not None:
                hc = float(rng.uniform(*self.hc_range))
            if self.hc_range is not None:  # a head of an HC known by construction
                mask, ell = self.prior.sample_hc(rng, shape, hc, spacing, group)
                prov = {"mask_source": ELLIPSE, "mask_group": group, "mask_ellipse": list(ell),
                        "hc_mm_requested": hc}  # fmt: skip
                return mask, prov, spacing
            mask, ell = self.prior.sample(rng, shape, group)
            return (
                mask,
                {"mask_source": ELLIPSE, "mask_group": group, "mask_ellipse": list(ell)},
                None,
            )
        k = index % len(self.masks)
        raw = self.masks[k]
        side = max(raw.shape)
        mask = (square_resize(raw * 255, self.resolution, resample=0) > 127).astype(np.uint8)
        spacing = self.spacing[k] * side / self.resolution if self.spacing[k] else None
        return mask, {"mask_source": self.spec, "mask_index": k}, spacing


def _hc_pool(
    masks: list[np.ndarray],
    groups: list[str | None],
    spacing: list[float | None],
    hcs: list[float | None],
    resolution: int,
    frame_spacing: float | None,
) -> list[tuple[float, float, str | None]]:
    """``(HC mm, mm per pixel of the generated frame, group)`` of each real head with both
    values: its own spacing scaled to the frame, as its image would be (padded square,
    resized), unless ``frame_spacing`` fixes one."""
    pool = []
    for mask, group, mm, hc in zip(masks, groups, spacing, hcs, strict=True):
        if hc and mm:
            at_frame = frame_spacing or mm * max(mask.shape) / resolution
            pool.append((round(float(hc), 4), round(float(at_frame), 6), group))
    return pool


def _dataset_masks(
    spec: str, flag: str
) -> tuple[list[np.ndarray], list[str | None], list[float | None], list[float | None]]:
    """Filled masks of ``spec`` with their group (trimester), pixel spacing and HC."""
    from fusynth.data.images import decode_image
    from fusynth.data.masks import is_outline
    from fusynth.data.schema import load_split

    ds = load_split(spec)
    masks, groups, spacing, hcs = [], [], [], []
    for i, row in enumerate(ds):
        if row["mask"] is None:
            continue
        mask = decode_image(row["mask"])
        if is_outline(mask):
            raise UserInputError(
                f"{flag}: {spec} sample {i} ({row['subject_id']}) has an outline, not a filled mask"
            )
        masks.append((mask > 0).astype(np.uint8))
        groups.append(json.loads(row["provenance"] or "{}").get("trimester"))
        spacing.append(row["pixel_spacing_mm"])
        hcs.append(row["head_circumference_mm"])
    if not masks:
        raise UserInputError(f"{flag}: {spec} has no masks")
    if any(g is None for g in groups):
        groups = [None] * len(groups)
    return masks, [None if g is None else str(g) for g in groups], spacing, hcs


def _pair_row(
    image: np.ndarray,
    mask: np.ndarray,
    index: int,
    cohort_name: str,
    spacing: float | None,
    prov: dict[str, Any],
) -> dict[str, Any]:
    from fusynth.data.ellipse_prior import mask_ellipse

    try:
        hc_px = mask_ellipse(mask).perimeter
    except ValueError:
        hc_px = None
    prov = {**prov, "head_circumference_px": hc_px}
    return {
        "image": {"bytes": encode_png(image), "path": None},
        "mask": {"bytes": encode_png(mask.astype(np.uint8)), "path": None},
        "view": "head",
        "subject_id": f"synthetic:{cohort_name}-{index:06d}",
        "cohort": "synthetic",
        "center": "",
        "pixel_spacing_mm": spacing,
        "head_circumference_mm": hc_px * spacing if (hc_px is not None and spacing) else None,
        "split": "train",
        "synthetic": True,
        "provenance": provenance_json(prov),
    }


def generate_pairs(req: PairsRequest) -> CohortResult:
    """Generate (or finish) a cohort of head image/mask pairs.

    Raises:
        UserInputError: bad request, adapter, masks, base or output folder.
    """
    import torch
    from PIL import Image

    from fusynth.core.distributed import partial_state
    from fusynth.core.io import folder_sha256
    from fusynth.data.masks import conditioning_image, extract_head_mask
    from fusynth.diffusion.base import base_geometry, resolve_base
    from fusynth.diffusion.pipelines import (
        adapter_fingerprint,
        base_fingerprint,
        generate_rgb,
        load_controlnet_pipeline,
        load_pipeline,
        luma,
    )

    state = partial_state()
    cfg = adapter_config(req)
    # The adapter's own base unless told otherwise: a mismatched base is the usual mistake.
    ref = resolve_base(
        req.base or cfg.base,
        req.revision,
        req.variant,
        flag="--base",
        original_config=req.original_config or (None if req.base else cfg.original_config),
    )
    resolution = req.resolution or int(cfg.resolution or base_geometry(ref, "--base").resolution)
    prompt = req.prompt or cfg.first_caption() or DEFAULT_PAIR_PROMPT
    source = (
        MaskSource(
            req.masks_from,
            resolution,
            req.seed,
            req.group,
            cfg.train_data,
            req.hc_range(),
            req.hc_pixel_spacing_mm,
        )
        if req.masks_from
        else None
    )
    packing = (cfg.packing or "").split(",") if req.method == "packed" else []
    request: dict[str, Any] = {
        "kind": "pairs",
        "method": req.method,
        **base_fingerprint(ref),
        **(
            adapter_fingerprint(req.adapter)
            if req.method == "packed"
            else {
                "adapter": f"<local>/{Path(req.adapter).resolve().name}",
                "adapter_sha256": folder_sha256(Path(req.adapter) / "controlnet"),
            }
        ),
        **(source.fingerprint if source else {"masks_from": None}),
        "prompt": prompt,
        "negative_prompt": req.negative_prompt,
        "scheduler": req.scheduler,
        "steps": req.steps,
        "guidance": req.guidance,
        "resolution": resolution,
        "batch_size": req.batch_size,
        "seed": req.seed,
    }
    if req.method == "packed":
        request.update(
            lora_scale=req.lora_scale,
            packing=cfg.packing,
            threshold=req.threshold,
            max_residual=req.max_residual,
            max_attempts=req.max_attempts,
            strength=req.strength if source else None,
        )
    else:
        request.update(conditioning=cfg.conditioning, conditioning_scale=req.conditioning_scale)
    device = state.device
    dtype = torch.float16 if device.type == "cuda" else torch.float32

    def load() -> Any:
        if req.method != "packed":
            return load_controlnet_pipeline(
                ref, req.adapter, req.scheduler, device=device, dtype=dtype
            )
        pipe = load_pipeline(
            ref, req.scheduler, req.adapter, req.lora_scale, device=device, dtype=dtype
        )
        if source is not None:
            from diffusers import StableDiffusionImg2ImgPipeline

            pipe = StableDiffusionImg2ImgPipeline(**pipe.components)
            pipe.set_progress_bar_config(disable=True)
        return pipe

    writer, pipe = open_cohort(
        req.out, request, req.n, req.shard_size, req.overwrite, state, req.cpu_threads, load=load
    )
    if writer is None:
        return CohortResult(Path(req.out), req.n, 0, 0.0, True)
    common = {
        k: request[k]
        for k in (
            "method",
            "base",
            "adapter_sha256",
            "scheduler",
            "steps",
            "guidance",
            "negative_prompt",
            "resolution",
        )
        if k in request
    }
    common.update(prompt=prompt, cohort_seed=req.seed, fusynth_version=__version__)
    cohort_name = writer.cohort_id
    image_channels = [c for c, name in enumerate(packing) if name == "image"]
    mask_channel = packing.index("mask") if packing else None

    def packed_init(mask: np.ndarray) -> Image.Image:
        # The image channels start mid-grey: the model fills them in; the mask channel
        # carries the requested head.
        pic = np.full((*mask.shape, 3), 96, dtype=np.uint8)
        pic[..., mask_channel] = mask * 255
        return Image.fromarray(pic)

    def make_rows(indices: range) -> tuple[list[dict[str, Any]], dict[str, int]]:
        rows: dict[int, dict[str, Any]] = {}
        stats = {"attempts": 0, "accepted": 0, "rejected": 0, "left_out": 0}
        if req.method == "controlnet":
            for batch in iter_batches(indices, req.batch_size):
                masks = [source.mask(i) for i in batch]
                pics = [
                    Image.fromarray(
                        np.repeat(conditioning_image(m, cfg.conditioning)[..., None], 3, axis=2)
                    )
                    for m, _, _ in masks
                ]
                seeds = [attempt_seed(req.seed, i, 0) for i in batch]
                rgbs = generate_rgb(
                    pipe,
                    [prompt] * len(batch),
                    seeds,
                    negative_prompt=req.negative_prompt,
                    steps=req.steps,
                    guidance=req.guidance,
                    resolution=resolution,
                    image=pics,
                    controlnet_conditioning_scale=req.conditioning_scale,
                )
                for i, seed, rgb, (mask, prov, spacing) in zip(
                    batch, seeds, rgbs, masks, strict=True
                ):
                    rows[i] = _pair_row(
                        luma(rgb),
                        mask,
                        i,
                        cohort_name,
                        spacing,
                        {**common, **prov, "seed": seed, "index": i},
                    )
                    stats["attempts"] += 1
                    stats["accepted"] += 1
            return [rows[i] for i in sorted(rows)], stats
        pending = list(indices)
        for attempt in range(req.max_attempts):
            if not pending:
                break
            rejected = []
            for start in range(0, len(pending), req.batch_size):
                batch = pending[start : start + req.batch_size]
                seeds = [attempt_seed(req.seed, i, attempt) for i in batch]
                extra: dict[str, Any] = {}
                masks = [source.mask(i) for i in batch] if source else None
                if masks:
                    extra = {
                        "image": [packed_init(m) for m, _, _ in masks],
                        "strength": req.strength,
                    }
                rgbs = generate_rgb(
                    pipe,
                    [prompt] * len(batch),
                    seeds,
                    negative_prompt=req.negative_prompt,
                    steps=req.steps,
                    guidance=req.guidance,
                    resolution=None if masks else resolution,
                    **extra,
                )
                for j, (i, seed, rgb) in enumerate(zip(batch, seeds, rgbs, strict=True)):
                    stats["attempts"] += 1
                    found = extract_head_mask(
                        rgb[..., mask_channel], req.threshold, req.max_residual
                    )
                    if not found.accepted:
                        stats["rejected"] += 1
                        rejected.append(i)
                        continue
                    stats["accepted"] += 1
                    image = np.rint(
                        rgb[..., image_channels].astype(np.float64).mean(axis=-1)
                    ).astype(np.uint8)
                    prov = {
                        **common,
                        "seed": seed,
                        "index": i,
                        "attempt": attempt,
                        "fit_residual": found.residual,
                        "mask_source": "extracted",
                    }
                    spacing = None
                    if masks:
                        prov["mask_source"] = f"extracted (guided by {masks[j][1]['mask_source']})"
                        prov["guide"] = masks[j][1]
                        spacing = masks[j][2]
                    rows[i] = _pair_row(image, found.mask, i, cohort_name, spacing, prov)
            pending = rejected
        stats["left_out"] = len(pending)
        return [rows[i] for i in sorted(rows)], stats

    dsd, result = write_cohort(writer, make_rows, state, f"pairs[{req.method}]", "pair")
    if dsd is not None and len(dsd["train"]):
        write_previews(dsd["train"], writer.out / "previews", with_masks=True)
    state.wait_for_everyone()
    return result
