"""SAM as a trainable module: box-prompted forward pass, encoder LoRA, the loss, box jitter."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fusynth.segment.data import (
    SamInput,
)


def add_encoder_lora(sam: Any, rank: int) -> None:
    """peft LoRA on the image encoder's attention (``qkv`` and ``proj``)."""
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=rank, lora_alpha=rank, target_modules=["qkv", "proj"], lora_dropout=0.0)
    sam.image_encoder = get_peft_model(sam.image_encoder, cfg)


def merge_encoder_lora(sam: Any) -> None:
    """Fold the encoder LoRA back into plain weights (a stock SAM state dict)."""
    if hasattr(sam.image_encoder, "merge_and_unload"):  # a peft model
        sam.image_encoder = sam.image_encoder.merge_and_unload()


class BoxPromptedSam(torch.nn.Module):
    """SAM with one box per image: the module that is trained (and wrapped by DDP).

    ``forward`` takes either cached image embeddings or encoder-frame images, and boxes,
    and returns single-mask low-resolution logits ``[B, 1, g*4, g*4]`` and IoU predictions.
    segment-anything's decoder expects one image and several prompts, so images are
    decoded one at a time.
    """

    def __init__(self, sam: Any, train_prompt_encoder: bool) -> None:
        super().__init__()
        self.sam = sam
        self.train_prompt_encoder = train_prompt_encoder

    def forward(
        self,
        boxes: torch.Tensor,
        embeddings: torch.Tensor | None = None,
        images: list[torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        sam = self.sam
        if embeddings is None:
            batch = torch.cat([sam.preprocess(x[None]) for x in images])
            embeddings = sam.image_encoder(batch)
        with torch.set_grad_enabled(self.train_prompt_encoder and torch.is_grad_enabled()):
            sparse, dense = sam.prompt_encoder(points=None, boxes=boxes, masks=None)
        pe = sam.prompt_encoder.get_dense_pe()
        logits, ious = [], []
        for i in range(len(boxes)):
            low, iou = sam.mask_decoder(
                image_embeddings=embeddings[i : i + 1],
                image_pe=pe,
                sparse_prompt_embeddings=sparse[i : i + 1],
                dense_prompt_embeddings=dense[i : i + 1],
                multimask_output=False,
            )
            logits.append(low)
            ious.append(iou)
        return torch.cat(logits), torch.cat(ious)


# ----------------------------------------------------------------------------- loss


def segmentation_loss(
    logits: torch.Tensor, target: torch.Tensor, kind: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss of single-channel logits ``[B, 1, H, W]`` against a 0/1 target.

    ``dice+bce``: soft Dice of the head + binary cross-entropy. ``dice+ce``: the
    two-class form (background, head), Dice averaged over both classes + cross-entropy,
    as MONAI's ``DiceCELoss(softmax=True, to_onehot_y=True)``.

    Returns:
        ``(loss, hard IoU per sample)``.
    """
    target = target.float()
    dims = (1, 2, 3)
    if kind == "dice+bce":
        p = torch.sigmoid(logits)
        dice = 1 - (2 * (p * target).sum(dims) + 1e-5) / (p.sum(dims) + target.sum(dims) + 1e-5)
        loss = dice.mean() + F.binary_cross_entropy_with_logits(logits, target)
    else:
        two = torch.cat([torch.zeros_like(logits), logits], dim=1)  # softmax([0, z]) = sigmoid
        probs = two.softmax(dim=1)
        onehot = torch.cat([1 - target, target], dim=1)
        inter = (probs * onehot).sum((2, 3))
        dice = 1 - (2 * inter + 1e-5) / (probs.sum((2, 3)) + onehot.sum((2, 3)) + 1e-5)
        loss = dice.mean() + F.cross_entropy(two, target[:, 0].long())
    with torch.no_grad():
        pred = logits > 0
        t = target > 0.5
        inter = (pred & t).sum(dims).float()
        union = (pred | t).sum(dims).float()
        iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
    return loss, iou


def jittered_boxes(
    inputs: list[SamInput], jitter_px: int, size: int, gen: torch.Generator
) -> torch.Tensor:
    """Boxes ``[B, 4]`` in the encoder frame, each coordinate moved by up to ``jitter_px``
    native pixels (uniform integers, scaled to the encoder frame), kept inside the image."""
    boxes = torch.from_numpy(np.stack([x.box for x in inputs]))
    if jitter_px:
        offsets = torch.randint(-jitter_px, jitter_px + 1, boxes.shape, generator=gen).float()
        scale = torch.tensor([x.scale for x in inputs])[:, None]
        boxes = boxes + offsets * scale
    limits = torch.tensor([[x.image.shape[1] - 1, x.image.shape[0] - 1] * 2 for x in inputs])
    boxes = torch.minimum(boxes.clamp(min=0), limits.float())
    lo = torch.minimum(boxes[:, :2], boxes[:, 2:])
    hi = torch.maximum(boxes[:, :2], boxes[:, 2:])
    return torch.cat([lo, hi], dim=1)
