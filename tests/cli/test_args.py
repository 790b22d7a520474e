"""One spelling rule for flags: declared ``--snake_case``, ``--kebab-case`` accepted too,
in the ``fusynth`` command and in every recipe."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from fusynth.cli.args import Parser, accept_kebab
from fusynth.cli.main import build_parser, iter_commands

RECIPES = sorted((Path(__file__).resolve().parents[2] / "recipes").glob("*.py"))


def _recipe_parser(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_parser()


def _long_flags(parser) -> list[str]:
    return [s for a in parser._actions for s in a.option_strings if s.startswith("--")]


def test_every_fusynth_flag_is_declared_in_snake_case():
    for command, flags in iter_commands():
        for flag in flags:
            if flag.startswith("--"):
                assert "-" not in flag[2:], f"fusynth {command}: {flag} is not --snake_case"


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_recipe_flag_is_snake_case_and_takes_the_kebab_spelling(path):
    parser = _recipe_parser(path)
    flags = _long_flags(parser)
    assert flags and all("-" not in f[2:] for f in flags), flags
    snake = parser.parse_args(["--seed", "3", "--output_dir", "x"])
    kebab = parser.parse_args(["--seed", "3", "--output-dir", "x"])
    assert vars(snake) == vars(kebab) == {"seed": 3, "output_dir": "x"}


def test_both_spellings_give_the_same_namespace_and_help_shows_one():
    parser = build_parser()
    base = ["data", "prepare", "--format", "metadata", "SRC", "OUT"]
    snake = parser.parse_args([*base, "--val_fraction", "0.3", "--images_subdir=imgs"])
    kebab = parser.parse_args([*base, "--val-fraction", "0.3", "--images-subdir=imgs"])
    assert vars(snake) == vars(kebab)
    assert snake.val_fraction == 0.3 and snake.images_subdir == "imgs"
    prepare = parser._subparsers._group_actions[0].choices["data"]
    prepare = prepare._subparsers._group_actions[0].choices["prepare"]
    help_text = prepare.format_help()
    assert "--val_fraction" in help_text and "--val-fraction" not in help_text


def test_an_unknown_flag_is_one_line_and_exit_2(capsys):
    parser = accept_kebab(Parser(prog="p"))
    parser.add_argument("--a_b", type=int)
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(["--a-c", "1"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--a-c" in err
