"""The README is a front page a newcomer can read, and the reference in docs/ builds with
mkdocs, every page linked and every link resolving."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_front_page_is_short_and_has_what_a_newcomer_needs():
    text = (ROOT / "README.md").read_text()
    assert text.count("\n") < 150
    for needed in ("make demo", "make test", "## Contents", "## Bring your own data"):
        assert needed in text, needed
    assert "## Use real weights on a GPU" in text and "smoke model" in text
    assert "--subject_regex" in text


def test_every_docs_link_in_the_readme_points_to_a_page():
    text = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\((docs/[^)#]+)", text)
    assert len(set(links)) >= 6
    for link in links:
        assert (ROOT / link).is_file(), link


def test_the_reference_builds_with_mkdocs_in_strict_mode(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    pages = {
        p.relative_to(tmp_path / "site").as_posix() for p in (tmp_path / "site").rglob("*.html")
    }
    for name in ("cli", "demo", "real-weights", "schema", "architecture", "results"):
        assert f"{name}/index.html" in pages, name
    assert "Command reference" in (tmp_path / "site" / "cli" / "index.html").read_text()
