"""Classifier training: data choice, validation rules, weights, augmentation, outputs,
exact resume, and bad flags."""

from __future__ import annotations

import importlib
import json
import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from safetensors.torch import load_file

from fusynth.classify.backbones import build_classifier, predict_proba
from fusynth.classify.config import ClassifierTrainConfig
from fusynth.classify.data import augment_batch, choose_per_view, choose_training_data
from fusynth.classify.train import Progress, load_classifier, train_classifier
from fusynth.core.errors import UserInputError
from fusynth.data.schema import VIEWS
from fusynth.data.views import ViewSet, load_view_set
from tests.conftest import write_prepared

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def make_dataset(path: Path, rows: list[tuple[str, str, str, bool, str]]) -> Path:
    """A prepared dataset of ``(split, subject, view, synthetic, center)`` noise images."""
    return write_prepared(
        path,
        [
            {
                "split": split,
                "subject_id": subject,
                "view": VIEWS.index(view),
                "synthetic": synthetic,
                "cohort": "synthetic" if synthetic else "test",
                "center": center,
            }
            for split, subject, view, synthetic, center in rows
        ],
        size=(40, 50),
    )


def _config(phantom, out, **kw) -> ClassifierTrainConfig:
    base = dict(
        train=f"{phantom}:train",
        output_dir=str(out),
        resolution=32,
        train_batch_size=10,  # 20 training images: two steps per epoch
        max_train_steps=2,
        checkpointing_steps=2,
    )
    return ClassifierTrainConfig(**{**base, **kw})


def _recipe(*argv: str) -> int:
    sys.path.insert(0, str(RECIPES))
    return importlib.import_module("train_classifier").main(list(argv))


# ----------------------------------------------------------------------------- training


def test_resnet_trains_and_writes_a_loadable_classifier(phantom_prepared, tmp_path):
    result = train_classifier(_config(phantom_prepared, tmp_path / "run"))
    out = result.output_dir
    assert result.global_step == 2 and len(result.losses) == 2
    assert {
        "model.safetensors",
        "classifier_config.json",
        "config.json",
        "train_log.json",
        "README.md",
    } <= {p.name for p in out.iterdir()}
    spec = json.loads((out / "classifier_config.json").read_text())
    assert spec["classes"] == ["abdomen", "femur", "thorax", "head"]  # canonical view order
    assert spec["backbone"] == "resnet18" and spec["resolution"] == 32
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["num_real"] == 20 and cfg["num_validation"] == 6 and cfg["random_init"] is True
    assert cfg["validation"].endswith(":validation") and cfg["learning_rate"] == 1e-3
    log = json.loads((out / "train_log.json").read_text())
    assert log["best"]["metric"] == "macro_f1" and log["best"]["step"] == 2
    card = (out / "README.md").read_text()
    assert "Initial weights: random" in card and "Not for clinical use" in card
    assert "Smoke model" not in card and "library_name: pytorch" in card
    clf = load_classifier(out)
    images = load_view_set(f"{phantom_prepared}:test", "t").images
    probs = clf.predict_proba(images)
    assert probs.shape == (len(images), 4) and np.allclose(probs.sum(axis=1), 1)
    assert np.allclose(probs, predict_proba(clf.model, clf.spec, images, batch_size=2))


