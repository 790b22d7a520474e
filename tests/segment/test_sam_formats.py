"""SAM weights as researchers bring them: official-named ``.pth`` files without
``--model_type``, transformers ``SamModel`` folders (SAM and MedSAM), and MedSAM's own
preprocessing recorded in the model folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fusynth.cli.main import main
from fusynth.core.errors import UserInputError
from fusynth.segment.sam import build_sam, infer_model_type, load_sam
from fusynth.segment.sam_formats import (
    medsam_image,
    preprocess_of,
    transformers_to_segment_anything,
)
from tests.conftest import run_recipe
from tests.segment.test_finetune import _dataset, _head

TINY_VISION = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "global_attn_indexes": [1],
    "window_size": 4,
    "image_size": 256,
    "output_channels": 256,
    "mlp_dim": 128,
}


@pytest.fixture(scope="module")
def heads(tmp_path_factory):
    rows = [("train", f"t{i}", _head(i=i % 5)) for i in range(4)]
    rows += [("validation", "v0", _head(i=1)), ("test", "x0", _head(i=2))]
    rows += [("test", "x1", _head(i=3))]
    return _dataset(tmp_path_factory.mktemp("heads") / "heads", rows)


def _hf_sam(seed: int = 0):
    from transformers import SamConfig, SamModel

    torch.manual_seed(seed)
    prompt = {"image_size": 256, "image_embedding_size": 16}
    model = SamModel(SamConfig(vision_config=TINY_VISION, prompt_encoder_config=prompt)).eval()
    with torch.no_grad():  # non-trivial values everywhere (some tensors start at 0 or 1)
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model


@pytest.fixture(scope="module")
def hf_folders(tmp_path_factory):
    """A tiny transformers SAM saved as ``facebook/sam-vit-base`` is, and the same weights
    in a folder named as MedSAM's."""
    root = tmp_path_factory.mktemp("hf")
    model = _hf_sam()
    model.save_pretrained(str(root / "sam-vit-tiny"))
    model.save_pretrained(str(root / "medsam-vit-tiny"))
    return model, root / "sam-vit-tiny", root / "medsam-vit-tiny"


@pytest.fixture(scope="module")
def official_named(tmp_path_factory):
    """A tiny SAM's state dict saved under the official ViT-B file name."""
    path = tmp_path_factory.mktemp("pth") / "sam_vit_b_01ec64.pth"
    torch.save(build_sam("tiny", seed=4).state_dict(), path)
    return path


@pytest.mark.parametrize("model_type", ["vit_b", "vit_l", "vit_h", "tiny"])
def test_size_is_read_from_the_shapes_at_real_size(model_type):
    with torch.device("meta"):  # shapes only: ViT-H would be 2.5 GB
        state = build_sam(model_type).state_dict()
    assert infer_model_type(state) == model_type
    assert infer_model_type({"foo": torch.zeros(1)}) is None


def test_official_named_file_is_loaded_by_its_shapes_not_its_name(official_named):
    sam, model_type = load_sam(official_named, flag="--model")
    assert model_type == "tiny"
    assert preprocess_of(sam) == "sam"
    with pytest.raises(UserInputError, match="holds a tiny SAM, not vit_b") as err:
        load_sam(official_named, "vit_b", flag="--model")
    assert len(str(err.value).splitlines()) == 1


def test_evaluate_segmentation_without_model_type(official_named, heads, tmp_path):
    out = tmp_path / "eval"
    argv = ["evaluate", "segmentation", "--model", str(official_named)]
    assert main([*argv, "--data", f"{heads}:test", "--out", str(out), "--n_examples", "0"]) == 0
    assert json.loads((out / "summary.json").read_text())["model_type"] == "tiny"


