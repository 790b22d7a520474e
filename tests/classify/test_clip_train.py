"""Contrastive CLIP fine-tuning: pairs and captions, the loss, LiT/LoRA/full, exact resume,
checkpoints stock open_clip loads, zero-shot and linear-probe evaluation of a tuned model,
the clip-augment experiment, and bad input."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from fusynth.classify.clip_captions import resolve_templates
from fusynth.classify.clip_experiment import paired_difference, read_predictions
from fusynth.classify.clip_model import contrastive_loss
from fusynth.classify.clip_train import ClipTrainConfig, choose_pairs, train_clip
from fusynth.cli.main import main
from fusynth.core.errors import UserInputError
from fusynth.data.schema import VIEWS
from fusynth.embed.clip import TINY_CLIP, build_clip_model
from tests.classify.test_shared_data import real_data  # noqa: F401  (a fixture)
from tests.conftest import requires_shared_data, run_recipe, write_prepared


def _config(phantom, out, **kw) -> ClipTrainConfig:
    settings = {
        "train": f"{phantom}:train",
        "output_dir": str(out),
        "train_batch_size": 8,
        "max_train_steps": 2,
        "checkpointing_steps": 2,
        "learning_rate": 1e-3,
        **kw,
    }
    return ClipTrainConfig(**settings)


@pytest.fixture(scope="module")
def tuned(phantom_prepared, small_cohort, tmp_path_factory):
    """The tiny CLIP tuned (LiT) for 2 steps on the phantom plus the text2img cohort."""
    out = tmp_path_factory.mktemp("clip") / "lit"
    train_clip(_config(phantom_prepared, out, synthetic=str(small_cohort)))
    return out


# ----------------------------------------------------------------------------- the loss


def test_with_one_pair_per_view_the_loss_is_clips():
    from open_clip.loss import ClipLoss

    gen = torch.Generator().manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(5, 8, generator=gen), dim=1)
    txt = torch.nn.functional.normalize(torch.randn(5, 8, generator=gen), dim=1)
    scale = torch.tensor(10.0)
    expected = ClipLoss()(img, txt, scale)
    assert torch.allclose(contrastive_loss(img, txt, scale), expected)
    assert torch.allclose(contrastive_loss(img, txt, scale, torch.arange(5)), expected)


def test_captions_of_the_same_view_are_positives_not_negatives():
    # Two pairs of view 0 with different captions t0, t1, and one pair of view 1 (t2).
    t = torch.eye(3)
    own = t  # each image matches only its own caption
    shared = torch.nn.functional.normalize(torch.stack([t[0] + t[1], t[0] + t[1], t[2]]), dim=1)
    scale, views = torch.tensor(20.0), torch.tensor([0, 0, 1])
    # Plain InfoNCE pushes an image away from the other caption of its view ...
    assert contrastive_loss(own, t, scale) < contrastive_loss(shared, t, scale)
    # ... the view-aware loss wants it as close to every caption of its view.
    assert contrastive_loss(shared, t, scale, views) < contrastive_loss(own, t, scale, views)


# ----------------------------------------------------------------------------- pairs


def test_pairs_use_templates_for_real_images_and_prompts_for_synthetic(
    phantom_prepared, small_cohort, tmp_path
):
    data = choose_pairs(
        _config(
            phantom_prepared,
            tmp_path / "x",
            synthetic=str(small_cohort),
            synthetic_ratio=0.5,
            caption_template=["a {view} plane from {cohort}"],
        ),
        images=False,
    )
    real = [c for c, s in zip(data.captions, data.synthetic, strict=True) if not s]
    assert all(len(c) == 1 and c[0].endswith("plane from phantom") for c in real)
    assert {real[i][0] for i in range(len(real))} >= {"a head plane from phantom"}
    # Ratio 0.5: half as many synthetic images as real ones per view, if the cohort has them.
    src = data.source
    assert src["synthetic_per_view"]["head"] == round(0.5 * src["real_per_view"]["head"])
    assert src["synthetic_per_view"]["abdomen"] == 0  # the cohort has head and femur only
    synth = [c for c, s in zip(data.captions, data.synthetic, strict=True) if s]
    assert synth and all(len(c) == 1 and "ultrasound" in c[0] for c in synth)
    # The default: several zero-shot prompts per view.
    assert len(resolve_templates(None, ["head"])["head"]) >= 3
    # A YAML file gives each view its own templates; it must cover the trained views.
    yaml = tmp_path / "templates.yaml"
    yaml.write_text("head: ['a head of {subject_id}', fetal skull]\nfemur: a femur\n")
    config = _config(phantom_prepared, tmp_path / "y", caption_template=str(yaml))
    with pytest.raises(UserInputError, match="templates.yaml has no prompts for view 'abdomen'"):
        choose_pairs(config, images=False)
    config.views = ["head", "femur"]
    data = choose_pairs(config, images=False)
    head = [c for c, v in zip(data.captions, data.views, strict=True) if v == "head"]
    assert head[0][1] == "fetal skull" and head[0][0].startswith("a head of ")


# ----------------------------------------------------------------------------- training


def test_lit_tunes_the_text_tower_and_stock_open_clip_loads_it(tuned, tmp_path):
    files = {p.name for p in tuned.iterdir()}
    assert {"open_clip_model.safetensors", "open_clip_config.json", f"{TINY_CLIP}.json",
            "config.json", "README.md", "train_log.json", "checkpoint-2"} <= files  # fmt: skip
    state = load_file(str(tuned / "open_clip_model.safetensors"))
    base = build_clip_model(TINY_CLIP).state_dict()
    assert all(torch.equal(state[k], base[k]) for k in state if k.startswith("visual."))
    assert not torch.equal(state["token_embedding.weight"], base["token_embedding.weight"])
    config = json.loads((tuned / "config.json").read_text())
    assert config["num_synthetic"] == 6 and config["num_real"] > 0
    assert "Smoke model" in (tuned / "README.md").read_text()
    # A fresh interpreter with stock open_clip only: both ways a user loads it.
    script = textwrap.dedent(f"""
        import open_clip, torch
        from safetensors.torch import load_file
        d = {str(tuned)!r}
        state = load_file(d + "/open_clip_model.safetensors")
        model, _, preprocess = open_clip.create_model_and_transforms("local-dir:" + d)
        assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
        print(type(preprocess.transforms[0]).__name__)
        open_clip.add_model_config(d + "/{TINY_CLIP}.json")
        model, _, preprocess = open_clip.create_model_and_transforms(
            "{TINY_CLIP}", pretrained=d + "/open_clip_model.safetensors",
            image_resize_mode="longest")
        assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
        tokens = open_clip.get_tokenizer("local-dir:" + d)(["a fetal head"])
        print(tuple(model.encode_text(tokens).shape), type(preprocess.transforms[0]).__name__)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["ResizeKeepRatio", "(1,", "64)", "ResizeKeepRatio"]  # pads


