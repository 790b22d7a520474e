"""Outputs honour the user's umask: colleagues on a shared server can read them."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from fusynth.cli.main import main
from fusynth.core.io import atomic_dir, atomic_write_bytes, current_umask, make_temp_dir


@pytest.fixture
def umask():
    """Set a umask for one test and put the old one back."""
    old = os.umask(0o022)
    try:
        yield lambda mask: os.umask(mask)
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _modes(root: Path) -> dict[str, set[int]]:
    """The permission bits of every folder and file under ``root`` (itself included)."""
    out: dict[str, set[int]] = {"dirs": {_mode(root)}, "files": set()}
    for p in root.rglob("*"):
        out["dirs" if p.is_dir() else "files"].add(_mode(p))
    return out


def test_current_umask_reads_without_changing_it(umask):
    umask(0o027)
    assert current_umask() == 0o027
    assert current_umask() == 0o027  # reading did not change it


@pytest.mark.parametrize(("mask", "folder", "file"), [(0o022, 0o755, 0o644), (0o027, 0o750, 0o640)])
def test_atomic_outputs_follow_the_umask(tmp_path, umask, mask, folder, file):
    umask(mask)
    with atomic_dir(tmp_path / "out") as tmp:
        (tmp / "sub").mkdir()
        atomic_write_bytes(tmp / "sub" / "a.bin", b"x")
    written = atomic_write_bytes(tmp_path / "single.json", b"{}")
    assert _modes(tmp_path / "out") == {"dirs": {folder}, "files": {file}}
    assert _mode(written) == file
    assert _mode(make_temp_dir(".t-", tmp_path)) == folder
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".") and "tmp" in p.name]


def test_a_private_file_stays_private_whatever_the_umask(tmp_path, umask):
    umask(0o000)
    assert _mode(atomic_write_bytes(tmp_path / "salt", b"s", mode=0o600)) == 0o600


def test_prepared_dataset_and_montage_are_readable_by_others(pairs_dir, tmp_path, umask):
    umask(0o022)
    out = tmp_path / "prepared"
    argv = ["data", "prepare", "--format", "pairs", str(pairs_dir), str(out)]
    assert main([*argv, "--mask_suffix", "_mask"]) == 0
    assert main(["data", "inspect", str(out)]) == 0
    modes = _modes(out)
    assert modes == {"dirs": {0o755}, "files": {0o644}}, modes
    assert _mode(out / "montage.png") == 0o644
