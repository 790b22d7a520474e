"""Classification metrics: the standard ones with bootstrap intervals, per view and per
center, and FU-LoRA's three legacy numbers.

Standard metrics (torchmetrics' functional API), over the classes of the model:

* ``accuracy``: correct / all.
* ``balanced_accuracy``: the mean recall over the classes present in the truth (the
  usual definition, sklearn's ``balanced_accuracy_score``).
* ``macro_f1``: the mean F1 over the classes present in the truth or the predictions
  (torchmetrics' and sklearn's ``average="macro"``).
* ``macro_auroc``: one-vs-rest ROC-AUC from the probabilities, per class, averaged over
  the classes for which it is defined (present, and not in every sample).
* Per class: precision (None when never predicted), recall and AUROC (None when absent
  from the truth), F1, support and the number of predictions.

Intervals are percentile bootstraps that resample *subjects* (all images of a drawn
subject together, since images of one patient are not independent), seeded.

FU-LoRA's legacy numbers (:func:`fulora_legacy_metrics`) are not standard metrics; they
reproduce that paper's notebook so its table can be set beside ours.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from fusynth.classify import LEGACY_BATCH_SIZE, N_BOOT
from fusynth.core.stats import finite_values

CONFIDENCE = 0.95
SCALARS = ("accuracy", "balanced_accuracy", "macro_f1", "macro_auroc")


def _tensors(y_true: Sequence[int], y_pred: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.as_tensor(np.asarray(y_true), dtype=torch.long), torch.as_tensor(
        np.asarray(y_pred), dtype=torch.long
    )


def _reported(value: float | None) -> float | None:
    """A value as written to ``metrics.json``: rounded to 6 decimals (torchmetrics
    computes in float32), None when undefined."""
    return None if value is None or not math.isfinite(value) else round(float(value), 6)


# ----------------------------------------------------------------------------- standard


def per_class_auroc(y_true: np.ndarray, probs: np.ndarray) -> list[float | None]:
    """One-vs-rest ROC-AUC of each class from its probability column (torchmetrics'
    ``binary_auroc``); None for a class absent from the truth or present in every sample."""
    from torchmetrics.functional.classification import binary_auroc

    y = torch.as_tensor(y_true, dtype=torch.long)
    p = torch.as_tensor(probs, dtype=torch.float64)
    out: list[float | None] = []
    for c in range(p.shape[1]):
        positives = int((y == c).sum())
        if positives in (0, len(y)):
            out.append(None)
            continue
        out.append(float(binary_auroc(p[:, c], (y == c).long(), validate_args=False)))
    return out


def standard_metrics(y_true: Sequence[int], probs: np.ndarray) -> dict[str, Any]:
    """The standard metrics of one sample of predictions.

    Args:
        y_true: true class indices ``[N]``.
        probs: class probabilities ``[N, C]``; the prediction is the argmax.

    Returns:
        ``accuracy``, ``balanced_accuracy``, ``macro_f1``, ``macro_auroc`` (floats, None
        when undefined) and per-class lists ``precision``, ``recall``, ``f1``, ``auroc``,
        ``support``, ``predicted``.
    """
    from torchmetrics.functional.classification import (
        multiclass_accuracy,
        multiclass_f1_score,
        multiclass_precision,
        multiclass_recall,
    )

    probs = np.asarray(probs, dtype=np.float64)
    c = probs.shape[1]
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = probs.argmax(axis=1)
    y, p = _tensors(y_true, y_pred)
    if not len(y):
        raise ValueError("no samples")
    support = np.bincount(y_true, minlength=c)
    predicted = np.bincount(y_pred, minlength=c)
    kw = {"num_classes": c, "validate_args": False}
    precision = multiclass_precision(p, y, average=None, **kw).numpy()
    recall = multiclass_recall(p, y, average=None, **kw).numpy()
    f1 = multiclass_f1_score(p, y, average=None, **kw).numpy()
    auroc = per_class_auroc(y_true, probs)
    defined_auroc = [a for a in auroc if a is not None]
    return {
        "accuracy": float(multiclass_accuracy(p, y, average="micro", **kw)),
        "balanced_accuracy": float(recall[support > 0].mean()),
        "macro_f1": float(multiclass_f1_score(p, y, average="macro", **kw)),
        "macro_auroc": float(np.mean(defined_auroc)) if defined_auroc else None,
        "precision": [float(v) if n else None for v, n in zip(precision, predicted, strict=True)],
        "recall": [float(v) if n else None for v, n in zip(recall, support, strict=True)],
        "f1": [float(v) if s + q else None for v, s, q in zip(f1, support, predicted, strict=True)],
        "auroc": auroc,
        "support": support.tolist(),
        "predicted": predicted.tolist(),
    }


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int) -> np.ndarray:
    """Counts ``[C, C]``: rows are true classes, columns predicted ones."""
    from torchmetrics.functional.classification import multiclass_confusion_matrix

    y, p = _tensors(y_true, y_pred)
    return multiclass_confusion_matrix(p, y, num_classes, validate_args=False).numpy()


def _flat(metrics: dict[str, Any]) -> dict[str, float]:
    """Scalars and per-class precision/recall as one ``name -> value`` map (NaN: undefined)."""
    out = {k: math.nan if metrics[k] is None else metrics[k] for k in SCALARS}
    for key in ("precision", "recall"):
        for i, v in enumerate(metrics[key]):
            out[f"{key}/{i}"] = math.nan if v is None else v
    return out


def bootstrap_intervals(
    y_true: Sequence[int],
    probs: np.ndarray,
    subjects: Sequence[str],
    n_boot: int = N_BOOT,
    seed: int = 0,
    confidence: float = CONFIDENCE,
) -> dict[str, tuple[float | None, float | None]]:
    """Percentile bootstrap intervals of :func:`standard_metrics`, resampling subjects.

    Each resample draws as many subjects as there are, with replacement, and takes all
    their images (``numpy.random.default_rng(seed)``). A metric undefined in a resample
    (e.g. AUROC when a class was not drawn) is left out of that metric's percentiles.

    Returns:
        ``name -> (low, high)`` for the scalars and ``precision/i``, ``recall/i``; None
        where no resample defines the metric.
    """
    y_true = np.asarray(y_true)
    probs = np.asarray(probs)
    groups: dict[str, list[int]] = {}
    for i, s in enumerate(subjects):
        groups.setdefault(s, []).append(i)
    members = [np.asarray(v) for v in groups.values()]
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(n_boot):
            chosen = rng.integers(0, len(members), size=len(members))
            idx = np.concatenate([members[j] for j in chosen])
            for k, v in _flat(standard_metrics(y_true[idx], probs[idx])).items():
                draws.setdefault(k, []).append(v)
    alpha = 100 * (1 - confidence) / 2
    out: dict[str, tuple[float | None, float | None]] = {}
    for k, values in draws.items():
        arr = finite_values(values)
        if arr.size == 0:
            out[k] = (None, None)
        else:
            low, high = np.percentile(arr, [alpha, 100 - alpha])
            out[k] = (float(low), float(high))
    return out


def _with_ci(value: float | None, ci: tuple[float | None, float | None] | None) -> dict:
    low, high = ci if ci is not None else (None, None)
    return {"value": _reported(value), "ci_low": _reported(low), "ci_high": _reported(high)}


def _overall(
    y_true: Sequence[int], probs: np.ndarray, subjects: Sequence[str], n_boot: int, seed: int
) -> tuple[dict[str, Any], dict[str, tuple], dict[str, dict]]:
    """The standard metrics, their bootstrap intervals (none when ``n_boot`` is 0), and
    the scalars with their intervals as written to ``metrics.json``."""
    m = standard_metrics(y_true, probs)
    ci = bootstrap_intervals(y_true, probs, subjects, n_boot, seed) if n_boot else {}
    return m, ci, {k: _with_ci(m[k], ci.get(k)) for k in SCALARS}


def metrics_with_intervals(
    y_true: Sequence[int],
    probs: np.ndarray,
    subjects: Sequence[str],
    classes: Sequence[str],
    n_boot: int = N_BOOT,
    seed: int = 0,
) -> dict[str, Any]:
    """Standard metrics with bootstrap intervals, as written to ``metrics.json``.

    Returns:
        ``{"n_images", "n_subjects", "overall": {metric: {value, ci_low, ci_high}},
        "per_view": {view: {support, predicted, precision, recall, f1, auroc}}}``; per-view
        precision and recall carry intervals too.
    """
    m, ci, overall = _overall(y_true, probs, subjects, n_boot, seed)
    per_view = {}
    for i, view in enumerate(classes):
        per_view[view] = {
            "support": m["support"][i],
            "predicted": m["predicted"][i],
            "precision": _with_ci(m["precision"][i], ci.get(f"precision/{i}")),
            "recall": _with_ci(m["recall"][i], ci.get(f"recall/{i}")),
            "f1": _reported(m["f1"][i]),
            "auroc": _reported(m["auroc"][i]),
        }
    return {
        "n_images": len(y_true),
        "n_subjects": len(set(subjects)),
        "overall": overall,
        "per_view": per_view,
    }


def per_center(
    y_true: Sequence[int],
    probs: np.ndarray,
    subjects: Sequence[str],
    centers: Sequence[str],
    n_boot: int = N_BOOT,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """The overall metrics (with intervals) of each center's images, in sorted order;
    images without a center are grouped as ``unknown``."""
    y_true, probs = np.asarray(y_true), np.asarray(probs)
    names = [c or "unknown" for c in centers]
    out = {}
    for center in sorted(set(names)):
        idx = np.asarray([i for i, c in enumerate(names) if c == center])
        sub = [subjects[i] for i in idx]
        out[center] = {
            "n_images": len(idx),
            "n_subjects": len(set(sub)),
            **_overall(y_true[idx], probs[idx], sub, n_boot, seed)[2],
        }
    return out


# ----------------------------------------------------------------------------- FU-LoRA legacy


def running_accuracies(y_true: Sequence[int], y_pred: Sequence[int], batch_size: int) -> np.ndarray:
    """After each batch of a loader, the accuracy so far: correct so far / seen so far.

    The samples are taken in the order given, in batches of ``batch_size`` (the last one
    may be short), as FU-LoRA's notebook accumulated ``running_corrects`` over its test
    loader.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    correct = np.asarray(y_true) == np.asarray(y_pred)
    ends = np.minimum(np.arange(batch_size, len(correct) + batch_size, batch_size), len(correct))
    return np.cumsum(correct)[ends - 1] / ends


