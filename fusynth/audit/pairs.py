"""Pair consistency: is each synthetic mask a plausible head, and does it match its image?

Geometric checks need no model: how far the mask is from an ellipse (``1 - IoU`` with
its fitted ellipse), how much of it lies inside the ultrasound field of view, and its
area. With a segmenter (a SAM), each image is prompted with its mask's box and the Dice
between the prediction and the mask is recorded: a pair whose image does not show the
head its mask claims scores low.
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from fusynth.core.artifacts import AUDIT_DIR, PAIRS_AUDIT_FILE, REQUEST_FILE, STATS_FILE
from fusynth.core.errors import UserInputError
from fusynth.core.io import atomic_write_bytes
from fusynth.data.geometry import boundary_points, ellipse_mask, fit_ellipse
from fusynth.data.images import decode_image


@dataclass
class PairThresholds:
    """Limits a pair must meet to pass."""

    max_residual: float = 0.15
    min_inside_fov: float = 0.95
    min_area: float = 0.005
    max_area: float = 0.9
    min_dice: float = 0.8


@dataclass
class PairScore:
    """One sample's audit."""

    index: int
    subject_id: str
    area: float
    fit_residual: float
    inside_fov: float
    dice: float | None
    passed: bool
    reasons: str


def field_of_view(image: np.ndarray, level: int = 8) -> np.ndarray:
    """The imaged region of an ultrasound frame (``[H, W]`` bool).

    The fan or rectangle of a B-mode frame is convex, but the anechoic fluid inside it
    is as black as the background, so no threshold finds it. The convex hull of the
    bright pixels does, once an opening has removed burnt-in text and calipers.
    """
    from scipy.spatial import ConvexHull, QhullError

    fg = ndi.binary_opening(np.asarray(image) > level, structure=np.ones((5, 5)))
    ys, xs = np.nonzero(fg)
    if len(xs) < 3:
        return np.zeros(fg.shape, dtype=bool)
    try:
        hull = ConvexHull(np.stack([xs, ys], axis=1))
    except QhullError:  # all points on a line
        return fg
    yy, xx = np.mgrid[0 : fg.shape[0], 0 : fg.shape[1]]
    inside = np.ones(fg.shape, dtype=bool)
    for a, b, c in hull.equations:  # a*x + b*y + c <= 0 inside
        inside &= a * xx + b * yy + c <= 0.5
    return inside


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two boolean masks (1.0 when both are empty)."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2 * (a & b).sum() / total)


def score_pair(
    image: np.ndarray, mask: np.ndarray, t: PairThresholds, segmenter: Any | None = None
) -> dict[str, Any]:
    """Geometric checks (and the segmenter's Dice) of one image/mask pair."""
    fg = np.asarray(mask) > 0
    area = float(fg.mean())
    reasons = []
    if not fg.any():
        return {
            "area": 0.0,
            "fit_residual": 1.0,
            "inside_fov": 0.0,
            "dice": None,
            "passed": False,
            "reasons": "empty mask",
        }
    try:
        ell = fit_ellipse(boundary_points(fg))
        filled = ellipse_mask(fg.shape, ell)
        residual = float(1 - (filled & fg).sum() / (filled | fg).sum())
    except ValueError:
        residual = 1.0
    inside = float((fg & field_of_view(image)).sum() / fg.sum())
    score = None
    if segmenter is not None:
        from fusynth.segment.sam import mask_box, predict_with_box

        score = dice(predict_with_box(segmenter, image, mask_box(fg)), fg)
    if residual > t.max_residual:
        reasons.append(f"fit residual {residual:.3f} > {t.max_residual}")
    if inside < t.min_inside_fov:
        reasons.append(f"{inside:.1%} inside the field of view < {t.min_inside_fov:.0%}")
    if not t.min_area <= area <= t.max_area:
        reasons.append(f"area {area:.3f} outside [{t.min_area}, {t.max_area}]")
    if score is not None and score < t.min_dice:
        reasons.append(f"dice {score:.3f} < {t.min_dice}")
    return {
        "area": area,
        "fit_residual": residual,
        "inside_fov": inside,
        "dice": score,
        "passed": not reasons,
        "reasons": "; ".join(reasons),
    }


