"""``fusynth experiment seg-augment|cls-augment|clip-augment``."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from fusynth.cli.args import (
    Parser,
    add_experiment_flags,
    comma_list,
    experiment_kwargs,
    parse_int_list,
    report_experiment,
)

#: Flags of the arms and protocols (fusynth.core.protocols), read when given.
PROTOCOL_KEYS = ("arms", "protocol", "pretrain_steps", "classical_copies", "n_boot")


def add_protocol_flags(p: argparse.ArgumentParser) -> None:
    """``--arms``, ``--protocol``, ``--pretrain_steps``, ``--classical_copies``, ``--n_boot``."""
    from fusynth.core.protocols import ARMS, PROTOCOLS

    p.add_argument(
        "--arms",
        help=f"comma-separated arms among {','.join(ARMS)} (real, and real+synthetic with "
        "synthetic counts); real-only is always run",
    )
    p.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        help="how synthetic arms use the cohort: mix, pretrain-finetune, synthetic-only (mix)",
    )
    p.add_argument(
        "--pretrain_steps",
        type=int,
        help="pretrain-finetune: steps on synthetic data, out of --max_train_steps",
    )
    p.add_argument("--classical_copies", type=int, help="classical augmented copies per image (4)")
    p.add_argument("--n_boot", type=int, help="bootstrap resamples of the paired tests (1000)")
    p.add_argument(
        "--preset",
        help="a published protocol as the request (fulora-2024 for cls-augment, "
        "mask-guided-2024 for seg-augment); flags given override it",
    )


def add_cell_training_flags(
    p: argparse.ArgumentParser,
    learning_rate: str,
    batch_size: int,
    epochs: int,
    per: str = "cell",
    augment: bool = True,
) -> None:
    """The training flags an experiment passes to every cell (defaults None: each
    config resolves its own; the help states them)."""
    p.add_argument("--learning_rate", type=float, help=f"({learning_rate})")
    p.add_argument("--train_batch_size", type=int, help=f"({batch_size})")
    p.add_argument("--num_train_epochs", type=int, help=f"epochs per {per} ({epochs})")
    p.add_argument("--max_train_steps", type=int, help=f"steps per {per} (overrides epochs)")
    if augment:
        p.add_argument(
            "--no_augment",
            dest="augment",
            action="store_false",
            default=None,
            help="train without augmentation",
        )
    p.add_argument("--mixed_precision", help="no, fp16 or bf16 (accelerate's setting, else no)")


class _DefaultStr(str):
    """A default string, told apart from the same text given on the command line."""


class _DefaultInt(int):
    """A default int, told apart from the same number given on the command line."""


class _DefaultFloat(float):
    """A default float, told apart from the same number given on the command line."""


_MARKERS = {str: _DefaultStr, int: _DefaultInt, float: _DefaultFloat}


def _remember_defaults(p: argparse.ArgumentParser) -> None:
    """Mark the parser's defaults, so a preset can tell given flags from defaults (even a
    flag given with its default value, e.g. ``--backbones resnet18``)."""
    defaults = {}
    for a in p._actions:
        marker = _MARKERS.get(type(a.default))
        if marker is not None:
            a.default = marker(a.default)
        defaults[a.dest] = a.default
    p.set_defaults(parser_defaults=defaults)


def _given(args: argparse.Namespace) -> set[str]:
    """The destinations of the flags given on the command line."""
    given = set()
    for dest, default in args.parser_defaults.items():
        value = getattr(args, dest, default)
        if isinstance(default, (_DefaultStr, _DefaultInt, _DefaultFloat)):
            if value is not default:
                given.add(dest)
        elif value != default:
            given.add(dest)
    return given


def _with_preset(args: argparse.Namespace, kwargs: dict[str, Any], command: str) -> dict:
    """``kwargs`` over ``--preset``'s request (flags the user gave win)."""
    from fusynth.core.presets import check_needs, load_preset, merge_preset

    if not args.preset:
        return kwargs
    given = _given(args)
    merged = merge_preset(load_preset(args.preset, command), kwargs, given)
    check_needs(args.preset, command, merged, given)
    merged["preset"] = args.preset
    return merged


def _experiment_seg_augment(args: argparse.Namespace) -> int:
    from fusynth.cli.recipe import quiet_libraries
    from fusynth.segment.experiment import (
        SEG_AUGMENT_KEYS,
        SegAugmentConfig,
        parse_n_real,
        seg_augment,
    )

    quiet_libraries()
    kwargs = dict(
        n_real=parse_n_real(args.n_real),
        n_synthetic=parse_int_list(args.n_synthetic, "--n_synthetic"),
        **experiment_kwargs(args, SEG_AUGMENT_KEYS + PROTOCOL_KEYS),
    )
    config = SegAugmentConfig(**_with_preset(args, kwargs, "seg-augment"))
    return report_experiment(seg_augment(config), "results, tables and charts")


def _experiment_cls_augment(args: argparse.Namespace) -> int:
    from fusynth.classify.experiment import TRAIN_KEYS, ClsAugmentConfig, cls_augment
    from fusynth.cli.recipe import quiet_libraries
    from fusynth.data.views import parse_view_list

    quiet_libraries()
    kwargs = dict(
        backbones=comma_list(args.backbones),
        n_synthetic_per_view=parse_int_list(args.n_synthetic_per_view, "--n_synthetic_per_view"),
        views=parse_view_list(args.views, "--views"),
        **experiment_kwargs(args, TRAIN_KEYS + PROTOCOL_KEYS),
    )
    config = ClsAugmentConfig(**_with_preset(args, kwargs, "cls-augment"))
    return report_experiment(cls_augment(config), "results and tables")


