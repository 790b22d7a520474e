"""``fusynth evaluate classification`` and ``fusynth evaluate zeroshot``: their flags and
handlers, registered by :mod:`fusynth.cli`."""

from __future__ import annotations

import argparse
from typing import Any

from fusynth.classify import LEGACY_BATCH_SIZE, N_BOOT


def _add_report_flags(p: argparse.ArgumentParser) -> None:
    """Flags both evaluation commands share."""
    p.add_argument("--data", required=True, help="prepared dataset with views, DIR[:split]")
    p.add_argument("--out", required=True, help="report folder")
    p.add_argument("--views", help="comma-separated views of --data to evaluate (all of them)")
    p.add_argument(
        "--metrics",
        default="standard",
        help="standard, or standard,fulora-legacy to add FU-LoRA's notebook ACC/AUC/F1 (standard)",
    )
    p.add_argument("--batch_size", type=int, default=32, help="images per forward pass (32)")
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the bootstrap and the legacy shuffle (0)"
    )
    p.add_argument(
        "--n_boot",
        type=int,
        default=N_BOOT,
        help=f"bootstrap resamples of subjects for the 95%% intervals, 0 for none ({N_BOOT})",
    )
    p.add_argument(
        "--legacy_batch_size",
        type=int,
        default=LEGACY_BATCH_SIZE,
        help=f"loader batch size of the legacy running accuracy ({LEGACY_BATCH_SIZE})",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")


def _ci(entry: dict[str, Any]) -> str:
    """``0.812 [0.750, 0.870]``, or n/a."""
    if entry.get("value") is None:
        return "n/a"
    if entry.get("ci_low") is None:
        return f"{entry['value']:.3f}"
    return f"{entry['value']:.3f} [{entry['ci_low']:.3f}, {entry['ci_high']:.3f}]"


def print_summary(report: dict[str, Any]) -> None:
    """A few lines: the overall metrics, per center, legacy numbers, where the report is."""
    o = report["overall"]
    print(
        f"accuracy {_ci(o['accuracy'])}, balanced accuracy {_ci(o['balanced_accuracy'])}, "
        f"macro-F1 {_ci(o['macro_f1'])}, macro ROC-AUC {_ci(o['macro_auroc'])}"
    )
    centers = report["per_center"]
    if len(centers) > 1:
        print(
            "per center: "
            + ", ".join(f"{c} {_ci(m['accuracy'])} (n={m['n_images']})" for c, m in centers.items())
        )
    legacy = report.get("fulora_legacy")
    if legacy:
        auc = "n/a" if legacy["AUC"] is None else f"{legacy['AUC']:.3f}"
        print(f"FU-LoRA legacy: ACC {legacy['ACC']:.3f}, AUC {auc}, F1 {legacy['F1']:.3f}")
    print(
        f"{report['n_images']} images of {report['n_subjects']} subjects; report in {report['out']}"
    )


def _report_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The settings of the flags :func:`_add_report_flags` adds, as keyword arguments."""
    keys = ("metrics", "views", "batch_size", "seed", "n_boot", "legacy_batch_size", "overwrite")
    return {k: getattr(args, k) for k in keys}


def _evaluate_classification(args: argparse.Namespace) -> int:
    from fusynth.classify.evaluate import evaluate_classification

    report = evaluate_classification(args.model, args.data, args.out, **_report_kwargs(args))
    print_summary(report)
    return 0


def _evaluate_zeroshot(args: argparse.Namespace) -> int:
    from fusynth.classify.evaluate import evaluate_zeroshot

    report = evaluate_zeroshot(
        args.model, args.pretrained, args.prompts, args.data, args.out, **_report_kwargs(args)
    )
    if report["setup"]["smoke_model"]:
        print(f"note: {report['setup']['model']} is random-init: these numbers are a smoke test")
    print_summary(report)
    return 0


def add_evaluate_classification_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``classification`` under ``fusynth evaluate``."""
    p = subparsers.add_parser(
        "classification", help="view classification metrics of a trained classifier"
    )
    p.add_argument(
        "--model",
        required=True,
        help="classifier folder (recipes/train_classifier.py output); with --linear-probe an "
        "open_clip model or a recipes/train_clip.py folder",
    )
    _add_report_flags(p)
    from fusynth.cli_clip import add_linear_probe_flags

    add_linear_probe_flags(p, _evaluate_classification)
    return p


def add_evaluate_zeroshot_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``zeroshot`` under ``fusynth evaluate``."""
    p = subparsers.add_parser("zeroshot", help="zero-shot view classification with open_clip")
    p.add_argument(
        "--model",
        help="open_clip model name, e.g. ViT-B-32 (default: fusynth-tiny-clip, a random-init "
        "smoke model)",
    )
    p.add_argument(
        "--pretrained",
        help="open_clip pretrained tag (e.g. laion2b_s34b_b79k) or a local weights file "
        "(default: random init)",
    )
    p.add_argument(
        "--prompts",
        help="YAML file mapping each view to a list of prompts (default: built-in prompts)",
    )
    _add_report_flags(p)
    p.set_defaults(func=_evaluate_zeroshot)
    return p
