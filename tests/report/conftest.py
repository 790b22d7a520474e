"""Run folders made by the real commands at tiny size, for the report tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def real_runs(phantom_prepared, tiny_lora, audited_cohort, tmp_path_factory):
    """Folders the real commands wrote at tiny size: the phantom dataset, a LoRA, its
    audited cohort, and a clustering of both (pixels, k=2)."""
    from fusynth.cli.main import main

    out = tmp_path_factory.mktemp("report_runs") / "clustering"
    argv = ["evaluate", "clustering", "--embed", "pixels", "--data", str(phantom_prepared)]
    argv += ["--extra", str(audited_cohort), "--k", "2", "--out", str(out)]
    assert main(argv) == 0
    return {
        "dataset": phantom_prepared,
        "lora": tiny_lora,
        "cohort": audited_cohort,
        "clustering": out,
    }
