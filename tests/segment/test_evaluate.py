"""Segmentation evaluation: the report's files, its summary against its CSV, the jittered
boxes, and the wiring from prediction to metrics with an oracle predictor."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from PIL import Image

from fusynth.cli.args import parse_int_list
from fusynth.core.errors import UserInputError
from fusynth.segment.data import SegSample, load_seg_set
from fusynth.segment.evaluate import (
    METRICS,
    Result,
    check_settings,
    evaluate_segmentation,
    jitter_box,
    summarise,
)
from fusynth.segment.sam import mask_box

JITTERS, ROUNDS = [0, 5], 2


def _rows(out):
    with open(out / "per_image.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _num(cell: str) -> float:
    return float(cell) if cell else math.nan


@pytest.fixture(scope="module")
def report(tiny_sam, phantom_prepared, tmp_path_factory):
    """The tiny SAM evaluated on every head frame of the phantom, jitter 0 and 5."""
    out = tmp_path_factory.mktemp("eval") / "report"
    summary = evaluate_segmentation(
        tiny_sam, f"{phantom_prepared}:all", out, box_jitter=JITTERS, rounds=ROUNDS, seed=3
    )
    return out, summary


@pytest.fixture(scope="module")
def samples(phantom_prepared):
    return {s.key: s for s in load_seg_set(str(phantom_prepared), "--data").samples}


class Oracle:
    """Stands in for ``SamPredictor``: answers each box with a fixed mask of the image
    last set (its ground truth, or ``empty``), and records what it was asked."""

    def __init__(self, samples, empty: bool = False):
        self.masks = {s.image.tobytes(): s.mask for s in samples}
        self.empty = empty
        self.images: list[np.ndarray] = []
        self.boxes: list[np.ndarray] = []

    def __call__(self, sam):
        return self

    def set_image(self, image):
        assert image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8
        self.images.append(image)
        self.current = self.masks[np.ascontiguousarray(image[..., 0]).tobytes()]

    def predict(self, box, multimask_output):
        assert multimask_output is False
        self.boxes.append(np.asarray(box))
        mask = np.zeros_like(self.current) if self.empty else self.current.copy()
        return mask[None], np.ones(1, dtype=np.float32), np.zeros((1, 256, 256), np.float32)


@pytest.fixture
def oracle(monkeypatch, samples):
    import segment_anything

    fake = Oracle(samples.values())
    monkeypatch.setattr(segment_anything, "SamPredictor", fake)
    return fake


# ----------------------------------------------------------------------------- the report


def test_report_files_and_one_row_per_prediction(report, samples):
    out, summary = report
    rows = _rows(out)
    n = len(samples)
    assert summary["n_images"] == n == 8
    assert len(rows) == n * (1 + ROUNDS)
    assert list(rows[0]) == ["key", "subject_id", "box_jitter", "round", "box", *METRICS]
    assert {r["key"] for r in rows} == set(samples)
    assert sorted((r["box_jitter"], r["round"]) for r in rows if r["key"] == rows[0]["key"]) == [
        ("0", "0"),
        ("5", "0"),
        ("5", "1"),
    ]
    for name in ("boxplot.png", "overlays/worst.png", "overlays/best.png"):
        with Image.open(out / name) as im:
            im.load()
            assert im.width >= 200 and im.height >= 200
    with Image.open(out / "overlays/worst.png") as im:
        assert im.width >= 4 * 256 and im.height >= 256  # four 256-px tiles, captioned
    assert json.loads((out / "summary.json").read_text()) == summary
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp left


def test_summary_agrees_with_csv(report):
    out, summary = report
    rows = _rows(out)
    assert summary["skipped"] == {"empty_mask": 0, "no_mask": 24}
    assert summary["settings"]["box_jitter"] == JITTERS
    assert summary["settings"]["rounds"] == ROUNDS
    assert summary["empty_predictions"] == sum(
        summary["by_jitter"][str(j)]["empty_predictions"] for j in JITTERS
    )
    for jitter in JITTERS:
        mine = [r for r in rows if r["box_jitter"] == str(jitter)]
        entry = summary["by_jitter"][str(jitter)]
        assert entry["n_predictions"] == len(mine)
        for metric in ("dice", "hd95_px", "hc_abs_error_mm"):
            per_image: dict[str, list[float]] = {}
            for r in mine:
                per_image.setdefault(r["key"], []).append(_num(r[metric]))
            means = [np.nanmean(v) for v in per_image.values()]
            stats = entry[metric]
            assert stats["n"] == len(means)
            assert stats["mean"] == pytest.approx(np.mean(means), rel=1e-9)
            assert stats["sd"] == pytest.approx(np.std(means, ddof=1), rel=1e-9)
            assert stats["ci_low"] <= stats["mean"] <= stats["ci_high"]


def test_jittered_boxes_stay_near_the_true_box_and_inside(report, samples):
    out, _ = report
    moved = 0
    for r in _rows(out):
        s = samples[r["key"]]
        box = np.array([float(v) for v in r["box"].split()])
        truth = mask_box(s.mask)
        jitter = int(r["box_jitter"])
        assert np.all(np.abs(box - truth) <= jitter)
        h, w = s.image.shape
        assert 0 <= box[0] <= box[2] <= w - 1 and 0 <= box[1] <= box[3] <= h - 1
        moved += int(not np.array_equal(box, truth))
    assert moved > 0


def test_existing_out_is_refused_without_overwrite(report, tiny_sam, phantom_prepared, oracle):
    out, _ = report
    before = (out / "per_image.csv").read_bytes()
    with pytest.raises(UserInputError, match="--overwrite"):
        evaluate_segmentation(tiny_sam, str(phantom_prepared), out)
    assert (out / "per_image.csv").read_bytes() == before


def test_empty_existing_folder_is_used(tiny_sam, phantom_prepared, oracle, tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    evaluate_segmentation(tiny_sam, str(phantom_prepared), out, n_examples=0)
    assert (out / "summary.json").is_file() and not (out / "overlays").exists()


# ----------------------------------------------------------------------------- oracle


def test_oracle_predictions_score_perfectly(tiny_sam, phantom_prepared, oracle, tmp_path):
    summary = evaluate_segmentation(
        tiny_sam, str(phantom_prepared), tmp_path / "o", box_jitter=[0, 7], rounds=3, seed=1
    )
    n = summary["n_images"]
    assert len(oracle.images) == n  # one encoding per image
    assert len(oracle.boxes) == n * (1 + 3)
    for jitter in ("0", "7"):
        entry = summary["by_jitter"][jitter]
        assert entry["empty_predictions"] == 0
        for metric, value in (("dice", 1.0), ("iou", 1.0), ("hd95_px", 0.0), ("assd_mm", 0.0)):
            stats = entry[metric]
            assert (stats["mean"], stats["ci_low"], stats["ci_high"]) == (value, value, value)
            assert stats["n"] == n
    rows = _rows(tmp_path / "o")
    assert {float(r["dice"]) for r in rows} == {1.0}


def test_empty_predictions_are_counted_and_distances_undefined(
    tiny_sam, phantom_prepared, oracle, tmp_path
):
    oracle.empty = True
    summary = evaluate_segmentation(tiny_sam, str(phantom_prepared), tmp_path / "e")
    entry = summary["by_jitter"]["0"]
    assert summary["empty_predictions"] == entry["empty_predictions"] == summary["n_images"]
    assert entry["dice"]["mean"] == 0.0
    assert entry["hd95_px"] == {"mean": None, "sd": None, "ci_low": None, "ci_high": None, "n": 0}
    assert {r["hd95_px"] for r in _rows(tmp_path / "e")} == {""}


def test_jitter_is_seeded(tiny_sam, phantom_prepared, oracle, tmp_path):
    def boxes(seed, name):
        evaluate_segmentation(
            tiny_sam, str(phantom_prepared), tmp_path / name, box_jitter=[9], rounds=2, seed=seed
        )
        return [r["box"] for r in _rows(tmp_path / name)]

    first = boxes(4, "a")
    assert boxes(4, "b") == first
    assert boxes(5, "c") != first


# ----------------------------------------------------------------------------- units


def test_jitter_box_bounds_with_a_large_jitter():
    truth = np.array([2, 3, 10, 8], dtype=np.float32)
    for r in range(200):
        box = jitter_box(truth, 12, (12, 15), np.random.default_rng([0, r]))
        assert np.all(np.abs(box - truth) <= 12)
        assert np.all(box == np.rint(box))
        assert 0 <= box[0] <= box[2] <= 14 and 0 <= box[1] <= box[3] <= 11
    assert np.array_equal(jitter_box(truth, 0, (12, 15), np.random.default_rng(0)), truth)


def test_mm_metrics_are_null_without_spacing():
    sample = SegSample(
        "k", np.zeros((4, 4), np.uint8), np.ones((4, 4), bool), "s", False, None, None
    )
    metrics = dict.fromkeys(METRICS)
    metrics.update(dice=0.5, iou=0.3, hd95_px=1.0, assd_px=0.5, hc_px=10.0)
    results = [Result(0, sample.key, "s", 0, 0, np.zeros(4), False, metrics)]
    entry = summarise(results, [0], 1, has_spacing=False)["0"]
    assert entry["hd95_mm"] is None and entry["hc_abs_error_mm"] is None
    assert entry["dice"] == {"mean": 0.5, "sd": None, "ci_low": 0.5, "ci_high": 0.5, "n": 1}


def test_parse_int_list():
    assert parse_int_list("0,10, 20", "--box_jitter") == [0, 10, 20]
    with pytest.raises(UserInputError, match=r"--box_jitter: 'x1'"):
        parse_int_list("0,x1", "--box_jitter")
    with pytest.raises(UserInputError, match="--box_jitter"):
        parse_int_list("", "--box_jitter")


@pytest.mark.parametrize(
    ("jitter", "rounds", "flag"),
    [([0, -5], 1, "--box_jitter"), ([], 1, "--box_jitter"), ([0], 0, "--rounds")],
)
def test_bad_settings_name_their_flag(jitter, rounds, flag, tmp_path):
    with pytest.raises(UserInputError, match=flag):
        check_settings(jitter, rounds)
    with pytest.raises(UserInputError, match=flag):  # before the model is loaded
        evaluate_segmentation(tmp_path / "none", "none", tmp_path / "o", jitter, rounds)


def test_repeated_jitter_values_are_merged():
    assert check_settings([0, 10, 0, 10], 2) == [0, 10]


def test_head_circumference_error_in_mm_where_the_spacing_is_known(
    tiny_sam, phantom_prepared, oracle, tmp_path
):
    """The phantom records spacing and HC: a perfect mask's HC error is the ellipse fit's
    own error, a few mm at most, reported for every image."""
    summary = evaluate_segmentation(tiny_sam, str(phantom_prepared), tmp_path / "hc")
    rows = _rows(tmp_path / "hc")
    assert all(r["hc_true_mm"] and r["hc_mm"] and r["hc_abs_error_mm"] for r in rows)
    assert all(float(r["hc_abs_error_mm"]) < 0.03 * float(r["hc_true_mm"]) for r in rows)
    stats = summary["by_jitter"]["0"]["hc_abs_error_mm"]
    assert stats["n"] == summary["n_images"] and stats["mean"] < 5.0
