"""fusynth audit pairs: geometric checks, the segmenter's Dice, --drop."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from fusynth.audit.pairs import PairThresholds, dice, field_of_view, score_pair
from fusynth.cli.main import main
from fusynth.data.geometry import Ellipse, ellipse_mask
from fusynth.data.phantom import draw_frame
from fusynth.data.schema import load_prepared
from tests.conftest import SHARED_DATA, requires_shared_data


def test_field_of_view_covers_the_fan_including_dark_fluid():
    frame = draw_frame("head", 128, np.random.default_rng(0))
    fov = field_of_view(frame.image)
    assert fov[5, 5] == 0 and fov[-5, 5] == 0  # outside the fan
    assert fov[frame.mask > 0].mean() == 1.0  # the whole head is inside it, dark parts too


def test_score_pair_flags_what_is_wrong():
    frame = draw_frame("head", 128, np.random.default_rng(1))
    t = PairThresholds()
    good = score_pair(frame.image, frame.mask, t)
    assert good["passed"] and good["fit_residual"] < 0.02 and good["dice"] is None
    square = np.zeros_like(frame.mask)
    square[40:80, 20:100] = 1
    square[60:80, 20:40] = 0
    bad = score_pair(frame.image, square, t)
    assert not bad["passed"] and "fit residual" in bad["reasons"]
    outside = ellipse_mask(frame.image.shape, Ellipse(8, 8, 12, 10, 0)).astype(np.uint8)
    assert "field of view" in score_pair(frame.image, outside, t)["reasons"]
    assert dice(square, square) == 1.0 and dice(square, np.zeros_like(square)) == 0.0


def test_audit_writes_per_sample_scores_and_drops(phantom_prepared, tiny_sam, tmp_path, capsys):
    import datasets

    heads = load_prepared(phantom_prepared)["train"].filter(lambda r: r["mask"] is not None)
    datasets.DatasetDict({"train": heads}).save_to_disk(str(tmp_path / "heads"))
    rc = main(
        [
            "audit",
            "pairs",
            str(tmp_path / "heads"),
            "--segmenter",
            str(tiny_sam),
            "--min-dice",
            "0.3",
            "--drop",
            str(tmp_path / "kept"),
        ]
    )
    out = capsys.readouterr()
    report = tmp_path / "heads" / "audit"
    rows = list(csv.DictReader((report / "pairs.csv").open()))
    summary = json.loads((report / "pairs_summary.json").read_text())
    assert len(rows) == len(heads) == summary["n"]
    assert all(0 <= float(r["dice"]) <= 1 for r in rows) and summary["dice"] is not None
    assert all(float(r["fit_residual"]) < 0.05 for r in rows)  # phantom masks are exact ellipses
    passed = [r for r in rows if r["passed"] == "True"]
    assert summary["passed"] == len(passed)
    if passed:
        assert rc == 0 and len(load_prepared(tmp_path / "kept")["train"]) == len(passed)
        assert json.loads((tmp_path / "kept" / "audit.json").read_text())["passed"] == len(passed)
    else:
        assert rc == 2 and "no pair passed" in out.err


def test_audit_without_segmenter_and_bad_input(phantom_prepared, tmp_path, capsys):
    assert (
        main(["audit", "pairs", f"{phantom_prepared}:train", "--report", str(tmp_path / "r")]) == 2
    )
    assert "has no mask" in capsys.readouterr().err
    assert main(["audit", "pairs", str(tmp_path / "nothing")]) == 2
    assert (
        main(["audit", "pairs", str(phantom_prepared), "--segmenter", str(tmp_path / "nosam")]) == 2
    )
    assert "not found" in capsys.readouterr().err


@requires_shared_data
def test_real_hc18_pairs_pass_the_geometric_checks(tmp_path, capsys):
    from fusynth.data.prepare import prepare

    prepare("hc18", SHARED_DATA / "hc18", tmp_path / "hc18")
    assert main(["audit", "pairs", str(tmp_path / "hc18"), "--report", str(tmp_path / "r")]) == 0
    summary = json.loads((tmp_path / "r" / "pairs_summary.json").read_text())
    assert summary["n"] == 60 and summary["passed"] == 60
    assert summary["fit_residual"]["max"] < 0.02 and summary["inside_fov"]["min"] > 0.95


@pytest.mark.parametrize("bad", ["--min-dice", "--max-residual"])
def test_threshold_flags_parse(bad, phantom_prepared, capsys):
    assert main(["audit", "pairs", str(phantom_prepared), bad, "x"]) == 2
