"""Print the README's "Bad input" table by running the cases of tests/test_bad_input.py.

    python scripts/bad_input_table.py > table.md

Each row is one case of that test's ``CASES`` as it ran just now: the command (``DATA``
a prepared phantom dataset, ``BASE`` the tiny base, ``LORA`` a tiny LoRA, ``SAM`` a tiny
SAM folder, ``thesis/`` a folder of the user's own), the one line it printed and its
exit code. Regenerate it whenever a case or a message changes, so the table stays true.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_cases() -> list[dict]:
    """Run the test's cases (pytest, in a subprocess) and read back what each printed."""
    with tempfile.TemporaryDirectory() as tmp:
        record = Path(tmp) / "cases.jsonl"
        env = {**os.environ, "FUSYNTH_BAD_INPUT_RECORD": str(record)}
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
        cmd += ["tests/test_bad_input.py", "-k", "test_bad_input_is_one_line"]
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.stderr.write(proc.stdout[-3000:])
            raise SystemExit("some bad-input cases failed; the table would not be true")
        return [json.loads(line) for line in record.read_text().splitlines()]


def cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def table(rows: list[dict]) -> str:
    """The Markdown table of the cases."""
    out = ["| # | what | the one line | exit |", "|---|---|---|---|"]
    for i, row in enumerate(rows, 1):
        line = row["line"].removeprefix("fusynth: error: ")
        out.append(f"| {i} | `{cell(row['command'])}` | {cell(line)} | {row['exit']} |")
    return "\n".join(out)


def main() -> int:
    """Print the table."""
    print(table(run_cases()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
