"""The ``fusynth`` command end to end, and the command reference's promise to document all of it."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fusynth.cli.main import iter_commands, main
from fusynth.data.geometry import ramanujan_perimeter
from fusynth.data.images import decode_image
from fusynth.data.schema import VIEWS, load_prepared

README = Path(__file__).resolve().parents[2] / "docs" / "cli.md"  # the command reference


def _tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_every_command_and_flag_is_documented_in_its_readme_section():
    text = README.read_text()
    for command, flags in iter_commands():
        match = re.search(rf"^### `fusynth {command}\b.*?(?=^### |^## |\Z)", text, re.M | re.S)
        assert match, f"README has no section for 'fusynth {command}'"
        for flag in flags:
            assert re.search(rf"`{re.escape(flag)}\b", match.group(0)), (
                f"{command}: {flag} undocumented"
            )
    front = (README.parents[1] / "README.md").read_text()
    assert "make demo" in front and "make test" in front


def test_phantom_same_seed_same_bytes(tmp_path):
    argv = ["data", "phantom", "--n", "6", "--size", "64", "--seed", "5"]
    assert main([*argv, str(tmp_path / "a")]) == 0
    assert main([*argv, str(tmp_path / "b")]) == 0
    assert (
        main(["data", "phantom", "--n", "6", "--size", "64", "--seed", "6", str(tmp_path / "c")])
        == 0
    )
    a, b, c = (_tree_digest(tmp_path / x) for x in "abc")
    assert a == b
    assert a["images/00000_head.png"] != c["images/00000_head.png"]
    assert set(a) >= {"metadata.csv", "phantom.json", "masks/00000_head.png"}


def test_phantom_prepare_inspect_round_trip(tmp_path, capsys):
    src, out = tmp_path / "src", tmp_path / "prepared"
    assert (
        main(["data", "phantom", str(src), "--n", "16", "--size", "64", "--pixel-spacing", "2.0"])
        == 0
    )
    assert main(["data", "prepare", "--format", "metadata", str(src), str(out)]) == 0
    assert main(["data", "inspect", str(out), "--json", str(tmp_path / "s.json")]) == 0
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["n_samples"] == 16 and summary["ok"]
    assert summary["masks"]["with_mask"] == 4 and summary["masks"]["labels"] == [0, 1]
    assert (out / "montage.png").is_file()
    dsd = load_prepared(out)
    rows = [r for ds in dsd.values() for r in ds]
    assert {VIEWS[r["view"]] for r in rows} == {"head", "abdomen", "femur", "thorax"}
    assert {r["cohort"] for r in rows} == {"phantom"} and len({r["subject_id"] for r in rows}) == 8
    meta = {
        line.split(",")[0]: line.split(",")
        for line in (src / "metadata.csv").read_text().splitlines()[1:]
    }
    for r in rows:
        assert r["pixel_spacing_mm"] == pytest.approx(2.0)
        if VIEWS[r["view"]] == "head":
            mask = decode_image(r["mask"])
            assert mask.shape == (64, 64) and mask.max() == 1
            # The whole head is inside the 64 px frame: its perimeter is below the frame's circle.
            assert 0 < r["head_circumference_mm"] < np.pi * 64 * 2.0
        else:
            assert r["mask"] is None and r["head_circumference_mm"] is None
    assert len(meta) == 16


def test_phantom_head_circumference_matches_its_mask(tmp_path):
    from fusynth.data.geometry import fit_ellipse, mask_outline

    src, out = tmp_path / "src", tmp_path / "p"
    assert main(["data", "phantom", str(src), "--n", "8", "--size", "128", "--views", "head"]) == 0
    assert main(["data", "prepare", "--format", "metadata", str(src), str(out)]) == 0
    for ds in load_prepared(out).values():
        for r in ds:
            mask = decode_image(r["mask"]) > 0
            ys, xs = np.nonzero(mask_outline(mask))
            ell = fit_ellipse(np.stack([xs, ys], axis=1))
            hc = ramanujan_perimeter(ell.a, ell.b) * r["pixel_spacing_mm"]
            assert hc == pytest.approx(r["head_circumference_mm"], rel=0.03)


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--views", "head,kidney"], "--views: the phantom has no view 'kidney'"),
        (["--size", "16"], "--size: the phantom needs at least 32 px"),
        (["--n", "0"], "--n must be positive"),
        (["--pixel-spacing", "-1"], "--pixel_spacing must be positive"),
    ],
)
def test_phantom_bad_flags(tmp_path, capsys, argv, needle):
    rc = main(["data", "phantom", str(tmp_path / "o"), *argv])
    err = capsys.readouterr().err
    assert rc == 2 and needle in err, err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_console_script_exit_codes(tmp_path):
    exe = Path(sys.executable).with_name("fusynth")
    proc = subprocess.run(
        [str(exe), "data", "inspect", str(tmp_path / "nope")], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"fusynth: error: {tmp_path / 'nope'}: no such folder"
    proc = subprocess.run([str(exe), "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.startswith("fusynth ")


def test_default_dataset_is_cached_and_valid(tmp_path, monkeypatch):
    from fusynth.data.phantom_cohort import default_dataset

    monkeypatch.setenv("FUSYNTH_CACHE", str(tmp_path / "cache"))
    path = default_dataset(n=8, size=64)
    assert path.is_relative_to(tmp_path / "cache")
    stamp = (path / "dataset_dict.json").stat().st_mtime_ns
    assert default_dataset(n=8, size=64) == path
    assert (path / "dataset_dict.json").stat().st_mtime_ns == stamp  # built once
    assert sum(len(ds) for ds in load_prepared(path).values()) == 8


def test_every_recipe_flag_is_documented():
    import importlib.util

    text = README.read_text()
    recipes = Path(__file__).resolve().parents[2] / "recipes"
    for script in sorted(recipes.glob("*.py")):
        spec = importlib.util.spec_from_file_location(script.stem, script)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        match = re.search(
            rf"^### `accelerate launch recipes/{script.name}`.*?(?=^### |^## |\Z)",
            text,
            re.M | re.S,
        )
        assert match, f"README has no section for recipes/{script.name}"
        for action in module.build_parser()._actions:
            if action.option_strings and action.dest != "help":
                flag = action.option_strings[0]
                assert f"`{flag}" in match.group(0), f"{script.name}: {flag} undocumented"
