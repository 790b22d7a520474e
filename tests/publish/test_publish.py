"""``fusynth publish --dry-run``: the folders load with the stock libraries, cohorts are
refused without an audit unless forced, cards render, and bad input is one line, exit 2."""

from __future__ import annotations

import argparse
import io
import json
import re

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from fusynth.cli.main import main
from fusynth.cli.publish import add_commands as add_publish_parser
from fusynth.core.cards import render_card, required_fields
from fusynth.core.errors import UserInputError
from fusynth.data.schema import FEATURES
from fusynth.publish.hub import publish_dry_run
from fusynth.publish.kinds import check_repo_id, detect_kind
from fusynth.publish.redact import redact_paths


def _publish(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="fusynth")
    add_publish_parser(parser.add_subparsers(dest="group", required=True))
    args = parser.parse_args(["publish", *argv])
    return args.func(args)


def _raw(ds: datasets.Dataset, column: str) -> list[bytes | None]:
    col = ds.cast_column(column, datasets.Image(decode=False))[column]
    return [None if v is None else v["bytes"] for v in col]


def test_lora_dry_run_loads_with_stock_diffusers_and_peft(tiny_lora, tiny_base, tmp_path):
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from peft import PeftModel

    out = tmp_path / "pub"
    assert (
        _publish("model", str(tiny_lora), "--repo-id", "me/tiny-lora", "--dry-run", str(out)) == 0
    )
    names = {
        p.relative_to(out).as_posix()
        for p in out.rglob("*")
        if p.is_file() and p.name != ".fusynth.json"
    }
    assert "pytorch_lora_weights.safetensors" in names and "README.md" in names
    assert not any(n.startswith("checkpoint-") or n.endswith(".pt") for n in names)
    assert "train_log.json" not in names
    card = (out / "README.md").read_text()
    assert 'load_lora_weights("me/tiny-lora")' in card and "fusynth" in card.split("---")[1]
    # The source names its base and data by absolute path; the published folder does not.
    assert str(tiny_base) in (tiny_lora / "README.md").read_text()
    assert str(tiny_base) in (tiny_lora / "config.json").read_text()
    for path in out.rglob("*"):
        if path.is_file():
            assert str(tiny_base.parent).encode() not in path.read_bytes(), path
    assert f"<local>/{tiny_base.name}" in json.loads((out / "config.json").read_text()).values()
    assert "base_model" not in card.split("---")[1]  # a local base is no Hub repo id
    grids = re.findall(r"!\[validation samples\]\(([^)]+)\)", card)
    assert grids and all(g in names for g in grids)  # the card's sample grid is published

    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_base))
    pipe.load_lora_weights(str(out))
    assert any("lora" in n for n, _ in pipe.unet.named_parameters())
    assert (tiny_lora / "unet_peft").is_dir()  # the trainer always writes the peft adapter
    unet = UNet2DConditionModel.from_pretrained(str(tiny_base), subfolder="unet")
    peft_unet = PeftModel.from_pretrained(unet, str(out / "unet_peft"))
    saved = load_file(str(tiny_lora / "unet_peft" / "adapter_model.safetensors"))
    loaded = dict(peft_unet.named_parameters())
    key = next(iter(saved))
    match = [v for n, v in loaded.items() if n.endswith(key.replace(".weight", ".default.weight"))]
    assert match and torch.equal(match[0].detach(), saved[key])


def test_sam_dry_run_loads_strictly_into_segment_anything(tiny_sam, tmp_path):
    from fusynth.segment.sam import build_sam

    out = tmp_path / "pub"
    publish_dry_run("model", tiny_sam, "me/tiny-sam", out)
    assert {p.name for p in out.iterdir()} - {".fusynth.json"} == {
        "model.safetensors",
        "sam_config.json",
        "README.md",
    }
    sam = build_sam("tiny", seed=1)
    sam.load_state_dict(load_file(str(out / "model.safetensors")), strict=True)
    ref = load_file(str(tiny_sam / "model.safetensors"))
    assert all(torch.equal(v, ref[k]) for k, v in sam.state_dict().items())
    card = (out / "README.md").read_text()
    assert "me/tiny-sam" in card and "Not for clinical use" in card
    from huggingface_hub import ModelCard

    parsed = ModelCard(card)  # a card of its own: one metadata block, then the text
    assert parsed.data.library_name == "segment-anything" and "fusynth" in parsed.data.tags
    assert not parsed.text.lstrip().startswith("---")


