"""What every ``fusynth experiment`` shares: the request file, finished cells, tables.

An experiment folder holds ``experiment.json`` (the request: a different one is
refused), one folder per cell that is done once its ``cell.json`` exists (so an
interrupted experiment reruns only what is missing), and tables written atomically.
"""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fusynth.core.errors import UserInputError
from fusynth.core.io import atomic_write_bytes, check_foreign, write_marker

REQUEST_FILE = "experiment.json"
CELL_FILE = "cell.json"


def open_experiment(out: Path, request: dict[str, Any], overwrite: bool) -> None:
    """Check ``out`` against the request (or set it up), as the cohort writer does."""
    if out.exists() and not out.is_dir():
        raise UserInputError(f"--out: {out} exists and is not a folder")
    req = out / REQUEST_FILE
    want = json.loads(json.dumps(request))
    if req.is_file():
        old = json.loads(req.read_text())
        if old != want and not overwrite:
            key = sorted(k for k in set(old) | set(want) if old.get(k) != want.get(k))[0]
            raise UserInputError(
                f"--out: {out} holds an experiment with a different request ({key}: "
                f"{old.get(key)!r} there, {want.get(key)!r} now); use another --out or --overwrite"
            )
        if old != want:
            shutil.rmtree(out)
    elif out.is_dir() and any(out.iterdir()):
        check_foreign(out, "--out")
        if not overwrite:
            raise UserInputError(
                f"--out: {out} is not empty and is not an experiment; use another --out or --overwrite"
            )
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    write_marker(out, "experiment")
    atomic_write_bytes(req, (json.dumps(want, indent=2) + "\n").encode())


def cell(folder: Path, run: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
    """The record of one cell: read back when done, else ``run(folder)`` and record it."""
    done = folder / CELL_FILE
    if done.is_file():
        return json.loads(done.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    record = run(folder)
    atomic_write_bytes(done, (json.dumps(record, indent=2) + "\n").encode())
    return record


def csv_bytes(rows: list[dict[str, Any]]) -> bytes:
    """Rows as CSV (NaN as an empty cell)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(
            {k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
        )
    return buf.getvalue().encode()


def mean_sd_text(mean: float, sd: float, digits: int) -> str:
    """``mean ± sd`` (just the mean when sd is undefined, n/a when the mean is)."""
    if not math.isfinite(mean):
        return "n/a"
    return f"{mean:.{digits}f} ± {sd:.{digits}f}" if math.isfinite(sd) else f"{mean:.{digits}f}"


def drop_models(model_dir: Path, weights_file: str, keep: bool) -> None:
    """After a cell's evaluation: remove its checkpoints, and its weights unless ``keep``."""
    for ckpt in model_dir.glob("checkpoint-*"):
        shutil.rmtree(ckpt)
    if not keep:
        (model_dir / weights_file).unlink()


def result_rows(
    records: list[dict[str, Any]], value: Callable[[Any], Any] = lambda v: v
) -> list[dict[str, Any]]:
    """One row per cell and test set: the test set, the cell's fields, its metrics."""
    return [
        {
            "test": name,
            **{k: v for k, v in rec.items() if k != "metrics"},
            **{k: value(v) for k, v in values.items()},
        }
        for rec in records
        for name, values in rec["metrics"].items()
    ]
