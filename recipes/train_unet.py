"""Train a light U-Net (segmentation_models_pytorch) to segment the fetal head.

    accelerate launch recipes/train_unet.py --encoder mobilenet_v2 \
        --encoder_weights mobilenet_v2-imagenet.pth --train_parts decoder \
        --train hc18-prepared:train --synthetic pairs-cohort --n_real 5 --n_synthetic 500 \
        --output_dir unet-5r500s

``--config FILE.yaml`` sets any flag and flags override it. Nothing is downloaded: the
encoder starts from ``--encoder_weights`` (a local state dict), a ``--checkpoint`` U-Net
folder, or random init; with no ``--train`` the built-in phantom is used. The loop is
``fusynth.segment.unet_train.train_unet``.
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
    """The recipe's flags (defaults live in ``UnetTrainConfig``)."""
    from fusynth.core.loop import LR_SCHEDULERS, MIXED_PRECISION
    from fusynth.segment.finetune import LOSSES
    from fusynth.segment.unet import ENCODERS, TRAIN_PARTS_FORMS

    p = recipe_parser("train_unet.py", __doc__)
    g = p.add_argument_group("model")
    g.add_argument("--encoder", help=f"{', '.join(ENCODERS)} (mobilenet_v2)")
    g.add_argument(
        "--encoder_weights",
        help="local encoder state dict (.pth/.safetensors; ImageNet or any) (random init)",
    )
    g.add_argument("--checkpoint", help="a train_unet output folder to start from")
    g.add_argument(
        "--train_parts",
        help=f"what trains: {', '.join(TRAIN_PARTS_FORMS)}, K = 1..5 (all)",
    )
    g.add_argument("--resolution", type=int, help="input side, a multiple of 32 (256)")
    g.add_argument(
        "--no_hflip", dest="hflip", action="store_false", help="no random left-right flips"
    )
    g = p.add_argument_group("data")
    add_segmentation_data_flags(g)
    g = p.add_argument_group("optimisation")
    g.add_argument("--validation_epochs", type=int, help="validate every N epochs (1)")
    g.add_argument("--loss", choices=LOSSES, help="(dice+bce)")
    g.add_argument("--train_batch_size", type=int, help="per-process batch size (4)")
    g.add_argument("--gradient_accumulation_steps", type=int, help="(1)")
    g.add_argument("--num_train_epochs", type=int, help="(20)")
    g.add_argument("--max_train_steps", type=int, help="optimizer steps (overrides epochs)")
    g.add_argument("--learning_rate", type=float, help="AdamW learning rate (1e-3)")
    g.add_argument("--weight_decay", type=float, help="(0.0)")
    g.add_argument("--lr_scheduler", choices=LR_SCHEDULERS, help="(constant)")
    g.add_argument("--lr_warmup_steps", type=int, help="(0)")
    g.add_argument("--max_grad_norm", type=float, help="gradient clipping (1.0)")
    g.add_argument("--mixed_precision", choices=MIXED_PRECISION, help="(no)")
    g.add_argument("--seed", type=int, help="data choice, order and flips (0)")
    g = p.add_argument_group("checkpoints, output")
    add_run_flags(g, "fusynth-unet")
    p.add_argument("--debug", action="store_true", help="tracebacks on errors")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the recipe; returns the exit status."""
    from fusynth.segment.unet_train import UnetTrainConfig, train_unet

    return run_training_recipe(build_parser(), UnetTrainConfig, train_unet, "model", argv)


if __name__ == "__main__":
    sys.exit(main())
