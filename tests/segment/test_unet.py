"""The U-Net segmenter: fine-tuning strategies, training, exact resume, stock smp loading,
evaluation without a prompt, seg-augment's U-Net arm, and one-line errors."""

from __future__ import annotations

import csv
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from fusynth.cli.main import main
from fusynth.core.errors import UserInputError
from fusynth.segment.unet import (
    build_unet,
    encoder_stages,
    load_unet,
    param_counts,
    parse_train_parts,
    set_train_parts,
)
from fusynth.segment.unet_train import UnetTrainConfig, train_unet
from tests.conftest import SHARED_DATA, requires_shared_data, run_recipe
from tests.segment.test_finetune import _dataset, _head


@pytest.fixture(scope="module")
def heads(tmp_path_factory):
    """8 training heads (8 subjects), 2 validation heads, 3 test heads."""
    rows = [("train", f"t{i}", _head(i=i % 5)) for i in range(8)]
    rows += [("validation", f"v{i}", _head(i=i)) for i in range(2)]
    rows += [("test", f"x{i}", _head(i=i)) for i in range(3)]
    return _dataset(tmp_path_factory.mktemp("uheads") / "heads", rows)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    rows = [("train", f"synthetic:{i}", _head(i=i % 4)) for i in range(4)]
    return _dataset(tmp_path_factory.mktemp("upairs") / "pairs", rows)


def _config(data, out, **kw) -> UnetTrainConfig:
    base = dict(
        train=f"{data}:train",
        output_dir=str(out),
        resolution=64,
        max_train_steps=3,
        train_batch_size=2,
        checkpointing_steps=2,
    )
    return UnetTrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def trained(heads, tmp_path_factory):
    """A MobileNetV2 U-Net whose decoder and head trained for 3 steps."""
    return train_unet(
        _config(heads, tmp_path_factory.mktemp("trained") / "unet", train_parts="decoder")
    )


def _csv(path):
    with path.open() as fh:
        return list(csv.DictReader(fh))


# ----------------------------------------------------------------------------- strategies


@pytest.mark.parametrize("encoder", ["mobilenet_v2", "resnet18"])
def test_encoder_stages_cover_the_encoder(encoder):
    model = build_unet(encoder)
    stages = encoder_stages(model)
    assert len(stages) == 5
    in_stages = {id(p) for stage in stages for m in stage for p in m.parameters()}
    assert in_stages == {id(p) for p in model.encoder.parameters()}


def test_train_parts_mark_what_trains_and_count_it():
    model = build_unet("mobilenet_v2")
    sizes = param_counts(model)
    assert sizes["total_params"] == sum(p.numel() for p in model.parameters())
    head, dec, enc = sizes["head_params"], sizes["decoder_params"], sizes["encoder_params"]
    assert enc + dec + head == sizes["total_params"]
    expect = {
        "all": enc + dec + head,
        "encoder": enc,
        "decoder": dec + head,
        "head": head,
        "decoder-last-1": sum(p.numel() for p in model.decoder.blocks[-1].parameters()) + head,
    }
    for spec, n in expect.items():
        counts = set_train_parts(model, spec)
        assert counts["trainable_params"] == n, spec
        assert counts["trainable_share"] == round(n / sizes["total_params"], 4)
    last2 = set_train_parts(model, "encoder-last-2+decoder")["trainable_params"]
    last5 = set_train_parts(model, "encoder-last-5+decoder")["trainable_params"]
    assert dec + head < last2 < last5 == enc + dec + head
    # Only the deepest stages train: the stem stays frozen.
    set_train_parts(model, "encoder-last-2+decoder")
    assert not any(p.requires_grad for p in model.encoder.features[0].parameters())
    assert all(p.requires_grad for p in model.encoder.features[-1].parameters())


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("decoders", "did you mean 'decoder'"),
        ("encoder-last-6+decoder", "K in 'encoder-last-6+decoder' must be 1 to 5"),
        ("everything", "is not one of all, encoder, decoder, head"),
    ],
)
def test_unknown_train_parts_are_refused(spec, needle):
    with pytest.raises(UserInputError, match="--train_parts") as err:
        parse_train_parts(spec)
    assert needle in str(err.value)
    assert parse_train_parts("encoder-last-3+decoder") == ("encoder-last-K+decoder", 3)


