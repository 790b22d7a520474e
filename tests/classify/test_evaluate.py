"""``fusynth evaluate classification`` and ``fusynth evaluate zeroshot`` on the phantom:
the report files, the class checks, prompt files and bad flags."""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import save_file

from fusynth.classify.backbones import build_classifier
from fusynth.classify.evaluate import evaluate_classification, evaluate_zeroshot
from fusynth.cli.evaluate import add_evaluate_classification_parser, add_evaluate_zeroshot_parser
from fusynth.core.errors import UserInputError
from fusynth.core.io import file_sha256


def save_classifier(path: Path, classes: list[str], backbone: str = "resnet18") -> Path:
    """A random-init classifier folder as ``train_classifier`` writes it."""
    built = build_classifier(backbone, classes, 32)
    path.mkdir(parents=True)
    save_file(
        {k: v.contiguous() for k, v in built.model.state_dict().items()},
        str(path / "model.safetensors"),
    )
    (path / "classifier_config.json").write_text(built.spec.to_json())
    return path


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    return save_classifier(
        tmp_path_factory.mktemp("clf") / "model", ["abdomen", "brain", "femur", "thorax", "head"]
    )


def _cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers(dest="command", required=True)
    add_evaluate_classification_parser(commands)
    add_evaluate_zeroshot_parser(commands)
    args = parser.parse_args(list(argv))
    return args.func(args)


def _check_report(out: Path, classes: list[str], n: int) -> dict:
    report = json.loads((out / "metrics.json").read_text())
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    assert len(rows) == n
    assert list(rows[0])[:5] == ["key", "subject_id", "center", "true_view", "predicted_view"]
    probs = np.array([[float(r[f"prob_{c}"]) for c in classes] for r in rows])
    assert np.allclose(probs.sum(axis=1), 1, atol=1e-4)
    assert [r["predicted_view"] for r in rows] == [classes[i] for i in probs.argmax(axis=1)]
    with Image.open(out / "confusion.png") as im:
        im.load()
        assert im.format == "PNG" and im.size[0] > 200
    assert report["confusion_matrix"]["classes"] == classes
    assert np.sum(report["confusion_matrix"]["counts"]) == n
    return report


