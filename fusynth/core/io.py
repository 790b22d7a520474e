"""Writing outputs so that nothing is ever left half-written."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from fusynth.core.artifacts import CHECKPOINT_STATE, LEGACY_MARKERS, MARKER_FILE, RUN_CONFIG
from fusynth.core.errors import UserInputError


def current_umask() -> int:
    """The process's umask: from ``/proc/self/status`` where the kernel says it (no
    change to process state, so safe beside other threads), else by setting it and
    putting it back at once."""
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def honour_umask(path: str | os.PathLike, folder: bool | None = None) -> None:
    """Give a temporary file or folder the mode a plain ``open``/``mkdir`` would have.

    ``tempfile.mkstemp`` and ``mkdtemp`` create 0600 files and 0700 folders whatever the
    umask; once such a path becomes an output, colleagues sharing a server could not
    read it. This sets 0666 (files) or 0777 (folders) less the user's umask.

    Args:
        path: the file or folder.
        folder: whether it is a folder (default: look).
    """
    folder = os.path.isdir(path) if folder is None else folder
    os.chmod(path, (0o777 if folder else 0o666) & ~current_umask())


def make_temp_dir(prefix: str, parent: str | os.PathLike) -> Path:
    """``tempfile.mkdtemp`` in ``parent``, with the user's umask honoured (see
    :func:`honour_umask`): the folder is renamed into place as an output."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    honour_umask(tmp, folder=True)
    return tmp


def write_marker(folder: str | os.PathLike, kind: str) -> None:
    """Mark ``folder`` as a fusynth output of ``kind`` (:data:`MARKER_FILE`)."""
    from fusynth import __version__

    data = json.dumps({"kind": kind, "fusynth_version": __version__}, sort_keys=True) + "\n"
    atomic_write_bytes(Path(folder) / MARKER_FILE, data.encode())


def is_fusynth_folder(folder: str | os.PathLike) -> bool:
    """Whether fusynth wrote ``folder``: its marker, or (from before the marker) a file
    only fusynth writes there, or a ``config.json`` that names a fusynth version."""
    folder = Path(folder)
    if (folder / MARKER_FILE).is_file() or any((folder / n).is_file() for n in LEGACY_MARKERS):
        return True
    # A run folder holding only its checkpoints (copied, or from before the marker).
    if any((c / CHECKPOINT_STATE).is_file() for c in folder.glob("checkpoint-*")):
        return True
    cfg = folder / RUN_CONFIG
    try:
        return cfg.is_file() and "fusynth_version" in json.loads(cfg.read_text())
    except (ValueError, TypeError):
        return False


def check_foreign(out: Path, flag: str) -> None:
    """Refuse to write into or replace a non-empty folder fusynth did not write.

    Raises:
        UserInputError: whatever the flags, naming the folder and ``flag``.
    """
    if out.is_dir() and any(out.iterdir()) and not is_fusynth_folder(out):
        raise UserInputError(
            f"{flag}: {out} is not empty and was not written by fusynth (no {MARKER_FILE}); "
            "it is never written into or replaced, whatever the flags: choose another folder"
        )


def check_output_dir(
    out: str | os.PathLike, overwrite: bool, flag: str = "--overwrite", out_flag: str = "--out"
) -> Path:
    """Refuse an existing output unless overwriting was asked for and fusynth wrote it.

    Args:
        out: the output folder.
        overwrite: whether an existing folder may be replaced.
        flag: the flag to name in the error.
        out_flag: the flag that named ``out``.

    Returns:
        ``out`` as a Path.

    Raises:
        UserInputError: ``out`` is a file, exists (and ``overwrite`` is False), or is a
            non-empty folder fusynth did not write (whatever ``overwrite``).
    """
    out = Path(out)
    if out.exists():
        if not out.is_dir():
            raise UserInputError(f"{out}: exists and is not a folder")
        check_foreign(out, out_flag)
        if not overwrite:
            raise UserInputError(f"{out}: already exists; pass {flag} to replace it")
    return out


