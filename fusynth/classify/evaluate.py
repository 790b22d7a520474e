"""Evaluating view classifiers: a trained model, or open_clip zero-shot.

Both commands write the same report into ``--out`` (built aside, renamed into place):

* ``metrics.json``: the setup, overall metrics with bootstrap 95% intervals (resampling
  subjects), per view, per center, the confusion matrix, and FU-LoRA's legacy numbers
  when asked (see :mod:`fusynth.classify.metrics`).
* ``predictions.csv``: one row per image: key, subject, center, true and predicted view,
  and the probability of each class.
* ``confusion.png``: the confusion matrix.

A trained model is evaluated only on views it knows: data with another view is refused,
naming it (``--views`` restricts the data to some views). Zero-shot classes are the
views of the data.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fusynth.classify.metrics import (
    CONFIDENCE,
    LEGACY_BATCH_SIZE,
    N_BOOT,
    confusion_matrix,
    fulora_legacy_metrics,
    metrics_with_intervals,
    per_center,
)
from fusynth.core.errors import UserInputError
from fusynth.core.io import atomic_dir, check_output_dir, weights_sha256
from fusynth.core.loop import positive
from fusynth.data.schema import suggest, with_default_split
from fusynth.data.views import ViewSet, load_view_set, parse_view_list

METRIC_KINDS = ("standard", "fulora-legacy")


# ----------------------------------------------------------------------------- settings


def parse_metrics(value: str | Sequence[str], flag: str = "--metrics") -> tuple[str, ...]:
    """``standard`` and/or ``fulora-legacy``; the standard metrics are always computed.

    Raises:
        UserInputError: an unknown name (with the nearest one).
    """
    items = value.split(",") if isinstance(value, str) else list(value)
    kinds = {"standard"}
    for item in (i.strip() for i in items):
        if not item:
            continue
        if item not in METRIC_KINDS:
            raise UserInputError(
                f"{flag}: {item!r} is not one of {', '.join(METRIC_KINDS)}"
                f"{suggest(item, METRIC_KINDS)}"
            )
        kinds.add(item)
    return tuple(k for k in METRIC_KINDS if k in kinds)


def _check_counts(batch_size: int, n_boot: int, legacy_batch_size: int) -> None:
    positive(batch_size, "--batch_size")
    positive(n_boot, "--n_boot", allow_zero=True)
    positive(legacy_batch_size, "--legacy_batch_size")


@dataclass
class _Request:
    """The checked settings both evaluation commands share."""

    kinds: tuple[str, ...]
    views: list[str] | None
    seed: int
    n_boot: int
    legacy_batch_size: int
    out: str | os.PathLike
    overwrite: bool


def _request(
    metrics: str | Sequence[str],
    views: str | Sequence[str] | None,
    batch_size: int,
    seed: int,
    n_boot: int,
    legacy_batch_size: int,
    out: str | os.PathLike,
    overwrite: bool,
) -> _Request:
    """Check the shared settings and that ``out`` may be written.

    Raises:
        UserInputError: naming the flag.
    """
    kinds = parse_metrics(metrics)
    _check_counts(batch_size, n_boot, legacy_batch_size)
    check_output_dir(out, overwrite)
    return _Request(
        kinds, parse_view_list(views, "--views"), seed, n_boot, legacy_batch_size, out, overwrite
    )


def _finish(
    req: _Request,
    vs: ViewSet,
    classes: Sequence[str],
    probs: np.ndarray,
    setup: dict[str, Any],
    data: str,
) -> dict[str, Any]:
    """Build and write the report of ``probs``; returns it with ``out``."""
    setup = {**setup, "data": data, "views": req.views}
    report = build_report(
        vs, classes, probs, req.kinds, req.seed, req.n_boot, req.legacy_batch_size, setup
    )
    write_report(req.out, vs, classes, probs, report, req.overwrite)
    return {**report, "out": Path(req.out)}


# ----------------------------------------------------------------------------- the report


def _predictions_csv(vs: ViewSet, classes: Sequence[str], probs: np.ndarray) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(
        ["key", "subject_id", "center", "true_view", "predicted_view"]
        + [f"prob_{c}" for c in classes]
    )
    pred = probs.argmax(axis=1)
    for i in range(len(vs)):
        writer.writerow(
            [vs.keys[i], vs.subjects[i], vs.centers[i], vs.views[i], classes[pred[i]]]
            + [f"{p:.6g}" for p in probs[i]]
        )
    return buf.getvalue().encode()


def build_report(
    vs: ViewSet,
    classes: Sequence[str],
    probs: np.ndarray,
    kinds: Sequence[str],
    seed: int,
    n_boot: int,
    legacy_batch_size: int,
    setup: dict[str, Any],
) -> dict[str, Any]:
    """The content of ``metrics.json`` for predictions ``probs`` of ``vs``."""
    index = {c: i for i, c in enumerate(classes)}
    y_true = np.asarray([index[v] for v in vs.views])
    y_pred = probs.argmax(axis=1)
    report = {
        "setup": {
            **setup,
            "classes": list(classes),
            "n_boot": n_boot,
            "confidence": CONFIDENCE,
            "bootstrap": "percentile, resampling subjects",
            "seed": seed,
            "metrics": list(kinds),
        },
        **metrics_with_intervals(y_true, probs, vs.subjects, classes, n_boot, seed),
        "per_center": per_center(y_true, probs, vs.subjects, vs.centers, n_boot, seed),
        "confusion_matrix": {
            "rows": "true view",
            "columns": "predicted view",
            "classes": list(classes),
            "counts": confusion_matrix(y_true, y_pred, len(classes)).tolist(),
        },
    }
    if "fulora-legacy" in kinds:
        report["fulora_legacy"] = fulora_legacy_metrics(
            y_true, y_pred, len(classes), legacy_batch_size, seed
        )
    return report


def write_report(
    out: str | os.PathLike,
    vs: ViewSet,
    classes: Sequence[str],
    probs: np.ndarray,
    report: dict[str, Any],
    overwrite: bool,
) -> Path:
    """Write ``metrics.json``, ``predictions.csv`` and ``confusion.png`` atomically."""
    from fusynth.core.plots import confusion_png

    with atomic_dir(out, overwrite, kind="evaluation") as tmp:
        (tmp / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
        (tmp / "predictions.csv").write_bytes(_predictions_csv(vs, classes, probs))
        acc = report["overall"]["accuracy"]["value"]
        setup = report["setup"]
        label = setup.get("backbone") or setup.get("model")
        title = f"{setup['what']} {label}: accuracy {acc:.3f} (n={report['n_images']})"
        matrix = np.asarray(report["confusion_matrix"]["counts"])
        confusion_png(tmp / "confusion.png", matrix, classes, title)
    return Path(out)


# ----------------------------------------------------------------------------- commands


def check_known_views(vs: ViewSet, classes: Sequence[str], model: str, flag: str) -> None:
    """Refuse data with views the model does not know.

    Raises:
        UserInputError: naming the views the model lacks and its classes.
    """
    lacking = [v for v in vs.view_counts if v not in classes]
    if lacking:
        raise UserInputError(
            f"{flag}: {vs.source} has view(s) {', '.join(lacking)} that the model {model} does "
            f"not know (its classes: {', '.join(classes)}); pass --views to evaluate the others"
        )


def evaluate_classification(
    model: str | os.PathLike,
    data: str,
    out: str | os.PathLike,
    metrics: str | Sequence[str] = ("standard",),
    views: str | Sequence[str] | None = None,
    batch_size: int = 32,
    seed: int = 0,
    n_boot: int = N_BOOT,
    legacy_batch_size: int = LEGACY_BATCH_SIZE,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Evaluate a classifier folder (``recipes/train_classifier.py`` output) on ``DIR[:split]``.

    Args:
        model: the classifier folder.
        data: a prepared dataset, ``DIR[:split]``.
        out: the report folder.
        metrics: ``standard`` and/or ``fulora-legacy`` (comma-separated or a list).
        views: evaluate only these views of the data (default: all).
        batch_size: images per forward pass.
        seed: seed of the bootstrap and of the legacy loader's shuffle.
        n_boot: bootstrap resamples (0: no intervals).
        legacy_batch_size: batch size of the legacy running accuracy (FU-LoRA's 24).
        overwrite: replace an existing ``out``.

    Returns:
        The content of ``metrics.json``, with ``out``.

    Raises:
        UserInputError: bad settings, an unloadable model or data, or data with a view
            the model does not know (naming it).
    """
    from fusynth.classify.train import load_classifier

    req = _request(metrics, views, batch_size, seed, n_boot, legacy_batch_size, out, overwrite)
    loaded = load_classifier(model, "--model")
    vs = load_view_set(with_default_split(data, "test"), "--data", req.views)
    classes = loaded.spec.classes
    check_known_views(vs, classes, str(model), "--data")
    probs = loaded.predict_proba(vs.images, batch_size)
    setup = {
        "what": "classifier",
        "model": str(model),
        "model_sha256": weights_sha256(model),
        "backbone": loaded.spec.backbone,
        "resolution": loaded.spec.resolution,
    }
    return _finish(req, vs, classes, probs, setup, data)


