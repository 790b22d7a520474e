"""Command-line code of CLIP fine-tuning's commands: ``fusynth experiment clip-augment``
and the ``--linear-probe`` mode of ``fusynth evaluate classification``."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

# ----------------------------------------------------------------------------- linear probe


def add_linear_probe_flags(
    p: argparse.ArgumentParser, classifier: Callable[[argparse.Namespace], int]
) -> None:
    """Add ``--linear-probe`` and its flags to ``fusynth evaluate classification``;
    without ``--linear-probe`` the command runs ``classifier`` as before."""
    p.add_argument(
        "--linear-probe",
        "--linear_probe",
        dest="linear_probe",
        action="store_true",
        help="fit a linear probe on CLIP image features of --train and evaluate it: --model "
        "is then an open_clip model name or a recipes/train_clip.py folder",
    )
    p.add_argument("--train", help="with --linear-probe: labelled images DIR[:split] to fit on")
    p.add_argument("--pretrained", help="with --linear-probe: open_clip tag or weights file")
    p.add_argument(
        "--probe_l2", type=float, default=1e-3, help="with --linear-probe: L2 penalty (1e-3)"
    )
    p.set_defaults(func=lambda args: _classification_or_probe(args, classifier))


def _classification_or_probe(
    args: argparse.Namespace, classifier: Callable[[argparse.Namespace], int]
) -> int:
    from fusynth.classify.cli import _report_kwargs, print_summary
    from fusynth.errors import UserInputError

    if not args.linear_probe:
        for flag in ("train", "pretrained"):
            if getattr(args, flag) is not None:
                raise UserInputError(f"--{flag}: only with --linear-probe")
        return classifier(args)
    if args.train is None:
        raise UserInputError("--linear-probe: needs --train DIR[:split] to fit the probe on")
    from fusynth.classify.probe import evaluate_linear_probe

    report = evaluate_linear_probe(
        args.model, args.pretrained, args.train, args.data, args.out, l2=args.probe_l2,
        **_report_kwargs(args),
    )  # fmt: skip
    if report["setup"]["smoke_model"]:
        print(f"note: {report['setup']['model']} is random-init: these numbers are a smoke test")
    print_summary(report)
    return 0


# ----------------------------------------------------------------------------- experiment


def _experiment_clip_augment(args: argparse.Namespace) -> int:
    from fusynth.classify.clip_experiment import TRAIN_KEYS, ClipAugmentConfig, clip_augment
    from fusynth.cli import _experiment_kwargs, _report_experiment
    from fusynth.data.views import parse_view_list
    from fusynth.recipes import quiet_libraries

    quiet_libraries()
    extra = ("model", "pretrained", "prompts", "synthetic_ratio", "n_boot")
    config = ClipAugmentConfig(
        views=parse_view_list(args.views, "--views"),
        caption_template=args.caption_template,
        **{k: getattr(args, k) for k in extra if getattr(args, k) is not None},
        **_experiment_kwargs(args, TRAIN_KEYS),
    )
    return _report_experiment(clip_augment(config), "results, tables and paired differences")


def add_experiment_clip_augment_parser(
    subparsers: Any, add_experiment_flags: Callable[..., None]
) -> argparse.ArgumentParser:
    """Register ``clip-augment`` under ``fusynth experiment`` (``add_experiment_flags``
    adds the flags every experiment shares)."""
    from fusynth.classify.clip_train import CONTRASTIVE, TRAIN_MODES

    p = subparsers.add_parser(
        "clip-augment",
        help="zero-shot CLIP tuned on real pairs against real + synthetic pairs",
    )
    add_experiment_flags(
        p,
        real="prepared dataset: its train split gives the real pairs",
        test="comma-separated held-out test sets DIR[:split] (split: test), scored zero-shot",
        synthetic="cohort whose samples carry their prompts (required)",
    )
    p.add_argument(
        "--synthetic_ratio", type=float, help="synthetic images per real image of a view (all)"
    )
    p.add_argument("--views", help="comma-separated views (those of every test set)")
    p.add_argument("--model", help="open_clip model (fusynth-tiny-clip, a smoke model)")
    p.add_argument("--pretrained", help="open_clip tag or weights file (random init)")
    p.add_argument(
        "--caption_template",
        action="append",
        help="real captions over schema columns; repeat for several (each view's zero-shot "
        "prompts)",
    )
    p.add_argument("--prompts", help="zero-shot prompts YAML view: [prompts] (built-in)")
    p.add_argument("--train_mode", choices=TRAIN_MODES, help="lit, lora or full (lit)")
    p.add_argument("--contrastive", choices=CONTRASTIVE, help="views or pairs (views)")
    p.add_argument("--learning_rate", type=float, help="(1e-4)")
    p.add_argument("--train_batch_size", type=int, help="(32)")
    p.add_argument("--num_train_epochs", type=int, help="epochs per arm (10)")
    p.add_argument("--max_train_steps", type=int, help="steps per arm (overrides epochs)")
    p.add_argument(
        "--no_augment",
        dest="augment",
        action="store_false",
        default=None,
        help="train without augmentation",
    )
    p.add_argument("--mixed_precision", help="no, fp16 or bf16 (no)")
    p.add_argument(
        "--n_boot", type=int, help="bootstrap resamples of subjects for the intervals (1000)"
    )
    p.set_defaults(func=_experiment_clip_augment)
    return p
