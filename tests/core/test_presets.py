"""``--preset``: a shipped file writes the request; flags given override it."""

from __future__ import annotations

import pytest

from fusynth.core.errors import UserInputError
from fusynth.core.presets import load_preset, preset_names


def test_shipped_presets_build_valid_requests():
    from fusynth.classify.experiment import ClsAugmentConfig

    assert {"fulora-2024", "mask-guided-2024"} <= set(preset_names())
    cls = ClsAugmentConfig(
        real="r", test=["t"], out="o", synthetic="s", **load_preset("fulora-2024", "cls-augment")
    )
    assert cls.optimizer == "sgd" and cls.train_batch_size == 24 and len(cls.backbones) == 3
    with pytest.raises(UserInputError, match="did you mean"):
        load_preset("fulora-2023", "cls-augment")
    with pytest.raises(UserInputError, match="not seg-augment"):
        load_preset("fulora-2024", "seg-augment")
    with pytest.raises(UserInputError, match="not cls-augment"):
        load_preset("mask-guided-2024", "cls-augment")


def test_a_preset_need_is_waived_by_its_unless_flag():
    from fusynth.core.presets import check_needs

    with pytest.raises(UserInputError, match="^--checkpoint: preset mask-guided-2024 needs it"):
        check_needs("mask-guided-2024", "seg-augment", {"checkpoint": None}, set())
    check_needs("mask-guided-2024", "seg-augment", {"checkpoint": "sam.pth"}, set())
    check_needs("mask-guided-2024", "seg-augment", {"checkpoint": None}, {"model_type"})


def test_a_flag_given_with_its_default_value_still_overrides_the_preset():
    from fusynth.cli.experiment import _given
    from fusynth.cli.main import build_parser

    seg = ["experiment", "seg-augment", "--preset", "mask-guided-2024", "--real", "r", "--test",
           "t", "--out", "o"]  # fmt: skip
    seg_given = _given(build_parser().parse_args([*seg, "--n_real", "5,10,20,50"]))
    assert "n_real" in seg_given and not {"model_type", "n_synthetic"} & seg_given
    base = ["experiment", "cls-augment", "--preset", "fulora-2024", "--real", "r", "--test", "t",
            "--out", "o"]  # fmt: skip
    given = _given(build_parser().parse_args([*base, "--backbones", "resnet18", "--repeats", "3"]))
    assert {"backbones", "repeats", "preset", "real", "test", "out"} <= given
    assert not {"n_synthetic_per_view", "seed", "views"} & _given(build_parser().parse_args(base))