def fulora_acc(
    y_true: Sequence[int], y_pred: Sequence[int], batch_size: int, order: Sequence[int]
) -> float:
    """FU-LoRA's "ACC": the mean of :func:`running_accuracies` over a shuffled loader.

    It weights early batches more than accuracy does and depends on the shuffle (and the
    batch size); with a single batch it equals accuracy.

    Args:
        y_true: true classes, in dataset order.
        y_pred: predicted classes, in dataset order.
        batch_size: the loader's batch size (FU-LoRA: 24).
        order: the loader's order, a permutation of the sample indices.
    """
    order = np.asarray(order)
    return float(
        running_accuracies(np.asarray(y_true)[order], np.asarray(y_pred)[order], batch_size).mean()
    )


def fulora_auc(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int) -> float | None:
    """FU-LoRA's "AUC": one-vs-rest ROC-AUC computed from one-hot *hard* predicted
    labels (not probabilities), macro averaged.

    For each class the score of a sample is 1 if it was predicted as that class, else 0,
    so the per-class AUC is ``(TPR + TNR) / 2`` (sklearn's ``roc_auc_score`` on
    ``label_binarize``-d labels). Classes absent from the truth (where sklearn raises)
    are left out of the mean; None when no class is left.
    """
    from torchmetrics.functional.classification import binary_auroc

    y, p = _tensors(y_true, y_pred)
    aucs = []
    for c in range(num_classes):
        positives = int((y == c).sum())
        if positives in (0, len(y)):
            continue
        hard = (p == c).double()
        aucs.append(float(binary_auroc(hard, (y == c).long(), validate_args=False)))
    return float(np.mean(aucs)) if aucs else None


