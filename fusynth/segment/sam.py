"""Building, saving and loading segment-anything models without unpickling.

Sizes are a plain dict (as segment-anything's own registry), plus ``tiny``: a small
random-init SAM for smoke runs. The official builder reads checkpoints with a bare
``torch.load``; here a ``.pth`` is read with ``weights_only=True`` and fusynth's own
folders hold safetensors.
"""

from __future__ import annotations

import json
import os
import re
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fusynth.core.errors import UserInputError, suggest

#: Model sizes. ``global_attn``: blocks with global attention; ``window``: local window.
SAM_CONFIGS: dict[str, dict[str, Any]] = {
    "vit_b": {
        "embed_dim": 768,
        "depth": 12,
        "num_heads": 12,
        "global_attn": (2, 5, 8, 11),
        "image_size": 1024,
        "window": 14,
    },
    "vit_l": {
        "embed_dim": 1024,
        "depth": 24,
        "num_heads": 16,
        "global_attn": (5, 11, 17, 23),
        "image_size": 1024,
        "window": 14,
    },
    "vit_h": {
        "embed_dim": 1280,
        "depth": 32,
        "num_heads": 16,
        "global_attn": (7, 15, 23, 31),
        "image_size": 1024,
        "window": 14,
    },
    "tiny": {
        "embed_dim": 32,
        "depth": 2,
        "num_heads": 2,
        "global_attn": (1,),
        "image_size": 256,
        "window": 4,
    },
}
CONFIG_FILE = "sam_config.json"
WEIGHTS_FILE = "model.safetensors"


def build_sam(model_type: str, seed: int = 0) -> Any:
    """A randomly initialised ``segment_anything.modeling.Sam`` of the given size."""
    from segment_anything.modeling import (
        ImageEncoderViT,
        MaskDecoder,
        PromptEncoder,
        Sam,
        TwoWayTransformer,
    )

    if model_type not in SAM_CONFIGS:
        raise UserInputError(
            f"--model_type: unknown SAM size {model_type!r}{suggest(model_type, SAM_CONFIGS)}; "
            f"choose from {', '.join(SAM_CONFIGS)}"
        )
    c = SAM_CONFIGS[model_type]
    torch.manual_seed(seed)
    grid = c["image_size"] // 16
    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=c["depth"],
            embed_dim=c["embed_dim"],
            img_size=c["image_size"],
            mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=c["num_heads"],
            patch_size=16,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=c["global_attn"],
            window_size=c["window"],
            out_chans=256,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=256,
            image_embedding_size=(grid, grid),
            input_image_size=(c["image_size"], c["image_size"]),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
            transformer_dim=256,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )
    return sam.eval()


