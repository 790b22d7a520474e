"""Text-to-image cohorts: N images per fetal view from a base and a LoRA adapter."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fusynth import __version__
from fusynth.cohort.request import SamplingRequest
from fusynth.cohort.writer import CohortResult, iter_batches, open_cohort, sample_seed, write_cohort
from fusynth.core.errors import UserInputError, suggest
from fusynth.data.images import encode_png
from fusynth.data.schema import VIEWS, provenance_json
from fusynth.diffusion.config import TrainedAdapter

log = logging.getLogger(__name__)

DEFAULT_PROMPT = "an ultrasound image of the fetal {view}"


def parse_views(spec: str, flag: str = "--views") -> dict[str, int]:
    """Parse ``brain:1000,femur:500`` into an ordered ``{view: count}``."""
    out: dict[str, int] = {}
    for part in (p.strip() for p in str(spec).split(",")):
        if not part:
            continue
        view, sep, count = part.partition(":")
        view = view.strip()
        if view not in VIEWS:
            raise UserInputError(
                f"{flag}: unknown view {view!r}{suggest(view, VIEWS)}; choose from {', '.join(VIEWS)}"
            )
        if not sep:
            raise UserInputError(f"{flag}: {part!r} needs a count, as in {view}:100")
        try:
            n = int(count)
        except ValueError:
            raise UserInputError(
                f"{flag}: count {count!r} for {view!r} is not a whole number"
            ) from None
        if n <= 0:
            raise UserInputError(f"{flag}: count for {view!r} must be positive, got {n}")
        if view in out:
            raise UserInputError(f"{flag}: view {view!r} given twice")
        out[view] = n
    if not out:
        raise UserInputError(f"{flag}: no view given (e.g. brain:100,femur:100)")
    return out


@dataclass(kw_only=True)
class Text2ImgRequest(SamplingRequest):
    """Everything ``fusynth generate text2img`` takes."""

    views: dict[str, int]
    lora: str | None = None
    lora_scale: float = 1.0
    prompt_template: str | None = None
    prompts: str | None = None
    prompt_values: str | None = None  # "real" or FIELD=LOW:HIGH,...: drawn per sample

    def __post_init__(self) -> None:
        from fusynth.cohort.conditions import parse_prompt_values, template_fields

        super().__post_init__()
        if self.prompt_template is not None:
            fields = template_fields(self.prompt_template, "--prompt_template")
            if "view" not in fields and len(self.views) > 1:
                raise UserInputError(
                    f"--prompt_template: {self.prompt_template!r} has no {{view}} placeholder"
                )
            others = [f for f in fields if f != "view"]
            if others and self.prompt_values is None:
                raise UserInputError(
                    f"--prompt_template: {{{others[0]}}} needs --prompt_values (real, or "
                    "FIELD=LOW:HIGH) to fill it for each sample"
                )
        if self.prompt_values is not None:
            parse_prompt_values(self.prompt_values)
            if self.prompts:
                raise UserInputError("--prompt_values: fills a template; not with --prompts")


def prompt_sampler(req: Text2ImgRequest, trained: TrainedAdapter) -> Any:
    """The per-sample prompt values of ``--prompt_values`` (None without it): over
    ``--prompt_template``, else the caption template the adapter (``trained``, its
    config) was trained with."""
    from fusynth.cohort.conditions import PromptSampler

    if req.prompt_values is None:
        return None
    template = req.prompt_template
    if template is None:
        if trained.captions:
            raise UserInputError(
                "--prompt_values: the adapter was trained with a --captions file, not a "
                "template; give --prompt_template"
            )
        template = trained.caption_template
    if template is None:
        raise UserInputError(
            "--prompt_values: no template to fill (the adapter records none); give "
            "--prompt_template"
        )
    return PromptSampler(req.prompt_values, template, trained.train_data, list(req.views), req.seed)


def resolve_prompts(req: Text2ImgRequest) -> dict[str, str]:
    """One prompt per requested view.

    Order of preference: ``--prompts`` YAML, ``--prompt_template``, the captions the
    adapter was trained with (its ``config.json``), the default template.
    """
    from fusynth.core.config import load_yaml_mapping
    from fusynth.diffusion.config import TrainedAdapter

    if req.prompts:
        table = load_yaml_mapping(req.prompts, "--prompts")
        missing = [v for v in req.views if v not in table]
        if missing:
            raise UserInputError(f"{req.prompts}: no prompt for view {missing[0]!r}")
        return {v: str(table[v]) for v in req.views}
    if req.prompt_template and req.prompt_values is not None:
        return {v: req.prompt_template for v in req.views}  # filled per sample
    if req.prompt_template:
        return {v: req.prompt_template.format(view=v) for v in req.views}
    trained = TrainedAdapter.read(req.lora, "--lora") if req.lora else TrainedAdapter()
    out = {}
    for v in req.views:
        if v not in trained.captions_by_view and trained.captions_by_view:
            log.warning("the adapter was not trained on %r; using the default prompt for it", v)
        # The first caption where they varied within the view (e.g. by trimester).
        out[v] = trained.caption(v) or DEFAULT_PROMPT.format(view=v)
    return out


def generate_text2img(req: Text2ImgRequest) -> CohortResult:
    """Generate (or finish) a text-to-image cohort.

    Runs under ``accelerate launch`` / ``torchrun`` as well: each process takes every
    ``num_processes``-th shard, and the main process assembles the dataset.

    Raises:
        UserInputError: bad request, base, adapter or output folder.
    """
    import torch

    from fusynth.core.distributed import partial_state
    from fusynth.diffusion.base import base_geometry, resolve_base
    from fusynth.diffusion.pipelines import (
        adapter_fingerprint,
        base_fingerprint,
        generate_images,
        load_pipeline,
    )

    state = partial_state()
    ref = resolve_base(
        req.base, req.revision, req.variant, flag="--base", original_config=req.original_config
    )
    resolution = req.resolution or base_geometry(ref, "--base").resolution
    if req.lora is not None:
        from fusynth.diffusion.pipelines import lora_file

        lora_file(req.lora)  # fail before the (slow) base load
    prompts = resolve_prompts(req)
    from fusynth.diffusion.config import TrainedAdapter

    # How the adapter was trained conditions generation too (clip skip, v-prediction,
    # the caption template prompt values fill).
    trained = TrainedAdapter.read(req.lora, "--lora") if req.lora else TrainedAdapter()
    sampler = prompt_sampler(req, trained)
    trained_with = {
        k: v
        for k, v in (("clip_skip", trained.clip_skip), ("prediction_type", trained.prediction_type))
        if v is not None
    }
    request = {
        **base_fingerprint(ref),
        **adapter_fingerprint(req.lora),
        "lora_scale": req.lora_scale if req.lora else None,
        "views": req.views,
        "prompts": prompts,
        "negative_prompt": req.negative_prompt,
        "scheduler": req.scheduler,
        "steps": req.steps,
        "guidance": req.guidance,
        "resolution": resolution,
        "batch_size": req.batch_size,
        "seed": req.seed,
        **trained_with,
        **(sampler.fingerprint() if sampler is not None else {}),
    }
    n = sum(req.views.values())
    device = state.device
    writer, pipe = open_cohort(
        req.out,
        request,
        n,
        req.shard_size,
        req.overwrite,
        state,
        req.cpu_threads,
        load=lambda: load_pipeline(
            ref,
            req.scheduler,
            req.lora,
            req.lora_scale,
            device=device,
            dtype=torch.float16 if device.type == "cuda" else torch.float32,
            prediction_type=trained.prediction_type,
        ),
    )
    if writer is None:
        if state.is_main_process:
            log.info("%s is complete (%d samples): nothing to do", req.out, n)
        return CohortResult(Path(req.out), n, 0, 0.0, True)
    view_of = [v for v, c in req.views.items() for _ in range(c)]
    common = {
        key: request[key]
        for key in (
            "base",
            "base_sha256",
            "base_revision",
            "adapter_sha256",
            "lora_scale",
            "negative_prompt",
            "scheduler",
            "steps",
            "guidance",
            "resolution",
        )
        if key in request
    }
    cohort_name = writer.cohort_id

    def make_rows(indices: range) -> list[dict[str, Any]]:
        rows = []
        for batch in iter_batches(indices, req.batch_size):
            seeds = [sample_seed(req.seed, i) for i in batch]
            drawn = [sampler.draw(view_of[i], i) if sampler else None for i in batch]
            batch_prompts = [
                d[0] if d else prompts[view_of[i]] for d, i in zip(drawn, batch, strict=True)
            ]
            images = generate_images(
                pipe,
                batch_prompts,
                seeds,
                negative_prompt=req.negative_prompt,
                steps=req.steps,
                guidance=req.guidance,
                resolution=resolution,
                clip_skip=trained.clip_skip,
            )
            for i, seed, prompt, image, d in zip(
                batch, seeds, batch_prompts, images, drawn, strict=True
            ):
                prov = {
                    **common,
                    "method": "text2img",
                    "prompt": prompt,
                    **({"prompt_values": d[1]} if d else {}),
                    "seed": seed,
                    "index": i,
                    "cohort_seed": req.seed,
                    "fusynth_version": __version__,
                }
                rows.append(
                    {
                        "image": {"bytes": encode_png(image), "path": None},
                        "mask": None,
                        "view": view_of[i],
                        "subject_id": f"synthetic:{cohort_name}-{i:06d}",
                        "cohort": "synthetic",
                        "center": "",
                        "pixel_spacing_mm": None,
                        "head_circumference_mm": None,
                        "split": "train",
                        "synthetic": True,
                        "provenance": provenance_json(prov),
                    }
                )
        return rows

    dsd, result = write_cohort(writer, make_rows, state, "text2img", "img")
    if dsd is not None:
        write_previews(dsd["train"], writer.out / "previews")
    state.wait_for_everyone()
    return result


def write_previews(
    ds: Any, folder: Path, per_view: int = 16, cols: int = 4, with_masks: bool = False
) -> list[Path]:
    """A labelled grid PNG per view of the first ``per_view`` samples: each tile captioned
    with its seed and prompt (from its provenance), masks overlaid if asked, the
    generator (adapter) and counts in the title.

    Returns:
        The PNGs written, one per view in the cohort.
    """
    from fusynth.core.gallery import Tile, image_grid
    from fusynth.data.images import decode_image
    from fusynth.data.inspect import MASK_LEGEND, overlay

    written = []
    views = ds["view"]
    provenance = ds["provenance"]
    for v in sorted(set(views)):
        members = [i for i, x in enumerate(views) if x == v]
        idx = members[:per_view]
        tiles, adapters = [], set()
        for i in idx:
            row = ds[i]
            image = decode_image(row["image"])
            prov = _provenance(provenance[i])
            adapters.add(_generator(prov))
            lines = [f"seed {prov.get('seed', '?')}", f"row {i}"]
            if with_masks and prov.get("mask_source"):
                # a folder's name, not its whole path: the caption stays readable
                source = str(prov["mask_source"])
                lines[1] += f" · mask: {Path(source).name if '/' in source else source}"
            if prov.get("prompt"):
                lines.append(f'"{prov["prompt"]}"')
            if with_masks and row["mask"] is not None:
                image = np.asarray(overlay(image, decode_image(row["mask"]), image.shape[0]))
            tiles.append(Tile(image, "\n".join(lines)))
        kind = "image/mask pairs" if with_masks else "samples"
        target = folder / f"{VIEWS[v]}.png"
        image_grid(
            target,
            tiles,
            f"{VIEWS[v]}: first {len(idx)} of {len(members)} synthetic {kind} "
            f"(generator: {', '.join(sorted(adapters))})",
            cols=cols,
            legend=MASK_LEGEND if with_masks else (),
            footnote="caption: seed, row in the cohort and prompt, as its provenance records them",
        )
        written.append(target)
    return written


def _generator(prov: dict[str, Any]) -> str:
    """The adapter a sample was drawn with, as its provenance names it."""
    name = prov.get("adapter")
    if name:
        return str(name).removeprefix("<local>/")
    sha = prov.get("adapter_sha256")
    return f"adapter sha256 {str(sha)[:12]}" if sha else "no adapter"


def _provenance(text: str | None) -> dict[str, Any]:
    try:
        value = json.loads(text or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