def test_audited_cohort_dry_run_loads_with_load_dataset(
    audited_cohort, tiny_base, tmp_path, capsys
):
    out = tmp_path / "pub"
    assert (
        _publish("cohort", str(audited_cohort), "--repo-id", "me/cohort", "--dry-run", str(out))
        == 0
    )
    assert "nothing uploaded" in capsys.readouterr().out
    assert (out / "data" / "train-00000-of-00001.parquet").is_file()
    got = datasets.load_dataset(str(out), cache_dir=str(tmp_path / "hf-cache"))["train"]
    src = datasets.load_from_disk(str(audited_cohort))["train"]
    assert len(got) == len(src) == 6
    assert got.features["view"] == FEATURES["view"]  # a ClassLabel with the views' names
    assert list(got["view"]) == list(src["view"])
    assert list(got["provenance"]) == [redact_paths(v) for v in src["provenance"]]
    # The cohort itself records its base as <local>/NAME, never the machine's path.
    assert str(tiny_base) not in src["provenance"][0] and str(tiny_base) not in got["provenance"][0]
    assert "<local>/tiny-sd" in got["provenance"][0]
    assert _raw(got, "image") == _raw(src, "image")  # PNG bytes kept as they were
    card = (out / "README.md").read_text()
    meta = card.split("---")[1]
    for key in ("license:", "task_categories:", "machine-generated", "source_datasets:"):
        assert key in meta
    assert "size_categories:" in meta and "'6': head" in meta  # id2label of the views
    assert "KID" in card and "Memorization: 0 of 6" in card and "Not for clinical use" in card
    assert "Warning" not in card


def test_cohort_without_audit_is_refused_unless_forced(small_cohort, tmp_path, capsys):
    out = tmp_path / "pub"
    argv = ["cohort", str(small_cohort), "--repo-id", "me/cohort", "--dry-run", str(out)]
    with pytest.raises(UserInputError, match="no audit/cohort_audit.json.*--force"):
        _publish(*argv)
    assert not out.exists()
    assert _publish(*argv, "--force") == 0
    card = (out / "README.md").read_text()
    assert "published without an audit" in card and "were not run" in card
    assert len(datasets.load_dataset(str(out), cache_dir=str(tmp_path / "hf-cache"))["train"]) == 6


def test_an_audit_written_elsewhere_is_found_with_audit_flag(
    small_cohort, phantom_prepared, tmp_path, capsys
):
    """``fusynth audit cohort --out X`` then ``publish cohort --audit X``: the same report
    path on both sides (it used to be defined twice, and the cohort was refused)."""
    from fusynth.cli.main import main as fusynth

    audit = tmp_path / "elsewhere"
    argv = ["audit", "cohort", str(small_cohort), "--reference", f"{phantom_prepared}:train"]
    assert fusynth([*argv, "--out", str(audit)]) == 0
    assert not (small_cohort / "audit").exists()
    out = tmp_path / "pub"
    base = ["cohort", str(small_cohort), "--repo_id", "me/cohort", "--dry_run", str(out)]
    with pytest.raises(UserInputError, match="--audit DIR"):
        _publish(*base)
    assert _publish(*base, "--audit", str(audit)) == 0
    published = (out / "provenance" / "cohort_audit.json").read_text()
    assert published == redact_paths((audit / "cohort_audit.json").read_text())
    assert "Memorization: 0 of 6" in (out / "README.md").read_text()
    with pytest.raises(UserInputError, match=r"--audit: .*: no cohort_audit.json"):
        _publish(*base[:-1], str(tmp_path / "pub2"), "--audit", str(tmp_path))