# ----------------------------------------------------------------------------- training


def test_training_writes_a_folder_stock_smp_loads(trained, tmp_path):
    import segmentation_models_pytorch as smp

    out = trained.output_dir
    assert trained.global_step == 3 and len(trained.losses) == 3
    assert {"model.safetensors", "unet_config.json", "config.json", "train_log.json"} <= {
        p.name for p in out.iterdir()
    }
    state = load_file(str(out / "model.safetensors"))
    stock = smp.Unet(**json.loads((out / "unet_config.json").read_text()))
    stock.load_state_dict(state, strict=True)
    stock.eval()
    ours, cfg = load_unet(out)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(stock(x), ours(x))
    assert cfg["_fusynth"]["resolution"] == 64 and cfg["encoder_weights"] is None
    # smp's own from_pretrained reads the same config (as config.json) with no download.
    hub = tmp_path / "hub"
    hub.mkdir()
    shutil.copy(out / "unet_config.json", hub / "config.json")
    shutil.copy(out / "model.safetensors", hub / "model.safetensors")
    with torch.no_grad():
        assert torch.equal(smp.from_pretrained(str(hub)).eval()(x), ours(x))
    # Decoder-only: the encoder (weights and batch-norm statistics) is the init's.
    init = build_unet("mobilenet_v2", seed=0).state_dict()
    changed = {k.split(".")[0] for k in state if not torch.equal(state[k], init[k])}
    assert changed == {"decoder", "segmentation_head"}
    run = json.loads((out / "config.json").read_text())
    assert run["segmenter"] == "unet" and run["encoder"] == "mobilenet_v2"
    assert run["trainable_params"] == run["decoder_params"] + run["head_params"]
    assert 0 < run["trainable_share"] < 1 and run["init"] == "random" and run["smoke_model"]
    card = (out / "README.md").read_text()
    assert "library_name: segmentation-models-pytorch" in card and "Smoke model" in card
    assert f"{run['trainable_params']:,} of" in card and "Not for clinical use" in card
    val = json.loads((out / "train_log.json").read_text())["validation"]
    assert 0.0 <= val[-1]["dice"] <= 1.0


