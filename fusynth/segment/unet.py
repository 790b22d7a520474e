"""A light U-Net head segmenter (segmentation_models_pytorch) beside SAM.

Building, choosing what trains, saving and loading, and predicting at native
resolution. Nothing is downloaded: the encoder starts from random init or from a local
state dict (ImageNet or any other), never from smp's hub weights.

A U-Net folder holds ``model.safetensors`` (the whole state dict) and
``unet_config.json``: the keyword arguments of ``smp.Unet`` plus ``_model_class`` (as
smp's own ``save_pretrained`` writes them) and ``_fusynth`` (input size and
normalisation). smp drops keys starting with ``_``, so stock smp rebuilds the model
with ``smp.Unet(**json.load(open("unet_config.json")))`` and
``load_state_dict(safetensors.torch.load_file("model.safetensors"))``.

Inputs follow SAM's frame (:func:`fusynth.segment.data.sam_input`): the longest side
resized to ``resolution`` with the aspect kept, padded with black at the bottom and
right to a square, grayscale repeated to three channels and normalised with ImageNet's
mean and sd (so ImageNet encoder weights see what they were trained on).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fusynth.core.errors import UserInputError, suggest

#: Encoders offered (smp 0.6 names).
ENCODERS = ("mobilenet_v2", "resnet18", "resnet34", "efficientnet-b0")
DEFAULT_ENCODER = "mobilenet_v2"
CONFIG_FILE = "unet_config.json"
WEIGHTS_FILE = "model.safetensors"
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
#: ``--train_parts`` forms; K counts encoder stages (1-5, deepest first) or decoder
#: blocks (1-5, nearest the output first).
TRAIN_PARTS_FORMS = (
    "all",
    "encoder",
    "decoder",
    "head",
    "encoder-last-K+decoder",
    "decoder-last-K",
)
#: Classifier keys of ImageNet checkpoints that a U-Net encoder has no use for.
_CLASSIFIER_KEYS = re.compile(r"^(classifier\.|fc\.|_fc\.)")


# ----------------------------------------------------------------------------- building


def check_encoder(name: str, flag: str = "--encoder") -> str:
    """Validate an encoder name, suggesting the nearest one."""
    if name not in ENCODERS:
        raise UserInputError(
            f"{flag}: {name!r} is not one of {', '.join(ENCODERS)}{suggest(name, ENCODERS)}"
        )
    return name


def build_unet(encoder: str = DEFAULT_ENCODER, seed: int = 0) -> nn.Module:
    """A random-init ``smp.Unet`` with ``encoder``: 3 input channels, 1 output (logits)."""
    import segmentation_models_pytorch as smp

    check_encoder(encoder)
    torch.manual_seed(seed)
    return smp.Unet(encoder_name=encoder, encoder_weights=None, in_channels=3, classes=1)


def smp_config(model: nn.Module, resolution: int) -> dict[str, Any]:
    """``unet_config.json``: smp's constructor arguments, ``_model_class`` and ours."""
    cfg = json.loads(json.dumps(dict(model.config)))  # tuples to lists, as smp writes it
    cfg = {k: v for k, v in cfg.items() if not k.startswith("_")}
    return {
        "_model_class": type(model).__name__,
        **cfg,
        "_fusynth": {"resolution": resolution, "mean": list(MEAN), "std": list(STD)},
    }


