"""open_clip models: loading, ultrasound preprocessing, embedders and zero-shot heads.

* ``fusynth-tiny-clip`` is a small ViT + text transformer registered with open_clip from
  :data:`TINY_CLIP_CONFIG`. It is random-init (seeded, so always the same weights) and
  exists for smoke runs offline: its embeddings and zero-shot predictions mean nothing.
* Any other model is named as open_clip names it (``ViT-B-32``, ``local-dir:PATH``,
  ``hf-hub:ORG/REPO``), with ``pretrained`` an open_clip tag (``laion2b_s34b_b79k``) or a
  local weights file.
* Images are padded to a centred square (black, like the background of an ultrasound
  frame) and resized, never stretched or cropped; grayscale is repeated to RGB and
  normalised with the model's own mean and std.
* Zero-shot heads average several prompts per view with open_clip's
  ``build_zero_shot_classifier``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fusynth.core.errors import UserInputError, suggest
from fusynth.data.transforms import square_batch

log = logging.getLogger(__name__)

TINY_CLIP = "fusynth-tiny-clip"
#: open_clip model sources that carry their own config and weights.
_SCHEMAS = ("local-dir:", "hf-hub:")

#: open_clip config of the smoke model: 64-px ViT (4x4 patches of 16 px), two layers per
#: tower, 64-d embeddings; the text tower keeps open_clip's BPE vocabulary (it ships with
#: the package, so the tokenizer works offline).
TINY_CLIP_CONFIG: dict[str, Any] = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}

SMOKE_NOTE = (
    "using {name}, a random-init open_clip model built from config: a smoke model for "
    "offline runs whose embeddings and predictions mean nothing; give a model and "
    "pretrained weights (e.g. ViT-B-32 with laion2b_s34b_b79k, or a local file) for real use"
)
RANDOM_NOTE = (
    "no pretrained weights for {name}: it is random-init and its embeddings mean nothing "
    "until trained"
)

#: Several prompts per view; zero-shot heads average their embeddings.
DEFAULT_PROMPTS: dict[str, tuple[str, ...]] = {
    "abdomen": (
        "an ultrasound image of the fetal abdomen",
        "a transverse ultrasound plane of the fetal abdomen with the stomach bubble",
        "a fetal abdominal circumference plane",
        "an obstetric ultrasound scan of the fetal abdomen",
    ),
    "brain": (
        "an ultrasound image of the fetal brain",
        "a transthalamic plane of the fetal brain",
        "a transventricular plane of the fetal brain",
        "a transcerebellar plane of the fetal brain",
    ),
    "femur": (
        "an ultrasound image of the fetal femur",
        "a fetal femur length plane on ultrasound",
        "an obstetric ultrasound scan of the fetal thigh bone",
    ),
    "thorax": (
        "an ultrasound image of the fetal thorax",
        "a four-chamber view of the fetal heart",
        "an obstetric ultrasound scan of the fetal chest",
    ),
    "cervix": (
        "an ultrasound image of the maternal cervix",
        "a transvaginal ultrasound image of the cervix",
        "a cervical length measurement plane",
    ),
    "other": (
        "an obstetric ultrasound image",
        "an ultrasound image of another fetal structure",
        "a fetal ultrasound image that is not a standard plane",
    ),
    "head": (
        "an ultrasound image of the fetal head",
        "a fetal head circumference plane",
        "a biparietal diameter plane of the fetal skull",
    ),
}

_registered = False


def register_tiny_clip() -> str:
    """Register :data:`TINY_CLIP` with open_clip (once per process); returns its name."""
    global _registered
    if not _registered:
        import open_clip

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"{TINY_CLIP}.json"
            path.write_text(json.dumps(TINY_CLIP_CONFIG))
            open_clip.add_model_config(path)  # read now; the file is not needed afterwards
        _registered = True
    return TINY_CLIP


# ----------------------------------------------------------------------------- preprocessing


def normalize_batch(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``[B, 1, H, W]`` values in [0, 1] to a normalised ``[B, 3, H, W]`` RGB batch."""
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x.expand(-1, 3, -1, -1) - m) / s