def test_resume_is_exact(heads, tmp_path):
    """EfficientNet (drop-connect draws random numbers) with its last two stages and the
    decoder training, flips on: resuming from checkpoint-2 gives the same bits."""
    kw = dict(
        encoder="efficientnet-b0",
        train_parts="encoder-last-2+decoder",
        max_train_steps=4,
        resolution=32,  # the smallest side five stride-2 stages take: a fast test
    )
    straight = train_unet(_config(heads, tmp_path / "s", **kw))
    train_unet(_config(heads, tmp_path / "r", **{**kw, "max_train_steps": 2}))
    resumed = train_unet(_config(heads, tmp_path / "r", **kw, resume_from_checkpoint="latest"))
    # The whole run's losses, the two before the resume included (from the checkpoint).
    assert resumed.losses == straight.losses and len(straight.losses) == 4
    log = json.loads((resumed.output_dir / "train_log.json").read_text())
    assert log["losses"] == straight.losses
    a = load_file(str(straight.output_dir / "model.safetensors"))
    b = load_file(str(resumed.output_dir / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(
        UserInputError, match=r"--train_parts encoder-last-2\+decoder, this run has all"
    ):
        train_unet(_config(heads, tmp_path / "r", **{**kw, "train_parts": "all"},
                           resume_from_checkpoint="latest"))  # fmt: skip


def test_imagenet_style_encoder_weights_are_loaded(heads, tmp_path):
    import torchvision

    torch.manual_seed(3)
    imagenet = torchvision.models.mobilenet_v2().state_dict()  # with its classifier
    path = tmp_path / "mobilenet_v2.pth"
    torch.save(imagenet, path)
    out = train_unet(
        _config(heads, tmp_path / "w", encoder_weights=str(path), train_parts="decoder")
    ).output_dir
    state = load_file(str(out / "model.safetensors"))
    assert torch.equal(state["encoder.features.0.0.weight"], imagenet["features.0.0.weight"])
    run = json.loads((out / "config.json").read_text())
    assert run["smoke_model"] is False and len(run["encoder_weights_sha256"]) == 64
    assert "encoder weights from" in (out / "README.md").read_text()
    # A trained U-Net folder continues training.
    again = train_unet(_config(heads, tmp_path / "again", checkpoint=str(out), max_train_steps=1))
    assert json.loads((again.output_dir / "config.json").read_text())["encoder"] == "mobilenet_v2"


def test_recipe_trains_on_the_phantom(phantom_prepared, tmp_path):
    out = tmp_path / "phantom-unet"
    argv = ["--train", f"{phantom_prepared}:train", "--output_dir", str(out), "--resolution", "64"]
    assert (
        run_recipe("train_unet", *argv, "--max_train_steps", "2", "--train_parts", "decoder-last-2")
        == 0
    )
    assert json.loads((out / "config.json").read_text())["train_parts"] == "decoder-last-2"
    load_unet(out)


def _recipe_error(heads, tmp_path, capsys, *extra: str) -> str:
    out = tmp_path / "o"
    code = run_recipe("train_unet", "--train", f"{heads}:train", "--output_dir", str(out), *extra)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    assert not (out / "model.safetensors").exists() and not list(out.glob("checkpoint-*"))
    return err


def test_an_encoder_file_that_does_not_fit_exits_2_with_one_line(heads, tmp_path, capsys):
    import torchvision

    resnet = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), resnet)
    err = _recipe_error(heads, tmp_path, capsys, "--encoder_weights", str(resnet))
    assert "--encoder_weights" in err and "does not fit the mobilenet_v2 encoder" in err
    assert "resnet18.pth" in err and "missing" in err
    # Right keys, wrong shapes: resnet34's file for resnet18 has extra blocks; a
    # mobilenet file with one tensor of another shape names that tensor.
    state = torchvision.models.mobilenet_v2().state_dict()
    state["features.0.0.weight"] = torch.zeros(8, 3, 3, 3)
    shaped = tmp_path / "shaped.safetensors"
    from safetensors.torch import save_file

    save_file(state, str(shaped))
    err = _recipe_error(heads, tmp_path, capsys, "--encoder_weights", str(shaped))
    assert "features.0.0.weight has shape (8, 3, 3, 3)" in err


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--train_parts", "decoder+prompt"], "--train_parts: 'decoder+prompt' is not one of"),
        (["--encoder", "mobilenet_v3"], "--encoder: 'mobilenet_v3' is not one of"),
        (["--resolution", "100"], "--resolution: must be a positive multiple of 32"),
        (["--encoder_weights", "nowhere.pth"], "--encoder_weights: nowhere.pth not found"),
    ],
)
def test_bad_flags_exit_2_with_one_line(heads, tmp_path, capsys, extra, needle):
    assert needle in _recipe_error(heads, tmp_path, capsys, *extra)


# ----------------------------------------------------------------------------- evaluation