def evaluate_zeroshot(
    model: str | None,
    pretrained: str | None,
    prompts: str | os.PathLike | None,
    data: str,
    out: str | os.PathLike,
    metrics: str | Sequence[str] = ("standard",),
    views: str | Sequence[str] | None = None,
    batch_size: int = 32,
    seed: int = 0,
    n_boot: int = N_BOOT,
    legacy_batch_size: int = LEGACY_BATCH_SIZE,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Zero-shot view classification with an open_clip model on ``DIR[:split]``.

    The classes are the views of the data (after ``views``); each is represented by the
    normalised mean embedding of its prompts (``prompts`` YAML, or the built-in set).
    With no ``model`` the random-init smoke model ``fusynth-tiny-clip`` is used.

    Args:
        model: an open_clip model name (None: the smoke model).
        pretrained: an open_clip tag or a local weights file (None: random init).
        prompts: a YAML file ``view: [prompt, ...]`` (None: the built-in prompts).
        data: a prepared dataset, ``DIR[:split]``.
        out: the report folder.
        metrics: ``standard`` and/or ``fulora-legacy``.
        views: evaluate only these views of the data (default: all).
        batch_size: images per forward pass.
        seed: seed of the bootstrap and of the legacy loader's shuffle.
        n_boot: bootstrap resamples (0: no intervals).
        legacy_batch_size: batch size of the legacy running accuracy.
        overwrite: replace an existing ``out``.

    Returns:
        The content of ``metrics.json``, with ``out``.

    Raises:
        UserInputError: bad settings, an unknown model or tag, unloadable weights, a
            prompt file without one of the views, or data with a single view.
    """
    import torch

    from fusynth.classify.clip_model import tuned_from_random_init
    from fusynth.embed.clip import (
        default_prompts,
        load_clip,
        load_prompts,
        zero_shot_probabilities,
        zero_shot_weights,
    )

    req = _request(metrics, views, batch_size, seed, n_boot, legacy_batch_size, out, overwrite)
    vs = load_view_set(with_default_split(data, "test"), "--data", req.views)
    classes = list(vs.view_counts)
    if len(classes) < 2:
        raise UserInputError(
            f"--data: {data} has only view {classes[0]}; zero-shot classification needs two or more"
        )
    texts = load_prompts(prompts, classes, "--prompts") if prompts else default_prompts(classes)
    clip = load_clip(model, pretrained, "--model", "--pretrained")
    clip.model.to("cuda" if torch.cuda.is_available() else "cpu")
    weights = zero_shot_weights(clip, texts)
    probs = zero_shot_probabilities(clip, weights, vs.images, batch_size)
    setup = {
        "what": "zero-shot",
        "model": clip.name,
        "pretrained": pretrained,
        "smoke_model": clip.smoke or tuned_from_random_init(clip.name),
        "image_size": clip.image_size,
        "preprocessing": "padded to square (black), resized, gray to RGB, the model's mean/std",
        "prompts": texts,
        "prompts_file": str(prompts) if prompts else None,
    }
    return _finish(req, vs, classes, probs, setup, data)
