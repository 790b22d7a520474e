"""``experiment seg-augment`` arms and protocols, with paired Dice differences."""

from __future__ import annotations

import csv
import itertools
import json

import numpy as np
import pytest

from fusynth.cli.main import main
from tests.conftest import SHARED_DATA, requires_shared_data
from tests.segment.test_finetune import _dataset, _head


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    rows = [("train", f"t{i}", _head(i=i % 5)) for i in range(6)]
    rows += [("validation", f"v{i}", _head(i=i)) for i in range(2)]
    rows += [("test", f"x{i}", _head(i=i)) for i in range(3)]
    return _dataset(tmp_path_factory.mktemp("real") / "real", rows)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    rows = [("train", f"synthetic:{i}", _head(i=i % 4)) for i in range(4)]
    return _dataset(tmp_path_factory.mktemp("pairs") / "pairs", rows)


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("FUSYNTH_CACHE", str(tmp_path_factory.getbasetemp() / "fusynth-cache"))


def _argv(real, pairs, out, *extra):
    return ["experiment", "seg-augment", "--real", str(real), "--test", str(real),
            "--synthetic", str(pairs), "--n_real", "2", "--n_synthetic", "2", "--repeats", "1",
            "--max_train_steps", "2", "--train_batch_size", "2", "--n_boot", "200",
            "--out", str(out), *extra]  # fmt: skip


def _csv(path):
    with path.open() as fh:
        return list(csv.DictReader(fh))


def _dice(eval_dir):
    """``key -> (subject, Dice)`` read by hand from per_image.csv (one row per image)."""
    return {r["key"]: (r["subject_id"], float(r["dice"])) for r in _csv(eval_dir / "per_image.csv")}


def _exact_p(diffs_by_subject):
    """Two-sided sign-flip p over every sign vector, computed here by hand."""
    total = abs(sum(diffs_by_subject))
    hits = [
        abs(sum(e * d for e, d in zip(signs, diffs_by_subject, strict=True))) >= total - 1e-12
        for signs in itertools.product((1, -1), repeat=len(diffs_by_subject))
    ]
    return sum(hits) / len(hits)


def test_classical_arms_pair_with_real_only_image_by_image(real, pairs, tmp_path):
    out = tmp_path / "exp"
    arms = "real+classical,real+classical+synthetic"
    assert main(_argv(real, pairs, out, "--arms", arms, "--classical_copies", "1")) == 0
    rows = {r["arm"]: r for r in _csv(out / "results.csv")}
    assert set(rows) == {"real", "real+classical", "real+classical+synthetic"}
    assert all(r["protocol"] == "mix" for r in rows.values())
    assert rows["real+classical"]["n_classical"] == "2"  # one copy of each of the 2 images
    cfg = {
        name: json.loads((out / "cells" / name / "model" / "config.json").read_text())
        for name in ("k2-m0-r0", "k2-m0-classical-r0", "k2-m2-classical-r0")
    }
    # The same real images in every arm; the copies (and the 2 pairs) come as added data.
    assert cfg["k2-m0-r0"]["num_real"] == cfg["k2-m0-classical-r0"]["num_real"] == 2
    assert cfg["k2-m0-classical-r0"]["num_synthetic"] == 2
    assert cfg["k2-m2-classical-r0"]["num_synthetic"] == 2 + 2
    assert not list(out.glob("cells/*/data-*"))  # added pairs are not kept
    request = json.loads((out / "experiment.json").read_text())
    assert request["classical"]["pipeline"] == "fusynth.data.augment.ClassicalAugment"
    # Paired differences, checked against per_image.csv by hand.
    base = _dice(out / "cells" / "k2-m0-r0" / "eval-real-test")
    diffs = _csv(out / "differences.csv")
    assert {d["arm"] for d in diffs} == {"real+classical", "real+classical+synthetic"}
    for d in diffs:
        name = "k2-m0-classical-r0" if d["arm"] == "real+classical" else "k2-m2-classical-r0"
        other = _dice(out / "cells" / name / "eval-real-test")
        per = [other[k][1] - base[k][1] for k in sorted(base)]
        assert float(d["difference"]) == pytest.approx(np.mean(per), abs=1e-9)
        assert (d["n_images"], d["n_subjects"]) == ("3", "3")
        assert float(d["p_value"]) == pytest.approx(_exact_p(per))
        lo, hi = float(d["ci_low"]), float(d["ci_high"])
        assert lo <= float(d["difference"]) <= hi
        assert d["crosses_zero"] == str(lo <= 0 <= hi)
    md = (out / "table.md").read_text()
    assert "Paired Dice difference to real-only" in md
    assert "| real:test | real+classical | 2 | 0 |" in md
    assert (out / "dice_difference.png").is_file() and (out / "dice_vs_real.png").is_file()


