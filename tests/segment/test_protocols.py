"""``experiment seg-augment`` arms and protocols, with paired differences, end to end."""

from __future__ import annotations

import csv
import json
import math

import pytest
from PIL import Image

from fusynth.cli.main import main
from tests.conftest import SHARED_DATA, requires_shared_data
from tests.segment.test_finetune import _dataset, _head

FAST = ["--max_train_steps", "3", "--train_batch_size", "2", "--n_boot", "200"]


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    rows = [("train", f"t{i}", _head(i=i % 5)) for i in range(6)]
    rows += [("validation", "v0", _head(i=1))]
    rows += [("test", f"x{i}", _head(i=i)) for i in range(3)]
    return _dataset(tmp_path_factory.mktemp("real") / "real", rows)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    rows = [("train", f"synthetic:{i}", _head(i=i % 4)) for i in range(4)]
    return _dataset(tmp_path_factory.mktemp("synth") / "synth", rows)


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("FUSYNTH_CACHE", str(tmp_path_factory.getbasetemp() / "fusynth-cache"))


def _csv(path):
    with path.open() as fh:
        return list(csv.DictReader(fh))


def _run(real, synthetic, out, *extra):
    return main(
        ["experiment", "seg-augment", "--real", str(real), "--test", str(real),
         "--synthetic", str(synthetic), "--n_real", "2", "--n_synthetic", "3",
         "--out", str(out), *FAST, *extra]
    )  # fmt: skip


def test_four_arms_share_seeds_and_are_compared_pairwise(real, synthetic, tmp_path, capsys):
    out = tmp_path / "exp"
    arms = "real+classical+synthetic,real+classical,real+synthetic"  # real is added
    assert _run(real, synthetic, out, "--arms", arms, "--repeats", "1",
                "--classical_copies", "2") == 0  # fmt: skip
    printed = capsys.readouterr().out
    results = _csv(out / "results.csv")
    assert {(r["protocol"], r["arm"], r["n_synthetic"], r["n_classical"]) for r in results} == {
        ("mix", "real", "0", "0"),
        ("mix", "real+classical", "0", "4"),  # 2 copies of each of 2 real images
        ("mix", "real+synthetic", "3", "0"),
        ("mix", "real+classical+synthetic", "3", "4"),
    }
    assert len(results) == 4
    # What each cell trained on, as its fine-tuning recorded it.
    cfg = json.loads((out / "cells" / "k2-m3-classical-r0" / "model" / "config.json").read_text())
    assert (cfg["num_real"], cfg["num_synthetic"], cfg["seed"]) == (2, 4 + 3, 0)
    assert not list((out / "cells" / "k2-m3-classical-r0").glob("data-*"))  # cleaned up
    request = json.loads((out / "experiment.json").read_text())
    assert request["classical"]["pipeline"].endswith("ClassicalAugment")
    # One paired row per arm other than real and per metric; statistics are coherent.
    diffs = _csv(out / "differences.csv")
    dice = [d for d in diffs if d["metric"] == "dice"]
    assert {d["arm"] for d in dice} == {"real+classical", "real+synthetic",
                                        "real+classical+synthetic"}  # fmt: skip
    for d in dice:
        lo, diff, hi, p = (float(d[k]) for k in ("ci_low", "difference", "ci_high", "p_value"))
        assert lo <= diff <= hi and 0 < p <= 1 and d["n_subjects"] == "3"
        assert d["crosses_zero"] == str(lo <= 0 <= hi)
        # The difference is that of the arms' mean Dice (the same images).
        arm = [float(r["dice"]) for r in results if r["arm"] == d["arm"]]
        base = [float(r["dice"]) for r in results if r["arm"] == "real"]
        assert diff == pytest.approx(sum(arm) / len(arm) - sum(base) / len(base), abs=1e-9)
    assert "Paired difference to real-only" in printed and "| real:test | real | 2 | 0 |" in printed
    with Image.open(out / "dice_difference.png") as im:
        assert im.size[0] > 300
    # A rerun trains nothing.
    stamp = (out / "cells" / "k2-m0-classical-r0" / "cell.json").stat().st_mtime_ns
    assert _run(real, synthetic, out, "--arms", arms, "--repeats", "1",
                "--classical_copies", "2") == 0  # fmt: skip
    assert (out / "cells" / "k2-m0-classical-r0" / "cell.json").stat().st_mtime_ns == stamp


@pytest.mark.parametrize("protocol", ["pretrain-finetune", "synthetic-only"])
def test_protocols_keep_the_real_only_baseline(real, synthetic, tmp_path, protocol):
    out = tmp_path / protocol
    extra = ["--max_train_steps", "4", "--pretrain_steps", "2"] if protocol[0] == "p" else []
    assert _run(real, synthetic, out, "--protocol", protocol, "--repeats", "1", *extra) == 0
    results = {r["arm"]: r for r in _csv(out / "results.csv")}
    assert results["real"]["protocol"] == "mix"  # the baseline is the same under any protocol
    assert results["real+synthetic"]["protocol"] == protocol
    folder = out / "cells" / f"k2-m3-{protocol}-r0"
    cfg = json.loads((folder / "model" / "config.json").read_text())
    if protocol == "pretrain-finetune":
        # The same budget: 2 steps on synthetic pairs, then 2 on the real images.
        assert results["real+synthetic"]["pretrain_steps"] == "2"
        assert results["real+synthetic"]["steps"] == results["real"]["steps"] == "4"
        assert (cfg["num_real"], cfg["num_synthetic"]) == (2, 0)
        assert cfg["checkpoint"].endswith("pretrain")
        assert not (folder / "pretrain" / "model.safetensors").exists()
    else:
        assert (cfg["num_real"], cfg["num_synthetic"]) == (3, 0)  # the 3 pairs alone
    diffs = _csv(out / "differences.csv")
    assert {(d["protocol"], d["metric"]) for d in diffs} >= {(protocol, "dice")}


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--arms", "real+clasical"], "did you mean real+classical"),
        (["--protocol", "pretrain-finetune"], "--pretrain_steps: pretrain-finetune splits"),
        (["--protocol", "pretrain-finetune", "--pretrain_steps", "3"], "between 1 and"),
        (["--pretrain_steps", "1"], "only with --protocol pretrain-finetune"),
        (["--n_synthetic", "0", "--arms", "real+synthetic"], "needs a synthetic count"),
    ],
)
def test_bad_arms_and_protocols_exit_2(real, synthetic, tmp_path, capsys, extra, needle):
    assert _run(real, synthetic, tmp_path / "e", *extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0]
    assert not (tmp_path / "e").exists()


@requires_shared_data
def test_classical_arm_on_real_hc18_heads(tmp_path, capsys):
    """The real samples: HC18 heads, a classical arm against real-only."""
    data = tmp_path / "hc18"
    assert main(["data", "prepare", "--format", "hc18", str(SHARED_DATA / "hc18"), str(data)]) == 0
    code = main(
        ["experiment", "seg-augment", "--real", str(data), "--test", str(data),
         "--n_real", "2", "--n_synthetic", "0", "--arms", "real,real+classical",
         "--classical_copies", "1", "--repeats", "1", "--out", str(tmp_path / "e"), *FAST]
    )  # fmt: skip
    assert code == 0
    d = next(r for r in _csv(tmp_path / "e" / "differences.csv") if r["metric"] == "dice")
    assert math.isfinite(float(d["difference"])) and int(d["n_images"]) > 0
