"""The CLIP experiment: zero-shot after contrastive tuning on real pairs, against real +
synthetic pairs.

For every repeat r, two arms are tuned from the same open_clip model with the same seed
``seed + r``, the same steps and the same real images (the train split of ``--real``):
``real`` on real pairs only, ``real+synthetic`` with the cohort's pairs added
(``--synthetic_ratio``). Each tuned model, and the untuned model once (``base``), is
scored zero-shot on every test set with the same prompts. By default the views are
those every test set has (the FU-LoRA setting: FETAL_PLANES_DB trains, the African
planes test, on abdomen, brain, femur and thorax).

Besides each arm's metrics with subject-bootstrap intervals, the experiment reports the
**paired difference** ``real+synthetic - real`` of every metric: both arms' predictions
on the same test images, resampled with the same draws of subjects, so the interval is
that of the difference, not two overlapping intervals. Layout of ``OUT``:
``experiment.json``, ``cells/<arm>-r<R>/`` (the model's card and config, one
``eval-<test>/`` report per test set), ``results.csv``, ``table.csv``,
``differences.csv`` and ``table.md``.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fusynth.classify.metrics import CONFIDENCE, SCALARS, standard_metrics
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
from fusynth.core.stats import finite_values, mean_sd
from fusynth.data.schema import VIEWS, parse_data_spec, spec_label, with_default_split
from fusynth.embed.clip import TINY_CLIP

log = logging.getLogger(__name__)

METRICS = SCALARS  # accuracy, balanced accuracy, macro-F1, macro ROC-AUC
ARMS = ("base", "real", "real+synthetic")
#: Settings passed through to every arm's training.
TRAIN_KEYS = (
    "train_mode",
    "contrastive",
    "learning_rate",
    "train_batch_size",
    "num_train_epochs",
    "max_train_steps",
    "augment",
    "mixed_precision",
)


@dataclass
class ClipAugmentConfig:
    """Settings of ``fusynth experiment clip-augment``; field names are the flags."""

    real: str
    test: list[str]
    out: str
    synthetic: str | None = None
    synthetic_ratio: float | None = None
    repeats: int = 3
    seed: int = 0
    views: list[str] | None = None
    model: str = TINY_CLIP
    pretrained: str | None = None
    caption_template: list[str] | None = None
    prompts: str | None = None
    train_mode: str = "lit"
    contrastive: str = "views"
    learning_rate: float = 1e-4
    train_batch_size: int = 32
    num_train_epochs: int = 10
    max_train_steps: int | None = None
    augment: bool = True
    mixed_precision: str | None = None  # None: accelerate launch's, else "no"
    n_boot: int = 1000
    keep_models: bool = False
    overwrite: bool = False

    def __post_init__(self) -> None:
        if not self.synthetic:
            raise UserInputError(
                "--synthetic: clip-augment compares real pairs with real + synthetic pairs; "
                "give a cohort"
            )
        if self.repeats < 1:
            raise UserInputError(f"--repeats: must be at least 1, got {self.repeats}")
        if self.n_boot < 0:
            raise UserInputError(f"--n_boot: must be >= 0, got {self.n_boot}")
        if not self.test:
            raise UserInputError("--test: give at least one test set DIR[:split]")

    def request(self) -> dict[str, Any]:
        """What determines the results."""
        d = asdict(self)
        for k in ("out", "keep_models", "overwrite"):
            d.pop(k)
        return d


def cell_name(arm: str, r: int) -> str:
    """Folder name of one cell."""
    return "base" if arm == "base" else f"{arm.replace('+', '-')}-r{r}"


def _train_config(config: ClipAugmentConfig, arm: str, r: int, views, model_dir: Path) -> Any:
    """The ``ClipTrainConfig`` of one arm (its checks run on creation)."""
    from fusynth.classify.clip_train import ClipTrainConfig
    from fusynth.core.loop import list_checkpoints

    resume = "latest" if list_checkpoints(model_dir) else None
    synthetic = arm == "real+synthetic"
    return ClipTrainConfig(
        model=config.model,
        pretrained=config.pretrained,
        train=f"{parse_data_spec(config.real)[0]}:train",
        synthetic=config.synthetic if synthetic else None,
        synthetic_ratio=config.synthetic_ratio if synthetic else None,
        views=views,
        caption_template=config.caption_template,
        seed=config.seed + r,
        output_dir=str(model_dir),
        overwrite_output_dir=resume is None,
        resume_from_checkpoint=resume,
        checkpointing_steps=200,
        checkpoints_total_limit=1,
        **{k: getattr(config, k) for k in TRAIN_KEYS},
    )


def resolve_views(config: ClipAugmentConfig) -> list[str]:
    """The views: ``--views``, else those of the real pool that every test set has.

    Raises:
        UserInputError: fewer than two views, or a test set sharing a subject with the
            real pool (labels only are read).
    """
    from fusynth.data.splits import check_disjoint_subjects
    from fusynth.data.views import load_view_set

    real = f"{parse_data_spec(config.real)[0]}:train"
    pool = load_view_set(real, "--real", config.views, images=False)
    views = [v for v in VIEWS if v in pool.view_counts]
    for spec in config.test:
        test = load_view_set(with_default_split(spec, "test"), "--test", config.views, images=False)
        check_disjoint_subjects(
            pool.subjects, test.subjects, f"--test {spec}:", "the real training pool",
            "use a patient-disjoint test set",
        )  # fmt: skip
        if config.views is None:
            views = [v for v in views if v in test.view_counts]
    if len(views) < 2:
        raise UserInputError(
            f"--views: {real} and the test sets share {len(views)} view(s) "
            f"({', '.join(views) or 'none'}); zero-shot needs two or more"
        )
    return views


def _check_inputs(config: ClipAugmentConfig, out: Path) -> list[str]:
    """Fail before any training and before ``experiment.json`` is written: bad settings,
    a test set sharing a subject, a cohort without prompts, a ratio the cohort cannot
    give, an unknown prompts file. Reads labels only: no image is decoded."""
    from fusynth.classify.clip_train import choose_pairs
    from fusynth.embed.clip import load_prompts

    views = resolve_views(config)
    if config.prompts:
        load_prompts(config.prompts, views, "--prompts")
    choose_pairs(_train_config(config, "real+synthetic", 0, views, out / "check"), images=False)
    return views


def _evaluate(config: ClipAugmentConfig, folder: Path, model: str | None, views) -> dict:
    """Zero-shot reports of ``model`` on every test set; the overall metrics of each."""
    from fusynth.classify.evaluate import evaluate_zeroshot

    pretrained = config.pretrained if model is None else None
    metrics = {}
    for spec in config.test:
        name = spec_label(spec)
        eval_dir = folder / _eval_folder(name)
        if not (eval_dir / "metrics.json").is_file():
            evaluate_zeroshot(
                model or config.model,
                pretrained,
                config.prompts,
                with_default_split(spec, "test"),
                eval_dir,
                views=views,
                seed=config.seed,
                n_boot=config.n_boot,
                overwrite=True,
            )
        report = json.loads((eval_dir / "metrics.json").read_text())
        metrics[name] = {k: report["overall"][k] for k in METRICS}
    return metrics


def _eval_folder(name: str) -> str:
    return f"eval-{name.replace(':', '-')}"


def _train_and_test(config: ClipAugmentConfig, folder: Path, arm: str, r: int, views) -> dict:
    from fusynth.classify.clip_model import WEIGHTS_FILE
    from fusynth.classify.clip_train import train_clip

    model_dir = folder / "model"
    if not (model_dir / WEIGHTS_FILE).is_file():
        train_clip(_train_config(config, arm, r, views, model_dir))
    metrics = _evaluate(config, folder, str(model_dir), views)
    drop_models(model_dir, WEIGHTS_FILE, config.keep_models)
    run = json.loads((model_dir / "config.json").read_text())
    return {
        "arm": arm,
        "repeat": r,
        "seed": config.seed + r,
        "steps": run["max_train_steps"],
        "num_real": run["num_real"],
        "num_synthetic": run["num_synthetic"],
        "metrics": metrics,
    }


# ----------------------------------------------------------------------------- paired


def read_predictions(eval_dir: Path) -> tuple[list[str], np.ndarray, np.ndarray, list[str]]:
    """``(keys, y_true, probs, subjects)`` of a report folder's ``predictions.csv``, the
    classes in the order of its ``metrics.json``."""
    classes = json.loads((eval_dir / "metrics.json").read_text())["setup"]["classes"]
    with (eval_dir / "predictions.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    y = np.asarray([classes.index(r["true_view"]) for r in rows])
    probs = np.asarray([[float(r[f"prob_{c}"]) for c in classes] for r in rows])
    return [r["key"] for r in rows], y, probs, [r["subject_id"] for r in rows]


def paired_difference(
    y_true: np.ndarray,
    probs_a: np.ndarray,
    probs_b: np.ndarray,
    subjects: list[str],
    n_boot: int,
    seed: int,
    confidence: float = CONFIDENCE,
) -> dict[str, dict[str, float | None]]:
    """``metric(b) - metric(a)`` on the same images, with a percentile bootstrap interval
    from resampling subjects (one draw of subjects scores both, so the interval is that
    of the difference).

    Returns:
        ``metric -> {value, ci_low, ci_high}`` for accuracy, balanced accuracy, macro-F1
        and macro ROC-AUC (None where undefined).
    """

    def diff(idx: np.ndarray) -> dict[str, float]:
        a = standard_metrics(y_true[idx], probs_a[idx])
        b = standard_metrics(y_true[idx], probs_b[idx])
        return {k: math.nan if a[k] is None or b[k] is None else b[k] - a[k] for k in METRICS}

    value = diff(np.arange(len(y_true)))
    groups: dict[str, list[int]] = {}
    for i, s in enumerate(subjects):
        groups.setdefault(s, []).append(i)
    members = [np.asarray(v) for v in groups.values()]
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {k: [] for k in METRICS}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(n_boot):
            chosen = rng.integers(0, len(members), size=len(members))
            for k, v in diff(np.concatenate([members[j] for j in chosen])).items():
                draws[k].append(v)
    alpha = 100 * (1 - confidence) / 2
    out = {}
    for k in METRICS:
        arr = finite_values(draws[k])
        low, high = (None, None)
        if arr.size:
            low, high = (float(x) for x in np.percentile(arr, [alpha, 100 - alpha]))
        v = value[k]
        out[k] = {"value": None if math.isnan(v) else float(v), "ci_low": low, "ci_high": high}
    return out


def differences(config: ClipAugmentConfig, out: Path) -> list[dict[str, Any]]:
    """Per test set and repeat, the paired difference ``real+synthetic - real``."""
    rows = []
    for spec in config.test:
        name = spec_label(spec)
        for r in range(config.repeats):
            a = read_predictions(out / "cells" / cell_name("real", r) / _eval_folder(name))
            b = read_predictions(
                out / "cells" / cell_name("real+synthetic", r) / _eval_folder(name)
            )
            if a[0] != b[0]:  # same seeds and test set: the rows must match one to one
                raise RuntimeError(f"the two arms of repeat {r} scored different images")
            d = paired_difference(a[1], a[2], b[2], a[3], config.n_boot, config.seed)
            row: dict[str, Any] = {"test": name, "repeat": r}
            for k in METRICS:
                row[k] = d[k]["value"]
                row[f"{k}_ci_low"], row[f"{k}_ci_high"] = d[k]["ci_low"], d[k]["ci_high"]
            rows.append(row)
    return rows


# ----------------------------------------------------------------------------- tables


def _value(entry: Any) -> float | None:
    return entry["value"] if isinstance(entry, dict) else entry


def _nan(v: float | None) -> float:
    return float("nan") if v is None else v


def summarise(config: ClipAugmentConfig, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per test set and arm: mean and sd over repeats, the first repeat's accuracy CI."""
    rows = []
    for spec in config.test:
        name = spec_label(spec)
        for arm in ARMS:
            cells = sorted((c for c in records if c["arm"] == arm), key=lambda c: c["repeat"])
            row: dict[str, Any] = {"test": name, "arm": arm, "repeats": len(cells)}
            for metric in METRICS:
                values = [_nan(_value(c["metrics"][name][metric])) for c in cells]
                row[f"{metric}_mean"], row[f"{metric}_sd"] = mean_sd(values)
            first = cells[0]["metrics"][name]["accuracy"]
            row["accuracy_ci_low"], row["accuracy_ci_high"] = first["ci_low"], first["ci_high"]
            rows.append(row)
    return rows


