"""Captions of real images for CLIP fine-tuning: templates over schema columns, checked
before any data is read.
"""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from typing import Any

from fusynth.core.errors import UserInputError, suggest
from fusynth.data.schema import FEATURES
from fusynth.embed.clip import DEFAULT_PROMPTS

#: Schema columns a caption template may name (not the pixels, nor the provenance).
CAPTION_COLUMNS = tuple(c for c in FEATURES if c not in ("image", "mask", "provenance"))


# ----------------------------------------------------------------------------- captions


def template_fields(template: str) -> list[str]:
    """The ``{column}`` names of a caption template.

    Raises:
        UserInputError: the template is not a valid format string.
    """
    try:
        return [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        raise UserInputError(f"--caption_template: {template!r} is malformed: {exc}") from exc


def check_templates(templates: Mapping[str, Sequence[str]], flag: str) -> None:
    """Every ``{name}`` of every template must be a schema column.

    Raises:
        UserInputError: naming the template, the column and the columns there are.
    """
    for texts in templates.values():
        for template in texts:
            for name in template_fields(template):
                if name not in CAPTION_COLUMNS:
                    raise UserInputError(
                        f"{flag}: {template!r} names column {{{name}}}, which the sample schema "
                        f"lacks{suggest(name, CAPTION_COLUMNS)}; columns: {', '.join(CAPTION_COLUMNS)}"
                    )


def resolve_templates(
    value: str | Sequence[str] | None, views: Sequence[str], flag: str = "--caption_template"
) -> dict[str, list[str]]:
    """Caption templates per view.

    Args:
        value: None (each view's built-in zero-shot prompts), templates used for every
            view (``"an ultrasound image of the fetal {view} from {center}"``), or one
            YAML file mapping views to templates (as ``--prompts``).
        views: the views to train.
        flag: for errors.

    Raises:
        UserInputError: a YAML file without one of the views, or a template naming a
            column the schema lacks.
    """
    from fusynth.embed.clip import load_prompts

    if value is None:
        out = {v: list(DEFAULT_PROMPTS[v]) for v in views}
    else:
        items = [value] if isinstance(value, str) else list(value)
        if len(items) == 1 and items[0].endswith((".yaml", ".yml")):
            out = load_prompts(items[0], views, flag)
        else:
            if not items or not all(isinstance(t, str) and t.strip() for t in items):
                raise UserInputError(f"{flag}: give one or more non-empty templates")
            out = {v: [t.strip() for t in items] for v in views}
    check_templates(out, flag)
    return out


def render_caption(template: str, row: Mapping[str, Any]) -> str:
    """A template filled with a sample's columns (a missing value reads as ``unknown``)."""
    values = {k: ("unknown" if row.get(k) in (None, "") else row[k]) for k in CAPTION_COLUMNS}
    return template.format(**values)
