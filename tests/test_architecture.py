"""The layout's one rule, checked on the source: stages import only earlier stages or core,
the library never imports cli, no import circles, and docs/architecture.md describes the tree."""

from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _architecture():
    spec = importlib.util.spec_from_file_location("architecture", ROOT / "scripts/architecture.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_import_follows_the_pipeline_order_and_nothing_circles():
    arch = _architecture()
    g = arch.graph()
    assert len(g) > 50  # the package was actually read
    assert arch.violations(g) == []
    assert arch.cycles(g) == []


def test_the_checker_catches_what_it_forbids():
    arch = _architecture()
    g = {
        "fusynth.data.schema": {"fusynth.segment.sam"},  # an earlier stage importing a later one
        "fusynth.segment.sam": {"fusynth.cli.main.main", "fusynth.data.schema"},  # library -> cli
        "fusynth.cli.main.main": {"fusynth.segment.sam"},
        "fusynth.helpers": set(),  # outside any stage
    }
    found = arch.violations(g)
    assert any("fusynth.data.schema imports fusynth.segment.sam" in v for v in found)
    assert any("never imports cli" in v for v in found)
    assert any("fusynth.helpers: not inside a stage" in v for v in found)
    assert arch.cycles(g) == [
        ["fusynth.cli.main.main", "fusynth.data.schema", "fusynth.segment.sam"]
    ]


def test_readme_architecture_names_every_package_and_no_gone_one():
    section = (ROOT / "docs" / "architecture.md").read_text()
    tree = re.search(r"```\n(fusynth/.*?)```", section, re.S).group(1)
    listed = set(re.findall(r"^  (\w+)/", tree, re.M))
    packages = {p.name for p in (ROOT / "fusynth").iterdir() if (p / "__init__.py").is_file()}
    assert listed == packages
    assert (ROOT / "docs/architecture.png").is_file()


def test_long_files_say_why_they_are_one_thing():
    for path in sorted((ROOT / "fusynth").rglob("*.py")):
        text = path.read_text()
        if text.count("\n") > 600:
            doc = ast.get_docstring(ast.parse(text)) or ""
            assert "One cohesive thing" in doc, f"{path.relative_to(ROOT)}: over 600 lines"
