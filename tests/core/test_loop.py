"""fusynth.core.loop: the settings every training config checks, config.json, checkpoints."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from fusynth.core.errors import UserInputError
from fusynth.core.loop import (
    checkpoint_if_due,
    list_checkpoints,
    write_config_json,
    write_run_config,
)
from fusynth.diffusion.config import TrainConfig
from fusynth.segment.finetune import SamFinetuneConfig
from fusynth.ssl.train import SslConfig

CONFIGS = [SslConfig, SamFinetuneConfig, TrainConfig]


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize(
    ("setting", "flag"),
    [
        ({"train_batch_size": 0}, "--train_batch_size"),
        ({"lr_warmup_steps": -1}, "--lr_warmup_steps"),
        ({"checkpoints_total_limit": 0}, "--checkpoints_total_limit"),
        ({"lr_scheduler": "cosin"}, "--lr_scheduler"),
        ({"mixed_precision": "fp8"}, "--mixed_precision"),
        ({"report_to": "comet"}, "--report_to"),
        ({"max_train_steps": 0}, "--max_train_steps"),
    ],
)
def test_check_run_settings_names_the_flag_of_each_bad_setting(config, setting, flag):
    with pytest.raises(UserInputError, match=f"^{flag}: ") as err:
        config(**setting)
    assert len(str(err.value).splitlines()) == 1


def test_check_run_settings_suggests_the_nearest_scheduler():
    with pytest.raises(UserInputError, match="did you mean 'cosine'"):
        SslConfig(lr_scheduler="cosin")


@pytest.mark.parametrize("config", [SslConfig, SamFinetuneConfig])
def test_zero_weight_decay_and_warmup_are_accepted(config):
    config(weight_decay=0, lr_warmup_steps=0)


def test_diffusion_allows_its_extra_schedulers_and_only_there():
    TrainConfig(lr_scheduler="polynomial")
    TrainConfig(lr_scheduler="cosine_with_restarts")
    with pytest.raises(UserInputError, match="--lr_scheduler"):
        SslConfig(lr_scheduler="polynomial")


class _Accelerator:
    def __init__(self, main: bool = True) -> None:
        self.is_main_process = main
        self.trackers: list[str] = []

    def init_trackers(self, project, config):
        self.trackers.append(project)

    def wait_for_everyone(self):
        pass


def test_config_json_has_one_format(tmp_path):
    path = write_config_json(tmp_path, {"b": 1, "a": tmp_path, "c": (1, 2)})
    assert path == tmp_path / "config.json"
    text = path.read_text()
    assert text.endswith("}\n") and text.index('"a"') < text.index('"b"')  # sorted keys
    assert json.loads(text) == {"a": str(tmp_path), "b": 1, "c": [1, 2]}


def test_write_run_config_writes_on_the_main_process_only(tmp_path):
    other = _Accelerator(main=False)
    write_run_config(other, {"a": 1}, tmp_path / "other", "p", "tensorboard")
    assert not (tmp_path / "other").exists() and not other.trackers
    main = _Accelerator()
    write_run_config(main, {"a": 1}, tmp_path / "main", "p", "tensorboard")
    assert json.loads((tmp_path / "main" / "config.json").read_text()) == {"a": 1}
    assert main.trackers == ["p"]


@pytest.mark.parametrize("last", ["max_steps", "bool"])
def test_checkpoint_if_due_every_n_steps_and_at_the_last(tmp_path, last):
    import torch

    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    config = SimpleNamespace(checkpointing_steps=3, checkpoints_total_limit=None)
    max_steps = 5
    for step in range(1, max_steps + 1):
        checkpoint_if_due(
            _Accelerator(),
            config,
            tmp_path,
            step,
            max_steps if last == "max_steps" else step == max_steps,  # bool: the older form
            {"seed": 0},
            lambda folder: (folder / "w.txt").write_text("w"),
            optimizer,
            scheduler,
        )
    assert [s for s, _ in list_checkpoints(tmp_path)] == [3, 5]
