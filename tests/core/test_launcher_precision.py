"""Recipes follow ``accelerate launch``'s precision (``ACCELERATE_MIXED_PRECISION``) unless
their own ``--mixed_precision`` is given."""

from __future__ import annotations

import json

import pytest

from fusynth.classify.config import ClassifierTrainConfig
from fusynth.core.errors import UserInputError
from fusynth.diffusion.config import TrainConfig
from fusynth.segment.finetune import SamFinetuneConfig
from fusynth.ssl.train import SslConfig
from tests.conftest import run_recipe

CONFIGS = [TrainConfig, SamFinetuneConfig, SslConfig, ClassifierTrainConfig]


@pytest.mark.parametrize("config", CONFIGS)
def test_configs_follow_the_launcher_when_the_flag_is_not_given(config, monkeypatch):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    assert config().mixed_precision == "bf16"
    # the recipe's own flag (or --config YAML value) wins
    assert config(mixed_precision="no").mixed_precision == "no"


@pytest.mark.parametrize("config", CONFIGS)
def test_configs_default_to_full_precision_without_a_launcher(config, monkeypatch):
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    assert config().mixed_precision == "no"


def test_an_unsupported_launcher_precision_is_one_line_naming_the_variable(monkeypatch):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp8")
    with pytest.raises(UserInputError, match="^ACCELERATE_MIXED_PRECISION=fp8 .*--mixed_precision"):
        SamFinetuneConfig()


@pytest.fixture
def fresh_accelerate_state():
    """accelerate keeps one precision per process: start and leave with none set, so the
    in-process recipe runs here and in other tests each pick their own."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def test_sam_recipe_trains_in_bf16_under_a_bf16_launcher(
    tmp_path, monkeypatch, fresh_accelerate_state
):
    """What ``accelerate launch --mixed_precision bf16 recipes/finetune_sam.py`` does: the
    run's config.json and its Accelerator say bf16 (accelerate runs bf16 on a CPU)."""
    monkeypatch.setenv("FUSYNTH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    out = tmp_path / "sam"
    argv = ["--output_dir", str(out), "--max_train_steps", "1", "--no_embedding_cache"]
    assert run_recipe("finetune_sam", *argv) == 0
    assert json.loads((out / "config.json").read_text())["mixed_precision"] == "bf16"
    from accelerate.state import AcceleratorState

    assert AcceleratorState().mixed_precision == "bf16"
    AcceleratorState._reset_state(reset_partial_state=True)
    out2 = tmp_path / "sam_no"
    assert (
        run_recipe("finetune_sam", *argv[:1], str(out2), *argv[2:], "--mixed_precision", "no") == 0
    )
    assert json.loads((out2 / "config.json").read_text())["mixed_precision"] == "no"


def test_a_bf16_accelerate_config_reaches_the_recipe(tmp_path):
    """``accelerate config`` saved with bf16, then ``accelerate launch --config_file``
    with no precision flag anywhere: the run trains in bf16."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    config = tmp_path / "accelerate.yaml"
    subprocess.run(
        [sys.executable, "-m", "accelerate.commands.accelerate_cli", "config", "default"]
        + ["--config_file", str(config), "--mixed_precision", "bf16"],
        check=True,
        capture_output=True,
    )
    assert "bf16" in config.read_text()
    out = tmp_path / "sam"
    env = {k: v for k, v in os.environ.items() if k != "ACCELERATE_MIXED_PRECISION"}
    env["FUSYNTH_CACHE"] = str(tmp_path / "cache")
    recipe = Path(__file__).resolve().parents[2] / "recipes" / "finetune_sam.py"
    proc = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config)]
        + [str(recipe), "--output_dir", str(out), "--max_train_steps", "1"]
        + ["--no_embedding_cache"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((out / "config.json").read_text())["mixed_precision"] == "bf16"
