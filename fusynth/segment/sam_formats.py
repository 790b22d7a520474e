"""SAM weights as researchers have them: official/MedSAM ``.pth`` files of any size, and
transformers ``SamModel`` folders (``facebook/sam-vit-base``, ``wanglab/medsam-vit-base``).

* :func:`infer_model_type` reads the size from a state dict's shapes (the patch
  embedding's width, the number of encoder blocks, the position grid), so neither a file
  name nor ``--model_type`` is needed.
* :func:`transformers_to_segment_anything` renames a transformers ``SamModel`` state dict
  to segment-anything's keys (the inverse of transformers' ``convert_sam_to_hf``).
* MedSAM's preprocessing differs from SAM's: the image is resized to a 1024x1024 square
  (aspect ratio not kept), min-max scaled per image to [0, 1], and given to the encoder
  without SAM's mean/std. :data:`PREPROCESS` names the two; a fusynth SAM folder records
  its own in ``sam_config.json``, and MedSAM weights get ``medsam`` automatically.
  fusynth's images are uint8, so the min-max stretch is to 0..255 and the model divides
  by 255 (``pixel_mean`` 0, ``pixel_std`` 255): MedSAM's [0, 1] input to within 1/510.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fusynth.core.errors import UserInputError

#: Preprocessing settings: segment-anything's, or MedSAM's.
PREPROCESS = ("sam", "medsam")

#: transformers ``SamModel`` key part -> segment-anything key part, applied in order.
_HF_TO_SA = [
    (r"^vision_encoder\.", "image_encoder."),
    (r"^image_encoder\.patch_embed\.projection\.", "image_encoder.patch_embed.proj."),
    (r"^image_encoder\.layers\.", "image_encoder.blocks."),
    (r"^(image_encoder\.blocks\.\d+\.)layer_norm(\d)\.", r"\1norm\2."),
    (r"^image_encoder\.neck\.conv1\.", "image_encoder.neck.0."),
    (r"^image_encoder\.neck\.layer_norm1\.", "image_encoder.neck.1."),
    (r"^image_encoder\.neck\.conv2\.", "image_encoder.neck.2."),
    (r"^image_encoder\.neck\.layer_norm2\.", "image_encoder.neck.3."),
    (
        r"^prompt_encoder\.shared_embedding\.positional_embedding$",
        "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix",
    ),
    (r"^prompt_encoder\.point_embed\.", "prompt_encoder.point_embeddings."),
    (r"^prompt_encoder\.mask_embed\.conv1\.", "prompt_encoder.mask_downscaling.0."),
    (r"^prompt_encoder\.mask_embed\.layer_norm1\.", "prompt_encoder.mask_downscaling.1."),
    (r"^prompt_encoder\.mask_embed\.conv2\.", "prompt_encoder.mask_downscaling.3."),
    (r"^prompt_encoder\.mask_embed\.layer_norm2\.", "prompt_encoder.mask_downscaling.4."),
    (r"^prompt_encoder\.mask_embed\.conv3\.", "prompt_encoder.mask_downscaling.6."),
    (r"^(mask_decoder\.transformer\.layers\.\d+\.)layer_norm(\d)\.", r"\1norm\2."),
    (
        r"^mask_decoder\.transformer\.layer_norm_final_attn\.",
        "mask_decoder.transformer.norm_final_attn.",
    ),  # fmt: skip
    (r"^mask_decoder\.upscale_conv1\.", "mask_decoder.output_upscaling.0."),
    (r"^mask_decoder\.upscale_layer_norm\.", "mask_decoder.output_upscaling.1."),
    (r"^mask_decoder\.upscale_conv2\.", "mask_decoder.output_upscaling.3."),
]
#: transformers' ``SamFeedForward``: proj_in, layers.0..n-3, proj_out; segment-anything's
#: MLP: layers.0..n-1.
_MLP = re.compile(
    r"^(mask_decoder\.(?:output_hypernetworks_mlps\.\d+|iou_prediction_head))\.(proj_in|proj_out|layers\.(\d+))\.(weight|bias)$"
)


def is_transformers_sam(folder: Path) -> bool:
    """True for a transformers ``SamModel`` folder (``config.json`` of ``model_type: sam``)."""
    cfg = Path(folder) / "config.json"
    if not cfg.is_file():
        return False
    try:
        return json.loads(cfg.read_text()).get("model_type") == "sam"
    except json.JSONDecodeError:
        return False


def transformers_to_segment_anything(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a transformers ``SamModel`` state dict to segment-anything's keys.

    The top-level ``shared_image_embedding`` is tied to the prompt encoder's positional
    matrix (segment-anything keeps one, ``prompt_encoder.pe_layer``); saved folders may
    hold it under either name.
    """
    depth = {}
    for k in state:
        m = _MLP.match(k)
        if m and m[3] is not None:
            depth[m[1]] = max(depth.get(m[1], 0), int(m[3]) + 1)
    state = dict(state)
    shared = state.pop("shared_image_embedding.positional_embedding", None)
    # tied to the prompt encoder's: save_pretrained may keep either name, or both
    if shared is not None:
        state.setdefault("prompt_encoder.shared_embedding.positional_embedding", shared)
    out = {}
    for key, value in state.items():
        new = key
        m = _MLP.match(new)
        if m:
            hidden = depth.get(m[1], 0)
            index = 0 if m[2] == "proj_in" else hidden + 1 if m[2] == "proj_out" else int(m[3]) + 1
            new = f"{m[1]}.layers.{index}.{m[4]}"
        for pattern, repl in _HF_TO_SA:
            new = re.sub(pattern, repl, new)
        out[new] = value
    return out


