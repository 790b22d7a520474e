"""Folders for the Hugging Face Hub: what ``fusynth publish`` would upload.

:func:`publish_dry_run` builds, atomically, exactly the folder an upload would send:

- a training output (LoRA, ControlNet, SAM, classifier, SSL encoder): its weights and
  configs, the sample grids, and a model card (``README.md``) naming the repository.
  Checkpoints, logs and optimizer states stay behind.
- a cohort: ``data/<split>-0000k-of-0000n.parquet`` shards (images as PNG, masks as
  single-channel PNG, ``view`` a class label whose ``id2label`` is in the card metadata),
  the generation request and audit reports under ``provenance/``, and a dataset card
  rendered from ``model_cards/dataset.md``. ``datasets.load_dataset(folder)`` reads it
  with the stock library. A cohort without ``audit/cohort_audit.json``, or whose
  flagged memorization share is above the threshold, is refused unless forced; the card
  then says so.

Absolute local paths (a home folder, a data disk) in the cards, configs, provenance files and the
per-sample ``provenance`` column are replaced by ``<local>/NAME`` (their last part):
the folder says which local folder was used without publishing the machine's layout.
A local ``base_model`` is dropped from the card metadata, which the Hub reads as a repo id.

:func:`upload` builds the same folder in a temporary place and sends it with
huggingface_hub (``create_repo(exist_ok=True)``, ``create_branch`` for ``--revision``,
then one atomic ``create_commit``). The token comes from ``HF_TOKEN`` or ``hf auth
login`` and is never printed or written.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from fusynth.errors import UserInputError
from fusynth.io import atomic_dir

#: Kinds of training output, in detection order, with the files each is recognised by.
MODEL_MARKERS: dict[str, tuple[str, ...]] = {
    "lora": ("pytorch_lora_weights.safetensors",),
    "controlnet": ("controlnet/config.json", "controlnet/diffusion_pytorch_model.safetensors"),
    "sam": ("sam_config.json", "model.safetensors"),
    "classifier": ("classifier_config.json", "model.safetensors"),
    "ssl": ("ssl_config.json", "encoder.safetensors"),
}
COHORT_MARKERS: tuple[str, ...] = ("request.json", "dataset_dict.json")

#: Files a user of each kind of model needs (copied when present), besides sample grids.
MODEL_FILES: dict[str, tuple[str, ...]] = {
    "lora": (
        "pytorch_lora_weights.safetensors",
        "unet_peft/adapter_config.json",
        "unet_peft/adapter_model.safetensors",
        "text_encoder_peft/adapter_config.json",
        "text_encoder_peft/adapter_model.safetensors",
        "config.json",
    ),
    "controlnet": (
        "controlnet/config.json",
        "controlnet/diffusion_pytorch_model.safetensors",
        "config.json",
    ),
    "sam": ("model.safetensors", "sam_config.json", "config.json"),
    "classifier": ("model.safetensors", "classifier_config.json", "config.json"),
    "ssl": ("encoder.safetensors", "ssl_config.json", "config.json"),
}

AUDIT_FILE = "audit/cohort_audit.json"
PAIRS_FILE = "audit/pairs_summary.json"
PROVENANCE_FILES: tuple[str, ...] = ("request.json", "cohort_stats.json", AUDIT_FILE, PAIRS_FILE)
SHARD_ROWS = 1000
NOT_FOR_CLINICAL_USE = (
    "**Not for clinical use**: nothing here has been validated for diagnosis or for any "
    "decision about a patient."
)
_TAGS = ["fusynth", "ultrasound", "fetal-ultrasound", "medical-imaging"]
#: The card metadata's ``library_name`` of each kind, for folders without a card.
LIBRARY = {
    "lora": "diffusers",
    "controlnet": "diffusers",
    "sam": "segment-anything",
    "classifier": "pytorch",
    "ssl": "pytorch",
}
#: An empty metadata block that huggingface_hub's card parser recognises.
_NO_METADATA = "---\n{}\n---\n"


#: An absolute POSIX path of two parts or more (or ``~/...``) that starts a token: at the
#: start of a line or after a space, quote, backtick, bracket, ``*``, ``|``, ``=``, ``,``
#: or ``:``. URLs do not match (``//`` follows their colon), nor ``/x`` alone.
_PATH_CHARS = r"""[^\s"'`)\],*|:]"""
_ABS_PATH = re.compile(
    rf"""(?:^|(?<=[\s"'`(\[=,*|:]))(?:~|/[\w.@+-]{_PATH_CHARS}*)/{_PATH_CHARS}+(?::\w+)?""",
    re.MULTILINE,
)
#: Files whose text is redacted in a published folder.
TEXT_SUFFIXES: tuple[str, ...] = (".md", ".json", ".yaml", ".yml", ".txt", ".csv")
LOCAL = "<local>"


# ----------------------------------------------------------------------------- checks


def detect_kind(folder: str | os.PathLike) -> str:
    """What kind of fusynth output ``folder`` is, from its marker files.

    Args:
        folder: a training output folder or a cohort folder.

    Returns:
        ``cohort`` or a key of :data:`MODEL_MARKERS`.

    Raises:
        UserInputError: ``folder`` is missing, not a folder, or holds no fusynth output.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise UserInputError(f"DIR: {folder}: no such folder")
    if all((folder / m).is_file() for m in COHORT_MARKERS):
        return "cohort"
    for kind, markers in MODEL_MARKERS.items():
        if (folder / markers[0]).is_file():
            missing = [m for m in markers[1:] if not (folder / m).is_file()]
            if missing:
                raise UserInputError(
                    f"DIR: {folder}: a {kind} output without {', '.join(missing)} (incomplete?)"
                )
            return kind
    names = [m[0] for m in MODEL_MARKERS.values()] + [" + ".join(COHORT_MARKERS)]
    raise UserInputError(f"DIR: {folder} is not a fusynth output (no {', '.join(names)})")


def check_repo_id(repo_id: str) -> str:
    """Check a Hub repository id of the form ``USER/NAME``.

    Args:
        repo_id: the ``--repo-id`` value.

    Returns:
        ``repo_id`` unchanged.

    Raises:
        UserInputError: it is not ``USER/NAME`` or the Hub's validator rejects it.
    """
    text = str(repo_id)
    if text.count("/") != 1 or not all(text.split("/")):
        raise UserInputError(f"--repo-id: {text!r} is not of the form USER/NAME")
    return check_hub_id(text, "--repo-id")


def check_hub_id(value: str, flag: str) -> str:
    """Check a Hub id (``NAME`` or ``OWNER/NAME``) given with ``flag``.

    Raises:
        UserInputError: it is a local path or the Hub's validator rejects it.
    """
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    text = str(value)
    if is_local_path(text) or text.count("/") > 1:
        raise UserInputError(f"{flag}: {text!r} is not a Hub id (OWNER/NAME)")
    try:
        validate_repo_id(text)
    except HFValidationError as exc:
        reason = " ".join(str(exc).split())
        raise UserInputError(f"{flag}: {text!r} is not a valid Hub id ({reason})") from exc
    return text


def check_request(
    kind: str,
    src: str | os.PathLike,
    repo_id: str,
    max_flag_share: float = 0.0,
    base_model: str | None = None,
    datasets: list[str] | None = None,
) -> str:
    """Check what ``fusynth publish model|cohort`` was given, before any work.

    Args:
        kind: ``model`` or ``cohort`` (the subcommand).
        src: the fusynth output folder.
        repo_id: ``--repo-id``.
        max_flag_share: ``--max-flag-share``.
        base_model: ``--base-model``.
        datasets: ``--datasets``.

    Returns:
        The kind of output ``src`` is (see :func:`detect_kind`).

    Raises:
        UserInputError: naming the flag or folder that is wrong.
    """
    check_repo_id(repo_id)
    if base_model is not None:
        check_hub_id(base_model, "--base-model")
    for dataset in datasets or []:
        check_hub_id(dataset, "--datasets")
    if not 0.0 <= max_flag_share <= 1.0:
        raise UserInputError(f"--max-flag-share: must be in [0, 1], got {max_flag_share}")
    found = detect_kind(src)
    if kind == "model" and found == "cohort":
        raise UserInputError(f"DIR: {src} is a cohort; use `fusynth publish cohort`")
    if kind == "cohort" and found != "cohort":
        raise UserInputError(
            f"DIR: {src} is a {found} output, not a cohort; use `fusynth publish model`"
        )
    if kind not in ("model", "cohort"):
        raise ValueError(f"kind must be 'model' or 'cohort', got {kind!r}")
    return found


# ----------------------------------------------------------------------------- local paths


def _local_name(match: re.Match[str]) -> str:
    parts = [p for p in match.group(0).split("/") if p]
    return f"{LOCAL}/{parts[-1] if parts else ''}"


def redact_paths(text: str) -> str:
    """Replace every absolute local path in ``text`` by ``<local>/`` and its last part.

    ``ROOT/runs/phantom:train``, ROOT absolute, becomes ``<local>/phantom:train``; relative paths,
    Hub ids and URLs are kept.

    Args:
        text: a card, a JSON document or a provenance string.

    Returns:
        The text with its absolute paths redacted.
    """
    return _ABS_PATH.sub(_local_name, text)


def is_local_path(value: Any) -> bool:
    """Whether ``value`` is an absolute local path (already redacted or not)."""
    text = str(value or "")
    return text.startswith((f"{LOCAL}/", "/", "~/")) or bool(re.match(r"^[A-Za-z]:[\\/]", text))


def _redact_files(folder: Path) -> None:
    """Redact absolute paths in every text file under ``folder``, in place."""
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.suffix.lower() in TEXT_SUFFIXES:
            text = path.read_text(encoding="utf-8")
            redacted = redact_paths(text)
            if redacted != text:
                path.write_text(redacted, encoding="utf-8")


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
            report = _read_json(path)
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
    from fusynth.io import weights_sha256

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

    from fusynth.diffusion.pipelines import lora_training_config

    note = (
        f"Published as [`{repo_id}`](https://huggingface.co/{repo_id}). "
        f'`huggingface_hub.snapshot_download("{repo_id}")` downloads this folder; use the '
        "path it returns wherever this card says `path/to/this/folder`."
    )
    readme = src / "README.md"
    if readme.is_file():
        text = readme.read_text(encoding="utf-8")
        card = ModelCard(text if text.startswith("---\n") else f"{_NO_METADATA}{text}")
        text = card.text
        if kind in ("lora", "controlnet"):  # diffusers loads these straight from the Hub
            text = text.replace('"path/to/this/folder"', f'"{repo_id}"')
        local_base = lora_training_config(src).get("pretrained_model_name_or_path")
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
            f"{_NO_METADATA}\n# fusynth {kind}: {repo_id}\n\n{note}\n\n"
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


def _build_model_folder(
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
        base_model: the Hub id of the base the model was trained from (``--base-model``),
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
    with atomic_dir(out, overwrite) as tmp:
        for rel, path in copies.items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, tmp / rel)
        card = _model_card(kind, src, repo_id, sorted(copies), section, base_model, datasets)
        (tmp / "README.md").write_text(card, encoding="utf-8")
        _redact_files(tmp)
    return sorted([*copies, "README.md"])


# ----------------------------------------------------------------------------- cohorts


def _read_json(path: Path) -> Any:
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
    src: Path, n_rows: int, force: bool, max_flag_share: float
) -> tuple[dict[str, Any] | None, str]:
    """The audit report (or None) and the card's warning ("" when the audit passed).

    Raises:
        UserInputError: no audit, a stale audit or too many flagged samples, unforced.
    """
    path = src / AUDIT_FILE
    if not path.is_file():
        if not force:
            raise UserInputError(
                f"DIR: {src}: no {AUDIT_FILE}; run `fusynth audit cohort {src} --reference "
                "DIR:split` first, or pass --force to publish it unaudited"
            )
        return None, "published without an audit (forced with --force)"
    audit = _read_json(path)
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
        raise UserInputError(
            f"DIR: {src}: {AUDIT_FILE}: {problem}; pass --force to publish it anyway"
        )
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
    from fusynth.cards import render_card

    n = sum(split_rows.values())
    names = features["view"].names
    card_data = {
        "license": "other",
        "pretty_name": f"fusynth synthetic cohort: {', '.join(view_counts)}",
        "task_categories": ["image-classification"] + (["image-segmentation"] if has_masks else []),
        "annotations_creators": ["machine-generated"],
        "source_datasets": ["original"],
        "size_categories": [_size_category(n)],
        "tags": [*_TAGS, "synthetic"],
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


def _build_cohort_folder(
    src: Path,
    out: str | os.PathLike,
    repo_id: str,
    force: bool = False,
    max_flag_share: float = 0.0,
    overwrite: bool = False,
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
    audit, warning = _audit_decision(src, sum(split_rows.values()), force, max_flag_share)
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
    with atomic_dir(out, overwrite) as tmp:
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
            if (src / rel).is_file():
                dest = f"provenance/{Path(rel).name}"
                (tmp / "provenance").mkdir(exist_ok=True)
                shutil.copy2(src / rel, tmp / dest)
                written.append(dest)
        pairs = _read_json(src / PAIRS_FILE) if (src / PAIRS_FILE).is_file() else None
        card = _dataset_card(
            repo_id,
            _read_json(src / "request.json"),
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
        _redact_files(tmp)
    return sorted(written)


# ----------------------------------------------------------------------------- entry point


def build_folder(
    found: str,
    src: str | os.PathLike,
    repo_id: str,
    out: str | os.PathLike,
    overwrite: bool = False,
    force: bool = False,
    max_flag_share: float = 0.0,
    evals: list[str] | None = None,
    base_model: str | None = None,
    datasets: list[str] | None = None,
) -> list[str]:
    """Build, atomically in ``out``, the folder an upload of a checked request sends.

    Args:
        found: the kind :func:`check_request` returned for ``src``.
        src: the fusynth output folder.
        repo_id: the Hub repository, ``USER/NAME``.
        out: the folder to build.
        overwrite: replace an existing ``out``.
        force: for a cohort, publish without an audit or against it.
        max_flag_share: for a cohort, the largest memorization-flagged share accepted.
        evals: for a model, more evaluation folders (``--eval``).
        base_model: for a model, the Hub id of its base (``--base-model``).
        datasets: for a model, Hub ids of its training data (``--datasets``).

    Returns:
        The files written, relative to ``out``, sorted.

    Raises:
        UserInputError: a bad audit or evaluation (see the builders).
    """
    if found == "cohort":
        return _build_cohort_folder(Path(src), out, repo_id, force, max_flag_share, overwrite)
    return _build_model_folder(
        Path(src), found, out, repo_id, overwrite, evals, base_model, datasets
    )


def publish_dry_run(
    kind: str,
    src: str | os.PathLike,
    repo_id: str,
    out: str | os.PathLike,
    overwrite: bool = False,
    **options: Any,
) -> list[str]:
    """Check a request and build, atomically in ``out``, exactly the folder
    ``fusynth publish`` would upload (``--dry-run OUT``).

    Args:
        kind: ``model`` or ``cohort`` (the subcommand).
        src: the fusynth output folder.
        repo_id: the Hub repository, ``USER/NAME``.
        out: the folder to build.
        overwrite: replace an existing ``out``.
        options: ``force``, ``max_flag_share``, ``evals``, ``base_model``, ``datasets``
            (see :func:`build_folder`).

    Returns:
        The files written, relative to ``out``, sorted.

    Raises:
        UserInputError: bad folder, repo id, audit or evaluation.
    """
    found = check_request(
        kind,
        src,
        repo_id,
        options.get("max_flag_share", 0.0),
        options.get("base_model"),
        options.get("datasets"),
    )
    return build_folder(found, src, repo_id, out, overwrite, **options)


# ----------------------------------------------------------------------------- upload

NO_TOKEN = (
    "no Hugging Face token: set HF_TOKEN or run `hf auth login` "
    "(or use --dry-run OUT to build the folder without uploading)"
)


def hub_token() -> str:
    """The token huggingface_hub would use (``HF_TOKEN``, then the stored login).

    Raises:
        UserInputError: there is none.
    """
    from huggingface_hub import get_token

    token = get_token()
    if not token:
        raise UserInputError(NO_TOKEN)
    return token


def owned_paths(found: str) -> list[str]:
    """The repository paths (files and ``folder/*``) a publish of a ``found`` kind of
    output may write, whether or not this one does. An upload mirrors them: a file an
    earlier upload left there (a stale shard, the text-encoder adapter of an older LoRA,
    an old grid or evaluation) and this one does not send is deleted. The owner's other
    files are left alone."""
    if found == "cohort":
        return ["data/*", "provenance/*"]
    files = MODEL_FILES[found]
    folders = {f"{f.split('/')[0]}/*" for f in files if "/" in f} | {"validation/*", "eval/*"}
    return sorted({f for f in files if "/" not in f} | folders)


def upload(
    found: str,
    src: str | os.PathLike,
    repo_id: str,
    token: str,
    private: bool = False,
    revision: str | None = None,
    **options: Any,
) -> tuple[str, list[str]]:
    """Build the publish folder of a checked request in a temporary place and upload it
    to the Hub in one commit.

    The repository is created if missing (``exist_ok``); ``revision`` is created as a
    branch if missing. The commit adds every file of the folder and deletes the files an
    earlier upload left in :func:`owned_paths` that this one does not send, so a cohort
    never mixes shards of two uploads. One commit is atomic: the repository shows either
    the old upload or the new one, never a part. Re-running after a failure sends it
    again.

    Args:
        found: the kind :func:`check_request` returned for ``src``.
        src: the fusynth output folder.
        repo_id: ``USER/NAME``.
        token: the Hub token (see :func:`hub_token`); never printed or written.
        private: create the repository as private, and refuse one that exists as public.
        revision: the branch to commit to (``main`` when None).
        options: ``force``, ``max_flag_share``, ``evals``, ``base_model``, ``datasets``
            (see :func:`build_folder`).

    Returns:
        The commit URL and the files uploaded (relative, sorted).

    Raises:
        UserInputError: a bad audit or evaluation; ``private`` and a public repository.
        huggingface_hub.errors.HfHubHTTPError: the Hub refused a request.
    """
    from fnmatch import fnmatch

    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi

    from fusynth import __version__

    repo_type = "dataset" if found == "cohort" else "model"
    with tempfile.TemporaryDirectory(prefix="fusynth-publish-") as tmp:
        folder = Path(tmp) / "upload"
        files = build_folder(found, src, repo_id, folder, **options)
        api = HfApi(token=token)
        api.create_repo(repo_id, repo_type=repo_type, private=private or None, exist_ok=True)
        if private and not api.repo_info(repo_id, repo_type=repo_type).private:
            raise UserInputError(
                f"--private: {repo_id} already exists and is public; make it private on the "
                "Hub first, or publish without --private"
            )
        if revision:
            api.create_branch(repo_id, branch=revision, repo_type=repo_type, exist_ok=True)
        owned = owned_paths(found)
        stale = [
            path
            for path in api.list_repo_files(repo_id, repo_type=repo_type, revision=revision)
            if path not in files and any(fnmatch(path, pattern) for pattern in owned)
        ]
        operations = [CommitOperationAdd(rel, folder / rel) for rel in files]
        operations += [CommitOperationDelete(path) for path in stale]
        info = api.create_commit(
            repo_id,
            operations,
            commit_message=f"Publish a fusynth {found} (fusynth {__version__})",
            repo_type=repo_type,
            revision=revision,
        )
    return str(info.commit_url), files
