"""The settings of a diffusion training run (LoRA or ControlNet), checked as a whole."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fusynth.core.errors import UserInputError, suggest
from fusynth.core.loop import LR_SCHEDULERS as LOOP_LR_SCHEDULERS
from fusynth.core.loop import (
    check_run_settings,
    choice,
    positive,
)
from fusynth.data.schema import VIEWS

#: fusynth.core.loop's schedulers plus two more of diffusers'.
LR_SCHEDULERS = (*LOOP_LR_SCHEDULERS, "cosine_with_restarts", "polynomial")
DEFAULT_CAPTION = "an ultrasound image of the fetal {view}"
PREDICTION_TYPES = ("epsilon", "v_prediction")


@dataclass
class TrainConfig:
    """Settings every training recipe shares; field names are the flags (diffusers' names).

    ``__post_init__`` checks each field and names its flag on error.
    """

    pretrained_model_name_or_path: str | None = None
    original_config: str | None = None  # configs of a single-file checkpoint
    revision: str | None = None
    variant: str | None = None
    train_data: str | None = None
    split: str = "train"
    views: list[str] | None = None
    caption_template: str = DEFAULT_CAPTION
    captions: str | None = None
    resolution: int | None = None
    center_crop: bool = False
    random_flip: bool = False
    train_batch_size: int = 4
    gradient_accumulation_steps: int = 1
    max_train_steps: int | None = None
    num_train_epochs: int = 10
    learning_rate: float = 1e-4
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1e-2
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    snr_gamma: float | None = None
    noise_offset: float = 0.0
    mixed_precision: str | None = None  # None: accelerate launch's, else "no"
    gradient_checkpointing: bool = False
    use_8bit_adam: bool = False  # bitsandbytes' AdamW8bit
    allow_tf32: bool = False  # TF32 matmuls on Ampere+ GPUs
    dataloader_num_workers: int = 0  # processes decoding images while latents are cached
    prediction_type: str | None = None  # None: the base scheduler's
    clip_skip: int | None = None  # text encoder layers skipped from the end (diffusers')
    checkpointing_steps: int = 500
    checkpoints_total_limit: int | None = None
    resume_from_checkpoint: str | None = None
    validation_prompt: list[str] = field(default_factory=list)
    validation_steps: int = 100
    validation_epochs: int | None = None  # validate every N epochs instead of N steps
    num_validation_images: int = 4
    validation_inference_steps: int = 20
    seed: int = 0
    output_dir: str = "fusynth-run"
    overwrite_output_dir: bool = False
    report_to: str = "none"

    def __post_init__(self) -> None:
        if isinstance(self.views, str):
            self.views = [v for v in self.views.split(",") if v.strip()]
        if self.views is not None:
            self.views = [v.strip() for v in self.views]
            for v in self.views:
                if v not in VIEWS:
                    raise UserInputError(
                        f"--views: unknown view {v!r}{suggest(v, VIEWS)}; choose from {', '.join(VIEWS)}"
                    )
        if isinstance(self.validation_prompt, str):
            self.validation_prompt = [self.validation_prompt]
        if self.resolution is not None:
            positive(self.resolution, "--resolution")
            if self.resolution % 8:
                raise UserInputError(
                    f"--resolution: must be divisible by 8 (the VAE downsamples 8x), got {self.resolution}"
                )
        check_run_settings(
            self,
            positive_fields=(
                "gradient_accumulation_steps",
                "validation_steps",
                "num_validation_images",
                "validation_inference_steps",
                "learning_rate",
            ),
            non_negative_fields=("noise_offset",),
            lr_schedulers=LR_SCHEDULERS,
        )
        if self.snr_gamma is not None:
            positive(self.snr_gamma, "--snr_gamma")
        positive(self.dataloader_num_workers, "--dataloader_num_workers", allow_zero=True)
        if self.validation_epochs is not None:
            positive(self.validation_epochs, "--validation_epochs")
        if self.clip_skip is not None:
            positive(self.clip_skip, "--clip_skip", allow_zero=True)
        if self.prediction_type is not None:
            choice(self.prediction_type, PREDICTION_TYPES, "--prediction_type")
        if self.use_8bit_adam:
            check_8bit_adam()


def check_8bit_adam() -> None:
    """Refuse ``--use_8bit_adam`` in one line where bitsandbytes does not import.

    Raises:
        UserInputError: naming the flag and the package.
    """
    try:
        import bitsandbytes  # noqa: F401
    except Exception as exc:  # ImportError, or a native library that fails to load
        raise UserInputError(
            "--use_8bit_adam: needs bitsandbytes, which does not import here "
            f"({type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}); "
            "pip install bitsandbytes, or drop the flag"
        ) from exc


@dataclass(frozen=True)
class TrainedAdapter:
    """What generation reads back from an adapter's training ``config.json``.

    The contract between diffusion training (which writes these keys in its resolved run
    config) and the cohort writers (which read them): one place names every key, so a
    renamed setting cannot silently fall back to a default at generation time.
    """

    method: str = "lora"
    #: ``pretrained_model_name_or_path`` of the run: the adapter's own base.
    base: str | None = None
    resolution: int | None = None
    #: The caption of each view; a list where captions varied within a view.
    captions_by_view: dict[str, Any] = field(default_factory=dict)
    #: A packed image/mask LoRA's channel layout, e.g. ``image,image,mask``.
    packing: str | None = None
    #: A ControlNet's conditioning.
    conditioning: str | None = None
    #: The training data spec, where masks can be drawn from again.
    train_data: str | None = None
    #: The configs of a single-file base (``--original_config``).
    original_config: str | None = None
    #: Text encoder layers skipped from the end in training (diffusers' ``clip_skip``).
    clip_skip: int | None = None
    #: What the UNet was trained to predict (``epsilon`` or ``v_prediction``).
    prediction_type: str | None = None
    #: The caption template over schema columns the captions were rendered from.
    caption_template: str | None = None
    #: A ``--captions`` YAML (view: caption) the run used instead of the template.
    captions: str | None = None

    #: run-config key -> field (the keys ``diffusion.training`` writes).
    KEYS = {
        "method": "method",
        "pretrained_model_name_or_path": "base",
        "resolution": "resolution",
        "captions_by_view": "captions_by_view",
        "packing": "packing",
        "conditioning": "conditioning",
        "train_data": "train_data",
        "original_config": "original_config",
        "clip_skip": "clip_skip",
        "prediction_type": "prediction_type",
        "caption_template": "caption_template",
        "captions": "captions",
    }

    @classmethod
    def from_run_config(cls, cfg: dict[str, Any]) -> TrainedAdapter:
        """The fields of a resolved run config (missing keys keep their defaults)."""
        values = {field_: cfg[key] for key, field_ in cls.KEYS.items() if cfg.get(key) is not None}
        return cls(**values)

    @classmethod
    def read(cls, path: str | Path, flag: str, required: bool = False) -> TrainedAdapter:
        """The config of the adapter at ``path`` (its folder, or a weights file in it).

        Args:
            path: an adapter folder, or a weights file inside one.
            flag: the flag to name in errors.
            required: refuse a folder without ``config.json`` (else: all defaults, as for
                an adapter trained elsewhere).

        Raises:
            UserInputError: no config where one is required, or one that is not JSON.
        """
        import json

        from fusynth.core.artifacts import RUN_CONFIG

        path = Path(path)
        folder = path if path.is_dir() else path.parent
        cfg_file = folder / RUN_CONFIG
        if not cfg_file.is_file():
            if required:
                raise UserInputError(
                    f"{flag}: {folder} is not a fusynth training output (no {RUN_CONFIG})"
                )
            return cls()
        try:
            cfg = json.loads(cfg_file.read_text())
        except json.JSONDecodeError as exc:
            raise UserInputError(f"{flag}: {cfg_file} is not valid JSON ({exc.msg})") from exc
        if not isinstance(cfg, dict):
            raise UserInputError(f"{flag}: {cfg_file} does not hold a JSON object")
        return cls.from_run_config(cfg)

    def caption(self, view: str) -> str | None:
        """The caption the adapter was trained with for ``view`` (the first of several)."""
        caption = self.captions_by_view.get(view)
        return caption[0] if isinstance(caption, list) else caption

    def first_caption(self) -> str | None:
        """The caption of the first trained view, or None."""
        return (
            self.caption(next(iter(self.captions_by_view), "")) if self.captions_by_view else None
        )
