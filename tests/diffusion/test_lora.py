"""LoRA training recipe at tiny scale: outputs load with stock libraries, resume is exact,
the frozen encoders run once, bad input exits 2."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
sys.path.insert(0, str(RECIPES))

import train_lora  # noqa: E402

from tests.conftest import SHARED_DATA, accelerate_launch, requires_shared_data  # noqa: E402


def _args(base, data, out, *extra):
    return [
        "--pretrained_model_name_or_path",
        str(base),
        "--train_data",
        str(data),
        "--output_dir",
        str(out),
        "--resolution",
        "32",
        "--train_batch_size",
        "2",
        *extra,
    ]


def _unet_out(unet, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 4, 4, 4, generator=g)
    cond = torch.randn(1, 77, unet.config.cross_attention_dim, generator=g)
    with torch.no_grad():
        return unet(x, torch.tensor([500]), cond).sample


@pytest.fixture(scope="module")
def trained(tiny_base, phantom_prepared, tmp_path_factory):
    out = tmp_path_factory.mktemp("lora") / "run"
    rc = train_lora.main(
        _args(
            tiny_base,
            phantom_prepared,
            out,
            "--max_train_steps",
            "4",
            "--rank",
            "4",
            "--lora_alpha",
            "8",
            "--train_text_encoder",
            "--learning_rate",
            "1e-2",
            "--checkpointing_steps",
            "2",
            "--validation_prompt",
            "an ultrasound image of the fetal head",
            "--validation_steps",
            "2",
            "--num_validation_images",
            "2",
            "--validation_inference_steps",
            "2",
            "--report_to",
            "tensorboard",
            "--views",
            "head,femur",
        )
    )
    assert rc == 0
    return out


def test_output_folder_layout(trained):
    names = {p.relative_to(trained).as_posix() for p in trained.rglob("*") if p.is_file()}
    for expected in [
        "pytorch_lora_weights.safetensors",
        "unet_peft/adapter_config.json",
        "unet_peft/adapter_model.safetensors",
        "text_encoder_peft/adapter_config.json",
        "config.json",
        "README.md",
        "checkpoint-2/pytorch_lora_weights.safetensors",
        "checkpoint-4/optimizer.pt",
        "validation/step-000002.png",
        "validation/step-000004.png",
    ]:
        assert expected in names, expected
    assert any(n.startswith("logs/") and "tfevents" in n for n in names)  # tensorboard
    config = json.loads((trained / "config.json").read_text())
    assert config["views"] == ["head", "femur"] and config["lora_alpha"] == 8.0
    assert config["resolution"] == 32 and config["num_train_images"] > 0
    card = (trained / "README.md").read_text()
    assert (
        "Not for clinical use" in card
        and "Smoke model" in card
        and "validation/step-000004.png" in card
    )
    with safe_open(str(trained / "pytorch_lora_weights.safetensors"), "pt") as f:
        meta = json.loads(f.metadata()["lora_adapter_metadata"])
    assert meta["unet.lora_alpha"] == 8.0 and meta["unet.r"] == 4


def test_validation_grid_says_prompt_seed_and_step(trained):
    from PIL import Image

    from fusynth.core.style import png_text

    grid = trained / "validation" / "step-000004.png"
    with Image.open(grid) as im:
        assert im.width >= 2 * 180 and im.height >= 180  # 32-px samples shown enlarged
    text = png_text(grid)
    assert text["Title"] == "lora validation samples at step 4"
    # Two images of the one prompt, seeds 0 and 1 (seed + 1000 * prompt + image).
    assert 'seed 0 "an ultrasound image of the fetal head"' in text["Description"]
    assert 'seed 1 "an ultrasound image of the fetal head"' in text["Description"]


def test_adapter_loads_with_stock_diffusers_and_peft(trained, tiny_base):
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from peft import PeftModel
    from transformers import CLIPTextModel

    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_base))
    base_out = _unet_out(pipe.unet)
    pipe.load_lora_weights(str(trained))
    lora_out = _unet_out(pipe.unet)
    assert not torch.allclose(base_out, lora_out, atol=1e-6)  # the adapter does something

    peft_unet = PeftModel.from_pretrained(
        UNet2DConditionModel.from_pretrained(str(tiny_base), subfolder="unet"),
        str(trained / "unet_peft"),
    )
    assert torch.allclose(_unet_out(peft_unet), lora_out, atol=1e-5)  # same adapter, same scale

    ids = pipe.tokenizer(
        ["fetal head"], padding="max_length", max_length=77, return_tensors="pt"
    ).input_ids
    peft_te = PeftModel.from_pretrained(
        CLIPTextModel.from_pretrained(str(tiny_base), subfolder="text_encoder"),
        str(trained / "text_encoder_peft"),
    )
    with torch.no_grad():
        assert torch.allclose(pipe.text_encoder(ids)[0], peft_te(input_ids=ids)[0], atol=1e-5)


def test_resume_is_exact(tiny_base, phantom_prepared, tmp_path):
    extra = [
        "--max_train_steps",
        "6",
        "--checkpointing_steps",
        "3",
        "--gradient_accumulation_steps",
        "2",
        "--random_flip",
        "--lora_dropout",
        "0.1",
        "--lr_scheduler",
        "linear",
        "--lr_warmup_steps",
        "2",
        "--learning_rate",
        "1e-2",
        "--snr_gamma",
        "5",
        "--noise_offset",
        "0.05",
        "--train_text_encoder",
    ]
    full = tmp_path / "full"
    assert train_lora.main(_args(tiny_base, phantom_prepared, full, *extra)) == 0
    # A run stopped after step 3 has exactly checkpoint-3: resume from a copy of it.
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(full / "checkpoint-3", resumed / "checkpoint-3")
    assert (
        train_lora.main(
            _args(
                tiny_base, phantom_prepared, resumed, *extra, "--resume_from_checkpoint", "latest"
            )
        )
        == 0
    )
    a = load_file(str(full / "pytorch_lora_weights.safetensors"))
    b = load_file(str(resumed / "pytorch_lora_weights.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    c = load_file(str(full / "checkpoint-3" / "pytorch_lora_weights.safetensors"))
    assert any(not torch.equal(a[k], c[k]) for k in a)  # steps 4-6 did change the weights
    # The resumed run's log is the whole run's, not only steps 4-6.
    log = (resumed / "train_log.json").read_text()
    assert log == (full / "train_log.json").read_text()
    assert len(json.loads(log)["losses"]) == 6


def test_frozen_encoders_run_once(tiny_base, phantom_prepared, tmp_path, monkeypatch):
    from diffusers import AutoencoderKL
    from transformers import CLIPTextModel

    encoded = {"images": 0, "texts": 0}
    vae_encode, te_forward = AutoencoderKL.encode, CLIPTextModel.forward

    def count_vae(self, x, *a, **k):
        encoded["images"] += x.shape[0]
        return vae_encode(self, x, *a, **k)

    def count_te(self, input_ids=None, *a, **k):
        encoded["texts"] += input_ids.shape[0]
        return te_forward(self, input_ids, *a, **k)

    monkeypatch.setattr(AutoencoderKL, "encode", count_vae)
    monkeypatch.setattr(CLIPTextModel, "forward", count_te)
    out = tmp_path / "run"
    assert (
        train_lora.main(
            _args(tiny_base, phantom_prepared, out, "--max_train_steps", "8", "--random_flip")
        )
        == 0
    )
    n = json.loads((out / "config.json").read_text())["num_train_images"]
    assert encoded["images"] == 2 * n  # each image and its mirror, once, for 8 steps
    assert encoded["texts"] == 4  # one caption per view


def test_yaml_config_and_flag_override(tiny_base, phantom_prepared, tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        f"rank: 2\nmax_train_steps: 1\nlearning_rate: 0.001\ntrain_data: {phantom_prepared}\n"
    )
    out = tmp_path / "run"
    assert (
        train_lora.main(
            _args(
                tiny_base, phantom_prepared, out, "--config", str(cfg), "--learning_rate", "0.002"
            )
        )
        == 0
    )
    config = json.loads((out / "config.json").read_text())
    assert (
        config["rank"] == 2 and config["learning_rate"] == 0.002 and config["max_train_steps"] == 1
    )


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--resolution", "100"], "--resolution: must be divisible by 8"),
        (["--views", "brian"], "--views: unknown view 'brian' (did you mean 'brain'?)"),
        (["--views", "cervix"], "--views: no 'cervix' samples"),
        (
            ["--resume_from_checkpoint", "latest"],
            "--resume_from_checkpoint latest: no checkpoint-N folder",
        ),
        (["--lr_scheduler", "cosin"], "invalid choice: 'cosin'"),
        (["--mixed_precision", "fp16"], "--mixed_precision fp16 needs a CUDA GPU"),
    ],
)
def test_bad_input_exits_2_with_one_line(
    tiny_base, phantom_prepared, tmp_path, capsys, extra, needle
):
    if "fp16" in extra and torch.cuda.is_available():
        pytest.skip("fp16 is valid on a GPU")
    rc = train_lora.main(
        _args(tiny_base, phantom_prepared, tmp_path / "o", "--max_train_steps", "1", *extra)
    )
    err = capsys.readouterr().err
    assert rc == 2, err
    assert needle in err, err
    assert "Traceback" not in err


def test_base_that_is_not_a_diffusers_folder(phantom_prepared, tmp_path, capsys):
    (tmp_path / "notamodel").mkdir()
    rc = train_lora.main(_args(tmp_path / "notamodel", phantom_prepared, tmp_path / "o"))
    assert rc == 2
    assert "is not a diffusers model folder (no model_index.json)" in capsys.readouterr().err


def test_unknown_yaml_key_is_named(tiny_base, phantom_prepared, tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("learning_rat: 0.1\n")
    assert (
        train_lora.main(_args(tiny_base, phantom_prepared, tmp_path / "o", "--config", str(cfg)))
        == 2
    )
    assert (
        "unknown option 'learning_rat' (did you mean 'learning_rate'?)" in capsys.readouterr().err
    )


def test_existing_run_is_not_overwritten(trained, tiny_base, phantom_prepared, capsys):
    assert (
        train_lora.main(_args(tiny_base, phantom_prepared, trained, "--max_train_steps", "1")) == 2
    )
    assert "already holds a run" in capsys.readouterr().err


def test_two_processes_with_accelerate_launch(tiny_base, phantom_prepared, tmp_path):
    out = tmp_path / "ddp"
    cmd = accelerate_launch(
        2,
        str(RECIPES / "train_lora.py"),
        *_args(tiny_base, phantom_prepared, out, "--max_train_steps", "3"),
    )
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("trained 3 steps") == 1  # one process reports and saves
    config = json.loads((out / "config.json").read_text())
    assert config["num_processes"] == 2
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-3"]
    from diffusers import StableDiffusionPipeline

    StableDiffusionPipeline.from_pretrained(str(tiny_base)).load_lora_weights(str(out))


@requires_shared_data
def test_trains_on_real_fetal_planes_db(tiny_base, tmp_path):
    from diffusers import StableDiffusionPipeline

    from fusynth.data.prepare import prepare

    prepare("fetal_planes_db", SHARED_DATA / "fetal_planes_db", tmp_path / "fpdb")
    out = tmp_path / "lora"
    assert (
        train_lora.main(
            [
                "--pretrained_model_name_or_path",
                str(tiny_base),
                "--train_data",
                f"{tmp_path / 'fpdb'}:train",
                "--views",
                "brain,femur",
                "--resolution",
                "64",
                "--max_train_steps",
                "3",
                "--output_dir",
                str(out),
            ]
        )
        == 0
    )
    config = json.loads((out / "config.json").read_text())
    assert config["views"] == ["brain", "femur"] and config["num_train_images"] >= 20
    StableDiffusionPipeline.from_pretrained(str(tiny_base)).load_lora_weights(str(out))


def test_a_relative_base_folder_is_recorded_as_an_absolute_path(tiny_base, monkeypatch):
    """A relative folder name in a config, card or provenance would read as a hub id."""
    from fusynth.diffusion.base import resolve_base

    monkeypatch.chdir(tiny_base.parent)
    ref = resolve_base(tiny_base.name)
    assert ref.name_or_path == str(tiny_base.resolve())


def test_the_run_config_training_writes_is_what_generation_reads(tiny_lora):
    """Every key TrainedAdapter reads is one the training loop wrote, with its value."""
    import json

    from fusynth.diffusion.config import TrainedAdapter

    cfg = json.loads((tiny_lora / "config.json").read_text())
    assert set(TrainedAdapter.KEYS) - {"packing", "conditioning"} <= set(cfg)
    adapter = TrainedAdapter.read(tiny_lora, "--lora")
    assert adapter.method == cfg["method"] == "lora"
    assert adapter.base == cfg["pretrained_model_name_or_path"]
    assert adapter.resolution == cfg["resolution"]
    assert adapter.captions_by_view == cfg["captions_by_view"] and adapter.first_caption()
    weights = tiny_lora / "pytorch_lora_weights.safetensors"
    assert TrainedAdapter.read(weights, "--lora") == adapter  # a weights file in the folder
