"""``--preset``: a shipped file writes the request; flags given override it."""

from __future__ import annotations

import json

import pytest

from fusynth.cli.main import main
from fusynth.core.errors import UserInputError
from fusynth.core.presets import load_preset, preset_names
from tests.segment.test_finetune import _dataset, _head


def test_shipped_presets_build_valid_requests():
    from fusynth.classify.experiment import ClsAugmentConfig
    from fusynth.segment.experiment import SegAugmentConfig

    assert {"fulora-2024", "mask-guided-2024"} <= set(preset_names())
    cls = ClsAugmentConfig(
        real="r", test=["t"], out="o", synthetic="s", **load_preset("fulora-2024", "cls-augment")
    )
    assert cls.optimizer == "sgd" and cls.train_batch_size == 24 and len(cls.backbones) == 3
    seg = SegAugmentConfig(
        real="r",
        test=["t"],
        out="o",
        synthetic="s",
        **load_preset("mask-guided-2024", "seg-augment"),
    )
    assert seg.n_real == [5, 10, 20] and seg.train_parts == "decoder"
    with pytest.raises(UserInputError, match="did you mean"):
        load_preset("fulora-2023", "cls-augment")
    with pytest.raises(UserInputError, match="not seg-augment"):
        load_preset("fulora-2024", "seg-augment")


def test_the_preset_reaches_the_checks_and_given_flags_win(tmp_path, capsys):
    real = _dataset(tmp_path / "real", [("train", f"t{i}", _head(i=i)) for i in range(6)]
                    + [("test", "x0", _head())])  # fmt: skip
    argv = ["experiment", "seg-augment", "--preset", "mask-guided-2024", "--real", str(real),
            "--test", str(real), "--synthetic", str(real), "--out", str(tmp_path / "e")]  # fmt: skip
    # The preset's K (up to 20) is more than the 6 images here: refused before anything.
    assert main(argv) == 2
    assert "--n_real: asks for 20 images but" in capsys.readouterr().err
    # Given flags override it; the request records the preset and its other values.
    assert main([*argv, "--n_real", "2", "--n_synthetic", "0", "--repeats", "1",
                 "--model_type", "tiny", "--max_train_steps", "1"]) == 0  # fmt: skip
    request = json.loads((tmp_path / "e" / "experiment.json").read_text())
    assert request["preset"] == "mask-guided-2024" and request["n_real"] == [2]
    assert request["repeats"] == 1 and request["train_parts"] == "decoder"
    assert main([*argv[:2], "--preset", "nope", *argv[4:]]) == 2
    assert "--preset: unknown preset 'nope'" in capsys.readouterr().err


def test_a_flag_given_with_its_default_value_still_overrides_the_preset():
    from fusynth.cli.experiment import _given
    from fusynth.cli.main import build_parser

    base = ["experiment", "cls-augment", "--preset", "fulora-2024", "--real", "r", "--test", "t",
            "--out", "o"]  # fmt: skip
    given = _given(build_parser().parse_args([*base, "--backbones", "resnet18", "--repeats", "3"]))
    assert {"backbones", "repeats", "preset", "real", "test", "out"} <= given
    assert not {"n_synthetic_per_view", "seed", "views"} & _given(build_parser().parse_args(base))
