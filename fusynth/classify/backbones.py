"""View classifiers: torchvision backbones and open_clip image towers with a linear head.

A backbone is named by a spec: ``resnet18``, ``vit_b_16``, ``efficientnet_b0``
(torchvision, with the head sized to the number of views) or ``clip:NAME`` (the image
tower of open_clip model ``NAME`` followed by a linear layer; ``clip:fusynth-tiny-clip``
is the offline smoke model). Weights are random unless a file is given: a state dict for
torchvision (the head is replaced when its class count differs) or an open_clip
checkpoint or tag for ``clip:``.

Every classifier takes ``[B, 3, R, R]`` images (padded to square, normalised with the
backbone's mean and std, see :class:`ClassifierSpec`) and returns logits ``[B, C]``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fusynth.core.errors import UserInputError, suggest

log = logging.getLogger(__name__)

TORCHVISION_BACKBONES = ("resnet18", "vit_b_16", "efficientnet_b0")
#: The module holding each torchvision backbone's class head.
HEADS = {"resnet18": "fc", "vit_b_16": "heads.head", "efficientnet_b0": "classifier.1"}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MIN_RESOLUTION = 32
CONFIG_FILE = "classifier_config.json"
WEIGHTS_FILE = "model.safetensors"


# ----------------------------------------------------------------------------- specs


def parse_backbone(spec: str, flag: str = "--backbone") -> tuple[str, str]:
    """Split a backbone spec into ``("torchvision", name)`` or ``("clip", model name)``.

    Raises:
        UserInputError: an unknown torchvision name or open_clip model.
    """
    kind, sep, name = str(spec).partition(":")
    if sep and kind == "clip":
        if not name:
            raise UserInputError(f"{flag}: clip: needs an open_clip model, e.g. clip:ViT-B-32")
        from fusynth.embed.clip import check_model_name

        return "clip", check_model_name(name, flag)
    if spec in TORCHVISION_BACKBONES:
        return "torchvision", spec
    choices = (*TORCHVISION_BACKBONES, "clip:NAME")
    raise UserInputError(
        f"{flag}: {spec!r} is not one of {', '.join(choices)}{suggest(spec, choices)}"
    )


def _clip_vision_cfg(name: str) -> dict[str, Any]:
    """open_clip's config of model ``name``'s image tower ({} when it has none)."""
    from fusynth.embed.clip import register_tiny_clip

    register_tiny_clip()
    import open_clip

    try:
        cfg = open_clip.get_model_config(name) or {}
    except Exception:  # an hf-hub: config that cannot be fetched: open_clip will say why
        cfg = {}
    return cfg.get("vision_cfg", {})


def default_resolution(spec: str) -> int:
    """224 for torchvision backbones; the model's own input size for ``clip:``."""
    kind, name = parse_backbone(spec)
    if kind == "torchvision":
        return 224
    size = _clip_vision_cfg(name).get("image_size", 224)
    return int(size[0] if isinstance(size, list | tuple) else size)


def check_resolution(spec: str, resolution: int, flag: str = "--resolution") -> None:
    """Refuse a resolution the backbone cannot take.

    Raises:
        UserInputError: below :data:`MIN_RESOLUTION`, or not a multiple of a ViT's patch.
    """
    if resolution < MIN_RESOLUTION:
        raise UserInputError(f"{flag}: must be at least {MIN_RESOLUTION}, got {resolution}")
    kind, name = parse_backbone(spec)
    patch = 1
    if name == "vit_b_16":
        patch = 16
    elif kind == "clip":
        patch = int(_clip_vision_cfg(name).get("patch_size", 1))
    if resolution % patch:
        raise UserInputError(
            f"{flag}: {spec} has {patch}-px patches; {resolution} is not a multiple of {patch}"
        )


