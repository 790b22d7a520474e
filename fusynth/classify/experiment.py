"""The classification experiment: real-only against real + synthetic, per backbone.

For every backbone, arm (``--arms``: real-only, always, plus classical copies, M
synthetic images per view, or both), number of synthetic images per view M and repeat
r, train a view classifier on the real folder's train split plus what the arm adds,
used as ``--protocol`` says (mix, pretrain-finetune, synthetic-only:
:mod:`fusynth.core.protocols`), with seed ``seed + r`` for every arm; validate on its
validation split, and evaluate on each held-out test set with the standard metrics and
FU-LoRA's legacy three. Layout of ``OUT``: ``experiment.json``,
``cells/<backbone>-m<M>[-classical][-<protocol>]-r<R>/`` (the model card, config, log
and one ``eval-<test>/`` per test set), ``results.csv`` (protocol and arm columns),
``table.csv``, ``differences.csv`` (each arm's paired accuracy difference to real-only
on the same test images: subject-bootstrap 95% CI and sign-flip p-value; charted in
``accuracy_difference.png``) and
``table.md`` (one table per backbone: mean ± sd over repeats, the 95% bootstrap interval
of the first repeat, and the legacy triple beside; then the paired differences).
"""

from __future__ import annotations

import csv
import json
import logging
import re
import shutil
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
from fusynth.core.protocols import (
    REAL,
    Arm,
    ProtocolSettings,
    arm_protocol,
    cell_suffix,
    markdown_rows,
    paired_rows,
)
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
class ClsAugmentConfig(ProtocolSettings):
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
        from fusynth.classify.arms import check_pretrain_backbones
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
        self.check_protocol_settings(any(self.n_synthetic_per_view), self.max_train_steps)
        check_pretrain_backbones(self.backbones, self.protocol)

    def request(self) -> dict[str, Any]:
        """What determines the results."""
        from fusynth.data.augment import CLASSICAL

        d = asdict(self)
        for k in ("out", "keep_models", "overwrite"):
            d.pop(k)
        if any(Arm(a).classical for a in self.arms):
            d["classical"] = CLASSICAL.describe()  # the pipeline, recorded with the results
        return d

    def cells(self) -> list[tuple[str, str, int, int]]:
        """``(backbone, arm, M, repeat)`` of every cell; M is 0 without synthetic data."""
        ms = [m for m in self.n_synthetic_per_view if m > 0]
        return [
            (b, arm, m, r)
            for r in range(self.repeats)
            for b in self.backbones
            for arm in self.arms
            for m in (ms if Arm(arm).synthetic else [0])
        ]

    def arm_cells(self) -> list[tuple[str, int]]:
        """``(arm, M)`` of every table row, real-only first."""
        return sorted(
            {(a, m) for _, a, m, _ in self.cells()}, key=lambda am: (self.arms.index(am[0]), am[1])
        )


