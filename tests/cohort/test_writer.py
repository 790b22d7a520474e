"""The cohort writer's protocol between processes, without a model."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from fusynth.cohort.writer import CohortWriter, open_cohort
from fusynth.core.errors import UserInputError


class _Process:
    """A stand-in for accelerate's PartialState of one of several processes."""

    def __init__(self, main: bool, on_barrier=lambda: None):
        self.device = SimpleNamespace(type="cpu")
        self.is_main_process = main
        self.on_barrier = on_barrier

    def wait_for_everyone(self):
        self.on_barrier()


def test_every_process_reads_out_before_the_main_one_writes(tmp_path):
    out = tmp_path / "cohort"
    seen = []
    state = _Process(True, on_barrier=lambda: seen.append(out.exists()))
    writer, _ = open_cohort(out, {"seed": 1}, 4, 2, False, state, cpu_threads=1)
    assert writer is not None
    assert seen[0] is False, "the first barrier must come before the main process writes"
    # A process that checks after set-up sees the same cohort, to resume.
    other, _ = open_cohort(out, {"seed": 1}, 4, 2, False, _Process(False), cpu_threads=1)
    assert other is not None and other.check() == "resume"


def test_a_folder_with_other_content_is_refused(tmp_path):
    (tmp_path / "x.txt").write_text("not a cohort")
    with pytest.raises(UserInputError, match="is not empty and was not written by fusynth"):
        CohortWriter(tmp_path, {"seed": 1}, 4, 2).check()


def test_a_different_request_names_the_field(tmp_path):
    CohortWriter(tmp_path, {"seed": 1}, 4, 2).setup("new")
    with pytest.raises(UserInputError, match=r"seed: 1 there, 2 now"):
        CohortWriter(tmp_path, {"seed": 2}, 4, 2).check()