def read_state_dict(path: str | os.PathLike, flag: str) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a torch file read with ``weights_only``.

    Wrappers (``{"state_dict": ...}``, ``{"model": ...}``) and DDP's ``module.`` prefix
    are removed.

    Raises:
        UserInputError: missing file, unreadable, or not a mapping of tensors.
    """
    p = Path(path)
    if not p.is_file():
        raise UserInputError(f"{flag}: {p} not found")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(p))
        else:
            state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickles with code, corrupt files: name the file
        raise UserInputError(f"{flag}: {p} cannot be read as a state dict ({exc})") from exc
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserInputError(f"{flag}: {p} is not a state dict (not a mapping of tensors)")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_encoder_weights(
    model: nn.Module, encoder: str, path: str | os.PathLike, flag: str = "--encoder_weights"
) -> None:
    """Load an encoder state dict into ``model.encoder``.

    Accepted: the backbone's own ImageNet state dict (torchvision's ``mobilenet_v2`` /
    ``resnet18`` / ``resnet34``, or ``efficientnet_pytorch``'s ``efficientnet-b0``;
    the classifier is dropped), an smp encoder state dict, or a whole U-Net state dict
    (its ``encoder.`` part is used).

    Raises:
        UserInputError: the file does not fit the encoder (keys missing or unexpected,
            or shapes that differ), naming the file, the encoder and the first keys.
    """
    state = read_state_dict(path, flag)
    if any(k.startswith("encoder.") for k in state):
        state = {k[len("encoder.") :]: v for k, v in state.items() if k.startswith("encoder.")}
    state = {k: v for k, v in state.items() if not _CLASSIFIER_KEYS.match(k)}
    own = model.encoder.state_dict()
    missing = [k for k in own if k not in state]
    extra = [k for k in state if k not in own]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"{len(missing)} key(s) missing (e.g. {', '.join(missing[:2])})")
        if extra:
            parts.append(f"{len(extra)} unexpected (e.g. {', '.join(extra[:2])})")
        raise UserInputError(
            f"{flag}: {path} does not fit the {encoder} encoder: {'; '.join(parts)}; "
            "is --encoder right?"
        )
    wrong = [k for k in own if tuple(own[k].shape) != tuple(state[k].shape)]
    if wrong:
        k = wrong[0]
        raise UserInputError(
            f"{flag}: {path} does not fit the {encoder} encoder: {k} has shape "
            f"{tuple(state[k].shape)}, expected {tuple(own[k].shape)} ({len(wrong)} differ)"
        )
    model.encoder.load_state_dict(state)


# ----------------------------------------------------------------------------- what trains


def parse_train_parts(spec: str, flag: str = "--train_parts") -> tuple[str, int]:
    """``all|encoder|decoder|head`` -> ``(spec, 0)``; ``encoder-last-K+decoder`` and
    ``decoder-last-K`` -> ``(form, K)`` with K in 1..5.

    Raises:
        UserInputError: an unknown form or K out of range, listing the forms.
    """
    if spec in ("all", "encoder", "decoder", "head"):
        return spec, 0
    for form, pattern in (
        ("encoder-last-K+decoder", r"encoder-last-(\d+)\+decoder"),
        ("decoder-last-K", r"decoder-last-(\d+)"),
    ):
        m = re.fullmatch(pattern, spec)
        if m:
            k = int(m.group(1))
            if not 1 <= k <= 5:
                raise UserInputError(f"{flag}: K in {spec!r} must be 1 to 5 (stages of the U-Net)")
            return form, k
    raise UserInputError(
        f"{flag}: {spec!r} is not one of {', '.join(TRAIN_PARTS_FORMS)} (K = 1..5)"
        f"{suggest(spec, ('all', 'encoder', 'decoder', 'head'))}"
    )


def encoder_stages(model: nn.Module) -> list[list[nn.Module]]:
    """The encoder's five stages, shallowest first: the modules between one feature map
    the decoder reads and the next (stride 2, 4, 8, 16, 32)."""
    enc = model.encoder
    if hasattr(enc, "layer1"):  # ResNet
        return [[enc.conv1, enc.bn1], [enc.layer1], [enc.layer2], [enc.layer3], [enc.layer4]]
    if hasattr(enc, "features"):  # MobileNetV2: features[i] ends a stage for i in _out_indexes
        bounds = [-1, *enc._out_indexes]
        return [list(enc.features[a + 1 : b + 1]) for a, b in zip(bounds, bounds[1:], strict=False)]
    if hasattr(enc, "_blocks"):  # EfficientNet: the stem, then blocks up to each out index
        bounds = [-1, *enc._out_indexes]
        return [[enc._conv_stem, enc._bn0]] + [
            list(enc._blocks[a + 1 : b + 1]) for a, b in zip(bounds, bounds[1:], strict=False)
        ]
    raise UserInputError(f"--encoder: no stage map for {type(enc).__name__}")


def trainable_modules(model: nn.Module, spec: str) -> list[nn.Module]:
    """The modules whose weights train under ``--train_parts spec``."""
    form, k = parse_train_parts(spec)
    head = [model.segmentation_head]
    decoder = [model.decoder, *head]
    if form == "all":
        return [model]
    if form == "encoder":
        return [model.encoder]
    if form == "decoder":
        return decoder
    if form == "head":
        return head
    if form == "encoder-last-K+decoder":
        return [m for stage in encoder_stages(model)[-k:] for m in stage] + decoder
    return [*list(model.decoder.blocks)[-k:], *head]  # decoder-last-K


def set_train_parts(model: nn.Module, spec: str) -> dict[str, Any]:
    """Mark only ``spec``'s parts trainable; return the parameter counts.

    Returns:
        ``trainable_params``, ``total_params``, ``trainable_share`` (0-1) and the size
        of each part (``encoder_params``, ``decoder_params``, ``head_params``).
    """
    model.requires_grad_(False)
    for module in trainable_modules(model, spec):
        module.requires_grad_(True)
    return param_counts(model)


def param_counts(model: nn.Module) -> dict[str, Any]:
    """Trainable and total parameter counts of a U-Net, and each part's size."""

    def count(m: nn.Module, trainable: bool = False) -> int:
        return sum(p.numel() for p in m.parameters() if p.requires_grad or not trainable)

    total, trainable = count(model), count(model, trainable=True)
    return {
        "trainable_params": trainable,
        "total_params": total,
        "trainable_share": round(trainable / total, 4),
        "encoder_params": count(model.encoder),
        "decoder_params": count(model.decoder),
        "head_params": count(model.segmentation_head),
    }


