"""The augmentation experiment: what do synthetic pairs add to a few real images?

For every arm (``--arms``: real-only, always, plus classical copies of the real pairs,
M synthetic pairs, or both), number of real training images K, number of synthetic
pairs M and repeat r, fine-tune the segmenter (SAM, or a U-Net with ``--segmenter
unet``) on K real images (chosen by subject with seed ``seed + r``) plus what the arm
adds, used as ``--protocol`` says (mix, pretrain-finetune, synthetic-only:
:mod:`fusynth.core.protocols`, stages in :mod:`fusynth.segment.arms`), then evaluate it
on each test set at native resolution. All arms of a repeat use the same seed, hence
the same real images, the same data order for the real part and the same box jitter.
Validation is the real folder's validation split; test sets must share no subject with
the real training pool.

Layout of ``OUT``::

    experiment.json          the request; a different one is refused
    cells/k5-m500-r0/        one cell: model/ (card, config, log) and eval-<test>/
                             (other arms: k5-m0-classical-r0, k5-m500-pretrain-finetune-r0,
                             k0-m500-synthetic-only-r0, ...; ``kall``: every real image)
    results.csv              one row per cell and test set (protocol and arm columns)
    table.csv, table.md      mean ± sd over repeats; table.md adds the paired differences
    differences.csv          each arm's paired Dice difference to real-only
    dice_vs_real.png         Dice against real training images, per arm
    dice_difference.png      the paired difference to real-only against K

A cell is done once its ``cell.json`` exists, so an interrupted experiment reruns only
what is missing (a cell stopped mid-training resumes from its last checkpoint).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fusynth.core.errors import UserInputError
from fusynth.core.experiment import cell, csv_bytes, drop_models, open_experiment, result_rows
from fusynth.core.io import atomic_write_bytes
from fusynth.core.protocols import REAL, Arm, ProtocolSettings, arm_protocol, parse_arms
from fusynth.data.schema import parse_data_spec, spec_label, with_default_split
from fusynth.segment.arms import cell_name

log = logging.getLogger(__name__)

#: Per-image metrics averaged over a test set for each cell.
CELL_METRICS = ("dice", "iou", "hd95_px", "assd_px", "hd95_mm", "assd_mm", "hc_abs_error_mm")
#: Settings passed through to every cell's fine-tuning.
FINETUNE_KEYS = (
    "model_type",
    "checkpoint",
    "train_parts",
    "encoder_lora_rank",
    "box_jitter",
    "loss",
    "train_batch_size",
    "num_train_epochs",
    "max_train_steps",
    "learning_rate",
    "mixed_precision",
    "embedding_cache",
)
#: Settings of the U-Net arm (``--segmenter unet``) passed to every cell's training.
UNET_KEYS = (
    "encoder",
    "encoder_weights",
    "checkpoint",
    "train_parts",
    "resolution",
    "loss",
    "train_batch_size",
    "num_train_epochs",
    "max_train_steps",
    "learning_rate",
    "mixed_precision",
)
#: Every per-cell training flag the command line passes through.
SEG_AUGMENT_KEYS = ("segmenter", *dict.fromkeys(FINETUNE_KEYS + UNET_KEYS))
SEGMENTERS = ("sam", "unet")


@dataclass
class SegAugmentConfig(ProtocolSettings):
    """Settings of ``fusynth experiment seg-augment``; field names are the flags."""

    real: str
    test: list[str]
    out: str
    synthetic: str | None = None
    n_real: list[int | str] = field(default_factory=lambda: [5, 10, 20, 50])  # or "all"
    n_synthetic: list[int] = field(default_factory=lambda: [0, 500])
    repeats: int = 3
    seed: int = 0
    segmenter: str = "sam"
    model_type: str = "tiny"
    checkpoint: str | None = None
    train_parts: str | None = None
    encoder: str | None = None
    encoder_weights: str | None = None
    resolution: int | None = None
    encoder_lora_rank: int = 0
    box_jitter: int = 10
    loss: str = "dice+bce"
    train_batch_size: int = 4
    num_train_epochs: int = 20
    max_train_steps: int | None = None
    learning_rate: float | None = None
    mixed_precision: str | None = None  # None: accelerate launch's, else "no"
    embedding_cache: str | None = None
    keep_models: bool = False
    overwrite: bool = False

    def __post_init__(self) -> None:
        self.n_real = check_n_real(self.n_real)
        if not self.n_synthetic or any(m < 0 for m in self.n_synthetic):
            raise UserInputError(f"--n_synthetic: give counts >= 0, got {self.n_synthetic}")
        if any(self.n_synthetic) and not self.synthetic:
            raise UserInputError("--n_synthetic: counts above 0 need --synthetic COHORT")
        if self.repeats < 1:
            raise UserInputError(f"--repeats: must be at least 1, got {self.repeats}")
        if not self.test:
            raise UserInputError("--test: give at least one test set DIR[:split]")
        self.n_synthetic = sorted(set(self.n_synthetic))
        self._check_segmenter()
        self.check_protocol_settings(any(self.n_synthetic), self.max_train_steps)

    def _check_segmenter(self) -> None:
        """Resolve the segmenter's defaults and refuse the other one's settings."""
        from fusynth.core.loop import choice

        choice(self.segmenter, SEGMENTERS, "--segmenter")
        if self.segmenter == "sam":
            for flag in ("encoder", "encoder_weights", "resolution"):
                if getattr(self, flag) is not None:
                    raise UserInputError(f"--{flag}: applies to --segmenter unet only")
            self.train_parts = self.train_parts or "decoder"
            return
        from fusynth.segment.unet import (
            DEFAULT_ENCODER,
            check_encoder,
            check_resolution,
            parse_train_parts,
        )

        sam_only = {"model_type": "tiny", "encoder_lora_rank": 0, "embedding_cache": None}
        for flag, default in sam_only.items():
            if getattr(self, flag) != default:
                raise UserInputError(f"--{flag}: applies to --segmenter sam only")
        if self.checkpoint is None:
            self.encoder = check_encoder(self.encoder or DEFAULT_ENCODER)
        elif self.encoder is not None:
            raise UserInputError("--encoder: a --checkpoint U-Net folder names its own encoder")
        self.train_parts = self.train_parts or "all"
        parse_train_parts(self.train_parts)
        self.resolution = check_resolution(self.resolution or 256)
        if self.encoder_weights and self.checkpoint:
            raise UserInputError(
                "--encoder_weights: a --checkpoint folder already holds the encoder's weights"
            )

    @property
    def segmenter_label(self) -> str:
        """The segmenter as tables and charts name it."""
        if self.segmenter == "sam":
            return f"SAM ({self.model_type})"
        return f"U-Net ({self.encoder or 'from ' + str(self.checkpoint)}, {self.train_parts})"

    def request(self) -> dict[str, Any]:
        """What determines the results (not where they go or whether to keep models).

        The arm and protocol settings are recorded only where they differ from what an
        experiment did before they existed (real-only and mixed real + synthetic), so
        the request of such an experiment reads as it did and its folder stays valid.
        """
        from fusynth.data.augment import CLASSICAL

        d = dataclasses.asdict(self)
        for k in ("out", "keep_models", "overwrite", "embedding_cache"):
            d.pop(k)
        # Each segmenter's request holds only its own settings (a SAM request reads as
        # it did before the U-Net arm existed, so its experiment folders stay valid).
        other = ("segmenter", "encoder", "encoder_weights", "resolution")
        if self.segmenter == "unet":
            other = ("model_type", "encoder_lora_rank", "box_jitter")
        for k in other:
            d.pop(k)
        classical = any(Arm(a).classical for a in self.arms)
        unchanged = {
            "arms": parse_arms(None, any(self.n_synthetic)),
            "protocol": "mix",
            "pretrain_steps": None,
            "n_boot": 1000,
            "preset": None,
        }
        for k, default in unchanged.items():
            if d[k] == default:
                d.pop(k)
        if classical:
            d["classical"] = CLASSICAL.describe()  # the pipeline, recorded with the results
        else:
            d.pop("classical_copies")
        return d

    def cells(self) -> list[tuple[str, int | str, int, int]]:
        """``(arm, K, M, repeat)`` of every cell: M is 0 without synthetic data, K is 0
        for synthetic-only arms (they use no real image)."""
        ms = [m for m in self.n_synthetic if m > 0]
        out = []
        for r in range(self.repeats):
            for arm in self.arms:
                synthetic_only = arm_protocol(arm, self.protocol) == "synthetic-only"
                for k in [0] if synthetic_only else self.n_real:
                    for m in ms if Arm(arm).synthetic else [0]:
                        out.append((arm, k, m, r))
        return out

    def arm_cells(self) -> list[tuple[str, int | str, int]]:
        """``(arm, K, M)`` of every table row, real-only first."""
        order = {k: i for i, k in enumerate([0, *self.n_real])}
        return sorted(
            {(a, k, m) for a, k, m, _ in self.cells()},
            key=lambda c: (self.arms.index(c[0]), c[2], order[c[1]]),
        )


def check_n_real(values: list[int | str]) -> list[int | str]:
    """Positive counts and ``all``, counts sorted, ``all`` last.

    Raises:
        UserInputError: an empty list, a count below 1 or another word.
    """
    if not values:
        raise UserInputError("--n_real: give positive counts or all")
    for k in values:
        if k != "all" and (isinstance(k, bool) or not isinstance(k, int) or k <= 0):
            raise UserInputError(f"--n_real: give positive counts or all, got {values}")
    counts = sorted({k for k in values if k != "all"})
    return [*counts, "all"] if "all" in values else counts


def parse_n_real(text: str) -> list[int | str]:
    """``"5,10,all"`` -> ``[5, 10, "all"]``.

    Raises:
        UserInputError: an element that is neither an integer nor ``all``.
    """
    out: list[int | str] = []
    for part in str(text).split(","):
        item = part.strip()
        if item == "all":
            out.append(item)
            continue
        try:
            out.append(int(item))
        except ValueError:
            raise UserInputError(
                f"--n_real: {item!r} is neither an integer nor all (give a comma-separated "
                "list, e.g. 5,10,all)"
            ) from None
    return out


def _check_inputs(config: SegAugmentConfig) -> int:
    """Fail before any training: counts that the data cannot give, leaking test sets.

    Returns:
        The number of images with masks in the real training pool (``--n_real all``).
    """
    from fusynth.segment.data import check_disjoint, load_seg_set

    pool = load_seg_set(f"{parse_data_spec(config.real)[0]}:train", "--real").samples
    counts = [k for k in config.n_real if k != "all"]
    if counts and max(counts) > len(pool):
        raise UserInputError(
            f"--n_real: asks for {max(counts)} images but {config.real}:train has "
            f"{len(pool)} with masks"
        )
    if config.synthetic and max(config.n_synthetic):
        cohort = load_seg_set(config.synthetic, "--synthetic").samples
        if max(config.n_synthetic) > len(cohort):
            raise UserInputError(
                f"--n_synthetic: asks for {max(config.n_synthetic)} pairs but "
                f"{config.synthetic} has {len(cohort)}"
            )
    for spec in config.test:
        test = load_seg_set(with_default_split(spec, "test"), "--test").samples
        check_disjoint(pool, test, f"--test {spec}")
    if config.segmenter == "unet":  # a weights file or folder that does not fit: now
        from fusynth.segment.unet_train import UnetTrainConfig, initial_model

        initial_model(UnetTrainConfig(**_unet_settings(config)))
    return len(pool)


def _cell_metrics(per_image_csv: Path) -> dict[str, float]:
    """Mean of each metric over a test set's images (NaN and blanks left out)."""
    with per_image_csv.open() as fh:
        rows = list(csv.DictReader(fh))
    out = {
        "n_images": len(rows),
        "empty_predictions": sum(1 for r in rows if r.get("hd95_px") in (None, "")),
    }
    for m in CELL_METRICS:
        values = [float(r[m]) for r in rows if r.get(m) not in (None, "")]
        values = [v for v in values if math.isfinite(v)]
        out[m] = sum(values) / len(values) if values else math.nan
    return out


