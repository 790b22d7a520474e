"""The classification experiment: real-only against real + synthetic, per backbone.

For every backbone, number of synthetic images per view M and repeat r, train a view
classifier on the real folder's train split (plus M synthetic images per view, seed
``seed + r`` for both arms), validate on its validation split, and evaluate on each
held-out test set with the standard metrics and FU-LoRA's legacy three. Layout of
``OUT``: ``experiment.json``, ``cells/<backbone>-m<M>-r<R>/`` (the model card, config,
log and one ``eval-<test>/`` per test set), ``results.csv``, ``table.csv`` and
``table.md`` (one table per backbone: mean ± sd over repeats, the 95% bootstrap interval
of the first repeat, and the legacy triple beside).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import asdict, dataclass, field
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

#: Standard metrics in the table, then FU-LoRA's legacy ones.
METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "macro_auroc")
LEGACY = ("ACC", "AUC", "F1")
#: Settings passed through to every cell's training.
TRAIN_KEYS = (
    "resolution",
    "optimizer",
    "learning_rate",
    "train_batch_size",
    "num_train_epochs",
    "max_train_steps",
    "n_real_per_view",
    "augment",
    "mixed_precision",
)


@dataclass
class ClsAugmentConfig:
    """Settings of ``fusynth experiment cls-augment``; field names are the flags."""

    real: str
    test: list[str]
    out: str
    synthetic: str | None = None
    backbones: list[str] = field(default_factory=lambda: ["resnet18"])
    n_synthetic_per_view: list[int] = field(default_factory=lambda: [0, 1000])
    repeats: int = 3
    seed: int = 0
    views: list[str] | None = None
    resolution: int | None = None
    optimizer: str = "adamw"
    learning_rate: float | None = None
    train_batch_size: int = 16
    num_train_epochs: int = 10
    max_train_steps: int | None = None
    n_real_per_view: int | None = None
    augment: bool = True
    mixed_precision: str | None = None  # None: accelerate launch's, else "no"
    keep_models: bool = False
    overwrite: bool = False

    def __post_init__(self) -> None:
        from fusynth.classify.backbones import parse_backbone

        if not self.backbones:
            raise UserInputError("--backbones: give at least one backbone")
        for b in self.backbones:
            parse_backbone(b, "--backbones")
        if not self.n_synthetic_per_view or any(m < 0 for m in self.n_synthetic_per_view):
            raise UserInputError(
                f"--n_synthetic_per_view: give counts >= 0, got {self.n_synthetic_per_view}"
            )
        if any(self.n_synthetic_per_view) and not self.synthetic:
            raise UserInputError("--n_synthetic_per_view: counts above 0 need --synthetic COHORT")
        if self.repeats < 1:
            raise UserInputError(f"--repeats: must be at least 1, got {self.repeats}")
        if not self.test:
            raise UserInputError("--test: give at least one test set DIR[:split]")
        self.n_synthetic_per_view = sorted(set(self.n_synthetic_per_view))

    def request(self) -> dict[str, Any]:
        """What determines the results."""
        d = asdict(self)
        for k in ("out", "keep_models", "overwrite"):
            d.pop(k)
        return d


def cell_name(backbone: str, m: int, r: int) -> str:
    """Folder name of one cell (a backbone name made safe for a path)."""
    return f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', backbone)}-m{m}-r{r}"


def _train_config(config: ClsAugmentConfig, backbone: str, m: int, r: int, model_dir: Path) -> Any:
    """The ``ClassifierTrainConfig`` of one cell (its checks run on creation)."""
    from fusynth.classify.config import ClassifierTrainConfig
    from fusynth.core.loop import list_checkpoints

    resume = "latest" if list_checkpoints(model_dir) else None
    return ClassifierTrainConfig(
        backbone=backbone,
        train=f"{parse_data_spec(config.real)[0]}:train",
        synthetic=config.synthetic if m else None,
        n_synthetic_per_view=m if m else None,
        views=config.views,
        seed=config.seed + r,
        output_dir=str(model_dir),
        overwrite_output_dir=resume is None,
        resume_from_checkpoint=resume,
        checkpointing_steps=200,
        checkpoints_total_limit=1,
        **{k: getattr(config, k) for k in TRAIN_KEYS},
    )


def _check_inputs(config: ClsAugmentConfig, out: Path) -> None:
    """Fail before any training and before ``experiment.json`` is written: bad training
    settings of any cell, counts the data cannot give, and test sets that share a
    subject with the real data. Reads labels only: no image is decoded."""
    from fusynth.classify.data import choose_training_data
    from fusynth.data.splits import check_disjoint_subjects
    from fusynth.data.views import load_view_set

    biggest = max(config.n_synthetic_per_view)
    check = [_train_config(config, b, biggest, 0, out / "check") for b in config.backbones]
    real = f"{parse_data_spec(config.real)[0]}:train"
    pool = load_view_set(real, "--real", config.views, images=False)
    for spec in config.test:
        check_disjoint_subjects(
            pool.subjects,
            load_view_set(
                with_default_split(spec, "test"), "--test", config.views, images=False
            ).subjects,
            f"--test {spec}:",
            "the real training pool",
            "use a patient-disjoint test set",
        )
    # The largest arm's counts, views and validation set.
    choose_training_data(check[0], images=False)


def _train_and_test(
    config: ClsAugmentConfig, folder: Path, backbone: str, m: int, r: int
) -> dict[str, Any]:
    from fusynth.classify.evaluate import evaluate_classification
    from fusynth.classify.train import WEIGHTS_FILE, train_classifier

    model_dir = folder / "model"
    if not (model_dir / WEIGHTS_FILE).is_file():
        train_classifier(_train_config(config, backbone, m, r, model_dir))
    metrics = {}
    for spec in config.test:
        name = spec_label(spec)
        eval_dir = folder / f"eval-{name.replace(':', '-')}"
        if not (eval_dir / "metrics.json").is_file():
            evaluate_classification(
                model_dir,
                with_default_split(spec, "test"),
                eval_dir,
                metrics=("standard", "fulora-legacy"),
                views=config.views,
                seed=config.seed,
                overwrite=True,
            )
        report = json.loads((eval_dir / "metrics.json").read_text())
        metrics[name] = {
            **{k: report["overall"][k] for k in METRICS},
            **{k: report["fulora_legacy"][k] for k in LEGACY},
        }
    drop_models(model_dir, WEIGHTS_FILE, config.keep_models)
    train_log = json.loads((model_dir / "train_log.json").read_text())
    return {
        "backbone": backbone,
        "n_synthetic_per_view": m,
        "repeat": r,
        "seed": config.seed + r,
        "steps": train_log["global_step"],
        "metrics": metrics,
    }


def _value(entry: Any) -> float | None:
    return entry["value"] if isinstance(entry, dict) else entry


def summarise(config: ClsAugmentConfig, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per backbone, test set and arm: mean and sd over repeats, the first repeat's CI."""
    rows = []
    for backbone in config.backbones:
        for spec in config.test:
            name = spec_label(spec)
            for m in config.n_synthetic_per_view:
                cells = sorted(
                    (
                        rec
                        for rec in records
                        if (rec["backbone"], rec["n_synthetic_per_view"]) == (backbone, m)
                    ),
                    key=lambda rec: rec["repeat"],
                )
                row: dict[str, Any] = {
                    "backbone": backbone,
                    "test": name,
                    "n_synthetic_per_view": m,
                    "repeats": len(cells),
                }
                for metric in METRICS + LEGACY:
                    values = [_value(c["metrics"][name][metric]) for c in cells]
                    values = [float("nan") if v is None else v for v in values]
                    row[f"{metric}_mean"], row[f"{metric}_sd"] = mean_sd(values)
                first = cells[0]["metrics"][name]["accuracy"]
                row["accuracy_ci_low"], row["accuracy_ci_high"] = (
                    first.get("ci_low"),
                    first.get("ci_high"),
                )
                rows.append(row)
    return rows