@pytest.mark.parametrize("protocol", ["pretrain-finetune", "synthetic-only"])
def test_protocols_on_the_phantom(phantom_prepared, pairs, tmp_path, protocol):
    out = tmp_path / protocol
    extra = ["--protocol", protocol]
    if protocol == "pretrain-finetune":
        extra += ["--max_train_steps", "3", "--pretrain_steps", "1"]
    else:
        extra += ["--n_real", "2,all"]  # the phantom's 5 training heads
    argv = _argv(phantom_prepared, pairs, out, *extra)
    assert main(argv) == 0
    results = _csv(out / "results.csv")
    assert {"protocol", "arm"} <= set(results[0])
    real = [r for r in results if r["arm"] == "real"]
    synth = next(r for r in results if r["arm"] == "real+synthetic")
    assert all(r["protocol"] == "mix" for r in real) and synth["protocol"] == protocol
    if protocol == "pretrain-finetune":
        cell = out / "cells" / "k2-m2-pretrain-finetune-r0"
        assert synth["steps"] == real[0]["steps"] == "3" and synth["pretrain_steps"] == "1"
        cfg = json.loads((cell / "model" / "config.json").read_text())
        pre = json.loads((cell / "pretrain" / "config.json").read_text())
        assert cfg["checkpoint"] == str(cell / "pretrain")  # the real stage starts there
        assert (cfg["num_real"], cfg["num_synthetic"]) == (2, 0)
        assert (pre["num_real"], pre["num_synthetic"]) == (2, 0)  # the 2 pairs, alone
        assert pre["validation"].endswith(":validation")  # validated on real images
        real_cfg = json.loads((out / "cells" / "k2-m0-r0" / "model" / "config.json").read_text())
        assert cfg["learning_rate"] == real_cfg["learning_rate"]
    else:
        assert {r["n_real"] for r in real} == {"2", "all"}
        assert synth["n_real"] == "0"  # one model for every K: it sees no real image
        cfg = json.loads(
            (out / "cells" / "k0-m2-synthetic-only-r0" / "model" / "config.json").read_text()
        )
        assert (cfg["num_real"], cfg["num_synthetic"]) == (2, 0)
        assert cfg["validation"].endswith(":validation")
        all_cfg = json.loads((out / "cells" / "kall-m0-r0" / "model" / "config.json").read_text())
        assert all_cfg["num_real"] == 5
        diffs = _csv(out / "differences.csv")
        assert [(d["n_real"], d["arm"]) for d in diffs] == [
            ("2", "real+synthetic"),
            ("all", "real+synthetic"),
        ]
        assert "| prepared:test | real | all | 0 |" in (out / "table.md").read_text()
    # A rerun finds every cell done.
    assert main(argv) == 0


def test_unet_with_pretrain_finetune(real, pairs, tmp_path):
    out = tmp_path / "unet"
    extra = ["--segmenter", "unet", "--resolution", "64", "--protocol", "pretrain-finetune",
             "--max_train_steps", "2", "--pretrain_steps", "1"]  # fmt: skip
    assert main(_argv(real, pairs, out, *extra)) == 0
    cell = out / "cells" / "k2-m2-pretrain-finetune-r0"
    cfg = json.loads((cell / "model" / "config.json").read_text())
    assert cfg["checkpoint"] == str(cell / "pretrain")
    rows = {r["arm"]: r for r in _csv(out / "results.csv")}
    assert rows["real+synthetic"]["pretrain_steps"] == "1"
    assert len(_csv(out / "differences.csv")) == 1


