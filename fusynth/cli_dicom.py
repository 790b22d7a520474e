"""Command-line pieces of clinical ingest: DICOM flags of ``data prepare`` and
``fusynth data clean``."""

from __future__ import annotations

import argparse
from typing import Any

from fusynth.errors import UserInputError


def add_dicom_prepare_flags(p: argparse.ArgumentParser) -> None:
    """Add the ``--format dicom`` flags (and ``--clean``) to ``data prepare``."""
    p.add_argument(
        "--frames",
        default="middle",
        help="dicom: frames of a cine loop to keep: all, middle or every:K (middle)",
    )
    p.add_argument(
        "--subject-salt",
        help="dicom: salt of the PatientID hash (default: a random salt kept in OUT.salt)",
    )
    p.add_argument(
        "--keep-device",
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

    from fusynth.data.dicom import DicomOptions, prepare_dicom

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
        "--no-sector",
        action="store_true",
        help="keep everything outside the detected scan sector (no crop)",
    )
    p.add_argument(
        "--user-mask", help="PNG mask of extra pixels to remove (nonzero), resized to each image"
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
        "--max-mark", type=int, default=40, help="largest side in px of one mark component (40)"
    )
    p.add_argument(
        "--n-montage", type=int, default=8, help="images (most marks first) in montage.png (8)"
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
        raise UserInputError(f"--n-montage: must be positive, got {args.n_montage}")
    summary = clean_folder(
        args.src, args.out, options, n_montage=args.n_montage, overwrite=args.overwrite
    )
    print(
        f"cleaned {summary['n_images']} images into {args.out}: marks found in "
        f"{summary['images_with_marks']} ({summary['share_with_marks']:.0%}), "
        f"{summary['mean_changed_fraction']:.1%} of pixels changed on average"
    )
    return 0