def test_flagged_share_over_threshold_is_refused(audited_cohort, tmp_path):
    import shutil

    src = tmp_path / "c"
    shutil.copytree(audited_cohort, src)
    path = src / "audit" / "cohort_audit.json"
    audit = json.loads(path.read_text())
    audit["memorization"]["overall"].update(flagged=3, share_flagged=0.5)
    path.write_text(json.dumps(audit))
    with pytest.raises(UserInputError, match="3 of 6 samples.*above the threshold 0.0"):
        publish_dry_run("cohort", src, "me/c", tmp_path / "a")
    publish_dry_run("cohort", src, "me/c", tmp_path / "b", max_flag_share=0.5)
    publish_dry_run("cohort", src, "me/c", tmp_path / "c2", force=True)
    assert "published against the audit" in (tmp_path / "c2" / "README.md").read_text()


def test_a_stale_or_incomplete_audit_is_refused_unless_forced(audited_cohort, tmp_path):
    import shutil

    src = tmp_path / "c"
    shutil.copytree(audited_cohort, src)
    path = src / "audit" / "cohort_audit.json"
    audit = json.loads(path.read_text())
    stale = json.loads(json.dumps(audit))
    stale["counts"]["cohort"]["total"] = 5
    path.write_text(json.dumps(stale))
    with pytest.raises(UserInputError, match="covers 5 samples but the cohort holds 6"):
        publish_dry_run("cohort", src, "me/c", tmp_path / "a")
    del audit["memorization"]
    path.write_text(json.dumps(audit))
    with pytest.raises(UserInputError, match="no memorization result"):
        publish_dry_run("cohort", src, "me/c", tmp_path / "a")
    publish_dry_run("cohort", src, "me/c", tmp_path / "b", force=True)
    assert (
        "published against the audit: it has no memorization"
        in (tmp_path / "b" / "README.md").read_text()
    )
    assert not (tmp_path / "a").exists()


def test_jpeg_images_and_rgb_masks_become_png_and_single_channel(tmp_path):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (16, 16), dtype=np.uint8)
    labels = np.zeros((16, 16), np.uint8)
    labels[4:10, 5:12] = 1

    def encoded(arr: np.ndarray, fmt: str) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format=fmt)
        return buf.getvalue()

    row = {k: None for k in FEATURES}
    row.update(view=6, synthetic=True, split="train", cohort="synthetic", provenance="{}")
    rows = [
        {
            **row,
            "image": {"bytes": encoded(img, "JPEG"), "path": None},
            "mask": {"bytes": encoded(np.stack([labels] * 3, -1), "PNG"), "path": None},
        },
        {**row, "image": {"bytes": encoded(img, "PNG"), "path": None}, "mask": None},
    ]
    src = tmp_path / "c"
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(rows, features=FEATURES)}
    ).save_to_disk(str(src))
    (src / "request.json").write_text(json.dumps({"seed": 0}))
    publish_dry_run("cohort", src, "me/c", tmp_path / "pub", force=True)
    got = datasets.load_dataset(str(tmp_path / "pub"), cache_dir=str(tmp_path / "hf-cache"))[
        "train"
    ]
    raw = _raw(got, "image")
    assert all(b.startswith(b"\x89PNG") for b in raw)
    jpeg_pixels = np.asarray(Image.open(io.BytesIO(rows[0]["image"]["bytes"])))
    assert np.array_equal(np.asarray(got[0]["image"]), jpeg_pixels)
    assert got[0]["mask"].mode == "L" and np.array_equal(np.asarray(got[0]["mask"]), labels)
    assert got[1]["mask"] is None


