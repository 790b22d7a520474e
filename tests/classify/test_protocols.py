"""``experiment cls-augment`` arms and protocols, with paired accuracy differences."""

from __future__ import annotations

import csv
import json

import pytest

from fusynth.cli.main import main


def _run(real, cohort, out, *extra):
    return main(
        ["experiment", "cls-augment", "--real", str(real), "--test", str(real),
         "--synthetic", str(cohort), "--n_synthetic_per_view", "2", "--repeats", "1",
         "--resolution", "32", "--max_train_steps", "2", "--train_batch_size", "8",
         "--n_boot", "200", "--out", str(out), *extra]
    )  # fmt: skip


def _csv(path):
    with path.open() as fh:
        return list(csv.DictReader(fh))


def test_classical_arms_beside_real_and_synthetic(phantom_prepared, small_cohort, tmp_path):
    out = tmp_path / "exp"
    arms = "real+classical,real+classical+synthetic"
    assert _run(phantom_prepared, small_cohort, out, "--arms", arms, "--classical_copies", "1") == 0
    rows = {r["arm"]: r for r in _csv(out / "results.csv")}
    assert set(rows) == {"real", "real+classical", "real+classical+synthetic"}
    assert all(r["protocol"] == "mix" for r in rows.values())
    cfg = json.loads(
        (out / "cells" / "resnet18-m2-classical-r0" / "model" / "config.json").read_text()
    )
    real_cfg = json.loads((out / "cells" / "resnet18-m0-r0" / "model" / "config.json").read_text())
    # The same real images; one classical copy of each, plus 2 synthetic per view (the
    # small cohort has two views: head and femur).
    assert cfg["real_per_view"] == real_cfg["real_per_view"]
    n_real = real_cfg["num_real"]
    assert rows["real+classical"]["n_classical"] == str(n_real)
    assert cfg["num_synthetic"] == n_real + 2 * 2
    diffs = _csv(out / "differences.csv")
    assert {d["arm"] for d in diffs} == {"real+classical", "real+classical+synthetic"}
    for d in diffs:
        lo, diff, hi = float(d["ci_low"]), float(d["difference"]), float(d["ci_high"])
        assert d["metric"] == "accuracy" and lo <= diff <= hi
        want = float(rows[d["arm"]]["accuracy"]) - float(rows["real"]["accuracy"])
        assert diff == pytest.approx(want, abs=1e-6)  # accuracy: the mean correctness
    assert "Paired accuracy difference" in (out / "table.md").read_text()
    from PIL import Image

    chart = Image.open(out / "accuracy_difference.png")
    assert chart.text["Title"].startswith("Paired accuracy difference to real-only")
    assert "resnet18" in chart.text["Description"] and "real+classical" in chart.text["Description"]


@pytest.mark.parametrize("protocol", ["pretrain-finetune"])  # synthetic-only: tests/segment
def test_protocols(phantom_prepared, small_cohort, tmp_path, protocol):
    out = tmp_path / protocol
    extra = ["--max_train_steps", "3", "--pretrain_steps", "1"] if protocol[0] == "p" else []
    assert _run(phantom_prepared, small_cohort, out, "--protocol", protocol, *extra) == 0
    rows = {r["arm"]: r for r in _csv(out / "results.csv")}
    assert (rows["real"]["protocol"], rows["real+synthetic"]["protocol"]) == ("mix", protocol)
    cfg = json.loads(
        (out / "cells" / f"resnet18-m2-{protocol}-r0" / "model" / "config.json").read_text()
    )
    if protocol == "pretrain-finetune":
        assert rows["real+synthetic"]["steps"] == rows["real"]["steps"] == "3"
        assert rows["real+synthetic"]["pretrain_steps"] == "1"
        assert cfg["weights"].endswith("model.safetensors") and cfg["num_synthetic"] == 0
    else:
        assert cfg["num_real"] == 2 * len(cfg["real_per_view"])  # the synthetic images alone


def test_pretrain_finetune_needs_a_torchvision_backbone(
    phantom_prepared, small_cohort, tmp_path, capsys
):
    argv = ["--protocol", "pretrain-finetune", "--max_train_steps", "3", "--pretrain_steps", "1",
            "--backbones", "clip:fusynth-tiny-clip"]  # fmt: skip
    assert _run(phantom_prepared, small_cohort, tmp_path / "e", *argv) == 2
    assert "torchvision backbones" in capsys.readouterr().err
