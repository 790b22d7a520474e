"""``fusynth audit pairs|cohort``."""

from __future__ import annotations

import argparse
from typing import Any

from fusynth.cli.args import (
    Parser,
    accept_kebab,
)


def _audit_pairs(args: argparse.Namespace) -> int:
    from fusynth.audit.pairs import PairThresholds, audit_pairs
    from fusynth.cli.recipe import quiet_libraries

    quiet_libraries()
    summary = audit_pairs(
        args.cohort,
        PairThresholds(
            max_residual=args.max_residual,
            min_inside_fov=args.min_inside_fov,
            min_area=args.min_area,
            max_area=args.max_area,
            min_dice=args.min_dice,
        ),
        segmenter=args.segmenter,
        segmenter_type=args.model_type,
        report=args.report,
        drop=args.drop,
        overwrite=args.overwrite,
    )
    dice = f", Dice mean {summary['dice']['mean']:.3f}" if summary["dice"] else ""
    print(
        f"{summary['passed']} of {summary['n']} pairs pass (fit residual mean "
        f"{summary['fit_residual']['mean']:.3f}{dice}); report in {summary['report']}"
    )
    if args.drop:
        print(f"kept {summary['kept']} pairs in {args.drop}")
    return 0


def add_commands(groups: Any) -> None:
    """Add the ``audit`` command group to the ``fusynth`` parser."""
    audit = groups.add_parser("audit", help="audit synthetic data")
    audit_cmds = audit.add_subparsers(dest="command", required=True, parser_class=Parser)
    p = audit_cmds.add_parser("pairs", help="pair consistency of an image/mask cohort")
    p.add_argument(
        "cohort", metavar="COHORT", help="cohort or prepared dataset with masks, DIR[:split]"
    )
    p.add_argument(
        "--segmenter", help="SAM folder or checkpoint: prompt with each mask's box and record Dice"
    )
    p.add_argument(
        "--model_type",
        dest="model_type",
        help="SAM size of a bare checkpoint (vit_b, vit_l, vit_h, tiny)",
    )
    p.add_argument(
        "--min_dice",
        dest="min_dice",
        type=float,
        default=0.8,
        help="smallest passing Dice with --segmenter (0.8)",
    )
    p.add_argument(
        "--max_residual",
        dest="max_residual",
        type=float,
        default=0.15,
        help="largest passing 1 - IoU between mask and its fitted ellipse (0.15)",
    )
    p.add_argument(
        "--min_inside_fov",
        dest="min_inside_fov",
        type=float,
        default=0.95,
        help="smallest passing share of the mask inside the field of view (0.95)",
    )
    p.add_argument(
        "--min_area",
        dest="min_area",
        type=float,
        default=0.005,
        help="smallest passing mask area, share of the image (0.005)",
    )
    p.add_argument(
        "--max_area",
        dest="max_area",
        type=float,
        default=0.9,
        help="largest passing mask area (0.9)",
    )
    p.add_argument(
        "--report", help="report folder (default COHORT/audit): pairs.csv, pairs_summary.json"
    )
    p.add_argument("--drop", help="write the cohort without failing pairs to this folder")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --drop folder")
    p.set_defaults(func=_audit_pairs)
    add_audit_cohort_parser(audit_cmds)