def test_redact_paths_keeps_the_name_and_drops_the_machine(tmp_path):
    # Absolute paths of this run's own temporary folder stand for a user's machine.
    sd15, data = tmp_path / "models" / "sd15", tmp_path / "hc18" / "prepared"
    base, srv = tmp_path / "m" / "base", tmp_path / "srv" / "a"
    text = (
        f'base: {sd15}\n"train_data": "{data}:train",\n'
        f"see `~/runs/lora` and **{base}** and [x]({srv} b) or (path/to/this/folder) at "
        "https://huggingface.co/me/x with 10/20 px and me/model and C:\\x"
    )
    assert redact_paths(text) == (
        'base: <local>/sd15\n"train_data": "<local>/prepared:train",\n'
        "see `<local>/lora` and **<local>/base** and [x](<local>/a b) or (path/to/this/folder) at "
        "https://huggingface.co/me/x with 10/20 px and me/model and C:\\x"
    )


def test_card_renders_and_a_missing_field_fails_loudly():
    need = required_fields("dataset")
    assert {"repo_id", "audit", "audit_warning", "id2label", "view_counts"} <= need
    fields = {k: "x" for k in need} | {
        "view_counts": {"head": 1},
        "id2label": {0: "head"},
        "settings": {"seed": 0},
        "audit": None,
        "pairs": None,
        "audit_warning": "",
        "smoke_base": False,
    }
    card = render_card("dataset", {"license": "other"}, fields, kind="dataset")
    assert "license: other" in card and "Not for clinical use" in card
    with pytest.raises(ValueError, match="needs fields: audit, repo_id"):
        render_card(
            "dataset",
            {},
            {k: v for k, v in fields.items() if k not in ("audit", "repo_id")},
            kind="dataset",
        )


def test_bad_input_is_one_line(tmp_path, tiny_sam, capsys, monkeypatch):
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(UserInputError, match="is not a fusynth output \\(no ") as err:
        detect_kind(tmp_path)
    assert "\n" not in str(err.value)
    with pytest.raises(UserInputError, match="no such folder"):
        detect_kind(tmp_path / "missing")
    for bad in ("no-slash", "a/b/c", "me/bad name", "me/--x", "/name"):
        with pytest.raises(UserInputError, match="--repo_id"):
            check_repo_id(bad)
    assert check_repo_id("me/ok-name_1.0") == "me/ok-name_1.0"
    with pytest.raises(UserInputError, match="is a sam output, not a cohort"):
        publish_dry_run("cohort", tiny_sam, "me/x", tmp_path / "o")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr("huggingface_hub.constants.HF_TOKEN_PATH", str(tmp_path / "no-token"))
    with pytest.raises(UserInputError, match="no Hugging Face token: set HF_TOKEN") as err:
        _publish("model", str(tiny_sam), "--repo-id", "me/x")
    assert "\n" not in str(err.value)
    out = tmp_path / "o2"
    publish_dry_run("model", tiny_sam, "me/x", out)
    with pytest.raises(UserInputError, match="already exists"):
        publish_dry_run("model", tiny_sam, "me/x", out)
    publish_dry_run("model", tiny_sam, "me/x", out, overwrite=True)


