"""The pieces that keep outputs whole: the staging sibling of an overwrite and its swap,
stale temporary files, one byte order for safetensors headers, and the run log."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from fusynth.core.io import canonical_safetensors, remove_stale_temps
from fusynth.core.loop import final_dir, read_train_log, staging_dir, swap_in, write_train_log


def test_the_swap_replaces_the_old_run_only_with_a_complete_one(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "old.txt").write_text("old")
    staging = staging_dir(out)
    assert staging == tmp_path / ".run.fusynth-new" and final_dir(staging) == out
    assert final_dir(out) == out and swap_in(out) == out  # not staged: nothing moves
    staging.mkdir()
    (staging / "new.txt").write_text("new")
    (tmp_path / ".run.fusynth-old").mkdir()  # left by a kill in an earlier swap
    assert swap_in(staging) == out
    assert [p.name for p in out.iterdir()] == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_stale_temporary_files_are_removed_and_nothing_else(tmp_path):
    for name in (".final.tmp", ".final.tmp-ab12", ".checkpoint-4.tmp"):
        (tmp_path / name).mkdir()
    (tmp_path / ".request.json.tmp-x1").write_text("half")
    keep = [".fusynth.json", "checkpoint-4", "tmp", "notes.tmp"]
    for name in keep:
        (tmp_path / name).write_text("")
    assert remove_stale_temps(tmp_path) == [
        ".checkpoint-4.tmp",
        ".final.tmp",
        ".final.tmp-ab12",
        ".request.json.tmp-x1",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(keep)


def test_safetensors_headers_get_one_byte_order(tmp_path):
    tensors = {"b": torch.arange(3.0), "a": torch.ones(2, 2)}
    save_file(tensors, str(tmp_path / "x.safetensors"), metadata={"zz": "1", "format": "pt"})
    before = (tmp_path / "x.safetensors").read_bytes()
    canonical_safetensors(tmp_path)
    after = (tmp_path / "x.safetensors").read_bytes()
    assert len(after) == len(before) and after[:8] == before[:8]
    size = int.from_bytes(after[:8], "little")
    header = after[8 : 8 + size].decode().rstrip()
    assert header == json.dumps(json.loads(header), sort_keys=True, separators=(",", ":"))
    loaded = load_file(str(tmp_path / "x.safetensors"))
    assert all(torch.equal(loaded[k], tensors[k]) for k in tensors)
    with safe_open(str(tmp_path / "x.safetensors"), "pt") as fh:
        assert fh.metadata() == {"format": "pt", "zz": "1"}


def test_a_checkpoint_log_fills_the_runs_series_in_place(tmp_path):
    losses, validation = [9.0], []
    write_train_log(tmp_path, 2, {"losses": [1.0, 0.5], "validation": [{"step": 2}]})
    read_train_log(tmp_path, {"losses": losses, "validation": validation})
    assert losses == [1.0, 0.5] and validation == [{"step": 2}]
    older = Path(tmp_path / "older")
    older.mkdir()
    read_train_log(older, {"losses": losses})  # a checkpoint without a log: empty series
    assert losses == []