def cell_name(backbone: str, m: int, r: int, arm: str = REAL, protocol: str = "mix") -> str:
    """Folder name of one cell (a backbone name made safe for a path)."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", backbone)
    return f"{safe}-m{m}{cell_suffix(arm, protocol)}-r{r}"


def _train_config(
    config: ClsAugmentConfig, backbone: str, m: int, r: int, model_dir: Path, stage: Any = None
) -> Any:
    """The ``ClassifierTrainConfig`` of one cell, or of one ``stage`` of it (its checks run
    on creation)."""
    from fusynth.classify.config import ClassifierTrainConfig
    from fusynth.core.loop import list_checkpoints

    resume = "latest" if list_checkpoints(model_dir) else None
    settings = {k: getattr(config, k) for k in TRAIN_KEYS}
    data = {
        "train": f"{parse_data_spec(config.real)[0]}:train",
        "synthetic": config.synthetic if m else None,
        "n_synthetic_per_view": m if m else None,
    }
    if stage is not None:
        data = {
            "train": stage.train,
            "synthetic": stage.synthetic,
            "n_synthetic_per_view": stage.n_synthetic_per_view,
            "validation": stage.validation,
            "weights": stage.weights,
        }
        settings.update(
            n_real_per_view=stage.n_real_per_view,
            max_train_steps=stage.max_train_steps,
            learning_rate=stage.learning_rate,
        )
    return ClassifierTrainConfig(
        backbone=backbone,
        views=config.views,
        seed=config.seed + r,
        output_dir=str(model_dir),
        overwrite_output_dir=resume is None,
        resume_from_checkpoint=resume,
        checkpointing_steps=200,
        checkpoints_total_limit=1,
        **data,
        **settings,
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
    config: ClsAugmentConfig, folder: Path, backbone: str, m: int, r: int, arm: str = REAL
) -> dict[str, Any]:
    from fusynth.classify.arms import cell_stages
    from fusynth.classify.evaluate import evaluate_classification
    from fusynth.classify.train import WEIGHTS_FILE, train_classifier

    model_dir = folder / "model"
    real_config = _train_config(config, backbone, 0, r, folder / "real-check")
    stages, trained_on = cell_stages(config, folder, backbone, arm, m, r, real_config)
    for stage in stages:
        if not (folder / stage.name / WEIGHTS_FILE).is_file():
            train_classifier(_train_config(config, backbone, m, r, folder / stage.name, stage))
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
    pretrain_steps = 0
    if (folder / "pretrain").is_dir():
        pretrain_steps = json.loads((folder / "pretrain" / "train_log.json").read_text())[
            "global_step"
        ]
        drop_models(folder / "pretrain", WEIGHTS_FILE, config.keep_models)
    for data in folder.glob("data-*"):  # the added images: rebuilt from the seed on demand
        shutil.rmtree(data)
    return {
        "backbone": backbone,
        "protocol": trained_on["protocol"],
        "arm": arm,
        "n_synthetic_per_view": m,
        "n_classical": trained_on["n_classical"],
        "repeat": r,
        "seed": config.seed + r,
        "steps": train_log["global_step"] + pretrain_steps,  # the budget every arm shares
        "pretrain_steps": pretrain_steps,
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
            for arm, m in config.arm_cells():
                cells = sorted(
                    (
                        rec
                        for rec in records
                        if (rec["backbone"], rec["arm"], rec["n_synthetic_per_view"])
                        == (backbone, arm, m)
                    ),
                    key=lambda rec: rec["repeat"],
                )
                row: dict[str, Any] = {
                    "backbone": backbone,
                    "test": name,
                    "protocol": arm_protocol(arm, config.protocol),
                    "arm": arm,
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


def _markdown(
    config: ClsAugmentConfig, table: list[dict[str, Any]], diffs: list[dict[str, Any]]
) -> str:
    lines = [f"Mean ± sd over {config.repeats} repeat(s); accuracy CI: repeat 0, bootstrap 95%."]
    head = "| test set | arm | synthetic/view | " + " | ".join(METRICS) + " | accuracy CI | "
    head += " | ".join(f"legacy {k}" for k in LEGACY) + " |"
    for backbone in config.backbones:
        lines += ["", f"### {backbone}", "", head, "|---|---|---:|" + "---:|" * (len(METRICS) + 4)]
        for r in (r for r in table if r["backbone"] == backbone):
            values = [mean_sd_text(r[f"{m}_mean"], r[f"{m}_sd"], 3) for m in METRICS]
            lo, hi = r["accuracy_ci_low"], r["accuracy_ci_high"]
            ci = f"[{lo:.3f}, {hi:.3f}]" if lo is not None and hi is not None else "n/a"
            legacy = [mean_sd_text(r[f"{m}_mean"], r[f"{m}_sd"], 3) for m in LEGACY]
            lines.append(
                f"| {r['test']} | {r['arm']} | {r['n_synthetic_per_view']} | "
                + " | ".join([*values, ci, *legacy])
                + " |"
            )
    if diffs:
        lines += [
            "",
            "Paired accuracy difference to real-only (same test images and seeds; per-image "
            "correctness averaged over repeats; 95% subject-bootstrap CI; two-sided "
            "sign-flip permutation p over subjects). (ns): the CI crosses zero.",
            "",
            markdown_rows(
                [d for d in diffs if d["n_images"]],
                ("backbone", "test", "protocol", "arm", "n_synthetic_per_view"),
            ).rstrip(),
        ]
    return "\n".join(lines) + "\n"


def _correct(out: Path, config: ClsAugmentConfig):
    """``(cell record, "accuracy") -> {image: (subject, 1.0 if right else 0.0)}``."""

    def values(rec: dict[str, Any], metric: str) -> dict[str, tuple[str, float | None]]:
        folder = out / "cells" / cell_name(
            rec["backbone"], rec["n_synthetic_per_view"], rec["repeat"], rec["arm"],
            config.protocol,
        )  # fmt: skip
        path = folder / f"eval-{rec['_test'].replace(':', '-')}" / "predictions.csv"
        with path.open() as fh:
            return {
                r["key"]: (r["subject_id"], float(r["true_view"] == r["predicted_view"]))
                for r in csv.DictReader(fh)
            }

    return values


def differences(
    config: ClsAugmentConfig, out: Path, records: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Each arm against real-only, per backbone, test set and M: paired accuracy
    difference, subject-bootstrap interval and sign-flip p-value."""
    groups = []
    for backbone in config.backbones:
        for spec in config.test:
            name = spec_label(spec)

            def of(arm: str, m: int, b: str = backbone, name: str = name) -> list[dict]:
                found = [
                    {**rec, "_test": name}
                    for rec in records
                    if (rec["backbone"], rec["arm"], rec["n_synthetic_per_view"]) == (b, arm, m)
                ]
                return sorted(found, key=lambda rec: rec["repeat"])

            for arm, m in config.arm_cells():
                if arm == REAL:
                    continue
                row = {"backbone": backbone, "test": name,
                       "protocol": arm_protocol(arm, config.protocol), "arm": arm,
                       "n_synthetic_per_view": m}  # fmt: skip
                groups.append({"row": row, "arm": of(arm, m), "real": of(REAL, 0)})
    return paired_rows(groups, _correct(out, config), ("accuracy",), config.n_boot, config.seed)