def test_resume_gives_the_same_model_and_log(phantom_prepared, tmp_path):
    straight = train_classifier(_config(phantom_prepared, tmp_path / "s", max_train_steps=4))
    train_classifier(_config(phantom_prepared, tmp_path / "r", max_train_steps=2))
    resumed = train_classifier(
        _config(
            phantom_prepared, tmp_path / "r", max_train_steps=4, resume_from_checkpoint="latest"
        )
    )
    assert resumed.losses == straight.losses
    assert resumed.validation == straight.validation
    log = (resumed.output_dir / "train_log.json").read_text()
    assert log == (straight.output_dir / "train_log.json").read_text()
    a = load_file(str(straight.output_dir / "model.safetensors"))
    b = load_file(str(resumed.output_dir / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(UserInputError, match="--seed"):
        train_classifier(
            _config(phantom_prepared, tmp_path / "r", seed=1, resume_from_checkpoint="latest")
        )


def test_tiny_clip_backbone_trains(phantom_prepared, tmp_path):
    config = _config(
        phantom_prepared, tmp_path / "clip", backbone="clip:fusynth-tiny-clip", resolution=None
    )
    assert config.resolution == 64  # the open_clip model's own input size
    out = train_classifier(config).output_dir
    clf = load_classifier(out)
    assert clf.spec.mean == pytest.approx([0.48145466, 0.4578275, 0.40821073])
    probs = clf.predict_proba(load_view_set(f"{phantom_prepared}:test", "t").images)
    assert probs.shape == (6, 4)


# ----------------------------------------------------------------------------- data


def test_choice_per_view_takes_whole_subjects_and_is_nested():
    vs = ViewSet("x")
    for i in range(24):
        vs.images.append(np.zeros((4, 4), np.uint8))
        vs.views.append(["head", "femur"][i % 2])
        vs.subjects.append(f"p{i // 4}")  # two images of each view per subject
        vs.centers.append("")
        vs.synthetic.append(False)
        vs.keys.append(str(i))
    four = choose_per_view(vs, ["femur", "head"], 4, 0, 17, "--n")
    two = choose_per_view(vs, ["femur", "head"], 2, 0, 17, "--n")
    assert [vs.views[i] for i in four] == ["femur"] * 4 + ["head"] * 4
    assert set(two) <= set(four)
    assert len({vs.subjects[i] for i in four[:4]}) == 2  # whole subjects
    assert choose_per_view(vs, ["femur"], 4, 1, 17, "--n") != four[:4]
    with pytest.raises(
        UserInputError, match="--n: asks for 13 images of view 'femur' but x has 12"
    ):
        choose_per_view(vs, ["femur"], 13, 0, 17, "--n")


def test_synthetic_images_are_added_per_view(phantom_prepared, tmp_path, caplog):
    rows = [("train", f"syn{i}", v, True, "") for i, v in enumerate(["head", "femur", "brain"] * 3)]
    cohort = make_dataset(tmp_path / "cohort", rows)
    config = _config(
        phantom_prepared,
        tmp_path / "o",
        synthetic=str(cohort),
        n_real_per_view=2,
        n_synthetic_per_view=2,
    )
    with caplog.at_level(logging.WARNING):
        data = choose_training_data(config)
    assert data.source["real_per_view"] == {"abdomen": 2, "femur": 2, "thorax": 2, "head": 2}
    assert data.source["synthetic_per_view"] == {"abdomen": 0, "femur": 2, "thorax": 0, "head": 2}
    assert sum(data.train.synthetic) == 4 and "no image of abdomen, thorax" in caplog.text


def test_validation_must_be_real_and_patient_disjoint(phantom_prepared, tmp_path):
    with pytest.raises(UserInputError, match=r"--validation: .* shares \d+ subject\(s\)"):
        choose_training_data(
            _config(phantom_prepared, tmp_path / "o", validation=f"{phantom_prepared}:train")
        )
    rows = [("validation", f"syn{i}", v, True, "") for i, v in enumerate(["head", "femur"])]
    cohort = make_dataset(tmp_path / "cohort", rows)
    with pytest.raises(UserInputError, match="synthetic image.*validation must be real"):
        choose_training_data(
            _config(phantom_prepared, tmp_path / "o", validation=f"{cohort}:validation")
        )


# ----------------------------------------------------------------------------- weights


def test_weights_of_another_class_count_get_a_new_head(tmp_path):
    torch.manual_seed(0)
    source = torchvision.models.resnet18(num_classes=10)
    path = tmp_path / "r18.pth"
    torch.save(source.state_dict(), path)
    built = build_classifier("resnet18", ["head", "femur", "brain"], 32, weights=str(path))
    assert torch.equal(built.model.conv1.weight, source.conv1.weight)
    assert built.model.fc.weight.shape == (3, 512)
    partial = {k: v for k, v in source.state_dict().items() if not k.startswith("layer4.")}
    torch.save(partial, path)
    with pytest.raises(UserInputError, match=r"--weights: .*r18.pth lacks \d+ key\(s\).*layer4"):
        build_classifier("resnet18", ["head", "femur"], 32, weights=str(path))
    path.write_bytes(b"garbage")
    with pytest.raises(UserInputError, match="r18.pth cannot be loaded as a state dict"):
        build_classifier("resnet18", ["head", "femur"], 32, weights=str(path))


def test_other_torchvision_backbones_build_at_small_sizes():
    x = torch.zeros(2, 3, 32, 32)
    for name in ("efficientnet_b0", "vit_b_16"):
        model = build_classifier(name, ["head", "femur", "brain"], 32).model.eval()
        with torch.no_grad():
            assert model(x).shape == (2, 3)


def test_augmentation_is_seeded_and_keeps_the_background_black():
    x = torch.zeros(4, 1, 32, 32)
    x[:, :, 8:24, 8:24] = 0.5
    a = augment_batch(x, torch.Generator().manual_seed(1))
    b = augment_batch(x, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.shape == x.shape
    assert not torch.equal(a, augment_batch(x, torch.Generator().manual_seed(2)))
    assert a[:, :, :3, :3].max() == 0 and (a >= 0).all() and (a <= 1).all()
    # A bright square near the top-left corner (centre 6.5, 6.5) moves in every image,
    # and the horizontal flip sends some to the right half.
    x = torch.zeros(8, 1, 32, 32)
    x[:, :, 4:10, 4:10] = 1.0
    w = augment_batch(x, torch.Generator().manual_seed(0))[:, 0]
    ys, xs = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    cy, cx = ((w * c).sum((1, 2)) / w.sum((1, 2)) for c in (ys, xs))
    assert (torch.hypot(cy - 6.5, cx - 6.5) > 0.5).all()
    assert (cx > 16).any() and (cx < 16).any()


def test_best_weights_keep_the_earlier_step_on_a_tie():
    model = torch.nn.Linear(2, 2)
    progress = Progress()
    progress.record(1, {"macro_f1": 0.5, "accuracy": 0.4}, "macro_f1", model)
    first = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    progress.record(2, {"macro_f1": 0.5, "accuracy": 0.9}, "macro_f1", model)
    assert (progress.best_step, progress.best_value) == (1, 0.5)
    assert torch.equal(progress.best_state["weight"], first)
    progress.record(3, {"macro_f1": 0.6, "accuracy": 0.1}, "macro_f1", model)
    assert (progress.best_step, progress.best_value) == (3, 0.6)
    assert torch.equal(progress.best_state["weight"], model.weight)
    assert [v["step"] for v in progress.validation] == [1, 2, 3]


# ----------------------------------------------------------------------------- flags


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--backbone", "resnet19"], "--backbone: 'resnet19' is not one of"),
        (["--n_real_per_view", "40"], "--n_real_per_view: asks for 40 images of view 'abdomen'"),
        (["--n_synthetic_per_view", "3"], "--n_synthetic_per_view: needs --synthetic"),
        (["--validation", "{phantom}:train"], "subject(s) with the training images"),
        (["--backbone", "vit_b_16", "--resolution", "40"], "not a multiple of 16"),
        (["--views", "head"], "--views: a classifier needs two views"),
        (["--views", "head,cervix"], "--views: "),
        (["--optimizer", "adam"], "invalid choice"),
        (["--weights", "{tmp}/missing.pth"], "--weights: "),
    ],
)
def test_bad_flags_exit_2_with_one_line(phantom_prepared, tmp_path, capsys, extra, needle):
    extra = [e.format(phantom=phantom_prepared, tmp=tmp_path) for e in extra]
    out = tmp_path / "o"
    code = _recipe("--train", f"{phantom_prepared}:train", "--output_dir", str(out), *extra)
    err = capsys.readouterr().err
    assert code == 2 and needle in err, err
    if "invalid choice" not in needle:  # argparse adds its usage line
        assert len(err.strip().splitlines()) == 1, err
    assert not (out / "model.safetensors").exists()