@dataclass
class ClassifierSpec:
    """What ``classifier_config.json`` records: enough to rebuild and feed the model."""

    backbone: str
    classes: list[str]
    resolution: int
    mean: list[float]
    std: list[float]
    padding: str = "pad-to-square"

    def to_json(self) -> str:
        """The JSON text of ``classifier_config.json``."""
        return json.dumps({"format": "fusynth-classifier", "version": 1, **asdict(self)}, indent=2)

    @classmethod
    def from_file(cls, path: Path, flag: str) -> ClassifierSpec:
        """Read ``classifier_config.json``.

        Raises:
            UserInputError: missing, not JSON, or without the needed fields.
        """
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise UserInputError(f"{flag}: {path} cannot be read as JSON ({exc})") from exc
        fields = ("backbone", "classes", "resolution", "mean", "std")
        missing = [f for f in fields if f not in data]
        if missing:
            raise UserInputError(f"{flag}: {path} lacks {', '.join(missing)}")
        return cls(**{f: data[f] for f in fields})


# ----------------------------------------------------------------------------- models


class ClipClassifier(nn.Module):
    """An open_clip image tower followed by a linear layer on its features."""

    def __init__(self, visual: nn.Module, dim: int, num_classes: int) -> None:
        super().__init__()
        self.visual = visual
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.visual(x)
        if isinstance(features, tuple):  # towers that also return tokens
            features = features[0]
        return self.head(features)


def _torchvision_model(name: str, num_classes: int, resolution: int) -> nn.Module:
    import torchvision

    if name == "vit_b_16":
        return torchvision.models.vit_b_16(
            weights=None, image_size=resolution, num_classes=num_classes
        )
    return getattr(torchvision.models, name)(weights=None, num_classes=num_classes)


@dataclass
class BuiltClassifier:
    """A classifier, its spec, and where its initial weights came from."""

    model: nn.Module
    spec: ClassifierSpec
    weights: str | None


def build_classifier(
    backbone: str,
    classes: Sequence[str],
    resolution: int,
    weights: str | None = None,
    seed: int = 0,
) -> BuiltClassifier:
    """A classifier for ``classes`` at ``resolution``, random-init unless ``weights``.

    Args:
        backbone: a backbone spec (see the module docstring), as ``--backbone``.
        classes: the class (view) names, in output order.
        resolution: input side in pixels (see :func:`check_resolution`).
        weights: a state dict file (torchvision), or an open_clip file or tag (``clip:``),
            as ``--weights``.
        seed: seed of the random initialisation (head included).

    Raises:
        UserInputError: an unknown backbone, or weights that cannot be loaded (naming
            the file and the keys).
    """
    flag, weights_flag = "--backbone", "--weights"
    kind, name = parse_backbone(backbone, flag)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if kind == "torchvision":
            model = _torchvision_model(name, len(classes), resolution)
            mean, std = IMAGENET_MEAN, IMAGENET_STD
        else:
            model, (mean, std) = _clip_classifier(
                name, len(classes), resolution, weights, seed, flag, weights_flag
            )
    if weights is not None and kind == "torchvision":
        state = read_state_dict(weights, weights_flag)
        apply_state_dict(model, name, state, resolution, weights_flag, weights)
    if weights is None:
        log.warning(
            "%s is random-init (no %s): expect little from it without much training",
            backbone,
            weights_flag,
        )
    spec = ClassifierSpec(backbone, list(classes), resolution, list(mean), list(std))
    return BuiltClassifier(model, spec, weights)


def _clip_classifier(
    name: str,
    num_classes: int,
    resolution: int,
    weights: str | None,
    seed: int,
    flag: str,
    weights_flag: str,
) -> tuple[ClipClassifier, tuple]:
    """An open_clip image tower (random, or from ``weights``) with a linear head, and the
    mean and std its inputs are normalised with."""
    from fusynth.embed.clip import build_clip_model, load_clip, visual_dim

    if weights is None:
        visual = build_clip_model(name, resolution, seed=seed).visual
        mean_std = _clip_mean_std(visual)
    else:
        clip = load_clip(name, weights, flag, weights_flag, image_size=resolution)
        visual, mean_std = clip.model.visual, (clip.mean, clip.std)
    return ClipClassifier(visual, visual_dim(visual, resolution), num_classes), mean_std


def _clip_mean_std(visual: nn.Module) -> tuple:
    from open_clip import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    cfg = getattr(visual, "preprocess_cfg", {}) or {}
    return tuple(cfg.get("mean", OPENAI_DATASET_MEAN)), tuple(cfg.get("std", OPENAI_DATASET_STD))


