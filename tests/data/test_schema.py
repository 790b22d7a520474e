from __future__ import annotations

import datasets
import pytest

from fusynth.cli.main import main
from fusynth.core.errors import UserInputError
from fusynth.data.prepare import prepare
from fusynth.data.readers import ReaderOptions
from fusynth.data.schema import FEATURES, canonical_view, load_prepared, load_split, parse_data_spec


@pytest.fixture
def prepared(pairs_dir, tmp_path):
    out = tmp_path / "prepared"
    prepare("pairs", pairs_dir, out, options=ReaderOptions(mask_suffix="_mask"), test_fraction=0.25)
    return out


def test_prepared_dataset_loads_with_stock_datasets(prepared):
    dsd = datasets.load_from_disk(str(prepared))
    assert isinstance(dsd, datasets.DatasetDict)
    for ds in dsd.values():
        assert ds.features == FEATURES


def test_wrong_column_type_is_named(prepared, tmp_path):
    dsd = load_prepared(prepared)
    bad = datasets.DatasetDict(
        {k: v.cast_column("view", datasets.Value("int64")) for k, v in dsd.items()}
    )
    bad.save_to_disk(str(tmp_path / "bad"))
    with pytest.raises(
        UserInputError,
        match=r"column 'view' is Value\('int64'\), the fusynth schema needs ClassLabel",
    ):
        load_prepared(tmp_path / "bad")


def test_missing_and_extra_columns_are_named(prepared, tmp_path):
    dsd = load_prepared(prepared)
    dsd.remove_columns("center").save_to_disk(str(tmp_path / "missing"))
    with pytest.raises(UserInputError, match="missing column 'center'"):
        load_prepared(tmp_path / "missing")
    extra = datasets.DatasetDict({k: v.add_column("x", [0] * len(v)) for k, v in dsd.items()})
    extra.save_to_disk(str(tmp_path / "extra"))
    with pytest.raises(UserInputError, match="column 'x' is not in the fusynth schema"):
        load_prepared(tmp_path / "extra")


def test_not_a_dataset(tmp_path):
    with pytest.raises(UserInputError, match="no such folder"):
        load_prepared(tmp_path / "nope")
    (tmp_path / "plain").mkdir()
    with pytest.raises(UserInputError, match="not a prepared dataset"):
        load_prepared(tmp_path / "plain")


def test_data_spec_and_split_loading(prepared):
    assert parse_data_spec("a/b:test") == (prepared.__class__("a/b"), "test")
    assert parse_data_spec("c:/x/y")[1] is None  # a colon that is not a split stays in the path
    assert len(load_split(f"{prepared}:test")) == 2
    assert len(load_split(str(prepared))) == 8
    with pytest.raises(UserInputError, match="has no split 'unlabeled'"):
        load_split(f"{prepared}:unlabeled")


def test_canonical_view_names():
    assert canonical_view("Fetal brain") == "brain"
    assert canonical_view("Maternal cervix") == "cervix"
    assert canonical_view("  OTHER ") == "other"
    assert canonical_view("fetal_femur") == "femur"
    with pytest.raises(UserInputError, match="unknown plane name 'Fetal heart'"):
        canonical_view("Fetal heart")


def test_inspect_fails_on_subject_leak(prepared, tmp_path, capsys):
    dsd = load_prepared(prepared)
    leaked_subject = dsd["test"][0]["subject_id"]
    train = dsd["train"].map(
        lambda r, i: {"subject_id": leaked_subject if i == 0 else r["subject_id"]},
        with_indices=True,
    )
    datasets.DatasetDict({"train": train, "test": dsd["test"]}).save_to_disk(str(tmp_path / "leak"))
    assert main(["data", "inspect", str(tmp_path / "leak")]) == 1
    captured = capsys.readouterr()
    assert f"{leaked_subject} in test, train" in captured.out
    assert "more than one split" in captured.err


def test_inspect_reports_counts_and_writes_montage(prepared, capsys, tmp_path):
    from PIL import Image

    from fusynth.core.style import png_text

    assert main(["data", "inspect", str(prepared), "--montage", str(tmp_path / "m.png")]) == 0
    out = capsys.readouterr().out
    assert "8 samples" in out and "views [train]: head=" in out
    assert "8/8 samples have one" in out
    with Image.open(tmp_path / "m.png") as im:
        # Four tiles of at least 180 px a row: readable, not 128-px stamps.
        assert im.width >= 4 * 180 and im.height >= 180
        px = __import__("numpy").asarray(im.convert("RGB"))
    # It says what it shows: title, a caption per tile, and what the colours mean.
    text = png_text(tmp_path / "m.png")
    assert "samples per view" in text["Title"]
    assert "mask outline" in text["Description"] and "head · train" in text["Description"]
    # Mask overlays are drawn: some pixels are strongly red.
    assert ((px[..., 0] > 150) & (px[..., 1] < 100)).any()
