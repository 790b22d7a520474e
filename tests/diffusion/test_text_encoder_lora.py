"""``--train_text_encoder`` end to end: the text encoder's LoRA trains, saves, reloads and
generates with the installed transformers and peft (their versions are pinned together)."""

from __future__ import annotations

import torch
from safetensors.torch import load_file

from tests.conftest import run_recipe


def test_train_text_encoder_trains_saves_and_generates(tiny_base, phantom_prepared, tmp_path):
    from fusynth.diffusion.base import resolve_base
    from fusynth.diffusion.pipelines import load_pipeline

    out = tmp_path / "lora"
    argv = [
        "--pretrained_model_name_or_path",
        str(tiny_base),
        "--train_data",
        str(phantom_prepared),
    ]
    argv += ["--output_dir", str(out), "--resolution", "32", "--max_train_steps", "2"]
    argv += ["--views", "head", "--learning_rate", "1e-2", "--train_text_encoder"]
    assert run_recipe("train_lora", *argv) == 0
    sd = load_file(str(out / "pytorch_lora_weights.safetensors"))
    te = {k: v for k, v in sd.items() if k.startswith("text_encoder.")}
    assert te, "no text-encoder LoRA tensors saved"
    # trained: the up factors start at zero and two steps at lr 1e-2 move them
    ups = [v for k, v in te.items() if "up" in k or "lora_B" in k]
    assert ups and any(v.abs().sum() > 0 for v in ups)
    assert (out / "text_encoder_peft" / "adapter_config.json").is_file()

    pipe = load_pipeline(resolve_base(str(tiny_base)), "euler", out, 1.0)
    lora_layers = [n for n, _ in pipe.text_encoder.named_modules() if n.endswith("lora_A")]
    assert lora_layers, "the text-encoder LoRA was not loaded"
    g = torch.Generator().manual_seed(0)
    image = pipe(
        "a fetal head", num_inference_steps=2, height=32, width=32, generator=g, output_type="np"
    ).images[0]
    assert image.shape == (32, 32, 3)
