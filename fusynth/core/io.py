"""Writing outputs so that nothing is ever left half-written."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from fusynth.core.errors import UserInputError


def check_output_dir(out: str | os.PathLike, overwrite: bool, flag: str = "--overwrite") -> Path:
    """Refuse an existing output unless overwriting was asked for.

    Args:
        out: the output folder.
        overwrite: whether an existing folder may be replaced.
        flag: the flag to name in the error.

    Returns:
        ``out`` as a Path.

    Raises:
        UserInputError: ``out`` exists (and ``overwrite`` is False) or is a file.
    """
    out = Path(out)
    if out.exists():
        if not out.is_dir():
            raise UserInputError(f"{out}: exists and is not a folder")
        if not overwrite:
            raise UserInputError(f"{out}: already exists; pass {flag} to replace it")
    return out


@contextlib.contextmanager
def atomic_dir(out: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Build a folder in a temporary sibling and rename it into place when complete.

    On any exception the temporary folder is removed and ``out`` is left as it was.

    Args:
        out: the final folder.
        overwrite: replace an existing ``out`` (only after the new one is complete).

    Yields:
        The temporary folder to write into.
    """
    out = check_output_dir(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        if out.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, trash / out.name)
            os.replace(tmp, out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write a file via a temporary sibling and ``os.replace``.

    Args:
        path: destination file.
        data: its content.

    Returns:
        ``path`` as a Path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def folder_sha256(path: str | os.PathLike) -> str:
    """Content hash of a model folder (configs and weights, in sorted path order)."""
    root = Path(path)
    h = hashlib.sha256()
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        if file.suffix not in (".json", ".safetensors", ".bin", ".txt", ".model"):
            continue
        h.update(file.relative_to(root).as_posix().encode() + b"\0")
        with file.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of one file."""
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def weights_sha256(model: str | os.PathLike | None) -> str | None:
    """sha256 of a model's weights: a weights file itself, or a fusynth output folder's
    ``model.safetensors``. Evaluation reports record it, so a report can be matched to
    the model it scored; None when there is no such file (a smoke model)."""
    if model is None:
        return None
    path = Path(model)
    if path.is_dir():
        path = path / "model.safetensors"
    return file_sha256(path) if path.is_file() else None
