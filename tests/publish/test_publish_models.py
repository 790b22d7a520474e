"""``fusynth publish model --dry-run`` of ControlNet, classifier and SSL encoder outputs:
each published folder loads with the stock libraries (diffusers, torchvision,
safetensors), the code in its card runs as written, and checkpoints, optimizer states
and training logs stay behind."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from fusynth.cli.publish import add_commands as add_publish_parser
from tests.conftest import train_on_phantom


def _publish(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="fusynth")
    add_publish_parser(parser.add_subparsers(dest="group", required=True))
    args = parser.parse_args(["publish", *argv])
    return args.func(args)


def _dry_run(src: Path, repo_id: str, out: Path, capsys) -> str:
    """Publish ``src`` to ``out`` through the CLI; the card's text."""
    assert _publish("model", str(src), "--repo-id", repo_id, "--dry-run", str(out)) == 0
    printed = capsys.readouterr().out
    assert repo_id in printed and "nothing uploaded" in printed
    return (out / "README.md").read_text()


def _files(folder: Path) -> set[str]:
    return {
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file() and p.name != ".fusynth.json"
    }


def _check_left_behind(src: Path, out: Path, expected: set[str]) -> None:
    """``out`` holds exactly ``expected``; ``src`` had checkpoints and a log left behind."""
    source = _files(src)
    assert "train_log.json" in source and any(n.startswith("checkpoint-") for n in source)
    assert any(n.endswith("optimizer.pt") for n in source)
    assert _files(out) == expected
    assert not any("checkpoint" in n or "optimizer" in n or n.endswith(".pt") for n in expected)


def _check_card(card: str, repo_id: str, kind: str) -> None:
    meta = card.split("---")[1]
    assert re.search(r"^- fusynth$", meta, re.M) and re.search(rf"^- {kind}$", meta, re.M)
    assert re.search(r"^license: \S+", meta, re.M)
    assert f"Published as [`{repo_id}`](https://huggingface.co/{repo_id})" in card
    assert f'snapshot_download("{repo_id}")' in card
    assert "Not for clinical use" in card


def _card_code(card: str) -> str:
    """The card's first Python code block (its "Use" section)."""
    found = re.search(r"```python\n(.*?)```", card, re.S)
    assert found, "the card has no ```python block"
    return found.group(1)


def _assert_same_state(state: dict[str, torch.Tensor], file: Path) -> None:
    ref = load_file(str(file))
    assert set(state) == set(ref)
    different = [k for k in ref if not torch.equal(state[k].detach().cpu(), ref[k])]
    assert not different, different[:5]