def test_evaluate_segmentation_takes_a_unet_folder(trained, heads, tmp_path, capsys):
    out = tmp_path / "eval"
    argv = [
        "evaluate",
        "segmentation",
        "--model",
        str(trained.output_dir),
        "--data",
        f"{heads}:test",
    ]
    assert main([*argv, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "no box prompt: Dice" in printed and "box jitter" not in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["segmenter"] == "unet" and summary["prompt"].startswith("none")
    assert summary["model_type"] == "mobilenet_v2" and summary["n_images"] == 3
    rows = _csv(out / "per_image.csv")
    assert len(rows) == 3 and all(r["box"] == "" for r in rows)
    assert 0 <= summary["by_jitter"]["0"]["dice"]["mean"] <= 1
    assert (out / "overlays" / "worst.png").is_file() and (out / "boxplot.png").is_file()
    from fusynth.core.io import file_sha256

    assert summary["model_sha256"] == file_sha256(trained.output_dir / "model.safetensors")
    # Box jitter and SAM's cache mean nothing to a U-Net: one line, exit 2.
    for extra, needle in (
        (["--box_jitter", "0,10"], "takes no box prompt"),
        (["--embedding_cache", str(tmp_path / "c")], "--embedding_cache: applies to SAM only"),
    ):
        assert main([*argv, "--out", str(tmp_path / "bad"), *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0]
    assert not (tmp_path / "bad").exists()


def test_predictions_match_the_model_at_native_resolution(trained, heads):
    """The native mask is the model's output on the letterboxed image, cropped and resized."""
    import numpy as np

    from fusynth.segment.data import load_seg_set, sam_input
    from fusynth.segment.evaluate import predict_unet_masks
    from fusynth.segment.unet import to_batch

    model, _ = load_unet(trained.output_dir)
    samples = load_seg_set(f"{heads}:test", "t").samples
    preds = list(predict_unet_masks(model, samples, 64, "cpu"))
    assert [p.mask.shape for p in preds] == [s.image.shape for s in samples]
    x = sam_input(samples[0], 64)
    with torch.no_grad():
        logits = model(to_batch([x.image], 64))[0, 0]
    nh, nw = x.image.shape[:2]
    small = logits[:nh, :nw] > 0
    native = torch.nn.functional.interpolate(
        logits[None, None, :nh, :nw], samples[0].image.shape, mode="bilinear"
    )[0, 0]
    assert np.array_equal(preds[0].mask, (native > 0).numpy())
    assert small.float().mean().item() == pytest.approx(preds[0].mask.mean(), abs=0.05)


# ----------------------------------------------------------------------------- seg-augment

FAST = ["--max_train_steps", "2", "--train_batch_size", "2", "--resolution", "64"]


def _augment(real, synthetic, out, *extra):
    return main(
        ["experiment", "seg-augment", "--segmenter", "unet", "--real", str(real), "--test", str(real),
         "--synthetic", str(synthetic), "--n_real", "2", "--n_synthetic", "0,4", "--repeats", "1",
         "--out", str(out), *FAST, *extra]
    )  # fmt: skip


def test_seg_augment_trains_unets_and_names_the_segmenter(heads, pairs, tmp_path, capsys):
    out = tmp_path / "exp"
    assert _augment(heads, pairs, out, "--train_parts", "decoder") == 0
    printed = capsys.readouterr().out
    assert "Segmenter: U-Net (mobilenet_v2, decoder)" in printed
    results = _csv(out / "results.csv")
    assert [(r["n_real"], r["n_synthetic"]) for r in results] == [("2", "0"), ("2", "4")]
    assert len({r["seed"] for r in results}) == 1  # both arms share the seed
    table = _csv(out / "table.csv")
    assert {r["segmenter"] for r in table} == {"U-Net (mobilenet_v2, decoder)"}
    assert (out / "dice_vs_real.png").is_file()
    configs = [
        json.loads((out / "cells" / c / "model" / "config.json").read_text())
        for c in ("k2-m0-r0", "k2-m4-r0")
    ]
    assert all(c["segmenter"] == "unet" and c["train_parts"] == "decoder" for c in configs)
    assert [c["num_synthetic"] for c in configs] == [0, 4]
    # Same real images, same order: the real-only arm's real keys are the mixed arm's.
    assert configs[0]["num_real"] == configs[1]["num_real"] == 2
    summary = json.loads(
        (out / "cells" / "k2-m4-r0" / "eval-heads-test" / "summary.json").read_text()
    )
    assert summary["segmenter"] == "unet" and summary["n_images"] == 3
    request = json.loads((out / "experiment.json").read_text())
    assert request["segmenter"] == "unet" and "box_jitter" not in request


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--model_type", "vit_b"], "--model_type: applies to --segmenter sam only"),
        (["--train_parts", "decoder+prompt"], "--train_parts: 'decoder+prompt' is not one of"),
        (["--segmenter", "vnet"], "invalid choice"),
    ],
)
def test_seg_augment_refuses_settings_of_the_other_segmenter(
    heads, pairs, tmp_path, capsys, extra, needle
):
    assert _augment(heads, pairs, tmp_path / "e", *extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert needle in err[-1]
    assert not (tmp_path / "e" / "cells").exists()


def test_seg_augment_checks_the_encoder_file_before_training(heads, pairs, tmp_path, capsys):
    import torchvision

    bad = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), bad)
    assert _augment(heads, pairs, tmp_path / "e", "--encoder_weights", str(bad)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not fit the mobilenet_v2 encoder" in err[0]
    assert not (tmp_path / "e" / "cells").exists()
    # SAM's experiment refuses U-Net flags.
    code = main(["experiment", "seg-augment", "--real", str(heads), "--test", str(heads),
                 "--out", str(tmp_path / "s"), "--n_real", "2", "--n_synthetic", "0", "--encoder", "resnet18"])  # fmt: skip
    assert code == 2 and "--encoder: applies to --segmenter unet only" in capsys.readouterr().err


# ----------------------------------------------------------------------------- HC18


@requires_shared_data
def test_on_the_hc18_sample_it_trains_resumes_evaluates_and_runs_in_seg_augment(tmp_path):
    hc18 = tmp_path / "hc18"
    assert main(["data", "prepare", "--format", "hc18", str(SHARED_DATA / "hc18"), str(hc18)]) == 0
    kw = dict(max_train_steps=4, checkpointing_steps=2, train_parts="encoder-last-1+decoder")
    straight = train_unet(_config(hc18, tmp_path / "s", **kw))
    train_unet(_config(hc18, tmp_path / "r", **{**kw, "max_train_steps": 2}))
    resumed = train_unet(_config(hc18, tmp_path / "r", **kw, resume_from_checkpoint="latest"))
    a = load_file(str(straight.output_dir / "model.safetensors"))
    b = load_file(str(resumed.output_dir / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    out = tmp_path / "exp"
    code = main(
        ["experiment", "seg-augment", "--segmenter", "unet", "--real", str(hc18), "--test", str(hc18),
         "--n_real", "2,4", "--n_synthetic", "0", "--repeats", "1", "--out", str(out), *FAST]
    )  # fmt: skip
    assert code == 0
    assert "| hc18:test | real | 4 | 0 |" in (out / "table.md").read_text()
    summary = json.loads(
        (out / "cells" / "k4-m0-r0" / "eval-hc18-test" / "summary.json").read_text()
    )
    assert summary["n_images"] == 12 and summary["segmenter"] == "unet"
    stats = summary["by_jitter"]["0"]
    assert stats["dice"]["n"] == 12 and 0 <= stats["dice"]["mean"] <= 1
    assert {"hd95_px", "assd_px", "hc_px"} <= set(stats)


def test_frozen_parts_stay_in_eval_mode():
    model = build_unet("efficientnet-b0")
    set_train_parts(model, "encoder-last-1+decoder")
    from fusynth.segment.unet import train_mode

    train_mode(model)
    first, last = encoder_stages(model)[0], encoder_stages(model)[-1]
    assert not any(m.training for m in first)  # frozen stem: fixed statistics, no drop-connect
    assert all(m.training for m in last) and model.decoder.training


def test_overwrite_swaps_the_new_run_in_only_when_complete(heads, tmp_path):
    """``--overwrite_output_dir`` trains beside the old run and takes its place at the end,
    as every recipe does (no ``.NAME.fusynth-new`` is left behind)."""
    out = tmp_path / "run"
    first = train_unet(_config(heads, out, max_train_steps=1, resolution=32))
    assert first.output_dir == out
    second = train_unet(
        _config(heads, out, max_train_steps=2, resolution=32, overwrite_output_dir=True)
    )
    assert second.output_dir == out
    assert json.loads((out / "train_log.json").read_text())["global_step"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
