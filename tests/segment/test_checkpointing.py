"""Gradient checkpointing of SAM's encoder blocks changes memory, not gradients."""

from __future__ import annotations

import json

import torch

from fusynth.segment.checkpointing import checkpoint_encoder_blocks
from fusynth.segment.sam import build_sam


def _encoder_grads(checkpointed: bool, lora: bool = False) -> dict[str, torch.Tensor]:
    sam = build_sam("tiny", seed=0)
    if lora:
        from fusynth.segment.model import add_encoder_lora

        torch.manual_seed(1)
        add_encoder_lora(sam, 4)
    if checkpointed:
        assert checkpoint_encoder_blocks(sam.image_encoder) == len(sam.image_encoder.blocks)
    size = sam.image_encoder.img_size
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    out = sam.image_encoder(x)
    (out.square().mean()).backward()
    return {
        n: p.grad.clone() for n, p in sam.image_encoder.named_parameters() if p.grad is not None
    }


def test_checkpointed_encoder_gives_the_same_gradients():
    plain, ckpt = _encoder_grads(False), _encoder_grads(True)
    assert plain.keys() == ckpt.keys() and any(k.startswith("blocks.0.") for k in plain)
    for name in plain:
        torch.testing.assert_close(ckpt[name], plain[name], rtol=1e-5, atol=1e-7)


def test_checkpointed_encoder_lora_gives_the_same_gradients():
    plain, ckpt = _encoder_grads(False, lora=True), _encoder_grads(True, lora=True)
    assert plain.keys() == ckpt.keys() and any("lora" in k for k in plain)
    for name in plain:
        torch.testing.assert_close(ckpt[name], plain[name], rtol=1e-5, atol=1e-7)


def test_state_dict_keys_are_unchanged():
    sam = build_sam("tiny", seed=0)
    keys = list(sam.state_dict())
    checkpoint_encoder_blocks(sam.image_encoder)
    assert list(sam.state_dict()) == keys


def test_finetune_all_with_checkpointing_matches_without(tmp_path):
    from safetensors.torch import load_file

    from fusynth.segment.finetune import SamFinetuneConfig, finetune_sam

    weights = []
    for flag in (False, True):
        out = tmp_path / f"ckpt-{flag}"
        finetune_sam(
            SamFinetuneConfig(
                output_dir=str(out),
                train_parts="all",
                gradient_checkpointing=flag,
                max_train_steps=1,
                train_batch_size=2,
                no_embedding_cache=True,
            )
        )
        weights.append(load_file(str(out / "model.safetensors")))
        assert json.loads((out / "config.json").read_text())["gradient_checkpointing"] is flag
    for key in weights[0]:
        torch.testing.assert_close(weights[0][key], weights[1][key], rtol=1e-4, atol=1e-6)
