"""Errors that are the user's to fix.

A :class:`UserInputError` carries one line that names what is wrong and where (file,
row, column or flag). The CLI prints it and exits with status 2, without a traceback
unless ``--debug`` is given. Anything else escaping a command is a bug in fusynth.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserInputError(ValueError):
    """Bad input from the user: a file, a field or a flag. Exit status 2."""


def suggest(value: str, choices: Iterable[str]) -> str:
    """A ``" (did you mean 'x'?)"`` suffix for a near miss, or ``""``.

    Args:
        value: what the user gave.
        choices: the valid values.

    Returns:
        The suffix to append to an error message.
    """
    close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""