def read_transformers_sam(folder: Path, flag: str) -> tuple[dict[str, torch.Tensor], bool]:
    """A transformers SAM folder's weights in segment-anything's keys, and whether it is
    MedSAM (its folder name or the config's recorded name says ``medsam``).

    Raises:
        UserInputError: no weights file, or one that needs code to unpickle.
    """
    from safetensors.torch import load_file

    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text())
    index = folder / "model.safetensors.index.json"
    if (folder / "model.safetensors").is_file():
        state = load_file(str(folder / "model.safetensors"))
    elif index.is_file():
        state = {}
        for shard in sorted(set(json.loads(index.read_text())["weight_map"].values())):
            state.update(load_file(str(folder / shard)))
    elif (folder / "pytorch_model.bin").is_file():
        try:
            state = torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
        except Exception as exc:
            raise UserInputError(
                f"{flag}: {folder}/pytorch_model.bin is not a plain weights file ({exc})"
            ) from None
    else:
        raise UserInputError(
            f"{flag}: {folder} is a transformers SAM folder without weights "
            "(model.safetensors or pytorch_model.bin)"
        )
    names = f"{folder.resolve().name} {config.get('_name_or_path', '')}".lower()
    return transformers_to_segment_anything(state), "medsam" in names


def default_preprocess(path: Path, config: dict[str, Any] | None, medsam: bool) -> str:
    """``medsam`` for MedSAM weights (a file or folder named so, a transformers MedSAM),
    else what a fusynth folder recorded, else ``sam``."""
    if config and config.get("preprocess") in PREPROCESS:
        return config["preprocess"]
    return "medsam" if medsam or "medsam" in Path(path).name.lower() else "sam"


def apply_preprocess(sam: Any, preprocess: str) -> Any:
    """Set a Sam's input normalisation for ``preprocess`` and record the setting on it
    (``sam.fusynth_preprocess``)."""
    if preprocess not in PREPROCESS:
        raise UserInputError(
            f"--preprocess: unknown setting {preprocess!r}; choose from {', '.join(PREPROCESS)}"
        )
    if preprocess == "medsam":  # x / 255 of the min-max stretched image: [0, 1]
        sam.pixel_mean.fill_(0.0)
        sam.pixel_std.fill_(255.0)
    sam.fusynth_preprocess = preprocess
    return sam


def preprocess_of(sam: Any) -> str:
    """The preprocessing a loaded SAM expects (``sam`` unless set by :func:`apply_preprocess`)."""
    return getattr(sam, "fusynth_preprocess", "sam")


def medsam_image(image: np.ndarray, size: int) -> np.ndarray:
    """MedSAM's input: ``[H, W]`` uint8 resized (bicubic) to ``[size, size]``, then
    min-max stretched to 0..255."""
    from PIL import Image

    sq = np.asarray(Image.fromarray(np.asarray(image, dtype=np.uint8)).resize((size, size), Image.BICUBIC))  # fmt: skip
    lo, hi = int(sq.min()), int(sq.max())
    if hi == lo:
        return np.zeros_like(sq)
    return np.clip(np.rint((sq.astype(np.float64) - lo) * 255.0 / (hi - lo)), 0, 255).astype(
        np.uint8
    )


def medsam_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """A ``[H, W]`` bool mask resized (nearest) to MedSAM's ``[size, size]`` square."""
    from PIL import Image

    small = Image.fromarray(np.asarray(mask, dtype=np.uint8) * 255).resize((size, size), Image.NEAREST)  # fmt: skip
    out = np.asarray(small) > 0
    if not out.any() and np.asarray(mask).any():  # a sliver nearest-neighbour lost
        ys, xs = np.nonzero(mask)
        h, w = np.asarray(mask).shape
        out[min(int(ys.mean() * size / h), size - 1), min(int(xs.mean() * size / w), size - 1)] = True  # fmt: skip
    return out


def medsam_sample(sample: Any, size: int) -> Any:
    """A :class:`fusynth.segment.data.SegSample` in MedSAM's square frame."""
    import dataclasses

    return dataclasses.replace(
        sample, image=medsam_image(sample.image, size), mask=medsam_mask(sample.mask, size)
    )


def medsam_predict(predictor: Any, box: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """MedSAM's prediction for a native-pixel box: the box scaled to the square frame,
    the logits resized back to the native ``shape`` (bilinear) and thresholded, as
    MedSAM's own inference does. Returns ``[H, W]`` bool."""
    import torch.nn.functional as F

    h, w = shape
    size = predictor.original_size[0]
    square_box = np.asarray(box, dtype=np.float64) * np.array([size / w, size / h] * 2)
    logits, _, _ = predictor.predict(box=square_box, multimask_output=False, return_logits=True)
    t = torch.as_tensor(np.asarray(logits[:1], dtype=np.float32))[None]
    native = F.interpolate(t, size=(h, w), mode="bilinear", align_corners=False)[0, 0]
    return (native > predictor.model.mask_threshold).numpy()
