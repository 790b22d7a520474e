"""kill -9 at random moments, then the rerun: it completes and its output equals the
uninterrupted run's byte for byte (cohort Arrow files; trained weights and their log).

Each command runs in a subprocess through ``tests/kill_hook.py``, which SIGKILLs it
before a chosen ``os.replace`` (the renames every output is committed with). The
uninterrupted run is measured first: how long its set-up takes (time to its first
rename), how many renames it makes, and which belong to its final write. Then one
folder goes through a chain of kills, each drawn from the seed:

1. during set-up: at a random moment before the first rename (a timed ``kill -9``);
2. at a random commit point of the work (before the k-th rename, k drawn);
3. during the final write: between the renames that move the finished output in;
4. the rerun, which must complete and match the uninterrupted run.

Recipes are rerun with ``--resume_from_checkpoint latest`` once a checkpoint exists
(before that there is nothing to resume and the same command starts afresh); cohort
commands are rerun unchanged (they resume by themselves). ``FUSYNTH_FAULT_SEEDS``
(comma-separated) runs more chains.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from fusynth.core.loop import list_checkpoints

ROOT = Path(__file__).resolve().parents[1]
HOOK = str(ROOT / "tests" / "kill_hook.py")
SEEDS = [int(s) for s in os.environ.get("FUSYNTH_FAULT_SEEDS", "0").split(",")]
TIMEOUT = 300


@dataclass
class Command:
    """One command under test: its argv for an output folder, how a rerun differs,
    what must match byte for byte, and the path text of its final write's renames."""

    argv: Callable[[Path], list[str]]
    compared: Callable[[Path], dict[str, bytes]]
    final_write: str
    recipe: bool


def _files(folder: Path, pattern: str) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.glob(pattern))}


def _cohort_bytes(out: Path) -> dict[str, bytes]:
    return {**_files(out, "train/*.arrow"), **_files(out, "cohort_stats.json")}


def _run_bytes(weights: str) -> Callable[[Path], dict[str, bytes]]:
    return lambda out: {**_files(out, weights), **_files(out, "train_log.json")}


def _commands(tiny_base, tiny_lora, tiny_controlnet, phantom_prepared, tmp_path) -> dict:
    cli = ["-m", "fusynth.cli"]
    recipes = ROOT / "recipes"
    cohort = ["--steps", "2", "--shard_size", "2", "--batch_size", "2", "--seed", "3"]
    train = ["--max_train_steps", "2", "--checkpointing_steps", "1", "--train_batch_size", "2"]
    return {
        "text2img": Command(
            lambda out: [
                *cli, "generate", "text2img", "--base", str(tiny_base), "--lora", str(tiny_lora),
                "--views", "head:2,femur:1", "--resolution", "32", *cohort, "--out", str(out),
            ],
            _cohort_bytes,
            ".final.tmp-",
            recipe=False,
        ),
        "pairs": Command(
            lambda out: [
                *cli, "generate", "pairs", "--method", "controlnet", "--adapter",
                str(tiny_controlnet), "--masks_from", "ellipse", "--n", "3", *cohort,
                "--out", str(out),
            ],
            _cohort_bytes,
            ".final.tmp-",
            recipe=False,
        ),
        "train_lora": Command(
            lambda out: [
                str(recipes / "train_lora.py"), "--pretrained_model_name_or_path",
                str(tiny_base), "--train_data", str(phantom_prepared), "--views", "head,femur",
                "--resolution", "32", *train, "--learning_rate", "1e-2",
                "--output_dir", str(out),
            ],
            _run_bytes("pytorch_lora_weights.safetensors"),
            "/.final.tmp/",
            recipe=True,
        ),
        "finetune_sam": Command(
            lambda out: [
                str(recipes / "finetune_sam.py"), "--train", str(phantom_prepared),
                "--n_real", "4", *train, "--embedding_cache", str(out.parent / "cache"),
                "--output_dir", str(out),
            ],
            _run_bytes("model.safetensors"),
            "/.final.tmp/",
            recipe=True,
        ),
    }  # fmt: skip


def _start(record: Path, kill: str, argv: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    return subprocess.Popen(
        [sys.executable, HOOK, str(record), kill, "--", *argv],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(proc: subprocess.Popen) -> tuple[int, str]:
    _, err = proc.communicate(timeout=TIMEOUT)
    return proc.returncode, err


def _rerun_argv(command: Command, out: Path) -> list[str]:
    argv = command.argv(out)
    if command.recipe and list_checkpoints(out):
        argv += ["--resume_from_checkpoint", "latest"]
    return argv


def _no_leftovers(out: Path) -> list[str]:
    """Temporary files and folders left in a finished output (none should be)."""
    hidden = [p.name for p in out.iterdir() if p.name.startswith(".") and p.name != ".fusynth.json"]
    siblings = [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]
    return hidden + siblings + [p.name for p in out.glob("shards")]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", ["text2img", "pairs", "train_lora", "finetune_sam"])
def test_kill_9_then_rerun_matches_the_uninterrupted_run(
    name, seed, tiny_base, tiny_lora, tiny_controlnet, phantom_prepared, tmp_path
):
    command = _commands(tiny_base, tiny_lora, tiny_controlnet, phantom_prepared, tmp_path)[name]
    straight, record = tmp_path / "straight" / "out", tmp_path / "straight.json"
    straight.parent.mkdir()
    rc, err = _finish(_start(record, "none", command.argv(straight)))
    assert rc == 0, err[-3000:]
    measured = json.loads(record.read_text())
    renames, setup_s = measured["renames"], measured["first_rename_s"]
    final = [i for i, src in enumerate(renames) if command.final_write in src]
    assert final, f"no rename of the final write ({command.final_write}) in {renames}"
    expected = command.compared(straight)
    assert expected and not _no_leftovers(straight)

    rng = np.random.default_rng([seed, len(name)])
    out = tmp_path / "killed" / "out"
    out.parent.mkdir()
    # 1. During set-up: a timed kill -9 before the first rename.
    proc = _start(record, "none", command.argv(out))
    time.sleep(rng.uniform(0.2, 0.9) * setup_s)
    os.kill(proc.pid, signal.SIGKILL)
    assert _finish(proc)[0] == -signal.SIGKILL
    # 2. At a random commit point of the work, before the final write begins.
    k = int(rng.integers(1, final[0] + 1))
    rc, err = _finish(_start(record, str(k), _rerun_argv(command, out)))
    assert rc in (-signal.SIGKILL, 0), err[-3000:]
    # 3. During the final write: between the renames that move the output in.
    k = int(rng.integers(1, len(final) + 1))
    rc, err = _finish(_start(record, f"{k}:{command.final_write}", _rerun_argv(command, out)))
    assert rc == -signal.SIGKILL, f"the run was not killed in its final write: {err[-3000:]}"
    assert not (out / "dataset_dict.json").exists() or command.recipe
    # 4. The rerun completes and matches.
    rc, err = _finish(_start(record, "none", _rerun_argv(command, out)))
    assert rc == 0, err[-3000:]
    assert command.compared(out) == expected
    assert _no_leftovers(out) == []