def cls_augment(config: ClsAugmentConfig) -> dict[str, Any]:
    """Run (or finish) the experiment; returns the table rows and where files are."""
    out = Path(config.out)
    _check_inputs(config, out)
    open_experiment(out, config.request(), config.overwrite)
    cells = config.cells()
    records = []
    for i, (b, arm, m, r) in enumerate(cells, 1):
        log.info("cell %d/%d: %s, %s, %d synthetic per view, repeat %d", i, len(cells), b, arm,
                 m, r)  # fmt: skip
        folder = out / "cells" / cell_name(b, m, r, arm, config.protocol)
        records.append(
            cell(folder, lambda f, b=b, m=m, r=r, a=arm: _train_and_test(config, f, b, m, r, a))
        )
    results = result_rows(records, value=_value)
    atomic_write_bytes(out / "results.csv", csv_bytes(results))
    table = summarise(config, records)
    diffs = differences(config, out, records)
    atomic_write_bytes(out / "table.csv", csv_bytes(table))
    if diffs:
        atomic_write_bytes(out / "differences.csv", csv_bytes(diffs))
        _difference_chart(config, out, diffs)
    atomic_write_bytes(out / "table.md", _markdown(config, table, diffs).encode())
    return {"table": table, "differences": diffs, "out": out}


def _difference_chart(config: ClsAugmentConfig, out: Path, diffs: list[dict[str, Any]]) -> None:
    """``accuracy_difference.png``: each arm's paired accuracy difference to real-only
    against the synthetic images per view, one line per backbone, test set and arm."""
    from fusynth.core.protocols import difference_chart

    xs = sorted({d["n_synthetic_per_view"] for d in diffs})
    lines: dict[str, list[dict[str, Any] | None]] = {}
    for d in diffs:
        if d["n_images"]:
            label = f"{d['backbone']}, {d['test']}, {d['arm']}"
            lines.setdefault(label, [None] * len(xs))[xs.index(d["n_synthetic_per_view"])] = d
    difference_chart(
        out / "accuracy_difference.png",
        xs,
        lines,
        title=f"Paired accuracy difference to real-only (protocol: {config.protocol})",
        xlabel="synthetic images per view (0: none); hollow: the 95% CI crosses 0",
        ylabel="accuracy difference (95% CI)",
    )