def run_cell(
    config: SegAugmentConfig, out: Path, k: int | str, m: int, r: int, arm: str = REAL
) -> dict[str, Any]:
    """Train and evaluate one cell (or read it back when done), as a record with its
    protocol and arm (cells written before arms existed get them here)."""
    protocol = arm_protocol(arm, config.protocol)
    folder = out / "cells" / cell_name(k, m, r, arm, config.protocol)
    rec = cell(folder, lambda f: _train_and_test(config, f, k, m, r, arm))
    return {
        "protocol": protocol,
        "arm": arm,
        "n_real": k,
        "n_synthetic": m,
        "n_classical": rec.get("n_classical", 0),
        "repeat": r,
        "seed": rec["seed"],
        "steps": rec["steps"],
        "pretrain_steps": rec.get("pretrain_steps", 0),
        "metrics": rec["metrics"],
    }


def _unet_settings(config: SegAugmentConfig) -> dict[str, Any]:
    """The U-Net training settings of every cell (unset ones keep the recipe's defaults)."""
    return {k: getattr(config, k) for k in UNET_KEYS if getattr(config, k) is not None}


def _stage_config(config: SegAugmentConfig, r: int, model_dir: Path, stage: Any) -> Any:
    """The ``SamFinetuneConfig`` or ``UnetTrainConfig`` of one training stage of a cell."""
    from fusynth.core.loop import list_checkpoints
    from fusynth.segment.finetune import SamFinetuneConfig

    resume = "latest" if list_checkpoints(model_dir) else None
    if config.segmenter == "unet":
        from fusynth.segment.unet_train import UnetTrainConfig

        config_cls, settings = UnetTrainConfig, _unet_settings(config)
    else:
        config_cls = SamFinetuneConfig
        settings = {key: getattr(config, key) for key in FINETUNE_KEYS}
    settings["max_train_steps"] = stage.max_train_steps
    if stage.checkpoint is not None:  # the pretrain stage's model folder, every weight
        settings["checkpoint"] = stage.checkpoint
        for key in ("encoder", "encoder_weights"):  # a U-Net folder names its own
            settings.pop(key, None)
    if stage.learning_rate is not None:
        settings["learning_rate"] = stage.learning_rate
    return config_cls(
        **settings,
        train=stage.train,
        synthetic=stage.synthetic,
        n_real=stage.n_real,
        n_synthetic=stage.n_synthetic,
        validation=stage.validation,
        seed=config.seed + r,
        output_dir=str(model_dir),
        overwrite_output_dir=resume is None,
        resume_from_checkpoint=resume,
        validation_epochs=10**6,  # validate once, at the end: the test sets judge
        checkpointing_steps=200,
        checkpoints_total_limit=1,
    )