def _ci_text(lo: float | None, hi: float | None) -> str:
    return f"[{lo:+.3f}, {hi:+.3f}]" if lo is not None and hi is not None else "n/a"


def _markdown(
    config: ClipAugmentConfig, table: list[dict[str, Any]], diffs: list[dict[str, Any]]
) -> str:
    lines = [
        f"Zero-shot, mean ± sd over {config.repeats} repeat(s) (base: the untuned model); "
        "accuracy CI: repeat 0, subject bootstrap 95%.",
        "",
        "| test set | arm | " + " | ".join(METRICS) + " | accuracy CI |",
        "|---|---|" + "---:|" * (len(METRICS) + 1),
    ]
    for r in table:
        values = [mean_sd_text(r[f"{m}_mean"], r[f"{m}_sd"], 3) for m in METRICS]
        lo, hi = r["accuracy_ci_low"], r["accuracy_ci_high"]
        ci = f"[{lo:.3f}, {hi:.3f}]" if lo is not None and hi is not None else "n/a"
        lines.append(f"| {r['test']} | {r['arm']} | " + " | ".join([*values, ci]) + " |")
    lines += [
        "",
        "Paired difference real+synthetic − real (same images, same subject draws), per "
        "repeat, with its 95% interval:",
        "",
        "| test set | repeat | " + " | ".join(METRICS) + " |",
        "|---|---:|" + "---:|" * len(METRICS),
    ]
    for d in diffs:
        cells = []
        for m in METRICS:
            v = d[m]
            text = "n/a" if v is None else f"{v:+.3f}"
            cells.append(f"{text} {_ci_text(d[f'{m}_ci_low'], d[f'{m}_ci_high'])}")
        lines.append(f"| {d['test']} | {d['repeat']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def clip_augment(config: ClipAugmentConfig) -> dict[str, Any]:
    """Run (or finish) the experiment; returns the tables and where files are.

    Raises:
        UserInputError: bad settings or inputs, before anything is written.
    """
    out = Path(config.out)
    views = _check_inputs(config, out)
    open_experiment(out, config.request(), config.overwrite)
    log.info("clip-augment on views %s", ", ".join(views))
    records = [
        cell(
            out / "cells" / cell_name("base", 0),
            lambda f: {
                "arm": "base",
                "repeat": 0,
                "seed": config.seed,
                "steps": 0,
                "num_real": 0,
                "num_synthetic": 0,
                "metrics": _evaluate(config, f, None, views),
            },  # fmt: skip
        )
    ]
    cells = [(arm, r) for r in range(config.repeats) for arm in ARMS[1:]]
    for i, (arm, r) in enumerate(cells, 1):
        log.info("cell %d/%d: %s, repeat %d", i, len(cells), arm, r)
        folder = out / "cells" / cell_name(arm, r)
        records.append(cell(folder, lambda f, a=arm, r=r: _train_and_test(config, f, a, r, views)))
    atomic_write_bytes(out / "results.csv", csv_bytes(result_rows(records, value=_value)))
    table = summarise(config, records)
    diffs = differences(config, out)
    atomic_write_bytes(out / "table.csv", csv_bytes(table))
    atomic_write_bytes(out / "differences.csv", csv_bytes(diffs))
    atomic_write_bytes(out / "table.md", _markdown(config, table, diffs).encode())
    return {"table": table, "differences": diffs, "views": views, "out": out}
