"""Evaluating a SAM on image/mask pairs with box prompts, optionally jittered.

Each image is encoded once; the box of its ground-truth mask (``mask_box``) is then the
prompt, as is, and for each jitter value ``J`` > 0 moved ``rounds`` times: each of the
four coordinates by an integer offset drawn uniformly from ``[-J, J]`` with
``numpy.random.default_rng([seed, image index, J, round])``, then clipped to the image.
SAM's single-mask prediction at native resolution is scored with
:func:`fusynth.segment.metrics.segmentation_metrics`.

Summaries are over images: for ``J`` > 0 an image's value is the mean over its rounds,
so the bootstrap resamples images, not rounds.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fusynth.core.errors import UserInputError
from fusynth.data.schema import with_default_split
from fusynth.segment.data import SegSample
from fusynth.segment.overlays import _Examples
from fusynth.segment.sam_formats import medsam_image, medsam_predict, preprocess_of

log = logging.getLogger(__name__)

#: Per-image metrics, in the order of the CSV's columns.
METRICS = (
    "dice",
    "iou",
    "hd95_px",
    "assd_px",
    "hd95_mm",
    "assd_mm",
    "hc_px",
    "hc_mm",
    "hc_true_mm",
    "hc_abs_error_mm",
)
#: Metrics that need a pixel spacing.
MM_METRICS = ("hd95_mm", "assd_mm", "hc_mm", "hc_true_mm", "hc_abs_error_mm")
CSV_COLUMNS = ("key", "subject_id", "box_jitter", "round", "box", *METRICS)
N_BOOT = 2000
CONFIDENCE = 0.95


# ----------------------------------------------------------------------------- settings


def check_settings(box_jitter: Sequence[int], rounds: int, n_examples: int = 0) -> list[int]:
    """Validate the jitter values and counts.

    Returns:
        The jitter values without repeats, in the order given.

    Raises:
        UserInputError: no or a negative jitter value, ``rounds`` < 1 or ``n_examples``
            < 0; the message names the flag.
    """
    jitters = list(dict.fromkeys(int(j) for j in box_jitter))
    if not jitters:
        raise UserInputError("--box_jitter: give at least one value, e.g. 0")
    negative = [j for j in jitters if j < 0]
    if negative:
        raise UserInputError(f"--box_jitter: {negative[0]} is negative; jitter is in pixels >= 0")
    if rounds < 1:
        raise UserInputError(f"--rounds: must be at least 1, got {rounds}")
    if n_examples < 0:
        raise UserInputError(f"--n_examples: must be at least 0, got {n_examples}")
    return jitters


# ----------------------------------------------------------------------------- prediction


def jitter_box(
    box: np.ndarray, jitter: int, shape: tuple[int, int], rng: np.random.Generator
) -> np.ndarray:
    """Move each coordinate of an ``[x0, y0, x1, y1]`` box by an integer in ``[-J, J]``.

    The result is clipped to the image and its corners put back in order (a jitter
    larger than the box can swap them); each coordinate stays within ``J`` of the
    original either way.

    Args:
        box: the true box.
        jitter: ``J`` in pixels (0 returns the box unchanged).
        shape: ``(H, W)`` of the image.
        rng: the generator the offsets are drawn from.

    Returns:
        ``[4]`` float32 box.
    """
    box = np.asarray(box, dtype=np.float32)
    if jitter == 0:
        return box.copy()
    h, w = shape
    moved = box + rng.integers(-jitter, jitter + 1, size=4)
    x0, x1 = np.clip(moved[[0, 2]], 0, w - 1)
    y0, y1 = np.clip(moved[[1, 3]], 0, h - 1)
    return np.array([min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)], dtype=np.float32)


@dataclass
class Prediction:
    """SAM's mask for one (image, jitter, round)."""

    index: int
    sample: SegSample
    jitter: int
    round: int
    box: np.ndarray  # [4] x0, y0, x1, y1
    mask: np.ndarray  # [H, W] bool, native resolution