def rebuild_classifier(spec: ClassifierSpec, flag: str = "--model") -> nn.Module:
    """The architecture of a saved classifier (weights to be loaded into it)."""
    kind, name = parse_backbone(spec.backbone, flag)
    if kind == "torchvision":
        return _torchvision_model(name, len(spec.classes), spec.resolution)
    from fusynth.embed.clip import build_clip_model, visual_dim

    visual = build_clip_model(name, spec.resolution).visual
    return ClipClassifier(visual, visual_dim(visual, spec.resolution), len(spec.classes))


# ----------------------------------------------------------------------------- weights


def read_state_dict(path: str | os.PathLike, flag: str) -> dict[str, torch.Tensor]:
    """Read a state dict (``.safetensors``, or a torch file loaded with ``weights_only``).

    A ``{"state_dict": ...}`` or ``{"model": ...}`` wrapper and DDP's ``module.`` prefix
    are removed.

    Raises:
        UserInputError: the file is missing or is not a state dict of tensors.
    """
    p = Path(path)
    if not p.is_file():
        raise UserInputError(f"{flag}: {p} not found" + (" (a folder)" if p.is_dir() else ""))
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(p))
        else:
            state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and safetensors errors alike: name the file
        raise UserInputError(f"{flag}: {p} cannot be loaded as a state dict ({exc})") from exc
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserInputError(f"{flag}: {p} is not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def apply_state_dict(
    model: nn.Module,
    name: str,
    state: dict[str, torch.Tensor],
    resolution: int,
    flag: str,
    path: str | os.PathLike,
) -> None:
    """Load ``state`` into a torchvision backbone.

    The head is kept random (and a note logged) when the file's head has another class
    count; a ViT's position embeddings are interpolated to ``resolution``.

    Raises:
        UserInputError: keys missing from or unexpected in the file, or a shape that
            differs outside the head (naming the first ones).
    """
    own = model.state_dict()
    head = HEADS[name] + "."
    head_keys = [k for k in state if k.startswith(head)]
    if any(k in own and state[k].shape != own[k].shape for k in head_keys):
        log.info(
            "%s: its head has %d classes, this model %d: the head starts random",
            path,
            state[head + "weight"].shape[0],
            own[head + "weight"].shape[0],
        )
        state = {k: v for k, v in state.items() if not k.startswith(head)}
        state.update({k: own[k] for k in own if k.startswith(head)})
    if name == "vit_b_16" and "encoder.pos_embedding" in state:
        from torchvision.models.vision_transformer import interpolate_embeddings

        if state["encoder.pos_embedding"].shape != own["encoder.pos_embedding"].shape:
            state = dict(interpolate_embeddings(resolution, 16, state))
    missing = [k for k in own if k not in state]
    if missing:
        raise UserInputError(
            f"{flag}: {path} lacks {len(missing)} key(s) of {name} (e.g. {', '.join(missing[:3])})"
        )
    unexpected = [k for k in state if k not in own]
    if unexpected:
        raise UserInputError(
            f"{flag}: {path} has {len(unexpected)} key(s) that {name} does not "
            f"(e.g. {', '.join(unexpected[:3])}); is it a {name} state dict?"
        )
    wrong = [k for k in own if state[k].shape != own[k].shape]
    if wrong:
        k = wrong[0]
        raise UserInputError(
            f"{flag}: {path}: {k} is {tuple(state[k].shape)}, {name} needs {tuple(own[k].shape)}"
        )
    model.load_state_dict(state)


# ----------------------------------------------------------------------------- prediction


@torch.no_grad()
def predict_proba(
    model: nn.Module,
    spec: ClassifierSpec,
    images: Sequence[np.ndarray],
    batch_size: int = 32,
    device: str | torch.device | None = None,
) -> np.ndarray:
    """Class probabilities ``[N, C]`` (float64) of grayscale images, in eval mode."""
    from fusynth.embed.clip import preprocess_images

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    was = model.training
    model.eval().to(device)
    out = []
    for start in range(0, len(images), batch_size):
        x = preprocess_images(
            images[start : start + batch_size], spec.resolution, spec.mean, spec.std
        )
        out.append(model(x.to(device)).float().softmax(dim=1).cpu())
    model.train(was)
    if not out:
        return np.zeros((0, len(spec.classes)))
    return torch.cat(out).numpy().astype(np.float64)
