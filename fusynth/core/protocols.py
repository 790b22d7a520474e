"""Arms and protocols of the augmentation experiments, and their paired statistics.

An **arm** says what a model trains on besides its K real images: nothing (``real``,
always present: the baseline), classical augmentations of them (``real+classical``), M
synthetic samples (``real+synthetic``) or both (``real+classical+synthetic``). A
**protocol** says how an arm with synthetic data uses it:

- ``mix``: one training run on the concatenation;
- ``pretrain-finetune``: pretrain on the synthetic part for ``--pretrain_steps``, then
  fine-tune on the real part for the rest of the same step budget (Tian et al. 2025);
- ``synthetic-only``: train on the synthetic part alone (the real-only arm beside it).

Arms share seeds and test images, so each arm is compared with real-only image by image:
:func:`paired_rows` gives the paired difference, its subject-bootstrap interval and a
sign-flip permutation p-value per table cell (:func:`fusynth.core.stats.paired_difference_test`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fusynth.core.errors import UserInputError

ARMS = ("real", "real+classical", "real+synthetic", "real+classical+synthetic")
PROTOCOLS = ("mix", "pretrain-finetune", "synthetic-only")
REAL = "real"


@dataclass(frozen=True)
class Arm:
    """One arm: whether it adds classical copies and synthetic samples."""

    name: str

    @property
    def classical(self) -> bool:
        return "classical" in self.name.split("+")

    @property
    def synthetic(self) -> bool:
        return "synthetic" in self.name.split("+")


@dataclass(kw_only=True)
class ProtocolSettings:
    """The arm and protocol settings every augmentation experiment takes (its config
    dataclass derives from this one; field names are the flags)."""

    arms: list[str] | None = None  # None: real, and real+synthetic with counts above 0
    protocol: str = "mix"
    pretrain_steps: int | None = None
    classical_copies: int = 4
    n_boot: int = 1000
    preset: str | None = None  # recorded: the request came from this preset

    def check_protocol_settings(self, any_synthetic: bool, max_train_steps: int | None) -> None:
        """Resolve ``arms`` and refuse settings that do not fit (naming the flag).

        Args:
            any_synthetic: whether the request has a synthetic count above 0.
            max_train_steps: the step budget of a cell.
        """
        self.arms = parse_arms(self.arms, any_synthetic)
        check_protocol(self.protocol, max_train_steps, self.pretrain_steps)
        if self.classical_copies < 1:
            raise UserInputError(
                f"--classical_copies: must be at least 1, got {self.classical_copies}"
            )
        if self.n_boot < 1:
            raise UserInputError(f"--n_boot: must be at least 1, got {self.n_boot}")


def parse_arms(text: str | Sequence[str] | None, any_synthetic: bool) -> list[str]:
    """The arms asked for, real-only first and always present.

    Args:
        text: comma-separated names (or a list); None: ``real`` plus ``real+synthetic``
            when there are synthetic counts above 0.
        any_synthetic: whether the request has a synthetic count above 0.

    Raises:
        UserInputError: an unknown arm (the nearest valid one suggested), or a synthetic
            arm without a synthetic count above 0.
    """
    import difflib

    if text is None:
        return [REAL, "real+synthetic"] if any_synthetic else [REAL]
    names = [t.strip() for t in text.split(",")] if isinstance(text, str) else list(text)
    names = [n for n in names if n]
    for n in names:
        if n not in ARMS:
            near = difflib.get_close_matches(n, ARMS, n=1)
            hint = f" (did you mean {near[0]}?)" if near else ""
            raise UserInputError(f"--arms: unknown arm {n!r}{hint}; choose from {', '.join(ARMS)}")
    if any(Arm(n).synthetic for n in names) and not any_synthetic:
        raise UserInputError("--arms: a synthetic arm needs a synthetic count above 0")
    return [a for a in ARMS if a == REAL or a in names]  # canonical order, real first


def check_protocol(protocol: str, max_train_steps: int | None, pretrain_steps: int | None) -> None:
    """Refuse an unknown protocol and a pretraining budget that does not fit.

    Raises:
        UserInputError: naming ``--protocol`` or ``--pretrain_steps``.
    """
    if protocol not in PROTOCOLS:
        raise UserInputError(f"--protocol: {protocol!r} is not one of {', '.join(PROTOCOLS)}")
    if protocol == "pretrain-finetune":
        if max_train_steps is None or pretrain_steps is None:
            raise UserInputError(
                "--pretrain_steps: pretrain-finetune splits one step budget; give "
                "--max_train_steps (the total) and --pretrain_steps (the synthetic part)"
            )
        if not 0 < pretrain_steps < max_train_steps:
            raise UserInputError(
                f"--pretrain_steps: must be between 1 and --max_train_steps - 1 "
                f"({max_train_steps - 1}), got {pretrain_steps}"
            )
    elif pretrain_steps is not None:
        raise UserInputError("--pretrain_steps: only with --protocol pretrain-finetune")


def arm_protocol(arm: str, protocol: str) -> str:
    """The protocol an arm actually follows: arms without synthetic data always mix."""
    return protocol if Arm(arm).synthetic else "mix"


def cell_suffix(arm: str, protocol: str) -> str:
    """What a cell's folder name adds for its arm (empty for real and mixed synthetic, so
    folders of earlier experiments keep their names)."""
    parts = []
    if Arm(arm).classical:
        parts.append("classical")
    if arm_protocol(arm, protocol) != "mix":
        parts.append(protocol)
    return "".join(f"-{p}" for p in parts)


# ----------------------------------------------------------------------------- paired


def per_image_means(runs: Sequence[dict[str, tuple[str, float | None]]]) -> dict[str, Any]:
    """Average each image's value over repeats.

    Args:
        runs: one dict per repeat, ``image key -> (subject_id, value)``.

    Returns:
        ``key -> (subject_id, mean over the repeats where it is finite)``; NaN where none is.
    """
    out: dict[str, Any] = {}
    for key in runs[0] if runs else ():
        vals = [r[key][1] for r in runs if key in r]
        vals = [v for v in vals if v is not None and math.isfinite(v)]
        out[key] = (runs[0][key][0], sum(vals) / len(vals) if vals else math.nan)
    return out


def paired_rows(
    groups: Sequence[dict[str, Any]],
    values: Callable[[dict[str, Any], str], dict[str, tuple[str, float | None]]],
    metrics: Sequence[str],
    n_boot: int,
    seed: int,
) -> list[dict[str, Any]]:
    """Paired differences ``arm - real`` of each metric, one row per group and metric.

    Args:
        groups: ``{"row": {...fields of the table row...}, "arm": [cells], "real":
            [cells]}``, the cells of both arms in repeat order.
        values: ``(cell, metric) -> {key: (subject_id, value)}`` per-image values of a cell.
        metrics: metrics to compare.
        n_boot: bootstrap resamples (the permutation test draws ten times as many sign
            vectors when it cannot enumerate them).
        seed: seed of both.

    Returns:
        Rows with the group's fields, ``metric``, ``difference``, ``ci_low``, ``ci_high``,
        ``p_value``, ``crosses_zero``, ``n_images`` and ``n_subjects``.

    Raises:
        RuntimeError: the two arms scored different images (they share a test set).
    """
    from fusynth.core.stats import paired_difference_test

    rows = []
    for g in groups:
        for metric in metrics:
            a = per_image_means([values(c, metric) for c in g["real"]])
            b = per_image_means([values(c, metric) for c in g["arm"]])
            if set(a) != set(b):
                raise RuntimeError(f"{g['row']}: the arm and real-only scored different images")
            keys = sorted(a)
            t = paired_difference_test(
                [a[k][1] for k in keys],
                [b[k][1] for k in keys],
                [a[k][0] for k in keys],
                n_boot=n_boot,
                n_perm=10 * n_boot,
                seed=seed,
            )
            rows.append({**g["row"], "metric": metric, **t})
    return rows


def markdown_rows(rows: Sequence[dict[str, Any]], fields: Sequence[str], digits: int = 3) -> str:
    """A Markdown table of paired differences; a cell whose interval crosses zero is
    marked ``(ns)``."""
    head = [*fields, "metric", "difference", "95% CI", "p", ""]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        d = r["difference"]
        if not math.isfinite(d):
            diff, ci, p = "n/a", "n/a", "n/a"
        else:
            diff = f"{d:+.{digits}f}"
            ci = f"[{r['ci_low']:+.{digits}f}, {r['ci_high']:+.{digits}f}]"
            p = f"{r['p_value']:.3g}"
        mark = "(ns)" if r["crosses_zero"] else ""
        lines.append(
            "| " + " | ".join([*(str(r[f]) for f in fields), r["metric"], diff, ci, p, mark]) + " |"
        )
    return "\n".join(lines) + "\n"


def difference_chart(
    path: str | Path,
    x: Sequence[float],
    series: dict[str, list[dict[str, Any] | None]],
    title: str,
    xlabel: str,
    ylabel: str,
) -> Path:
    """Paired difference to real-only against ``x``, with asymmetric 95% intervals; the
    zero line is drawn and points whose interval crosses it are hollow.

    Args:
        series: name -> one paired row (or None: a gap) per x.
    """
    from fusynth.core.plots import _figure, _save

    fig, ax = _figure()
    ax.axhline(0.0, color="0.5", linewidth=1, linestyle="--")
    for name, rows in series.items():
        if len(rows) != len(x):
            raise ValueError(f"series {name!r} has {len(rows)} points for {len(x)} x values")
        ys = [math.nan if r is None else r["difference"] for r in rows]
        lo = [
            0.0 if r is None or not math.isfinite(r["ci_low"]) else r["difference"] - r["ci_low"]
            for r in rows
        ]
        hi = [
            0.0 if r is None or not math.isfinite(r["ci_high"]) else r["ci_high"] - r["difference"]
            for r in rows
        ]
        line = ax.errorbar(list(x), ys, yerr=[lo, hi], marker="o", capsize=3, label=name)
        hollow = [
            (xv, y)
            for xv, y, r in zip(x, ys, rows, strict=True)
            if r is not None and r["crosses_zero"]
        ]
        if hollow:
            ax.plot(
                *zip(*hollow, strict=True), "o", markerfacecolor="white", color=line[0].get_color()
            )
    ax.set_xticks(sorted(set(x)))
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize="small")
    return _save(fig, path)
