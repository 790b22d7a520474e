"""Single-file SD checkpoints (A1111/CompVis layout) as a base: stand-ins written from the
tiny base in that layout, read back by diffusers' own converter, offline; training,
text2img, ControlNet and pairs on them; the shipped SD 1.x/2.x configs at real size."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import datasets
import pytest
import torch
from safetensors.torch import save_file

from fusynth.core.errors import UserInputError
from fusynth.diffusion.base import resolve_base
from fusynth.diffusion.single_file import FAMILIES, _check_fits, _yaml_settings, detect_family
from fusynth.diffusion.single_file_export import save_single_file, to_single_file
from tests.conftest import run_recipe


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    # one cache for the module: each stand-in is converted once
    monkeypatch.setenv("FUSYNTH_CACHE", str(tmp_path_factory.getbasetemp() / "sf-cache"))


@pytest.fixture(scope="module")
def tiny_pipe(tiny_base):
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline.from_pretrained(str(tiny_base))


@pytest.fixture(scope="module")
def sd1_file(tiny_pipe, tmp_path_factory):
    """The tiny base as an A1111 ``.safetensors`` (SD 1.x layout)."""
    return save_single_file(tiny_pipe, tmp_path_factory.mktemp("sf") / "tiny-sd1.safetensors")


@pytest.fixture(scope="module")
def sd2_base(tmp_path_factory):
    """An SD 2.x-shaped tiny base (linear projections, GELU OpenCLIP-style text encoder,
    v-prediction) as a diffusers folder, and the same as a CompVis ``.ckpt``."""
    from diffusers import DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from fusynth.diffusion.tiny import TINY_CONFIG, build_tiny_pipeline

    pipe = build_tiny_pipeline(seed=3)
    torch.manual_seed(3)
    unet = {**TINY_CONFIG["unet"], "use_linear_projection": True, "attention_head_dim": [2, 4]}
    pipe.unet = UNet2DConditionModel(**unet)
    text = {**TINY_CONFIG["text_encoder"], "hidden_act": "gelu"}
    pipe.text_encoder = CLIPTextModel(CLIPTextConfig(**text))
    pipe.scheduler = DDIMScheduler.from_config(
        pipe.scheduler.config, prediction_type="v_prediction"
    )
    root = tmp_path_factory.mktemp("sd2")
    pipe.save_pretrained(str(root / "configs"))
    return pipe, root / "configs", save_single_file(pipe, root / "tiny-sd2.ckpt")


def _assert_same_weights(a, b):
    for name in ("unet", "vae", "text_encoder"):
        sa, sb = getattr(a, name).state_dict(), getattr(b, name).state_dict()
        assert set(sa) == set(sb), name
        for k in sa:
            assert torch.equal(sa[k], sb[k]), f"{name}.{k}"


def test_sd1_safetensors_loads_with_the_same_weights_offline(tiny_pipe, sd1_file, tiny_base):
    from diffusers import StableDiffusionPipeline

    ref = resolve_base(str(sd1_file), original_config=str(tiny_base))
    assert ref.single_file == str(sd1_file.resolve())
    assert ref.source == str(sd1_file.resolve())
    pipe = StableDiffusionPipeline.from_pretrained(ref.name_or_path)
    _assert_same_weights(tiny_pipe, pipe)
    # converted once: a second resolve reuses the folder
    assert resolve_base(str(sd1_file), original_config=str(tiny_base)) == ref


def test_sd2_ckpt_loads_with_its_open_clip_text_encoder_and_v_prediction(sd2_base):
    from diffusers import StableDiffusionPipeline

    pipe, configs, ckpt = sd2_base
    keys = torch.load(ckpt, weights_only=True)["state_dict"]
    assert "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight" in keys
    ref = resolve_base(str(ckpt), original_config=str(configs))
    loaded = StableDiffusionPipeline.from_pretrained(ref.name_or_path)
    _assert_same_weights(pipe, loaded)
    assert loaded.scheduler.config.prediction_type == "v_prediction"


def test_sidecar_yaml_is_its_config(tmp_path):
    """A1111 reads ``<name>.yaml`` beside a checkpoint: so does fusynth (here one that
    asks for v-prediction), and the yaml names the family it needs."""
    yaml = tmp_path / "v2-inference-v.yaml"
    yaml.write_text(
        "model:\n  target: ldm.models.diffusion.ddpm.LatentDiffusion\n  params:\n"
        '    parameterization: "v"\n    unet_config:\n      params:\n        context_dim: 1024\n'
        "    cond_stage_config:\n      target: ldm.modules.encoders.modules.FrozenOpenCLIPEmbedder\n"
    )
    assert _yaml_settings(yaml, "--original_config") == {
        "family": "sd2",
        "prediction_type": "v_prediction",
    }
    v1 = tmp_path / "v1-inference.yaml"
    v1.write_text(
        "model:\n  params:\n    unet_config:\n      params:\n        context_dim: 768\n"
        "    cond_stage_config:\n      target: ldm.modules.encoders.modules.FrozenCLIPEmbedder\n"
    )
    assert _yaml_settings(v1, "--original_config") == {
        "family": "sd1",
        "prediction_type": "epsilon",
    }
    bad = tmp_path / "other.yaml"
    bad.write_text("model:\n  params: {}\n")
    with pytest.raises(UserInputError, match="not a Stable Diffusion LDM config"):
        _yaml_settings(bad, "--original_config")


@pytest.mark.parametrize("family", ["sd1", "sd2"])
def test_shipped_configs_match_the_real_checkpoints_layout(family):
    """Built at full size on the meta device, the shipped configs give the key layout and
    shapes of the real SD 1.5 / SD 2.1 files, which diffusers' own detector recognises."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type
    from transformers import CLIPTextConfig, CLIPTextModel

    spec = FAMILIES[family]
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(spec["unet"])
        vae = AutoencoderKL.from_config(spec["vae"])
        text = CLIPTextModel(CLIPTextConfig(**spec["text_encoder"]))

    class Pipe:
        pass

    pipe = Pipe()
    pipe.unet, pipe.vae, pipe.text_encoder = unet, vae, text
    sd = to_single_file(pipe)
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    assert detect_family(shapes, Path("x"), "--base") == family
    _check_fits(shapes, family, Path("x"), "--base")  # no error
    assert infer_diffusers_model_type(sd) == {"sd1": "v1", "sd2": "v2"}[family]
    unet_keys = [k for k in shapes if k.startswith("model.diffusion_model.")]
    vae_keys = [k for k in shapes if k.startswith("first_stage_model.")]
    # the real files: 686 UNet and 248 VAE tensors
    assert (len(unet_keys), len(vae_keys)) == (686, 248)
    assert shapes["first_stage_model.encoder.mid.attn_1.q.weight"] == (512, 512, 1, 1)
    assert shapes["model.diffusion_model.output_blocks.11.0.skip_connection.weight"] == (
        320,
        640,
        1,
        1,
    )
    if family == "sd1":
        assert shapes["model.diffusion_model.input_blocks.1.1.proj_in.weight"] == (320, 320, 1, 1)
        assert shapes[
            "cond_stage_model.transformer.text_model.encoder.layers.11.mlp.fc2.weight"
        ] == (768, 3072)
    else:
        assert shapes["model.diffusion_model.input_blocks.1.1.proj_in.weight"] == (320, 320)
        assert shapes["cond_stage_model.model.transformer.resblocks.22.attn.in_proj_weight"] == (
            3072,
            1024,
        )


