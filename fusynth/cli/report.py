"""``fusynth report RUN... --out report.html``: one self-contained page for run folders."""

from __future__ import annotations

import argparse
from typing import Any


def add_commands(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``report`` to the ``fusynth`` command groups.

    Args:
        subparsers: what ``add_subparsers`` returned for ``fusynth``.

    Returns:
        The new parser.
    """
    p = subparsers.add_parser(
        "report",
        help="one self-contained HTML page for run folders (e.g. demo_out/), in pipeline order",
        description="Write one HTML file (pictures embedded, no network) covering fusynth "
        "output folders: prepared datasets, adapters, cohorts, audits, evaluations, experiments "
        "and published folders. Give run folders, or a folder holding them.",
    )
    p.add_argument(
        "runs",
        metavar="RUN",
        nargs="+",
        help="fusynth output folders, or folders holding them (searched 3 levels deep)",
    )
    p.add_argument("--out", required=True, help="the HTML file to write, e.g. report.html")
    p.add_argument("--title", help="page title (fusynth report: and the RUN folder names)")
    p.set_defaults(func=report_command)
    return p


def report_command(args: argparse.Namespace) -> int:
    """Write the report and say what it covers."""
    from fusynth.report import write_report

    result = write_report(args.runs, args.out, title=args.title)
    kinds = ", ".join(f"{r.path.name} ({r.kind})" for r in result.runs)
    print(f"report of {len(result.runs)} runs: {kinds}")
    print(f"wrote {result.out} ({result.size / 1e6:.1f} MB, self-contained)")
    return 0