def real_learning_rate(config: SegAugmentConfig) -> float:
    """The learning rate of the real-only arm (from ``--checkpoint`` or from scratch)."""
    if config.segmenter == "unet":
        from fusynth.segment.unet_train import UnetTrainConfig

        return config.learning_rate or UnetTrainConfig.learning_rate
    from fusynth.segment.finetune import SamFinetuneConfig

    return SamFinetuneConfig(checkpoint=config.checkpoint, learning_rate=config.learning_rate).lr


def _train_and_test(
    config: SegAugmentConfig, folder: Path, k: int | str, m: int, r: int, arm: str = REAL
) -> dict[str, Any]:
    from fusynth.segment.arms import cell_stages
    from fusynth.segment.evaluate import evaluate_segmentation
    from fusynth.segment.finetune import embedding_cache_root, finetune_sam
    from fusynth.segment.sam import WEIGHTS_FILE

    if config.segmenter == "unet":
        from fusynth.segment.unet_train import train_unet as train
    else:
        train = finetune_sam
    model_dir = folder / "model"
    stages, trained_on = cell_stages(config, folder, arm, k, m, r, real_learning_rate(config))
    if not (model_dir / WEIGHTS_FILE).is_file():
        for stage in stages:
            if not (folder / stage.name / WEIGHTS_FILE).is_file():
                train(_stage_config(config, r, folder / stage.name, stage))
    ft = _stage_config(config, r, model_dir, stages[-1])
    # A U-Net has no image encoder to cache; a frozen SAM encoder encodes each image once.
    cache = embedding_cache_root(ft) if config.segmenter == "sam" else None
    metrics = {}
    for spec in config.test:
        name = spec_label(spec)
        eval_dir = folder / f"eval-{name.replace(':', '-')}"
        if not (eval_dir / "per_image.csv").is_file():
            evaluate_segmentation(
                model_dir,
                with_default_split(spec, "test"),
                eval_dir,
                seed=config.seed,
                overwrite=True,
                embedding_cache=cache,
            )
        metrics[name] = _cell_metrics(eval_dir / "per_image.csv")
    train_log = json.loads((model_dir / "train_log.json").read_text())
    pretrain_steps = 0
    if (folder / "pretrain").is_dir():
        log_file = folder / "pretrain" / "train_log.json"
        pretrain_steps = json.loads(log_file.read_text())["global_step"]
        drop_models(folder / "pretrain", WEIGHTS_FILE, config.keep_models)
    record = {
        "protocol": trained_on["protocol"],
        "arm": arm,
        "n_real": k,
        "n_synthetic": m,
        "n_classical": trained_on["n_classical"],
        "repeat": r,
        "seed": config.seed + r,
        "steps": train_log["global_step"] + pretrain_steps,  # the budget every arm shares
        "pretrain_steps": pretrain_steps,
        "metrics": metrics,
    }
    drop_models(model_dir, WEIGHTS_FILE, config.keep_models)
    for data in folder.glob("data-*"):  # the added pairs: rebuilt from the seed on demand
        shutil.rmtree(data)
    return record


def seg_augment(config: SegAugmentConfig) -> dict[str, Any]:
    """Run (or finish) the experiment; returns the table rows, the paired differences
    and where files are."""
    from fusynth.segment.experiment_report import write_reports

    out = Path(config.out)
    pool_size = _check_inputs(config)
    open_experiment(out, config.request(), config.overwrite)
    cells = config.cells()
    records = []
    for i, (arm, k, m, r) in enumerate(cells, 1):
        log.info("cell %d/%d: %s, %s real + %d synthetic, repeat %d", i, len(cells), arm, k, m, r)
        records.append(run_cell(config, out, k, m, r, arm))
    atomic_write_bytes(out / "results.csv", csv_bytes(result_rows(records)))
    table, diffs = write_reports(config, out, records, pool_size)
    return {"table": table, "differences": diffs, "out": out}
