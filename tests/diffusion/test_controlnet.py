"""ControlNet recipe at tiny scale: stock diffusers loads the output, resume is exact,
data without masks is refused; and packed LoRA training needs masks too."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
sys.path.insert(0, str(RECIPES))

import train_controlnet  # noqa: E402
import train_lora  # noqa: E402

from tests.conftest import SHARED_DATA, requires_shared_data  # noqa: E402


def _args(base, data, out, *extra):
    return [
        "--pretrained_model_name_or_path",
        str(base),
        "--train_data",
        str(data),
        "--views",
        "head",
        "--output_dir",
        str(out),
        "--resolution",
        "32",
        "--train_batch_size",
        "2",
        *extra,
    ]


def test_controlnet_output_loads_with_stock_diffusers(tiny_base, phantom_prepared, tmp_path):
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline
    from PIL import Image

    out = tmp_path / "cn"
    assert (
        train_controlnet.main(
            _args(
                tiny_base,
                phantom_prepared,
                out,
                "--max_train_steps",
                "2",
                "--conditioning",
                "distance",
                "--validation_prompt",
                "an ultrasound image of the fetal head",
                "--validation_steps",
                "2",
                "--num_validation_images",
                "2",
                "--validation_inference_steps",
                "2",
                "--learning_rate",
                "1e-3",
            )
        )
        == 0
    )
    config = json.loads((out / "config.json").read_text())
    assert config["method"] == "controlnet" and config["conditioning"] == "distance"
    assert (out / "validation" / "step-000002.png").is_file()
    from fusynth.core.style import png_text

    captions = png_text(out / "validation" / "step-000002.png")["Description"]
    assert "conditioning: training mask 1 (distance)" in captions
    assert 'seed 1 "an ultrasound image of the fetal head"' in captions
    card = (out / "README.md").read_text()
    assert "signed distance" in card and "Not for clinical use" in card
    controlnet = ControlNetModel.from_pretrained(str(out), subfolder="controlnet")
    pipe = StableDiffusionControlNetPipeline.from_pretrained(str(tiny_base), controlnet=controlnet)
    image = pipe(
        "fetal head",
        image=Image.new("RGB", (32, 32)),
        num_inference_steps=2,
        height=32,
        width=32,
        output_type="np",
    ).images
    assert image.shape == (1, 32, 32, 3)
    # Training moved the weights away from the UNet copy it started from.
    start = ControlNetModel.from_unet(pipe.unet)
    trained = load_file(str(out / "controlnet" / "diffusion_pytorch_model.safetensors"))
    assert any(
        not torch.equal(trained[k], v) for k, v in start.state_dict().items() if k in trained
    )


def test_controlnet_resume_is_exact(tiny_base, phantom_prepared, tmp_path):
    extra = [
        "--max_train_steps",
        "4",
        "--checkpointing_steps",
        "2",
        "--random_flip",
        "--learning_rate",
        "1e-3",
    ]
    full = tmp_path / "full"
    assert train_controlnet.main(_args(tiny_base, phantom_prepared, full, *extra)) == 0
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(full / "checkpoint-2", resumed / "checkpoint-2")
    assert (
        train_controlnet.main(
            _args(
                tiny_base, phantom_prepared, resumed, *extra, "--resume_from_checkpoint", "latest"
            )
        )
        == 0
    )
    a = load_file(str(full / "controlnet" / "diffusion_pytorch_model.safetensors"))
    b = load_file(str(resumed / "controlnet" / "diffusion_pytorch_model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("recipe", ["controlnet", "packed"])
def test_data_without_masks_is_refused(tiny_base, phantom_prepared, tmp_path, capsys, recipe):
    argv = _args(tiny_base, phantom_prepared, tmp_path / "o", "--max_train_steps", "1")
    argv[argv.index("head")] = "femur"
    if recipe == "controlnet":
        rc = train_controlnet.main(argv)
    else:
        rc = train_lora.main([*argv, "--packing", "image,image,mask"])
    err = capsys.readouterr().err
    assert rc == 2 and "has no mask" in err, err


def test_outline_masks_are_refused(tiny_base, pairs_dir, tmp_path, capsys):
    """A dataset prepared with --mask-kind filled from outline files keeps outlines."""
    from fusynth.data.geometry import mask_outline
    from fusynth.data.images import read_grayscale
    from fusynth.data.prepare import prepare
    from fusynth.data.readers import ReaderOptions
    from tests.conftest import save_png

    for path in (pairs_dir / "masks").iterdir():
        save_png(path, mask_outline(read_grayscale(path) > 0).astype("uint8") * 255)
    prepare("pairs", pairs_dir, tmp_path / "outlines", options=ReaderOptions(mask_suffix="_mask"))
    argv = [
        "--pretrained_model_name_or_path",
        str(tiny_base),
        "--train_data",
        str(tmp_path / "outlines"),
        "--output_dir",
        str(tmp_path / "o"),
        "--resolution",
        "32",
        "--max_train_steps",
        "1",
    ]
    assert train_controlnet.main(argv) == 2
    assert "has an outline, not a filled mask" in capsys.readouterr().err


def test_bad_conditioning_and_packing(tiny_base, phantom_prepared, tmp_path, capsys):
    assert (
        train_controlnet.main(
            _args(tiny_base, phantom_prepared, tmp_path / "o", "--conditioning", "sdf")
        )
        == 2
    )
    assert "invalid choice: 'sdf'" in capsys.readouterr().err
    assert (
        train_lora.main(
            _args(tiny_base, phantom_prepared, tmp_path / "o", "--packing", "image,mask")
        )
        == 2
    )
    assert (
        "--packing: 'image,mask' must name the source of each of the 3 channels"
        in capsys.readouterr().err
    )


def test_packed_lora_trains_on_image_image_mask(tiny_base, phantom_prepared, tmp_path):
    out = tmp_path / "packed"
    assert (
        train_lora.main(
            _args(
                tiny_base,
                phantom_prepared,
                out,
                "--max_train_steps",
                "2",
                "--packing",
                "image,image,mask",
            )
        )
        == 0
    )
    assert json.loads((out / "config.json").read_text())["packing"] == "image,image,mask"


@requires_shared_data
@pytest.mark.parametrize("method", ["packed", "controlnet"])
def test_both_methods_train_on_real_hc18(tiny_base, tmp_path, method):
    from fusynth.data.prepare import prepare

    prepare("hc18", SHARED_DATA / "hc18", tmp_path / "hc18")
    argv = _args(
        tiny_base,
        f"{tmp_path / 'hc18'}:train",
        tmp_path / "o",
        "--max_train_steps",
        "2",
        "--resolution",
        "64",
        "--caption_template",
        "An ultrasound image of a fetal head, {trimester}",
    )
    if method == "packed":
        assert train_lora.main([*argv, "--packing", "image,image,mask"]) == 0
    else:
        assert train_controlnet.main(argv) == 0
    captions = json.loads((tmp_path / "o" / "config.json").read_text())["captions_by_view"]["head"]
    assert sorted(captions) == [
        f"An ultrasound image of a fetal head, {t} trimester" for t in ("first", "second", "third")
    ]
