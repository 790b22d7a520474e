"""One section per run folder, built from that folder's own files.

Every number shown is read from a file the run wrote (``config.json``,
``train_log.json``, ``request.json``, ``cohort_audit.json``, ``summary.json``,
``metrics.json``, ...); nothing a command measured is recomputed here. Pictures are the
run's own PNGs, plus loss curves drawn from the logged losses.
"""

from __future__ import annotations

from collections.abc import Callable

from fusynth.report.detect import Run
from fusynth.report.model import Section
from fusynth.report.sections.cohorts import cohort, cohort_audit, pairs, pairs_audit
from fusynth.report.sections.common import Context, anchor_for, new_section
from fusynth.report.sections.data import dataset, phantom_source
from fusynth.report.sections.evaluations import (
    classification,
    clustering,
    experiment,
    segmentation,
)
from fusynth.report.sections.published import published
from fusynth.report.sections.training import classifier, diffusion_adapter, sam, ssl

__all__ = ["BUILDERS", "Context", "build_sections"]


#: The builder of each kind's section.
BUILDERS: dict[str, Callable[[Run, Context, Section], None]] = {
    "phantom_source": phantom_source,
    "dataset": dataset,
    "ssl": ssl,
    "lora": diffusion_adapter,
    "controlnet": diffusion_adapter,
    "cohort": cohort,
    "pairs": pairs,
    "cohort_audit": cohort_audit,
    "pairs_audit": pairs_audit,
    "clustering": clustering,
    "classifier": classifier,
    "classification": classification,
    "zeroshot": classification,
    "sam": sam,
    "segmentation": segmentation,
    "seg_augment": experiment,
    "cls_augment": experiment,
    "published": published,
}


def build_sections(runs: list[Run]) -> list[Section]:
    """One section per run, in the runs' order."""
    ctx = Context(runs)
    used: set[str] = set()
    out = []
    for run in runs:
        sec = new_section(run, anchor_for(run, used))
        BUILDERS[run.kind](run, ctx, sec)
        out.append(sec)
    return out
