"""Run configs: dataclasses whose values come from defaults, then a YAML file, then flags.

Each recipe has one config dataclass (as peft has one per method) that checks its own
fields in ``__post_init__`` and names the flag in every message.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from fusynth.core.errors import UserInputError, suggest

T = TypeVar("T")


def load_yaml_mapping(path: str | os.PathLike, flag: str = "--config") -> dict[str, Any]:
    """Read a YAML file that must hold a mapping."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"{flag}: {path} not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        where = f" line {line + 1}" if line is not None else ""
        raise UserInputError(f"{path}{where}: not valid YAML") from exc
    if not isinstance(data, dict):
        raise UserInputError(
            f"{path}: expected a mapping of option: value, got {type(data).__name__}"
        )
    return data


def resolve_config(cls: type[T], given: Mapping[str, Any], config_file: str | None = None) -> T:
    """Build ``cls`` from its defaults, then ``config_file`` (YAML), then ``given`` flags.

    Args:
        cls: a dataclass whose ``__post_init__`` validates it.
        given: only the flags the user actually gave (argparse with SUPPRESS defaults).
        config_file: optional YAML file with the same keys as the flags.

    Raises:
        UserInputError: unknown key in the YAML file (with the nearest valid one), or
            whatever the dataclass rejects.
    """
    names = {f.name for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    if config_file:
        for key, value in load_yaml_mapping(config_file).items():
            key = str(key).lstrip("-").replace("-", "_")
            if key not in names:
                raise UserInputError(f"{config_file}: unknown option {key!r}{suggest(key, names)}")
            values[key] = value
    values.update({k: v for k, v in given.items() if k != "config"})
    return cls(**values)
