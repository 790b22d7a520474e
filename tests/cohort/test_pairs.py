"""Head image/mask pair cohorts: ControlNet from real masks and sampled ellipses, packed
with the extractor's bookkeeping, resume after kill -9, and bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import datasets
import numpy as np
import pytest

from fusynth.cli.main import main
from fusynth.data.ellipse_prior import mask_ellipse
from fusynth.data.images import decode_image
from fusynth.data.masks import extract_head_mask
from fusynth.data.schema import VIEWS, load_prepared, load_split
from fusynth.data.transforms import square_resize


def _cn(adapter, out, *extra):
    return [
        "generate",
        "pairs",
        "--method",
        "controlnet",
        "--adapter",
        str(adapter),
        "--steps",
        "2",
        "--shard_size",
        "2",
        "--batch_size",
        "2",
        "--out",
        str(out),
        *extra,
    ]


def _rows(path):
    return [r for ds in load_prepared(path).values() for r in ds]


def test_controlnet_pairs_from_real_masks(tiny_controlnet, phantom_prepared, tmp_path, capsys):
    out = tmp_path / "real"
    assert (
        main(_cn(tiny_controlnet, out, "--n", "5", "--masks-from", f"{phantom_prepared}:train"))
        == 0
    )
    assert "5 of 5 pairs (controlnet)" in capsys.readouterr().out
    source = [r for r in load_split(f"{phantom_prepared}:train") if r["mask"] is not None]
    rows = _rows(out)
    assert len(rows) == 5
    for i, row in enumerate(rows):
        prov = json.loads(row["provenance"])
        assert VIEWS[row["view"]] == "head" and row["synthetic"]
        assert prov["mask_source"] == f"{phantom_prepared}:train" and prov["mask_index"] == i % len(
            source
        )
        src = decode_image(source[prov["mask_index"]]["mask"])
        expected = square_resize(src * 255, 32, resample=0) > 127
        assert np.array_equal(
            decode_image(row["mask"]) > 0, expected
        )  # the mask given is the mask stored
        # Head circumference: in pixels always, in mm from the source's spacing.
        spacing = source[prov["mask_index"]]["pixel_spacing_mm"] * 64 / 32
        assert row["pixel_spacing_mm"] == pytest.approx(spacing, rel=1e-5)
        assert row["head_circumference_mm"] == pytest.approx(
            prov["head_circumference_px"] * spacing, rel=1e-4
        )
    assert (out / "previews" / "head.png").is_file()
    from fusynth.core.style import png_text

    text = png_text(out / "previews" / "head.png")
    assert "synthetic image/mask pairs" in text["Title"]
    assert f"mask: {phantom_prepared.name}:train" in text["Description"]  # where masks came from
    assert "mask outline" in text["Description"]  # the overlay's colours are explained


def test_controlnet_pairs_from_sampled_ellipses(tiny_controlnet, tmp_path):
    out = tmp_path / "ell"
    assert main(_cn(tiny_controlnet, out, "--n", "6", "--masks-from", "ellipse")) == 0
    rows = _rows(out)
    masks = [decode_image(r["mask"]) for r in rows]
    assert len({m.tobytes() for m in masks}) == 6  # new heads, not copies
    for row, mask in zip(rows, masks, strict=True):
        prov = json.loads(row["provenance"])
        assert prov["mask_source"] == "ellipse" and row["head_circumference_mm"] is None
        assert extract_head_mask(mask * 255).residual < 0.05  # each is a filled ellipse
        assert mask_ellipse(mask).a == pytest.approx(prov["mask_ellipse"][2], rel=0.1)
    request = json.loads((out / "request.json").read_text())
    assert request["ellipse_prior"]["groups"]["all"]["n"] > 0


def test_packed_pairs_keep_count_of_rejections(tiny_packed_lora, tmp_path, capsys):
    out = tmp_path / "packed"
    argv = [
        "generate",
        "pairs",
        "--method",
        "packed",
        "--adapter",
        str(tiny_packed_lora),
        "--n",
        "6",
        "--steps",
        "2",
        "--masks-from",
        "ellipse",
        "--threshold",
        "100",
        "--max_residual",
        "0.5",
        "--max_attempts",
        "3",
        "--out",
        str(out),
    ]
    rc = main(argv)
    stats = json.loads((out / "cohort_stats.json").read_text())
    assert stats["attempts"] == stats["accepted"] + stats["rejected"]
    assert stats["left_out"] == 6 - stats["accepted"] and stats["attempts"] <= 6 * 3
    if rc == 2:  # the smoke model never drew an extractable head
        assert stats["accepted"] == 0 and "no sample passed" in capsys.readouterr().err
        return
    assert rc == 0
    rows = _rows(out)
    assert len(rows) == stats["rows"] == stats["accepted"]
    for row in rows:
        prov = json.loads(row["provenance"])
        assert prov["fit_residual"] <= 0.5 and prov["attempt"] < 3
        assert prov["mask_source"].startswith("extracted")
        assert set(np.unique(decode_image(row["mask"]))) <= {0, 1}


def test_pairs_resume_after_kill(tiny_controlnet, tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    assert main(_cn(tiny_controlnet, full, "--n", "8", "--masks-from", "ellipse")) == 0
    cmd = [
        sys.executable,
        "-m",
        "fusynth.cli",
        *_cn(tiny_controlnet, killed, "--n", "8", "--masks-from", "ellipse"),
    ]
    proc = subprocess.Popen(cmd, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (killed / "shards" / "shard-00001").is_dir():
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert subprocess.run(cmd, capture_output=True).returncode == 0

    def images(p):
        ds = datasets.load_from_disk(str(p))["train"].cast_column(
            "image", datasets.Image(decode=False)
        )
        return [r["bytes"] for r in ds["image"]]

    assert images(killed) == images(full)


def test_two_processes_make_the_same_pairs(tiny_controlnet, tmp_path):
    from tests.conftest import accelerate_launch

    one, two = tmp_path / "one", tmp_path / "two"
    argv = ["--n", "4", "--masks-from", "ellipse"]
    assert main(_cn(tiny_controlnet, one, *argv)) == 0
    proc = subprocess.run(
        accelerate_launch(2, "-m", "fusynth.cli", *_cn(tiny_controlnet, two, *argv)),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for a, b in zip(_rows(one), _rows(two), strict=True):
        assert a["provenance"] == b["provenance"]
        assert np.array_equal(np.asarray(a["image"]), np.asarray(b["image"]))
        assert np.array_equal(np.asarray(a["mask"]), np.asarray(b["mask"]))


@pytest.mark.parametrize(
    ("which", "extra", "needle"),
    [
        (
            "packed",
            ["--method", "controlnet", "--masks-from", "ellipse"],
            "is a lora output; --method controlnet needs a ControlNet",
        ),
        (
            "controlnet",
            ["--method", "packed"],
            "--method packed needs a LoRA trained with --packing",
        ),
        (
            "controlnet",
            ["--method", "controlnet", "--masks-from", "ellipse", "--conditioning", "distance"],
            "was trained with conditioning filled, not distance",
        ),
        (
            "packed",
            ["--method", "packed", "--packing", "mask,image,image"],
            "was trained with packing image,image,mask",
        ),
        ("controlnet", ["--method", "controlnet"], "--masks_from: --method controlnet needs masks"),
        (
            "controlnet",
            ["--method", "controlnet", "--masks-from", "ellipse", "--n", "0"],
            "--n: a cohort needs at least one pair",
        ),
        ("controlnet", ["--method", "contrlnet"], "(did you mean 'controlnet'?)"),
        (
            "controlnet",
            ["--method", "controlnet", "--masks-from", "ellipse", "--guidance", "-1"],
            "--guidance: must be >= 0",
        ),
    ],
)
def test_bad_input(tiny_controlnet, tiny_packed_lora, tmp_path, capsys, which, extra, needle):
    adapter = tiny_controlnet if which == "controlnet" else tiny_packed_lora
    argv = [
        "generate",
        "pairs",
        "--adapter",
        str(adapter),
        "--out",
        str(tmp_path / "o"),
        "--steps",
        "2",
    ]
    if "--n" not in extra:
        argv += ["--n", "2"]
    assert main([*argv, *extra]) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "o").exists()


def test_masks_from_a_dataset_without_masks(tiny_controlnet, phantom_prepared, tmp_path, capsys):
    import datasets as hf

    dsd = load_prepared(phantom_prepared)
    nomask = hf.DatasetDict({"train": dsd["train"].filter(lambda r: r["mask"] is None)})
    nomask.save_to_disk(str(tmp_path / "nomask"))
    assert (
        main(
            _cn(
                tiny_controlnet,
                tmp_path / "o",
                "--n",
                "2",
                "--masks-from",
                str(tmp_path / "nomask"),
            )
        )
        == 2
    )
    assert "has no masks" in capsys.readouterr().err


def test_pairs_with_an_hc_known_by_construction_and_sam_hc_error(tiny_controlnet, tmp_path):
    """Heads drawn for an HC asked in mm; SAM's HC error is measured against it."""
    from fusynth.segment.evaluate import evaluate_segmentation
    from fusynth.segment.finetune import SamFinetuneConfig, finetune_sam

    out = tmp_path / "hc"
    argv = _cn(tiny_controlnet, out, "--n", "3", "--masks-from", "ellipse",
               "--hc_mm", "120,180", "--hc_pixel_spacing_mm", "2.0")  # fmt: skip
    assert main(argv) == 0
    for row in _rows(out):
        asked = json.loads(row["provenance"])["hc_mm_requested"]
        assert 120 <= asked <= 180 and row["pixel_spacing_mm"] == 2.0
        assert row["head_circumference_mm"] == pytest.approx(asked, rel=0.05)  # the mask's HC
    model = finetune_sam(
        SamFinetuneConfig(
            train=f"{out}", validation="none", output_dir=str(tmp_path / "m"), max_train_steps=1
        )  # fmt: skip
    ).output_dir
    evaluate_segmentation(model, f"{out}:train", tmp_path / "eval", seed=0)
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["by_jitter"]["0"]["dice"]["n"] == 3
    # The HC error is measured (it is None without a known HC in mm).
    assert summary["by_jitter"]["0"]["hc_abs_error_mm"]["n"] >= 1
    assert main([*argv[:-2], "--hc_pixel_spacing_mm", "0"]) == 2


