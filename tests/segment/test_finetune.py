"""SAM fine-tuning: preprocessing, data choice, the embedding cache, outputs, resume."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from fusynth.core.errors import UserInputError
from fusynth.data.geometry import Ellipse, ellipse_mask
from fusynth.segment.cache import EmbeddingCache, encode_image
from fusynth.segment.data import (
    SegSample,
    check_disjoint,
    choose_by_subject,
    choose_synthetic,
    load_seg_set,
    sam_input,
)
from fusynth.segment.finetune import SamFinetuneConfig, finetune_sam
from fusynth.segment.model import jittered_boxes, segmentation_loss
from fusynth.segment.sam import build_sam, load_sam
from tests.conftest import _train, accelerate_launch, run_recipe, write_prepared


def _sample(i: int, subject: str, h: int = 90, w: int = 160, synthetic: bool = False) -> SegSample:
    rng = np.random.default_rng(i)
    mask = ellipse_mask((h, w), Ellipse(cx=w / 2 + i, cy=h / 2, a=30 + i % 7, b=20, angle=0.2 * i))
    return SegSample(
        key=f"s{i}",
        image=rng.integers(0, 255, (h, w), dtype=np.uint8),
        mask=mask,
        subject_id=subject,
        synthetic=synthetic,
        pixel_spacing_mm=None,
        head_circumference_mm=None,
    )


def _dataset(path: Path, samples: list[tuple[str, str, np.ndarray | None]], size=(48, 64)) -> Path:
    """A prepared dataset of (split, subject, mask) rows with noise images."""
    rows = [{"split": sp, "subject_id": subj, "mask": mask} for sp, subj, mask in samples]
    return write_prepared(path, rows, size)


def _head(h=48, w=64, i=0) -> np.ndarray:
    return ellipse_mask((h, w), Ellipse(cx=w / 2, cy=h / 2, a=14 + i, b=10, angle=0.1 * i))


# ----------------------------------------------------------------------------- preprocessing


def test_sam_input_keeps_aspect_pads_and_boxes_after_resizing():
    s = _sample(3, "a", h=90, w=160)
    x = sam_input(s, 256)
    assert x.image.shape == (144, 256, 3)  # longest side 160 -> 256, 90 -> 144, no distortion
    assert x.mask.shape == (256, 256) and x.mask.dtype == bool
    assert not x.mask[144:].any()  # padding is background
    ys, xs = np.nonzero(x.mask)
    assert list(x.box) == [xs.min(), ys.min(), xs.max(), ys.max()]
    ys0, xs0 = np.nonzero(s.mask)
    native = np.array([xs0.min(), ys0.min(), xs0.max(), ys0.max()]) * x.scale
    assert np.abs(x.box - native).max() <= 2.0
    # nearest neighbour: the resized mask has the same area share as the native one
    assert x.mask.sum() / (144 * 256) == pytest.approx(s.mask.mean(), rel=0.03)


def test_jittered_boxes_stay_near_the_box_and_inside_the_image():
    inputs = [sam_input(_sample(i, "a"), 256) for i in range(8)]
    gen = torch.Generator().manual_seed(0)
    boxes = jittered_boxes(inputs, 10, 256, gen).numpy()
    exact = np.stack([x.box for x in inputs])
    assert np.abs(boxes - exact).max() <= 10 * inputs[0].scale + 1e-4
    assert (
        (boxes >= 0).all() and (boxes[:, [0, 2]] <= 255).all() and (boxes[:, [1, 3]] <= 143).all()
    )
    assert (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all()
    assert not np.allclose(boxes, exact)
    assert np.array_equal(jittered_boxes(inputs, 0, 256, gen).numpy(), exact)


@pytest.mark.parametrize("kind", ["dice+bce", "dice+ce"])
def test_loss_is_small_for_a_right_mask_and_large_for_a_wrong_one(kind):
    target = torch.zeros(2, 1, 16, 16)
    target[:, :, 4:12, 4:12] = 1
    right = (target * 2 - 1) * 20
    good, iou = segmentation_loss(right, target, kind)
    bad, iou_bad = segmentation_loss(-right, target, kind)
    assert good.item() < 0.01 and bad.item() > 1.0
    assert iou.tolist() == [1.0, 1.0] and iou_bad.tolist() == [0.0, 0.0]


def test_the_two_losses_differ():
    target = torch.zeros(1, 1, 8, 8)
    target[..., 2:6, 2:6] = 1
    logits = torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    a, _ = segmentation_loss(logits, target, "dice+bce")
    b, _ = segmentation_loss(logits, target, "dice+ce")
    assert a.item() != pytest.approx(b.item())


# ----------------------------------------------------------------------------- choosing data


def test_choice_by_subject_is_deterministic_nested_and_whole_subjects():
    samples = [_sample(i, f"p{i // 2}") for i in range(20)]  # two images per subject
    five = choose_by_subject(samples, 5, seed=1, flag="--n_real")
    ten = choose_by_subject(samples, 10, seed=1, flag="--n_real")
    assert [s.key for s in five] == [s.key for s in choose_by_subject(samples, 5, 1, "--n_real")]
    assert [s.key for s in ten[:5]] == [s.key for s in five]
    subjects = [s.subject_id for s in ten]
    assert len(set(subjects)) == 5  # whole subjects: 5 subjects x 2 images
    assert [s.key for s in choose_by_subject(samples, 5, 2, "--n_real")] != [s.key for s in five]
    with pytest.raises(UserInputError, match="--n_real: asks for 21 images but the data has 20"):
        choose_by_subject(samples, 21, 1, "--n_real")


def test_synthetic_choice_is_nested_and_bounded():
    samples = [_sample(i, "synth", synthetic=True) for i in range(10)]
    assert [s.key for s in choose_synthetic(samples, 6, 0, "--n_synthetic")][:3] == [
        s.key for s in choose_synthetic(samples, 3, 0, "--n_synthetic")
    ]
    with pytest.raises(UserInputError, match="--n_synthetic: asks for 11"):
        choose_synthetic(samples, 11, 0, "--n_synthetic")


def test_overlapping_subjects_are_refused():
    with pytest.raises(UserInputError, match="shares 1 subject"):
        check_disjoint([_sample(0, "p1")], [_sample(1, "p1")], "--validation X")
    check_disjoint([_sample(0, "p1", synthetic=True)], [_sample(1, "p1")], "--validation X")


def test_empty_and_missing_masks_are_skipped_and_counted(tmp_path, caplog):
    empty = np.zeros((48, 64), dtype=bool)
    path = _dataset(
        tmp_path / "d", [("train", "a", _head()), ("train", "b", empty), ("train", "c", None)]
    )
    seg = load_seg_set(f"{path}:train", "--train")
    assert [s.subject_id for s in seg.samples] == ["a"]
    assert (seg.skipped_empty, seg.skipped_unlabeled) == (1, 1)
    assert "skipped 1 sample(s) with an empty mask" in caplog.text


def test_a_dataset_without_masks_is_refused(tmp_path):
    path = _dataset(tmp_path / "d", [("train", "a", None), ("train", "b", None)])
    with pytest.raises(UserInputError, match=r"--train: .* has no image with a mask"):
        load_seg_set(f"{path}:train", "--train")


# ----------------------------------------------------------------------------- the loop


@pytest.fixture(scope="module")
def heads(tmp_path_factory):
    """12 training heads (12 subjects), 3 validation heads, 3 test heads."""
    rows = [("train", f"t{i}", _head(i=i % 5)) for i in range(12)]
    rows += [("validation", f"v{i}", _head(i=i)) for i in range(3)]
    rows += [("test", f"x{i}", _head(i=i)) for i in range(3)]
    return _dataset(tmp_path_factory.mktemp("heads") / "heads", rows)


def _config(heads, out, cache, **kw) -> SamFinetuneConfig:
    base = dict(
        train=f"{heads}:train",
        output_dir=str(out),
        embedding_cache=str(cache),
        max_train_steps=4,
        train_batch_size=3,
        checkpointing_steps=2,
    )
    return SamFinetuneConfig(**{**base, **kw})


def test_decoder_training_writes_a_stock_loadable_sam(heads, tmp_path):
    result = finetune_sam(_config(heads, tmp_path / "run", tmp_path / "cache"))
    out = result.output_dir
    assert result.global_step == 4 and len(result.losses) == 4
    assert {
        "model.safetensors",
        "sam_config.json",
        "config.json",
        "train_log.json",
        "README.md",
    } <= {p.name for p in out.iterdir()}
    # Stock segment-anything modules take the weights strictly.
    state = load_file(str(out / "model.safetensors"))
    init = build_sam("tiny", seed=0).state_dict()
    stock = build_sam("tiny")
    stock.load_state_dict(state, strict=True)
    # Only the decoder changed.
    changed = {k.split(".")[0] for k in state if not torch.equal(state[k], init[k])}
    assert changed == {"mask_decoder"}
    sam, model_type = load_sam(out)
    assert model_type == "tiny"
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["num_real"] == 12 and cfg["num_validation"] == 3 and cfg["smoke_model"] is True
    assert cfg["learning_rate"] == 1e-3
    log = json.loads((out / "train_log.json").read_text())
    assert 0.0 <= log["validation"][-1]["dice"] <= 1.0
    card = (out / "README.md").read_text()
    assert (
        "Smoke model" in card
        and "Not for clinical use" in card
        and "library_name: segment-anything" in card
    )


def test_embeddings_are_cached_across_runs_and_equal_fresh_ones(heads, tmp_path):
    cache = tmp_path / "cache"
    first = finetune_sam(_config(heads, tmp_path / "a", cache, max_train_steps=1))
    assert (first.cache_hits, first.cache_misses) == (0, 15)
    again = finetune_sam(_config(heads, tmp_path / "b", cache, max_train_steps=1, n_real=6, seed=3))
    assert (again.cache_hits, again.cache_misses) == (9, 0)
    sam = build_sam("tiny", seed=0)
    x = sam_input(load_seg_set(f"{heads}:train", "t").samples[0], 256)
    stored = EmbeddingCache(cache, sam, "tiny").path(x.image)
    assert torch.allclose(load_file(str(stored))["embedding"], encode_image(sam, x.image))
    # Another encoder never reads these embeddings.
    assert EmbeddingCache(cache, build_sam("tiny", seed=1), "tiny").path(x.image) != stored


def test_resume_gives_the_same_weights(heads, tmp_path):
    cache = tmp_path / "cache"
    straight = finetune_sam(_config(heads, tmp_path / "s", cache, box_jitter=5))
    finetune_sam(_config(heads, tmp_path / "r", cache, box_jitter=5, max_train_steps=2))
    resumed = finetune_sam(
        _config(heads, tmp_path / "r", cache, box_jitter=5, resume_from_checkpoint="latest")
    )
    # The checkpoint carries the log so far: the resumed run's log is the whole run's.
    assert resumed.losses == straight.losses and len(straight.losses) == 4
    log = json.loads((resumed.output_dir / "train_log.json").read_text())
    assert log["losses"] == straight.losses
    # The 2-step run validated at its last step; that stays in the log, as it happened.
    assert [v["step"] for v in log["validation"]] == [2, 4]
    a = load_file(str(straight.output_dir / "model.safetensors"))
    b = load_file(str(resumed.output_dir / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def _files(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }


def test_an_interrupted_overwrite_keeps_the_old_run_whole(heads, tmp_path, monkeypatch):
    import fusynth.core.loop as loop

    cache, out = tmp_path / "cache", tmp_path / "run"
    finetune_sam(_config(heads, out, cache, max_train_steps=2, seed=1))
    old = _files(out)
    straight = finetune_sam(_config(heads, tmp_path / "s", cache, box_jitter=5))

    # The overwrite is stopped right after its checkpoint-2, as a kill would stop it.
    real = loop.save_checkpoint

    def stop_after_2(folder, step, *args, **kwargs):
        real(folder, step, *args, **kwargs)
        if step == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(loop, "save_checkpoint", stop_after_2)
    with pytest.raises(KeyboardInterrupt):
        finetune_sam(_config(heads, out, cache, box_jitter=5, overwrite_output_dir=True))
    monkeypatch.undo()
    assert _files(out) == old  # the old run is whole, byte for byte
    staging = tmp_path / ".run.fusynth-new"
    assert (staging / "checkpoint-2" / "training_state.json").is_file()
    assert (staging / ".fusynth.json").is_file()

    # The same command with --resume_from_checkpoint latest continues the overwrite.
    again = _config(
        heads, out, cache, box_jitter=5, overwrite_output_dir=True, resume_from_checkpoint="latest"
    )
    resumed = finetune_sam(again)
    assert resumed.output_dir == out and not staging.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    assert resumed.losses == straight.losses
    a = load_file(str(straight.output_dir / "model.safetensors"))
    b = load_file(str(out / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert {p.name for p in out.glob("checkpoint-*")} == {"checkpoint-2", "checkpoint-4"}
    assert json.loads((out / "config.json").read_text())["seed"] == 0  # the new run's


def test_an_overwrite_stopped_before_a_checkpoint_starts_over(heads, tmp_path, monkeypatch):
    import fusynth.segment.finetune as finetune

    cache, out = tmp_path / "cache", tmp_path / "run"
    finetune_sam(_config(heads, out, cache, max_train_steps=2, seed=1))
    old = _files(out)
    monkeypatch.setattr(finetune, "write_run_config", _raise_interrupt)
    with pytest.raises(KeyboardInterrupt):
        finetune_sam(_config(heads, out, cache, overwrite_output_dir=True))
    monkeypatch.undo()
    assert _files(out) == old
    staging = tmp_path / ".run.fusynth-new"
    assert staging.is_dir() and not list(staging.glob("checkpoint-*"))
    again = _config(heads, out, cache, overwrite_output_dir=True, resume_from_checkpoint="latest")
    assert finetune_sam(again).global_step == 4 and not staging.exists()
    assert json.loads((out / "train_log.json").read_text())["global_step"] == 4


def _raise_interrupt(*args, **kwargs):
    raise KeyboardInterrupt


def test_decoder_and_prompt_training_changes_the_prompt_encoder(heads, tmp_path):
    out = finetune_sam(
        _config(
            heads,
            tmp_path / "p",
            tmp_path / "cache",
            train_parts="decoder+prompt",
            max_train_steps=2,
        )
    ).output_dir
    state, init = load_file(str(out / "model.safetensors")), build_sam("tiny", seed=0).state_dict()
    changed = {k.split(".")[0] for k in state if not torch.equal(state[k], init[k])}
    assert changed == {"mask_decoder", "prompt_encoder"}


def test_encoder_lora_is_merged_into_plain_weights(heads, tmp_path):
    out = finetune_sam(
        _config(heads, tmp_path / "l", tmp_path / "cache", encoder_lora_rank=2, max_train_steps=2)
    ).output_dir
    state, init = load_file(str(out / "model.safetensors")), build_sam("tiny", seed=0).state_dict()
    assert set(state) == set(init)  # no lora_A / base_layer keys: a stock state dict
    changed = {k for k in state if not torch.equal(state[k], init[k])}
    assert any(k.startswith("image_encoder.") and "qkv" in k for k in changed)
    assert not any(k.startswith("prompt_encoder.") for k in changed)


def test_tensorboard_logs(heads, tmp_path):
    out = finetune_sam(
        _config(
            heads, tmp_path / "tb", tmp_path / "cache", report_to="tensorboard", max_train_steps=2
        )
    ).output_dir
    assert list((out / "logs").rglob("events.out.tfevents.*"))


def _recipe(*argv: str) -> int:
    return run_recipe("finetune_sam", *argv)


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--n_real", "40"], "--n_real: asks for 40 images but the data has 12"),
        (["--model_type", "vit_q"], "invalid choice"),
        (["--n_synthetic", "3"], "--n_synthetic/--synthetic_ratio: need --synthetic"),
        (["--validation", "{heads}:train"], "shares 12 subject(s) with the training data"),
        (["--train_parts", "all", "--encoder_lora_rank", "4"], "--encoder_lora_rank"),
    ],
)
def test_bad_flags_exit_2_with_one_line(heads, tmp_path, capsys, extra, needle):
    extra = [e.format(heads=heads) for e in extra]
    code = _recipe("--train", f"{heads}:train", "--output_dir", str(tmp_path / "o"), *extra)
    err = capsys.readouterr().err
    assert code == 2 and needle in err
    if "invalid choice" not in needle:  # argparse adds its usage line
        assert len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "o" / "model.safetensors").exists()


def test_a_checkpoint_that_is_not_a_sam_names_the_missing_keys(heads, tmp_path, capsys):
    bad = tmp_path / "bad.pth"
    state = build_sam("tiny").state_dict()
    torch.save({k: v for k, v in state.items() if not k.startswith("mask_decoder.")}, bad)
    code = _recipe(
        "--train",
        f"{heads}:train",
        "--checkpoint",
        str(bad),
        "--model_type",
        "tiny",
        "--output_dir",
        str(tmp_path / "o"),
    )
    err = capsys.readouterr().err
    assert code == 2 and "missing (mask_decoder." in err and "bad.pth" in err
    pickled = tmp_path / "code.pth"
    torch.save({"model": object()}, pickled)
    code = _recipe(
        "--train",
        f"{heads}:train",
        "--checkpoint",
        str(pickled),
        "--model_type",
        "tiny",
        "--output_dir",
        str(tmp_path / "o"),
    )
    assert code == 2 and "is not a plain weights file" in capsys.readouterr().err


def test_an_official_style_pth_checkpoint_loads_and_trains(heads, tmp_path):
    ckpt = tmp_path / "sam_tiny.pth"
    torch.save(build_sam("tiny", seed=5).state_dict(), ckpt)
    safe = tmp_path / "sam_tiny.safetensors"
    save_file(build_sam("tiny", seed=5).state_dict(), str(safe))
    for path in (ckpt, safe):
        out = tmp_path / f"run-{path.suffix[1:]}"
        result = finetune_sam(
            _config(heads, out, tmp_path / "cache", checkpoint=str(path), max_train_steps=1)
        )
        cfg = json.loads((result.output_dir / "config.json").read_text())
        assert cfg["smoke_model"] is False and cfg["learning_rate"] == 1e-4
        assert len(cfg["checkpoint_sha256"]) == 64
    # From a fusynth SAM folder: the digest evaluation reports give these weights.
    from fusynth.core.io import file_sha256

    again = finetune_sam(
        _config(
            heads, tmp_path / "again", tmp_path / "cache", checkpoint=str(out), max_train_steps=1
        )
    )
    cfg = json.loads((again.output_dir / "config.json").read_text())
    assert cfg["checkpoint_sha256"] == file_sha256(out / "model.safetensors")


def test_two_processes_train_and_save_once(heads, tmp_path):
    out = tmp_path / "ddp"
    proc = subprocess.run(
        accelerate_launch(
            2,
            str(Path(__file__).resolve().parents[2] / "recipes" / "finetune_sam.py"),
            "--train",
            f"{heads}:train",
            "--output_dir",
            str(out),
            "--max_train_steps",
            "2",
            "--train_batch_size",
            "2",
            "--embedding_cache",
            str(tmp_path / "cache"),
        ),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("trained 2 steps") == 1
    load_sam(out)


def test_recipe_runs_with_defaults(tmp_path, monkeypatch):
    monkeypatch.setenv("FUSYNTH_CACHE", str(tmp_path / "cache"))
    out = _train(
        "finetune_sam",
        tmp_path / "d",
        "--output_dir",
        str(tmp_path / "d"),
        "--max_train_steps",
        "1",
    )
    assert (out / "model.safetensors").is_file()


def test_synthetic_ratio_sets_the_synthetic_count_from_the_real_one(heads, tmp_path):
    from fusynth.segment.finetune import choose_training_data

    synth = _dataset(
        tmp_path / "synth", [("train", f"synthetic:{i}", _head(i=i % 5)) for i in range(10)]
    )
    for ratio, n_real, expected in ((0.5, 4, 2), (2.0, 3, 6), (0.0, 4, 0)):
        config = SamFinetuneConfig(
            train=f"{heads}:train", synthetic=str(synth), n_real=n_real, synthetic_ratio=ratio
        )
        data = choose_training_data(config, 256)
        assert (data.source["num_real"], data.source["num_synthetic"]) == (n_real, expected)
        assert len(data.inputs) == n_real + expected
    with pytest.raises(UserInputError, match="--n_synthetic: asks for 12"):
        choose_training_data(
            SamFinetuneConfig(
                train=f"{heads}:train", synthetic=str(synth), n_real=6, synthetic_ratio=2.0
            ),
            256,
        )
