"""``--preset``: a shipped file writes the request; flags given override it."""

from __future__ import annotations

import pytest

from fusynth.core.errors import UserInputError
from fusynth.core.presets import load_preset, preset_names


def test_shipped_presets_build_valid_requests():
    from fusynth.classify.experiment import ClsAugmentConfig

    assert "fulora-2024" in set(preset_names())
    cls = ClsAugmentConfig(
        real="r", test=["t"], out="o", synthetic="s", **load_preset("fulora-2024", "cls-augment")
    )
    assert cls.optimizer == "sgd" and cls.train_batch_size == 24 and len(cls.backbones) == 3
    with pytest.raises(UserInputError, match="did you mean"):
        load_preset("fulora-2023", "cls-augment")
    with pytest.raises(UserInputError, match="not seg-augment"):
        load_preset("fulora-2024", "seg-augment")


def test_a_flag_given_with_its_default_value_still_overrides_the_preset():
    from fusynth.cli.experiment import _given
    from fusynth.cli.main import build_parser

    base = ["experiment", "cls-augment", "--preset", "fulora-2024", "--real", "r", "--test", "t",
            "--out", "o"]  # fmt: skip
    given = _given(build_parser().parse_args([*base, "--backbones", "resnet18", "--repeats", "3"]))
    assert {"backbones", "repeats", "preset", "real", "test", "out"} <= given
    assert not {"n_synthetic_per_view", "seed", "views"} & _given(build_parser().parse_args(base))
