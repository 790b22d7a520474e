"""The augmentation experiment: what do synthetic pairs add to a few real images?

For every arm, number of real training images K, number of synthetic pairs M and
repeat r, fine-tune SAM on K real images (chosen by subject with seed ``seed + r``) plus
what the arm adds (``--arms``: classical copies, M synthetic pairs, both; the real-only
arm is always there), used as ``--protocol`` says (mix, pretrain-finetune,
synthetic-only: :mod:`fusynth.core.protocols`), then evaluate it on each test set at
native resolution. All arms of a repeat use the same seed, hence the same real images,
the same synthetic pairs and the same box jitter; so each arm is compared with real-only
image by image (paired difference, subject-bootstrap interval, sign-flip p-value).
Validation is the real folder's validation split; test sets must share no subject with
the real training pool.

Layout of ``OUT``::

    experiment.json          the request; a different one is refused
    cells/k5-m500-r0/        one cell: model/ (card, config, log) and eval-<test>/
                             (classical arms add -classical, other protocols -<protocol>)
    results.csv              one row per cell and test set (protocol and arm columns)
    table.csv, table.md      mean ± sd over repeats, and the paired differences
    differences.csv          each arm - real-only per test set, K and M: difference,
                             95% CI, p-value, whether the CI crosses zero
    dice_vs_real.png         Dice against real training images, per arm
    dice_difference.png      Dice difference to real-only, with its interval

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
from fusynth.core.experiment import (
    cell,
    csv_bytes,
    drop_models,
    mean_sd_text,
    open_experiment,
    result_rows,
)
from fusynth.core.io import atomic_write_bytes
from fusynth.core.protocols import (
    REAL,
    Arm,
    arm_protocol,
    cell_suffix,
    check_protocol,
    difference_chart,
    markdown_rows,
    paired_rows,
    parse_arms,
)
from fusynth.core.stats import mean_sd
from fusynth.data.schema import parse_data_spec, spec_label, with_default_split

log = logging.getLogger(__name__)

#: Per-image metrics averaged over a test set for each cell.
CELL_METRICS = ("dice", "iou", "hd95_px", "assd_px", "hd95_mm", "assd_mm", "hc_abs_error_mm")
#: Metrics in the table (mean ± sd over repeats).
TABLE_METRICS = ("dice", "hd95_px", "hd95_mm", "hc_abs_error_mm")
#: Per-image metrics compared with real-only, pairwise.
PAIRED_METRICS = ("dice", "hc_abs_error_mm")
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
    model_type: str = "tiny"
    checkpoint: str | None = None
    train_parts: str = "decoder"
    encoder_lora_rank: int = 0
    box_jitter: int = 10
    loss: str = "dice+bce"
    train_batch_size: int = 4
    num_train_epochs: int = 20
    max_train_steps: int | None = None
    learning_rate: float | None = None
    mixed_precision: str | None = None  # None: accelerate launch's, else "no"
    embedding_cache: str | None = None
    arms: list[str] | None = None  # None: real, and real+synthetic with counts above 0
    protocol: str = "mix"
    pretrain_steps: int | None = None
    classical_copies: int = 4
    n_boot: int = 1000
    preset: str | None = None  # recorded: the request came from this preset
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
        self.arms = parse_arms(self.arms, any(self.n_synthetic))
        check_protocol(self.protocol, self.max_train_steps, self.pretrain_steps)
        if self.classical_copies < 1:
            raise UserInputError(
                f"--classical_copies: must be at least 1, got {self.classical_copies}"
            )
        if self.n_boot < 1:
            raise UserInputError(f"--n_boot: must be at least 1, got {self.n_boot}")

    def request(self) -> dict[str, Any]:
        """What determines the results (not where they go or whether to keep models)."""
        from fusynth.data.augment import CLASSICAL

        d = dataclasses.asdict(self)
        for k in ("out", "keep_models", "overwrite", "embedding_cache"):
            d.pop(k)
        if any(Arm(a).classical for a in self.arms):
            d["classical"] = CLASSICAL.describe()  # the pipeline, recorded with the results
        return d

    def cells(self) -> list[tuple[str, int, int, int]]:
        """``(arm, K, M, repeat)`` of every cell; M is 0 for arms without synthetic data."""
        ms = [m for m in self.n_synthetic if m > 0]
        return [
            (arm, k, m, r)
            for r in range(self.repeats)
            for k in self.n_real
            for arm in self.arms
            for m in (ms if Arm(arm).synthetic else [0])
        ]


def cell_name(k: int, m: int, r: int, arm: str = REAL, protocol: str = "mix") -> str:
    """Folder name of one cell."""
    return f"k{k}-m{m}{cell_suffix(arm, protocol)}-r{r}"


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
    config: SegAugmentConfig, out: Path, k: int, m: int, r: int, arm: str = REAL
) -> dict[str, Any]:
    """Train and evaluate one cell (or read it back when done)."""
    return cell(
        out / "cells" / cell_name(k, m, r, arm, config.protocol),
        lambda folder: _train_and_test(config, folder, k, m, r, arm),
    )


def _finetune_config(config: SegAugmentConfig, folder: Path, stage: Any, r: int) -> Any:
    """The ``SamFinetuneConfig`` of one training stage of a cell."""
    from fusynth.core.loop import list_checkpoints
    from fusynth.segment.finetune import SamFinetuneConfig

    model_dir = folder / stage.name
    resume = "latest" if list_checkpoints(model_dir) else None
    settings = {key: getattr(config, key) for key in FINETUNE_KEYS}
    settings["max_train_steps"] = stage.max_train_steps
    if stage.init:  # fine-tune what the pretraining stage wrote
        settings["checkpoint"] = stage.init
    return SamFinetuneConfig(
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


def _train_and_test(
    config: SegAugmentConfig, folder: Path, k: int, m: int, r: int, arm: str = REAL
) -> dict[str, Any]:
    from fusynth.segment.arms import cell_stages
    from fusynth.segment.evaluate import evaluate_segmentation
    from fusynth.segment.finetune import embedding_cache_root, finetune_sam
    from fusynth.segment.sam import WEIGHTS_FILE

    model_dir = folder / "model"
    stages, trained_on = cell_stages(config, folder, arm, k, m, r)
    for stage in stages:
        if not (folder / stage.name / WEIGHTS_FILE).is_file():
            finetune_sam(_finetune_config(config, folder, stage, r))
    ft = _finetune_config(config, folder, stages[-1], r)
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
                embedding_cache=embedding_cache_root(ft),  # frozen encoder: encoded once
            )
        metrics[name] = _cell_metrics(eval_dir / "per_image.csv")
    train_log = json.loads((model_dir / "train_log.json").read_text())
    record = {
        "protocol": trained_on["protocol"],
        "arm": arm,
        "n_real": k,
        "n_synthetic": m,
        "n_classical": trained_on["n_classical"],
        "repeat": r,
        "seed": config.seed + r,
        "steps": train_log["global_step"],
        "metrics": metrics,
    }
    record["pretrain_steps"] = 0
    if (folder / "pretrain").is_dir():
        record["pretrain_steps"] = json.loads((folder / "pretrain" / "train_log.json").read_text())[
            "global_step"
        ]
        record["steps"] += record["pretrain_steps"]  # the budget both arms share
        drop_models(folder / "pretrain", WEIGHTS_FILE, config.keep_models)
    for data in folder.glob("data-*"):  # the added samples: rebuilt from the seed on demand
        shutil.rmtree(data)
    drop_models(model_dir, WEIGHTS_FILE, config.keep_models)
    return record


def _arm_cells(config: SegAugmentConfig) -> list[tuple[str, int]]:
    """``(arm, M)`` of every row of the table, real-only first."""
    return sorted(
        {(a, m) for a, _, m, _ in config.cells()}, key=lambda am: (config.arms.index(am[0]), am[1])
    )


def summarise(config: SegAugmentConfig, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and sd over repeats of each metric, per test set, K, arm and M."""
    rows = []
    for spec in config.test:
        name = spec_label(spec)
        for k in config.n_real:
            for arm, m in _arm_cells(config):
                cell = [
                    r["metrics"][name]
                    for r in records
                    if (r["arm"], r["n_real"], r["n_synthetic"]) == (arm, k, m)
                ]
                row: dict[str, Any] = {
                    "test": name,
                    "protocol": arm_protocol(arm, config.protocol),
                    "arm": arm,
                    "n_real": k,
                    "n_synthetic": m,
                    "repeats": len(cell),
                }
                for metric in TABLE_METRICS:
                    row[f"{metric}_mean"], row[f"{metric}_sd"] = mean_sd([c[metric] for c in cell])
                rows.append(row)
    return rows


