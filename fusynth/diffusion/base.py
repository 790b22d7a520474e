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
        check_supported_folder(path, flag)
        smoke = is_smoke_model(path)
        if smoke:
            log.warning("using the %s", SMOKE_NOTE)
        # resolved: a relative path in a card or provenance would read as a hub id
        return BaseRef(str(path.resolve()), revision, variant, smoke=smoke)
    parts = str(name_or_path).split("/")
    if len(parts) != 2 or not all(parts) or str(name_or_path).startswith((".", "~")):
        raise UserInputError(f"{flag}: {name_or_path} is neither a folder nor a hub id (org/name)")
    return BaseRef(str(name_or_path), revision, variant)


def _read_json(path: Path, flag: str) -> dict[str, Any]:
    import json

    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserInputError(f"{flag}: cannot read {path} ({exc})") from exc
    if not isinstance(data, dict):
        raise UserInputError(f"{flag}: {path} does not hold a JSON object")
    return data


def unsupported_reason(
    model_index: dict[str, Any], unet_config: dict[str, Any] | None
) -> str | None:
    """Why a base is not an SD 1.x/2.x model fusynth can train on, or None.

    SDXL is told apart by its second text encoder (``text_encoder_2``) or its UNet's
    ``addition_embed_type`` (time and text-embedding conditioning that SD 1.x/2.x UNets
    do not take); other families (SD3, Flux, ...) have no ``unet`` at all.
    """
    cls = str(model_index.get("_class_name", ""))
    if (
        "text_encoder_2" in model_index
        or "XL" in cls
        or (unet_config is not None and unet_config.get("addition_embed_type"))
    ):
        return (
            f"an SDXL base ({cls or 'text_encoder_2'}); fusynth trains and generates with "
            "SD 1.x/2.x bases only (SDXL needs pooled text embeddings and size conditioning)"
        )
    if model_index and "unet" not in model_index:
        return f"a {cls or 'non-UNet'} base without a unet; fusynth supports SD 1.x/2.x bases only"
    if unet_config is not None and unet_config.get("_class_name", "UNet2DConditionModel") != (
        "UNet2DConditionModel"
    ):
        return f"its unet is a {unet_config['_class_name']}, not an SD 1.x/2.x UNet2DConditionModel"
    return None


def check_supported_folder(path: Path, flag: str = FLAG) -> None:
    """Refuse, in one line and before anything is loaded, a diffusers folder that is not
    an SD 1.x/2.x base (SDXL, SD3, ...).

    Raises:
        UserInputError: naming the flag, the folder and what it is.
    """
    index = _read_json(path / "model_index.json", flag)
    unet_cfg = path / "unet" / "config.json"
    unet = _read_json(unet_cfg, flag) if unet_cfg.is_file() else None
    reason = unsupported_reason(index, unet)
    if reason:
        raise UserInputError(f"{flag}: {path} is {reason}")


@dataclass(frozen=True)
class BaseGeometry:
    """The sizes a base was built for, read from its configs (no weights loaded)."""

    #: The UNet's native latent side (``unet.config.sample_size``).
    sample_size: int
    #: How many pixels one latent covers: ``2 ** (len(vae.block_out_channels) - 1)``.
    vae_scale_factor: int

    @property
    def resolution(self) -> int:
        """The base's native image side, as diffusers' pipelines default to it."""
        return self.sample_size * self.vae_scale_factor


def base_geometry(ref: BaseRef, flag: str = FLAG) -> BaseGeometry:
    """Read the UNet and VAE configs of ``ref`` (a config download for a hub id) and
    refuse unsupported bases before any weights or data are loaded.

    Raises:
        UserInputError: unreadable configs or an unsupported base, naming the flag.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel

    def config(cls: Any, sub: str) -> dict[str, Any]:
        try:
            return dict(cls.load_config(ref.name_or_path, subfolder=sub, revision=ref.revision))
        except (OSError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserInputError(
                f"{flag}: cannot read the {sub} config of {ref.name_or_path} ({first})"
            ) from exc

    unet = config(UNet2DConditionModel, "unet")
    reason = unsupported_reason({}, unet)
    if reason:
        raise UserInputError(f"{flag}: {ref.source} is {reason}")
    vae = config(AutoencoderKL, "vae")
    sample = unet.get("sample_size") or 64
    if isinstance(sample, (list, tuple)):
        sample = sample[0]
    return BaseGeometry(int(sample), 2 ** (len(vae.get("block_out_channels", (0,) * 4)) - 1))


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