def test_lora_merges_into_mlp_weights_and_full_tunes_both_towers(phantom_prepared, tmp_path):
    base = build_clip_model(TINY_CLIP).state_dict()
    lora = train_clip(_config(phantom_prepared, tmp_path / "lora", train_mode="lora", rank=2))
    state = load_file(str(lora.output_dir / "open_clip_model.safetensors"))
    assert set(state) == set(base)  # open_clip's own keys: LoRA is merged, not stored aside
    changed = {k for k in state if not torch.equal(state[k], base[k])}
    assert changed and all(".mlp.c_" in k or k == "logit_scale" for k in changed)
    assert any(k.startswith("visual.") for k in changed)
    assert any(k.startswith("transformer.") for k in changed)
    full = train_clip(_config(phantom_prepared, tmp_path / "full", train_mode="full"))
    state = load_file(str(full.output_dir / "open_clip_model.safetensors"))
    assert not torch.equal(state["visual.conv1.weight"], base["visual.conv1.weight"])


def test_resume_gives_the_same_weights_and_losses(phantom_prepared, small_cohort, tmp_path):
    kw = {"synthetic": str(small_cohort), "train_mode": "lora", "checkpointing_steps": 2}
    straight = train_clip(_config(phantom_prepared, tmp_path / "s", max_train_steps=4, **kw))
    train_clip(_config(phantom_prepared, tmp_path / "r", max_train_steps=2, **kw))
    resumed = train_clip(
        _config(
            phantom_prepared, tmp_path / "r", max_train_steps=4, resume_from_checkpoint="latest",
            **kw,
        )
    )  # fmt: skip
    assert resumed.global_step == 4 and resumed.losses == straight.losses
    a = load_file(str(straight.output_dir / "open_clip_model.safetensors"))
    b = load_file(str(resumed.output_dir / "open_clip_model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(UserInputError, match="--train_mode"):
        train_clip(
            _config(
                phantom_prepared, tmp_path / "r", max_train_steps=4, train_mode="full",
                synthetic=str(small_cohort), resume_from_checkpoint="latest",
            )
        )  # fmt: skip


# ----------------------------------------------------------------------------- evaluation


def test_zeroshot_and_linear_probe_of_a_tuned_model(tuned, phantom_prepared, tmp_path, capsys):
    argv = ["evaluate", "zeroshot", "--model", str(tuned), "--data", f"{phantom_prepared}:test"]
    assert main([*argv, "--n_boot", "20", "--out", str(tmp_path / "zs")]) == 0
    assert "smoke test" in capsys.readouterr().out  # tuned from random weights
    report = json.loads((tmp_path / "zs" / "metrics.json").read_text())
    assert report["setup"]["model"] == f"local-dir:{tuned}"
    assert report["setup"]["classes"] == ["abdomen", "femur", "thorax", "head"]
    assert 0 <= report["overall"]["accuracy"]["value"] <= 1

    argv = ["evaluate", "classification", "--linear-probe", "--model", str(tuned)]
    argv += ["--train", f"{phantom_prepared}:train", "--data", f"{phantom_prepared}:test"]
    assert main([*argv, "--n_boot", "20", "--out", str(tmp_path / "lp")]) == 0
    probe = json.loads((tmp_path / "lp" / "metrics.json").read_text())
    assert probe["setup"]["what"] == "linear-probe" and probe["setup"]["probe_train_images"] > 0
    # A probe fitted on the images it is scored on is refused.
    plain = ["evaluate", "classification", "--model", str(tuned), "--train", "x", "--data", "y"]
    assert main([*plain, "--out", str(tmp_path / "p")]) == 2
    assert "--train: only with --linear_probe" in capsys.readouterr().err
    argv[-1] = f"{phantom_prepared}:validation"
    code = main([*argv, "--train", f"{phantom_prepared}:validation", "--out", str(tmp_path / "x")])
    assert code == 2 and "shares" in capsys.readouterr().err


def test_the_linear_probe_separates_separable_features():
    from fusynth.classify.probe import fit_linear_probe

    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(30) % 3
    features = torch.eye(3)[labels] * 2 + 0.3 * torch.randn(30, 3, generator=gen)
    w, b = fit_linear_probe(features, labels, 3, l2=1e-3)
    assert w.shape == (3, 3) and b.shape == (3,)
    assert torch.equal((features.double() @ w + b).argmax(1), labels)


def test_paired_difference_is_the_difference_of_the_arms():
    y = np.array([0, 1, 0, 1, 0, 1])
    a = np.eye(2)[[0, 0, 0, 0, 0, 0]]  # half right
    b = np.eye(2)[[0, 1, 0, 1, 0, 0]]  # five of six
    d = paired_difference(y, a, b, ["s1", "s1", "s2", "s2", "s3", "s3"], n_boot=50, seed=0)
    assert d["accuracy"]["value"] == pytest.approx(5 / 6 - 1 / 2)
    assert d["accuracy"]["ci_low"] <= d["accuracy"]["value"] <= d["accuracy"]["ci_high"]
    same = paired_difference(y, a, a, ["s1"] * 6, n_boot=10, seed=0)
    assert same["macro_f1"] == {"value": 0.0, "ci_low": 0.0, "ci_high": 0.0}


def _experiment(real, test, cohort, out, *extra):
    return main(
        ["experiment", "clip-augment", "--real", str(real), "--test", str(test),
         "--synthetic", str(cohort), "--repeats", "1", "--max_train_steps", "2",
         "--train_batch_size", "8", "--n_boot", "20", "--out", str(out), *extra]
    )  # fmt: skip


def test_clip_augment_on_the_phantom(phantom_prepared, small_cohort, tmp_path, capsys):
    out = tmp_path / "exp"
    assert _experiment(phantom_prepared, phantom_prepared, small_cohort, out) == 0
    printed = capsys.readouterr().out
    assert "Paired difference" in printed
    with (out / "table.csv").open() as fh:
        table = list(csv.DictReader(fh))
    assert [t["arm"] for t in table] == ["base", "real", "real+synthetic"]
    arms = [
        json.loads((out / "cells" / c / "model" / "config.json").read_text())
        for c in ("real-r0", "real-synthetic-r0")
    ]
    assert (
        arms[0]["seed"] == arms[1]["seed"] and arms[0]["real_per_view"] == arms[1]["real_per_view"]
    )
    assert (arms[0]["num_synthetic"], arms[1]["num_synthetic"]) == (0, 6)
    assert not list((out / "cells").rglob("open_clip_model.safetensors"))
    with (out / "differences.csv").open() as fh:
        (diff,) = list(csv.DictReader(fh))
    name = f"{phantom_prepared.name}:test"
    a, b = (
        read_predictions(out / "cells" / c / f"eval-{name.replace(':', '-')}")
        for c in ("real-r0", "real-synthetic-r0")
    )
    assert a[0] == b[0]  # the same test images in the same order
    acc = (b[2].argmax(1) == b[1]).mean() - (a[2].argmax(1) == a[1]).mean()
    assert float(diff["accuracy"]) == pytest.approx(acc)
    # Rerun trains nothing; a changed request is refused.
    stamp = (out / "cells" / "real-synthetic-r0" / "cell.json").stat().st_mtime_ns
    assert _experiment(phantom_prepared, phantom_prepared, small_cohort, out) == 0
    assert (out / "cells" / "real-synthetic-r0" / "cell.json").stat().st_mtime_ns == stamp
    assert _experiment(phantom_prepared, phantom_prepared, small_cohort, out, "--seed", "3") == 2
    assert "seed: 0 there, 3 now" in capsys.readouterr().err


@requires_shared_data
def test_fulora_shape_on_real_samples(real_data, tmp_path, capsys):  # noqa: F811
    fpdb, african, cohort = real_data
    out = tmp_path / "exp"
    assert _experiment(fpdb, f"{african}:test", cohort, out, "--train_mode", "lora") == 0
    capsys.readouterr()
    request = json.loads((out / "experiment.json").read_text())
    assert request["views"] is None  # default: the views the African planes have
    real = json.loads((out / "cells" / "real-r0" / "model" / "config.json").read_text())
    assert real["classes"] == ["abdomen", "brain", "femur", "thorax"]
    report = json.loads(
        (
            out / "cells" / "real-synthetic-r0" / f"eval-{african.name}-test" / "metrics.json"
        ).read_text()
    )
    assert {"Algeria", "Egypt", "Ghana", "Malawi", "Uganda"} == set(report["per_center"])
    synth = json.loads((out / "cells" / "real-synthetic-r0" / "model" / "config.json").read_text())
    assert synth["synthetic_per_view"] == {"abdomen": 0, "brain": 4, "femur": 4, "thorax": 0}


# ----------------------------------------------------------------------------- bad input


def _one_line_error(capsys, flag):
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"fusynth: error: {flag}"), err
    return err


def test_a_cohort_without_prompts_is_refused(phantom_prepared, tmp_path, capsys):
    cohort = write_prepared(
        tmp_path / "noprompt",
        [{"view": VIEWS.index("head"), "synthetic": True, "subject_id": f"s{i}"} for i in range(3)],
    )
    capsys.readouterr()  # datasets' saving bar
    argv = ["--train", f"{phantom_prepared}:train", "--synthetic", str(cohort)]
    assert run_recipe("train_clip", *argv, "--output_dir", str(tmp_path / "o")) == 2
    assert "without a prompt" in _one_line_error(capsys, "--synthetic")
    assert not (tmp_path / "o").exists()
    # The experiment checks it from the labels before it writes anything.
    assert _experiment(phantom_prepared, phantom_prepared, cohort, tmp_path / "e") == 2
    assert "without a prompt" in _one_line_error(capsys, "--synthetic")
    assert not (tmp_path / "e").exists()


def test_a_template_naming_a_missing_column_is_refused(phantom_prepared, tmp_path, capsys):
    argv = ["--train", f"{phantom_prepared}:train", "--output_dir", str(tmp_path / "o")]
    assert run_recipe("train_clip", *argv, "--caption_template", "a {veiw} plane") == 2
    err = _one_line_error(capsys, "--caption_template")
    assert "{veiw}" in err and "'view'" in err
    assert not (tmp_path / "o").exists()


def test_a_checkpoint_open_clip_cannot_read_is_refused(tuned, phantom_prepared, tmp_path, capsys):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tuned, broken)
    (broken / "open_clip_model.safetensors").write_bytes(b"not safetensors")
    argv = ["evaluate", "zeroshot", "--model", str(broken), "--data", f"{phantom_prepared}:test"]
    assert main([*argv, "--out", str(tmp_path / "zs")]) == 2
    assert "cannot load" in _one_line_error(capsys, "--model")
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"junk")
    argv = ["--train", f"{phantom_prepared}:train", "--pretrained", str(weights)]
    assert run_recipe("train_clip", *argv, "--output_dir", str(tmp_path / "o")) == 2
    assert "cannot be loaded" in _one_line_error(capsys, "--pretrained")
    folder = tmp_path / "empty"
    folder.mkdir()
    assert main([*argv[:0], "evaluate", "zeroshot", "--model", str(folder),
                 "--data", f"{phantom_prepared}:test", "--out", str(tmp_path / "z2")]) == 2  # fmt: skip
    assert "open_clip_config.json" in _one_line_error(capsys, "--model")
