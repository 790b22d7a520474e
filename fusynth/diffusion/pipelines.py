"""Generation pipelines: a base, optionally a LoRA at a scale, and a named sampler."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fusynth.diffusion.base import BaseRef
from fusynth.errors import UserInputError, suggest
from fusynth.io import file_sha256, folder_sha256

log = logging.getLogger(__name__)

#: Sampler name -> diffusers scheduler class name (plain dict, as a registry).
SCHEDULERS: dict[str, str] = {
    "euler": "EulerDiscreteScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler",
    "unipc": "UniPCMultistepScheduler",
    "ddim": "DDIMScheduler",
    "dpm": "DPMSolverMultistepScheduler",
}

LORA_WEIGHTS = "pytorch_lora_weights.safetensors"


def check_scheduler(name: str, flag: str = "--scheduler") -> str:
    """Validate a sampler name, suggesting the nearest."""
    if name not in SCHEDULERS:
        raise UserInputError(
            f"{flag}: unknown scheduler {name!r}{suggest(name, SCHEDULERS)}; "
            f"choose from {', '.join(SCHEDULERS)}"
        )
    return name


def lora_file(path: str | Path, flag: str = "--lora") -> Path:
    """The LoRA weights file of a training output folder (or the file itself)."""
    path = Path(path)
    if path.is_file() and path.suffix == ".safetensors":
        return path
    if (path / LORA_WEIGHTS).is_file():
        return path / LORA_WEIGHTS
    raise UserInputError(f"{flag}: {path} has no {LORA_WEIGHTS}")


def lora_training_config(path: str | Path) -> dict[str, Any]:
    """The resolved ``config.json`` a fusynth training run wrote beside its adapter."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    cfg = folder / "config.json"
    return json.loads(cfg.read_text()) if cfg.is_file() else {}


def check_lora_matches(pipe: Any, weights: Path, flag: str = "--lora") -> None:
    """Check that every module a LoRA targets exists in the base, with matching sizes.

    diffusers loads a mismatched adapter with at most a warning; a cohort made with
    half an adapter would look fine and be wrong, so this refuses it.

    Raises:
        UserInputError: naming the first module that does not fit.
    """
    from safetensors import safe_open

    modules = {
        "unet": dict(pipe.unet.named_modules()),
        "text_encoder": dict(pipe.text_encoder.named_modules()),
    }
    with safe_open(str(weights), "pt") as f:
        keys = list(f.keys())
        if not keys:
            raise UserInputError(f"{flag}: {weights} holds no tensors")
        for key in keys:
            m = re.match(
                r"^(unet|text_encoder)\.(.+?)\.(lora\.down|lora_A|lora\.up|lora_B)\.weight$", key
            )
            if not m:
                if key.startswith("lora_unet_") or key.startswith("lora_te_"):
                    raise UserInputError(
                        f"{flag}: {weights} is in kohya format; convert it with 'fusynth lora convert'"
                    )
                continue
            part, name, kind = m.groups()
            module = modules[part].get(name)
            if module is None or not hasattr(module, "in_features"):
                raise UserInputError(
                    f"{flag}: {weights} targets {part}.{name}, which the base does not have "
                    "(was the adapter trained on another base?)"
                )
            shape = f.get_slice(key).get_shape()
            expected = (
                module.in_features if kind in ("lora.down", "lora_A") else module.out_features
            )
            got = shape[1] if kind in ("lora.down", "lora_A") else shape[0]
            if got != expected:
                raise UserInputError(
                    f"{flag}: {weights} has {part}.{name} of size {got}, the base's is {expected} "
                    "(was the adapter trained on another base?)"
                )


def _pretrained_pipeline(cls: Any, ref: BaseRef, dtype: torch.dtype, **components: Any) -> Any:
    """``cls.from_pretrained`` for a base reference, without a safety checker (there is
    nothing for it to check in ultrasound), with load errors as one line naming --base."""
    kwargs: dict[str, Any] = {
        "safety_checker": None,
        "requires_safety_checker": False,
        "dtype": dtype,
    }
    if ref.revision:
        kwargs["revision"] = ref.revision
    if ref.variant:
        kwargs["variant"] = ref.variant
    try:
        return cls.from_pretrained(ref.name_or_path, **components, **kwargs)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserInputError(f"--base: cannot load {ref.name_or_path} ({first})") from exc


def _set_scheduler(pipe: Any, name: str) -> None:
    import diffusers

    pipe.scheduler = getattr(diffusers, SCHEDULERS[name]).from_config(pipe.scheduler.config)