def _per_image(out: Path, config: SegAugmentConfig):
    """``(cell record, metric) -> {image: (subject, value)}`` from a cell's per_image.csv."""

    def values(rec: dict[str, Any], metric: str) -> dict[str, tuple[str, float | None]]:
        name = rec["_test"]
        folder = (
            out
            / "cells"
            / cell_name(
                rec["n_real"], rec["n_synthetic"], rec["repeat"], rec["arm"], config.protocol
            )
        )
        with (folder / f"eval-{name.replace(':', '-')}" / "per_image.csv").open() as fh:
            return {
                f"{r['key']}|{r['box_jitter']}|{r['round']}": (
                    r["subject_id"],
                    float(r[metric]) if r.get(metric) not in (None, "") else None,
                )
                for r in csv.DictReader(fh)
            }

    return values


def differences(
    config: SegAugmentConfig, out: Path, records: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Each arm against real-only with the same K, per test set and M: the paired
    difference of each per-image metric (averaged over repeats), its subject-bootstrap
    interval and sign-flip p-value."""
    groups = []
    for spec in config.test:
        name = spec_label(spec)
        for k in config.n_real:

            def of(arm: str, m: int, name: str = name, k: int = k) -> list[dict[str, Any]]:
                found = [
                    {**r, "_test": name}
                    for r in records
                    if (r["arm"], r["n_real"], r["n_synthetic"]) == (arm, k, m)
                ]
                return sorted(found, key=lambda r: r["repeat"])

            for arm, m in _arm_cells(config):
                if arm == REAL:
                    continue
                row = {"test": name, "protocol": arm_protocol(arm, config.protocol), "arm": arm,
                       "n_real": k, "n_synthetic": m}  # fmt: skip
                groups.append({"row": row, "arm": of(arm, m), "real": of(REAL, 0)})
    return paired_rows(groups, _per_image(out, config), PAIRED_METRICS, config.n_boot, config.seed)


def _markdown(
    config: SegAugmentConfig, table: list[dict[str, Any]], diffs: list[dict[str, Any]]
) -> str:
    shown = [m for m in TABLE_METRICS if any(math.isfinite(r[f"{m}_mean"]) for r in table)]
    digits = {"dice": 3}
    lines = [
        f"Mean ± sd over {config.repeats} repeat(s); metrics at native resolution; "
        f"protocol: {config.protocol}.",
        "",
        "| test set | arm | real | synthetic | " + " | ".join(shown) + " |",
        "|---|---|---:|---:|" + "---:|" * len(shown),
    ]
    for r in table:
        cells = [mean_sd_text(r[f"{m}_mean"], r[f"{m}_sd"], digits.get(m, 1)) for m in shown]
        lines.append(
            f"| {r['test']} | {r['arm']} | {r['n_real']} | {r['n_synthetic']} | "
            + " | ".join(cells)
            + " |"
        )
    if diffs:
        lines += [
            "",
            "Paired difference to real-only (same test images and seeds; per-image values "
            "averaged over repeats; 95% subject-bootstrap CI; two-sided sign-flip "
            "permutation p over subjects). (ns): the CI crosses zero.",
            "",
            markdown_rows(
                [d for d in diffs if d["n_images"]],
                ("test", "protocol", "arm", "n_real", "n_synthetic"),
            ).rstrip(),
        ]
    return "\n".join(lines) + "\n"


def seg_augment(config: SegAugmentConfig) -> dict[str, Any]:
    """Run (or finish) the experiment; returns the table rows and where files are."""
    from fusynth.core.plots import line_chart

    out = Path(config.out)
    _check_inputs(config)
    open_experiment(out, config.request(), config.overwrite)
    cells = config.cells()
    records = []
    for i, (arm, k, m, r) in enumerate(cells, 1):
        log.info("cell %d/%d: %s, %d real + %d synthetic, repeat %d", i, len(cells), arm, k, m, r)
        records.append(run_cell(config, out, k, m, r, arm))
    results = result_rows(records)
    atomic_write_bytes(out / "results.csv", csv_bytes(results))
    table = summarise(config, records)
    diffs = differences(config, out, records)
    atomic_write_bytes(out / "table.csv", csv_bytes(table))
    if diffs:
        atomic_write_bytes(out / "differences.csv", csv_bytes(diffs))
    atomic_write_bytes(out / "table.md", _markdown(config, table, diffs).encode())
    series, gaps = {}, {}
    for spec in config.test:
        name = spec_label(spec)
        for arm, m in _arm_cells(config):
            rows = [r for r in table if (r["test"], r["arm"], r["n_synthetic"]) == (name, arm, m)]
            label = f"{name}, {arm}" + (f" ({m})" if m else "")
            series[label] = ([r["dice_mean"] for r in rows], [r["dice_sd"] for r in rows])
            if arm != REAL:
                gaps[label] = [
                    next(
                        (
                            d
                            for d in diffs
                            if d["metric"] == "dice"
                            and (d["test"], d["arm"], d["n_real"], d["n_synthetic"])
                            == (name, arm, k, m)
                        ),
                        None,
                    )  # fmt: skip
                    for k in config.n_real
                ]
    line_chart(
        out / "dice_vs_real.png",
        config.n_real,
        series,
        title="Dice against real training images, per arm",
        xlabel="real training images",
        ylabel="Dice (mean ± sd over repeats)",
    )
    if gaps:
        difference_chart(
            out / "dice_difference.png",
            config.n_real,
            gaps,
            title="Dice difference to real-only (hollow: 95% CI crosses zero)",
            xlabel="real training images",
            ylabel="Dice − real-only Dice (paired)",
        )
    return {"table": table, "differences": diffs, "out": out}
