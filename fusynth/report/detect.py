"""Which kind of fusynth output a folder is, from its own files, and pipeline order.

Every command writes a folder with files no other command writes (a cohort its
``request.json`` beside ``dataset_dict.json``, an evaluation its ``summary.json`` beside
``per_image.csv``, ...). :func:`detect` names the kind; :func:`find_runs` walks a parent
folder such as ``demo_out/`` and returns the runs inside it in the order the pipeline
makes them, so a report reads from the data to the published folders.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from fusynth.core.errors import UserInputError


@dataclass(frozen=True)
class Kind:
    """One kind of run folder.

    Attributes:
        name: short key (``lora``, ``cohort``, ...).
        title: what a reader calls it.
        command: the command that writes it.
        rank: position in the pipeline (smaller first).
    """

    name: str
    title: str
    command: str
    rank: int


KINDS: dict[str, Kind] = {
    k.name: k
    for k in [
        Kind("phantom_source", "Phantom source frames", "fusynth data phantom", 0),
        Kind("dataset", "Prepared dataset", "fusynth data prepare", 1),
        Kind("ssl", "SimCLR encoder", "accelerate launch recipes/train_ssl.py", 2),
        Kind("lora", "LoRA adapter", "accelerate launch recipes/train_lora.py", 3),
        Kind("controlnet", "ControlNet", "accelerate launch recipes/train_controlnet.py", 4),
        Kind("cohort", "Synthetic cohort", "fusynth generate text2img", 5),
        Kind("pairs", "Synthetic image/mask pairs", "fusynth generate pairs", 6),
        Kind("cohort_audit", "Cohort audit", "fusynth audit cohort", 7),
        Kind("pairs_audit", "Pair audit", "fusynth audit pairs", 8),
        Kind("clustering", "Clustering", "fusynth evaluate clustering", 9),
        Kind("classifier", "View classifier", "accelerate launch recipes/train_classifier.py", 10),
        Kind("classification", "Classifier evaluation", "fusynth evaluate classification", 11),
        Kind("zeroshot", "Zero-shot classification", "fusynth evaluate zeroshot", 12),
        Kind("sam", "SAM fine-tuning", "accelerate launch recipes/finetune_sam.py", 13),
        Kind("segmentation", "Segmentation evaluation", "fusynth evaluate segmentation", 14),
        Kind(
            "seg_augment",
            "Segmentation augmentation experiment",
            "fusynth experiment seg-augment",
            15,
        ),
        Kind(
            "cls_augment",
            "Classification augmentation experiment",
            "fusynth experiment cls-augment",
            16,
        ),
        Kind("published", "Published folder (Hub dry run)", "fusynth publish", 17),
    ]
}


def _json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _has(folder: Path, *names: str) -> bool:
    return all((folder / n).exists() for n in names)


def _card_has_metadata(folder: Path) -> bool:
    """A Hub card: ``README.md`` that opens with a YAML metadata block."""
    try:
        with (folder / "README.md").open(encoding="utf-8") as fh:
            return fh.readline().strip() == "---"
    except OSError:
        return False


def _published(folder: Path) -> bool:
    # A published model folder holds the weights and configs of its training output but
    # never its loss log or checkpoints; a published cohort holds Parquet shards.
    if not _card_has_metadata(folder) or (folder / "train_log.json").exists():
        return False
    return (folder / "data").is_dir() or any(
        _has(folder, f)
        for f in (
            "pytorch_lora_weights.safetensors",
            "controlnet/config.json",
            "model.safetensors",
            "encoder.safetensors",
        )
    )


def _cohort_kind(folder: Path) -> str:
    request = _json(folder / "request.json")
    if request.get("kind") == "pairs" or request.get("method") in ("packed", "controlnet"):
        return "pairs"
    return "cohort"


def _experiment_kind(folder: Path) -> str | None:
    request = _json(folder / "experiment.json")
    if "backbones" in request:
        return "cls_augment"
    if "n_real" in request:
        return "seg_augment"
    return None


def _metrics_kind(folder: Path) -> str:
    what = _json(folder / "metrics.json").get("setup", {}).get("what")
    return "zeroshot" if what == "zero-shot" else "classification"


#: ``(test, kind)`` in the order they are tried: the most specific files first.
_RULES: list[tuple[Callable[[Path], bool], Callable[[Path], str | None] | str]] = [
    (_published, "published"),
    (lambda f: _has(f, "experiment.json"), _experiment_kind),
    (lambda f: _has(f, "request.json", "dataset_dict.json"), _cohort_kind),
    (lambda f: _has(f, "dataset_dict.json"), "dataset"),
    (lambda f: _has(f, "metadata.csv", "phantom.json"), "phantom_source"),
    (lambda f: _has(f, "cohort_audit.json"), "cohort_audit"),
    (lambda f: _has(f, "pairs_summary.json", "pairs.csv"), "pairs_audit"),
    (lambda f: _has(f, "summary.json", "per_image.csv"), "segmentation"),
    (lambda f: _has(f, "metrics.json", "predictions.csv"), _metrics_kind),
    (lambda f: _has(f, "metrics.json", "assignments.csv"), "clustering"),
    (lambda f: _has(f, "pytorch_lora_weights.safetensors", "config.json"), "lora"),
    (lambda f: _has(f, "controlnet/config.json", "config.json"), "controlnet"),
    (lambda f: _has(f, "sam_config.json", "config.json"), "sam"),
    (lambda f: _has(f, "classifier_config.json", "config.json"), "classifier"),
    (lambda f: _has(f, "ssl_config.json", "config.json"), "ssl"),
]


def detect(folder: str | os.PathLike) -> str | None:
    """The kind of fusynth output ``folder`` is (a key of :data:`KINDS`), or None.

    Args:
        folder: any folder.

    Returns:
        The kind, or None when it is not a fusynth output folder.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return None
    for test, kind in _RULES:
        if test(folder):
            found = kind(folder) if callable(kind) else kind
            if found:
                return found
    return None


