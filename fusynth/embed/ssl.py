"""A SimCLR encoder folder (written by ``recipes/train_ssl.py``) as an image embedder.

The encoder is torchvision's ResNet-18 from random init (no weights are ever downloaded) with
a one-channel first convolution. This module owns the folder's format (file names, the
encoder architecture, preprocessing); :mod:`fusynth.ssl` trains what it reads.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fusynth.core.errors import UserInputError
from fusynth.data.transforms import square_resize
from fusynth.embed.base import Embedder

ENCODER_FILE = "encoder.safetensors"
SSL_CONFIG_FILE = "ssl_config.json"
ARCHITECTURE = "resnet18"
FEATURE_DIM = 512
#: Pixel values in [0, 1] are mapped to ``(x - mean) / std`` before the encoder.
NORMALIZATION = {"mean": [0.5], "std": [0.5]}
PREPROCESSING = "grayscale, padded to square with black, bicubic resize to resolution, / 255"


# ----------------------------------------------------------------------------- model


def build_encoder() -> nn.Module:
    """ResNet-18 (torchvision, random init) taking one channel, returning 512-d features."""
    from torchvision.models import resnet18

    net = resnet18(weights=None)
    net.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
    net.fc = nn.Identity()
    return net


def normalize_pixels(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] pixels to the encoder's input range (:data:`NORMALIZATION`)."""
    return (x - NORMALIZATION["mean"][0]) / NORMALIZATION["std"][0]


def source_tensor(images: Sequence[np.ndarray], side: int) -> torch.Tensor:
    """Images padded to square and resized to ``side``: ``[n, 1, side, side]`` uint8."""
    return torch.from_numpy(np.stack([square_resize(im, side) for im in images]))[:, None]


# ----------------------------------------------------------------------------- loading


def load_ssl_encoder(path: str | os.PathLike, flag: str) -> tuple[nn.Module, dict[str, Any]]:
    """The encoder of a ``train_ssl`` output folder (eval mode, CPU) and its ssl_config.

    Raises:
        UserInputError: not a folder, a file missing, or weights that do not fit (naming
            ``flag`` and the file).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(path)
    if not folder.is_dir():
        raise UserInputError(f"{flag}: {folder} is not a folder")
    for name in (SSL_CONFIG_FILE, ENCODER_FILE):
        if not (folder / name).is_file():
            raise UserInputError(
                f"{flag}: {folder} is not an SSL encoder folder ({name} missing); "
                "train one with recipes/train_ssl.py"
            )
    try:
        cfg = json.loads((folder / SSL_CONFIG_FILE).read_text())
    except json.JSONDecodeError as exc:
        raise UserInputError(f"{flag}: {folder / SSL_CONFIG_FILE} is not valid JSON") from exc
    if not isinstance(cfg, dict) or cfg.get("architecture") != ARCHITECTURE:
        got = cfg.get("architecture") if isinstance(cfg, dict) else None
        raise UserInputError(
            f"{flag}: {folder / SSL_CONFIG_FILE}: architecture {got!r}, expected {ARCHITECTURE!r}"
        )
    if not isinstance(cfg.get("resolution"), int) or cfg["resolution"] < 32:
        raise UserInputError(f"{flag}: {folder / SSL_CONFIG_FILE}: no valid 'resolution'")
    try:
        state = load_file(str(folder / ENCODER_FILE))
    except (SafetensorError, OSError) as exc:
        raise UserInputError(f"{flag}: {folder / ENCODER_FILE} cannot be read ({exc})") from exc
    encoder = build_encoder()
    try:
        encoder.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else str(exc)
        raise UserInputError(
            f"{flag}: {folder / ENCODER_FILE} is not a ResNet-18 encoder ({first})"
        ) from exc
    return encoder.eval(), cfg


def ssl_embedder(path: str | os.PathLike, flag: str, batch_size: int = 64) -> Embedder:
    """The ``ssl:DIR`` embedder: L2-normalised 512-d encoder features.

    Images are preprocessed as in training (padded to square, resized to the encoder's
    resolution) without augmentation.

    Raises:
        UserInputError: ``path`` is not a ``train_ssl`` output (naming the missing file).
    """
    encoder, cfg = load_ssl_encoder(path, flag)
    resolution = cfg["resolution"]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    encoder.to(device)

    @torch.no_grad()
    def fn(images: Sequence[np.ndarray]) -> np.ndarray:
        out = []
        for start in range(0, len(images), batch_size):
            x = source_tensor(images[start : start + batch_size], resolution)
            x = normalize_pixels(x.to(device).float() / 255.0)
            out.append(F.normalize(encoder(x).float(), dim=1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, FEATURE_DIM), np.float32)

    return Embedder(f"ssl:{path}", fn, FEATURE_DIM)
