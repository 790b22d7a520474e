"""``fusynth data prepare|phantom|inspect``."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from fusynth.cli.args import (
    Parser,
    positive_float,
    positive_int,
)


def _data_prepare(args: argparse.Namespace) -> int:
    from fusynth.data.prepare import prepare
    from fusynth.data.readers import ReaderOptions

    options = ReaderOptions(
        csv=args.csv,
        images_subdir=args.images_subdir,
        masks_subdir=args.masks_subdir,
        mask_suffix=args.mask_suffix,
        mask_kind=args.mask_kind,
        view=args.view,
        subject_regex=args.subject_regex,
        center=args.center,
        cohort=args.cohort,
    )
    result = prepare(
        args.format,
        args.src,
        args.out,
        seed=args.seed,
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        overwrite=args.overwrite,
        options=options,
    )
    counts = ", ".join(f"{k}={v}" for k, v in result.counts.items())
    print(f"wrote {sum(result.counts.values())} samples ({counts}) to {result.out}")
    for note in result.notes:
        print(f"note: {note}")
    return 0


def _data_phantom(args: argparse.Namespace) -> int:
    from fusynth.data.phantom_cohort import write_phantom_source

    out = write_phantom_source(
        args.out,
        n=args.n,
        size=args.size,
        seed=args.seed,
        views=args.views.split(",") if args.views else None,
        pixel_spacing_mm=args.pixel_spacing,
        frames_per_subject=args.frames_per_subject,
        overwrite=args.overwrite,
    )
    print(
        f"wrote {args.n} phantom frames to {out} (prepare with: fusynth data prepare "
        f"--format metadata {out} OUT)"
    )
    return 0


def _data_inspect(args: argparse.Namespace) -> int:
    from fusynth.core.io import atomic_write_bytes
    from fusynth.data.inspect import inspect_dataset

    summary, montage = inspect_dataset(args.dir, args.montage)
    print(summary.to_text())
    print(f"montage: {montage}")
    if args.json:
        atomic_write_bytes(args.json, summary.to_json().encode())
        print(f"summary: {args.json}")
    if not summary.ok:
        print("fusynth: inspect failed: a subject appears in more than one split", file=sys.stderr)
        return 1
    return 0


def add_commands(groups: Any) -> None:
    """Add the ``data`` command group to the ``fusynth`` parser."""
    from fusynth.data.images import MASK_KINDS
    from fusynth.data.readers import FORMATS

    data = groups.add_parser("data", help="prepare, generate and inspect datasets")
    data_cmds = data.add_subparsers(dest="command", required=True, parser_class=Parser)

    p = data_cmds.add_parser(
        "prepare",
        help="read a public dataset in its publisher's layout into a prepared dataset",
    )
    p.add_argument("src", metavar="SRC", help="source folder in the publisher's layout")
    p.add_argument("out", metavar="OUT", help="output folder (a datasets.DatasetDict)")
    p.add_argument("--format", required=True, choices=list(FORMATS), help="source layout")
    p.add_argument("--seed", type=int, default=0, help="split seed (default 0)")
    p.add_argument(
        "--val_fraction",
        type=float,
        default=0.1,
        help="share of training subjects for validation (default 0.1)",
    )
    p.add_argument(
        "--test_fraction",
        type=float,
        default=0.2,
        help="share of subjects for test when the publisher has no test split (default 0.2)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    p.add_argument("--csv", help="the CSV to read (african, fetal_planes_db, metadata)")
    p.add_argument("--images_subdir", default="images", help="pairs: image folder (images)")
    p.add_argument("--masks_subdir", default="masks", help="pairs: mask folder (masks)")
    p.add_argument(
        "--mask_suffix",
        default="",
        help="pairs: mask name is <image stem><suffix> (e.g. _Annotation)",
    )
    p.add_argument(
        "--mask_kind",
        default="filled",
        choices=list(MASK_KINDS),
        help="pairs/metadata: masks are filled label maps or closed outlines",
    )
    p.add_argument("--view", default="head", help="pairs: the view of every image (head)")
    p.add_argument(
        "--subject_regex",
        help="pairs/imagefolder: regex on the file stem giving the subject "
        r"(group 1 if any), e.g. 'Patient(\d+)'",
    )
    p.add_argument(
        "--center", default="", help="pairs/imagefolder/metadata: center of every sample"
    )
    p.add_argument("--cohort", help="pairs/imagefolder/metadata: cohort name (default: SRC name)")
    p.set_defaults(func=_data_prepare)

    p = data_cmds.add_parser(
        "phantom", help="draw a procedural ultrasound phantom (offline default)"
    )
    p.add_argument("out", metavar="OUT", help="output folder (images, masks, metadata.csv)")
    p.add_argument("--n", type=positive_int("--n"), default=64, help="number of frames (64)")
    p.add_argument(
        "--size", type=positive_int("--size"), default=128, help="frame side in px (128)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed; same seed, same bytes (0)")
    p.add_argument("--views", help="comma-separated views (default head,abdomen,femur,thorax)")
    p.add_argument(
        "--pixel_spacing",
        type=positive_float("--pixel_spacing"),
        help="mm per pixel (default: a 160 mm field of view across --size)",
    )
    p.add_argument(
        "--frames_per_subject",
        type=positive_int("--frames_per_subject"),
        default=2,
        help="consecutive frames drawn for one phantom subject (2)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    p.set_defaults(func=_data_phantom)

    p = data_cmds.add_parser("inspect", help="summarise a prepared dataset and draw a montage")
    p.add_argument("dir", metavar="DIR", help="prepared dataset folder")
    p.add_argument("--montage", help="montage PNG path (default DIR/montage.png)")
    p.add_argument("--json", help="also write the summary as JSON here")
    p.set_defaults(func=_data_inspect)
