"""Train a SimCLR ResNet-18 encoder (random init) on fetal ultrasound images.

    accelerate launch recipes/train_ssl.py --train fpdb-prepared:train \
        --extra cohort --resolution 128 --train_batch_size 256 --num_train_epochs 200 \
        --output_dir ssl-fpdb

``--config FILE.yaml`` sets any flag and flags override it. With no ``--train`` the
built-in phantom. The loop is ``fusynth.ssl.train_ssl``; the encoder it writes is the
``ssl:DIR`` embedder of ``fusynth evaluate clustering``.
"""

from __future__ import annotations

import argparse
import sys

from fusynth.cli.recipe import add_run_flags, recipe_parser, run_training_recipe


def build_parser() -> argparse.ArgumentParser:
    """The recipe's flags (defaults live in ``SslConfig``)."""
    from fusynth.core.loop import LR_SCHEDULERS, MIXED_PRECISION

    p = recipe_parser("train_ssl.py", __doc__)
    g = p.add_argument_group("data")
    g.add_argument(
        "--train", help="prepared dataset or cohort DIR[:split] (default: the phantom's train)"
    )
    g.add_argument("--extra", help="a second dataset or cohort DIR[:split] to add (none)")
    g.add_argument(
        "--resolution", type=int, help="encoder input side in px, at least 32 (64, for CPU)"
    )
    g = p.add_argument_group("SimCLR")
    g.add_argument("--temperature", type=float, help="NT-Xent temperature (0.5)")
    g.add_argument("--projection_dim", type=int, help="projection head output size (128)")
    g = p.add_argument_group("optimisation")
    g.add_argument(
        "--train_batch_size",
        type=int,
        help="images per process and step, each seen as two views (32)",
    )
    g.add_argument("--num_train_epochs", type=int, help="(20)")
    g.add_argument("--max_train_steps", type=int, help="optimizer steps (overrides epochs)")
    g.add_argument("--learning_rate", type=float, help="AdamW learning rate (1e-3)")
    g.add_argument("--weight_decay", type=float, help="AdamW weight decay (1e-4)")
    g.add_argument("--lr_scheduler", choices=LR_SCHEDULERS, help="(cosine)")
    g.add_argument("--lr_warmup_steps", type=int, help="(0)")
    g.add_argument("--max_grad_norm", type=float, help="gradient clipping (1.0)")
    g.add_argument(
        "--mixed_precision",
        choices=MIXED_PRECISION,
        help="(accelerate launch's --mixed_precision or config, else no)",
    )
    g.add_argument("--seed", type=int, help="init, data order and augmentations (0)")
    g = p.add_argument_group("checkpoints, output")
    add_run_flags(g, "fusynth-ssl")
    p.add_argument("--debug", action="store_true", help="tracebacks on errors")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the recipe; returns the exit status."""
    from fusynth.ssl.train import SslConfig, train_ssl

    return run_training_recipe(build_parser(), SslConfig, train_ssl, "encoder", argv)


if __name__ == "__main__":
    sys.exit(main())
