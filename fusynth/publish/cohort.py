"""A cohort folder for the Hub: Parquet shards that ``datasets.load_dataset`` reads, the
provenance files, the audit's decision and the dataset card.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

from fusynth.core.artifacts import (
    COHORT_AUDIT_FILE,
    REQUEST_FILE,
    STATS_FILE,
    cohort_audit_path,
    pairs_audit_path,
)
from fusynth.core.errors import UserInputError
from fusynth.core.io import atomic_dir
from fusynth.publish.kinds import AUDIT_FILE, PAIRS_FILE, PROVENANCE_FILES, TAGS
from fusynth.publish.redact import redact_files, redact_paths

# ----------------------------------------------------------------------------- cohorts


#: Rows per Parquet shard of a published cohort.
SHARD_ROWS = 1000


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserInputError(f"{path}: cannot be read as JSON ({type(exc).__name__})") from exc


def _png_bytes(value: dict[str, Any] | None, mask: bool) -> dict[str, Any] | None:
    """A stored image as PNG bytes: PNG images are kept as they are; anything else (a
    JPEG, a colour mask) is decoded to grey and re-encoded, masks as label maps."""
    from PIL import Image

    from fusynth.data.images import decode_image, encode_png, label_map

    if value is None or (value.get("bytes") is None and value.get("path") is None):
        return None
    raw = value["bytes"] if value.get("bytes") is not None else Path(value["path"]).read_bytes()
    with Image.open(io.BytesIO(raw)) as im:
        if im.format == "PNG" and (not mask or im.mode in ("1", "L", "I", "I;16")):
            return {"bytes": raw, "path": None}
    grey = decode_image({"bytes": raw})
    return {"bytes": encode_png(label_map(grey) if mask else grey), "path": None}


def _to_png(batch: dict[str, list]) -> dict[str, list]:
    batch["image"] = [_png_bytes(v, False) for v in batch["image"]]
    batch["mask"] = [_png_bytes(v, True) for v in batch["mask"]]
    if "provenance" in batch:
        batch["provenance"] = [None if v is None else redact_paths(v) for v in batch["provenance"]]
    return batch


def _size_category(n: int) -> str:
    bounds = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K")]
    bounds += [(1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M")]
    return next((name for bound, name in bounds if n < bound), "10M<n<100M")


def _audit_decision(
    src: Path, n_rows: int, force: bool, max_flag_share: float, audit_dir: Path | None = None
) -> tuple[dict[str, Any] | None, str]:
    """The audit report (or None) and the card's warning ("" when the audit passed).

    Raises:
        UserInputError: no audit, a stale audit or too many flagged samples, unforced.
    """
    path = cohort_audit_path(src, audit_dir)
    if not path.is_file():
        if audit_dir is not None:
            raise UserInputError(f"--audit: {audit_dir}: no {COHORT_AUDIT_FILE} in it")
        if not force:
            raise UserInputError(
                f"DIR: {src}: no {AUDIT_FILE}; run `fusynth audit cohort {src} --reference "
                "DIR:split` first (or pass --audit DIR for an audit written elsewhere), "
                "or pass --force to publish it unaudited"
            )
        return None, "published without an audit (forced with --force)"
    audit = read_json(path)
    audited = audit.get("counts", {}).get("cohort", {}).get("total")
    overall = audit.get("memorization", {}).get("overall", {})
    problem = ""
    if audited != n_rows:
        problem = f"the audit covers {audited} samples but the cohort holds {n_rows}"
    elif not isinstance(overall.get("n"), int) or not isinstance(overall.get("flagged"), int):
        problem = "it has no memorization result (memorization.overall n and flagged)"
    elif (share := overall["flagged"] / max(overall["n"], 1)) > max_flag_share:
        problem = (
            f"{overall['flagged']} of {overall['n']} samples (share {share:.3g}) are "
            f"flagged as possible copies of training images, above the threshold {max_flag_share}"
        )
    if problem and not force:
        raise UserInputError(f"{path}: {problem}; pass --force to publish it anyway")
    return audit, (
        f"published against the audit: {problem} (forced with --force)" if problem else ""
    )


def _audit_fields(audit: dict[str, Any]) -> dict[str, Any]:
    distance = audit.get("distance", {})
    rows = [{"name": "all views", **distance.get("overall", {})}]
    rows += [{"name": v, **m} for v, m in sorted(distance.get("by_view", {}).items())]
    for row in rows:
        for key in ("n_synthetic", "n_reference", "fid", "kid_mean", "kid_std"):
            row.setdefault(key, "n/a")
        row.setdefault("fid_reliable", True)
    mem = audit.get("memorization", {})
    overall = mem.get("overall", {})
    thresholds = mem.get("thresholds", {})
    return {
        "reference": audit.get("reference"),
        "training": audit.get("training"),
        "encoder": audit.get("encoder", {}).get("spec"),
        "distance": rows,
        "n": overall.get("n"),
        "flagged": overall.get("flagged"),
        "share_flagged": overall.get("share_flagged"),
        "cosine_threshold": thresholds.get("cosine"),
        "ssim_threshold": thresholds.get("ssim"),
        "notes": [*distance.get("overall", {}).get("notes", []), *audit.get("notes", [])],
    }


def _settings(request: dict[str, Any]) -> dict[str, str]:
    skip = {"base", "base_sha256", "adapter", "adapter_sha256"}
    out: dict[str, str] = {}
    for key, value in sorted(request.items()):
        if key in skip:
            continue
        if isinstance(value, dict) and all(not isinstance(v, (dict, list)) for v in value.values()):
            out[key] = "; ".join(f"{k}: {v}" for k, v in value.items())
        elif isinstance(value, (dict, list)):
            out[key] = "see provenance/request.json"
        else:
            out[key] = str(value)
    return out


def _dataset_card(
    repo_id: str,
    request: dict[str, Any],
    features: Any,
    split_rows: dict[str, int],
    split_bytes: dict[str, int],
    view_counts: dict[str, int],
    has_masks: bool,
    audit: dict[str, Any] | None,
    warning: str,
    pairs: dict[str, Any] | None,
    max_flag_share: float,
) -> str:
    from fusynth.core.cards import render_card

    n = sum(split_rows.values())
    names = features["view"].names
    card_data = {
        "license": "other",
        "pretty_name": f"fusynth synthetic cohort: {', '.join(view_counts)}",
        "task_categories": ["image-classification"] + (["image-segmentation"] if has_masks else []),
        "annotations_creators": ["machine-generated"],
        "source_datasets": ["original"],
        "size_categories": [_size_category(n)],
        "tags": [*TAGS, "synthetic"],
        "configs": [
            {
                "config_name": "default",
                "data_files": [{"split": s, "path": f"data/{s}-*.parquet"} for s in split_rows],
            }
        ],
        "dataset_info": {
            "features": features._to_yaml_list(),
            "splits": [
                {"name": s, "num_bytes": split_bytes[s], "num_examples": k}
                for s, k in split_rows.items()
            ],
            "dataset_size": sum(split_bytes.values()),
        },
    }
    method = request.get("method") or ("pairs" if "conditioning" in request else "text2img")
    fields = {
        "title": card_data["pretty_name"],
        "repo_id": repo_id,
        "num_rows": n,
        "view_counts": view_counts,
        "id2label": dict(enumerate(names)),
        "audit_warning": warning,
        "smoke_base": bool(request.get("smoke_base")),
        "method": method,
        "base": request.get("base", "unknown"),
        "base_sha256": request.get("base_sha256"),
        "adapter": request.get("adapter", "none"),
        "adapter_sha256": request.get("adapter_sha256"),
        "settings": _settings(request),
        "audit": _audit_fields(audit) if audit else None,
        "max_flag_share": max_flag_share,
        "pairs": pairs,
    }
    return render_card("dataset", card_data, fields, kind="dataset")


def build_cohort_folder(
    src: Path,
    out: str | os.PathLike,
    repo_id: str,
    force: bool = False,
    max_flag_share: float = 0.0,
    overwrite: bool = False,
    audit_dir: str | os.PathLike | None = None,
) -> list[str]:
    """Build the upload folder of a cohort, atomically.

    Args:
        src: a cohort folder (``fusynth generate text2img`` / ``pairs`` output),
            checked by :func:`check_request`.
        out: the folder to build (must not exist unless ``overwrite``).
        repo_id: the Hub repository, ``USER/NAME``.
        force: publish without an audit, or against it; the card then says so.
        max_flag_share: the largest share of memorization-flagged samples accepted.
        overwrite: replace an existing ``out``.
        audit_dir: the folder of an audit written elsewhere (``fusynth audit cohort
            --out``); by default ``src/audit``.

    Returns:
        The files written, relative to ``out``, sorted.

    Raises:
        UserInputError: ``src`` does not hold a dataset of the fusynth schema, or the
            audit is missing, stale or over the threshold and ``force`` is False.
    """
    from collections import Counter

    import datasets

    from fusynth.data.schema import FEATURES, load_prepared

    dsd = load_prepared(src)
    split_rows = {name: len(ds) for name, ds in dsd.items()}
    audit_dir = Path(audit_dir) if audit_dir is not None else None
    audit, warning = _audit_decision(
        src, sum(split_rows.values()), force, max_flag_share, audit_dir
    )
    sources = {
        REQUEST_FILE: src / REQUEST_FILE,
        STATS_FILE: src / STATS_FILE,
        AUDIT_FILE: cohort_audit_path(src, audit_dir),
        PAIRS_FILE: pairs_audit_path(src, audit_dir),
    }
    if not sources[PAIRS_FILE].is_file():  # a pairs audit left in the cohort's own folder
        sources[PAIRS_FILE] = pairs_audit_path(src)
    features = FEATURES
    raw = datasets.Features(
        {
            **features,
            "image": datasets.Image(decode=False),
            "mask": datasets.Image(decode=False),
        }
    )
    view_counts: Counter[str] = Counter()
    split_bytes = dict.fromkeys(split_rows, 0)
    has_masks = False
    written: list[str] = []
    with atomic_dir(out, overwrite, kind="hub-folder") as tmp:
        (tmp / "data").mkdir()
        for split, ds in dsd.items():
            # cast_column on Image features changes metadata only: nothing is written to src
            ds = ds.cast_column("image", raw["image"]).cast_column("mask", raw["mask"])
            for v, k in Counter(ds["view"]).items():
                view_counts[features["view"].int2str(v)] += k
            shards = max(1, math.ceil(len(ds) / SHARD_ROWS))
            for k in range(shards):
                part = ds.shard(num_shards=shards, index=k, contiguous=True)
                part = part.map(
                    _to_png, batched=True, batch_size=64, keep_in_memory=True, features=raw
                )
                has_masks = has_masks or part.data.column("mask").null_count < len(part)
                part = part.cast_column("image", features["image"])
                part = part.cast_column("mask", features["mask"])
                split_bytes[split] += part.data.nbytes
                rel = f"data/{split}-{k:05d}-of-{shards:05d}.parquet"
                part.to_parquet(str(tmp / rel))
                written.append(rel)
        for rel in PROVENANCE_FILES:
            if sources[rel].is_file():
                dest = f"provenance/{Path(rel).name}"
                (tmp / "provenance").mkdir(exist_ok=True)
                shutil.copy2(sources[rel], tmp / dest)
                written.append(dest)
        pairs = read_json(sources[PAIRS_FILE]) if sources[PAIRS_FILE].is_file() else None
        card = _dataset_card(
            repo_id,
            read_json(src / REQUEST_FILE),
            features,
            split_rows,
            split_bytes,
            dict(sorted(view_counts.items())),
            has_masks,
            audit,
            warning,
            pairs,
            max_flag_share,
        )
        (tmp / "README.md").write_text(card, encoding="utf-8")
        written.append("README.md")
        redact_files(tmp)
    return sorted(written)
