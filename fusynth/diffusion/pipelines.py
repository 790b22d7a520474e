"""Generation pipelines: a base, optionally a LoRA at a scale, and a named sampler."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fusynth.core.artifacts import LORA_WEIGHTS
from fusynth.core.errors import UserInputError, suggest
from fusynth.core.io import file_sha256, folder_sha256
from fusynth.diffusion.base import BaseRef

log = logging.getLogger(__name__)

#: Sampler name -> diffusers scheduler class name (plain dict, as a registry).
SCHEDULERS: dict[str, str] = {
    "euler": "EulerDiscreteScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler",
    "unipc": "UniPCMultistepScheduler",
    "ddim": "DDIMScheduler",
    "dpm": "DPMSolverMultistepScheduler",
}


def check_scheduler(name: str, flag: str = "--scheduler") -> str:
    """Validate a sampler name, suggesting the nearest."""
    if name not in SCHEDULERS:
        raise UserInputError(
            f"{flag}: unknown scheduler {name!r}{suggest(name, SCHEDULERS)}; "
            f"choose from {', '.join(SCHEDULERS)}"
        )
    return name


def lora_file(path: str | Path, flag: str = "--lora") -> Path:
    """The LoRA weights file of a training output folder (or the file itself), checked
    to be a complete safetensors file (its header read; the tensors are not loaded).

    Raises:
        UserInputError: no such path, no weights in the folder, or a file that is not
            (or no longer: truncated) a safetensors file.
    """
    path = Path(path)
    if not path.exists():
        raise UserInputError(f"{flag}: {path} does not exist")
    if path.is_dir():
        if not (path / LORA_WEIGHTS).is_file():
            raise UserInputError(f"{flag}: {path} has no {LORA_WEIGHTS}")
        path = path / LORA_WEIGHTS
    elif path.suffix != ".safetensors":
        raise UserInputError(f"{flag}: {path} is not a .safetensors file")
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "pt") as f:
            f.keys()
    except (SafetensorError, OSError) as exc:
        raise UserInputError(
            f"{flag}: {path} cannot be read as safetensors (truncated or not weights: {exc})"
        ) from exc
    return path


def read_lora(pipe: Any, weights: Path, flag: str = "--lora") -> tuple[dict, dict[str, str]]:
    """A LoRA file's tensors in the layout stock diffusers loads, with its header.

    A kohya-ss file (sd-scripts, A1111, ComfyUI: ``lora_unet_…``/``lora_te_…``, LoRA or
    LoCon conv targets, any dtype) is converted with the base's own module names, its
    per-module ``alpha / rank`` carried in the header; a diffusers file is returned as is.

    Raises:
        UserInputError: unreadable, or neither layout; the message names the file.
    """
    import safetensors
    from safetensors import safe_open

    from fusynth.diffusion.kohya import detect_format, kohya_to_diffusers, sd_module_names

    try:
        with safe_open(str(weights), "pt") as f:
            header = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
    except (safetensors.SafetensorError, OSError, ValueError) as exc:
        raise UserInputError(
            f"{flag}: {weights} is not a readable safetensors file ({exc})"
        ) from None
    if not tensors:
        raise UserInputError(f"{flag}: {weights} holds no tensors")
    try:
        if detect_format(tensors) == "kohya":
            names = sd_module_names(pipe.unet, pipe.text_encoder)
            tensors, header = kohya_to_diffusers(tensors, module_names=names)
    except UserInputError as exc:
        raise UserInputError(f"{flag}: {weights}: {exc}") from None
    return tensors, header


def check_lora_matches(
    pipe: Any, weights: Path | dict, flag: str = "--lora", source: Path | None = None
) -> None:
    """Check that every module a LoRA targets exists in the base, with matching sizes.

    Linear and convolution targets are checked alike (kohya's 1x1-conv ``proj_in`` and
    LoCon's 3x3 convolutions included). diffusers loads a mismatched adapter with at most
    a warning; a cohort made with half an adapter would look fine and be wrong, so this
    refuses it.

    Args:
        pipe: the pipeline the LoRA goes into.
        weights: the LoRA file (either layout), or tensors from :func:`read_lora`.
        flag: the flag that named the LoRA.
        source: the file the tensors came from, named in errors.

    Raises:
        UserInputError: naming the first module that does not fit.
    """
    from fusynth.diffusion.kohya import _DIFFUSERS_KEY

    label = str(source) if source is not None else "the LoRA"
    if not isinstance(weights, dict):
        label = str(weights)
    tensors = weights if isinstance(weights, dict) else read_lora(pipe, Path(weights), flag)[0]
    modules = {
        "unet": dict(pipe.unet.named_modules()),
        "text_encoder": dict(pipe.text_encoder.named_modules()),
    }
    for key, tensor in tensors.items():
        m = _DIFFUSERS_KEY.match(key.replace(".processor.", "."))
        if not m:
            continue
        part, name = m["component"], m["module"]
        down = m["factor"] in ("lora_A", "lora.down", "lora_linear_layer.down")
        # transformers 5 flattens CLIPTextModel: try the path with and without text_model.
        candidates = [name, name.removeprefix("text_model.")]
        module = next((modules[part][n] for n in candidates if n in modules[part]), None)
        size_in = getattr(module, "in_features", getattr(module, "in_channels", None))
        size_out = getattr(module, "out_features", getattr(module, "out_channels", None))
        if module is None or size_in is None:
            raise UserInputError(
                f"{flag}: {label} targets {part}.{name}, which the base does not have "
                "(was the adapter trained on another base?)"
            )
        shape = tuple(tensor.shape)
        expected, got = (size_in, shape[1]) if down else (size_out, shape[0])
        if got != expected:
            raise UserInputError(
                f"{flag}: {label} has {part}.{name} of size {got}, the base's is {expected} "
                "(was the adapter trained on another base?)"
            )
        kernel = tuple(getattr(module, "kernel_size", ()))
        if down and len(shape) == 4 and shape[2:] != kernel:
            raise UserInputError(
                f"{flag}: {label} has a {shape[2]}x{shape[3]} kernel for {part}.{name}, "
                f"the base's is {kernel[0]}x{kernel[1]}"
            )
        if len(shape) == 4 and not kernel:
            raise UserInputError(
                f"{flag}: {label} has convolution weights for {part}.{name}, a linear layer"
            )


def load_lora(pipe: Any, weights: Path, scale: float = 1.0, flag: str = "--lora") -> None:
    """Load a LoRA file of either layout into ``pipe`` as adapter ``fusynth`` at ``scale``.

    ``scale`` is A1111's multiplier: each module's weight becomes
    ``W + scale * alpha / rank * up @ down``.
    """
    import tempfile

    from safetensors.torch import save

    from fusynth.core.io import atomic_write_bytes

    tensors, header = read_lora(pipe, weights, flag)
    check_lora_matches(pipe, tensors, flag, source=weights)
    with tempfile.TemporaryDirectory(prefix="fusynth-lora-") as tmp:
        # through a file: diffusers reads the per-module alphas from its header only
        data = save({k: v.contiguous() for k, v in tensors.items()}, header)
        atomic_write_bytes(Path(tmp) / LORA_WEIGHTS, data)
        pipe.load_lora_weights(tmp, weight_name=LORA_WEIGHTS, adapter_name="fusynth")
    pipe.set_adapters(["fusynth"], adapter_weights=[scale])


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
    prediction_type: str | None = None,
) -> Any:
    """A ``StableDiffusionPipeline`` with the named sampler and, optionally, a LoRA
    (and the ``prediction_type`` it was trained with, when not the base's).

    Raises:
        UserInputError: unknown scheduler, unloadable base, missing or mismatched LoRA.
    """
    from diffusers import StableDiffusionPipeline

    check_scheduler(scheduler)
    pipe = _pretrained_pipeline(StableDiffusionPipeline, ref, dtype)
    _set_scheduler(pipe, scheduler)
    if prediction_type is not None:
        pipe.scheduler = pipe.scheduler.__class__.from_config(
            pipe.scheduler.config, prediction_type=prediction_type
        )
    if lora is not None:
        load_lora(pipe, lora_file(lora), lora_scale)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def base_fingerprint(ref: BaseRef) -> dict[str, Any]:
    """How a base is identified in provenance: a hub id and revision, or ``<local>/NAME``
    with a hash of the folder or the single file (never the machine's absolute path)."""
    if ref.single_file:
        source = json.loads((Path(ref.name_or_path) / "fusynth_single_file.json").read_text())
        return {
            "base": f"<local>/{Path(ref.single_file).name}",
            "base_sha256": source["source_sha256"],
            "base_config": source["config"],
            "smoke_base": ref.smoke,
        }
    if ref.is_local:
        return {
            "base": f"<local>/{Path(ref.name_or_path).name}",
            "base_sha256": folder_sha256(ref.name_or_path),
            "smoke_base": ref.smoke,
        }
    return {
        "base": ref.name_or_path,
        "base_revision": ref.revision or "main",
        "base_variant": ref.variant,
    }


def adapter_fingerprint(lora: str | Path | None) -> dict[str, Any]:
    """The adapter as ``<local>/NAME`` (the weights file's name when a file was given, its
    folder's name for a training output) and the sha256 of its weights (None without)."""
    if lora is None:
        return {"adapter": None, "adapter_sha256": None}
    weights = lora_file(lora)
    name = Path(lora).name if Path(lora).is_file() else weights.parent.name
    return {"adapter": f"<local>/{name}", "adapter_sha256": file_sha256(weights)}


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
    clip_skip = kwargs.pop("clip_skip", None)
    if clip_skip:
        from fusynth.diffusion.dataset import prompt_embeds_for

        kwargs["prompt_embeds"] = prompt_embeds_for(pipe, list(prompts), clip_skip)
        prompts = None
    out = pipe(
        prompts,
        negative_prompt=[negative_prompt] * len(seeds) if negative_prompt else None,
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
    clip_skip: int | None = None,
) -> list[np.ndarray]:
    """As :func:`generate_rgb`, returned as ``[H, W]`` uint8 grayscale (luma);
    ``clip_skip`` as the adapter was trained (diffusers' pipeline argument)."""
    rgb = generate_rgb(
        pipe,
        prompts,
        seeds,
        negative_prompt=negative_prompt,
        steps=steps,
        guidance=guidance,
        resolution=resolution,
        **({"clip_skip": clip_skip} if clip_skip else {}),
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
