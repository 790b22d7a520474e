"""Loading a Stable-Diffusion-family base: a hub id, a local diffusers folder, or the
tiny smoke base. One code path for all three."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fusynth.core.errors import UserInputError

log = logging.getLogger(__name__)

FLAG = "--pretrained_model_name_or_path"


@dataclass
class BaseRef:
    """Which base a run uses, as recorded in configs, cards and provenance."""

    name_or_path: str
    revision: str | None = None
    variant: str | None = None
    smoke: bool = False
    #: The ``.safetensors``/``.ckpt`` a user gave; ``name_or_path`` is then its converted
    #: diffusers folder in the cache (see fusynth.diffusion.single_file).
    single_file: str | None = None

    @property
    def source(self) -> str:
        """What the user gave, as configs and cards record it (the file of a single-file
        checkpoint, not its converted folder)."""
        return self.single_file or self.name_or_path

    @property
    def is_local(self) -> bool:
        """True for a folder on disk."""
        return Path(self.name_or_path).is_dir()


def resolve_base(
    name_or_path: str | None,
    revision: str | None = None,
    variant: str | None = None,
    flag: str = FLAG,
    original_config: str | None = None,
) -> BaseRef:
    """Check a base reference before any heavy loading.

    ``None`` selects the tiny smoke base (built once into the cache) and says so in the
    log. A local path must be a diffusers folder (``model_index.json``) or a single-file
    SD 1.x/2.x checkpoint (``.safetensors``/``.ckpt``, converted once into the cache with
    the shipped configs or ``original_config``); anything else must look like a hub id
    (``org/name``).

    Raises:
        UserInputError: naming the flag and the path.
    """
    from fusynth.diffusion.tiny import SMOKE_NOTE, default_base, is_smoke_model

    if name_or_path is None:
        path = default_base()
        log.warning("using the %s", SMOKE_NOTE)
        return BaseRef(str(path), smoke=True)
    path = Path(name_or_path)
    if original_config is not None and not (
        path.is_file() and path.suffix in (".safetensors", ".ckpt")
    ):
        raise UserInputError(
            f"--original_config: only used with a single-file checkpoint; {flag} is {name_or_path}"
        )
    if path.is_file() and path.suffix.lower() in (".safetensors", ".ckpt"):
        from fusynth.diffusion.single_file import convert_single_file

        if original_config is not None and not Path(original_config).exists():
            raise UserInputError(f"--original_config: {original_config} not found")
        folder = convert_single_file(path, original_config, flag)
        return BaseRef(str(folder), smoke=is_smoke_model(folder), single_file=str(path.resolve()))
    if path.exists():
        if not path.is_dir() or not (path / "model_index.json").is_file():
            raise UserInputError(
                f"{flag}: {path} is not a diffusers model folder (no model_index.json) "
                "nor a single-file .safetensors/.ckpt checkpoint"
            )
        smoke = is_smoke_model(path)
        if smoke:
            log.warning("using the %s", SMOKE_NOTE)
        # resolved: a relative path in a card or provenance would read as a hub id
        return BaseRef(str(path.resolve()), revision, variant, smoke=smoke)
    parts = str(name_or_path).split("/")
    if len(parts) != 2 or not all(parts) or str(name_or_path).startswith((".", "~")):
        raise UserInputError(f"{flag}: {name_or_path} is neither a folder nor a hub id (org/name)")
    return BaseRef(str(name_or_path), revision, variant)


def _from_pretrained(
    cls: Any, ref: BaseRef, subfolder: str, flag: str = FLAG, **kwargs: Any
) -> Any:
    try:
        return cls.from_pretrained(
            ref.name_or_path, subfolder=subfolder, revision=ref.revision, **kwargs
        )
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserInputError(
            f"{flag}: cannot load {subfolder} of {ref.name_or_path} ({first})"
        ) from exc


@dataclass
class SDComponents:
    """The parts of an SD 1.x/2.x model that training needs."""

    tokenizer: Any
    text_encoder: Any
    vae: Any
    unet: Any
    noise_scheduler: Any


def load_components(ref: BaseRef) -> SDComponents:
    """Load tokenizer, text encoder, VAE, UNet and the training noise scheduler."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    variant = {"variant": ref.variant} if ref.variant else {}
    return SDComponents(
        tokenizer=_from_pretrained(CLIPTokenizer, ref, "tokenizer"),
        text_encoder=_from_pretrained(CLIPTextModel, ref, "text_encoder", **variant),
        vae=_from_pretrained(AutoencoderKL, ref, "vae", **variant),
        unet=_from_pretrained(UNet2DConditionModel, ref, "unet", **variant),
        noise_scheduler=_from_pretrained(DDPMScheduler, ref, "scheduler"),
    )
