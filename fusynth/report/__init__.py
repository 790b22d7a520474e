"""One self-contained HTML page per run folder, or per set of them (``fusynth report``)."""

from __future__ import annotations

from fusynth.report.build import ReportResult, render, write_report
from fusynth.report.detect import KINDS, Run, detect, find_runs

__all__ = ["KINDS", "ReportResult", "Run", "detect", "find_runs", "render", "write_report"]