@contextlib.contextmanager
def atomic_dir(
    out: str | os.PathLike, overwrite: bool = False, kind: str = "output"
) -> Iterator[Path]:
    """Build a folder in a temporary sibling and rename it into place when complete.

    On any exception the temporary folder is removed and ``out`` is left as it was. The
    folder is marked as a fusynth output of ``kind`` (:func:`write_marker`).

    Args:
        out: the final folder.
        overwrite: replace an existing ``out`` (only after the new one is complete, and
            only one fusynth wrote).
        kind: what the folder holds, recorded in its marker.

    Yields:
        The temporary folder to write into.
    """
    out = check_output_dir(out, overwrite)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = make_temp_dir(f".{out.name}.tmp-", out.parent)
    except OSError as exc:
        raise unwritable(out, exc) from exc
    try:
        write_marker(tmp, kind)
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


def atomic_write_bytes(path: str | os.PathLike, data: bytes, mode: int | None = None) -> Path:
    """Write a file via a temporary sibling and ``os.replace``.

    Args:
        path: destination file.
        data: its content.
        mode: the file's permission bits; by default 0666 less the user's umask, as a
            plain ``open`` would give (a private file passes 0o600: it is never readable
            by others, not even for a moment).

    Returns:
        ``path`` as a Path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~current_umask() if mode is None else mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def canonical_safetensors(folder: str | os.PathLike) -> None:
    """Rewrite the header of every ``.safetensors`` file under ``folder`` with sorted keys.

    safetensors writes its ``__metadata__`` entries in a hash order that changes from
    process to process, so two identical trainings gave files equal tensor for tensor but
    not byte for byte. The header keeps its length (it is padded with spaces, as
    safetensors pads it), so offsets and loaders are unaffected.
    """
    for path in sorted(Path(folder).rglob("*.safetensors")):
        with path.open("r+b") as fh:
            size = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(size))
            data = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
            if len(data) <= size:
                fh.seek(8)
                fh.write(data.ljust(size, b" "))


def remove_stale_temps(folder: str | os.PathLike) -> list[str]:
    """Delete what an interrupted run left half-written in ``folder``: the temporary
    siblings of :func:`atomic_write_bytes` (``.NAME.tmp-*``) and of whole folders
    (``.NAME.tmp``, ``.final.tmp-*``). Only the process that owns ``folder`` may call it.

    Returns:
        The names removed.
    """
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for item in folder.iterdir():
        if item.name.startswith(".") and re.search(r"\.tmp(-[^/]*)?$", item.name):
            if item.is_dir() and not item.is_symlink():
                shutil.rmtree(item, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    item.unlink()
            removed.append(item.name)
    return sorted(removed)


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


#: errno values that mean the place cannot be written (or read) by this user: bad
#: input to report in one line, not a bug in fusynth.
LOCATION_ERRNOS = (
    errno.EACCES,
    errno.EPERM,
    errno.EROFS,
    errno.ENOSPC,
    errno.EDQUOT,
    errno.ENOTDIR,
)


def as_user_error(exc: BaseException) -> UserInputError | None:
    """The one-line error for an OSError that the user's location causes, else None."""
    if isinstance(exc, OSError) and exc.errno in LOCATION_ERRNOS:
        return unwritable(exc.filename or "output", exc)
    return None


def unwritable(path: str | os.PathLike, exc: OSError) -> UserInputError:
    """A one-line error for an output location that cannot be written (read-only, full,
    not permitted), naming the path."""
    reason = {
        errno.EACCES: "permission denied",
        errno.EPERM: "not permitted",
        errno.EROFS: "read-only file system",
        errno.ENOSPC: "no space left on the device",
        errno.EDQUOT: "disk quota exceeded",
        errno.ENOTDIR: "a file stands where a folder is needed",
    }.get(exc.errno, exc.strerror or type(exc).__name__)
    where = exc.filename or path
    return UserInputError(f"{where}: cannot be written ({reason})")
