"""``fusynth publish model|cohort``: their flags and what they print.

Only ``--dry-run OUT`` is implemented in this release: it builds the folder an upload
would send. Without it the command refuses (exit 2) rather than pretend to upload.
"""

from __future__ import annotations

import argparse
from typing import Any

from fusynth.errors import UserInputError

UPLOAD_UNAVAILABLE = "publish: uploading is not available in this release; use --dry-run OUT"


def _common_flags(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("dir", metavar="DIR", help=f"the {what} folder to publish")
    p.add_argument(
        "--repo-id",
        dest="repo_id",
        required=True,
        help="Hugging Face Hub repository, USER/NAME",
    )
    p.add_argument(
        "--private",
        action="store_true",
        help="create the repository as private (upload only; not implemented in this release)",
    )
    p.add_argument(
        "--dry-run",
        dest="dry_run",
        metavar="OUT",
        help="build in OUT exactly the folder that would be uploaded, and upload nothing "
        "(required in this release)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing --dry-run OUT")


def add_publish_parser(groups: Any) -> argparse.ArgumentParser:
    """Add the ``publish`` group (``model``, ``cohort``) to the ``fusynth`` groups.

    Args:
        groups: what ``add_subparsers`` returned for the ``fusynth`` command.

    Returns:
        The ``publish`` group's parser.
    """
    pub = groups.add_parser(
        "publish", help="build Hugging Face Hub folders of models and cohorts (--dry-run only)"
    )
    cmds = pub.add_subparsers(dest="command", required=True, parser_class=type(pub))

    p = cmds.add_parser(
        "model",
        help="a LoRA, ControlNet, SAM, classifier or SSL encoder training output",
    )
    _common_flags(p, "training output")
    p.add_argument(
        "--revision",
        metavar="BRANCH",
        help="branch to upload to (upload only; not implemented in this release)",
    )
    p.set_defaults(func=publish_command, kind="model", force=False, max_flag_share=0.0)

    p = cmds.add_parser("cohort", help="a synthetic cohort as Parquet shards with a dataset card")
    _common_flags(p, "cohort")
    p.add_argument(
        "--force",
        action="store_true",
        help="publish without an audit/cohort_audit.json, or with memorization flags above "
        "--max-flag-share; the card then says so",
    )
    p.add_argument(
        "--max-flag-share",
        dest="max_flag_share",
        type=float,
        default=0.0,
        help="largest share of samples the audit may flag as memorized (0.0)",
    )
    p.set_defaults(func=publish_command, kind="cohort", revision=None)
    return pub


def publish_command(args: argparse.Namespace) -> int:
    """Run ``fusynth publish model|cohort``.

    Args:
        args: the parsed flags.

    Returns:
        0 on success.

    Raises:
        UserInputError: bad folder, repo id or audit; or no ``--dry-run``.
    """
    from fusynth.publish import check_repo_id, detect_kind, publish_dry_run

    check_repo_id(args.repo_id)
    detect_kind(args.dir)
    if args.dry_run is None:
        raise UserInputError(UPLOAD_UNAVAILABLE)
    files = publish_dry_run(
        args.kind,
        args.dir,
        args.repo_id,
        args.dry_run,
        force=args.force,
        overwrite=args.overwrite,
        max_flag_share=args.max_flag_share,
    )
    where = f"{args.repo_id}" + (f"@{args.revision}" if args.revision else "")
    where += " (private)" if args.private else ""
    print(f"wrote {args.dry_run}: {len(files)} files that would go to {where}; nothing uploaded")
    for rel in files:
        print(f"  {rel}")
    return 0
