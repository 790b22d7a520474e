"""Train a fetal view classifier on real images, optionally with synthetic ones.

The backbone is a torchvision model or an open_clip image tower; for example:

    accelerate launch recipes/train_classifier.py --backbone resnet18 \
        --train fpdb-prepared:train --synthetic text2img-cohort \
        --n_real_per_view 50 --n_synthetic_per_view 500 \
        --config recipes/configs/fulora_classifier.yaml --output_dir clf-50r500s

``--config FILE.yaml`` sets any flag and flags override it. With no ``--weights`` the
backbone is random-init; with no ``--train`` the built-in phantom is used (smoke runs).
Validation is the ``--train`` folder's validation split unless ``--validation`` says
otherwise; the output model is the best one on it. The loop is
``fusynth.classify.train.train_classifier``.
"""

from __future__ import annotations

import argparse
import sys

from fusynth.cli.recipe import add_run_flags, recipe_parser, run_training_recipe


def build_parser() -> argparse.ArgumentParser:
    """The recipe's flags (defaults live in ``ClassifierTrainConfig``)."""
    from fusynth.classify.config import BEST_METRICS, OPTIMIZERS
    from fusynth.core.loop import LR_SCHEDULERS, MIXED_PRECISION

    p = recipe_parser("train_classifier.py", __doc__)
    g = p.add_argument_group("model")
    g.add_argument(
        "--backbone",
        help="resnet18, vit_b_16, efficientnet_b0 (torchvision) or clip:NAME (an open_clip "
        "image tower + linear head; clip:fusynth-tiny-clip is the smoke model) (resnet18)",
    )
    g.add_argument(
        "--weights",
        help="initial weights: a torchvision state dict (.pth/.safetensors; the head is "
        "replaced when its class count differs) or, for clip:, an open_clip file or tag "
        "(default: random init)",
    )
    g.add_argument(
        "--resolution",
        type=int,
        help="input side in pixels, images padded to square (224; clip: the model's size)",
    )
    g = p.add_argument_group("data")
    g.add_argument("--train", help="real training data DIR[:split] (default: the phantom)")
    g.add_argument(
        "--validation",
        help="real, patient-disjoint validation DIR[:split], or none "
        "(default: the --train folder's validation split)",
    )
    g.add_argument("--synthetic", help="a synthetic cohort (e.g. fusynth generate text2img) to add")
    g.add_argument(
        "--n_real_per_view",
        type=int,
        help="real images per view, chosen subject by subject with --seed (all)",
    )
    g.add_argument(
        "--n_synthetic_per_view",
        type=int,
        help="synthetic images per view from --synthetic (all)",
    )
    g.add_argument("--views", help="comma-separated views to classify (all views of --train)")
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
    g.add_argument("--optimizer", choices=OPTIMIZERS, help="(adamw)")
    g.add_argument(
        "--learning_rate",
        type=float,
        help="(1e-3; 1e-4 for adamw with --weights)",
    )
    g.add_argument("--momentum", type=float, help="SGD momentum (0.9)")
    g.add_argument("--weight_decay", type=float, help="(0.0)")
    g.add_argument("--lr_scheduler", choices=LR_SCHEDULERS, help="(constant)")
    g.add_argument("--lr_warmup_steps", type=int, help="(0)")
    g.add_argument("--train_batch_size", type=int, help="per-process batch size (16)")
    g.add_argument("--gradient_accumulation_steps", type=int, help="(1)")
    g.add_argument("--num_train_epochs", type=int, help="(10)")
    g.add_argument("--max_train_steps", type=int, help="optimizer steps (overrides epochs)")
    g.add_argument(
        "--validation_epochs", type=int, help="validate every N epochs and at the end (1)"
    )
    g.add_argument(
        "--best_metric",
        choices=BEST_METRICS,
        help="validation metric that picks the model (macro_f1)",
    )
    g.add_argument(
        "--mixed_precision",
        choices=MIXED_PRECISION,
        help="(accelerate launch's --mixed_precision or config, else no)",
    )
    g.add_argument("--seed", type=int, help="initialisation, data choice, order, augmentation (0)")
    g = p.add_argument_group("checkpoints, output")
    add_run_flags(g, "fusynth-classifier")
    p.add_argument("--debug", action="store_true", help="tracebacks on errors")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the recipe; returns the exit status."""
    from fusynth.classify.config import ClassifierTrainConfig
    from fusynth.classify.train import train_classifier

    return run_training_recipe(
        build_parser(), ClassifierTrainConfig, train_classifier, "classifier", argv
    )


if __name__ == "__main__":
    sys.exit(main())
