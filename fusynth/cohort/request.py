"""What every ``fusynth generate`` request shares: the base, the sampler, the writer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from fusynth.core.errors import UserInputError


@dataclass(kw_only=True)
class SamplingRequest:
    """Settings of the base, the sampler and the cohort writer; checked on creation."""

    out: str
    base: str | None = None
    original_config: str | None = None  # configs of a single-file --base
    revision: str | None = None
    variant: str | None = None
    scheduler: str = "euler"
    steps: int = 20
    guidance: float = 7.0
    negative_prompt: str | None = None
    resolution: int | None = None
    batch_size: int = 4
    shard_size: int = 64
    seed: int = 0
    cpu_threads: int = 2
    overwrite: bool = False

    #: Further integer fields of a subclass that must be positive.
    positive_fields: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        from fusynth.diffusion.pipelines import check_scheduler

        check_scheduler(self.scheduler)
        for name in ("steps", "batch_size", "shard_size", "cpu_threads", *self.positive_fields):
            if getattr(self, name) <= 0:
                raise UserInputError(f"--{name}: must be positive, got {getattr(self, name)}")
        if self.guidance < 0:
            raise UserInputError(f"--guidance: must be >= 0, got {self.guidance}")
        if self.resolution is not None and (self.resolution <= 0 or self.resolution % 8):
            raise UserInputError(
                "--resolution: must be a positive multiple of 8 (the VAE downsamples 8x), "
                f"got {self.resolution}"
            )