def fulora_f1(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int) -> float:
    """FU-LoRA's "F1": per-class F1 averaged with weights = the number of times each
    class was *predicted* (not its true support).

    This is sklearn's ``f1_score(y_pred, y_true, average="weighted")``, the arguments
    swapped: per-class F1 does not change under the swap, the weights become the
    predicted counts. A class predicted but never true counts with F1 0.
    """
    from torchmetrics.functional.classification import multiclass_f1_score

    y, p = _tensors(y_true, y_pred)
    f1 = multiclass_f1_score(p, y, num_classes, average=None, validate_args=False).numpy()
    weights = np.bincount(np.asarray(y_pred), minlength=num_classes).astype(np.float64)
    return float((f1 * weights).sum() / weights.sum())


def fulora_legacy_metrics(
    y_true: Sequence[int],
    y_pred: Sequence[int],
    num_classes: int,
    batch_size: int = LEGACY_BATCH_SIZE,
    seed: int = 0,
) -> dict[str, Any]:
    """FU-LoRA's three numbers exactly as its notebook computed them (see
    :func:`fulora_acc`, :func:`fulora_auc`, :func:`fulora_f1`).

    The loader's shuffle is ``numpy.random.default_rng(seed).permutation(N)``; the
    numbers are rounded to 6 decimals, as in ``metrics.json``.
    """
    order = np.random.default_rng(seed).permutation(len(y_true))
    return {
        "ACC": _reported(fulora_acc(y_true, y_pred, batch_size, order)),
        "AUC": _reported(fulora_auc(y_true, y_pred, num_classes)),
        "F1": _reported(fulora_f1(y_true, y_pred, num_classes)),
        "batch_size": batch_size,
        "shuffle_seed": seed,
        "definitions": {
            "ACC": "mean over the batches of a shuffled loader of the running accuracy "
            "(correct so far / seen so far)",
            "AUC": "one-vs-rest ROC-AUC from one-hot hard predicted labels, macro average "
            "over the classes present in the truth",
            "F1": "per-class F1 weighted by the number of predictions of each class",
        },
        "note": "FU-LoRA's notebook metrics, for comparison with its table only; they are "
        "not accuracy, ROC-AUC and weighted F1 as usually defined",
    }