def load_pipeline(
    ref: BaseRef,
    scheduler: str = "euler",
    lora: str | Path | None = None,
    lora_scale: float = 1.0,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Any:
    """A ``StableDiffusionPipeline`` with the named sampler and, optionally, a LoRA.

    Raises:
        UserInputError: unknown scheduler, unloadable base, missing or mismatched LoRA.
    """
    from diffusers import StableDiffusionPipeline

    check_scheduler(scheduler)
    pipe = _pretrained_pipeline(StableDiffusionPipeline, ref, dtype)
    _set_scheduler(pipe, scheduler)
    if lora is not None:
        weights = lora_file(lora)
        check_lora_matches(pipe, weights)
        pipe.load_lora_weights(
            str(weights.parent), weight_name=weights.name, adapter_name="fusynth"
        )
        pipe.set_adapters(["fusynth"], adapter_weights=[lora_scale])
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def base_fingerprint(ref: BaseRef) -> dict[str, Any]:
    """How a base is identified in provenance: a hub id and revision, a folder hash, or a
    single file and its sha256."""
    if ref.single_file:
        source = json.loads((Path(ref.name_or_path) / "fusynth_single_file.json").read_text())
        return {
            "base": ref.single_file,
            "base_sha256": source["source_sha256"],
            "base_config": source["config"],
            "smoke_base": ref.smoke,
        }
    if ref.is_local:
        return {
            "base": ref.name_or_path,
            "base_sha256": folder_sha256(ref.name_or_path),
            "smoke_base": ref.smoke,
        }
    return {
        "base": ref.name_or_path,
        "base_revision": ref.revision or "main",
        "base_variant": ref.variant,
    }


def adapter_fingerprint(lora: str | Path | None) -> dict[str, Any]:
    """sha256 of the LoRA weights file (None without an adapter)."""
    if lora is None:
        return {"adapter": None, "adapter_sha256": None}
    weights = lora_file(lora)
    return {"adapter": str(weights.parent), "adapter_sha256": file_sha256(weights)}


@torch.no_grad()
def generate_rgb(
    pipe: Any,
    prompts: list[str],
    seeds: list[int],
    *,
    negative_prompt: str | None,
    steps: int,
    guidance: float,
    resolution: int | None = None,
    **kwargs: Any,
) -> list[np.ndarray]:
    """One picture per (prompt, seed), each from its own generator, as ``[H, W, 3]`` uint8.

    Extra keyword arguments go to the pipeline (``image=`` for ControlNet and
    img2img, ``strength=``, ``controlnet_conditioning_scale=``).
    """
    device = pipe.device if pipe.device.type != "mps" else "cpu"
    generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]
    size = {"height": resolution, "width": resolution} if resolution else {}
    out = pipe(
        prompts,
        negative_prompt=[negative_prompt] * len(prompts) if negative_prompt else None,
        num_inference_steps=steps,
        guidance_scale=guidance,
        generator=generators,
        output_type="np",
        **size,
        **kwargs,
    ).images
    return list(np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8))


def luma(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma of ``[H, W, 3]`` uint8, as ``[H, W]`` uint8."""
    x = rgb.astype(np.float64)
    return np.clip(
        np.rint(x[..., 0] * 0.299 + x[..., 1] * 0.587 + x[..., 2] * 0.114), 0, 255
    ).astype(np.uint8)


def generate_images(
    pipe: Any,
    prompts: list[str],
    seeds: list[int],
    *,
    negative_prompt: str | None,
    steps: int,
    guidance: float,
    resolution: int,
) -> list[np.ndarray]:
    """As :func:`generate_rgb`, returned as ``[H, W]`` uint8 grayscale (luma)."""
    rgb = generate_rgb(
        pipe,
        prompts,
        seeds,
        negative_prompt=negative_prompt,
        steps=steps,
        guidance=guidance,
        resolution=resolution,
    )
    return [luma(x) for x in rgb]


def load_controlnet_pipeline(
    ref: BaseRef,
    adapter: str | Path,
    scheduler: str = "unipc",
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Any:
    """A ``StableDiffusionControlNetPipeline`` with a fusynth ControlNet output folder.

    Raises:
        UserInputError: the folder has no ``controlnet/``, or the base cannot load.
    """
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline

    check_scheduler(scheduler)
    folder = Path(adapter) / "controlnet"
    if not (folder / "config.json").is_file():
        raise UserInputError(
            f"--adapter: {adapter} has no controlnet/ folder (a train_controlnet.py output)"
        )
    controlnet = ControlNetModel.from_pretrained(str(folder), dtype=dtype)
    pipe = _pretrained_pipeline(
        StableDiffusionControlNetPipeline, ref, dtype, controlnet=controlnet
    )
    _set_scheduler(pipe, scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)
