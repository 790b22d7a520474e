"""``scripts/check_published.py``, the last step of ``make demo``: it loads dry-run Hub
folders with the stock libraries and names the one that does not load."""

from __future__ import annotations

import sys
from pathlib import Path

from safetensors.torch import load_file, save_file

from fusynth.publish.hub import publish_dry_run

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import check_published  # noqa: E402


def test_loads_the_published_folders_and_names_a_broken_one(
    tiny_lora, audited_cohort, tiny_sam, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("FUSYNTH_CACHE", str(tmp_path / "cache"))  # the smoke base, built once
    root = tmp_path / "publish"
    publish_dry_run("model", tiny_lora, "me/lora", root / "lora")
    publish_dry_run("cohort", audited_cohort, "me/cohort", root / "cohort")
    publish_dry_run("model", tiny_sam, "me/sam", root / "sam")
    assert check_published.main([str(root)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 3
    assert "LoRA loaded into" in out[0] and "(64, 64, 3)" in out[0]
    assert "6 samples, views ['femur', 'head']" in out[1]
    assert "tiny SAM loaded strictly" in out[2]

    weights = root / "sam" / "model.safetensors"
    state = load_file(str(weights))
    state.pop(next(iter(state)))
    save_file(state, str(weights))
    assert check_published.main([str(root)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "sam: does not load with the stock libraries" in err