def _square_images(n: int, side: int, seed: int = 0) -> list[np.ndarray]:
    """Square uint8 frames already at the model's resolution: padding and resizing are
    identities, so the stock preprocessing is only the documented normalisation."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (side, side), dtype=np.uint8) for _ in range(n)]


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tiny_classifier(phantom_prepared, tmp_path_factory):
    """A resnet18 view classifier trained for 2 steps on the phantom (checkpoint at 2)."""
    out = tmp_path_factory.mktemp("pub_classifier") / "clf"
    return train_on_phantom("train_classifier", out, phantom_prepared, 10, 2, 2)


# ----------------------------------------------------------------------------- tests


def test_controlnet_dry_run_loads_with_stock_diffusers(
    tiny_controlnet, tiny_base, tmp_path, capsys
):
    from diffusers import ControlNetModel
    from PIL import Image

    out, repo_id = tmp_path / "pub", "me/tiny-controlnet"
    card = _dry_run(tiny_controlnet, repo_id, out, capsys)
    _check_left_behind(
        tiny_controlnet,
        out,
        {
            "README.md",
            "config.json",
            "controlnet/config.json",
            "controlnet/diffusion_pytorch_model.safetensors",
        },
    )
    _check_card(card, repo_id, "controlnet")
    source = tiny_controlnet / "controlnet" / "diffusion_pytorch_model.safetensors"

    controlnet = ControlNetModel.from_pretrained(out / "controlnet")
    _assert_same_state(controlnet.state_dict(), source)

    # The card's code, with the folder snapshot_download would return for the repo id.
    # The tiny base is a local folder: the card names it (its absolute path possibly
    # redacted to <local>/NAME), and a user gives their own copy's path in its place.
    code = _card_code(card)
    assert f'ControlNetModel.from_pretrained("{repo_id}", subfolder="controlnet")' in code
    base = re.search(
        r'ControlNetPipeline\.from_pretrained\("([^"]+)", controlnet=controlnet\)', code
    )
    assert base and base.group(1) in (str(tiny_base), f"<local>/{tiny_base.name}")
    *setup, call = code.strip().splitlines()
    assert call.startswith("image = pipe(") and "image=conditioning_picture" in call
    setup_code = "\n".join(setup).replace(f'"{repo_id}"', repr(str(out)))
    scope: dict = {}
    exec(setup_code.replace(f'"{base.group(1)}"', repr(str(tiny_base))), scope)
    _assert_same_state(scope["controlnet"].state_dict(), source)
    assert scope["pipe"].controlnet is scope["controlnet"]
    images = scope["pipe"](
        "an ultrasound image of the fetal head",
        image=Image.new("RGB", (32, 32), 255),
        num_inference_steps=2,
        height=32,
        width=32,
        output_type="np",
    ).images
    assert images.shape == (1, 32, 32, 3) and np.isfinite(images).all()


def test_classifier_dry_run_loads_into_stock_torchvision(tiny_classifier, tmp_path, capsys):
    import torchvision

    out, repo_id = tmp_path / "pub", "me/tiny-classifier"
    card = _dry_run(tiny_classifier, repo_id, out, capsys)
    _check_left_behind(
        tiny_classifier,
        out,
        {"README.md", "model.safetensors", "classifier_config.json", "config.json"},
    )
    _check_card(card, repo_id, "classifier")
    spec = json.loads((out / "classifier_config.json").read_text())
    assert spec["backbone"] == "resnet18" and spec["resolution"] == 32
    assert spec["classes"] == ["abdomen", "femur", "thorax", "head"]
    assert f"classes\n**{', '.join(spec['classes'])}** (in output order)" in card

    # Stock torchvision: the saved keys are resnet18's own, head sized to the classes.
    net = torchvision.models.resnet18(weights=None, num_classes=len(spec["classes"]))
    net.load_state_dict(load_file(str(out / "model.safetensors")), strict=True)
    _assert_same_state(net.state_dict(), tiny_classifier / "model.safetensors")
    images = _square_images(5, spec["resolution"])
    x = torch.from_numpy(np.stack(images)).float().div(255.0)[:, None].repeat(1, 3, 1, 1)
    mean = torch.tensor(spec["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(spec["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        logits = net.eval()((x - mean) / std)
    assert logits.shape == (5, 4)

    # The card's code, run as written on the published folder, gives the same classifier.
    code = _card_code(card)
    assert 'load_classifier("path/to/this/folder")' in code
    scope = {"grayscale_uint8_images": images}
    exec(code.replace('"path/to/this/folder"', repr(str(out))), scope)
    assert scope["probs"].shape == (5, 4)
    np.testing.assert_allclose(scope["probs"], logits.softmax(dim=1).numpy(), atol=1e-5)

    # The card's torchvision-only recipe loads the same weights.
    blocks = re.findall(r"```python\n(.*?)```", card, re.S)
    assert len(blocks) == 2 and "getattr(torchvision.models" in blocks[1]
    scope = {}
    exec(blocks[1].replace("path/to/this/folder", str(out)), scope)
    _assert_same_state(scope["model"].state_dict(), tiny_classifier / "model.safetensors")


def test_ssl_dry_run_loads_into_stock_torchvision_resnet18(ssl_run, tmp_path, capsys, monkeypatch):
    from fusynth.embed.ssl import ssl_embedder

    out, repo_id = tmp_path / "pub", "me/tiny-ssl"
    card = _dry_run(ssl_run, repo_id, out, capsys)
    _check_left_behind(
        ssl_run, out, {"README.md", "encoder.safetensors", "ssl_config.json", "config.json"}
    )
    _check_card(card, repo_id, "ssl")
    cfg = json.loads((out / "ssl_config.json").read_text())
    assert cfg["architecture"] == "resnet18" and cfg["resolution"] == 32
    assert not any(
        k.startswith(("fc.", "projector.")) for k in load_file(str(out / "encoder.safetensors"))
    )

    # The card's code, run as written in the published folder (it loads a relative path).
    code = _card_code(card)
    assert 'net.load_state_dict(load_file("encoder.safetensors"))' in code
    assert f"# x: [N, 1, {cfg['resolution']}, {cfg['resolution']}]" in code
    images = _square_images(3, cfg["resolution"], seed=1)
    scope = {"x": torch.from_numpy(np.stack(images)).float().div(255.0)[:, None]}
    monkeypatch.chdir(out)
    with torch.no_grad():
        exec(code, scope)
    _assert_same_state(scope["net"].state_dict(), ssl_run / "encoder.safetensors")
    features = scope["features"]
    assert features.shape == (3, 512)
    np.testing.assert_allclose(features.norm(dim=1).numpy(), 1.0, rtol=1e-5)
    # The card's normalisation is the one the encoder was trained and is embedded with.
    np.testing.assert_allclose(
        features.numpy(), ssl_embedder(ssl_run, "--embed")(images), atol=1e-5
    )


def test_classifier_evaluation_goes_into_the_card(tiny_classifier, phantom_prepared, tmp_path):
    from fusynth.cli.main import main

    report = tmp_path / "eval-test"
    argv = ["evaluate", "classification", "--model", str(tiny_classifier)]
    argv += ["--data", f"{phantom_prepared}:test", "--metrics", "standard,fulora-legacy"]
    assert main([*argv, "--out", str(report)]) == 0
    out = tmp_path / "pub"
    argv = ["model", str(tiny_classifier), "--repo-id", "me/clf", "--dry-run", str(out)]
    assert _publish(*argv, "--eval", str(report)) == 0
    assert {"eval/eval-test/metrics.json", "eval/eval-test/confusion.png"} <= _files(out)
    assert not any(n.startswith("eval/") and n.endswith(".csv") for n in _files(out))
    card = (out / "README.md").read_text()
    section = card[card.index("## Evaluation") : card.index("## Intended use")]
    metrics = json.loads((report / "metrics.json").read_text())
    acc = metrics["overall"]["accuracy"]
    assert (
        f"| accuracy | {acc['value']:.3f} [{acc['ci_low']:.3f}, {acc['ci_high']:.3f}] |" in section
    )
    assert f"{metrics['n_images']} images of {metrics['n_subjects']} subjects" in section
    assert f"ACC {metrics['fulora_legacy']['ACC']}" in section and "legacy" in section
