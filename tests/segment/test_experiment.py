"""``fusynth experiment seg-augment`` and ``fusynth evaluate segmentation`` end to end."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from fusynth.cli.main import main
from tests.conftest import SHARED_DATA, requires_shared_data
from tests.segment.test_finetune import _dataset, _head

FAST = ["--max_train_steps", "3", "--train_batch_size", "2"]


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    rows = [("train", f"t{i}", _head(i=i % 5)) for i in range(8)]
    rows += [("validation", f"v{i}", _head(i=i)) for i in range(2)]
    rows += [("test", f"x{i}", _head(i=i)) for i in range(3)]
    return _dataset(tmp_path_factory.mktemp("real") / "real", rows)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    rows = [("train", f"synthetic:{i}", _head(i=i % 4)) for i in range(6)]
    return _dataset(tmp_path_factory.mktemp("synth") / "synth", rows)


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("FUSYNTH_CACHE", str(tmp_path_factory.getbasetemp() / "fusynth-cache"))


def _run(real, synthetic, out, *extra):
    return main(
        [
            "experiment", "seg-augment", "--real", str(real), "--test", str(real),
            "--synthetic", str(synthetic), "--n_real", "2,4", "--n_synthetic", "0,4",
            "--repeats", "2", "--out", str(out), *FAST, *extra,
        ]
    )  # fmt: skip


def _csv(path):
    with path.open() as fh:
        return list(csv.DictReader(fh))


def test_experiment_writes_every_cell_a_table_and_a_chart(real, synthetic, tmp_path, capsys):
    out = tmp_path / "exp"
    assert _run(real, synthetic, out) == 0
    printed = capsys.readouterr().out
    assert "| real:test | real | 2 | 0 |" in printed
    results = _csv(out / "results.csv")
    assert len(results) == 2 * 2 * 2  # K x M x repeats, one test set
    assert {(r["n_real"], r["n_synthetic"], r["repeat"]) for r in results} == {
        (k, m, r) for k in ("2", "4") for m in ("0", "4") for r in ("0", "1")
    }
    # Both arms of a repeat share the seed (same real images and jitter).
    for r in ("0", "1"):
        assert len({x["seed"] for x in results if x["repeat"] == r}) == 1
    table = _csv(out / "table.csv")
    assert len(table) == 4 and all(row["repeats"] == "2" for row in table)
    cell = [float(x["dice"]) for x in results if (x["n_real"], x["n_synthetic"]) == ("4", "4")]
    row = next(t for t in table if (t["n_real"], t["n_synthetic"]) == ("4", "4"))
    assert float(row["dice_mean"]) == pytest.approx(np.mean(cell))
    assert float(row["dice_sd"]) == pytest.approx(np.std(cell, ddof=1))
    with Image.open(out / "dice_vs_real.png") as im:
        assert im.size[0] > 300
    # Beside every Dice: the test images it rests on and the empty predictions.
    assert {(t["n_test"], t["predictions"]) for t in table} == {("3", "6")}
    empty = {(t["n_real"], t["n_synthetic"]): int(t["empty_predictions"]) for t in table}
    for (k, m), n in empty.items():
        assert n == sum(
            int(
                json.loads((out / "cells" / f"k{k}-m{m}-r{r}" / "cell.json").read_text())[
                    "metrics"
                ]["real:test"]["empty_predictions"]
            )
            for r in (0, 1)
        )
    md = (out / "table.md").read_text()
    assert "| test images | empty predictions |" in md
    assert f"| 3 | {empty[('4', '4')]} of 6 |" in md
    from fusynth.core.style import png_text

    chart = png_text(out / "dice_vs_real.png")
    assert "real:test (3 images), real only" in chart["Description"]
    assert "real:test (3 images), +4 synthetic" in chart["Description"]
    assert "empty" in chart["Description"]  # how to read the per-point notes
    # Each cell's model config shows what it trained on; the weights are gone by default.
    cfg = json.loads((out / "cells" / "k4-m4-r1" / "model" / "config.json").read_text())
    assert (cfg["num_real"], cfg["num_synthetic"], cfg["seed"]) == (4, 4, 1)
    assert not (out / "cells" / "k4-m4-r1" / "model" / "model.safetensors").exists()
    assert (out / "cells" / "k4-m4-r1" / "eval-real-test" / "summary.json").is_file()

    # A rerun finds every cell done and trains nothing.
    stamp = (out / "cells" / "k2-m0-r0" / "cell.json").stat().st_mtime_ns
    assert _run(real, synthetic, out) == 0
    assert (out / "cells" / "k2-m0-r0" / "cell.json").stat().st_mtime_ns == stamp
    # An interrupted cell is redone; the others are kept.
    (out / "cells" / "k2-m4-r1" / "cell.json").unlink()
    assert _run(real, synthetic, out) == 0
    assert _csv(out / "results.csv") == results


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--n_real", "2,40"], "--n_real: asks for 40 images but"),
        (["--n_synthetic", "0,7"], "--n_synthetic: asks for 7 pairs but"),
        (["--repeats", "0"], "--repeats: must be at least 1"),
        (["--n_real", "2,x"], "--n_real"),
    ],
)
def test_bad_requests_exit_2_before_training(real, synthetic, tmp_path, capsys, extra, needle):
    out = tmp_path / "exp"
    assert _run(real, synthetic, out, *extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0]
    assert not (out / "cells").exists()


def test_a_test_set_sharing_subjects_with_training_is_refused(real, synthetic, tmp_path, capsys):
    code = main(
        ["experiment", "seg-augment", "--real", str(real), "--test", f"{real}:train",
         "--synthetic", str(synthetic), "--out", str(tmp_path / "e"), "--n_real", "2", "--n_synthetic", "0,4"]
    )  # fmt: skip
    assert code == 2 and "shares 8 subject(s)" in capsys.readouterr().err


def test_a_changed_request_is_refused(real, synthetic, tmp_path, capsys):
    out = tmp_path / "exp"
    args = ["--n_synthetic", "0", "--n_real", "2", "--repeats", "1"]
    assert _run(real, synthetic, out, *args) == 0
    assert _run(real, synthetic, out, *args, "--box_jitter", "3") == 2
    assert "box_jitter: 10 there, 3 now" in capsys.readouterr().err


def test_evaluate_segmentation_cli(real, tmp_path, capsys):
    from fusynth.segment.finetune import SamFinetuneConfig, finetune_sam

    model = finetune_sam(
        SamFinetuneConfig(train=f"{real}:train", output_dir=str(tmp_path / "m"), max_train_steps=2)
    ).output_dir
    out = tmp_path / "eval"
    code = main(
        ["evaluate", "segmentation", "--model", str(model), "--data", f"{real}:test",
         "--out", str(out), "--box_jitter", "0,4", "--rounds", "2"]
    )  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0
    assert "box jitter 0 px: Dice" in printed and "box jitter 4 px" in printed
    assert len(_csv(out / "per_image.csv")) == 3 * (1 + 2)
    from fusynth.core.io import file_sha256

    summary = json.loads((out / "summary.json").read_text())
    assert summary["model_sha256"] == file_sha256(model / "model.safetensors")
    cache = tmp_path / "emb"
    argv = ["evaluate", "segmentation", "--model", str(model), "--data", f"{real}:test"]
    assert main([*argv, "--out", str(tmp_path / "e3"), "--embedding_cache", str(cache)]) == 0
    assert len(list(cache.rglob("*.safetensors"))) == 3  # one per test image
    assert main(["evaluate", "segmentation", "--model", str(model), "--data", f"{real}:test",
                 "--out", str(tmp_path / "e2"), "--box_jitter", "-1"]) == 2  # fmt: skip
    assert "--box_jitter" in capsys.readouterr().err


@requires_shared_data
def test_experiment_on_prepared_hc18_with_a_mask_guided_cohort(tiny_controlnet, tmp_path, capsys):
    """The issue's acceptance run, at CI size: HC18 (prepared), a ControlNet pairs cohort,
    tiny defaults; the evaluation reports Dice, HD95, ASSD and head-circumference error."""
    hc18 = tmp_path / "hc18"
    assert main(["data", "prepare", "--format", "hc18", str(SHARED_DATA / "hc18"), str(hc18)]) == 0
    pairs = tmp_path / "pairs"
    assert main(
        ["generate", "pairs", "--method", "controlnet", "--adapter", str(tiny_controlnet),
         "--masks-from", f"{hc18}:train", "--n", "4", "--steps", "2", "--out", str(pairs)]
    ) == 0  # fmt: skip
    out = tmp_path / "exp"
    code = main(
        ["experiment", "seg-augment", "--real", str(hc18), "--test", str(hc18),
         "--synthetic", str(pairs), "--n_real", "2,4", "--n_synthetic", "0,4", "--repeats", "1",
         "--out", str(out), "--max_train_steps", "12"]
    )  # fmt: skip
    assert code == 0
    table = (out / "table.md").read_text()
    assert "| hc18:test | real+synthetic | 4 | 4 |" in table
    for cell in ("k4-m0-r0", "k4-m4-r0"):
        summary = json.loads((out / "cells" / cell / "eval-hc18-test" / "summary.json").read_text())
        assert summary["n_images"] == 12
        stats = summary["by_jitter"]["0"]
        assert stats["dice"]["n"] == 12
        assert {"hd95_px", "assd_px", "hc_abs_error_mm"} <= set(stats)
    # The real-only cell segments something after 12 steps: surface distances exist.
    real_only = json.loads(
        (out / "cells" / "k4-m0-r0" / "eval-hc18-test" / "summary.json").read_text()
    )["by_jitter"]["0"]
    assert real_only["dice"]["mean"] > 0.1
    assert real_only["hd95_px"]["n"] >= 1 and real_only["assd_px"]["n"] >= 1
    # HC18's sample ships no pixel-size CSV: mm metrics and the HC error are absent, not 0.
    assert stats["hc_abs_error_mm"] is None


def test_evaluation_through_the_embedding_cache_matches_and_reuses_training(real, tmp_path):
    """A decoder-only model shares its encoder with the base: evaluation reads the
    embeddings fine-tuning stored, and the report is the same as without the cache."""
    from fusynth.segment.evaluate import evaluate_segmentation
    from fusynth.segment.finetune import SamFinetuneConfig, finetune_sam

    cache = tmp_path / "cache"
    model = finetune_sam(
        SamFinetuneConfig(
            train=f"{real}:train",
            validation=f"{real}:test",  # only so that training caches the test images
            output_dir=str(tmp_path / "m"),
            max_train_steps=2,
            embedding_cache=str(cache),
        )
    ).output_dir
    stored = sorted(cache.rglob("*.safetensors"))
    assert len(stored) == 8 + 3
    mtimes = [p.stat().st_mtime_ns for p in stored]
    evaluate_segmentation(model, f"{real}:test", tmp_path / "plain")
    evaluate_segmentation(model, f"{real}:test", tmp_path / "cached", embedding_cache=cache)
    assert sorted(cache.rglob("*.safetensors")) == stored  # all three read, none computed
    assert [p.stat().st_mtime_ns for p in stored] == mtimes
    plain, cached = (
        _csv(tmp_path / "plain" / "per_image.csv"),
        _csv(tmp_path / "cached" / "per_image.csv"),
    )
    assert [r["dice"] for r in cached] == [r["dice"] for r in plain]
    assert [r["box"] for r in cached] == [r["box"] for r in plain]


def test_a_frozen_encoder_encodes_each_image_once_for_the_whole_grid(
    real, synthetic, tmp_path, monkeypatch, capsys
):
    import hashlib

    import fusynth.segment.cache as finetune

    seen: list[str] = []
    encode = finetune.encode_image

    def counting(sam, image):
        seen.append(hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest())
        return encode(sam, image)

    monkeypatch.setattr(finetune, "encode_image", counting)
    cache = tmp_path / "embeddings"
    argv = ["--n_real", "2", "--n_synthetic", "0,4", "--embedding_cache", str(cache)]
    assert _run(real, synthetic, tmp_path / "frozen", *argv) == 0  # 4 cells, 1 test set
    assert seen and len(seen) == len(set(seen))  # no image is encoded twice
    assert any(cache.rglob("*.safetensors"))
    # Each test image (in the encoder frame) was encoded exactly once for the 4 cells.
    from fusynth.segment.data import load_seg_set, sam_input
    from fusynth.segment.sam import build_sam

    size = build_sam("tiny").image_encoder.img_size
    tests = load_seg_set(f"{real}:test", "--test").samples
    digests = [
        hashlib.sha256(np.ascontiguousarray(sam_input(s, size).image).tobytes()).hexdigest()
        for s in tests
    ]
    assert len(set(digests)) == 3 and [seen.count(d) for d in digests] == [1, 1, 1]

    seen.clear()
    trained = tmp_path / "trained-embeddings"
    argv = ["--n_real", "2", "--n_synthetic", "0", "--repeats", "1", "--train_parts", "all"]
    assert (
        _run(real, synthetic, tmp_path / "trained", *argv, "--embedding_cache", str(trained)) == 0
    )
    assert not trained.exists() or not any(trained.rglob("*"))  # nothing cached: it changes


def test_a_trained_encoder_passes_no_embedding_cache(tmp_path):
    """Training and seg-augment's evaluation take the cache root from one function; an
    encoder that trains gets none (its embeddings would never be read again)."""
    from fusynth.segment.cache import default_cache_root
    from fusynth.segment.finetune import SamFinetuneConfig, embedding_cache_root

    cache = str(tmp_path / "cache")
    frozen = SamFinetuneConfig(embedding_cache=cache)
    assert frozen.encoder_frozen and embedding_cache_root(frozen) == cache
    for trained in (
        SamFinetuneConfig(embedding_cache=cache, train_parts="all"),
        SamFinetuneConfig(embedding_cache=cache, encoder_lora_rank=2),
    ):
        assert not trained.encoder_frozen and embedding_cache_root(trained) is None
    assert embedding_cache_root(SamFinetuneConfig(no_embedding_cache=True)) is None
    assert embedding_cache_root(SamFinetuneConfig()) == str(default_cache_root())
