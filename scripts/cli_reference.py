"""Print every ``fusynth`` command and its flags, marking those docs/cli.md does not mention.

Run after adding a flag: ``.venv/bin/python scripts/cli_reference.py``. The test suite
checks the same thing (tests/test_cli.py), this shows the whole list.
"""

from __future__ import annotations

import sys
from pathlib import Path

from fusynth.cli.main import iter_commands


def main() -> int:
    readme = (Path(__file__).resolve().parents[1] / "docs" / "cli.md").read_text()
    missing = 0
    for command, flags in iter_commands():
        mark = "" if f"fusynth {command}" in readme else "   <- command not in docs/cli.md"
        print(f"fusynth {command}{mark}")
        for flag in flags:
            absent = flag not in readme
            missing += absent or bool(mark)
            print(f"    {flag}{'   <- not in docs/cli.md' if absent else ''}")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
