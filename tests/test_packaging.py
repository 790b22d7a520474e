"""The package ships every subpackage and the card templates."""

from __future__ import annotations

import importlib.resources
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_subpackage_is_listed_in_pyproject():
    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    found = {
        ".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "fusynth").rglob("__init__.py")
    }
    assert found <= listed, f"add to pyproject.toml packages: {sorted(found - listed)}"
    assert "fusynth.model_cards" in listed


def test_card_templates_are_package_data():
    names = {p.name for p in importlib.resources.files("fusynth.model_cards").iterdir()}
    assert {"lora.md", "controlnet.md", "sam.md"} <= names
