"""Tiny base and tiny data shared by the diffusion tests (built once per session)."""

from __future__ import annotations

import pytest

from fusynth.data.phantom_cohort import write_phantom_source
from fusynth.data.prepare import prepare
from fusynth.diffusion.tiny import save_tiny_base


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory):
    """A tiny SD-style base saved as a diffusers folder, as a user's local model would be."""
    return save_tiny_base(tmp_path_factory.mktemp("base") / "tiny-sd")


@pytest.fixture(scope="session")
def phantom_prepared(tmp_path_factory):
    """16 phantom frames (head, abdomen, femur, thorax) prepared at 64 px."""
    root = tmp_path_factory.mktemp("phantom")
    write_phantom_source(root / "src", n=16, size=64, seed=1)
    prepare(
        "metadata", root / "src", root / "prepared", seed=0, val_fraction=0.2, test_fraction=0.2
    )
    return root / "prepared"
