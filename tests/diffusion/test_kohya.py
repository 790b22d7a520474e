"""diffusers <-> kohya-ss LoRA conversion (fusynth.diffusion.kohya).

The adapters are trained-looking (random lora_B, rank 4, alpha 8: scale 2) so that any lost
alpha shows up, and every claim is checked where it matters: in the output of a tiny SD UNet
and CLIP text encoder after stock ``pipe.load_lora_weights``.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from fusynth.core.errors import UserInputError
from fusynth.diffusion.kohya import (
    DIFFUSERS_WEIGHT_NAME,
    LORA_ADAPTER_METADATA_KEY,
    convert_lora_file,
    detect_format,
    diffusers_to_kohya,
    effective_deltas,
    kohya_to_diffusers,
    sd_module_names,
)
from fusynth.diffusion.tiny import build_tiny_pipeline

RANK, ALPHA = 4, 8  # scale 2: a dropped alpha (scale 1) changes every output
UNET_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]
TE_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]
N_MODULES = 32 + 8  # tiny UNet: 4 attention blocks x 2 attentions x 4; CLIP: 2 layers x 4


def read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and header of a safetensors file."""
    with safe_open(str(path), framework="pt", device="cpu") as fh:
        metadata = dict(fh.metadata() or {})
    return load_file(str(path)), metadata


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory) -> Path:
    """A LoRA saved exactly as fusynth's trainer saves it (stock diffusers)."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    pipe = build_tiny_pipeline(seed=0)
    unet_config = LoraConfig(
        r=RANK, lora_alpha=ALPHA, init_lora_weights="gaussian", target_modules=UNET_TARGETS
    )
    te_config = LoraConfig(
        r=RANK, lora_alpha=ALPHA, init_lora_weights="gaussian", target_modules=TE_TARGETS
    )
    pipe.unet.add_adapter(unet_config)
    pipe.text_encoder.add_adapter(te_config)
    # lora_B starts at zero: without this every delta is 0 and no scale error could show.
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for model in (pipe.unet, pipe.text_encoder):
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.copy_(torch.randn(param.shape, generator=gen) * 0.5)
    folder = tmp_path_factory.mktemp("lora") / "fu_lora"
    StableDiffusionPipeline.save_lora_weights(
        folder,
        unet_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.unet)),
        text_encoder_lora_layers=convert_state_dict_to_diffusers(
            get_peft_model_state_dict(pipe.text_encoder)
        ),
        unet_lora_adapter_metadata=unet_config.to_dict(),
        text_encoder_lora_adapter_metadata=te_config.to_dict(),
        safe_serialization=True,
    )
    return folder


@pytest.fixture(scope="module")
def inputs() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(2)
    return {
        "latents": torch.randn(1, 4, 16, 16, generator=gen),
        "hidden": torch.randn(1, 8, 64, generator=gen),
        "ids": torch.tensor([[49406, 320, 1125, 530, 49407]]),
    }


def outputs(
    inputs: dict[str, torch.Tensor], folder: Path | None = None, weight_name: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """UNet and text-encoder outputs of a fresh tiny pipeline with a LoRA loaded by stock
    diffusers (or none)."""
    pipe = build_tiny_pipeline(seed=0)
    if folder is not None:
        pipe.load_lora_weights(str(folder), weight_name=weight_name)
    with torch.no_grad():
        unet_out = pipe.unet(inputs["latents"], 500, encoder_hidden_states=inputs["hidden"]).sample
        te_out = pipe.text_encoder(inputs["ids"])[0]
    return unet_out, te_out


@pytest.fixture(scope="module")
def reference(lora_dir, inputs):
    """Outputs with the original diffusers file, and with no LoRA."""
    return {"lora": outputs(inputs, lora_dir), "none": outputs(inputs)}


def assert_same(got, want, atol: float = 1e-6):
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=atol)


def max_diff(got, want) -> float:
    return max(float((g - w).abs().max()) for g, w in zip(got, want, strict=True))


# ---------------------------------------------------------------------------------------------


def test_detect_format(lora_dir):
    tensors, metadata = read(lora_dir / DIFFUSERS_WEIGHT_NAME)
    assert detect_format(tensors) == "diffusers"
    assert detect_format(diffusers_to_kohya(tensors, metadata)) == "kohya"
    with pytest.raises(UserInputError, match="conv_in.weight"):
        detect_format({"conv_in.weight": torch.zeros(1)})
    with pytest.raises(UserInputError, match="mixes"):
        detect_format(
            {"lora_unet_a.alpha": torch.zeros(()), "unet.a.lora_A.weight": torch.zeros(1, 1)}
        )
    with pytest.raises(UserInputError, match="no tensors"):
        detect_format({})


def test_metadata_scale_is_used(lora_dir):
    tensors, metadata = read(lora_dir / DIFFUSERS_WEIGHT_NAME)
    with_alpha = effective_deltas(tensors, metadata)
    without = effective_deltas(tensors)  # no metadata: diffusers assumes alpha = rank
    assert len(with_alpha) == N_MODULES
    for name, delta in with_alpha.items():
        torch.testing.assert_close(delta, 2 * without[name])
        assert delta.abs().max() > 0


def test_round_trip_preserves_every_delta(lora_dir):
    tensors, metadata = read(lora_dir / DIFFUSERS_WEIGHT_NAME)
    original = effective_deltas(tensors, metadata)
    kohya = diffusers_to_kohya(tensors, metadata)
    assert {float(v) for k, v in kohya.items() if k.endswith(".alpha")} == {float(ALPHA)}
    back, back_metadata = kohya_to_diffusers(kohya)
    for deltas in (effective_deltas(kohya), effective_deltas(back, back_metadata)):
        assert deltas.keys() == original.keys()
        for name in original:
            torch.testing.assert_close(deltas[name], original[name], rtol=1e-6, atol=1e-7)
    assert any(n.startswith("text_encoder.text_model.encoder.layers.") for n in original)
    assert "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0" in original
    # The factors themselves are copied, not rescaled.
    key = "unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_v.lora.up.weight"
    kohya_key = "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_v.lora_up.weight"
    assert torch.equal(kohya[kohya_key], tensors[key])


def test_kohya_file_loads_in_stock_diffusers(lora_dir, inputs, reference, tmp_path):
    out = convert_lora_file(lora_dir, tmp_path / "fu_lora_kohya.safetensors", to="kohya")
    assert out == tmp_path / "fu_lora_kohya.safetensors"
    tensors, header = read(out)
    assert detect_format(tensors) == "kohya"
    # diffusers refuses a kohya file that also carries its own adapter metadata.
    assert LORA_ADAPTER_METADATA_KEY not in header
    assert header["ss_network_dim"] == str(RANK) and header["ss_network_alpha"] == str(ALPHA)

    got = outputs(inputs, tmp_path, weight_name=out.name)
    assert_same(got, reference["lora"])
    assert max_diff(reference["lora"], reference["none"]) > 1e-2

    # The same conversion with the alpha dropped (alpha = rank, scale 1) must be caught.
    original, _ = read(lora_dir / DIFFUSERS_WEIGHT_NAME)
    save_file(diffusers_to_kohya(original, None), str(tmp_path / "alpha_less.safetensors"))
    dropped = outputs(inputs, tmp_path, weight_name="alpha_less.safetensors")
    assert max_diff(dropped, reference["lora"]) > 1e-2


def test_kohya_to_diffusers_file_loads_in_stock_diffusers(lora_dir, inputs, reference, tmp_path):
    kohya = convert_lora_file(lora_dir, tmp_path / "kohya", to="kohya")
    assert kohya == tmp_path / "kohya" / "fu_lora.safetensors"  # named after the source folder
    out = convert_lora_file(kohya, tmp_path / "back", to="diffusers")
    assert out == tmp_path / "back" / DIFFUSERS_WEIGHT_NAME
    _, header = read(out)
    fields = json.loads(header[LORA_ADAPTER_METADATA_KEY])
    assert fields["unet.r"] == RANK and fields["unet.lora_alpha"] == ALPHA
    assert fields["text_encoder.lora_alpha"] == ALPHA
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # e.g. PEFT's "pattern matched nothing"
        got = outputs(inputs, out.parent)
    assert_same(got, reference["lora"])


def loaded_deltas(pipe) -> dict[str, torch.Tensor]:
    """scale * B @ A of every LoRA layer stock diffusers/PEFT built, by canonical name."""
    from peft.tuners.lora import LoraLayer

    deltas = {}
    for component in ("unet", "text_encoder"):
        for name, module in getattr(pipe, component).named_modules():
            if not isinstance(module, LoraLayer) or not module.lora_A:
                continue
            adapter = next(iter(module.lora_A))
            down = module.lora_A[adapter].weight
            up = module.lora_B[adapter].weight
            delta = (up.flatten(1) @ down.flatten(1)).reshape(up.shape[0], *down.shape[1:])
            if component == "text_encoder" and not name.startswith("text_model."):
                name = f"text_model.{name}"
            deltas[f"{component}.{name}"] = delta.detach() * module.scaling[adapter]
    return deltas


def test_per_module_alphas_and_ranks(lora_dir, inputs, reference, tmp_path):
    kohya = load_file(str(convert_lora_file(lora_dir, tmp_path / "k.safetensors", to="kohya")))
    modules = sorted(k.removesuffix(".alpha") for k in kohya if k.endswith(".alpha"))
    for i, module in enumerate(modules):
        kohya[f"{module}.alpha"] = torch.tensor([1.0, 2.0, 16.0, 3.0][i % 4])  # scale 1/4 .. 4
    # 0 means "alpha = rank" (scale 1) in sd-scripts.
    zero = "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_k"
    kohya[f"{zero}.alpha"] = torch.tensor(0.0)
    odd = modules[1]  # one module of rank 2: needs rank_pattern as well as alpha_pattern
    kohya[f"{odd}.lora_down.weight"] = kohya[f"{odd}.lora_down.weight"][:2].clone()
    kohya[f"{odd}.lora_up.weight"] = kohya[f"{odd}.lora_up.weight"][:, :2].clone()
    src = tmp_path / "per_module.safetensors"
    save_file(kohya, str(src))

    expected = effective_deltas(kohya)
    up, down = kohya[f"{zero}.lora_up.weight"], kohya[f"{zero}.lora_down.weight"]
    zero_name = "unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_k"
    torch.testing.assert_close(expected[zero_name], up @ down)

    out = convert_lora_file(src, tmp_path / "per_module", to="diffusers")
    tensors, header = read(out)
    fields = json.loads(header[LORA_ADAPTER_METADATA_KEY])
    assert fields["text_encoder.alpha_pattern"] and fields["text_encoder.rank_pattern"]
    for deltas in (effective_deltas(tensors, header), loaded_pipe_deltas(out.parent)):
        assert deltas.keys() == expected.keys()
        for key in expected:
            torch.testing.assert_close(deltas[key], expected[key], rtol=1e-5, atol=1e-6)
    # Back to kohya: the alphas are read from lora_alpha / alpha_pattern / rank_pattern.
    again = diffusers_to_kohya(tensors, header)
    for key, delta in effective_deltas(again).items():
        torch.testing.assert_close(delta, expected[key], rtol=1e-6, atol=1e-7)

    # And the model computes what the deltas say: compare with merging them by hand.
    merged = build_tiny_pipeline(seed=0)
    with torch.no_grad():
        for key, delta in expected.items():
            component, _, path = key.partition(".")
            model = getattr(merged, component)
            if component == "text_encoder" and not hasattr(model, "text_model"):
                path = path.removeprefix("text_model.")
            model.get_submodule(path).weight += delta
        want = (
            merged.unet(inputs["latents"], 500, encoder_hidden_states=inputs["hidden"]).sample,
            merged.text_encoder(inputs["ids"])[0],
        )
    # Merged weights round differently from an unmerged adapter: ~1e-6 apart, while one wrong
    # scale moves outputs by > 1e-2.
    assert_same(outputs(inputs, out.parent), want, atol=1e-4)
    assert max_diff(want, reference["none"]) > 1e-2


def loaded_pipe_deltas(folder: Path) -> dict[str, torch.Tensor]:
    pipe = build_tiny_pipeline(seed=0)
    pipe.load_lora_weights(str(folder))
    return loaded_deltas(pipe)


def meta_sd_models():
    """SD 1.5 and SD 2.1 UNets and CLIP text encoders, shapes only (meta device)."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device("meta"):
        yield "sd15", UNet2DConditionModel(cross_attention_dim=768, attention_head_dim=8), (
            CLIPTextModel(
                CLIPTextConfig(
                    hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                    num_attention_heads=12,
                )
            )
        )  # fmt: skip
        yield "sd21", UNet2DConditionModel(
            cross_attention_dim=1024, attention_head_dim=[5, 10, 20, 20],
            use_linear_projection=True,
        ), CLIPTextModel(
            CLIPTextConfig(
                hidden_size=1024, intermediate_size=4096, num_hidden_layers=23,
                num_attention_heads=16, hidden_act="gelu",
            )
        )  # fmt: skip


