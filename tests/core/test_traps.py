"""Small-data traps warn loudly: a WARNING line, and a note in what the command writes."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from fusynth.cli.main import main
from fusynth.data.schema import VIEWS
from tests.conftest import write_prepared


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


# ----------------------------------------------------------------------------- prepare, inspect


def test_imagefolder_without_subject_regex_warns_at_prepare_and_inspect(
    imagefolder_dir, tmp_path, caplog, capsys
):
    out = tmp_path / "prepared"
    with caplog.at_level(logging.WARNING):
        assert (
            main(["data", "prepare", "--format", "imagefolder", str(imagefolder_dir), str(out)])
            == 0
        )
    assert any(
        "without --subject_regex: each of the 12 files is its own subject" in w
        for w in _warnings(caplog)
    )
    assert "note: WARNING: --format imagefolder without --subject_regex" in capsys.readouterr().out

    caplog.clear()
    summary_json = tmp_path / "summary.json"
    with caplog.at_level(logging.WARNING):
        assert main(["data", "inspect", str(out), "--json", str(summary_json)]) == 0
    printed = capsys.readouterr().out
    assert "WARNING: each of the 12 real images is its own subject" in printed
    assert any("--subject_regex" in w for w in _warnings(caplog))
    assert any("own subject" in w for w in json.loads(summary_json.read_text())["warnings"])


def test_imagefolder_with_subject_regex_does_not_warn(imagefolder_dir, tmp_path, caplog, capsys):
    out = tmp_path / "prepared"
    argv = ["data", "prepare", "--format", "imagefolder", str(imagefolder_dir), str(out)]
    with caplog.at_level(logging.WARNING):
        # s0_br, s0_Fe, ...: the number is the patient, seen in every view
        assert main([*argv, "--subject_regex", r"^s(\d+)_"]) == 0
        assert main(["data", "inspect", str(out)]) == 0
    assert not [w for w in _warnings(caplog) if "subject" in w]
    assert "WARNING" not in capsys.readouterr().out


# ----------------------------------------------------------------------------- classifier


def _views_dataset(path, val_views: dict[str, int]):
    rows = []
    for v in ("brain", "femur"):
        rows += [{"view": VIEWS.index(v), "subject_id": f"t-{v}-{i}"} for i in range(6)]
    for v, n in val_views.items():
        rows += [
            {"view": VIEWS.index(v), "subject_id": f"v-{v}-{i}", "split": "validation"}
            for i in range(n)
        ]
    return write_prepared(path, rows, size=(16, 16))


@pytest.mark.parametrize(
    ("val_views", "expected"),
    [
        ({"brain": 12}, ["no image of view(s) femur"]),
        ({"brain": 2, "femur": 2}, ["only 4 image(s) (fewer than 10)", "best validation macro_f1"]),
        ({"brain": 5, "femur": 5}, []),
    ],
)
def test_classifier_validation_traps(tmp_path, caplog, val_views, expected):
    from fusynth.classify.config import ClassifierTrainConfig
    from fusynth.classify.data import choose_training_data

    data = _views_dataset(tmp_path / "d", val_views)
    config = ClassifierTrainConfig(train=str(data), output_dir=str(tmp_path / "m"))
    with caplog.at_level(logging.WARNING):
        chosen = choose_training_data(config, images=False)
    recorded = chosen.source["warnings"]  # goes into the model's config.json
    assert len(recorded) == (1 if expected else 0)
    for text in expected:
        assert any(text in w for w in recorded)
        assert any(text in w for w in _warnings(caplog))


# ----------------------------------------------------------------------------- SAM


def _head_dataset(path, n_val: int):
    from fusynth.data.geometry import Ellipse, ellipse_mask

    mask = ellipse_mask((32, 32), Ellipse(16, 16, 9, 7, 0.3)).astype(np.uint8)
    rows = [{"subject_id": f"t{i}", "mask": mask} for i in range(4)]
    rows += [{"subject_id": f"v{i}", "mask": mask, "split": "validation"} for i in range(n_val)]
    return write_prepared(path, rows, size=(32, 32))


@pytest.mark.parametrize(("n_val", "warned"), [(3, True), (10, False)])
def test_sam_small_validation_warns(tmp_path, caplog, n_val, warned):
    from fusynth.segment.finetune import SamFinetuneConfig, choose_training_data

    data = _head_dataset(tmp_path / "d", n_val)
    config = SamFinetuneConfig(train=str(data), output_dir=str(tmp_path / "m"))
    with caplog.at_level(logging.WARNING):
        chosen = choose_training_data(config, 64)
    recorded = chosen.source["warnings"]
    assert bool(recorded) == warned
    if warned:
        assert "only 3 image(s)" in recorded[0] and "Dice" in recorded[0]
        assert recorded[0] in _warnings(caplog)


# ----------------------------------------------------------------------------- audit


def test_reference_is_training_split_is_named():
    from fusynth.audit.cohort import reference_is_training

    assert "is a training split" in reference_is_training("data/prepared:train")
    assert reference_is_training("data/prepared:test") is None
    assert reference_is_training("data/prepared:validation") is None


def test_audit_against_the_training_split_warns_and_notes_it(phantom_prepared, tmp_path, caplog):
    from fusynth.audit.cohort import audit_cohort

    cohort = f"{phantom_prepared}:test"
    with caplog.at_level(logging.WARNING):
        summary = audit_cohort(
            cohort, f"{phantom_prepared}:train", out=tmp_path / "a", kid_subsets=2
        )
    assert any("is a training split" in n and n.startswith("WARNING") for n in summary["notes"])
    assert any("held-out" in w for w in _warnings(caplog))
    on_disk = json.loads((tmp_path / "a" / "cohort_audit.json").read_text())
    assert on_disk["notes"] == summary["notes"]

    caplog.clear()
    with caplog.at_level(logging.WARNING):
        summary = audit_cohort(
            cohort,
            f"{phantom_prepared}:validation",
            training=f"{phantom_prepared}:train",
            out=tmp_path / "b",
            kid_subsets=2,
        )
    assert not any("training split" in n for n in summary["notes"])
    assert not any("held-out" in w for w in _warnings(caplog))
