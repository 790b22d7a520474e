"""Overlay removal (``fusynth data clean``) and the cohort audit's ``--overlays``."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageDraw

from fusynth.cli.audit import add_audit_cohort_parser
from fusynth.cli.main import main
from fusynth.core.errors import UserInputError
from fusynth.data.clean import (
    MASK_MARK,
    MASK_OUTSIDE,
    CleanOptions,
    clean_image,
    overlay_share,
)
from fusynth.data.schema import VIEWS
from tests.conftest import SHARED_DATA, requires_shared_data, write_prepared

H, W = 128, 160
#: Where the synthetic frame's marks are drawn (rows, cols).
CALIPER = (slice(70, 71), slice(60, 71)), (slice(65, 76), slice(65, 66))
BONE = (slice(96, 104), slice(50, 110))
COLOUR = (slice(50, 53), slice(100, 103))


def fan(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A scan sector of log-compressed speckle on black, and its mask.

    Speckle is the amplitude of blurred complex Gaussian noise (Rayleigh), shown over a
    40 dB range as a scanner does, so its bright spots look like a real frame's.
    """
    rng = np.random.default_rng(seed)
    sector = Image.new("L", (W, H), 0)
    ImageDraw.Draw(sector).pieslice((-40, -110, W + 40, H + 6), 55, 125, fill=1)
    inside = np.asarray(sector).astype(bool)
    re, im = (
        cv2.GaussianBlur(rng.normal(0, 1, (H, W)).astype(np.float32), (0, 0), 1.0) for _ in range(2)
    )
    amplitude = np.hypot(re, im)
    db = 20 * np.log10(amplitude / amplitude.mean() + 1e-6)
    tissue = np.clip((db + 30) / 40 * 160, 1, 255).astype(np.uint8)
    image = np.where(inside, tissue, 0).astype(np.uint8)
    # A bright, thick, smooth echo (bone): not a mark.
    ramp = np.hanning(BONE[0].stop - BONE[0].start)[:, None] * 160 + 60
    image[BONE] = np.maximum(image[BONE], ramp.astype(np.uint8))
    return image, inside


