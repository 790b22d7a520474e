"""ControlNet training on fetal head image/mask pairs.

    accelerate launch recipes/train_controlnet.py --train_data hc18_prepared/ \
        --conditioning filled --max_train_steps 1000 --output_dir my-controlnet

Flags are the LoRA recipe's where they apply (diffusers' names; ``--config FILE.yaml``),
plus ``--conditioning filled|distance``, ``--conditioning_scale`` and
``--controlnet_model_name_or_path``. The data must have filled head masks. The loop is
``fusynth.diffusion.training.train`` with ``ControlNetMethod``.
"""

from __future__ import annotations

import argparse
import sys

from fusynth.cli.recipe import add_common_flags, recipe_parser, run_training_recipe
from fusynth.diffusion.controlnet import CONDITIONING


def build_parser() -> argparse.ArgumentParser:
    """The recipe's flags (defaults live in ``ControlNetTrainConfig``)."""
    p = recipe_parser("train_controlnet.py", __doc__)
    add_common_flags(p, default_lr="1e-5", default_output="fusynth-controlnet")
    g = p.add_argument_group("controlnet")
    g.add_argument(
        "--conditioning", choices=CONDITIONING, help="conditioning picture of the mask (filled)"
    )
    g.add_argument(
        "--conditioning_scale", type=float, help="ControlNet strength in validation (1.0)"
    )
    g.add_argument(
        "--controlnet_model_name_or_path", help="start from this ControlNet instead of the UNet"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the recipe; returns the exit status."""
    from fusynth.diffusion.controlnet import ControlNetTrainConfig, train_controlnet

    return run_training_recipe(
        build_parser(), ControlNetTrainConfig, train_controlnet, "controlnet", argv
    )


if __name__ == "__main__":
    sys.exit(main())