def test_transformers_state_dict_converts_to_the_same_model(hf_folders):
    """The converted segment-anything model computes what the transformers one does: the
    image embedding and the box-prompted low-resolution mask."""
    hf, folder, _ = hf_folders
    sam, model_type = load_sam(folder, flag="--checkpoint")
    assert model_type == "tiny"
    assert preprocess_of(sam) == "sam"
    x = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    box = torch.tensor([[40.0, 60.0, 180.0, 200.0]])
    with torch.no_grad():
        want = hf(pixel_values=x, input_boxes=box[None], multimask_output=False)
        emb = sam.image_encoder(x)
        sparse, dense = sam.prompt_encoder(points=None, boxes=box, masks=None)
        low_res, iou = sam.mask_decoder(
            image_embeddings=emb,
            image_pe=sam.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )
        torch.testing.assert_close(emb, hf.get_image_embeddings(x), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(low_res, want.pred_masks[:, 0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(iou, want.iou_scores[:, 0], rtol=1e-4, atol=1e-4)


def test_every_transformers_key_has_a_segment_anything_home(hf_folders):
    hf, _, _ = hf_folders
    converted = transformers_to_segment_anything(hf.state_dict())
    assert set(converted) == set(build_sam("tiny").state_dict())


def test_medsam_folder_gets_medsam_preprocessing(hf_folders, tmp_path):
    import shutil

    _, sam_folder, medsam_folder = hf_folders
    assert preprocess_of(load_sam(sam_folder, flag="--checkpoint")[0]) == "sam"
    sam, _ = load_sam(medsam_folder, flag="--checkpoint")
    assert preprocess_of(sam) == "medsam"
    # the flag wins over the guess
    assert preprocess_of(load_sam(medsam_folder, flag="--checkpoint", preprocess="sam")[0]) == "sam"
    # a config that names MedSAM is recognised, whatever the folder is called
    renamed = tmp_path / "my-model"
    shutil.copytree(sam_folder, renamed)
    cfg = json.loads((renamed / "config.json").read_text())
    cfg["_name_or_path"] = "wanglab/medsam-vit-base"
    (renamed / "config.json").write_text(json.dumps(cfg))
    assert preprocess_of(load_sam(renamed, flag="--checkpoint")[0]) == "medsam"


def test_medsam_input_is_minmax_scaled_without_sam_mean_std(hf_folders):
    """What the encoder sees is MedSAM's: the image resized to the square, min-max
    scaled to [0, 1], no mean/std (to within the uint8 step)."""
    from PIL import Image

    _, _, medsam_folder = hf_folders
    sam, _ = load_sam(medsam_folder, flag="--checkpoint")
    rng = np.random.default_rng(0)
    image = (rng.integers(30, 200, size=(48, 64))).astype(np.uint8)
    sq = medsam_image(image, 256)
    assert sq.shape == (256, 256) and sq.min() == 0 and sq.max() == 255
    x = torch.as_tensor(np.repeat(sq[..., None], 3, axis=2)).permute(2, 0, 1).float()
    got = sam.preprocess(x[None])[0]
    ref = np.asarray(Image.fromarray(image).resize((256, 256), Image.BICUBIC), dtype=np.float64)
    ref = (ref - ref.min()) / (ref.max() - ref.min())
    assert float((got[0] - torch.as_tensor(ref)).abs().max()) <= 0.5 / 255 + 1e-6


def test_finetune_and_evaluate_a_transformers_medsam_folder(hf_folders, heads, tmp_path):
    _, _, medsam_folder = hf_folders
    out = tmp_path / "sam"
    argv = ["--checkpoint", str(medsam_folder), "--train", f"{heads}:train"]
    argv += ["--output_dir", str(out), "--max_train_steps", "1", "--train_batch_size", "2"]
    argv += ["--no_embedding_cache"]
    assert run_recipe("finetune_sam", *argv) == 0
    sam_config = json.loads((out / "sam_config.json").read_text())
    assert sam_config["model_type"] == "tiny"
    assert sam_config["preprocess"] == "medsam"
    assert json.loads((out / "config.json").read_text())["preprocess"] == "medsam"
    sam, _ = load_sam(out)
    assert preprocess_of(sam) == "medsam"
    report = tmp_path / "eval"
    argv = ["evaluate", "segmentation", "--model", str(out), "--data", f"{heads}:test"]
    assert main([*argv, "--out", str(report), "--n_examples", "1"]) == 0
    summary = json.loads((report / "summary.json").read_text())
    assert summary["preprocess"] == "medsam"
    assert summary["n_images"] == 2


def test_finetune_official_named_file_without_model_type(official_named, heads, tmp_path):
    out = tmp_path / "sam"
    argv = ["--checkpoint", str(official_named), "--train", f"{heads}:train"]
    argv += ["--output_dir", str(out), "--max_train_steps", "1", "--no_embedding_cache"]
    assert run_recipe("finetune_sam", *argv) == 0
    assert json.loads((out / "sam_config.json").read_text())["preprocess"] == "sam"


def test_transformers_folder_without_weights_is_one_line(tmp_path, hf_folders):
    _, folder, _ = hf_folders
    empty = tmp_path / "sam-vit-empty"
    empty.mkdir()
    (empty / "config.json").write_text((Path(folder) / "config.json").read_text())
    with pytest.raises(UserInputError, match="transformers SAM folder without weights"):
        load_sam(empty, flag="--checkpoint")


def test_medsam_boxes_and_masks_map_between_native_and_square_frames():
    """A box drawn on a 48x64 image reaches the predictor scaled to the square frame,
    and the square-frame answer comes back at the native size and place."""
    from types import SimpleNamespace

    from fusynth.segment.sam_formats import medsam_predict

    class BoxEcho:  # answers "inside the box" in the square frame, as logits
        original_size = (256, 256)
        model = SimpleNamespace(mask_threshold=0.0)

        def predict(self, box, multimask_output, return_logits):
            self.box = box
            logits = -np.ones((1, 256, 256), dtype=np.float32)
            x0, y0, x1, y1 = np.rint(box).astype(int)
            logits[0, y0 : y1 + 1, x0 : x1 + 1] = 1.0
            return logits, None, None

    echo = BoxEcho()
    mask = medsam_predict(echo, np.array([16.0, 12.0, 47.0, 35.0]), (48, 64))
    np.testing.assert_allclose(echo.box, [64.0, 64.0, 188.0, 186.67], atol=0.01)
    assert mask.shape == (48, 64)
    ys, xs = np.nonzero(mask)
    assert abs(xs.min() - 16) <= 1 and abs(xs.max() - 47) <= 1
    assert abs(ys.min() - 12) <= 1 and abs(ys.max() - 35) <= 1


def test_audit_segmenter_predicts_at_native_size_with_medsam(hf_folders):
    from fusynth.segment.sam import predict_with_box

    _, _, medsam_folder = hf_folders
    sam, _ = load_sam(medsam_folder, flag="--segmenter")
    image = np.random.default_rng(1).integers(0, 255, size=(48, 64)).astype(np.uint8)
    mask = predict_with_box(sam, image, np.array([10.0, 8.0, 50.0, 40.0], dtype=np.float32))
    assert mask.shape == (48, 64) and mask.dtype == bool
