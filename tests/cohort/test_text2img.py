"""Text-to-image cohorts: schema, provenance, determinism, resume after kill -9, the same
bytes from one or two processes, and bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import datasets
import pytest
import torch
from safetensors.torch import load_file, save_file

from fusynth.cli.main import main
from fusynth.cohort.writer import sample_seed
from fusynth.core.io import file_sha256
from fusynth.data.schema import VIEWS, load_prepared
from tests.conftest import accelerate_launch

FUSYNTH = [sys.executable, "-m", "fusynth.cli"]


def _args(base, lora, out, *extra):
    return [
        "generate",
        "text2img",
        "--base",
        str(base),
        "--lora",
        str(lora),
        "--views",
        "head:5,femur:3",
        "--steps",
        "2",
        "--resolution",
        "32",
        "--shard_size",
        "2",
        "--batch_size",
        "2",
        "--seed",
        "3",
        "--out",
        str(out),
        *extra,
    ]


def _images(path: Path) -> list[bytes]:
    ds = datasets.load_from_disk(str(path))["train"].cast_column(
        "image", datasets.Image(decode=False)
    )
    return [r["bytes"] for r in ds["image"]]


@pytest.fixture(scope="module")
def cohort(tiny_base, tiny_lora, tmp_path_factory):
    out = tmp_path_factory.mktemp("cohort") / "c"
    assert main(_args(tiny_base, tiny_lora, out)) == 0
    return out


def test_cohort_has_the_schema_counts_and_provenance(cohort, tiny_lora):
    dsd = load_prepared(cohort)
    assert list(dsd) == ["train"]
    ds = dsd["train"]
    assert [VIEWS[v] for v in ds["view"]] == ["head"] * 5 + ["femur"] * 3
    assert (
        all(ds["synthetic"])
        and set(ds["split"]) == {"train"}
        and set(ds["cohort"]) == {"synthetic"}
    )
    assert len(set(ds["subject_id"])) == 8
    trained = json.loads((tiny_lora / "config.json").read_text())["captions_by_view"]
    sha = file_sha256(tiny_lora / "pytorch_lora_weights.safetensors")
    for i, row in enumerate(ds):
        prov = json.loads(row["provenance"])
        assert prov["seed"] == sample_seed(3, i) and prov["index"] == i
        assert prov["prompt"] == trained[VIEWS[row["view"]]]  # the adapter's own captions
        assert prov["adapter_sha256"] == sha and len(prov["base_sha256"]) == 64
        assert (prov["scheduler"], prov["steps"], prov["guidance"], prov["lora_scale"]) == (
            "euler",
            2,
            7.0,
            1.0,
        )
        assert row["image"].mode == "L" and row["image"].size == (32, 32)
    assert (cohort / "previews" / "head.png").is_file() and (
        cohort / "previews" / "femur.png"
    ).is_file()
    # Each preview says what it shows: view and counts, then each tile's seed and prompt.
    from fusynth.core.style import png_text

    heads = [i for i, row in enumerate(ds) if VIEWS[row["view"]] == "head"]
    text = png_text(cohort / "previews" / "head.png")
    assert text["Title"].startswith(f"head: first {min(16, len(heads))} of {len(heads)} synthetic")
    first = json.loads(ds[heads[0]]["provenance"])
    assert f'seed {first["seed"]} row {heads[0]} "{first["prompt"]}"' in text["Description"]
    assert not (cohort / "shards").exists()


def test_rerun_of_a_complete_cohort_does_nothing(cohort, tiny_base, tiny_lora, capsys):
    before = _images(cohort)
    assert main(_args(tiny_base, tiny_lora, cohort)) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert _images(cohort) == before


def test_changed_request_is_refused(cohort, tiny_base, tiny_lora, capsys):
    assert main(_args(tiny_base, tiny_lora, cohort, "--guidance", "5")) == 2
    err = capsys.readouterr().err
    assert "different request (guidance: 7.0 there, 5.0 now)" in err and "--overwrite" in err


def test_same_seed_same_images_and_lora_scale_matters(cohort, tiny_base, tiny_lora, tmp_path):
    assert main(_args(tiny_base, tiny_lora, tmp_path / "again")) == 0
    assert _images(tmp_path / "again") == _images(cohort)
    assert main(_args(tiny_base, tiny_lora, tmp_path / "scaled", "--lora_scale", "0")) == 0
    assert _images(tmp_path / "scaled") != _images(cohort)


def test_resume_after_kill_finishes_without_duplicates(cohort, tiny_base, tiny_lora, tmp_path):
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [*FUSYNTH, *_args(tiny_base, tiny_lora, out)], stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 120
    while not (out / "shards" / "shard-00001").is_dir():
        assert proc.poll() is None and time.time() < deadline, "generation ended before the kill"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "dataset_dict.json").exists()
    done = sorted(p.name for p in (out / "shards").iterdir() if not p.name.startswith("."))
    assert 2 <= len(done) < 4
    rc = subprocess.run(
        [*FUSYNTH, *_args(tiny_base, tiny_lora, out)], capture_output=True, text=True
    )
    assert rc.returncode == 0, rc.stderr[-2000:]
    assert (
        f"generated {2 * (4 - len(done))} images in this process" in rc.stdout
    )  # only the missing shards
    assert _images(out) == _images(cohort)


def test_two_processes_make_the_same_cohort(cohort, tiny_base, tiny_lora, tmp_path):
    out = tmp_path / "two"
    cmd = accelerate_launch(2, "-m", "fusynth.cli", *_args(tiny_base, tiny_lora, out))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _images(out) == _images(cohort)
    assert [
        json.loads(p)["seed"] for p in datasets.load_from_disk(str(out))["train"]["provenance"]
    ] == [sample_seed(3, i) for i in range(8)]


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--views", "brian:3"], "--views: unknown view 'brian' (did you mean 'brain'?)"),
        (["--views", "head"], "--views: 'head' needs a count"),
        (
            ["--scheduler", "eular"],
            "--scheduler: unknown scheduler 'eular' (did you mean 'euler'?)",
        ),
        (["--resolution", "30"], "--resolution: must be a positive multiple of 8"),
        (["--steps", "0"], "--steps must be positive"),
    ],
)
def test_bad_flags(tiny_base, tiny_lora, tmp_path, capsys, extra, needle):
    assert main([*_args(tiny_base, tiny_lora, tmp_path / "o"), *extra]) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "o").exists()


def test_base_that_is_not_diffusers(tiny_lora, tmp_path, capsys):
    (tmp_path / "nobase").mkdir()
    assert main(_args(tmp_path / "nobase", tiny_lora, tmp_path / "o")) == 2
    assert "--base: " in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["missing_module", "wrong_size"])
def test_lora_that_does_not_match_the_base(tiny_base, tiny_lora, tmp_path, capsys, kind):
    sd = load_file(str(tiny_lora / "pytorch_lora_weights.safetensors"))
    key = next(k for k in sd if k.startswith("unet.") and "down" in k.split(".")[-2])
    if kind == "missing_module":
        sd[key.replace("down_blocks.0", "down_blocks.7")] = sd.pop(key)
        needle = "which the base does not have"
    else:
        sd[key] = torch.zeros(sd[key].shape[0], sd[key].shape[1] + 3)
        needle = "the base's is"
    bad = tmp_path / "bad"
    bad.mkdir()
    save_file(sd, str(bad / "pytorch_lora_weights.safetensors"))
    assert main(_args(tiny_base, bad, tmp_path / "o")) == 2
    assert needle in capsys.readouterr().err


def test_kohya_lora_generates_directly_and_converted(tiny_base, tiny_lora, tmp_path):
    assert (
        main(["lora", "convert", str(tiny_lora), str(tmp_path / "k.safetensors"), "--to", "kohya"])
        == 0
    )
    assert main(_args(tiny_base, tmp_path / "k.safetensors", tmp_path / "o")) == 0
    assert (
        main(
            [
                "lora",
                "convert",
                str(tmp_path / "k.safetensors"),
                str(tmp_path / "back"),
                "--to",
                "diffusers",
            ]
        )
        == 0
    )
    assert main(_args(tiny_base, tmp_path / "back", tmp_path / "o2")) == 0


def test_same_request_in_two_folders_gives_the_same_bytes_and_no_local_paths(
    tiny_base, tiny_lora, tmp_path
):
    """Subject ids come from the request, not the folder; the adapter is its file's
    name and hash, the base <local>/NAME: nothing of the machine's layout is recorded."""
    import hashlib
    import json

    from fusynth.cli.main import main

    weights = tmp_path / "fu-lora_r8.safetensors"  # a bare adapter file, as users have them
    weights.write_bytes((tiny_lora / "pytorch_lora_weights.safetensors").read_bytes())
    outs = [tmp_path / "first", tmp_path / "elsewhere" / "second"]
    for out in outs:
        argv = ["generate", "text2img", "--base", str(tiny_base), "--lora", str(weights)]
        argv += ["--views", "head:2", "--steps", "2", "--resolution", "32", "--out", str(out)]
        assert main(argv) == 0
    arrows = [sorted(p.relative_to(o) for o in [out] for p in out.rglob("*.arrow")) for out in outs]
    assert arrows[0] == arrows[1]
    for rel in arrows[0]:
        assert (outs[0] / rel).read_bytes() == (outs[1] / rel).read_bytes()
    request = json.loads((outs[0] / "request.json").read_text())
    assert request["adapter"] == "<local>/fu-lora_r8.safetensors"
    assert request["adapter_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert request["base"] == f"<local>/{tiny_base.name}"
    for path in outs[0].rglob("*"):
        if path.is_file():
            assert str(tmp_path).encode() not in path.read_bytes(), path
            assert str(tiny_base.parent).encode() not in path.read_bytes(), path
