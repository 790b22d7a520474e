"""Fine-tune segment-anything on fetal head masks with box prompts.

    accelerate launch recipes/finetune_sam.py \
        --checkpoint sam_vit_b_01ec64.pth --train hc18-prepared:train \
        --synthetic pairs-cohort --n_real 5 --n_synthetic 500 --output_dir sam-5r500s

``--config FILE.yaml`` sets any flag and flags override it. With no ``--checkpoint`` a
random-init SAM of ``--model_type`` (``tiny`` by default) is used, for smoke runs; with
no ``--train`` the built-in phantom. The loop is ``fusynth.segment.finetune.finetune_sam``.
"""

from __future__ import annotations

import argparse
import sys

from fusynth.cli.recipe import (
    add_run_flags,
    add_segmentation_data_flags,
    recipe_parser,
    run_training_recipe,
)


def build_parser() -> argparse.ArgumentParser:
    """The recipe's flags (defaults live in ``SamFinetuneConfig``)."""
    from fusynth.core.loop import LR_SCHEDULERS, MIXED_PRECISION
    from fusynth.segment.finetune import LOSSES, TRAIN_PARTS
    from fusynth.segment.sam import SAM_CONFIGS

    p = recipe_parser("finetune_sam.py", __doc__)
    g = p.add_argument_group("model")
    g.add_argument(
        "--model_type",
        choices=tuple(SAM_CONFIGS),
        help="SAM size (read from --checkpoint's weights; without one: tiny, a smoke model)",
    )
    g.add_argument(
        "--checkpoint",
        help="official or MedSAM .pth, a .safetensors state dict, a fusynth SAM folder or a "
        "transformers SAM folder (default: random init)",
    )
    g.add_argument(
        "--preprocess",
        choices=("sam", "medsam"),
        help="input preprocessing (the checkpoint's own; MedSAM weights: medsam; else sam)",
    )
    g.add_argument("--train_parts", choices=TRAIN_PARTS, help="what trains (decoder)")
    g.add_argument(
        "--encoder_lora_rank",
        type=int,
        help="peft LoRA of this rank on the encoder attention (0: off)",
    )
    g.add_argument(
        "--gradient_checkpointing",
        action="store_true",
        help="recompute encoder block activations in backward (--train_parts all or "
        "--encoder_lora_rank): far less memory, one more encoder forward",
    )
    g = p.add_argument_group("data")
    add_segmentation_data_flags(g)
    g.add_argument(
        "--box_jitter", type=int, help="move each box edge by up to this many native pixels (10)"
    )
    g = p.add_argument_group("optimisation")
    g.add_argument("--loss", choices=LOSSES, help="(dice+bce)")
    g.add_argument("--train_batch_size", type=int, help="per-process batch size (4)")
    g.add_argument("--gradient_accumulation_steps", type=int, help="(1)")
    g.add_argument("--num_train_epochs", type=int, help="(20)")
    g.add_argument("--max_train_steps", type=int, help="optimizer steps (overrides epochs)")
    g.add_argument(
        "--learning_rate",
        type=float,
        help="AdamW learning rate (1e-4 with --checkpoint, 1e-3 from random init)",
    )
    g.add_argument("--weight_decay", type=float, help="(0.0)")
    g.add_argument("--lr_scheduler", choices=LR_SCHEDULERS, help="(constant)")
    g.add_argument("--lr_warmup_steps", type=int, help="(0)")
    g.add_argument("--max_grad_norm", type=float, help="gradient clipping (1.0)")
    g.add_argument(
        "--mixed_precision",
        choices=MIXED_PRECISION,
        help="(accelerate launch's --mixed_precision or config, else no)",
    )
    g.add_argument("--seed", type=int, help="data choice, order and box jitter (0)")
    g = p.add_argument_group("cache, checkpoints, output")
    g.add_argument(
        "--embedding_cache",
        help="folder of cached image embeddings ($FUSYNTH_CACHE/sam_embeddings)",
    )
    g.add_argument(
        "--no_embedding_cache", action="store_true", help="keep embeddings in memory only"
    )
    add_run_flags(g, "fusynth-sam")
    p.add_argument("--debug", action="store_true", help="tracebacks on errors")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the recipe; returns the exit status."""
    from fusynth.segment.finetune import SamFinetuneConfig, finetune_sam

    return run_training_recipe(build_parser(), SamFinetuneConfig, finetune_sam, "model", argv)


if __name__ == "__main__":
    sys.exit(main())