def predict_masks(
    sam: Any,
    samples: Sequence[SegSample],
    box_jitter: Sequence[int],
    rounds: int,
    seed: int,
    cache: Any = None,
) -> Iterator[Prediction]:
    """SAM's box-prompted predictions, image by image (one encoding per image).

    Args:
        sam: a ``segment_anything`` Sam.
        samples: the images with their masks.
        box_jitter: jitter values in pixels; 0 is deterministic and gets one round.
        rounds: prompts drawn per image for each jitter value > 0.
        seed: seed of the jitter.
        cache: a :class:`fusynth.segment.finetune.EmbeddingCache` of this model's
            encoder: embeddings are read from it (or computed and stored) instead of
            running the encoder for every evaluation of the same images.

    Yields:
        One :class:`Prediction` per (image, jitter, round), in that order.
    """
    from segment_anything import SamPredictor

    from fusynth.segment.sam import mask_box

    predictor = SamPredictor(sam)
    medsam = preprocess_of(sam) == "medsam"
    size = sam.image_encoder.img_size
    for i, sample in enumerate(samples):
        image = medsam_image(sample.image, size) if medsam else sample.image
        rgb = np.repeat(image[..., None], 3, axis=2)
        if cache is None:
            predictor.set_image(rgb)
        else:  # what set_image does, with the embedding from the cache
            resized = predictor.transform.apply_image(rgb)
            predictor.reset_image()
            predictor.original_size = rgb.shape[:2]
            predictor.input_size = resized.shape[:2]
            predictor.features = cache.embed(sam, [resized]).to(predictor.device)
            predictor.is_image_set = True
        true_box = mask_box(sample.mask)
        for jitter in box_jitter:
            for r in range(1 if jitter == 0 else rounds):
                rng = np.random.default_rng([seed, i, jitter, r])
                box = jitter_box(true_box, jitter, sample.image.shape, rng)
                if medsam:
                    yield Prediction(i, sample, jitter, r, box, medsam_predict(predictor, box, sample.image.shape))  # fmt: skip
                    continue
                masks, _, _ = predictor.predict(box=box, multimask_output=False)
                yield Prediction(i, sample, jitter, r, box, np.asarray(masks[0], dtype=bool))


# ----------------------------------------------------------------------------- evaluation


@dataclass
class Result:
    """The metrics of one prediction (a row of ``per_image.csv``)."""

    index: int
    key: str
    subject_id: str
    jitter: int
    round: int
    box: np.ndarray
    empty: bool
    metrics: dict[str, float | None]

    def row(self) -> dict[str, Any]:
        """The CSV row: missing values as empty cells."""
        return {
            "key": self.key,
            "subject_id": self.subject_id,
            "box_jitter": self.jitter,
            "round": self.round,
            "box": " ".join(str(int(v)) for v in np.rint(self.box)),
            **{m: _cell(self.metrics[m]) for m in METRICS},
        }


