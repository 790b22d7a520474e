"""What can be published: the kinds of fusynth folders, the files each kind carries, and the
checks on a request (repository ids, Hub ids, the folder's kind) made before anything is
built.
"""

from __future__ import annotations

import os
from pathlib import Path

from fusynth.core.artifacts import (
    AUDIT_DIR,
    COHORT_AUDIT_FILE,
    PAIRS_AUDIT_FILE,
    REQUEST_FILE,
    STATS_FILE,
)
from fusynth.core.errors import UserInputError
from fusynth.publish.redact import is_local_path

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

AUDIT_FILE = f"{AUDIT_DIR}/{COHORT_AUDIT_FILE}"
PAIRS_FILE = f"{AUDIT_DIR}/{PAIRS_AUDIT_FILE}"
PROVENANCE_FILES: tuple[str, ...] = (REQUEST_FILE, STATS_FILE, AUDIT_FILE, PAIRS_FILE)
NOT_FOR_CLINICAL_USE = (
    "**Not for clinical use**: nothing here has been validated for diagnosis or for any "
    "decision about a patient."
)
TAGS = ["fusynth", "ultrasound", "fetal-ultrasound", "medical-imaging"]
#: The card metadata's ``library_name`` of each kind, for folders without a card.
LIBRARY = {
    "lora": "diffusers",
    "controlnet": "diffusers",
    "sam": "segment-anything",
    "classifier": "pytorch",
    "ssl": "pytorch",
}
#: An empty metadata block that huggingface_hub's card parser recognises.
NO_METADATA = "---\n{}\n---\n"


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
        repo_id: the ``--repo_id`` value.

    Returns:
        ``repo_id`` unchanged.

    Raises:
        UserInputError: it is not ``USER/NAME`` or the Hub's validator rejects it.
    """
    text = str(repo_id)
    if text.count("/") != 1 or not all(text.split("/")):
        raise UserInputError(f"--repo_id: {text!r} is not of the form USER/NAME")
    return check_hub_id(text, "--repo_id")


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
        repo_id: ``--repo_id``.
        max_flag_share: ``--max_flag_share``.
        base_model: ``--base_model``.
        datasets: ``--datasets``.

    Returns:
        The kind of output ``src`` is (see :func:`detect_kind`).

    Raises:
        UserInputError: naming the flag or folder that is wrong.
    """
    check_repo_id(repo_id)
    if base_model is not None:
        check_hub_id(base_model, "--base_model")
    for dataset in datasets or []:
        check_hub_id(dataset, "--datasets")
    if not 0.0 <= max_flag_share <= 1.0:
        raise UserInputError(f"--max_flag_share: must be in [0, 1], got {max_flag_share}")
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
