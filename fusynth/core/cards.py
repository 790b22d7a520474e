"""Rendering model and dataset cards from the templates in ``model_cards/``.

Cards are rendered with huggingface_hub's card classes, so their metadata block is what
the Hub expects. A template variable without a value is an error, never a blank.
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Mapping
from typing import Any


def template_text(name: str) -> str:
    """The text of ``model_cards/<name>.md``."""
    return importlib.resources.files("fusynth.model_cards").joinpath(f"{name}.md").read_text()


def required_fields(name: str) -> set[str]:
    """Variables the template uses (besides ``card_data``)."""
    import jinja2
    from jinja2 import meta

    ast = jinja2.Environment().parse(template_text(name))
    return meta.find_undeclared_variables(ast) - {"card_data"}


def render_card(
    name: str, card_data: Mapping[str, Any], fields: Mapping[str, Any], kind: str = "model"
) -> str:
    """Render template ``name`` with Hub metadata ``card_data`` and body ``fields``.

    Raises:
        ValueError: a field the template needs is missing (all missing ones are named).
    """
    from huggingface_hub import DatasetCard, DatasetCardData, ModelCard, ModelCardData

    missing = sorted(required_fields(name) - set(fields))
    if missing:
        raise ValueError(f"card template {name!r} needs fields: {', '.join(missing)}")
    if kind == "model":
        card = ModelCard.from_template(
            ModelCardData(**card_data), template_str=template_text(name), **fields
        )
    else:
        card = DatasetCard.from_template(
            DatasetCardData(**card_data), template_str=template_text(name), **fields
        )
    return str(card)
