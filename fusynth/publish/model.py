"""A model folder for the Hub: weights, configs, the card, and the evaluations of those
weights (a report is accepted only when its ``model_sha256`` matches).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

from fusynth.core.errors import UserInputError
from fusynth.core.io import atomic_dir
from fusynth.publish.cohort import read_json
from fusynth.publish.kinds import LIBRARY, MODEL_FILES, NO_METADATA, NOT_FOR_CLINICAL_USE
from fusynth.publish.redact import is_local_path, redact_files

# ----------------------------------------------------------------------------- evaluations

#: The report of each ``fusynth evaluate`` command a model card can carry, and the
#: aggregate figures published beside it (per-image rows and overlays of real patients'
#: images stay behind).
EVAL_REPORTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "segmentation": ("summary.json", ("boxplot.png",)),
    "classification": ("metrics.json", ("confusion.png",)),
}
EVAL_OF_KIND = {"sam": "segmentation", "classifier": "classification"}
_SEG_ROWS = (
    ("dice", "Dice"),
    ("iou", "IoU"),
    ("hd95_px", "HD95 (px)"),
    ("assd_px", "ASSD (px)"),
    ("hd95_mm", "HD95 (mm)"),
    ("hc_abs_error_mm", "HC absolute error (mm)"),
)
_CLS_ROWS = (
    ("accuracy", "accuracy"),
    ("balanced_accuracy", "balanced accuracy"),
    ("macro_f1", "macro-F1"),
    ("macro_auroc", "macro ROC-AUC (one-vs-rest)"),
)


def read_evaluation(folder: Path) -> tuple[str, dict[str, Any]] | None:
    """``(kind, report)`` of a ``fusynth evaluate segmentation|classification`` output
    folder, or None when ``folder`` is not one."""
    for kind, (name, _) in EVAL_REPORTS.items():
        path = folder / name
        if path.is_file():
            report = read_json(path)
            if kind == "segmentation" and "by_jitter" in report:
                return kind, report
            if kind == "classification" and report.get("setup", {}).get("what") == "classifier":
                return kind, report
    return None


def _evaluations(src: Path, kind: str, extra: list[str]) -> list[tuple[str, str, dict, Path]]:
    """The evaluations to publish with ``src``: its own evaluation subfolders, then
    ``extra`` (``--eval``); each must have scored exactly these weights.

    Returns:
        ``(name, eval kind, report, folder)`` per evaluation, names unique.

    Raises:
        UserInputError: an ``--eval`` folder that is no evaluation, of another model or
            another task, or one that does not record the weights it scored.
    """
    from fusynth.core.io import weights_sha256

    inside = [(d, "DIR", read_evaluation(d)) for d in sorted(src.iterdir()) if d.is_dir()]
    found = [item for item in inside if item[2] is not None]
    for e in extra:
        folder = Path(e)
        found.append((folder, "--eval", read_evaluation(folder) if folder.is_dir() else None))
    own = weights_sha256(src) if found and kind in EVAL_OF_KIND else None
    out: list[tuple[str, str, dict, Path]] = []
    names: set[str] = set()
    for folder, flag, got in found:
        if got is None:
            raise UserInputError(
                f"{flag}: {folder}: not a `fusynth evaluate segmentation|classification` output "
                "(no summary.json or metrics.json)"
            )
        what, report = got
        if EVAL_OF_KIND.get(kind) != what:
            raise UserInputError(f"{flag}: {folder}: a {what} evaluation; {src} is a {kind} output")
        sha = report.get("model_sha256") or report.get("setup", {}).get("model_sha256")
        if sha is None:
            raise UserInputError(
                f"{flag}: {folder}: the report does not record which weights it scored "
                "(model_sha256); evaluate the model again"
            )
        if sha != own:
            raise UserInputError(
                f"{flag}: {folder}: scored other weights (sha256 {sha[:12]}...) than "
                f"{src}/model.safetensors ({str(own)[:12]}...); evaluate this model again"
            )
        name = folder.name
        while name in names:
            name += "_"
        names.add(name)
        out.append((name, what, report, folder))
    return out


def _stat(entry: dict[str, Any] | None, mean: str = "mean") -> str:
    """``m ± sd [low, high]`` of a report entry, ``n/a`` where undefined."""

    def f(value: Any) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    if not entry or entry.get(mean) is None:
        return "n/a"
    text = f(entry[mean]) + (f" ± {f(entry['sd'])}" if entry.get("sd") is not None else "")
    if entry.get("ci_low") is not None:
        text += f" [{f(entry['ci_low'])}, {f(entry['ci_high'])}]"
    return text


def evaluation_section(evals: list[tuple[str, str, dict, Path]]) -> str:
    """The card's "Evaluation" section: each report's headline metrics with their 95%
    bootstrap intervals and counts, and where the full report is in the repository."""
    if not evals:
        return ""
    lines = ["## Evaluation", ""]
    for name, what, report, _ in evals:
        if what == "segmentation":
            jitters = list(report["by_jitter"])
            lines += [
                f"### `{name}`: box-prompted segmentation of `{report['data']}`",
                "",
                f"{report['n_images']} images of {report['n_subjects']} subjects, at native "
                "resolution; mean ± sd over images [95% bootstrap interval]. Box jitter is "
                f"the largest shift of each box coordinate, in pixels "
                f"({report['settings']['rounds']} random boxes per image when it is > 0).",
                "",
                "| metric | " + " | ".join(f"jitter {j} px" for j in jitters) + " |",
                "|---|" + "---|" * len(jitters),
            ]
            for key, label in _SEG_ROWS:
                cells = [report["by_jitter"][j].get(key) for j in jitters]
                if any(c is not None for c in cells):
                    lines.append(f"| {label} | " + " | ".join(_stat(c) for c in cells) + " |")
            empty = [str(report["by_jitter"][j]["empty_predictions"]) for j in jitters]
            lines.append("| empty predictions | " + " | ".join(empty) + " |")
        else:
            setup = report["setup"]
            lines += [
                f"### `{name}`: view classification of `{setup['data']}`",
                "",
                f"{report['n_images']} images of {report['n_subjects']} subjects; 95% "
                f"intervals resample subjects ({setup['n_boot']} bootstrap samples).",
                "",
                "| metric | value [95% interval] |",
                "|---|---|",
            ]
            for key, label in _CLS_ROWS:
                entry = report["overall"].get(key)
                lines.append(f"| {label} | {_stat(entry, 'value')} |")
            legacy = report.get("fulora_legacy")
            if legacy:
                lines += [
                    "",
                    f"FU-LoRA's legacy numbers, computed its way and not comparable to the "
                    f"above: ACC {legacy['ACC']}, AUC {legacy['AUC']}, F1 {legacy['F1']}.",
                ]
        report_file = EVAL_REPORTS[what][0]
        lines += ["", f"Full report: `eval/{name}/{report_file}`.", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- models


def _model_card(
    kind: str,
    src: Path,
    repo_id: str,
    files: list[str],
    evaluation: str = "",
    base_model: str | None = None,
    datasets: list[str] | None = None,
) -> str:
    """The published README.md: the training card with the repo id and metadata filled.

    ``base_model`` (a Hub id the publisher names for a base trained from a local copy)
    replaces the local base in the card's text and metadata; ``datasets`` (Hub ids) go
    to the metadata.
    """
    from huggingface_hub import ModelCard, ModelCardData

    from fusynth.diffusion.config import TrainedAdapter

    note = (
        f"Published as [`{repo_id}`](https://huggingface.co/{repo_id}). "
        f'`huggingface_hub.snapshot_download("{repo_id}")` downloads this folder; use the '
        "path it returns wherever this card says `path/to/this/folder`."
    )
    readme = src / "README.md"
    if readme.is_file():
        text = readme.read_text(encoding="utf-8")
        card = ModelCard(text if text.startswith("---\n") else f"{NO_METADATA}{text}")
        text = card.text
        if kind in ("lora", "controlnet"):  # diffusers loads these straight from the Hub
            text = text.replace('"path/to/this/folder"', f'"{repo_id}"')
        local_base = TrainedAdapter.read(src, "DIR").base
        if base_model and local_base and local_base != base_model:
            whole = rf"(?<![\w/.-]){re.escape(local_base)}(?![\w/.-])"  # not a longer path
            text = re.sub(whole, base_model, text)
        lines = text.split("\n")
        title = next((i for i, line in enumerate(lines) if line.startswith("# ")), None)
        at = 0 if title is None else title + 1
        text = "\n".join([*lines[:at], "", note, *lines[at:]])
        if evaluation:  # before "Intended use" where the card has it, else at the end
            head, sep, tail = text.partition("\n## Intended use")
            text = (
                f"{head.rstrip()}\n\n{evaluation.rstrip()}\n{sep}{tail}"
                if sep
                else f"{text}\n{evaluation}"
            )
        card.text = text
        data = card.data
    else:
        listing = "\n".join(f"- `{f}`" for f in files)
        card = ModelCard(
            f"{NO_METADATA}\n# fusynth {kind}: {repo_id}\n\n{note}\n\n"
            f"A fusynth {kind} output. The folder it was published from had no card, so "
            f"this one records only its files:\n\n{listing}\n\n{evaluation}## Intended use\n\n"
            f"Research on fetal ultrasound analysis. {NOT_FOR_CLINICAL_USE}\n"
        )
        data = card.data = ModelCardData(library_name=LIBRARY[kind])
    if base_model:
        data.base_model = base_model
    elif is_local_path(data.get("base_model")):  # the Hub reads base_model as a repo id
        data.base_model = None
    if datasets:
        data.datasets = list(datasets)
    data.library_name = data.library_name or LIBRARY[kind]
    tags = list(data.tags or [])
    data.tags = tags + [t for t in ["fusynth", kind] if t not in tags]
    data.license = data.license or "other"
    return str(card)


def build_model_folder(
    src: Path,
    kind: str,
    out: str | os.PathLike,
    repo_id: str,
    overwrite: bool = False,
    evals: list[str] | None = None,
    base_model: str | None = None,
    datasets: list[str] | None = None,
) -> list[str]:
    """Build the upload folder of a training output, atomically.

    Copies the weights, configs and sample grids (``validation/*.png``) a user needs and
    writes a model card naming ``repo_id``; checkpoints, logs and optimizer states are
    left out. Evaluations of these weights (``fusynth evaluate`` outputs inside ``src``,
    and ``evals``) go to ``eval/NAME/`` (report and aggregate figure) and to the card's
    "Evaluation" section.

    Args:
        src: a LoRA, ControlNet, SAM, classifier or SSL output folder (checked by
            :func:`check_request`).
        kind: which of these it is.
        out: the folder to build (must not exist unless ``overwrite``).
        repo_id: the Hub repository, ``USER/NAME``.
        overwrite: replace an existing ``out``.
        evals: more evaluation folders (``--eval``).
        base_model: the Hub id of the base the model was trained from (``--base_model``),
            for a base loaded from a local folder.
        datasets: Hub ids of the training data (``--datasets``), for the metadata.

    Returns:
        The files written, relative to ``out``, sorted.

    Raises:
        UserInputError: an evaluation does not fit these weights.
    """
    files = [f for f in MODEL_FILES[kind] if (src / f).is_file()]
    files += sorted(p.relative_to(src).as_posix() for p in src.glob("validation/*.png"))
    copies = {rel: src / rel for rel in files}
    found = _evaluations(src, kind, list(evals or []))
    for name, what, _, folder in found:
        report, figures = EVAL_REPORTS[what]
        for fname in (report, *figures):
            if (folder / fname).is_file():
                copies[f"eval/{name}/{fname}"] = folder / fname
    section = evaluation_section(found)
    with atomic_dir(out, overwrite, kind="hub-folder") as tmp:
        for rel, path in copies.items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, tmp / rel)
        card = _model_card(kind, src, repo_id, sorted(copies), section, base_model, datasets)
        (tmp / "README.md").write_text(card, encoding="utf-8")
        redact_files(tmp)
    return sorted([*copies, "README.md"])
