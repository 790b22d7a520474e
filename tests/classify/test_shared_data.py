"""The classification commands on the real samples in ../shared/data (skipped when absent):
zero-shot, a short training with a text-to-image cohort, and evaluation per center."""

from __future__ import annotations

import json
import shutil

import pytest

from fusynth.classify.config import ClassifierTrainConfig
from fusynth.classify.evaluate import evaluate_classification, evaluate_zeroshot
from fusynth.classify.train import train_classifier
from fusynth.cli.main import main
from tests.conftest import SHARED_DATA, requires_shared_data

AFRICAN_CENTERS = {"Algeria", "Egypt", "Ghana", "Malawi", "Uganda"}


@pytest.fixture(scope="module")
def real_data(tiny_base, tiny_lora, tmp_path_factory):
    """FETAL_PLANES_DB and African samples prepared, and a text-to-image cohort of 4
    femur and 4 brain images: ``(fpdb, african, cohort)``."""
    root = tmp_path_factory.mktemp("shared")
    fpdb, african, cohort = root / "fpdb", root / "african", root / "cohort"
    prepare = ["data", "prepare", "--format"]
    assert main([*prepare, "fetal_planes_db", str(SHARED_DATA / "fetal_planes_db"), str(fpdb)]) == 0
    assert main([*prepare, "african", str(SHARED_DATA / "african_planes"), str(african)]) == 0
    generate = ["generate", "text2img", "--base", str(tiny_base), "--lora", str(tiny_lora)]
    steps = ["--steps", "2", "--resolution", "32", "--batch_size", "4"]
    assert main([*generate, "--views", "femur:4,brain:4", *steps, "--out", str(cohort)]) == 0
    return fpdb, african, cohort


@requires_shared_data
def test_zeroshot_training_and_evaluation_on_real_samples(real_data, tmp_path):
    fpdb, african, cohort = real_data
    zs = evaluate_zeroshot(
        None, None, None, f"{african}:test", tmp_path / "zs", n_boot=20, metrics="fulora-legacy"
    )
    assert set(zs["per_center"]) == AFRICAN_CENTERS
    assert zs["setup"]["classes"] == ["abdomen", "brain", "femur", "thorax"]
    assert (tmp_path / "zs" / "confusion.png").is_file()

    result = train_classifier(
        ClassifierTrainConfig(
            train=f"{fpdb}:train",
            synthetic=str(cohort),
            n_synthetic_per_view=2,
            resolution=32,
            train_batch_size=8,
            max_train_steps=2,
            output_dir=str(tmp_path / "clf"),
        )
    )
    assert result.global_step == 2 and result.best_step == 2
    cfg = json.loads((result.output_dir / "config.json").read_text())
    assert cfg["classes"] == ["abdomen", "brain", "femur", "thorax", "other"]
    assert cfg["validation"] == f"{fpdb}:validation" and cfg["num_synthetic"] == 4
    assert cfg["synthetic_per_view"]["femur"] == cfg["synthetic_per_view"]["brain"] == 2

    # Trained on FETAL_PLANES_DB (Spain), evaluated on the African centers.
    report = evaluate_classification(
        result.output_dir,
        f"{african}:test",
        tmp_path / "eval",
        metrics="standard,fulora-legacy",
        n_boot=20,
    )
    assert set(report["per_center"]) == AFRICAN_CENTERS
    assert sum(c["n_images"] for c in report["per_center"].values()) == report["n_images"]
    assert report["per_view"]["other"]["support"] == 0 and "fulora_legacy" in report
    for name in ("metrics.json", "predictions.csv", "confusion.png"):
        assert (tmp_path / "eval" / name).is_file()


@requires_shared_data
def test_every_downstream_command_runs_on_the_real_samples(real_data, tmp_path, capsys):
    """The issue's acceptance run through the CLI with tiny defaults: SimCLR, clustering
    (ssl, clip and pixels embeddings, real and synthetic together), the cohort audit and
    the classification experiment trained on FETAL_PLANES_DB and tested on African data."""
    fpdb, african, shared_cohort = real_data
    cohort = shutil.copytree(shared_cohort, tmp_path / "cohort")  # the audit writes into it

    import importlib
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "recipes"))
    ssl = tmp_path / "ssl"
    train_ssl = importlib.import_module("train_ssl").main
    assert train_ssl(["--train", f"{fpdb}:train", "--extra", str(cohort), "--resolution", "32",
                      "--max_train_steps", "2", "--train_batch_size", "8",
                      "--output_dir", str(ssl)]) == 0  # fmt: skip

    for embed in (f"ssl:{ssl}", "clip:fusynth-tiny-clip", "pixels"):
        out = tmp_path / f"cluster-{embed.split(':')[0]}"
        assert main(["evaluate", "clustering", "--embed", embed, "--data", f"{african}:test",
                     "--extra", str(cohort), "--k", "4", "--out", str(out)]) == 0  # fmt: skip
        metrics = json.loads((out / "metrics.json").read_text())
        assert "semantic_fidelity" in json.dumps(metrics)
        assert (out / "embedding_2d.png").is_file() and list((out / "montages").glob("*.png"))

    assert main(["audit", "cohort", str(cohort), "--reference", f"{fpdb}:train",
                 "--encoder", "clip:fusynth-tiny-clip"]) == 0  # fmt: skip
    audit = json.loads((cohort / "audit" / "cohort_audit.json").read_text())
    assert "femur" in json.dumps(audit) and (cohort / "audit" / "closest_pairs.png").is_file()

    exp = tmp_path / "cls"
    assert main(["experiment", "cls-augment", "--real", str(fpdb), "--test", f"{african}:test",
                 "--synthetic", str(cohort), "--n_synthetic_per_view", "0,2", "--repeats", "1",
                 "--resolution", "32", "--max_train_steps", "2", "--train_batch_size", "8",
                 "--out", str(exp)]) == 0  # fmt: skip
    assert "| african:test | real+synthetic | 2 |" in (exp / "table.md").read_text()
    capsys.readouterr()
