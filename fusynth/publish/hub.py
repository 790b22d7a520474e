"""Build a publishable folder (``--dry_run``) or upload it to the Hub in one atomic commit.

The token is whatever huggingface_hub finds (``HF_TOKEN``, then ``hf auth login``); it is
passed to ``HfApi`` and never printed, logged or written.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from fusynth.core.errors import UserInputError
from fusynth.publish.cohort import build_cohort_folder
from fusynth.publish.kinds import MODEL_FILES, check_request
from fusynth.publish.model import build_model_folder

# ----------------------------------------------------------------------------- entry point


def build_folder(
    found: str,
    src: str | os.PathLike,
    repo_id: str,
    out: str | os.PathLike,
    overwrite: bool = False,
    force: bool = False,
    max_flag_share: float = 0.0,
    evals: list[str] | None = None,
    base_model: str | None = None,
    datasets: list[str] | None = None,
    audit_dir: str | os.PathLike | None = None,
) -> list[str]:
    """Build, atomically in ``out``, the folder an upload of a checked request sends.

    Args:
        found: the kind :func:`check_request` returned for ``src``.
        src: the fusynth output folder.
        repo_id: the Hub repository, ``USER/NAME``.
        out: the folder to build.
        overwrite: replace an existing ``out``.
        force: for a cohort, publish without an audit or against it.
        max_flag_share: for a cohort, the largest memorization-flagged share accepted.
        evals: for a model, more evaluation folders (``--eval``).
        base_model: for a model, the Hub id of its base (``--base_model``).
        datasets: for a model, Hub ids of its training data (``--datasets``).
        audit_dir: for a cohort, an audit written elsewhere (``--audit``).

    Returns:
        The files written, relative to ``out``, sorted.

    Raises:
        UserInputError: a bad audit or evaluation (see the builders).
    """
    if found == "cohort":
        return build_cohort_folder(
            Path(src), out, repo_id, force, max_flag_share, overwrite, audit_dir
        )
    return build_model_folder(
        Path(src), found, out, repo_id, overwrite, evals, base_model, datasets
    )


def publish_dry_run(
    kind: str,
    src: str | os.PathLike,
    repo_id: str,
    out: str | os.PathLike,
    overwrite: bool = False,
    **options: Any,
) -> list[str]:
    """Check a request and build, atomically in ``out``, exactly the folder
    ``fusynth publish`` would upload (``--dry_run OUT``).

    Args:
        kind: ``model`` or ``cohort`` (the subcommand).
        src: the fusynth output folder.
        repo_id: the Hub repository, ``USER/NAME``.
        out: the folder to build.
        overwrite: replace an existing ``out``.
        options: ``force``, ``max_flag_share``, ``evals``, ``base_model``, ``datasets``
            (see :func:`build_folder`).

    Returns:
        The files written, relative to ``out``, sorted.

    Raises:
        UserInputError: bad folder, repo id, audit or evaluation.
    """
    found = check_request(
        kind,
        src,
        repo_id,
        options.get("max_flag_share", 0.0),
        options.get("base_model"),
        options.get("datasets"),
    )
    return build_folder(found, src, repo_id, out, overwrite, **options)


# ----------------------------------------------------------------------------- upload

NO_TOKEN = (
    "no Hugging Face token: set HF_TOKEN or run `hf auth login` "
    "(or use --dry_run OUT to build the folder without uploading)"
)


def hub_token() -> str:
    """The token huggingface_hub would use (``HF_TOKEN``, then the stored login).

    Raises:
        UserInputError: there is none.
    """
    from huggingface_hub import get_token

    token = get_token()
    if not token:
        raise UserInputError(NO_TOKEN)
    return token


def owned_paths(found: str) -> list[str]:
    """The repository paths (files and ``folder/*``) a publish of a ``found`` kind of
    output may write, whether or not this one does. An upload mirrors them: a file an
    earlier upload left there (a stale shard, the text-encoder adapter of an older LoRA,
    an old grid or evaluation) and this one does not send is deleted. The owner's other
    files are left alone."""
    if found == "cohort":
        return ["data/*", "provenance/*"]
    files = MODEL_FILES[found]
    folders = {f"{f.split('/')[0]}/*" for f in files if "/" in f} | {"validation/*", "eval/*"}
    return sorted({f for f in files if "/" not in f} | folders)


def upload(
    found: str,
    src: str | os.PathLike,
    repo_id: str,
    token: str,
    private: bool = False,
    revision: str | None = None,
    **options: Any,
) -> tuple[str, list[str]]:
    """Build the publish folder of a checked request in a temporary place and upload it
    to the Hub in one commit.

    The repository is created if missing (``exist_ok``); ``revision`` is created as a
    branch if missing. The commit adds every file of the folder and deletes the files an
    earlier upload left in :func:`owned_paths` that this one does not send, so a cohort
    never mixes shards of two uploads. One commit is atomic: the repository shows either
    the old upload or the new one, never a part. Re-running after a failure sends it
    again.

    Args:
        found: the kind :func:`check_request` returned for ``src``.
        src: the fusynth output folder.
        repo_id: ``USER/NAME``.
        token: the Hub token (see :func:`hub_token`); never printed or written.
        private: create the repository as private, and refuse one that exists as public.
        revision: the branch to commit to (``main`` when None).
        options: ``force``, ``max_flag_share``, ``evals``, ``base_model``, ``datasets``
            (see :func:`build_folder`).

    Returns:
        The commit URL and the files uploaded (relative, sorted).

    Raises:
        UserInputError: a bad audit or evaluation; ``private`` and a public repository.
        huggingface_hub.errors.HfHubHTTPError: the Hub refused a request.
    """
    from fnmatch import fnmatch

    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi

    from fusynth import __version__

    repo_type = "dataset" if found == "cohort" else "model"
    with tempfile.TemporaryDirectory(prefix="fusynth-publish-") as tmp:
        folder = Path(tmp) / "upload"
        files = build_folder(found, src, repo_id, folder, **options)
        api = HfApi(token=token)
        api.create_repo(repo_id, repo_type=repo_type, private=private or None, exist_ok=True)
        if private and not api.repo_info(repo_id, repo_type=repo_type).private:
            raise UserInputError(
                f"--private: {repo_id} already exists and is public; make it private on the "
                "Hub first, or publish without --private"
            )
        if revision:
            api.create_branch(repo_id, branch=revision, repo_type=repo_type, exist_ok=True)
        owned = owned_paths(found)
        stale = [
            path
            for path in api.list_repo_files(repo_id, repo_type=repo_type, revision=revision)
            if path not in files and any(fnmatch(path, pattern) for pattern in owned)
        ]
        operations = [CommitOperationAdd(rel, folder / rel) for rel in files]
        operations += [CommitOperationDelete(path) for path in stale]
        info = api.create_commit(
            repo_id,
            operations,
            commit_message=f"Publish a fusynth {found} (fusynth {__version__})",
            repo_type=repo_type,
            revision=revision,
        )
    return str(info.commit_url), files