def fake_kohya(names: list[str]) -> dict[str, torch.Tensor]:
    """A rank-1 kohya state dict with one module per canonical name."""
    sd = {}
    for name in names:
        component, _, path = name.partition(".")
        prefix = "lora_unet_" if component == "unet" else "lora_te_"
        flat = prefix + path.replace(".", "_")
        sd[f"{flat}.lora_down.weight"] = torch.ones(1, 1)
        sd[f"{flat}.lora_up.weight"] = torch.ones(1, 1)
    return sd


@pytest.mark.parametrize("which", ["sd15", "sd21"])
def test_name_rules_match_real_sd_module_names(which):
    unet, text_encoder = next((u, t) for w, u, t in meta_sd_models() if w == which)
    names = sd_module_names(unet, text_encoder)
    assert any(n.startswith("text_encoder.text_model.") for n in names)
    # Every module, not only the Linear/Conv ones kohya adapts: the rules must undo the
    # flattening of any SD 1.x/2.x path.
    assert set(effective_deltas(fake_kohya(names))) == set(names)
    tensors, _ = kohya_to_diffusers(fake_kohya(names), module_names=names)
    assert len(tensors) == 2 * len(names)


def test_explicit_module_names(lora_dir):
    tensors, metadata = read(lora_dir / DIFFUSERS_WEIGHT_NAME)
    kohya = diffusers_to_kohya(tensors, metadata)
    pipe = build_tiny_pipeline(seed=0)
    names = sd_module_names(pipe.unet, pipe.text_encoder)
    assert kohya_to_diffusers(kohya, module_names=names)[1] == kohya_to_diffusers(kohya)[1]
    with pytest.raises(UserInputError, match="no module of the given base model"):
        kohya_to_diffusers(kohya, module_names=[n for n in names if "attn2" not in n])


