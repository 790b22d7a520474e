"""Small-data traps: settings that run fine but give numbers nobody should trust.

Each check returns its warning (or None); callers log it at WARNING and record it in
the output they write (``config.json``'s ``warnings``, a summary's ``notes``), so it is
seen at the terminal and still there when someone reads the results later.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

#: Fewer validation images than this make a model choice (best step, best setting) noise.
MIN_VALIDATION_IMAGES = 10


def small_validation(n: int, spec: str | None, chooses: str) -> str | None:
    """The warning for a validation set of fewer than :data:`MIN_VALIDATION_IMAGES`.

    Args:
        n: validation images.
        spec: the validation set, as given (``DIR:split``).
        chooses: what the validation score decides, e.g. "the saved model is the step
            with the best validation macro-F1".
    """
    if n == 0 or n >= MIN_VALIDATION_IMAGES:
        return None
    return (
        f"--validation {spec}: only {n} image(s) (fewer than {MIN_VALIDATION_IMAGES}); "
        f"{chooses}, and a score on so few images is mostly noise (one image moves it by "
        f"{100 / n:.0f} points): use a larger patient-disjoint validation split"
    )


def missing_views(classes: Sequence[str], present: Iterable[str], spec: str | None) -> str | None:
    """The warning for a validation set without some of the classes trained on."""
    have = set(present)
    absent = [c for c in classes if c not in have]
    if not absent:
        return None
    return (
        f"--validation {spec}: no image of view(s) {', '.join(absent)}; the validation score "
        "says nothing about them and the model chosen on it may never predict them: "
        "use a validation split with every view"
    )


def emit(log: logging.Logger, warnings: Iterable[str | None]) -> list[str]:
    """Log each warning at WARNING; returns the list of those that are not None."""
    out = [w for w in warnings if w]
    for w in out:
        log.warning(w)
    return out
