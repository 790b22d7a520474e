"""open_clip loading offline, ultrasound preprocessing, embedders, prompts, zero-shot heads."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from fusynth.core.errors import UserInputError
from fusynth.data.schema import VIEWS
from fusynth.embed.clip import (
    DEFAULT_PROMPTS,
    TINY_CLIP,
    clip_embedder,
    default_prompts,
    load_clip,
    load_prompts,
    preprocess_images,
    zero_shot_probabilities,
    zero_shot_weights,
)
from fusynth.embed.registry import embedder_from_spec


@pytest.fixture(scope="module")
def tiny():
    return load_clip(None, None, "--model")


def _images(n: int = 3) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (40 + 5 * i, 70), dtype=np.uint8) for i in range(n)]


def test_tiny_model_is_a_fixed_random_init_that_says_it_is_a_smoke_model(tiny, caplog):
    assert tiny.name == TINY_CLIP and tiny.smoke and tiny.image_size == 64
    with caplog.at_level(logging.WARNING):
        again = load_clip(TINY_CLIP, None, "--model")
    assert "smoke model" in caplog.text
    a, b = tiny.model.state_dict(), again.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_preprocessing_pads_to_square_instead_of_stretching():
    wide = np.full((20, 60), 255, dtype=np.uint8)  # a white band, three times as wide as high
    x = preprocess_images([wide], 30, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    assert x.shape == (1, 3, 30, 30)
    column = x[0, 0, :, 15]
    assert column[:9].max() == 0 and column[-9:].max() == 0  # black padding above and below
    assert column[12:18].min() > 0.99  # the band itself, not stretched over the frame
    assert torch.equal(x[0, 0], x[0, 1]) and torch.equal(x[0, 0], x[0, 2])  # gray to RGB


def test_embedder_gives_unit_vectors(tiny):
    emb = clip_embedder(None, None, "--embedder")
    out = emb(_images())
    assert out.shape == (3, tiny.embed_dim) and out.dtype == np.float32
    assert np.linalg.norm(out, axis=1) == pytest.approx(np.ones(3), abs=1e-5)
    spec = embedder_from_spec(f"clip:{TINY_CLIP}", "--embedder")
    assert np.allclose(spec(_images()), out, atol=1e-6)


def test_zero_shot_head_averages_normalised_prompt_embeddings(tiny):
    prompts = {"head": ["fetal head", "a head plane"], "femur": ["fetal femur"]}
    w = zero_shot_weights(tiny, prompts)
    assert w.shape == (tiny.embed_dim, 2)
    assert w.norm(dim=0) == pytest.approx(torch.ones(2), abs=1e-5)
    with torch.no_grad():
        t = tiny.model.encode_text(tiny.tokenizer(prompts["head"]), normalize=True).mean(0)
    assert torch.allclose(w[:, 0], t / t.norm(), atol=1e-5)
    p = zero_shot_probabilities(tiny, w, _images())
    assert p.shape == (3, 2) and np.allclose(p.sum(axis=1), 1)


def test_default_prompts_cover_every_view_with_several():
    assert set(DEFAULT_PROMPTS) == set(VIEWS)
    assert all(len(p) >= 3 for p in DEFAULT_PROMPTS.values())
    assert list(default_prompts(["femur", "head"])) == ["femur", "head"]


def test_prompt_file(tmp_path):
    path = tmp_path / "prompts.yaml"
    path.write_text("head: a fetal head\nfemur:\n  - a femur\n  - a thigh bone\ncervix: [x]\n")
    assert load_prompts(path, ["head", "femur"], "--prompts") == {
        "head": ["a fetal head"],
        "femur": ["a femur", "a thigh bone"],
    }
    with pytest.raises(
        UserInputError, match=r"--prompts: .*prompts.yaml has no prompts for view 'brain'"
    ):
        load_prompts(path, ["head", "brain"], "--prompts")
    path.write_text("hed: [a head]\n")
    with pytest.raises(UserInputError, match="unknown view 'hed'.*did you mean 'head'"):
        load_prompts(path, ["head"], "--prompts")
    path.write_text("head: []\n")
    with pytest.raises(UserInputError, match="view 'head' needs a prompt"):
        load_prompts(path, ["head"], "--prompts")


def test_local_weights_load_and_bad_files_are_named(tiny, tmp_path):
    good = tmp_path / "tiny.pt"
    torch.manual_seed(3)
    state = {
        k: torch.randn_like(v) if v.is_floating_point() else v
        for k, v in tiny.model.state_dict().items()
    }
    torch.save(state, good)
    loaded = load_clip(None, str(good), "--model", "--pretrained")
    assert not loaded.smoke
    assert torch.equal(loaded.model.state_dict()["logit_scale"], state["logit_scale"])
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(UserInputError, match=r"^--pretrained: .*broken.pt cannot be loaded"):
        load_clip(None, str(bad), "--model", "--pretrained")
    with pytest.raises(UserInputError, match=r"--pretrained: .*missing.pt not found"):
        load_clip(None, str(tmp_path / "missing.pt"), "--model", "--pretrained")


def test_unknown_model_and_tag_are_refused():
    with pytest.raises(UserInputError, match=r"--model: 'ViT-B-3' is not an open_clip model"):
        load_clip("ViT-B-3", None, "--model")
    with pytest.raises(UserInputError, match=r"--pretrained: 'laion' is neither a file nor"):
        load_clip("ViT-B-32", "laion", "--model", "--pretrained")


def test_a_local_dir_model_brings_config_and_weights(tiny, tmp_path):
    import json

    from safetensors.torch import save_file

    from fusynth.embed.clip import TINY_CLIP_CONFIG

    folder = tmp_path / "clip"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CLIP_CONFIG}))
    state = {k: v.contiguous() for k, v in tiny.model.state_dict().items()}
    save_file(state, str(folder / "open_clip_model.safetensors"))
    loaded = load_clip(f"local-dir:{folder}", None, "--model", "--pretrained")
    assert not loaded.smoke and loaded.image_size == 64
    got = loaded.model.state_dict()
    assert all(torch.equal(got[k], state[k]) for k in state)
    with pytest.raises(UserInputError, match="brings its own weights"):
        load_clip(f"local-dir:{folder}", "x.pt", "--model", "--pretrained")
    with pytest.raises(UserInputError, match=r"--model: cannot load local-dir:"):
        load_clip(f"local-dir:{tmp_path / 'nowhere'}", None, "--model")
