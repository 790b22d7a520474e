"""torchvision's Inception-v3 as an embedder, from a local weights file (FID's encoder)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from fusynth.core.errors import UserInputError
from fusynth.data.transforms import square_batch
from fusynth.embed.base import Embedder

#: Inception-v3 input side.
INCEPTION_SIZE = 299


def inception_embedder(path: str | os.PathLike, flag: str = "--encoder") -> Embedder:
    """2048-d pooled features of torchvision's Inception-v3 loaded from a local file.

    Grayscale images are padded to square, resized to 299 px, repeated over three
    channels and scaled to [-1, 1], the input the Google-trained weights expect.

    Raises:
        UserInputError: the file is missing or is not Inception-v3 weights (naming it).
    """
    model = load_inception(path, flag)

    def fn(images: Sequence[np.ndarray]) -> np.ndarray:
        x = square_batch(images, INCEPTION_SIZE).float().div(127.5).sub(1.0)
        with torch.inference_mode():
            return model(x[:, None].expand(-1, 3, -1, -1)).numpy()

    return Embedder(f"inception:{path}", fn, 2048)


def load_inception(path: str | os.PathLike, flag: str = "--encoder") -> torch.nn.Module:
    """torchvision's Inception-v3 with weights from ``path``, without its classifier.

    Accepts a state dict (``.pth``/``.pt``, read without unpickling code, or
    ``.safetensors``), such as torchvision's ``inception_v3_google-0cc3c7bd.pth``; the
    auxiliary and final classifiers are not needed and are ignored.

    Raises:
        UserInputError: the file is missing, unreadable, or holds other weights.
    """
    from torchvision.models import inception_v3

    path = Path(path)
    if not path.is_file():
        raise UserInputError(
            f"{flag}: {path}: no such file (inception:PATH needs a local torchvision "
            "inception_v3 weights file; none can be downloaded here)"
        )
    state = _read_state_dict(path, flag)
    state = {
        k.removeprefix("module."): v
        for k, v in state.items()
        if not k.removeprefix("module.").startswith(("AuxLogits.", "fc."))
    }
    model = inception_v3(weights=None, aux_logits=False, init_weights=False)
    model.fc = torch.nn.Identity()
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        line = str(exc).strip().splitlines()[-1].strip()
        raise UserInputError(f"{flag}: {path}: not inception_v3 weights ({line})") from exc
    if missing or unexpected:
        what = f"missing {missing[0]!r}" if missing else f"unexpected {unexpected[0]!r}"
        raise UserInputError(f"{flag}: {path}: not inception_v3 weights ({what})")
    return model.eval()


def _read_state_dict(path: Path, flag: str) -> dict[str, torch.Tensor]:
    """A tensor dict from a ``.safetensors`` or ``torch.save`` file, or UserInputError."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any reason a file cannot be read means: not loadable
        raise UserInputError(
            f"{flag}: {path}: cannot be loaded as a weights file ({type(exc).__name__})"
        ) from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserInputError(f"{flag}: {path}: holds no state dict of tensors")
    return state
