"""Every file and folder name that one stage writes and another reads, defined once.

A stage that writes one of these files and a stage that reads it both import the name
from here, so the two can never drift apart (as an audit report written to one place
and looked for in another would).
"""

from __future__ import annotations

from pathlib import Path

# ----------------------------------------------------------------------------- every output

#: In every folder fusynth creates: the kind of output. ``--overwrite`` replaces only
#: folders that carry it, so a mistyped ``--out`` can never delete a user's own folder.
MARKER_FILE = ".fusynth.json"
#: Files by which folders written before the marker existed are still recognised.
LEGACY_MARKERS = (
    "request.json",
    "experiment.json",
    "dataset_dict.json",
    "cohort_audit.json",
    "phantom.json",
)

# ----------------------------------------------------------------------------- training runs

#: The resolved settings of a training run, beside its weights (diffusers' convention).
RUN_CONFIG = "config.json"
#: In every ``checkpoint-N`` folder: the step and what a resume must match.
CHECKPOINT_STATE = "training_state.json"
#: Losses and validation scores of a whole run, resumes included.
TRAIN_LOG = "train_log.json"
#: A diffusers/peft LoRA adapter's weights.
LORA_WEIGHTS = "pytorch_lora_weights.safetensors"
#: The weights of a fusynth SAM or classifier folder.
MODEL_WEIGHTS = "model.safetensors"
#: An SSL run's encoder (the projection head dropped).
ENCODER_WEIGHTS = "encoder.safetensors"
#: How each model folder describes its architecture.
SAM_CONFIG = "sam_config.json"
CLASSIFIER_CONFIG = "classifier_config.json"
SSL_CONFIG = "ssl_config.json"

# ----------------------------------------------------------------------------- cohorts

#: The generation request a cohort was made from (resume refuses a different one).
REQUEST_FILE = "request.json"
#: Counts of a finished cohort: rows, attempts, rejections.
STATS_FILE = "cohort_stats.json"

# ----------------------------------------------------------------------------- audits

#: Where audits of a cohort go by default, inside the cohort folder.
AUDIT_DIR = "audit"
#: ``fusynth audit cohort``'s report, inside its output folder.
COHORT_AUDIT_FILE = "cohort_audit.json"
#: ``fusynth audit pairs``'s summary, inside its report folder.
PAIRS_AUDIT_FILE = "pairs_summary.json"


def cohort_audit_path(cohort: str | Path, audit_dir: str | Path | None = None) -> Path:
    """The cohort audit report of ``cohort``: in ``audit_dir`` when given (an audit
    written elsewhere with ``--out``), else in ``COHORT/audit/``."""
    folder = Path(audit_dir) if audit_dir is not None else Path(cohort) / AUDIT_DIR
    return folder / COHORT_AUDIT_FILE


def pairs_audit_path(cohort: str | Path, audit_dir: str | Path | None = None) -> Path:
    """The pairs audit summary of ``cohort``, placed as :func:`cohort_audit_path`."""
    folder = Path(audit_dir) if audit_dir is not None else Path(cohort) / AUDIT_DIR
    return folder / PAIRS_AUDIT_FILE
