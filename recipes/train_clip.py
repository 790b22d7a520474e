"""Fine-tune an open_clip model contrastively on real and synthetic image-text pairs.

Real images are captioned from templates over their schema columns (by default each
view's zero-shot prompts), synthetic ones with the prompt they were generated from; for
example, the FU-LoRA setting with a real CLIP:

    accelerate launch recipes/train_clip.py --model ViT-B-32 \
        --pretrained laion2b_s34b_b79k --train fpdb-prepared:train \
        --views abdomen,brain,femur,thorax --synthetic text2img-cohort \
        --synthetic_ratio 10 --train_mode lit --output_dir clip-fpdb-synth

``--config FILE.yaml`` sets any flag and flags override it. With no ``--pretrained`` the
model is random-init; with no ``--train`` the built-in phantom is used (smoke runs).
The output folder loads with stock open_clip (``local-dir:OUT``). The loop is
``fusynth.classify.clip_train.train_clip``.
"""

from __future__ import annotations

import argparse
import sys

from fusynth.cli.recipe import add_run_flags, recipe_parser, run_training_recipe


def build_parser() -> argparse.ArgumentParser:
    """The recipe's flags (defaults live in ``ClipTrainConfig``)."""
    from fusynth.classify.clip_model import CONTRASTIVE, TRAIN_MODES
    from fusynth.core.loop import LR_SCHEDULERS, MIXED_PRECISION

    p = recipe_parser("train_clip.py", __doc__)
    g = p.add_argument_group("model")
    g.add_argument(
        "--model",
        help="open_clip model name (ViT-B-32, ...), local-dir:PATH or hf-hub:ORG/REPO "
        "(fusynth-tiny-clip, a random-init smoke model)",
    )
    g.add_argument(
        "--pretrained",
        help="open_clip pretrained tag or local weights file (default: random init)",
    )
    g.add_argument("--train_mode", choices=TRAIN_MODES, help="lit, lora or full (lit)")
    g.add_argument("--rank", type=int, help="LoRA rank with --train_mode lora (8)")
    g = p.add_argument_group("data")
    g.add_argument("--train", help="real training data DIR[:split] (default: the phantom)")
    g.add_argument("--synthetic", help="a cohort whose samples carry their prompts")
    g.add_argument(
        "--synthetic_ratio",
        type=float,
        help="synthetic images per real image of each view (all of the cohort's)",
    )
    g.add_argument("--views", help="comma-separated views to train (all views of --train)")
    g.add_argument(
        "--caption_template",
        action="append",
        help="caption template over schema columns, e.g. 'an ultrasound image of the fetal "
        "{view}'; repeat for several (one drawn per step), or one YAML file view: [templates] "
        "(each view's zero-shot prompts)",
    )
    g.add_argument(
        "--augment",
        dest="augment",
        action="store_const",
        const=True,
        help="rotation/scale/shift, horizontal flip, gain and gamma (on)",
    )
    g.add_argument(
        "--no_augment", dest="augment", action="store_const", const=False, help="no augmentation"
    )
    g = p.add_argument_group("optimisation")
    g.add_argument(
        "--contrastive",
        choices=CONTRASTIVE,
        help="views: captions of the image's view are positives; pairs: plain CLIP (views)",
    )
    g.add_argument("--learning_rate", type=float, help="AdamW (1e-4)")
    g.add_argument("--weight_decay", type=float, help="(0.1)")
    g.add_argument("--lr_scheduler", choices=LR_SCHEDULERS, help="(constant)")
    g.add_argument("--lr_warmup_steps", type=int, help="(0)")
    g.add_argument("--train_batch_size", type=int, help="pairs per process and step (32)")
    g.add_argument("--num_train_epochs", type=int, help="(10)")
    g.add_argument("--max_train_steps", type=int, help="optimizer steps (overrides epochs)")
    g.add_argument("--mixed_precision", choices=MIXED_PRECISION, help="(no)")
    g.add_argument("--seed", type=int, help="LoRA init, data choice, order, augmentation (0)")
    g = p.add_argument_group("checkpoints, output")
    add_run_flags(g, "fusynth-clip")
    p.add_argument("--debug", action="store_true", help="tracebacks on errors")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the recipe; returns the exit status."""
    from fusynth.classify.clip_train import ClipTrainConfig, train_clip

    return run_training_recipe(build_parser(), ClipTrainConfig, train_clip, "CLIP model", argv)


if __name__ == "__main__":
    sys.exit(main())
