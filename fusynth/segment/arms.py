"""What each arm and protocol of ``experiment seg-augment`` trains on, as training stages.

The real-only arm and ``real+synthetic`` under ``mix`` read the real folder and the
cohort directly (as before arms existed, so their cells are unchanged). Any other arm
first writes the pairs it adds as a prepared dataset with masks inside the cell:
classical copies of the chosen real image/mask pairs (:data:`fusynth.data.augment.
CLASSICAL`, image and mask through one sampling grid), the chosen synthetic pairs, or
classical copies of those. The real and synthetic pairs are those the training itself
picks for the seed (:func:`fusynth.segment.data.choose_by_subject` and
:func:`~fusynth.segment.data.choose_synthetic`), so the arms of one repeat share them.

- ``pretrain-finetune``: a ``pretrain`` stage on the synthetic part for
  ``--pretrain_steps``, validated on the real validation split, then the ``model``
  stage on the K real images (with their classical copies in a classical arm) for the
  rest of ``--max_train_steps``, starting from the pretrain stage's model folder (SAM:
  a fusynth SAM folder; U-Net: a U-Net folder) at the learning rate of the real-only
  arm, so that only the data differ between arms.
- ``synthetic-only``: one stage on the synthetic part alone, validated on the real
  validation split. It uses no real image, so its cells do not depend on K (``k0``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fusynth.core.protocols import REAL, Arm, arm_protocol, cell_suffix
from fusynth.data.added import AddedSamples, write_added
from fusynth.data.augment import CLASSICAL, copy_seed
from fusynth.data.schema import parse_data_spec
from fusynth.segment.data import (
    SegSample,
    choose_by_subject,
    choose_synthetic,
    default_validation,
    load_seg_set,
)

#: The view written for the added head pairs.
HEAD = "head"


@dataclass
class SegStage:
    """One training run of a cell."""

    name: str  # "model", or "pretrain" before the real stage
    train: str
    n_real: int | None  # None: every image of ``train``
    synthetic: str | None
    n_synthetic: int | None  # None: every pair of ``synthetic``
    validation: str | None  # None: the train folder's validation split
    max_train_steps: int | None
    checkpoint: str | None  # None: the experiment's --checkpoint
    learning_rate: float | None  # None: the experiment's --learning_rate


def cell_name(k: int | str, m: int, r: int, arm: str = REAL, protocol: str = "mix") -> str:
    """Folder name of one cell (real and mixed real + synthetic cells keep the names they
    had before arms existed: ``k5-m500-r0``)."""
    return f"k{k}-m{m}{cell_suffix(arm, protocol)}-r{r}"


def real_train_spec(config: Any) -> str:
    """The real training pool ``DIR:train``."""
    return f"{parse_data_spec(config.real)[0]}:train"


def classical_pairs(samples: list[SegSample], copies: int, seed: int) -> AddedSamples:
    """``copies`` augmented copies of each pair (same subject; the key says which copy)."""
    out = AddedSamples()
    for j, s in enumerate(samples):
        for c in range(copies):
            image, mask = CLASSICAL(s.image, s.mask, copy_seed(seed, j, c))
            out.add(image, HEAD, s.subject_id, s.synthetic, f"{s.key}~classical{c}", mask=mask,
                    pixel_spacing_mm=s.pixel_spacing_mm)  # fmt: skip
    return out


def as_added(samples: list[SegSample]) -> AddedSamples:
    """The samples themselves, to be written beside their copies."""
    out = AddedSamples()
    for s in samples:
        out.add(s.image, HEAD, s.subject_id, s.synthetic, s.key, mask=s.mask,
                pixel_spacing_mm=s.pixel_spacing_mm,
                head_circumference_mm=s.head_circumference_mm)  # fmt: skip
    return out


def _concat(*parts: AddedSamples) -> AddedSamples:
    out = AddedSamples()
    for part in parts:
        for name in vars(out):
            getattr(out, name).extend(getattr(part, name))
    return out


def cell_stages(
    config: Any, folder: Path, arm: str, k: int | str, m: int, r: int, real_lr: float | None
) -> tuple[list[SegStage], dict[str, Any]]:
    """The training stages of one cell and what it trained on (for its record).

    Args:
        config: the experiment's ``SegAugmentConfig``.
        folder: the cell's folder (added pairs are written under ``data-*``).
        arm, k, m, r: the cell (``k``: a count, ``"all"``, or 0 for synthetic-only).
        real_lr: the learning rate of this repeat's real-only arm (the real stage of
            pretrain-finetune starts from other weights but trains at the same rate).
    """
    a = Arm(arm)
    protocol = arm_protocol(arm, config.protocol)
    seed = config.seed + r
    real_train = real_train_spec(config)
    n_real = None if k == "all" else k
    copies = config.classical_copies if a.classical else 0
    total = config.max_train_steps
    info: dict[str, Any] = {"protocol": protocol, "arm": arm, "n_classical": 0}
    if not a.classical and protocol == "mix":
        stage = SegStage("model", real_train, n_real, config.synthetic if m else None,
                         m or None, None, total, None, None)  # fmt: skip
        return [stage], info

    real_copies = None
    if a.classical:
        pool = load_seg_set(real_train, "--real").samples
        chosen = choose_by_subject(pool, n_real or len(pool), seed, "--n_real")
        real_copies = classical_pairs(chosen, copies, seed)
    synth: list[SegSample] = []
    if a.synthetic:
        cohort = load_seg_set(config.synthetic, "--synthetic").samples
        synth = choose_synthetic(cohort, m, seed, "--n_synthetic")

    if protocol == "mix":
        assert real_copies is not None  # a mixed arm with added pairs is a classical one
        added = _concat(real_copies, as_added(synth))
        info["n_classical"] = len(real_copies)
        spec = write_added(folder / "data-added", added)
        return [SegStage("model", real_train, n_real, spec, None, None, total, None, None)], info

    synth_copies = classical_pairs(synth, copies, seed) if copies else AddedSamples()
    info["n_classical"] = len(synth_copies)
    synth_spec = write_added(folder / "data-synthetic", _concat(as_added(synth), synth_copies))
    real_val = default_validation(real_train) or "none"
    if protocol == "synthetic-only":
        return [SegStage("model", synth_spec, None, None, None, real_val, total, None, None)], info
    pretrain = SegStage("pretrain", synth_spec, None, None, None, real_val,
                        config.pretrain_steps, None, None)  # fmt: skip
    added = None
    if real_copies is not None:
        added = write_added(folder / "data-added", real_copies)
        info["n_classical"] += len(real_copies)
    finetune = SegStage("model", real_train, n_real, added, None, None,
                        total - config.pretrain_steps, str(folder / "pretrain"),
                        real_lr)  # fmt: skip
    return [pretrain, finetune], info