def add_audit_cohort_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``cohort`` to the ``fusynth audit`` subcommands.

    Args:
        subparsers: the ``audit`` group's subparsers action.

    Returns:
        The new parser.
    """
    p = subparsers.add_parser(
        "cohort",
        help="FID/KID against real data and a memorization search against the training set",
    )
    p.add_argument("cohort", metavar="COHORT", help="cohort (or any prepared dataset), DIR[:split]")
    p.add_argument("--reference", required=True, help="real images to compare with, DIR[:split]")
    p.add_argument(
        "--training",
        help="images the generator was trained on, DIR[:split], searched for copies "
        "(default: --reference)",
    )
    p.add_argument(
        "--encoder",
        default="pixels",
        help="feature space: pixels, clip:NAME[@PRETRAINED], ssl:DIR or inception:PATH "
        "(a local torchvision inception_v3 weights file) (pixels)",
    )
    p.add_argument(
        "--kid_subset_size",
        dest="kid_subset_size",
        type=int,
        help="KID subset size, capped at the smaller set (1000)",
    )
    p.add_argument(
        "--kid_subsets",
        dest="kid_subsets",
        type=int,
        default=100,
        help="number of KID subsets (100)",
    )
    p.add_argument(
        "--cosine_threshold",
        dest="cosine_threshold",
        type=float,
        default=0.95,
        help="flag a sample whose nearest training image has at least this cosine "
        "similarity in the encoder's space (0.95)",
    )
    p.add_argument(
        "--ssim_threshold",
        dest="ssim_threshold",
        type=float,
        default=0.9,
        help="flag a sample whose nearest training image has at least this SSIM (0.9)",
    )
    p.add_argument(
        "--n_montage",
        dest="n_montage",
        type=int,
        default=8,
        help="closest pairs (by SSIM) drawn in closest_pairs.png (8)",
    )
    p.add_argument("--out", help="report folder (default: COHORT/audit)")
    p.add_argument("--seed", type=int, default=0, help="seed of KID's subset sampling (0)")
    p.add_argument(
        "--overlays",
        action="store_true",
        help="also report the share of synthetic images showing calipers or text",
    )
    p.set_defaults(func=audit_cohort_command)
    return accept_kebab(p)


def audit_cohort_command(args: argparse.Namespace) -> int:
    """Run the audit with the parsed flags and print a short summary."""
    from fusynth.audit.cohort import audit_cohort
    from fusynth.cli.recipe import quiet_libraries

    quiet_libraries()
    summary = audit_cohort(
        args.cohort,
        args.reference,
        encoder=args.encoder,
        training=args.training,
        out=args.out,
        kid_subset_size=args.kid_subset_size,
        kid_subsets=args.kid_subsets,
        cosine_threshold=args.cosine_threshold,
        ssim_threshold=args.ssim_threshold,
        n_montage=args.n_montage,
        seed=args.seed,
        overlays=args.overlays,
    )
    for line in summary_lines(summary):
        print(line)
    return 0


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """What the command prints: distances per view, memorization, where the report is."""
    distance = summary["distance"]
    encoder = summary["encoder"]
    lines = [f"encoder {encoder['name']} ({encoder['dim']}-d features)"]
    for name, entry in [("overall", distance["overall"]), *distance["by_view"].items()]:
        lines.append(f"  {name}: {_distance_text(entry)}")
    if distance["views_without_reference"]:
        lines.append(f"  no reference for: {', '.join(distance['views_without_reference'])}")
    memo = summary["memorization"]
    overall, t = memo["overall"], memo["thresholds"]
    lines.append(
        f"memorization: {overall['flagged']} of {overall['n']} synthetic samples flagged "
        f"(cosine >= {t['cosine']} or SSIM >= {t['ssim']}; max cosine "
        f"{overall['cosine']['max']:.3f}, max SSIM {overall['ssim']['max']:.3f})"
    )
    if "overlays" in summary:
        o = summary["overlays"]
        lines.append(
            f"overlays: calipers or text found in {o['with_marks']} of {o['n']} synthetic samples"
        )
    lines.append(f"report in {summary['report']}")
    return lines


def _distance_text(entry: dict[str, Any]) -> str:
    counts = f"{entry['n_synthetic']} vs {entry['n_reference']}"
    if entry["kid_mean"] is None:
        return f"{counts}: too few samples"
    kid = (
        f"KID {entry['kid_mean']:.4g} ± {entry['kid_std']:.2g} (subset {entry['kid_subset_size']})"
    )
    fid = f"FID {entry['fid']:.4g}" if entry["fid"] is not None else "FID n/a"
    if not entry["fid_reliable"]:
        fid += " (unreliable: fewer samples than dimensions)"
    return f"{counts}: {kid}, {fid}"
