"""The training flags a diffusers user reaches for: LoRA targets, clip skip, prediction
type, validation by epoch, 8-bit Adam, TF32, DataLoader workers, wandb."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
sys.path.insert(0, str(RECIPES))

import train_lora  # noqa: E402


def _args(base, data, out, *extra):
    return [
        "--pretrained_model_name_or_path",
        str(base),
        "--train_data",
        str(data),
        "--views",
        "head",
        "--output_dir",
        str(out),
        "--resolution",
        "32",
        "--train_batch_size",
        "2",
        *extra,
    ]


def test_lora_targets_all_covers_ff_proj_and_text_mlp_and_loads_in_diffusers(
    tiny_base, phantom_prepared, tmp_path
):
    from diffusers import StableDiffusionPipeline

    out = tmp_path / "all"
    rc = train_lora.main(
        _args(
            tiny_base,
            phantom_prepared,
            out,
            "--max_train_steps",
            "1",
            "--lora_targets",
            "all",
            "--train_text_encoder",
            "--learning_rate",
            "1e-2",
        )
    )
    assert rc == 0
    keys = load_file(str(out / "pytorch_lora_weights.safetensors")).keys()
    for part in ("proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "to_q"):
        assert any(k.startswith("unet.") and f".{part}.lora" in k for k in keys), part
    assert any(k.startswith("text_encoder.") and ".mlp.fc1." in k for k in keys)
    assert json.loads((out / "config.json").read_text())["lora_targets"] == "all"
    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_base))
    pipe.load_lora_weights(str(out))  # stock diffusers takes the conv/ff/mlp targets
    assert any("lora" in n and "ff.net.2" in n for n, _ in pipe.unet.named_parameters())


def test_attn_targets_stay_attention_only(tiny_base, phantom_prepared, tmp_path):
    out = tmp_path / "attn"
    assert train_lora.main(_args(tiny_base, phantom_prepared, out, "--max_train_steps", "1")) == 0
    keys = load_file(str(out / "pytorch_lora_weights.safetensors")).keys()
    assert not any("proj_in" in k or ".ff." in k for k in keys)


def test_clip_skip_uses_the_earlier_layer_and_reaches_generation(
    tiny_base, phantom_prepared, tmp_path
):
    from diffusers import StableDiffusionPipeline

    from fusynth.diffusion.config import TrainedAdapter
    from fusynth.diffusion.dataset import text_embeddings, tokenize
    from fusynth.diffusion.pipelines import generate_images

    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_base))
    te = pipe.text_encoder
    ids = tokenize(pipe.tokenizer, ["an ultrasound image of the fetal head"])
    with torch.no_grad():
        ours = text_embeddings(te, ids, clip_skip=1)
        # diffusers' definition: hidden state clip_skip+1 from the end, then the final norm
        expected = te.final_layer_norm(te(ids, output_hidden_states=True).hidden_states[-2])
        plain = text_embeddings(te, ids)
    torch.testing.assert_close(ours, expected)
    assert not torch.allclose(ours, plain)

    out = tmp_path / "skip"
    rc = train_lora.main(
        _args(tiny_base, phantom_prepared, out, "--max_train_steps", "1", "--clip_skip", "1")
    )
    assert rc == 0
    assert TrainedAdapter.read(out, "--lora").clip_skip == 1
    pipe.set_progress_bar_config(disable=True)
    kw = dict(negative_prompt="blurry", steps=2, guidance=3.0, resolution=32)
    skipped = generate_images(pipe, ["fetal head"], [0], clip_skip=1, **kw)[0]
    again = generate_images(pipe, ["fetal head"], [0], clip_skip=1, **kw)[0]
    last = generate_images(pipe, ["fetal head"], [0], **kw)[0]
    assert (skipped == again).all() and not (skipped == last).all()


def test_clip_skip_past_the_text_encoder_is_refused(tiny_base, phantom_prepared, tmp_path, capsys):
    rc = train_lora.main(
        _args(
            tiny_base,
            phantom_prepared,
            tmp_path / "o",
            "--max_train_steps",
            "1",
            "--clip_skip",
            "2",
        )
    )
    err = capsys.readouterr().err
    assert rc == 2 and "--clip_skip: the base's text encoder has 2 layers" in err


def test_prediction_type_sets_the_training_target(tiny_base, phantom_prepared, tmp_path):
    from fusynth.diffusion.config import TrainedAdapter

    losses = {}
    for kind in ("epsilon", "v_prediction"):
        out = tmp_path / kind
        rc = train_lora.main(
            _args(
                tiny_base,
                phantom_prepared,
                out,
                "--max_train_steps",
                "1",
                "--prediction_type",
                kind,
            )
        )
        assert rc == 0
        assert TrainedAdapter.read(out, "--lora").prediction_type == kind
        losses[kind] = json.loads((out / "train_log.json").read_text())["losses"][0]
    # same seed, same noise: only the target differs
    assert losses["epsilon"] != pytest.approx(losses["v_prediction"], rel=1e-3)


def test_validation_epochs(tiny_base, phantom_prepared, tmp_path):
    out = tmp_path / "val"
    rc = train_lora.main(
        _args(
            tiny_base,
            phantom_prepared,
            out,
            "--train_batch_size",
            "64",  # every head frame in one batch: one step per epoch
            "--max_train_steps",
            "3",
            "--validation_epochs",
            "2",
            "--validation_prompt",
            "fetal head",
            "--num_validation_images",
            "1",
            "--validation_inference_steps",
            "1",
        )
    )
    assert rc == 0
    grids = sorted(p.name for p in (out / "validation").glob("*.png"))
    assert grids == ["step-000002.png", "step-000003.png"]  # epoch 2, and the end


def test_dataloader_workers_give_the_same_adapter(tiny_base, phantom_prepared, tmp_path):
    outs = []
    for workers in ("0", "2"):
        out = tmp_path / f"w{workers}"
        extra = ("--max_train_steps", "2", "--dataloader_num_workers", workers, "--random_flip")
        assert train_lora.main(_args(tiny_base, phantom_prepared, out, *extra)) == 0
        outs.append(load_file(str(out / "pytorch_lora_weights.safetensors")))
    for key in outs[0]:
        torch.testing.assert_close(outs[0][key], outs[1][key], rtol=0, atol=0)


def test_allow_tf32_is_accepted(tiny_base, phantom_prepared, tmp_path):
    out = tmp_path / "tf32"
    rc = train_lora.main(
        _args(tiny_base, phantom_prepared, out, "--max_train_steps", "1", "--allow_tf32")
    )
    assert rc == 0 and json.loads((out / "config.json").read_text())["allow_tf32"] is True


@pytest.mark.skipif(
    importlib.util.find_spec("bitsandbytes") is None, reason="bitsandbytes is not installed"
)
def test_8bit_adam_keeps_uint8_moments_and_resumes(tiny_base, phantom_prepared, tmp_path):
    out = tmp_path / "adam8"
    extra = ("--use_8bit_adam", "--max_train_steps", "2", "--checkpointing_steps", "1")
    assert train_lora.main(_args(tiny_base, phantom_prepared, out, *extra)) == 0
    state = torch.load(out / "checkpoint-1" / "optimizer.pt", weights_only=True)["state"]
    # bitsandbytes' packed state, not torch's exp_avg/exp_avg_sq
    assert state and all("exp_avg" not in s and "step" in s for s in state.values())
    # bnb keeps tensors of >= 4096 elements (real LoRA ranks) in 8 bits
    from fusynth.diffusion.lora import LoraTrainConfig
    from fusynth.diffusion.training import make_optimizer

    big = torch.nn.Parameter(torch.randn(128, 64))
    opt = make_optimizer(LoraTrainConfig(use_8bit_adam=True), [{"params": [big], "lr": 1e-3}])
    big.square().sum().backward()
    opt.step()
    assert opt.state[big]["state1"].dtype == torch.uint8
    # resuming restores the 8-bit state into a fresh AdamW8bit
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    import shutil

    shutil.copytree(out / "checkpoint-1", resumed / "checkpoint-1")
    argv = _args(tiny_base, phantom_prepared, resumed, *extra, "--resume_from_checkpoint", "latest")
    assert train_lora.main(argv) == 0
    a = load_file(str(out / "pytorch_lora_weights.safetensors"))
    b = load_file(str(resumed / "pytorch_lora_weights.safetensors"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


@pytest.mark.skipif(
    importlib.util.find_spec("bitsandbytes") is not None, reason="bitsandbytes is installed"
)
def test_8bit_adam_without_bitsandbytes_is_one_line(tiny_base, phantom_prepared, tmp_path, capsys):
    out = tmp_path / "o"
    rc = train_lora.main(_args(tiny_base, phantom_prepared, out, "--use_8bit_adam"))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--use_8bit_adam" in err[0]
    assert "bitsandbytes" in err[0] and not out.exists()


@pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="wandb is installed")
def test_report_to_wandb_without_wandb_is_one_line(tiny_base, phantom_prepared, tmp_path, capsys):
    rc = train_lora.main(_args(tiny_base, phantom_prepared, tmp_path / "o", "--report_to", "wandb"))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--report_to wandb" in err[0]