def _cell(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return ""
    return repr(float(value))


def score(pred: Prediction) -> Result:
    """Score one prediction against its sample's mask."""
    from fusynth.segment.metrics import segmentation_metrics

    s = pred.sample
    metrics = segmentation_metrics(
        pred.mask, s.mask, s.pixel_spacing_mm, true_hc_mm=s.head_circumference_mm
    )
    return Result(
        index=pred.index,
        key=s.key,
        subject_id=s.subject_id,
        jitter=pred.jitter,
        round=pred.round,
        box=pred.box,
        empty=not pred.mask.any(),
        metrics={m: metrics[m] for m in METRICS},
    )


def evaluate_segmentation(
    model: str | os.PathLike,
    data: str,
    out: str | os.PathLike,
    box_jitter: Sequence[int] = (0,),
    rounds: int = 1,
    seed: int = 0,
    model_type: str | None = None,
    overwrite: bool = False,
    n_examples: int = 4,
    device: str | None = None,
    embedding_cache: str | os.PathLike | None = None,
    preprocess: str | None = None,
) -> dict[str, Any]:
    """Evaluate a SAM on ``DIR[:split]`` with (jittered) box prompts, or a U-Net folder
    (no prompt; found by its ``unet_config.json``), and write a report.

    ``out`` receives ``per_image.csv`` (one row per image, jitter and round),
    ``summary.json`` (per jitter value: mean, sd, bootstrap 95% CI and count of each
    metric over images), ``boxplot.png`` (Dice per jitter value) and
    ``overlays/worst.png`` / ``overlays/best.png`` (the ``n_examples`` lowest- and
    highest-Dice images at jitter 0, or the first value given: ground truth in green,
    prediction in red, box in yellow). The folder is built aside and renamed into place.

    Args:
        model: SAM folder or checkpoint, or U-Net folder (``--model``).
        data: ``DIR[:split]`` of a prepared dataset with masks (``--data``).
        out: the report folder (``--out``).
        box_jitter: jitter values in pixels.
        rounds: prompts drawn per image for each jitter value > 0.
        seed: seed of the jitter and of the bootstrap.
        model_type: SAM size of a bare checkpoint file.
        overwrite: replace an existing ``out``.
        n_examples: images in each overlay figure (0: none).
        device: torch device; CUDA when available by default.
        embedding_cache: folder of cached image embeddings (shared with fine-tuning:
            a model whose encoder was frozen reuses the embeddings its training made);
            None runs the encoder on every image.
        preprocess: ``sam`` or ``medsam``; by default the model's own (MedSAM weights:
            ``medsam``; see :mod:`fusynth.segment.sam_formats`).

    Returns:
        The summary written to ``summary.json``.

    Raises:
        UserInputError: bad settings, model or data, or an existing ``out``.
    """
    from tqdm.auto import tqdm

    from fusynth.core.io import atomic_dir, check_output_dir
    from fusynth.segment.data import load_seg_set
    from fusynth.segment.sam import load_sam

    jitters = check_settings(box_jitter, rounds, n_examples)
    overwrite = overwrite or _is_empty_dir(out)
    check_output_dir(out, overwrite)
    from fusynth.segment.unet import is_unet_folder

    segmenter = "unet" if is_unet_folder(model) else "sam"
    if segmenter == "unet":  # no prompt: one prediction per image
        predictions, model_type, seg = unet_predictions(
            model,
            with_default_split(data, "test"),
            jitters,
            model_type,
            embedding_cache,
            _device(device),
        )
        if preprocess is not None:
            raise UserInputError("--preprocess: a U-Net has no SAM preprocessing; leave it out")
    else:
        sam, model_type = load_sam(model, model_type, flag="--model", preprocess=preprocess)
        sam.to(_device(device))
        seg = load_seg_set(with_default_split(data, "test"), "--data")
        preprocess = preprocess_of(sam)
        cache = None
        if embedding_cache is not None:
            from fusynth.segment.cache import EmbeddingCache

            cache = EmbeddingCache(embedding_cache, sam, model_type)
        predictions = predict_masks(sam, seg.samples, jitters, rounds, seed, cache)
    shown = 0 if 0 in jitters else jitters[0]
    examples = _Examples(n_examples, shown)
    results = []
    total = len(seg.samples) * sum(1 if j == 0 else rounds for j in jitters)
    for pred in tqdm(
        predictions,
        total=total,
        desc="evaluate",
        unit="prediction",
        disable=None,
        leave=False,
    ):
        result = score(pred)
        results.append(result)
        if pred.jitter == shown and pred.round == 0:
            examples.offer(result.metrics["dice"], pred)
    from fusynth.core.io import weights_sha256

    summary = {
        "model": str(model),
        "model_sha256": weights_sha256(model),
        "model_type": model_type,
        "preprocess": preprocess,
        "segmenter": segmenter,
        "prompt": "box" if segmenter == "sam" else "none (a U-Net segments the whole image)",
        "data": str(data),
        "n_images": len(seg.samples),
        "n_subjects": len(seg.subjects),
        "skipped": {"empty_mask": seg.skipped_empty, "no_mask": seg.skipped_unlabeled},
        "settings": {
            "box_jitter": jitters,
            "rounds": rounds,
            "seed": seed,
            "bootstrap": {"n_boot": N_BOOT, "confidence": CONFIDENCE},
            "examples_at_jitter": shown,
        },
        "empty_predictions": sum(r.empty for r in results),
        "by_jitter": summarise(
            results,
            jitters,
            len(seg.samples),
            has_spacing=any(s.pixel_spacing_mm for s in seg.samples),
            seed=seed,
        ),
    }
    with atomic_dir(out, overwrite=overwrite, kind="evaluation") as tmp:
        _write_csv(tmp / "per_image.csv", results)
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        title = "Dice by box-prompt jitter" if segmenter == "sam" else "Dice (U-Net, no prompt)"
        _write_boxplot(tmp / "boxplot.png", results, jitters, len(seg.samples), title)
        examples.write(tmp / "overlays")
    return summary


def _is_empty_dir(path: str | os.PathLike) -> bool:
    path = Path(path)
    return path.is_dir() and not any(path.iterdir())


def _device(device: str | None) -> str:
    import torch

    if device is not None:
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


# ----------------------------------------------------------------------------- summaries


def per_image_values(
    results: Sequence[Result], jitter: int, metric: str, n_images: int
) -> list[float]:
    """One value per image at ``jitter``: the mean of its rounds' finite values (NaN if
    none)."""
    from fusynth.core.stats import finite_values

    by_image: list[list[float | None]] = [[] for _ in range(n_images)]
    for r in results:
        if r.jitter == jitter:
            by_image[r.index].append(r.metrics[metric])
    values = []
    for v in by_image:
        finite = finite_values(v)
        values.append(float(finite.mean()) if finite.size else math.nan)
    return values


def summarise(
    results: Sequence[Result],
    jitters: Sequence[int],
    n_images: int,
    has_spacing: bool,
    seed: int = 0,
) -> dict[str, Any]:
    """Per jitter value: prediction counts and each metric's mean, sd, CI and n.

    Metrics in mm are None when no image has a pixel spacing; statistics that cannot
    be computed (no finite value, sd of one) are None.
    """
    from fusynth.core.stats import bootstrap_ci, finite_values, mean_sd

    out: dict[str, Any] = {}
    for jitter in jitters:
        mine = [r for r in results if r.jitter == jitter]
        entry: dict[str, Any] = {
            "n_predictions": len(mine),
            "empty_predictions": sum(r.empty for r in mine),
        }
        for metric in METRICS:
            if metric in MM_METRICS and not has_spacing:
                entry[metric] = None
                continue
            values = per_image_values(results, jitter, metric, n_images)
            mean, low, high = bootstrap_ci(values, N_BOOT, CONFIDENCE, seed)
            _, sd = mean_sd(values)
            entry[metric] = {
                "mean": _json_float(mean),
                "sd": _json_float(sd),
                "ci_low": _json_float(low),
                "ci_high": _json_float(high),
                "n": int(finite_values(values).size),
            }
        out[str(jitter)] = entry
    return out


def _json_float(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def _write_csv(path: Path, results: Sequence[Result]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(CSV_COLUMNS), lineterminator="\n")
    writer.writeheader()
    writer.writerows(r.row() for r in results)
    path.write_text(buf.getvalue())


def _write_boxplot(
    path: Path,
    results: Sequence[Result],
    jitters: Sequence[int],
    n: int,
    title: str = "Dice by box-prompt jitter",
) -> None:
    from fusynth.core.plots import box_plot

    groups = {f"{j} px": per_image_values(results, j, "dice", n) for j in jitters}
    box_plot(
        path,
        groups,
        f"{title} ({n} images; line: median, triangle: mean)",
        "Dice (per image)",
        "box prompt moved by up to" if title.startswith("Dice by box") else None,
    )


# ----------------------------------------------------------------------------- U-Net


def predict_unet_masks(model: Any, samples: Sequence[Any], size: int, device: Any) -> Iterator[Any]:
    """The U-Net's masks at native resolution, one
    :class:`Prediction` per image. There is no prompt: the
    prediction's box is empty (``[0]``-shaped), jitter 0 and round 0."""
    from fusynth.segment.unet import predict_logits

    model.to(device).eval()
    for i, sample in enumerate(samples):
        mask = predict_logits(model, sample.image, size, device).numpy() > 0
        yield Prediction(i, sample, 0, 0, np.zeros(0, dtype=np.float32), mask)


def unet_predictions(
    model: str | os.PathLike,
    data: str,
    box_jitter: Sequence[int],
    model_type: str | None,
    embedding_cache: Any,
    device: Any,
) -> tuple[Iterator[Any], str, Any]:
    """What ``fusynth evaluate segmentation`` needs of a U-Net folder: its predictions,
    its encoder's name (the report's ``model_type``) and the loaded samples.

    Raises:
        UserInputError: a SAM-only setting (box jitter above 0, ``--model_type``,
            ``--embedding_cache``), a bad folder or bad data.
    """
    from fusynth.segment.data import load_seg_set

    if list(box_jitter) != [0]:
        raise UserInputError(
            f"--box_jitter: {model} is a U-Net, which takes no box prompt; leave --box_jitter at 0"
        )
    for given, flag in ((model_type, "--model_type"), (embedding_cache, "--embedding_cache")):
        if given is not None:
            raise UserInputError(f"{flag}: applies to SAM only; {model} is a U-Net")
    from fusynth.segment.unet import load_unet, resolution_of

    unet, cfg = load_unet(model)
    seg = load_seg_set(data, "--data")
    return (
        predict_unet_masks(unet, seg.samples, resolution_of(cfg), device),
        cfg["encoder_name"],
        seg,
    )
