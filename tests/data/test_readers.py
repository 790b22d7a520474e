"""Readers on small fixtures in each publisher's layout, through the library and the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from fusynth.cli.main import main
from fusynth.data.images import decode_image
from fusynth.data.prepare import prepare
from fusynth.data.readers import ReaderOptions
from fusynth.data.schema import VIEWS, load_prepared
from fusynth.data.splits import subjects_in_several_splits
from tests.conftest import hc18_ellipse, save_png


def _all_rows(dsd):
    return [dict(row, _split=split) for split, ds in dsd.items() for row in ds]


def _no_leaks(dsd):
    rows = _all_rows(dsd)
    return not subjects_in_several_splits(
        [r["subject_id"] for r in rows], [r["_split"] for r in rows]
    )


def test_hc18_reader(hc18_dir, tmp_path):
    prepare("hc18", hc18_dir, tmp_path / "out", seed=0)
    dsd = load_prepared(tmp_path / "out")
    rows = _all_rows(dsd)
    labelled = [r for r in rows if r["_split"] != "unlabeled"]
    assert len(labelled) == 5 and len(dsd["unlabeled"]) == 2
    assert all(r["mask"] is None for r in dsd["unlabeled"])
    # 001_HC and 001_2HC are one exam: one subject, one split.
    by_source = {json.loads(r["provenance"])["source"]: r for r in labelled}
    a, b = by_source["training_set/001_HC.png"], by_source["training_set/001_2HC.png"]
    assert a["subject_id"] == b["subject_id"] == "hc18:001" and a["_split"] == b["_split"]
    assert {r["subject_id"] for r in dsd["unlabeled"]} == {"hc18:test-000", "hc18:test-001"}
    assert _no_leaks(dsd)
    for i, stem in enumerate(["000_HC", "001_HC", "001_2HC", "002_HC", "003_HC"]):
        row = by_source[f"training_set/{stem}.png"]
        mask = decode_image(row["mask"])
        assert set(np.unique(mask)) == {0, 1}
        ell = hc18_ellipse(i)
        # Filled, not an outline: the area is the ellipse's, not its perimeter's.
        assert mask.sum() == pytest.approx(ell.area, rel=0.05)
        assert row["pixel_spacing_mm"] == pytest.approx(0.1 + 0.01 * i, rel=1e-6)
        assert row["head_circumference_mm"] == pytest.approx(
            ell.perimeter * (0.1 + 0.01 * i), rel=1e-3
        )
        assert VIEWS[row["view"]] == "head" and row["cohort"] == "hc18" and not row["synthetic"]


def test_fetal_planes_db_reader_keeps_publisher_split(fetal_planes_dir, tmp_path):
    prepare("fetal_planes_db", fetal_planes_dir, tmp_path / "out", seed=1, val_fraction=0.2)
    dsd = load_prepared(tmp_path / "out")
    rows = _all_rows(dsd)
    assert len(rows) == 16
    test_subjects = {r["subject_id"] for r in rows if r["_split"] == "test"}
    assert test_subjects == {"fetal_planes_db:00007", "fetal_planes_db:00008"}
    assert {VIEWS[r["view"]] for r in rows} == {
        "brain",
        "abdomen",
        "femur",
        "thorax",
        "cervix",
        "other",
    }
    assert len(dsd["validation"]) > 0
    assert _no_leaks(dsd)
    sizes = {decode_image(r["image"]).shape for r in rows}
    assert (41, 50) in sizes and (48, 50) in sizes  # native resolution kept


def test_african_reader_grayscale_and_subjects_per_country(african_dir, tmp_path):
    prepare("african", african_dir, tmp_path / "out")
    dsd = load_prepared(tmp_path / "out")
    rows = _all_rows(dsd)
    assert len(rows) == 36
    assert (
        len({r["subject_id"] for r in rows}) == 9
    )  # patient 1 of Algeria is not patient 1 of Ghana
    assert {r["center"] for r in rows} == {"Algeria", "Ghana", "Malawi"}
    for r in rows:
        assert r["image"].mode == "L"
    ghana = [r for r in rows if r["center"] == "Ghana"]
    assert {r["image"].size for r in ghana} == {(40, 30)}
    assert _no_leaks(dsd)


def test_pairs_reader_with_subject_regex(pairs_dir, tmp_path):
    opts = ReaderOptions(mask_suffix="_mask", subject_regex=r"Patient(\d+)", center="Lab")
    prepare(
        "pairs", pairs_dir, tmp_path / "out", options=opts, test_fraction=0.25, val_fraction=0.25
    )
    dsd = load_prepared(tmp_path / "out")
    rows = _all_rows(dsd)
    assert len(rows) == 8 and {r["subject_id"] for r in rows} == {"000", "001", "002", "003"}
    assert all(decode_image(r["mask"]).max() == 1 for r in rows)
    assert _no_leaks(dsd) and len(dsd) == 3


def test_pairs_reader_outline_masks(hc18_dir, tmp_path):
    opts = ReaderOptions(
        images_subdir="training_set",
        masks_subdir="training_set",
        mask_suffix="_Annotation",
        mask_kind="outline",
    )
    prepare("pairs", hc18_dir, tmp_path / "out", options=opts)
    rows = _all_rows(load_prepared(tmp_path / "out"))
    assert len(rows) == 5
    mask = decode_image(rows[0]["mask"])
    ys, xs = np.nonzero(mask)
    assert mask.sum() > 300  # filled


def test_imagefolder_reader(imagefolder_dir, tmp_path):
    prepare("imagefolder", imagefolder_dir, tmp_path / "out", options=ReaderOptions(cohort="mine"))
    rows = _all_rows(load_prepared(tmp_path / "out"))
    assert sorted({VIEWS[r["view"]] for r in rows}) == ["brain", "femur", "thorax"]
    assert {r["cohort"] for r in rows} == {"mine"}


def test_same_seed_same_split(african_dir, tmp_path):
    for name in ("a", "b"):
        prepare("african", african_dir, tmp_path / name, seed=7)
    split_of = [
        {r["subject_id"]: r["_split"] for r in _all_rows(load_prepared(tmp_path / n))} for n in "ab"
    ]
    assert split_of[0] == split_of[1]


# ----------------------------------------------------------------------------- bad input


def _fails(capsys, argv, *needles):
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1, err  # one line, no traceback
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, err
    return err


def _left_behind(out: Path) -> list[str]:
    return [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]


def test_missing_src(capsys, tmp_path):
    _fails(
        capsys,
        ["data", "prepare", "--format", "hc18", str(tmp_path / "nope"), str(tmp_path / "o")],
        "nope",
        "not found",
    )
    assert not (tmp_path / "o").exists()


def test_truncated_image(capsys, hc18_dir, tmp_path):
    img = hc18_dir / "training_set" / "002_HC.png"
    img.write_bytes(img.read_bytes()[:200])
    out = tmp_path / "o"
    _fails(capsys, ["data", "prepare", "--format", "hc18", str(hc18_dir), str(out)], "002_HC.png")
    assert not out.exists() and not _left_behind(out)


def test_mask_size_differs(capsys, hc18_dir, tmp_path):
    save_png(hc18_dir / "training_set" / "003_HC_Annotation.png", np.full((61, 80), 255, np.uint8))
    _fails(
        capsys,
        ["data", "prepare", "--format", "hc18", str(hc18_dir), str(tmp_path / "o")],
        "003_HC_Annotation.png",
        "80x61",
        "80x60",
    )
    assert not (tmp_path / "o").exists()


def test_unclosed_outline(capsys, hc18_dir, tmp_path):
    ann = hc18_dir / "training_set" / "000_HC_Annotation.png"
    from PIL import Image

    arr = np.array(Image.open(ann))
    arr[:, 40:] = 0  # half an ellipse: an open curve
    save_png(ann, arr)
    _fails(
        capsys,
        ["data", "prepare", "--format", "hc18", str(hc18_dir), str(tmp_path / "o")],
        "000_HC_Annotation.png",
        "does not close",
    )
    assert not (tmp_path / "o").exists()


def test_empty_mask(capsys, pairs_dir, tmp_path):
    save_png(pairs_dir / "masks" / "Patient001_img0_mask.png", np.zeros((48, 48), np.uint8))
    _fails(
        capsys,
        [
            "data",
            "prepare",
            "--format",
            "pairs",
            "--mask-suffix",
            "_mask",
            str(pairs_dir),
            str(tmp_path / "o"),
        ],
        "Patient001_img0_mask.png",
        "empty",
    )


def test_csv_missing_column_lists_found_columns(capsys, african_dir, tmp_path):
    csv = african_dir / "African_train.csv"
    lines = csv.read_text().splitlines()
    csv.write_text("\n".join(",".join(x.split(",")[:3] + x.split(",")[4:]) for x in lines))
    _fails(
        capsys,
        ["data", "prepare", "--format", "african", str(african_dir), str(tmp_path / "o")],
        "African_train.csv",
        "'Center'",
        "found: Patient_num, Plane, Train, Image_name",
    )


def test_unknown_plane_names_row(capsys, fetal_planes_dir, tmp_path):
    csv = fetal_planes_dir / "FETAL_PLANES_DB_data.csv"
    lines = csv.read_text().splitlines()
    lines[3] = lines[3].replace(lines[3].split(";")[2], "Fetal brian")
    csv.write_text("\n".join(lines))
    _fails(
        capsys,
        [
            "data",
            "prepare",
            "--format",
            "fetal_planes_db",
            str(fetal_planes_dir),
            str(tmp_path / "o"),
        ],
        "line 4",
        "'Fetal brian'",
        "did you mean 'Fetal Brain'",
    )


@pytest.mark.parametrize("name", ["../outside", "/etc/passwd", "sub/../../x"])
def test_csv_path_outside_src(capsys, african_dir, tmp_path, name):
    csv = african_dir / "African_train.csv"
    lines = csv.read_text().splitlines()
    lines[1] = lines[1].rsplit(",", 1)[0] + "," + name
    csv.write_text("\n".join(lines))
    _fails(
        capsys,
        ["data", "prepare", "--format", "african", str(african_dir), str(tmp_path / "o")],
        "line 2",
        "points outside",
    )


def test_empty_dataset(capsys, tmp_path):
    (tmp_path / "empty" / "images").mkdir(parents=True)
    (tmp_path / "empty" / "masks").mkdir()
    _fails(
        capsys,
        ["data", "prepare", "--format", "pairs", str(tmp_path / "empty"), str(tmp_path / "o")],
        "empty dataset",
    )


def test_existing_out_needs_overwrite_and_a_foreign_folder_is_never_replaced(
    capsys, pairs_dir, tmp_path
):
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    argv = [
        "data",
        "prepare",
        "--format",
        "pairs",
        "--mask-suffix",
        "_mask",
        str(pairs_dir),
        str(out),
    ]
    # A user's own folder: refused with and without --overwrite, left as it was.
    _fails(capsys, argv, "was not written by fusynth", "--out")
    _fails(capsys, [*argv, "--overwrite"], "was not written by fusynth", "--out")
    assert (out / "keep.txt").read_text() == "mine" and len(list(out.iterdir())) == 1
    # A folder fusynth wrote: refused without --overwrite, replaced with it.
    mine = tmp_path / "prepared"
    argv[-1] = str(mine)
    assert main(argv) == 0
    assert json.loads((mine / ".fusynth.json").read_text())["kind"] == "prepared-dataset"
    _fails(capsys, argv, "already exists", "--overwrite")
    assert main([*argv, "--overwrite"]) == 0
    assert (mine / "dataset_dict.json").exists()
    assert not _left_behind(mine)


def test_overwrite_keeps_old_output_when_new_one_fails(capsys, pairs_dir, tmp_path):
    out = tmp_path / "o"
    argv = [
        "data",
        "prepare",
        "--format",
        "pairs",
        "--mask-suffix",
        "_mask",
        str(pairs_dir),
        str(out),
    ]
    assert main(argv) == 0
    shutil.rmtree(pairs_dir / "masks")
    (pairs_dir / "masks").mkdir()
    _fails(capsys, [*argv, "--overwrite"], "no mask")
    assert (out / "dataset_dict.json").exists()  # the complete old dataset is untouched


def test_debug_shows_traceback(capsys, tmp_path):
    from fusynth.core.errors import UserInputError

    with pytest.raises(UserInputError):
        main(
            [
                "--debug",
                "data",
                "prepare",
                "--format",
                "hc18",
                str(tmp_path / "nope"),
                str(tmp_path / "o"),
            ]
        )