def test_the_preset_runs_with_tiny_models_and_given_flags_win(real, pairs, tmp_path, capsys):
    from fusynth.core.presets import load_preset
    from fusynth.segment.experiment import SegAugmentConfig

    preset = load_preset("mask-guided-2024", "seg-augment")
    seg = SegAugmentConfig(real="r", test=["t"], out="o", synthetic="s", **preset)
    assert seg.n_real == [5, 10, 20, "all"] and seg.model_type == "vit_b"
    assert seg.train_parts == "decoder" and seg.n_synthetic == [0, 495]
    argv = ["experiment", "seg-augment", "--preset", "mask-guided-2024", "--real", str(real),
            "--test", str(real), "--synthetic", str(pairs), "--out", str(tmp_path / "e")]  # fmt: skip
    # SAM ViT-B from released weights: refused without them, before anything runs.
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--checkpoint: preset mask-guided-2024 needs it" in err[0]
    small = ["--model_type", "tiny", "--n_real", "all", "--n_synthetic", "0", "--repeats", "1",
             "--max_train_steps", "1"]  # fmt: skip
    assert main([*argv, *small]) == 0
    request = json.loads((tmp_path / "e" / "experiment.json").read_text())
    assert request["preset"] == "mask-guided-2024" and request["n_real"] == ["all"]
    assert request["model_type"] == "tiny" and request["train_parts"] == "decoder"
    assert request["n_synthetic"] == [0] and request["repeats"] == 1
    assert (tmp_path / "e" / "cells" / "kall-m0-r0" / "cell.json").is_file()


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--arms", "real+clasical"], "--arms: unknown arm 'real+clasical' (did you mean"),
        (["--pretrain_steps", "1"], "--pretrain_steps: only with --protocol pretrain-finetune"),
        (["--protocol", "pretrain-finetune", "--pretrain_steps", "2"], "--pretrain_steps: must"),
        (["--n_real", "2,most"], "--n_real: 'most' is neither an integer nor all"),
        (["--classical_copies", "0"], "--classical_copies: must be at least 1"),
        (["--n_synthetic", "0", "--arms", "real+synthetic"], "--arms: a synthetic arm needs"),
        (["--preset", "mask-guided-2023"], "--preset: unknown preset 'mask-guided-2023'"),
        (["--preset", "fulora-2024"], "--preset: fulora-2024 is a preset for"),
    ],
)
def test_bad_protocol_requests_exit_2_with_one_line(real, pairs, tmp_path, capsys, extra, needle):
    out = tmp_path / "exp"
    assert main(_argv(real, pairs, out, *extra)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0]
    assert not out.exists()


def test_a_request_without_arms_reads_as_before(real, pairs):
    """Real-only and mixed real + synthetic: the request carries no arm settings, so an
    experiment folder written before arms existed stays valid."""
    from fusynth.segment.experiment import SegAugmentConfig

    config = SegAugmentConfig(real=str(real), test=[str(real)], out="o", synthetic=str(pairs))
    request = config.request()
    assert not {"arms", "protocol", "pretrain_steps", "classical_copies", "n_boot"} & set(request)
    assert not {"preset", "classical"} & set(request)
    classical = SegAugmentConfig(
        real="r", test=["t"], out="o", n_synthetic=[0], arms="real+classical"
    ).request()
    assert classical["arms"] == ["real", "real+classical"] and classical["classical_copies"] == 4


@requires_shared_data
def test_every_arm_on_real_hc18_heads(pairs, tmp_path):
    """The real HC18 sample with a small pairs cohort: classical copies and synthetic pairs,
    pretrain-finetune (the other arms and protocols run on the phantom above)."""
    hc18 = tmp_path / "hc18"
    assert main(["data", "prepare", "--format", "hc18", str(SHARED_DATA / "hc18"), str(hc18)]) == 0
    out = tmp_path / "exp"
    arms = "real,real+classical+synthetic"
    argv = _argv(hc18, pairs, out, "--arms", arms, "--protocol", "pretrain-finetune",
                 "--max_train_steps", "2", "--pretrain_steps", "1", "--classical_copies", "1")  # fmt: skip
    assert main(argv) == 0
    rows = {r["arm"]: r for r in _csv(out / "results.csv")}
    assert set(rows) == set(arms.split(","))
    assert rows["real+classical+synthetic"]["protocol"] == "pretrain-finetune"
    assert rows["real+classical+synthetic"]["steps"] == rows["real"]["steps"] == "2"
    # Classical copies of the 2 synthetic pairs in pretraining, of the 2 real in the rest.
    assert rows["real+classical+synthetic"]["n_classical"] == "4"
    diffs = _csv(out / "differences.csv")
    assert len(diffs) == 1 and diffs[0]["n_images"] == "12"