def test_other_architectures_are_refused():
    # SDXL's kohya UNet names follow the sgm scheme ("input_blocks"), not diffusers'.
    sdxl = fake_kohya(["unet.input_blocks.4.1.transformer_blocks.0.attn1.to_q"])
    with pytest.raises(UserInputError, match="'input'"):
        kohya_to_diffusers(sdxl)
    te2 = {"lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.ones(1, 1)}
    with pytest.raises(UserInputError, match="SDXL"):
        kohya_to_diffusers(te2)
    with pytest.raises(UserInputError, match="DoRA"):
        kohya_to_diffusers(
            {
                "lora_unet_mid_block_attentions_0_proj_in.lora_down.weight": torch.ones(1, 1),
                "lora_unet_mid_block_attentions_0_proj_in.lora_up.weight": torch.ones(1, 1),
                "lora_unet_mid_block_attentions_0_proj_in.dora_scale": torch.ones(1, 1),
            }
        )
    with pytest.raises(UserInputError, match="no down tensor"):
        kohya_to_diffusers(
            {"lora_unet_mid_block_attentions_0_proj_in.lora_up.weight": torch.ones(1, 1)}
        )


# ---------------------------------------------------------------------------------------------
# convert_lora_file errors: each is a UserInputError naming the file.


def test_error_missing_source(tmp_path):
    with pytest.raises(UserInputError, match="nope.safetensors: no such file"):
        convert_lora_file(tmp_path / "nope.safetensors", tmp_path / "out", to="diffusers")


def test_error_folder_without_weights(tmp_path):
    (tmp_path / "empty_run").mkdir()
    with pytest.raises(UserInputError, match=f"empty_run: folder has no {DIFFUSERS_WEIGHT_NAME}"):
        convert_lora_file(tmp_path / "empty_run", tmp_path / "out.safetensors", to="kohya")


def test_error_not_safetensors(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"\0" * 16)
    with pytest.raises(UserInputError, match=r"weights.bin: not a \.safetensors file"):
        convert_lora_file(tmp_path / "weights.bin", tmp_path / "out", to="diffusers")
    (tmp_path / "broken.safetensors").write_bytes(b"this is not a safetensors file")
    with pytest.raises(UserInputError, match="broken.safetensors: not a readable safetensors"):
        convert_lora_file(tmp_path / "broken.safetensors", tmp_path / "out", to="diffusers")


def test_error_not_a_lora(tmp_path):
    save_file({"conv_in.weight": torch.zeros(2, 2)}, str(tmp_path / "unet.safetensors"))
    with pytest.raises(UserInputError, match="unet.safetensors: not a LoRA state dict"):
        convert_lora_file(tmp_path / "unet.safetensors", tmp_path / "out", to="kohya")


def test_error_already_in_target_format(lora_dir, tmp_path):
    with pytest.raises(UserInputError, match=f"{DIFFUSERS_WEIGHT_NAME}: already in diffusers"):
        convert_lora_file(lora_dir, tmp_path / "out", to="diffusers")
    kohya = convert_lora_file(lora_dir, tmp_path / "k.safetensors", to="kohya")
    with pytest.raises(UserInputError, match="k.safetensors: already in kohya"):
        convert_lora_file(kohya, tmp_path / "k2.safetensors", to="kohya")


def test_error_unknown_target(lora_dir, tmp_path):
    with pytest.raises(UserInputError, match=r"--to: unknown target .*did you mean 'kohya'"):
        convert_lora_file(lora_dir, tmp_path / "out", to="kohy")


def test_error_existing_destination(lora_dir, tmp_path):
    dst = tmp_path / "taken.safetensors"
    dst.write_bytes(b"keep me")
    with pytest.raises(UserInputError, match="taken.safetensors: already exists"):
        convert_lora_file(lora_dir, dst, to="kohya")
    assert dst.read_bytes() == b"keep me"
    convert_lora_file(lora_dir, dst, to="kohya", overwrite=True)
    assert detect_format(load_file(str(dst))) == "kohya"
    assert [p.name for p in tmp_path.iterdir()] == ["taken.safetensors"]  # no temp files left

    back = convert_lora_file(dst, tmp_path / "back", to="diffusers")
    with pytest.raises(UserInputError, match=f"back/{DIFFUSERS_WEIGHT_NAME}: already exists"):
        convert_lora_file(dst, tmp_path / "back", to="diffusers")
    assert convert_lora_file(dst, tmp_path / "back", to="diffusers", overwrite=True) == back


def test_error_bad_destination(lora_dir, tmp_path):
    kohya = convert_lora_file(lora_dir, tmp_path / "k.safetensors", to="kohya")
    with pytest.raises(UserInputError, match="x.safetensors: for --to diffusers give a folder"):
        convert_lora_file(kohya, tmp_path / "x.safetensors", to="diffusers")
    with pytest.raises(UserInputError, match="x.ckpt: for --to kohya give a .safetensors file"):
        convert_lora_file(lora_dir, tmp_path / "x.ckpt", to="kohya")


# --------------------------------------------------------------------------------------------
# kohya files used directly as --lora (FU-LoRA's sd-scripts "standard" layout, LoCon convs)

#: (module, rank, alpha): attention, 1x1-conv proj_in/proj_out, ff, LoCon 3x3 and 1x1
#: convolutions, the text encoder's attention and MLP.
KOHYA_TARGETS = [
    ("unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q", 4, 2.0),
    ("unet.down_blocks.0.attentions.0.proj_in", 4, 4.0),
    ("unet.up_blocks.1.attentions.0.proj_out", 8, 4.0),
    ("unet.down_blocks.0.attentions.0.transformer_blocks.0.ff.net.0.proj", 4, 8.0),
    ("unet.mid_block.attentions.0.transformer_blocks.0.ff.net.2", 4, 1.0),
    ("unet.down_blocks.0.resnets.0.conv1", 4, 2.0),
    ("unet.mid_block.resnets.0.conv2", 2, 1.0),
    ("unet.up_blocks.1.resnets.0.conv_shortcut", 4, 4.0),
    ("text_encoder.text_model.encoder.layers.0.self_attn.q_proj", 4, 4.0),
    ("text_encoder.text_model.encoder.layers.1.mlp.fc1", 4, 2.0),
    ("text_encoder.text_model.encoder.layers.0.mlp.fc2", 4, 8.0),
]


def _module(pipe, name: str):
    component, _, path = name.partition(".")
    model = getattr(pipe, component)
    if component == "text_encoder" and not hasattr(model, "text_model"):
        path = path.removeprefix("text_model.")
    return model.get_submodule(path)


@pytest.fixture(scope="module")
def kohya_standard(tmp_path_factory):
    """A kohya file as sd-scripts writes it (fp16 factors, float32 alphas, LoCon-style
    conv factors ``[r, in, kh, kw]``/``[out, r, 1, 1]``), with random non-zero factors."""
    pipe = build_tiny_pipeline(seed=0)
    gen = torch.Generator().manual_seed(5)
    sd = {}
    for name, rank, alpha in KOHYA_TARGETS:
        weight = _module(pipe, name).weight
        flat = ("lora_unet_" if name.startswith("unet.") else "lora_te_") + name.partition(".")[
            2
        ].replace(".", "_")
        down_shape = (rank, *weight.shape[1:])
        up_shape = (weight.shape[0], rank, *([1, 1] if weight.ndim == 4 else []))
        sd[f"{flat}.lora_down.weight"] = (torch.randn(down_shape, generator=gen) * 0.3).half()
        sd[f"{flat}.lora_up.weight"] = (torch.randn(up_shape, generator=gen) * 0.3).half()
        sd[f"{flat}.alpha"] = torch.tensor(alpha)
    path = tmp_path_factory.mktemp("kohya") / "fu_lora_r4.safetensors"
    save_file(sd, str(path), {"ss_network_module": "networks.lora", "ss_network_dim": "4"})
    return path


def a1111_merged(kohya_file: Path, multiplier: float):
    """The tiny pipeline with the kohya file merged as A1111 does it:
    ``W + multiplier * alpha / rank * up @ down`` for every module."""
    sd = load_file(str(kohya_file))
    merged = build_tiny_pipeline(seed=0)
    with torch.no_grad():
        for name, _, _ in KOHYA_TARGETS:
            flat = ("lora_unet_" if name.startswith("unet.") else "lora_te_") + name.partition(".")[
                2
            ].replace(".", "_")
            up = sd[f"{flat}.lora_up.weight"].float()
            down = sd[f"{flat}.lora_down.weight"].float()
            scale = float(sd[f"{flat}.alpha"]) / down.shape[0]
            weight = _module(merged, name).weight
            weight += multiplier * scale * (up.flatten(1) @ down.flatten(1)).reshape(weight.shape)
    return merged


def _outputs_of(pipe, inputs):
    with torch.no_grad():
        return (
            pipe.unet(inputs["latents"], 500, encoder_hidden_states=inputs["hidden"]).sample,
            pipe.text_encoder(inputs["ids"])[0],
        )


@pytest.mark.parametrize("multiplier", [1.0, 0.6])
def test_kohya_file_as_lora_matches_a1111(tiny_base, kohya_standard, inputs, multiplier):
    """``--lora fu_lora.safetensors --lora_scale m`` computes what A1111 computes with
    ``<lora:fu_lora:m>`` on the same weights, for every kind of target."""
    from fusynth.diffusion.base import resolve_base
    from fusynth.diffusion.pipelines import load_pipeline

    pipe = load_pipeline(resolve_base(str(tiny_base)), "euler", kohya_standard, multiplier)
    for name, _, _ in KOHYA_TARGETS:
        assert hasattr(_module(pipe, name), "lora_A"), f"{name} got no LoRA"
    want = _outputs_of(a1111_merged(kohya_standard, multiplier), inputs)
    got = _outputs_of(pipe, inputs)
    assert_same(got, want, atol=1e-4)
    assert max_diff(want, _outputs_of(build_tiny_pipeline(seed=0), inputs)) > 1e-2


def test_converted_kohya_file_generates_the_same(tiny_base, kohya_standard, inputs, tmp_path):
    from fusynth.diffusion.base import resolve_base
    from fusynth.diffusion.pipelines import load_pipeline

    folder = convert_lora_file(kohya_standard, tmp_path / "converted", to="diffusers").parent
    pipe = load_pipeline(resolve_base(str(tiny_base)), "euler", folder, 0.6)
    assert_same(
        _outputs_of(pipe, inputs), _outputs_of(a1111_merged(kohya_standard, 0.6), inputs), atol=1e-4
    )


def test_generate_text2img_with_a_kohya_file(tiny_base, kohya_standard, tmp_path):
    import datasets

    from fusynth.cli.main import main
    from fusynth.core.io import file_sha256

    out = tmp_path / "cohort"
    argv = ["generate", "text2img", "--base", str(tiny_base), "--lora", str(kohya_standard)]
    argv += ["--lora_scale", "0.6", "--views", "head:2", "--steps", "2", "--resolution", "32"]
    assert main([*argv, "--out", str(out)]) == 0
    prov = json.loads(datasets.load_from_disk(str(out))["train"][0]["provenance"])
    assert prov["adapter_sha256"] == file_sha256(kohya_standard)
    assert prov["lora_scale"] == 0.6


def test_kohya_file_for_another_base_is_refused(tiny_base, kohya_standard, tmp_path):
    from fusynth.diffusion.base import resolve_base
    from fusynth.diffusion.pipelines import load_pipeline

    sd = load_file(str(kohya_standard))
    key = "lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight"
    sd[key] = torch.zeros(4, sd[key].shape[1], 5, 5, dtype=torch.float16)
    bad = tmp_path / "bad.safetensors"
    save_file(sd, str(bad))
    with pytest.raises(UserInputError, match="5x5 kernel for unet.down_blocks.0.resnets.0.conv1"):
        load_pipeline(resolve_base(str(tiny_base)), "euler", bad)
    sd = load_file(str(kohya_standard))
    key = "lora_te_text_model_encoder_layers_1_mlp_fc1.lora_down.weight"
    sd[key] = torch.zeros(4, 1024, dtype=torch.float16)  # SD 1.5's width, not the base's
    save_file(sd, str(bad))
    with pytest.raises(UserInputError, match="mlp.fc1 of size 1024, the base's is 64"):
        load_pipeline(resolve_base(str(tiny_base)), "euler", bad)
