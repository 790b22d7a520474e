"""LoRA fine-tuning of a Stable-Diffusion-family model on fetal ultrasound.

    accelerate launch recipes/train_lora.py --train_data prepared/ --views brain,femur \
        --max_train_steps 1000 --output_dir my-lora

Flags use diffusers' names; ``--config FILE.yaml`` sets any of them and flags override
it. With no ``--pretrained_model_name_or_path`` a tiny smoke base is used, and with no
``--train_data`` the built-in phantom. The loop is ``fusynth.diffusion.lora.train_lora``.
"""

from __future__ import annotations

import argparse
import sys

from fusynth.cli.recipe import add_common_flags, recipe_parser, run_training_recipe
from fusynth.diffusion.lora import LORA_TARGETS


def build_parser() -> argparse.ArgumentParser:
    """The recipe's flags (defaults live in ``LoraTrainConfig``)."""
    p = recipe_parser("train_lora.py", __doc__)
    add_common_flags(p, default_lr="1e-4", default_output="fusynth-lora")
    g = p.add_argument_group("lora")
    g.add_argument("--rank", type=int, help="LoRA rank (4)")
    g.add_argument("--lora_alpha", type=float, help="LoRA alpha (= rank)")
    g.add_argument("--lora_dropout", type=float, help="(0.0)")
    g.add_argument(
        "--train_text_encoder", action="store_true", help="also train a text encoder LoRA"
    )
    g.add_argument(
        "--lora_targets",
        choices=LORA_TARGETS,
        help="attention only; + the transformer blocks' proj_in/proj_out/ff; all: + the text "
        "encoder MLP with --train_text_encoder (attn)",
    )
    g.add_argument(
        "--text_encoder_lr", type=float, help="text encoder LoRA learning rate (= --learning_rate)"
    )
    g.add_argument(
        "--packing",
        help="pack image and filled mask into the RGB channels, e.g. image,image,mask (needs masks)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the recipe; returns the exit status."""
    from fusynth.diffusion.lora import LoraTrainConfig, train_lora

    return run_training_recipe(build_parser(), LoraTrainConfig, train_lora, "adapter", argv)


if __name__ == "__main__":
    sys.exit(main())
