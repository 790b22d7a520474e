"""The augmentation experiment: what do synthetic pairs add to a few real images?

For every number of real training images K, number of synthetic pairs M and repeat r,
fine-tune the segmenter (SAM, or a U-Net with ``--segmenter unet``) on K real images (chosen by subject with seed ``seed + r``) plus M
synthetic pairs, then evaluate it on each test set at native resolution. Both arms of a
repeat (M = 0 and M > 0) use the same seed, hence the same real images, the same data
order for the real part and the same box jitter. Validation is the real folder's
validation split; test sets must share no subject with the real training pool.

Layout of ``OUT``::

    experiment.json          the request; a different one is refused
    cells/k5-m500-r0/        one cell: model/ (card, config, log) and eval-<test>/
    results.csv              one row per cell and test set
    table.csv, table.md      mean ± sd over repeats
    dice_vs_real.png         Dice against real training images, with and without synthetic

A cell is done once its ``cell.json`` exists, so an interrupted experiment reruns only
what is missing (a cell stopped mid-training resumes from its last checkpoint).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fusynth.core.errors import UserInputError
from fusynth.core.experiment import (
    cell,
    csv_bytes,
    drop_models,
    mean_sd_text,
    open_experiment,
    result_rows,
)
from fusynth.core.io import atomic_write_bytes
from fusynth.core.stats import mean_sd
from fusynth.data.schema import parse_data_spec, spec_label, with_default_split

log = logging.getLogger(__name__)

#: Per-image metrics averaged over a test set for each cell.
CELL_METRICS = ("dice", "iou", "hd95_px", "assd_px", "hd95_mm", "assd_mm", "hc_abs_error_mm")
#: Metrics in the table (mean ± sd over repeats).
TABLE_METRICS = ("dice", "hd95_px", "hd95_mm", "hc_abs_error_mm")
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
class SegAugmentConfig:
    """Settings of ``fusynth experiment seg-augment``; field names are the flags."""

    real: str
    test: list[str]
    out: str
    synthetic: str | None = None
    n_real: list[int] = field(default_factory=lambda: [5, 10, 20, 50])
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
        if not self.n_real or any(k <= 0 for k in self.n_real):
            raise UserInputError(f"--n_real: give positive counts, got {self.n_real}")
        if not self.n_synthetic or any(m < 0 for m in self.n_synthetic):
            raise UserInputError(f"--n_synthetic: give counts >= 0, got {self.n_synthetic}")
        if any(self.n_synthetic) and not self.synthetic:
            raise UserInputError("--n_synthetic: counts above 0 need --synthetic COHORT")
        if self.repeats < 1:
            raise UserInputError(f"--repeats: must be at least 1, got {self.repeats}")
        if not self.test:
            raise UserInputError("--test: give at least one test set DIR[:split]")
        self.n_real = sorted(set(self.n_real))
        self.n_synthetic = sorted(set(self.n_synthetic))
        self._check_segmenter()

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
        """What determines the results (not where they go or whether to keep models)."""
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
        return d


def cell_name(k: int, m: int, r: int) -> str:
    """Folder name of one cell."""
    return f"k{k}-m{m}-r{r}"


def _check_inputs(config: SegAugmentConfig) -> None:
    """Fail before any training: counts that the data cannot give, leaking test sets."""
    from fusynth.segment.data import check_disjoint, load_seg_set

    pool = load_seg_set(f"{parse_data_spec(config.real)[0]}:train", "--real").samples
    if max(config.n_real) > len(pool):
        raise UserInputError(
            f"--n_real: asks for {max(config.n_real)} images but {config.real}:train has "
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


def run_cell(config: SegAugmentConfig, out: Path, k: int, m: int, r: int) -> dict[str, Any]:
    """Train and evaluate one cell (or read it back when done)."""
    return cell(
        out / "cells" / cell_name(k, m, r), lambda folder: _train_and_test(config, folder, k, m, r)
    )


def _unet_settings(config: SegAugmentConfig) -> dict[str, Any]:
    """The U-Net training settings of every cell (unset ones keep the recipe's defaults)."""
    return {k: getattr(config, k) for k in UNET_KEYS if getattr(config, k) is not None}


def _train_and_test(
    config: SegAugmentConfig, folder: Path, k: int, m: int, r: int
) -> dict[str, Any]:
    from fusynth.core.loop import list_checkpoints
    from fusynth.segment.evaluate import evaluate_segmentation
    from fusynth.segment.finetune import SamFinetuneConfig, embedding_cache_root, finetune_sam
    from fusynth.segment.sam import WEIGHTS_FILE

    model_dir = folder / "model"
    resume = "latest" if list_checkpoints(model_dir) else None
    if config.segmenter == "unet":
        from fusynth.segment.unet_train import UnetTrainConfig, train_unet

        config_cls, train, settings = UnetTrainConfig, train_unet, _unet_settings(config)
    else:
        config_cls, train = SamFinetuneConfig, finetune_sam
        settings = {key: getattr(config, key) for key in FINETUNE_KEYS}
    ft = config_cls(
        **settings,
        train=f"{parse_data_spec(config.real)[0]}:train",
        synthetic=config.synthetic if m else None,
        n_real=k,
        n_synthetic=m if m else None,
        seed=config.seed + r,
        output_dir=str(model_dir),
        overwrite_output_dir=resume is None,
        resume_from_checkpoint=resume,
        validation_epochs=10**6,  # validate once, at the end: the test sets judge
        checkpointing_steps=200,
        checkpoints_total_limit=1,
    )
    if not (model_dir / WEIGHTS_FILE).is_file():
        train(ft)
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
    record = {
        "n_real": k,
        "n_synthetic": m,
        "repeat": r,
        "seed": config.seed + r,
        "steps": train_log["global_step"],
        "metrics": metrics,
    }
    drop_models(model_dir, WEIGHTS_FILE, config.keep_models)
    return record


def summarise(config: SegAugmentConfig, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and sd over repeats of each metric, per test set, K and M."""
    rows = []
    for spec in config.test:
        name = spec_label(spec)
        for k in config.n_real:
            for m in config.n_synthetic:
                cell = [
                    r["metrics"][name] for r in records if (r["n_real"], r["n_synthetic"]) == (k, m)
                ]
                row: dict[str, Any] = {
                    "segmenter": config.segmenter_label,
                    "test": name,
                    "n_real": k,
                    "n_synthetic": m,
                    "repeats": len(cell),
                    # Beside every Dice: how many test images it rests on, and how many
                    # predictions (all repeats) were empty (Dice 0, no distance).
                    "n_test": max((c["n_images"] for c in cell), default=0),
                    "predictions": sum(c["n_images"] for c in cell),
                    "empty_predictions": sum(c["empty_predictions"] for c in cell),
                }
                for metric in TABLE_METRICS:
                    row[f"{metric}_mean"], row[f"{metric}_sd"] = mean_sd([c[metric] for c in cell])
                rows.append(row)
    return rows


def _markdown(config: SegAugmentConfig, table: list[dict[str, Any]]) -> str:
    shown = [m for m in TABLE_METRICS if any(math.isfinite(r[f"{m}_mean"]) for r in table)]
    digits = {"dice": 3}
    lines = [
        f"Segmenter: {config.segmenter_label}. Mean ± sd over {config.repeats} repeat(s); "
        "metrics at native resolution. An empty prediction scores Dice 0 and has no "
        "distance: many of them pull the Dice down and leave the distances to the rest.",
        "",
        "| test set | real | synthetic | "
        + " | ".join(shown)
        + " | test images | empty predictions |",
        "|---|---:|---:|" + "---:|" * (len(shown) + 2),
    ]
    for r in table:
        cells = [mean_sd_text(r[f"{m}_mean"], r[f"{m}_sd"], digits.get(m, 1)) for m in shown]
        cells += [str(r["n_test"]), f"{r['empty_predictions']} of {r['predictions']}"]
        lines.append(
            f"| {r['test']} | {r['n_real']} | {r['n_synthetic']} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines) + "\n"


def seg_augment(config: SegAugmentConfig) -> dict[str, Any]:
    """Run (or finish) the experiment; returns the table rows and where files are."""
    from fusynth.core.plots import line_chart

    out = Path(config.out)
    _check_inputs(config)
    open_experiment(out, config.request(), config.overwrite)
    cells = [
        (k, m, r) for r in range(config.repeats) for k in config.n_real for m in config.n_synthetic
    ]
    records = []
    for i, (k, m, r) in enumerate(cells, 1):
        log.info("cell %d/%d: %d real + %d synthetic, repeat %d", i, len(cells), k, m, r)
        records.append(run_cell(config, out, k, m, r))
    results = result_rows(records)
    atomic_write_bytes(out / "results.csv", csv_bytes(results))
    table = summarise(config, records)
    atomic_write_bytes(out / "table.csv", csv_bytes(table))
    atomic_write_bytes(out / "table.md", _markdown(config, table).encode())
    series, notes = {}, {}
    for spec in config.test:
        name = spec_label(spec)
        for m in config.n_synthetic:
            rows = [r for r in table if r["test"] == name and r["n_synthetic"] == m]
            n_test = max((r["n_test"] for r in rows), default=0)
            label = f"{name} ({n_test} images), {'real only' if m == 0 else f'+{m} synthetic'}"
            series[label] = ([r["dice_mean"] for r in rows], [r["dice_sd"] for r in rows])
            notes[label] = [
                f"{r['empty_predictions']} empty" if r["empty_predictions"] else "" for r in rows
            ]
    line_chart(
        out / "dice_vs_real.png",
        config.n_real,
        series,
        title=f"{config.segmenter_label}: Dice against real training images, "
        "with and without synthetic pairs",
        xlabel="real training images",
        ylabel=f"Dice (mean ± sd over {config.repeats} repeat(s))",
        point_notes=notes,
        footnote="'N empty': predictions with no foreground, over all repeats (Dice 0)",
    )
    return {"table": table, "out": out}
