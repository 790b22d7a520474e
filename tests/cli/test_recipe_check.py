"""``recipes/*.py --check``: flags, config and paths checked with nothing loaded or
written, exit 0 or 2, as ``accelerate launch`` users run it before launching."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
sys.path.insert(0, str(RECIPES))

import finetune_sam  # noqa: E402
import train_lora  # noqa: E402


def test_a_valid_command_passes_and_writes_nothing(phantom_prepared, tmp_path, capsys):
    out = tmp_path / "lora"
    argv = ["--check", "--train_data", str(phantom_prepared), "--output_dir", str(out)]
    assert train_lora.main([*argv, "--resolution", "32", "--views", "head"]) == 0
    assert "--check: the flags and config of train_lora.py are valid" in capsys.readouterr().out
    assert not out.exists()
    sam = ["--check", "--train", f"{phantom_prepared}:train", "--output_dir", str(tmp_path / "s")]
    assert finetune_sam.main(sam) == 0
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize(
    ("recipe", "argv", "needle"),
    [
        ("lora", ["--train_data", "{data}:bogus"], "--train_data: {data} has no split 'bogus'"),
        ("lora", ["--train_data", "{tmp}/missing"], "--train_data: {tmp}/missing does not exist"),
        ("lora", ["--resolution", "30"], "--resolution"),
        ("lora", ["--views", "brian"], "--views: unknown view 'brian'"),
        (
            "lora",
            ["--resume_from_checkpoint", "latest"],
            "--resume_from_checkpoint latest: no checkpoint-N folder",
        ),
        ("lora", ["--output_dir", "{foreign}"], "was not written by fusynth"),
        ("sam", ["--checkpoint", "{tmp}/sam.pth"], "--checkpoint: {tmp}/sam.pth does not exist"),
        ("sam", ["--validation", "{data}:bogus"], "--validation: {data} has no split 'bogus'"),
        ("sam", ["--max_train_steps", "0"], "--max_train_steps"),
    ],
)
def test_bad_input_exits_2_with_one_line(recipe, argv, needle, phantom_prepared, tmp_path, capsys):
    foreign = tmp_path / "thesis"
    foreign.mkdir()
    (foreign / "chapter1.tex").write_text("mine")
    values = {"data": phantom_prepared, "tmp": tmp_path, "foreign": foreign}
    argv = [a.format(**values) for a in argv]
    main = train_lora.main if recipe == "lora" else finetune_sam.main
    data_flag = "--train_data" if recipe == "lora" else "--train"
    base = [data_flag, str(phantom_prepared), "--output_dir", str(tmp_path / "out")]
    assert main(["--check", *base, *argv]) == 2
    err = capsys.readouterr().err
    assert needle.format(**values) in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists() and [p.name for p in foreign.iterdir()] == [
        "chapter1.tex"
    ]


def test_check_loads_no_model_library(phantom_prepared, tmp_path):
    """The check runs before diffusers, peft or segment-anything are imported."""
    code = (
        "import runpy, sys\n"
        f"sys.argv = ['train_lora.py', '--check', '--train_data', {str(phantom_prepared)!r},"
        f" '--output_dir', {str(tmp_path / 'o')!r}]\n"
        "try:\n"
        f"    runpy.run_path({str(RECIPES / 'train_lora.py')!r}, run_name='__main__')\n"
        "except SystemExit as exc:\n"
        "    heavy = [m for m in ('diffusers', 'peft', 'transformers', 'segment_anything')"
        " if m in sys.modules]\n"
        "    print('rc', exc.code, 'heavy', heavy)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "rc 0 heavy []" in proc.stdout, proc.stdout + proc.stderr[-2000:]
