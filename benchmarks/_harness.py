"""What the benchmarks share: each variant in a fresh process, and the best of rounds.

A variant runs in its own process so its peak resident memory is its own; the parent
does no heavy imports (a child's ``ru_maxrss`` starts from its parent's at fork).
Variants alternate over rounds, and the round least disturbed by other load is kept,
since a shared 2-core machine can slow one run several-fold.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any


def run_child(
    script: str, variant: str, cfg: dict[str, Any], env: dict[str, str]
) -> dict[str, Any] | None:
    """Run ``script --child VARIANT CFG_JSON``; its last stdout line is its JSON result."""
    proc = subprocess.run(
        [sys.executable, script, "--child", variant, json.dumps(cfg)],
        capture_output=True,
        text=True,
        env=env,
    )
    if proc.returncode:
        sys.exit(f"{variant} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    lines = proc.stdout.strip().splitlines()
    return json.loads(lines[-1]) if lines else None


def best_round(runs: list[dict[str, Any]], key: str, fmt: str = ".2f") -> dict[str, Any]:
    """The round with the highest ``key``, with every round's ``key`` and the highest
    peak RSS of all rounds."""
    best = dict(max(runs, key=lambda r: r[key]))
    best["rounds"] = " ".join(f"{r[key]:{fmt}}" for r in runs)
    best["peak_rss_mb"] = max(r["peak_rss_mb"] for r in runs)
    return best