def _markdown(config: ClsAugmentConfig, table: list[dict[str, Any]]) -> str:
    lines = [f"Mean ± sd over {config.repeats} repeat(s); accuracy CI: repeat 0, bootstrap 95%."]
    head = "| test set | synthetic/view | " + " | ".join(METRICS) + " | accuracy CI | "
    head += " | ".join(f"legacy {k}" for k in LEGACY) + " |"
    for backbone in config.backbones:
        lines += ["", f"### {backbone}", "", head, "|---|---:|" + "---:|" * (len(METRICS) + 4)]
        for r in (r for r in table if r["backbone"] == backbone):
            values = [mean_sd_text(r[f"{m}_mean"], r[f"{m}_sd"], 3) for m in METRICS]
            lo, hi = r["accuracy_ci_low"], r["accuracy_ci_high"]
            ci = f"[{lo:.3f}, {hi:.3f}]" if lo is not None and hi is not None else "n/a"
            legacy = [mean_sd_text(r[f"{m}_mean"], r[f"{m}_sd"], 3) for m in LEGACY]
            lines.append(
                f"| {r['test']} | {r['n_synthetic_per_view']} | "
                + " | ".join([*values, ci, *legacy])
                + " |"
            )
    return "\n".join(lines) + "\n"


def cls_augment(config: ClsAugmentConfig) -> dict[str, Any]:
    """Run (or finish) the experiment; returns the table rows and where files are."""
    out = Path(config.out)
    _check_inputs(config, out)
    open_experiment(out, config.request(), config.overwrite)
    cells = [
        (b, m, r)
        for r in range(config.repeats)
        for b in config.backbones
        for m in config.n_synthetic_per_view
    ]
    records = []
    for i, (b, m, r) in enumerate(cells, 1):
        log.info("cell %d/%d: %s, %d synthetic per view, repeat %d", i, len(cells), b, m, r)
        folder = out / "cells" / cell_name(b, m, r)
        records.append(cell(folder, lambda f, b=b, m=m, r=r: _train_and_test(config, f, b, m, r)))
    results = result_rows(records, value=_value)
    atomic_write_bytes(out / "results.csv", csv_bytes(results))
    table = summarise(config, records)
    atomic_write_bytes(out / "table.csv", csv_bytes(table))
    atomic_write_bytes(out / "table.md", _markdown(config, table).encode())
    return {"table": table, "out": out}
