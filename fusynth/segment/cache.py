"""The SAM image-embedding cache: the expensive step (encoding an image) done once per
(encoder weights, image) and stored on disk, so fine-tuning a frozen encoder and
evaluating it reuse it.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fusynth.segment.sam_formats import preprocess_of

# ----------------------------------------------------------------------------- embedding cache


def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 of named tensors (names, dtypes, shapes and bytes), order-independent."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def image_digest(image: np.ndarray) -> str:
    """sha256 of a resized encoder-frame image (shape and bytes)."""
    h = hashlib.sha256(f"{image.shape}|".encode())
    h.update(np.ascontiguousarray(image).tobytes())
    return h.hexdigest()


@torch.no_grad()
def encode_image(sam: Any, image: np.ndarray) -> torch.Tensor:
    """The image encoder's embedding ``[256, g, g]`` of one encoder-frame image."""
    x = torch.as_tensor(image, device=sam.device).permute(2, 0, 1).float()
    return sam.image_encoder(sam.preprocess(x[None]))[0].float().cpu()


class EmbeddingCache:
    """Image embeddings of one frozen encoder, on disk (one safetensors file per image).

    The folder is ``ROOT/<encoder digest>/<image digest>.safetensors``: a different
    checkpoint, size or image never reuses another's embedding.
    """

    def __init__(self, root: str | os.PathLike | None, sam: Any, model_type: str) -> None:
        self.folder = None
        if root is not None:  # the digest reads every encoder weight: only when caching
            digest = tensor_digest(sam.image_encoder.state_dict())
            # MedSAM normalises differently: its embeddings never mix with SAM's
            medsam = "-medsam" if preprocess_of(sam) == "medsam" else ""
            self.folder = Path(root) / f"{model_type}{medsam}-{digest[:16]}"
        self.hits = self.misses = 0

    def path(self, image: np.ndarray) -> Path | None:
        """Where the embedding of ``image`` lives (None when caching is off)."""
        return self.folder / f"{image_digest(image)}.safetensors" if self.folder else None

    def embed(self, sam: Any, images: list[np.ndarray], write: bool = True) -> torch.Tensor:
        """Embeddings ``[N, 256, g, g]``, read from disk or computed (and written)."""
        from safetensors.torch import load_file, save_file

        out = []
        for image in images:
            path = self.path(image)
            if path is not None and path.is_file():
                out.append(load_file(str(path))["embedding"])
                self.hits += 1
                continue
            emb = encode_image(sam, image)
            self.misses += 1
            if path is not None and write:  # complete or absent: a temporary name, renamed
                tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
                path.parent.mkdir(parents=True, exist_ok=True)
                save_file({"embedding": emb.contiguous()}, str(tmp))
                os.replace(tmp, path)
            out.append(emb)
        return torch.stack(out) if out else torch.empty(0)


def default_cache_root() -> Path:
    """``$FUSYNTH_CACHE/sam_embeddings`` (``~/.cache/fusynth`` by default)."""
    from fusynth.data.phantom_cohort import cache_root

    return cache_root() / "sam_embeddings"