def test_classification_report_with_legacy_metrics(classifier, phantom_prepared, tmp_path, capsys):
    out = tmp_path / "eval"
    code = _cli(
        "classification",
        "--model",
        str(classifier),
        "--data",
        f"{phantom_prepared}:test",
        "--out",
        str(out),
        "--metrics",
        "standard,fulora-legacy",
        "--n_boot",
        "20",
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "accuracy" in printed and "FU-LoRA legacy: ACC" in printed and str(out) in printed
    report = _check_report(out, ["abdomen", "brain", "femur", "thorax", "head"], 6)
    assert set(report["overall"]) == {"accuracy", "balanced_accuracy", "macro_f1", "macro_auroc"}
    acc = report["overall"]["accuracy"]
    assert acc["ci_low"] <= acc["value"] <= acc["ci_high"]
    assert report["per_view"]["brain"]["support"] == 0  # the model knows a view the data lacks
    assert report["per_view"]["brain"]["recall"]["value"] is None
    assert list(report["per_center"]) == ["phantom"]
    assert {"ACC", "AUC", "F1", "definitions"} <= set(report["fulora_legacy"])
    assert report["setup"]["model_sha256"] == file_sha256(classifier / "model.safetensors")
    assert report["setup"]["backbone"] == "resnet18" and report["setup"]["n_boot"] == 20


def test_data_with_a_view_the_model_lacks_is_refused_naming_it(phantom_prepared, tmp_path):
    model = save_classifier(tmp_path / "m", ["femur", "head"])
    with pytest.raises(UserInputError, match=r"--data: .* has view\(s\) abdomen, thorax that"):
        evaluate_classification(model, f"{phantom_prepared}:test", tmp_path / "o", n_boot=0)
    report = evaluate_classification(
        model, f"{phantom_prepared}:test", tmp_path / "o", views="femur,head", n_boot=0
    )
    assert report["n_images"] == 3 and report["overall"]["accuracy"]["ci_low"] is None


def test_not_a_classifier_folder_and_an_existing_out_are_refused(
    classifier, phantom_prepared, tmp_path
):
    with pytest.raises(UserInputError, match=r"--model: .* is not a classifier folder"):
        evaluate_classification(tmp_path, f"{phantom_prepared}:test", tmp_path / "o")
    (tmp_path / "o").mkdir()
    with pytest.raises(UserInputError, match="already exists; pass --overwrite"):
        evaluate_classification(classifier, f"{phantom_prepared}:test", tmp_path / "o")
    with pytest.raises(UserInputError, match="--metrics: 'fulora' is not one of"):
        evaluate_classification(
            classifier, f"{phantom_prepared}:test", tmp_path / "p", metrics="fulora"
        )


@pytest.mark.parametrize(
    ("kw", "flag"),
    [
        ({"batch_size": 0}, "--batch_size"),
        ({"n_boot": -1}, "--n_boot"),
        ({"legacy_batch_size": 0}, "--legacy_batch_size"),
    ],
)
def test_bad_counts_name_their_flag(classifier, phantom_prepared, tmp_path, kw, flag):
    data, out = f"{phantom_prepared}:test", tmp_path / "o"
    with pytest.raises(UserInputError, match=f"^{flag}: must be"):
        evaluate_classification(classifier, data, out, **kw)
    with pytest.raises(UserInputError, match=f"^{flag}: must be"):
        evaluate_zeroshot(None, None, None, data, out, **kw)
    assert not out.exists()


def test_zeroshot_with_the_smoke_model(phantom_prepared, tmp_path, capsys):
    out = tmp_path / "zs"
    code = _cli(
        "zeroshot",
        "--data",
        f"{phantom_prepared}:test",
        "--out",
        str(out),
        "--n_boot",
        "20",
        "--metrics",
        "fulora-legacy",
    )
    assert code == 0
    assert "smoke test" in capsys.readouterr().out
    report = _check_report(out, ["abdomen", "femur", "thorax", "head"], 6)
    setup = report["setup"]
    assert setup["model"] == "fusynth-tiny-clip" and setup["smoke_model"] is True
    assert len(setup["prompts"]["head"]) >= 3 and "fulora_legacy" in report


def test_zeroshot_prompt_file_must_cover_every_view(phantom_prepared, tmp_path):
    prompts = tmp_path / "prompts.yaml"
    prompts.write_text("head: [a fetal head]\nfemur: [a femur]\n")
    with pytest.raises(
        UserInputError, match=r"--prompts: .*prompts.yaml has no prompts for view 'abdomen'"
    ):
        evaluate_zeroshot(None, None, prompts, f"{phantom_prepared}:test", tmp_path / "o")
    report = evaluate_zeroshot(
        None,
        None,
        prompts,
        f"{phantom_prepared}:test",
        tmp_path / "o",
        views="head,femur",
        n_boot=0,
    )
    assert report["setup"]["prompts"] == {"femur": ["a femur"], "head": ["a fetal head"]}
    assert report["setup"]["classes"] == ["femur", "head"]


def test_zeroshot_bad_model_and_weights(phantom_prepared, tmp_path):
    with pytest.raises(UserInputError, match="--model: 'ViT-B-3' is not an open_clip model"):
        evaluate_zeroshot("ViT-B-3", None, None, f"{phantom_prepared}:test", tmp_path / "o")
    bad = tmp_path / "weights.bin"
    bad.write_bytes(b"\0" * 16)
    with pytest.raises(UserInputError, match=r"--pretrained: .*weights.bin cannot be loaded"):
        evaluate_zeroshot(None, str(bad), None, f"{phantom_prepared}:test", tmp_path / "o")
    with pytest.raises(UserInputError, match="zero-shot classification needs two or more"):
        evaluate_zeroshot(
            None, None, None, f"{phantom_prepared}:test", tmp_path / "o", views="head"
        )