def preprocess_images(
    images: Sequence[np.ndarray], size: int, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """Pad to square, resize, gray to RGB and normalise: ``[N, 3, size, size]`` float32."""
    x = square_batch(images, size).float().div(255.0)[:, None]
    return normalize_batch(x, mean, std)


def visual_dim(visual: torch.nn.Module, size: int) -> int:
    """Dimension of the features of an open_clip image tower: its ``output_dim``, else
    measured on a blank ``size``-px input (first output of a tower returning a tuple)."""
    dim = getattr(visual, "output_dim", None)
    if isinstance(dim, int):
        return dim
    param = next(visual.parameters(), None)
    device = param.device if param is not None else None
    with torch.no_grad():
        out = visual(torch.zeros(1, 3, size, size, device=device))
    return int((out[0] if isinstance(out, tuple) else out).shape[-1])


# ----------------------------------------------------------------------------- loading


@dataclass
class ClipModel:
    """An open_clip model with its tokenizer and preprocessing settings."""

    model: Any
    tokenizer: Any
    name: str
    pretrained: str | None
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @property
    def smoke(self) -> bool:
        """True when no pretrained weights were loaded."""
        return self.pretrained is None

    @property
    def device(self) -> torch.device:
        """Where the model's weights are."""
        return next(self.model.parameters()).device

    def preprocess(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """Model inputs ``[N, 3, S, S]`` for grayscale images (padded, never stretched)."""
        return preprocess_images(images, self.image_size, self.mean, self.std)

    @torch.no_grad()
    def encode_images(self, images: Sequence[np.ndarray], batch_size: int = 32) -> torch.Tensor:
        """L2-normalised image features ``[N, D]`` (float32, on CPU)."""
        self.model.eval()
        out = []
        for start in range(0, len(images), batch_size):
            x = self.preprocess(images[start : start + batch_size]).to(self.device)
            out.append(self.model.encode_image(x, normalize=True).float().cpu())
        return torch.cat(out) if out else torch.empty(0, self.embed_dim)

    @property
    def embed_dim(self) -> int:
        """Dimension of the image features."""
        return visual_dim(self.model.visual, self.image_size)


class _DropOpenClipWarnings(logging.Filter):
    """open_clip logs 'initialized randomly' on the root logger; we say it our own way."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "open_clip" not in record.pathname


@contextlib.contextmanager
def _quiet_open_clip() -> Iterator[None]:
    root = logging.getLogger()
    f = _DropOpenClipWarnings()
    root.addFilter(f)
    try:
        yield
    finally:
        root.removeFilter(f)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def check_model_name(name: str, flag: str) -> str:
    """Check an open_clip model name (or ``local-dir:``/``hf-hub:`` source); a folder
    holding ``open_clip_config.json`` (a ``recipes/train_clip.py`` output) is returned
    as ``local-dir:FOLDER``.

    Raises:
        UserInputError: an unknown name (with the nearest known one), or a folder
            without ``open_clip_config.json``.
    """
    import open_clip

    register_tiny_clip()
    if name.startswith(_SCHEMAS):
        return name
    if Path(name).is_dir():  # a recipes/train_clip.py output, read as open_clip reads it
        if (Path(name) / "open_clip_config.json").is_file():
            return f"local-dir:{name}"
        if name.replace("/", "-") not in open_clip.list_models():
            raise UserInputError(
                f"{flag}: {name} is a folder without open_clip_config.json; give a "
                "recipes/train_clip.py output or an open_clip model name"
            )
    if name.replace("/", "-") not in open_clip.list_models():
        raise UserInputError(
            f"{flag}: {name!r} is not an open_clip model{suggest(name, open_clip.list_models())}"
            f" (open_clip.list_models() lists them; {TINY_CLIP} is the smoke model)"
        )
    return name


def build_clip_model(name: str, image_size: int | None = None, seed: int = 0) -> Any:
    """The architecture ``name``, random-init from ``seed`` (no download, no message)."""
    import open_clip

    register_tiny_clip()
    with _quiet_open_clip(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return open_clip.create_model(name, force_image_size=image_size)


def _resolve_pretrained(name: str, pretrained: str, flag: str) -> str:
    """``pretrained`` as an open_clip tag or an existing file, else a clear error."""
    import open_clip

    if Path(pretrained).is_file():
        return pretrained
    if Path(pretrained).is_dir():
        raise UserInputError(f"{flag}: {pretrained} is a folder; give the weights file in it")
    tags = open_clip.list_pretrained_tags_by_model(name)
    if pretrained in tags:
        return pretrained
    looks_like_path = os.sep in pretrained or Path(pretrained).suffix in (
        ".pt",
        ".pth",
        ".bin",
        ".safetensors",
        ".npz",
    )
    if looks_like_path:
        raise UserInputError(f"{flag}: {pretrained} not found")
    known = f"; its tags: {', '.join(tags)}" if tags else f"; {name} has no released tags"
    raise UserInputError(
        f"{flag}: {pretrained!r} is neither a file nor a pretrained tag of {name}"
        f"{suggest(pretrained, tags)}{known}"
    )


def load_clip(
    name: str | None,
    pretrained: str | None,
    flag: str,
    pretrained_flag: str | None = None,
    image_size: int | None = None,
) -> ClipModel:
    """Load an open_clip model for fusynth.

    Args:
        name: an open_clip model name, or None for :data:`TINY_CLIP`.
        pretrained: an open_clip tag or a local weights file; None for random init
            (with a warning that says so).
        flag: the flag that named the model, for errors.
        pretrained_flag: the flag that named the weights (default: ``flag``).
        image_size: build the vision tower for this input size (position embeddings of
            loaded weights are interpolated by open_clip).

    Returns:
        The model in eval mode, on the CPU, with its tokenizer and preprocessing.

    Raises:
        UserInputError: unknown model or tag, a missing file, or weights that cannot be
            loaded into the model (naming the file).
    """
    import open_clip

    pflag = pretrained_flag or flag
    name = check_model_name(name or TINY_CLIP, flag)
    if name.startswith(_SCHEMAS):
        if pretrained is not None:
            raise UserInputError(f"{pflag}: {name} brings its own weights; leave {pflag} out")
        model, pretrained = _create_pretrained(name, name, flag, image_size), name
    elif pretrained is None:
        note = SMOKE_NOTE if name == TINY_CLIP else RANDOM_NOTE
        log.warning(note.format(name=name))
        model = build_clip_model(name, image_size)
    else:
        source = _resolve_pretrained(name.replace("/", "-"), pretrained, pflag)
        model = _create_pretrained(name, source, pflag, image_size)
    with _quiet_open_clip():
        tokenizer = open_clip.get_tokenizer(name)
    cfg = open_clip.get_model_preprocess_cfg(model)
    size = cfg["size"]
    size = int(size[0] if isinstance(size, tuple | list) else size)
    model.eval()
    return ClipModel(
        model=model,
        tokenizer=tokenizer,
        name=name,
        pretrained=pretrained,
        image_size=size,
        mean=tuple(float(v) for v in cfg["mean"]),
        std=tuple(float(v) for v in cfg["std"]),
    )


def _create_pretrained(name: str, source: str, flag: str, image_size: int | None) -> Any:
    """``create_model`` with weights from a tag, a file, or the ``local-dir:``/``hf-hub:``
    source ``name`` itself, its errors turned into one line naming what failed."""
    import open_clip

    schema = name.startswith(_SCHEMAS)
    try:
        with _quiet_open_clip():
            return open_clip.create_model(
                name, pretrained=None if schema else source, force_image_size=image_size
            )
    except Exception as exc:  # open_clip raises many kinds: name the file or tag
        if schema:
            raise UserInputError(f"{flag}: cannot load {name}: {_first_line(exc)}") from exc
        if Path(source).is_file():
            raise UserInputError(
                f"{flag}: {source} cannot be loaded into {name}: {_first_line(exc)}"
            ) from exc
        raise UserInputError(
            f"{flag}: cannot get weights {source!r} for {name} (no network? give a local "
            f"file): {_first_line(exc)}"
        ) from exc


def clip_embedder(name: str | None, pretrained: str | None, flag: str):
    """An :class:`fusynth.embed.base.Embedder` of L2-normalised open_clip image features.

    Raises:
        UserInputError: as :func:`load_clip`.
    """
    from fusynth.embed.base import Embedder

    clip = load_clip(name, pretrained, flag)
    if torch.cuda.is_available():
        clip.model.to("cuda")

    def fn(images: Sequence[np.ndarray]) -> np.ndarray:
        return clip.encode_images(list(images)).numpy()

    label = f"clip:{clip.name}" + (f"@{pretrained}" if pretrained else "")
    return Embedder(label, fn, clip.embed_dim)


# ----------------------------------------------------------------------------- prompts


def default_prompts(views: Sequence[str]) -> dict[str, list[str]]:
    """The built-in prompts of ``views``."""
    return {v: list(DEFAULT_PROMPTS[v]) for v in views}


def load_prompts(path: str | os.PathLike, views: Sequence[str], flag: str) -> dict[str, list[str]]:
    """Read a YAML mapping ``view: [prompt, ...]`` and keep the prompts of ``views``.

    A view may have one prompt (a string) or several; views beyond ``views`` are allowed
    (one file for several data sets) but must be known views.

    Raises:
        UserInputError: the file is not a mapping, names an unknown view, has an empty or
            non-text prompt, or lacks one of ``views`` (naming the view and the file).
    """
    from fusynth.core.config import load_yaml_mapping
    from fusynth.data.schema import VIEWS

    data = load_yaml_mapping(path, flag)
    prompts: dict[str, list[str]] = {}
    for key, value in data.items():
        view = str(key)
        if view not in VIEWS:
            raise UserInputError(
                f"{flag}: {path} names unknown view {view!r}{suggest(view, VIEWS)}; "
                f"views: {', '.join(VIEWS)}"
            )
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not items:
            raise UserInputError(f"{flag}: {path}: view {view!r} needs a prompt or a list of them")
        if not all(isinstance(p, str) and p.strip() for p in items):
            raise UserInputError(f"{flag}: {path}: view {view!r} has an empty or non-text prompt")
        prompts[view] = [p.strip() for p in items]
    missing = [v for v in views if v not in prompts]
    if missing:
        raise UserInputError(
            f"{flag}: {path} has no prompts for view {missing[0]!r}"
            + (f" (nor {', '.join(missing[1:])})" if len(missing) > 1 else "")
        )
    return {v: prompts[v] for v in views}


# ----------------------------------------------------------------------------- zero-shot


def zero_shot_weights(clip: ClipModel, prompts: Mapping[str, Sequence[str]]) -> torch.Tensor:
    """The zero-shot head ``[D, C]``: per view, the normalised mean of its prompts'
    normalised text embeddings (open_clip's ``build_zero_shot_classifier``, called per
    view because views have different numbers of prompts)."""
    from open_clip import build_zero_shot_classifier

    columns = []
    for view, texts in prompts.items():
        templates = [lambda _c, t=t: t for t in texts]  # literal prompts, not format strings
        columns.append(
            build_zero_shot_classifier(
                clip.model, clip.tokenizer, [view], templates, device=clip.device
            )
        )
    return torch.cat(columns, dim=1).float()


@torch.no_grad()
def zero_shot_probabilities(
    clip: ClipModel, weights: torch.Tensor, images: Sequence[np.ndarray], batch_size: int = 32
) -> np.ndarray:
    """Class probabilities ``[N, C]``: softmax of ``logit_scale * features @ weights``."""
    features = clip.encode_images(images, batch_size)
    scale = float(clip.model.logit_scale.exp()) if hasattr(clip.model, "logit_scale") else 100.0
    logits = scale * features @ weights.cpu()
    return logits.softmax(dim=1).numpy().astype(np.float64)