def add_commands(groups: Any) -> None:
    """Add the ``experiment`` command group to the ``fusynth`` parser."""
    exp = groups.add_parser("experiment", help="experiments that train and evaluate")
    exp_cmds = exp.add_subparsers(dest="command", required=True, parser_class=Parser)
    p = exp_cmds.add_parser(
        "seg-augment", help="SAM or U-Net training with K real + M synthetic pairs, every cell"
    )
    add_experiment_flags(
        p,
        real="prepared dataset with masks: its train split is the pool",
        test="comma-separated test sets DIR[:split] (split: test)",
        synthetic="pairs cohort for the synthetic arm",
    )
    p.add_argument("--n_real", default="5,10,20,50", help="real image counts, or all (5,10,20,50)")
    p.add_argument("--n_synthetic", default="0,500", help="synthetic pair counts (0,500)")
    p.add_argument("--model_type", help="SAM size (tiny: random-init smoke model)")
    p.add_argument("--checkpoint", help="official or MedSAM .pth to start every cell from")
    p.add_argument(
        "--train_parts",
        help="SAM: decoder, decoder+prompt or all (decoder); U-Net: as train_unet.py",
    )
    p.add_argument("--encoder_lora_rank", type=int, help="(0: off)")
    p.add_argument("--box_jitter", type=int, help="training box jitter in pixels (10)")
    p.add_argument("--loss", help="dice+bce or dice+ce (dice+bce)")
    add_cell_training_flags(p, "1e-4 with --checkpoint, else 1e-3", 4, 20, augment=False)
    p.add_argument("--embedding_cache", help="image embedding cache folder")
    p.set_defaults(func=_experiment_seg_augment)
    add_seg_augment_segmenter_flags(p)
    add_protocol_flags(p)
    _remember_defaults(p)
    p = exp_cmds.add_parser(
        "cls-augment", help="view classifiers, real-only against real + synthetic, per backbone"
    )
    add_experiment_flags(
        p,
        real="prepared dataset: its train split trains, validation validates",
        test="comma-separated held-out test sets DIR[:split] (split: test)",
        synthetic="text-to-image cohort for the synthetic arm",
    )
    p.add_argument("--backbones", default="resnet18", help="comma-separated backbones (resnet18)")
    p.add_argument(
        "--n_synthetic_per_view", default="0,1000", help="synthetic images per view (0,1000)"
    )
    p.add_argument("--views", help="comma-separated views to classify (all of --real)")
    p.add_argument("--resolution", type=int, help="input side (224; clip: the model's)")
    p.add_argument("--optimizer", help="sgd or adamw (adamw)")
    p.add_argument("--n_real_per_view", type=int, help="real images per view (all)")
    add_cell_training_flags(p, "1e-3", 16, 10)
    add_protocol_flags(p)
    p.set_defaults(func=_experiment_cls_augment)
    _remember_defaults(p)
    add_experiment_clip_augment_parser(exp_cmds, add_experiment_flags)


def _experiment_clip_augment(args: argparse.Namespace) -> int:
    from fusynth.classify.clip_experiment import TRAIN_KEYS, ClipAugmentConfig, clip_augment
    from fusynth.cli.recipe import quiet_libraries
    from fusynth.data.views import parse_view_list

    quiet_libraries()
    extra = ("model", "pretrained", "prompts", "synthetic_ratio", "n_boot")
    config = ClipAugmentConfig(
        views=parse_view_list(args.views, "--views"),
        caption_template=args.caption_template,
        **{k: getattr(args, k) for k in extra if getattr(args, k) is not None},
        **experiment_kwargs(args, TRAIN_KEYS),
    )
    return report_experiment(clip_augment(config), "results, tables and paired differences")


def add_experiment_clip_augment_parser(
    subparsers: Any, add_experiment_flags: Callable[..., None]
) -> argparse.ArgumentParser:
    """Register ``clip-augment`` under ``fusynth experiment`` (``add_experiment_flags``
    adds the flags every experiment shares)."""
    from fusynth.classify.clip_model import CONTRASTIVE, TRAIN_MODES

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
    add_cell_training_flags(p, "1e-4", 32, 10, per="arm")
    p.add_argument(
        "--n_boot", type=int, help="bootstrap resamples of subjects for the intervals (1000)"
    )
    p.set_defaults(func=_experiment_clip_augment)
    return p


def add_seg_augment_segmenter_flags(p: argparse.ArgumentParser) -> None:
    """Add ``--segmenter`` and the U-Net arm's flags to ``experiment seg-augment``
    (defaults None: each config resolves its own)."""
    from fusynth.segment.experiment import SEGMENTERS
    from fusynth.segment.unet import ENCODERS

    p.add_argument(
        "--segmenter", choices=SEGMENTERS, help="what every cell trains: sam or unet (sam)"
    )
    p.add_argument("--encoder", help=f"U-Net encoder: {', '.join(ENCODERS)} (mobilenet_v2)")
    p.add_argument(
        "--encoder_weights", help="U-Net: local encoder state dict every cell starts from"
    )
    p.add_argument("--resolution", type=int, help="U-Net input side, a multiple of 32 (256)")