def audit_pairs(
    cohort: str | os.PathLike,
    thresholds: PairThresholds | None = None,
    segmenter: str | os.PathLike | None = None,
    segmenter_type: str | None = None,
    report: str | os.PathLike | None = None,
    drop: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Score every pair of a cohort; write ``pairs.csv`` and ``pairs_summary.json``.

    Args:
        cohort: a cohort (or any prepared dataset with masks), ``DIR[:split]``.
        thresholds: pass/fail limits.
        segmenter: a SAM folder or checkpoint for the Dice check.
        segmenter_type: SAM size for a bare checkpoint file.
        report: where to write the report (default ``COHORT/audit``).
        drop: write the cohort without the failing pairs here.
        overwrite: replace an existing ``drop`` folder.

    Returns:
        The summary.

    Raises:
        UserInputError: not a dataset, no masks, bad segmenter, existing ``drop``.
    """
    import datasets
    from tqdm.auto import tqdm

    from fusynth.core.io import atomic_dir, check_output_dir
    from fusynth.data.schema import ALL_SPLITS, load_prepared, parse_data_spec, save_prepared

    t = thresholds or PairThresholds()
    path, split = parse_data_spec(str(cohort))
    dsd = load_prepared(path)
    splits = [split] if split and split != ALL_SPLITS else list(dsd)
    if drop is not None:
        check_output_dir(drop, overwrite)
    sam = None
    if segmenter is not None:
        from fusynth.segment.sam import load_sam

        sam, _ = load_sam(segmenter, segmenter_type)
    scores: list[PairScore] = []
    keep: dict[str, list[int]] = {}
    for name in splits:
        ds = dsd[name]
        keep[name] = []
        for i, row in enumerate(
            tqdm(ds, desc=f"audit {name}", unit="pair", disable=None, leave=False)
        ):
            if row["mask"] is None:
                raise UserInputError(
                    f"{path} split {name!r} sample {i} ({row['subject_id']}) has no mask"
                )
            s = score_pair(decode_image(row["image"]), decode_image(row["mask"]), t, sam)
            scores.append(PairScore(index=i, subject_id=row["subject_id"], **s))
            if s["passed"]:
                keep[name].append(i)
    if not scores:
        raise UserInputError(f"{path}: no pairs to audit")
    summary = _summary(scores, t, segmenter)
    target = Path(report) if report else path / AUDIT_DIR
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(asdict(scores[0])), lineterminator="\n")
    writer.writeheader()
    writer.writerows(asdict(s) for s in scores)
    atomic_write_bytes(target / "pairs.csv", buf.getvalue().encode())
    atomic_write_bytes(target / PAIRS_AUDIT_FILE, (json.dumps(summary, indent=2) + "\n").encode())
    summary["report"] = str(target)
    if drop is not None:
        kept = {name: dsd[name].select(idx) for name, idx in keep.items() if idx}
        if not kept:
            raise UserInputError(f"--drop: no pair passed; nothing to write to {drop}")
        with atomic_dir(drop, overwrite=overwrite, kind="cohort") as tmp:
            save_prepared(datasets.DatasetDict(kept), tmp)
            for extra in (REQUEST_FILE, STATS_FILE):
                if (path / extra).is_file():
                    (tmp / extra).write_bytes((path / extra).read_bytes())
            (tmp / "audit.json").write_text(json.dumps(summary, indent=2) + "\n")
        summary["kept"] = sum(len(v) for v in kept.values())
    return summary


def _summary(scores: list[PairScore], t: PairThresholds, segmenter: Any) -> dict[str, Any]:
    def stats(values: list[float]) -> dict[str, float]:
        a = np.asarray(values, dtype=float)
        return {
            "mean": float(a.mean()),
            "min": float(a.min()),
            "median": float(np.median(a)),
            "max": float(a.max()),
        }

    dices = [s.dice for s in scores if s.dice is not None]
    return {
        "n": len(scores),
        "passed": sum(s.passed for s in scores),
        "failed": sum(not s.passed for s in scores),
        "thresholds": asdict(t),
        "segmenter": str(segmenter) if segmenter else None,
        "fit_residual": stats([s.fit_residual for s in scores]),
        "inside_fov": stats([s.inside_fov for s in scores]),
        "area": stats([s.area for s in scores]),
        "dice": stats(dices) if dices else None,
    }
