"""``fusynth data prepare|phantom|inspect|clean``: datasets, clinical DICOM ingest included."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from fusynth.cli.args import (
    Parser,
    positive_float,
    positive_int,
)
from fusynth.core.errors import UserInputError


def _data_prepare(args: argparse.Namespace) -> int:
    from fusynth.data.prepare import prepare
    from fusynth.data.readers import ReaderOptions

    options = ReaderOptions(
        csv=args.csv,
        images_subdir=args.images_subdir,
        masks_subdir=args.masks_subdir,
        mask_suffix=args.mask_suffix,
        mask_kind=args.mask_kind,
        view=args.view or "head",
        subject_regex=args.subject_regex,
        center=args.center,
        cohort=args.cohort,
    )
    if args.format == "dicom":
        return data_prepare_dicom(args, options)
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
    from fusynth.data.formats import FORMATS
    from fusynth.data.images import MASK_KINDS

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
    p.add_argument("--view", help="pairs/dicom: the view of every image (pairs: head)")
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
    add_dicom_prepare_flags(p)
    add_data_clean_parser(data_cmds)

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


def add_dicom_prepare_flags(p: argparse.ArgumentParser) -> None:
    """Add the ``--format dicom`` flags (and ``--clean``) to ``data prepare``."""
    p.add_argument(
        "--frames",
        default="middle",
        help="dicom: frames of a cine loop to keep: all, middle or every:K (middle)",
    )
    p.add_argument(
        "--subject_salt",
        help="dicom: salt of the PatientID hash (default: a random salt kept in OUT.salt)",
    )
    p.add_argument(
        "--keep_device",
        action="store_true",
        help="dicom: keep Manufacturer and ManufacturerModelName in provenance",
    )
    p.add_argument(
        "--clean",
        action="store_true",
        help="dicom: remove burned-in overlays (needed for BurnedInAnnotation=YES files)",
    )


def _clean_options(args: argparse.Namespace) -> Any:
    from fusynth.data.clean import CleanOptions

    return CleanOptions(
        method=getattr(args, "method", "telea"),
        radius=getattr(args, "radius", 3),
        sector=not getattr(args, "no_sector", False),
        user_mask=getattr(args, "user_mask", None),
    )


def data_prepare_dicom(args: argparse.Namespace, options: Any) -> int:
    """Run ``data prepare --format dicom`` with the parsed flags.

    Args:
        args: parsed ``data prepare`` flags.
        options: the :class:`fusynth.data.readers.ReaderOptions` the generic flags made.
    """
    from dataclasses import replace

    from fusynth.data.dicom import DicomOptions
    from fusynth.data.prepare import prepare_dicom

    if options.csv is None and args.view is None:
        raise UserInputError(
            "--view: give the view of every file (--view brain) or a CSV "
            "(--csv FILE with file,view[,subject])"
        )
    dicom = DicomOptions(
        frames=args.frames,
        subject_salt=args.subject_salt,
        keep_device=args.keep_device,
        clean=args.clean,
        clean_options=_clean_options(args) if args.clean else None,
    )
    result = prepare_dicom(
        args.src,
        args.out,
        options=replace(options, dicom=dicom),
        seed=args.seed,
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        overwrite=args.overwrite,
    )
    counts = ", ".join(f"{k}={v}" for k, v in result.counts.items())
    print(f"wrote {sum(result.counts.values())} samples ({counts}) to {result.out}")
    for note in result.notes:
        print(f"note: {note}")
    return 0


def add_data_clean_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``clean`` to the ``fusynth data`` subcommands."""
    from fusynth.data.clean import INPAINT_METHODS

    p = subparsers.add_parser(
        "clean",
        help="remove burned-in text, calipers and marks from a folder of images",
    )
    p.add_argument("src", metavar="SRC", help="folder of images (searched recursively)")
    p.add_argument("out", metavar="OUT", help="output folder: images/, masks/, montage.png")
    p.add_argument(
        "--method",
        default="telea",
        choices=list(INPAINT_METHODS),
        help="OpenCV inpainting: telea or ns (Navier-Stokes) (telea)",
    )
    p.add_argument("--radius", type=int, default=3, help="inpainting radius in px (3)")
    p.add_argument(
        "--no_sector",
        action="store_true",
        help="keep everything outside the detected scan sector (no crop)",
    )
    p.add_argument(
        "--user_mask", help="PNG mask of extra pixels to remove (nonzero), resized to each image"
    )
    p.add_argument(
        "--saturation",
        type=float,
        default=40.0,
        help="chroma distance from the image's tint that marks a colour pixel (40)",
    )
    p.add_argument(
        "--bright", type=int, default=120, help="lowest grey level of text and calipers (120)"
    )
    p.add_argument(
        "--tophat", type=int, default=60, help="lowest contrast to the local background (60)"
    )
    p.add_argument(
        "--max_mark", type=int, default=40, help="largest side in px of one mark component (40)"
    )
    p.add_argument(
        "--n_montage", type=int, default=8, help="images (most marks first) in montage.png (8)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    p.set_defaults(func=data_clean_command)
    return p


def data_clean_command(args: argparse.Namespace) -> int:
    """Run ``fusynth data clean`` and print the counts."""
    from fusynth.data.clean import CleanOptions, clean_folder

    options = CleanOptions(
        method=args.method,
        radius=args.radius,
        sector=not args.no_sector,
        user_mask=args.user_mask,
        saturation=args.saturation,
        bright=args.bright,
        tophat=args.tophat,
        max_mark=args.max_mark,
    )
    if args.n_montage < 1:
        raise UserInputError(f"--n_montage: must be positive, got {args.n_montage}")
    summary = clean_folder(
        args.src, args.out, options, n_montage=args.n_montage, overwrite=args.overwrite
    )
    print(
        f"cleaned {summary['n_images']} images into {args.out}: marks found in "
        f"{summary['images_with_marks']} ({summary['share_with_marks']:.0%}), "
        f"{summary['mean_changed_fraction']:.1%} of pixels changed on average"
    )
    return 0
