"""The phantom as a dataset: the offline default every command falls back to.

:func:`write_phantom_source` writes phantom frames in the ``metadata`` layout (images,
masks, ``metadata.csv``), exactly as a publisher would ship a dataset, so the demo
exercises the same reader path as real data. :func:`default_dataset` prepares one
into a cache folder and returns its path.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from fusynth import __version__
from fusynth.core.errors import UserInputError, suggest
from fusynth.core.io import atomic_dir
from fusynth.data.images import encode_png
from fusynth.data.phantom import (
    DEFAULT_PHANTOM_VIEWS,
    PHANTOM_VIEWS,
    default_pixel_spacing,
    draw_frame,
)

PHANTOM_CENTER = "phantom"


def check_views(views: Sequence[str] | None) -> tuple[str, ...]:
    """Validate ``--views`` for the phantom."""
    if not views:
        return DEFAULT_PHANTOM_VIEWS
    out = tuple(v.strip() for v in views if v.strip())
    for v in out:
        if v not in PHANTOM_VIEWS:
            raise UserInputError(
                f"--views: the phantom has no view {v!r}{suggest(v, PHANTOM_VIEWS)}; "
                f"choose from {', '.join(PHANTOM_VIEWS)}"
            )
    if not out:
        raise UserInputError("--views: empty list")
    return out


def frame_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of frame ``index``: independent of every other frame, so any frame
    can be redrawn alone and the cohort is the same whatever order frames are drawn in."""
    return np.random.default_rng(np.random.SeedSequence([seed, index]))


def write_phantom_source(
    out: str | os.PathLike,
    *,
    n: int = 64,
    size: int = 128,
    seed: int = 0,
    views: Sequence[str] | None = None,
    pixel_spacing_mm: float | None = None,
    frames_per_subject: int = 2,
    overwrite: bool = False,
) -> Path:
    """Draw ``n`` phantom frames into ``out`` in the ``metadata`` layout.

    Frame ``i`` has view ``views[i % len(views)]`` and belongs to subject
    ``i // frames_per_subject``. Same arguments, same bytes.

    Args:
        out: output folder (written atomically).
        n: number of frames.
        size: frame side in pixels (at least 32).
        seed: the cohort seed.
        views: phantom views to cycle through (default head, abdomen, femur, thorax).
        pixel_spacing_mm: mm per pixel (default: 160 mm across ``size``).
        frames_per_subject: frames per phantom subject.
        overwrite: replace an existing ``out``.

    Returns:
        ``out`` as a Path.

    Raises:
        UserInputError: bad ``n``, ``size``, ``views`` or spacing.
    """
    views = check_views(views)
    if n <= 0:
        raise UserInputError(f"--n: must be positive, got {n}")
    if size < 32:
        raise UserInputError(f"--size: the phantom needs at least 32 px, got {size}")
    if frames_per_subject <= 0:
        raise UserInputError(f"--frames_per_subject: must be positive, got {frames_per_subject}")
    spacing = pixel_spacing_mm or default_pixel_spacing(size)
    if spacing <= 0:
        raise UserInputError(f"--pixel_spacing: must be positive, got {pixel_spacing_mm}")
    out = Path(out)
    with atomic_dir(out, overwrite=overwrite, kind="phantom-source") as tmp:
        (tmp / "images").mkdir()
        (tmp / "masks").mkdir()
        rows = []
        for i in tqdm(range(n), desc="phantom", unit="frame", disable=None, leave=False):
            view = views[i % len(views)]
            frame = draw_frame(view, size, frame_rng(seed, i), pixel_spacing_mm=spacing)
            name = f"{i:05d}_{view}.png"
            (tmp / "images" / name).write_bytes(encode_png(frame.image))
            mask_name = ""
            if frame.mask is not None:
                mask_name = f"masks/{name}"
                (tmp / mask_name).write_bytes(encode_png(frame.mask))
            hc = frame.head_circumference_mm
            rows.append(
                {
                    "file_name": f"images/{name}",
                    "mask_file_name": mask_name,
                    "view": view,
                    "subject_id": f"phantom:s{seed}-{i // frames_per_subject:05d}",
                    "cohort": "phantom",
                    "center": PHANTOM_CENTER,
                    "pixel_spacing_mm": f"{frame.pixel_spacing_mm:.6g}",
                    "head_circumference_mm": f"{hc:.3f}" if hc is not None else "",
                    "split": "",
                }
            )
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        (tmp / "metadata.csv").write_text(buf.getvalue())
        settings = {
            "generator": "fusynth.data.phantom",
            "fusynth_version": __version__,
            "n": n,
            "size": size,
            "seed": seed,
            "views": list(views),
            "pixel_spacing_mm": spacing,
            "frames_per_subject": frames_per_subject,
        }
        (tmp / "phantom.json").write_text(json.dumps(settings, indent=2) + "\n")
    return out


def cache_root() -> Path:
    """Where derived defaults are cached: ``$FUSYNTH_CACHE`` or ``~/.cache/fusynth``."""
    return Path(os.environ.get("FUSYNTH_CACHE") or Path.home() / ".cache" / "fusynth")


def default_dataset(
    *, n: int = 64, size: int = 128, seed: int = 0, views: Sequence[str] | None = None
) -> Path:
    """The prepared phantom dataset used when a command is given no data.

    Built once per settings (and fusynth version) under :func:`cache_root`, atomically,
    so concurrent or interrupted runs never see a partial folder.

    Returns:
        The prepared dataset folder (load with :func:`fusynth.data.load_prepared`).
    """
    from fusynth.data.prepare import prepare

    views = check_views(views)
    key = json.dumps([__version__, n, size, seed, list(views)])
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    root = cache_root() / f"phantom-{digest}"
    prepared = root / "prepared"
    if (prepared / "dataset_dict.json").is_file():
        return prepared
    root.mkdir(parents=True, exist_ok=True)
    source = root / "source"
    if not (source / "metadata.csv").is_file():
        write_phantom_source(source, n=n, size=size, seed=seed, views=views, overwrite=True)
    prepare("metadata", source, prepared, seed=seed, overwrite=True)
    return prepared