def train_mode(model: nn.Module) -> None:
    """``model.train()``, but every part whose weights are all frozen stays in eval mode:
    its batch norms keep their running statistics and it draws no dropout or
    drop-connect, so a frozen part computes what it computed before training."""
    model.train()
    for m in model.modules():
        params = list(m.parameters())
        if params and not any(p.requires_grad for p in params):
            m.eval()


# ----------------------------------------------------------------------------- inputs


def check_resolution(resolution: int, flag: str = "--resolution") -> int:
    """U-Net input side: a positive multiple of 32 (five stride-2 stages)."""
    if resolution <= 0 or resolution % 32:
        raise UserInputError(f"{flag}: must be a positive multiple of 32, got {resolution}")
    return resolution


def to_batch(images: Sequence[np.ndarray], size: int) -> torch.Tensor:
    """Encoder-frame images ``[h, w, 3]`` uint8 (longest side ``size``) -> normalised
    ``[N, 3, size, size]`` float32, padded with black at the bottom and right."""
    out = torch.zeros(len(images), 3, size, size)
    mean = torch.tensor(MEAN)[:, None, None]
    std = torch.tensor(STD)[:, None, None]
    for i, image in enumerate(images):
        h, w = image.shape[:2]
        out[i, :, :h, :w] = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1) / 255.0
    return (out - mean) / std


# ----------------------------------------------------------------------------- folders


def is_unet_folder(path: str | os.PathLike) -> bool:
    """True for a folder written by ``recipes/train_unet.py`` (it has ``unet_config.json``)."""
    return (Path(path) / CONFIG_FILE).is_file()


def save_unet(folder: str | os.PathLike, model: nn.Module, resolution: int) -> Path:
    """Write ``model.safetensors`` (every tensor of the state dict) and ``unet_config.json``."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / WEIGHTS_FILE))
    text = json.dumps(smp_config(model, resolution), indent=2, sort_keys=True) + "\n"
    (folder / CONFIG_FILE).write_text(text)
    return folder


def load_unet(path: str | os.PathLike, flag: str = "--model") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a U-Net folder with stock smp and load its weights strictly.

    Returns:
        ``(model in eval mode, unet_config)``.

    Raises:
        UserInputError: not a U-Net folder, an unknown encoder, or weights that do not fit.
    """
    import segmentation_models_pytorch as smp
    from safetensors.torch import load_file

    path = Path(path)
    if not is_unet_folder(path):
        raise UserInputError(f"{flag}: {path} has no {CONFIG_FILE} (not a fusynth U-Net folder)")
    try:
        cfg = json.loads((path / CONFIG_FILE).read_text())
        model_class = getattr(smp, cfg["_model_class"])
    except (json.JSONDecodeError, KeyError, AttributeError) as exc:
        raise UserInputError(
            f"{flag}: {path / CONFIG_FILE} is not an smp model config ({exc})"
        ) from exc
    check_encoder(cfg.get("encoder_name", ""), f"{flag}: {path / CONFIG_FILE} encoder_name")
    if not (path / WEIGHTS_FILE).is_file():
        raise UserInputError(f"{flag}: {path} has no {WEIGHTS_FILE}")
    model = model_class(**cfg)
    try:
        model.load_state_dict(load_file(str(path / WEIGHTS_FILE)))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[:2]
        raise UserInputError(
            f"{flag}: {path / WEIGHTS_FILE} does not fit its {CONFIG_FILE}: {' '.join(first)}"
        ) from exc
    return model.eval(), cfg


def resolution_of(cfg: dict[str, Any]) -> int:
    """The input side a saved U-Net was trained at."""
    return int(cfg.get("_fusynth", {}).get("resolution", 256))


# ----------------------------------------------------------------------------- prediction


@torch.no_grad()
def predict_logits(model: nn.Module, image: np.ndarray, size: int, device: Any) -> torch.Tensor:
    """The U-Net's logits ``[H, W]`` of one native ``[H, W]`` uint8 image: the image is
    brought into the ``size`` frame, and the logits of its unpadded part resized back
    (bilinear) to the native shape."""
    import torch.nn.functional as F
    from segment_anything.utils.transforms import ResizeLongestSide

    h, w = image.shape
    resized = ResizeLongestSide(size).apply_image(np.repeat(image[..., None], 3, axis=2))
    nh, nw = resized.shape[:2]
    logits = model(to_batch([resized], size).to(device)).float()[:, :, :nh, :nw]
    return F.interpolate(logits, (h, w), mode="bilinear", align_corners=False)[0, 0].cpu()