def test_every_flag_has_help():
    parser = argparse.ArgumentParser(prog="fusynth")
    pub = add_publish_parser(parser.add_subparsers(dest="group", required=True))
    subs = next(a for a in pub._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in subs.choices.items():
        flags = [a for a in sub._actions if not isinstance(a, argparse._HelpAction)]
        assert flags and all(a.help for a in flags), name
    assert "--revision" in subs.choices["model"]._option_string_actions
    assert "--force" in subs.choices["cohort"]._option_string_actions


@pytest.fixture(scope="module")
def evaluated_sam(tiny_sam, phantom_prepared, tmp_path_factory):
    """A copy of the tiny SAM with an evaluation inside it, and one evaluation outside."""
    import shutil

    root = tmp_path_factory.mktemp("evaluated_sam")
    src = root / "sam"
    shutil.copytree(tiny_sam, src)
    argv = ["evaluate", "segmentation", "--model", str(src), "--data", f"{phantom_prepared}:train"]
    argv += ["--box_jitter", "0,5", "--rounds", "1", "--n_examples", "1"]
    assert main([*argv, "--out", str(src / "eval-test")]) == 0
    assert main([*argv, "--out", str(root / "eval-outside")]) == 0
    return src, root / "eval-outside"


def test_evaluations_of_the_weights_go_into_the_card(evaluated_sam, phantom_prepared, tmp_path):
    src, outside = evaluated_sam
    out = tmp_path / "pub"
    argv = ["model", str(src), "--repo-id", "me/sam", "--dry-run", str(out)]
    assert _publish(*argv, "--eval", str(outside)) == 0
    names = {
        p.relative_to(out).as_posix()
        for p in out.rglob("*")
        if p.is_file() and p.name != ".fusynth.json"
    }
    for name in ("eval-test", "eval-outside"):
        assert {f"eval/{name}/summary.json", f"eval/{name}/boxplot.png"} <= names
    assert not any("per_image" in n or "overlays" in n for n in names)  # real images stay
    card = (out / "README.md").read_text()
    section = card[card.index("## Evaluation") : card.index("## Intended use")]
    summary = json.loads((src / "eval-test" / "summary.json").read_text())
    dice = summary["by_jitter"]["5"]["dice"]
    assert f"{dice['mean']:.3f} ± {dice['sd']:.3f} [{dice['ci_low']:.3f}, " in section
    assert f"{summary['n_images']} images of {summary['n_subjects']} subjects" in section
    assert "| metric | jitter 0 px | jitter 5 px |" in section
    assert (
        f"`<local>/{phantom_prepared.name}:train`" in section and str(phantom_prepared) not in card
    )


def test_an_evaluation_of_other_weights_is_refused(evaluated_sam, tmp_path):
    import shutil

    src, outside = evaluated_sam
    stale = tmp_path / "stale"
    shutil.copytree(outside, stale)
    summary = json.loads((stale / "summary.json").read_text())
    argv = ["model", str(src), "--repo-id", "me/sam", "--dry-run", str(tmp_path / "o")]
    for sha, message in (("0" * 64, "scored other weights"), (None, "does not record")):
        summary["model_sha256"] = sha
        (stale / "summary.json").write_text(json.dumps(summary))
        with pytest.raises(UserInputError, match=f"--eval: .*stale: .*{message}"):
            _publish(*argv, "--eval", str(stale))
    with pytest.raises(UserInputError, match="--eval: .*: not a `fusynth evaluate"):
        _publish(*argv, "--eval", str(tmp_path))
    clf = tmp_path / "clf"
    clf.mkdir()
    (clf / "metrics.json").write_text(json.dumps({"setup": {"what": "classifier"}}))
    with pytest.raises(UserInputError, match="a classification evaluation; .* is a sam output"):
        _publish(*argv, "--eval", str(clf))
    assert not (tmp_path / "o").exists()


def test_base_model_and_datasets_name_hub_ids_in_place_of_local_folders(
    tiny_lora, tiny_base, tmp_path
):
    out = tmp_path / "pub"
    argv = ["model", str(tiny_lora), "--repo-id", "me/lora", "--dry-run", str(out)]
    sd = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert _publish(*argv, "--base-model", sd, "--datasets", "me/hc18, me/planes") == 0
    card = (out / "README.md").read_text()
    meta = card.split("---")[1]
    assert f"base_model: {sd}" in meta and "- me/hc18\n- me/planes" in meta
    assert f'StableDiffusionPipeline.from_pretrained("{sd}")' in card
    assert f"<local>/{tiny_base.name}" not in card and str(tiny_base) not in card
    for flag, bad in (("--base_model", str(tiny_base)), ("--datasets", "a/b/c")):
        with pytest.raises(UserInputError, match=f"{flag}: .* is not a Hub id"):
            _publish(*argv, flag, bad, "--overwrite")
