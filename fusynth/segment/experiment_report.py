"""The tables, paired differences and charts of ``experiment seg-augment``.

``table.csv`` / ``table.md``: mean ± sd over repeats per test set, arm, K and M.
``differences.csv``: per test set, K, arm and M, the paired Dice difference to the
real-only arm of the same K (same seeds, same test images): per-image Dice averaged over
repeats (and over the box-jitter rounds of an image), a 95% subject-bootstrap interval
and a two-sided sign-flip permutation p-value (:func:`fusynth.core.protocols.paired_rows`).
``dice_vs_real.png``: Dice against K per arm; ``dice_difference.png``: the paired
difference to real-only against K.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

from fusynth.core.experiment import csv_bytes, mean_sd_text
from fusynth.core.io import atomic_write_bytes
from fusynth.core.protocols import REAL, arm_protocol, difference_chart, markdown_rows, paired_rows
from fusynth.core.stats import mean_sd
from fusynth.data.schema import spec_label
from fusynth.segment.arms import cell_name

#: Metrics in the table (mean ± sd over repeats).
TABLE_METRICS = ("dice", "hd95_px", "hd95_mm", "hc_abs_error_mm")


def _of(records: list[dict[str, Any]], arm: str, k: Any, m: int) -> list[dict[str, Any]]:
    """The records of one arm, K and M, in repeat order."""
    found = [r for r in records if (r["arm"], r["n_real"], r["n_synthetic"]) == (arm, k, m)]
    return sorted(found, key=lambda r: r["repeat"])


def summarise(config: Any, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and sd over repeats of each metric, per test set, arm, K and M."""
    rows = []
    for spec in config.test:
        name = spec_label(spec)
        for arm, k, m in config.arm_cells():
            cell = [r["metrics"][name] for r in _of(records, arm, k, m)]
            row: dict[str, Any] = {
                "segmenter": config.segmenter_label,
                "test": name,
                "protocol": arm_protocol(arm, config.protocol),
                "arm": arm,
                "n_real": k,
                "n_synthetic": m,
                "repeats": len(cell),
                # Beside every Dice: how many test images it rests on, and how many
                # predictions (all repeats) were empty (Dice 0, no distance).
                "n_test": max((c["n_images"] for c in cell), default=0),
                "predictions": sum(c["n_images"] for c in cell),
                "empty_predictions": sum(c["empty_predictions"] for c in cell),
            }
            for metric in TABLE_METRICS:
                row[f"{metric}_mean"], row[f"{metric}_sd"] = mean_sd([c[metric] for c in cell])
            rows.append(row)
    return rows