def save_sam(folder: str | os.PathLike, sam: Any, model_type: str) -> Path:
    """Write ``sam_config.json`` and ``model.safetensors`` (all weights)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.detach().cpu().contiguous() for k, v in sam.state_dict().items()},
        str(folder / WEIGHTS_FILE),
    )
    (folder / CONFIG_FILE).write_text(json.dumps({"model_type": model_type}, indent=2))
    return folder


def load_sam(
    path: str | os.PathLike,
    model_type: str | None = None,
    flag: str = "--segmenter",
    preprocess: str | None = None,
) -> tuple[Any, str]:
    """Load a SAM from a fusynth folder, an official/MedSAM ``.pth`` checkpoint or a
    transformers ``SamModel`` folder.

    Args:
        path: a folder with ``sam_config.json`` and ``model.safetensors``, a ``.pth`` /
            ``.safetensors`` file of a whole SAM's state dict, or a transformers SAM folder
            (``config.json`` and ``model.safetensors``, e.g. ``facebook/sam-vit-base``).
        model_type: the size; by default read from the weights' shapes.
        preprocess: ``sam`` or ``medsam``; by default a fusynth folder's recorded setting,
            ``medsam`` for MedSAM weights, else ``sam``
            (see :mod:`fusynth.segment.sam_formats`).

    Returns:
        ``(sam, model_type)``; the preprocessing is set on the model
        (``fusynth.segment.sam_formats.preprocess_of(sam)``).

    Raises:
        UserInputError: missing files, unknown size, or weights that do not fit.
    """
    from safetensors.torch import load_file

    from fusynth.segment.sam import infer_model_type
    from fusynth.segment.sam_formats import (
        apply_preprocess,
        default_preprocess,
        is_transformers_sam,
        read_transformers_sam,
    )

    path = Path(path)
    folder_config = None
    medsam = False
    if path.is_dir() and is_transformers_sam(path):
        state, medsam = read_transformers_sam(path, flag)
    elif path.is_dir():
        cfg = path / CONFIG_FILE
        if not cfg.is_file():
            raise UserInputError(
                f"{flag}: {path} has no {CONFIG_FILE} (not a fusynth SAM folder) and no "
                "config.json of a transformers SAM"
            )
        folder_config = json.loads(cfg.read_text())
        model_type = model_type or folder_config["model_type"]
        state = load_file(str(path / WEIGHTS_FILE))
    elif path.is_file():
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as exc:  # pickles with code, corrupt files
                raise UserInputError(f"{flag}: {path} is not a plain weights file ({exc})") from exc
    else:
        raise UserInputError(f"{flag}: {path} not found")
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]  # training checkpoints that wrap the state dict
    if model_type is None:
        model_type = infer_model_type(state) if isinstance(state, dict) else None
        if model_type is None:
            raise UserInputError(
                f"{flag}: {path} is not a SAM state dict of a known size "
                f"({', '.join(SAM_CONFIGS)}): its image encoder's shapes fit none"
            )
    sam = build_sam(model_type)
    check_state_dict(sam, state, path, model_type, flag)
    sam.load_state_dict(state)
    apply_preprocess(sam, preprocess or default_preprocess(path, folder_config, medsam))
    return sam.eval(), model_type


def check_state_dict(sam: Any, state: Any, path: Path, model_type: str, flag: str) -> None:
    """Refuse weights that are not a whole SAM of this size, naming the keys that differ.

    Raises:
        UserInputError: not a dict of tensors, keys missing or unexpected, shapes differ.
    """
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserInputError(f"{flag}: {path} is not a SAM state dict (not a mapping of tensors)")
    actual = infer_model_type(state)
    if actual is not None and actual != model_type:
        raise UserInputError(
            f"{flag}: {path} holds a {actual} SAM, not {model_type}; drop --model_type "
            "(the size is read from the weights) or give the right one"
        )
    own = sam.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    if missing or extra:
        parts = []
        if missing:
            parts.append(
                f"{len(missing)} missing ({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''})"
            )
        if extra:
            parts.append(
                f"{len(extra)} unexpected ({', '.join(extra[:3])}{', ...' if len(extra) > 3 else ''})"
            )
        raise UserInputError(
            f"{flag}: {path} is not a {model_type} SAM state dict: keys {'; '.join(parts)}"
        )
    wrong = [k for k in own if tuple(own[k].shape) != tuple(state[k].shape)]
    if wrong:
        k = wrong[0]
        raise UserInputError(
            f"{flag}: {path} does not fit a {model_type} SAM: {k} has shape "
            f"{tuple(state[k].shape)}, expected {tuple(own[k].shape)} "
            f"({len(wrong)} tensor(s) differ; is --model_type right?)"
        )


def mask_box(mask: np.ndarray) -> np.ndarray:
    """``[x0, y0, x1, y1]`` of a mask's foreground (the box prompt)."""
    ys, xs = np.nonzero(np.asarray(mask) > 0)
    return np.array([xs.min(), ys.min(), xs.max(), ys.max()], dtype=np.float32)


@torch.no_grad()
def predict_with_box(sam: Any, image: np.ndarray, box: np.ndarray) -> np.ndarray:
    """SAM's single-mask prediction for a box prompt on a ``[H, W]`` uint8 image.

    Returns:
        ``[H, W]`` bool.
    """
    from segment_anything import SamPredictor

    from fusynth.segment.sam_formats import medsam_image, medsam_predict, preprocess_of

    predictor = SamPredictor(sam)
    if preprocess_of(sam) == "medsam":
        square = medsam_image(image, sam.image_encoder.img_size)
        predictor.set_image(np.repeat(square[..., None], 3, axis=2))
        return medsam_predict(predictor, box, np.asarray(image).shape)
    predictor.set_image(np.repeat(np.asarray(image)[..., None], 3, axis=2))
    masks, _, _ = predictor.predict(box=box, multimask_output=False)
    return masks[0].astype(bool)


def infer_model_type(state: dict[str, Any]) -> str | None:
    """The :data:`SAM_CONFIGS` size whose encoder has these shapes.

    Args:
        state: a segment-anything state dict (tensors, or anything with ``.shape``).

    Returns:
        ``vit_b``, ``vit_l``, ``vit_h``, ``tiny``, or None when no size fits.
    """
    patch = state.get("image_encoder.patch_embed.proj.weight")
    pos = state.get("image_encoder.pos_embed")
    if patch is None or pos is None:
        return None
    blocks = {int(m[1]) for k in state if (m := re.match(r"image_encoder\.blocks\.(\d+)\.", k))}
    for name, c in SAM_CONFIGS.items():
        if (
            c["embed_dim"] == patch.shape[0]
            and c["depth"] == len(blocks)
            and c["image_size"] == pos.shape[1] * patch.shape[-1]
        ):
            return name
    return None
