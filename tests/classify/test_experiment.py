"""``fusynth experiment cls-augment``: real-only against real + synthetic, per backbone."""

from __future__ import annotations

import csv
import json

from fusynth.cli.main import main


def _run(real, cohort, out, *extra):
    return main(
        ["experiment", "cls-augment", "--real", str(real), "--test", str(real),
         "--synthetic", str(cohort), "--n_synthetic_per_view", "0,2", "--repeats", "2",
         "--resolution", "32", "--max_train_steps", "2", "--train_batch_size", "8",
         "--out", str(out), *extra]
    )  # fmt: skip


def test_both_arms_share_seeds_and_the_table_has_the_legacy_triple(
    phantom_prepared, small_cohort, tmp_path, capsys
):
    out = tmp_path / "exp"
    assert _run(phantom_prepared, small_cohort, out) == 0
    printed = capsys.readouterr().out
    assert "### resnet18" in printed and "legacy ACC" in printed
    with (out / "results.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 * 2  # arms x repeats, one backbone, one test set
    for r in (0, 1):  # both arms of a repeat trained with one seed on the same real images
        arms = [
            json.loads(
                (out / "cells" / f"resnet18-m{m}-r{r}" / "model" / "config.json").read_text()
            )
            for m in (0, 2)
        ]
        assert arms[0]["seed"] == arms[1]["seed"] == r
        assert arms[0]["num_real"] == arms[1]["num_real"] > 0
        assert arms[0]["real_per_view"] == arms[1]["real_per_view"]
        assert (arms[0]["num_synthetic"], arms[1]["num_synthetic"]) == (0, 4)
    assert all(0.0 <= float(x["accuracy"]) <= 1.0 and x["ACC"] for x in rows)
    with (out / "table.csv").open() as fh:
        table = list(csv.DictReader(fh))
    assert [t["n_synthetic_per_view"] for t in table] == ["0", "2"]
    assert all(t["accuracy_ci_low"] for t in table)
    assert not list((out / "cells").rglob("model.safetensors"))
    # A rerun trains nothing; a changed request is refused.
    stamp = (out / "cells" / "resnet18-m2-r1" / "cell.json").stat().st_mtime_ns
    assert _run(phantom_prepared, small_cohort, out) == 0
    assert (out / "cells" / "resnet18-m2-r1" / "cell.json").stat().st_mtime_ns == stamp
    assert _run(phantom_prepared, small_cohort, out, "--seed", "5") == 2
    assert "seed: 0 there, 5 now" in capsys.readouterr().err


def test_a_test_set_sharing_subjects_is_refused(phantom_prepared, small_cohort, tmp_path, capsys):
    code = main(
        ["experiment", "cls-augment", "--real", str(phantom_prepared),
         "--test", f"{phantom_prepared}:train", "--synthetic", str(small_cohort),
         "--out", str(tmp_path / "e")]
    )  # fmt: skip
    assert code == 2 and "shares" in capsys.readouterr().err
    assert not (tmp_path / "e").exists()


def test_counts_the_data_cannot_give_are_refused_before_any_training(
    phantom_prepared, small_cohort, tmp_path, capsys
):
    out = tmp_path / "exp"
    assert _run(phantom_prepared, small_cohort, out, "--n_synthetic_per_view", "0,99") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--n_synthetic_per_view: asks for 99 images" in err
    for flag, value in (
        ("--optimizer", "adam"),
        ("--mixed_precision", "fp8"),
        ("--resolution", "8"),
        ("--n_real_per_view", "99"),
    ):
        assert _run(phantom_prepared, small_cohort, out, flag, value) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"{flag}: " in err, err
    assert not (out / "experiment.json").exists() and not (out / "cells").exists()


def test_keep_models_keeps_each_cells_weights(phantom_prepared, small_cohort, tmp_path):
    out = tmp_path / "exp"
    argv = ["--n_synthetic_per_view", "0", "--repeats", "1", "--keep_models"]
    assert _run(phantom_prepared, small_cohort, out, *argv) == 0
    model = out / "cells" / "resnet18-m0-r0" / "model"
    assert (model / "model.safetensors").is_file() and not list(model.glob("checkpoint-*"))