def per_image_dice(folder: Path) -> dict[str, tuple[str, float | None]]:
    """``key -> (subject_id, Dice)`` from an evaluation's ``per_image.csv`` (an image
    scored several times, with jittered boxes, gets the mean of its rows)."""
    with (folder / "per_image.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    values: dict[str, list[float]] = {}
    subjects: dict[str, str] = {}
    for r in rows:
        subjects[r["key"]] = r["subject_id"]
        if r["dice"] not in (None, ""):
            values.setdefault(r["key"], []).append(float(r["dice"]))
    return {
        key: (subjects[key], sum(values[key]) / len(values[key]) if values.get(key) else None)
        for key in subjects
    }


def differences(config: Any, out: Path, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each arm against real-only of the same K, per test set and M: paired Dice
    difference, subject-bootstrap interval and sign-flip p-value."""

    def values(rec: dict[str, Any], metric: str) -> dict[str, tuple[str, float | None]]:
        assert metric == "dice"
        name = cell_name(rec["n_real"], rec["n_synthetic"], rec["repeat"], rec["arm"],
                         config.protocol)  # fmt: skip
        return per_image_dice(out / "cells" / name / f"eval-{rec['_test'].replace(':', '-')}")

    groups = []
    for spec in config.test:
        test = spec_label(spec)
        cells = config.arm_cells()
        for k in config.n_real:
            real = [{**r, "_test": test} for r in _of(records, REAL, k, 0)]
            for arm, arm_k, m in cells:
                if arm == REAL or arm_k not in (k, 0):  # 0: synthetic-only, any K
                    continue
                row = {"test": test, "protocol": arm_protocol(arm, config.protocol), "arm": arm,
                       "n_real": k, "n_synthetic": m}  # fmt: skip
                arm_cells = [{**r, "_test": test} for r in _of(records, arm, arm_k, m)]
                groups.append({"row": row, "arm": arm_cells, "real": real})
    return paired_rows(groups, values, ("dice",), config.n_boot, config.seed)


def arm_label(arm: str, protocol: str, m: int) -> str:
    """How the charts name an arm (real and mixed synthetic as before arms existed)."""
    if arm == REAL:
        return "real only"
    parts = ["+classical"] if "classical" in arm else []
    if m:
        parts.append(f"+{m} synthetic")
    text = ", ".join(parts)
    protocol = arm_protocol(arm, protocol)
    return text if protocol == "mix" else f"{text} ({protocol})"


def markdown(config: Any, table: list[dict[str, Any]], diffs: list[dict[str, Any]]) -> str:
    """``table.md``: the mean ± sd table, then the paired differences."""
    shown = [m for m in TABLE_METRICS if any(math.isfinite(r[f"{m}_mean"]) for r in table)]
    digits = {"dice": 3}
    lines = [
        f"Segmenter: {config.segmenter_label}. Mean ± sd over {config.repeats} repeat(s); "
        "metrics at native resolution. An empty prediction scores Dice 0 and has no "
        "distance: many of them pull the Dice down and leave the distances to the rest.",
        "",
        "| test set | arm | real | synthetic | "
        + " | ".join(shown)
        + " | test images | empty predictions |",
        "|---|---|---:|---:|" + "---:|" * (len(shown) + 2),
    ]
    for r in table:
        cells = [mean_sd_text(r[f"{m}_mean"], r[f"{m}_sd"], digits.get(m, 1)) for m in shown]
        cells += [str(r["n_test"]), f"{r['empty_predictions']} of {r['predictions']}"]
        lines.append(
            f"| {r['test']} | {r['arm']} | {r['n_real']} | {r['n_synthetic']} | "
            + " | ".join(cells)
            + " |"
        )
    if diffs:
        lines += [
            "",
            "Paired Dice difference to real-only of the same K (same test images and "
            "seeds; per-image Dice averaged over repeats; 95% subject-bootstrap CI; "
            "two-sided sign-flip permutation p over subjects). (ns): the CI crosses zero.",
            "",
            markdown_rows(
                [d for d in diffs if d["n_images"]],
                ("test", "protocol", "arm", "n_real", "n_synthetic"),
            ).rstrip(),
        ]
    return "\n".join(lines) + "\n"


def _x(config: Any, pool_size: int) -> list[int]:
    """The chart's x positions: K, ``all`` at the pool's size."""
    return [pool_size if k == "all" else k for k in config.n_real]


def charts(
    config: Any, out: Path, table: list[dict[str, Any]], diffs: list[dict[str, Any]], pool: int
) -> None:
    """``dice_vs_real.png`` and, with paired differences, ``dice_difference.png``."""
    from fusynth.core.plots import line_chart

    x = _x(config, pool)
    series, notes = {}, {}
    for spec in config.test:
        name = spec_label(spec)
        for arm, m in dict.fromkeys((a, m) for a, _, m in config.arm_cells()):
            rows = [r for r in table if (r["test"], r["arm"], r["n_synthetic"]) == (name, arm, m)]
            if len(rows) == 1 and rows[0]["n_real"] == 0:  # synthetic-only: one model for all K
                rows = rows * len(x)
            n_test = max((r["n_test"] for r in rows), default=0)
            label = f"{name} ({n_test} images), {arm_label(arm, config.protocol, m)}"
            series[label] = ([r["dice_mean"] for r in rows], [r["dice_sd"] for r in rows])
            notes[label] = [
                f"{r['empty_predictions']} empty" if r["empty_predictions"] else "" for r in rows
            ]
    all_note = f"; 'all' real images plotted at {pool}" if "all" in config.n_real else ""
    line_chart(
        out / "dice_vs_real.png",
        x,
        series,
        title=f"{config.segmenter_label}: Dice against real training images, "
        "with and without synthetic pairs",
        xlabel="real training images",
        ylabel=f"Dice (mean ± sd over {config.repeats} repeat(s))",
        point_notes=notes,
        footnote="'N empty': predictions with no foreground, over all repeats (Dice 0)" + all_note,
    )
    if not diffs:
        return
    lines: dict[str, list[dict[str, Any] | None]] = {}
    for d in diffs:
        label = f"{d['test']}, {arm_label(d['arm'], config.protocol, d['n_synthetic'])}"
        lines.setdefault(label, [None] * len(x))[config.n_real.index(d["n_real"])] = d
    difference_chart(
        out / "dice_difference.png",
        x,
        lines,
        title=f"{config.segmenter_label}: paired Dice difference to real-only",
        xlabel="real training images"
        + (f" ('all' at {pool})" if all_note else "")
        + "; hollow: the 95% CI crosses 0",
        ylabel="Dice difference (95% CI)",
    )


def write_reports(
    config: Any, out: Path, records: list[dict[str, Any]], pool_size: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Write ``table.csv``, ``differences.csv``, ``table.md`` and the charts."""
    table = summarise(config, records)
    diffs = differences(config, out, records)
    atomic_write_bytes(out / "table.csv", csv_bytes(table))
    if diffs:
        atomic_write_bytes(out / "differences.csv", csv_bytes(diffs))
    atomic_write_bytes(out / "table.md", markdown(config, table, diffs).encode())
    charts(config, out, table, diffs, pool_size)
    return table, diffs
