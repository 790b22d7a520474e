"""Bad input across every command and recipe: exit 2, one line naming the file, field or
flag, no traceback, and nothing written or changed anywhere.

Each case runs in this process (``fusynth``'s ``main(argv)`` or a recipe's), with every
folder it could touch snapshotted before and compared after. The README's bad-input table
lists the same cases.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from fusynth.cli.main import main
from tests.conftest import run_recipe


def _snapshot(*roots: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under ``roots`` with its size and modification time."""
    out = {}
    for root in roots:
        for p in [root, *root.rglob("*")] if root.exists() else []:
            st = p.stat()
            out[str(p)] = (st.st_size if p.is_file() else -1, st.st_mtime_ns)
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory, phantom_prepared, tiny_base, tiny_lora, tiny_sam):
    """Inputs for the cases: the shared fixtures, plus a user's own folder, a truncated
    adapter, an adapter of another model, an empty folder and a file in the way."""
    t = tmp_path_factory.mktemp("bad_input")
    mine = t / "thesis"
    mine.mkdir()
    (mine / "chapter1.tex").write_text("months of work")
    data = (tiny_lora / "pytorch_lora_weights.safetensors").read_bytes()
    (t / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    save_file(  # a LoRA of a model with other layer sizes
        {
            "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora.down.weight": (
                torch.zeros(4, 999)
            ),
        },
        str(t / "other_model.safetensors"),
    )
    (t / "empty").mkdir()
    (t / "a_file").write_text("not a folder")
    (t / "prompts.yaml").write_text("head: [unclosed\n")
    assert main(["data", "phantom", str(t / "src"), "--n", "4", "--size", "32"]) == 0
    return {
        "P": str(phantom_prepared),
        "B": str(tiny_base),
        "L": str(tiny_lora),
        "S": str(tiny_sam),
        "T": str(t),
        "roots": [t, Path(phantom_prepared), Path(tiny_base), Path(tiny_lora), Path(tiny_sam)],
    }


# (what runs, argv, what the one line must name). P: phantom dataset, B: base, L: LoRA,
# S: SAM folder, T: the scratch folder (thesis/ is a user's own folder).
CASES = [
    # fusynth data
    ("fusynth", "data prepare --format bogus {T}/empty {T}/o", "--format"),
    ("fusynth", "data prepare --format metadata {T}/missing {T}/o", "missing"),
    ("fusynth", "data prepare --format metadata {T}/src {T}/thesis --overwrite", "thesis"),
    (
        "fusynth",
        "data prepare --format metadata {T}/src {T}/o --val_fraction 2",
        "--val_fraction",
    ),
    ("fusynth", "data prepare --format pairs {T}/empty {T}/o", "{T}/empty"),
    ("fusynth", "data phantom {T}/o --n 0", "--n"),
    ("fusynth", "data phantom {T}/o --views kidney", "--views"),
    ("fusynth", "data phantom {T}/thesis --overwrite", "thesis"),
    ("fusynth", "data inspect {T}/missing", "{T}/missing"),
    ("fusynth", "data inspect {T}/empty", "not a prepared dataset"),
    # fusynth generate
    (
        "fusynth",
        "generate text2img --views head:2 --base {B} --lora {T}/nope.safetensors --out {T}/o",
        "does not exist",
    ),
    (
        "fusynth",
        "generate text2img --views head:2 --base {B} --lora {T}/truncated.safetensors --out {T}/o",
        "truncated",
    ),
    (
        "fusynth",
        "generate text2img --views head:2 --base {B} --lora {T}/other_model.safetensors --out {T}/o",
        "other_model",
    ),
    (
        "fusynth",
        "generate text2img --views head:2 --base {B} --lora {L} --views kidney:2 --out {T}/o",
        "--views",
    ),
    (
        "fusynth",
        "generate text2img --views head:2 --base {B} --scheduler eulr --out {T}/o",
        "did you mean",
    ),
    ("fusynth", "generate text2img --views head:2 --base {B} --steps 0 --out {T}/o", "--steps"),
    (
        "fusynth",
        "generate text2img --views head:2 --base {B} --out {T}/thesis --overwrite",
        "thesis",
    ),
    ("fusynth", "generate text2img --views head:2 --base {T}/missing --out {T}/o", "--base"),
    (
        "fusynth",
        "generate text2img --views head:2 --base {B} --prompts {T}/prompts.yaml --out {T}/o",
        "prompts.yaml",
    ),
    (
        "fusynth",
        "generate text2img --views head:2 --base {B} --lora {L} --prompt_values hc=1 --out {T}/o",
        "names no field besides",
    ),
    (
        "fusynth",
        "generate pairs --method packed --adapter {T}/empty --n 2 --out {T}/o",
        "{T}/empty",
    ),
    (
        "fusynth",
        "generate pairs --method packed --adapter {L} --n 2 --out {T}/o",
        "--method packed",
    ),
    # fusynth audit
    ("fusynth", "audit cohort {T}/missing --reference {P}", "{T}/missing"),
    ("fusynth", "audit cohort {P}:test --reference {P}:bogus", "no split 'bogus'"),
    ("fusynth", "audit cohort {P}:test --reference {P}:train --encoder vgg:x", "--encoder"),
    ("fusynth", "audit pairs {P}:tset", "did you mean 'test'"),
    # fusynth evaluate
    ("fusynth", "evaluate segmentation --model {T}/missing --data {P} --out {T}/o", "--model"),
    (
        "fusynth",
        "evaluate segmentation --model {S} --data {P} --out {T}/o --box_jitter 0,x",
        "--box_jitter",
    ),
    (
        "fusynth",
        "evaluate segmentation --model {S} --data {P}:bogus --out {T}/o",
        "no split 'bogus'",
    ),
    (
        "fusynth",
        "evaluate segmentation --model {S} --data {P} --out {T}/thesis --overwrite",
        "thesis",
    ),
    ("fusynth", "evaluate classification --model {S} --data {P} --out {T}/o", "--model"),
    ("fusynth", "evaluate clustering --embed pixel --data {P} --k 4 --out {T}/o", "--embed"),
    ("fusynth", "evaluate clustering --embed pixels --data {P} --k 0 --out {T}/o", "--k"),
    # fusynth experiment
    (
        "fusynth",
        "experiment seg-augment --real {P} --test {P} --n_real 1,x --n_synthetic 0 --out {T}/o",
        "--n_real",
    ),
    (
        "fusynth",
        "experiment cls-augment --real {P} --test {P} --backbones resnet1 --out {T}/o",
        "resnet1",
    ),
    (
        "fusynth",
        "experiment seg-augment --real {P} --test {P} --n_synthetic 0 --arms real+clasical --out {T}/o",
        "did you mean real+classical",
    ),
    (
        "fusynth",
        "experiment cls-augment --real {P} --test {P} --n_synthetic_per_view 0 --pretrain_steps 5 --out {T}/o",
        "--pretrain_steps: only with --protocol pretrain-finetune",
    ),
    (
        "fusynth",
        "experiment seg-augment --real {P} --test {P} --n_real 2 --n_synthetic 0 --out {T}/thesis --overwrite",
        "thesis",
    ),
    # fusynth publish, lora
    (
        "fusynth",
        "publish model {T}/empty --repo_id me/x --dry_run {T}/o",
        "is not a fusynth output",
    ),
    ("fusynth", "publish model {S} --repo_id not_a_repo --dry_run {T}/o", "--repo_id"),
    ("fusynth", "publish cohort {P} --repo_id me/x --dry_run {T}/o", "{P}"),
    ("fusynth", "publish model {S} --repo_id me/x --dry_run {T}/thesis --overwrite", "thesis"),
    ("fusynth", "lora convert {T}/missing.safetensors {T}/o.safetensors --to kohya", "missing"),
    ("fusynth", "lora convert {L} {T}/o --to comfy", "--to"),
    # recipes
    ("train_lora", "--train_data {P}:bogus --output_dir {T}/o", "no split 'bogus'"),
    ("train_lora", "--resolution 30 --output_dir {T}/o", "--resolution"),
    ("train_lora", "--learning_rate -1 --output_dir {T}/o", "--learning_rate"),
    ("train_lora", "--output_dir {T}/thesis --overwrite_output_dir", "thesis"),
    ("train_lora", "--mixed_precision fp16 --output_dir {T}/o", "--mixed_precision"),
    ("train_lora", "--pretrained_model_name_or_path {T}/empty --output_dir {T}/o", "{T}/empty"),
    ("train_controlnet", "--conditioning bogus --output_dir {T}/o", "--conditioning"),
    ("finetune_sam", "--checkpoint {T}/missing.pth --output_dir {T}/o", "missing.pth"),
    ("finetune_sam", "--train {P}:bogus --output_dir {T}/o", "no split 'bogus'"),
    ("finetune_sam", "--train {P} --output_dir {T}/thesis", "thesis"),
    ("train_classifier", "--backbone resnet99 --output_dir {T}/o", "resnet99"),
    ("train_classifier", "--train {P} --validation {P}:train --output_dir {T}/o", "--validation"),
    ("train_ssl", "--temperature 0 --output_dir {T}/o", "--temperature"),
]


def _record(fill: dict[str, str], runner: str, argv: str, rc: int, err: str) -> None:
    """Append the case and what it printed to ``$FUSYNTH_BAD_INPUT_RECORD`` (JSON lines),
    with the fixtures' paths put back as their names: what scripts/bad_input_table.py
    turns into the README's table."""
    record = os.environ.get("FUSYNTH_BAD_INPUT_RECORD")
    if not record:
        return
    import json

    names = {"T": "", "P": "DATA", "B": "BASE", "L": "LORA", "S": "SAM"}
    line = "\n".join(x for x in err.splitlines() if "error:" in x) or err.strip()
    for key in sorted(fill, key=lambda k: -len(fill[k])):
        line = line.replace(fill[key] + "/", names[key] + "/" if names[key] else "")
        line = line.replace(fill[key], names[key] or ".")
    command = "fusynth" if runner == "fusynth" else f"recipes/{runner}.py"
    argv = argv.replace("{T}/", "")
    for key, name in names.items():
        argv = argv.replace("{" + key + "}", name)
    with open(record, "a") as fh:
        fh.write(json.dumps({"command": f"{command} {argv}", "exit": rc, "line": line}) + "\n")


@pytest.mark.parametrize(
    ("runner", "argv", "needle"), CASES, ids=[f"{r}: {a}" for r, a, _ in CASES]
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(world, capsys, runner, argv, needle):
    fill = {k: v for k, v in world.items() if k != "roots"}
    args = [part.format(**fill) for part in argv.split()]
    needle = needle.format(**fill)
    before = _snapshot(*world["roots"])
    rc = main(args) if runner == "fusynth" else run_recipe(runner, *args)
    err = capsys.readouterr().err
    _record(fill, runner, argv, rc, err)
    assert rc == 2, err
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1, err
    assert needle in errors[0], errors[0]
    assert _snapshot(*world["roots"]) == before  # nothing written, moved or touched


def test_an_unwritable_location_is_one_line_naming_the_path(world, capsys, monkeypatch):
    """A read-only or full disk (simulated: this suite may run as root, which ignores
    permissions) ends in one line naming the path, not an OSError traceback."""
    import tempfile

    target = Path(world["T"]) / "ro" / "phantom"

    def refuse(*args, dir=None, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(dir))

    monkeypatch.setattr(tempfile, "mkdtemp", refuse)
    assert main(["data", "phantom", str(target), "--n", "2", "--size", "32"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "read-only file system" in err and str(target.parent) in err
    monkeypatch.undo()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target))

    monkeypatch.setattr(shutil, "copy2", full)
    monkeypatch.setattr(os, "replace", full)
    assert main(["data", "phantom", str(target), "--n", "2", "--size", "32"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no space left" in err
    monkeypatch.undo()
    assert not target.exists() and not list(target.parent.glob(".phantom*"))


def test_a_corrected_command_runs_after_a_bad_adapter(world, tmp_path, capsys):
    """The bad adapter left no request behind, so fixing it is not "a different request"."""
    out = tmp_path / "cohort"
    argv = ["generate", "text2img", "--base", world["B"], "--views", "head:2", "--steps", "2"]
    argv += ["--resolution", "32", "--out", str(out)]
    bad = str(Path(world["T"]) / "other_model.safetensors")
    assert main([*argv, "--lora", bad]) == 2
    assert not out.exists()
    assert main([*argv, "--lora", world["L"]]) == 0
    assert (out / "dataset_dict.json").is_file()
