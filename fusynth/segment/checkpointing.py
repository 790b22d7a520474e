"""Gradient checkpointing of SAM's image encoder blocks.

Training the encoder (``--train_parts all`` or ``--encoder_lora_rank``) keeps every
block's activations for the backward pass: about 6 GiB per 1024-px ViT-B image. With
checkpointing each block keeps only its input and recomputes the rest during backward,
trading one extra encoder forward for activation memory of one block at a time.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.checkpoint import checkpoint


def checkpoint_encoder_blocks(image_encoder: Any) -> int:
    """Wrap each block of ``image_encoder.blocks`` (segment-anything's ``ImageEncoderViT``)
    so its forward runs under ``torch.utils.checkpoint`` whenever gradients are on.

    The blocks stay where they are (the instance's ``forward`` is replaced), so state
    dict keys, LoRA layers inside the blocks and saving are unaffected. Non-reentrant
    checkpointing: gradients are the same as without it.

    Returns:
        How many blocks were wrapped.
    """
    n = 0
    for block in image_encoder.blocks:
        if getattr(block, "_fusynth_checkpointed", False):
            continue
        block.forward = _checkpointed(block.forward)
        block._fusynth_checkpointed = True
        n += 1
    return n


def _checkpointed(forward: Any) -> Any:
    def run(x: torch.Tensor) -> torch.Tensor:
        # Non-reentrant: works when only the block's weights (not x) need gradients.
        if torch.is_grad_enabled():
            return checkpoint(forward, x, use_reentrant=False)
        return forward(x)

    return run