def test_pairs_draw_hc_and_spacing_from_the_real_heads(tiny_controlnet, tmp_path):
    """``--hc_mm real``: each head takes a real training head's HC, at that head's pixel
    spacing scaled to the frame, so the cohort's biometry follows the real one."""
    from fusynth.data.schema import VIEWS, load_split
    from fusynth.diffusion.config import TrainedAdapter

    out = tmp_path / "real-hc"
    argv = _cn(tiny_controlnet, out, "--n", "4", "--masks-from", "ellipse", "--hc_mm", "real")
    assert main(argv) == 0
    cfg = TrainedAdapter.read(tiny_controlnet, "--adapter")
    real = {
        (round(r["head_circumference_mm"], 4), round(r["pixel_spacing_mm"], 6))
        for r in load_split(cfg.train_data)
        if VIEWS[r["view"]] == "head" and r["head_circumference_mm"] and r["mask"] is not None
    }
    (side,) = {max(r["mask"].size) for r in load_split(cfg.train_data) if r["mask"]}
    rows = _rows(out)
    assert len(rows) == 4
    for row in rows:
        asked = json.loads(row["provenance"])["hc_mm_requested"]
        frame = row["image"].size[0]
        spacing = row["pixel_spacing_mm"]
        match = [mm for hc, mm in real if hc == asked]
        assert match and spacing * frame / side == pytest.approx(match[0], rel=1e-4)
        assert row["head_circumference_mm"] == pytest.approx(asked, rel=0.05)
    request = json.loads((out / "request.json").read_text())
    assert request["hc_mm"] == "real" and len(request["hc_pool_sha256"]) == 64
