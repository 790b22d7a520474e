"""fusynth: generative data augmentation for fetal ultrasound.

Prepare real data, generate synthetic cohorts from a LoRA or ControlNet, audit them,
and measure what they buy in segmentation, view classification and clustering.

Training (LoRA, ControlNet, SAM, classifiers, SSL encoders) lives in recipes/*.py:
    accelerate launch recipes/train_lora.py --help
Flags are --snake_case; the --kebab-case spelling of any flag works too.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from fusynth import __version__
from fusynth.cli import audit, data, evaluate, experiment, generate, lora, publish, report
from fusynth.cli.args import Parser
from fusynth.core.errors import UserInputError
from fusynth.core.io import as_user_error

log = logging.getLogger("fusynth")


def build_parser() -> argparse.ArgumentParser:
    """The full ``fusynth`` argument parser."""

    parser = Parser(
        prog="fusynth",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"fusynth {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    groups = parser.add_subparsers(dest="group", required=True, parser_class=Parser)

    for group in (data, generate, audit, evaluate, experiment, publish, report, lora):
        group.add_commands(groups)
    return parser


def iter_commands(
    parser: argparse.ArgumentParser | None = None, prefix: tuple[str, ...] = ()
) -> list[tuple[str, list[str]]]:
    """Every leaf command (``"data prepare"``) with its option strings, for docs checks."""
    parser = parser or build_parser()
    out = []
    subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subparsers:
        # The first spelling of each flag; ``--a-b`` aliases of ``--a_b`` need no own docs.
        flags = [
            a.option_strings[0] for a in parser._actions if a.option_strings and a.dest != "help"
        ]
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
    for name in ("httpx", "httpx2", "httpcore", "httpcore2"):  # one line per HTTP request
        logging.getLogger(name).setLevel(logging.WARNING)
    # Our own progress bars speak for long steps; datasets' per-shard bars are noise.
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    try:
        return int(args.func(args) or 0)
    except (UserInputError, OSError) as exc:
        error = exc if isinstance(exc, UserInputError) else as_user_error(exc)
        if args.debug or error is None:
            raise
        print(f"fusynth: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fusynth: interrupted", file=sys.stderr)
        return 130
