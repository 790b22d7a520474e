"""The readers on the real dataset samples in ../shared/data (skipped when absent)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fusynth.cli.main import main
from fusynth.data.geometry import ellipse_mask, fit_ellipse
from fusynth.data.images import decode_image, read_grayscale
from fusynth.data.inspect import summarize
from fusynth.data.schema import VIEWS, load_prepared
from tests.conftest import SHARED_DATA, requires_shared_data

pytestmark = requires_shared_data


@pytest.fixture(scope="module")
def hc18(tmp_path_factory):
    out = tmp_path_factory.mktemp("real") / "hc18"
    assert main(["data", "prepare", "--format", "hc18", str(SHARED_DATA / "hc18"), str(out)]) == 0
    return load_prepared(out)


def test_hc18_gives_60_filled_masks(hc18):
    rows = [r for ds in hc18.values() for r in ds]
    assert len(rows) == 60
    assert all(VIEWS[r["view"]] == "head" and r["mask"] is not None for r in rows)
    # NNN_HC and NNN_2HC are one exam: subjects are the distinct numbers.
    exams = {json.loads(r["provenance"])["source"].split("/")[-1].split("_")[0] for r in rows}
    assert {r["subject_id"] for r in rows} == {f"hc18:{int(e):03d}" for e in exams}
    trimesters = [json.loads(r["provenance"]).get("trimester") for r in rows]
    assert sorted(set(trimesters)) == [1, 2, 3]


def test_hc18_mask_area_matches_the_annotated_ellipse(hc18):
    """Filled area is pi*a*b of the ellipse fitted to the annotation outline (the outline
    itself, 1-2 px, adds a little), and the mask is that ellipse, clipped to the frame."""
    for row in (r for ds in hc18.values() for r in ds):
        source = json.loads(row["provenance"])["source"]
        outline = (
            read_grayscale(SHARED_DATA / "hc18" / source.replace(".png", "_Annotation.png")) > 127
        )
        ys, xs = np.nonzero(outline)
        ell = fit_ellipse(np.stack([xs, ys], axis=1))
        mask = decode_image(row["mask"]) > 0
        inside_frame = ellipse_mask(mask.shape, ell)
        iou = (mask & inside_frame).sum() / (mask | inside_frame).sum()
        assert iou > 0.96, source
        if inside_frame.sum() >= ell.area * 0.999:  # not clipped by the frame
            assert mask.sum() == pytest.approx(ell.area, rel=0.04), source


@pytest.mark.parametrize(
    ("fmt", "folder", "n", "views", "centers"),
    [
        (
            "fetal_planes_db",
            "fetal_planes_db",
            100,
            {"abdomen", "brain", "femur", "thorax", "other"},
            {"Spain"},
        ),
        (
            "african",
            "african_planes",
            217,
            {"abdomen", "brain", "femur", "thorax"},
            {"Algeria", "Egypt", "Ghana", "Malawi", "Uganda"},
        ),
    ],
)
def test_plane_datasets_prepare_and_inspect_cleanly(
    tmp_path, capsys, fmt, folder, n, views, centers
):
    out = tmp_path / fmt
    assert main(["data", "prepare", "--format", fmt, str(SHARED_DATA / folder), str(out)]) == 0
    assert main(["data", "inspect", str(out), "--json", str(tmp_path / "s.json")]) == 0
    assert "no subject appears in two splits" in capsys.readouterr().out
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["n_samples"] == n and summary["ok"]
    assert set(summary["centers"]) == centers
    assert {v for split in summary["views"].values() for v in split} == views
    # Every split sees every view (stratified by subject's view).
    for split in ("train", "validation", "test"):
        assert set(summary["views"][split]) == views, split
    dsd = load_prepared(out)
    assert all(im.mode == "L" for ds in dsd.values() for im in ds["image"][:5])
    assert summarize(dsd).ok
