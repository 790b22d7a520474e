"""``fusynth publish model|cohort``: their flags and what they print.

``--dry_run OUT`` builds the folder an upload would send and uploads nothing. Without it
the same folder is built in a temporary place and uploaded with the token of
``HF_TOKEN`` or ``hf auth login``; the token is never printed. A Hub that refuses the
token or the repository (401, 403, 404) is bad input, exit 2; other Hub or network
failures exit 1. Either way one line says what happened.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from fusynth.cli.args import accept_kebab, comma_list
from fusynth.core.errors import UserInputError


def _common_flags(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("dir", metavar="DIR", help=f"the {what} folder to publish")
    p.add_argument(
        "--repo_id",
        dest="repo_id",
        required=True,
        help="Hugging Face Hub repository, USER/NAME",
    )
    p.add_argument(
        "--private",
        action="store_true",
        help="create the repository as private; refuse one that exists and is public",
    )
    p.add_argument(
        "--dry_run",
        dest="dry_run",
        metavar="OUT",
        help="build in OUT exactly the folder that would be uploaded, and upload nothing "
        "(needs no token)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing --dry_run OUT")
    p.add_argument(
        "--revision",
        metavar="BRANCH",
        help="branch to commit to, created from main if missing (default: main)",
    )


def add_commands(groups: Any) -> argparse.ArgumentParser:
    """Add the ``publish`` group (``model``, ``cohort``) to the ``fusynth`` groups.

    Args:
        groups: what ``add_subparsers`` returned for the ``fusynth`` command.

    Returns:
        The ``publish`` group's parser.
    """
    pub = groups.add_parser(
        "publish", help="publish models and cohorts to the Hugging Face Hub, with cards"
    )
    cmds = pub.add_subparsers(dest="command", required=True, parser_class=type(pub))

    p = cmds.add_parser(
        "model",
        help="a LoRA, ControlNet, SAM, classifier or SSL encoder training output",
    )
    _common_flags(p, "training output")
    p.add_argument(
        "--eval",
        dest="evals",
        action="append",
        default=[],
        metavar="EVAL_DIR",
        help="a `fusynth evaluate segmentation|classification` output of this model to publish "
        "with it (repeatable; evaluation subfolders of DIR are included anyway)",
    )
    p.add_argument(
        "--base_model",
        dest="base_model",
        metavar="ID",
        help="Hub id of the base the model was trained from, when it was loaded from a local "
        "folder (the card's base_model metadata and code then name it)",
    )
    p.add_argument(
        "--datasets",
        type=comma_list,
        metavar="ID[,ID...]",
        help="Hub ids of the datasets the model was trained on, for the card's metadata",
    )
    p.set_defaults(
        func=publish_command, kind="model", force=False, max_flag_share=0.0, audit_dir=None
    )

    p = cmds.add_parser("cohort", help="a synthetic cohort as Parquet shards with a dataset card")
    _common_flags(p, "cohort")
    p.add_argument(
        "--force",
        action="store_true",
        help="publish without an audit/cohort_audit.json, or with memorization flags above "
        "--max_flag_share; the card then says so",
    )
    p.add_argument(
        "--audit",
        dest="audit_dir",
        metavar="AUDIT_DIR",
        help="the folder of an audit written elsewhere (fusynth audit cohort --out); "
        "default DIR/audit",
    )
    p.add_argument(
        "--max_flag_share",
        dest="max_flag_share",
        type=float,
        default=0.0,
        help="largest share of samples the audit may flag as memorized (0.0)",
    )
    p.set_defaults(func=publish_command, kind="cohort", evals=[], base_model=None, datasets=None)
    return accept_kebab(pub)


def _hub_failure(exc: Exception, repo_id: str, token: str) -> int:
    """Print one line for a failed Hub request (token scrubbed); 2 if it is the user's to
    fix (token, repository), else 1."""
    from huggingface_hub.errors import HfHubHTTPError

    status = getattr(getattr(exc, "response", None), "status_code", None)
    lines = [line.strip(" -") for line in str(exc).splitlines() if line.strip(" -")]
    first = "; ".join(lines) or type(exc).__name__  # the Hub's reasons follow its first line
    first = first.replace(token, "***") if token else first
    hint = {
        401: "; check the token in HF_TOKEN or `hf auth login`",
        403: "; the token cannot write to this repository (a read-only token?)",
        404: "; check --repo_id and --revision",
    }.get(status, "")
    refused = isinstance(exc, (HfHubHTTPError, ValueError))  # ValueError: its card check
    what = f"the Hub refused the upload to {repo_id}" if refused else f"upload to {repo_id} failed"
    print(f"fusynth: error: {what}: {first}{hint}", file=sys.stderr)
    return 2 if status in (401, 403, 404) else 1


def publish_command(args: argparse.Namespace) -> int:
    """Run ``fusynth publish model|cohort``.

    Args:
        args: the parsed flags.

    Returns:
        0 on success, 2 when the Hub refuses the token or repository, 1 on other Hub
        or network failures.

    Raises:
        UserInputError: bad folder, repo id or audit; no token without ``--dry_run``.
    """
    from fusynth.publish.hub import build_folder, hub_token, upload
    from fusynth.publish.kinds import check_request

    found = check_request(
        args.kind, args.dir, args.repo_id, args.max_flag_share, args.base_model, args.datasets
    )
    where = f"{args.repo_id}" + (f"@{args.revision}" if args.revision else "")
    where += " (private)" if args.private else ""
    options = {
        "force": args.force,
        "max_flag_share": args.max_flag_share,
        "evals": args.evals,
        "base_model": args.base_model,
        "datasets": args.datasets,
        "audit_dir": args.audit_dir,
    }
    if args.dry_run is not None:
        files = build_folder(
            found, args.dir, args.repo_id, args.dry_run, overwrite=args.overwrite, **options
        )
        print(
            f"wrote {args.dry_run}: {len(files)} files that would go to {where}; nothing uploaded"
        )
    else:
        import httpx2
        from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

        token = hub_token()
        try:
            url, files = upload(
                found,
                args.dir,
                args.repo_id,
                token,
                private=args.private,
                revision=args.revision,
                **options,
            )
        except OfflineModeIsEnabled as exc:
            raise UserInputError(
                "HF_HUB_OFFLINE is set: unset it to upload, or use --dry_run OUT"
            ) from exc
        except (HfHubHTTPError, httpx2.HTTPError, OSError) as exc:
            return _hub_failure(exc, args.repo_id, token)
        except ValueError as exc:  # the Hub's metadata check of a card (UserInputError passes)
            if isinstance(exc, UserInputError) or "metadata" not in str(exc):
                raise
            return _hub_failure(exc, args.repo_id, token)
        print(f"uploaded {len(files)} files to {where}: {url}")
    for rel in files:
        print(f"  {rel}")
    return 0
