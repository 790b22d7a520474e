"""The ``fusynth`` command. Each subcommand parses flags and calls one library function."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from fusynth import __version__
from fusynth.errors import UserInputError

log = logging.getLogger("fusynth")


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error and exit status 2."""

    def error(self, message: str) -> None:  # noqa: D102
        self.exit(2, f"{self.prog}: error: {message}\n")


def _positive_int(flag: str):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{flag} must be a whole number, got {text!r}"
            ) from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{flag} must be positive, got {value}")
        return value

    return parse


def _positive_float(flag: str):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} must be a number, got {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"{flag} must be positive, got {value}")
        return value

    return parse


# ----------------------------------------------------------------------------- data


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
    from fusynth.data.inspect import inspect_dataset
    from fusynth.io import atomic_write_bytes

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


def build_parser() -> argparse.ArgumentParser:
    """The full ``fusynth`` argument parser."""
    from fusynth.data.images import MASK_KINDS
    from fusynth.data.readers import FORMATS

    parser = _Parser(prog="fusynth", description=__doc__)
    parser.add_argument("--version", action="version", version=f"fusynth {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    groups = parser.add_subparsers(dest="group", required=True, parser_class=_Parser)

    data = groups.add_parser("data", help="prepare, generate and inspect datasets")
    data_cmds = data.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = data_cmds.add_parser(
        "prepare",
        help="read a public dataset in its publisher's layout into a prepared dataset",
    )
    p.add_argument("src", metavar="SRC", help="source folder in the publisher's layout")
    p.add_argument("out", metavar="OUT", help="output folder (a datasets.DatasetDict)")
    p.add_argument("--format", required=True, choices=list(FORMATS), help="source layout")
    p.add_argument("--seed", type=int, default=0, help="split seed (default 0)")
    p.add_argument(
        "--val-fraction",
        type=float,
        default=0.1,
        help="share of training subjects for validation (default 0.1)",
    )
    p.add_argument(
        "--test-fraction",
        type=float,
        default=0.2,
        help="share of subjects for test when the publisher has no test split (default 0.2)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    p.add_argument("--csv", help="the CSV to read (african, fetal_planes_db, metadata)")
    p.add_argument("--images-subdir", default="images", help="pairs: image folder (images)")
    p.add_argument("--masks-subdir", default="masks", help="pairs: mask folder (masks)")
    p.add_argument(
        "--mask-suffix",
        default="",
        help="pairs: mask name is <image stem><suffix> (e.g. _Annotation)",
    )
    p.add_argument(
        "--mask-kind",
        default="filled",
        choices=list(MASK_KINDS),
        help="pairs/metadata: masks are filled label maps or closed outlines",
    )
    p.add_argument("--view", default="head", help="pairs: the view of every image (head)")
    p.add_argument(
        "--subject-regex",
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
    p.add_argument("--n", type=_positive_int("--n"), default=64, help="number of frames (64)")
    p.add_argument(
        "--size", type=_positive_int("--size"), default=128, help="frame side in px (128)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed; same seed, same bytes (0)")
    p.add_argument("--views", help="comma-separated views (default head,abdomen,femur,thorax)")
    p.add_argument(
        "--pixel-spacing",
        type=_positive_float("--pixel-spacing"),
        help="mm per pixel (default: a 160 mm field of view across --size)",
    )
    p.add_argument(
        "--frames-per-subject",
        type=_positive_int("--frames-per-subject"),
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
    return parser


def iter_commands(
    parser: argparse.ArgumentParser | None = None, prefix: tuple[str, ...] = ()
) -> list[tuple[str, list[str]]]:
    """Every leaf command (``"data prepare"``) with its option strings, for docs checks."""
    parser = parser or build_parser()
    out = []
    subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subparsers:
        flags = [s for a in parser._actions for s in a.option_strings if s not in ("-h", "--help")]
        return [(" ".join(prefix), flags)]
    for action in subparsers:
        for name, sub in action.choices.items():
            out += iter_commands(sub, (*prefix, name))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``fusynth`` command; returns the exit status.

    Status 2 is bad input (one line on stderr naming the file, field or flag), 1 a
    failed check, 0 success.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and flag errors: return, don't exit
        return exc.code if isinstance(exc.code, int) else 2
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO,
        format="fusynth: %(message)s",
        stream=sys.stderr,
    )
    # Our own progress bars speak for long steps; datasets' per-shard bars are noise.
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    try:
        return int(args.func(args) or 0)
    except UserInputError as exc:
        if args.debug:
            raise
        print(f"fusynth: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fusynth: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
