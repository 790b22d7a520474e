"""The cohort writer's protocol between processes, without a model."""

from __future__ import annotations

import json
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


def _rows(indices, seed):
    """Schema rows of a stand-in generator: one 4x4 image per index, its value seeded."""
    import numpy as np

    from fusynth.data.images import encode_png

    return [
        {
            "image": {"bytes": encode_png(np.full((4, 4), (seed * 10 + i) % 256, np.uint8))},
            "mask": None,
            "view": 0,
            "subject_id": f"s{i}",
            "cohort": "synthetic",
            "center": "c",
            "pixel_spacing_mm": None,
            "head_circumference_mm": None,
            "split": "train",
            "synthetic": True,
            "provenance": "{}",
        }
        for i in indices
    ]


def _write(out, seed, overwrite=False, stop_after=None):
    """Write a 4-sample cohort of ``seed``; ``stop_after`` shards: a kill after them."""
    from fusynth.cohort.writer import run_cohort

    writer, _ = open_cohort(out, {"seed": seed}, 4, 2, overwrite, _Process(True), cpu_threads=1)
    if writer is None:
        return None
    if stop_after is not None:
        for k in writer.pending()[:stop_after]:
            writer.write_shard(k, _rows(writer.shard_indices(k), seed))
        return writer
    return run_cohort(writer, lambda idx: _rows(idx, seed))


def _pixels(out):
    import datasets
    import numpy as np

    return [int(np.asarray(r["image"])[0, 0]) for r in datasets.load_from_disk(str(out))["train"]]


def test_overwrite_builds_beside_and_keeps_the_old_cohort_whole_until_the_swap(tmp_path):
    out = tmp_path / "cohort"
    _write(out, 1)
    assert _pixels(out) == [10, 11, 12, 13]
    # A replacement stopped half-way: the old cohort is untouched, the new one waits beside.
    writer = _write(out, 2, overwrite=True, stop_after=1)
    assert writer.root == tmp_path / ".cohort.fusynth-new"
    assert _pixels(out) == [10, 11, 12, 13]
    assert json.loads((out / "request.json").read_text())["seed"] == 1
    # The rerun resumes the replacement (only the missing shard) and swaps it in.
    writer, _ = open_cohort(out, {"seed": 2}, 4, 2, True, _Process(True), cpu_threads=1)
    assert writer.pending() == [1]
    from fusynth.cohort.writer import run_cohort

    run_cohort(writer, lambda idx: _rows(idx, 2))
    assert _pixels(out) == [20, 21, 22, 23]
    assert json.loads((out / "request.json").read_text())["seed"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cohort"]


def test_a_swap_stopped_between_its_renames_is_finished_by_the_rerun(tmp_path, monkeypatch):
    import os

    import fusynth.cohort.writer as writer_module

    out = tmp_path / "cohort"
    _write(out, 1)

    def killed_mid_swap(staging):  # the old cohort moved aside, the new one not yet in
        os.replace(out, tmp_path / ".cohort.fusynth-old")
        raise SystemExit(137)

    monkeypatch.setattr(writer_module, "swap_in", killed_mid_swap)
    with pytest.raises(SystemExit):
        _write(out, 2, overwrite=True)
    assert not out.exists() and (tmp_path / ".cohort.fusynth-new" / "dataset_dict.json").is_file()
    monkeypatch.undo()
    assert _write(out, 2) is None  # no --overwrite needed: only the swap was left to do
    assert _pixels(out) == [20, 21, 22, 23]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cohort"]