def annotated(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """:func:`fan` with a caliper cross inside, text outside and a yellow mark (RGB)."""
    image, inside = fan(seed)
    for sl in CALIPER:
        image[sl] = 235
    im = Image.fromarray(image).convert("RGB")
    ImageDraw.Draw(im).text((2, 2), "GA 21w3d", fill=(255, 255, 255))
    rgb = np.asarray(im).copy()
    rgb[COLOUR] = (230, 210, 20)
    return rgb, inside


def test_clean_image_removes_calipers_text_and_colour_marks():
    rgb, inside = annotated()
    gray = np.asarray(Image.fromarray(rgb).convert("L"))
    result = clean_image(rgb)
    for sl in CALIPER:
        assert (result.mask[sl] == MASK_MARK).all()
    assert (result.mask[COLOUR] == MASK_MARK).all()
    assert (result.mask[0:10, 0:40][gray[0:10, 0:40] > 200] == MASK_OUTSIDE).all()  # text
    assert (result.mask[BONE] == MASK_MARK).mean() < 0.02  # thick echo kept
    assert result.marks_found and result.mark_pixels >= 20
    x0, y0, x1, y1 = result.crop
    ys, xs = np.nonzero(inside)
    assert abs(x0 - xs.min()) <= 6 and abs(x1 - xs.max() - 1) <= 6 and y1 >= ys.max()
    after = np.zeros_like(gray)
    after[y0:y1, x0:x1] = result.image
    for sl in (*CALIPER, COLOUR):
        assert after[sl].max() < 170  # inpainted from the speckle around it
    assert after[~inside & (result.mask == MASK_OUTSIDE)].max() == 0  # banner text gone
    keep = inside & (result.mask == 0)
    np.testing.assert_array_equal(after[keep], gray[keep])  # the rest is untouched
    assert result.changed_pixels <= (result.mask > 0).sum()


def test_a_clean_frame_has_no_marks_and_ns_method_also_inpaints():
    image, _ = fan(1)
    result = clean_image(image)
    assert not result.marks_found and result.mark_pixels < 12
    rgb, _ = annotated(2)
    ns = clean_image(rgb, CleanOptions(method="ns"))
    telea = clean_image(rgb, CleanOptions(method="telea"))
    assert not np.array_equal(ns.image, telea.image)
    x0, y0 = ns.crop[:2]
    assert ns.image[70 - y0, 60 - x0 : 71 - x0].max() < 170


def test_user_mask_and_no_sector(tmp_path):
    image, inside = fan(3)
    user = np.zeros((H // 2, W // 2), np.uint8)  # resized to each image
    user[30:34, 30:40] = 255
    Image.fromarray(user).save(tmp_path / "m.png")
    result = clean_image(image, CleanOptions(user_mask=str(tmp_path / "m.png"), sector=False))
    assert (result.mask[60:68, 60:80] == MASK_MARK).all()
    assert result.crop == (0, 0, W, H) and result.image.shape == (H, W)
    assert not (result.mask == MASK_OUTSIDE).any()
    with pytest.raises(UserInputError, match="--user_mask"):
        CleanOptions(user_mask=str(tmp_path / "missing.png"))
    with pytest.raises(UserInputError, match="--method"):
        CleanOptions(method="fast")


def _write_sources(src: Path) -> None:
    (src / "sub").mkdir(parents=True)
    Image.fromarray(annotated(0)[0]).save(src / "a.png")
    Image.fromarray(np.asarray(Image.fromarray(annotated(1)[0]).convert("L"))).save(
        src / "sub" / "b.png"
    )
    Image.fromarray(fan(2)[0]).save(src / "c.png")


def test_data_clean_writes_images_masks_montage_and_summary(tmp_path, capsys):
    src, out = tmp_path / "src", tmp_path / "out"
    _write_sources(src)
    assert main(["data", "clean", str(src), str(out), "--n-montage", "2"]) == 0
    assert "marks found in 2" in capsys.readouterr().out
    for rel in ("a.png", "sub/b.png", "c.png"):
        with Image.open(out / "masks" / rel) as m, Image.open(src / rel) as s:
            assert m.size == s.size and m.mode == "L"
        with Image.open(out / "images" / rel) as im:
            assert im.mode == "L" and im.size[0] <= W
    with Image.open(out / "montage.png") as im:
        im.load()
        assert im.size[0] > 3 * 192 and im.size[1] > 2 * 192  # two rows, three columns
    from fusynth.core.style import png_text

    text = png_text(out / "montage.png")
    assert text["Title"] == "Overlay removal: the 2 image(s) with the most marked pixels"
    assert "inpainted (calipers, text)" in text["Description"]
    assert "a.png before" in text["Description"]  # each row names its file
    summary = json.loads((out / "clean_summary.json").read_text())
    assert summary["n_images"] == 3 and summary["images_with_marks"] == 2
    flags = {r["file"]: r["marks_found"] for r in summary["images"]}
    assert flags == {"a.png": True, "sub/b.png": True, "c.png": False}


def test_data_clean_bad_input_writes_nothing(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    src = tmp_path / "src"
    _write_sources(src)
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    cases = [
        (tmp_path / "empty", tmp_path / "o1", "no images"),
        (tmp_path / "missing", tmp_path / "o2", "source folder not found"),
        (src, tmp_path / "o3", "broken.png: cannot read image"),
        (src, src / "inside", "must not be inside SRC"),
    ]
    for s, o, expect in cases:
        before = sorted(tmp_path.rglob("*"))
        assert main(["data", "clean", str(s), str(o)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and expect in err, err
        assert sorted(tmp_path.rglob("*")) == before


def test_overlay_share_counts_marked_images():
    images = [annotated(0)[0], fan(1)[0], annotated(2)[0], fan(3)[0]]
    out = overlay_share(images, ["head", "head", "brain", "brain"], ["a", "b", "c", "d"])
    assert (out["n"], out["with_marks"], out["share"]) == (4, 2, 0.5)
    assert out["by_view"]["head"]["with_marks"] == 1 and out["flagged"] == ["a", "c"]


def test_audit_cohort_overlays_flag(tmp_path, capsys):
    def row(image: np.ndarray, i: int, synthetic: bool) -> dict:
        gray = np.asarray(Image.fromarray(image).convert("L"))
        return {
            "image": gray,
            "view": VIEWS.index("head"),
            "subject_id": f"s{i}",
            "synthetic": synthetic,
        }

    cohort = write_prepared(
        tmp_path / "cohort",
        [row(annotated(i)[0] if i < 3 else fan(i)[0], i, True) for i in range(4)],
    )
    reference = write_prepared(tmp_path / "ref", [row(fan(10 + i)[0], i, False) for i in range(4)])
    parser = argparse.ArgumentParser(prog="fusynth audit")
    add_audit_cohort_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(
        ["cohort", str(cohort), "--reference", str(reference), "--overlays", "--kid_subsets", "2"]
    )
    assert args.func(args) == 0
    assert "calipers or text found in 3 of 4 synthetic samples" in capsys.readouterr().out
    report = json.loads((cohort / "audit" / "cohort_audit.json").read_text())
    assert report["overlays"]["with_marks"] == 3 and report["overlays"]["share"] == 0.75


# ----------------------------------------------------------------------------- real samples

#: Files of the shared samples with calipers or labels inside the sector.
REAL_MARKED = {
    "fetal_planes_db": ["Patient00036_Plane1_13_of_39.png"],
    "african_planes": ["patient053_GHA_plane1.png", "patient098_UGA_plane0.png"],
}


@requires_shared_data
def test_data_clean_on_real_samples(tmp_path):
    for dataset, marked in REAL_MARKED.items():
        images = SHARED_DATA / dataset / "Images"
        others = [p.name for p in sorted(images.glob("*.png"))[:3]]
        src = tmp_path / dataset
        src.mkdir()
        for name in {*marked, *others}:
            shutil.copy(images / name, src / name)
        out = tmp_path / f"{dataset}-clean"
        assert main(["data", "clean", str(src), str(out)]) == 0
        summary = json.loads((out / "clean_summary.json").read_text())
        found = {r["file"]: r for r in summary["images"]}
        assert set(found) == {*marked, *others}
        assert all(found[name]["marks_found"] for name in marked)
        for name in found:
            with Image.open(out / "masks" / name) as m, Image.open(src / name) as s:
                assert m.size == s.size
                assert (np.asarray(m) == MASK_MARK).any() == (found[name]["mark_pixels"] > 0)
        with Image.open(out / "montage.png") as im:
            im.load()
            assert im.size[1] > len(found) * 192
