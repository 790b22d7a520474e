"""Presets: a published experiment's protocol as a file that writes the full request.

A preset is ``fusynth/core/presets/<name>.yaml`` (package data) with ``command`` (the
``fusynth experiment`` it is for), ``paper`` (what it reproduces) and ``request``
(config fields), and optionally ``needs`` (flags the user must give, each with ``why``
and ``unless``: a flag whose giving makes it unneeded, e.g. a tiny smoke model needs
no released weights). The command's flags that the user gives override the preset's values;
the preset overrides the command's defaults. The resolved request is what
``experiment.json`` records, with ``preset`` added.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

import yaml

from fusynth.core.errors import UserInputError, suggest


def preset_names() -> list[str]:
    """The presets shipped with fusynth."""
    folder = resources.files("fusynth.core") / "presets"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_preset(name: str, command: str) -> dict[str, Any]:
    """The request fields of preset ``name`` for ``fusynth experiment command``.

    Raises:
        UserInputError: as :func:`read_preset`.
    """
    return dict(read_preset(name, command)["request"])


def read_preset(name: str, command: str) -> dict[str, Any]:
    """The whole preset file ``name`` for ``fusynth experiment command``.

    Raises:
        UserInputError: an unknown preset (the nearest one suggested) or one written
            for another command.
    """
    names = preset_names()
    if name not in names:
        raise UserInputError(
            f"--preset: unknown preset {name!r}{suggest(name, names)}; shipped: {', '.join(names)}"
        )
    text = (resources.files("fusynth.core") / "presets" / f"{name}.yaml").read_text()
    data = yaml.safe_load(text)
    if data["command"] != command:
        raise UserInputError(
            f"--preset: {name} is a preset for `fusynth experiment {data['command']}`, not {command}"
        )
    return data


def check_needs(name: str, command: str, merged: dict[str, Any], given: set[str]) -> None:
    """Refuse a request that lacks a flag the preset needs.

    Raises:
        UserInputError: naming the flag and why the preset needs it.
    """
    for flag, need in (read_preset(name, command).get("needs") or {}).items():
        if merged.get(flag) is None and need.get("unless") not in given:
            raise UserInputError(f"--{flag}: preset {name} needs it: {need['why']}")


def merge_preset(
    preset: dict[str, Any], kwargs: dict[str, Any], explicit: set[str]
) -> dict[str, Any]:
    """``kwargs`` over ``preset``: a key the user did not give takes the preset's value."""
    out = dict(kwargs)
    for key, value in preset.items():
        if key not in explicit:
            out[key] = value
    return out