def test_a_tiny_file_without_configs_is_refused_naming_the_flag(sd1_file):
    with pytest.raises(
        UserInputError, match="^--base: .*is sd1-like but its UNet.*--original_config"
    ):
        resolve_base(str(sd1_file), flag="--base")


def test_unsupported_single_files_are_refused_in_one_line(tmp_path, sd1_file):
    from safetensors.torch import load_file

    state = load_file(str(sd1_file))
    xl = {**state, "conditioner.embedders.0.transformer.text_model.x": torch.zeros(1)}
    save_file(xl, str(tmp_path / "xl.safetensors"))
    inpaint = dict(state)
    w = inpaint["model.diffusion_model.input_blocks.0.0.weight"]
    inpaint["model.diffusion_model.input_blocks.0.0.weight"] = torch.zeros(w.shape[0], 9, 3, 3)
    save_file(inpaint, str(tmp_path / "inpaint.safetensors"))
    save_file({"weight": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    cases = {
        "xl": "is an SDXL checkpoint",
        "inpaint": "9 input channels",
        "other": "not a Stable Diffusion checkpoint",
    }
    for name, message in cases.items():
        with pytest.raises(UserInputError, match=message) as err:
            resolve_base(str(tmp_path / f"{name}.safetensors"))
        assert len(str(err.value).splitlines()) == 1


def test_a_ckpt_that_needs_code_to_unpickle_is_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("this would run on load",))

    path = tmp_path / "evil.ckpt"
    path.write_bytes(pickle.dumps({"state_dict": Payload()}))
    with pytest.raises(UserInputError, match="weights_only.*convert it to .safetensors"):
        resolve_base(str(path))


def test_original_config_needs_a_single_file(tiny_base):
    with pytest.raises(UserInputError, match="^--original_config: only used with a single-file"):
        resolve_base(str(tiny_base), original_config="v1-inference.yaml")


def test_train_lora_then_text2img_on_a_single_file(sd1_file, tiny_base, phantom_prepared, tmp_path):
    from fusynth.cli.main import main
    from fusynth.core.io import file_sha256

    out = tmp_path / "lora"
    argv = ["--pretrained_model_name_or_path", str(sd1_file), "--original_config", str(tiny_base)]
    argv += ["--train_data", str(phantom_prepared), "--output_dir", str(out)]
    argv += ["--resolution", "32", "--max_train_steps", "1", "--views", "head"]
    assert run_recipe("train_lora", *argv) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["pretrained_model_name_or_path"] == str(sd1_file.resolve())

    cohort = tmp_path / "cohort"
    gen = ["generate", "text2img", "--base", str(sd1_file), "--original_config", str(tiny_base)]
    gen += ["--lora", str(out), "--views", "head:2", "--steps", "2", "--resolution", "32"]
    assert main([*gen, "--out", str(cohort)]) == 0
    prov = json.loads(datasets.load_from_disk(str(cohort))["train"][0]["provenance"])
    assert prov["base"] == f"<local>/{sd1_file.name}"  # the name and hash, not the path
    assert prov["base_sha256"] == file_sha256(sd1_file)


def test_controlnet_and_pairs_on_a_single_file(sd2_base, phantom_prepared, tmp_path):
    from fusynth.cli.main import main

    _, configs, ckpt = sd2_base
    out = tmp_path / "cn"
    argv = ["--pretrained_model_name_or_path", str(ckpt), "--original_config", str(configs)]
    argv += ["--train_data", str(phantom_prepared), "--output_dir", str(out), "--views", "head"]
    argv += ["--resolution", "32", "--max_train_steps", "1"]
    assert run_recipe("train_controlnet", *argv) == 0
    pairs = tmp_path / "pairs"
    # the base and its configs come from the ControlNet's training config
    gen = ["generate", "pairs", "--method", "controlnet", "--adapter", str(out)]
    gen += ["--masks-from", "ellipse", "--n", "2", "--steps", "2", "--out", str(pairs)]
    assert main(gen) == 0
    row = datasets.load_from_disk(str(pairs))["train"][0]
    assert json.loads(row["provenance"])["base"] == f"<local>/{ckpt.name}"


def test_shipped_config_folder_loads_a_file_of_its_size(tiny_pipe, sd1_file, monkeypatch):
    """The path a real SD 1.5 file takes (fusynth's configs, offline tokenizer, no
    --original_config), with the family's configs set to the tiny base's sizes."""
    from diffusers import StableDiffusionPipeline

    from fusynth.diffusion import single_file
    from fusynth.diffusion.tiny import TINY_CONFIG

    tiny = {
        **single_file.FAMILIES["sd1"],
        "context_dim": TINY_CONFIG["unet"]["cross_attention_dim"],
        "unet": {**single_file.FAMILIES["sd1"]["unet"], **TINY_CONFIG["unet"]},
        "vae": {**single_file.FAMILIES["sd1"]["vae"], **TINY_CONFIG["vae"]},
        "text_encoder": {
            **single_file.FAMILIES["sd1"]["text_encoder"],
            **TINY_CONFIG["text_encoder"],
            "hidden_act": "quick_gelu",
        },
    }
    monkeypatch.setitem(single_file.FAMILIES, "sd1", tiny)
    ref = resolve_base(str(sd1_file))
    pipe = StableDiffusionPipeline.from_pretrained(ref.name_or_path)
    _assert_same_weights(tiny_pipe, pipe)
    assert pipe.tokenizer("a photo").input_ids == [49406, 320, 1125, 49407]
    assert type(pipe.scheduler).__name__ == "PNDMScheduler"
    source = json.loads((Path(ref.name_or_path) / "fusynth_single_file.json").read_text())
    assert source["config"] == "fusynth:sd1"
