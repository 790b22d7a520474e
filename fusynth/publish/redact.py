"""Absolute local paths in published text become ``<local>/NAME``."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

#: An absolute POSIX path of two parts or more (or ``~/...``) that starts a token: at the
#: start of a line or after a space, quote, backtick, bracket, ``*``, ``|``, ``=``, ``,``
#: or ``:``. URLs do not match (``//`` follows their colon), nor ``/x`` alone.
_PATH_CHARS = r"""[^\s"'`)\],*|:]"""
_ABS_PATH = re.compile(
    rf"""(?:^|(?<=[\s"'`(\[=,*|:]))(?:~|/[\w.@+-]{_PATH_CHARS}*)/{_PATH_CHARS}+(?::\w+)?""",
    re.MULTILINE,
)
#: Files whose text is redacted in a published folder.
TEXT_SUFFIXES: tuple[str, ...] = (".md", ".json", ".yaml", ".yml", ".txt", ".csv")
LOCAL = "<local>"


# ----------------------------------------------------------------------------- local paths


def _local_name(match: re.Match[str]) -> str:
    parts = [p for p in match.group(0).split("/") if p]
    return f"{LOCAL}/{parts[-1] if parts else ''}"


def redact_paths(text: str) -> str:
    """Replace every absolute local path in ``text`` by ``<local>/`` and its last part.

    ``ROOT/runs/phantom:train``, ROOT absolute, becomes ``<local>/phantom:train``; relative paths,
    Hub ids and URLs are kept.

    Args:
        text: a card, a JSON document or a provenance string.

    Returns:
        The text with its absolute paths redacted.
    """
    return _ABS_PATH.sub(_local_name, text)


def is_local_path(value: Any) -> bool:
    """Whether ``value`` is an absolute local path (already redacted or not)."""
    text = str(value or "")
    return text.startswith((f"{LOCAL}/", "/", "~/")) or bool(re.match(r"^[A-Za-z]:[\\/]", text))


def redact_files(folder: Path) -> None:
    """Redact absolute paths in every text file under ``folder``, in place."""
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.suffix.lower() in TEXT_SUFFIXES:
            text = path.read_text(encoding="utf-8")
            redacted = redact_paths(text)
            if redacted != text:
                path.write_text(redacted, encoding="utf-8")