@dataclass(frozen=True)
class Run:
    """A run folder and its kind."""

    path: Path
    kind: str

    @property
    def info(self) -> Kind:
        """Its :class:`Kind`."""
        return KINDS[self.kind]


#: How deep :func:`find_runs` looks below a folder that is not a run itself.
MAX_DEPTH = 3


def _walk(folder: Path, depth: int) -> list[Run]:
    kind = detect(folder)
    if kind:
        return [Run(folder, kind)]
    if depth >= MAX_DEPTH:
        return []
    found: list[Run] = []
    for child in sorted(folder.iterdir()):
        # hidden: temporary folders of a run still being written (atomic_dir)
        if child.is_dir() and not child.name.startswith("."):
            found += _walk(child, depth + 1)
    return found


def find_runs(paths: Iterable[str | os.PathLike]) -> list[Run]:
    """The runs in ``paths``, in pipeline order.

    A path that is a run is taken as it is; any other folder is searched (up to
    :data:`MAX_DEPTH` levels) for runs, without looking inside the runs it finds (a
    cohort's ``audit/`` belongs to the cohort's section). Runs of one kind keep the
    order they were given or found in.

    Args:
        paths: run folders and/or folders holding runs.

    Returns:
        The runs, each once, sorted by :attr:`Kind.rank`.

    Raises:
        UserInputError: a path that is missing or not a folder, or no run at all.
    """
    runs: list[Run] = []
    seen: set[Path] = set()
    for p in paths:
        path = Path(p)
        if not path.exists():
            raise UserInputError(f"RUN: {path}: no such folder")
        if not path.is_dir():
            raise UserInputError(f"RUN: {path}: not a folder (give a fusynth output folder)")
        found = _walk(path, 0)
        if not found:
            raise UserInputError(
                f"RUN: {path}: no fusynth output in it (no dataset_dict.json, config.json, "
                "request.json, summary.json, metrics.json or experiment.json found)"
            )
        for run in found:
            key = run.path.resolve()
            if key not in seen:
                seen.add(key)
                runs.append(run)
    order = {id(r): i for i, r in enumerate(runs)}
    return sorted(runs, key=lambda r: (r.info.rank, order[id(r)]))
